//! Test plugin for the host's tests: a choice past the end of the candidates (an invalid answer).

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

sluice_plugin::test_router!(|request| Ok(Decision {
    choice: (request.candidates.len() as u32).saturating_add(5),
    confidence: 1.0,
    reasoning: String::from("out-of-range"),
    alternatives: Vec::new(),
}));

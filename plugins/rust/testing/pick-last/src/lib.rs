//! Test plugin for the host's tests: always the last candidate (disagrees with `pick-first`
//! whenever there are two or more).

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

sluice_plugin::test_router!(|request| Ok(Decision {
    choice: request.candidates.len().saturating_sub(1) as u32,
    confidence: 1.0,
    reasoning: String::from("pick-last"),
    alternatives: Vec::new(),
}));

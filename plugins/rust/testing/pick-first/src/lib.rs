//! Test plugin for the host's tests: always the first candidate.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

sluice_plugin::test_router!(|request| Ok(Decision {
    choice: 0,
    confidence: 1.0,
    reasoning: String::from("pick-first"),
    alternatives: Vec::new(),
}));

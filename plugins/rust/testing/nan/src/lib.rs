//! Test plugin for the host's tests: a valid choice with a NaN confidence (an invalid answer).

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

sluice_plugin::test_router!(|request| Ok(Decision {
    choice: 0,
    confidence: f32::NAN,
    reasoning: String::from("nan"),
    alternatives: Vec::new(),
}));

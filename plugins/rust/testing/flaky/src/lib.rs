//! Test plugin for the host's tests: fails every other call with its `error` variant (the first
//! call fails) and picks the first candidate on the others, so that it never fails twice in a
//! row. A breaker that counted only consecutive failures would never disable it.
//!
//! The count is per instance: the host keeps an instance after a call that returned an error,
//! so sequential calls alternate.

#![no_std]

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use alloc::string::String;
use alloc::vec::Vec;

/// Calls this instance answered.
static CALLS: AtomicU64 = AtomicU64::new(0);

sluice_plugin::test_router!(|request| {
    if CALLS.fetch_add(1, Relaxed) % 2 == 0 {
        Err(String::from("test-flaky: failing every other call"))
    } else {
        Ok(Decision {
            choice: 0,
            confidence: 1.0,
            reasoning: String::from("flaky"),
            alternatives: Vec::new(),
        })
    }
});

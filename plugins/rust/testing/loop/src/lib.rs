//! Test plugin for the host's tests: never returns. It polls the host clock so the optimizer
//! cannot prove the loop has no effect; only the host's epoch deadline ends the call.

#![no_std]

extern crate alloc;

use alloc::string::String;

sluice_plugin::test_router!(|request| {
    while sluice::policy::clock::now_ns() != u64::MAX {}
    Err(String::from("test-loop: the clock reached u64::MAX"))
});

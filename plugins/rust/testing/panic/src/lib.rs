//! Test plugin for the host's tests: panics (the panic handler traps with `unreachable`).

#![no_std]

extern crate alloc;

sluice_plugin::test_router!(|request| panic!(
    "test-panic: deliberate panic with {} candidates",
    request.candidates.len()
));

//! Test plugin for the host's tests: always returns its `error` variant.

#![no_std]

extern crate alloc;

use alloc::string::String;

sluice_plugin::test_router!(|request| Err(String::from("test-error: refusing to route")));

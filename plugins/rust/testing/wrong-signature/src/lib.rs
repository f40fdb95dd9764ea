//! Test plugin for the host's tests: exports a `route` function of the wrong type
//! (`func(x: u32) -> u32`, world `sluice-test:bad/router` in `../wit`), which the host must
//! refuse when it links the component.

#![no_std]

use sluice_plugin as _;

wit_bindgen::generate!({
    path: ["../../../../wit", "../wit"],
    world: "sluice-test:bad/router@0.1.0",
});

struct Plugin;

impl Guest for Plugin {
    fn route(x: u32) -> u32 {
        x.wrapping_add(1)
    }
}

export!(Plugin);

//! Test plugin for the host's tests: a component that imports `sluice:policy/log@0.3.0` and
//! exports nothing (world `sluice-test:bad/no-export` in `../wit`), which the host must refuse.

#![no_std]

use sluice_plugin as _;

wit_bindgen::generate!({
    path: ["../../../../wit", "../wit"],
    world: "sluice-test:bad/no-export@0.1.0",
    // The `log` interface comes from another package than the world.
    generate_all,
});

use sluice::policy::log;

/// Keeps the `log` import in the module (and so in the component): nothing calls it, and an
/// import no code refers to is dropped by the linker.
#[used]
static KEEP_LOG_IMPORT: fn(log::Level, &str) = log::log;

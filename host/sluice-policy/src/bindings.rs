//! Host-side bindings for the `sluice:policy` worlds, generated from `wit/` by wasmtime's
//! `bindgen!`. The four worlds share the `types`, `log`, `clock` and `config` interfaces: they
//! are generated once (with the router world) and reused by the others, so one host
//! implementation serves every slot. The scaler world's `history` import is generated with it
//! (`scaler::sluice::policy::history`).

#![allow(missing_docs, clippy::all)]

/// The `router` world: `route(route-request) -> result<decision, string>`.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router",
        path: "../../wit",
    });
}

/// The `scaler` world: `plan(list<group-metrics>) -> result<scale-plan, string>`, importing
/// `history` besides the shared interfaces.
pub mod scaler {
    wasmtime::component::bindgen!({
        world: "scaler",
        path: "../../wit",
        with: {
            "sluice:policy/types": super::router::sluice::policy::types,
            "sluice:policy/log": super::router::sluice::policy::log,
            "sluice:policy/clock": super::router::sluice::policy::clock,
            "sluice:policy/config": super::router::sluice::policy::config,
        },
    });
}

/// The `anomaly` world: `detect(list<metric-window>) -> result<list<insight>, string>`.
pub mod anomaly {
    wasmtime::component::bindgen!({
        world: "anomaly",
        path: "../../wit",
        with: {
            "sluice:policy/types": super::router::sluice::policy::types,
            "sluice:policy/log": super::router::sluice::policy::log,
            "sluice:policy/clock": super::router::sluice::policy::clock,
            "sluice:policy/config": super::router::sluice::policy::config,
        },
    });
}

/// The `resumer` world: `resume(resume-request) -> result<list<list<u8>>, string>`.
pub mod resumer {
    wasmtime::component::bindgen!({
        world: "resumer",
        path: "../../wit",
        with: {
            "sluice:policy/types": super::router::sluice::policy::types,
            "sluice:policy/log": super::router::sluice::policy::log,
            "sluice:policy/clock": super::router::sluice::policy::clock,
            "sluice:policy/config": super::router::sluice::policy::config,
        },
    });
}

//! Sluice's end-to-end tests, in one binary: real feed servers, Sluice (in process or as the
//! `sluice` binary), real clients, plugins, ONNX models and browsers, on loopback only.
//!
//! One module per area. They share one test binary so that wasmtime, cranelift, ONNX Runtime,
//! SQLite, axum and tonic are linked once per run rather than once per file. Run one area with
//! `cargo test -p sluice-tests --test e2e <module>::`, e.g. `cargo test -p sluice-tests --test e2e
//! sharing::`.

mod admin;
mod alerts;
mod answers;
mod attribution;
mod backpressure;
mod cli;
mod cluster;
mod dashboard;
mod demo;
mod endpoint_limits;
mod fault_proxy;
mod faults;
mod lifecycle;
mod limits;
mod liveness;
mod observability;
mod outage;
mod passthrough;
mod plugin_reload;
mod plugins;
mod pool;
mod python_client;
mod quiet;
mod resilience;
mod scaling;
mod scorer;
mod sharing;
mod tls;
mod yellowstone;

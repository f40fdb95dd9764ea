//! The loops beside Sluice's data path: metric history, the embedded store, the scaler and
//! analytics loops, insights, reports and alerts.
//!
//! This crate watches the pool through [`sluice_proxy::ProxyView`] and asks the policies in
//! [`sluice_policy::Policies`]; it must never sit on a stream's path. Every loop is bounded in
//! what it keeps and runs on its own period.

pub mod alerts;
pub mod engine;
pub mod history;
pub mod insights;
pub mod records;
pub mod report;
pub mod sampler;
pub mod scaling;
pub mod series;
pub mod store;

pub use engine::{Analytics, AnalyticsError, AnalyticsHandle};

//! The native policies each slot falls back to: when no plugin is loaded, when it is disabled,
//! and for any call where the plugin fails. They must never fail themselves.

mod anomaly;
mod resumer;
mod router;
mod scaler;

pub use anomaly::ZScore;
pub use resumer::ReplayUnchanged;
pub use router::PeakEwmaP2c;
pub use scaler::Thresholds;

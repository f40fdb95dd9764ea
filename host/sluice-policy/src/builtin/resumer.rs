//! The built-in resumer: the requests of a broken stream are replayed unchanged. The host knows
//! no protocol, so without a plugin it cannot tell where a stream should resume; the data
//! plane's [`ReplayUnchanged`] is exactly that policy, and it cannot fail.

pub use sluice_contract::resume::ReplayUnchanged;

//! Durations in the config: humantime strings (`"500ms"`, `"5s"`, `"1m"`), at most
//! [`MAX_DURATION`].
//!
//! The data plane adds configured durations to clock readings (a queue deadline, a backoff, a
//! shutdown grace); a duration near `u64::MAX` seconds would overflow there. Every duration
//! field goes through this module (`#[serde(with = "crate::duration")]`), so the bound holds for
//! each of them in one place, and the parser's error names the key and the line.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub use humantime_serde::serialize;

/// The longest duration any setting may have: ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration, or an optional one, that can be held to [`MAX_DURATION`].
pub trait Bounded {
    /// The duration it holds, if any.
    fn duration(&self) -> Option<Duration>;
}

impl Bounded for Duration {
    fn duration(&self) -> Option<Duration> {
        Some(*self)
    }
}

impl Bounded for Option<Duration> {
    fn duration(&self) -> Option<Duration> {
        *self
    }
}

/// Reads a humantime duration (or an optional one) and refuses one above [`MAX_DURATION`].
pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Bounded,
    humantime_serde::Serde<T>: Deserialize<'de>,
{
    let value: T = humantime_serde::deserialize(deserializer)?;
    match value.duration() {
        Some(duration) if duration > MAX_DURATION => Err(D::Error::custom(format!(
            "{} is longer than the longest duration a setting may have (10 years)",
            humantime_serde::re::humantime::format_duration(duration)
        ))),
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(with = "crate::duration")]
        required: Duration,
        #[serde(default, with = "crate::duration")]
        optional: Option<Duration>,
    }

    #[test]
    fn durations_up_to_ten_years_are_read_and_longer_ones_refused() {
        let ok: Holder = toml::from_str("required = \"5s\"\noptional = \"3650days\"").unwrap();
        assert_eq!(ok.required, Duration::from_secs(5));
        assert_eq!(ok.optional, Some(MAX_DURATION));
        for text in [
            "required = \"3651days\"",
            "required = \"1s\"\noptional = \"18446744073709551615s\"",
        ] {
            let error = toml::from_str::<Holder>(text).err().expect("refused");
            assert!(error.to_string().contains("10 years"), "{error}");
        }
    }
}

//! Every statistic the benches compute: the median of a figure over the rounds, its spread
//! (median and min–max), the CPU a process spent per message over a window, and shares of a
//! whole. The only place in xtask that defines a median or any other statistic; a bench that
//! needs one more adds it here.
//!
//! Pure arithmetic on figures already read: it must not read `/proc`, run processes, format or
//! print anything, nor judge a figure against a target (that is [`super::targets`]).

/// The median of `values`, NaNs left out: the middle value, or the mean of the two middle ones
/// for an even count. NaN when no value is left.
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// [`median`] of `values`, or `None` when there are none (written to the JSON as `null`).
pub(super) fn median_if_any(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| median(values))
}

/// Median and range of one figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Spread {
    /// [`median`] of the figure.
    pub(super) median: f64,
    /// The smallest value.
    pub(super) min: f64,
    /// The largest value.
    pub(super) max: f64,
}

impl Spread {
    /// No figure at all: printed as `-`, written to the JSON as `null`.
    pub(super) const UNKNOWN: Spread = Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
    };

    /// The spread of `values`; `None` when there are none.
    pub(super) fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        Some(Spread {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// Microseconds of CPU per message: a process's CPU counter went from `before` to `after`
/// clock ticks (`ticks_per_second` of them a second) over `seconds` of wall time while
/// `rate` messages a second went through. `None` when no message or no time went by.
pub(super) fn cpu_us_per_message(
    before: u64,
    after: u64,
    ticks_per_second: f64,
    seconds: f64,
    rate: f64,
) -> Option<f64> {
    if rate <= 0.0 || seconds <= 0.0 {
        return None;
    }
    let cpu_seconds = after.saturating_sub(before) as f64 / ticks_per_second;
    Some(cpu_seconds / seconds / rate * 1e6)
}

/// `part` as a share of `whole` (0 to 1); `None` when `whole` is 0.
pub(super) fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd counts take the middle value, even counts the mean of the two middle ones; NaNs are
    /// left out.
    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0, 1.0, 3.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert_eq!(median_if_any(&[]), None);
        assert_eq!(median_if_any(&[7.0]), Some(7.0));
    }

    /// A spread is the median with the smallest and largest value; none for no values.
    #[test]
    fn spreads() {
        assert_eq!(
            Spread::of(&[30.0, 60.0, 35.0]),
            Some(Spread {
                median: 35.0,
                min: 30.0,
                max: 60.0
            })
        );
        assert_eq!(Spread::of(&[]), None);
    }

    /// CPU per message needs messages and time; shares need a whole.
    #[test]
    fn per_message_and_shares() {
        // 50 ticks of 100 a second over 2 s at 1,000 messages a second: 250 µs per message.
        assert_eq!(
            cpu_us_per_message(100, 150, 100.0, 2.0, 1000.0),
            Some(250.0)
        );
        assert_eq!(cpu_us_per_message(100, 150, 100.0, 2.0, 0.0), None);
        assert_eq!(cpu_us_per_message(100, 150, 100.0, 0.0, 1000.0), None);
        assert_eq!(share(1, 4), Some(0.25));
        assert_eq!(share(0, 0), None);
    }
}

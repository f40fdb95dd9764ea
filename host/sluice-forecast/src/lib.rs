//! Short-range forecasts of a load series (e.g. a pool group's mean active streams per 15
//! minutes) for scalers that plan ahead.
//!
//! This crate owns the forecasting math only: gap filling, model choice, parameter fitting and
//! the prediction band. It knows nothing about pools, plugins or time: a series is a list of
//! equally spaced values, oldest first, and a forecast is in the same unit and step.
//!
//! - At least two full seasons (and a season of at least 2 steps): additive Holt-Winters (level,
//!   trend and a seasonal component per step of the season).
//! - Fewer, but at least 3 points: Holt's linear trend with a damped trend.
//! - Fewer than 3 points: flat (the last value).
//!
//! Smoothing parameters are picked by a small grid search minimizing the one-step-ahead sum of
//! squared errors; the band is `mean ± 1.96 · sd · sqrt(h)` for the step `h` ahead, with `sd`
//! the standard deviation of the one-step residuals.
//!
//! `no_std` with `alloc` and no dependencies: the default scaler plugin (a WebAssembly guest)
//! links it as well as the host. No input makes it panic; NaN and infinite values are gaps,
//! magnitudes are clamped to [`MAX_MAGNITUDE`] so that sums of squares stay finite, and the
//! horizon is capped at [`MAX_HORIZON`].

#![no_std]
extern crate alloc;

#[cfg(test)]
extern crate std;

use alloc::vec;
use alloc::vec::Vec;

/// Values are clamped to `±MAX_MAGNITUDE` before fitting, so that squared errors summed over
/// any realistic series stay finite.
pub const MAX_MAGNITUDE: f64 = 1e100;

/// The most steps [`forecast`] returns; a longer horizon is cut to this.
pub const MAX_HORIZON: usize = 1 << 16;

/// The z-score of a two-sided 95% band.
const Z95: f64 = 1.96;

/// The model a [`Forecast`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The last value repeated (fewer than 3 points; 0 with no points at all).
    Flat,
    /// Holt's linear trend with a damped trend (less than two seasons of history).
    Holt,
    /// Additive Holt-Winters: level, trend and season (at least two seasons of history).
    HoltWinters,
}

impl Method {
    /// A short human name: `flat`, `Holt`, `Holt-Winters`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Flat => "flat",
            Method::Holt => "Holt",
            Method::HoltWinters => "Holt-Winters",
        }
    }
}

/// A forecast of the `horizon` steps after the series' last value.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// The expected value per step ahead: `mean[0]` is the step right after the series' last one.
    pub mean: Vec<f64>,
    /// The lower end of the ~95% band per step (`mean - 1.96 · sd · sqrt(h)`).
    pub lower: Vec<f64>,
    /// The upper end of the ~95% band per step (`mean + 1.96 · sd · sqrt(h)`).
    pub upper: Vec<f64>,
    /// The model used.
    pub method: Method,
    /// The standard deviation of the one-step-ahead residuals of the fitted model (for
    /// [`Method::Flat`], of the differences between consecutive values).
    pub residual_sd: f64,
}

impl Forecast {
    /// The step (0-based index into `mean`) with the highest mean, and that mean; `None` for an
    /// empty forecast. The first of equal maxima wins.
    pub fn peak(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (index, &value) in self.mean.iter().enumerate() {
            if best.is_none_or(|(_, top)| value > top) {
                best = Some((index, value));
            }
        }
        best
    }
}

/// Forecasts the `horizon` steps after `series` (equally spaced values, oldest first) with a
/// season of `season` steps (e.g. 96 for a day of 15-minute steps; below 2 means no season).
///
/// NaN and infinite values are gaps: filled by linear interpolation between their neighbours,
/// with the last known value after the last finite one; leading gaps are dropped. A series
/// with no finite value gives a flat forecast of 0. `horizon` is capped at [`MAX_HORIZON`].
/// Never panics.
pub fn forecast(series: &[f64], season: usize, horizon: usize) -> Forecast {
    let horizon = horizon.min(MAX_HORIZON);
    let values = fill_gaps(series);
    let n = values.len();
    if n < 3 {
        let last = values.last().copied().unwrap_or(0.0);
        let sd = if n == 2 {
            (values[1] - values[0]).abs()
        } else {
            0.0
        };
        return banded(vec![last; horizon], sd, Method::Flat);
    }
    if season >= 2 && n / 2 >= season {
        let fit = fit_holt_winters(&values, season);
        let mean = (1..=horizon)
            .map(|h| {
                let phase = (n + h - 1) % season;
                fit.level + h as f64 * fit.trend + fit.seasonal[phase]
            })
            .collect();
        return banded(mean, fit.sd, Method::HoltWinters);
    }
    let fit = fit_holt(&values);
    let mut mean = Vec::with_capacity(horizon);
    let mut damping = 0.0;
    let mut power = 1.0;
    for _ in 0..horizon {
        power *= fit.phi;
        damping += power;
        mean.push(fit.level + damping * fit.trend);
    }
    banded(mean, fit.sd, Method::Holt)
}

/// Adds the band `mean ± 1.96 · sd · sqrt(h)` to a mean.
fn banded(mean: Vec<f64>, sd: f64, method: Method) -> Forecast {
    let sd = if sd.is_finite() { sd } else { 0.0 };
    let mut lower = Vec::with_capacity(mean.len());
    let mut upper = Vec::with_capacity(mean.len());
    for (index, &value) in mean.iter().enumerate() {
        let half = Z95 * sd * sqrt((index + 1) as f64);
        lower.push(value - half);
        upper.push(value + half);
    }
    Forecast {
        mean,
        lower,
        upper,
        method,
        residual_sd: sd,
    }
}

/// The series with leading gaps dropped, inner gaps interpolated, trailing gaps holding the last
/// value, and magnitudes clamped to [`MAX_MAGNITUDE`].
fn fill_gaps(series: &[f64]) -> Vec<f64> {
    let Some(first) = series.iter().position(|v| v.is_finite()) else {
        return Vec::new();
    };
    let series = &series[first..];
    let mut values = Vec::with_capacity(series.len());
    // Index (into `values`) and value of the last finite point.
    let mut known = (0_usize, clamp(series[0]));
    for (index, &raw) in series.iter().enumerate() {
        if !raw.is_finite() {
            values.push(known.1);
            continue;
        }
        let value = clamp(raw);
        let (from, start) = known;
        let gap = index - from;
        if gap > 1 {
            let slope = (value - start) / gap as f64;
            for (offset, slot) in values[from + 1..index].iter_mut().enumerate() {
                *slot = start + slope * (offset + 1) as f64;
            }
        }
        values.push(value);
        known = (index, value);
    }
    values
}

fn clamp(value: f64) -> f64 {
    value.clamp(-MAX_MAGNITUDE, MAX_MAGNITUDE)
}

/// The square root without `std` (Newton's method from an exponent-halving first guess); 0 for
/// anything not positive, NaN stays NaN, infinity stays infinity.
pub fn sqrt(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x <= 0.0 {
        return 0.0;
    }
    // Halving the biased exponent gives a guess within a factor of about 1.5.
    let mut guess = f64::from_bits((x.to_bits() >> 1) + (1023_u64 << 51));
    for _ in 0..6 {
        guess = 0.5 * (guess + x / guess);
    }
    guess
}

/// A fitted damped-trend Holt model: its final state and residual spread.
struct HoltFit {
    level: f64,
    trend: f64,
    phi: f64,
    sd: f64,
}

/// Grid-searches alpha, beta and the damping phi of Holt's damped trend.
fn fit_holt(values: &[f64]) -> HoltFit {
    const ALPHAS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];
    const BETAS: [f64; 3] = [0.05, 0.2, 0.5];
    const PHIS: [f64; 3] = [0.85, 0.92, 0.98];
    let mut best: Option<(f64, HoltFit)> = None;
    for alpha in ALPHAS {
        for beta in BETAS {
            for phi in PHIS {
                let (sse, fit) = run_holt(values, alpha, beta, phi);
                if best.as_ref().is_none_or(|(top, _)| sse < *top) {
                    best = Some((sse, fit));
                }
            }
        }
    }
    best.map(|(_, fit)| fit).unwrap_or_else(|| {
        // Unreachable with non-empty grids; a flat fit keeps the function total.
        run_holt(values, 0.5, 0.1, 0.9).1
    })
}

/// One pass of damped Holt over `values` (at least 2): the one-step SSE and the final state.
fn run_holt(values: &[f64], alpha: f64, beta: f64, phi: f64) -> (f64, HoltFit) {
    let n = values.len();
    let span = (n - 1).min(4);
    let mut level = values[0];
    let mut trend = (values[span] - values[0]) / span as f64;
    let mut sse = 0.0;
    for &y in &values[1..] {
        let predicted = level + phi * trend;
        let error = y - predicted;
        sse += error * error;
        let new_level = alpha * y + (1.0 - alpha) * predicted;
        trend = beta * (new_level - level) + (1.0 - beta) * phi * trend;
        level = new_level;
    }
    let sd = sqrt(sse / (n - 1) as f64);
    (
        nan_to_max(sse),
        HoltFit {
            level,
            trend,
            phi,
            sd,
        },
    )
}

/// A fitted additive Holt-Winters model: its final state and residual spread.
struct WintersFit {
    level: f64,
    trend: f64,
    /// Seasonal component per phase: `seasonal[t % season]` for step `t` from the series' start.
    seasonal: Vec<f64>,
    sd: f64,
}

/// Grid-searches alpha, beta and gamma of additive Holt-Winters (`values.len() >= 2 * season`,
/// `season >= 2`).
fn fit_holt_winters(values: &[f64], season: usize) -> WintersFit {
    const ALPHAS: [f64; 5] = [0.05, 0.15, 0.3, 0.5, 0.8];
    const BETAS: [f64; 3] = [0.0, 0.02, 0.1];
    const GAMMAS: [f64; 5] = [0.05, 0.15, 0.3, 0.5, 0.8];
    let mut seasonal = Vec::new();
    let mut best: Option<(f64, f64, f64, f64)> = None;
    for alpha in ALPHAS {
        for beta in BETAS {
            for gamma in GAMMAS {
                let (sse, ..) = run_holt_winters(values, season, alpha, beta, gamma, &mut seasonal);
                if best.is_none_or(|(top, ..)| sse < top) {
                    best = Some((sse, alpha, beta, gamma));
                }
            }
        }
    }
    let (_, alpha, beta, gamma) = best.unwrap_or((0.0, 0.3, 0.02, 0.3));
    let (sse, level, trend) = run_holt_winters(values, season, alpha, beta, gamma, &mut seasonal);
    let steps = values.len() - season;
    WintersFit {
        level,
        trend,
        seasonal,
        sd: sqrt(sse / steps as f64),
    }
}

/// One pass of additive Holt-Winters: initial level and trend from the first two seasons'
/// means, initial seasonal components from the detrended first season, then smoothing from the
/// second season on. Returns the one-step SSE (over the second season on), the final level and
/// trend; `seasonal` holds the final seasonal components by phase.
fn run_holt_winters(
    values: &[f64],
    season: usize,
    alpha: f64,
    beta: f64,
    gamma: f64,
    seasonal: &mut Vec<f64>,
) -> (f64, f64, f64) {
    let m = season as f64;
    let first = values[..season].iter().sum::<f64>() / m;
    let second = values[season..2 * season].iter().sum::<f64>() / m;
    let mut trend = (second - first) / m;
    // The level at the end of the first season (its mean sits at its middle).
    let mut level = first + trend * (m - 1.0) / 2.0;
    seasonal.clear();
    seasonal.extend(
        values[..season]
            .iter()
            .enumerate()
            .map(|(t, &y)| y - (first + trend * (t as f64 - (m - 1.0) / 2.0))),
    );
    let mut sse = 0.0;
    for (t, &y) in values.iter().enumerate().skip(season) {
        let phase = t % season;
        let season_value = seasonal[phase];
        let predicted = level + trend + season_value;
        let error = y - predicted;
        sse += error * error;
        let new_level = alpha * (y - season_value) + (1.0 - alpha) * (level + trend);
        trend = beta * (new_level - level) + (1.0 - beta) * trend;
        level = new_level;
        seasonal[phase] = gamma * (y - level) + (1.0 - gamma) * season_value;
    }
    (nan_to_max(sse), level, trend)
}

/// NaN (from overflowing intermediate values) ranks last in a grid search.
fn nan_to_max(sse: f64) -> f64 {
    if sse.is_nan() { f64::INFINITY } else { sse }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A tiny deterministic LCG giving noise in [-1, 1).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 / (1_u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// Mean active streams per 15 minutes: 200 ± 100 over a day, peaking at step `peak` of each
    /// day, plus uniform noise of ±`noise`.
    fn daily(points: usize, peak: usize, noise: f64, seed: u64) -> Vec<f64> {
        let mut lcg = Lcg(seed);
        (0..points)
            .map(|t| {
                let angle = 2.0 * core::f64::consts::PI * (t as f64 - peak as f64) / 96.0;
                200.0 + 100.0 * angle.cos() + noise * lcg.next()
            })
            .collect()
    }

    fn assert_sane(forecast: &Forecast, horizon: usize) {
        assert_eq!(forecast.mean.len(), horizon);
        assert_eq!(forecast.lower.len(), horizon);
        assert_eq!(forecast.upper.len(), horizon);
        for i in 0..horizon {
            assert!(forecast.mean[i].is_finite(), "{forecast:?}");
            assert!(forecast.lower[i] <= forecast.mean[i]);
            assert!(forecast.mean[i] <= forecast.upper[i]);
        }
        assert!(forecast.residual_sd.is_finite() && forecast.residual_sd >= 0.0);
    }

    #[test]
    fn sqrt_matches_std() {
        for x in [
            1e-300, 1e-10, 0.25, 1.0, 2.0, 3.0, 10.0, 12345.678, 1e10, 1e300,
        ] {
            let ours = sqrt(x);
            let exact = x.sqrt();
            assert!(
                (ours - exact).abs() <= exact * 1e-14,
                "{x}: {ours} vs {exact}"
            );
        }
        assert_eq!(sqrt(0.0), 0.0);
        assert_eq!(sqrt(-4.0), 0.0);
        assert!(sqrt(f64::NAN).is_nan());
        assert_eq!(sqrt(f64::INFINITY), f64::INFINITY);
        assert!(sqrt(f64::MIN_POSITIVE / 4.0) > 0.0);
    }

    #[test]
    fn daily_pattern_tracks_the_next_peak() {
        // Three days at 15-minute steps; the next day's peak comes 4 hours (16 steps) after the
        // series ends.
        let history = 3 * 96;
        let horizon = 32;
        let peak_step = (history + 16) % 96;
        let all = daily(history + horizon, peak_step, 15.0, 7);
        let (past, future) = all.split_at(history);
        let forecast = forecast(past, 96, horizon);
        assert_eq!(forecast.method, Method::HoltWinters);
        assert_sane(&forecast, horizon);

        let (at, value) = forecast.peak().unwrap();
        let actual_at = future
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert!(
            at.abs_diff(16) <= 4,
            "peak at step {at}, expected 16 (actual {actual_at})"
        );
        assert!(
            (value - 300.0).abs() <= 0.15 * 300.0,
            "peak value {value}, expected about 300"
        );

        let inside = future
            .iter()
            .zip(forecast.lower.iter().zip(&forecast.upper))
            .filter(|&(&y, (&lo, &hi))| lo <= y && y <= hi)
            .count();
        assert!(
            inside * 10 >= horizon * 9,
            "{inside} of {horizon} future values in the band: {forecast:?}"
        );
        // The band is not uselessly wide.
        assert!(forecast.residual_sd < 30.0, "sd {}", forecast.residual_sd);
    }

    #[test]
    fn a_week_at_15_minutes_is_fast() {
        let series = daily(672, 40, 20.0, 3);
        let started = Instant::now();
        let forecast = forecast(&series, 96, 4);
        let took = started.elapsed();
        assert_eq!(forecast.method, Method::HoltWinters);
        assert_sane(&forecast, 4);
        // Well under 5 ms even unoptimized; generous for a shared 2-core machine.
        assert!(took.as_millis() < 50, "took {took:?}");
    }

    #[test]
    fn linear_trend_uses_holt_and_follows_it() {
        let series: Vec<f64> = (0..40).map(|t| 10.0 + 2.5 * t as f64).collect();
        let forecast = forecast(&series, 96, 6);
        assert_eq!(forecast.method, Method::Holt);
        assert_sane(&forecast, 6);
        let last = series[39];
        for (h, &mean) in forecast.mean.iter().enumerate() {
            let expected = last + 2.5 * (h + 1) as f64;
            // Damping bends the line slightly below the trend; never above, and close.
            assert!(
                (mean - expected).abs() <= 0.1 * 2.5 * (h + 1) as f64 + 0.5,
                "h={} mean {mean} expected {expected}",
                h + 1
            );
            assert!(mean > last, "keeps rising");
        }
        // Season below 2 also means Holt.
        assert_eq!(super::forecast(&series, 1, 3).method, Method::Holt);
        assert_eq!(super::forecast(&series, 0, 3).method, Method::Holt);
        // Less than two seasons: Holt.
        assert_eq!(super::forecast(&series, 21, 3).method, Method::Holt);
        assert_eq!(super::forecast(&series, 20, 3).method, Method::HoltWinters);
    }

    #[test]
    fn short_series_are_flat() {
        let empty = forecast(&[], 96, 4);
        assert_eq!(empty.method, Method::Flat);
        assert_eq!(empty.mean, vec![0.0; 4]);
        assert_eq!(empty.upper, vec![0.0; 4]);
        assert_eq!(empty.residual_sd, 0.0);

        let one = forecast(&[5.0], 96, 2);
        assert_eq!((one.method, one.mean.clone()), (Method::Flat, vec![5.0; 2]));
        assert_eq!(one.lower, vec![5.0; 2]);

        let two = forecast(&[5.0, 7.0], 96, 2);
        assert_eq!(two.method, Method::Flat);
        assert_eq!(two.mean, vec![7.0; 2]);
        assert_eq!(two.residual_sd, 2.0);
        assert!((two.upper[0] - (7.0 + 1.96 * 2.0)).abs() < 1e-12);
        assert!((two.upper[1] - (7.0 + 1.96 * 2.0 * 2.0_f64.sqrt())).abs() < 1e-12);

        assert!(forecast(&[1.0, 2.0, 3.0], 96, 0).mean.is_empty());
    }

    #[test]
    fn gaps_are_interpolated() {
        assert_eq!(
            fill_gaps(&[
                f64::NAN,
                f64::NAN,
                1.0,
                f64::NAN,
                f64::NAN,
                4.0,
                5.0,
                f64::NAN
            ]),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0]
        );
        assert_eq!(
            fill_gaps(&[f64::INFINITY, 2.0, f64::NEG_INFINITY, 4.0]),
            vec![2.0, 3.0, 4.0]
        );
        assert!(fill_gaps(&[f64::NAN; 5]).is_empty());

        // A daily pattern with a few hours missing still forecasts like the full one.
        let history = 3 * 96;
        let mut series = daily(history, (history + 16) % 96, 10.0, 11);
        let full = forecast(&series, 96, 32);
        for value in &mut series[150..170] {
            *value = f64::NAN;
        }
        series[0] = f64::NAN;
        let gappy = forecast(&series, 96, 32);
        assert_eq!(gappy.method, Method::HoltWinters);
        assert_sane(&gappy, 32);
        let (at, value) = gappy.peak().unwrap();
        let (full_at, full_value) = full.peak().unwrap();
        assert!(at.abs_diff(full_at) <= 4, "{at} vs {full_at}");
        assert!((value - full_value).abs() <= 0.15 * full_value);

        let all_nan = forecast(&[f64::NAN; 300], 96, 3);
        assert_eq!(all_nan.method, Method::Flat);
        assert_eq!(all_nan.mean, vec![0.0; 3]);
    }

    #[test]
    fn pathological_inputs_do_not_panic() {
        let huge = [f64::MAX; 300];
        let mixed: Vec<f64> = (0..500)
            .map(|t| match t % 7 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => -f64::MAX,
                3 => f64::MAX,
                4 => 1e-300,
                5 => -0.0,
                _ => t as f64,
            })
            .collect();
        let alternating: Vec<f64> = (0..300)
            .map(|t| if t % 2 == 0 { 1e100 } else { -1e100 })
            .collect();
        let series: [&[f64]; 7] = [
            &huge,
            &mixed,
            &alternating,
            &[0.0; 200],
            &[f64::NAN, 1.0],
            &[1.0, f64::NAN, f64::NAN],
            &[-5.0, -6.0, -7.0, -8.0],
        ];
        for values in series {
            for season in [0, 1, 2, 3, 96, 250, usize::MAX] {
                for horizon in [0, 1, 7, 200] {
                    let forecast = forecast(values, season, horizon);
                    assert_eq!(forecast.mean.len(), horizon);
                    assert_eq!(forecast.lower.len(), horizon);
                    assert_eq!(forecast.upper.len(), horizon);
                    assert!(!forecast.residual_sd.is_nan());
                }
            }
        }
        // Constant input: an exact, zero-width forecast.
        let constant = forecast(&[42.0; 200], 96, 5);
        assert_eq!(constant.method, Method::HoltWinters);
        for i in 0..5 {
            assert!((constant.mean[i] - 42.0).abs() < 1e-9);
            assert!((constant.upper[i] - constant.lower[i]).abs() < 1e-9);
        }
        // A huge horizon is capped instead of exhausting memory.
        assert_eq!(
            forecast(&[1.0, 2.0, 3.0], 0, usize::MAX).mean.len(),
            MAX_HORIZON
        );
    }
}

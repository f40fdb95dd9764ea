//! Sluice's default scaler (`scaler` world): threshold rules per traffic class group.
//!
//! Scale up (+2, never above `max-connections`) only when at least two of the four up signals
//! agree:
//!
//! | signal | default | config key |
//! |---|---|---|
//! | `utilization` above | 0.75 | `scale_up_utilization` |
//! | `queue-depth` above 0 | - | - |
//! | `trend` (utilization per minute) above | 0.05 | `scale_up_trend` |
//! | `p99-latency-ms` above | 250 | `scale_up_p99_ms` |
//!
//! and the group was not scaled in the last 60 s (`scale_up_cooldown_ms`). `scale_up_agree`
//! (default 2) and `scale_up_step` (default 2) change the rule itself.
//!
//! Scale down (-1) only when everything is quiet: `utilization` below 0.30
//! (`scale_down_utilization`), no queue, `error-rate` below 0.01 (`scale_down_error_rate`), more
//! connections than `min-connections`, and no scaling in the last 5 minutes
//! (`scale_down_cooldown_ms`).
//!
//! The defaults keep headroom: a group settles where its utilization is between 0.30 and
//! 0.75, and leaves a drop of load behind one connection per 5 minutes. To hold connections
//! close to what the streams need instead (cost over headroom), `scale_down_step` (default 1)
//! removes up to that many connections at once, never below the connections the streams need at
//! `scale_down_target_utilization` (default: `scale_up_utilization`); with a high
//! `scale_down_utilization` the group then follows a falling load. New streams never wait for
//! the scaler: the host opens a connection on demand when every one is full.
//!
//! Confidence per group is the share of the four up signals that support the outcome (those
//! that fire for a scale-up, or for a hold at max or in cooldown; those that do not for a
//! scale-down or a quiet hold); the plan's confidence is the mean over groups (1.0 with none).
//! The reasoning lists every factor per group.
//!
//! ## Predictive scaling
//!
//! Each plan, for every group with connections, the scaler asks the host's `history` for the
//! group's mean active streams per step over the last 7 days and forecasts the next horizon
//! with [`sluice_forecast`] (Holt-Winters with a daily season once two days of history exist,
//! damped Holt before; no forecast below `predict_min_points` known points). It plans for the
//! peak of the forecast's *mean* over the horizon, not of its upper band: the band widens with
//! every step ahead and would keep the pool oversized most of the day, while a peak that comes
//! in above the mean is still caught by the reactive rules. The connections that peak needs are
//! `ceil(peak / (stream-capacity / connections * predict_target_utilization))`.
//!
//! | config key | default | meaning |
//! |---|---|---|
//! | `predict` | `on` | `off` turns predictive scaling off |
//! | `predict_step_minutes` | 15 | the history's step (1..=1440) |
//! | `predict_season_steps` | one day of steps (96) | the season; below 2: no season |
//! | `predict_horizon_minutes` | 60 | how far ahead to look |
//! | `predict_target_utilization` | 0.75 | utilization the peak may reach (above 0, at most 1) |
//! | `predict_min_points` | 8 | known (non-NaN) points needed to forecast at all (at least 3) |
//!
//! - When the reactive rules hold (no scale-up, no scale-down) and the peak needs more
//!   connections than the group has, it scales up ahead of it: by
//!   `min(scale_up_step, needed - connections, max-connections - connections)`, after the same
//!   up cooldown, with a reason like `realtime: +2 ahead of a forecast peak of 340 streams in
//!   45 min (Holt-Winters; needs 6 connections)`. Its confidence is 0.75 when the band's lower
//!   end at the peak also needs more connections, else 0.5 (or the up signals' share if higher).
//! - It never predicts a scale-down: shrinking stays the reactive rule above. But it blocks that
//!   rule's -1 when the forecast peak needs the connections the group has (`hold, not down: a
//!   forecast peak of ...`).
//! - A reactive scale-up wins as it is; the forecast only adds to its reasoning.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use sluice_plugin::parse_f64;
use sluice_plugin::text::{push_fixed, push_short, push_u64};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "scaler",
});

use sluice::policy::types::{ScaleAction, TrafficClass};
use sluice::policy::{config, history, log};
use sluice_forecast::Method;

/// The number of up signals.
const SIGNALS: u32 = 4;

/// Set once a bad config value has been reported (the scaler runs every period).
static WARNED: AtomicBool = AtomicBool::new(false);

struct Scaler;

impl Guest for Scaler {
    fn plan(groups: Vec<GroupMetrics>) -> Result<ScalePlan, String> {
        let settings = Settings::load();
        let mut actions = Vec::new();
        let mut reasoning = String::with_capacity(160 * groups.len().max(1));
        let mut confidence_sum = 0.0;
        for group in &groups {
            let prediction = if settings.predict && group.connections > 0 {
                let series = history::group_streams(
                    group.class,
                    settings.step_minutes,
                    settings.history_points(),
                );
                predict(&series, group, &settings)
            } else {
                None
            };
            let outcome = evaluate(group, &settings, prediction.as_ref());
            confidence_sum += outcome.confidence;
            if !reasoning.is_empty() {
                reasoning.push_str("; ");
            }
            reasoning.push_str(&outcome.text);
            if outcome.delta != 0 {
                actions.push(ScaleAction {
                    class: group.class,
                    delta: outcome.delta,
                    reason: outcome.text,
                });
            }
        }
        if groups.is_empty() {
            reasoning.push_str("no groups");
        }
        let confidence = if groups.is_empty() {
            1.0
        } else {
            confidence_sum / groups.len() as f64
        };
        Ok(ScalePlan {
            actions,
            confidence: confidence as f32,
            reasoning,
        })
    }
}

export!(Scaler);

/// Thresholds, from the config with the defaults above.
struct Settings {
    up_utilization: f64,
    up_trend: f64,
    up_p99_ms: f64,
    up_agree: u32,
    up_step: u32,
    up_cooldown_ms: u64,
    down_utilization: f64,
    down_error_rate: f64,
    down_cooldown_ms: u64,
    /// Connections one scale-down may remove.
    down_step: u32,
    /// Utilization the streams may reach on what a scale-down leaves; `None`: `up_utilization`.
    down_target_utilization: Option<f64>,
    /// Predictive scaling on.
    predict: bool,
    step_minutes: u32,
    /// `None`: one day of steps.
    season_steps: Option<u32>,
    horizon_minutes: u32,
    target_utilization: f64,
    min_points: u32,
}

impl Settings {
    fn load() -> Self {
        let mut settings = Settings::defaults();
        // Usually no keys are set: one host call.
        for key in config::keys() {
            let Some(text) = config::get(&key) else {
                continue;
            };
            if !settings.apply(&key, &text) {
                warn_once(&key, &text);
            }
        }
        settings
    }

    /// The defaults in the module documentation.
    fn defaults() -> Self {
        Settings {
            up_utilization: 0.75,
            up_trend: 0.05,
            up_p99_ms: 250.0,
            up_agree: 2,
            up_step: 2,
            up_cooldown_ms: 60_000,
            down_utilization: 0.30,
            down_error_rate: 0.01,
            down_cooldown_ms: 300_000,
            down_step: 1,
            down_target_utilization: None,
            predict: true,
            step_minutes: 15,
            season_steps: None,
            horizon_minutes: 60,
            target_utilization: 0.75,
            min_points: 8,
        }
    }

    /// Sets `key` from `text`; false when the key is unknown or the value invalid.
    fn apply(&mut self, key: &str, text: &str) -> bool {
        if key == "predict" {
            match text.trim() {
                "on" => self.predict = true,
                "off" => self.predict = false,
                _ => return false,
            }
            return true;
        }
        let Some(value) = parse_f64(text) else {
            return false;
        };
        let ratio = (0.0..=1.0).contains(&value);
        let count = (1.0..=f64::from(SIGNALS)).contains(&value) && value == value as u32 as f64;
        let duration = (0.0..=86_400_000.0).contains(&value);
        let whole = value == value as u64 as f64;
        match key {
            "scale_up_utilization" if ratio => self.up_utilization = value,
            "scale_up_trend" => self.up_trend = value,
            "scale_up_p99_ms" if value >= 0.0 => self.up_p99_ms = value,
            "scale_up_agree" if count => self.up_agree = value as u32,
            "scale_up_step" if (1.0..=1000.0).contains(&value) => self.up_step = value as u32,
            "scale_up_cooldown_ms" if duration => self.up_cooldown_ms = value as u64,
            "scale_down_utilization" if ratio => self.down_utilization = value,
            "scale_down_error_rate" if ratio => self.down_error_rate = value,
            "scale_down_cooldown_ms" if duration => self.down_cooldown_ms = value as u64,
            "scale_down_step" if whole && (1.0..=1000.0).contains(&value) => {
                self.down_step = value as u32
            }
            "scale_down_target_utilization" if value > 0.0 && value <= 1.0 => {
                self.down_target_utilization = Some(value)
            }
            "predict_step_minutes" if whole && (1.0..=1440.0).contains(&value) => {
                self.step_minutes = value as u32
            }
            "predict_season_steps" if whole && (0.0..=10_080.0).contains(&value) => {
                self.season_steps = Some(value as u32)
            }
            "predict_horizon_minutes" if whole && (1.0..=10_080.0).contains(&value) => {
                self.horizon_minutes = value as u32
            }
            "predict_target_utilization" if value > 0.0 && value <= 1.0 => {
                self.target_utilization = value
            }
            "predict_min_points" if whole && (3.0..=10_080.0).contains(&value) => {
                self.min_points = value as u32
            }
            _ => return false,
        }
        true
    }

    /// Points of history to ask for: 7 days of steps (the host's rollups keep 7 days by
    /// default).
    fn history_points(&self) -> u32 {
        (10_080 / self.step_minutes.max(1)).max(1)
    }

    /// The season in steps: the configured one, else a day.
    fn season(&self) -> usize {
        self.season_steps.unwrap_or(1440 / self.step_minutes.max(1)) as usize
    }

    /// Steps ahead to forecast: the horizon rounded up to whole steps.
    fn horizon_steps(&self) -> usize {
        self.horizon_minutes
            .div_ceil(self.step_minutes.max(1))
            .max(1) as usize
    }
}

fn warn_once(key: &str, text: &str) {
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut message = String::from("scaler: ignoring config ");
    message.push_str(key);
    message.push_str(" = ");
    message.push_str(text);
    message.push_str(" (unknown key or value out of range; further ones are not reported)");
    log::log(log::Level::Warn, &message);
}

/// What the scaler decides for one group.
struct Outcome {
    delta: i32,
    confidence: f64,
    text: String,
}

/// A group's forecast peak over the horizon and the connections it needs.
#[derive(Debug, Clone, PartialEq)]
struct Prediction {
    /// The highest forecast mean of active streams over the horizon.
    peak: f64,
    /// Minutes from now to the end of the peak's step.
    in_minutes: u64,
    method: Method,
    /// Connections that carry `peak` at the target utilization.
    needed: u32,
    /// Connections that carry the band's lower end at the peak's step.
    needed_lower: u32,
}

/// Forecasts `series` (the group's mean active streams per step, oldest first, ending now) and
/// works out the connections its peak needs; `None` when the group has no connections or
/// capacity, or the series has fewer than `min_points` known values.
fn predict(series: &[f64], group: &GroupMetrics, settings: &Settings) -> Option<Prediction> {
    if group.connections == 0 || group.stream_capacity == 0 {
        return None;
    }
    let known = series.iter().filter(|v| v.is_finite()).count();
    if known < settings.min_points.max(3) as usize {
        return None;
    }
    let forecast = sluice_forecast::forecast(series, settings.season(), settings.horizon_steps());
    let (step, peak) = forecast.peak()?;
    if !peak.is_finite() {
        return None;
    }
    let per_connection = f64::from(group.stream_capacity) / f64::from(group.connections);
    let carried = per_connection * settings.target_utilization;
    Some(Prediction {
        peak: peak.max(0.0),
        in_minutes: (step as u64 + 1) * u64::from(settings.step_minutes),
        method: forecast.method,
        needed: connections_for(peak, carried),
        needed_lower: connections_for(forecast.lower[step], carried),
    })
}

/// `ceil(streams / per_connection)`, 0 for no streams, saturating at `u32::MAX`.
fn connections_for(streams: f64, per_connection: f64) -> u32 {
    if streams.is_nan() || per_connection.is_nan() || streams <= 0.0 || per_connection <= 0.0 {
        return 0;
    }
    let exact = streams / per_connection;
    if exact >= u32::MAX as f64 {
        return u32::MAX;
    }
    let whole = exact as u32;
    if (whole as f64) < exact {
        whole + 1
    } else {
        whole
    }
}

/// `a forecast peak of 340 streams in 45 min`.
fn push_peak(text: &mut String, prediction: &Prediction) {
    text.push_str("a forecast peak of ");
    push_fixed(text, prediction.peak, 0);
    text.push_str(" streams in ");
    push_u64(text, prediction.in_minutes);
    text.push_str(" min");
}

/// `(Holt-Winters; needs 6 connections)`.
fn push_needs(text: &mut String, prediction: &Prediction) {
    text.push_str(" (");
    text.push_str(prediction.method.name());
    text.push_str("; needs ");
    push_u64(text, u64::from(prediction.needed));
    text.push_str(if prediction.needed == 1 {
        " connection)"
    } else {
        " connections)"
    });
}

/// Connections a scale-down removes: up to `scale_down_step`, leaving at least the group's
/// minimum and the connections its streams need at `scale_down_target_utilization`.
fn down_delta(group: &GroupMetrics, settings: &Settings) -> i32 {
    let per_connection = if group.connections == 0 {
        0.0
    } else {
        f64::from(group.stream_capacity) / f64::from(group.connections)
    };
    let target = settings
        .down_target_utilization
        .unwrap_or(settings.up_utilization)
        .max(0.01);
    let needed = connections_for(f64::from(group.active_streams), per_connection * target);
    let floor = needed.max(group.min_connections);
    let removable = group.connections.saturating_sub(floor);
    -(removable.min(settings.down_step).min(i32::MAX as u32) as i32)
}

fn evaluate(group: &GroupMetrics, settings: &Settings, prediction: Option<&Prediction>) -> Outcome {
    let signals = [
        group.utilization > settings.up_utilization,
        group.queue_depth > 0,
        group.trend > settings.up_trend,
        group.p99_latency_ms > settings.up_p99_ms,
    ];
    let agree = signals.iter().filter(|&&s| s).count() as u32;
    let share_up = f64::from(agree) / f64::from(SIGNALS);

    let mut text = String::with_capacity(240);
    text.push_str(class_name(group.class));
    text.push_str(": ");
    // Whether the headline already tells the forecast.
    let mut told = false;
    let ahead = prediction.filter(|p| p.needed > group.connections);
    let (delta, confidence) = if agree >= settings.up_agree {
        let room = group.max_connections.saturating_sub(group.connections);
        if room == 0 {
            text.push_str("hold at max");
            (0, share_up)
        } else if group.since_last_scale_ms < settings.up_cooldown_ms {
            text.push_str("hold, scaled less than ");
            push_u64(&mut text, settings.up_cooldown_ms / 1000);
            text.push_str(" s ago");
            (0, share_up)
        } else {
            let delta = settings.up_step.min(room).min(i32::MAX as u32) as i32;
            text.push('+');
            push_u64(&mut text, delta as u64);
            (delta, share_up)
        }
    } else if group.utilization < settings.down_utilization
        && group.queue_depth == 0
        && group.error_rate < settings.down_error_rate
        && group.connections > group.min_connections
        && group.since_last_scale_ms >= settings.down_cooldown_ms
    {
        match prediction.filter(|p| p.needed >= group.connections) {
            Some(prediction) => {
                text.push_str("hold, not down: ");
                push_peak(&mut text, prediction);
                push_needs(&mut text, prediction);
                told = true;
                (0, 1.0 - share_up)
            }
            None => {
                let delta = down_delta(group, settings);
                if delta == 0 {
                    text.push_str("hold, the streams need every connection");
                    (0, 1.0 - share_up)
                } else {
                    text.push('-');
                    push_u64(&mut text, u64::from(delta.unsigned_abs()));
                    text.push_str(", idle");
                    (delta, 1.0 - share_up)
                }
            }
        }
    } else if let Some(prediction) = ahead {
        told = true;
        let room = group.max_connections.saturating_sub(group.connections);
        let confidence = if prediction.needed_lower > group.connections {
            0.75_f64
        } else {
            0.5
        }
        .max(share_up);
        if room == 0 {
            text.push_str("hold at max, ");
            push_peak(&mut text, prediction);
            push_needs(&mut text, prediction);
            (0, confidence)
        } else if group.since_last_scale_ms < settings.up_cooldown_ms {
            text.push_str("hold, scaled less than ");
            push_u64(&mut text, settings.up_cooldown_ms / 1000);
            text.push_str(" s ago, ");
            push_peak(&mut text, prediction);
            push_needs(&mut text, prediction);
            (0, confidence)
        } else {
            let wanted = prediction.needed - group.connections;
            let delta = settings.up_step.min(wanted).min(room).min(i32::MAX as u32) as i32;
            text.push('+');
            push_u64(&mut text, delta as u64);
            text.push_str(" ahead of ");
            push_peak(&mut text, prediction);
            push_needs(&mut text, prediction);
            (delta, confidence)
        }
    } else {
        text.push_str("hold");
        if group.utilization < settings.down_utilization {
            push_why_not_down(&mut text, group, settings);
        }
        (0, 1.0 - share_up)
    };

    text.push_str(" - ");
    push_u64(&mut text, u64::from(agree));
    text.push_str(" of 4 up signals (need ");
    push_u64(&mut text, u64::from(settings.up_agree));
    text.push_str("): ");
    push_factors(&mut text, group, settings, &signals);
    if let Some(prediction) = prediction.filter(|_| !told) {
        text.push_str(", ");
        push_peak(&mut text, prediction);
        push_needs(&mut text, prediction);
    }
    Outcome {
        delta,
        confidence,
        text,
    }
}

/// `, not down: at min` (and the other scale-down conditions that do not hold) for a quiet
/// group that stays as it is.
fn push_why_not_down(text: &mut String, group: &GroupMetrics, settings: &Settings) {
    text.push_str(", not down:");
    let mut first = true;
    let mut reason = |text: &mut String, why: &str| {
        text.push_str(if first { " " } else { ", " });
        text.push_str(why);
        first = false;
    };
    if group.queue_depth > 0 {
        reason(text, "queue");
    }
    if group.error_rate >= settings.down_error_rate {
        reason(text, "errors");
    }
    if group.connections <= group.min_connections {
        reason(text, "at min");
    }
    if group.since_last_scale_ms < settings.down_cooldown_ms {
        reason(text, "down cooldown");
    }
}

/// `util 0.82 > 0.75, queue 3 > 0, trend 0.01/min, p99 120 ms, err 0.000, 4 conns in 2..8,
/// last scaled 6 min ago`.
fn push_factors(text: &mut String, group: &GroupMetrics, settings: &Settings, signals: &[bool]) {
    text.push_str("util ");
    push_fixed(text, group.utilization, 2);
    if signals[0] {
        text.push_str(" > ");
        push_fixed(text, settings.up_utilization, 2);
    } else if group.utilization < settings.down_utilization {
        text.push_str(" < ");
        push_fixed(text, settings.down_utilization, 2);
    }
    text.push_str(", queue ");
    push_u64(text, u64::from(group.queue_depth));
    text.push_str(", trend ");
    push_fixed(text, group.trend, 2);
    text.push_str("/min");
    if signals[2] {
        text.push_str(" > ");
        push_short(text, settings.up_trend);
    }
    text.push_str(", p99 ");
    push_short(text, group.p99_latency_ms);
    text.push_str(" ms");
    if signals[3] {
        text.push_str(" > ");
        push_short(text, settings.up_p99_ms);
    }
    text.push_str(", err ");
    push_fixed(text, group.error_rate, 3);
    if group.error_rate >= settings.down_error_rate {
        text.push_str(" >= ");
        push_short(text, settings.down_error_rate);
    }
    text.push_str(", ");
    push_u64(text, u64::from(group.connections));
    text.push_str(" conns in ");
    push_u64(text, u64::from(group.min_connections));
    text.push_str("..");
    push_u64(text, u64::from(group.max_connections));
    text.push_str(", ");
    push_since(text, group.since_last_scale_ms);
}

/// `never scaled`, `last scaled 45 s ago`, `last scaled 6 min ago`.
fn push_since(text: &mut String, ms: u64) {
    if ms == u64::MAX {
        text.push_str("never scaled");
        return;
    }
    text.push_str("last scaled ");
    let seconds = ms / 1000;
    if seconds < 120 {
        push_u64(text, seconds);
        text.push_str(" s ago");
    } else {
        push_u64(text, seconds / 60);
        text.push_str(" min ago");
    }
}

fn class_name(class: TrafficClass) -> &'static str {
    match class {
        TrafficClass::Realtime => "realtime",
        TrafficClass::Event => "event",
        TrafficClass::State => "state",
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// A quiet realtime group: 4 connections of 100 streams at 45%, nothing fires.
    fn quiet() -> GroupMetrics {
        GroupMetrics {
            class: TrafficClass::Realtime,
            connections: 4,
            min_connections: 1,
            max_connections: 16,
            active_streams: 180,
            stream_capacity: 400,
            utilization: 0.45,
            queue_depth: 0,
            p99_latency_ms: 40.0,
            error_rate: 0.0,
            trend: 0.0,
            since_last_scale_ms: 600_000,
        }
    }

    /// Three days of 15-minute means cycling between 40 and 360 streams, the next peak
    /// `steps_to_peak` steps after the last point (negative: that far in the past).
    fn daily(steps_to_peak: i64) -> Vec<f64> {
        let points = 3 * 96_i64;
        (0..points)
            .map(|t| {
                let from_peak = (t - (points - 1 + steps_to_peak)) as f64;
                let angle = 2.0 * core::f64::consts::PI * from_peak / 96.0;
                200.0 + 160.0 * angle.cos() + ((t * 7919) % 13) as f64 - 6.0
            })
            .collect()
    }

    #[test]
    fn forecasts_the_daily_peak_and_its_connections() {
        let settings = Settings::defaults();
        let prediction = predict(&daily(3), &quiet(), &settings).expect("a forecast");
        assert_eq!(prediction.method, Method::HoltWinters);
        // The top of the cycle is flat: within a step of the true peak (45 min).
        assert!((30..=60).contains(&prediction.in_minutes), "{prediction:?}");
        assert!(
            (prediction.peak - 360.0).abs() < 0.15 * 360.0,
            "{prediction:?}"
        );
        // 100 streams per connection at 75%: 75 each.
        assert_eq!(
            prediction.needed,
            connections_for(prediction.peak, 75.0),
            "{prediction:?}"
        );
        assert!(prediction.needed >= 5, "{prediction:?}");
    }

    #[test]
    fn scales_up_ahead_of_a_peak() {
        let settings = Settings::defaults();
        let group = quiet();
        let prediction = predict(&daily(3), &group, &settings);
        let outcome = evaluate(&group, &settings, prediction.as_ref());
        let needed = prediction.unwrap().needed;
        assert_eq!(outcome.delta, 2.min(needed as i32 - 4), "{}", outcome.text);
        assert!(outcome.text.starts_with("realtime: +"), "{}", outcome.text);
        assert!(
            outcome.text.contains("ahead of a forecast peak of ")
                && outcome.text.contains(" min (Holt-Winters; needs "),
            "{}",
            outcome.text
        );
        assert!(outcome.confidence >= 0.5);
    }

    #[test]
    fn the_step_is_bounded_by_need_room_and_cooldown() {
        let settings = Settings::defaults();
        let prediction = Prediction {
            peak: 340.0,
            in_minutes: 45,
            method: Method::HoltWinters,
            needed: 5,
            needed_lower: 4,
        };
        // Needs one more: +1, not the step of 2.
        let outcome = evaluate(&quiet(), &settings, Some(&prediction));
        assert_eq!(outcome.delta, 1, "{}", outcome.text);
        assert!(outcome.text.starts_with(
            "realtime: +1 ahead of a forecast peak of 340 streams in 45 min \
             (Holt-Winters; needs 5 connections)"
        ));
        assert_eq!(outcome.confidence, 0.5);

        // Needs many more: the step of 2, capped by the room left.
        let many = Prediction {
            needed: 40,
            needed_lower: 30,
            ..prediction.clone()
        };
        assert_eq!(evaluate(&quiet(), &settings, Some(&many)).delta, 2);
        assert_eq!(evaluate(&quiet(), &settings, Some(&many)).confidence, 0.75);
        let near_max = GroupMetrics {
            max_connections: 5,
            ..quiet()
        };
        assert_eq!(evaluate(&near_max, &settings, Some(&many)).delta, 1);
        let at_max = GroupMetrics {
            max_connections: 4,
            ..quiet()
        };
        let outcome = evaluate(&at_max, &settings, Some(&many));
        assert_eq!(outcome.delta, 0);
        assert!(
            outcome
                .text
                .starts_with("realtime: hold at max, a forecast peak")
        );

        // Within the up cooldown: hold.
        let recent = GroupMetrics {
            since_last_scale_ms: 10_000,
            ..quiet()
        };
        let outcome = evaluate(&recent, &settings, Some(&many));
        assert_eq!(outcome.delta, 0, "{}", outcome.text);
        assert!(
            outcome
                .text
                .contains("scaled less than 60 s ago, a forecast peak")
        );

        // Enough connections for the peak: the reactive hold, with the forecast in the factors.
        let enough = Prediction {
            needed: 4,
            ..prediction
        };
        let outcome = evaluate(&quiet(), &settings, Some(&enough));
        assert_eq!(outcome.delta, 0);
        assert!(
            outcome.text.starts_with("realtime: hold - "),
            "{}",
            outcome.text
        );
        assert!(outcome.text.ends_with(
            ", a forecast peak of 340 streams in 45 min (Holt-Winters; needs 4 connections)"
        ));
    }

    #[test]
    fn a_reactive_scale_up_stays_as_it_is() {
        let settings = Settings::defaults();
        let busy = GroupMetrics {
            utilization: 0.9,
            queue_depth: 3,
            ..quiet()
        };
        let prediction = Prediction {
            peak: 500.0,
            in_minutes: 30,
            method: Method::Holt,
            needed: 7,
            needed_lower: 6,
        };
        let outcome = evaluate(&busy, &settings, Some(&prediction));
        assert_eq!(outcome.delta, 2);
        assert!(
            outcome.text.starts_with("realtime: +2 - 2 of 4"),
            "{}",
            outcome.text
        );
        assert!(
            outcome
                .text
                .contains("a forecast peak of 500 streams in 30 min (Holt;")
        );
    }

    #[test]
    fn a_larger_down_step_shrinks_to_what_the_streams_need_and_no_further() {
        let mut settings = Settings::defaults();
        // 10 connections of 100 streams carrying 150 streams: utilization 0.15.
        let idle = GroupMetrics {
            connections: 10,
            stream_capacity: 1000,
            active_streams: 150,
            utilization: 0.15,
            ..quiet()
        };
        assert_eq!(evaluate(&idle, &settings, None).delta, -1, "the default");
        assert!(settings.apply("scale_down_step", "100"));
        // 150 streams at 0.75 of 100 need 2 connections: remove 8.
        let outcome = evaluate(&idle, &settings, None);
        assert_eq!(outcome.delta, -8, "{}", outcome.text);
        assert!(
            outcome.text.starts_with("realtime: -8, idle"),
            "{}",
            outcome.text
        );
        // At full utilization they fit on 2 as well; at 0.5 they need 3.
        assert!(settings.apply("scale_down_target_utilization", "0.5"));
        assert_eq!(evaluate(&idle, &settings, None).delta, -7);
        assert!(!settings.apply("scale_down_target_utilization", "0"));
        assert!(!settings.apply("scale_down_step", "0"));
        // Never below the group's minimum.
        let at_min = GroupMetrics {
            min_connections: 9,
            ..idle
        };
        assert_eq!(evaluate(&at_min, &settings, None).delta, -1);
    }

    #[test]
    fn never_predicts_a_scale_down_and_blocks_one_the_peak_needs() {
        let settings = Settings::defaults();
        let idle = GroupMetrics {
            utilization: 0.1,
            active_streams: 40,
            ..quiet()
        };
        // The peak is past: the reactive -1 goes ahead.
        let past = predict(&daily(-24), &idle, &settings).expect("a forecast");
        assert!(past.needed < 4, "{past:?}");
        let outcome = evaluate(&idle, &settings, Some(&past));
        assert_eq!(outcome.delta, -1, "{}", outcome.text);
        // No forecast: the same.
        assert_eq!(evaluate(&idle, &settings, None).delta, -1);
        // A peak ahead needs the 4 connections: hold.
        let ahead = Prediction {
            peak: 290.0,
            in_minutes: 60,
            method: Method::HoltWinters,
            needed: 4,
            needed_lower: 3,
        };
        let outcome = evaluate(&idle, &settings, Some(&ahead));
        assert_eq!(outcome.delta, 0, "{}", outcome.text);
        assert!(outcome.text.starts_with(
            "realtime: hold, not down: a forecast peak of 290 streams in 60 min \
             (Holt-Winters; needs 4 connections)"
        ));
        // A tiny forecast never makes the scaler shrink a group that is not idle.
        let small = Prediction {
            peak: 1.0,
            needed: 1,
            needed_lower: 0,
            ..ahead
        };
        assert_eq!(evaluate(&quiet(), &settings, Some(&small)).delta, 0);
    }

    #[test]
    fn too_little_history_or_no_connections_predicts_nothing() {
        let settings = Settings::defaults();
        assert_eq!(predict(&[], &quiet(), &settings), None);
        assert_eq!(predict(&[100.0; 7], &quiet(), &settings), None);
        let mut gappy = [f64::NAN; 40];
        gappy[..7].copy_from_slice(&[100.0; 7]);
        assert_eq!(predict(&gappy, &quiet(), &settings), None);
        let holt = predict(&[100.0; 8], &quiet(), &settings).expect("8 points are enough");
        assert_eq!(holt.method, Method::Holt);
        assert_eq!(holt.needed, 2);
        let empty = GroupMetrics {
            connections: 0,
            stream_capacity: 0,
            ..quiet()
        };
        assert_eq!(predict(&daily(3), &empty, &settings), None);
        let garbage = [
            f64::INFINITY,
            f64::MAX,
            -f64::MAX,
            f64::NAN,
            1e300,
            5.0,
            6.0,
            7.0,
            8.0,
        ];
        let _ = predict(&garbage, &quiet(), &settings);
    }

    #[test]
    fn config_keys() {
        let mut settings = Settings::defaults();
        assert_eq!(settings.history_points(), 672);
        assert_eq!(settings.season(), 96);
        assert_eq!(settings.horizon_steps(), 4);
        assert!(settings.apply("predict", "off") && !settings.predict);
        assert!(settings.apply("predict", "on") && settings.predict);
        assert!(!settings.apply("predict", "maybe"));
        assert!(settings.apply("predict_step_minutes", "5"));
        assert_eq!(settings.history_points(), 2016);
        assert_eq!(settings.season(), 288);
        assert_eq!(settings.horizon_steps(), 12);
        assert!(settings.apply("predict_horizon_minutes", "61"));
        assert_eq!(settings.horizon_steps(), 13);
        assert!(settings.apply("predict_season_steps", "24"));
        assert_eq!(settings.season(), 24);
        assert!(settings.apply("predict_target_utilization", "0.6"));
        assert!(settings.apply("predict_min_points", "3"));
        for (key, value) in [
            ("predict_step_minutes", "0"),
            ("predict_step_minutes", "1.5"),
            ("predict_step_minutes", "1441"),
            ("predict_horizon_minutes", "0"),
            ("predict_target_utilization", "0"),
            ("predict_target_utilization", "1.5"),
            ("predict_min_points", "2"),
            ("predict_season_steps", "-1"),
        ] {
            assert!(!settings.apply(key, value), "{key} = {value}");
        }
    }
}

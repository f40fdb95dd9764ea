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
//! Confidence per group is the share of the four up signals that support the outcome (those
//! that fire for a scale-up, or for a hold at max or in cooldown; those that do not for a
//! scale-down or a quiet hold); the plan's confidence is the mean over groups (1.0 with none).
//! The reasoning lists every factor per group.

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
use sluice::policy::{config, log};

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
            let outcome = evaluate(group, &settings);
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
}

impl Settings {
    fn load() -> Self {
        let mut settings = Settings {
            up_utilization: 0.75,
            up_trend: 0.05,
            up_p99_ms: 250.0,
            up_agree: 2,
            up_step: 2,
            up_cooldown_ms: 60_000,
            down_utilization: 0.30,
            down_error_rate: 0.01,
            down_cooldown_ms: 300_000,
        };
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

    /// Sets `key` from `text`; false when the key is unknown or the value invalid.
    fn apply(&mut self, key: &str, text: &str) -> bool {
        let Some(value) = parse_f64(text) else {
            return false;
        };
        let ratio = (0.0..=1.0).contains(&value);
        let count = (1.0..=f64::from(SIGNALS)).contains(&value) && value == value as u32 as f64;
        let duration = (0.0..=86_400_000.0).contains(&value);
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
            _ => return false,
        }
        true
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

fn evaluate(group: &GroupMetrics, settings: &Settings) -> Outcome {
    let signals = [
        group.utilization > settings.up_utilization,
        group.queue_depth > 0,
        group.trend > settings.up_trend,
        group.p99_latency_ms > settings.up_p99_ms,
    ];
    let agree = signals.iter().filter(|&&s| s).count() as u32;
    let share_up = f64::from(agree) / f64::from(SIGNALS);

    let mut text = String::with_capacity(160);
    text.push_str(class_name(group.class));
    text.push_str(": ");
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
        text.push_str("-1, idle");
        (-1, 1.0 - share_up)
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

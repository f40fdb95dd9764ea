//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Names follow Prometheus conventions: the `sluice_` prefix, counters end in `_total`, times
//! are in seconds and shares are ratios. Labels are `endpoint`, `region`, `group`, `monitor`,
//! `slot`, `scope`, `state` and `limit`, with bounded cardinality: endpoints, groups, slots and
//! limits come from the config, and only configured monitors get their own `monitor` label (the
//! others are summed under `monitor="_other"`). Connection breakers, whose names change with
//! every reconnect, are left out.
//!
//! The numbers are read from the same snapshots as the JSON API at scrape time; this module
//! keeps no registry. The format is a few lines of text per family, written here rather than
//! through a client library because a registry would hold a second copy of every counter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sluice_config::BreakerScope;
use sluice_config::SlotKind;
use sluice_contract::breaker::BreakerState;
use sluice_contract::health::Health;
use sluice_proxy::pool::LimitsSnapshot;

use crate::AdminState;
use crate::overview;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&state))
}

/// What a family is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Text being written, one family at a time.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just started.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(&number(value));
        self.text.push('\n');
        self
    }

    /// A family with a single unlabelled sample.
    fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind).sample(name, &[], value);
    }
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// The whole exposition.
pub fn render(state: &AdminState) -> String {
    let mut out = Exposition::default();
    let pool = overview::PoolRead::now(state, std::time::Duration::ZERO);
    let summary = overview::gather(state, &pool);
    out.single(
        "sluice_uptime_seconds",
        "Seconds since the process's services started.",
        Kind::Gauge,
        summary.uptime_s,
    );
    out.single(
        "sluice_health_score",
        "System health score, 0 to 100 (GET /api/v1/stats gives the deductions).",
        Kind::Gauge,
        f64::from(summary.health.score),
    );
    for (field, help, value) in summary.stats.fields() {
        let name = format!("sluice_{field}");
        let kind = if field.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        out.single(&name, help, kind, value as f64);
    }
    out.single(
        "sluice_connections",
        "Upstream connections open, over all groups.",
        Kind::Gauge,
        summary.connections as f64,
    );
    out.single(
        "sluice_connections_max",
        "The global cap on upstream connections.",
        Kind::Gauge,
        summary.global_cap as f64,
    );
    let efficiency = &summary.efficiency;
    out.single(
        "sluice_connections_needed",
        "Connections the open streams need at each group's streams per connection.",
        Kind::Gauge,
        efficiency.connections_needed as f64,
    );
    for (name, help, value) in [
        (
            "sluice_connection_efficiency_ratio",
            "Connections needed over connections held (1 is ideal).",
            efficiency.connection_efficiency,
        ),
        (
            "sluice_streams_per_connection",
            "Mean streams per connection taking streams.",
            efficiency.streams_per_connection,
        ),
        (
            "sluice_idle_connections_ratio",
            "Share of connections taking streams that carry none.",
            efficiency.idle_ratio,
        ),
    ] {
        if let Some(value) = value {
            out.single(name, help, Kind::Gauge, value);
        }
    }
    groups(&pool.groups, &mut out);
    endpoints(state, &pool, &mut out);
    monitors(state, &mut out);
    policies(state, &mut out);
    out.text
}

fn groups(loads: &[sluice_proxy::pool::GroupLoad], out: &mut Exposition) {
    type Read = fn(&sluice_proxy::pool::GroupLoad) -> f64;
    let families: [(&str, &str, Kind, Read); 10] = [
        (
            "sluice_group_connections",
            "Connections of the group taking streams.",
            Kind::Gauge,
            |g| g.connections as f64,
        ),
        (
            "sluice_group_connections_held",
            "Connections of the group open, draining ones included.",
            Kind::Gauge,
            |g| g.held as f64,
        ),
        (
            "sluice_group_connections_target",
            "Connections the scaler last asked the group to hold.",
            Kind::Gauge,
            |g| g.target as f64,
        ),
        (
            "sluice_group_connections_max",
            "The group's connection limit.",
            Kind::Gauge,
            |g| g.max_connections as f64,
        ),
        (
            "sluice_group_streams",
            "Streams on the group's connections.",
            Kind::Gauge,
            |g| f64::from(g.streams),
        ),
        (
            "sluice_group_streams_capacity",
            "Streams the group's connections can carry.",
            Kind::Gauge,
            |g| f64::from(g.capacity),
        ),
        (
            "sluice_group_streams_waiting",
            "Streams waiting for a slot in the group.",
            Kind::Gauge,
            |g| g.waiting as f64,
        ),
        (
            "sluice_group_streams_started_total",
            "Upstream streams placed on the group.",
            Kind::Counter,
            |g| g.streams_started_total as f64,
        ),
        (
            "sluice_group_streams_failed_total",
            "Upstream streams of the group that failed (kinds the breakers count).",
            Kind::Counter,
            |g| g.streams_failed_total as f64,
        ),
        (
            "sluice_group_latency_seconds",
            "Mean peak-EWMA latency of the group's connections.",
            Kind::Gauge,
            |g| g.latency_ms / 1e3,
        ),
    ];
    for (name, help, kind, read) in families {
        out.family(name, help, kind);
        for group in loads {
            let class = group.class.to_string();
            out.sample(name, &[("group", &class)], read(group));
        }
    }
}

/// Each endpoint's caps (`[endpoints.limits]`, `rate_limit`) and the use against the ones
/// that are counts, labelled by the config key.
fn endpoint_limits(cards: &[overview::EndpointCard], out: &mut Exposition) {
    type Read = fn(&LimitsSnapshot) -> Vec<(&'static str, Option<f64>)>;
    let families: [(&str, &str, Read); 2] = [
        (
            "sluice_endpoint_limit",
            "The endpoint's configured cap, by config key (unset caps are not listed).",
            |l| {
                vec![
                    ("max_connections", l.max_connections.map(f64::from)),
                    ("max_streams", l.max_streams.map(f64::from)),
                    (
                        "max_streams_per_connection",
                        l.max_streams_per_connection.map(f64::from),
                    ),
                    ("connections_per_second", l.connections_per_second),
                    ("streams_per_second", l.streams_per_second),
                ]
            },
        ),
        (
            "sluice_endpoint_limit_used",
            "Use against the endpoint's count caps: connections (the health check's included) and open streams.",
            |l| {
                vec![
                    ("max_connections", Some(l.connections as f64)),
                    ("max_streams", Some(l.streams as f64)),
                ]
            },
        ),
    ];
    for (name, help, read) in families {
        out.family(name, help, Kind::Gauge);
        for card in cards {
            for (limit, value) in read(&card.endpoint.limits) {
                if let Some(value) = value {
                    out.sample(
                        name,
                        &[("endpoint", &card.endpoint.id), ("limit", limit)],
                        value,
                    );
                }
            }
        }
    }
}

fn endpoints(state: &AdminState, pool: &overview::PoolRead, out: &mut Exposition) {
    let connections = state.proxy.connections();
    let cards = overview::endpoint_cards(&pool.endpoints, &connections);
    let name = "sluice_endpoint_health";
    out.family(
        name,
        "1 for the endpoint's current health state, 0 for the others.",
        Kind::Gauge,
    );
    for card in &cards {
        let endpoint = &card.endpoint;
        for (health, label) in [
            (Health::Healthy, "healthy"),
            (Health::Degraded, "degraded"),
            (Health::Unhealthy, "unhealthy"),
        ] {
            out.sample(
                name,
                &[
                    ("endpoint", &endpoint.id),
                    ("region", &endpoint.region),
                    ("state", label),
                ],
                flag(endpoint.health.health == health),
            );
        }
    }
    type Read = fn(&overview::EndpointCard) -> Option<f64>;
    let families: [(&str, &str, Read); 5] = [
        (
            "sluice_endpoint_misconfigured",
            "1 while the endpoint's provider refused its credentials and it waits to be re-enabled.",
            |c| Some(flag(c.endpoint.health.standing.misconfigured.is_some())),
        ),
        (
            "sluice_endpoint_pushback_seconds",
            "How much longer the endpoint's provider asked for no new streams (quota pushback).",
            |c| {
                let ms = c
                    .endpoint
                    .health
                    .standing
                    .pushback_remaining_ms
                    .unwrap_or(0);
                Some(ms as f64 / 1e3)
            },
        ),
        (
            "sluice_endpoint_connections",
            "Upstream connections to the endpoint.",
            |c| Some(c.endpoint.connections as f64),
        ),
        (
            "sluice_endpoint_streams",
            "Streams on the endpoint's connections.",
            |c| Some(f64::from(c.streams)),
        ),
        (
            "sluice_endpoint_latency_seconds",
            "Mean peak-EWMA latency of the endpoint's connections.",
            |c| c.latency_ms.map(|ms| ms / 1e3),
        ),
    ];
    for (name, help, read) in families {
        out.family(name, help, Kind::Gauge);
        for card in &cards {
            if let Some(value) = read(card) {
                out.sample(name, &[("endpoint", &card.endpoint.id)], value);
            }
        }
    }
    endpoint_limits(&cards, out);
    let name = "sluice_breaker_state";
    out.family(
        name,
        "1 for the breaker's current state, 0 for the others (endpoint and monitor breakers).",
        Kind::Gauge,
    );
    let configured = configured_monitors(state);
    for breaker in &pool.breakers {
        let scope = match breaker.scope {
            BreakerScope::Endpoint => breaker.scope.as_str(),
            BreakerScope::Monitor if configured.contains(&*breaker.name) => breaker.scope.as_str(),
            _ => continue,
        };
        for candidate in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::ForcedOpen,
            BreakerState::Disabled,
        ] {
            let label = candidate.to_string();
            out.sample(
                name,
                &[("scope", scope), ("name", &breaker.name), ("state", &label)],
                flag(breaker.state == candidate),
            );
        }
    }
}

/// Configured monitor ids (the only ones with their own label).
fn configured_monitors(state: &AdminState) -> BTreeSet<String> {
    state
        .proxy
        .config()
        .monitors
        .iter()
        .map(|m| m.id.clone())
        .collect()
}

fn monitors(state: &AdminState, out: &mut Exposition) {
    let configured = configured_monitors(state);
    let mut open: BTreeMap<String, u64> = configured.iter().map(|id| (id.clone(), 0)).collect();
    for (id, calls) in state.proxy.monitor_calls() {
        let key = if configured.contains(&*id) {
            id.to_string()
        } else {
            "_other".to_owned()
        };
        *open.entry(key).or_default() += calls;
    }
    let name = "sluice_monitor_calls_open";
    out.family(
        name,
        "Calls each monitor has open (unconfigured monitors summed as _other).",
        Kind::Gauge,
    );
    for (monitor, calls) in &open {
        out.sample(name, &[("monitor", monitor)], *calls as f64);
    }
}

fn policies(state: &AdminState, out: &mut Exposition) {
    let slots: Vec<_> = SlotKind::ALL
        .iter()
        .map(|kind| (kind.as_str(), state.policies.slot(*kind)))
        .collect();
    type Read = fn(&sluice_policy::Slot) -> u64;
    let counters: [(&str, &str, Read); 2] = [
        (
            "sluice_policy_fallbacks_total",
            "Calls the built-in policy answered (no plugin, or the plugin failed).",
            |slot| slot.fallbacks.load(Relaxed),
        ),
        (
            "sluice_policy_plugin_failures_total",
            "Plugin calls that failed (trap, timeout, memory, invalid answer).",
            |slot| slot.failed_calls.load(Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        out.family(name, help, Kind::Counter);
        for (slot, handle) in &slots {
            out.sample(name, &[("slot", slot)], read(handle) as f64);
        }
    }
    let name = "sluice_policy_plugin_active";
    out.family(
        name,
        "1 while a plugin (name and version) answers for the slot, 0 when it is disabled.",
        Kind::Gauge,
    );
    for (slot, handle) in &slots {
        if let Some(plugin) = handle.active() {
            let info = plugin.info();
            let version = info.version.to_string();
            out.sample(
                name,
                &[
                    ("slot", slot),
                    ("plugin", &info.name),
                    ("version", &version),
                ],
                flag(!plugin.is_disabled()),
            );
        }
    }
    let name = "sluice_policy_shadow_agreement_ratio";
    out.family(
        name,
        "Share of compared calls where the shadow plugin agreed with the active policy.",
        Kind::Gauge,
    );
    for (slot, handle) in &slots {
        if let Some(shadow) = handle.shadow() {
            let compared = shadow.stats.shadow_compared.load(Relaxed);
            if compared > 0 {
                let agreed = shadow.stats.shadow_agreed.load(Relaxed);
                out.sample(name, &[("slot", slot)], agreed as f64 / compared as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("x_total", "a \\ b\nc", Kind::Counter).sample(
            "x_total",
            &[("name", "q\"\\\n")],
            1.5,
        );
        assert_eq!(
            out.text,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{name=\"q\\\"\\\\\\n\"} 1.5\n"
        );
    }

    #[test]
    fn special_numbers_use_the_format_s_spelling() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(3.0), "3");
    }
}

//! Hourly, daily and weekly reports built from the store's history.
//!
//! This module owns what a report says and how it looks: [`Report::build`] reads the rollups,
//! insights and scaling records of one period from the [`Store`] and summarizes them;
//! [`Report::to_html`] renders one self-contained HTML page (inline CSS and inline SVG charts,
//! no scripts and no external assets) that the admin API serves and `sluice report` writes.
//!
//! It must not write to the store (the loop that schedules reports stores their JSON), nor
//! assume any metric exists: metric names are free strings and a missing metric only leaves
//! its part of the report empty. Building a report runs several store queries; like every store
//! call it blocks, so async callers use `tokio::task::spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::records::{
    Insight, InsightKind, ReportPeriod, Rollup, ScalingRecord, Severity, unix_ms_now,
};
use crate::store::{Store, StoreError};

use crate::sampler::{
    BYTES_TO_MONITORS as METRIC_BYTES, CONNECTIONS as METRIC_CONNECTIONS,
    DOWNSTREAM_STREAMS as METRIC_DOWNSTREAM, ERROR_RATE as METRIC_ERROR_RATE,
    LATENCY as METRIC_LATENCY, STREAMS_STARTED as METRIC_STARTED,
    UPSTREAM_STREAMS as METRIC_UPSTREAM, UTILIZATION as METRIC_UTILIZATION,
};

/// The metrics charted in every report, in order.
pub const CHART_METRICS: [&str; 5] = [
    METRIC_CONNECTIONS,
    METRIC_DOWNSTREAM,
    METRIC_UTILIZATION,
    METRIC_ERROR_RATE,
    METRIC_LATENCY,
];

/// Most insights a report lists.
pub const MAX_INSIGHTS: usize = 50;
/// Most scaling records a report lists.
pub const MAX_SCALING: usize = 100;
/// Most points in one chart series.
pub const MAX_CHART_POINTS: usize = 240;
/// Insights read to collect recommendations.
const MAX_RECOMMENDATION_SOURCES: usize = 1000;
/// Mean upstream streams per connection below which multiplexing is low.
const LOW_STREAMS_PER_CONNECTION: f64 = 2.0;
/// Mean error rate above which the report recommends a look at the endpoints.
const HIGH_ERROR_RATE: f64 = 0.05;
/// Peak utilization at or above which the report recommends more room.
const HIGH_UTILIZATION: f64 = 0.9;
/// Coverage below which the report says the numbers describe part of the period only.
const LOW_COVERAGE: f64 = 0.9;
const MINUTE_MS: i64 = 60_000;

/// A report over one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The span it covers.
    pub period: ReportPeriod,
    /// Start of the span, Unix ms (inclusive).
    pub start_ms: i64,
    /// End of the span, Unix ms (exclusive).
    pub end_ms: i64,
    /// When it was built, Unix ms.
    pub generated_ms: i64,
    /// The headline numbers.
    pub summary: Summary,
    /// Insights active in the span, most severe first, then most recently seen; at most
    /// [`MAX_INSIGHTS`].
    pub insights: Vec<Insight>,
    /// Every metric with rollups in the span, by name.
    pub metrics: Vec<MetricSummary>,
    /// Suggested changes: recommendation insights' titles, then rules over the summary.
    pub recommendations: Vec<String>,
    /// Scaling records in the span, newest first; at most [`MAX_SCALING`].
    pub scaling: Vec<ScalingRecord>,
    /// One series per [`CHART_METRICS`] entry (empty when the metric has no data), at most
    /// [`MAX_CHART_POINTS`] points each.
    pub charts: Vec<ChartSeries>,
}

/// The headline numbers of a report. Means are over the minute averages of the span (each
/// minute with data weighs the same); maxima are the largest sample. `None` when the metric has
/// no data in the span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean of `pool.connections`.
    pub connections_mean: Option<f64>,
    /// Max of `pool.connections`.
    pub connections_max: Option<f64>,
    /// Mean of `streams.downstream`.
    pub downstream_streams_mean: Option<f64>,
    /// Max of `streams.downstream`.
    pub downstream_streams_max: Option<f64>,
    /// Mean of `streams.upstream`.
    pub upstream_streams_mean: Option<f64>,
    /// Max of `streams.upstream`.
    pub upstream_streams_max: Option<f64>,
    /// Mean of `streams.started_per_s`.
    pub streams_started_per_s_mean: Option<f64>,
    /// Mean of `bytes.to_monitors_per_s`.
    pub bytes_per_s_mean: Option<f64>,
    /// Mean of `upstream.error_rate`.
    pub error_rate_mean: Option<f64>,
    /// Max of `pool.utilization`.
    pub utilization_max: Option<f64>,
    /// Mean over the minutes with both metrics (and connections open) of `streams.upstream /
    /// pool.connections`.
    pub streams_per_connection_mean: Option<f64>,
    /// Insights active in the span, by severity (all of them, not only those listed).
    pub insights: SeverityCounts,
    /// Scaling decisions recorded in the span.
    pub scaling_decisions: u64,
    /// Scaling decisions that changed a group (`applied != 0`).
    pub scaling_actions: u64,
    /// Minutes of the span with any rollup.
    pub minutes_with_data: u64,
    /// Minutes in the span.
    pub minutes_in_period: u64,
    /// `minutes_with_data / minutes_in_period`, 0 to 1.
    pub coverage: f64,
}

/// Insight counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverityCounts {
    /// Info insights.
    pub info: u64,
    /// Warnings.
    pub warning: u64,
    /// Critical insights.
    pub critical: u64,
}

impl SeverityCounts {
    /// All insights.
    pub fn total(&self) -> u64 {
        self.info + self.warning + self.critical
    }
}

/// One metric over a report's span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Metric name.
    pub metric: String,
    /// Mean of the minute averages.
    pub avg: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// 95th percentile (nearest rank) of the minute averages.
    pub p95_of_minute_avgs: f64,
    /// Minutes with data.
    pub minutes: u64,
}

/// A chart's line: `(ts_ms, avg)` points, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartSeries {
    /// Metric name.
    pub metric: String,
    /// Averaged points, oldest first.
    pub points: Vec<(i64, f64)>,
}

/// The finite minutes of one metric.
struct Series {
    /// `(ts_ms, avg)` per minute, oldest first.
    avgs: Vec<(i64, f64)>,
    min: f64,
    max: f64,
}

impl Series {
    fn from_rollups(rollups: &[Rollup]) -> Option<Series> {
        let avgs: Vec<(i64, f64)> = rollups
            .iter()
            .filter(|r| r.avg.is_finite())
            .map(|r| (r.ts_ms, r.avg))
            .collect();
        if avgs.is_empty() {
            return None;
        }
        let finite_or = |v: f64, fallback: f64| if v.is_finite() { v } else { fallback };
        let min = rollups
            .iter()
            .filter(|r| r.avg.is_finite())
            .map(|r| finite_or(r.min, r.avg))
            .fold(f64::INFINITY, f64::min);
        let max = rollups
            .iter()
            .filter(|r| r.avg.is_finite())
            .map(|r| finite_or(r.max, r.avg))
            .fold(f64::NEG_INFINITY, f64::max);
        Some(Series { avgs, min, max })
    }

    fn mean(&self) -> f64 {
        self.avgs.iter().map(|(_, v)| v).sum::<f64>() / self.avgs.len() as f64
    }

    fn p95(&self) -> f64 {
        let mut values: Vec<f64> = self.avgs.iter().map(|(_, v)| *v).collect();
        values.sort_by(f64::total_cmp);
        let rank = ((values.len() as f64) * 0.95).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    fn summary(&self, metric: &str) -> MetricSummary {
        MetricSummary {
            metric: metric.to_string(),
            avg: self.mean(),
            min: self.min,
            max: self.max,
            p95_of_minute_avgs: self.p95(),
            minutes: self.avgs.len() as u64,
        }
    }
}

/// Averages `points` (oldest first, inside `[start_ms, end_ms)`) into at most `max_points`
/// equal time buckets over the span; each bucket's point sits at its members' mean time. Series
/// already short enough come back unchanged.
pub fn downsample(
    points: &[(i64, f64)],
    start_ms: i64,
    end_ms: i64,
    max_points: usize,
) -> Vec<(i64, f64)> {
    if points.len() <= max_points {
        return points.to_vec();
    }
    if max_points == 0 {
        return Vec::new();
    }
    let buckets = max_points as i64;
    let span = (end_ms - start_ms).max(1);
    let width = (span + buckets - 1) / buckets;
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(max_points);
    let mut current: Option<(i64, i128, f64, u32)> = None; // (bucket, ts sum, value sum, n)
    let flush = |out: &mut Vec<(i64, f64)>, (_, ts_sum, sum, n): (i64, i128, f64, u32)| {
        let ts = i64::try_from(ts_sum / i128::from(n)).unwrap_or(i64::MAX);
        out.push((ts, sum / f64::from(n)));
    };
    for &(ts, value) in points {
        let bucket = ((ts - start_ms) / width).clamp(0, buckets - 1);
        match &mut current {
            Some((b, ts_sum, sum, n)) if *b == bucket => {
                *ts_sum += i128::from(ts);
                *sum += value;
                *n += 1;
            }
            _ => {
                if let Some(done) = current.take() {
                    flush(&mut out, done);
                }
                current = Some((bucket, i128::from(ts), value, 1));
            }
        }
    }
    if let Some(done) = current {
        flush(&mut out, done);
    }
    out
}

impl Report {
    /// Builds the report of `period` ending at `end_ms` (start = `end_ms -
    /// period.length_ms()`) from what `store` holds.
    pub fn build(store: &Store, period: ReportPeriod, end_ms: i64) -> Result<Report, StoreError> {
        let start_ms = end_ms - period.length_ms();

        // One metric at a time keeps memory to one metric's minutes, even for a week.
        let mut kept: BTreeMap<&'static str, Series> = BTreeMap::new();
        let mut metrics = Vec::new();
        let mut minutes: BTreeSet<i64> = BTreeSet::new();
        for metric in store.rollup_metrics()? {
            let rollups = store.rollups(&metric, start_ms, end_ms)?;
            let Some(series) = Series::from_rollups(&rollups) else {
                continue;
            };
            minutes.extend(series.avgs.iter().map(|(ts, _)| ts.div_euclid(MINUTE_MS)));
            metrics.push(series.summary(&metric));
            let wanted = CHART_METRICS
                .iter()
                .chain(&[METRIC_UPSTREAM, METRIC_STARTED, METRIC_BYTES])
                .find(|m| **m == metric);
            if let Some(name) = wanted {
                kept.insert(*name, series);
            }
        }

        let counts = store.insight_counts(start_ms, end_ms)?;
        let (scaling_decisions, scaling_actions) = store.scaling_counts(start_ms, end_ms)?;
        let minutes_in_period = u64::try_from(period.length_ms() / MINUTE_MS).unwrap_or(0);
        let minutes_with_data = minutes.len() as u64;
        let mean = |m: &str| kept.get(m).map(Series::mean);
        let max = |m: &str| kept.get(m).map(|s| s.max);
        let mut summary = Summary {
            connections_mean: mean(METRIC_CONNECTIONS),
            connections_max: max(METRIC_CONNECTIONS),
            downstream_streams_mean: mean(METRIC_DOWNSTREAM),
            downstream_streams_max: max(METRIC_DOWNSTREAM),
            upstream_streams_mean: mean(METRIC_UPSTREAM),
            upstream_streams_max: max(METRIC_UPSTREAM),
            streams_started_per_s_mean: mean(METRIC_STARTED),
            bytes_per_s_mean: mean(METRIC_BYTES),
            error_rate_mean: mean(METRIC_ERROR_RATE),
            utilization_max: max(METRIC_UTILIZATION),
            streams_per_connection_mean: None,
            insights: SeverityCounts::default(),
            scaling_decisions,
            scaling_actions,
            minutes_with_data,
            minutes_in_period,
            coverage: if minutes_in_period == 0 {
                0.0
            } else {
                (minutes_with_data as f64 / minutes_in_period as f64).min(1.0)
            },
        };
        for (severity, n) in counts {
            match severity {
                Severity::Info => summary.insights.info += n,
                Severity::Warning => summary.insights.warning += n,
                Severity::Critical => summary.insights.critical += n,
            }
        }
        if let (Some(up), Some(conns)) = (kept.get(METRIC_UPSTREAM), kept.get(METRIC_CONNECTIONS)) {
            let conns: BTreeMap<i64, f64> = conns.avgs.iter().copied().collect();
            let ratios: Vec<f64> = up
                .avgs
                .iter()
                .filter_map(|(ts, streams)| {
                    let c = *conns.get(ts)?;
                    (c > 0.0).then(|| streams / c)
                })
                .collect();
            if !ratios.is_empty() {
                summary.streams_per_connection_mean =
                    Some(ratios.iter().sum::<f64>() / ratios.len() as f64);
            }
        }

        // Most severe first, then most recently seen (the store's order).
        let all_insights = store.insights_between(start_ms, end_ms, MAX_RECOMMENDATION_SOURCES)?;
        let recommendations = recommendations(&all_insights, &summary);
        let insights: Vec<Insight> = all_insights.into_iter().take(MAX_INSIGHTS).collect();
        let scaling = store.scaling_between(start_ms, end_ms, MAX_SCALING)?;

        let charts = CHART_METRICS
            .iter()
            .map(|m| ChartSeries {
                metric: (*m).to_string(),
                points: kept
                    .get(*m)
                    .map(|s| downsample(&s.avgs, start_ms, end_ms, MAX_CHART_POINTS))
                    .unwrap_or_default(),
            })
            .collect();

        Ok(Report {
            period,
            start_ms,
            end_ms,
            generated_ms: unix_ms_now(),
            summary,
            insights,
            metrics,
            recommendations,
            scaling,
            charts,
        })
    }

    /// The report's title, e.g. `Sluice hourly report, 2024-05-01 10:00 to 11:00 UTC`.
    pub fn title(&self) -> String {
        format!(
            "Sluice {} report, {} to {} UTC",
            self.period.as_str(),
            format_utc(self.start_ms),
            format_utc(self.end_ms)
        )
    }

    /// Renders the report as one self-contained HTML page: inline CSS and SVG, no scripts, no
    /// external references; every text from the data is escaped.
    pub fn to_html(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let title = self.title();
        let _ = writeln!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>",
            escape(&title)
        );
        let _ = writeln!(
            out,
            "<header><h1>Sluice {} report</h1><p class=\"span\">{} &ndash; {} UTC \
             &middot; generated {} UTC</p></header>",
            escape(self.period.as_str()),
            format_utc(self.start_ms),
            format_utc(self.end_ms),
            format_utc(self.generated_ms)
        );
        self.html_summary(&mut out);
        self.html_charts(&mut out);
        self.html_insights(&mut out);
        self.html_recommendations(&mut out);
        self.html_scaling(&mut out);
        self.html_metrics(&mut out);
        out.push_str("</body>\n</html>\n");
        out
    }

    fn html_summary(&self, out: &mut String) {
        let s = &self.summary;
        out.push_str("<section><h2>Summary</h2>\n");
        if s.minutes_with_data == 0 {
            out.push_str("<p class=\"empty\">No metric data in this period.</p>\n");
        }
        out.push_str("<div class=\"cards\">\n");
        let mean_max = |mean: Option<f64>, max: Option<f64>| match (mean, max) {
            (Some(mean), Some(max)) => (fmt_num(mean), format!("max {}", fmt_num(max))),
            _ => (NO_DATA.to_string(), String::new()),
        };
        let mut cards: Vec<(&str, String, String)> = Vec::new();
        let (v, sub) = mean_max(s.connections_mean, s.connections_max);
        cards.push(("Connections (mean)", v, sub));
        let (v, sub) = mean_max(s.downstream_streams_mean, s.downstream_streams_max);
        cards.push(("Downstream streams (mean)", v, sub));
        let (v, sub) = mean_max(s.upstream_streams_mean, s.upstream_streams_max);
        cards.push(("Upstream streams (mean)", v, sub));
        cards.push((
            "Streams per connection",
            s.streams_per_connection_mean
                .map_or_else(|| NO_DATA.to_string(), fmt_num),
            "upstream streams / connections".to_string(),
        ));
        cards.push((
            "Upstream error rate (mean)",
            s.error_rate_mean
                .map_or_else(|| NO_DATA.to_string(), fmt_pct),
            String::new(),
        ));
        if let Some(m) = s.streams_started_per_s_mean {
            cards.push(("Streams started/s (mean)", fmt_num(m), String::new()));
        }
        if let Some(b) = s.bytes_per_s_mean {
            cards.push(("Bytes/s (mean)", fmt_bytes(b), String::new()));
        }
        cards.push((
            "Insights",
            s.insights.total().to_string(),
            format!(
                "{} critical, {} warning, {} info",
                s.insights.critical, s.insights.warning, s.insights.info
            ),
        ));
        cards.push((
            "Scaling actions",
            s.scaling_actions.to_string(),
            format!("of {} decisions", s.scaling_decisions),
        ));
        cards.push((
            "Data coverage",
            fmt_pct(s.coverage),
            format!("{} of {} minutes", s.minutes_with_data, s.minutes_in_period),
        ));
        for (label, value, sub) in cards {
            let _ = writeln!(
                out,
                "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div>\
                 <div class=\"sub\">{}</div></div>",
                escape(label),
                escape(&value),
                escape(&sub)
            );
        }
        out.push_str("</div></section>\n");
    }

    fn html_charts(&self, out: &mut String) {
        out.push_str("<section><h2>Charts</h2>\n<div class=\"charts\">\n");
        if self.charts.is_empty() {
            out.push_str("<p class=\"empty\">No data in this period.</p>\n");
        }
        for chart in &self.charts {
            out.push_str("<figure class=\"chart\">");
            let _ = write!(out, "<figcaption>{}</figcaption>", escape(&chart.metric));
            svg_chart(out, chart, self.start_ms, self.end_ms);
            out.push_str("</figure>\n");
        }
        out.push_str("</div></section>\n");
    }

    fn html_insights(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "<section><h2>Insights <span class=\"count\">{}</span></h2>",
            self.summary.insights.total()
        );
        if self.insights.is_empty() {
            out.push_str("<p class=\"empty\">No insights in this period.</p></section>\n");
            return;
        }
        if (self.insights.len() as u64) < self.summary.insights.total() {
            let _ = writeln!(
                out,
                "<p class=\"note\">The {} most severe are listed.</p>",
                self.insights.len()
            );
        }
        out.push_str(
            "<table><thead><tr><th>Severity</th><th>Kind</th><th>Insight</th><th>Metric</th>\
             <th class=\"num\">Value</th><th class=\"num\">Score</th><th>First seen</th>\
             <th>Last seen</th><th class=\"num\">Seen</th><th>Source</th></tr></thead><tbody>\n",
        );
        for i in &self.insights {
            let _ = writeln!(
                out,
                "<tr><td><span class=\"sev {sev}\">{sev}</span></td><td>{}</td>\
                 <td><div class=\"title\">{}</div><div class=\"desc\">{}</div></td><td>{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                escape(i.kind.as_str()),
                escape(&i.title),
                escape(&i.description),
                escape(i.metric.as_deref().unwrap_or("")),
                fmt_num(i.value),
                fmt_num(i.score),
                format_utc(i.ts_ms),
                format_utc(i.last_seen_ms),
                i.occurrences,
                escape(&i.source),
                sev = i.severity.as_str(),
            );
        }
        out.push_str("</tbody></table></section>\n");
    }

    fn html_recommendations(&self, out: &mut String) {
        out.push_str("<section><h2>Recommendations</h2>\n");
        if self.recommendations.is_empty() {
            out.push_str("<p class=\"empty\">No recommendations for this period.</p></section>\n");
            return;
        }
        out.push_str("<ul class=\"recs\">\n");
        for r in &self.recommendations {
            let _ = writeln!(out, "<li>{}</li>", escape(r));
        }
        out.push_str("</ul></section>\n");
    }

    fn html_scaling(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "<section><h2>Scaling <span class=\"count\">{}</span></h2>",
            self.summary.scaling_decisions
        );
        if self.scaling.is_empty() {
            out.push_str("<p class=\"empty\">No scaling decisions in this period.</p></section>\n");
            return;
        }
        out.push_str(
            "<table><thead><tr><th>Time (UTC)</th><th>Class</th><th class=\"num\">Requested</th>\
             <th class=\"num\">Applied</th><th class=\"num\">Connections</th><th>Policy</th>\
             <th>Reason</th></tr></thead><tbody>\n",
        );
        for s in &self.scaling {
            let _ = writeln!(
                out,
                "<tr{}><td>{}</td><td>{}</td><td class=\"num\">{:+}</td><td class=\"num\">{:+}</td>\
                 <td class=\"num\">{} &rarr; {}</td><td>{}</td><td>{}</td></tr>",
                if s.applied == 0 {
                    " class=\"muted\""
                } else {
                    ""
                },
                format_utc(s.ts_ms),
                escape(&s.class),
                s.requested,
                s.applied,
                s.from,
                s.to,
                escape(&s.policy),
                escape(&s.reason),
            );
        }
        out.push_str("</tbody></table></section>\n");
    }

    fn html_metrics(&self, out: &mut String) {
        out.push_str("<section><h2>Metrics</h2>\n");
        if self.metrics.is_empty() {
            out.push_str("<p class=\"empty\">No data in this period.</p></section>\n");
            return;
        }
        out.push_str(
            "<table><thead><tr><th>Metric</th><th class=\"num\">Mean</th><th class=\"num\">Min</th>\
             <th class=\"num\">Max</th><th class=\"num\">p95 of minute means</th>\
             <th class=\"num\">Minutes</th></tr></thead><tbody>\n",
        );
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "<tr><td class=\"metric\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&m.metric),
                fmt_num(m.avg),
                fmt_num(m.min),
                fmt_num(m.max),
                fmt_num(m.p95_of_minute_avgs),
                m.minutes
            );
        }
        out.push_str("</tbody></table></section>\n");
    }
}

/// The recommendation insights' titles (deduplicated, in the given order), then the summary's
/// rules.
fn recommendations(insights: &[Insight], summary: &Summary) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    let mut push = |text: String| {
        if seen.insert(text.clone()) {
            out.push(text);
        }
    };
    for i in insights {
        if i.kind == InsightKind::Recommendation {
            push(i.title.clone());
        }
    }
    if let (Some(spc), Some(conns)) = (
        summary.streams_per_connection_mean,
        summary.connections_mean,
    ) && spc < LOW_STREAMS_PER_CONNECTION
        && conns >= 1.0
    {
        push(format!(
            "Connections carried {} upstream streams each on average (below {}): raise \
             max_streams_per_connection or lower min_connections so fewer connections carry \
             the same streams.",
            fmt_num(spc),
            fmt_num(LOW_STREAMS_PER_CONNECTION)
        ));
    }
    if let Some(rate) = summary.error_rate_mean
        && rate > HIGH_ERROR_RATE
    {
        push(format!(
            "The upstream error rate averaged {} (above {}): check endpoint health and breaker \
             events for the failing endpoints.",
            fmt_pct(rate),
            fmt_pct(HIGH_ERROR_RATE)
        ));
    }
    if let Some(util) = summary.utilization_max
        && util >= HIGH_UTILIZATION
    {
        push(format!(
            "Pool utilization peaked at {} of the connection cap: raise the global cap or the \
             busiest class's max_connections before new streams are refused.",
            fmt_pct(util)
        ));
    }
    if summary.minutes_with_data > 0 && summary.coverage < LOW_COVERAGE {
        push(format!(
            "Metrics cover {} of the period ({} of {} minutes): Sluice was not running or not \
             sampling for the rest, so the numbers describe the covered minutes only.",
            fmt_pct(summary.coverage),
            summary.minutes_with_data,
            summary.minutes_in_period
        ));
    }
    out
}

const NO_DATA: &str = "no data";

const CSS: &str = "
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f7f8fa;--card:#fff;--accent:#2f6fde}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1180px;padding:24px 28px 48px;font:14px/1.45 system-ui,-apple-system,\
'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
header h1{margin:0;font-size:24px}
header .span{margin:4px 0 0;color:var(--muted)}
h2{font-size:17px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h2 .count{font-weight:normal;color:var(--muted);font-size:14px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .label{color:var(--muted);font-size:12px}
.card .value{font-size:22px;font-weight:600;margin-top:2px}
.card .sub{color:var(--muted);font-size:12px;min-height:1em}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
figure.chart{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;\
padding:8px 10px}
figure.chart figcaption{font-weight:600;font-family:ui-monospace,Menlo,Consolas,monospace;\
font-size:13px}
svg{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:var(--muted);font-family:ui-monospace,Menlo,Consolas,monospace}
svg .axis{stroke:var(--line);stroke-width:1}
svg .line{fill:none;stroke:var(--accent);stroke-width:1.6;stroke-linejoin:round}
svg .dot{fill:var(--accent)}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line)}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eef1f5;font-size:12px;color:#344054;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.metric{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
tr.muted td{color:var(--muted)}
.title{font-weight:600}
.desc{color:var(--muted);font-size:13px}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;\
color:#fff}
.sev.critical{background:#c62828}
.sev.warning{background:#d97706}
.sev.info{background:#2563eb}
.empty{color:var(--muted);font-style:italic}
.note{color:var(--muted)}
ul.recs{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 10px \
10px 30px;margin:0}
ul.recs li{margin:4px 0}
";

/// Draws `chart` as an inline SVG line over `[start_ms, end_ms)`, with min/max labels on both
/// axes. Gaps longer than a few points' spacing break the line.
fn svg_chart(out: &mut String, chart: &ChartSeries, start_ms: i64, end_ms: i64) {
    const W: f64 = 560.0;
    const H: f64 = 190.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 24.0;
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        escape(&chart.metric)
    );
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{x0}\" y1=\"{y1}\" x2=\"{x1}\" y2=\"{y1}\"/>\
         <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>"
    );
    let _ = write!(
        out,
        "<text x=\"{x0}\" y=\"{}\">{}</text><text x=\"{x1}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        H - 6.0,
        format_utc(start_ms),
        H - 6.0,
        format_utc(end_ms)
    );
    let points: Vec<(i64, f64)> = chart
        .points
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    if points.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data in this period</text></svg>",
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0
        );
        return;
    }
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (lo_axis, hi_axis) = if hi - lo > f64::EPSILON * hi.abs().max(1.0) {
        (lo, hi)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    };
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        x0 - 6.0,
        y0 + 9.0,
        fmt_num(hi_axis),
        x0 - 6.0,
        y1,
        fmt_num(lo_axis)
    );
    let span = (end_ms - start_ms).max(1) as f64;
    let x = |ts: i64| x0 + ((ts - start_ms) as f64 / span).clamp(0.0, 1.0) * (x1 - x0);
    let y = |v: f64| y1 - ((v - lo_axis) / (hi_axis - lo_axis)) * (y1 - y0);
    // A gap is more than three times the usual spacing (at least three minutes).
    let step = ((end_ms - start_ms) / MAX_CHART_POINTS as i64).max(MINUTE_MS);
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut last_ts: Option<i64> = None;
    for &(ts, v) in &points {
        if last_ts.is_none_or(|last| ts - last > 3 * step) {
            segments.push(Vec::new());
        }
        if let Some(segment) = segments.last_mut() {
            segment.push((x(ts), y(v)));
        }
        last_ts = Some(ts);
    }
    for segment in segments {
        if let [(px, py)] = segment[..] {
            let _ = write!(
                out,
                "<circle class=\"dot\" cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"2\"/>"
            );
            continue;
        }
        out.push_str("<polyline class=\"line\" points=\"");
        for (i, (px, py)) in segment.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{px:.1},{py:.1}");
        }
        out.push_str("\"/>");
    }
    out.push_str("</svg>");
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Formats Unix milliseconds as UTC `YYYY-MM-DD HH:MM`.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A number for people: a few significant digits, no trailing zeros.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "\u{2013}".to_string();
    }
    let a = v.abs();
    if a == 0.0 {
        return "0".to_string();
    }
    if !(1e-3..1e9).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = match a {
        a if a >= 1000.0 => 0,
        a if a >= 100.0 => 1,
        a if a >= 1.0 => 2,
        _ => 3,
    };
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A share (0 to 1) as a percentage.
fn fmt_pct(share: f64) -> String {
    if !share.is_finite() {
        return "\u{2013}".to_string();
    }
    format!("{}%", fmt_num(share * 100.0))
}

/// A byte rate with a binary unit.
fn fmt_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", fmt_num(value), UNITS[unit])
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::store::IN_MEMORY;

    const MIN: i64 = 60_000;
    /// 2023-11-14 22:00 UTC, an hour boundary.
    const END: i64 = 1_699_999_200_000;

    fn store() -> Store {
        Store::open(Path::new(IN_MEMORY), Duration::from_secs(30 * 86_400)).unwrap()
    }

    fn rollup(metric: &str, ts_ms: i64, avg: f64) -> Rollup {
        Rollup {
            ts_ms,
            metric: metric.to_string(),
            avg,
            min: avg - 0.5,
            max: avg + 0.5,
            count: 60,
        }
    }

    fn insight(ts_ms: i64, kind: InsightKind, severity: Severity, title: &str) -> Insight {
        Insight {
            id: 0,
            ts_ms,
            last_seen_ms: ts_ms,
            occurrences: 1,
            kind,
            severity,
            title: title.to_string(),
            description: "seen <here> & there".to_string(),
            metric: Some("pool.connections".to_string()),
            value: 3.0,
            score: 5.0,
            source: "builtin".to_string(),
            data: serde_json::Value::Null,
        }
    }

    fn scaling(ts_ms: i64, applied: i32) -> ScalingRecord {
        ScalingRecord {
            id: 0,
            ts_ms,
            class: "realtime".to_string(),
            requested: 1,
            applied,
            from: 2,
            to: 2 + applied.max(0) as u32,
            reason: "streams per connection above target".to_string(),
            policy: "builtin".to_string(),
            metrics: serde_json::json!({}),
        }
    }

    /// Fills the last hour before END: connections 2..=5 cycling, downstream 10 x connections,
    /// upstream = connections (1 stream per connection), one minute missing in six.
    fn fill_hour(store: &Store) -> Vec<f64> {
        let start = END - 3_600_000;
        let mut connections = Vec::new();
        let mut rows = Vec::new();
        for i in 0..60 {
            if i % 6 == 5 {
                continue;
            }
            let ts = start + i * MIN;
            let c = 2.0 + (i % 4) as f64;
            connections.push(c);
            rows.push(rollup(METRIC_CONNECTIONS, ts, c));
            rows.push(rollup(METRIC_DOWNSTREAM, ts, 10.0 * c));
            rows.push(rollup(METRIC_UPSTREAM, ts, c));
            rows.push(rollup(METRIC_ERROR_RATE, ts, 0.1));
            rows.push(rollup("group.realtime.connections", ts, 1.0));
        }
        // Outside the period: must not count.
        rows.push(rollup(METRIC_CONNECTIONS, END, 1000.0));
        rows.push(rollup(METRIC_CONNECTIONS, start - MIN, 1000.0));
        store.write_rollups(&rows).unwrap();
        connections
    }

    #[test]
    fn summary_matches_the_rollups() {
        let store = store();
        let connections = fill_hour(&store);
        let start = END - 3_600_000;
        store
            .insert_insight(&insight(
                start + 5 * MIN,
                InsightKind::Anomaly,
                Severity::Warning,
                "spike",
            ))
            .unwrap();
        store
            .insert_insight(&insight(
                start + 6 * MIN,
                InsightKind::Anomaly,
                Severity::Critical,
                "exhaustion",
            ))
            .unwrap();
        for _ in 0..2 {
            store
                .insert_insight(&insight(
                    start + 7 * MIN,
                    InsightKind::Recommendation,
                    Severity::Info,
                    "lower min_connections for realtime",
                ))
                .unwrap();
        }
        store
            .insert_insight(&insight(
                start - 10 * MIN,
                InsightKind::Anomaly,
                Severity::Critical,
                "old",
            ))
            .unwrap();
        store.insert_scaling(&scaling(start + MIN, 1)).unwrap();
        store.insert_scaling(&scaling(start + 2 * MIN, 0)).unwrap();
        store.insert_scaling(&scaling(start - MIN, 1)).unwrap();

        let report = Report::build(&store, ReportPeriod::Hourly, END).unwrap();
        assert_eq!(report.start_ms, start);
        let s = &report.summary;
        let mean = connections.iter().sum::<f64>() / connections.len() as f64;
        assert!((s.connections_mean.unwrap() - mean).abs() < 1e-9);
        assert_eq!(s.connections_max, Some(5.5));
        assert!((s.downstream_streams_mean.unwrap() - 10.0 * mean).abs() < 1e-9);
        assert!((s.streams_per_connection_mean.unwrap() - 1.0).abs() < 1e-9);
        assert!((s.error_rate_mean.unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(s.streams_started_per_s_mean, None);
        assert_eq!(s.utilization_max, None);
        assert_eq!(s.minutes_with_data, 50);
        assert_eq!(s.minutes_in_period, 60);
        assert!((s.coverage - 50.0 / 60.0).abs() < 1e-9);
        assert_eq!(
            s.insights,
            SeverityCounts {
                info: 2,
                warning: 1,
                critical: 1
            }
        );
        assert_eq!((s.scaling_decisions, s.scaling_actions), (2, 1));

        assert_eq!(report.insights.len(), 4);
        assert_eq!(report.insights[0].title, "exhaustion");
        assert_eq!(report.insights[1].title, "spike");
        assert_eq!(report.scaling.len(), 2);

        let names: Vec<&str> = report.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "group.realtime.connections",
                METRIC_CONNECTIONS,
                METRIC_DOWNSTREAM,
                METRIC_UPSTREAM,
                METRIC_ERROR_RATE
            ]
        );
        let conns = &report.metrics[1];
        assert_eq!(conns.minutes, 50);
        assert_eq!(conns.min, 1.5);
        assert_eq!(conns.p95_of_minute_avgs, 5.0);

        assert_eq!(
            report.recommendations[0],
            "lower min_connections for realtime"
        );
        assert_eq!(
            report
                .recommendations
                .iter()
                .filter(|r| r.as_str() == "lower min_connections for realtime")
                .count(),
            1
        );
        assert!(
            report
                .recommendations
                .iter()
                .any(|r| r.contains("max_streams_per_connection"))
        );
        assert!(
            report
                .recommendations
                .iter()
                .any(|r| r.contains("error rate"))
        );
        assert!(report.recommendations.iter().any(|r| r.contains("cover")));

        assert_eq!(report.charts.len(), CHART_METRICS.len());
        assert_eq!(report.charts[0].points.len(), 50);
        assert!(report.charts[2].points.is_empty()); // no utilization written

        // The JSON round-trips (the store keeps reports as JSON).
        let json = serde_json::to_value(&report).unwrap();
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn weekly_charts_are_downsampled() {
        let store = store();
        let start = END - ReportPeriod::Weekly.length_ms();
        let rows: Vec<Rollup> = (0..ReportPeriod::Weekly.length_ms() / MIN)
            .map(|i| rollup(METRIC_CONNECTIONS, start + i * MIN, (i % 10) as f64))
            .collect();
        store.write_rollups(&rows).unwrap();
        let report = Report::build(&store, ReportPeriod::Weekly, END).unwrap();
        let points = &report.charts[0].points;
        assert!(points.len() <= MAX_CHART_POINTS && points.len() >= MAX_CHART_POINTS - 1);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(points.iter().all(|(ts, _)| (start..END).contains(ts)));
        // Every bucket averages whole cycles of 0..=9, give or take the edges.
        assert!(
            points.iter().all(|(_, v)| (4.0..=5.0).contains(v)),
            "{points:?}"
        );
        assert_eq!(report.summary.coverage, 1.0);
        assert_eq!(report.metrics[0].max, 9.5);
    }

    #[test]
    fn downsample_bounds() {
        let points: Vec<(i64, f64)> = (0..1000).map(|i| (i * MIN, i as f64)).collect();
        for max in [1, 2, 7, 240, 999] {
            let out = downsample(&points, 0, 1000 * MIN, max);
            assert!(out.len() <= max, "{max}: {}", out.len());
            assert!(!out.is_empty());
            let mean_in = points.iter().map(|p| p.1).sum::<f64>() / 1000.0;
            if 1000 % max == 0 {
                let mean_out = out.iter().map(|p| p.1).sum::<f64>() / out.len() as f64;
                assert!((mean_in - mean_out).abs() < 1e-9);
            }
        }
        assert_eq!(
            downsample(&points[..10], 0, 10 * MIN, 240),
            points[..10].to_vec()
        );
        assert!(downsample(&[], 0, 1, 240).is_empty());
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let store = store();
        fill_hour(&store);
        store
            .insert_insight(&insight(
                END - 30 * MIN,
                InsightKind::Recommendation,
                Severity::Critical,
                "<b>&",
            ))
            .unwrap();
        store.insert_scaling(&scaling(END - 20 * MIN, 1)).unwrap();
        store
            .write_rollups(&[rollup("evil<script>\"metric\"", END - MIN, 1.0)])
            .unwrap();
        let html = Report::build(&store, ReportPeriod::Hourly, END)
            .unwrap()
            .to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<svg"));
        assert!(html.contains("<polyline"));
        for bad in ["<script", "http://", "https://", "<b>", "src="] {
            assert!(!html.contains(bad), "{bad} in the page");
        }
        assert!(html.contains("&lt;b&gt;&amp;"));
        assert!(html.contains("seen &lt;here&gt; &amp; there"));
        assert!(html.contains("evil&lt;script&gt;&quot;metric&quot;"));
        assert!(html.contains("2023-11-14 21:00"));
        assert!(html.contains("2023-11-14 22:00"));
        assert!(html.contains("class=\"sev critical\""));
    }

    #[test]
    fn empty_store_renders() {
        let store = store();
        let report = Report::build(&store, ReportPeriod::Daily, END).unwrap();
        assert_eq!(report.summary.minutes_with_data, 0);
        assert_eq!(report.summary.coverage, 0.0);
        assert_eq!(report.summary.connections_mean, None);
        assert!(report.metrics.is_empty() && report.insights.is_empty());
        assert!(report.recommendations.is_empty());
        assert!(report.charts.iter().all(|c| c.points.is_empty()));
        let html = report.to_html();
        assert!(html.contains("no data in this period"));
        assert!(html.contains("No insights in this period."));
        assert!(html.ends_with("</html>\n"));
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14 22:13");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(format_utc(4_107_542_399_000), "2100-02-28 23:59");
        assert_eq!(format_utc(-60_000), "1969-12-31 23:59");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(2.345), "2.35");
        assert_eq!(fmt_num(1234.6), "1235");
        assert_eq!(fmt_num(0.05), "0.05");
        assert_eq!(fmt_pct(0.125), "12.5%");
        assert_eq!(fmt_bytes(2048.0), "2 KiB");
        assert_eq!(fmt_num(f64::NAN), "\u{2013}");
    }
}

//! `[alerts]`: which conditions raise an alert and where notifications go.
//!
//! Each rule holds a condition for a while (`for`) before it fires; a firing alert resolves once
//! when the condition clears. Notifications are logged and POSTed as JSON to every webhook.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BreakerScope;

/// Alert rules and their notification targets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate the rules and send notifications at all. Default true.
    pub enabled: bool,
    /// Where notifications are POSTed as JSON (`[[alerts.webhooks]]`). Default none: alerts are
    /// only logged.
    pub webhooks: Vec<WebhookConfig>,
    /// How a failed delivery is retried.
    pub retry: AlertRetryConfig,
    /// A circuit breaker is open.
    pub breaker_open: BreakerOpenRule,
    /// An upstream endpoint is unhealthy (health checks or outlier detection).
    pub endpoint_unhealthy: EndpointUnhealthyRule,
    /// An endpoint's provider refused Sluice's credentials: it takes no new streams until an
    /// operator re-enables it.
    pub endpoint_misconfigured: EndpointMisconfiguredRule,
    /// The router's mean confidence in its decisions is low.
    pub low_router_confidence: ThresholdRule,
    /// The pool holds many more connections than its streams need: connections needed for the
    /// streams divided by connections held is low.
    pub efficiency: ThresholdRule,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            webhooks: Vec::new(),
            retry: AlertRetryConfig::default(),
            breaker_open: BreakerOpenRule::default(),
            endpoint_unhealthy: EndpointUnhealthyRule::default(),
            endpoint_misconfigured: EndpointMisconfiguredRule::default(),
            low_router_confidence: ThresholdRule::default(),
            efficiency: ThresholdRule::default(),
        }
    }
}

/// One webhook that receives every notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port]/path` or `https://host[:port]/path`.
    pub url: String,
    /// Headers added to every request, e.g. `Authorization`. Values may be `${ENV_VAR}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for one delivery attempt (connect, TLS, request and response). Default 5 s.
    #[serde(default = "default_webhook_timeout", with = "crate::duration")]
    pub timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

impl WebhookConfig {
    /// A webhook at `url` with no extra headers and the default timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: BTreeMap::new(),
            timeout: default_webhook_timeout(),
        }
    }
}

/// Retries of a delivery that failed with a connection error, a timeout, a 5xx or a 429 (other
/// 4xx answers are not retried). The pause doubles after each attempt, with jitter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertRetryConfig {
    /// Attempts per notification and webhook, the first included. Default 6.
    pub attempts: u32,
    /// Pause after the first failed attempt. Default 1 s.
    #[serde(with = "crate::duration")]
    pub initial_backoff: Duration,
    /// Longest pause between two attempts. Default 60 s.
    #[serde(with = "crate::duration")]
    pub max_backoff: Duration,
}

impl Default for AlertRetryConfig {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// `[alerts.breaker_open]`: a circuit breaker of a watched scope is open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerOpenRule {
    /// Raise this alert at all. Default true.
    pub enabled: bool,
    /// How long the breaker must stay open before the alert fires. Default `0s` (at once).
    #[serde(rename = "for", with = "crate::duration")]
    pub hold_for: Duration,
    /// Which breakers are watched. Default `["endpoint", "monitor"]`.
    pub scopes: Vec<BreakerScope>,
}

impl Default for BreakerOpenRule {
    fn default() -> Self {
        Self {
            enabled: true,
            hold_for: Duration::ZERO,
            scopes: vec![BreakerScope::Endpoint, BreakerScope::Monitor],
        }
    }
}

/// `[alerts.endpoint_unhealthy]`: an upstream endpoint is marked unhealthy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointUnhealthyRule {
    /// Raise this alert at all. Default true.
    pub enabled: bool,
    /// How long the endpoint must stay unhealthy before the alert fires. Default 5 min.
    #[serde(rename = "for", with = "crate::duration")]
    pub hold_for: Duration,
}

impl Default for EndpointUnhealthyRule {
    fn default() -> Self {
        Self {
            enabled: true,
            hold_for: Duration::from_secs(300),
        }
    }
}

/// `[alerts.endpoint_misconfigured]`: an endpoint's provider refused Sluice's credentials
/// (`UNAUTHENTICATED`, `PERMISSION_DENIED` by default). Nothing recovers that by itself, so it
/// fires at once by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointMisconfiguredRule {
    /// Raise this alert at all. Default true.
    pub enabled: bool,
    /// How long the endpoint must stay misconfigured before the alert fires. Default 0 s.
    #[serde(rename = "for", with = "crate::duration")]
    pub hold_for: Duration,
}

impl Default for EndpointMisconfiguredRule {
    fn default() -> Self {
        Self {
            enabled: true,
            hold_for: Duration::ZERO,
        }
    }
}

/// `[alerts.low_router_confidence]` and `[alerts.efficiency]`: a ratio stays below a threshold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdRule {
    /// Raise this alert at all. Default true.
    pub enabled: bool,
    /// The condition holds while the value is below this, in (0, 1]. Default 0.5.
    pub below: f64,
    /// How long the value must stay below before the alert fires. Default 10 min.
    #[serde(rename = "for", with = "crate::duration")]
    pub hold_for: Duration,
}

impl Default for ThresholdRule {
    fn default() -> Self {
        Self {
            enabled: true,
            below: 0.5,
            hold_for: Duration::from_secs(600),
        }
    }
}

impl AlertsConfig {
    /// Replaces `${VAR}` in webhook header values using `lookup`.
    pub fn expand_secrets(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), super::ConfigError> {
        for (i, webhook) in self.webhooks.iter_mut().enumerate() {
            for (name, value) in webhook.headers.iter_mut() {
                *value = super::expand_env(value, lookup).map_err(|problem| {
                    super::invalid(format!("alerts.webhooks[{i}].headers.{name}"), problem)
                })?;
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid HTTP header name (an RFC 9110 token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` can be sent as an HTTP header value (visible ASCII, spaces and tabs).
fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Checks that `url` is `http(s)://host[:port][/path]`; returns the problem otherwise.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL like https://host/path"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "scheme {scheme:?} is not supported (use http or https)"
        ));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "{url:?} must not contain spaces or control characters"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{url:?} must not hold credentials; put them in `headers`"
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, port)) if port.is_empty() || port.starts_with(':') => {
                (host, port.strip_prefix(':'))
            }
            _ => return Err(format!("{url:?} has a malformed IPv6 host")),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("{url:?} has an invalid port"));
    }
    Ok(())
}

impl super::Config {
    pub(crate) fn validate_alerts(&self) -> Result<(), super::ConfigError> {
        use super::invalid;
        let alerts = &self.alerts;
        for (i, webhook) in alerts.webhooks.iter().enumerate() {
            let key = |field: &str| format!("alerts.webhooks[{i}].{field}");
            check_webhook_url(&webhook.url).map_err(|problem| invalid(key("url"), problem))?;
            for (name, value) in &webhook.headers {
                if !valid_header_name(name) {
                    return Err(invalid(
                        key("headers"),
                        format!("{name:?} is not a valid header name"),
                    ));
                }
                if !valid_header_value(value) {
                    return Err(invalid(
                        format!("alerts.webhooks[{i}].headers.{name}"),
                        "must be printable ASCII on one line",
                    ));
                }
            }
            if webhook.timeout.is_zero() {
                return Err(invalid(key("timeout"), "must be greater than 0s"));
            }
        }
        let retry = &alerts.retry;
        if retry.attempts == 0 {
            return Err(invalid("alerts.retry.attempts", "must be at least 1"));
        }
        if retry.initial_backoff.is_zero() {
            return Err(invalid(
                "alerts.retry.initial_backoff",
                "must be greater than 0s",
            ));
        }
        if retry.max_backoff < retry.initial_backoff {
            return Err(invalid(
                "alerts.retry.max_backoff",
                "must not be shorter than alerts.retry.initial_backoff",
            ));
        }
        if alerts.breaker_open.enabled && alerts.breaker_open.scopes.is_empty() {
            return Err(invalid(
                "alerts.breaker_open.scopes",
                "must name at least one scope (or set enabled = false)",
            ));
        }
        let ratios = [
            (
                "alerts.low_router_confidence.below",
                alerts.low_router_confidence.below,
            ),
            ("alerts.efficiency.below", alerts.efficiency.below),
        ];
        for (key, value) in ratios {
            if !(value > 0.0 && value <= 1.0) {
                return Err(invalid(key, "must be in (0, 1]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    const ENDPOINT: &str = "[[endpoints]]\nid = \"a\"\nurl = \"http://127.0.0.1:7000\"\n";

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let text = format!("{ENDPOINT}{extra}");
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        config
            .alerts
            .expand_secrets(&|name| (name == "HOOK_TOKEN").then(|| "s3cret".to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn error_of(extra: &str) -> String {
        parse(extra)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let alerts = parse("").unwrap().alerts;
        assert!(alerts.enabled);
        assert!(alerts.webhooks.is_empty());
        assert_eq!(alerts.retry.attempts, 6);
        assert_eq!(alerts.retry.initial_backoff, Duration::from_secs(1));
        assert_eq!(alerts.retry.max_backoff, Duration::from_secs(60));
        assert!(alerts.breaker_open.enabled);
        assert_eq!(alerts.breaker_open.hold_for, Duration::ZERO);
        assert_eq!(
            alerts.breaker_open.scopes,
            [BreakerScope::Endpoint, BreakerScope::Monitor]
        );
        assert_eq!(alerts.endpoint_unhealthy.hold_for, Duration::from_secs(300));
        assert_eq!(alerts.low_router_confidence.below, 0.5);
        assert_eq!(
            alerts.low_router_confidence.hold_for,
            Duration::from_secs(600)
        );
        assert_eq!(alerts.efficiency.below, 0.5);
        assert_eq!(alerts.efficiency.hold_for, Duration::from_secs(600));
    }

    #[test]
    fn full_section_parses() {
        let alerts = parse(
            r#"
[alerts]
enabled = true

[[alerts.webhooks]]
url = "https://hooks.example.com/sluice?x=1"
headers = { Authorization = "Bearer ${HOOK_TOKEN}" }
timeout = "2s"

[[alerts.webhooks]]
url = "http://[::1]:9000/"

[alerts.retry]
attempts = 3
initial_backoff = "50ms"
max_backoff = "1s"

[alerts.breaker_open]
for = "10s"
scopes = ["connection"]

[alerts.endpoint_unhealthy]
enabled = false

[alerts.low_router_confidence]
below = 0.3
for = "1m"

[alerts.efficiency]
below = 1.0
"#,
        )
        .unwrap()
        .alerts;
        assert_eq!(alerts.webhooks.len(), 2);
        assert_eq!(alerts.webhooks[0].headers["Authorization"], "Bearer s3cret");
        assert_eq!(alerts.webhooks[0].timeout, Duration::from_secs(2));
        assert_eq!(alerts.webhooks[1].timeout, Duration::from_secs(5));
        assert_eq!(alerts.retry.attempts, 3);
        assert_eq!(alerts.retry.initial_backoff, Duration::from_millis(50));
        assert_eq!(alerts.breaker_open.hold_for, Duration::from_secs(10));
        assert_eq!(alerts.breaker_open.scopes, [BreakerScope::Connection]);
        assert!(!alerts.endpoint_unhealthy.enabled);
        assert_eq!(alerts.low_router_confidence.below, 0.3);
        assert_eq!(alerts.efficiency.below, 1.0);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[[alerts.webhooks]]\nurl = \"ftp://x/\"",
                "alerts.webhooks[0].url",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"http://ok/\"\n[[alerts.webhooks]]\nurl = \"https:///path\"",
                "alerts.webhooks[1].url",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"hooks\"",
                "alerts.webhooks[0].url",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"http://h:0/\"",
                "alerts.webhooks[0].url",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"http://h/\"\ntimeout = \"0s\"",
                "alerts.webhooks[0].timeout",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"http://h/\"\nheaders = { \"bad name\" = \"x\" }",
                "alerts.webhooks[0].headers",
            ),
            ("[alerts.retry]\nattempts = 0", "alerts.retry.attempts"),
            (
                "[alerts.retry]\ninitial_backoff = \"0s\"",
                "alerts.retry.initial_backoff",
            ),
            (
                "[alerts.retry]\ninitial_backoff = \"2m\"",
                "alerts.retry.max_backoff",
            ),
            (
                "[alerts.low_router_confidence]\nbelow = 0.0",
                "alerts.low_router_confidence.below",
            ),
            (
                "[alerts.efficiency]\nbelow = 1.5",
                "alerts.efficiency.below",
            ),
            (
                "[alerts.breaker_open]\nscopes = []",
                "alerts.breaker_open.scopes",
            ),
        ];
        for (text, key) in cases {
            let error = error_of(text);
            assert!(error.contains(&format!("`{key}`")), "{text}: {error}");
        }
    }

    #[test]
    fn unknown_keys_and_scopes_are_rejected() {
        assert!(error_of("[alerts]\nenable = true").contains("enable"));
        assert!(error_of("[alerts.breaker_open]\nscopes = [\"pool\"]").contains("pool"));
        assert!(error_of("[alerts.efficiency]\nthreshold = 0.4").contains("threshold"));
        let unset =
            error_of("[[alerts.webhooks]]\nurl = \"http://h/\"\nheaders = { X = \"${NOPE}\" }");
        assert!(unset.contains("alerts.webhooks[0].headers.X"), "{unset}");
    }
}

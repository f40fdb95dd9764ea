//! Who a monitor is: its `x-sluice-monitor` name, checked against the config.
//!
//! Identity decides the class (and so the connection group) and whether the call is allowed.
//! It must stay cheap: it runs on every call.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use sluice_config::{Config, TrafficClass};

use crate::grpc::headers::{MONITOR_HEADER, TOKEN_HEADER};
use crate::grpc::{Code, Status};
use crate::route::{MonitorProfile, TrafficMeter};

struct KnownMonitor {
    profile: MonitorProfile,
    token: Option<String>,
}

/// The monitors the config knows, and the rule for the others.
pub(crate) struct MonitorDirectory {
    known: HashMap<String, KnownMonitor>,
    reject_unknown: bool,
    default_class: TrafficClass,
    anonymous: MonitorProfile,
    /// One meter for every monitor the config does not name: their ids are the caller's
    /// choice, so per-id state would be unbounded.
    unconfigured: Arc<TrafficMeter>,
}

impl MonitorDirectory {
    /// Builds the directory from `[[monitors]]` and `[server]`.
    pub fn new(config: &Config) -> Self {
        let known = config
            .monitors
            .iter()
            .map(|m| {
                let profile = MonitorProfile {
                    id: Arc::from(m.id.as_str()),
                    class: m.class,
                    critical: m.critical,
                    region: m.prefer_region.as_deref().map(Arc::from),
                    traffic: Arc::new(TrafficMeter::new(m.class, m.latency_sensitivity)),
                };
                (
                    m.id.clone(),
                    KnownMonitor {
                        profile,
                        token: m.token.clone(),
                    },
                )
            })
            .collect();
        Self {
            known,
            reject_unknown: config.server.reject_unknown_monitors,
            default_class: config.server.default_class,
            anonymous: MonitorProfile::new("anonymous", config.server.default_class, false),
            unconfigured: Arc::new(TrafficMeter::new(config.server.default_class, None)),
        }
    }

    /// Every traffic meter, for the once-a-second tick.
    pub fn meters(&self) -> impl Iterator<Item = &Arc<TrafficMeter>> {
        self.known
            .values()
            .map(|k| &k.profile.traffic)
            .chain([&self.anonymous.traffic, &self.unconfigured])
    }

    /// The configured monitors' traffic profiles, by id.
    pub fn traffic(&self) -> Vec<(Arc<str>, sluice_contract::traffic::TrafficProfile)> {
        self.known
            .values()
            .map(|k| (Arc::clone(&k.profile.id), k.profile.traffic.profile()))
            .collect()
    }

    /// Resolves the caller of a request, or the status that refuses it. `certified` is the
    /// monitor its verified client certificate names (mutual TLS): it is the caller's identity,
    /// needs no token, and a header naming anyone else is refused.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        certified: Option<&str>,
    ) -> Result<MonitorProfile, Status> {
        let name = match headers.get(MONITOR_HEADER).map(|v| v.to_str()) {
            None => None,
            Some(Ok(name)) => Some(name),
            Some(Err(_)) => {
                return Err(Status::new(
                    Code::Unauthenticated,
                    format!("{MONITOR_HEADER} is not valid ASCII"),
                ));
            }
        };
        if let Some(name) = name {
            // Ids reach logs, metric labels and alerts: only short, plain ones get that far.
            sluice_config::check_monitor_id(name).map_err(|problem| {
                Status::new(
                    Code::Unauthenticated,
                    format!("invalid {MONITOR_HEADER}: {problem}"),
                )
            })?;
        }
        if let Some(certified) = certified {
            if name.is_some_and(|name| name != certified) {
                return Err(Status::new(
                    Code::Unauthenticated,
                    format!(
                        "the client certificate names monitor {certified:?}, {MONITOR_HEADER} \
                         another"
                    ),
                ));
            }
            return match self.known.get(certified) {
                Some(known) => Ok(known.profile.clone()),
                None => self.unconfigured(certified),
            };
        }
        let Some(name) = name else {
            if self.reject_unknown {
                return Err(Status::new(
                    Code::Unauthenticated,
                    format!("this Sluice only serves known monitors; send {MONITOR_HEADER}"),
                ));
            }
            return Ok(self.anonymous.clone());
        };
        match self.known.get(name) {
            Some(known) => {
                if let Some(expected) = &known.token {
                    let given = headers.get(TOKEN_HEADER).map(|v| v.as_bytes());
                    if !given.is_some_and(|g| constant_time_eq(g, expected.as_bytes())) {
                        return Err(Status::new(
                            Code::Unauthenticated,
                            format!("wrong or missing {TOKEN_HEADER} for monitor {name:?}"),
                        ));
                    }
                }
                Ok(known.profile.clone())
            }
            None => self.unconfigured(name),
        }
    }

    /// The profile of `name`, a monitor `[[monitors]]` does not list, unless such are refused.
    fn unconfigured(&self, name: &str) -> Result<MonitorProfile, Status> {
        if self.reject_unknown {
            return Err(Status::new(
                Code::Unauthenticated,
                format!("unknown monitor {name:?}"),
            ));
        }
        Ok(MonitorProfile {
            id: Arc::from(name),
            class: self.default_class,
            critical: false,
            region: None,
            traffic: Arc::clone(&self.unconfigured),
        })
    }
}

/// Compares secrets without revealing the length of the matching prefix through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(reject_unknown: bool) -> MonitorDirectory {
        let mut config: Config = Config::default();
        config.server.reject_unknown_monitors = reject_unknown;
        config.monitors.push(sluice_config::MonitorConfig {
            critical: true,
            token: Some("secret".into()),
            ..sluice_config::MonitorConfig::new("rt", TrafficClass::Realtime)
        });
        MonitorDirectory::new(&config)
    }

    impl MonitorDirectory {
        /// A caller without a client certificate.
        fn identify_for_tests(&self, headers: &HeaderMap) -> Result<MonitorProfile, Status> {
            self.identify(headers, None)
        }
    }

    #[test]
    fn a_certificate_names_the_monitor_without_a_token_and_no_one_else() {
        let dir = directory(true);
        let profile = dir.identify(&HeaderMap::new(), Some("rt")).unwrap();
        assert_eq!(&*profile.id, "rt");
        assert!(profile.critical, "the configured monitor, token or not");
        let same = dir.identify(&headers(&[(MONITOR_HEADER, "rt")]), Some("rt"));
        assert!(same.is_ok());
        let other = dir
            .identify(&headers(&[(MONITOR_HEADER, "other")]), Some("rt"))
            .unwrap_err();
        assert_eq!(other.code, Code::Unauthenticated);
        assert!(other.message.contains("certificate"), "{other:?}");
        // A certified name that is not configured is refused where unknown monitors are.
        assert!(dir.identify(&HeaderMap::new(), Some("stranger")).is_err());
        assert!(
            directory(false)
                .identify(&HeaderMap::new(), Some("stranger"))
                .is_ok()
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn known_monitor_with_token() {
        let dir = directory(false);
        let profile = dir
            .identify_for_tests(&headers(&[
                (MONITOR_HEADER, "rt"),
                (TOKEN_HEADER, "secret"),
            ]))
            .unwrap();
        assert_eq!(profile.class, TrafficClass::Realtime);
        assert!(profile.critical);
        let err = dir
            .identify_for_tests(&headers(&[(MONITOR_HEADER, "rt"), (TOKEN_HEADER, "nope")]))
            .unwrap_err();
        assert_eq!(err.code, Code::Unauthenticated);
    }

    #[test]
    fn unknown_monitors_get_default_class_or_are_refused() {
        let profile = directory(false)
            .identify_for_tests(&headers(&[(MONITOR_HEADER, "x")]))
            .unwrap();
        assert_eq!(profile.class, TrafficClass::Event);
        assert_eq!(&*profile.id, "x");
        assert!(
            directory(true)
                .identify_for_tests(&headers(&[(MONITOR_HEADER, "x")]))
                .is_err()
        );
        assert!(
            directory(true)
                .identify_for_tests(&HeaderMap::new())
                .is_err()
        );
    }

    #[test]
    fn invented_ids_must_be_short_and_plain() {
        let dir = directory(false);
        let long = http::HeaderValue::from_str(&"m".repeat(200)).unwrap();
        let mut too_long = HeaderMap::new();
        too_long.insert(MONITOR_HEADER, long);
        let err = dir.identify_for_tests(&too_long).unwrap_err();
        assert_eq!(err.code, Code::Unauthenticated);
        assert!(err.message.contains("invalid"), "{err:?}");
        let err = dir
            .identify_for_tests(&headers(&[(MONITOR_HEADER, "a b")]))
            .unwrap_err();
        assert_eq!(err.code, Code::Unauthenticated);
    }
}

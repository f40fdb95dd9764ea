use super::*;

const MINIMAL: &str = r#"
[[endpoints]]
id = "a"
url = "http://127.0.0.1:7000"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: None,
        message: e.to_string(),
    })?;
    config.expand_secrets(&|name| (name == "TOKEN").then(|| "s3cret".to_owned()))?;
    config.validate()?;
    Ok(config)
}

fn error_of(text: &str) -> String {
    parse(text)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn defaults_follow_the_spec() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.pool.max_connections, 40);
    assert_eq!(config.classes.realtime.connection_limit(40), 18);
    assert_eq!(config.classes.event.connection_limit(40), 12);
    assert_eq!(config.classes.state.connection_limit(40), 8);
    assert_eq!(config.server.default_class, TrafficClass::Event);
    assert_eq!(config.classes.event.lag_policy, LagPolicy::Block);
}

#[test]
fn full_example_parses() {
    let text = r#"
[server]
listen = "127.0.0.1:6000"
reject_unknown_monitors = true
shutdown_grace = "3s"

[pool]
max_connections = 10
queue_timeout = "250ms"

[classes.realtime]
share = 0.5
max_streams_per_connection = 50
lag_policy = "disconnect"
lag_timeout = "500ms"

[[endpoints]]
id = "primary"
url = "http://127.0.0.1:7000"
region = "eu"
priority = 1
metadata = { "x-token" = "${TOKEN}" }

[[monitors]]
id = "m1"
class = "realtime"
critical = true
token = "${TOKEN}"

[[methods]]
path = "/sluice.feed.v1.Feed/*"
share = true
share_key_metadata = ["x-topic"]
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.endpoints[0].metadata["x-token"], "s3cret");
    assert_eq!(config.monitors[0].token.as_deref(), Some("s3cret"));
    assert_eq!(
        config.classes.realtime.lag_timeout,
        Duration::from_millis(500)
    );
    assert!(
        config
            .method("/sluice.feed.v1.Feed/Subscribe")
            .unwrap()
            .share
    );
    assert!(config.method("/sluice.feed.v1.Other/Subscribe").is_none());
    assert!(config.method("/sluice.feed.v1.FeedX/Subscribe").is_none());
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = error_of(&format!("{MINIMAL}\n[pool]\nmax_conections = 3\n"));
    assert!(err.contains("max_conections"), "{err}");
}

#[test]
fn wrong_types_name_the_key() {
    let err = error_of(&format!("{MINIMAL}\n[pool]\nmax_connections = \"many\"\n"));
    assert!(err.contains("max_connections"), "{err}");
}

#[test]
fn missing_endpoints_are_reported() {
    let err = error_of("");
    assert!(
        err.contains("`endpoints`") && err.contains("at least one"),
        "{err}"
    );
}

#[test]
fn bad_urls_are_reported() {
    for (url, needle) in [
        ("127.0.0.1:7000", "not a URL"),
        ("ftp://h:1", "scheme"),
        ("http://h", "explicit host and port"),
        ("http://h:1/path", "no path"),
    ] {
        let err = error_of(&format!("[[endpoints]]\nid = \"a\"\nurl = \"{url}\"\n"));
        assert!(
            err.contains("endpoints[0].url") && err.contains(needle),
            "{url}: {err}"
        );
    }
}

#[test]
fn duplicates_are_reported() {
    let err = error_of(&format!("{MINIMAL}{MINIMAL}"));
    assert!(
        err.contains("endpoints[1].id") && err.contains("duplicate"),
        "{err}"
    );
}

#[test]
fn shares_over_one_are_rejected() {
    let err = error_of(&format!("{MINIMAL}\n[classes.realtime]\nshare = 0.9\n"));
    assert!(err.contains("shares add up"), "{err}");
    let err = error_of(&format!("{MINIMAL}\n[classes.state]\nshare = 1.5\n"));
    assert!(err.contains("classes.state.share"), "{err}");
}

#[test]
fn unset_secrets_are_named() {
    let err = error_of(&format!(
        "{MINIMAL}metadata = {{ \"x-token\" = \"${{MISSING}}\" }}\n"
    ));
    assert!(
        err.contains("endpoints[0].metadata.x-token") && err.contains("MISSING"),
        "{err}"
    );
}

#[test]
fn missing_ca_file_is_reported() {
    let err = error_of(
        "[[endpoints]]\nid = \"a\"\nurl = \"https://h:1\"\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert!(
        err.contains("endpoints[0].ca_file") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn the_stream_window_budget_is_checked_against_the_stream_window() {
    let pool = |keys: &str| {
        parse(&format!("[pool]\n{keys}\n{MINIMAL}"))
            .expect("valid config")
            .pool
    };
    assert_eq!(pool("").stream_window_budget(), 1024 * 1024);
    // A larger stream window raises the default budget with it rather than failing.
    assert_eq!(
        pool("stream_window_bytes = 4194304").stream_window_budget(),
        4 * 1024 * 1024
    );
    assert_eq!(
        pool("stream_window_budget_bytes = 131072").stream_window_budget(),
        128 * 1024
    );
    let err = error_of(&format!(
        "[pool]\nstream_window_budget_bytes = 65535\n{MINIMAL}"
    ));
    assert!(
        err.contains("pool.stream_window_budget_bytes") && err.contains("131072"),
        "{err}"
    );
}

#[test]
fn bad_method_paths_are_reported() {
    let err = error_of(&format!(
        "{MINIMAL}\n[[methods]]\npath = \"Feed/Subscribe\"\n"
    ));
    assert!(err.contains("methods[0].path"), "{err}");
}

#[test]
fn bad_classes_in_monitors_are_reported() {
    let err = error_of(&format!(
        "{MINIMAL}\n[[monitors]]\nid = \"m\"\nclass = \"bulk\"\n"
    ));
    assert!(err.contains("bulk") || err.contains("class"), "{err}");
}

#[test]
fn env_expansion_handles_escapes_and_errors() {
    let lookup = |n: &str| (n == "A").then(|| "1".to_owned());
    assert_eq!(expand_env("x${A}y$$z", &lookup).unwrap(), "x1y$z");
    assert!(
        expand_env("${B}", &lookup)
            .unwrap_err()
            .contains("B is not set")
    );
    assert!(expand_env("${A", &lookup).is_err());
}

#[test]
fn endpoint_authority_and_host() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.endpoints[0].authority(), "127.0.0.1:7000");
    assert_eq!(config.endpoints[0].host(), "127.0.0.1");
}

#[test]
fn the_resumer_slot_has_its_own_table_and_defaults() {
    assert_eq!(SlotKind::parse("resumer"), Some(SlotKind::Resumer));
    assert_eq!(SlotKind::Resumer.to_string(), "resumer");
    assert!(SlotKind::ALL.contains(&SlotKind::Resumer));
    assert_eq!(SlotKind::names(), "router, scaler, anomaly, resumer");
    assert_eq!(SlotKind::parse("resume"), None);

    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.plugins.resumer, SlotConfig::default());
    assert_eq!(
        config.plugins.resumer.deadline_for(SlotKind::Resumer),
        Duration::from_millis(5)
    );

    let config = parse(&format!(
        "{MINIMAL}\n[plugins.resumer]\ndeadline = \"2ms\"\nfailure_threshold = 3\n\
         config = {{ field = \"from_seq\" }}\n"
    ))
    .unwrap();
    let table = config.plugins.slot(SlotKind::Resumer);
    assert_eq!(
        table.deadline_for(SlotKind::Resumer),
        Duration::from_millis(2)
    );
    assert_eq!(table.failures_to_disable(), 3);
    assert_eq!(table.config["field"], "from_seq");
    // The other slots keep their defaults.
    assert_eq!(config.plugins.router, SlotConfig::default());
}

#[test]
fn bad_resumer_settings_name_their_key() {
    let err = error_of(&format!(
        "{MINIMAL}\n[plugins.resumer]\ndeadline = \"20s\"\n"
    ));
    assert!(err.contains("plugins.resumer.deadline"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}\n[plugins.resumer]\nfailure_threshold = 0\n"
    ));
    assert!(err.contains("plugins.resumer.failure_threshold"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}\n[plugins.resumer]\ndedline = \"1ms\"\n"
    ));
    assert!(err.contains("dedline"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}\n[plugins.resumer]\nfile = \"/nonexistent/feed-resumer.wasm\"\n"
    ));
    assert!(
        err.contains("plugins.resumer.file") && err.contains("does not exist"),
        "{err}"
    );
    let err = error_of(&format!("{MINIMAL}\n[plugins.resumers]\n"));
    assert!(err.contains("resumers"), "{err}");
}

#[test]
fn breaker_scopes_resolve_against_their_own_defaults() {
    let config = parse(&format!(
        "{MINIMAL}\n[breakers.monitor]\nfailure_threshold = 3\n[breakers.endpoint]\nopen_duration = \"2s\"\n"
    ))
    .unwrap();
    let monitor = config.breakers.settings(BreakerScope::Monitor);
    assert_eq!(monitor.failure_threshold, 3);
    assert_eq!(monitor.success_threshold, 5, "monitor default kept");
    assert_eq!(monitor.open_duration, Duration::from_secs(60));
    assert_eq!(
        monitor.max_open_duration,
        Duration::from_secs(120),
        "a monitor is let back in within 2 minutes"
    );
    assert_eq!(monitor.failure_rate, 0.3);
    assert_eq!(
        config
            .breakers
            .settings(BreakerScope::Connection)
            .max_open_duration,
        Duration::from_secs(240)
    );
    let endpoint = config.breakers.settings(BreakerScope::Endpoint);
    assert_eq!(endpoint.open_duration, Duration::from_secs(2));
    assert_eq!(
        endpoint.max_open_duration,
        Duration::from_secs(16),
        "8x the configured open period"
    );
    assert_eq!(
        config.breakers.settings(BreakerScope::Connection),
        BreakerSettings::CONNECTION
    );
    assert!(config.breakers.failures.no_first_message);
    assert!(!config.health.active);
    assert_eq!(config.pool.keepalive_interval, Duration::from_secs(10));
}

#[test]
fn resilience_settings_are_checked() {
    for (snippet, key) in [
        (
            "[breakers.connection]\nfailure_rate = 1.5\n",
            "breakers.connection.failure_rate",
        ),
        (
            "[breakers.monitor]\nsuccess_threshold = 0\n",
            "breakers.monitor.success_threshold",
        ),
        (
            "[breakers.endpoint]\nopen_duration = \"10s\"\nmax_open_duration = \"1s\"\n",
            "breakers.endpoint.max_open_duration",
        ),
        ("[health]\ninterval = \"0s\"\n", "health.interval"),
        (
            "[pool]\nkeepalive_timeout = \"0s\"\n",
            "pool.keepalive_timeout",
        ),
        (
            "[pool]\nreconnect_backoff = \"1m\"\nreconnect_backoff_max = \"1s\"\n",
            "pool.reconnect_backoff",
        ),
    ] {
        let error = error_of(&format!("{MINIMAL}\n{snippet}"));
        assert!(error.contains(&format!("`{key}`")), "{snippet}: {error}");
    }
    let unknown = error_of(&format!("{MINIMAL}\n[breakers.endpoint]\nfailures = 3\n"));
    assert!(unknown.contains("unknown field `failures`"), "{unknown}");
    let unknown_kind = error_of(&format!("{MINIMAL}\n[breakers.failures]\nteapot = true\n"));
    assert!(
        unknown_kind.contains("unknown field `teapot`"),
        "{unknown_kind}"
    );
}

#[test]
fn resume_and_rate_limits_are_checked() {
    let config = parse(&format!(
        "{MINIMAL}rate_limit = {{ streams_per_second = 2.5 }}\n\n[[methods]]\npath = \"/a.B/C\"\nresume = \"replay-all\"\n"
    ))
    .unwrap();
    let limit = config.endpoints[0].rate_limit.unwrap();
    assert_eq!(limit.burst(), 3, "one second's worth, rounded up");
    assert_eq!(limit.queue, 1024);
    assert_eq!(config.methods[0].resume, ResumeMode::ReplayAll);
    assert_eq!(config.methods[0].resume_attempts, 5);

    let shared = error_of(&format!(
        "{MINIMAL}\n[[methods]]\npath = \"/a.B/C\"\nshare = true\nresume = \"replay-last\"\n"
    ));
    assert!(shared.contains("`methods[0].resume`"), "{shared}");
    let first = error_of(&format!(
        "{MINIMAL}\n[[methods]]\npath = \"/a.B/C\"\nshare = true\nopen_on_request = true\n"
    ));
    assert!(first.contains("`methods[0].open_on_request`"), "{first}");
    let zero = error_of(&format!(
        "{MINIMAL}\n[[methods]]\npath = \"/a.B/C\"\nfirst_message_timeout = \"0s\"\n"
    ));
    assert!(
        zero.contains("`methods[0].first_message_timeout`"),
        "{zero}"
    );
    let strict = parse(&format!(
        "{MINIMAL}\n[[methods]]\npath = \"/a.B/C\"\nfirst_message_timeout = \"2s\"\n"
    ))
    .unwrap();
    assert_eq!(
        strict.methods[0].first_message_timeout,
        Some(Duration::from_secs(2))
    );
    let mode = error_of(&format!(
        "{MINIMAL}\n[[methods]]\npath = \"/a.B/C\"\nresume = \"sometimes\"\n"
    ));
    assert!(mode.contains("replay-last"), "{mode}");
    let rate = error_of(&format!(
        "{MINIMAL}rate_limit = {{ streams_per_second = 0 }}\n"
    ));
    assert!(
        rate.contains("`endpoints[0].rate_limit.streams_per_second`"),
        "{rate}"
    );
    let burst = error_of(&format!(
        "{MINIMAL}rate_limit = {{ streams_per_second = 1, burst = 0 }}\n"
    ));
    assert!(burst.contains("`endpoints[0].rate_limit.burst`"), "{burst}");
}

#[test]
fn endpoint_limits_parse_and_nonsense_is_refused_by_key() {
    let config = parse(&format!(
        "{MINIMAL}limits = {{ max_connections = 100, max_streams = 500, \
         max_streams_per_connection = 5, connections_per_second = 10 }}\n"
    ))
    .unwrap();
    let limits = config.endpoints[0].limits;
    assert_eq!(limits.max_connections, Some(100));
    assert_eq!(limits.max_streams, Some(500));
    assert_eq!(limits.max_streams_per_connection, Some(5));
    assert_eq!(limits.connections_per_second, Some(10.0));
    assert!(!parse(MINIMAL).unwrap().endpoints[0].limits.any());

    let zero = error_of(&format!("{MINIMAL}limits = {{ max_streams = 0 }}\n"));
    assert!(zero.contains("`endpoints[0].limits.max_streams`"), "{zero}");
    let rate = error_of(&format!(
        "{MINIMAL}limits = {{ connections_per_second = -1 }}\n"
    ));
    assert!(
        rate.contains("`endpoints[0].limits.connections_per_second`"),
        "{rate}"
    );
    let typo = error_of(&format!("{MINIMAL}limits = {{ max_conections = 3 }}\n"));
    assert!(typo.contains("max_conections"), "{typo}");
    // The health check holds a connection of its own: one in all leaves streams none.
    let one = error_of(&format!(
        "{MINIMAL}limits = {{ max_connections = 1 }}\n\n[health]\nactive = true\n"
    ));
    assert!(
        one.contains("`endpoints[0].limits.max_connections`"),
        "{one}"
    );
    assert!(one.contains("health check"), "{one}");
    assert!(parse(&format!("{MINIMAL}limits = {{ max_connections = 1 }}\n")).is_ok());
}

#[test]
fn a_class_table_without_share_keeps_the_class_default() {
    let config = parse(&format!(
        "{MINIMAL}\n[classes.realtime]\nmin_connections = 2\n\n[classes.state]\nshare = 0.1\n"
    ))
    .unwrap();
    assert_eq!(config.classes.realtime.share, 0.45);
    assert_eq!(config.classes.realtime.min_connections, 2);
    assert_eq!(config.classes.event.share, 0.30);
    assert_eq!(config.classes.state.share, 0.1);
    let unknown = error_of(&format!("{MINIMAL}\n[classes.realtime]\nshar = 0.5\n"));
    assert!(unknown.contains("shar"), "{unknown}");
}

/// Parses `text` as a `T` without validation, as serde fills in what the text leaves out.
fn parse_table<T: serde::de::DeserializeOwned>(text: &str) -> T {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

/// Asserts that an empty `T` table parses to `T::default()`: a config built in code (the demo,
/// the tests) and a parsed one must get the same defaults from one source.
fn assert_default_is_empty_table<T>()
where
    T: serde::de::DeserializeOwned + Default + PartialEq + fmt::Debug,
{
    assert_eq!(
        parse_table::<T>(""),
        T::default(),
        "`{}::default()` differs from an empty table",
        std::any::type_name::<T>()
    );
}

#[test]
fn every_table_default_equals_the_parse_of_an_empty_table() {
    assert_default_is_empty_table::<Config>();
    assert_default_is_empty_table::<ServerConfig>();
    assert_default_is_empty_table::<PoolConfig>();
    assert_default_is_empty_table::<Classes>();
    assert_default_is_empty_table::<PluginsConfig>();
    assert_default_is_empty_table::<SlotConfig>();
    assert_default_is_empty_table::<AdminConfig>();
    assert_default_is_empty_table::<BreakersConfig>();
    assert_default_is_empty_table::<BreakerTable>();
    assert_default_is_empty_table::<FailureKinds>();
    assert_default_is_empty_table::<HealthConfig>();
    assert_default_is_empty_table::<ScalingConfig>();
    assert_default_is_empty_table::<AnalyticsConfig>();
    assert_default_is_empty_table::<StoreConfig>();
    assert_default_is_empty_table::<AlertsConfig>();
    assert_default_is_empty_table::<AlertRetryConfig>();
    assert_default_is_empty_table::<BreakerOpenRule>();
    assert_default_is_empty_table::<EndpointUnhealthyRule>();
    assert_default_is_empty_table::<EndpointMisconfiguredRule>();
    assert_default_is_empty_table::<AnswersConfig>();
    assert_default_is_empty_table::<ThresholdRule>();
    assert_default_is_empty_table::<ScorerConfig>();
    assert_default_is_empty_table::<LearningConfig>();
}

#[test]
fn empty_section_headers_keep_every_default() {
    let sections = [
        "server",
        "pool",
        "classes",
        "plugins",
        "admin",
        "breakers",
        "health",
        "scaling",
        "analytics",
        "store",
        "alerts",
        "scorer",
        "learning",
    ];
    let text: String = sections.iter().map(|s| format!("[{s}]\n")).collect();
    assert_eq!(parse_table::<Config>(&text), Config::default());
    let nested = "[classes.realtime]\n[classes.event]\n[classes.state]\n\
                  [plugins.router]\n[plugins.scaler]\n[plugins.anomaly]\n[plugins.resumer]\n";
    assert_eq!(parse_table::<Config>(nested), Config::default());
}

#[test]
fn plugins_folder_is_watched_by_default_in_code_and_in_toml() {
    assert!(PluginsConfig::default().watch);
    assert!(
        parse_table::<Config>("[plugins]\ndir = \"p\"\n")
            .plugins
            .watch
    );
}

#[test]
fn breaker_scopes_round_trip_through_their_names() {
    for scope in BreakerScope::ALL {
        assert_eq!(scope.as_str().parse::<BreakerScope>(), Ok(scope));
        assert_eq!(scope.to_string(), scope.as_str());
        let quoted = format!("scope = \"{scope}\"");
        #[derive(serde::Deserialize)]
        struct Holder {
            scope: BreakerScope,
        }
        assert_eq!(parse_table::<Holder>(&quoted).scope, scope);
    }
    let error = "pool".parse::<BreakerScope>().unwrap_err().to_string();
    assert!(error.contains("connection, endpoint, monitor"), "{error}");
}

#[test]
fn listener_limits_have_safe_defaults_and_are_validated() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.server.max_connections, 4096);
    assert_eq!(config.server.max_connections_per_peer, 256);
    assert_eq!(config.server.max_streams_per_monitor, 1024);
    assert_eq!(config.server.max_header_list_bytes, 16 * 1024);
    assert_eq!(config.server.request_timeout, Duration::from_secs(10));
    assert_eq!(config.server.max_buffered_request_bytes, 64 * 1024 * 1024);
    for (table, key) in [
        ("max_connections = 0", "server.max_connections"),
        (
            "max_connections_per_peer = 0",
            "server.max_connections_per_peer",
        ),
        (
            "max_streams_per_monitor = 0",
            "server.max_streams_per_monitor",
        ),
        (
            "max_buffered_request_bytes = 0",
            "server.max_buffered_request_bytes",
        ),
        ("request_timeout = \"0s\"", "server.request_timeout"),
        (
            "max_header_list_bytes = 100",
            "server.max_header_list_bytes",
        ),
        (
            "max_connections = 10\nmax_connections_per_peer = 20",
            "server.max_connections_per_peer",
        ),
    ] {
        let error = error_of(&format!("[server]\n{table}\n{MINIMAL}"));
        assert!(error.contains(key), "{table}: {error}");
    }
}

#[test]
fn a_monitor_may_have_its_own_stream_limit() {
    let text = format!(
        "{MINIMAL}\n[[monitors]]\nid = \"m\"\nclass = \"event\"\nmax_streams = 3\n\
         [[monitors]]\nid = \"n\"\nclass = \"event\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.monitors[0].stream_limit(&config.server), 3);
    assert_eq!(config.monitors[1].stream_limit(&config.server), 1024);
    let error = error_of(&format!(
        "{MINIMAL}\n[[monitors]]\nid = \"m\"\nclass = \"event\"\nmax_streams = 0\n"
    ));
    assert!(error.contains("monitors[0].max_streams"), "{error}");
}

#[test]
fn admin_allowed_hosts_and_origins_are_host_port_entries() {
    let config = parse(&format!(
        "{MINIMAL}\n[admin]\nallowed_hosts = [\"sluice.internal\", \"Sluice.Internal:9901\", \
         \"10.0.0.5:9901\", \"[::1]:9901\"]\nallowed_origins = [\"https://console.example\", \
         \"http://10.0.0.5:9901\"]\nallow_unauthenticated_writes = true\n"
    ))
    .unwrap();
    assert_eq!(config.admin.allowed_hosts.len(), 4);
    assert_eq!(config.admin.allowed_origins.len(), 2);
    assert!(config.admin.allow_unauthenticated_writes);
    assert!(!AdminConfig::default().allow_unauthenticated_writes);
    for (entry, problem) in [
        ("http://sluice.internal", "without a scheme"),
        ("sluice.internal/admin", "without a path"),
        ("sluice.internal?x=1", "without a path, query"),
        ("me@sluice.internal", "without a path, query or user"),
        ("sluice.internal:0", "a port is 1-65535"),
        ("sluice.internal:http", "a port is 1-65535"),
        ("sluice.internal:", "a port is 1-65535"),
        ("::1", "neither a DNS name nor an IP address"),
        ("[::1", "closing bracket"),
        ("[::1]9901", "closing bracket"),
        ("[not-ip]:1", "neither a DNS name"),
        ("", "neither a DNS name"),
        ("two words", "neither a DNS name"),
    ] {
        let error = error_of(&format!(
            "{MINIMAL}\n[admin]\nallowed_hosts = [\"ok.example\", {entry:?}]\n"
        ));
        assert!(
            error.contains("admin.allowed_hosts[1]") && error.contains(problem),
            "{entry:?}: {error}"
        );
    }
    for (entry, problem) in [
        ("console.example", "must start with http:// or https://"),
        (
            "ftp://console.example",
            "must start with http:// or https://",
        ),
        ("https://console.example/", "without a path"),
        ("https://console.example:99999", "a port is 1-65535"),
    ] {
        let error = error_of(&format!(
            "{MINIMAL}\n[admin]\nallowed_origins = [{entry:?}]\n"
        ));
        assert!(
            error.contains("admin.allowed_origins[0]") && error.contains(problem),
            "{entry:?}: {error}"
        );
    }
}

#[test]
fn admin_tls_files_must_exist() {
    let existing = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let config = parse(&format!(
        "{MINIMAL}\n[admin.tls]\ncert_file = {existing:?}\nkey_file = {existing:?}\n"
    ))
    .unwrap();
    assert!(config.admin.tls.is_some());
    let error = error_of(&format!(
        "{MINIMAL}\n[admin.tls]\ncert_file = \"/nonexistent/admin.pem\"\nkey_file = {existing:?}\n"
    ));
    assert!(
        error.contains("admin.tls.cert_file") && error.contains("does not exist"),
        "{error}"
    );
    let error = error_of(&format!(
        "{MINIMAL}\n[admin.tls]\ncert_file = {existing:?}\nkey_file = \"/nonexistent/admin.key\"\n"
    ));
    assert!(
        error.contains("admin.tls.key_file") && error.contains("does not exist"),
        "{error}"
    );
    let error = error_of(&format!(
        "{MINIMAL}\n[admin.tls]\ncert = {existing:?}\nkey_file = {existing:?}\n"
    ));
    assert!(error.contains("unknown field `cert`"), "{error}");
}

#[test]
fn monitor_ids_are_short_and_plain() {
    for good in ["rt-0", "svc.geyser/slots@eu:1", "A_b"] {
        assert!(check_monitor_id(good).is_ok(), "{good}");
    }
    let long = "m".repeat(MAX_MONITOR_ID_BYTES + 1);
    for bad in ["", "has space", "new\nline", "<script>", long.as_str(), "é"] {
        assert!(check_monitor_id(bad).is_err(), "{bad:?}");
    }
    let error = error_of(&format!(
        "{MINIMAL}\n[[monitors]]\nid = \"bad id\"\nclass = \"event\"\n"
    ));
    assert!(error.contains("monitors[0].id"), "{error}");
}

#[test]
fn an_open_listener_without_monitor_authentication_is_warned_about() {
    let local = parse(&format!(
        "{MINIMAL}\n[[monitors]]\nid = \"m\"\nclass = \"event\"\n"
    ))
    .unwrap();
    assert!(local.warnings().is_empty(), "loopback is fine");
    let open = parse(&format!(
        "[server]\nlisten = \"0.0.0.0:50051\"\n{MINIMAL}\n[[monitors]]\nid = \"m\"\n\
         class = \"event\"\n"
    ))
    .unwrap();
    let warnings = open.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("without a token: m"), "{warnings:?}");
    let tokened = parse(&format!(
        "[server]\nlisten = \"0.0.0.0:50051\"\n{MINIMAL}\n[[monitors]]\nid = \"m\"\n\
         class = \"event\"\ntoken = \"${{TOKEN}}\"\n"
    ))
    .unwrap();
    assert!(tokened.warnings().is_empty(), "{:?}", tokened.warnings());
}

#[test]
fn shared_bidi_subscriptions_need_a_resumer_plugin() {
    let method = "\n[[methods]]\npath = \"/geyser.Geyser/Subscribe\"\nshare = true\nbidi = true\n";
    let missing = error_of(&format!("{MINIMAL}{method}"));
    assert!(missing.contains("`methods[0].bidi`"), "{missing}");
    assert!(missing.contains("resumer plugin"), "{missing}");
    // A file that does not exist is no plugin either.
    let absent = error_of(&format!(
        "{MINIMAL}{method}\n[plugins.resumer]\nfile = \"/nonexistent/yellowstone.wasm\"\n"
    ));
    assert!(absent.contains("`methods[0].bidi`"), "{absent}");
    // Any existing file passes here; loading it is the policy engine's check.
    let dir = std::env::temp_dir().join(format!("sluice-config-bidi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("resumer.wasm"), b"\0asm").unwrap();
    let found = parse(&format!(
        "{MINIMAL}{method}\n[plugins]\ndir = {:?}\n",
        dir.display().to_string()
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(found.unwrap().methods[0].bidi);
    // Without share, bidi changes nothing and needs nothing.
    let alone = "\n[[methods]]\npath = \"/geyser.Geyser/Subscribe\"\nbidi = true\n";
    assert!(parse(&format!("{MINIMAL}{alone}")).is_ok());
}

#[test]
fn cluster_tables_are_checked() {
    let cluster =
        |extra: &str| format!("{MINIMAL}\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n{extra}");
    let config = parse(&cluster("")).unwrap();
    let table = config.cluster.expect("a cluster");
    assert_eq!(table.name, "sluice");
    assert_eq!(table.lease_ttl, std::time::Duration::from_secs(5));
    assert_eq!(table.max_instances, 3);
    assert!(
        parse(MINIMAL).unwrap().cluster.is_none(),
        "alone without the table"
    );
    for (extra, key) in [
        ("lease_ttl = \"1s\"\n", "cluster.lease_ttl"),
        ("max_instances = 0\n", "cluster.max_instances"),
        ("interval = \"2s\"\n", "cluster.interval"),
        ("name = \"a/b\"\n", "cluster.name"),
        ("user = \"root\"\n", "cluster.user"),
    ] {
        let error = error_of(&cluster(extra));
        assert!(error.contains(key), "{extra}: {error}");
    }
    let https = error_of(&format!(
        "{MINIMAL}\n[cluster]\netcd = [\"https://etcd:2379\"]\n"
    ));
    assert!(https.contains("cluster.ca_file"), "{https}");
    let empty = error_of(&format!("{MINIMAL}\n[cluster]\netcd = []\n"));
    assert!(empty.contains("cluster.etcd"), "{empty}");
}

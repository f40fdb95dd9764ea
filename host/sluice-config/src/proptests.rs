//! Property tests of reading a config: whatever the text and whatever the values of the known
//! keys, [`Config::from_toml`] (`toml` parsing, secret expansion, validation) answers with a
//! config or with an error that names a key or a line, and never panics.
//!
//! The keys come from the schema itself (every key of [`Config::default`] and of an endpoint,
//! a monitor and a method as serialized), plus the optional keys a default leaves unset, so
//! keys added later are covered without editing this file. Cases are bounded so the file runs
//! in a few seconds, and no failure file is written into the source tree.

use std::panic::{AssertUnwindSafe, catch_unwind};

use humantime_serde::re::humantime;
use proptest::prelude::*;

use super::*;

/// 256 cases a property, and no `proptest-regressions/` files: a failure prints its minimal
/// input, which becomes a unit test.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What a key holds, as its default shows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Duration,
    Text,
    /// A table or an array: anything is tried.
    Any,
}

/// Where a key is written: at the top (dotted from the root) or inside the one entry of an
/// array of tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Top,
    Endpoint,
    Monitor,
    Method,
}

/// A key the schema knows: where, its dotted path there, and what it holds.
#[derive(Debug, Clone)]
struct Key {
    place: Place,
    path: Vec<String>,
    kind: Kind,
}

/// Optional keys that a default leaves unset (so they are not serialized): where, the dotted
/// path, and what they hold.
const OPTIONAL: &[(Place, &str, Kind)] = &[
    (Place::Top, "pool.stream_window_budget_bytes", Kind::Int),
    (Place::Top, "classes.realtime.max_connections", Kind::Int),
    (Place::Top, "server.tls.cert_file", Kind::Text),
    (Place::Top, "server.tls.client_ca_file", Kind::Text),
    (Place::Top, "admin.token", Kind::Text),
    (Place::Top, "admin.tls.cert_file", Kind::Text),
    (Place::Top, "plugins.dir", Kind::Text),
    (Place::Top, "plugins.cache_dir", Kind::Text),
    (Place::Top, "plugins.router.deadline", Kind::Duration),
    (Place::Top, "plugins.router.memory_limit_bytes", Kind::Int),
    (Place::Top, "plugins.router.failure_threshold", Kind::Int),
    (Place::Top, "plugins.router.failure_rate", Kind::Float),
    (Place::Top, "plugins.router.failure_window", Kind::Duration),
    (Place::Top, "plugins.router.failure_min_calls", Kind::Int),
    (Place::Top, "plugins.scaler.shadow_sample", Kind::Float),
    (
        Place::Top,
        "breakers.connection.failure_threshold",
        Kind::Int,
    ),
    (
        Place::Top,
        "breakers.connection.open_duration",
        Kind::Duration,
    ),
    (
        Place::Top,
        "breakers.connection.max_open_duration",
        Kind::Duration,
    ),
    (Place::Top, "breakers.endpoint.window", Kind::Duration),
    (Place::Top, "breakers.endpoint.minimum_volume", Kind::Int),
    (Place::Top, "breakers.monitor.failure_rate", Kind::Float),
    (
        Place::Top,
        "breakers.monitor.slow_call_duration",
        Kind::Duration,
    ),
    (Place::Top, "breakers.monitor.slow_call_rate", Kind::Float),
    (Place::Top, "breakers.monitor.half_open_probes", Kind::Int),
    (Place::Top, "scorer.model", Kind::Text),
    (Place::Endpoint, "ca_file", Kind::Text),
    (Place::Endpoint, "tls_server_name", Kind::Text),
    (
        Place::Endpoint,
        "rate_limit.streams_per_second",
        Kind::Float,
    ),
    (Place::Endpoint, "rate_limit.burst", Kind::Int),
    (Place::Endpoint, "rate_limit.queue", Kind::Int),
    (Place::Monitor, "token", Kind::Text),
    (Place::Monitor, "max_latency", Kind::Duration),
    (Place::Monitor, "latency_sensitivity", Kind::Float),
    (Place::Monitor, "max_streams", Kind::Int),
    (Place::Method, "max_message_bytes", Kind::Int),
];

/// Adds the leaves of `value` under `path` to `keys`.
fn leaves(place: Place, path: &mut Vec<String>, value: &toml::Value, keys: &mut Vec<Key>) {
    let kind = match value {
        toml::Value::Table(table) if !table.is_empty() => {
            for (name, value) in table {
                path.push(name.clone());
                leaves(place, path, value, keys);
                path.pop();
            }
            return;
        }
        toml::Value::Integer(_) => Kind::Int,
        toml::Value::Float(_) => Kind::Float,
        toml::Value::Boolean(_) => Kind::Bool,
        toml::Value::String(s) if humantime::parse_duration(s).is_ok() => Kind::Duration,
        toml::Value::String(_) => Kind::Text,
        _ => Kind::Any,
    };
    keys.push(Key {
        place,
        path: path.clone(),
        kind,
    });
}

/// Every key the schema knows (see the module docs).
fn known_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    let defaults = [
        (Place::Top, toml::Value::try_from(Config::default())),
        (
            Place::Endpoint,
            toml::Value::try_from(EndpointConfig::new("a", "http://127.0.0.1:7000")),
        ),
        (
            Place::Monitor,
            toml::Value::try_from(MonitorConfig::new("m1", TrafficClass::Event)),
        ),
        (
            Place::Method,
            toml::Value::try_from(MethodConfig::new("/feed.Feed/*")),
        ),
    ];
    for (place, value) in defaults {
        leaves(place, &mut Vec::new(), &value.unwrap(), &mut keys);
    }
    for (place, path, kind) in OPTIONAL {
        keys.push(Key {
            place: *place,
            path: path.split('.').map(str::to_owned).collect(),
            kind: *kind,
        });
    }
    keys
}

/// `text` as a TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A dotted key, each part quoted.
fn dotted(path: &[String]) -> String {
    path.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".")
}

/// Integers at and beyond the extremes of every integer type the schema uses, as TOML text.
/// `u64::MAX` and `i64::MAX + 1` are not TOML integers at all: the parser must refuse them.
fn int_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            0,
            1,
            -1,
            i64::MAX,
            i64::MIN,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::from(u16::MAX) + 1,
        ])
        .prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        4 => (0i64..100_000).prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "18446744073709551615",
            "9223372036854775808",
            "0x7fffffff"
        ])
        .prop_map(str::to_owned),
    ]
}

/// Floats, special values included, as TOML text.
fn float_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "nan", "inf", "-inf", "0.0", "-0.0", "1e308", "5e-324", "-1.0", "0.5", "1.0", "2.0",
        ])
        .prop_map(str::to_owned),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
    ]
}

/// Durations from nothing to far beyond `u64::MAX` seconds, and near misses, as TOML strings.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s",
            "0ns",
            "1ns",
            "18446744073709551615s",
            "18446744073709551615ns",
            "18446744073709551616s",
            "584942417355y",
            "600000000000000000000y",
            "",
            "1",
            "-1s",
            "1.5s",
            "1 hour 2 minutes",
            "forever",
        ])
        .prop_map(quote),
        "[0-9]{1,24} ?(ns|us|ms|s|m|h|d|w|y|days|hours|min)".prop_map(|s| quote(&s)),
    ]
}

/// Strings: arbitrary ones, environment references and addresses, as TOML strings.
fn string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| quote(&s)),
        "\\$\\{[A-Z_]{0,8}\\}?[a-z]{0,4}".prop_map(|s| quote(&s)),
        "(https?://)?[a-z0-9.:\\[\\]]{0,24}(/[a-z]{0,6})?".prop_map(|s| quote(&s)),
    ]
}

/// Any TOML value text: all of the above, booleans, arrays, tables and a date.
fn any_text() -> BoxedStrategy<String> {
    prop_oneof![
        int_text(),
        float_text(),
        duration_text(),
        string_text(),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(vec![
            "[]",
            "{}",
            "[1, 2]",
            "[\"a\", \"\"]",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// A value for a key of `kind`: mostly of its type, sometimes anything.
fn value_text(kind: Kind) -> BoxedStrategy<String> {
    let typed = match kind {
        Kind::Int => int_text().boxed(),
        Kind::Float => float_text().boxed(),
        Kind::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Kind::Duration => duration_text().boxed(),
        Kind::Text => string_text().boxed(),
        Kind::Any => return any_text(),
    };
    prop_oneof![6 => typed, 1 => any_text()].boxed()
}

/// One to three known keys, each with a value for it.
fn assignments() -> impl Strategy<Value = Vec<(Key, String)>> {
    let key = prop::sample::select(known_keys())
        .prop_flat_map(|key| (Just(key.clone()), value_text(key.kind)));
    prop::collection::vec(key, 1..=3)
}

/// A config of one endpoint, one monitor and one method with `assignments` written into it
/// (a later one for the same key wins), as TOML text.
fn document(assignments: &[(Key, String)]) -> String {
    let mut entries: BTreeMap<(Place, String), String> = BTreeMap::new();
    for (place, key, value) in [
        (Place::Endpoint, "id", "\"a\""),
        (Place::Endpoint, "url", "\"http://127.0.0.1:7000\""),
        (Place::Monitor, "id", "\"m1\""),
        (Place::Monitor, "class", "\"event\""),
        (Place::Method, "path", "\"/feed.Feed/*\""),
    ] {
        entries.insert((place, quote(key)), value.to_owned());
    }
    for (key, value) in assignments {
        entries.insert((key.place, dotted(&key.path)), value.clone());
    }
    let mut text = String::new();
    let mut place = Place::Top;
    for ((at, key), value) in &entries {
        if *at != place {
            place = *at;
            text.push_str(match place {
                Place::Top => "",
                Place::Endpoint => "\n[[endpoints]]\n",
                Place::Monitor => "\n[[monitors]]\n",
                Place::Method => "\n[[methods]]\n",
            });
        }
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

/// Whether `error` says where the problem is: a parse error its line, a rejected value its key.
fn names_a_key_or_a_line(error: &ConfigError) -> bool {
    match error {
        ConfigError::Parse { message, .. } => message.contains("line "),
        ConfigError::Invalid { key, .. } => {
            !key.is_empty() && error.to_string().contains(&format!("`{key}`"))
        }
        ConfigError::Read { .. } => false,
    }
}

/// Reads `text` as a config, turning a panic into a failure that shows the text.
fn read(text: &str) -> Result<(), TestCaseError> {
    let result = catch_unwind(AssertUnwindSafe(|| Config::from_toml(text)))
        .map_err(|_| TestCaseError::fail(format!("panicked on:\n{text}")))?;
    if let Err(error) = result {
        prop_assert!(
            names_a_key_or_a_line(&error),
            "{error}\nnames neither a key nor a line, for:\n{text}"
        );
    }
    Ok(())
}

/// Lines that look like a config: headers and assignments of known and unknown keys with any
/// value, and lines of noise.
fn toml_ish_line() -> impl Strategy<Value = String> {
    let names: Vec<String> = known_keys().iter().map(|k| dotted(&k.path)).collect();
    let key = prop_oneof![
        3 => prop::sample::select(names),
        1 => "[a-z_]{1,12}(\\.[a-z_]{1,12}){0,2}",
    ];
    prop_oneof![
        4 => (key.clone(), any_text()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => key.clone().prop_map(|k| format!("[{k}]")),
        1 => prop::sample::select(vec!["[[endpoints]]", "[[monitors]]", "[[methods]]"])
            .prop_map(str::to_owned),
        1 => "[ -~]{0,30}",
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Known keys set to any value, in an otherwise valid config: a config or an error that
    /// names a key or a line.
    #[test]
    fn known_keys_with_any_value_parse_or_name_the_problem(assignments in assignments()) {
        read(&document(&assignments))?;
    }

    /// TOML-ish text (a valid config followed by lines of headers, assignments and noise), and
    /// arbitrary text: a config or an error that names a key or a line.
    #[test]
    fn toml_ish_and_arbitrary_text_parse_or_name_the_problem(
        lines in prop::collection::vec(toml_ish_line(), 0..12),
        noise in any::<String>(),
    ) {
        let base = document(&[]);
        read(&format!("{base}{}\n", lines.join("\n")))?;
        read(&lines.join("\n"))?;
        read(&noise)?;
    }
}

/// Every integer key at 0, -1, `i64::MAX`, `u64::MAX` and beyond, and every duration key at
/// zero, one nanosecond, `u64::MAX` seconds and beyond, one key at a time: no panic, and a
/// rejection names its key or line.
#[test]
fn every_size_and_duration_at_its_extremes() {
    let ints = [
        "0",
        "-1",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
    ];
    let durations = [
        "\"0s\"",
        "\"1ns\"",
        "\"18446744073709551615s\"",
        "\"18446744073709551615ns\"",
        "\"18446744073709551616s\"",
        "\"600000000000000000000y\"",
    ];
    let mut failures = Vec::new();
    let mut tried = 0;
    for key in known_keys() {
        let values: Vec<&str> = match key.kind {
            Kind::Int => ints.to_vec(),
            Kind::Duration => durations.to_vec(),
            Kind::Any => ints.iter().chain(&durations).copied().collect(),
            _ => continue,
        };
        for value in values {
            tried += 1;
            if let Err(error) = read(&document(&[(key.clone(), value.to_owned())])) {
                failures.push(format!("{} = {value}: {error}", dotted(&key.path)));
            }
        }
    }
    assert!(
        tried > 100,
        "only {tried} keys and values: is the schema read?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Integers beyond what a key's type holds are parse errors that name the line: `toml` reads
/// integers up to `u64::MAX` (so a `usize` size can be `u64::MAX`, and validation decides), but
/// `u64::MAX` in a `u32` key, or `u64::MAX + 1` anywhere, is refused.
#[test]
fn integers_beyond_a_keys_type_name_the_line() {
    let at = |path: &str, value: &str| {
        let key = Key {
            place: Place::Top,
            path: path.split('.').map(str::to_owned).collect(),
            kind: Kind::Int,
        };
        Config::from_toml(&document(&[(key, value.to_owned())])).unwrap_err()
    };
    for error in [
        at("server.max_concurrent_streams", "18446744073709551615"),
        at("server.max_message_bytes", "18446744073709551616"),
        at("server.max_message_bytes", "-1"),
    ] {
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
        assert!(names_a_key_or_a_line(&error), "{error}");
    }
}

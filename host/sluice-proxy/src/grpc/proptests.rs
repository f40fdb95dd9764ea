//! Property tests of the gRPC parsers that read what clients and upstreams send: message
//! framing, `grpc-timeout` and the headers that cross the proxy.
//!
//! Each property states what must hold for any input, hostile ones included (never a panic,
//! never an allocation sized by a length the peer declared). Cases are bounded so the whole
//! file runs in a few seconds, and no failure file is written into the source tree.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::Index;

use super::headers::{request_headers, response_headers};
use super::{FrameError, MessageScanner, MessageSplitter, PREFIX_LEN, timeout};

/// 256 cases a property, and no `proptest-regressions/` files: a failure prints its minimal
/// input, which becomes a unit test.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- framing ----------------------------------------------------------------------------

/// `payload` framed: the flag byte, the big-endian length, the payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    out.push(flag);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `bytes` cut at `cuts` (positions anywhere in it, repeats giving empty chunks).
fn chunks(bytes: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2)
        .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
        .collect()
}

/// What a scanner and a splitter of `limit` make of `chunks`: the scanner's message count and
/// its first error, the splitter's messages and its first error, then each one's `finish`.
struct Run {
    scanned: u64,
    scan_error: Option<FrameError>,
    scan_finish: Result<(), FrameError>,
    messages: Vec<Bytes>,
    split_error: Option<FrameError>,
    split_finish: Result<(), FrameError>,
}

/// Feeds `chunks` to both parsers the way the relays do, stopping each at its first error.
fn run(limit: usize, chunks: &[Bytes]) -> Run {
    let mut scanner = MessageScanner::new(limit);
    let scan_error = chunks.iter().find_map(|c| scanner.feed(c).err());
    let mut splitter = MessageSplitter::new(limit);
    let mut messages = Vec::new();
    let mut split_error = None;
    'chunks: for chunk in chunks {
        splitter.push(chunk.clone());
        // At most one message per byte pushed so far (plus one), so this ends.
        loop {
            match splitter.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => {
                    split_error = Some(error);
                    break 'chunks;
                }
            }
        }
    }
    Run {
        scanned: scanner.messages(),
        scan_error,
        scan_finish: scanner.finish(),
        messages,
        split_error,
        split_finish: splitter.finish(),
    }
}

/// A size limit and messages of 0..=limit bytes each, with arbitrary flag bytes.
fn messages_within_limit() -> impl Strategy<Value = (usize, Vec<(u8, Vec<u8>)>)> {
    (0usize..=300).prop_flat_map(|limit| {
        let message = (any::<u8>(), prop::collection::vec(any::<u8>(), 0..=limit));
        (Just(limit), prop::collection::vec(message, 0..12))
    })
}

/// Bytes that are nearly frames: prefixes declaring small lengths (around the small limits the
/// garbage test uses) mixed with random bytes, so that lengths near the limit, leftovers
/// longer than a declared length and prefixes cut short all come up (random bytes almost always
/// declare gigabytes).
fn near_frames() -> impl Strategy<Value = Vec<u8>> {
    let prefix = (any::<u8>(), 0u32..80).prop_map(|(flag, len)| {
        let mut out = vec![flag];
        out.extend_from_slice(&len.to_be_bytes());
        out
    });
    let noise = prop::collection::vec(any::<u8>(), 0..80);
    prop::collection::vec(prop_oneof![prefix, noise], 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(config())]

    /// Any messages within the limit, cut anywhere: the splitter yields exactly them (prefix
    /// included), the scanner counts them, and both finish cleanly.
    #[test]
    fn framing_recovers_messages_across_any_chunking(
        (limit, messages) in messages_within_limit(),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let frames: Vec<Vec<u8>> = messages.iter().map(|(flag, p)| frame(*flag, p)).collect();
        let bytes = frames.concat();
        let run = run(limit, &chunks(&bytes, &cuts));
        prop_assert_eq!(run.scan_error, None);
        prop_assert_eq!(run.scanned, frames.len() as u64);
        prop_assert_eq!(run.scan_finish, Ok(()));
        prop_assert_eq!(run.split_error, None);
        let got: Vec<&[u8]> = run.messages.iter().map(|m| &m[..]).collect();
        let want: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(run.split_finish, Ok(()));
    }

    /// A declared length above the limit is `TooLarge` with that length, from both parsers,
    /// wherever the prefix is cut and however little of the payload follows; the messages
    /// before it still come through. Lengths go up to `u32::MAX` (that nothing is reserved for
    /// a declared length is checked by `a_declared_length_reserves_nothing`).
    #[test]
    fn a_declared_length_above_the_limit_is_an_error(
        (limit, before) in messages_within_limit(),
        excess in 1u64..=u64::from(u32::MAX),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        // The limit is at most 300, so this is above it.
        let declared = usize::try_from((limit as u64 + excess).min(u64::from(u32::MAX))).unwrap();
        let mut bytes: Vec<u8> = before.iter().flat_map(|(flag, p)| frame(*flag, p)).collect();
        bytes.push(0);
        bytes.extend_from_slice(&u32::try_from(declared).unwrap().to_be_bytes());
        bytes.extend_from_slice(&tail);
        let run = run(limit, &chunks(&bytes, &cuts));
        let too_large = FrameError::TooLarge { size: declared, limit };
        prop_assert_eq!(run.scan_error, Some(too_large.clone()));
        prop_assert_eq!(run.scanned, before.len() as u64);
        prop_assert_eq!(run.split_error, Some(too_large));
        prop_assert_eq!(run.messages.len(), before.len());
    }

    /// Input cut inside its last message (in the prefix or in the payload): both parsers pass
    /// the whole messages before it and report `Truncated` with the bytes missing (those of
    /// the prefix while it is incomplete, else those of the payload).
    #[test]
    fn truncated_input_is_reported_by_finish(
        (limit, messages) in messages_within_limit(),
        last in (any::<u8>(), prop::collection::vec(any::<u8>(), 0..=300)),
        cut in any::<Index>(),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let (flag, mut payload) = last;
        payload.truncate(limit);
        let whole: Vec<u8> = messages.iter().flat_map(|(f, p)| frame(*f, p)).collect();
        let last = frame(flag, &payload);
        // 1..len: at least one byte of the last message, never all of it.
        let kept = 1 + cut.index(last.len() - 1);
        let missing = if kept < PREFIX_LEN { PREFIX_LEN - kept } else { last.len() - kept };
        let bytes = [&whole[..], &last[..kept]].concat();
        let run = run(limit, &chunks(&bytes, &cuts));
        prop_assert_eq!(run.scan_error, None);
        prop_assert_eq!(run.scanned, messages.len() as u64 + u64::from(kept >= PREFIX_LEN));
        prop_assert_eq!(run.scan_finish, Err(FrameError::Truncated { missing }));
        prop_assert_eq!(run.split_error, None);
        prop_assert_eq!(run.messages.len(), messages.len());
        prop_assert_eq!(run.split_finish, Err(FrameError::Truncated { missing }));
    }

    /// Arbitrary bytes under an arbitrary limit, cut anywhere: no panic, whatever comes
    /// through is framed and within the limit, `finish` answers even after an error, and the
    /// two parsers agree (the same error, the same truncation; the scanner counts a message
    /// once its prefix is in, the splitter once all of it is).
    #[test]
    fn garbage_never_panics(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), near_frames()],
        limit in prop_oneof![0usize..64, 0usize..=usize::MAX],
        cuts in prop::collection::vec(any::<Index>(), 0..32),
    ) {
        let run = run(limit, &chunks(&bytes, &cuts));
        let passed: usize = run.messages.iter().map(Bytes::len).sum();
        prop_assert!(passed <= bytes.len());
        for message in &run.messages {
            prop_assert!(message.len() >= PREFIX_LEN);
            let declared = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
            prop_assert_eq!(message.len() - PREFIX_LEN, declared as usize);
            prop_assert!(declared as usize <= limit);
        }
        prop_assert_eq!(&run.scan_error, &run.split_error);
        if run.split_error.is_none() {
            let started = bytes.len() - passed >= PREFIX_LEN;
            prop_assert_eq!(run.scanned, run.messages.len() as u64 + u64::from(started));
            prop_assert_eq!(run.scan_finish, run.split_finish);
        }
    }
}

/// Found by `garbage_never_panics`: `finish` after a refused message computed the bytes
/// missing as declared minus buffered, which underflowed (a panic in debug builds, a wrapped
/// count in release) when more than the declared message was buffered.
#[test]
fn splitter_finish_after_a_refused_message_does_not_overflow() {
    let mut splitter = MessageSplitter::new(0);
    splitter.push(Bytes::from_static(&[0, 0, 0, 0, 1, 0, 0, 0, 0, 0]));
    assert_eq!(
        splitter.next_message(),
        Err(FrameError::TooLarge { size: 1, limit: 0 })
    );
    assert!(matches!(
        splitter.finish(),
        Err(FrameError::Truncated { .. })
    ));
    // A whole message left untaken is left over too.
    let mut splitter = MessageSplitter::new(8);
    splitter.push(Bytes::from(frame(0, b"abc")));
    assert!(splitter.finish().is_err());
}

/// The process's virtual memory size in bytes, from `/proc/self/status`.
#[cfg(target_os = "linux")]
fn virtual_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line
        .trim_start_matches("VmSize:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// A prefix declaring 4 GiB under a limit that allows it: both parsers wait for the payload
/// holding only the bytes that arrived. A buffer reserved for the declared length would grow
/// the address space by 4 GiB (a large allocation is mapped whole, used or not).
#[cfg(target_os = "linux")]
#[test]
fn a_declared_length_reserves_nothing() {
    const GIB: u64 = 1 << 30;
    let before = virtual_bytes();
    let mut splitter = MessageSplitter::new(usize::MAX);
    let mut scanner = MessageScanner::new(usize::MAX);
    let prefix = Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]);
    for chunk in [
        prefix.slice(..2),
        prefix.slice(2..),
        Bytes::from(vec![7; 4096]),
    ] {
        scanner.feed(&chunk).unwrap();
        splitter.push(chunk);
        assert_eq!(splitter.next_message(), Ok(None));
    }
    let grown = virtual_bytes().saturating_sub(before);
    assert!(grown < GIB, "the address space grew by {grown} bytes");
    let missing = u32::MAX as usize - 4096;
    assert_eq!(scanner.finish(), Err(FrameError::Truncated { missing }));
    assert_eq!(splitter.finish(), Err(FrameError::Truncated { missing }));
}

// ---- grpc-timeout -----------------------------------------------------------------------

/// Nanoseconds in one of a `grpc-timeout` unit, or `None` for a byte that is no unit.
fn unit_nanos(unit: u8) -> Option<u128> {
    Some(match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    })
}

/// The spec's reading of a `grpc-timeout` value, as nanoseconds: 1 to 8 ASCII digits, then a
/// unit. `None` for anything else.
fn spec_nanos(value: &[u8]) -> Option<u128> {
    let (unit, digits) = value.split_last()?;
    if !(1..=8).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    Some(amount * unit_nanos(*unit)?)
}

/// A byte string that looks like a `grpc-timeout` value, or nearly.
fn timeout_like() -> impl Strategy<Value = Vec<u8>> {
    let digits = prop::collection::vec(b'0'..=b'9', 0..12);
    let unit = prop_oneof![prop::sample::select(b"HMSmun".to_vec()), any::<u8>()];
    let noise = prop::collection::vec(
        prop::sample::select(b" +-.\t0123456789HMSmunxe".to_vec()),
        0..3,
    );
    (noise.clone(), digits, noise, unit).prop_map(|(a, digits, b, unit)| {
        let mut out = a;
        out.extend(digits);
        out.extend(b);
        out.push(unit);
        out
    })
}

proptest! {
    #![proptest_config(config())]

    /// Every valid value (1 to 8 digits, leading zeros allowed, then a unit) is its duration.
    #[test]
    fn every_valid_timeout_parses_to_its_duration(
        digits in prop::collection::vec(b'0'..=b'9', 1..=8),
        unit in prop::sample::select(b"HMSmun".to_vec()),
    ) {
        let value = [&digits[..], &[unit]].concat();
        let want = spec_nanos(&value).unwrap();
        prop_assert_eq!(timeout::parse(&value).map(|d| d.as_nanos()), Some(want));
    }

    /// Nine or more digits, no digits, or a byte that is no unit: `None`.
    #[test]
    fn invalid_timeouts_are_none(
        digits in prop::collection::vec(b'0'..=b'9', 9..40),
        short in prop::collection::vec(b'0'..=b'9', 0..=8),
        unit in prop::sample::select(b"HMSmun".to_vec()),
        other in any::<u8>().prop_filter("not a unit", |b| unit_nanos(*b).is_none()),
    ) {
        prop_assert_eq!(timeout::parse(&[&digits[..], &[unit]].concat()), None);
        prop_assert_eq!(timeout::parse(&[unit]), None);
        prop_assert_eq!(timeout::parse(&[&short[..], &[other]].concat()), None);
        // Digits alone: the last digit is read as the unit, and is none.
        prop_assert_eq!(timeout::parse(&short), None);
    }

    /// Arbitrary bytes, and near misses: the parser agrees with the spec's reading, and never
    /// panics or overflows (the largest value, 99999999H, is about 11 400 years).
    #[test]
    fn any_bytes_parse_as_the_spec_says(
        value in prop_oneof![prop::collection::vec(any::<u8>(), 0..16), timeout_like()],
    ) {
        prop_assert_eq!(timeout::parse(&value).map(|d| d.as_nanos()), spec_nanos(&value));
    }
}

// ---- headers ----------------------------------------------------------------------------

/// The names no request may carry upstream and no response may carry back (hop-by-hop).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "host",
];

/// A header name: hop-by-hop ones, Sluice's own and near misses, in any letter case, among
/// gRPC's and arbitrary ones.
fn header_name() -> impl Strategy<Value = String> {
    let mut names = HOP_BY_HOP.to_vec();
    names.extend([
        "te",
        "content-type",
        "grpc-timeout",
        "grpc-encoding",
        "user-agent",
        "x-sluice-monitor",
        "x-sluice-token",
        "x-sluice-",
        "x-sluice",
        "x-sluicer",
        "sluice-x",
        "x-sluice-bin",
        "connections",
        "hosts",
        "trace-bin",
    ]);
    let known = prop::sample::select(names);
    let sluice = "[a-z0-9-]{0,10}".prop_map(|s| format!("x-sluice-{s}"));
    let arbitrary = "[a-z0-9!#$%&'*+.^_`|~-]{1,16}";
    (
        prop_oneof![known.prop_map(str::to_owned), sluice, arbitrary],
        prop::collection::vec(any::<bool>(), 0..32),
    )
        .prop_map(|(name, upper)| {
            name.chars()
                .zip(upper.into_iter().chain(std::iter::repeat(false)))
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect()
        })
}

/// A header value: any bytes a header value may hold (visible ASCII, tab, obs-text).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')];
    prop::collection::vec(byte, 0..24).prop_map(|v| HeaderValue::from_bytes(&v).unwrap())
}

/// Headers as a peer sends them: a name may repeat, in any order.
fn header_list() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    prop::collection::vec(
        (header_name(), header_value())
            .prop_map(|(name, value)| (HeaderName::from_bytes(name.as_bytes()).unwrap(), value)),
        0..24,
    )
}

/// `list` as a map, every value appended.
fn header_map(list: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in list {
        map.append(name.clone(), value.clone());
    }
    map
}

/// Checks that `out` holds exactly the entries of `list` that `keep` keeps: the same values of
/// each name in the same order, and nothing else.
fn holds_exactly(
    out: &HeaderMap,
    list: &[(HeaderName, HeaderValue)],
    keep: impl Fn(&str) -> bool,
) -> Result<(), TestCaseError> {
    let kept: Vec<&(HeaderName, HeaderValue)> =
        list.iter().filter(|(n, _)| keep(n.as_str())).collect();
    prop_assert_eq!(out.len(), kept.len());
    for (name, _) in list {
        let want: Vec<&HeaderValue> = kept
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect();
        let got: Vec<&HeaderValue> = out.get_all(name).iter().collect();
        prop_assert_eq!(got, want, "values of {}", name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Towards the upstream: hop-by-hop headers and every `x-sluice-*` (in any letter case;
    /// names are lowercased on receipt) are dropped; every other header passes with all its
    /// values, in order and unchanged.
    #[test]
    fn request_headers_drop_hop_by_hop_and_sluice_metadata(
        list in header_list(),
        extra in 0usize..8,
    ) {
        let out = request_headers(&header_map(&list), extra);
        holds_exactly(&out, &list, |name| {
            !HOP_BY_HOP.contains(&name) && !name.starts_with("x-sluice-")
        })?;
    }

    /// Towards the monitor: hop-by-hop headers and an upstream's `x-sluice-*` are dropped
    /// (those names carry Sluice's attribution, which the monitor must be able to trust);
    /// everything else passes unchanged.
    #[test]
    fn response_headers_drop_hop_by_hop_and_sluice_names(list in header_list()) {
        let out = response_headers(&header_map(&list));
        holds_exactly(&out, &list, |name| {
            !HOP_BY_HOP.contains(&name) && !name.starts_with("x-sluice-")
        })?;
    }
}

//! The `grpc-timeout` header: a deadline the proxy enforces and forwards.

use std::time::Duration;

/// Parses a `grpc-timeout` value (`1-8 digits` followed by `H`, `M`, `S`, `m`, `u` or `n`).
///
/// Returns `None` for malformed values; the gRPC spec treats those as "no deadline".
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse(b"4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [&b""[..], b"S", b"10", b"123456789S", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse(bad), None, "{:?}", std::str::from_utf8(bad));
        }
    }
}

/// Encodes `remaining` as a `grpc-timeout` value, in the finest unit that fits 8 digits.
pub(crate) fn encode(remaining: std::time::Duration) -> http::HeaderValue {
    const MAX: u128 = 99_999_999;
    let micros = remaining.as_micros();
    let text = if micros <= MAX {
        format!("{}u", micros.max(1))
    } else if remaining.as_millis() <= MAX {
        format!("{}m", remaining.as_millis())
    } else {
        format!("{}S", (remaining.as_secs() as u128).min(MAX))
    };
    http::HeaderValue::try_from(text)
        .unwrap_or_else(|_| http::HeaderValue::from_static("99999999S"))
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn encodes_in_a_unit_that_round_trips() {
        for d in [
            Duration::from_micros(3),
            Duration::from_secs(5),
            Duration::from_secs(7200),
        ] {
            let encoded = encode(d);
            assert_eq!(parse(encoded.as_bytes()), Some(d), "{encoded:?}");
        }
    }
}

//! Boilerplate every Sluice Rust plugin shares, so that a plugin crate holds only its policy:
//!
//! - the global allocator (`dlmalloc` over `memory.grow`; an allocation the host's memory limit
//!   refuses ends in the panic handler);
//! - the panic handler: a panic traps (`unreachable`), which the host counts as a plugin failure
//!   and answers with its built-in policy;
//! - [`text`]: number formatting into a `String` without `core::fmt`'s float machinery (faster
//!   and smaller; the router formats its reasoning on the data path);
//! - [`parse_f64`] for configuration values;
//! - [`wire`]: the protobuf wire format, for plugins that read and rewrite messages.
//!
//! A plugin links it with `use sluice_plugin as _;` (or by calling anything in it).

#![no_std]

extern crate alloc;

pub mod wire;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// A finite number from a configuration value such as `0.75`, ` 250 `, `-3`, `1e-3` or
/// `2.5E6`; `None` otherwise.
///
/// A small parser instead of `str::parse::<f64>` (whose tables add about 15 KB to every plugin).
/// It is exact (correctly rounded) for up to 15 significant digits scaled by at most 1e±22 in
/// all (`0.75`, `250`, `1e-3`), which covers configuration values; other inputs are within a
/// few ulps.
pub fn parse_f64(text: &str) -> Option<f64> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (number, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], parse_exponent(&rest[at + 1..])?),
        None => (rest, 0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut scale = exponent;
    for (index, byte) in whole.bytes().chain(fraction.bytes()).enumerate() {
        if !byte.is_ascii_digit() {
            return None;
        }
        let in_fraction = index >= whole.len();
        if mantissa < 100_000_000_000_000_000 {
            mantissa = mantissa * 10 + u64::from(byte - b'0');
            if in_fraction {
                scale -= 1;
            }
        } else if !in_fraction {
            // Digits past 18 significant ones only shift the magnitude.
            scale += 1;
        }
    }
    let mut value = mantissa as f64;
    let mut remaining = scale;
    while remaining != 0 {
        let step = remaining.clamp(-22, 22);
        let power = POWERS_OF_TEN[step.unsigned_abs() as usize];
        value = if step > 0 {
            value * power
        } else {
            value / power
        };
        remaining -= step;
        if value == 0.0 || value.is_infinite() {
            break;
        }
    }
    let value = if negative { -value } else { value };
    value.is_finite().then_some(value)
}

/// Exactly representable powers of ten.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The exponent after `e`: an optional sign and at most 4 digits.
fn parse_exponent(text: &str) -> Option<i32> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: i32 = 0;
    for byte in digits.bytes() {
        value = value * 10 + i32::from(byte - b'0');
    }
    Some(if negative { -value } else { value })
}

/// Appending numbers to strings.
pub mod text {
    use alloc::string::String;

    /// Appends `value` in decimal.
    pub fn push_u64(out: &mut String, mut value: u64) {
        let mut digits = [0_u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for &digit in &digits[start..] {
            out.push(char::from(digit));
        }
    }

    /// Appends `value` in decimal, with a `-` when negative.
    pub fn push_i64(out: &mut String, value: i64) {
        if value < 0 {
            out.push('-');
        }
        push_u64(out, value.unsigned_abs());
    }

    /// Appends `value` with exactly `decimals` digits after the point (at most 6), rounded half
    /// away from zero: `3.14`, `-0.50`, `12`. NaN and infinities are written `NaN`, `inf` and
    /// `-inf`; magnitudes of 1e15 and more in scientific notation (`1.2e18`).
    pub fn push_fixed(out: &mut String, value: f64, decimals: u32) {
        if value.is_nan() {
            out.push_str("NaN");
            return;
        }
        if value.is_infinite() {
            out.push_str(if value < 0.0 { "-inf" } else { "inf" });
            return;
        }
        let magnitude = value.abs();
        if magnitude >= 1e15 {
            push_scientific(out, value);
            return;
        }
        let decimals = decimals.min(6);
        let scale = 10_u64.pow(decimals);
        // Below 1e15 * 1e6 + 0.5 < 2^64: the cast cannot saturate.
        let scaled = (magnitude * scale as f64 + 0.5) as u64;
        if value < 0.0 && scaled != 0 {
            out.push('-');
        }
        push_u64(out, scaled / scale);
        if decimals > 0 {
            out.push('.');
            let fraction = scaled % scale;
            let mut divisor = scale / 10;
            while divisor > 0 {
                out.push(char::from(b'0' + ((fraction / divisor) % 10) as u8));
                divisor /= 10;
            }
        }
    }

    /// Appends `value` with about three significant digits and no trailing zeros: `1234`,
    /// `56.8`, `3.14`, `0.05`, `0.0042`, `15`.
    pub fn push_short(out: &mut String, value: f64) {
        let magnitude = value.abs();
        if magnitude != 0.0 && magnitude < 1e-6 {
            push_scientific(out, value);
            return;
        }
        let decimals = if magnitude >= 1000.0 || magnitude == 0.0 {
            0
        } else if magnitude >= 10.0 {
            1
        } else if magnitude >= 0.1 {
            2
        } else if magnitude >= 0.001 {
            4
        } else {
            6
        };
        let start = out.len();
        push_fixed(out, value, decimals);
        if decimals > 0 && value.is_finite() && magnitude < 1e15 {
            let trimmed = out[start..]
                .trim_end_matches('0')
                .trim_end_matches('.')
                .len();
            out.truncate(start + trimmed);
            if &out[start..] == "-0" {
                out.truncate(start);
                out.push('0');
            }
        }
    }

    /// `1.2e18`, `-3.4e-7`: one decimal of mantissa, for values fixed notation cannot show.
    fn push_scientific(out: &mut String, value: f64) {
        if value < 0.0 {
            out.push('-');
        }
        let mut mantissa = value.abs();
        let mut exponent: i64 = 0;
        while mantissa >= 10.0 {
            mantissa /= 10.0;
            exponent += 1;
        }
        while mantissa > 0.0 && mantissa < 1.0 {
            mantissa *= 10.0;
            exponent -= 1;
        }
        // Rounding may carry into a new digit (9.96 -> 10.0).
        if mantissa + 0.05 >= 10.0 {
            mantissa /= 10.0;
            exponent += 1;
        }
        push_fixed(out, mantissa, 1);
        out.push('e');
        push_i64(out, exponent);
    }
}

/// Defines a `router` plugin from its `route` body, for the small test plugins in `testing/`
/// (which sit four folders below the repository root, where `wit/` is):
///
/// ```ignore
/// sluice_plugin::test_router!(|request| Err(String::from("no")));
/// ```
///
/// The body sees `request: RouteRequest` and returns `Result<Decision, String>`; the generated
/// `sluice::policy::*` imports are in scope of the calling module.
#[macro_export]
macro_rules! test_router {
    (|$request:ident| $body:expr) => {
        wit_bindgen::generate!({
            path: "../../../../wit",
            world: "router",
        });

        struct Plugin;

        export!(Plugin);

        impl Guest for Plugin {
            #[allow(unused_variables)]
            fn route($request: RouteRequest) -> Result<Decision, alloc::string::String> {
                $body
            }
        }
    };
}

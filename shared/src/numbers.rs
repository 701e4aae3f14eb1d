//! Numbers that would change silently on the way through: refused instead.
//!
//! Owns two byte-level checks run on client input before it is stored: a JSON number
//! literal whose value would not survive decoding (an integer beyond 64 bits, which
//! serde_json would turn into a float; a fraction or exponent no double holds: more than
//! 17 significant digits, such as `12345678901234567890.5`, or out of range, such as
//! `1e-400`, which becomes 0), and a msgpack float that is NaN or infinite (JSON has no
//! such value, so it would become `null`). The rule is one: a number a double holds is
//! stored, anything else is refused. Both scans are linear and only
//! look at numbers: whether the input is otherwise well formed is the decoder's
//! business.

/// Why a number was refused, for the `bad_request` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberError(pub &'static str);

impl std::fmt::Display for NumberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

const BIG_INTEGER: NumberError =
    NumberError("an integer does not fit in 64 bits; send it as a string (it would lose digits)");
const INEXACT: NumberError = NumberError(
    "a number a double cannot hold exactly (too many digits, too large or too small); send it as a string",
);
const NON_FINITE: NumberError =
    NumberError("NaN and infinite floats have no JSON form; send them as strings or null");

/// Refuses a JSON integer literal outside `i64::MIN..=u64::MAX`, and a literal with a
/// fraction or exponent whose value is not the double it decodes to.
pub fn check_json(bytes: &[u8]) -> Result<(), NumberError> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut integral = true;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    integral &= !matches!(bytes[i], b'.' | b'e' | b'E');
                    i += 1;
                }
                if integral && !fits_64_bits(&bytes[start..i]) {
                    return Err(BIG_INTEGER);
                }
                if !integral && !exact_double(&bytes[start..i]) {
                    return Err(INEXACT);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn fits_64_bits(literal: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(literal) else {
        return true;
    };
    // Malformed literals (`--1`) are the decoder's to refuse; only real overflow counts.
    let digits = text.trim_start_matches('-');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok()
}

/// Whether a fraction/exponent literal survives as a double: at most 17 significant
/// digits (what a double holds; every encoder's shortest round-trip form fits), not so
/// large that it becomes infinite, nor so small that a non-zero number becomes 0.
///
/// Not "the same decimal as the double's shortest form": encoders break ties between two
/// shortest forms differently (serde_json writes -1021713335603077.2 where Rust's
/// formatter writes -1021713335603077.3, the same double), and a client's must pass.
fn exact_double(literal: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(literal) else {
        return true;
    };
    let Ok(value) = text.parse::<f64>() else {
        // Malformed: the decoder refuses it.
        return true;
    };
    match decimal(text) {
        Some((digits, _)) => {
            value.is_finite() && digits.len() <= 17 && (digits.is_empty() || value != 0.0)
        }
        None => false,
    }
}

/// A decimal literal's value as (digits without leading or trailing zeros, power of ten
/// of the last digit); zero is ("", 0). The sign is left out: a literal and the double it
/// parses to never differ in sign.
fn decimal(text: &str) -> Option<(String, i64)> {
    let text = text.trim_start_matches(['-', '+']);
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((String::new(), 0));
    }
    let zeros = (digits.len() - trimmed.len()) as i64;
    let power = exponent
        .checked_sub(frac.len() as i64)?
        .checked_add(zeros)?;
    Some((trimmed.to_string(), power))
}

/// Refuses a msgpack float32/float64 that is NaN or infinite, anywhere in the value.
pub fn check_msgpack(bytes: &[u8]) -> Result<(), NumberError> {
    // Values still to read: containers add their elements, so no recursion (and no stack
    // to exhaust) however deep the input nests.
    let mut pending: u64 = 1;
    let mut i = 0usize;
    let read = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    while pending > 0 {
        let Some(&marker) = bytes.get(i) else {
            return Ok(());
        };
        pending -= 1;
        i += 1;
        // (bytes of length prefix, extra fixed bytes, elements added)
        let skip: u64 = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0..=0xc3 => 0,
            0x80..=0x8f => {
                pending += 2 * u64::from(marker & 0x0f);
                0
            }
            0x90..=0x9f => {
                pending += u64::from(marker & 0x0f);
                0
            }
            0xa0..=0xbf => u64::from(marker & 0x1f),
            0xca => {
                let Some(bits) = read(i, 4) else {
                    return Ok(());
                };
                if !f32::from_bits(bits as u32).is_finite() {
                    return Err(NON_FINITE);
                }
                4
            }
            0xcb => {
                let Some(bits) = read(i, 8) else {
                    return Ok(());
                };
                if !f64::from_bits(bits).is_finite() {
                    return Err(NON_FINITE);
                }
                8
            }
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xce | 0xd2 => 4,
            0xcf | 0xd3 => 8,
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xc4 | 0xd9 | 0xc5 | 0xda | 0xc6 | 0xdb | 0xc7 | 0xc8 | 0xc9 => {
                let width = match marker {
                    0xc4 | 0xd9 | 0xc7 => 1,
                    0xc5 | 0xda | 0xc8 => 2,
                    _ => 4,
                };
                let Some(len) = read(i, width) else {
                    return Ok(());
                };
                i += width;
                // Extensions carry a type byte before their data.
                len + u64::from(matches!(marker, 0xc7..=0xc9))
            }
            0xdc..=0xdf => {
                let width = if matches!(marker, 0xdc | 0xde) { 2 } else { 4 };
                let Some(len) = read(i, width) else {
                    return Ok(());
                };
                i += width;
                pending = pending.saturating_add(if marker >= 0xde { 2 * len } else { len });
                0
            }
        };
        i = match usize::try_from(skip).ok().and_then(|s| i.checked_add(s)) {
            Some(next) => next,
            None => return Ok(()),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_integers_beyond_64_bits_are_refused() {
        for ok in [
            &br#"{"a":18446744073709551615,"b":-9223372036854775808}"#[..],
            br#"{"s":"99999999999999999999999","t":"\"1\\"}"#,
            br#"[0,-1,2.5e10]"#,
        ] {
            assert_eq!(check_json(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &br#"{"a":18446744073709551616}"#[..],
            br#"[-9223372036854775809]"#,
            br#"{"x":{"y":[1,2,100000000000000000000000000]}}"#,
        ] {
            assert_eq!(
                check_json(bad),
                Err(BIG_INTEGER),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// One rule for every number: what a double holds passes (up to 17 significant
    /// digits, any encoder's shortest form); more digits than that, or a value out of a
    /// double's range (infinite, or flushed to 0), is refused.
    #[test]
    fn json_numbers_a_double_cannot_hold_exactly_are_refused() {
        for ok in [
            "0.1",
            "-0.5",
            "1.0",
            "1.50",
            "2.5e10",
            "1E3",
            "1.5e-3",
            "0.0",
            "-0e0",
            "3.141592653589793",
            "1.7976931348623157e308",
            "5e-324",
            // One double, two shortest forms (serde_json's and Rust's): both pass.
            "-1021713335603077.2",
            "-1021713335603077.3",
        ] {
            assert_eq!(check_json(format!("[{ok}]").as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "1e-400",
            "1e400",
            "-1e400",
            "12345678901234567890.5",
            "0.1000000000000000000001",
            "3.14159265358979323846",
            "123456789012345678901234.5",
        ] {
            assert_eq!(
                check_json(format!("[{bad}]").as_bytes()),
                Err(INEXACT),
                "{bad}"
            );
        }
    }

    #[test]
    fn msgpack_non_finite_floats_are_refused() {
        #[derive(serde::Serialize)]
        struct Frame {
            data: Vec<f64>,
            name: String,
        }
        let encode = |data: Vec<f64>| {
            rmp_serde::to_vec_named(&Frame {
                data,
                name: "name".into(),
            })
            .unwrap()
        };
        assert_eq!(check_msgpack(&encode(vec![1.5, -0.0, f64::MAX])), Ok(()));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(check_msgpack(&encode(vec![1.0, bad])), Err(NON_FINITE));
        }
        let f32_nan = rmp_serde::to_vec(&vec![f32::NAN]).unwrap();
        assert_eq!(check_msgpack(&f32_nan), Err(NON_FINITE));
        // Bytes that look like a float64 marker inside a string are not a float.
        let in_string = [0x92, 0xa3, 0xcb, 0x7f, 0xf8, 0x01];
        assert_eq!(check_msgpack(&in_string), Ok(()));
        // Truncated or hostile input never panics.
        assert_eq!(check_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Ok(()));
        assert_eq!(check_msgpack(&[0xcb, 0x7f]), Ok(()));
        assert_eq!(check_msgpack(&[]), Ok(()));
    }
}

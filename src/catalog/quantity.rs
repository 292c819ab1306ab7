//! Kubernetes quantities (`resource.Quantity`), as `type: quantity` placeholders take them:
//!
//! ```text
//! quantity ::= ["+"] number [suffix]
//! number   ::= digits | digits "." [digits] | "." digits
//! suffix   ::= "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"      (binary)
//!            | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"   (decimal)
//!            | ("e" | "E") ["+" | "-"] digits                 (exponent)
//! ```
//!
//! or a JSON number. Negative values are refused, and so are values above [`MAX`] (what a
//! Kubernetes quantity holds in its int64 form, "8Ei" and a little) and non-zero values below
//! one nano-unit (`1n`, the finest a quantity keeps), so `-1`, `1e308` and `1e-400` never reach
//! a manifest or a local recipe.

/// Longest quantity string accepted.
pub const MAX_LEN: usize = 64;
/// Largest value accepted, in base units: 2^63 - 1.
pub const MAX: f64 = 9_223_372_036_854_775_807.0;
/// Smallest non-zero value accepted, in base units (`1n`).
pub const MIN_NONZERO: f64 = 1e-9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("must not be negative")]
    Negative,
    #[error(
        "is not a Kubernetes quantity: digits with an optional fraction and suffix, e.g. 500m, 0.5, 2, 512Mi, 1Gi, 1e3"
    )]
    Syntax,
    #[error("is larger than the largest quantity allowed (2^63-1)")]
    TooLarge,
    #[error("is smaller than the smallest non-zero quantity (1n)")]
    TooSmall,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The value of a quantity string, in base units.
pub fn parse(s: &str) -> Result<f64> {
    if s.is_empty() {
        return Err(Error::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(Error::TooLong { max: MAX_LEN });
    }
    if s.starts_with('-') {
        return Err(Error::Negative);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let has_digits = !(whole.is_empty() && fraction.is_empty());
    let well_formed = has_digits && whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(Error::Syntax);
    }
    let mantissa: f64 = number.parse().map_err(|_| Error::Syntax)?;
    let value = mantissa * multiplier(suffix)?;
    bounded(value, mantissa != 0.0)
}

/// Checks a JSON number given for a quantity.
pub fn check_number(n: &serde_json::Number) -> Result<()> {
    if n.as_i64().is_some_and(|i| i < 0) {
        return Err(Error::Negative);
    }
    match n.as_f64() {
        Some(v) if v < 0.0 => Err(Error::Negative),
        Some(v) => bounded(v, v != 0.0).map(|_| ()),
        None => Err(Error::Syntax),
    }
}

fn multiplier(suffix: &str) -> Result<f64> {
    const KI: f64 = 1024.0;
    Ok(match suffix {
        "" => 1.0,
        "Ki" => KI,
        "Mi" => KI.powi(2),
        "Gi" => KI.powi(3),
        "Ti" => KI.powi(4),
        "Pi" => KI.powi(5),
        "Ei" => KI.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E']).ok_or(Error::Syntax)?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Syntax);
            }
            // Clamped: anything beyond ±400 is out of bounds either way, and powi takes an i32.
            let magnitude: i32 = digits.parse::<u32>().map_or(400, |d| d.min(400) as i32);
            let e = if exponent.starts_with('-') { -magnitude } else { magnitude };
            10f64.powi(e)
        }
    })
}

/// `nonzero`: the number as written is not zero (so a value that underflowed to 0 is too small).
fn bounded(value: f64, nonzero: bool) -> Result<f64> {
    if !value.is_finite() || value > MAX {
        Err(Error::TooLarge)
    } else if nonzero && value < MIN_NONZERO * (1.0 - 1e-9) {
        Err(Error::TooSmall)
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_quantities_parse_to_their_value() {
        let cases = [
            ("0", 0.0),
            ("500m", 0.5),
            ("0.5", 0.5),
            (".5", 0.5),
            ("2.", 2.0),
            ("+1", 1.0),
            ("1k", 1e3),
            ("512Mi", 512.0 * 1024.0 * 1024.0),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            ("2000Mi", 2000.0 * 1024.0 * 1024.0),
            ("1e3", 1e3),
            ("1E3", 1e3),
            ("12e-3", 0.012),
            ("1n", 1e-9),
            ("100u", 1e-4),
            ("1E", 1e18),
            ("7Ei", 7.0 * 1024f64.powi(6)),
        ];
        for (s, want) in cases {
            let got = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!((got - want).abs() <= want * 1e-12, "{s}: {got} != {want}");
        }
    }

    #[test]
    fn negative_huge_tiny_and_malformed_quantities_are_refused() {
        let cases = [
            ("-1", Error::Negative),
            ("-0.5", Error::Negative),
            ("1e308", Error::TooLarge),
            ("1e99999999999999999999", Error::TooLarge),
            ("9Ei", Error::TooLarge),
            ("10E", Error::TooLarge),
            ("1e-400", Error::TooSmall),
            ("0.1n", Error::TooSmall),
            ("", Error::Empty),
            ("lots", Error::Syntax),
            ("1000mb", Error::Syntax),
            ("1.2.3", Error::Syntax),
            (".", Error::Syntax),
            ("1 Gi", Error::Syntax),
            ("1Gi ", Error::Syntax),
            ("1e", Error::Syntax),
            ("1e+", Error::Syntax),
            ("1ee3", Error::Syntax),
            ("1KI", Error::Syntax),
            ("++1", Error::Syntax),
            ("0x10", Error::Syntax),
            ("NaN", Error::Syntax),
            ("inf", Error::Syntax),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), Err(want), "{s:?}");
        }
        assert_eq!(parse(&"1".repeat(MAX_LEN + 1)), Err(Error::TooLong { max: MAX_LEN }));
    }

    #[test]
    fn json_numbers_are_bounded_the_same_way() {
        let n = |v: serde_json::Value| match v {
            serde_json::Value::Number(n) => n,
            other => panic!("{other}"),
        };
        assert_eq!(check_number(&n(serde_json::json!(0.2))), Ok(()));
        assert_eq!(check_number(&n(serde_json::json!(4))), Ok(()));
        assert_eq!(check_number(&n(serde_json::json!(-1))), Err(Error::Negative));
        assert_eq!(check_number(&n(serde_json::json!(-0.1))), Err(Error::Negative));
        assert_eq!(check_number(&n(serde_json::json!(1e308))), Err(Error::TooLarge));
        assert_eq!(check_number(&n(serde_json::json!(u64::MAX))), Err(Error::TooLarge));
        assert_eq!(check_number(&n(serde_json::json!(1e-300))), Err(Error::TooSmall));
    }
}

//! The `grpc-timeout` request header (gRPC over HTTP/2: up to 8 digits and a unit). The proxy
//! reads it from the caller, spends part of it on resolution, and forwards what remains.

use std::time::Duration;

use tonic::metadata::MetadataMap;

pub const HEADER: &str = "grpc-timeout";

/// The caller's timeout, if it sent one. A malformed value is treated as absent, as tonic's own
/// server does, rather than failing the call.
pub fn from_metadata(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get(HEADER)?.to_str().ok()?;
    parse(value)
}

/// Encodes a timeout for the header (at most 8 digits, finest unit that fits).
pub fn encode(t: Duration) -> http::HeaderValue {
    let micros = t.as_micros();
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else if t.as_millis() < 100_000_000 {
        format!("{}m", t.as_millis())
    } else {
        format!("{}S", t.as_secs().min(99_999_999))
    };
    http::HeaderValue::from_str(&text).expect("digits and a unit")
}

/// Parses `"100m"`, `"5S"`, ... into a duration.
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses_and_bad_values_are_ignored() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn metadata_without_the_header_has_no_deadline() {
        let mut md = MetadataMap::new();
        assert_eq!(from_metadata(&md), None);
        md.insert(HEADER, "40m".parse().unwrap());
        assert_eq!(from_metadata(&md), Some(Duration::from_millis(40)));
    }
}

//! Per-call deadlines, both ends. A client call with a timeout (`connect(call_timeout=...)`,
//! `jac_splice.with_timeout`) carries it as gRPC's `grpc-timeout` header (so the module server,
//! or jac-orc's ModuleProxy which forwards it, knows when the caller gives up) and is bounded by
//! it locally; its expiry is DEADLINE_EXCEEDED, which Python sees as
//! `jac_splice.DeadlineExceededError` (a `TimeoutError`).
//!
//! The module server reads the header on arrival: a call whose deadline passes before its
//! Python work starts (waiting for a thread or the GIL) is not run at all, and one still
//! running when it passes is answered DEADLINE_EXCEEDED (the served code cannot be interrupted;
//! its result is dropped).
use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Status};

/// The request header gRPC carries a deadline in.
pub const HEADER: &str = "grpc-timeout";

/// A timeout given from Python, in seconds: `None` for none; otherwise positive and finite.
pub fn from_seconds(seconds: Option<f64>, name: &str) -> Result<Option<Duration>, String> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(format!("{name} must be a positive number of seconds (or None), got {s}")),
    }
}

/// "0.25 s" / "3 s": how errors name a timeout.
fn seconds_text(timeout: Duration) -> String {
    let s = timeout.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// The status of a call that ran out of time on the client's side.
pub fn expired(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("no answer within the call's timeout of {}", seconds_text(timeout)))
}

/// `fut` bounded by `timeout`: its expiry, and tonic's own enforcement of the same deadline
/// (CANCELLED "Timeout expired"), become DEADLINE_EXCEEDED naming the timeout.
pub async fn bounded<T>(timeout: Option<Duration>, fut: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    bounded_since(timeout, Instant::now(), fut).await
}

/// As [`bounded`], with the timeout counted from `since` (a call that waited in a batch queue
/// has less of it left); its expiry still names the whole timeout.
pub async fn bounded_since<T>(
    timeout: Option<Duration>,
    since: Instant,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(timeout) = timeout else {
        return fut.await;
    };
    match tokio::time::timeout_at((since + timeout).into(), fut).await {
        Ok(Err(status)) if status.code() == Code::Cancelled && is_timeout(&status) => Err(expired(timeout)),
        Ok(result) => result,
        Err(_) => Err(expired(timeout)),
    }
}

fn is_timeout(status: &Status) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = next {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        next = err.source();
    }
    status.message().contains("Timeout expired")
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
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

/// When the caller of `request` gives up, counted from its arrival (none without the header).
pub fn of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get(HEADER)?.to_str().ok()?;
    Some(Instant::now() + parse(value)?)
}

/// Refuses to start work whose deadline has passed.
pub fn check(deadline: Option<Instant>) -> Result<(), Status> {
    match deadline {
        Some(d) if Instant::now() >= d => {
            Err(Status::deadline_exceeded("the call's deadline passed before the module server could run it"))
        }
        _ => Ok(()),
    }
}

/// The module server's side: `work` answered DEADLINE_EXCEEDED once `deadline` passes.
pub async fn serve<T>(deadline: Option<Instant>, work: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let Some(deadline) = deadline else {
        return work.await;
    };
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded("the call's deadline passed while the module server ran it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_in_every_unit_and_bad_ones_do_not() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789m", "1x", "-1S", "1.5S", "m5"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_from_python_must_be_positive_and_finite() {
        assert_eq!(from_seconds(None, "timeout"), Ok(None));
        assert_eq!(from_seconds(Some(0.5), "timeout"), Ok(Some(Duration::from_millis(500))));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = from_seconds(Some(bad), "call_timeout").unwrap_err();
            assert!(err.starts_with("call_timeout must be a positive number of seconds"), "{err}");
        }
    }

    #[test]
    fn a_passed_deadline_refuses_work_and_a_late_answer_is_deadline_exceeded() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert!(check(None).is_ok());
        assert!(check(Some(Instant::now() + Duration::from_secs(60))).is_ok());
        assert_eq!(check(Some(Instant::now())).unwrap_err().code(), Code::DeadlineExceeded);
        let late = rt.block_on(serve(Some(Instant::now()), std::future::pending::<Result<(), Status>>()));
        assert_eq!(late.unwrap_err().code(), Code::DeadlineExceeded);
        let client = rt.block_on(bounded(Some(Duration::from_millis(1)), std::future::pending::<Result<(), Status>>()));
        let status = client.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(status.message(), "no answer within the call's timeout of 0.001 s");
        let tonic_said = rt.block_on(bounded(Some(Duration::from_secs(1)), async {
            Err::<(), _>(Status::cancelled("Timeout expired"))
        }));
        assert_eq!(tonic_said.unwrap_err().message(), "no answer within the call's timeout of 1 s");
        assert_eq!(rt.block_on(bounded(None, async { Ok::<_, Status>(7) })).unwrap(), 7);
    }
}

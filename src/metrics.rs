//! Prometheus metrics (`GET /metrics`, text format 0.0.4), every name prefixed `jac_orc_`.
//!
//! One registry per process ([`global`]), as a scraper sees one process: the recording points
//! (the service's deploy runs, the backends' readiness waits, `ModuleProxy`, the auth layer and
//! the authorizer) call it directly instead of threading a handle through every constructor.
//! Labels stay bounded: module names come from the catalog, deployments from the records,
//! results and reasons from fixed sets.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Seconds buckets for deploys and readiness waits: from an instant redeploy to `--wait`'s
/// usual timeouts.
const RUN_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Seconds buckets for proxied calls: loopback round trips up to long computations.
const CALL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the auth layer or the authorizer refused a request (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No `authorization` header.
    MissingToken,
    /// Not `Bearer <token>`.
    Malformed,
    /// Unknown, expired or revoked token.
    InvalidToken,
    /// The token could not be checked (TokenReview failed).
    Unverifiable,
    /// Authenticated, but not allowed (every denied decision, including the secrets view's
    /// check that hides a call token from callers who may not call).
    Forbidden,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::MissingToken => "missing_token",
            Denial::Malformed => "malformed",
            Denial::InvalidToken => "invalid_token",
            Denial::Unverifiable => "unverifiable",
            Denial::Forbidden => "forbidden",
        }
    }
}

/// The process's metrics; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    deploys: IntCounterVec,
    deploy_seconds: HistogramVec,
    readiness_seconds: HistogramVec,
    proxy_calls: IntCounterVec,
    proxy_errors: IntCounterVec,
    proxy_seconds: HistogramVec,
    endpoints_ready: IntGaugeVec,
    log_streams: IntGaugeVec,
    auth_denials: IntCounterVec,
    wakeups: IntCounterVec,
    scaled_to_zero: IntCounterVec,
}

/// Counts one open logs stream while it lives (see [`Metrics::log_stream`]).
#[derive(Debug)]
pub struct LogStreamGuard {
    gauge: prometheus::IntGauge,
}

impl Drop for LogStreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The process's registry, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn result(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("jac_orc".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let endpoints_ready = IntGaugeVec::new(
            Opts::new(
                "module_endpoints_ready",
                "Ready module-server endpoints of a deployment, as ModuleProxy last resolved them",
            ),
            &["deployment"],
        )
        .expect("valid metric");
        registry.register(Box::new(endpoints_ready.clone())).expect("registered once");
        let log_streams = IntGaugeVec::new(
            Opts::new("log_streams", "Open logs streams (Logs, GET .../logs) by deployment (namespace/module/name)"),
            &["deployment"],
        )
        .expect("valid metric");
        registry.register(Box::new(log_streams.clone())).expect("registered once");
        Metrics {
            deploys: counter("deploys_total", "Deploy runs by module and result (ok, error)", &["module", "result"]),
            deploy_seconds: histogram(
                "deploy_duration_seconds",
                "Duration of deploy runs (apply, and readiness when waited for)",
                &["module", "result"],
                RUN_BUCKETS,
            ),
            readiness_seconds: histogram(
                "readiness_wait_duration_seconds",
                "Time spent waiting for a deployment's workloads to become ready",
                &["module", "result"],
                RUN_BUCKETS,
            ),
            proxy_calls: counter(
                "proxy_calls_total",
                "ModuleProxy calls by deployment (namespace/name) and gRPC code",
                &["deployment", "code"],
            ),
            proxy_errors: counter(
                "proxy_errors_total",
                "ModuleProxy calls that did not end OK, by deployment",
                &["deployment"],
            ),
            proxy_seconds: histogram(
                "proxy_call_duration_seconds",
                "ModuleProxy call latency until the module server's response head, by deployment",
                &["deployment"],
                CALL_BUCKETS,
            ),
            endpoints_ready,
            log_streams,
            auth_denials: counter(
                "auth_denials_total",
                "Requests refused by authentication or authorization",
                &["reason"],
            ),
            wakeups: counter(
                "wakeups_total",
                "Deployments (namespace/name) woken from zero: one per wake-up, however many calls waited",
                &["deployment"],
            ),
            scaled_to_zero: counter(
                "scaled_to_zero_total",
                "Deployments (namespace/name) scaled to zero after their idle timeout",
                &["deployment"],
            ),
            registry,
        }
    }

    /// One deploy run (not dry runs) ended.
    pub fn deploy(&self, module: &str, ok: bool, elapsed: Duration) {
        self.deploys.with_label_values(&[module, result(ok)]).inc();
        self.deploy_seconds.with_label_values(&[module, result(ok)]).observe(elapsed.as_secs_f64());
    }

    /// A backend finished waiting for a deployment's readiness.
    pub fn readiness_wait(&self, module: &str, ok: bool, elapsed: Duration) {
        self.readiness_seconds.with_label_values(&[module, result(ok)]).observe(elapsed.as_secs_f64());
    }

    /// One `ModuleProxy` call got its answer (or failed); `deployment` is `namespace/name`, or
    /// empty when the request named none.
    pub fn proxy_call(&self, deployment: &str, code: tonic::Code, elapsed: Duration) {
        self.proxy_calls.with_label_values(&[deployment, code_name(code)]).inc();
        if code != tonic::Code::Ok {
            self.proxy_errors.with_label_values(&[deployment]).inc();
        }
        self.proxy_seconds.with_label_values(&[deployment]).observe(elapsed.as_secs_f64());
    }

    /// How many endpoints `ModuleProxy` found ready for a deployment.
    pub fn endpoints_ready(&self, deployment: &str, count: usize) {
        self.endpoints_ready.with_label_values(&[deployment]).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A deployment was woken from zero.
    pub fn wakeup(&self, deployment: &str) {
        self.wakeups.with_label_values(&[deployment]).inc();
    }

    /// A deployment was scaled to zero after its idle timeout.
    pub fn scaled_to_zero(&self, deployment: &str) {
        self.scaled_to_zero.with_label_values(&[deployment]).inc();
    }

    /// A logs stream of `deployment` opened; it counts until the guard is dropped (with the
    /// stream: a client that went away no longer counts).
    pub fn log_stream(&self, deployment: &str) -> LogStreamGuard {
        let gauge = self.log_streams.with_label_values(&[deployment]);
        gauge.inc();
        LogStreamGuard { gauge }
    }

    pub fn auth_denial(&self, reason: Denial) {
        self.auth_denials.with_label_values(&[reason.as_str()]).inc();
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        match TextEncoder::new().encode_to_string(&self.registry.gather()) {
            Ok(text) => text,
            Err(e) => {
                // Only a metric with an invalid name or label fails to encode: a bug here.
                tracing::error!(error = %e, "cannot encode the metrics");
                String::new()
            }
        }
    }
}

/// The gRPC code as its canonical upper-case name (`OK`, `UNAVAILABLE`, …).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_render_with_the_prefix_and_labels() {
        let m = Metrics::new();
        m.deploy("redis", true, Duration::from_millis(300));
        m.deploy("redis", false, Duration::from_secs(2));
        m.proxy_call("default/np", tonic::Code::Ok, Duration::from_millis(3));
        m.proxy_call("default/np", tonic::Code::Unavailable, Duration::from_millis(3));
        m.auth_denial(Denial::MissingToken);
        m.endpoints_ready("default/np", 2);
        let text = m.render();
        for want in [
            "jac_orc_deploys_total{module=\"redis\",result=\"ok\"} 1",
            "jac_orc_deploys_total{module=\"redis\",result=\"error\"} 1",
            "jac_orc_deploy_duration_seconds_count{module=\"redis\",result=\"ok\"} 1",
            "jac_orc_proxy_calls_total{code=\"OK\",deployment=\"default/np\"} 1",
            "jac_orc_proxy_errors_total{deployment=\"default/np\"} 1",
            "jac_orc_proxy_call_duration_seconds_count{deployment=\"default/np\"} 2",
            "jac_orc_auth_denials_total{reason=\"missing_token\"} 1",
            "jac_orc_module_endpoints_ready{deployment=\"default/np\"} 2",
            "# TYPE jac_orc_deploy_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == want), "missing `{want}` in:\n{text}");
        }
    }
}

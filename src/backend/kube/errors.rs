//! The Kubernetes backend's own errors, and how kube client failures become backend errors,
//! always naming the object involved.
//!
//! The API server's own message is kept verbatim: it is what a user needs to fix a template
//! (`spec.replicas: Invalid value: "x"…`), and what kubectl would have printed.

use std::time::Duration;

use kube::core::Status;

use crate::backend::Error as BackendError;

/// What only the Kubernetes backend fails at. The API server's own message is in the text
/// (what a user needs to fix a template); the client error stays the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another field manager owns fields this apply would change.
    #[error(
        "{object}: conflict with field manager `{manager}`: {message} (retry with force_conflicts to take ownership)"
    )]
    Conflict {
        object: String,
        manager: String,
        message: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The orchestrator's own credentials may not do this (RBAC).
    #[error("{object}: the orchestrator is not allowed to do this: {message}")]
    Forbidden {
        object: String,
        message: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server answered with a server error.
    #[error("{object}: Kubernetes API error {code}: {message}")]
    Server {
        object: String,
        code: u16,
        message: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server could not be reached.
    #[error("{object}: cannot reach the Kubernetes API: {source}")]
    Unreachable {
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// Watching an object for a condition failed.
    #[error("{object}: watching for {condition} failed: {source}")]
    Watch {
        object: String,
        condition: &'static str,
        #[source]
        source: Box<kube::runtime::wait::Error>,
    },
    /// No usable client configuration (a kubeconfig, the in-cluster service account).
    #[error("{what}: {source}")]
    Config {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A pod's log stream broke off while it was being read.
    #[error("{object}: reading the log failed")]
    LogRead {
        object: String,
        #[source]
        source: Box<std::io::Error>,
    },
    /// The API server did not answer the version probe in time.
    #[error("the Kubernetes API did not answer within {}s", .0.as_secs())]
    ProbeTimeout(Duration),
    /// A deployment record Secret that cannot be written or read back.
    #[error("{secret}: bad deployment record: {source}")]
    BadRecord {
        secret: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{secret} has no {key}")]
    RecordWithoutKey { secret: String, key: &'static str },
    /// Something this backend builds would not encode (a bug).
    #[error("cannot encode {what}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A deploy or undeploy this replica handed to the leading orchestrator failed there; its
    /// status says why (`reason` is the status condition's).
    #[error("{object}: {message} (reported by the leading orchestrator, reason {reason})")]
    LeaderReported { object: String, reason: String, message: String },
}

impl Error {
    /// A configuration error about `what`, keeping its cause.
    pub(crate) fn config(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Config { what: what.into(), source: Box::new(source) }
    }
}

/// HTTP status of an API error, if the server answered at all.
pub(crate) fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    status_code(err) == Some(404)
}

/// Any API failure outside apply: server errors and transport failures mean the cluster is
/// unavailable; a 4xx is a rejection of what we asked for.
pub(crate) fn api_error(object: &str, err: kube::Error) -> BackendError {
    let object = object.to_string();
    let (code, message) = match &err {
        kube::Error::Api(s) => (s.code, s.message.clone()),
        _ => return Error::Unreachable { object, source: Box::new(err) }.into(),
    };
    match code {
        401 | 403 => Error::Forbidden { object, message, source: Box::new(err) }.into(),
        400..=499 => BackendError::Rejected { object, message },
        _ if is_schema_mismatch(code, &message) => BackendError::Rejected { object, message },
        _ => Error::Server { object, code, message, source: Box::new(err) }.into(),
    }
}

/// Server-side apply answers 500 when the object does not fit the kind's schema (a field that
/// does not exist, a number where a string belongs); that is the manifest's fault, not the server's.
fn is_schema_mismatch(code: u16, message: &str) -> bool {
    code == 500 && message.contains("failed to create typed patch object")
}

/// Failures of a server-side apply: 409 is a field-manager conflict, 4xx a rejection.
pub(crate) fn apply_error(object: &str, err: kube::Error) -> BackendError {
    match &err {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict {
            object: object.into(),
            manager: conflict_manager(s).unwrap_or_else(|| "unknown".into()),
            message: s.message.clone(),
            source: Box::new(err),
        }
        .into(),
        _ => api_error(object, err),
    }
}

/// The other field manager named by an SSA conflict: `… conflict with "kubectl" using v1: .data.a`.
fn conflict_manager(status: &Status) -> Option<String> {
    let from_causes = status.details.iter().flat_map(|d| d.causes.iter()).map(|c| c.message.as_str());
    std::iter::once(status.message.as_str()).chain(from_causes).find_map(|text| {
        let rest = &text[text.find("conflict with \"")? + "conflict with \"".len()..];
        Some(rest[..rest.find('"')?].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, "Reason").with_code(code)))
    }

    #[test]
    fn conflict_names_the_other_manager() {
        let err = apply_error(
            "configmap/x",
            status(409, r#"Apply failed with 1 conflict: conflict with "kubectl-edit" using v1: .data.a"#),
        );
        match err {
            BackendError::Kube(Error::Conflict { object, manager, .. }) => {
                assert_eq!(object, "configmap/x");
                assert_eq!(manager, "kubectl-edit");
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn invalid_and_bad_request_are_rejections_with_the_server_message() {
        for code in [400, 422] {
            match apply_error("deployment.apps/x", status(code, "spec.replicas: Invalid value")) {
                BackendError::Rejected { object, message } => {
                    assert_eq!(object, "deployment.apps/x");
                    assert_eq!(message, "spec.replicas: Invalid value");
                }
                other => panic!("expected a rejection for {code}, got {other:?}"),
            }
        }
    }

    #[test]
    fn schema_mismatches_under_server_side_apply_are_rejections() {
        let msg = "failed to create typed patch object: .spec.foo: field not declared in schema";
        assert!(matches!(apply_error("x", status(500, msg)), BackendError::Rejected { message, .. } if message == msg));
    }

    #[test]
    fn server_errors_keep_the_server_message_and_the_client_error_as_source() {
        let err = apply_error("x", status(503, "etcd down"));
        assert!(matches!(&err, BackendError::Kube(Error::Server { code: 503, message, .. }) if message == "etcd down"));
        assert_eq!(err.to_string(), "x: Kubernetes API error 503: etcd down");
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    }

    #[test]
    fn forbidden_keeps_the_server_message() {
        let err = api_error("secret/x", status(403, "secrets is forbidden"));
        assert!(
            matches!(err, BackendError::Kube(Error::Forbidden { message, .. }) if message == "secrets is forbidden")
        );
    }
}

//! Maps kube client failures to backend errors, always naming the object involved.
//!
//! The API server's own message is kept verbatim: it is what a user needs to fix a template
//! (`spec.replicas: Invalid value: "x"…`), and what kubectl would have printed.

use kube::core::Status;

use crate::backend::Error;

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
pub(crate) fn api_error(object: &str, err: kube::Error) -> Error {
    match err {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
            Error::Forbidden { object: object.into(), message: s.message }
        }
        kube::Error::Api(s) if (400..500).contains(&s.code) || is_schema_mismatch(&s) => {
            Error::Rejected { object: object.into(), message: s.message }
        }
        kube::Error::Api(s) => Error::Unavailable(format!("{object}: Kubernetes API error {}: {}", s.code, s.message)),
        other => Error::Unavailable(format!("{object}: cannot reach the Kubernetes API: {other}")),
    }
}

/// Server-side apply answers 500 when the object does not fit the kind's schema (a field that
/// does not exist, a number where a string belongs); that is the manifest's fault, not the server's.
fn is_schema_mismatch(status: &Status) -> bool {
    status.code == 500 && status.message.contains("failed to create typed patch object")
}

/// Failures of a server-side apply: 409 is a field-manager conflict, 4xx a rejection.
pub(crate) fn apply_error(object: &str, err: kube::Error) -> Error {
    match err {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict {
            object: object.into(),
            manager: conflict_manager(&s).unwrap_or_else(|| "unknown".into()),
            message: s.message,
        },
        other => api_error(object, other),
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
            Error::Conflict { object, manager, .. } => {
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
                Error::Rejected { object, message } => {
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
        assert!(matches!(apply_error("x", status(500, msg)), Error::Rejected { message, .. } if message == msg));
    }

    #[test]
    fn server_errors_mean_unavailable() {
        assert!(matches!(apply_error("x", status(503, "etcd down")), Error::Unavailable(_)));
    }
}

//! Native gRPC probes where the API server has them (Kubernetes 1.24+), an exec probe with the same
//! meaning where it does not.
//!
//! Templates write ordinary `grpc: {port, service}` probes and declare, on the pod template, the
//! command that performs the same check from inside the container:
//!
//! ```yaml
//! template:
//!   metadata:
//!     annotations:
//!       jac-orc.io/grpc-probe-exec: '["python", "-m", "jac_splice.probe"]'
//! ```
//!
//! The value is a JSON list (every container) or a JSON object from container name to list. On a
//! server older than 1.24 each `grpc` probe becomes `exec: {command: PREFIX + ["--port", PORT,
//! "--service", SERVICE, "--timeout", SECONDS]}` (the service only when set; the timeout is the
//! probe's `timeoutSeconds`, default 1), so the command answers what the kubelet's gRPC probe
//! would have: whether the server's standard health service reports SERVING. A gRPC probe without
//! a declared fallback is refused before anything is applied, naming the container: the API
//! server would reject it anyway (`field not declared in schema`), after earlier objects applied.
//!
//! An exec probe starts a process in the container each period (for the module server, a Python
//! start: ~0.15 s of CPU), which is why readiness could not be checked often on a small node, and
//! a deployment waking from zero waited for the next 5 s tick. A template whose gRPC servers
//! listen only once they serve (health is SERVING from the moment the port accepts) says so with
//! `jac-orc.io/grpc-serves-when-listening: "true"`; its readiness and startup probes then become
//! `tcpSocket` probes on the same port, which the kubelet performs itself, and only liveness (which
//! must notice a server that accepts but no longer answers) stays an exec probe.

use serde_json::{Map, Value};

use crate::backend::{Error, Result};

/// Pod-template annotation declaring the exec form of a container's gRPC probes.
pub const ANNOTATION_GRPC_PROBE_EXEC: &str = "jac-orc.io/grpc-probe-exec";

/// Pod-template annotation (`"true"`) saying the containers' gRPC servers listen only once they
/// serve, so a TCP connect answers what a readiness or startup gRPC probe would.
pub(super) const ANNOTATION_SERVES_WHEN_LISTENING: &str = "jac-orc.io/grpc-serves-when-listening";

/// Probes that only ask "is it serving yet", which a TCP connect answers for such servers.
const READINESS_KINDS: [&str; 2] = ["readinessProbe", "startupProbe"];

/// The first Kubernetes minor version (1.x) with native gRPC probes.
const GRPC_PROBES_SINCE_MINOR: u32 = 24;

const PROBE_KINDS: [&str; 3] = ["readinessProbe", "livenessProbe", "startupProbe"];

/// Whether a server of this `/version` accepts `grpc` probes. Minor versions look like `20` or
/// `20+` (some distributions); anything unparseable is taken to be a modern server.
pub(crate) fn grpc_probes_supported(major: &str, minor: &str) -> bool {
    let digits = |s: &str| s.trim().trim_end_matches('+').parse::<u32>().ok();
    match (digits(major), digits(minor)) {
        (Some(1), Some(minor)) => minor >= GRPC_PROBES_SINCE_MINOR,
        (Some(major), _) => major > 1,
        _ => true,
    }
}

/// The pod template (`metadata` + `spec`) of a workload manifest, if it has one.
fn pod_template_mut(manifest: &mut Value) -> Option<&mut Value> {
    let kind = manifest.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    match kind.as_str() {
        "Pod" => Some(manifest),
        "CronJob" => manifest.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => manifest.pointer_mut("/spec/template").filter(|t| t.get("spec").is_some()),
    }
}

/// Rewrites the gRPC probes of `manifest` into exec probes when `supported` is false; does nothing
/// otherwise (or when the object has no pod template). `object` names the object in errors.
pub(crate) fn adapt(manifest: &mut Value, supported: bool, object: &str, server: &str) -> Result<()> {
    if supported {
        return Ok(());
    }
    let Some(template) = pod_template_mut(manifest) else {
        return Ok(());
    };
    let pointer = |key: &str| format!("/metadata/annotations/{}", key.replace('/', "~1"));
    let fallback = match template.pointer(&pointer(ANNOTATION_GRPC_PROBE_EXEC)) {
        None => Fallback::None,
        Some(v) => Fallback::parse(v).map_err(|message| Error::Rejected {
            object: object.into(),
            message: format!("annotation {ANNOTATION_GRPC_PROBE_EXEC}: {message}"),
        })?,
    };
    let serves_when_listening = match template.pointer(&pointer(ANNOTATION_SERVES_WHEN_LISTENING)) {
        None => false,
        Some(Value::String(v)) if v == "true" => true,
        Some(Value::String(v)) if v == "false" => false,
        Some(other) => {
            return Err(Error::Rejected {
                object: object.into(),
                message: format!(
                    "annotation {ANNOTATION_SERVES_WHEN_LISTENING}: must be \"true\" or \"false\", got {other}"
                ),
            })
        }
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = template.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            for kind in PROBE_KINDS {
                let Some(probe) = container.get_mut(kind).and_then(Value::as_object_mut) else {
                    continue;
                };
                let Some(grpc) = probe.remove("grpc") else {
                    continue;
                };
                if serves_when_listening && READINESS_KINDS.contains(&kind) {
                    let port = grpc_port(&grpc).map_err(|message| Error::Rejected {
                        object: object.into(),
                        message: format!("container `{name}` {kind}: {message}"),
                    })?;
                    probe.insert("tcpSocket".into(), serde_json::json!({ "port": port }));
                    continue;
                }
                let Some(prefix) = fallback.for_container(&name) else {
                    return Err(Error::Rejected {
                        object: object.into(),
                        message: format!(
                            "container `{name}` has a gRPC {kind}, which needs Kubernetes 1.{GRPC_PROBES_SINCE_MINOR}+ \
                             (this server is {server}); declare its exec form with the pod-template annotation \
                             {ANNOTATION_GRPC_PROBE_EXEC}"
                        ),
                    });
                };
                let command = exec_command(prefix, &grpc, probe).map_err(|message| Error::Rejected {
                    object: object.into(),
                    message: format!("container `{name}` {kind}: {message}"),
                })?;
                probe.insert("exec".into(), serde_json::json!({ "command": command }));
            }
        }
    }
    Ok(())
}

/// `PREFIX --port P [--service S] --timeout T` for one gRPC probe.
fn exec_command(prefix: &[String], grpc: &Value, probe: &Map<String, Value>) -> Result<Vec<String>, String> {
    let port = grpc_port(grpc)?;
    let mut command = prefix.to_vec();
    command.extend(["--port".to_string(), port.to_string()]);
    if let Some(service) = grpc.get("service").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        command.extend(["--service".to_string(), service.to_string()]);
    }
    let timeout = probe.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(1);
    command.extend(["--timeout".to_string(), timeout.to_string()]);
    Ok(command)
}

/// The port of a `grpc` probe, which must be a number (names are not allowed for grpc).
fn grpc_port(grpc: &Value) -> Result<u64, String> {
    match grpc.get("port") {
        Some(Value::Number(n)) => n.as_u64().filter(|p| (1..=65535).contains(p)),
        // A quantity-like string is what some templates render.
        Some(Value::String(s)) => s.parse::<u64>().ok().filter(|p| (1..=65535).contains(p)),
        _ => None,
    }
    .ok_or_else(|| format!("grpc.port must be a port number, got {}", grpc.get("port").unwrap_or(&Value::Null)))
}

/// What a template declared in [`ANNOTATION_GRPC_PROBE_EXEC`].
enum Fallback {
    None,
    All(Vec<String>),
    PerContainer(std::collections::BTreeMap<String, Vec<String>>),
}

impl Fallback {
    fn parse(value: &Value) -> Result<Self, String> {
        let text = value.as_str().ok_or("must be a string holding JSON")?;
        let parsed: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let argv = |v: &Value| -> Result<Vec<String>, String> {
            let items = v.as_array().ok_or("a command must be a list of strings")?;
            let out: Option<Vec<String>> = items.iter().map(|i| i.as_str().map(str::to_string)).collect();
            out.filter(|o| !o.is_empty()).ok_or_else(|| "a command must be a non-empty list of strings".to_string())
        };
        match &parsed {
            Value::Array(_) => Ok(Fallback::All(argv(&parsed)?)),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), argv(v)?)))
                .collect::<Result<_, String>>()
                .map(Fallback::PerContainer),
            _ => Err("must be a JSON list (every container) or an object of container name to list".into()),
        }
    }

    fn for_container(&self, name: &str) -> Option<&[String]> {
        match self {
            Fallback::None => None,
            Fallback::All(argv) => Some(argv),
            Fallback::PerContainer(map) => map.get(name).map(Vec::as_slice),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(annotation: Option<&str>) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "m"},
            "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{
                "name": "module-server",
                "readinessProbe": {"grpc": {"port": 50051, "service": "ModuleService"}, "periodSeconds": 5, "timeoutSeconds": 4},
                "livenessProbe": {"grpc": {"port": 50051}},
                "startupProbe": {"tcpSocket": {"port": 50051}}
            }]}}}
        });
        if let Some(a) = annotation {
            d["spec"]["template"]["metadata"]["annotations"] = json!({ ANNOTATION_GRPC_PROBE_EXEC: a });
        }
        d
    }

    #[test]
    fn versions_from_1_24_have_grpc_probes() {
        assert!(!grpc_probes_supported("1", "20"));
        assert!(!grpc_probes_supported("1", "23+"));
        assert!(grpc_probes_supported("1", "24"));
        assert!(grpc_probes_supported("1", "33+"));
        assert!(grpc_probes_supported("2", "0"));
        assert!(grpc_probes_supported("", ""), "unknown versions are taken to be modern");
    }

    #[test]
    fn old_servers_get_exec_probes_with_the_same_port_service_and_timeout() {
        let mut d = deployment(Some(r#"["python", "-m", "jac_splice.probe"]"#));
        adapt(&mut d, false, "deployment.apps/m", "v1.20.2").unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["readinessProbe"],
            json!({"exec": {"command": ["python", "-m", "jac_splice.probe", "--port", "50051", "--service", "ModuleService", "--timeout", "4"]},
                   "periodSeconds": 5, "timeoutSeconds": 4})
        );
        assert_eq!(
            c["livenessProbe"]["exec"]["command"],
            json!(["python", "-m", "jac_splice.probe", "--port", "50051", "--timeout", "1"])
        );
        assert_eq!(c["startupProbe"], json!({"tcpSocket": {"port": 50051}}), "other probes are left alone");
    }

    #[test]
    fn servers_that_serve_when_listening_get_tcp_readiness_and_exec_liveness_on_old_servers() {
        let mut d = deployment(Some(r#"["python", "-m", "jac_splice.probe"]"#));
        let c = &mut d["spec"]["template"]["spec"]["containers"][0];
        c["startupProbe"] = json!({"grpc": {"port": "50051"}, "periodSeconds": 1});
        d["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SERVES_WHEN_LISTENING] = json!("true");
        let before = d.clone();
        adapt(&mut d, false, "deployment.apps/m", "v1.20.2").unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["readinessProbe"], json!({"tcpSocket": {"port": 50051}, "periodSeconds": 5, "timeoutSeconds": 4}));
        assert_eq!(c["startupProbe"], json!({"tcpSocket": {"port": 50051}, "periodSeconds": 1}));
        assert_eq!(
            c["livenessProbe"]["exec"]["command"],
            json!(["python", "-m", "jac_splice.probe", "--port", "50051", "--timeout", "1"]),
            "liveness must notice a server that accepts but no longer answers"
        );
        let mut modern = before.clone();
        adapt(&mut modern, true, "deployment.apps/m", "v1.33.0").unwrap();
        assert_eq!(modern, before, "native gRPC probes where served");

        let mut bad = before.clone();
        bad["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SERVES_WHEN_LISTENING] = json!("yes");
        let err = adapt(&mut bad, false, "deployment.apps/m", "v1.20.2").unwrap_err().to_string();
        assert!(err.contains(ANNOTATION_SERVES_WHEN_LISTENING) && err.contains("\"yes\""), "{err}");
    }

    #[test]
    fn new_servers_keep_native_grpc_probes() {
        let mut d = deployment(Some(r#"["python", "-m", "jac_splice.probe"]"#));
        let before = d.clone();
        adapt(&mut d, true, "deployment.apps/m", "v1.33.0").unwrap();
        assert_eq!(d, before);
    }

    #[test]
    fn a_grpc_probe_without_a_fallback_is_refused_naming_the_container_and_the_server() {
        let mut d = deployment(None);
        let err = adapt(&mut d, false, "deployment.apps/m", "v1.20.2").unwrap_err();
        match err {
            Error::Rejected { object, message } => {
                assert_eq!(object, "deployment.apps/m");
                assert!(message.contains("`module-server`") && message.contains("v1.20.2"), "{message}");
                assert!(message.contains(ANNOTATION_GRPC_PROBE_EXEC), "{message}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn per_container_fallbacks_and_bad_declarations() {
        let mut d = deployment(Some(r#"{"module-server": ["/probe"]}"#));
        adapt(&mut d, false, "x", "v1.20.2").unwrap();
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"][0], "/probe");
        let mut other = deployment(Some(r#"{"sidecar": ["/probe"]}"#));
        assert!(adapt(&mut other, false, "x", "v1.20.2").is_err(), "no fallback for module-server");
        for bad in ["not json", "[]", "[1]", r#"{"module-server": "python"}"#, "7"] {
            let mut d = deployment(Some(bad));
            let err = adapt(&mut d, false, "x", "v1.20.2").unwrap_err().to_string();
            assert!(err.contains(ANNOTATION_GRPC_PROBE_EXEC), "{bad}: {err}");
        }
    }

    #[test]
    fn objects_without_pod_templates_are_untouched() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"grpc": "x"}});
        let before = cm.clone();
        adapt(&mut cm, false, "configmap/c", "v1.20.2").unwrap();
        assert_eq!(cm, before);
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {ANNOTATION_GRPC_PROBE_EXEC: "[\"/p\"]"}},
            "spec": {"containers": [{"name": "c", "readinessProbe": {"grpc": {"port": 9}}}]}});
        adapt(&mut pod, false, "pod/p", "v1.20.2").unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["readinessProbe"]["exec"]["command"],
            json!(["/p", "--port", "9", "--timeout", "1"])
        );
    }
}

//! Deploy on first import (`EnsureModule`): the python-module deployment serving a Python
//! module, deployed (and awaited) when none does.
//!
//! # One deployment for racing callers
//! Every caller for one module in one namespace derives the same name ([`derived_name`]) and so
//! waits on the same per-deployment lock. The first deploys while holding it until readiness
//! is decided; the others then find its record and return it. A caller that finds a ready
//! deployment without the lock returns at once.
//!
//! # Names
//! `sklearn.linear_model` becomes `sklearn-linear-model`. Mapping `.` and `_` to `-` is the only
//! loss a plain name may hide; any other change (case, separators collapsed or trimmed, a name
//! longer than a DNS label) adds a short hash of the module name, and so does finding the plain
//! name taken by a deployment serving another module (`a.b` after `a_b`).

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::views::{DeploymentView, EnsureView};
use super::{DeploymentRequest, Error, Result, Service, DEFAULT_WAIT};
use crate::auth::{Caller, Resource, Verb};
use crate::backend::{ApplyOptions, DeploymentRecord, ObjectEvent, Status};
use crate::catalog::requirements;
use crate::identity::DeploymentId;

/// The template on-demand deployments are made from.
pub const PYTHON_MODULE: &str = "python-module";
/// The label every object of an on-demand deployment carries (the template's `on-demand`).
pub const LABEL_ON_DEMAND: &str = "jac-orc.io/on-demand";
/// Longest idle timeout accepted: a month (longer is "never", which is the default).
const LONGEST_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest DNS-1123 label.
const MAX_NAME: usize = 63;
/// Hex digits of the hash a derived name may end with.
const HASH_DIGITS: usize = 6;

/// What `EnsureModule` asks for; absent settings take the template's defaults.
#[derive(Debug, Clone, Default)]
pub struct EnsureRequest {
    /// Python import name, e.g. `numpy`.
    pub module: String,
    pub packages: Vec<String>,
    pub cpu: Option<Value>,
    /// The limit when it may burst above `cpu` (absent: the limit is `cpu`).
    pub cpu_limit: Option<Value>,
    pub memory: Option<Value>,
    pub replicas: Option<u32>,
    /// Seconds as a number, or a duration string (`"90"`, `"90s"`, `"10m"`, `"1h"`).
    pub idle_timeout: Option<Value>,
    pub namespace: Option<String>,
    /// Readiness timeout when it deploys (default [`DEFAULT_WAIT`]).
    pub wait: Option<Duration>,
}

/// Which modules and packages may be deployed on first import (`serve --ensure-allow`).
/// Without a list, any module may; with one, a module is allowed when it or a package it
/// belongs to is listed (`sklearn` allows `sklearn.linear_model`), and each package when its
/// normalized project name is listed.
#[derive(Debug, Clone, Default)]
pub struct EnsurePolicy {
    allowed: Option<Vec<String>>,
}

impl EnsurePolicy {
    /// Only the listed modules and packages.
    pub fn allow<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let allowed = names.into_iter().map(|n| n.as_ref().trim().to_string()).filter(|n| !n.is_empty());
        EnsurePolicy { allowed: Some(allowed.collect()) }
    }

    /// Whether a list restricts deploying on import.
    pub fn is_restricted(&self) -> bool {
        self.allowed.is_some()
    }

    fn check(&self, module: &str, packages: &[String]) -> Result<()> {
        let Some(allowed) = &self.allowed else { return Ok(()) };
        let mut prefix = String::new();
        let module_allowed = module.split('.').any(|part| {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(part);
            allowed.contains(&prefix)
        });
        if !module_allowed {
            return Err(Error::NotAllowedOnImport { what: "module", name: module.to_string() });
        }
        for p in packages {
            let project = normalize_project(project_name(p));
            if !allowed.iter().any(|a| normalize_project(a) == project) {
                return Err(Error::NotAllowedOnImport { what: "package", name: p.clone() });
            }
        }
        Ok(())
    }
}

/// The project name a (valid) requirement starts with.
fn project_name(requirement: &str) -> &str {
    let end = requirement.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    &requirement[..end.unwrap_or(requirement.len())]
}

/// PEP 503 normalization: case-insensitive, runs of `-_.` are one `-`.
fn normalize_project(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// A Python import name: dotted identifiers (ASCII, as the template's `module` pattern).
fn check_module(module: &str) -> Result<()> {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if module.len() <= 256 && module.split('.').all(identifier) {
        return Ok(());
    }
    Err(Error::Invalid {
        field: "module".into(),
        reason: format!("{module:?} is not a Python import name (dotted identifiers, e.g. \"sklearn.linear_model\")"),
    })
}

/// Parses an idle timeout: whole seconds as a number or a string, or a whole number of
/// seconds, minutes or hours (`"90s"`, `"10m"`, `"1h"`), from one second to a month.
pub fn parse_idle_timeout(value: &Value) -> Result<Duration> {
    let invalid = |reason: String| Error::Invalid { field: "idle_timeout".into(), reason };
    let secs = match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| invalid(format!("{n} is not a whole number of seconds")))?,
        Value::String(s) => {
            let (digits, unit) = match s.strip_suffix(['s', 'm', 'h']) {
                Some(digits) => (digits, &s[digits.len()..]),
                None => (s.as_str(), "s"),
            };
            let bad =
                || invalid(format!("{s:?} is not a duration: write seconds (\"90\") or \"90s\", \"10m\", \"1h\""));
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: u64 = digits.parse().map_err(|_| bad())?;
            n.saturating_mul(match unit {
                "m" => 60,
                "h" => 3600,
                _ => 1,
            })
        }
        other => return Err(invalid(format!("expected seconds or a duration string, got {}", kind(other)))),
    };
    if secs == 0 {
        return Err(invalid("must be at least one second (leave it out for never)".into()));
    }
    if secs > LONGEST_IDLE.as_secs() {
        return Err(invalid(format!("{secs}s is longer than {}s (leave it out for never)", LONGEST_IDLE.as_secs())));
    }
    Ok(Duration::from_secs(secs))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// FNV-1a: a stable hash (std's differs between builds), as [`HASH_DIGITS`] hex digits.
fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")[..HASH_DIGITS].to_string()
}

/// The plain name of a module's deployment, and whether a hash must follow it (see the
/// module doc).
fn sanitized(module: &str) -> (String, bool) {
    let mut name = String::with_capacity(module.len());
    for c in module.chars() {
        let c = match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    while name.ends_with('-') {
        name.pop();
    }
    let simple = module.replace(['.', '_'], "-");
    let lossy = name != simple || name.len() > MAX_NAME;
    (name, lossy)
}

/// The plain name with the module's hash, within a DNS label.
fn hashed(module: &str, plain: &str) -> String {
    let keep = MAX_NAME - HASH_DIGITS - 1;
    let base = plain.get(..keep.min(plain.len())).unwrap_or(plain).trim_end_matches('-');
    match base {
        "" => format!("m-{}", short_hash(module)),
        base => format!("{base}-{}", short_hash(module)),
    }
}

/// The name a module's on-demand deployment gets when nothing else holds it.
pub fn derived_name(module: &str) -> String {
    match sanitized(module) {
        (plain, false) if !plain.is_empty() => plain,
        (plain, _) => hashed(module, &plain),
    }
}

fn serves(record: &DeploymentRecord, module: &str) -> bool {
    record.config.get("module").and_then(Value::as_str) == Some(module)
}

/// Whether `EnsureModule` made the deployment.
pub(super) fn is_on_demand(record: &DeploymentRecord) -> bool {
    record.config.get("on-demand").and_then(Value::as_bool) == Some(true)
}

impl Service {
    /// The python-module deployment serving `req.module`, deployed and awaited first when none
    /// does (see the module doc). A failed on-demand deployment is deployed again; any other
    /// found deployment is returned as it stands.
    pub async fn ensure_module(&self, caller: &Caller, req: &EnsureRequest) -> Result<EnsureView> {
        self.ensure_module_with(caller, req, None).await
    }

    /// [`Self::ensure_module`], sending to `progress` the per-object events of the deploy it
    /// makes (applied, waiting, ready) as they happen; a found deployment sends none.
    pub async fn ensure_module_with(
        &self,
        caller: &Caller,
        req: &EnsureRequest,
        progress: Option<&mpsc::UnboundedSender<ObjectEvent>>,
    ) -> Result<EnsureView> {
        let started = Instant::now();
        check_module(&req.module)?;
        let idle = req.idle_timeout.as_ref().map(parse_idle_timeout).transpose()?;
        for (i, p) in req.packages.iter().enumerate() {
            requirements::validate(p)
                .map_err(|e| Error::Invalid { field: format!("packages[{i}]"), reason: format!("{p:?} {e}") })?;
        }
        let namespace = self.rule.target(req.namespace.as_deref())?;
        let plain = DeploymentId::new(namespace.clone(), PYTHON_MODULE, derived_name(&req.module))?;
        if let Some(found) = self.serving(&namespace, &req.module, &plain).await? {
            match found.status {
                Status::Deployed => return self.found(caller, &found, req).await,
                Status::Idle => return self.woken(caller, &found, req).await,
                _ => {}
            }
        }
        let lock = self.locks.hold(&plain).await;
        // A racing caller may have deployed it while this one waited.
        let found = self.serving(&namespace, &req.module, &plain).await?;
        let name = match found {
            Some(r) if r.status == Status::Failed && is_on_demand(&r) => r.id.name,
            Some(r) if r.status == Status::Idle => {
                drop(lock);
                return self.woken(caller, &r, req).await;
            }
            Some(r) => return self.found(caller, &r, req).await,
            None => match self.backend.get(&plain).await? {
                Some(other) if !serves(&other, &req.module) => hashed(&req.module, &plain.name),
                _ => plain.name.clone(),
            },
        };
        // Refused callers learn nothing of the allowlist.
        self.permit(caller, Verb::Create, Resource::JacDeployments, Some(&namespace), Some(&name)).await?;
        self.settings.ensure.check(&req.module, &req.packages)?;
        let request = deployment_request(req, &namespace, &name, idle);
        let r = self.resolve(&request)?;
        self.permit_apply(caller, &r.id).await?;
        // The plain name's lock stays held (by this call or its run) until readiness is
        // decided, so racing callers wait for this deploy rather than start their own.
        let (lock, _plain_lock) = if r.id == plain { (lock, None) } else { (self.locks.hold(&r.id).await, Some(lock)) };
        tracing::info!(module = %req.module, deployment = %r.id, "deploying on first import");
        let prepared = self.plan(r, started, lock).await?;
        let opts = ApplyOptions { wait: Some(req.wait.unwrap_or(DEFAULT_WAIT)), ..ApplyOptions::default() };
        let run = self.apply(prepared, opts, super::revision_note::RevisionNote::deploy(caller));
        let summary = run
            .finish_with(|ev| {
                if let Some(p) = progress {
                    // A caller that left no longer reads them; the deploy goes on as for any.
                    let _ = p.send(ev);
                }
            })
            .await?;
        Ok(EnsureView { deployment: summary.deployment, deployed: true, differences: Vec::new() })
    }

    /// A found deployment, for callers allowed to read it.
    async fn found(&self, caller: &Caller, record: &DeploymentRecord, req: &EnsureRequest) -> Result<EnsureView> {
        let id = &record.id;
        self.permit(caller, Verb::Get, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await?;
        let differences = differences(req, record)?;
        Ok(EnsureView { deployment: DeploymentView::from(record), deployed: false, differences })
    }

    /// A found deployment scaled to zero, woken (and awaited) for callers allowed to read it:
    /// the way a direct-access client that found no ready module server gets one.
    async fn woken(&self, caller: &Caller, record: &DeploymentRecord, req: &EnsureRequest) -> Result<EnsureView> {
        let id = &record.id;
        self.permit(caller, Verb::Get, Resource::JacDeployments, Some(&id.namespace), Some(&id.name)).await?;
        self.backend.wake(id, req.wait.unwrap_or(DEFAULT_WAIT)).await?;
        let now = self.backend.get(id).await?.ok_or_else(|| crate::backend::Error::NotFound(id.clone()))?;
        let differences = differences(req, &now)?;
        Ok(EnsureView { deployment: DeploymentView::from(&now), deployed: false, differences })
    }

    /// The python-module deployment of `namespace` serving `module`: the one of the derived
    /// names when it does, else the first in name order.
    async fn serving(&self, namespace: &str, module: &str, plain: &DeploymentId) -> Result<Option<DeploymentRecord>> {
        let hashed = hashed(module, &plain.name);
        let mut records = self.backend.list().await?;
        records.retain(|r| r.id.namespace == namespace && r.id.module == PYTHON_MODULE && serves(r, module));
        records.sort_by_key(|r| (r.id.name != plain.name && r.id.name != hashed, r.id.name.clone()));
        Ok(records.into_iter().next())
    }
}

/// The settings `req` asks for that the found deployment `record` was not deployed with, one
/// line each (`replicas: asked 3, deployed with 1`). Only settings the request gives count; the
/// deployment is returned as it stands, since changing it is a deploy (whose permissions and
/// rollout are the caller's to choose), not a lookup.
fn differences(req: &EnsureRequest, record: &DeploymentRecord) -> Result<Vec<String>> {
    let idle = req.idle_timeout.as_ref().map(parse_idle_timeout).transpose()?;
    let asked: [(&str, Option<Value>); 6] = [
        ("packages", (!req.packages.is_empty()).then(|| req.packages.clone().into())),
        ("cpu", req.cpu.clone()),
        ("cpu-limit", req.cpu_limit.clone()),
        ("memory", req.memory.clone()),
        ("replicas", req.replicas.map(Into::into)),
        ("idle-timeout", idle.map(|d| format!("{}s", d.as_secs()).into())),
    ];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(asked
        .into_iter()
        .filter_map(|(key, want)| {
            let want = want?;
            let have = record.config.get(key).filter(|v| !v.is_null());
            let same = have.is_some_and(|h| text(h) == text(&want));
            (!same).then(|| {
                let have = have.map_or_else(|| "none".to_string(), text);
                format!("{key}: asked {}, deployed with {have}", text(&want))
            })
        })
        .collect())
}

/// The python-module deploy an ensure makes.
fn deployment_request(req: &EnsureRequest, namespace: &str, name: &str, idle: Option<Duration>) -> DeploymentRequest {
    let mut config = Map::new();
    config.insert("name".into(), name.into());
    config.insert("namespace".into(), namespace.into());
    config.insert("module".into(), req.module.clone().into());
    config.insert("packages".into(), req.packages.clone().into());
    config.insert("on-demand".into(), true.into());
    if let Some(idle) = idle {
        config.insert("idle-timeout".into(), format!("{}s", idle.as_secs()).into());
    }
    for (key, value) in [("cpu", &req.cpu), ("cpu-limit", &req.cpu_limit), ("memory", &req.memory)] {
        if let Some(v) = value {
            config.insert(key.into(), v.clone());
        }
    }
    if let Some(n) = req.replicas {
        config.insert("replicas".into(), n.into());
    }
    DeploymentRequest { module: PYTHON_MODULE.into(), version: None, config }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_dns_labels_and_only_lossy_ones_carry_a_hash() {
        assert_eq!(derived_name("numpy"), "numpy");
        assert_eq!(derived_name("sklearn.linear_model"), "sklearn-linear-model");
        let upper = derived_name("PIL");
        assert!(upper.starts_with("pil-") && upper.len() == 4 + HASH_DIGITS, "{upper}");
        assert_ne!(derived_name("__future__"), "future");
        assert_ne!(derived_name("a__b"), derived_name("a_b"));
        let long = "x".repeat(80);
        let name = derived_name(&long);
        assert_eq!(name.len(), MAX_NAME);
        assert_ne!(name, derived_name(&"x".repeat(81)));
        for module in ["numpy", "PIL", "__future__", "_x", &long, "a.b.C_d"] {
            let name = derived_name(module);
            DeploymentId::new("default", PYTHON_MODULE, name.clone())
                .unwrap_or_else(|e| panic!("{module}: {name}: {e}"));
        }
        // The hashed form of a plain name is what a collision with another module falls back to.
        assert_eq!(hashed("a.b", "a-b"), format!("a-b-{}", short_hash("a.b")));
        assert_ne!(hashed("a.b", "a-b"), hashed("a_b", "a-b"));
    }

    #[test]
    fn idle_timeouts_are_seconds_or_durations_and_bad_ones_name_the_field() {
        let ok = |v: Value| parse_idle_timeout(&v).unwrap().as_secs();
        assert_eq!(ok(json!(90)), 90);
        assert_eq!(ok(json!("90")), 90);
        assert_eq!(ok(json!("90s")), 90);
        assert_eq!(ok(json!("10m")), 600);
        assert_eq!(ok(json!("1h")), 3600);
        for bad in [json!(0), json!(-1), json!(1.5), json!("soon"), json!("10d"), json!("m"), json!(""), json!(true)] {
            let e = parse_idle_timeout(&bad).unwrap_err();
            assert_eq!(e.field().as_deref(), Some("idle_timeout"), "{bad}: {e}");
        }
        assert!(parse_idle_timeout(&json!("1000h")).unwrap_err().to_string().contains("longer"));
    }

    #[test]
    fn the_allowlist_covers_submodules_and_normalized_package_names() {
        let policy = EnsurePolicy::allow(["sklearn", "scikit-learn", "numpy"]);
        assert!(policy.check("sklearn.linear_model", &["Scikit_Learn>=1.5".into()]).is_ok());
        assert!(policy.check("numpy", &[]).is_ok());
        let refused = policy.check("sklearnx", &[]).unwrap_err();
        assert!(refused.to_string().contains("sklearnx"), "{refused}");
        let refused = policy.check("numpy", &["requests==2".into()]).unwrap_err();
        assert!(refused.to_string().contains("requests==2"), "{refused}");
        assert!(EnsurePolicy::default().check("anything", &["pkg".into()]).is_ok());
    }

    #[test]
    fn module_names_must_be_python_import_names() {
        for bad in ["", "1abc", "a..b", "a.", "a-b", "a b", "é"] {
            assert_eq!(check_module(bad).unwrap_err().field().as_deref(), Some("module"), "{bad:?}");
        }
        assert!(check_module("sklearn.linear_model").is_ok());
    }
}

//! The state file: every local deployment's record, object digests and workload (recipe, port,
//! process identity), in `<data-dir>/local-state.json`.
//!
//! Replicas 1..N of a deployment (`replicas.rs`) are recorded beside replica 0: index, port and
//! identity of each, so a restarted orchestrator adopts them too (a file without them loads;
//! its extras then start afresh).
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory) on a blocking
//! thread, never under the async state mutex: callers take a numbered [`Snapshot`] under the
//! mutex and write it after releasing it; an older snapshot that arrives late is skipped. The
//! file is 0600 in a 0700 directory. Secret values live once, in the record's `config`: objects
//! are kept as SHA-256 digests of their manifests, and a secret's value inside a recipe string is
//! stored as a reference to it. Files of the previous versions (no `format` key; recipe strings
//! plain or as segments, whole manifests, a bare pid) are read and rewritten in this format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{Error, Result};
pub(super) use super::fs::{blocking, create_private_dir, write_atomically};
use super::process::Identity;
use crate::backend::{DeploymentRecord, Status};
use crate::plan::{LocalRecipe, ObjectRef, Readiness, RecipeText, SecretEnv, Segment, Slot};

pub(super) const STATE_FILE: &str = "local-state.json";
/// The format this version writes; files without a `format` key are the previous versions'.
pub(super) const FORMAT: u64 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub(super) format: u64,
    pub(super) deployments: BTreeMap<String, Entry>,
    /// Each deployment's revisions, oldest first (`history.rs`); secrets redacted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) history: BTreeMap<String, Vec<crate::backend::Revision>>,
}

impl Default for StateFile {
    fn default() -> Self {
        StateFile { format: FORMAT, deployments: BTreeMap::new(), history: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) record: DeploymentRecord,
    pub(super) objects: Vec<StoredObject>,
    pub(super) workload: Option<Workload>,
    /// A first deploy that has not succeeded yet: if it fails, everything it created goes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) fresh: bool,
}

impl Entry {
    /// Takes the extras recorded in `current` (the entry this one replaces): they run on, and
    /// their records may have changed (a supervised restart) since this entry was read.
    pub(super) fn keep_extras_of(&mut self, current: Option<&Entry>) {
        if let Some(w) = self.workload.as_mut() {
            w.extras = current.and_then(|c| c.workload.as_ref()).map(|c| c.extras.clone()).unwrap_or_default();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredObject {
    pub(super) object: ObjectRef,
    /// `sha256:<hex>` of the manifest's JSON: enough to tell created/configured/unchanged.
    pub(super) digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Workload {
    pub(super) recipe: SealedRecipe,
    /// Fixed for the deployment's life: the endpoint never moves.
    pub(super) port: u16,
    /// The running process, once spawned (`None` while a start is pending).
    #[serde(default)]
    pub(super) process: Option<Identity>,
    /// Whether the workload should run (a restarted orchestrator adopts or starts it).
    pub(super) run: bool,
    /// A pid recorded by a previous version (no start time): reaped if it still runs the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) legacy_pid: Option<u32>,
    /// Digest of the configuration the workload runs with (`backend::rollout`): a change
    /// restarts it, as a new config hash rolls pods on Kubernetes. `None`: none, or recorded by a
    /// previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) config_hash: Option<String>,
    /// The extra replicas that run (index order): recorded once spawned, updated by every
    /// supervised restart, removed before they are stopped. Absent in files written before
    /// extras were adopted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) extras: Vec<ExtraProcess>,
}

/// A running extra replica, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ExtraProcess {
    /// 1..N (replica 0 is the workload itself).
    pub(super) index: usize,
    /// Its own port, kept while it runs (adopted with it after a restart).
    pub(super) port: u16,
    pub(super) process: Identity,
}

impl Workload {
    /// Records (or replaces) the extra replica `index`, keeping index order.
    pub(super) fn record_extra(&mut self, extra: ExtraProcess) {
        self.extras.retain(|x| x.index != extra.index);
        let at = self.extras.partition_point(|x| x.index < extra.index);
        self.extras.insert(at, extra);
    }
}

/// A recipe as stored: like [`LocalRecipe`], with secret values replaced by their names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SealedRecipe {
    program: Vec<Part>,
    args: Vec<Vec<Part>>,
    readiness: Readiness,
    protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    packages: Vec<Vec<Piece>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    env: Vec<(String, Vec<Part>)>,
    /// Where env vars holding other deployments' secrets come from (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secret_env: Vec<SecretEnv>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Part {
    Text(Vec<Piece>),
    Slot(Slot),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Piece {
    Plain(String),
    Secret { secret: String },
}

/// `(name, value)` of each secret with a non-empty string value, longest value first.
pub(super) fn secret_values(config: &Map<String, Value>, secret_keys: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = secret_keys
        .iter()
        .filter_map(|k| Some((k.clone(), text_of(config.get(k)?))))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    out.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    out
}

pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seal_str(s: &str, secrets: &[(String, String)]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = s;
    // Each round consumes at least one byte of `rest`.
    for _ in 0..=s.len() {
        let next = secrets
            .iter()
            .filter_map(|(k, v)| rest.find(v.as_str()).map(|at| (at, k, v.len())))
            .min_by_key(|(at, _, len)| (*at, std::cmp::Reverse(*len)));
        match next {
            Some((at, key, len)) => {
                if at > 0 {
                    pieces.push(Piece::Plain(rest[..at].to_string()));
                }
                pieces.push(Piece::Secret { secret: key.clone() });
                rest = &rest[at + len..];
            }
            None => break,
        }
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Plain(rest.to_string()));
    }
    pieces
}

fn seal_text(t: &RecipeText, secrets: &[(String, String)]) -> Vec<Part> {
    t.0.iter()
        .map(|s| match s {
            Segment::Text(text) => Part::Text(seal_str(text, secrets)),
            Segment::Slot(slot) => Part::Slot(*slot),
        })
        .collect()
}

impl SealedRecipe {
    pub(super) fn seal(recipe: &LocalRecipe, secrets: &[(String, String)]) -> SealedRecipe {
        SealedRecipe {
            program: seal_text(&recipe.program, secrets),
            args: recipe.args.iter().map(|a| seal_text(a, secrets)).collect(),
            readiness: recipe.readiness.clone(),
            protocol: recipe.protocol.clone(),
            packages: recipe.packages.iter().map(|p| seal_str(p, secrets)).collect(),
            env: recipe.env.iter().map(|(k, v)| (k.clone(), seal_text(v, secrets))).collect(),
            secret_env: recipe.secret_env.clone(),
        }
    }

    /// The recipe again, secrets taken from the record's `config`.
    pub(super) fn unseal(&self, config: &Map<String, Value>) -> Result<LocalRecipe> {
        let unseal_str = |pieces: &[Piece]| -> Result<String> {
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Plain(s) => out.push_str(s),
                    Piece::Secret { secret } => match config.get(secret) {
                        Some(v) => out.push_str(&text_of(v)),
                        None => {
                            return Err(Error::MissingSecret { path: STATE_FILE.into(), key: secret.clone() });
                        }
                    },
                }
            }
            Ok(out)
        };
        let unseal_text = |parts: &[Part]| -> Result<RecipeText> {
            let segments = parts
                .iter()
                .map(|p| match p {
                    Part::Text(pieces) => unseal_str(pieces).map(Segment::Text),
                    Part::Slot(s) => Ok(Segment::Slot(*s)),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RecipeText(segments))
        };
        Ok(LocalRecipe {
            program: unseal_text(&self.program)?,
            args: self.args.iter().map(|a| unseal_text(a)).collect::<Result<_>>()?,
            readiness: self.readiness.clone(),
            protocol: self.protocol.clone(),
            packages: self.packages.iter().map(|p| unseal_str(p)).collect::<Result<_>>()?,
            env: self.env.iter().map(|(k, v)| Ok((k.clone(), unseal_text(v)?))).collect::<Result<_>>()?,
            secret_env: self.secret_env.clone(),
        })
    }
}

/// `sha256:<hex>` of a manifest.
pub(super) fn digest(manifest: &Value) -> String {
    let bytes = serde_json::to_vec(manifest).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

// === Previous versions' files ===

#[derive(Debug, Deserialize)]
struct LegacyFile {
    #[serde(default)]
    deployments: BTreeMap<String, LegacyEntry>,
}

#[derive(Debug, Deserialize)]
struct LegacyEntry {
    record: DeploymentRecord,
    #[serde(default)]
    objects: Vec<LegacyObject>,
    workload: Option<LegacyWorkload>,
}

#[derive(Debug, Deserialize)]
struct LegacyObject {
    object: ObjectRef,
    manifest: Value,
}

#[derive(Debug, Deserialize)]
struct LegacyWorkload {
    recipe: LegacyRecipe,
    port: u16,
    #[serde(default)]
    pid: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct LegacyRecipe {
    program: LegacyText,
    #[serde(default)]
    args: Vec<LegacyText>,
    readiness: Readiness,
    protocol: String,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    env: Option<LegacyEnv>,
}

/// Recipe strings were plain (rendered with the port filled in), then segments.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LegacyText {
    Plain(String),
    Rendered(RecipeText),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LegacyEnv {
    Map(Map<String, Value>),
    Pairs(Vec<(String, LegacyText)>),
}

impl LegacyText {
    fn into_text(self) -> RecipeText {
        match self {
            LegacyText::Plain(s) => RecipeText::text(s),
            LegacyText::Rendered(t) => t,
        }
    }
}

impl LegacyEntry {
    fn convert(self) -> Entry {
        let secrets = secret_values(&self.record.config, &self.record.secret_keys);
        let run = self.record.status == Status::Deployed;
        let workload = self.workload.map(|w| {
            let env = match w.recipe.env {
                None => Vec::new(),
                Some(LegacyEnv::Map(m)) => m.into_iter().map(|(k, v)| (k, RecipeText::text(text_of(&v)))).collect(),
                Some(LegacyEnv::Pairs(p)) => p.into_iter().map(|(k, v)| (k, v.into_text())).collect(),
            };
            let recipe = LocalRecipe {
                program: w.recipe.program.into_text(),
                args: w.recipe.args.into_iter().map(LegacyText::into_text).collect(),
                readiness: w.recipe.readiness,
                protocol: w.recipe.protocol,
                packages: w.recipe.packages,
                env,
                secret_env: Vec::new(),
            };
            Workload {
                recipe: SealedRecipe::seal(&recipe, &secrets),
                port: w.port,
                process: None,
                run,
                legacy_pid: w.pid,
                config_hash: None,
                extras: Vec::new(),
            }
        });
        let objects =
            self.objects.into_iter().map(|o| StoredObject { digest: digest(&o.manifest), object: o.object }).collect();
        Entry { record: self.record, objects, workload, fresh: false }
    }
}

/// Reads the state file; `true` when it was in a previous version's format (rewrite it).
pub(super) fn load(path: &Path) -> Result<(StateFile, bool)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((StateFile::default(), false)),
        Err(e) => return Err(Error::Io { what: "read", path: path.into(), source: e }),
    };
    let corrupt = |source| Error::CorruptState { path: path.into(), source };
    let value: Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
    match value.get("format").map(Value::as_u64) {
        Some(Some(FORMAT)) => Ok((serde_json::from_value(value).map_err(corrupt)?, false)),
        Some(found) => {
            Err(Error::StateFormat { path: path.into(), found: found.unwrap_or(u64::MAX), supported: FORMAT })
        }
        None => {
            let legacy: LegacyFile = serde_json::from_value(value).map_err(corrupt)?;
            let deployments = legacy.deployments.into_iter().map(|(k, e)| (k, e.convert())).collect();
            Ok((StateFile { format: FORMAT, deployments, history: BTreeMap::new() }, true))
        }
    }
}

/// The in-memory state and the number of its last snapshot.
#[derive(Debug)]
pub(super) struct State {
    pub(super) file: StateFile,
    generation: u64,
}

/// Serialized state, numbered so a late writer never overwrites a newer file.
#[derive(Debug)]
pub(super) struct Snapshot {
    generation: u64,
    bytes: Vec<u8>,
}

impl State {
    pub(super) fn new(file: StateFile) -> Self {
        State { file, generation: 0 }
    }

    pub(super) fn snapshot(&mut self) -> Result<Snapshot> {
        self.generation += 1;
        Ok(Snapshot {
            generation: self.generation,
            bytes: serde_json::to_vec_pretty(&self.file).map_err(Error::Encode)?,
        })
    }
}

/// Writes snapshots to the state file, in order.
#[derive(Debug, Clone)]
pub(super) struct Store {
    path: PathBuf,
    written: Arc<Mutex<u64>>,
}

impl Store {
    pub(super) fn new(path: PathBuf) -> Self {
        Store { path, written: Arc::default() }
    }

    pub(super) async fn write(&self, snapshot: Snapshot) -> Result<()> {
        let path = self.path.clone();
        let written = self.written.clone();
        blocking(move || {
            let mut last = written.lock().unwrap_or_else(|e| e.into_inner());
            if snapshot.generation <= *last {
                return Ok(());
            }
            write_atomically(&path, &snapshot.bytes)?;
            *last = snapshot.generation;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use serde_json::json;

    fn text(s: &str) -> RecipeText {
        RecipeText::text(s)
    }

    #[test]
    fn secrets_are_stored_by_name_and_come_back_exactly() {
        let recipe = LocalRecipe {
            program: text("server"),
            args: vec![
                text("--requirepass"),
                text("s3cr3t-long"),
                RecipeText(vec![
                    Segment::Text("u:s3cr3t-long@".into()),
                    Segment::Slot(Slot::Port),
                    Segment::Text("".into()),
                ]),
            ],
            readiness: Readiness::Tcp,
            protocol: "redis".into(),
            packages: vec!["pkg --index-url https://t:s3cr3t-long@x".into()],
            env: vec![("PW".into(), text("s3cr3t-long"))],
            secret_env: vec![],
        };
        let config = json!({"password": "s3cr3t-long", "short": "s"}).as_object().unwrap().clone();
        let secrets = secret_values(&config, &["password".into(), "short".into(), "missing".into()]);
        assert_eq!(secrets[0].0, "password", "longest first");
        let sealed = SealedRecipe::seal(&recipe, &secrets);
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("s3cr3t-long"), "{stored}");
        assert_eq!(sealed.unseal(&config).unwrap(), recipe);
        assert!(matches!(sealed.unseal(&Map::new()), Err(Error::MissingSecret { .. })));
    }

    #[test]
    fn a_previous_versions_file_is_read_and_converted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        let old = json!({"deployments": {"default/redis/cache": {
            "record": {"id": {"namespace": "default", "module": "redis", "name": "cache"}, "version": "latest",
                       "config": {"name": "cache", "memory": "16mb"}, "endpoints": ["127.0.0.1:7001"],
                       "status": "deployed", "backend": "local", "updated_at": "2026-11-30T10:00:00Z"},
            "objects": [{"object": {"api_version": "v1", "kind": "Service", "name": "cache", "section": "modules", "file": "redis.yaml"},
                         "manifest": {"kind": "Service"}}],
            "workload": {"recipe": {"program": "redis-server", "args": ["--port", "7001"], "readiness": {"kind": "tcp"},
                                    "protocol": "redis", "env": {"A": "b"}}, "port": 7001, "pid": 4242}}}});
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let (file, converted) = load(&path).unwrap();
        assert!(converted);
        let e = &file.deployments["default/redis/cache"];
        let w = e.workload.as_ref().unwrap();
        assert_eq!((w.port, w.run, w.legacy_pid, &w.process), (7001, true, Some(4242), &None));
        let recipe = w.recipe.unseal(&e.record.config).unwrap();
        assert_eq!(recipe.args, vec![text("--port"), text("7001")]);
        assert_eq!(recipe.env, vec![("A".to_string(), text("b"))]);
        assert_eq!(e.objects[0].digest, digest(&json!({"kind": "Service"})));
    }

    /// A file of this format as written before extras were recorded: replica 0's identity only.
    fn file_without_extras() -> Value {
        json!({"format": FORMAT, "deployments": {"default/python-module/rng": {
            "record": {"id": {"namespace": "default", "module": "python-module", "name": "rng"}, "version": "latest",
                       "config": {"name": "rng", "module": "random", "replicas": 3},
                       "endpoints": ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"],
                       "status": "deployed", "backend": "local", "updated_at": "2026-12-01T10:00:00Z"},
            "objects": [],
            "workload": {"recipe": {"program": [{"slot": "python"}],
                                    "args": [[{"text": ["-m"]}], [{"text": ["jac_splice.server"]}], [{"text": ["--port"]}], [{"slot": "port"}]],
                                    "readiness": {"kind": "tcp"}, "protocol": "grpc"},
                         "port": 7001, "process": {"pid": 4242, "start_time": 987654, "boot_id": "b00t"}, "run": true}}}})
    }

    #[test]
    fn a_file_without_the_extras_identities_loads_with_none_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        std::fs::write(&path, serde_json::to_vec(&file_without_extras()).unwrap()).unwrap();
        let (file, converted) = load(&path).unwrap();
        assert!(!converted, "the same format: nothing to rewrite");
        let w = file.deployments["default/python-module/rng"].workload.as_ref().unwrap();
        assert_eq!(w.process.as_ref().map(|p| p.pid), Some(4242));
        assert_eq!(w.extras, vec![], "no extras to adopt: they start afresh");
    }

    #[tokio::test]
    async fn the_extras_identities_survive_a_state_file_round_trip_in_index_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        std::fs::write(&path, serde_json::to_vec(&file_without_extras()).unwrap()).unwrap();
        let (mut file, _) = load(&path).unwrap();
        let process = |pid| Identity { pid, start_time: 1000 + u64::from(pid), boot_id: "b00t".into() };
        let w = file.deployments.get_mut("default/python-module/rng").unwrap().workload.as_mut().unwrap();
        w.record_extra(ExtraProcess { index: 2, port: 7003, process: process(4244) });
        w.record_extra(ExtraProcess { index: 1, port: 7002, process: process(4243) });
        // A supervised restart of replica 2 replaces its identity, never adds a second record.
        w.record_extra(ExtraProcess { index: 2, port: 7003, process: process(4245) });
        let want = vec![
            ExtraProcess { index: 1, port: 7002, process: process(4243) },
            ExtraProcess { index: 2, port: 7003, process: process(4245) },
        ];
        assert_eq!(w.extras, want);

        let store = Store::new(path.clone());
        store.write(State::new(file).snapshot().unwrap()).await.unwrap();
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let extras = &on_disk["deployments"]["default/python-module/rng"]["workload"]["extras"];
        assert_eq!(
            extras[1],
            json!({"index": 2, "port": 7003, "process": {"pid": 4245, "start_time": 5245, "boot_id": "b00t"}})
        );
        let (again, converted) = load(&path).unwrap();
        assert!(!converted);
        let w = again.deployments["default/python-module/rng"].workload.as_ref().unwrap();
        assert_eq!(w.extras, want);
        assert_eq!(w.process.as_ref().map(|p| p.pid), Some(4242), "replica 0's record is untouched");

        // Without extras the key is left out: the file reads as it did before they were recorded.
        let mut none = again.clone();
        none.deployments.get_mut("default/python-module/rng").unwrap().workload.as_mut().unwrap().extras.clear();
        let text = serde_json::to_string(&none).unwrap();
        assert!(!text.contains("\"extras\""), "{text}");
    }

    #[test]
    fn a_replacing_entry_keeps_the_extras_recorded_now() {
        let (file, _) = {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(STATE_FILE);
            std::fs::write(&path, serde_json::to_vec(&file_without_extras()).unwrap()).unwrap();
            load(&path).unwrap()
        };
        let mut current = file.deployments["default/python-module/rng"].clone();
        let stale = current.clone();
        let x = ExtraProcess { index: 1, port: 7002, process: Identity { pid: 9, start_time: 9, boot_id: "b".into() } };
        current.workload.as_mut().unwrap().record_extra(x.clone());
        let mut replacing = stale;
        replacing.keep_extras_of(Some(&current));
        assert_eq!(replacing.workload.as_ref().unwrap().extras, vec![x]);
        replacing.keep_extras_of(None);
        assert_eq!(replacing.workload.as_ref().unwrap().extras, vec![]);
    }

    #[test]
    fn a_newer_format_or_garbage_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        std::fs::write(&path, br#"{"format": 9, "deployments": {}}"#).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("format 9"), "{e}");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(load(&path), Err(Error::CorruptState { .. })));
    }

    #[tokio::test]
    async fn snapshots_land_atomically_with_mode_0600_and_a_late_older_one_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        let store = Store::new(path.clone());
        let mut state = State::new(StateFile::default());
        let older = state.snapshot().unwrap();
        state.file.format = 77;
        let newer = state.snapshot().unwrap();
        store.write(newer).await.unwrap();
        store.write(older).await.unwrap();
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk["format"], 77);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!tmp.path().join("local-state.json.tmp").exists());
    }
}

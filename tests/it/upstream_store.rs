//! The original's template store works unchanged: every module/version dry-runs, and the legacy
//! renderer reads its placeholders as the original did and cannot be made to inject into it.
//!
//! The store is not part of this repository: the tests find it through `UPSTREAM_STORE` or
//! `../shared/reference/upstream-template-store` beside the crate, and skip (saying why) when it
//! is absent, unless `JAC_ORC_REQUIRE_UPSTREAM=1`. `legacy_store` covers the same renderer with
//! the project's own fixtures on every clone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::catalog::legacy::{is_legacy, render, scan, Error, Kind};
use jac_splice_orc::catalog::{Catalog, Format};
use jac_splice_orc::service::{DeploymentRequest, Service, Settings};
use serde_json::{json, Map, Value};

use crate::support::{upstream_store, yaml_docs};

/// A value whose newline and `---` would add a Secret if pasted into the text as is.
const EVIL: &str = "x\n---\napiVersion: v1\nkind: Secret";

fn service(catalog: Catalog, dir: &std::path::Path) -> Service {
    let backend = Arc::new(
        LocalBackend::open(LocalOptions {
            data_dir: dir.to_path_buf(),
            python: "python3".into(),
            ..Default::default()
        })
        .unwrap(),
    );
    Service::new(Arc::new(catalog), backend, Settings::default())
}

#[test]
fn every_module_and_version_of_the_original_store_dry_runs() {
    let Some(store) = upstream_store() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::directory_only(&store).unwrap(), tmp.path());
    let index = svc.catalog().index();
    assert_eq!(index.keys().cloned().collect::<Vec<_>>(), ["jac-cloud", "mongodb", "mongodb-cluster", "redis"]);
    let mut count = 0;
    for (module, versions) in &index {
        for version in versions {
            let t = svc.catalog().load(module, version).unwrap();
            assert_eq!(t.format, Format::Legacy, "{module}/{version}");
            for config in
                [Map::new(), json!({"name": "testing-db", "namespace": "testing"}).as_object().unwrap().clone()]
            {
                let req = DeploymentRequest { module: module.clone(), version: Some(version.clone()), config };
                let dry = crate::support::dry_run_now(&svc, &req).unwrap_or_else(|e| panic!("{module}/{version}: {e}"));
                assert!(!dry.modules.is_empty());
                for (name, text) in dry.dependencies.iter().flatten().chain(&dry.modules) {
                    let docs = yaml_docs(text);
                    assert!(!docs.is_empty(), "{module}/{version}/{name}");
                    assert!(
                        !text.contains("$g{") && !text.contains("$a{") && !text.contains("$d{"),
                        "{module}/{version}/{name}"
                    );
                }
                assert!(!dry.objects.is_empty());
                count += 1;
            }
        }
    }
    assert_eq!(count, 16);
}

#[test]
fn the_seed_example_against_the_original_store_reports_upstream_defaults() {
    let Some(store) = upstream_store() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::directory_only(store).unwrap(), tmp.path());
    let req = DeploymentRequest {
        module: "mongodb".into(),
        version: None,
        config: json!({"name": "testing-db", "namespace": "testing"}).as_object().unwrap().clone(),
    };
    let dry = crate::support::dry_run_now(&svc, &req).unwrap();
    let p = &dry.placeholders;
    assert_eq!(p["name"].current, json!("testing-db"));
    assert_eq!(p["name"].default, json!("jac-mongodb"));
    assert_eq!(p["namespace"].current, json!("testing"));
    assert_eq!(p["replicaset"].default, json!(1));
    assert_eq!(p["password"].default, json!("12345678"));
    let deps: Vec<_> = dry.dependencies.unwrap().into_keys().collect();
    assert_eq!(deps, ["custom_resource_definition.yaml", "operator.yaml"]);
    let docs = yaml_docs(dry.modules.values().next().unwrap());
    assert_eq!(docs[0]["metadata"]["name"], Value::from("testing-db"));
    assert_eq!(docs[1]["metadata"]["name"], Value::from("my-user-password"));
}

#[test]
fn a_directory_overrides_builtin_versions_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let v = store.path().join("redis/latest");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(
        v.join("redis.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: $g{name:\"overridden\"}\n  namespace: $g{namespace}\n",
    )
    .unwrap();
    let svc = service(Catalog::with_override(store.path()).unwrap(), tmp.path());
    let dry =
        crate::support::dry_run_now(&svc, &DeploymentRequest { module: "redis".into(), ..Default::default() }).unwrap();
    assert_eq!(dry.name, "overridden");
    let dry = crate::support::dry_run_now(
        &svc,
        &DeploymentRequest { module: "redis".into(), version: Some("7.4.2".into()), ..Default::default() },
    )
    .unwrap();
    assert_eq!(dry.name, "jac-redis");
    assert!(svc.catalog().index().contains_key("mongodb"));
}

// === the legacy renderer on the store's files ===

fn vals(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Every document of `s`, empty ones included (their count must not change either).
fn docs(s: &str) -> Vec<serde_norway::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(s).map(|d| serde_norway::Value::deserialize(d).expect("valid yaml")).collect()
}

fn r(text: &str, v: Value) -> String {
    render(text, &vals(v)).expect("render")
}

fn get<'a>(v: &'a serde_norway::Value, key: &str) -> &'a serde_norway::Value {
    v.get(key).unwrap_or_else(|| panic!("missing key {key} in {v:?}"))
}

fn ystr(s: &str) -> serde_norway::Value {
    serde_norway::Value::String(s.to_owned())
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    assert!(depth < 8, "store too deep");
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read store dir").map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out, depth + 1);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

fn read(store: &Path, rel: &str) -> String {
    std::fs::read_to_string(store.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn store_renders_to_valid_yaml() {
    let Some(store) = upstream_store() else { return };
    let mut files = Vec::new();
    yaml_files(&store, &mut files, 0);
    assert!(files.len() >= 22, "found {} files", files.len());
    let example = json!({"name": "testing-db", "namespace": "testing"});
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let plain = render(&text, &Map::new()).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        let ex = r(&text, example.clone());
        assert!(!is_legacy(&plain) && !is_legacy(&ex), "{f:?}");
        let (a, b) = (docs(&plain), docs(&ex));
        assert!(!a.is_empty(), "{f:?}");
        assert_eq!(a.len(), b.len(), "{f:?}");
        if scan(&text).expect("scan").iter().any(|p| p.name == "namespace") {
            assert!(ex.contains("namespace: testing\n"), "{f:?}");
        }
    }
}

fn defaults(store: &Path, rel: &str) -> Vec<(String, Kind, Value)> {
    let mut v: Vec<_> =
        scan(&read(store, rel)).expect("scan").into_iter().map(|f| (f.name, f.kind, f.default)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn g(n: &str, d: Value) -> (String, Kind, Value) {
    (n.to_owned(), Kind::Generic, d)
}

#[test]
fn store_scan_matches_reference_tables() {
    let Some(store) = upstream_store() else { return };
    let defaults = |rel: &str| defaults(&store, rel);
    let mongo = vec![
        g("database", json!("jaseci")),
        g("name", json!("jac-mongodb")),
        g("namespace", json!("")),
        g("password", json!("12345678")),
        g("replicaset", json!(1)),
        g("username", json!("my-user")),
    ];
    for m in ["mongodb", "mongodb-cluster"] {
        for v in ["latest", "6.0.5"] {
            assert_eq!(defaults(&format!("{m}/{v}/mongodb.yaml")), mongo, "{m}/{v}");
            assert!(defaults(&format!("{m}/{v}/dependencies/custom_resource_definition.yaml")).is_empty());
        }
    }
    for v in ["latest", "6.0.5"] {
        assert_eq!(defaults(&format!("mongodb/{v}/dependencies/operator.yaml")), vec![g("namespace", json!(""))]);
        assert!(defaults(&format!("mongodb-cluster/{v}/dependencies/operator.yaml")).is_empty());
    }
    let redis = vec![
        g("cpu", json!(0.2)),
        g("memory", json!("1000mb")),
        g("name", json!("jac-redis")),
        g("namespace", json!("")),
    ];
    for v in ["latest", "7.4.2"] {
        assert_eq!(defaults(&format!("redis/{v}/redis.yaml")), redis);
    }
    let mut cloud = vec![
        (
            "args".to_owned(),
            Kind::Array,
            json!([
                "mkdir app && cd app",
                "apt-get update && apt-get install -y --no-install-recommends git build-essential",
                "git clone --depth 1 https://github.com/Jaseci-Labs/littleX.git .",
                "pip install -r ./littleX_BE/requirements.txt openai",
                "jac serve ./littleX_BE/littleX.jac"
            ]),
        ),
        g("cpu-limit", json!(1)),
        g("cpu-request", json!(0.5)),
        ("env-vars".to_owned(), Kind::Dict, json!({})),
        g("image", json!("python:3.13-slim")),
        g("memory-limit", json!("2000Mi")),
        g("memory-request", json!("1500Mi")),
        g("name", json!("jac-cloud")),
        g("namespace", json!("")),
        g("readiness-failure-threshold", json!(5)),
        g("readiness-initial-delay", json!(10)),
        g("readiness-path", json!("/healthz")),
        g("readiness-period", json!(10)),
        g("readiness-port", json!(8000)),
        g("readiness-success-threshold", json!(1)),
        g("readiness-timeout", json!(5)),
        g("replicas", json!(1)),
    ];
    cloud.sort_by(|a, b| a.0.cmp(&b.0));
    for v in ["latest", "0.1.24"] {
        assert_eq!(defaults(&format!("jac-cloud/{v}/jac-cloud.yml")), cloud, "{v}");
    }
    assert!(defaults("jac-orc.yaml").is_empty() && defaults("jac-orc-cluster-wide.yaml").is_empty());
}

/// Replaces `marker` by `with` in every string (and key) of a YAML tree.
fn subst(v: &serde_norway::Value, marker: &str, with: &str) -> serde_norway::Value {
    use serde_norway::Value as Y;
    match v {
        Y::String(s) => Y::String(s.replace(marker, with)),
        Y::Sequence(s) => Y::Sequence(s.iter().map(|x| subst(x, marker, with)).collect()),
        Y::Mapping(m) => Y::Mapping(m.iter().map(|(k, x)| (subst(k, marker, with), subst(x, marker, with))).collect()),
        Y::Tagged(t) => Y::Tagged(Box::new(serde_norway::value::TaggedValue {
            tag: t.tag.clone(),
            value: subst(&t.value, marker, with),
        })),
        other => other.clone(),
    }
}

/// Injection proof: for every string placeholder of the real templates, rendering a hostile
/// value gives exactly the documents of a harmless rendering with the value in its place —
/// or `Unsafe` for the placeholders that are glued to other text.
#[test]
fn store_injection_is_impossible() {
    let Some(store) = upstream_store() else { return };
    const MARK: &str = "zzmarkzz";
    let cases = [
        ("jac-cloud/latest/jac-cloud.yml", &["name"][..]),
        ("jac-cloud/0.1.24/jac-cloud.yml", &["name"][..]),
        ("redis/latest/redis.yaml", &[][..]),
        ("mongodb/latest/mongodb.yaml", &["username"][..]),
        ("mongodb-cluster/latest/mongodb.yaml", &["username"][..]),
        ("mongodb/latest/dependencies/operator.yaml", &[][..]),
    ];
    let hostile =
        [EVIL, "x\n", "a: b", "it's \"q\" #c", "- a", "{a: b}", "*alias", "|\n  x", "\\n", "", "\u{1}\u{7f}\u{85}"];
    let mut checked = 0;
    for (file, glued) in cases {
        let text = read(&store, file);
        for p in scan(&text).expect("scan") {
            if p.kind != Kind::Generic || !p.default.is_string() {
                continue;
            }
            let base = render(&text, &vals(json!({ p.name.clone(): MARK })));
            if glued.contains(&p.name.as_str()) {
                let e = render(&text, &vals(json!({ p.name.clone(): EVIL })));
                assert!(matches!(e, Err(Error::Unsafe { ref name, .. }) if *name == p.name), "{file} {}", p.name);
                continue;
            }
            let base = docs(&base.expect("base render"));
            for h in hostile {
                let out = match render(&text, &vals(json!({ p.name.clone(): h }))) {
                    Ok(out) => out,
                    // Control characters have no literal form in a block scalar: refused.
                    Err(Error::Unsafe { name, .. }) if h.starts_with('\u{1}') && name == p.name => continue,
                    Err(e) => panic!("{file} {} = {h:?}: {e}", p.name),
                };
                let got = docs(&out);
                let want: Vec<_> = base.iter().map(|d| subst(d, MARK, h)).collect();
                assert_eq!(got, want, "{file} {} = {h:?}:\n{out}", p.name);
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "only {checked} renders checked");
}

#[test]
fn store_jac_cloud_args_and_env_vars_round_trip() {
    let Some(store) = upstream_store() else { return };
    let text = read(&store, "jac-cloud/latest/jac-cloud.yml");
    let args = vec![EVIL.to_owned(), "echo 'a: b' # c".to_owned(), "- x".to_owned()];
    let env = json!({"DATABASE_HOST": EVIL, "REDIS_HOST": "redis://r/0", "k: v": "x"});
    let out = r(&text, json!({"args": args, "env-vars": env}));
    let d = docs(&out);
    assert_eq!(d.len(), 3, "{out}");
    let sd = get(&d[1], "stringData");
    assert_eq!(sd.as_mapping().map(|m| m.len()), Some(3));
    assert_eq!(get(sd, "DATABASE_HOST"), &ystr(EVIL));
    assert_eq!(get(sd, "k: v"), &ystr("x"));
    let c = get(get(get(get(&d[2], "spec"), "template"), "spec"), "containers");
    let script = c.get(0).and_then(|c| c.get("args")).and_then(|a| a.get(0));
    assert_eq!(script, Some(&ystr(&format!("{}\n", args.join("\n")))));
    assert!(c.get(0).and_then(|c| c.get("readinessProbe")).is_some());
}

//! The legacy renderer on the project's own `$g`/`$a`/`$d` store (`tests/fixtures/legacy-store`),
//! through the public interfaces: the catalog reading it as a directory store or as an override of
//! the built-in catalog, the service's dry run, and the real server over gRPC and REST. Unlike
//! `upstream_store`, these run on every clone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::catalog::{Catalog, Format, Type};
use jac_splice_orc::pb;
use jac_splice_orc::service::{DeploymentRequest, DryRunView, Service, Settings};
use serde_json::{json, Map, Value};
use tonic::Code;

use crate::support::{struct_of, within, yaml_docs, Options, TestServer};

/// A value whose newline and `---` would add a Secret if pasted into the text as is.
const EVIL: &str = "x\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pwned";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-store")
}

/// A service over `catalog` with a local backend it never uses (dry runs touch nothing).
fn service(catalog: Catalog, dir: &Path) -> Service {
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

fn dry_run(version: &str, config: Value) -> DryRunView {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::directory_only(fixtures()).unwrap(), tmp.path());
    let req = DeploymentRequest {
        module: "guestbook".into(),
        version: Some(version.into()),
        config: config.as_object().unwrap().clone(),
    };
    crate::support::dry_run_now(&svc, &req).unwrap_or_else(|e| panic!("guestbook/{version}: {e}"))
}

/// The documents of the one module file of a dry run.
fn module_docs(dry: &DryRunView) -> Vec<Value> {
    assert_eq!(dry.modules.len(), 1);
    yaml_docs(dry.modules.values().next().unwrap())
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_fixture_store_is_legacy_and_declares_each_placeholder_once_with_the_module_default() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::directory_only(fixtures()).unwrap(), tmp.path());
    let want: BTreeMap<String, BTreeSet<String>> =
        [("guestbook".to_string(), ["1.0.0".to_string(), "latest".to_string()].into())].into();
    assert_eq!(svc.catalog().index(), want);
    let t = svc.catalog().load("guestbook", "latest").unwrap();
    assert_eq!(t.format, Format::Legacy);
    assert!(t.has_dependencies() && !t.has_local_recipe());
    let specs: Vec<(&str, Type, &Value)> = t.specs.iter().map(|s| (s.name.as_str(), s.ty, &s.default)).collect();
    // Dependencies first, then the module folder, each in order of first appearance; `name` is
    // declared by both and keeps the module folder's default. extras/ and NOTES.txt declare nothing.
    let expected = [
        ("name", Type::String, json!("guestbook")),
        ("namespace", Type::String, json!("")),
        ("env", Type::Map, json!({"LOG_LEVEL": "info", "GREETING": "hello, world"})),
        ("motd", Type::String, json!("Welcome, it's open")),
        ("title", Type::String, json!("Guestbook")),
        ("tag", Type::String, json!("web")),
        ("port", Type::Quantity, json!(8080)),
        ("host", Type::String, json!("guestbook.local")),
        ("locations", Type::List, json!(["location / { root /srv; }", "location /healthz { return 200; }"])),
        ("replicas", Type::Quantity, json!(2)),
        ("registry", Type::String, json!("docker.io/library")),
        ("image", Type::String, json!("nginx:1.27")),
        ("args", Type::List, json!(["--port=8080", "--access-log"])),
        ("debug", Type::Boolean, json!(false)),
        ("cpu", Type::Quantity, json!(0.5)),
        ("memory", Type::String, json!("256Mi")),
        ("readiness-path", Type::String, json!("/healthz")),
    ];
    let expected: Vec<(&str, Type, &Value)> = expected.iter().map(|(n, t, d)| (*n, *t, d)).collect();
    assert_eq!(specs, expected);
}

#[test]
fn the_fixture_store_dry_runs_with_its_defaults_in_every_yaml_context() {
    let dry = dry_run("latest", json!({}));
    assert_eq!((dry.namespace.as_str(), dry.name.as_str()), ("default", "guestbook"));
    let deps: Vec<&str> = dry.dependencies.iter().flatten().map(|(name, _)| name.as_str()).collect();
    assert_eq!(deps, ["priority-class.yaml", "service-account.yaml"]);
    let static_dep = std::fs::read_to_string(fixtures().join("guestbook/latest/dependencies/priority-class.yaml"));
    assert_eq!(
        dry.dependencies.as_ref().unwrap()["priority-class.yaml"],
        static_dep.unwrap(),
        "no placeholders: text unchanged"
    );
    assert_eq!(dry.modules.keys().map(String::as_str).collect::<Vec<_>>(), ["guestbook.yaml"]);
    let objects: Vec<(&str, &str, Option<&str>)> =
        dry.objects.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.namespace.as_deref())).collect();
    assert_eq!(
        objects,
        [
            ("PriorityClass", "guestbook-low", None),
            ("ServiceAccount", "guestbook-sa", Some("default")),
            ("Secret", "guestbook-env", Some("default")),
            ("ConfigMap", "guestbook-config", Some("default")),
            ("Deployment", "guestbook", Some("default")),
        ],
        "dependencies first; extras/ never"
    );
    let text = &dry.modules["guestbook.yaml"];
    assert!(text.starts_with("# Guestbook guestbook: the placeholder"), "{text}");
    let docs = module_docs(&dry);
    assert_eq!(docs[0]["stringData"], json!({"LOG_LEVEL": "info", "GREETING": "hello, world"}));
    let data = &docs[1]["data"];
    assert_eq!(data["motd"], "Welcome, it's open");
    assert_eq!(data["title"], "Guestbook");
    assert_eq!(data["tags"], json!(["web", "guestbook"]));
    assert_eq!(
        data["nginx.conf"],
        "server {\n  listen 8080;\n  server_name guestbook.local;\n  location / { root /srv; }\n  \
         location /healthz { return 200; }\n}\n"
    );
    let deployment = &docs[2];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "guestbook-sa");
    let c = container(deployment);
    assert_eq!(c["image"], "docker.io/library/nginx:1.27");
    assert_eq!(c["args"], json!(["--port=8080", "--access-log"]));
    assert_eq!(c["env"][0]["value"], "false", "a boolean inside quotes stays a string");
    assert_eq!(c["resources"]["limits"], json!({"cpu": 0.5, "memory": "256Mi"}));
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/healthz", "port": 8080}));
}

#[test]
fn every_placeholder_kind_takes_overrides_and_hostile_values_stay_values() {
    let env = json!({"K": EVIL, "weird key: x": "v", "n": 1});
    let config = json!({
        "name": "shop", "namespace": "prod", "env": env, "motd": EVIL, "title": "say \"hi\"\n---",
        "tag": "a, b]", "host": EVIL, "locations": ["location /x { return 204; }", EVIL], "replicas": 3,
        "image": "nginx:1.28", "args": [EVIL, "--flag", "9090"], "debug": true, "cpu": "250m", "memory": "1Gi",
    });
    let dry = dry_run("latest", config);
    assert_eq!((dry.namespace.as_str(), dry.name.as_str()), ("prod", "shop"));
    let docs = module_docs(&dry);
    assert_eq!(docs.len(), 3, "no value added a document");
    let names: Vec<&str> = dry.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["guestbook-low", "shop-sa", "shop-env", "shop-config", "shop"]);
    assert_eq!(docs[0]["stringData"], env);
    let data = &docs[1]["data"];
    assert_eq!(data.as_object().unwrap().len(), 4, "no value added a key");
    assert_eq!((&data["motd"], &data["title"]), (&json!(EVIL), &json!("say \"hi\"\n---")));
    assert_eq!(data["tags"], json!(["a, b]", "guestbook"]));
    let conf = data["nginx.conf"].as_str().unwrap();
    // Continuation lines of a `$g` value are indented to the block's content, so the value reads
    // back verbatim; an `$a` element's lines take its own line's indentation.
    let evil_element = EVIL.replace('\n', "\n  ");
    assert_eq!(
        conf,
        format!(
            "server {{\n  listen 8080;\n  server_name {EVIL};\n  location /x {{ return 204; }}\n  \
             {evil_element}\n}}\n"
        )
    );
    let c = container(&docs[2]);
    assert_eq!(docs[2]["spec"]["replicas"], 3);
    assert_eq!(c["image"], "docker.io/library/nginx:1.28");
    // A plain-safe string is written bare, as upstream did (so "3" for replicas stays the
    // integer 3): in a sequence, "9090" reads back as a number.
    assert_eq!(c["args"], json!([EVIL, "--flag", 9090]));
    assert_eq!(c["env"][0]["value"], "true");
    assert_eq!(c["resources"]["limits"], json!({"cpu": "250m", "memory": "1Gi"}));
}

#[test]
fn an_older_version_renders_yml_files_multiline_defaults_and_block_scripts() {
    let dry = dry_run("1.0.0", json!({}));
    assert!(dry.dependencies.is_none(), "no dependencies/ folder");
    assert_eq!(dry.modules.keys().map(String::as_str).collect::<Vec<_>>(), ["guestbook.yml"]);
    let docs = module_docs(&dry);
    assert_eq!(docs[0]["metadata"]["name"], "guestbook-v1-settings");
    assert_eq!(docs[0]["data"], json!({"mode": "classic", "page-size": "20"}));
    let c = container(&docs[1]);
    assert_eq!(c["args"], json!(["cd /srv\npython -m http.server $PORT\n"]));
    assert_eq!(c["env"][0], json!({"name": "PORT", "value": "8000"}));

    let script = ["echo 'a: b' # not a comment", "  indented", EVIL];
    let dry = dry_run("1.0.0", json!({"script": script, "settings": {"mode": EVIL}, "port": 9000}));
    let docs = module_docs(&dry);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["data"], json!({"mode": EVIL}));
    let c = container(&docs[1]);
    assert_eq!(c["args"], json!([format!("{}\n", script.join("\n"))]));
    assert_eq!(c["env"][0]["value"], "9000");
}

#[test]
fn the_fixture_store_overrides_the_builtin_catalog_without_hiding_it() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::with_override(fixtures()).unwrap(), tmp.path());
    let index = svc.catalog().index();
    for module in ["guestbook", "redis", "mongodb", "jac-cloud", "python-module"] {
        assert!(index.contains_key(module), "{module} missing: {index:?}");
    }
    assert_eq!(svc.catalog().load("guestbook", "latest").unwrap().format, Format::Legacy);
    assert_eq!(svc.catalog().load("redis", "latest").unwrap().format, Format::Native);
    let req = DeploymentRequest { module: "guestbook".into(), config: Map::new(), ..Default::default() };
    let dry = crate::support::dry_run_now(&svc, &req).unwrap();
    assert_eq!((dry.version.as_str(), dry.objects.len()), ("latest", 5));
}

fn fixture_server() -> Options {
    Options { catalog: Some(Catalog::directory_only(fixtures()).unwrap()), ..Default::default() }
}

#[tokio::test]
async fn the_fixture_store_dry_runs_over_grpc_and_rest() {
    let server = TestServer::start_with(fixture_server()).await;
    let mut c = server.grpc().await;
    let req = pb::DryRunRequest {
        module: "guestbook".into(),
        version: String::new(),
        config: Some(struct_of(json!({"name": "shop", "args": ["--port=9090"], "env": {"K": EVIL}}))),
    };
    let r = within(c.dry_run(req)).await.unwrap().into_inner();
    assert!(r.has_dependencies);
    let mut deps: Vec<_> = r.dependencies.keys().cloned().collect();
    deps.sort();
    assert_eq!(deps, ["priority-class.yaml", "service-account.yaml"]);
    assert_eq!(r.modules.keys().collect::<Vec<_>>(), ["guestbook.yaml"]);
    let docs = yaml_docs(&r.modules["guestbook.yaml"]);
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0]["stringData"], json!({"K": EVIL}));
    assert_eq!(container(&docs[2])["args"], json!(["--port=9090"]));
    let kinds: Vec<_> = r.objects.iter().map(|o| format!("{}/{}", o.kind, o.name)).collect();
    assert_eq!(
        kinds,
        [
            "PriorityClass/guestbook-low",
            "ServiceAccount/shop-sa",
            "Secret/shop-env",
            "ConfigMap/shop-config",
            "Deployment/shop"
        ]
    );
    assert!(!r.placeholders.contains_key("extra-host"));

    let url = server.url();
    let body: Value = within(
        server
            .http()
            .post(format!("{url}/deployment/dry_run"))
            .json(&json!({"module": "guestbook", "version": "1.0.0", "config": {"script": ["echo hi"]}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["dependencies"], Value::Null);
    assert_eq!(body["placeholders"]["script"]["type"], "list");
    assert_eq!(body["placeholders"]["script"]["default"], json!(["cd /srv", "python -m http.server $PORT"]));
    assert_eq!(body["placeholders"]["script"]["current"], json!(["echo hi"]));
    assert_eq!(body["placeholders"]["settings"]["type"], "map");
    let docs = yaml_docs(body["modules"]["guestbook.yml"].as_str().unwrap());
    assert_eq!(container(&docs[1])["args"], json!(["echo hi\n"]));

    let templates: Value =
        within(server.http().get(format!("{url}/templates")).send()).await.unwrap().json().await.unwrap();
    let versions = templates[0]["versions"].as_array().unwrap();
    assert_eq!(templates[0]["module"], "guestbook");
    assert_eq!(versions.iter().map(|v| v["version"].as_str().unwrap()).collect::<Vec<_>>(), ["1.0.0", "latest"]);
    assert!(versions.iter().all(|v| v["format"] == "legacy"));
    assert!(!versions[1]["placeholders"].as_array().unwrap().contains(&json!("extra-host")));
    server.stop().await;
}

#[tokio::test]
async fn unsafe_or_misshapen_values_are_invalid_arguments_naming_the_placeholder() {
    let server = TestServer::start_with(fixture_server()).await;
    let mut c = server.grpc().await;
    // `registry` is glued to `/image`: a value with a space cannot be placed without quoting the
    // whole scalar, which would change the neighbour's text, so it is refused.
    let req = pb::DryRunRequest {
        module: "guestbook".into(),
        version: "latest".into(),
        config: Some(struct_of(json!({"registry": "my registry"}))),
    };
    let s = within(c.dry_run(req)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("registry") && s.message().contains("guestbook.yaml"), "{}", s.message());

    let url = format!("{}/deployment/dry_run", server.url());
    for (config, field, expected) in [
        (json!({"registry": EVIL}), "config.registry", "placed safely"),
        (json!({"args": "--port=9090"}), "config.args", "list"),
        (json!({"env": ["K=v"]}), "config.env", "map"),
        (json!({"debug": "yes"}), "config.debug", "boolean"),
    ] {
        let r = within(server.http().post(&url).json(&json!({"module": "guestbook", "config": config})).send())
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{config}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
        assert!(body["detail"].as_str().unwrap().contains(expected), "{body}");
    }
    server.stop().await;
}

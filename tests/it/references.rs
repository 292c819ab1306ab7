//! Deployments wired by their outputs on the local backend (issue 11 item 3): a secret output
//! reaches the referencing process through the environment and never as cleartext in its record
//! or objects; the referenced deployment lists its dependents and refuses to go while they exist
//! (gRPC FailedPrecondition, REST 412) unless `force_referenced`; bad references are refused
//! naming the placeholder, changing nothing; a redis url wires a jac-cloud dry run, also from the
//! CLI's `@MODULE/NAME.OUTPUT`.
//!
//! The store beside the built-in catalog has `vault` (redis-server behind a generated password,
//! with a Secret output and a url composed with it) and `consumer` (a Python process writing its
//! REDIS_URL to a file; a Deployment whose env takes it; a ConfigMap whose `note` cannot take a
//! secret).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb::{self, deploy_event::Event};
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::cli::{ran, JacOrc};
use crate::support::{redis_auth, redis_available, struct_of, within, yaml_docs, Options, TestServer};

const CONSUMER: &str = r#"import os, socket, sys
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(os.environ.get("REDIS_URL", "") + "\n" + os.environ.get("JAC_ORC_REF_REDIS_URL_0", "(undefined)"))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.listen(8)
while True:
    s.accept()[0].close()
"#;

fn write(dir: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The test store (see the module docs).
fn store(root: &Path) {
    write(
        &root.join("vault/latest"),
        &[
            (
                "placeholders.yaml",
                r#"placeholders:
  name: {type: string, default: vault}
  namespace: {type: string, default: ""}
  password: {type: string, secret: true}
outputs:
  password: {secret: {placeholder: password, name: "{{name}}", key: password}}
  url:
    value: "redis://:{{password}}@{{name}}.{{namespace}}.svc.cluster.local:6379"
    local: "redis://:{{password}}@{{local.host}}:{{local.port}}"
"#
                .into(),
            ),
            (
                "vault.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\nstringData:\n  password: {{password}}\n".into(),
            ),
            (
                "local.yaml",
                "program: redis-server\nargs: [\"--port\", \"{{local.port}}\", \"--bind\", \"{{local.host}}\", \"--requirepass\", \"{{password}}\", \"--save\", \"\", \"--appendonly\", \"no\", \"--dir\", \"{{local.data_dir}}\"]\nreadiness: {kind: tcp}\nprotocol: redis\n".into(),
            ),
        ],
    );
    let local = json!({
        "program": "{{local.python}}",
        "args": ["-c", CONSUMER, "{{out}}", "{{local.host}}", "{{local.port}}"],
        "readiness": {"kind": "tcp"},
        "protocol": "tcp",
        "env": {"REDIS_URL": "{{redis-url}}"},
    });
    write(
        &root.join("consumer/latest"),
        &[
            (
                "placeholders.yaml",
                "placeholders:\n  name: {type: string, default: consumer}\n  namespace: {type: string, default: \"\"}\n  redis-url: {type: string, default: \"\"}\n  note: {type: string, default: \"\"}\n  out: {type: string, default: /dev/null}\n".into(),
            ),
            (
                "consumer.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: busybox\n          env:\n            - name: REDIS_URL\n              value: {{redis-url}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\ndata:\n  note: {{note}}\n".into(),
            ),
            ("local.yaml", local.to_string()),
        ],
    );
}

struct Wired {
    server: TestServer,
    data: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start() -> Wired {
    let (templates, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    store(templates.path());
    let server = TestServer::start_with(Options {
        catalog: Some(Catalog::with_override(templates.path()).unwrap()),
        data_dir: Some(data.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    Wired { server, data: data.path().to_path_buf(), _dirs: (templates, data) }
}

async fn deploy(c: &mut crate::support::Grpc, module: &str, config: Value) -> Result<pb::Deployment, tonic::Status> {
    let req = pb::DeployRequest { module: module.into(), config: Some(struct_of(config)), ..Default::default() };
    let mut stream = within(c.deploy(req)).await?.into_inner();
    let mut last = None;
    while let Some(item) = within(stream.next()).await {
        if let Event::Summary(s) = item?.event.expect("an event") {
            last = s.deployment;
        }
    }
    Ok(last.expect("a summary"))
}

async fn get(c: &mut crate::support::Grpc, module: &str, name: &str) -> Result<pb::Deployment, tonic::Status> {
    let req = pb::GetDeploymentRequest { namespace: "default".into(), module: module.into(), name: name.into() };
    Ok(within(c.get_deployment(req)).await?.into_inner())
}

fn state(data: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(data.join("local-state.json")).unwrap();
    let value = serde_json::from_str(&text).unwrap();
    (text, value)
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_output_reaches_the_referencing_process_and_is_never_cleartext_in_its_record() {
    assert!(redis_available(), "redis-server must be installed (the test command installs it)");
    let w = start().await;
    let mut c = w.server.grpc().await;
    let vault = deploy(&mut c, "vault", json!({"name": "v"})).await.unwrap();
    let endpoint = vault.endpoints[0].clone();
    let password = state(&w.data).1["deployments"]["default/vault/v"]["record"]["config"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(redis_auth(&endpoint, &password).await, "+OK");

    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("env.txt");
    let reference = json!({"from": "vault/v", "output": "url"});
    let consumer = json!({"name": "c", "redis-url": reference, "out": out.display().to_string()});
    deploy(&mut c, "consumer", consumer.clone()).await.unwrap();

    // The process got the url composed with the password, as the kubelet composes $(VAR).
    let seen = within(async {
        loop {
            match std::fs::read_to_string(&out) {
                Ok(text) => break text,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(seen, format!("redis://:{password}@{endpoint}\n{password}"));

    // Its record keeps the reference, not the value; the password is stored once (the vault's).
    let got = get(&mut c, "consumer", "c").await.unwrap();
    let config = jac_splice_orc::api::convert::from_struct(got.config.as_ref().unwrap());
    assert_eq!(config["redis-url"], reference);
    let (text, _) = state(&w.data);
    assert_eq!(text.matches(&password).count(), 1, "the secret is stored once:\n{text}");
    for file in files(&w.data).iter().filter(|f| !f.ends_with("local-state.json")) {
        let bytes = std::fs::read(file).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&password), "{} holds the password", file.display());
    }
    // The Deployment in the object store takes it as Kubernetes would: a secretKeyRef var first.
    let object = files(&w.data).into_iter().find(|f| f.ends_with("deployment.apps.default.c.json")).expect("stored");
    let manifest: Value = serde_json::from_slice(&std::fs::read(object).unwrap()).unwrap();
    let env = &manifest["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env,
        &json!([
            {"name": "JAC_ORC_REF_REDIS_URL_0", "valueFrom": {"secretKeyRef": {"name": "v", "key": "password"}}},
            {"name": "REDIS_URL", "value": format!("redis://:$(JAC_ORC_REF_REDIS_URL_0)@{endpoint}")},
        ])
    );

    // The vault lists its dependent and refuses to go: gRPC, REST, CLI.
    assert_eq!(get(&mut c, "vault", "v").await.unwrap().dependents, ["consumer/c"]);
    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    let listed = list.deployments.iter().find(|d| d.name == "v").unwrap();
    assert_eq!(listed.dependents, ["consumer/c"]);
    let undeploy = pb::UndeployRequest {
        namespace: "default".into(),
        module: "vault".into(),
        name: "v".into(),
        ..Default::default()
    };
    let err = within(c.undeploy(undeploy.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("consumer/c") && err.message().contains("force_referenced"), "{err:?}");
    let http = w.server.http();
    let url = format!("{}/deployment/default/vault/v", w.server.url());
    let r = within(http.delete(&url).send()).await.unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("consumer/c"), "{body}");
    assert_eq!(body["reason"], "DEPLOYMENT_REFERENCED", "{body}");
    let shown = ran(JacOrc::on(&w.server, &["get", "vault", "v", "-o", "json"])).json();
    assert_eq!(shown["dependents"], json!(["consumer/c"]));
    let refused = ran(JacOrc::on(&w.server, &["undeploy", "vault", "v"]));
    assert!(refused.err().contains("consumer/c"), "{refused:?}");
    assert_eq!(redis_auth(&endpoint, &password).await, "+OK", "nothing was undeployed");
    // `force` (field managers) is not `force_referenced`.
    let r = within(http.delete(format!("{url}?force=true")).send()).await.unwrap();
    assert_eq!(r.status(), 412);

    let r = within(http.delete(format!("{url}?force_referenced=true")).send()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(get(&mut c, "vault", "v").await.unwrap_err().code(), Code::NotFound);
    // The dependent keeps what it was given.
    assert_eq!(get(&mut c, "consumer", "c").await.unwrap().status(), pb::DeploymentStatus::Deployed);
    let forced = ran(JacOrc::on(&w.server, &["undeploy", "consumer", "c", "--force-referenced"]));
    forced.out();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_references_are_refused_naming_the_placeholder_and_nothing_changes() {
    assert!(redis_available(), "redis-server must be installed (the test command installs it)");
    let w = start().await;
    let mut c = w.server.grpc().await;
    deploy(&mut c, "vault", json!({"name": "v"})).await.unwrap();
    let (before, _) = state(&w.data);

    for (config, code, want) in [
        (json!({"redis-url": {"from": "vault/nope", "output": "url"}}), Code::NotFound, "vault/nope.url"),
        (json!({"redis-url": {"from": "vault/v", "output": "uri"}}), Code::NotFound, "valid outputs: password, url"),
        (
            json!({"redis-url": {"from": "prod/vault/v", "output": "url"}}),
            Code::InvalidArgument,
            "cannot cross namespaces",
        ),
        (json!({"redis-url": {"from": "vault", "output": "url"}}), Code::InvalidArgument, "MODULE/NAME"),
        (json!({"redis-url": {"from": "vault/v", "output": "url", "x": 1}}), Code::InvalidArgument, "not `x`"),
    ] {
        let err = deploy(&mut c, "consumer", config.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{config}: {err:?}");
        assert!(err.message().contains("`redis-url`") && err.message().contains(want), "{config}: {err:?}");
    }
    // A Secret key where only text may go (a ConfigMap) is refused, naming the placeholder.
    let err = deploy(&mut c, "consumer", json!({"note": {"from": "vault/v", "output": "password"}})).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("`note`") && err.message().contains("ConfigMap consumer"), "{err:?}");
    // The dry run refuses it the same way, and REST names the field.
    let r = within(
        w.server
            .http()
            .post(format!("{}/deployment/dry_run", w.server.url()))
            .json(&json!({"module": "consumer", "config": {"note": {"from": "vault/v", "output": "password"}}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "config.note", "{body}");
    let r = within(
        w.server
            .http()
            .post(format!("{}/deployment", w.server.url()))
            .json(&json!({"module": "consumer", "config": {"redis-url": {"from": "vault/gone", "output": "url"}}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "config.redis-url", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("vault/gone.url"), "{body}");

    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert_eq!(list.deployments.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["v"]);
    assert!(list.deployments[0].dependents.is_empty());
    assert_eq!(state(&w.data).0, before, "the state file is as it was");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_url_wires_a_jac_cloud_dry_run_over_grpc_and_from_the_cli() {
    assert!(redis_available(), "redis-server must be installed (the test command installs it)");
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    let redis = deploy(&mut c, "redis", json!({"name": "cache", "memory": "8mb"})).await.unwrap();
    let url = format!("redis://{}", redis.endpoints[0]);

    let env_of = |modules: &std::collections::BTreeMap<String, String>| {
        let docs = yaml_docs(&modules["jac-cloud.yml"]);
        let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap().clone();
        let spec = &d["spec"]["template"]["spec"];
        (spec["containers"][0]["env"].clone(), spec["initContainers"][1]["env"].clone())
    };
    let req = pb::DryRunRequest {
        module: "jac-cloud".into(),
        config: Some(struct_of(json!({"name": "app", "redis-host": {"from": "redis/cache", "output": "url"}}))),
        ..Default::default()
    };
    let dry = within(c.dry_run(req)).await.unwrap().into_inner();
    let (app, check) = env_of(&dry.modules);
    assert_eq!(app, json!([{"name": "REDIS_HOST", "value": url}]));
    assert_eq!(check, app, "the redis-check init container waits for the same url");

    // Unwired, the template renders as before: no env of its own.
    let req = pb::DryRunRequest { module: "jac-cloud".into(), ..Default::default() };
    let plain = within(c.dry_run(req)).await.unwrap().into_inner();
    assert_eq!(env_of(&plain.modules).0, Value::Null);

    let cli = ran(JacOrc::on(
        &server,
        &["dry-run", "jac-cloud", "app", "--set", "redis-host=@redis/cache.url", "-o", "json"],
    ));
    let modules: std::collections::BTreeMap<String, String> =
        serde_json::from_value(cli.json()["modules"].clone()).unwrap();
    assert_eq!(env_of(&modules).0, json!([{"name": "REDIS_HOST", "value": url}]));
    let literal =
        ran(JacOrc::on(&server, &["dry-run", "jac-cloud", "app", "--set", "redis-host=@@redis/x", "-o", "json"]));
    let modules: std::collections::BTreeMap<String, String> =
        serde_json::from_value(literal.json()["modules"].clone()).unwrap();
    assert_eq!(env_of(&modules).0, json!([{"name": "REDIS_HOST", "value": "@redis/x"}]));
    let missing = ran(JacOrc::on(&server, &["dry-run", "jac-cloud", "app", "--set", "redis-host=@redis/nope.url"]));
    assert!(missing.err().contains("redis-host") && missing.err().contains("redis/nope.url"), "{missing:?}");
}

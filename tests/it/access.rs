//! Who gets in (issue 9), on the local backend through the real server: every surface refuses a
//! request without a valid token; the token file's groups decide what a user may do; module
//! servers answer only calls carrying their deployment's call token, which `ModuleProxy` adds for
//! callers allowed to call them; secrets are readable only through their own permission.

use jac_splice_orc::pb::{self, module_service_client::ModuleServiceClient, value::Kind};
use serde_json::{json, Value};
use tonic::Code;

use crate::proxy::call_token;
use crate::support::{http_client, within, Options, TestServer, ADMIN, CALLER, VIEWER};

fn describe(deployment: &str) -> pb::ProxyDescribeRequest {
    pb::ProxyDescribeRequest {
        target: Some(pb::ProxyTarget { deployment: deployment.into(), namespace: String::new() }),
        request: Some(pb::DescribeRequest { session: "access".into() }),
    }
}

fn call(deployment: &str, target: &str, path: &[&str], args: Vec<Kind>) -> pb::ProxyCallRequest {
    pb::ProxyCallRequest {
        target: Some(pb::ProxyTarget { deployment: deployment.into(), namespace: String::new() }),
        request: Some(module_call(target, path, args)),
    }
}

fn module_call(target: &str, path: &[&str], args: Vec<Kind>) -> pb::CallRequest {
    pb::CallRequest {
        session: "access".into(),
        target: target.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        args: args.into_iter().map(|k| pb::Value { kind: Some(k) }).collect(),
        kwargs: vec![],
    }
}

async fn status_and_body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, within(r.json()).await.expect("a JSON body"))
}

#[tokio::test]
async fn without_a_valid_token_rest_grpc_and_module_proxy_answer_unauthenticated() {
    let server = TestServer::start().await;
    let url = server.url();
    for token in [None, Some("not-a-token")] {
        let http = http_client(token);
        let (status, body) = status_and_body(within(http.get(format!("{url}/deployment")).send()).await.unwrap()).await;
        assert_eq!((status, body["reason"].as_str()), (401, Some("UNAUTHENTICATED")), "{body}");
        let deploy = json!({"module": "redis", "config": {"name": "intruder"}});
        let r = within(http.post(format!("{url}/deployment")).json(&deploy).send()).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{:?}", r.headers());

        let mut grpc = server.grpc_as(token).await;
        let err = within(grpc.list_templates(pb::ListTemplatesRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let request = pb::DeployRequest {
            module: "redis".into(),
            config: Some(crate::support::struct_of(json!({"name": "intruder"}))),
            ..Default::default()
        };
        let err = within(grpc.deploy(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

        let mut proxy = server.proxy_as(token).await;
        let err = within(proxy.describe(describe("anything"))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // Nothing was deployed, and health and the API description stay open.
    let listed: Value =
        within(server.http().get(format!("{url}/deployment")).send()).await.unwrap().json().await.unwrap();
    assert_eq!(listed, json!({}), "nothing was deployed");
    for open in ["/healthz", "/openapi.json"] {
        let r = within(http_client(None).get(format!("{url}{open}")).send()).await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_viewer_reads_but_may_not_deploy_dry_run_undeploy_read_secrets_or_call_modules() {
    let server = TestServer::start().await;
    let url = server.url();
    let viewer = http_client(Some(VIEWER));
    let r = within(viewer.get(format!("{url}/deployment")).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = within(viewer.get(format!("{url}/templates")).send()).await.unwrap();
    assert_eq!(r.status(), 200);

    let body = json!({"module": "redis", "config": {"name": "denied"}});
    let (status, err) =
        status_and_body(within(viewer.post(format!("{url}/deployment")).json(&body).send()).await.unwrap()).await;
    assert_eq!((status, err["reason"].as_str()), (403, Some("PERMISSION_DENIED")), "{err}");
    assert_eq!(err["detail"], "user vera may not create jacdeployments \"denied\" in namespace default");
    let r = within(viewer.post(format!("{url}/deployment/dry_run")).json(&body).send()).await.unwrap();
    assert_eq!(r.status(), 403);
    for (method, path) in [
        (reqwest::Method::DELETE, "/deployment/default/redis/denied"),
        (reqwest::Method::GET, "/deployment/default/redis/denied/secrets"),
    ] {
        let (status, err) =
            status_and_body(within(viewer.request(method, format!("{url}{path}")).send()).await.unwrap()).await;
        assert_eq!(status, 403, "{path}: {err}");
    }

    let mut grpc = server.grpc_as(Some(VIEWER)).await;
    let request = pb::DeployRequest {
        module: "redis".into(),
        config: Some(crate::support::struct_of(json!({"name": "denied"}))),
        ..Default::default()
    };
    let err = within(grpc.deploy(request)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("may not create jacdeployments"), "{err:?}");
    // A module caller may not deploy either.
    let mut caller = server.grpc_as(Some(CALLER)).await;
    let dry = pb::DryRunRequest { module: "redis".into(), ..Default::default() };
    assert_eq!(within(caller.dry_run(dry)).await.unwrap_err().code(), Code::PermissionDenied);

    // Refused before the deployment is even looked up: no existence leaks.
    let mut proxy = server.proxy_as(Some(VIEWER)).await;
    let err = within(proxy.describe(describe("no-such-module"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "user vera may not call modules \"no-such-module\" in namespace default");
    let listed: Value =
        within(server.http().get(format!("{url}/deployment")).send()).await.unwrap().json().await.unwrap();
    assert_eq!(listed, json!({}), "nothing was deployed");
    server.stop().await;
}

#[tokio::test]
async fn module_servers_answer_only_their_call_token_which_module_proxy_adds_for_allowed_callers() {
    let server = TestServer::start().await;
    let deployed = within(
        server
            .http()
            .post(format!("{}/deployment", server.url()))
            .json(&json!({"module": "python-module", "config": {"name": "guarded", "module": "json"}, "wait": true}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(deployed.status(), 200, "{:?}", deployed.text().await);
    let view: Value =
        within(server.http().get(format!("{}/deployment/default/python-module/guarded", server.url())).send())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let endpoint = view["endpoints"][0].as_str().unwrap().to_string();
    assert_eq!(view["config"]["call-token"], "<redacted>", "{view}");

    // Through ModuleProxy: callers (and admins) may call, viewers may not.
    let loads = || call("guarded", "", &["loads"], vec![Kind::StrValue("[1, 2]".into())]);
    let mut as_caller = server.proxy_as(Some(CALLER)).await;
    let r = within(as_caller.call(loads())).await.unwrap().into_inner();
    assert!(matches!(r.result, Some(pb::value_response::Result::Value(_))), "{r:?}");
    let err = within(server.proxy_as(Some(VIEWER)).await.call(loads())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The escapes of the attack run are refused through the proxy ...
    for (path, arg) in [(["__import__"], "os"), (["eval"], "__import__('os').getpid()")] {
        let err = within(as_caller.call(call("guarded", "@builtins", &path, vec![Kind::StrValue(arg.into())])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{path:?}: {err:?}");
        assert!(err.message().contains("is not served"), "{err:?}");
    }

    // ... and directly: no token, a jac-orc token or another deployment's token get nothing.
    let mut direct = within(ModuleServiceClient::connect(format!("http://{endpoint}"))).await.unwrap();
    let ask = |token: Option<&str>, request: pb::CallRequest| {
        let mut r = tonic::Request::new(request);
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    let plain = || module_call("", &["dumps"], vec![Kind::IntValue(1)]);
    for token in [None, Some(ADMIN), Some("another-deployments-call-token-0123456789")] {
        let err = within(direct.call(ask(token, plain()))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
    }
    let token = call_token(&server, "guarded").await;
    let r = within(direct.call(ask(Some(&token), plain()))).await.unwrap().into_inner();
    assert!(matches!(r.result, Some(pb::value_response::Result::Value(_))), "{r:?}");
    let import = module_call("@builtins", &["__import__"], vec![Kind::StrValue("os".into())]);
    let err = within(direct.call(ask(Some(&token), import))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "the call token does not open @builtins either: {err:?}");

    // Only the secrets permission reads the call token (admins here).
    let r = within(
        http_client(Some(CALLER))
            .get(format!("{}/deployment/default/python-module/guarded/secrets", server.url()))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    server.stop().await;
}

/// A Redis template behind a generated password, run by the local backend.
fn vault_templates() -> tempfile::TempDir {
    let templates = tempfile::tempdir().unwrap();
    let v = templates.path().join("vault").join("latest");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(
        v.join("placeholders.yaml"),
        "description: Redis behind a generated password.\nplaceholders:\n  name:\n    type: string\n    default: vault\n  password:\n    type: string\n    secret: true\n",
    )
    .unwrap();
    std::fs::write(
        v.join("vault.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{name}}\nstringData:\n  password: {{password}}\n",
    )
    .unwrap();
    std::fs::write(
        v.join("local.yaml"),
        "program: redis-server\nargs: [\"--port\", \"{{local.port}}\", \"--bind\", \"{{local.host}}\", \"--requirepass\", \"{{password}}\", \"--save\", \"\", \"--appendonly\", \"no\", \"--dir\", \"{{local.data_dir}}\"]\nreadiness: {kind: tcp}\nprotocol: redis\n",
    )
    .unwrap();
    templates
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_password_is_redacted_except_through_the_secrets_api_and_get_show_secrets() {
    assert!(crate::support::redis_available());
    let templates = vault_templates();
    let catalog = jac_splice_orc::catalog::Catalog::with_override(templates.path()).unwrap();
    let server = TestServer::start_with(Options { catalog: Some(catalog), ..Default::default() }).await;
    let url = server.url();
    let r =
        within(server.http().post(format!("{url}/deployment")).json(&json!({"module": "vault", "config": {}})).send())
            .await
            .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let view: Value = within(http_client(Some(VIEWER)).get(format!("{url}/deployment/default/vault/vault")).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["config"]["password"], "<redacted>");

    let (status, secrets) = status_and_body(
        within(server.http().get(format!("{url}/deployment/default/vault/vault/secrets")).send()).await.unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{secrets}");
    let password = secrets["secrets"]["password"].as_str().expect("the generated password").to_string();
    assert!(password.len() >= 16, "{secrets}");
    let endpoint = view["endpoints"][0].as_str().unwrap().to_string();
    assert_eq!(crate::support::redis_auth(&endpoint, &password).await, "+OK", "it is the password in use");

    // The CLI: redacted by default, the value with --show-secrets (admin), refused for a viewer.
    let cli = |token: &str, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
            .args(["get", "vault", "vault", "-o", "json"])
            .args(extra)
            .env("JAC_ORC_SERVER", &url)
            .env("JAC_ORC_TOKEN", token)
            .output()
            .expect("jac-orc runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = tokio::task::block_in_place(|| cli(ADMIN, &[]));
    assert!(ok, "{err}");
    assert!(!out.contains(&password) && out.contains("<redacted>"), "{out}");
    let (ok, out, err) = tokio::task::block_in_place(|| cli(ADMIN, &["--show-secrets"]));
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["config"]["password"], password.as_str());
    let (ok, _, err) = tokio::task::block_in_place(|| cli(VIEWER, &["--show-secrets"]));
    assert!(!ok);
    assert!(err.contains("may not get jacdeployments/secrets") && err.contains("PermissionDenied"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_generates_its_admin_token_once_logs_where_never_what_and_the_cli_on_this_host_uses_it() {
    use std::os::unix::fs::PermissionsExt;
    let served = crate::served::Served::start(&[], &[]).await;
    let token = served.admin_token();
    let path = served.data_dir().join("token");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let log = served.log_text();
    assert!(log.contains(&path.display().to_string()), "the log says where: {log}");
    assert!(!log.contains(&token), "the log never holds the token");

    let cli = |data_dir: &str, addr: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
            .args(["templates", "--server", &format!("http://{addr}"), "--data-dir", data_dir])
            .env_remove("JAC_ORC_TOKEN")
            .output()
            .expect("jac-orc runs");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let data = served.data_dir().display().to_string();
    let (ok, err) = tokio::task::block_in_place(|| cli(&data, &served.addr));
    assert!(ok, "the CLI reads the data dir's token for a loopback server: {err}");
    let (ok, err) = tokio::task::block_in_place(|| cli("/nonexistent-data-dir", &served.addr));
    assert!(!ok);
    assert!(err.contains("authentication required") && err.contains(&path.display().to_string()), "{err}");

    // A restart on the same data dir keeps the token.
    let served = served.restart().await;
    assert_eq!(served.admin_token(), token);
    assert!(served.log_text().contains("created=false"), "{}", served.log_text());
    served.stop().await;
}

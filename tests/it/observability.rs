//! What an operator watches: `/docs` and `/redoc` (embedded assets, no token), `/metrics` in the
//! Prometheus text format counting deploys, proxied calls and auth denials, `/readyz` with the
//! gRPC health service and `jac-orc probe` following the startup replay, JSON logs, the
//! original's environment names, and `--backend auto` refusing a broken KUBECONFIG.

use std::collections::BTreeMap;

use jac_splice_orc::cli::probe::{self, ProbeArgs};
use jac_splice_orc::pb::value::Kind;
use jac_splice_orc::service::Readiness;
use jac_splice_orc::startup;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::proxy::{call, deploy_module, kind};
use crate::served::Served;
use crate::support::{http_client, redis_available, within, Options, TestServer, ADMIN};

/// The `src`/`href` values of an HTML page that point into the server.
fn local_references(html: &str) -> Vec<String> {
    html.split(['"', '\'']).filter(|s| s.starts_with('/') && !s.starts_with("//")).map(str::to_string).collect()
}

#[tokio::test]
async fn docs_and_redoc_render_from_embedded_assets_without_a_token() {
    let server = TestServer::start().await;
    let anonymous = http_client(None);
    for page in ["/docs", "/docs/", "/redoc"] {
        let res = within(anonymous.get(format!("{}{page}", server.url())).send()).await.unwrap();
        assert_eq!(res.status(), 200, "{page}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/html"), "{page}: {ct}");
        let html = within(res.text()).await.unwrap();
        let refs = local_references(&html);
        assert!(refs.iter().any(|r| r == "/openapi.json"), "{page} reads /openapi.json: {refs:?}");
        assert!(!html.contains("https://") && !html.contains("http://"), "{page} loads nothing from elsewhere");
        for asset in refs.iter().filter(|r| r.as_str() != "/openapi.json") {
            let res = within(anonymous.get(format!("{}{asset}", server.url())).send()).await.unwrap();
            assert_eq!(res.status(), 200, "{asset}");
            let ct = res.headers()["content-type"].to_str().unwrap().to_string();
            let want = match asset.rsplit('.').next() {
                Some("js") => "javascript",
                Some("css") => "text/css",
                Some("png") => "image/png",
                other => panic!("unexpected asset {asset} ({other:?})"),
            };
            assert!(ct.contains(want), "{asset}: {ct}");
            assert!(!within(res.bytes()).await.unwrap().is_empty(), "{asset}");
        }
    }
    let doc = within(anonymous.get(format!("{}/openapi.json", server.url())).send()).await.unwrap();
    assert_eq!(doc.status(), 200);
    let doc: serde_json::Value = within(doc.json()).await.unwrap();
    assert!(doc["paths"]["/readyz"].is_object() && doc["paths"]["/metrics"].is_object());
    // Pages are not API operations, and an unknown asset is a JSON 404.
    assert!(doc["paths"]["/docs"].is_null());
    let missing = within(anonymous.get(format!("{}/docs/nope.js", server.url())).send()).await.unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

/// Samples of a Prometheus text-format (0.0.4) exposition, keyed `name{labels}` as printed;
/// an error says which line breaks the format. It checks what a scraper relies on: `# TYPE`
/// before a family's samples, valid names, quoted labels, float values, and histograms whose
/// cumulative buckets end in `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !name_ok(name) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at("bad TYPE"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("TYPE given twice"));
                    }
                }
                (Some("HELP"), Some(name), _) if name_ok(name) => {}
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("value is not a float"))?,
        };
        let name = series.split('{').next().unwrap();
        if !name_ok(name) {
            return Err(at("bad metric name"));
        }
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).ok_or_else(|| at("bad labels"))?;
            // Values here never hold `",` (deployment names are DNS labels), so a split is enough.
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").ok_or_else(|| at("label is not k=\"v\""))?;
                if !name_ok(k) || v.trim_end_matches('"').contains('"') {
                    return Err(at("bad label"));
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(at("sample before its TYPE"));
        }
        samples.insert(series.to_string(), value);
    }
    // Each histogram series: buckets never decrease, and +Inf is the count.
    for (series, count) in samples.iter().filter(|(s, _)| s.split('{').next().unwrap().ends_with("_count")) {
        let base = series.split('{').next().unwrap().trim_end_matches("_count");
        let labels = series.split_once('{').map(|(_, l)| l.trim_end_matches('}')).unwrap_or("");
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|(s, v)| {
                let rest = s.strip_prefix(&format!("{base}_bucket{{"))?;
                let (le, others) = match rest.split_once(",le=\"") {
                    Some((others, le)) => (le, others),
                    None => (rest.strip_prefix("le=\"")?, ""),
                };
                (others == labels).then_some(())?;
                let le = le.trim_end_matches("\"}");
                Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.last().map(|b| b.0) != Some(f64::INFINITY) || buckets.last().map(|b| b.1) != Some(*count) {
            return Err(format!("{series}: the +Inf bucket is not the count ({buckets:?})"));
        }
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{series}: buckets decrease ({buckets:?})"));
        }
    }
    Ok(samples)
}

#[test]
fn the_exposition_checker_rejects_what_a_scraper_would() {
    let good = "# HELP x_total X\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n";
    assert_eq!(parse_exposition(good).unwrap()["x_total{a=\"b\"}"], 1.0);
    for bad in [
        "x_total 1\n",                                                                    // no TYPE
        "# TYPE x counter\nx one\n",                                                      // not a float
        "# TYPE x counter\nx{a=b} 1\n",                                                   // unquoted label
        "# TYPE 1x counter\n",                                                            // bad name
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // decreasing
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 2\n",                       // +Inf is not the count
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad:?}");
    }
}

async fn metrics(server: &TestServer) -> BTreeMap<String, f64> {
    // A loopback peer needs no token for /metrics.
    let res = within(http_client(None).get(format!("{}/metrics", server.url())).send()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = within(res.text()).await.unwrap();
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test]
async fn metrics_parse_and_count_a_deploy_a_proxied_call_and_a_denial() {
    let server = TestServer::start().await;
    let deploys = "jac_orc_deploys_total{module=\"python-module\",result=\"ok\"}";
    let denials = "jac_orc_auth_denials_total{reason=\"missing_token\"}";
    let before = metrics(&server).await;
    // The registry is the process's, shared with tests running beside this one: counts that
    // others can move are compared as "at least one more", this test's own series exactly.
    deploy_module(&server, "metrics-math", "math").await;
    let mut proxy = server.proxy_as(Some(ADMIN)).await;
    let r = within(proxy.call(call("metrics-math", "", &["sqrt"], vec![Kind::FloatValue(9.0)]))).await.unwrap();
    assert_eq!(kind(r.into_inner()), Kind::FloatValue(3.0));
    let refused = within(http_client(None).get(format!("{}/templates", server.url())).send()).await.unwrap();
    assert_eq!(refused.status(), 401);

    let after = metrics(&server).await;
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert!(get(&after, deploys) >= get(&before, deploys) + 1.0, "{deploys}: {after:#?}");
    let deploy_count = "jac_orc_deploy_duration_seconds_count{module=\"python-module\",result=\"ok\"}";
    assert!(get(&after, deploy_count) >= 1.0, "{after:#?}");
    assert!(
        get(&after, "jac_orc_readiness_wait_duration_seconds_count{module=\"python-module\",result=\"ok\"}") >= 1.0
    );
    let mine = "deployment=\"default/metrics-math\"";
    assert_eq!(get(&after, &format!("jac_orc_proxy_calls_total{{code=\"OK\",{mine}}}")), 1.0, "{after:#?}");
    assert_eq!(get(&after, &format!("jac_orc_proxy_call_duration_seconds_count{{{mine}}}")), 1.0);
    assert_eq!(get(&after, &format!("jac_orc_proxy_errors_total{{{mine}}}")), 0.0);
    assert_eq!(get(&after, &format!("jac_orc_module_endpoints_ready{{{mine}}}")), 1.0);
    assert!(get(&after, denials) >= get(&before, denials) + 1.0, "{denials}");
    server.stop().await;
}

async fn health(server: &TestServer) -> ServingStatus {
    let channel = within(tonic::transport::Channel::from_shared(server.url()).unwrap().connect()).await.unwrap();
    let answer = within(HealthClient::new(channel).check(HealthCheckRequest { service: String::new() })).await;
    ServingStatus::try_from(answer.unwrap().into_inner().status).unwrap()
}

fn probe_args(server: &TestServer) -> ProbeArgs {
    ProbeArgs {
        host: "127.0.0.1".into(),
        port: server.addr.port(),
        service: String::new(),
        timeout: 10.0,
        tls_dir: None,
    }
}

/// `serve` marks readiness after the startup replay; this does the same steps in the same order.
#[tokio::test]
async fn readyz_health_and_probe_say_not_ready_until_the_startup_replay_has_finished() {
    assert!(redis_available());
    let readiness = Readiness::pending();
    let server = TestServer::start_with(Options { readiness: Some(readiness.clone()), ..Default::default() }).await;
    let anonymous = http_client(None);
    let readyz = || async { within(anonymous.get(format!("{}/readyz", server.url())).send()).await.unwrap() };

    let res = readyz().await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = within(res.json()).await.unwrap();
    assert_eq!(body["reason"], "NOT_READY", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("MODULES"), "{body}");
    assert_eq!(health(&server).await, ServingStatus::NotServing);
    let err = within(probe::run(&probe_args(&server))).await.unwrap_err();
    assert!(matches!(&err, probe::Error::NotServing { status, .. } if status == "NOT_SERVING"), "{err:?}");
    // Liveness is not readiness.
    assert_eq!(within(anonymous.get(format!("{}/healthz", server.url())).send()).await.unwrap().status(), 200);

    let modules = r#"{"default": {"redis": {"ready-cache": {"module": "redis", "version": "7.4.2", "config": {"memory": "16mb"}}}}}"#;
    assert_eq!(within(startup::replay(server.service.clone(), startup::parse(modules).unwrap())).await, 1);
    assert_eq!(readyz().await.status(), 503, "the replay is done only when serve says so");
    readiness.mark_started();

    assert_eq!(readyz().await.status(), 200);
    // The health service follows at once (it waits on the same flag), within the bound.
    within(async {
        while health(&server).await != ServingStatus::Serving {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    within(probe::run(&probe_args(&server))).await.unwrap();
    server.stop().await;
}

/// The real `serve`: once it says ready, the `MODULES` deployment is there.
// Served waits for the process with block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn serve_turns_ready_only_after_its_modules_replay() {
    assert!(redis_available());
    let modules = r#"{"default": {"redis": {"replayed": {"module": "redis", "version": "7.4.2", "config": {"memory": "16mb"}}}}}"#;
    let mut served = Served::start_env(&[], &[("MODULES", modules)]).await;
    let first = served.wait_for_log("not ready").await;
    assert!(first.contains("MODULES"), "{first}");
    served.wait_for_log("ready: startup finished").await;
    let http = http_client(Some(&served.admin_token()));
    let res = within(http.get(format!("http://{}/readyz", served.addr)).send()).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = within(http.get(format!("http://{}/deployment/default/redis/replayed", served.addr)).send()).await;
    let body: serde_json::Value = within(res.unwrap().json()).await.unwrap();
    assert_eq!(body["status"], "deployed", "{body}");
    served.stop().await;
}

// Served waits for the process with block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let mut served = Served::start(&[], &["--log-format", "json"]).await;
    let res = within(http_client(None).get(format!("http://{}/readyz", served.addr)).send()).await.unwrap();
    assert_eq!(res.status(), 200);
    served.wait_for_log("ready: startup finished").await;
    let text = served.log_text();
    let mut messages = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(), "{line}");
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m.starts_with("jac-orc listening on 127.0.0.1:")), "{messages:?}");
    served.stop().await;
}

// Served waits for the process with block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_listen_serves_metrics_alone_on_its_own_address() {
    let mut served = Served::start(&[], &["--metrics-listen", "127.0.0.1:0"]).await;
    let line = served.wait_for_log("metrics on http://").await;
    let url = line.split("metrics on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    // One denial on the main port, counted in this fresh process.
    let refused = within(http_client(None).get(format!("http://{}/templates", served.addr)).send()).await.unwrap();
    assert_eq!(refused.status(), 401);
    let res = within(http_client(None).get(&url).send()).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = within(res.text()).await.unwrap();
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(samples.get("jac_orc_auth_denials_total{reason=\"missing_token\"}"), Some(&1.0), "{text}");
    assert!(samples.keys().all(|k| k.starts_with("jac_orc_")), "{samples:?}");
    // Only /metrics there.
    let other = url.replace("/metrics", "/templates");
    assert_eq!(within(http_client(None).get(&other).send()).await.unwrap().status(), 404);
    served.stop().await;
}

// Served waits for the process with block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn the_originals_host_port_and_logger_level_work_with_a_deprecation_line() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let env = [("HOST", "127.0.0.1"), ("PORT", port.as_str()), ("LOGGER_LEVEL", "DEBUG"), ("JAC_ORC_LOG", "")];
    let mut served = Served::start_env(&[], &env).await;
    assert_eq!(served.addr, format!("127.0.0.1:{port}"));
    served.wait_for_log("HOST and PORT are deprecated").await;
    served.wait_for_log("LOGGER_LEVEL is deprecated").await;
    let res = within(http_client(None).get(format!("http://{}/healthz", served.addr)).send()).await.unwrap();
    assert_eq!(res.status(), 200);
    // LOGGER_LEVEL=DEBUG is the filter: the auth layer's debug line about a bad token appears
    // (the default filter, info, drops it).
    let bad = within(http_client(Some("not-a-token")).get(format!("http://{}/templates", served.addr)).send()).await;
    assert_eq!(bad.unwrap().status(), 401);
    assert!(served.wait_for_log("unknown bearer token").await.contains("DEBUG"));
    served.stop().await;
}

/// Runs `jac-orc serve --backend auto` with `KUBECONFIG` set, expecting it to refuse to start.
async fn auto_backend_refuses(kubeconfig: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(["serve", "--backend", "auto", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("MODULES")
        .env_remove("JAC_ORC_BACKEND")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let status = within(async {
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await.unwrap();
        child.wait().await.unwrap()
    })
    .await;
    assert!(!status.success(), "serve started with KUBECONFIG={kubeconfig}:\n{text}");
    assert!(!text.contains("listening on"), "{text}");
    text
}

// Served waits for the process with block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn auto_backend_with_a_broken_kubeconfig_is_an_error_naming_the_file_and_local_still_starts() {
    let err = auto_backend_refuses("/nonexistent/jac-orc-kubeconfig").await;
    assert!(err.contains("KUBECONFIG=/nonexistent/jac-orc-kubeconfig") && err.contains("no such file"), "{err}");
    assert!(err.contains("--backend local"), "says what to do: {err}");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("kubeconfig");
    std::fs::write(&garbage, "clusters: [this is: not, a kubeconfig\n").unwrap();
    let err = auto_backend_refuses(garbage.to_str().unwrap()).await;
    // The file, then its parser's complaint.
    let named = format!("kubeconfig {}: ", garbage.display());
    let cause = err.split(&named).nth(1).unwrap_or_else(|| panic!("names the file: {err}"));
    assert!(!cause.trim().is_empty(), "and the cause: {err}");

    // Explicitly local: the broken configuration is not looked at.
    let mut served = Served::start_env(&[], &[("KUBECONFIG", "/nonexistent/jac-orc-kubeconfig")]).await;
    served.wait_for_log("backend: local").await;
    served.stop().await;
}

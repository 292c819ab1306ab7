//! A browser client generated from `proto/` (tests/browser: protoc-gen-es for the messages and the
//! service, connect-web's grpc-web transport, bundled by esbuild) runs in headless Chromium against
//! the real server from another origin, as a web app would: it lists the templates and shows each
//! per-object event of a server-streaming Deploy (redis, waited for until ready). Chromium starts with a fresh profile, its proxy
//! set to 127.0.0.1:1 and background networking off, so it never reaches outside the machine.
//!
//! Swagger UI at `/docs` is loaded the same way and must show every path of `/openapi.json`.
//!
//! Needs Chromium and the built bundle (`scripts/test.sh` installs the one and runs
//! `tests/browser/build.sh`): without them the test says why it skips, unless
//! `JAC_ORC_REQUIRE_BROWSER=1` (CI), where it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jac_splice_orc::config::EdgeConfig;
use jac_splice_orc::service::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Options, TestServer, ADMIN};

/// How long Chromium may take to load the page and finish its calls (seconds of real time).
const BROWSER_BOUND: Duration = Duration::from_secs(120);

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Chromium and the bundle, or why the test cannot run.
fn requirements() -> Option<(PathBuf, PathBuf)> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dist");
    let missing = match (find_chromium(), dist.join("app.js").is_file()) {
        (Some(browser), true) => return Some((browser, dist)),
        (None, _) => "Chromium is not installed (apt-get install chromium)",
        (_, false) => "the browser client is not built (tests/browser/build.sh)",
    };
    skip_unless_required(missing)
}

/// Chromium alone, or why the test cannot run.
fn chromium() -> Option<PathBuf> {
    find_chromium().or_else(|| skip_unless_required("Chromium is not installed (apt-get install chromium)"))
}

/// Says why a browser test skips, or fails under `JAC_ORC_REQUIRE_BROWSER=1`.
fn skip_unless_required<T>(missing: &str) -> Option<T> {
    if std::env::var("JAC_ORC_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("JAC_ORC_REQUIRE_BROWSER=1 but {missing}");
    }
    eprintln!("skipping the browser test: {missing}");
    None
}

/// The page's origin: a minimal static file server for `dist` on its own loopback port.
struct Page {
    origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Page {
    async fn serve(dist: PathBuf) -> Page {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let dist = dist.clone();
                tokio::spawn(async move {
                    let mut head = vec![0u8; 8192];
                    let n = socket.read(&mut head).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&head[..n]);
                    let path = request.split(' ').nth(1).unwrap_or("/").split('?').next().unwrap_or("/");
                    let (status, kind, body) = match path {
                        "/" | "/index.html" => ("200 OK", "text/html", std::fs::read(dist.join("index.html"))),
                        "/app.js" => ("200 OK", "text/javascript", std::fs::read(dist.join("app.js"))),
                        _ => ("404 Not Found", "text/plain", Ok(b"not found".to_vec())),
                    };
                    let body = body.unwrap_or_default();
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        Page { origin, task }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The target list gives titles HTML-escaped.
fn unescape(title: &str) -> String {
    title.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Chromium's flags for a page that may reach only this machine, with a fresh profile.
fn isolated(browser: &Path, profile: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--proxy-server=127.0.0.1:1",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// The page's DOM once its scripts (and the requests they make) are done.
async fn rendered_dom(browser: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = isolated(browser, profile.path());
    command.args(["--virtual-time-budget=15000", "--dump-dom", url]).stderr(std::process::Stdio::null());
    let out = tokio::time::timeout(BROWSER_BOUND, command.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not render {url} within {BROWSER_BOUND:?}"))
        .expect("chromium starts");
    assert!(out.status.success(), "chromium --dump-dom {url}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the page saw, from its title once its script is done (`done {json}` or `error: ...`):
/// Chromium runs with a DevTools port on loopback, whose target list gives each page's title.
async fn run_page(browser: &Path, url: &str) -> serde_json::Value {
    let profile = tempfile::tempdir().unwrap();
    let mut child = isolated(browser, profile.path())
        .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < BROWSER_BOUND {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("chromium exited ({status}) before the page was done; last title {last:?}");
        }
        // Chromium writes its DevTools port (first line) once it listens.
        let Ok(active) = std::fs::read_to_string(profile.path().join("DevToolsActivePort")) else { continue };
        let Some(port) = active.lines().next().and_then(|p| p.trim().parse::<u16>().ok()) else { continue };
        let Ok(answer) = http.get(format!("http://127.0.0.1:{port}/json/list")).send().await else { continue };
        let targets: serde_json::Value = answer.json().await.unwrap_or_default();
        let titles = targets.as_array().into_iter().flatten().filter(|t| t["type"] == "page");
        for title in titles.filter_map(|t| t["title"].as_str()).map(unescape) {
            let title = title.as_str();
            last = title.to_string();
            if let Some(json) = title.strip_prefix("done ") {
                let _ = child.kill().await;
                return serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {title}"));
            }
            if title.starts_with("error:") {
                let _ = child.kill().await;
                panic!("the page failed: {title}");
            }
        }
    }
    let _ = child.kill().await;
    panic!("the page was not done within {BROWSER_BOUND:?}; last title {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_grpc_web_client_lists_templates_and_streams_a_deploy_from_headless_chromium() {
    let Some((browser, dist)) = requirements() else {
        return;
    };
    let page = Page::serve(dist).await;
    // Another origin than the server's: the browser's CORS preflights go through --cors-origin.
    let settings = Settings { edge: EdgeConfig::default().cors_origin(page.origin.clone()), ..Settings::default() };
    let server = TestServer::start_with(Options { settings, ..Options::default() }).await;
    let url = format!("{}/index.html?server={}&token={ADMIN}", page.origin, server.url());
    let seen = run_page(&browser, &url).await;

    let templates: Vec<&str> = seen["templates"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    for module in ["redis", "mongodb", "python-module"] {
        assert!(templates.contains(&module), "ListTemplates over grpc-web: {seen}");
    }
    let events: Vec<&str> = seen["events"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert!(
        events.contains(&"deployment.apps/from-browser created"),
        "each object event of the streamed Deploy: {seen}"
    );
    assert!(events.len() >= 3, "{seen}");
    assert_eq!(seen["summary"], "from-browser created=3", "the Deploy's summary arrived after its events: {seen}");

    // What the page deployed is there.
    let listed = server.http().get(format!("{}/deployment/default/redis/from-browser", server.url())).send();
    let status = crate::support::within(listed).await.unwrap().status();
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swagger_ui_at_docs_shows_every_path_of_openapi_json_in_headless_chromium() {
    let Some(browser) = chromium() else {
        return;
    };
    let server = TestServer::start().await;
    let dom = rendered_dom(&browser, &format!("{}/docs", server.url())).await;
    // Swagger UI draws one block per operation, each naming its path: only a page that fetched
    // and read /openapi.json has them.
    let shown: std::collections::BTreeSet<&str> =
        dom.split("data-path=\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    let doc = crate::support::within(server.http().get(format!("{}/openapi.json", server.url())).send()).await.unwrap();
    let doc: serde_json::Value = crate::support::within(doc.json()).await.unwrap();
    let documented: std::collections::BTreeSet<&str> =
        doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    assert!(documented.contains("/module/ensure") && documented.len() > 10, "{documented:?}");
    assert_eq!(shown, documented, "every documented path is drawn by Swagger UI");
    server.stop().await;
}

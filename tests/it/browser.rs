//! A browser client generated from `proto/` (tests/browser: protoc-gen-es for the messages and the
//! service, connect-web's grpc-web transport, bundled by esbuild) runs in headless Chromium against
//! the real server from another origin, as a web app would: it lists the templates and shows each
//! per-object event of a server-streaming Deploy (redis, waited for until ready). Chromium starts with a fresh profile, its proxy
//! set to 127.0.0.1:1 and background networking off, so it never reaches outside the machine.
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

/// What the page saw, from its title once its script is done (`done {json}` or `error: ...`):
/// Chromium runs with a DevTools port on loopback, whose target list gives each page's title.
async fn run_page(browser: &Path, url: &str) -> serde_json::Value {
    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(browser)
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
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
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

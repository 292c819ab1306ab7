//! Per-deployment virtualenvs for python-module workloads: `<deployment>/venv`, created with
//! `--system-site-packages` (so the interpreter's own jac_splice is seen) and the requested
//! packages installed by pip. Reused while the package list stays the same (a marker file holds
//! it, written last, so a venv a crash interrupted is rebuilt from scratch). Each step runs in
//! its own process group, bounded in time.
//!
//! The packages are requirement strings the catalog has checked (PEP 508, no options, paths or
//! URLs); they go to pip after `--`. Where pip looks for them is the operator's [`PipSource`]
//! (`--pip-index-url`, `--pip-find-links`), never the request's. pip's output goes to
//! `<deployment>/venv.log` (0600) and nowhere else: a failure is reported by a short reason
//! ([`pip_reason`]), so nothing pip prints (or a file it was made to read) reaches a response,
//! a record or the orchestrator's log.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

use super::error::{Error, Result};
use super::process::MARKER_ENV;
use super::state::{blocking, write_atomically};

const MARKER: &str = ".jac-orc-packages";
/// A pip run that takes longer than this is killed (a hung index, a huge build).
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Where pip installs packages from: the operator's configuration.
#[derive(Clone, Default)]
pub struct PipSource {
    /// Package index (`--pip-index-url`); given to pip as `PIP_INDEX_URL`, so it never shows in
    /// a process list. `None`: pip's own default (or the orchestrator's environment).
    pub index_url: Option<String>,
    /// A folder of wheels and source archives (`--pip-find-links`). Without `index_url`, pip
    /// looks only there (`--no-index`).
    pub find_links: Option<PathBuf>,
}

impl std::fmt::Debug for PipSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The index URL may carry credentials.
        f.debug_struct("PipSource")
            .field("index_url", &self.index_url.as_ref().map(|_| "<set>"))
            .field("find_links", &self.find_links)
            .finish()
    }
}

impl PipSource {
    /// pip's arguments before the `--` that ends its options.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"].map(String::from).to_vec();
        if let Some(dir) = &self.find_links {
            args.push("--find-links".into());
            args.push(dir.display().to_string());
            if self.index_url.is_none() {
                args.push("--no-index".into());
            }
        }
        args
    }
}

/// Makes sure `<dir>/venv` has `packages`; returns its interpreter.
pub(super) async fn prepare(
    dir: &Path,
    python: &str,
    packages: &[String],
    source: &PipSource,
    object: &str,
) -> Result<PathBuf> {
    if let Some(i) = packages.iter().position(|p| !is_plain(p)) {
        // The catalog refuses these; a record written before it did must not reach pip either.
        let reason = format!("package {} is not a plain requirement (no options, paths or URLs)", i + 1);
        return Err(Error::Venv { object: object.into(), step: "pip install", reason });
    }
    let venv = dir.join("venv");
    let marker = venv.join(MARKER);
    let venv_python = venv.join("bin").join("python");
    let wanted = packages.join("\n");
    let current = tokio::fs::read_to_string(&marker).await.ok();
    if current.as_deref() == Some(wanted.as_str()) {
        return Ok(venv_python);
    }
    let step = Step { dir, cwd: &dir.join("data"), log: &dir.join("venv.log"), object };
    if current.is_none() {
        // Absent, or half-made by a run that died: start clean.
        let stale = venv.clone();
        blocking(move || match std::fs::remove_dir_all(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", stale)(e)),
            _ => Ok(()),
        })
        .await?;
        let args = ["-m", "venv", "--system-site-packages"].map(String::from);
        let mut args = args.to_vec();
        args.push(venv.display().to_string());
        step.run(python, &args, &[], "creating the virtualenv").await?;
    }
    let mut args = source.args();
    args.push("--".into());
    args.extend(packages.iter().cloned());
    let env: Vec<(&str, &str)> = source.index_url.iter().map(|u| ("PIP_INDEX_URL", u.as_str())).collect();
    step.run(&venv_python.display().to_string(), &args, &env, "pip install").await?;
    blocking(move || write_atomically(&marker, wanted.as_bytes())).await?;
    Ok(venv_python)
}

/// Starts with a letter or digit and holds nothing a path, URL or option needs.
fn is_plain(p: &str) -> bool {
    p.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !p.contains(['/', '\\', '@', '\n', '\r', '\t'])
        && !p.contains(" -")
        && !p.contains("://")
}

/// One step of preparing a virtualenv: where it runs and logs.
struct Step<'a> {
    dir: &'a Path,
    cwd: &'a Path,
    log: &'a Path,
    object: &'a str,
}

impl Step<'_> {
    async fn run(&self, program: &str, args: &[String], env: &[(&str, &str)], step: &'static str) -> Result<()> {
        let log = self.log;
        let open = || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log).map_err(Error::io("open", log))
        };
        let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env(MARKER_ENV, self.dir)
            .current_dir(self.cwd)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn { object: self.object.into(), program: program.into(), source })?;
        let status = match tokio::time::timeout(STEP_TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(Error::io("wait for", program))?,
            Err(_) => {
                if let Some(pid) = child.id() {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.wait().await;
                let reason = format!("killed after {} s", STEP_TIMEOUT.as_secs());
                return Err(Error::Venv { object: self.object.into(), step, reason });
            }
        };
        if status.success() {
            return Ok(());
        }
        let text = tokio::fs::read(log).await.unwrap_or_default();
        let output = String::from_utf8_lossy(text.get(start as usize..).unwrap_or_default()).into_owned();
        let packages = args.iter().skip_while(|a| *a != "--").skip(1).cloned().collect::<Vec<_>>();
        let reason = pip_reason(&output, &packages, status);
        Err(Error::Venv { object: self.object.into(), step, reason })
    }
}

/// A short reason for a failed step, from what it printed: a fixed phrase per kind of failure,
/// naming at most one of the requested `packages` (checked strings, never pip's text).
fn pip_reason(output: &str, packages: &[String], status: ExitStatus) -> String {
    let named = |marker: &str| -> Option<&String> {
        let rest = output.lines().find_map(|l| l.split_once(marker).map(|(_, r)| r.trim()))?;
        packages.iter().find(|p| rest == p.as_str() || rest.starts_with(&format!("{p} ")))
    };
    let has = |needles: &[&str]| needles.iter().any(|n| output.contains(n));
    for marker in ["No matching distribution found for ", "Could not find a version that satisfies the requirement "] {
        if output.contains(marker) {
            return match named(marker) {
                Some(p) => format!("no matching distribution for {p}"),
                None => "no matching distribution for a requested package".into(),
            };
        }
    }
    if has(&["ResolutionImpossible", "conflicting dependencies"]) {
        return "the requested packages have conflicting dependencies".into();
    }
    if has(&["Failed to build", "subprocess-exited-with-error", "metadata-generation-failed"]) {
        return "building a package from source failed".into();
    }
    if has(&[
        "NewConnectionError",
        "Max retries exceeded",
        "Could not fetch URL",
        "Temporary failure in name resolution",
    ]) {
        return "the package index could not be reached".into();
    }
    if has(&["externally-managed-environment"]) {
        return "the interpreter refuses pip installs (externally managed)".into();
    }
    if has(&["ensurepip is not available", "No module named venv"]) {
        return "the interpreter cannot create virtualenvs (is python3-venv installed?)".into();
    }
    if has(&["No module named pip"]) {
        return "the virtualenv has no pip".into();
    }
    format!("{status} (the deployment's venv.log has pip's output)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn failed() -> ExitStatus {
        ExitStatus::from_raw(1 << 8)
    }

    #[test]
    fn reasons_are_fixed_phrases_that_name_only_requested_packages() {
        let packages = vec!["jacorc-missing==1.0".to_string()];
        let out = "ERROR: Could not find a version that satisfies the requirement jacorc-missing==1.0 (from versions: none)\nERROR: No matching distribution found for jacorc-missing==1.0\n";
        assert_eq!(pip_reason(out, &packages, failed()), "no matching distribution for jacorc-missing==1.0");
        // Whatever else pip prints (here: lines of a file it was made to read) is not repeated.
        let out = "ERROR: No matching distribution found for root:x:0:0:root:/root:/bin/bash\n";
        let reason = pip_reason(out, &packages, failed());
        assert_eq!(reason, "no matching distribution for a requested package");
        let reason = pip_reason("Invalid requirement: 'daemon:x:1:1:daemon'\n", &packages, failed());
        assert!(!reason.contains("daemon"), "{reason}");
        assert!(reason.contains("venv.log"), "{reason}");
        let out = "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError'";
        assert_eq!(pip_reason(out, &packages, failed()), "the package index could not be reached");
    }

    #[test]
    fn pip_gets_the_operators_source_and_a_double_dash() {
        let none = PipSource::default().args();
        assert!(!none.iter().any(|a| a.contains("index") || a.contains("find-links")), "{none:?}");
        let local = PipSource { index_url: None, find_links: Some("/wheels".into()) }.args();
        assert!(local.windows(2).any(|w| w == ["--find-links", "/wheels"]) && local.contains(&"--no-index".into()));
        let both = PipSource { index_url: Some("https://u:p@idx/simple".into()), find_links: Some("/w".into()) };
        assert!(!both.args().contains(&"--no-index".into()));
        assert!(!both.args().iter().any(|a| a.contains("idx")), "the index URL stays out of argv");
        assert!(!format!("{both:?}").contains("u:p"), "{both:?}");
    }

    #[test]
    fn records_that_hold_options_paths_or_urls_never_reach_pip() {
        for bad in ["-r", "/etc/passwd", "./x", "git+https://h/r", "p @ file:///x", "numpy --index-url", ""] {
            assert!(!is_plain(bad), "{bad}");
        }
        for ok in ["numpy", "numpy==2.1.3", "requests[socks]>=2; python_version >= \"3.9\""] {
            assert!(is_plain(ok), "{ok}");
        }
    }
}

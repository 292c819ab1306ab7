//! Per-deployment virtualenvs for python-module workloads: `<deployment>/venv`, created with
//! `--system-site-packages` (so the interpreter's own jac_splice is seen) and the requested
//! packages installed by pip. Reused while the package list stays the same (a marker file holds
//! it, written last, so a venv a crash interrupted is rebuilt from scratch). Output goes to
//! `<deployment>/venv.log`; each step runs in its own process group, bounded in time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::error::{Error, Result};
use super::process::MARKER_ENV;
use super::state::{blocking, write_atomically};

const MARKER: &str = ".jac-orc-packages";
/// A pip run that takes longer than this is killed (a hung index, a huge build).
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Makes sure `<dir>/venv` has `packages`; returns its interpreter.
pub(super) async fn prepare(dir: &Path, python: &str, packages: &[String], object: &str) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let marker = venv.join(MARKER);
    let venv_python = venv.join("bin").join("python");
    let wanted = packages.join("\n");
    let current = tokio::fs::read_to_string(&marker).await.ok();
    if current.as_deref() == Some(wanted.as_str()) {
        return Ok(venv_python);
    }
    let log = dir.join("venv.log");
    let cwd = dir.join("data");
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
        run(python, &args, dir, &cwd, &log, object, "creating the virtualenv").await?;
    }
    let mut args: Vec<String> =
        ["-m", "pip", "install", "--disable-pip-version-check", "-q"].into_iter().map(String::from).collect();
    args.extend(packages.iter().cloned());
    run(&venv_python.display().to_string(), &args, dir, &cwd, &log, object, "pip install").await?;
    blocking(move || write_atomically(&marker, wanted.as_bytes())).await?;
    Ok(venv_python)
}

async fn run(
    program: &str,
    args: &[String],
    dir: &Path,
    cwd: &Path,
    log: &Path,
    object: &str,
    step: &'static str,
) -> Result<()> {
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log).map_err(Error::io("open", log))
    };
    let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let mut child = Command::new(program)
        .args(args)
        .env(MARKER_ENV, dir)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn { object: object.into(), program: program.into(), source })?;
    let status = match tokio::time::timeout(STEP_TIMEOUT, child.wait()).await {
        Ok(status) => status.map_err(Error::io("wait for", program))?,
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            return Err(Error::Venv {
                object: object.into(),
                step,
                log: format!("killed after {} s", STEP_TIMEOUT.as_secs()),
            });
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = tokio::fs::read(log).await.unwrap_or_default();
    let new = String::from_utf8_lossy(text.get(start as usize..).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = new.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    Err(Error::Venv { object: object.into(), step, log: if tail.is_empty() { status.to_string() } else { tail } })
}

//! Spawning and identifying workload processes.
//!
//! A workload is identified by its pid plus its start time (`/proc/PID/stat` field 22) and the
//! boot id, never by its title (redis rewrites its argv and environment). Each one runs in its
//! own process group, with its working directory inside its deployment directory and
//! `JAC_ORC_DEPLOYMENT_DIR` in its environment, output appended to its log file (never a pipe
//! to the orchestrator), and its identity in `workload.pid` beside the log. After a crash,
//! [`strays`] finds what a previous orchestrator left behind from those marks (a process found
//! by working directory alone must also run the recipe's program: see [`Stray::is_ours`]).

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::error::{Error, Result};

/// Environment variable every workload carries: its deployment directory.
pub(super) const MARKER_ENV: &str = "JAC_ORC_DEPLOYMENT_DIR";
pub(super) const PIDFILE: &str = "workload.pid";
const POLL: Duration = Duration::from_millis(50);
/// Upper bound on `/proc` entries and file descriptors looked at in one scan.
const MAX_SCAN: usize = 1 << 22;

/// Which process a workload is: stable across orchestrator restarts, immune to pid reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Identity {
    pub(super) pid: u32,
    /// Clock ticks after boot at which the process started.
    pub(super) start_time: u64,
    pub(super) boot_id: String,
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) state: char,
    pub(super) pgrp: i32,
    pub(super) start_time: u64,
}

/// Parses `/proc/PID/stat`; `comm` may hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state(3) ppid(4) pgrp(5) ... starttime(22).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub(super) fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
    })
}

impl Identity {
    /// The identity of a running pid, now.
    pub(super) fn of(pid: u32) -> Option<Identity> {
        let s = stat(pid)?;
        Some(Identity { pid, start_time: s.start_time, boot_id: boot_id().to_string() })
    }

    /// Whether this very process still runs (a zombie does not count).
    pub(super) fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && stat(self.pid).is_some_and(|s| s.start_time == self.start_time && !matches!(s.state, 'Z' | 'X' | 'x'))
    }

    /// Signals the process's group when it leads one (ours do), else the process alone.
    pub(super) fn signal(&self, signal: Signal) {
        let Some(s) = stat(self.pid).filter(|s| s.start_time == self.start_time) else {
            return;
        };
        let pid = Pid::from_raw(self.pid as i32);
        let _ = if s.pgrp == self.pid as i32 { killpg(pid, signal) } else { kill(pid, signal) };
    }

    /// SIGTERM, then SIGKILL after `grace`, for a process that is not our child (adopted, or left
    /// over by a crash): polls until it is gone, bounded.
    pub(super) async fn stop(&self, grace: Duration) -> bool {
        if !self.is_alive() {
            return false;
        }
        self.signal(Signal::SIGTERM);
        for signal in [Some(Signal::SIGKILL), None] {
            let rounds = grace.as_millis() / POLL.as_millis() + 1;
            for _ in 0..rounds {
                if !self.is_alive() {
                    return true;
                }
                tokio::time::sleep(POLL).await;
            }
            match signal {
                Some(s) => self.signal(s),
                None => tracing::warn!(pid = self.pid, "process survived SIGKILL"),
            }
        }
        true
    }

    fn line(&self) -> String {
        format!("{} {} {}\n", self.pid, self.start_time, self.boot_id)
    }

    fn parse_line(text: &str) -> Option<Identity> {
        let mut it = text.split_whitespace();
        let id = Identity {
            pid: it.next()?.parse().ok()?,
            start_time: it.next()?.parse().ok()?,
            boot_id: it.next()?.into(),
        };
        Some(id)
    }
}

/// Reads a deployment directory's pidfile.
pub(super) fn read_pidfile(dir: &Path) -> Option<Identity> {
    Identity::parse_line(&std::fs::read_to_string(dir.join(PIDFILE)).ok()?)
}

/// Everything needed to start a workload, again and again (supervised restarts).
#[derive(Debug, Clone)]
pub(super) struct Launch {
    /// For messages: `process.local.jac-orc/NAME`.
    pub(super) object: String,
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    /// The deployment directory: holds the log and the pidfile, marks the process.
    pub(super) dir: PathBuf,
    /// The working directory (inside `dir`).
    pub(super) cwd: PathBuf,
    /// Where it serves (0: nowhere known); a replica counts as ready once it accepts there.
    pub(super) port: u16,
    /// Which replica it is: 0 for the deployment's workload, 1.. for the extras (`replicas.rs`),
    /// so a restart is recorded in the right place.
    pub(super) replica: usize,
}

impl Launch {
    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("process.log")
    }

    /// Starts the process in its own group and records its identity in the pidfile.
    pub(super) async fn spawn(&self) -> Result<(Child, Identity)> {
        let log_path = self.log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(Error::io("open", &log_path))?;
        let err = log.try_clone().map_err(Error::io("open", &log_path))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(MARKER_ENV, &self.dir)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let spawn_error = |source| Error::Spawn { object: self.object.clone(), program: self.program.clone(), source };
        let child = cmd.spawn().map_err(spawn_error)?;
        let pid = child.id().unwrap_or(0);
        let identity = Identity::of(pid).ok_or_else(|| {
            spawn_error(std::io::Error::new(std::io::ErrorKind::NotFound, format!("pid {pid} vanished at once")))
        })?;
        write_pidfile(&self.dir, &identity).await?;
        Ok((child, identity))
    }
}

async fn write_pidfile(dir: &Path, identity: &Identity) -> Result<()> {
    let path = dir.join(PIDFILE);
    let line = identity.line();
    super::fs::blocking(move || super::fs::write_atomically(&path, line.as_bytes())).await
}

/// Removes a deployment directory's pidfile (its workload was stopped).
pub(super) async fn remove_pidfile(dir: &Path) {
    let path = dir.join(PIDFILE);
    let _ = tokio::fs::remove_file(path).await;
}

/// Stops a child we spawned: SIGTERM to its group, SIGKILL after `grace`, then reaps it.
pub(super) async fn stop_child(child: &mut Child, identity: &Identity, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    identity.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return;
    }
    identity.signal(Signal::SIGKILL);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(pid = identity.pid, "workload survived SIGKILL");
    }
}

/// A process found in a deployment directory: by its marker variable or its working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stray {
    pub(super) identity: Identity,
    pub(super) pgrp: i32,
    /// The deployment directory (`<root>/<namespace>/<module>/<name>`).
    pub(super) dir: PathBuf,
    /// Found by `JAC_ORC_DEPLOYMENT_DIR` (certainly ours) rather than by working directory alone
    /// (a user's shell could sit there too; redis wipes its environment).
    pub(super) marked: bool,
    /// The program it runs: the first word of its title.
    pub(super) program: String,
}

impl Stray {
    /// Whether it is certainly a workload (or virtualenv step) of its deployment: marked, or
    /// running the recipe's `program` (by name) or a program from inside the deployment dir.
    pub(super) fn is_ours(&self, program: Option<&str>) -> bool {
        let base = |s: &str| Path::new(s).file_name().map(|f| f.to_owned());
        self.marked
            || Path::new(&self.program).starts_with(&self.dir)
            || program.is_some_and(|p| base(p).is_some() && base(p) == base(&self.program))
    }
}

/// Every live process of this user whose `JAC_ORC_DEPLOYMENT_DIR` or working directory lies
/// under `root` (the data dir's `deployments/`), except this process.
pub(super) fn strays(root: &Path) -> Vec<Stray> {
    let me = std::process::id();
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.take(MAX_SCAN).flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || entry.metadata().ok().map(|m| m.uid()) != uid {
            continue;
        }
        let marker = marker_dir(pid).and_then(|d| deployment_dir(root, &d));
        let marked = marker.is_some();
        let cwd = || std::fs::read_link(format!("/proc/{pid}/cwd")).ok().and_then(|d| deployment_dir(root, &d));
        let Some(dir) = marker.or_else(cwd) else {
            continue;
        };
        let Some(s) = stat(pid).filter(|s| !matches!(s.state, 'Z' | 'X' | 'x')) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let title = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let program = String::from_utf8_lossy(title).split_whitespace().next().unwrap_or_default().to_string();
        let identity = Identity { pid, start_time: s.start_time, boot_id: boot_id().to_string() };
        found.push(Stray { identity, pgrp: s.pgrp, dir, marked, program });
    }
    found
}

/// The directory in a process's `JAC_ORC_DEPLOYMENT_DIR`.
fn marker_dir(pid: u32) -> Option<PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
}

/// `<root>/<ns>/<module>/<name>` for any path at or below it.
fn deployment_dir(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<_> = rel.components().take(3).collect();
    (parts.len() == 3).then(|| parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Whether `pid` (or a member of its process group) listens on 127.0.0.1:`port` (or any
/// address): a foreign process that took the port does not make our workload ready.
pub(super) fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(pid, port);
    if inodes.is_empty() {
        return false;
    }
    if owns_socket(pid, &inodes) {
        return true;
    }
    // Rare: a workload that forks and listens in a child of its group.
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .take(MAX_SCAN)
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .any(|other| other != pid && stat(other).is_some_and(|s| s.pgrp == pid as i32) && owns_socket(other, &inodes))
}

fn listening_inodes(pid: u32, port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1).take(MAX_SCAN) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

fn owns_socket(pid: u32, inodes: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.take(MAX_SCAN)
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text =
            "4242 (redis-server 127.0.0.1:6379) (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 5 0 987654 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!((s.state, s.pgrp, s.start_time), ('S', 4242, 987654));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_live_identity_that_survives_a_pidfile_round_trip() {
        let me = Identity::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert_eq!(Identity::parse_line(&me.line()), Some(me.clone()));
        let older = Identity { start_time: me.start_time.wrapping_sub(1), ..me.clone() };
        assert!(!older.is_alive(), "a recycled pid is not the same process");
        let other_boot = Identity { boot_id: "another-boot".into(), ..me };
        assert!(!other_boot.is_alive());
    }

    #[test]
    fn deployment_dirs_are_three_levels_below_the_root() {
        let root = Path::new("/d/deployments");
        assert_eq!(
            deployment_dir(root, Path::new("/d/deployments/default/redis/cache/data")),
            Some(PathBuf::from("/d/deployments/default/redis/cache"))
        );
        assert_eq!(deployment_dir(root, Path::new("/d/deployments/default/redis")), None);
        assert_eq!(deployment_dir(root, Path::new("/elsewhere/default/redis/cache")), None);
    }

    #[tokio::test]
    async fn a_spawned_workload_leads_its_own_group_is_found_by_its_marks_and_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("deployments");
        let dir = root.join("default").join("test").join("sleepy");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let launch = Launch {
            object: "process.local.jac-orc/sleepy".into(),
            program: "sleep".into(),
            args: vec!["30".into()],
            env: vec![],
            dir: dir.clone(),
            cwd: dir.join("data"),
            port: 0,
            replica: 0,
        };
        let (mut child, identity) = launch.spawn().await.unwrap();
        assert_eq!(read_pidfile(&dir), Some(identity.clone()));
        assert_eq!(stat(identity.pid).unwrap().pgrp, identity.pid as i32, "own process group");
        let found = strays(&root);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((&found[0].identity, &found[0].dir, found[0].marked), (&identity, &dir, true));
        assert!(found[0].is_ours(None));
        let by_cwd_only = Stray { marked: false, ..found[0].clone() };
        assert!(by_cwd_only.is_ours(Some("/usr/bin/sleep")), "same program name");
        assert!(!by_cwd_only.is_ours(Some("redis-server")), "a stranger whose cwd is there is left alone");
        stop_child(&mut child, &identity, Duration::from_secs(5)).await;
        assert!(!identity.is_alive());
        assert!(strays(&root).is_empty());
    }
}

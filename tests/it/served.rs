//! `jac-orc serve` as a process of its own (the real binary, the local backend, a temporary data
//! dir), for what only a process shows: its log, its generated token and certificate, its
//! open-file limit. [`Served::stop`] (or dropping it) ends the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::T;

pub(crate) struct Served {
    /// `host:port` it listens on.
    pub(crate) addr: String,
    pub(crate) data: tempfile::TempDir,
    prefix: Vec<String>,
    args: Vec<String>,
    /// Extra environment, set after the harness's own (so it may override it).
    env: Vec<(String, String)>,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Runs `prefix... jac-orc serve --backend local --listen 127.0.0.1:0 --data-dir D args...`
    /// (`prefix` e.g. `prlimit --nofile=256:256 --`) and waits until it announces its address.
    pub(crate) async fn start(prefix: &[&str], args: &[&str]) -> Served {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self::start_in(tempfile::tempdir().expect("tempdir"), owned(prefix), owned(args), Vec::new()).await
    }

    /// [`Served::start`] with extra environment variables (an empty value removes one). When
    /// they set `HOST` or `PORT`, no `--listen` is passed, so those decide the address.
    pub(crate) async fn start_env(args: &[&str], env: &[(&str, &str)]) -> Served {
        let args = args.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_in(tempfile::tempdir().expect("tempdir"), Vec::new(), args, env).await
    }

    /// Stops it (SIGTERM, a clean exit) and starts it again on the same data dir.
    pub(crate) async fn restart(mut self) -> Served {
        self.terminate();
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("tempdir"));
        let (prefix, args) = (std::mem::take(&mut self.prefix), std::mem::take(&mut self.args));
        let env = std::mem::take(&mut self.env);
        Self::start_in(data, prefix, args, env).await
    }

    async fn start_in(
        data: tempfile::TempDir,
        prefix: Vec<String>,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Served {
        use std::io::BufRead;
        let bin = env!("CARGO_BIN_EXE_jac-orc");
        let (program, rest): (String, Vec<String>) = match prefix.split_first() {
            Some((p, rest)) => (p.clone(), rest.iter().cloned().chain([bin.to_string()]).collect()),
            None => (bin.to_string(), Vec::new()),
        };
        let legacy_listen = env.iter().any(|(k, v)| (k == "HOST" || k == "PORT") && !v.is_empty());
        let listen: &[&str] = if legacy_listen { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut command = Command::new(program);
        command
            .args(rest)
            .args(["serve", "--backend", "local"])
            .args(listen)
            .arg("--data-dir")
            .arg(data.path())
            .args(&args)
            .env("JAC_ORC_LOG", "info,jac_splice_orc::server=debug")
            .env("NO_COLOR", "1")
            .env_remove("MODULES")
            .env_remove("JAC_ORC_TOKEN_FILE")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("JAC_ORC_LISTEN")
            .env_remove("HOST")
            .env_remove("PORT")
            .env_remove("LOGGER_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            // An empty value removes a variable the harness sets (e.g. JAC_ORC_LOG).
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
        }
        let mut child = command.spawn().expect("jac-orc serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines, sink) = (std::io::BufReader::new(child.stderr.take().unwrap()).lines(), log.clone());
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        let mut served = Served { addr: String::new(), data, prefix, args, env, child, log };
        let line = served.wait_for_log("jac-orc listening on ").await;
        served.addr = line.split("jac-orc listening on ").nth(1).and_then(|r| r.split(' ').next()).unwrap().into();
        served
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
    }

    /// The admin token serve generated in its data dir.
    pub(crate) fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("token")).expect("the generated admin token").trim().to_string()
    }

    pub(crate) fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub(crate) fn certificate(&self) -> PathBuf {
        self.data.path().join("tls/server.crt")
    }

    pub(crate) fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the server logs a line containing `want`, and returns it.
    pub(crate) async fn wait_for_log(&mut self, want: &str) -> String {
        let found = async {
            loop {
                if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(want)) {
                    break l.clone();
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("jac-orc serve exited ({status}) before logging `{want}`:\n{}", self.log_text());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(T, found).await {
            Ok(line) => line,
            Err(_) => panic!("`{want}` never logged:\n{}", self.log_text()),
        }
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and waits for a clean exit.
    pub(crate) async fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("serve exits");
        assert!(status.success(), "jac-orc serve exits cleanly on SIGTERM: {status}\n{}", self.log_text());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

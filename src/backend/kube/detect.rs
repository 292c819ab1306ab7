//! Whether this process can talk to a Kubernetes cluster, for `serve --backend auto|kube`.
//!
//! Order: an explicit `--kubeconfig` path; in-cluster service-account credentials; `KUBECONFIG`
//! or `~/.kube/config`. [`detect`] only inspects configuration, so a laptop without a cluster
//! starts the local backend instantly; [`probe`] then checks that the cluster answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::errors::Error as KubeError;
use crate::backend::Result;

/// The outcome of [`detect`], with the reason for the startup log line.
#[derive(Clone)]
pub struct Detection {
    /// `None`: no cluster configuration was found (use the local backend).
    pub client: Option<kube::Client>,
    /// e.g. "in-cluster service account", "kubeconfig /root/.kube/config (context test)".
    pub reason: String,
}

impl std::fmt::Debug for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detection").field("client", &self.client.is_some()).field("reason", &self.reason).finish()
    }
}

/// Finds cluster configuration. An explicit `kubeconfig`, or a `KUBECONFIG`, that cannot be
/// loaded is an error; `~/.kube/config` and in-cluster credentials that are absent mean "no
/// cluster" (`client: None`).
pub async fn detect(kubeconfig: Option<&Path>) -> Result<Detection> {
    if let Some(path) = kubeconfig {
        let client = from_file(path).await?;
        return Ok(Detection {
            client: Some(client.0),
            reason: format!("kubeconfig {} ({})", path.display(), client.1),
        });
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let config = kube::Config::incluster()
            .map_err(|e| KubeError::config("running in a pod, but the in-cluster config is unusable", e))?;
        let client = kube::Client::try_from(config).map_err(|e| KubeError::config("in-cluster client", e))?;
        return Ok(Detection { client: Some(client), reason: "in-cluster service account".into() });
    }
    let implicit = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        // KUBECONFIG may list several files; kube merges them, we only need the first to exist.
        // Set but naming no file is a mistake to report, not "no cluster".
        Some(v) => match std::env::split_paths(&v).find(|p| p.exists()) {
            Some(p) => Some(p),
            None => {
                let listed = v.to_string_lossy().into_owned();
                let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
                return Err(KubeError::config(format!("KUBECONFIG={listed}"), missing).into());
            }
        },
        None => home_kubeconfig().filter(|p| p.exists()),
    };
    match implicit {
        Some(path) => {
            let client = from_file(&path).await?;
            Ok(Detection { client: Some(client.0), reason: format!("kubeconfig {} ({})", path.display(), client.1) })
        }
        None => {
            Ok(Detection { client: None, reason: "no in-cluster credentials, KUBECONFIG or ~/.kube/config".into() })
        }
    }
}

/// Asks the API server for its version (bounded by `timeout`), so `--backend auto` can fall back
/// to the local backend when a kubeconfig points at a cluster that is not there. Returns e.g.
/// `v1.20.2`.
pub async fn probe(client: &kube::Client, timeout: Duration) -> Result<String> {
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(info)) => Ok(info.git_version),
        Ok(Err(e)) => Err(KubeError::Unreachable { object: "/version".into(), source: Box::new(e) }.into()),
        Err(_) => Err(KubeError::ProbeTimeout(timeout).into()),
    }
}

fn home_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
}

/// A client from one kubeconfig file, and its current context's name.
async fn from_file(path: &Path) -> Result<(kube::Client, String)> {
    let what = format!("kubeconfig {}", path.display());
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| KubeError::config(&what, e))?;
    let context = kubeconfig.current_context.clone().unwrap_or_else(|| "no current context".into());
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| KubeError::config(&what, e))?;
    let client = kube::Client::try_from(config).map_err(|e| KubeError::config(&what, e))?;
    Ok((client, format!("context {context}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_explicit_kubeconfig_is_loaded_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kcfg");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\ncurrent-context: ctx\n",
        )
        .unwrap();
        let d = detect(Some(&path)).await.unwrap();
        assert!(d.client.is_some());
        assert_eq!(d.reason, format!("kubeconfig {} (context ctx)", path.display()));
    }

    #[tokio::test]
    async fn probe_reports_the_server_version_or_unavailable() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.uri().path(), "/version");
            let body = serde_json::json!({"major": "1", "minor": "20", "gitVersion": "v1.20.2", "gitCommit": "", "gitTreeState": "",
                "buildDate": "", "goVersion": "", "compiler": "", "platform": ""});
            send.send_response(Response::new(Body::from(serde_json::to_vec(&body).unwrap())));
            let (_, send) = handle.next_request().await.expect("a second request");
            send.send_error(std::io::Error::other("connection refused"));
        });
        assert_eq!(probe(&client, Duration::from_secs(5)).await.unwrap(), "v1.20.2");
        let err = probe(&client, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, crate::backend::Error::Kube(KubeError::Unreachable { .. })), "{err:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_explicit_but_missing_kubeconfig_is_an_error() {
        let err = detect(Some(Path::new("/nonexistent/kubeconfig"))).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
    }
}

//! `jac-orc serve`: wires the settings into a catalog, a backend (chosen and said why), its
//! security (`security`), the service layer and the server (and `--metrics-listen`), starts the
//! backend's loops (kube: leader election and the reconcile loop; local: its reconcile pass),
//! replays startup `MODULES` (readiness waits for it), and stops the workloads on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::backend::kube::{self as kube_backend, KubeBackend, KubeOptions};
use crate::backend::local::{LocalBackend, LocalOptions};
use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::config::{BackendChoice, ServeConfig};
use crate::proxy::ProxyConfig;
use crate::reconcile::{self, ControllerConfig, IdleScaler, KubeLoops, LeaseConfig, LocalLoop};
use crate::service::{Readiness, Service, Settings};
use crate::{server, startup};

pub(crate) async fn serve(cfg: ServeConfig) -> Result<()> {
    let catalog = Arc::new(match &cfg.manifests_path {
        Some(p) => Catalog::with_override(p).with_context(|| format!("--manifests-path {}", p.display()))?,
        None => Catalog::builtin(),
    });
    let Chosen { backend, local, kube, client: kube_client } = choose_backend(&cfg).await?;
    let settings = Settings {
        namespace: cfg.namespace.clone(),
        restricted_namespace: cfg.restricted_namespace,
        proxy: ProxyConfig::default()
            .max_message_bytes(cfg.max_message_bytes)
            .max_buffered_bytes(cfg.max_buffered_bytes)
            .access_ttl(cfg.module_access_ttl),
        edge: cfg.edge.clone(),
        ensure: cfg.ensure_allow.clone().map(crate::service::EnsurePolicy::allow).unwrap_or_default(),
        history_limit: cfg.history_limit,
    };
    let security = super::security::setup(&cfg.security, &cfg.data_dir, cfg.listen, kube_client.as_ref())?;
    let startup_requests = match &cfg.modules {
        Some(text) => match startup::load(text) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = format!("{:#}", anyhow::Error::new(e)), "ignoring MODULES");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    // Ready from the first moment when there is nothing to wait for: clients that connect as
    // soon as the address is announced (and ask the health service what this is) see SERVING.
    let restoring = local.is_some() && backend.list().await.map(|records| !records.is_empty()).unwrap_or(true);
    let readiness = if restoring || !startup_requests.is_empty() { Readiness::pending() } else { Readiness::started() };
    let service = Arc::new(
        Service::new(catalog, backend.clone(), settings)
            .with_authorizer(security.authorizer)
            .with_readiness(readiness.clone()),
    );
    let loops = match kube {
        Some((kube, mut loops)) => {
            match kube.migrate_records().await {
                Ok(m) if m == Default::default() => {}
                Ok(m) => tracing::info!(
                    converted = m.converted,
                    already = m.already,
                    skipped = m.skipped,
                    "old deployment records migrated to JacDeployments"
                ),
                Err(e) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(e)),
                    "old deployment records not migrated; retried at the next start"
                ),
            }
            let scope = cfg.restricted_namespace.then(|| cfg.namespace.clone());
            loops.start(kube, service.clone(), ControllerConfig::default().namespace(scope));
            Some(loops)
        }
        None => None,
    };
    let local_loop =
        local.as_ref().map(|l| LocalLoop::start(l.clone(), service.clone(), reconcile::local::DEFAULT_PERIOD));
    // On Kubernetes only the leader scales to zero, as only it reconciles.
    let idle =
        IdleScaler::start(backend.clone(), reconcile::idle::DEFAULT_PERIOD, loops.as_ref().map(KubeLoops::leading));
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let metrics = match cfg.metrics_listen {
        Some(at) => Some(serve_metrics(at).await?),
        None => None,
    };
    let shutdown = shutdown_signal()?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        templates = %cfg.manifests_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "builtin".into()),
        "jac-orc listening on {addr} (gRPC, grpc-web and REST)"
    );
    {
        let service = service.clone();
        tokio::spawn(async move {
            if let Some(local) = local {
                local.restore().await;
            }
            if !startup_requests.is_empty() {
                startup::replay(service, startup_requests).await;
            }
            readiness.mark_started();
        });
    }
    server::serve(listener, service, security.options, shutdown).await?;
    if let Some((stop, task)) = metrics {
        stop.cancel();
        let _ = task.await;
    }
    idle.stop().await;
    if let Some(loops) = loops {
        loops.stop().await;
    }
    tracing::info!("stopping workloads");
    backend.shutdown().await;
    // After the shutdown, so a pass in flight ends at its next step instead of starting workloads.
    if let Some(l) = local_loop {
        l.stop().await;
    }
    Ok(())
}

/// `--metrics-listen`: `/metrics` alone on its own address, without authentication (the axum
/// example's separate port; where it is reachable is the operator's choice of address).
async fn serve_metrics(
    at: std::net::SocketAddr,
) -> Result<(tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>)> {
    let listener =
        tokio::net::TcpListener::bind(at).await.with_context(|| format!("cannot listen on {at} (--metrics-listen)"))?;
    let addr = listener.local_addr()?;
    let router =
        axum::Router::new().route("/metrics", axum::routing::get(|| async { crate::api::rest::metrics_response() }));
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    tracing::info!("metrics on http://{addr}/metrics");
    Ok((stop, task))
}

/// The backend to serve with; the local backend when that is the one (it restores workloads);
/// the kube backend, its loops (election, reconcile) and its client (it reviews tokens and
/// access) when that is the one.
struct Chosen {
    backend: Arc<dyn Backend>,
    local: Option<Arc<LocalBackend>>,
    kube: Option<(Arc<KubeBackend>, KubeLoops)>,
    client: Option<kube::Client>,
}

/// `--backend auto|kube|local`: kube when a cluster is configured and answers, else local; one
/// log line says which and why.
async fn choose_backend(cfg: &ServeConfig) -> Result<Chosen> {
    let local = || -> Result<Chosen> {
        let options = LocalOptions { data_dir: cfg.data_dir.clone(), python: cfg.python.clone(), pip: cfg.pip.clone() };
        let l = Arc::new(LocalBackend::open(options)?);
        Ok(Chosen { backend: l.clone(), local: Some(l), kube: None, client: None })
    };
    if cfg.backend == BackendChoice::Local {
        tracing::info!(reason = "--backend local", "backend: local (child processes on 127.0.0.1)");
        return local();
    }
    let found = kube_backend::detect(cfg.kubeconfig.as_deref()).await;
    let found = match (found, cfg.backend) {
        (Ok(f), _) => f,
        (Err(e), BackendChoice::Kube) => return Err(e).context("--backend kube"),
        (Err(e), _) => {
            return Err(e).context(
                "--backend auto: the Kubernetes configuration cannot be loaded (fix it, or choose --backend local)",
            )
        }
    };
    let Some(client) = found.client else {
        if cfg.backend == BackendChoice::Kube {
            bail!("--backend kube: {}", found.reason);
        }
        tracing::info!(reason = %found.reason, "backend: local (child processes on 127.0.0.1)");
        return local();
    };
    match kube_backend::probe(&client, Duration::from_secs(5)).await {
        Ok(version) => {
            tracing::info!(reason = %found.reason, %version, "backend: kubernetes");
            if cfg.pip.index_url.is_some() || cfg.pip.find_links.is_some() {
                tracing::warn!("--pip-index-url and --pip-find-links apply to the local backend; module pods read the index from the Secret jac-orc-pip (key index-url) in their namespace");
            }
            let identity = reconcile::replica_identity();
            let loops = KubeLoops::elect(client.clone(), LeaseConfig::new(&cfg.namespace, &identity));
            let options = KubeOptions::default()
                .orchestrator_namespace(&cfg.namespace)
                .restricted_namespace(cfg.restricted_namespace)
                .leadership(loops.leading())
                .identity(identity);
            let kube = Arc::new(KubeBackend::new(client.clone(), options));
            Ok(Chosen { backend: kube.clone(), local: None, kube: Some((kube, loops)), client: Some(client) })
        }
        Err(e) if cfg.backend == BackendChoice::Auto => {
            tracing::warn!(reason = %found.reason, error = %e, "backend: local (the configured cluster does not answer)");
            local()
        }
        Err(e) => Err(e).context("--backend kube"),
    }
}

/// Registers SIGTERM and Ctrl-C handlers now (before the address is announced, so a supervisor
/// that signals right after seeing it gets a clean stop) and resolves when either arrives.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

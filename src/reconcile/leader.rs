//! One leader among the orchestrator's replicas: a `coordination.k8s.io/v1` Lease (on every
//! supported Kubernetes), taken and renewed as client-go's leader election does.
//!
//! - The holder renews `renewTime` every [`LeaseConfig::renew_every`]; it steps down as soon as
//!   it has not renewed for [`LeaseConfig::lease_duration`] (it may have lost the API server).
//! - Another replica takes the Lease over when its record (holder, renew time) has not changed
//!   for `lease_duration` as measured by its own clock, so clock skew between replicas does not
//!   matter; or at once when the holder released it (empty holder).
//! - Every write is an update at the resourceVersion read, so two candidates never both win.
//! - On shutdown the holder releases the Lease, so the next replica takes over immediately.
//!
//! [`elect`] returns a `watch` of "this replica leads" that the kube backend and the reconcile
//! loop follow.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read Lease {name}")]
    Read {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to write Lease {name}")]
    Write {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of an election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name (`jac-orc`).
    pub name: String,
    /// Namespace of the Lease (the orchestrator's).
    pub namespace: String,
    /// This replica's name (its pod's name), unique among the candidates.
    pub identity: String,
    /// How long a Lease is good for without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often the others look.
    pub retry_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: "jac-orc".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }

    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the lease duration, renewing at a third and looking at a fifth of it.
    #[must_use]
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self.renew_every = d / 3;
        self.retry_every = d / 5;
        self
    }
}

/// A running election: whether this replica leads, and the task to await after cancelling.
#[derive(Debug)]
pub struct Election {
    pub leading: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// What a candidate remembers of the Lease between looks.
#[derive(Debug, Default)]
struct Observed {
    /// (holder, renew time) last seen, and when it was first seen so.
    record: Option<(String, Option<MicroTime>)>,
    since: Option<Instant>,
    /// When this replica last renewed successfully.
    renewed: Option<Instant>,
}

struct Candidate {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Observed,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Candidate {
    fn lease(&self, prev: Option<&Lease>, transitions: i32, acquire: Option<MicroTime>) -> Lease {
        let seconds = i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                resource_version: prev.and_then(|l| l.metadata.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: acquire.or_else(|| Some(now())),
                renew_time: Some(now()),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// One look: take, keep or leave the Lease. Whether this replica leads now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let name = self.config.name.clone();
        let read = |source| Error::Read { name: name.clone(), source: Box::new(source) };
        let write = |source| Error::Write { name: name.clone(), source: Box::new(source) };
        let Some(lease) = self.api.get_opt(&self.config.name).await.map_err(read)? else {
            return match self.api.create(&PostParams::default(), &self.lease(None, 0, None)).await {
                Ok(_) => Ok(self.renewed()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(write(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), spec.renew_time.clone());
        if self.observed.record.as_ref() != Some(&record) {
            self.observed.record = Some(record);
            self.observed.since = Some(Instant::now());
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = if holder == self.config.identity {
            self.lease(Some(&lease), transitions, spec.acquire_time.clone())
        } else {
            let expired = self.observed.since.is_none_or(|t| t.elapsed() >= self.config.lease_duration);
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            tracing::info!(previous = %holder, "taking over the leader Lease");
            self.lease(Some(&lease), transitions + 1, None)
        };
        match self.api.replace(&self.config.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(self.renewed()),
            // Someone else wrote first: they lead (or renewed).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(write(e)),
        }
    }

    fn renewed(&mut self) -> bool {
        self.observed.renewed = Some(Instant::now());
        true
    }

    /// Whether a leader whose last look failed may still count itself leader.
    fn still_within_lease(&self) -> bool {
        self.observed.renewed.is_some_and(|t| t.elapsed() < self.config.lease_duration)
    }

    /// Gives the Lease up (empty holder), if this replica holds it.
    async fn release(&self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.config.name).await else { return };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        let released = Lease { metadata: lease.metadata.clone(), spec: Some(spec) };
        match self.api.replace(&self.config.name, &PostParams::default(), &released).await {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader Lease; it expires by itself"),
        }
    }
}

/// Starts campaigning for the Lease until `stop` is cancelled (then releases it if held).
pub fn elect(client: kube::Client, config: LeaseConfig, stop: CancellationToken) -> Election {
    let (tx, leading) = watch::channel(false);
    let span = tracing::info_span!("leader", lease = %config.name, identity = %config.identity);
    let api = Api::namespaced(client, &config.namespace);
    let mut candidate = Candidate { api, config, observed: Observed::default() };
    let task = tokio::spawn(
        async move {
            loop {
                let leads = match candidate.try_acquire_or_renew().await {
                    Ok(leads) => leads,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election step failed");
                        *tx.borrow() && candidate.still_within_lease()
                    }
                };
                if leads != *tx.borrow() {
                    tracing::info!(leading = leads, "leadership changed");
                }
                tx.send_replace(leads);
                let pause = if leads { candidate.config.renew_every } else { candidate.config.retry_every };
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            let held = *tx.borrow();
            tx.send_replace(false);
            if held {
                candidate.release().await;
            }
        }
        .instrument(span),
    );
    Election { leading, task }
}

//! Deployment → module-server endpoint and call token. The call token comes from the record
//! ([`Backend::get`], it holds the [`super::CALL_TOKEN`]), cached briefly so a hot path does not
//! hit the state store (or the Kubernetes API) on every call. The ready endpoints come from
//! [`Backend::watch_endpoints`] where the backend can watch (one task per deployment keeps the
//! set as it changes), else from [`Backend::module_endpoints`] under the same short cache.
//!
//! A call of a session goes where the session table ([`super::sessions`]) says (rendezvous
//! hashing for new sessions); a call without a session is balanced round robin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::affinity::Endpoint;
use super::sessions::Sessions;
use super::{Error, Result};
use crate::backend::{self, Backend};
use crate::plan::DeploymentId;

/// How long a call waits for a new watch's first endpoint set before asking the backend once.
const FIRST_SET: Duration = Duration::from_secs(5);
/// How often a call that woke a deployment looks for its endpoint (bounded by its deadline).
const WOKEN_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
struct Cached {
    at: Instant,
    /// Only for backends that cannot watch.
    endpoints: Option<Arc<[Endpoint]>>,
    /// `authorization: Bearer <call token>`, marked sensitive.
    call_token: http::HeaderValue,
    /// Where its module servers run when they are up (for errors).
    known: Vec<String>,
    /// Wake-ups from zero so far: sessions placed before the last one lost their objects.
    wakeups: u64,
}

/// Where the next call goes and what it authenticates with.
#[derive(Debug)]
pub struct Pick {
    pub endpoint: String,
    pub call_token: http::HeaderValue,
    /// The replica the call's session was on before it went away.
    pub lost: Option<Endpoint>,
    /// It went away because the deployment was scaled to zero since the session's last call.
    pub scaled_away: bool,
}

/// What a deployment's endpoint watch knows.
#[derive(Debug, Clone)]
enum Watched {
    /// No set yet.
    Pending,
    Ready(Arc<[Endpoint]>),
    /// The stream ended (the deployment is gone, or the watch broke): watch again next time.
    Ended,
}

#[derive(Debug)]
struct Watch {
    set: watch::Receiver<Watched>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
pub struct Resolver {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    cache: Mutex<HashMap<DeploymentId, Cached>>,
    /// Round-robin position per deployment (calls without a session); it outlives cache
    /// refreshes, so a refresh every `ttl` does not send the next call back to the first endpoint.
    next: Mutex<HashMap<DeploymentId, Arc<AtomicUsize>>>,
    sessions: Sessions,
    watches: Mutex<HashMap<DeploymentId, Watch>>,
    /// The backend offers no endpoint watch: endpoints are listed and cached like the token.
    cannot_watch: AtomicBool,
    /// Deployments a call of this proxy is waking now, with how many calls wait for it.
    waking: Mutex<HashMap<DeploymentId, usize>>,
}

impl Resolver {
    pub fn new(backend: Arc<dyn Backend>, ttl: Duration, session_ttl: Duration) -> Self {
        Resolver {
            backend,
            ttl,
            cache: Mutex::default(),
            next: Mutex::default(),
            sessions: Sessions::new(session_ttl),
            watches: Mutex::default(),
            cannot_watch: AtomicBool::new(false),
            waking: Mutex::default(),
        }
    }

    /// Whether calls wait for `id` to wake from zero (a call that runs out of time then says so).
    pub fn is_waking(&self, id: &DeploymentId) -> bool {
        self.waking.lock().expect("resolver lock").contains_key(id)
    }

    /// The endpoint the next call of `session` to `id` goes to, and the deployment's call token.
    pub async fn pick(&self, id: &DeploymentId, session: &str) -> Result<Pick> {
        let cached = match self.fresh(id) {
            Some(c) => c,
            None => self.refresh(id).await?,
        };
        let endpoints = match &cached.endpoints {
            Some(e) => e.clone(),
            None => self.watched(id).await?,
        };
        crate::metrics::global().endpoints_ready(&format!("{}/{}", id.namespace, id.name), endpoints.len());
        if endpoints.is_empty() {
            // The record's endpoints (where it runs when it is up) make the error actionable.
            return Err(Error::NoReadyEndpoint { deployment: id.clone(), known: cached.known });
        }
        if session.is_empty() {
            let counter = self.next.lock().expect("resolver lock").entry(id.clone()).or_default().clone();
            let i = counter.fetch_add(1, Ordering::Relaxed) % endpoints.len();
            let endpoint = endpoints[i].address.clone();
            return Ok(Pick { endpoint, call_token: cached.call_token, lost: None, scaled_away: false });
        }
        let route = self
            .sessions
            .route(id, session, &endpoints, Instant::now(), cached.wakeups)
            .ok_or_else(|| Error::NoReadyEndpoint { deployment: id.clone(), known: cached.known.clone() })?;
        let endpoint = route.endpoint.address;
        Ok(Pick { endpoint, call_token: cached.call_token, lost: route.lost, scaled_away: route.scaled_away })
    }

    /// As [`Resolver::pick`], but a deployment scaled to zero is woken first: the call waits
    /// (up to `within`, the rest of its deadline) for the backend to bring it back and for its
    /// endpoint to show, and fails with [`Error::WakeDeadline`] past it. Concurrent calls make
    /// one wake-up: the backend serializes wakes, and the later ones find it awake.
    pub async fn pick_waking(&self, id: &DeploymentId, session: &str, within: Duration) -> Result<Pick> {
        let known = match self.pick(id, session).await {
            Err(Error::NoReadyEndpoint { deployment, known }) => (deployment, known),
            other => return other,
        };
        match self.backend.get(id).await {
            Ok(Some(record)) if record.status == backend::Status::Idle => {}
            _ => return Err(Error::NoReadyEndpoint { deployment: known.0, known: known.1 }),
        }
        self.wake_and_pick(id, session, within).await
    }

    /// Wakes `id` from zero and picks for `session` once it has a ready endpoint (see
    /// [`Resolver::pick_waking`]); also for a call whose picked module server turned out gone
    /// while the deployment sleeps (the endpoint set can lag a scale to zero by a moment).
    pub async fn wake_and_pick(&self, id: &DeploymentId, session: &str, within: Duration) -> Result<Pick> {
        let _waiting = Waiting::new(&self.waking, id);
        let wake = async {
            // The backend's own readiness bound, not the caller's: a wake-up outlives a caller
            // that gives up, so the next call finds the deployment awake.
            self.backend
                .wake(id, super::WAKE_WITHOUT_DEADLINE)
                .await
                .map_err(|source| Error::WakeFailed { deployment: Box::new(id.clone()), source })?;
            self.invalidate(id);
            // The endpoint watch may see the woken module server a moment after the backend.
            loop {
                match self.pick(id, session).await {
                    Err(Error::NoReadyEndpoint { .. }) => tokio::time::sleep(WOKEN_POLL).await,
                    other => return other,
                }
            }
        };
        tokio::time::timeout(within, wake)
            .await
            .unwrap_or_else(|_| Err(Error::WakeDeadline { deployment: Box::new(id.clone()), timeout: within }))
    }

    /// Whether `id`'s record says it is scaled to zero.
    pub async fn is_asleep(&self, id: &DeploymentId) -> bool {
        matches!(self.backend.get(id).await, Ok(Some(r)) if r.status == backend::Status::Idle)
    }

    /// Forgets what is cached for `id` (after a connection error, so the next call asks the
    /// backend again and sees a restarted or rescheduled module server).
    pub fn invalidate(&self, id: &DeploymentId) {
        self.cache.lock().expect("resolver lock").remove(id);
    }

    fn fresh(&self, id: &DeploymentId) -> Option<Cached> {
        let cache = self.cache.lock().expect("resolver lock");
        cache.get(id).filter(|c| c.at.elapsed() < self.ttl).cloned()
    }

    /// The watched endpoint set of `id`, starting the watch on first use.
    async fn watched(&self, id: &DeploymentId) -> Result<Arc<[Endpoint]>> {
        // Decided under the lock, awaited after it.
        let set = {
            let mut watches = self.watches.lock().expect("resolver lock");
            if watches.get(id).is_some_and(|w| matches!(*w.set.borrow(), Watched::Ended)) {
                watches.remove(id);
            }
            match watches.get(id) {
                Some(w) => Some(w.set.clone()),
                None => self.backend.watch_endpoints(id).map(|stream| {
                    let w = start_watch(id.clone(), stream);
                    let set = w.set.clone();
                    watches.insert(id.clone(), w);
                    set
                }),
            }
        };
        let Some(mut set) = set else {
            self.cannot_watch.store(true, Ordering::Relaxed);
            let listed = self.listed(id).await?;
            if let Some(c) = self.cache.lock().expect("resolver lock").get_mut(id) {
                if !listed.is_empty() {
                    c.endpoints = Some(listed.clone());
                }
            }
            return Ok(listed);
        };
        let now = match tokio::time::timeout(FIRST_SET, set.wait_for(|w| !matches!(w, Watched::Pending))).await {
            Ok(Ok(now)) => now.clone(),
            _ => Watched::Ended,
        };
        match now {
            Watched::Ready(set) => Ok(set),
            // Gone or not answering: the backend says which.
            Watched::Ended | Watched::Pending => self.listed(id).await,
        }
    }

    /// The ready endpoints, asked once.
    async fn listed(&self, id: &DeploymentId) -> Result<Arc<[Endpoint]>> {
        match self.backend.module_endpoints(id).await {
            Ok(e) => Ok(e.into_iter().map(|a| Endpoint::new(a, "")).collect()),
            Err(backend::Error::NotFound(_)) => {
                self.sessions.forget(id);
                Err(Error::NotFound(id.clone()))
            }
            Err(e) => Err(Error::Backend(e)),
        }
    }

    async fn refresh(&self, id: &DeploymentId) -> Result<Cached> {
        let record = match self.backend.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.sessions.forget(id);
                self.watches.lock().expect("resolver lock").remove(id);
                return Err(Error::NotFound(id.clone()));
            }
            Err(e) => return Err(Error::Backend(e)),
        };
        let mut call_token = record
            .config
            .get(super::CALL_TOKEN)
            .and_then(serde_json::Value::as_str)
            .and_then(|t| http::HeaderValue::try_from(format!("Bearer {t}")).ok())
            .ok_or_else(|| Error::NoCallToken(id.clone()))?;
        call_token.set_sensitive(true);
        let endpoints = if self.cannot_watch.load(Ordering::Relaxed) { Some(self.listed(id).await?) } else { None };
        let cached =
            Cached { at: Instant::now(), endpoints, call_token, known: record.endpoints, wakeups: record.wakeups };
        // A set without endpoints is not cached: the module server may be back any moment.
        if cached.endpoints.as_ref().is_none_or(|e| !e.is_empty()) {
            self.cache.lock().expect("resolver lock").insert(id.clone(), cached.clone());
        }
        Ok(cached)
    }
}

/// One call waiting for a deployment to wake, counted in [`Resolver::is_waking`] while it lives.
struct Waiting<'a> {
    waking: &'a Mutex<HashMap<DeploymentId, usize>>,
    id: DeploymentId,
}

impl<'a> Waiting<'a> {
    fn new(waking: &'a Mutex<HashMap<DeploymentId, usize>>, id: &DeploymentId) -> Self {
        *waking.lock().expect("resolver lock").entry(id.clone()).or_default() += 1;
        Waiting { waking, id: id.clone() }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waking = self.waking.lock().expect("resolver lock");
        if let Some(n) = waking.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                waking.remove(&self.id);
            }
        }
    }
}

/// A task that keeps `id`'s endpoint set from the backend's stream.
fn start_watch(id: DeploymentId, mut stream: backend::endpoints::EndpointStream) -> Watch {
    let (tx, set) = watch::channel(Watched::Pending);
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(endpoints) => {
                    tracing::debug!(deployment = %id, ready = endpoints.len(), "module server endpoints changed");
                    tx.send_replace(Watched::Ready(endpoints.into()));
                }
                Err(backend::Error::NotFound(_)) => break,
                Err(e) => tracing::warn!(deployment = %id, error = %e, "watching module server endpoints"),
            }
        }
        tx.send_replace(Watched::Ended);
    });
    Watch { set, task }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;

    use super::*;
    use crate::backend::{ApplyOptions, DeploymentRecord, Progress, Status};
    use crate::plan::Plan;

    /// A backend that knows one deployment and counts endpoint lookups.
    struct Fake {
        endpoints: Mutex<Vec<String>>,
        lookups: AtomicU32,
        /// Handed out by the first `watch_endpoints` (none: the backend cannot watch).
        watch: Mutex<Option<backend::endpoints::EndpointStream>>,
    }

    fn id(name: &str) -> DeploymentId {
        DeploymentId { namespace: "default".into(), module: "python-module".into(), name: name.into() }
    }

    impl std::fmt::Debug for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Fake").finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl Backend for Fake {
        fn kind(&self) -> backend::Kind {
            backend::Kind::Local
        }
        async fn preflight(&self, _: &Plan) -> backend::Result<()> {
            Ok(())
        }
        async fn apply(&self, _: &Plan, _: &ApplyOptions, _: &Progress) -> backend::Result<DeploymentRecord> {
            Err(backend::Error::Rejected { object: "apply".into(), message: "not used by these tests".into() })
        }
        async fn delete(&self, _: &DeploymentId, _: &Progress) -> backend::Result<()> {
            Ok(())
        }
        async fn get(&self, id: &DeploymentId) -> backend::Result<Option<DeploymentRecord>> {
            let config = match id.name.as_str() {
                "known" => serde_json::json!({"call-token": "t0k3n"}),
                "tokenless" => serde_json::json!({}),
                _ => return Ok(None),
            };
            Ok(Some(DeploymentRecord {
                id: id.clone(),
                version: "latest".into(),
                config: config.as_object().cloned().unwrap(),
                secret_keys: vec!["call-token".into()],
                endpoints: vec!["127.0.0.1:9".into()],
                status: Status::Deployed,
                message: String::new(),
                objects: vec![],
                backend: backend::Kind::Local,
                updated_at: String::new(),
                wakeups: 0,
            }))
        }
        async fn list(&self) -> backend::Result<Vec<DeploymentRecord>> {
            Ok(vec![])
        }
        async fn history(&self, _: &DeploymentId) -> backend::Result<Vec<backend::Revision>> {
            Ok(vec![])
        }
        async fn record_revision(
            &self,
            _: &DeploymentId,
            _: backend::Revision,
            _: usize,
        ) -> backend::Result<backend::Revision> {
            Err(backend::Error::Rejected { object: "revision".into(), message: "not used by these tests".into() })
        }
        async fn logs(&self, _: &DeploymentId, _: &backend::LogOptions) -> backend::Result<backend::LogStream> {
            Err(backend::Error::Rejected { object: "logs".into(), message: "not used by these tests".into() })
        }
        async fn module_endpoints(&self, id: &DeploymentId) -> backend::Result<Vec<String>> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            if id.name != "known" {
                return Err(backend::Error::NotFound(id.clone()));
            }
            Ok(self.endpoints.lock().unwrap().clone())
        }
        fn watch_endpoints(&self, _: &DeploymentId) -> Option<backend::endpoints::EndpointStream> {
            self.watch.lock().unwrap().take()
        }
    }

    fn resolver(endpoints: &[&str]) -> (Arc<Fake>, Resolver) {
        let fake = Arc::new(Fake {
            endpoints: Mutex::new(endpoints.iter().map(|e| e.to_string()).collect()),
            lookups: AtomicU32::new(0),
            watch: Mutex::new(None),
        });
        let r = Resolver::new(fake.clone(), Duration::from_secs(3600), Duration::from_secs(3600));
        (fake, r)
    }

    #[tokio::test]
    async fn calls_rotate_over_ready_endpoints_from_one_cached_lookup() {
        let (fake, r) = resolver(&["a:1", "b:2", "c:3"]);
        let mut picked = Vec::new();
        for _ in 0..6 {
            let pick = r.pick(&id("known"), "").await.unwrap();
            assert_eq!(pick.call_token, "Bearer t0k3n");
            assert!(pick.call_token.is_sensitive(), "never logged by HTTP stacks");
            picked.push(pick.endpoint);
        }
        assert_eq!(picked, ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3"]);
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 1);

        // After invalidation the backend is asked again and the rotation carries on.
        *fake.endpoints.lock().unwrap() = vec!["d:4".into()];
        r.invalidate(&id("known"));
        assert_eq!(r.pick(&id("known"), "").await.unwrap().endpoint, "d:4");
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn unknown_deployments_and_ones_without_ready_servers_are_told_apart() {
        let (fake, r) = resolver(&[]);
        match r.pick(&id("gone"), "").await {
            Err(Error::NotFound(d)) => assert_eq!(d.name, "gone"),
            other => panic!("{other:?}"),
        }
        match r.pick(&id("known"), "").await {
            Err(e @ Error::NoReadyEndpoint { .. }) => {
                assert!(e.to_string().contains("127.0.0.1:9"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Not cached: the next call asks again, so a module server that comes back is seen.
        *fake.endpoints.lock().unwrap() = vec!["a:1".into()];
        assert_eq!(r.pick(&id("known"), "").await.unwrap().endpoint, "a:1");
    }

    #[tokio::test]
    async fn a_record_without_a_call_token_is_refused_before_any_endpoint_lookup() {
        let (fake, r) = resolver(&["a:1"]);
        match r.pick(&id("tokenless"), "").await {
            Err(e @ Error::NoCallToken(_)) => assert!(e.to_string().contains("tokenless"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 0);
    }

    /// Picks until `done` says yes (bounded: the watch task applies a change a moment later).
    async fn pick_until(r: &Resolver, session: &str, done: impl Fn(&Result<Pick>) -> bool) -> Result<Pick> {
        for _ in 0..2000 {
            let pick = r.pick(&id("known"), session).await;
            if done(&pick) {
                return pick;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the watched change never reached the resolver");
    }

    #[tokio::test]
    async fn a_watched_endpoint_set_is_followed_without_lookups_and_sessions_follow_it() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let fake = Arc::new(Fake {
            endpoints: Mutex::new(vec![]),
            lookups: AtomicU32::new(0),
            watch: Mutex::new(Some(Box::pin(rx))),
        });
        let r = Resolver::new(fake.clone(), Duration::from_secs(3600), Duration::from_secs(3600));
        let ep = |a: &str, i: &str| Endpoint::new(a, i);
        tx.unbounded_send(Ok(vec![ep("a:1", "1"), ep("b:2", "2")])).unwrap();
        let first = r.pick(&id("known"), "s").await.unwrap();
        assert!(["a:1", "b:2"].contains(&first.endpoint.as_str()), "{first:?}");
        assert!(first.lost.is_none());
        for _ in 0..5 {
            assert_eq!(r.pick(&id("known"), "s").await.unwrap().endpoint, first.endpoint, "the session sticks");
        }

        // Its replica leaves: the session moves to the other one and remembers the loss.
        let other = if first.endpoint == "a:1" { ep("b:2", "2") } else { ep("a:1", "1") };
        tx.unbounded_send(Ok(vec![other.clone()])).unwrap();
        let moved = pick_until(&r, "s", |p| p.as_ref().is_ok_and(|p| p.endpoint != first.endpoint)).await.unwrap();
        assert_eq!(moved.endpoint, other.address);
        assert_eq!(moved.lost.map(|l| l.address), Some(first.endpoint.clone()));

        // Nothing ready: no endpoint is picked.
        tx.unbounded_send(Ok(vec![])).unwrap();
        match pick_until(&r, "s", Result::is_err).await {
            Err(e @ Error::NoReadyEndpoint { .. }) => assert!(e.to_string().contains("127.0.0.1:9"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 0, "the set came from the watch alone");

        // The watch ends (deployment gone): the next call asks the backend, which has no watch now.
        tx.unbounded_send(Err(backend::Error::NotFound(id("known")))).unwrap();
        *fake.endpoints.lock().unwrap() = vec!["c:3".into()];
        let listed = pick_until(&r, "", |p| p.is_ok()).await.unwrap();
        assert_eq!(listed.endpoint, "c:3");
        assert!(fake.lookups.load(Ordering::Relaxed) >= 1);
    }
}

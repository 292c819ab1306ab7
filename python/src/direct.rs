//! Direct access to a jac-orc python-module deployment (`connect(url, route="direct"|"auto")`):
//! one session that calls the deployment's module servers itself, one network hop instead of
//! two through `ModuleProxy`.
//!
//! jac-orc hands out the ready endpoints and the call token (`GetModuleAccess`, authorized
//! like a proxied call). The session goes to the endpoint `ModuleProxy` would have chosen for it
//! (rendezvous hashing, [`affinity`]), and stays there while it is listed, as the proxy's
//! session table keeps it. The access is asked again when it expires (its `ttl_seconds`), after
//! a module server stops answering or refuses the token ([`Direct::failed`]), so replicas that
//! came or went and a new call token after a redeploy are followed. A deployment without a
//! ready module server (scaled to zero) is woken with `EnsureModule` and asked again, bounded.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::affinity;
use crate::client::{self, Connection, Options, Route};
use crate::proto::{EnsureModuleRequest, ModuleAccess, ProxyTarget};

/// How long a session waits for a woken deployment's first ready module server.
const WAKE_WITHIN: Duration = Duration::from_secs(60);
/// First pause between access requests while waiting for it (doubling up to a second).
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// Bound on one `GetModuleAccess` (jac-orc answers from its records at once).
const ACCESS_WITHIN: Duration = Duration::from_secs(15);

/// What module-server connections are made with (their token is the deployment's call token).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_message_bytes: usize,
    pub channels: usize,
    pub connect_timeout: Duration,
    pub heartbeat: Option<Duration>,
}

/// The endpoint a session is on, and until when the access that placed it holds.
#[derive(Debug, Clone)]
struct Current {
    route: Arc<Route>,
    endpoint: String,
    expires: Instant,
}

/// One direct session of one deployment.
#[derive(Debug)]
pub struct Direct {
    orchestrator: Arc<Connection>,
    target: ProxyTarget,
    /// The Python module the deployment serves, once known: `EnsureModule` of it wakes it.
    module: Mutex<String>,
    session: String,
    settings: Settings,
    current: RwLock<Option<Current>>,
    /// One access request at a time; the others wait for its answer.
    refreshing: tokio::sync::Mutex<()>,
    /// A connection per module server, kept across refreshes.
    connections: Mutex<HashMap<String, Arc<Connection>>>,
}

impl Direct {
    pub fn new(
        orchestrator: Arc<Connection>,
        target: ProxyTarget,
        module: String,
        session: String,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(Self {
            orchestrator,
            target,
            module: Mutex::new(module),
            session,
            settings,
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            connections: Mutex::new(HashMap::new()),
        })
    }

    pub fn target(&self) -> &ProxyTarget {
        &self.target
    }

    /// The session's route while its access holds (no await: the hot path of every call).
    pub fn fresh(&self) -> Option<Arc<Route>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| Instant::now() < c.expires).map(|c| c.route.clone())
    }

    /// The module server the session is on now, if placed.
    pub fn endpoint(&self) -> Option<String> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.endpoint.clone())
    }

    /// The session's route, asking jac-orc for access first when it has expired.
    pub async fn route(&self) -> Result<Arc<Route>, client::Error> {
        if let Some(route) = self.fresh() {
            return Ok(route);
        }
        let _one = self.refreshing.lock().await;
        if let Some(route) = self.fresh() {
            return Ok(route); // a caller before this one refreshed it
        }
        let access = self.fetch().await?;
        self.install(access)
    }

    /// After a failed call: forgets the access when the failure may mean the endpoints or the
    /// token changed (so the next call asks again), and says whether the call may be sent again
    /// at once (it never reached the served code: refused token, connection refused).
    pub fn failed(&self, error: &client::Error) -> bool {
        let client::Error::Rpc(status) = error else {
            return false;
        };
        let (forget, again) = match status.code() {
            Code::Unauthenticated => (true, true),
            Code::Unavailable => (true, never_sent(status)),
            // The replica restarted (its references are gone) or the call was abandoned.
            Code::NotFound | Code::Unknown => (true, false),
            _ => (false, false),
        };
        if forget {
            if let Some(c) = self.current.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
                c.expires = Instant::now();
            }
        }
        again
    }

    /// Whether the session's module server accepts a TCP connection within `timeout` (whether
    /// the endpoints jac-orc hands out are reachable from here).
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let Some(endpoint) = self.endpoint() else {
            return false;
        };
        matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(endpoint)).await, Ok(Ok(_)))
    }

    /// Closes every module server connection (their sessions' references are released).
    pub async fn close(&self) {
        let connections: Vec<Arc<Connection>> =
            self.connections.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, c)| c).collect();
        for connection in connections {
            connection.close().await;
        }
    }

    /// `GetModuleAccess`; a deployment with no ready module server is woken once with
    /// `EnsureModule` (when its module is known) and asked again until one is ready, within
    /// [`WAKE_WITHIN`].
    async fn fetch(&self) -> Result<ModuleAccess, client::Error> {
        let (namespace, deployment) = (self.target.namespace.clone(), self.target.deployment.clone());
        let give_up = Instant::now() + WAKE_WITHIN;
        let mut woke = false;
        let mut redialled = false;
        let mut pause = FIRST_PAUSE;
        loop {
            let asked = self.orchestrator.module_access(namespace.clone(), deployment.clone());
            let status = match crate::deadline::bounded(Some(ACCESS_WITHIN), asked).await {
                Ok(access) if !access.endpoints.is_empty() => {
                    if !access.module.is_empty() {
                        *self.module.lock().unwrap_or_else(|e| e.into_inner()) = access.module.clone();
                    }
                    return Ok(access);
                }
                Ok(_) => Status::failed_precondition(format!("deployment {deployment} has no ready module server")),
                Err(status) => status,
            };
            if status.code() == Code::Unavailable && !redialled {
                // A connection to jac-orc that broke meanwhile is dialled again by the next request.
                redialled = true;
                continue;
            }
            if !not_ready(&status) {
                return Err(status.into());
            }
            let module = self.module.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !woke && !module.is_empty() {
                woke = true;
                let wake = EnsureModuleRequest { module, namespace: namespace.clone(), ..Default::default() };
                self.orchestrator.ensure_module(wake).await?;
                continue;
            }
            if !woke || Instant::now() + pause > give_up {
                return Err(status.into());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Places the session (kept on its endpoint while that is listed) and makes its route.
    fn install(&self, access: ModuleAccess) -> Result<Arc<Route>, client::Error> {
        let mut endpoints: Vec<String> = access.endpoints.into_iter().map(|e| e.address).collect();
        endpoints.sort();
        let previous = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let endpoint = match &previous {
            Some(p) if endpoints.contains(&p.endpoint) => p.endpoint.clone(),
            _ => affinity::place(&self.session, &endpoints)
                .cloned()
                .ok_or_else(|| client::Error::Rpc(Status::failed_precondition("jac-orc listed no module server")))?,
        };
        let connection = self.connection(&endpoint, &access.call_token)?;
        let route = match previous {
            Some(p) if p.endpoint == endpoint => p.route,
            _ => {
                let route = Route::new(connection, self.session.clone(), None);
                route.spawn_background(self.settings.heartbeat);
                route
            }
        };
        // Connections to module servers no longer listed go (their sessions' objects went with them).
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).retain(|address, _| endpoints.contains(address));
        let expires = Instant::now() + Duration::from_secs(u64::from(access.ttl_seconds.max(1)));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Current { route: route.clone(), endpoint, expires });
        Ok(route)
    }

    /// The connection to `endpoint`, sending `token` (made on first use; must run in the runtime).
    fn connection(&self, endpoint: &str, token: &str) -> Result<Arc<Connection>, client::Error> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = connections.get(endpoint) {
            c.set_token(token)?;
            return Ok(c.clone());
        }
        let options = Options {
            token: Some(token.to_owned()),
            ca: None,
            max_message_bytes: self.settings.max_message_bytes,
            channels: self.settings.channels,
            connect_timeout: self.settings.connect_timeout,
        };
        let connection = Connection::new(endpoint, &options)?;
        self.orchestrator.adopt(&connection);
        connections.insert(endpoint.to_owned(), connection.clone());
        Ok(connection)
    }
}

/// jac-orc's answer for a deployment without a ready module server (FAILED_PRECONDITION).
fn not_ready(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition && status.message().contains("no ready module server")
}

/// Whether an UNAVAILABLE call failed before it was sent: the connection was refused.
fn never_sent(status: &Status) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        next = err.source();
    }
    status.message().contains("Connection refused") || status.message().contains("tcp connect error")
}

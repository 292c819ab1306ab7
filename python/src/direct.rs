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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Access, CallToken};
    use crate::client::new_session_id;
    use crate::proto::CallRequest;
    use crate::runtime::rt;
    use crate::server::Security;
    use crate::testing::{connect, dead_address, Recorder, TestModuleServer, BOUND};
    use crate::testing_orchestrator::{self as orchestrator, access, not_ready, Script};

    fn settings() -> Settings {
        Settings { max_message_bytes: 4 << 20, channels: 1, connect_timeout: BOUND, heartbeat: None }
    }

    fn session(stub: &crate::testing::Stub, module: &str) -> Arc<Direct> {
        let target = ProxyTarget { deployment: "d".into(), namespace: "default".into() };
        Direct::new(connect(stub.addr), target, module.into(), new_session_id(), settings())
    }

    fn route(direct: &Direct) -> Result<Arc<Route>, client::Error> {
        rt().block_on(async { tokio::time::timeout(BOUND, direct.route()).await }).unwrap()
    }

    fn call(route: &Route) -> Result<crate::proto::ValueResponse, Status> {
        rt().block_on(async {
            let channel = route.connection().channel()?;
            tokio::time::timeout(BOUND, route.call_within(channel, false, CallRequest::default(), None)).await.unwrap()
        })
    }

    #[test]
    fn a_deployment_without_a_ready_module_server_is_woken_once_then_asked_again_until_one_is() {
        let server = TestModuleServer::start(Recorder::default());
        let script = Script::default();
        script.answer([Err(not_ready()), Err(not_ready()), Ok(access(&[server.addr().to_string()], "t"))]);
        let stub = orchestrator::start(script.clone());
        let direct = session(&stub, "numpy");
        let route = route(&direct).expect("ready after the wake");
        assert_eq!(script.ensured(), ["numpy"], "one EnsureModule");
        assert_eq!(script.asked(), 3);
        assert!(call(&route).is_ok());
        assert_eq!(direct.endpoint(), Some(server.addr().to_string()));
    }

    #[test]
    fn without_its_module_a_sleeping_deployment_is_not_woken_and_the_answer_stands() {
        let script = Script::default();
        script.answer([Err(not_ready())]);
        let stub = orchestrator::start(script.clone());
        let err = route(&session(&stub, "")).unwrap_err();
        assert!(matches!(&err, client::Error::Rpc(s) if s.code() == Code::FailedPrecondition), "{err:?}");
        assert!(script.ensured().is_empty());
        // Other refusals are never retried.
        script.answer([Err(Status::permission_denied("user vera may not call modules"))]);
        let err = route(&session(&stub, "numpy")).unwrap_err();
        assert!(matches!(&err, client::Error::Rpc(s) if s.code() == Code::PermissionDenied), "{err:?}");
        assert!(script.ensured().is_empty());
    }

    #[test]
    fn the_session_goes_where_rendezvous_hashing_puts_it_and_stays_while_listed() {
        let script = Script::default();
        let two: Vec<String> = ["127.0.0.1:1", "127.0.0.1:2"].map(String::from).to_vec();
        script.answer([Ok(access(&two, "t"))]);
        let stub = orchestrator::start(script.clone());
        let direct = session(&stub, "m");
        route(&direct).unwrap();
        let placed = direct.endpoint().unwrap();
        assert_eq!(Some(&placed), affinity::place(&direct.session, &two));

        // A replica joins: the session stays (as ModuleProxy's session table keeps it).
        let mut three = two.clone();
        three.push("127.0.0.1:3".into());
        script.answer([Ok(access(&three, "t"))]);
        assert!(direct.failed(&client::Error::Rpc(Status::unauthenticated("refused"))), "sent again");
        route(&direct).unwrap();
        assert_eq!(direct.endpoint(), Some(placed.clone()));

        // Its replica leaves: the session moves to where the hash puts it among the rest.
        let rest: Vec<String> = three.iter().filter(|a| **a != placed).cloned().collect();
        script.answer([Ok(access(&rest, "t"))]);
        assert!(!direct.failed(&client::Error::Rpc(Status::unavailable("connection reset mid-call"))));
        route(&direct).unwrap();
        assert_eq!(direct.endpoint().as_ref(), affinity::place(&direct.session, &rest));
        assert_eq!(script.asked(), 3);
        // Errors of the served code's own make nothing asked again.
        assert!(!direct.failed(&client::Error::Rpc(Status::invalid_argument("bad"))));
        route(&direct).unwrap();
        assert_eq!(script.asked(), 3);
    }

    #[test]
    fn a_new_call_token_is_followed_after_the_module_server_refuses_the_old_one() {
        let token = CallToken::new("new-token-0123456789abcdefgh").unwrap();
        let server =
            TestModuleServer::start_with(Recorder::default(), Security { access: Access::Token(token), tls: None });
        let endpoint = vec![server.addr().to_string()];
        let script = Script::default();
        script.answer([Ok(access(&endpoint, "old-token-0123456789abcdefgh"))]);
        let stub = orchestrator::start(script.clone());
        let direct = session(&stub, "m");
        let refused = call(&route(&direct).unwrap()).unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        script.answer([Ok(access(&endpoint, "new-token-0123456789abcdefgh"))]);
        assert!(direct.failed(&client::Error::Rpc(refused)), "a refused call never ran: send it again");
        assert!(call(&route(&direct).unwrap()).is_ok());
    }

    #[test]
    fn the_probe_tells_a_reachable_module_server_from_an_unreachable_one() {
        let server = TestModuleServer::start(Recorder::default());
        let script = Script::default();
        script.answer([Ok(access(&[dead_address().to_string()], "t"))]);
        let stub = orchestrator::start(script.clone());
        let unreachable = session(&stub, "m");
        route(&unreachable).unwrap();
        let probe = |d: &Direct| rt().block_on(d.reachable(Duration::from_secs(5)));
        assert!(!probe(&unreachable));
        script.answer([Ok(access(&[server.addr().to_string()], "t"))]);
        let reachable = session(&stub, "m");
        route(&reachable).unwrap();
        assert!(probe(&reachable));
    }

    #[test]
    fn a_refused_connection_counts_as_never_sent_and_a_reset_does_not() {
        let connection = connect(dead_address());
        let route = Route::new(connection, new_session_id(), None);
        let refused = call(&route).unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(never_sent(&refused), "{refused:?}");
        assert!(!never_sent(&Status::unavailable("connection reset by peer")));
    }
}

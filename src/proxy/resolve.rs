//! Deployment → module-server endpoint and call token, through [`Backend::get`] (the record holds
//! the [`super::CALL_TOKEN`]) and [`Backend::module_endpoints`], cached briefly so a hot path does
//! not hit the state store (or the Kubernetes API) on every call, and balanced round robin
//! across the ready endpoints per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Error, Result};
use crate::backend::{self, Backend};
use crate::plan::DeploymentId;

#[derive(Debug, Clone)]
struct Cached {
    at: Instant,
    endpoints: Arc<[String]>,
    /// `authorization: Bearer <call token>`, marked sensitive.
    call_token: http::HeaderValue,
}

/// Where the next call goes and what it authenticates with.
#[derive(Debug)]
pub struct Pick {
    pub endpoint: String,
    pub call_token: http::HeaderValue,
}

#[derive(Debug)]
pub struct Resolver {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    cache: Mutex<HashMap<DeploymentId, Cached>>,
    /// Round-robin position per deployment; it outlives cache refreshes, so a refresh every
    /// `ttl` does not send the next call back to the first endpoint.
    next: Mutex<HashMap<DeploymentId, Arc<AtomicUsize>>>,
}

impl Resolver {
    pub fn new(backend: Arc<dyn Backend>, ttl: Duration) -> Self {
        Resolver { backend, ttl, cache: Mutex::default(), next: Mutex::default() }
    }

    /// The endpoint the next call to `id` goes to, and the deployment's call token.
    pub async fn pick(&self, id: &DeploymentId) -> Result<Pick> {
        let cached = match self.fresh(id) {
            Some(c) => c,
            None => self.refresh(id).await?,
        };
        let counter = self.next.lock().expect("resolver lock").entry(id.clone()).or_default().clone();
        let i = counter.fetch_add(1, Ordering::Relaxed) % cached.endpoints.len();
        Ok(Pick { endpoint: cached.endpoints[i].clone(), call_token: cached.call_token })
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

    async fn refresh(&self, id: &DeploymentId) -> Result<Cached> {
        let record = match self.backend.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(Error::NotFound(id.clone())),
            Err(e) => return Err(Error::Backend(e)),
        };
        let mut call_token = record
            .config
            .get(super::CALL_TOKEN)
            .and_then(serde_json::Value::as_str)
            .and_then(|t| http::HeaderValue::try_from(format!("Bearer {t}")).ok())
            .ok_or_else(|| Error::NoCallToken(id.clone()))?;
        call_token.set_sensitive(true);
        let endpoints = match self.backend.module_endpoints(id).await {
            Ok(e) => e,
            Err(backend::Error::NotFound(_)) => return Err(Error::NotFound(id.clone())),
            Err(e) => return Err(Error::Backend(e)),
        };
        crate::metrics::global().endpoints_ready(&format!("{}/{}", id.namespace, id.name), endpoints.len());
        if endpoints.is_empty() {
            // Not cached: the module server may be back any moment. The record's endpoints
            // (where it runs when it is up) make the error actionable.
            return Err(Error::NoReadyEndpoint { deployment: id.clone(), known: record.endpoints });
        }
        let cached = Cached { at: Instant::now(), endpoints: endpoints.into(), call_token };
        self.cache.lock().expect("resolver lock").insert(id.clone(), cached.clone());
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;

    use super::*;
    use crate::backend::{ApplyOptions, DeploymentRecord, Progress, Status};
    use crate::plan::Plan;

    /// A backend that knows one deployment and counts endpoint lookups.
    #[derive(Debug)]
    struct Fake {
        endpoints: Mutex<Vec<String>>,
        lookups: AtomicU32,
    }

    fn id(name: &str) -> DeploymentId {
        DeploymentId { namespace: "default".into(), module: "python-module".into(), name: name.into() }
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
        async fn module_endpoints(&self, id: &DeploymentId) -> backend::Result<Vec<String>> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            if id.name != "known" {
                return Err(backend::Error::NotFound(id.clone()));
            }
            Ok(self.endpoints.lock().unwrap().clone())
        }
    }

    fn resolver(endpoints: &[&str]) -> (Arc<Fake>, Resolver) {
        let fake = Arc::new(Fake {
            endpoints: Mutex::new(endpoints.iter().map(|e| e.to_string()).collect()),
            lookups: AtomicU32::new(0),
        });
        let r = Resolver::new(fake.clone(), Duration::from_secs(3600));
        (fake, r)
    }

    #[tokio::test]
    async fn calls_rotate_over_ready_endpoints_from_one_cached_lookup() {
        let (fake, r) = resolver(&["a:1", "b:2", "c:3"]);
        let mut picked = Vec::new();
        for _ in 0..6 {
            let pick = r.pick(&id("known")).await.unwrap();
            assert_eq!(pick.call_token, "Bearer t0k3n");
            assert!(pick.call_token.is_sensitive(), "never logged by HTTP stacks");
            picked.push(pick.endpoint);
        }
        assert_eq!(picked, ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3"]);
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 1);

        // After invalidation the backend is asked again and the rotation carries on.
        *fake.endpoints.lock().unwrap() = vec!["d:4".into()];
        r.invalidate(&id("known"));
        assert_eq!(r.pick(&id("known")).await.unwrap().endpoint, "d:4");
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn unknown_deployments_and_ones_without_ready_servers_are_told_apart() {
        let (fake, r) = resolver(&[]);
        match r.pick(&id("gone")).await {
            Err(Error::NotFound(d)) => assert_eq!(d.name, "gone"),
            other => panic!("{other:?}"),
        }
        match r.pick(&id("known")).await {
            Err(e @ Error::NoReadyEndpoint { .. }) => {
                assert!(e.to_string().contains("127.0.0.1:9"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Not cached: the next call asks again, so a module server that comes back is seen.
        *fake.endpoints.lock().unwrap() = vec!["a:1".into()];
        assert_eq!(r.pick(&id("known")).await.unwrap().endpoint, "a:1");
    }

    #[tokio::test]
    async fn a_record_without_a_call_token_is_refused_before_any_endpoint_lookup() {
        let (fake, r) = resolver(&["a:1"]);
        match r.pick(&id("tokenless")).await {
            Err(e @ Error::NoCallToken(_)) => assert!(e.to_string().contains("tokenless"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.lookups.load(Ordering::Relaxed), 0);
    }
}

//! Deployment → module-server endpoint, through [`Backend::module_endpoints`], cached briefly so
//! a hot path does not hit the state store (or the Kubernetes API) on every call, and balanced
//! round robin across the ready endpoints per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Error, Result};
use crate::backend::{self, Backend};
use crate::plan::DeploymentId;

#[derive(Debug)]
struct Cached {
    at: Instant,
    endpoints: Arc<[String]>,
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
        Resolver {
            backend,
            ttl,
            cache: Mutex::default(),
            next: Mutex::default(),
        }
    }

    /// The endpoint the next call to `id` goes to.
    pub async fn pick(&self, id: &DeploymentId) -> Result<String> {
        let endpoints = match self.fresh(id) {
            Some(e) => e,
            None => self.refresh(id).await?,
        };
        let counter = self
            .next
            .lock()
            .expect("resolver lock")
            .entry(id.clone())
            .or_default()
            .clone();
        let i = counter.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Ok(endpoints[i].clone())
    }

    /// Forgets what is cached for `id` (after a connection error, so the next call asks the
    /// backend again and sees a restarted or rescheduled module server).
    pub fn invalidate(&self, id: &DeploymentId) {
        self.cache.lock().expect("resolver lock").remove(id);
    }

    fn fresh(&self, id: &DeploymentId) -> Option<Arc<[String]>> {
        let cache = self.cache.lock().expect("resolver lock");
        cache
            .get(id)
            .filter(|c| c.at.elapsed() < self.ttl)
            .map(|c| c.endpoints.clone())
    }

    async fn refresh(&self, id: &DeploymentId) -> Result<Arc<[String]>> {
        let endpoints = match self.backend.module_endpoints(id).await {
            Ok(e) => e,
            Err(backend::Error::NotFound(_)) => return Err(Error::NotFound(id.clone())),
            Err(e) => return Err(Error::Backend(e)),
        };
        if endpoints.is_empty() {
            // Not cached: the module server may be back any moment. The record's endpoints
            // (where it runs when it is up) make the error actionable.
            let known = match self.backend.get(id).await {
                Ok(Some(record)) => record.endpoints,
                Ok(None) => return Err(Error::NotFound(id.clone())),
                Err(_) => Vec::new(),
            };
            return Err(Error::NoReadyEndpoint {
                deployment: id.clone(),
                known,
            });
        }
        let endpoints: Arc<[String]> = endpoints.into();
        self.cache.lock().expect("resolver lock").insert(
            id.clone(),
            Cached {
                at: Instant::now(),
                endpoints: endpoints.clone(),
            },
        );
        Ok(endpoints)
    }
}

//! A small bounded cache with a time-to-live per entry, for TokenReview and SubjectAccessReview
//! answers. Full: expired entries go first, then the one closest to expiry. Time is tokio's
//! clock, so tests move it with `tokio::time::advance` instead of sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// A cache holding at most `capacity` entries (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        TtlCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries.get(key) {
            Some((expires, value)) if *expires > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, key: K, value: V, ttl: Duration) {
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.capacity {
                if let Some(soonest) = entries.iter().min_by_key(|(_, (expires, _))| *expires).map(|(k, _)| k.clone()) {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, (now + ttl, value));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = TtlCache::new(8);
        cache.insert("a", 1, Duration::from_secs(10));
        cache.insert("b", 2, Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"b"), None);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(cache.get(&"a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_evicts_expired_then_soonest_to_expire() {
        let cache = TtlCache::new(2);
        cache.insert("short", 1, Duration::from_secs(1));
        cache.insert("long", 2, Duration::from_secs(100));
        cache.insert("new", 3, Duration::from_secs(50));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"short"), None, "closest to expiry went");
        assert_eq!((cache.get(&"long"), cache.get(&"new")), (Some(2), Some(3)));
        tokio::time::advance(Duration::from_secs(60)).await;
        cache.insert("newer", 4, Duration::from_secs(10));
        assert_eq!((cache.get(&"long"), cache.get(&"newer")), (Some(2), Some(4)), "the expired entry went first");
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = TtlCache::new(0);
        cache.insert(1, 1, Duration::from_secs(1));
        assert_eq!(cache.get(&1), None);
    }
}

//! Per-session reference tables with leases. Generic over the stored object so it holds no
//! Python types; removed objects are handed back so the caller can drop them where it must
//! (for Python objects: with the GIL held).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Session<T> {
    refs: HashMap<String, T>,
    deadline: Instant,
}

/// Live references by session; each request renews its session's lease.
#[derive(Debug)]
pub struct RefTable<T> {
    sessions: Mutex<HashMap<String, Session<T>>>,
    lease: Duration,
    next_id: AtomicU64,
    /// Differs between tables (so between module-server processes): a reference from a replica
    /// that went away is unknown to the replica its session moves to, never another object.
    incarnation: String,
}

/// Reference counts, for `Describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub session_refs: u32,
    pub total_refs: u32,
    pub sessions: u32,
}

impl<T> RefTable<T> {
    pub fn new(lease: Duration) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), lease, next_id: AtomicU64::new(1), incarnation: incarnation() }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session<T>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the session if needed and renews its lease.
    pub fn touch(&self, session: &str) {
        let deadline = Instant::now() + self.lease;
        let mut sessions = self.lock();
        match sessions.get_mut(session) {
            Some(s) => s.deadline = deadline,
            None => {
                sessions.insert(session.to_owned(), Session { refs: HashMap::new(), deadline });
            }
        }
    }

    /// Stores `obj` for `session` and returns its new id.
    pub fn insert(&self, session: &str, obj: T) -> String {
        let id = format!("r{}-{:x}", self.incarnation, self.next_id.fetch_add(1, Ordering::Relaxed));
        let deadline = Instant::now() + self.lease;
        let mut sessions = self.lock();
        let entry = sessions.entry(session.to_owned()).or_insert_with(|| Session { refs: HashMap::new(), deadline });
        entry.deadline = deadline;
        entry.refs.insert(id.clone(), obj);
        id
    }

    /// Looks up `id` in `session`, returning a copy made by `copy`.
    pub fn get<R>(&self, session: &str, id: &str, copy: impl FnOnce(&T) -> R) -> Option<R> {
        let sessions = self.lock();
        sessions.get(session)?.refs.get(id).map(copy)
    }

    /// Removes `ids` from `session`; returns the removed objects and how many the session still holds.
    pub fn remove(&self, session: &str, ids: &[String]) -> (Vec<T>, u32) {
        let mut sessions = self.lock();
        let Some(s) = sessions.get_mut(session) else {
            return (Vec::new(), 0);
        };
        let removed: Vec<T> = ids.iter().filter_map(|id| s.refs.remove(id)).collect();
        (removed, count(s.refs.len()))
    }

    /// Removes every session whose lease ended before `now`; returns their objects.
    pub fn expire(&self, now: Instant) -> Vec<T> {
        let mut sessions = self.lock();
        let expired: Vec<String> = sessions.iter().filter(|(_, s)| s.deadline <= now).map(|(k, _)| k.clone()).collect();
        expired.into_iter().filter_map(|k| sessions.remove(&k)).flat_map(|s| s.refs.into_values()).collect()
    }

    /// Removes every session (shutdown).
    pub fn clear(&self) -> Vec<T> {
        let mut sessions = self.lock();
        sessions.drain().flat_map(|(_, s)| s.refs.into_values()).collect()
    }

    pub fn counts(&self, session: &str) -> Counts {
        let sessions = self.lock();
        Counts {
            session_refs: count(sessions.get(session).map_or(0, |s| s.refs.len())),
            total_refs: count(sessions.values().map(|s| s.refs.len()).sum()),
            sessions: count(sessions.len()),
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A short id unlikely to repeat across processes and tables: the process id, the time and the
/// standard library's per-process random hash keys, hashed.
fn incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    static TABLES: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(TABLES.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_returns_objects_and_remaining_count() {
        let t = RefTable::new(Duration::from_secs(60));
        let a = t.insert("s", 1);
        let _b = t.insert("s", 2);
        let (removed, remaining) = t.remove("s", &[a.clone(), "nope".into()]);
        assert_eq!((removed, remaining), (vec![1], 1));
        assert_eq!(t.get("s", &a, |v| *v), None);
    }

    #[test]
    fn expired_sessions_free_all_their_objects() {
        let t = RefTable::new(Duration::from_millis(0));
        t.insert("s", 1);
        t.insert("s", 2);
        let mut freed = t.expire(Instant::now() + Duration::from_millis(1));
        freed.sort();
        assert_eq!(freed, vec![1, 2]);
        assert_eq!(t.counts("s").sessions, 0);
    }

    #[test]
    fn ids_of_two_tables_never_coincide() {
        let (a, b) = (RefTable::new(Duration::from_secs(60)), RefTable::new(Duration::from_secs(60)));
        let ids_a: Vec<String> = (0..5).map(|i| a.insert("s", i)).collect();
        let first_b = b.insert("s", 0);
        assert!(!ids_a.contains(&first_b), "{ids_a:?} {first_b}");
        assert_eq!(a.get("s", &first_b, |v| *v), None, "a reference of another table is unknown here");
    }
}

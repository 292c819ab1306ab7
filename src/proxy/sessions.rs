//! The session table: which replica each client session of a deployment is on.
//!
//! A session the table does not know is placed by rendezvous hashing over the ready endpoints
//! ([`super::affinity::place`]) and remembered, so it stays on that replica while the replica
//! lives, even when replicas are added (HRW alone would move a share of the sessions to the new
//! one, away from their objects). An entry expires after `ttl` without a call (the module
//! server's references expire with its own lease anyway).
//!
//! A session whose replica left the ready set (or was replaced by another process on the same
//! address) is placed again among the ready ones, and remembers the replica it lost: its old
//! references are gone with that replica, which the proxy says (`REPLICA_GONE`) instead of the
//! new replica's bare "unknown reference".

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::affinity::{self, Endpoint};
use crate::plan::DeploymentId;

/// How often (in placements) expired entries are swept out.
const SWEEP_EVERY: u32 = 1024;

#[derive(Debug, Clone)]
struct Entry {
    endpoint: Endpoint,
    last: Instant,
    /// The replica that held the session before it went away.
    lost: Option<Endpoint>,
    /// The deployment's wake-ups when the session was placed.
    wakeups: u64,
    /// Its replica went away because the deployment was scaled to zero.
    scaled_away: bool,
}

/// Where a call of a session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub endpoint: Endpoint,
    /// The replica the session was on before it went away (its references went with it).
    pub lost: Option<Endpoint>,
    /// It went away because the deployment was scaled to zero (and woken) since.
    pub scaled_away: bool,
}

#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<(DeploymentId, String), Entry>,
    placements: u32,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions { ttl, inner: Mutex::default() }
    }

    /// The replica for `session` of `id` among `ready` (at time `now`), or `None` when none is
    /// ready. Renews the session's entry.
    /// `wakeups` is the deployment's count of wake-ups from zero now: a session placed before
    /// the last one lost its replica to the scale-down.
    pub fn route(
        &self,
        id: &DeploymentId,
        session: &str,
        ready: &[Endpoint],
        now: Instant,
        wakeups: u64,
    ) -> Option<Route> {
        let mut table = self.inner.lock().expect("session table");
        let key = (id.clone(), session.to_owned());
        let ttl = self.ttl;
        let known = table.entries.get(&key).filter(|e| now.saturating_duration_since(e.last) < ttl).cloned();
        let (endpoint, lost, scaled_away) = match known {
            Some(e) if ready.contains(&e.endpoint) && e.wakeups == wakeups => (e.endpoint, e.lost, e.scaled_away),
            Some(e) => {
                let scaled_away = e.wakeups != wakeups;
                tracing::info!(deployment = %id, session, replica = %e.endpoint.address, scaled_away, "the replica holding the session went away; placing it again");
                (affinity::place(session, ready)?.clone(), Some(e.endpoint), scaled_away)
            }
            None => (affinity::place(session, ready)?.clone(), None, false),
        };
        let entry = Entry { endpoint: endpoint.clone(), last: now, lost: lost.clone(), wakeups, scaled_away };
        table.entries.insert(key, entry);
        table.placements = table.placements.wrapping_add(1);
        if table.placements.is_multiple_of(SWEEP_EVERY) {
            table.entries.retain(|_, e| now.saturating_duration_since(e.last) < ttl);
        }
        Some(Route { endpoint, lost, scaled_away })
    }

    /// Forgets every session of a deployment (it was deleted).
    pub fn forget(&self, id: &DeploymentId) {
        self.inner.lock().expect("session table").entries.retain(|(d, _), _| d != id);
    }

    /// Sessions in the table (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("session table").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the start of a module-server request says about its session (field 1 of every
/// `*Request` in module.proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionField {
    Found(String),
    /// More of the request is needed to tell.
    NeedMore,
    /// The request names no session (or cannot be read: the module server will say why).
    Absent,
}

/// Reads the session from `buf`, the first bytes of an encoded request of `len` bytes in all.
pub fn session_field(buf: &[u8], len: usize) -> SessionField {
    let end = len.min(buf.len());
    let mut pos = 0;
    let mut found = None;
    while pos < len {
        if pos >= end {
            return SessionField::NeedMore;
        }
        let Some((key, n)) = varint(&buf[pos..end]) else {
            return if end < len { SessionField::NeedMore } else { SessionField::Absent };
        };
        pos += n;
        let skip = match key & 7 {
            0 => match varint(&buf[pos.min(end)..end]) {
                Some((_, m)) => m,
                None if end < len => return SessionField::NeedMore,
                None => return SessionField::Absent,
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some((flen, m)) = varint(&buf[pos.min(end)..end]) else {
                    return if end < len { SessionField::NeedMore } else { SessionField::Absent };
                };
                pos += m;
                let Ok(flen) = usize::try_from(flen) else { return SessionField::Absent };
                if key >> 3 == 1 {
                    if pos + flen > end {
                        return if pos + flen <= len { SessionField::NeedMore } else { SessionField::Absent };
                    }
                    // The last occurrence wins (protobuf), so keep reading.
                    found = Some(String::from_utf8_lossy(&buf[pos..pos + flen]).into_owned());
                }
                flen
            }
            _ => return SessionField::Absent,
        };
        pos += skip;
        if found.is_some() && pos >= end && end < len {
            // Field 1 comes first in every client's encoding: do not wait for a 64 MiB body.
            break;
        }
    }
    found.map_or(SessionField::Absent, SessionField::Found)
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn id() -> DeploymentId {
        DeploymentId { namespace: "default".into(), module: "python-module".into(), name: "np".into() }
    }

    fn ep(port: u16, instance: &str) -> Endpoint {
        Endpoint::new(format!("127.0.0.1:{port}"), instance)
    }

    #[test]
    fn the_session_is_read_from_the_start_of_any_request() {
        use prost::Message;
        let call = crate::pb::CallRequest {
            session: "abc".into(),
            target: "r1".into(),
            path: vec!["random".into()],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(session_field(&call, call.len()), SessionField::Found("abc".into()));
        // Only the first bytes of a long request: enough once field 1 is whole.
        assert_eq!(session_field(&call[..5], call.len() + 1000), SessionField::Found("abc".into()));
        assert_eq!(session_field(&call[..3], call.len()), SessionField::NeedMore);
        let release = crate::pb::ReleaseRequest { session: String::new(), ids: vec!["r1".into()] }.encode_to_vec();
        assert_eq!(session_field(&release, release.len()), SessionField::Absent);
        assert_eq!(session_field(&[], 0), SessionField::Absent);
        assert_eq!(session_field(&[0xff, 0xff], 2), SessionField::Absent, "garbage");
    }

    #[test]
    fn a_session_stays_on_its_replica_when_replicas_are_added() {
        let t = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let two = [ep(1, "a"), ep(2, "b")];
        let placed: Vec<Route> = (0..100).map(|i| t.route(&id(), &format!("s{i}"), &two, now, 0).unwrap()).collect();
        let three = [ep(1, "a"), ep(2, "b"), ep(3, "c")];
        for (i, before) in placed.iter().enumerate() {
            let after = t.route(&id(), &format!("s{i}"), &three, now, 0).unwrap();
            assert_eq!(&after, before, "session s{i} moved");
        }
        // New sessions reach the new replica too.
        let fresh: HashSet<String> =
            (100..400).map(|i| t.route(&id(), &format!("s{i}"), &three, now, 0).unwrap().endpoint.address).collect();
        assert_eq!(fresh.len(), 3, "{fresh:?}");
    }

    #[test]
    fn a_session_whose_replica_went_away_is_placed_again_and_remembers_it() {
        let t = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let all = [ep(1, "a"), ep(2, "b"), ep(3, "c")];
        let first = t.route(&id(), "s", &all, now, 0).unwrap();
        assert_eq!(first.lost, None);
        let rest: Vec<Endpoint> = all.iter().filter(|e| **e != first.endpoint).cloned().collect();
        let moved = t.route(&id(), "s", &rest, now, 0).unwrap();
        assert_ne!(moved.endpoint, first.endpoint);
        assert_eq!(moved.lost.as_ref(), Some(&first.endpoint));
        // It stays on its new replica, still knowing what it lost, even when the old one is back.
        let again = t.route(&id(), "s", &all, now, 0).unwrap();
        assert_eq!(again, moved);
    }

    #[test]
    fn a_replica_restarted_on_the_same_address_is_another_replica() {
        let t = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let first = t.route(&id(), "s", &[ep(1, "pid-1")], now, 0).unwrap();
        let restarted = t.route(&id(), "s", &[ep(1, "pid-2")], now, 0).unwrap();
        assert_eq!(restarted.endpoint, ep(1, "pid-2"));
        assert_eq!(restarted.lost, Some(first.endpoint));
    }

    #[test]
    fn entries_expire_after_the_ttl_without_calls_and_are_swept() {
        let ttl = Duration::from_secs(10);
        let t = Sessions::new(ttl);
        let start = Instant::now();
        let one = [ep(1, "a")];
        t.route(&id(), "s", &one, start, 0).unwrap();
        // Renewed by a call within the ttl...
        t.route(&id(), "s", &one, start + ttl / 2, 0).unwrap();
        let lost = t.route(&id(), "s", &[ep(2, "b")], start + ttl, 0).unwrap();
        assert!(lost.lost.is_some(), "still known at ttl after the first call: it was renewed");
        // ...and forgotten after ttl without one: a fresh placement, nothing lost.
        let later = start + ttl * 3;
        assert_eq!(t.route(&id(), "s", &[ep(3, "c")], later, 0).unwrap().lost, None);
        for i in 0..SWEEP_EVERY {
            t.route(&id(), &format!("x{i}"), &one, later + ttl * 2, 0).unwrap();
        }
        assert!(t.len() <= SWEEP_EVERY as usize, "expired entries were swept: {}", t.len());
        assert!(t.route(&id(), "s", &[], later, 0).is_none(), "no ready replica");
        t.forget(&id());
        assert!(t.is_empty());
    }

    #[test]
    fn a_session_placed_before_a_wake_up_lost_its_replica_to_the_scale_down() {
        let t = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let ep = |port: u16, instance: &str| Endpoint::new(format!("127.0.0.1:{port}"), instance);
        let before = t.route(&id(), "s", &[ep(1, "pid-1")], now, 0).unwrap();
        assert!(!before.scaled_away && before.lost.is_none());
        let after = t.route(&id(), "s", &[ep(1, "pid-2")], now, 1).unwrap();
        assert!(after.scaled_away, "woken since the session was placed");
        assert_eq!(after.lost.map(|l| l.instance), Some("pid-1".to_string()));
        let other = t.route(&id(), "fresh", &[ep(1, "pid-2")], now, 1).unwrap();
        assert!(!other.scaled_away && other.lost.is_none(), "a session placed after the wake lost nothing");
    }
}

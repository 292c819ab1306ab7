//! Rendezvous (highest random weight) hashing: which ready replica a new session goes to.
//!
//! Every (session, endpoint) pair gets a score from a fixed hash; the session goes to the
//! endpoint with the highest score. The choice is deterministic (the same session and endpoint
//! set always pick the same endpoint, in every jac-orc replica and after a restart), spreads
//! sessions evenly, and when an endpoint leaves only the sessions that were on it move. Sessions
//! already placed are kept where they are by the session table ([`super::sessions`]), so adding
//! a replica moves nobody; HRW only places sessions the table does not know.

pub use crate::backend::endpoints::Endpoint;

/// FNV-1a over the bytes, then the splitmix64 finalizer: stable across builds and platforms
/// (std's hashers promise neither), and well mixed for short, similar keys.
fn score(session: &str, address: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session.as_bytes().iter().chain([0xffu8].iter()).chain(address.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The endpoint `session` goes to among `endpoints` (by address; ties by address order), or
/// `None` when there is none.
pub fn place<'a>(session: &str, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
    endpoints.iter().max_by(|a, b| {
        score(session, &a.address).cmp(&score(session, &b.address)).then_with(|| b.address.cmp(&a.address))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n).map(|i| Endpoint::new(format!("127.0.0.1:{}", 40000 + i), format!("pid-{i}"))).collect()
    }

    fn session(i: usize) -> String {
        format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834))
    }

    #[test]
    fn placement_is_deterministic_and_ignores_endpoint_order() {
        let eps = endpoints(5);
        let mut reversed = eps.clone();
        reversed.reverse();
        for i in 0..200 {
            let s = session(i);
            let a = place(&s, &eps).unwrap();
            assert_eq!(place(&s, &eps).unwrap(), a);
            assert_eq!(place(&s, &reversed).unwrap().address, a.address);
        }
        assert!(place("s", &[]).is_none());
        // Fixed values: the hash must not change between builds (jac-orc replicas agree).
        assert_eq!(score("s", "a:1"), score("s", "a:1"));
        assert_ne!(score("s", "a:1"), score("s", "a:2"));
        assert_ne!(score("ab", "c"), score("a", "bc"), "the separator keeps the parts apart");
    }

    /// The same vectors pin the copy of this hash in the Python client (`python/src/affinity.rs`),
    /// which places sessions itself for direct access (`GetModuleAccess`): both must pick the
    /// same replica for a session.
    #[test]
    fn placement_matches_the_vectors_pinned_in_the_python_client() {
        assert_eq!(score("s", "a:1"), 0xc2de_fe8c_b355_c250);
        assert_eq!(score("s", "a:2"), 0x251b_4c87_989d_c672);
        assert_eq!(score("session-0", "10.0.0.1:50051"), 0x2c5b_7391_9a3d_0cfb);
        assert_eq!(score("", ""), 0x4f2d_b50f_1240_40cd);
        let eps: Vec<Endpoint> =
            ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"].iter().map(|a| Endpoint::new(*a, "")).collect();
        let expected = ["3", "3", "2", "2", "3", "1", "3", "2"];
        for (i, host) in expected.iter().enumerate() {
            let placed = place(&format!("session-{i}"), &eps).unwrap();
            assert_eq!(placed.address, format!("10.0.0.{host}:50051"), "session-{i}");
        }
    }

    #[test]
    fn sessions_spread_over_every_endpoint() {
        let eps = endpoints(3);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in 0..3000 {
            let s = session(i);
            *counts.entry(place(&s, &eps).unwrap().address.as_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (address, n) in &counts {
            assert!((700..=1300).contains(n), "{address} got {n} of 3000 sessions: {counts:?}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_sessions() {
        let eps = endpoints(4);
        let without: Vec<Endpoint> = eps.iter().filter(|e| e.address != eps[2].address).cloned().collect();
        let mut moved = 0;
        for i in 0..1000 {
            let s = session(i);
            let before = place(&s, &eps).unwrap();
            let after = place(&s, &without).unwrap();
            if before.address == eps[2].address {
                moved += 1;
                assert_ne!(after.address, eps[2].address);
            } else {
                assert_eq!(after, before, "session {s} moved although its endpoint stayed");
            }
        }
        assert!(moved > 0);
    }
}

//! Rendezvous (highest random weight) hashing: which module server a direct session goes to.
//!
//! A copy of jac-orc's `src/proxy/affinity.rs` (this crate never depends on the root crate): a
//! session reached directly (`GetModuleAccess`) lands on the replica `ModuleProxy` would have
//! chosen for it, so both paths spread sessions the same way. The tests pin both copies with the
//! same vectors.

/// FNV-1a over the bytes, then the splitmix64 finalizer: stable across builds and platforms.
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

/// The address `session` goes to among `addresses` (ties by address order), or `None` when
/// there is none.
pub fn place<'a>(session: &str, addresses: &'a [String]) -> Option<&'a String> {
    addresses.iter().max_by(|a, b| score(session, a).cmp(&score(session, b)).then_with(|| b.cmp(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of jac-orc's `placement_matches_the_vectors_pinned_in_the_python_client`.
    #[test]
    fn placement_matches_the_vectors_pinned_in_jac_orc() {
        assert_eq!(score("s", "a:1"), 0xc2de_fe8c_b355_c250);
        assert_eq!(score("s", "a:2"), 0x251b_4c87_989d_c672);
        assert_eq!(score("session-0", "10.0.0.1:50051"), 0x2c5b_7391_9a3d_0cfb);
        assert_eq!(score("", ""), 0x4f2d_b50f_1240_40cd);
        let eps: Vec<String> = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"].map(String::from).to_vec();
        let expected = ["3", "3", "2", "2", "3", "1", "3", "2"];
        for (i, host) in expected.iter().enumerate() {
            assert_eq!(place(&format!("session-{i}"), &eps).unwrap(), &format!("10.0.0.{host}:50051"), "session-{i}");
        }
        let mut reversed = eps.clone();
        reversed.reverse();
        assert_eq!(place("session-5", &reversed), place("session-5", &eps), "order does not matter");
        assert!(place("s", &[]).is_none());
    }
}

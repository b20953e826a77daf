//! Hashing: one fast hasher for the maps the request path looks up, and one stable hash for
//! what must agree between processes.
//!
//! - [`FastHashMap`] / [`FastHashSet`] / [`FastState`]: foldhash's fast hasher with a fixed
//!   seed, for maps whose keys come from configuration or from the proxy itself (domains,
//!   destinations, pooled endpoints). Requests only look these maps up, never insert, so
//!   they cannot fill a bucket chain: a DoS-resistant (keyed, slower) hash buys nothing
//!   there. Maps keyed by client input that requests insert into need std's `RandomState`.
//!   The values are for in-process use only: foldhash does not promise the same hash across
//!   versions or platforms.
//! - [`stable_hash`] / [`stable_hash_seeded`] / [`StableHasher`]: xxHash64, the hash Envoy
//!   uses for consistent hashing (`HashUtil::xxHash64`: ring hash points, Maglev
//!   permutations, header, cookie, query and source-IP keys). It is specified and the same in
//!   every process and version, so a key maps to the same endpoint from an Envoy sidecar and
//!   from this SDK. Never swap it for the fast hasher.
//!
//! ```
//! use mesh_core::hash::{self, FastHashMap};
//!
//! let mut domains: FastHashMap<Box<str>, u32> = FastHashMap::default();
//! domains.insert("reviews.default.svc.cluster.local".into(), 0);
//! assert_eq!(domains.get("reviews.default.svc.cluster.local"), Some(&0));
//! // Envoy's hash of a header value, as its ring hash and Maglev tables see it
//! assert_eq!(hash::stable_hash(b"abc"), 0x44bc_2cf5_ad77_0999);
//! ```

use std::collections::{HashMap, HashSet};

/// The fast hasher's builder: foldhash with a fixed seed (see the [module docs](self)).
pub type FastState = foldhash::fast::FixedState;

/// A [`HashMap`] with the fast hasher: `FastHashMap::default()` makes one.
pub type FastHashMap<K, V> = HashMap<K, V, FastState>;

/// A [`HashSet`] with the fast hasher: `FastHashSet::default()` makes one.
pub type FastHashSet<K> = HashSet<K, FastState>;

/// A streaming xxHash64 (`StableHasher::new(seed)`, `update`, `digest`), for keys written in
/// pieces; the same value as [`stable_hash_seeded`] of the concatenation.
pub use xxhash_rust::xxh64::Xxh64 as StableHasher;

/// xxHash64 of `bytes` with seed 0: Envoy's `HashUtil::xxHash64`, stable across processes,
/// platforms and versions.
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// xxHash64 of `bytes` with `seed` (Envoy's Maglev uses seed 1 for an endpoint's skip).
#[inline]
pub fn stable_hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::net::SocketAddr;

    /// The reference xxHash64 vectors: the stable hash is xxHash64 itself, not just some
    /// fixed function (ring positions must match Envoy's).
    #[test]
    fn stable_hash_is_xxhash64() {
        assert_eq!(stable_hash(b""), 0xef46_db37_51d8_e999);
        assert_eq!(stable_hash(b"abc"), 0x44bc_2cf5_ad77_0999);
        let mut h = StableHasher::new(1);
        h.update(b"10.0.0.1:");
        h.update(b"80");
        assert_eq!(h.digest(), stable_hash_seeded(b"10.0.0.1:80", 1));
        assert_ne!(stable_hash_seeded(b"abc", 1), stable_hash(b"abc"));
    }

    /// The fast hasher is deterministic within a process (maps built on one thread are read
    /// on others) and tells apart keys that differ in one port or one byte.
    #[test]
    fn fast_hash_is_fixed_and_spreads() {
        let (a, b) = (FastState::default(), FastState::default());
        let x: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:81".parse().unwrap();
        assert_eq!(a.hash_one(x), b.hash_one(x));
        assert_ne!(a.hash_one(x), a.hash_one(y));
        assert_ne!(a.hash_one("reviews"), a.hash_one("reviewt"));
    }
}

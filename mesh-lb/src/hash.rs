//! Consistent hashing: Envoy's ring hash (Ketama) and Maglev tables, and the request hash
//! keys of `consistentHash`.
//!
//! Both tables are built exactly as Envoy builds them, so a mesh mixing Envoy sidecars and
//! this SDK sends a given key to the same endpoint from either (same endpoint order, same
//! weights):
//!
//! * **Ring hash** (`ring_hash_lb.cc`): each endpoint gets `scale × normalized_weight`
//!   points, where `scale = min(ceil(min_weight × min_ring_size) / min_weight, 8M)`; the
//!   `i`-th point of an endpoint is `xxHash64("<ip>:<port>_<i>")`; a key maps to the first
//!   point at or after its hash, wrapping around.
//! * **Maglev** (`maglev_lb.cc`, the original algorithm): each endpoint has
//!   `offset = xxHash64(addr) % M` and `skip = xxHash64(addr, seed 1) % (M - 1) + 1` and
//!   claims the next free slot of its permutation `(offset + skip × j) % M` in turns
//!   weighted by `weight / max_weight`; a key maps to `table[hash % M]`.
//!
//! Removing one of N endpoints remaps about 1/N of the keys with Maglev. With ring hash, the
//! removed endpoint's 1/N moves, plus up to another 1/N: Envoy keeps the ring at
//! `minimumRingSize` points, so the survivors each gain points (keys never move between
//! survivors when the points per endpoint stay the same). Both are tested as properties.
//!
//! ```
//! use std::net::SocketAddr;
//! use mesh_lb::hash::HashTable;
//!
//! let addrs: Vec<SocketAddr> = vec!["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap()];
//! let ring = HashTable::ring(&addrs, &[1.0, 1.0], 1024).unwrap();
//! let maglev = HashTable::maglev(&addrs, &[1.0, 1.0], 65537).unwrap();
//! let key = mesh_core::hash::stable_hash(b"user-42"); // as Envoy hashes a header value
//! assert!(ring.get(key) < 2 && maglev.get(key) < 2);
//! assert_eq!((ring.len(), maglev.len()), (1024, 65537));
//! ```

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use mesh_core::hash::{StableHasher, stable_hash, stable_hash_seeded};

use crate::policy::MAX_RING_SIZE;

/// A consistent-hash lookup table over a list of endpoints (indices into that list).
#[derive(Debug, Clone)]
pub enum HashTable {
    /// Ketama ring: sorted point hashes and the endpoint of each point.
    Ring {
        /// Point hashes, ascending.
        hashes: Box<[u64]>,
        /// The endpoint index of each point.
        hosts: Box<[u32]>,
    },
    /// Maglev lookup table.
    Maglev {
        /// `table[hash % len]` is the endpoint index.
        table: Box<[u32]>,
    },
}

// === impl HashTable ===

impl HashTable {
    /// Builds Envoy's ring for endpoints `addrs` with `weights` (same length; zero weights
    /// are left out). `None` when no endpoint has a weight.
    pub fn ring(addrs: &[SocketAddr], weights: &[f64], min_ring_size: u64) -> Option<Self> {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return None;
        }
        let min_norm = weights
            .iter()
            .filter(|w| **w > 0.0)
            .map(|w| w / total)
            .fold(f64::INFINITY, f64::min);
        let scale = ((min_norm * min_ring_size as f64).ceil() / min_norm).min(MAX_RING_SIZE as f64);
        let ring_size = scale.ceil() as usize;
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(ring_size);
        let mut key = Vec::with_capacity(64);
        let mut current = 0.0f64;
        let mut target = 0.0f64;
        for (idx, (addr, w)) in addrs.iter().zip(weights).enumerate() {
            if *w <= 0.0 {
                continue;
            }
            key.clear();
            let _ = write!(key, "{addr}_");
            let prefix = key.len();
            target += scale * (w / total);
            let mut i = 0u64;
            while current < target {
                key.truncate(prefix);
                let _ = write!(key, "{i}");
                points.push((stable_hash(&key), idx as u32));
                i += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|p| p.0);
        let (hashes, hosts): (Vec<u64>, Vec<u32>) = points.into_iter().unzip();
        Some(HashTable::Ring {
            hashes: hashes.into(),
            hosts: hosts.into(),
        })
    }

    /// Builds Envoy's (original) Maglev table of `table_size` for endpoints `addrs` with
    /// `weights`. The size must be a prime (Istio's validation says so): another size is
    /// raised to the next prime, since the permutations would not cover the table; sizes
    /// are capped at Envoy's maximum, 5,000,011. `None` when no endpoint has a weight.
    pub fn maglev(addrs: &[SocketAddr], weights: &[f64], table_size: u64) -> Option<Self> {
        struct Entry {
            host: u32,
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return None;
        }
        let m = next_prime(table_size.clamp(2, MAX_MAGLEV_TABLE_SIZE));
        let mut key = Vec::with_capacity(64);
        let mut entries: Vec<Entry> = Vec::with_capacity(addrs.len());
        let mut max_w = 0.0f64;
        for (idx, (addr, w)) in addrs.iter().zip(weights).enumerate() {
            if *w <= 0.0 {
                continue;
            }
            key.clear();
            let _ = write!(key, "{addr}");
            let weight = w / total;
            max_w = max_w.max(weight);
            entries.push(Entry {
                host: idx as u32,
                offset: stable_hash(&key) % m,
                skip: stable_hash_seeded(&key, 1) % (m - 1) + 1,
                weight,
                target: 0.0,
                next: 0,
            });
        }
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < m {
            for e in entries.iter_mut() {
                if filled >= m {
                    break;
                }
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_w;
                let mut c = (e.offset + e.skip * e.next) % m;
                while table[c as usize] != EMPTY {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % m;
                }
                table[c as usize] = e.host;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Some(HashTable::Maglev {
            table: table.into(),
        })
    }

    /// The endpoint index for `hash`.
    #[inline]
    pub fn get(&self, hash: u64) -> u32 {
        match self {
            HashTable::Ring { hashes, hosts } => {
                let i = hashes.partition_point(|&p| p < hash);
                let i = if i == hashes.len() { 0 } else { i };
                hosts[i]
            }
            HashTable::Maglev { table } => table[(hash % table.len() as u64) as usize],
        }
    }

    /// Number of entries (ring points or table slots).
    pub fn len(&self) -> usize {
        match self {
            HashTable::Ring { hashes, .. } => hashes.len(),
            HashTable::Maglev { table } => table.len(),
        }
    }

    /// Whether the table has no entry (never true for a built table).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Envoy's largest Maglev table size (a prime).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

fn next_prime(mut n: u64) -> u64 {
    let is_prime = |n: u64| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// xxHash64 of every value of header `name`, joined by `,` (Envoy hashes the header's
/// values as one string). `None` when absent.
pub(crate) fn header_hash(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(stable_hash(first.as_bytes()));
    };
    let mut h = StableHasher::new(0);
    h.update(first.as_bytes());
    for v in std::iter::once(second).chain(values) {
        h.update(b",");
        h.update(v.as_bytes());
    }
    Some(h.digest())
}

/// xxHash64 of an IP address as text (`10.0.0.1`, `2001:db8::1`), without allocating.
pub(crate) fn ip_hash(ip: IpAddr) -> u64 {
    let mut buf = [0u8; 48];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    stable_hash(&buf[..n])
}

/// xxHash64 of the first value of query parameter `name` (raw, not percent-decoded).
pub(crate) fn query_hash(uri: &http::Uri, name: &str) -> Option<u64> {
    let q = uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| stable_hash(v.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 8080)))
            .collect()
    }

    #[test]
    fn ring_points_are_envoys() {
        let a = addrs(2);
        let t = HashTable::ring(&a, &[1.0, 1.0], 4).unwrap();
        let HashTable::Ring { hashes, .. } = &t else {
            unreachable!()
        };
        assert_eq!(hashes.len(), 4);
        let mut expect: Vec<u64> = [
            "10.0.0.1:8080_0",
            "10.0.0.1:8080_1",
            "10.0.0.2:8080_0",
            "10.0.0.2:8080_1",
        ]
        .iter()
        .map(|k| stable_hash(k.as_bytes()))
        .collect();
        expect.sort_unstable();
        assert_eq!(&**hashes, &expect[..]);
        // a key maps to the first point at or after it
        let idx = t.get(expect[1]);
        assert_eq!(t.get(expect[1] - 1), idx);
        assert_eq!(t.get(u64::MAX), t.get(0), "wraps around");
    }

    #[test]
    fn ring_size_follows_min_ring_size_and_weights() {
        let a = addrs(3);
        let t = HashTable::ring(&a, &[1.0, 1.0, 2.0], 1024).unwrap();
        // min weight 1/4 → scale = ceil(0.25·1024)/0.25 = 1024
        assert_eq!(t.len(), 1024);
        let HashTable::Ring { hosts, .. } = &t else {
            unreachable!()
        };
        let heavy = hosts.iter().filter(|h| **h == 2).count();
        assert_eq!(heavy, 512);
    }

    #[test]
    fn maglev_fills_the_table_in_weight_proportion() {
        let a = addrs(3);
        let t = HashTable::maglev(&a, &[1.0, 1.0, 2.0], 65537).unwrap();
        let HashTable::Maglev { table } = &t else {
            unreachable!()
        };
        let mut counts = [0usize; 3];
        for h in table.iter() {
            counts[*h as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 65537);
        let share = counts[2] as f64 / 65537.0;
        assert!((share - 0.5).abs() < 0.001, "{counts:?}");
    }

    #[test]
    fn maglev_sizes_are_primes() {
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(8), 11);
        let t = HashTable::maglev(&addrs(3), &[1.0; 3], 1000).unwrap();
        assert_eq!(t.len(), 1009, "a composite size would loop forever");
    }

    #[test]
    fn maglev_slots_follow_the_permutation() {
        // one host: its offset slot must be the first filled, and every slot is it
        let a = addrs(1);
        let t = HashTable::maglev(&a, &[1.0], 7).unwrap();
        let HashTable::Maglev { table } = &t else {
            unreachable!()
        };
        assert!(table.iter().all(|h| *h == 0));
    }

    fn remapped(before: &HashTable, after: &HashTable, removed: u32, keys: u32) -> (f64, bool) {
        // indices after removal shift down by one past `removed`
        let mut moved = 0;
        let mut only_removed_moved = true;
        for k in 0..keys {
            let h = stable_hash_seeded(&k.to_le_bytes(), 7);
            let b = before.get(h);
            let a = after.get(h);
            let a_orig = if a >= removed { a + 1 } else { a };
            if a_orig != b {
                moved += 1;
                if b != removed {
                    only_removed_moved = false;
                }
            }
        }
        (f64::from(moved) / f64::from(keys), only_removed_moved)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn ring_hash_remaps_about_one_nth(n in 3usize..40, removed_seed: usize) {
            let a = addrs(n);
            let removed = removed_seed % n;
            let w = vec![1.0; n];
            let before = HashTable::ring(&a, &w, 1024).unwrap();
            let mut a2 = a.clone();
            a2.remove(removed);
            let after = HashTable::ring(&a2, &w[1..], 1024).unwrap();
            let (moved, _) = remapped(&before, &after, removed as u32, 20_000);
            // The removed endpoint's keys (1/N) move, and, because Envoy keeps the ring at
            // `minimumRingSize`, each survivor gains points that take up to another 1/N.
            let expect = 1.0 / n as f64;
            prop_assert!(moved >= expect * 0.4 && moved < expect * 2.5 + 0.02, "moved {moved} expected ~{expect}");
        }

        #[test]
        fn ring_hash_moves_only_the_removed_keys_at_equal_points(n in 3usize..40, removed_seed: usize, per_host in 1u64..8) {
            // with the same number of points per endpoint before and after (Ketama's setting),
            // no key moves between surviving endpoints
            let a = addrs(n);
            let removed = removed_seed % n;
            let w = vec![1.0; n];
            let before = HashTable::ring(&a, &w, per_host).unwrap();
            let mut a2 = a.clone();
            a2.remove(removed);
            let after = HashTable::ring(&a2, &w[1..], per_host).unwrap();
            prop_assume!(before.len() / n == after.len() / (n - 1));
            let (_, only_removed) = remapped(&before, &after, removed as u32, 5_000);
            prop_assert!(only_removed);
        }

        #[test]
        fn maglev_remaps_about_one_nth(n in 3usize..40, removed_seed: usize) {
            let a = addrs(n);
            let removed = removed_seed % n;
            let w = vec![1.0; n];
            let before = HashTable::maglev(&a, &w, 65537).unwrap();
            let mut a2 = a.clone();
            a2.remove(removed);
            let after = HashTable::maglev(&a2, &w[1..], 65537).unwrap();
            let (moved, _) = remapped(&before, &after, removed as u32, 20_000);
            // Maglev moves the removed endpoint's keys plus a little more (the paper's
            // disruption bound); allow the 1/N share plus 1/N of churn.
            let expect = 1.0 / n as f64;
            prop_assert!(moved >= expect * 0.6 && moved < expect * 2.0 + 0.01, "moved {moved} expected ~{expect}");
        }
    }

    #[test]
    fn request_keys() {
        let mut h = http::HeaderMap::new();
        h.append("x-user", "alice".parse().unwrap());
        let name = http::HeaderName::from_static("x-user");
        assert_eq!(header_hash(&h, &name), Some(stable_hash(b"alice")));
        h.append("x-user", "bob".parse().unwrap());
        assert_eq!(header_hash(&h, &name), Some(stable_hash(b"alice,bob")));
        assert_eq!(
            ip_hash("10.1.2.3".parse().unwrap()),
            stable_hash(b"10.1.2.3")
        );
        let uri: http::Uri = "/p?a=1&user=carol&user=x".parse().unwrap();
        assert_eq!(query_hash(&uri, "user"), Some(stable_hash(b"carol")));
        assert_eq!(query_hash(&uri, "nope"), None);
    }
}

//! Random numbers for the request path: weighted routes, mirroring percentages, the
//! balancer's random and power-of-two-choices picks.
//!
//! One generator (wyrand: one add and one 64×64→128 multiply per number, no allocation),
//! in two access modes, and one way to seed it:
//!
//! - [`Rng`]: owned by one service (`&mut self`), e.g. each `Route` service's weighted picks;
//! - [`SharedRng`]: shared by the clones of a layer through `&self`, one atomic add per number
//!   and no lock, e.g. a balancer cluster picked from by every worker;
//! - [`seed`]: the seed of the n-th generator made from a configured seed, or fresh entropy
//!   without one. Layers take an optional seed (`RouteLayer::with_seed`, `LbConfig::seed`):
//!   tests set it and get reproducible sequences, production leaves it unset.
//!
//! Not for secrets: the sequence is predictable from its seed, which is fine for spreading
//! load and sampling, not for tokens or keys.
//!
//! ```
//! use mesh_core::rng::{self, Rng, SharedRng};
//!
//! // a test: the same seed, the same draws
//! let mut a = Rng::new(Some(rng::seed(Some(7), 0)));
//! let mut b = Rng::new(Some(rng::seed(Some(7), 0)));
//! assert_eq!(a.next_u64(), b.next_u64());
//! // the next clone of a layer draws another sequence
//! assert_ne!(rng::seed(Some(7), 0), rng::seed(Some(7), 1));
//! // production: from entropy
//! let shared = SharedRng::new(None);
//! assert!(shared.below(10) < 10);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// A fast generator owned by one user (`&mut self`). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// The same generator shared through `&self`: each number is one relaxed atomic add, so the
/// clones of a layer draw from one sequence without a lock. See the [module docs](self).
#[derive(Debug)]
pub struct SharedRng(AtomicU64);

const WY0: u64 = 0xa076_1d64_78bd_642f;
const WY1: u64 = 0xe703_7ed1_a0b4_28db;

/// The seed of the `stream`-th generator made from `base` (the n-th clone of a layer, the
/// n-th worker): with a configured seed, a reproducible mix of both, so that clones draw
/// different sequences that a test can replay; without one, fresh entropy.
pub fn seed(base: Option<u64>, stream: u64) -> u64 {
    match base {
        Some(base) => splitmix(base ^ splitmix(stream)),
        None => entropy(),
    }
}

/// 64 bits of entropy (from a thread-local generator seeded by the process's randomness):
/// for identifiers that should differ between processes, not for secrets.
pub fn entropy() -> u64 {
    fastrand::u64(..)
}

/// SplitMix64's finaliser: spreads nearby inputs (0, 1, 2...) over the whole range.
#[inline]
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// wyrand's output for the state after an add.
#[inline]
fn mix(s: u64) -> u64 {
    let t = u128::from(s).wrapping_mul(u128::from(s ^ WY1));
    (t as u64) ^ ((t >> 64) as u64)
}

/// A number in `0..n` from 64 random bits, by multiply-shift (no division; `n` = 0 gives 0).
#[inline]
fn scale(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

/// A number in `[0, 1)` from 64 random bits (the top 53).
#[inline]
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

// === impl Rng ===

impl Rng {
    /// A generator seeded with `seed` (reproducible), or from entropy with `None`.
    pub fn new(seed: Option<u64>) -> Self {
        Rng(seed.unwrap_or_else(entropy))
    }

    /// The generator of the next clone of a layer: the `counter`-th stream of `base` (see
    /// [`seed`]), counting the clone. Layers keep one counter shared by their clones.
    pub fn nth(base: Option<u64>, counter: &AtomicU64) -> Self {
        Rng::new(Some(seed(base, counter.fetch_add(1, Ordering::Relaxed))))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(WY0);
        mix(self.0)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        scale(self.next_u64(), n)
    }

    /// A number in `[0, 1)`.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        unit(self.next_u64())
    }
}

// === impl SharedRng ===

impl SharedRng {
    /// A generator seeded with `seed` (reproducible), or from entropy with `None`.
    pub fn new(seed: Option<u64>) -> Self {
        SharedRng(AtomicU64::new(seed.unwrap_or_else(entropy)))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        mix(self.0.fetch_add(WY0, Ordering::Relaxed).wrapping_add(WY0))
    }

    /// A number in `0..n` (`0` when `n` is 0).
    #[inline]
    pub fn below(&self, n: usize) -> usize {
        scale(self.next_u64(), n)
    }

    /// A number in `[0, 1)`.
    #[inline]
    pub fn next_f64(&self) -> f64 {
        unit(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::Rng; // not proptest's trait of that name
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_modes_draw_the_same_sequence() {
        let mut own = Rng::new(Some(42));
        let shared = SharedRng::new(Some(42));
        for _ in 0..100 {
            assert_eq!(own.next_u64(), shared.next_u64());
        }
    }

    #[test]
    fn seeds_are_reproducible_and_streams_differ() {
        assert_eq!(seed(Some(1), 3), seed(Some(1), 3));
        assert_ne!(seed(Some(1), 3), seed(Some(1), 4));
        assert_ne!(seed(Some(1), 0), seed(Some(2), 0));
        // entropy: two unseeded generators (almost surely) differ
        assert_ne!(Rng::new(None).next_u64(), Rng::new(None).next_u64());
    }

    /// A chi-square test of `below` over 8 buckets: 80 000 draws, 7 degrees of freedom,
    /// 24.3 is the 0.999 quantile (a fixed seed, so the verdict is reproducible).
    #[test]
    fn below_is_uniform() {
        let mut r = Rng::new(Some(seed(Some(9), 0)));
        let mut counts = [0u32; 8];
        for _ in 0..80_000 {
            counts[r.below(8)] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - 10_000.0).powi(2) / 10_000.0)
            .sum();
        assert!(chi2 < 24.3, "{counts:?} chi2 {chi2}");
    }

    proptest! {
        #[test]
        fn draws_stay_in_range(s in any::<u64>(), n in 0usize..1_000_000) {
            let mut r = Rng::new(Some(s));
            let shared = SharedRng::new(Some(s));
            let b = r.below(n);
            prop_assert!(b < n.max(1));
            prop_assert_eq!(shared.below(n), b);
            let f = r.next_f64();
            prop_assert!((0.0..1.0).contains(&f));
        }
    }
}

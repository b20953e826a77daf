//! Per-service random generators: seeded for reproducible runs, from entropy otherwise.

use std::sync::atomic::{AtomicU64, Ordering};

/// The generator of the next service made from a layer: seeded by `seed` and the number of
/// services made before it from the same layer (`counter`), or from entropy.
pub(crate) fn next_rng(seed: Option<u64>, counter: &AtomicU64) -> fastrand::Rng {
    match seed {
        Some(seed) => {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            fastrand::Rng::with_seed(splitmix(seed ^ splitmix(n)))
        }
        None => fastrand::Rng::new(),
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

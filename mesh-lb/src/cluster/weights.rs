//! Weighted choice: the alias table and the EDF schedule of a cluster's weights.

use super::*;

// === impl Alias ===

impl Alias {
    /// Vose's alias method over positive weights.
    pub(crate) fn new(weights: &[f64]) -> Alias {
        let n = weights.len().max(1);
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights
            .iter()
            .map(|w| {
                if total > 0.0 {
                    w * n as f64 / total
                } else {
                    1.0
                }
            })
            .collect();
        scaled.resize(n, 1.0);
        let mut prob = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = (scaled[s] * f64::from(u32::MAX)) as u32;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias {
            prob: prob.into(),
            alias: alias.into(),
        }
    }

    #[inline]
    pub(crate) fn sample(&self, rng: &SharedRng) -> usize {
        let r = rng.next_u64();
        let n = self.prob.len() as u64;
        let i = (((r & 0xffff_ffff) * n) >> 32) as usize;
        let coin = (r >> 32) as u32;
        if coin < self.prob[i] || self.prob[i] == u32::MAX {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

/// An earliest-deadline-first schedule (Envoy's `EdfScheduler`) over `hosts` with `weights`,
/// one period long: each host appears in proportion to its weight, spread out. Weights are
/// made integers (percent precision), reduced by their gcd, and the period is capped at
/// 65536 entries.
pub(super) fn edf_schedule(hosts: &[u32], weights: &[f64]) -> Box<[u32]> {
    #[derive(PartialEq)]
    struct Entry(f64, usize);
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, o: &Self) -> CmpOrdering {
            // min-heap on deadline, then on position (earlier hosts first on ties)
            o.0.total_cmp(&self.0).then_with(|| o.1.cmp(&self.1))
        }
    }
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut w: Vec<u64> = weights
        .iter()
        .map(|w| ((w * 100.0).round() as u64).max(1))
        .collect();
    let g = w.iter().copied().fold(0, gcd).max(1);
    w.iter_mut().for_each(|x| *x /= g);
    let mut period: u64 = w.iter().sum();
    const CAP: u64 = 65536;
    if period > CAP {
        w.iter_mut()
            .for_each(|x| *x = ((*x as f64) * CAP as f64 / period as f64).round().max(1.0) as u64);
        period = w.iter().sum();
    }
    let mut heap: BinaryHeap<Entry> = w
        .iter()
        .enumerate()
        .map(|(i, x)| Entry(1.0 / *x as f64, i))
        .collect();
    let mut out = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let Some(Entry(deadline, i)) = heap.pop() else {
            break;
        };
        out.push(hosts[i]);
        heap.push(Entry(deadline + 1.0 / w[i] as f64, i));
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edf_schedule_is_proportional_and_interleaved() {
        let s = edf_schedule(&[0, 1, 2], &[1.0, 2.0, 3.0]);
        assert_eq!(s.len(), 6);
        let count = |h| s.iter().filter(|x| **x == h).count();
        assert_eq!((count(0), count(1), count(2)), (1, 2, 3));
        assert_ne!(&s[..3], &[2, 2, 2], "spread out, not in runs");
    }

    #[test]
    fn alias_samples_by_weight() {
        let a = Alias::new(&[1.0, 3.0]);
        let rng = SharedRng::new(Some(1));
        let n = 100_000;
        let ones = (0..n).filter(|_| a.sample(&rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }
}

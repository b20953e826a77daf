//! Picking an endpoint of a built [`Cluster`]: no lock, no allocation.

use super::*;
use crate::locality::level_excluding;

impl Cluster {
    /// Picks an endpoint; `hash` for consistent-hash clusters (a random one is drawn when
    /// the request had no key). `None`: no endpoint can take the request (`503 UH`).
    #[inline]
    pub(crate) fn pick(&self, hash: Option<u64>) -> Option<&Host> {
        self.pick_at(hash, 0).map(|(host, _)| host)
    }

    /// Whether the cluster has more than one priority level.
    #[inline]
    pub(crate) fn has_priorities(&self) -> bool {
        self.levels.len() > 1
    }

    /// Picks an endpoint and says the priority level it is in; the level is drawn from the
    /// priority load without the levels in `excluded` (a bit set; `0`: the unmodified load),
    /// as Envoy's `previous_priorities` retry priority (Istio's `retryRemoteLocalities`).
    #[inline]
    pub(crate) fn pick_at(&self, hash: Option<u64>, excluded: u64) -> Option<(&Host, usize)> {
        let li = match &*self.levels {
            [] => return None,
            [_] => 0,
            levels => {
                let r = match hash {
                    Some(h) => (h % 100) as u32,
                    None => self.rng.below(100) as u32,
                };
                let adjusted = match excluded {
                    0 => None,
                    _ => level_excluding(&self.health, excluded, r),
                };
                adjusted.unwrap_or_else(|| {
                    self.cumulative
                        .iter()
                        .position(|c| r < *c)
                        .unwrap_or(levels.len() - 1)
                })
            }
        };
        let level = &self.levels[li];
        if let Some((table, t_hosts)) = &level.table {
            let h = hash.unwrap_or_else(|| self.rng.next_u64());
            let host = self.hosts.get(t_hosts[table.get(h) as usize] as usize)?;
            return Some((host, li));
        }
        let group = match &level.group_alias {
            Some(alias) if level.groups.len() > 1 => level.groups.get(alias.sample(&self.rng))?,
            _ => level.groups.first()?,
        };
        let i = self.pick_in(group)?;
        Some((self.hosts.get(i as usize)?, li))
    }

    #[inline]
    fn pick_in(&self, g: &Group) -> Option<u32> {
        let n = g.hosts.len();
        if n == 0 {
            return None;
        }
        let hosts = &g.hosts;
        Some(match (self.algorithm, &g.weights) {
            (Algorithm::RoundRobin, Weights::Schedule(s)) => {
                s[g.cursor.fetch_add(1, Ordering::Relaxed) % s.len()]
            }
            (Algorithm::RoundRobin, _) => hosts[g.cursor.fetch_add(1, Ordering::Relaxed) % n],
            (Algorithm::LeastRequest, Weights::Sampled(alias, weights)) => {
                self.weighted_least_request(hosts, alias, weights)
            }
            (Algorithm::LeastRequest, _) => {
                let a = hosts[self.rng.below(n)];
                let b = hosts[self.rng.below(n)];
                if self.hosts[b as usize].state.active() < self.hosts[a as usize].state.active() {
                    b
                } else {
                    a
                }
            }
            (Algorithm::PeakEwma, _) => {
                let a = hosts[self.rng.below(n)];
                let b = hosts[self.rng.below(n)];
                let rtt = self.ewma_default_rtt_ns;
                if self.hosts[b as usize].state.ewma_cost(rtt)
                    < self.hosts[a as usize].state.ewma_cost(rtt)
                {
                    b
                } else {
                    a
                }
            }
            _ => hosts[self.rng.below(n)],
        })
    }

    /// Envoy's weighted least request picks host `i` with probability proportional to
    /// `weight_i / (active_i + 1)` (bias 1.0). Drawn lock-free by rejection sampling: propose
    /// by weight (alias table), accept with probability `1 / (active + 1)`; after eight
    /// rejections (busy endpoints everywhere) the best proposal by `weight / (active + 1)`
    /// is taken, which is then a power-of-eight-choices.
    fn weighted_least_request(&self, hosts: &[u32], alias: &Alias, weights: &[f64]) -> u32 {
        let mut best = 0usize;
        let mut best_score = f64::NEG_INFINITY;
        for _ in 0..8 {
            let pos = alias.sample(&self.rng);
            let active = f64::from(self.hosts[hosts[pos] as usize].state.active()) + 1.0;
            if self.rng.next_f64() * active < 1.0 {
                return hosts[pos];
            }
            let score = weights[pos] / active;
            if score > best_score {
                best_score = score;
                best = pos;
            }
        }
        hosts[best]
    }
}

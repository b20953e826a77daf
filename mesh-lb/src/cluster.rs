//! One cluster: the endpoints of a (host, subset, port), arranged for picking.
//!
//! Built when first needed and rebuilt when the snapshot, the discovered endpoints or any
//! endpoint's health change (or while endpoints warm up); picking only reads it, with
//! atomics for cursors and random numbers, so a pick takes no lock and allocates nothing.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_core::compile::{Endpoint, Protocol, Service, TLS_MODE_LABEL};
use mesh_core::ext::{SelectedEndpoint, SelectedUpstream, UpstreamCluster};
use mesh_core::health::{HealthCell, HealthKey, HealthSource};
use mesh_core::locality::Locality;
use mesh_core::model::networking::ServicePort;
use mesh_core::selector::{Labels, labels_match};

use crate::discover::EndpointSet;
use crate::endpoint::{EndpointState, Registry, Rng};
use crate::hash::HashTable;
use crate::locality::{Client, Place, layout, priority_load};
use crate::policy::{Algorithm, HashKey, Policy};

/// An endpoint of a cluster, ready to hand to the connector.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) addr: SocketAddr,
    pub(crate) weight: u32,
    pub(crate) state: Arc<EndpointState>,
    pub(crate) health: Arc<HealthCell>,
    /// What a request to this endpoint carries: the endpoint and this cluster (shared).
    pub(crate) upstream: SelectedUpstream,
}

/// A built cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) subset: Option<Arc<str>>,
    /// The layer version it was built at.
    pub(crate) version: u64,
    /// Rebuild at this time (endpoints warming up).
    pub(crate) refresh_at: Option<Instant>,
    pub(crate) hosts: Box<[Host]>,
    levels: Box<[Level]>,
    /// Cumulative priority load (percent), one per level.
    cumulative: Box<[u32]>,
    pub(crate) algorithm: Algorithm,
    pub(crate) hash: Option<HashKey>,
    pub(crate) rng: Rng,
    pub(crate) ewma_default_rtt_ns: f64,
}

#[derive(Debug)]
struct Level {
    groups: Box<[Group]>,
    /// Locality choice among groups (distribute); `None` with a single group.
    group_alias: Option<Alias>,
    table: Option<(HashTable, Box<[u32]>)>,
}

#[derive(Debug)]
struct Group {
    hosts: Box<[u32]>,
    cursor: AtomicUsize,
    weights: Weights,
}

#[derive(Debug)]
enum Weights {
    /// All equal (or ignored by the algorithm).
    Equal,
    /// Weighted round robin: an EDF schedule of host indices, walked by the cursor.
    Schedule(Box<[u32]>),
    /// Weighted least request: sampling by weight, with each group position's weight.
    Sampled(Alias, Box<[f64]>),
}

/// Walker/Vose alias table: O(1) weighted sampling.
#[derive(Debug)]
pub(crate) struct Alias {
    prob: Box<[u32]>,
    alias: Box<[u32]>,
}

/// Everything a cluster build needs.
pub(crate) struct BuildInput<'a> {
    pub(crate) name: Arc<str>,
    pub(crate) subset: Option<Arc<str>>,
    pub(crate) subset_labels: Option<&'a Labels>,
    pub(crate) service: &'a Service,
    pub(crate) port: &'a ServicePort,
    pub(crate) endpoints: &'a EndpointSet,
    pub(crate) policy: Policy,
    pub(crate) client_locality: &'a Locality,
    pub(crate) client_labels: &'a Labels,
    pub(crate) registry: &'a Registry,
    pub(crate) health: &'a dyn HealthSource,
    pub(crate) version: u64,
    pub(crate) seed: u64,
    pub(crate) overprovisioning: u32,
    pub(crate) ewma_default_rtt: Duration,
    pub(crate) now: Instant,
}

// === impl Cluster ===

impl Cluster {
    pub(crate) fn build(input: BuildInput<'_>) -> Cluster {
        let BuildInput {
            name,
            subset,
            subset_labels,
            service,
            port,
            endpoints,
            policy,
            now,
            ..
        } = input;
        let http2 = Protocol::of(port).is_http2() || policy.h2_upgrade;

        // the subset's endpoints with their addresses, first occurrence of an address wins
        let mut chosen: Vec<(SocketAddr, &Arc<Endpoint>)> =
            Vec::with_capacity(endpoints.endpoints.len());
        for e in &endpoints.endpoints {
            if subset_labels.is_some_and(|l| !labels_match(l, &e.endpoint.labels)) {
                continue;
            }
            let p = service.endpoint_port(&e.endpoint, port);
            if p == 0 {
                continue;
            }
            let addr = SocketAddr::new(e.ip, p);
            if !chosen.iter().any(|c| c.0 == addr) {
                chosen.push((addr, &e.endpoint));
            }
        }
        let addrs: Vec<SocketAddr> = chosen.iter().map(|c| c.0).collect();
        let states = input.registry.states(&name, &addrs, now);
        let hosts: Box<[Host]> = chosen
            .iter()
            .zip(states)
            .map(|((addr, ep), state)| {
                let health = input.health.cell(&HealthKey {
                    cluster: name.clone(),
                    addr: *addr,
                });
                let selected = SelectedEndpoint {
                    addr: *addr,
                    http2,
                    service_account: ep.service_account.as_deref().map(Arc::from),
                    istio_tls: ep.labels.get(TLS_MODE_LABEL).is_some_and(|v| v == "istio"),
                };
                let cluster = UpstreamCluster {
                    name: name.clone(),
                    health: health.clone(),
                    pool: policy.pool,
                };
                Host {
                    addr: *addr,
                    weight: ep.weight.max(1),
                    state,
                    health,
                    upstream: SelectedUpstream::new(selected, cluster),
                }
            })
            .collect();

        let places: Vec<Place<'_>> = chosen
            .iter()
            .map(|(_, ep)| Place {
                locality: &ep.locality,
                labels: &ep.labels,
                network: ep.network.as_deref(),
                weight: ep.weight.max(1),
            })
            .collect();
        let client = Client {
            locality: input.client_locality,
            labels: input.client_labels,
        };
        let lay = layout(&places, &client, &policy.locality);

        let counts: Vec<(usize, usize)> = lay
            .levels
            .iter()
            .map(|groups| {
                let all = groups.iter().flat_map(|g| &g.hosts);
                let total = all.clone().count();
                let healthy = all.filter(|&&i| hosts[i].health.is_healthy()).count();
                (healthy, total)
            })
            .collect();
        let load = priority_load(&counts, input.overprovisioning, policy.panic_threshold);

        // warm-up factors, and when to look again
        let mut refresh_at: Option<Instant> = None;
        let factors: Vec<f64> = match &policy.warmup {
            Some(w) => hosts
                .iter()
                .map(|h| {
                    let f = h.state.warmup_factor(now, w);
                    if f < 1.0 {
                        let step = (w.duration / 20).max(Duration::from_millis(100));
                        let at = now + step;
                        refresh_at = Some(refresh_at.map_or(at, |r| r.min(at)));
                    }
                    f
                })
                .collect(),
            None => vec![1.0; hosts.len()],
        };
        let host_weight = |i: usize| f64::from(hosts[i].weight) * factors[i];

        let rng = Rng::new(input.seed);
        let mut levels = Vec::new();
        let mut cumulative = Vec::new();
        if let Some(load) = load {
            let mut acc = 0u32;
            for (li, groups) in lay.levels.iter().enumerate() {
                acc += load.load[li];
                cumulative.push(acc);
                let panic = load.panic[li];
                let mut built: Vec<(Group, f64)> = Vec::new();
                for g in groups {
                    let use_hosts: Vec<u32> = g
                        .hosts
                        .iter()
                        .filter(|&&i| panic || hosts[i].health.is_healthy())
                        .map(|&i| i as u32)
                        .collect();
                    if use_hosts.is_empty() {
                        continue;
                    }
                    // Envoy: a locality's weight shrinks with its availability (overprovisioned)
                    let avail = if panic {
                        1.0
                    } else {
                        (f64::from(input.overprovisioning) / 100.0 * use_hosts.len() as f64
                            / g.hosts.len() as f64)
                            .min(1.0)
                    };
                    let gw = f64::from(g.weight) * avail;
                    if gw <= 0.0 {
                        continue;
                    }
                    let weights: Vec<f64> =
                        use_hosts.iter().map(|&i| host_weight(i as usize)).collect();
                    let equal = weights
                        .windows(2)
                        .all(|w| (w[0] - w[1]).abs() < f64::EPSILON);
                    let weights = match policy.algorithm {
                        _ if equal => Weights::Equal,
                        Algorithm::RoundRobin => {
                            Weights::Schedule(edf_schedule(&use_hosts, &weights))
                        }
                        Algorithm::LeastRequest => {
                            Weights::Sampled(Alias::new(&weights), weights.into())
                        }
                        _ => Weights::Equal,
                    };
                    let start = rng.below(use_hosts.len().max(1));
                    built.push((
                        Group {
                            hosts: use_hosts.into(),
                            cursor: AtomicUsize::new(start),
                            weights,
                        },
                        gw,
                    ));
                }
                let table = match policy.algorithm {
                    Algorithm::RingHash { .. } | Algorithm::Maglev { .. } => {
                        let total_gw: f64 = built.iter().map(|b| b.1).sum();
                        let mut t_hosts = Vec::new();
                        let mut t_addrs = Vec::new();
                        let mut t_weights = Vec::new();
                        for (g, gw) in &built {
                            let sum: f64 = g.hosts.iter().map(|&i| host_weight(i as usize)).sum();
                            for &i in g.hosts.iter() {
                                let w = host_weight(i as usize);
                                t_hosts.push(i);
                                t_addrs.push(hosts[i as usize].addr);
                                t_weights.push(if lay.weighted {
                                    w / sum * gw / total_gw
                                } else {
                                    w
                                });
                            }
                        }
                        let t = match policy.algorithm {
                            Algorithm::Maglev { table_size } => {
                                HashTable::maglev(&t_addrs, &t_weights, table_size)
                            }
                            Algorithm::RingHash { min_ring_size } => {
                                HashTable::ring(&t_addrs, &t_weights, min_ring_size)
                            }
                            _ => None,
                        };
                        t.map(|t| (t, t_hosts.into_boxed_slice()))
                    }
                    _ => None,
                };
                let group_alias = (built.len() > 1)
                    .then(|| Alias::new(&built.iter().map(|b| b.1).collect::<Vec<_>>()));
                levels.push(Level {
                    groups: built.into_iter().map(|b| b.0).collect(),
                    group_alias,
                    table,
                });
            }
        }
        Cluster {
            subset,
            version: input.version,
            refresh_at,
            hosts,
            levels: levels.into(),
            cumulative: cumulative.into(),
            algorithm: policy.algorithm,
            hash: policy.hash,
            rng,
            ewma_default_rtt_ns: input.ewma_default_rtt.as_nanos() as f64,
        }
    }

    /// Picks an endpoint; `hash` for consistent-hash clusters (a random one is drawn when
    /// the request had no key). `None`: no endpoint can take the request (`503 UH`).
    #[inline]
    pub(crate) fn pick(&self, hash: Option<u64>) -> Option<&Host> {
        let level = match &*self.levels {
            [] => return None,
            [only] => only,
            levels => {
                let r = match hash {
                    Some(h) => (h % 100) as u32,
                    None => self.rng.below(100) as u32,
                };
                let i = self
                    .cumulative
                    .iter()
                    .position(|c| r < *c)
                    .unwrap_or(levels.len() - 1);
                &levels[i]
            }
        };
        if let Some((table, t_hosts)) = &level.table {
            let h = hash.unwrap_or_else(|| self.rng.next_u64());
            return self.hosts.get(t_hosts[table.get(h) as usize] as usize);
        }
        let group = match &level.group_alias {
            Some(alias) if level.groups.len() > 1 => level.groups.get(alias.sample(&self.rng))?,
            _ => level.groups.first()?,
        };
        let i = self.pick_in(group)?;
        self.hosts.get(i as usize)
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
            if self.rng.unit() * active < 1.0 {
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
    pub(crate) fn sample(&self, rng: &Rng) -> usize {
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
fn edf_schedule(hosts: &[u32], weights: &[f64]) -> Box<[u32]> {
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
        let rng = Rng::new(1);
        let n = 100_000;
        let ones = (0..n).filter(|_| a.sample(&rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }
}

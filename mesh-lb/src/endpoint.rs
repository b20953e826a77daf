//! Per-endpoint runtime state (active requests, latency), shared by every worker's balancer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_core::limits::{ClusterCounters, CountersRegistry};
use std::time::{Duration, Instant};

/// What the balancers know about an endpoint at run time: its requests in flight and its
/// latency estimate. Shared by all clusters and workers that hold the endpoint (so least
/// request sees the requests of every worker, as Envoy's `rq_active`), and kept across
/// snapshot and endpoint updates while the endpoint persists.
#[derive(Debug)]
pub struct EndpointState {
    active: AtomicU32,
    /// Peak-EWMA round-trip time in nanoseconds (`f64` bits); 0 = no measurement yet.
    ewma_bits: AtomicU64,
    /// When `ewma_bits` was last updated, in nanoseconds since the registry's epoch.
    ewma_stamp: AtomicU64,
    /// When the endpoint joined its cluster; `None` for members of the cluster's first
    /// build (never warming up).
    pub(crate) created: Option<Instant>,
    epoch: Instant,
}

/// Creates and keeps [`EndpointState`]s by (cluster, address), so a rebuilt cluster finds
/// the counters of its surviving endpoints. Locked only while a cluster is built.
#[derive(Debug)]
pub(crate) struct Registry {
    epoch: Instant,
    inner: Mutex<RegistryInner>,
    /// Circuit-breaker counters by cluster name.
    counters: CountersRegistry,
}

#[derive(Debug, Default)]
struct RegistryInner {
    states: HashMap<(Arc<str>, SocketAddr), (Arc<EndpointState>, Instant)>,
    known_clusters: HashSet<Arc<str>>,
    last_prune: Option<Instant>,
}

/// How long a state nobody uses is kept (an endpoint that comes back within it keeps its
/// warm-up clock and latency estimate).
const KEEP_UNUSED: Duration = Duration::from_secs(300);

// === impl EndpointState ===

impl mesh_core::body::OnBodyEnd for EndpointState {
    fn body_ended(&self) {
        self.end();
    }
}

impl EndpointState {
    fn new(created: Option<Instant>, epoch: Instant) -> Self {
        EndpointState {
            active: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0),
            ewma_stamp: AtomicU64::new(0),
            created,
            epoch,
        }
    }

    /// Requests in flight to this endpoint (across workers).
    #[inline]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn end(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn set_active(&self, n: u32) {
        self.active.store(n, Ordering::Relaxed);
    }

    /// The peak-EWMA latency estimate, if measured.
    pub fn rtt_estimate(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    /// Peak-EWMA cost: the latency estimate (or `default_rtt_ns`) times `active + 1`.
    #[inline]
    pub(crate) fn ewma_cost(&self, default_rtt_ns: f64) -> f64 {
        let ns = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let rtt = if ns > 0.0 { ns } else { default_rtt_ns };
        rtt * (f64::from(self.active()) + 1.0)
    }

    /// Records a response time, Linkerd's peak-EWMA way: a slower sample replaces the
    /// estimate at once (the peak); a faster one is averaged in with weight
    /// `1 - e^(-elapsed/decay)`. Concurrent updates race benignly (one of them wins).
    pub(crate) fn observe_rtt(&self, rtt: Duration, now: Instant, decay: Duration) {
        let sample = rtt.as_nanos() as f64;
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let next = if prev <= 0.0 || sample > prev {
            sample
        } else {
            let elapsed = now_ns.saturating_sub(self.ewma_stamp.load(Ordering::Relaxed)) as f64;
            let decay = (decay.as_nanos() as f64).max(1.0);
            let w = (-elapsed / decay).exp();
            prev * w + sample * (1.0 - w)
        };
        self.ewma_bits
            .store(next.max(1.0).to_bits(), Ordering::Relaxed);
        self.ewma_stamp.store(now_ns, Ordering::Relaxed);
    }

    /// Envoy's slow-start factor at `now`: `max(min, (t/duration)^(1/aggression))`, or 1
    /// when the endpoint is not (or no longer) warming up.
    pub(crate) fn warmup_factor(&self, now: Instant, w: &crate::policy::Warmup) -> f64 {
        let Some(created) = self.created else {
            return 1.0;
        };
        let t = now.saturating_duration_since(created);
        if t >= w.duration {
            return 1.0;
        }
        let frac = t.as_secs_f64() / w.duration.as_secs_f64();
        frac.powf(1.0 / w.aggression).max(w.min_fraction).min(1.0)
    }
}

// === impl Registry ===

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            epoch: Instant::now(),
            inner: Mutex::new(RegistryInner::default()),
            counters: CountersRegistry::default(),
        }
    }

    /// The states of `addrs` in `cluster`, created when new. Endpoints of a cluster's first
    /// build are not considered new (no warm-up at start, as all would ramp equally).
    pub(crate) fn states(
        &self,
        cluster: &Arc<str>,
        addrs: &[SocketAddr],
        now: Instant,
    ) -> Vec<Arc<EndpointState>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let first_build = inner.known_clusters.insert(cluster.clone());
        let epoch = self.epoch;
        let out = addrs
            .iter()
            .map(|addr| {
                let entry = inner
                    .states
                    .entry((cluster.clone(), *addr))
                    .or_insert_with(|| {
                        (
                            Arc::new(EndpointState::new((!first_build).then_some(now), epoch)),
                            now,
                        )
                    });
                entry.1 = now;
                entry.0.clone()
            })
            .collect();
        if inner
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(10))
        {
            inner.last_prune = Some(now);
            inner.states.retain(|_, (s, seen)| {
                Arc::strong_count(s) > 1 || now.saturating_duration_since(*seen) < KEEP_UNUSED
            });
        }
        out
    }
}

impl Registry {
    /// The circuit-breaker counters of `cluster` ([`CountersRegistry::counters`]).
    pub(crate) fn counters(&self, cluster: &Arc<str>) -> Arc<ClusterCounters> {
        self.counters.counters(cluster)
    }

    /// The circuit-breaker counters of the clusters alive now, by cluster name.
    pub(crate) fn live_counters(&self) -> Vec<(Arc<str>, Arc<ClusterCounters>)> {
        self.counters.live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays_towards_faster_samples() {
        let s = EndpointState::new(None, Instant::now());
        let t0 = Instant::now();
        let decay = Duration::from_secs(10);
        s.observe_rtt(Duration::from_millis(10), t0, decay);
        assert_eq!(s.rtt_estimate(), Some(Duration::from_millis(10)));
        s.observe_rtt(Duration::from_millis(50), t0, decay);
        assert_eq!(s.rtt_estimate(), Some(Duration::from_millis(50)), "peak");
        s.observe_rtt(
            Duration::from_millis(10),
            t0 + Duration::from_secs(10),
            decay,
        );
        let est = s.rtt_estimate().unwrap().as_secs_f64() * 1000.0;
        // 50·e^-1 + 10·(1 - e^-1) = 24.7
        assert!((est - 24.7).abs() < 0.1, "{est}");
    }

    #[test]
    fn registry_keeps_state_of_surviving_endpoints() {
        let r = Registry::new();
        let c: Arc<str> = "c".into();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let now = Instant::now();
        let first = r.states(&c, &[a], now);
        first[0].begin();
        assert!(first[0].created.is_none(), "initial members do not warm up");
        let second = r.states(&c, &[a, b], now);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert_eq!(second[0].active(), 1);
        assert_eq!(second[1].created, Some(now), "later members do");
    }
}

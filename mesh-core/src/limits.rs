//! A cluster's circuit-breaker thresholds and the counters they are checked against:
//! Envoy's `CircuitBreakers.Thresholds` and its `ResourceManager`, as Istio's
//! `connectionPool` and `retryBudget` fill them.
//!
//! The balancer (`mesh-lb`) compiles a [`Thresholds`] from the destination's merged
//! `TrafficPolicy` ([`Thresholds::from_traffic_policy`]) and hands every request a
//! [`ClusterLimits`] in its `UpstreamCluster` (`mesh_core::ext`): the thresholds and the
//! cluster's [`ClusterCounters`], shared by all worker threads (Envoy's circuit breakers are
//! per cluster and per proxy, not per worker) and kept across cluster rebuilds. The circuit
//! breaker (`mesh-resilience`) admits requests against them; the retry layer asks them for a
//! retry permit.
//!
//! ```
//! use mesh_core::limits::{Admission, ClusterLimits, Thresholds};
//!
//! let limits = ClusterLimits::detached(Thresholds { max_requests: 1, ..Thresholds::default() });
//! let Admission::Admitted(first) = limits.admit(false) else { unreachable!() };
//! assert!(matches!(limits.admit(false), Admission::Overflow));
//! drop(first); // the request ended
//! assert!(matches!(limits.admit(false), Admission::Admitted(_)));
//! ```
//!
//! Counting is lock-free (compare-and-swap on shared atomics). Only a request that must
//! wait for an HTTP/1.1 connection ([`Admission::Pending`]) or for an HTTP/2 stream
//! ([`ClusterLimits::enter_pending`]) touches the cluster's `tokio::sync::Notify`s, and only
//! when someone waits does a release wake it.
//!
//! **HTTP/2** (the connector's pool, `mesh-transport`): a new HTTP/2 connection needs a
//! connection permit ([`ClusterLimits::h2_connection`]), held until the connection closes,
//! so `maxConnections` counts the HTTP/2 connections open beside the HTTP/1.1 ones in use.
//! As Envoy (`intro/arch_overview/upstream/circuit_breaking`: "Envoy will ensure that a
//! host selected by cluster load balancing has at least one connection allocated"), a
//! worker's pool with no connection to the endpoint may open one whatever the limit (it
//! still counts). A request that finds every connection at its stream limit and may not
//! open one waits as a pending request ([`ClusterLimits::enter_pending`], bounded by
//! `http1MaxPendingRequests` as Envoy's `max_pending_requests` bounds HTTP/2 pending
//! streams too), woken when a connection is released ([`ClusterLimits::h2_released`]) or
//! a stream ends at its endpoint (the pool's own wake-up: an endpoint's connections serve
//! every cluster reaching it).
//!
//! **Statistics** (read by the proxy's `/stats/prometheus` and `/clusters`): besides the
//! counts the limits are checked against, the counters keep the overflows (a refused retry
//! under the limit that refused it, [`RetryLimit`]) and the connector's pool of the cluster:
//! each pooled connection holds a [`ConnectionGauge`] of the cluster that opened it, counted
//! open until it closes and idle while it waits for a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::body::OnBodyEnd;
use crate::model::networking::TrafficPolicy;

/// The body of an overflow answer, as Envoy's router writes it for a pool overflow.
pub const OVERFLOW_BODY: &str = crate::ext::UpstreamReset::Overflow.body(false);

/// What Istio writes for a threshold the DestinationRule leaves unset
/// (`getDefaultCircuitBreakerThresholds`: `math.MaxUint32`, not Envoy's 1024 defaults).
pub const UNLIMITED: u32 = u32::MAX;

/// Envoy's `RetryBudget` defaults (also Istio's, `applyRetryBudget`): 20 % of the active and
/// pending requests, and at least 3 concurrent retries.
pub const DEFAULT_RETRY_BUDGET: RetryBudget = RetryBudget {
    percent: 20.0,
    min_retry_concurrency: 3,
    interval: None,
};

/// The buckets of a retry budget's window ([`RetryBudget::interval`]): requests are counted
/// per tenth of the interval.
const WINDOW_BUCKETS: usize = 10;

/// A cluster's circuit-breaker thresholds (Envoy's `CircuitBreakers.Thresholds`, default
/// priority).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `tcp.maxConnections`: HTTP/1.1 connections in use at once and HTTP/2 connections
    /// open (Envoy's `max_connections`). Default: [`UNLIMITED`].
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for an HTTP/1.1 connection or an
    /// HTTP/2 stream (Envoy's `max_pending_requests`). Default: [`UNLIMITED`].
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight, any protocol (Envoy's `max_requests`).
    /// Default: [`UNLIMITED`].
    pub max_requests: u32,
    /// `http.maxRetries`: retries in flight (Envoy's `max_retries`). Default: [`UNLIMITED`].
    pub max_retries: u32,
    /// `trafficPolicy.retryBudget`, when the DestinationRule sets one: then it replaces
    /// `max_retries`, as Envoy's `retry_budget` does. `None`: [`DEFAULT_RETRY_BUDGET`]
    /// applies beside `max_retries` (safe by default; Istio sets no budget).
    pub retry_budget: Option<RetryBudget>,
}

/// A retry budget: concurrent retries at most `max(min_retry_concurrency, percent % of the
/// requests active or pending)` (Envoy's `CircuitBreakers.Thresholds.RetryBudget`), or, with
/// an `interval`, `percent %` of the requests begun within the last `interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `percent`: the share of active and pending requests that may be retries, in percent.
    pub percent: f64,
    /// `minRetryConcurrency`: retries always allowed, whatever the traffic.
    pub min_retry_concurrency: u32,
    /// `budgetInterval` (Istio's `RetryBudget.budget_interval`; `None`, or zero, by default):
    /// the requests the budget is a share of are those begun within the last `interval`
    /// (a sliding window, counted in tenths of the interval), not only those active or
    /// pending. A burst of short requests then leaves room for retries after it.
    pub interval: Option<std::time::Duration>,
}

/// Circuit-breaker counters by cluster name (Envoy keeps them per cluster and proxy):
/// shared by every worker's copy of a cluster and by its rebuilds, alive while a copy of the
/// cluster or an in-flight request holds them. The balancer keeps the outbound clusters' and
/// the proxy the inbound ones' in one each.
#[derive(Debug, Default)]
pub struct CountersRegistry(
    std::sync::Mutex<std::collections::HashMap<Arc<str>, std::sync::Weak<ClusterCounters>>>,
);

impl CountersRegistry {
    /// The counters of `cluster`: the live ones if any copy of the cluster or a request
    /// still holds them, else new.
    pub fn counters(&self, cluster: &Arc<str>) -> Arc<ClusterCounters> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(cluster).and_then(std::sync::Weak::upgrade) {
            return c;
        }
        // forget dead entries now and then, so the map tracks the live clusters
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let c = Arc::new(ClusterCounters::default());
        map.insert(cluster.clone(), Arc::downgrade(&c));
        c
    }

    /// The counters of the clusters alive now, by cluster name.
    pub fn live(&self) -> Vec<(Arc<str>, Arc<ClusterCounters>)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .filter_map(|(name, w)| Some((name.clone(), w.upgrade()?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The live counts of a cluster, shared by every worker's copy of the cluster and kept
/// across rebuilds (the balancer finds them by cluster name).
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Requests admitted and not yet ended (response body read or dropped).
    requests: AtomicU32,
    /// Requests waiting for an HTTP/1.1 connection or an HTTP/2 stream.
    pending: AtomicU32,
    /// HTTP/1.1 connections in use (one request each) and HTTP/2 connections open.
    connections: AtomicU32,
    /// Retries in flight.
    retries: AtomicU32,
    /// Requests answered `503 UO`: no room among the pending (Envoy's
    /// `upstream_rq_pending_overflow`, which also counts `max_requests` overflows).
    pending_overflow: AtomicU64,
    /// Retries not sent because `maxRetries` were in flight (with the default budget beside
    /// it, when `maxRetries` was the lower limit). With `budget_overflow`, Envoy's
    /// `upstream_rq_retry_overflow`.
    retry_overflow: AtomicU64,
    /// Retries not sent because the retry budget (the DestinationRule's `retryBudget`, or
    /// [`DEFAULT_RETRY_BUDGET`] when it was the lower limit) was spent.
    budget_overflow: AtomicU64,
    /// Requests begun recently, for a retry budget with an interval.
    window: RequestWindow,
    /// TCP proxy and HTTP/2 connections refused by `maxConnections`
    /// (`upstream_cx_overflow`).
    cx_overflow: AtomicU64,
    /// The connector's pooled connections opened for the cluster ([`ConnectionGauge`]):
    /// open now, idle now (signed: an idle mark and its removal on two threads may land in
    /// either order; read as at least 0), opened so far.
    pool_open: AtomicU32,
    pool_idle: AtomicI32,
    pool_opened: AtomicU64,
    /// Wakes requests waiting for a connection.
    released: Notify,
    /// Wakes (all) HTTP/2 requests waiting for a stream: each checks its own worker's pool.
    h2_released: Notify,
}

/// A cluster's thresholds and its shared counters: what the circuit breaker and the retry
/// layer read. Carried by `UpstreamCluster::limits`.
pub struct ClusterLimits {
    thresholds: Thresholds,
    counters: Arc<ClusterCounters>,
    /// Ends a request (HTTP/2, or no connection limit): shared, so that a request's guard
    /// costs one reference-count increment.
    end_request: Arc<dyn OnBodyEnd>,
    /// Ends a request and frees its HTTP/1.1 connection.
    end_connection: Arc<dyn OnBodyEnd>,
}

/// What [`ClusterLimits::admit`] decided.
#[derive(Debug)]
#[must_use]
pub enum Admission {
    /// Send it; the permit is held until the request ends.
    Admitted(Permit),
    /// No HTTP/1.1 connection is free, but there is room among the pending: wait with
    /// [`ClusterLimits::wait`].
    Pending,
    /// Over a threshold: answer `503 UO` (counted in
    /// [`ClusterLimits::pending_overflows`]).
    Overflow,
}

/// An admitted request: released when dropped, or when the response body it is handed to
/// ends ([`Permit::into_body_end`]).
#[must_use]
pub struct Permit(Option<Arc<dyn OnBodyEnd>>);

/// A TCP proxy's upstream connection, or an HTTP/2 connection, counted against
/// `maxConnections`, released when dropped (see [`ClusterLimits::try_connection`],
/// [`ClusterLimits::h2_connection`]).
#[derive(Debug)]
#[must_use]
pub struct ConnectionPermit(Arc<ClusterCounters>);

/// A retry in flight, released when dropped.
#[derive(Debug)]
#[must_use]
pub struct RetryPermit(Arc<ClusterCounters>);

/// An HTTP/2 request counted among the cluster's pending requests until dropped (see
/// [`ClusterLimits::enter_pending`]).
#[derive(Debug)]
#[must_use]
pub struct PendingPermit(Arc<ClusterCounters>);

/// Which limit refused a retry ([`ClusterCounters::retry_overflows_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryLimit {
    /// `connectionPool.http.maxRetries`: that many retries were in flight.
    MaxRetries,
    /// The retry budget: the DestinationRule's `retryBudget`, or [`DEFAULT_RETRY_BUDGET`]
    /// beside `maxRetries` when it was the lower of the two.
    RetryBudget,
}

/// An upstream connection of the connector's pool, counted in the cluster that opened it
/// ([`ClusterCounters::connection_gauge`]): open until dropped, idle while marked so
/// ([`ConnectionGauge::set_idle`]). Envoy's `upstream_cx_active`, and the idle share of it.
///
/// The clusters reaching one endpoint (a service's and its subsets') share its pooled
/// connections: a connection counts in the cluster whose request opened it.
#[derive(Debug)]
pub struct ConnectionGauge {
    counters: Arc<ClusterCounters>,
    /// [`GAUGE_IDLE`] and [`GAUGE_CLOSED`].
    state: AtomicU8,
}

/// [`ConnectionGauge::state`]: counted idle.
const GAUGE_IDLE: u8 = 1;
/// [`ConnectionGauge::state`]: counted out (closed).
const GAUGE_CLOSED: u8 = 2;

/// Requests begun per tenth of a retry budget's interval: each bucket holds the number of
/// its tenth (since the window's first request) and its count, packed in one atomic.
#[derive(Debug, Default)]
struct RequestWindow {
    /// When the first request was counted: tenths are numbered from there.
    base: std::sync::OnceLock<tokio::time::Instant>,
    buckets: [AtomicU64; WINDOW_BUCKETS],
}

impl RequestWindow {
    /// The number of the tenth of `interval` that `now` falls in.
    fn tenth(&self, interval: std::time::Duration, now: tokio::time::Instant) -> u32 {
        let base = *self.base.get_or_init(|| now);
        let width = (interval.as_nanos() / WINDOW_BUCKETS as u128).max(1);
        (now.saturating_duration_since(base).as_nanos() / width) as u32
    }

    /// Counts a request begun `now`.
    fn record(&self, interval: std::time::Duration, now: tokio::time::Instant) {
        let tenth = self.tenth(interval, now);
        let bucket = &self.buckets[tenth as usize % WINDOW_BUCKETS];
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
            let (at, count) = ((b >> 32) as u32, b as u32);
            Some(if at == tenth {
                b + u64::from(count < u32::MAX)
            } else {
                (u64::from(tenth) << 32) | 1
            })
        });
    }

    /// Requests begun within the last `interval` (to within a tenth of it).
    fn count(&self, interval: std::time::Duration, now: tokio::time::Instant) -> u32 {
        let tenth = self.tenth(interval, now);
        self.buckets
            .iter()
            .map(|b| {
                let b = b.load(Ordering::Acquire);
                let (at, count) = ((b >> 32) as u32, b as u32);
                if count > 0 && tenth.wrapping_sub(at) < WINDOW_BUCKETS as u32 {
                    count
                } else {
                    0
                }
            })
            .fold(0u32, u32::saturating_add)
    }
}

struct EndRequest(Arc<ClusterCounters>);
struct EndConnection(Arc<ClusterCounters>);

/// Takes one of `max` from `count` unless all are taken.
#[inline]
fn take(count: &AtomicU32, max: u32) -> bool {
    let mut cur = count.load(Ordering::Relaxed);
    loop {
        if cur >= max {
            return false;
        }
        match count.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

// === impl Thresholds ===

impl Default for Thresholds {
    /// Istio's thresholds for a DestinationRule without `connectionPool`: all unlimited.
    fn default() -> Self {
        Thresholds {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            retry_budget: None,
        }
    }
}

impl Thresholds {
    /// Istio's `applyConnectionPool` and `applyRetryBudget`
    /// (`pilot/pkg/networking/core/cluster_traffic_policy.go`): a field that is unset or not
    /// positive keeps [`UNLIMITED`]; `retryBudget`'s unset `percent` is 20 and its
    /// `minRetryConcurrency` 3 when not positive.
    pub fn from_traffic_policy(tp: &TrafficPolicy) -> Self {
        let positive = |v: Option<i32>| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(UNLIMITED)
        };
        let pool = tp.connection_pool.as_ref();
        let http = pool.and_then(|p| p.http.as_ref());
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        Thresholds {
            max_connections: positive(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: positive(http.and_then(|h| h.http2_max_requests)),
            max_retries: positive(http.and_then(|h| h.max_retries)),
            retry_budget: tp.retry_budget.as_ref().map(|b| RetryBudget {
                percent: b.percent.unwrap_or(DEFAULT_RETRY_BUDGET.percent),
                min_retry_concurrency: if b.min_retry_concurrency > 0 {
                    b.min_retry_concurrency
                } else {
                    DEFAULT_RETRY_BUDGET.min_retry_concurrency
                },
                // Istio: 0ms (the default) is the requests active and pending
                interval: b.budget_interval.map(|d| d.get()).filter(|d| !d.is_zero()),
            }),
        }
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// The retries allowed in flight when `active` requests are active or pending: Envoy's
    /// `RetryBudgetImpl::max`, `max(percent / 100 × active, min_retry_concurrency)`.
    pub fn limit(&self, active: u32) -> u32 {
        let share = (self.percent.clamp(0.0, 100.0) / 100.0 * f64::from(active)) as u32;
        share.max(self.min_retry_concurrency)
    }
}

// === impl ClusterLimits ===

impl ClusterLimits {
    /// Limits checked against `counters` (shared with the cluster's other copies).
    pub fn new(thresholds: Thresholds, counters: Arc<ClusterCounters>) -> Self {
        ClusterLimits {
            thresholds,
            end_request: Arc::new(EndRequest(counters.clone())),
            end_connection: Arc::new(EndConnection(counters.clone())),
            counters,
        }
    }

    /// Limits with counters of their own (a cluster used without a balancer, tests).
    pub fn detached(thresholds: Thresholds) -> Self {
        ClusterLimits::new(thresholds, Arc::default())
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<ClusterCounters> {
        &self.counters
    }

    /// Whether `maxConnections` is set: HTTP/1.1 requests need a connection slot, new
    /// HTTP/2 connections a permit ([`ClusterLimits::h2_connection`]).
    #[inline]
    pub fn limits_connections(&self) -> bool {
        self.thresholds.max_connections != UNLIMITED
    }

    /// Admits a request to an HTTP/1.1 endpoint (`http1`) or an HTTP/2 one, as Envoy's
    /// connection pool does: an HTTP/1.1 request needs a free connection (`maxConnections`)
    /// or waits for one among the pending (`http1MaxPendingRequests`); then any request
    /// needs room under `http2MaxRequests`. Overflow otherwise.
    #[inline]
    pub fn admit(&self, http1: bool) -> Admission {
        if http1 && self.limits_connections() {
            if !take(&self.counters.connections, self.thresholds.max_connections) {
                if self.counters.pending.load(Ordering::Relaxed)
                    < self.thresholds.max_pending_requests
                {
                    return Admission::Pending;
                }
                return self.overflow();
            }
            return self.attach(true);
        }
        self.attach(false)
    }

    /// Waits (as a pending request) for an HTTP/1.1 connection after [`Admission::Pending`],
    /// then admits the request under `http2MaxRequests`. `Err(())`: no room among the
    /// pending any more, or over `max_requests` once attached: answer `503 UO`.
    ///
    /// Cancel-safe: dropping the future leaves the pending requests.
    pub async fn wait(self: Arc<Self>) -> Result<Permit, ()> {
        let c = &*self.counters;
        if !take(&c.pending, self.thresholds.max_pending_requests) {
            let _ = self.overflow();
            return Err(());
        }
        struct Leave<'a>(&'a AtomicU32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let leave = Leave(&c.pending);
        loop {
            let notified = c.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if take(&c.connections, self.thresholds.max_connections) {
                break;
            }
            notified.await;
        }
        drop(leave);
        match self.attach(true) {
            Admission::Admitted(p) => Ok(p),
            _ => Err(()),
        }
    }

    /// `max_requests`, once the request has its connection (Envoy's
    /// `attachStreamToClient`); on overflow the connection is given back.
    #[inline]
    fn attach(&self, connection: bool) -> Admission {
        if take(&self.counters.requests, self.thresholds.max_requests) {
            if let Some(interval) = self.budget_interval() {
                self.counters
                    .window
                    .record(interval, tokio::time::Instant::now());
            }
            let end = if connection {
                &self.end_connection
            } else {
                &self.end_request
            };
            return Admission::Admitted(Permit(Some(end.clone())));
        }
        if connection {
            self.counters.release_connection();
        }
        self.overflow()
    }

    #[cold]
    fn overflow(&self) -> Admission {
        self.counters
            .pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        Admission::Overflow
    }

    /// A connection of a TCP proxy (an L4 listener), if the cluster has room under
    /// `tcp.maxConnections` (Envoy's `tcp_proxy` checks the cluster's `max_connections`
    /// before connecting); `None` counts an overflow
    /// ([`ClusterCounters::connection_overflows`]): close the downstream connection, flag
    /// `UO`. The connection counts as one of the cluster's connections until the permit
    /// is dropped (shared with the HTTP/1.1 connections of the same cluster).
    pub fn try_connection(&self) -> Option<ConnectionPermit> {
        if take(&self.counters.connections, self.thresholds.max_connections) {
            Some(ConnectionPermit(self.counters.clone()))
        } else {
            self.counters.cx_overflow.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// A permit for a new HTTP/2 connection to the cluster, held until the connection
    /// closes: if the cluster has room under `tcp.maxConnections`, or whatever the limit
    /// when `first` (the worker's pool has no connection to the endpoint: Envoy "will
    /// ensure that a host selected by cluster load balancing has at least one connection
    /// allocated", `intro/arch_overview/upstream/circuit_breaking`, so the connections may
    /// exceed the limit by one per endpoint and worker; the permit still counts). `None`
    /// counts a connection overflow (Envoy's `upstream_cx_overflow`): the request waits
    /// as pending ([`ClusterLimits::enter_pending`]).
    #[cold]
    pub fn h2_connection(&self, first: bool) -> Option<ConnectionPermit> {
        if first {
            self.counters.connections.fetch_add(1, Ordering::AcqRel);
            return Some(ConnectionPermit(self.counters.clone()));
        }
        self.try_connection()
    }

    /// Counts an HTTP/2 request among the cluster's pending requests while it waits for a
    /// stream (every connection of its pool at its stream limit, and no new one allowed),
    /// if fewer than `http1MaxPendingRequests` are (Envoy applies `max_pending_requests`
    /// to HTTP/2 streams waiting for a connection with room too). `None`: over it, counted
    /// as an overflow ([`ClusterLimits::pending_overflows`]); answer `503 UO`. Wait with
    /// [`ClusterLimits::h2_released`] (enabled before looking for a stream again).
    #[cold]
    pub fn enter_pending(&self) -> Option<PendingPermit> {
        if take(&self.counters.pending, self.thresholds.max_pending_requests) {
            // against the store-load race with a stream's end (`ClusterCounters::stream_ended`)
            std::sync::atomic::fence(Ordering::SeqCst);
            return Some(PendingPermit(self.counters.clone()));
        }
        let _ = self.overflow();
        None
    }

    /// Completes when a connection permit is released (or [`ClusterCounters::stream_ended`]
    /// is called), while requests are pending (wakes every HTTP/2 waiter: each looks at
    /// its own worker's pool). Enable it before looking for a stream, then await.
    /// `mesh-transport`'s pool wakes its waiters at each stream end itself, per endpoint.
    pub fn h2_released(&self) -> tokio::sync::futures::Notified<'_> {
        self.counters.h2_released.notified()
    }

    /// The DestinationRule's `retryBudget.budgetInterval`, if set.
    #[inline]
    fn budget_interval(&self) -> Option<std::time::Duration> {
        self.thresholds.retry_budget.and_then(|b| b.interval)
    }

    /// A permit for one retry, if the cluster's retry limit allows one more: the
    /// DestinationRule's `retryBudget` if set (Envoy: the budget replaces `max_retries`;
    /// with a `budgetInterval`, a share of the requests begun within it), else `maxRetries`
    /// and [`DEFAULT_RETRY_BUDGET`], whichever is lower. `None` counts a retry overflow,
    /// under the limit that refused it ([`ClusterCounters::retry_overflows_by`]).
    pub fn try_retry(&self) -> Option<RetryPermit> {
        let c = &*self.counters;
        let active = match self.budget_interval() {
            Some(interval) => c.window.count(interval, tokio::time::Instant::now()),
            None => c
                .requests
                .load(Ordering::Relaxed)
                .saturating_add(c.pending.load(Ordering::Relaxed)),
        };
        let max = match self.thresholds.retry_budget {
            Some(b) => b.limit(active),
            None => DEFAULT_RETRY_BUDGET
                .limit(active)
                .min(self.thresholds.max_retries),
        };
        if take(&c.retries, max) {
            return Some(RetryPermit(self.counters.clone()));
        }
        // the limit that refused it: the budget when it is the DestinationRule's, or when
        // the default budget was below `maxRetries`
        let budget = self.thresholds.retry_budget.is_some() || max < self.thresholds.max_retries;
        let counter = match budget {
            true => &c.budget_overflow,
            false => &c.retry_overflow,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Requests answered `503 UO` by overflow so far (Envoy's
    /// `upstream_rq_pending_overflow`).
    pub fn pending_overflows(&self) -> u64 {
        self.counters.pending_overflow.load(Ordering::Relaxed)
    }

    /// Retries refused so far (Envoy's `upstream_rq_retry_overflow`).
    pub fn retry_overflows(&self) -> u64 {
        self.counters.retry_overflows()
    }
}

impl std::fmt::Debug for ClusterLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLimits")
            .field("thresholds", &self.thresholds)
            .field("counters", &self.counters)
            .finish()
    }
}

// === impl ClusterCounters ===

impl ClusterCounters {
    /// Requests in flight.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests waiting for an HTTP/1.1 connection.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// HTTP/1.1 connections in use.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Retries in flight.
    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Requests answered `503 UO` by overflow so far (Envoy's
    /// `upstream_rq_pending_overflow`).
    pub fn pending_overflows(&self) -> u64 {
        self.pending_overflow.load(Ordering::Relaxed)
    }

    /// Retries refused so far, by either limit (Envoy's `upstream_rq_retry_overflow`).
    pub fn retry_overflows(&self) -> u64 {
        self.retry_overflows_by(RetryLimit::MaxRetries)
            .wrapping_add(self.retry_overflows_by(RetryLimit::RetryBudget))
    }

    /// Retries refused so far by `limit`.
    pub fn retry_overflows_by(&self, limit: RetryLimit) -> u64 {
        match limit {
            RetryLimit::MaxRetries => &self.retry_overflow,
            RetryLimit::RetryBudget => &self.budget_overflow,
        }
        .load(Ordering::Relaxed)
    }

    /// The connector's pooled connections opened for the cluster and open now (see
    /// [`ConnectionGauge`]).
    pub fn pool_connections_open(&self) -> u32 {
        self.pool_open.load(Ordering::Relaxed)
    }

    /// Of those, the idle ones: HTTP/1.1 connections waiting in a pool, HTTP/2 connections
    /// without an open stream.
    pub fn pool_connections_idle(&self) -> u32 {
        u32::try_from(self.pool_idle.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// The connector's connections opened for the cluster so far (Envoy's
    /// `upstream_cx_total`).
    pub fn pool_connections_opened(&self) -> u64 {
        self.pool_opened.load(Ordering::Relaxed)
    }

    /// Counts a new pooled connection of the cluster: open (and busy) until the gauge is
    /// dropped. Called when a connection is made, not per request.
    #[cold]
    pub fn connection_gauge(self: &Arc<Self>) -> ConnectionGauge {
        self.pool_open.fetch_add(1, Ordering::Relaxed);
        self.pool_opened.fetch_add(1, Ordering::Relaxed);
        ConnectionGauge {
            counters: self.clone(),
            state: AtomicU8::new(0),
        }
    }

    /// TCP proxy and HTTP/2 connections refused by `maxConnections` (Envoy's
    /// `upstream_cx_overflow`).
    pub fn connection_overflows(&self) -> u64 {
        self.cx_overflow.load(Ordering::Relaxed)
    }

    /// A stream of an HTTP/2 connection counted against these limits ended: wakes the
    /// HTTP/2 requests pending, if any (one load otherwise). For a pool whose connections
    /// are not per cluster; `mesh-transport`'s wakes the waiters at the stream's endpoint.
    #[inline]
    pub fn stream_ended(&self) {
        // a waiter counts itself pending, then looks for a stream: either it sees this one
        // free, or this sees it pending
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.pending.load(Ordering::Relaxed) > 0 {
            self.h2_released.notify_waiters();
        }
    }

    fn release_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        // a waiter counts itself pending before it looks for a connection: either it sees
        // this one free, or this sees it waiting (and a wake-up before it sleeps is kept)
        if self.pending.load(Ordering::Acquire) > 0 {
            self.released.notify_one();
            self.h2_released.notify_waiters();
        }
    }
}

// === impl ConnectionPermit ===

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.release_connection();
    }
}

// === impl ConnectionGauge ===

impl ConnectionGauge {
    /// Marks the connection idle (`true`: in a pool, no request on it) or busy; a
    /// connection already marked so, or closed, is left as it is. Two relaxed atomic
    /// operations when the mark changes, one otherwise.
    #[inline]
    pub fn set_idle(&self, idle: bool) {
        let changed = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                let now = s & GAUGE_IDLE != 0;
                (s & GAUGE_CLOSED == 0 && now != idle).then_some(s ^ GAUGE_IDLE)
            })
            .is_ok();
        if changed {
            let delta = if idle { 1 } else { -1 };
            self.counters.pool_idle.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// [`set_idle`](Self::set_idle) by the connection's only owner (an HTTP/1.1 connection
    /// moving between the pool and a request): one relaxed atomic addition when the mark
    /// changes, none otherwise.
    #[inline]
    pub fn set_idle_mut(&mut self, idle: bool) {
        let s = self.state.get_mut();
        if *s & GAUGE_CLOSED == 0 && (*s & GAUGE_IDLE != 0) != idle {
            *s ^= GAUGE_IDLE;
            let delta = if idle { 1 } else { -1 };
            self.counters.pool_idle.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Counts the connection closed now (before the gauge is dropped: an HTTP/2
    /// connection's reading side ended while requests still hold it). Once only.
    pub fn close(&self) {
        if let Ok(was) = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s & GAUGE_CLOSED == 0).then_some(GAUGE_CLOSED)
            })
        {
            self.counters.pool_open.fetch_sub(1, Ordering::Relaxed);
            if was & GAUGE_IDLE != 0 {
                self.counters.pool_idle.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The cluster's counters it counts in.
    pub fn counters(&self) -> &Arc<ClusterCounters> {
        &self.counters
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.close();
    }
}

// === impl PendingPermit ===

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Permit ===

impl Permit {
    /// Hands the permit to a response body: released when the body ends
    /// (`ReplyBody::on_end`), as Envoy counts `rq_active` over the whole stream.
    pub fn into_body_end(mut self) -> Arc<dyn OnBodyEnd> {
        match self.0.take() {
            Some(end) => end,
            None => Arc::new(EndNothing),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end.body_ended();
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Permit").field(&self.0.is_some()).finish()
    }
}

struct EndNothing;

impl OnBodyEnd for EndNothing {
    fn body_ended(&self) {}
}

impl OnBodyEnd for EndRequest {
    fn body_ended(&self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OnBodyEnd for EndConnection {
    fn body_ended(&self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
        self.0.release_connection();
    }
}

// === impl RetryPermit ===

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;

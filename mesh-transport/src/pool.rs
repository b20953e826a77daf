//! The upstream connection pool, an explicit handle owned by whoever makes connectors.
//!
//! A [`Pool`] holds, per [`PoolKey`] (an endpoint address and the TLS identity its
//! connections were made with), a LIFO stack of idle HTTP/1.1 connections and the shared
//! HTTP/2 connections: a request takes a stream on the first one with fewer open streams
//! than the lower of its cluster's `maxConcurrentStreams` and the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, and another connection is opened when every one is at
//! its limit (without either limit, one connection carries every stream). A connection
//! leaves the pool after its cluster's `maxRequestsPerConnection` requests, when no request
//! began on it for its `idleTimeout`, or once it is `maxConnectionDuration` old.
//!
//! **Connection limit** (HTTP/2): when the cluster sets `tcp.maxConnections`, a new HTTP/2
//! connection needs one of the cluster's connection permits, held until it closes (Envoy's
//! `max_connections` counts every open connection, `intro/arch_overview/upstream/
//! circuit_breaking`), except the first of an endpoint in a pool that holds none (Envoy
//! gives a host picked by the balancer at least one connection; counted all the same). A
//! request that finds every connection at its stream limit and may not open one gets no
//! stream (`Pool::checkout_h2` answers `None`) and waits as a pending request
//! (`Pool::wait_h2`). An engine worker makes one pool for
//! its thread and hands every stack it builds a [`Connector`](crate::Connector) on it
//! ([`WorkerContext::connector`]), so a worker's requests never touch another worker's pool
//! and its lock is never contended; an in-process client makes one with [`Pool::new`] and
//! shares it across its threads.
//!
//! Idle HTTP/1.1 connections are checked for an upstream close when taken (no system call
//! unless the socket became readable) and swept every two seconds (with the HTTP/2
//! connections) by a task the pool starts on the current tokio runtime when it first holds a
//! connection (and stops when it holds none, or is dropped).
//!
//! **Gauges**: each connection made for a request of a balancer's cluster counts in that
//! cluster's pool gauges ([`ConnectionGauge`], in the cluster's shared counters): open until
//! it closes, idle while an HTTP/1.1 connection waits in the pool or an HTTP/2 connection
//! has no stream open (two relaxed atomic operations when the mark changes). The proxy
//! shows them per cluster on `/stats/prometheus`.
//!
//! [`WorkerContext::connector`]: crate::WorkerContext::connector

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use hyper::client::conn::http2;
use mesh_core::ext::UpstreamPool;
use mesh_core::hash::FastHashMap;
use mesh_core::limits::{ClusterLimits, ConnectionGauge};

use crate::h1client::H1Conn;
use crate::h2streams::{H2Streams, StreamSlot, StreamWake};
use crate::loops::Guard;
use crate::reqbody::RequestBody;

/// How often idle HTTP/1.1 connections are checked for an upstream close.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when released.
pub(crate) const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// What pooled connections are keyed by: the endpoint, and the TLS identity (client
/// certificate and expected peer) they were made with, so that connections made for one
/// identity never serve another. `tls: 0` is plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// The TLS identity's key ([`ClientTls::key`](crate::tls::ClientTls::key)); 0 for
    /// plaintext.
    pub tls: u64,
}

/// A pool of upstream connections; cheap to clone (an `Arc`), clones share it.
#[derive(Clone, Default)]
pub struct Pool(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// On an engine worker: the proxy's own addresses and the listener's `Via` marker.
    guard: Option<Guard>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    endpoints: FastHashMap<PoolKey, Endpoint>,
    /// A sweep task runs.
    sweeping: bool,
    /// Sweeps so far: the clock of idle connections (no clock read per request).
    epoch: u32,
}

#[derive(Default)]
struct Endpoint {
    /// Idle HTTP/1.1 connections, most recently used last.
    // Boxed on purpose: a connection moves pool → request → pool on every request.
    #[allow(clippy::vec_box)]
    h1_idle: Vec<Box<H1Conn>>,
    /// The shared HTTP/2 connections, oldest first.
    h2: Vec<H2Conn>,
    /// The HTTP/2 connection opened whatever `maxConnections` (the pool had none), while it
    /// is open: only one at a time is.
    h2_first: Weak<H2Streams>,
    /// The HTTP/2 requests of any cluster pending for a stream here ([`Pool::wait_h2`]).
    h2_wake: Arc<StreamWake>,
}

/// An HTTP/2 connection as its requests share it: its sender once connected (the requests
/// that took a stream on it while it connects wait for it; the first to poll connects),
/// its open streams and the server's limit.
pub(crate) struct H2Shared {
    /// The connection's streams (shared with its reading side and its requests' slots).
    pub(crate) streams: Arc<H2Streams>,
    /// The connection's sender, or why connecting failed.
    pub(crate) sender: tokio::sync::OnceCell<Result<H2Sender, crate::upstream::SendFailure>>,
}

/// The sender of an upstream HTTP/2 connection.
pub(crate) type H2Sender = http2::SendRequest<RequestBody>;

impl H2Shared {
    /// Still connecting, or connected and able to take a request (and the server allows
    /// streams: one whose `SETTINGS_MAX_CONCURRENT_STREAMS` is 0 leaves the pool).
    fn usable(&self) -> bool {
        match self.sender.get() {
            None => true,
            Some(Ok(s)) => s.is_ready() && self.streams.server_max() > 0,
            Some(Err(_)) => false,
        }
    }

    /// Connected and closed, or failed to connect.
    fn closed(&self) -> bool {
        self.sender
            .get()
            .is_some_and(|s| s.as_ref().map_or(true, |s| s.is_closed()))
    }
}

/// A shared HTTP/2 connection of an endpoint, with its cluster's settings: it leaves the
/// pool (and closes once its streams are done) after `maxRequestsPerConnection` requests,
/// or when no request began on it for `idleTimeout`.
struct H2Conn {
    conn: Arc<H2Shared>,
    /// Requests begun on it.
    requests: u32,
    max_requests: Option<u32>,
    /// The pool's sweep count when a request last began on it.
    used: u32,
    idle_sweeps: u32,
    /// The pool's sweep count when it was made, and for how many sweeps it takes requests
    /// (`maxConnectionDuration`).
    born: u32,
    max_age: u32,
}

/// The pool gauge of a connection made for the request with extensions `ext`, counted in
/// its cluster (the balancer's pick; [`ClusterCounters::connection_gauge`]); `None` without
/// one (passthrough, an in-process client's own endpoint). Once per new connection.
///
/// [`ClusterCounters::connection_gauge`]: mesh_core::limits::ClusterCounters::connection_gauge
#[cold]
pub(crate) fn gauge_for(ext: &http::Extensions) -> Option<ConnectionGauge> {
    let limits = mesh_core::ext::selected_upstream(ext)?
        .cluster()
        .limits
        .as_ref()?;
    Some(limits.counters().connection_gauge())
}

// === impl Pool ===

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Pool::default()
    }

    /// An engine worker's pool: its connectors refuse the proxy's own addresses and mark
    /// requests with the listener's `Via` entry.
    pub(crate) fn with_guard(guard: Guard) -> Self {
        Pool(Arc::new(Shared {
            guard: Some(guard),
            inner: Mutex::default(),
        }))
    }

    /// Idle HTTP/1.1 connections held for `addr` (plaintext), after dropping those the
    /// upstream closed (for tests and stats).
    pub fn idle_connections(&self, addr: SocketAddr) -> usize {
        let key = PoolKey { addr, tls: 0 };
        self.lock().endpoints.get_mut(&key).map_or(0, |e| {
            e.h1_idle.retain_mut(|c| c.idle_ok());
            e.h1_idle.len()
        })
    }

    pub(crate) fn guard(&self) -> Option<&Guard> {
        self.0.guard.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle HTTP/1.1 connection to `key` that is still usable, if any.
    // one call site on the request path; kept inlined there (callgrind)
    #[inline]
    pub(crate) fn pop_h1(&self, key: &PoolKey) -> Option<Box<H1Conn>> {
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let ep = inner.endpoints.get_mut(key)?;
        while let Some(mut c) = ep.h1_idle.pop() {
            if !c.expired(epoch) && c.idle_ok() {
                c.set_idle(false);
                return Some(c);
            }
        }
        None
    }

    /// The pool's clock: sweeps so far (a connection's birth, for `maxConnectionDuration`).
    pub(crate) fn epoch(&self) -> u32 {
        self.lock().epoch
    }

    /// Returns an HTTP/1.1 connection whose exchange is over; keeps at most `max` idle ones
    /// per key. Starts the sweep when the pool had none.
    pub(crate) fn release_h1(&self, key: PoolKey, mut conn: Box<H1Conn>, max: usize) {
        let start_sweep = {
            let mut inner = self.lock();
            if conn.spent() || conn.expired(inner.epoch) {
                return; // `maxRequestsPerConnection` or `maxConnectionDuration` reached: closed
            }
            conn.idle_since = inner.epoch;
            let ep = inner.endpoints.entry(key).or_default();
            if ep.h1_idle.len() < max {
                conn.set_idle(true);
                ep.h1_idle.push(conn);
            }
            !std::mem::replace(&mut inner.sweeping, true)
        };
        if start_sweep {
            self.start_sweep();
        }
    }

    /// A stream on a shared HTTP/2 connection to `key`: on the first (connected or
    /// connecting) that has fewer than `max_streams` streams open (nor more than the server
    /// allows), else on a new connection, kept in the pool with its cluster's settings
    /// `pool` (unless its first request is its last) and made by whoever polls its sender
    /// first. Counts the request against the connection's `maxRequestsPerConnection` (the
    /// last one takes it out of the pool). Starts the sweep when the pool had nothing to
    /// sweep.
    ///
    /// `limits`: the cluster's, when it sets `tcp.maxConnections`: a new connection needs
    /// a permit ([`ClusterLimits::h2_connection`]; the first of the endpoint in this pool
    /// always gets one); `None` when none is left: wait with [`Pool::wait_h2`].
    #[inline]
    pub(crate) fn checkout_h2(
        &self,
        key: PoolKey,
        max_streams: u32,
        pool: UpstreamPool,
        limits: Option<&ClusterLimits>,
    ) -> Option<(Arc<H2Shared>, StreamSlot)> {
        let (start_sweep, conn, slot) = {
            let mut inner = self.lock();
            let epoch = inner.epoch;
            let ep = inner.endpoints.entry(key).or_default();
            ep.h2
                .retain(|h| h.conn.usable() && epoch.wrapping_sub(h.born) < h.max_age);
            let found = ep
                .h2
                .iter()
                .enumerate()
                .find_map(|(i, h)| Some((i, h.conn.streams.try_take(max_streams)?)));
            if let Some((i, slot)) = found {
                let h2 = &mut ep.h2[i];
                h2.requests += 1;
                h2.used = epoch;
                let conn = h2.conn.clone();
                if h2.max_requests.is_some_and(|m| h2.requests >= m) {
                    ep.h2.remove(i);
                }
                return Some((conn, slot));
            }
            // a connection's stream ends wake the requests waiting at its endpoint, of any
            // cluster (a subset without limits shares the connections of one with them)
            let wake = ep.h2_wake.clone();
            let streams = match limits {
                None => H2Streams::limited(None, wake),
                Some(l) => {
                    let first = ep.h2.is_empty() && ep.h2_first.strong_count() == 0;
                    let permit = l.h2_connection(first)?;
                    let streams = H2Streams::limited(Some(permit), wake);
                    if first {
                        ep.h2_first = Arc::downgrade(&streams);
                    }
                    streams
                }
            };
            let conn = Arc::new(H2Shared {
                streams,
                sender: tokio::sync::OnceCell::new(),
            });
            let slot = conn.streams.take();
            if pool.max_requests_per_connection.is_some_and(|m| m <= 1) {
                return Some((conn, slot));
            }
            let used = epoch;
            ep.h2.push(H2Conn {
                conn: conn.clone(),
                requests: 1,
                max_requests: pool.max_requests_per_connection,
                used,
                idle_sweeps: crate::upstream::idle_sweeps(&pool),
                born: used,
                max_age: crate::upstream::max_age_sweeps(&pool),
            });
            (!std::mem::replace(&mut inner.sweeping, true), conn, slot)
        };
        if start_sweep {
            self.start_sweep();
        }
        Some((conn, slot))
    }

    /// Waits as a pending request of the cluster for a stream (on a connection of this
    /// pool with room, or on a new one once a connection permit is free), after
    /// [`Pool::checkout_h2`] found none. `None`: no room among the pending
    /// (`http1MaxPendingRequests`), counted as an overflow: answer `503 UO`.
    ///
    /// Cancel-safe: dropping the future (the route timeout) leaves the pending requests.
    #[cold]
    pub(crate) async fn wait_h2(
        &self,
        key: PoolKey,
        max_streams: u32,
        pool: UpstreamPool,
        limits: &ClusterLimits,
    ) -> Option<(Arc<H2Shared>, StreamSlot)> {
        let _pending = limits.enter_pending()?;
        let wake = self
            .lock()
            .endpoints
            .entry(key)
            .or_default()
            .h2_wake
            .clone();
        let _waiting = wake.enter();
        loop {
            // a connection permit given back (the cluster's), or a stream ended at the
            // endpoint (any cluster's connection to it)
            let released = limits.h2_released();
            let streamed = wake.released();
            tokio::pin!(released, streamed);
            released.as_mut().enable();
            streamed.as_mut().enable();
            if let Some(found) = self.checkout_h2(key, max_streams, pool, Some(limits)) {
                return Some(found);
            }
            tokio::select! {
                () = released => {}
                () = streamed => {}
            }
        }
    }

    fn start_sweep(&self) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(sweep(Arc::downgrade(&self.0)));
            }
            Err(_) => self.lock().sweeping = false,
        }
    }
}

#[cfg(test)]
impl Pool {
    pub(crate) fn sweep_now(&self) -> usize {
        self.lock().sweep()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.lock().endpoints.len())
            .finish_non_exhaustive()
    }
}

/// Every [`SWEEP_EVERY`], drops the idle connections the upstream closed or that were idle
/// too long (HTTP/2 ones: no request began on them for that long; their streams finish);
/// ends when the pool holds none (the next release starts it again) or is gone.
async fn sweep(pool: Weak<Shared>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(shared) = pool.upgrade() else { return };
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.sweep() == 0 {
            inner.sweeping = false;
            return;
        }
    }
}

// === impl Inner ===

impl Inner {
    /// Drops idle connections that are no longer usable or idle for longer than their
    /// idle timeout; returns how many are left.
    fn sweep(&mut self) -> usize {
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        let mut left = 0;
        for ep in self.endpoints.values_mut() {
            ep.h1_idle.retain_mut(|c| {
                epoch.wrapping_sub(c.idle_since) < c.idle_sweeps && !c.expired(epoch) && c.idle_ok()
            });
            left += ep.h1_idle.len();
            ep.h2.retain(|h| {
                epoch.wrapping_sub(h.used) < h.idle_sweeps
                    && epoch.wrapping_sub(h.born) < h.max_age
                    && !h.conn.closed()
            });
            left += ep.h2.len();
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::idle_sweeps;
    use mesh_core::limits::Thresholds;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use tokio::net::TcpStream;

    fn key() -> PoolKey {
        PoolKey {
            addr: "127.0.0.1:1".parse().unwrap(),
            tls: 0,
        }
    }

    /// One stream per connection (`maxConcurrentStreams: 1`).
    const ONE: u32 = 1;

    fn limits(max_connections: u32, max_pending: u32) -> ClusterLimits {
        ClusterLimits::detached(Thresholds {
            max_connections,
            max_pending_requests: max_pending,
            ..Thresholds::default()
        })
    }

    /// Polls `f` once, without a runtime's waker.
    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Envoy's `max_connections` counts HTTP/2 connections (`intro/arch_overview/upstream/
    /// circuit_breaking`: "all connections, whether active or draining"): a new connection
    /// takes a permit, the pool's first for an endpoint whatever the limit ("at least one
    /// connection allocated" to a host), and none is opened past the limit; the permits
    /// come back when the connections close (here: the pool goes).
    #[tokio::test(start_paused = true)]
    async fn h2_connections_take_connection_permits_the_first_always() {
        let l = limits(2, u32::MAX);
        let pool = Pool::new();
        let (a, a_slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        assert_eq!(l.counters().connections(), 1);
        let (b, _b_slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        assert!(
            !Arc::ptr_eq(&a, &b),
            "the first is full: a second connection"
        );
        assert_eq!(l.counters().connections(), 2);
        assert!(
            pool.checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
                .is_none(),
            "both full, no third connection"
        );
        assert_eq!(l.counters().connection_overflows(), 1);
        drop(a_slot);
        let (again, _slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        assert!(Arc::ptr_eq(&again, &a), "a stream ended: room on the first");
        // the first connection of a pool is allowed over the limit (and counts)
        let full = limits(1, u32::MAX);
        let _held = full.h2_connection(false).unwrap();
        let other = Pool::new();
        let (_c, _c_slot) = other
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&full))
            .unwrap();
        assert_eq!(
            full.counters().connections(),
            2,
            "one over the limit, counted"
        );
        assert!(
            other
                .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&full))
                .is_none()
        );
        // without `maxConnections`, connections are not counted
        let (_d, _d_slot) = Pool::new()
            .checkout_h2(key(), ONE, UpstreamPool::default(), None)
            .unwrap();
        drop((a, b, again, _slot, _b_slot, _c, _c_slot));
        drop(pool);
        drop(other);
        assert_eq!(l.counters().connections(), 0, "closed: permits back");
        assert_eq!(full.counters().connections(), 1, "the one held outside");
    }

    /// Envoy's `max_pending_requests` on HTTP/2 (`circuit_breaking`: pending requests
    /// "unless max concurrent streams is configured" come into play past the first
    /// connection): with every connection at its stream limit and no permit left, a request
    /// waits as pending, up to `http1MaxPendingRequests` (one more overflows, counted), and
    /// is woken when a stream ends; a waiter dropped (the route timeout) leaves the
    /// pending requests.
    #[tokio::test(start_paused = true)]
    async fn h2_requests_wait_as_pending_for_a_stream_and_overflow_past_the_limit() {
        let l = limits(1, 1);
        let pool = Pool::new();
        let (a, a_slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        assert!(
            pool.checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
                .is_none()
        );
        let mut waiting = Box::pin(pool.wait_h2(key(), ONE, UpstreamPool::default(), &l));
        assert!(poll_once(&mut waiting).is_pending());
        assert_eq!(l.counters().pending(), 1);
        // a second waiter: over `http1MaxPendingRequests`, an overflow
        let mut over = Box::pin(pool.wait_h2(key(), ONE, UpstreamPool::default(), &l));
        assert!(matches!(poll_once(&mut over), Poll::Ready(None)));
        assert_eq!(l.pending_overflows(), 1);
        // the stream ends: the waiter gets it, on the same connection
        drop(a_slot);
        let Poll::Ready(Some((conn, _slot))) = poll_once(&mut waiting) else {
            panic!("woken with a stream");
        };
        assert!(Arc::ptr_eq(&conn, &a));
        assert_eq!(l.counters().pending(), 0);
        assert_eq!(l.counters().connections(), 1, "no new connection");
        // a waiter dropped before a stream is free leaves the pending requests
        let mut dropped = Box::pin(pool.wait_h2(key(), ONE, UpstreamPool::default(), &l));
        assert!(poll_once(&mut dropped).is_pending());
        assert_eq!(l.counters().pending(), 1);
        drop(dropped);
        assert_eq!(l.counters().pending(), 0);
        let mut next = Box::pin(pool.wait_h2(key(), ONE, UpstreamPool::default(), &l));
        assert!(
            poll_once(&mut next).is_pending(),
            "room again among the pending"
        );
        assert_eq!(l.pending_overflows(), 1);
    }

    /// A stream's end wakes a waiter through the runtime (not only when polled again), and
    /// a connection permit given back (the connection closed) lets a waiter open one.
    #[tokio::test(start_paused = true)]
    async fn a_pending_h2_request_is_woken_by_a_stream_end_or_a_connection_closing() {
        let l = Arc::new(limits(2, 4));
        let pool = Pool::new();
        let (_a, a_slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        let (_b, _b_slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        let wait = |pool: Pool, l: Arc<ClusterLimits>| {
            tokio::spawn(async move {
                pool.wait_h2(key(), ONE, UpstreamPool::default(), &l)
                    .await
                    .map(|(c, _slot)| c.streams.active())
            })
        };
        let first = wait(pool.clone(), l.clone());
        tokio::task::yield_now().await;
        assert_eq!(l.counters().pending(), 1);
        drop(a_slot);
        let woken = tokio::time::timeout(Duration::from_secs(60), first).await;
        assert_eq!(woken.expect("woken").unwrap(), Some(1));
        // a connection elsewhere (another worker's, a TCP proxy's) closing gives its permit
        // back: the waiter opens a new connection with it
        let l = Arc::new(limits(2, 4));
        let pool = Pool::new();
        let (a, _a_slot) = pool
            .checkout_h2(key(), ONE, UpstreamPool::default(), Some(&l))
            .unwrap();
        let elsewhere = l.h2_connection(false).unwrap();
        let second = wait(pool.clone(), l.clone());
        tokio::task::yield_now().await;
        assert_eq!(l.counters().pending(), 1);
        assert!(!second.is_finished());
        drop(elsewhere);
        let woken = tokio::time::timeout(Duration::from_secs(60), second).await;
        assert_eq!(woken.expect("woken").unwrap(), Some(1));
        assert_eq!(l.counters().connections(), 2, "the first and the new one");
        assert_eq!(a.streams.active(), 1);
        assert_eq!(l.counters().pending(), 0);
    }

    /// Two clusters reaching one endpoint (a DestinationRule's subsets) share its HTTP/2
    /// connections: a stream that ends on a connection one cluster opened wakes the other's
    /// pending request, which takes the stream (it used to wait for a permit or its route
    /// timeout). A cluster without limits opens connections whose stream ends wake the
    /// limited one's waiters too.
    #[tokio::test(start_paused = true)]
    async fn a_stream_ending_wakes_the_waiters_of_every_cluster_at_its_endpoint() {
        for opener_limited in [true, false] {
            let (a, b) = (Arc::new(limits(2, 4)), Arc::new(limits(1, 4)));
            let pool = Pool::new();
            let (conn, a_slot) = pool
                .checkout_h2(
                    key(),
                    ONE,
                    UpstreamPool::default(),
                    opener_limited.then_some(&*a),
                )
                .unwrap();
            // b's one connection permit is held elsewhere: b may not open one here
            let _elsewhere = b.h2_connection(false).unwrap();
            assert!(
                pool.checkout_h2(key(), ONE, UpstreamPool::default(), Some(&b))
                    .is_none()
            );
            let waiter = {
                let (pool, b) = (pool.clone(), b.clone());
                tokio::spawn(async move {
                    pool.wait_h2(key(), ONE, UpstreamPool::default(), &b)
                        .await
                        .map(|(c, _slot)| c)
                })
            };
            tokio::task::yield_now().await;
            assert_eq!(b.counters().pending(), 1);
            assert!(!waiter.is_finished());
            drop(a_slot);
            let woken = tokio::time::timeout(Duration::from_secs(60), waiter).await;
            let got = woken.expect("woken by the stream's end").unwrap();
            assert!(
                got.is_some_and(|c| Arc::ptr_eq(&c, &conn)),
                "the stream on the other cluster's connection"
            );
            assert_eq!(b.counters().pending(), 0);
        }
    }

    /// Envoy's upstream `idle_timeout`: an idle connection is closed after the limit (here
    /// counted in sweeps), one in use meanwhile starts its idle time again.
    #[tokio::test]
    async fn idle_connections_close_after_the_idle_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut kept = Vec::new();
            for _ in 0..2 {
                kept.push(listener.accept().await.unwrap().0);
            }
            kept
        });
        let a = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let b = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let _server_side = accept.await.unwrap();
        // idleTimeout 6s: three sweeps of two seconds
        let six = UpstreamPool {
            idle_timeout: Some(Duration::from_secs(6)),
            ..UpstreamPool::default()
        };
        assert_eq!(idle_sweeps(&six), 3);
        assert_eq!(
            idle_sweeps(&UpstreamPool::default()),
            1800,
            "Envoy's default: 1h"
        );
        let (mut a, mut b) = (a, b);
        a.configure(six);
        b.configure(six);
        let pool = Pool::default();
        let key = PoolKey { addr, tls: 0 };
        pool.release_h1(key, a, 10);
        assert_eq!(pool.sweep_now(), 1);
        pool.release_h1(key, b, 10); // idle from the first sweep on
        assert_eq!(pool.sweep_now(), 2);
        assert_eq!(pool.sweep_now(), 1, "the first is three sweeps idle");
        let b = pool.pop_h1(&key).unwrap(); // used again
        pool.release_h1(key, b, 10);
        assert_eq!(pool.sweep_now(), 1);
        assert_eq!(pool.sweep_now(), 1);
        assert_eq!(pool.sweep_now(), 0);
    }

    /// The pool gauges of a cluster (Envoy's `upstream_cx_active`, and the idle share): an
    /// HTTP/1.1 connection is idle while in the pool, busy once taken, and counted out when
    /// it closes (here: swept as closed by the upstream); an HTTP/2 connection is idle
    /// while no stream is open on it, and counted out when its reading side ends.
    #[tokio::test]
    async fn pooled_connections_count_in_their_cluster_s_gauges() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let mut conn = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let server_side = accept.await.unwrap();
        let counters = Arc::new(mesh_core::limits::ClusterCounters::default());
        let gauges = |c: &mesh_core::limits::ClusterCounters| {
            (c.pool_connections_open(), c.pool_connections_idle())
        };
        conn.gauge = Some(counters.connection_gauge());
        assert_eq!(gauges(&counters), (1, 0), "busy with its first request");
        let pool = Pool::default();
        let key = PoolKey { addr, tls: 0 };
        pool.release_h1(key, conn, 10);
        assert_eq!(gauges(&counters), (1, 1));
        let conn = pool.pop_h1(&key).expect("pooled");
        assert_eq!(gauges(&counters), (1, 0));
        pool.release_h1(key, conn, 10);
        drop(server_side); // the upstream closes it: the sweep drops it
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.sweep_now() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("swept");
        assert_eq!(gauges(&counters), (0, 0));
        assert_eq!(counters.pool_connections_opened(), 1);

        // HTTP/2: busy with a stream, idle without, out when the reading side ends
        let streams = H2Streams::new();
        let first = streams.take();
        streams.set_gauge(Some(counters.connection_gauge()));
        assert_eq!(gauges(&counters), (1, 0));
        let second = streams.try_take(u32::MAX).unwrap();
        drop(first);
        assert_eq!(gauges(&counters), (1, 0), "one stream still open");
        drop(second);
        assert_eq!(gauges(&counters), (1, 1));
        let third = streams.take();
        assert_eq!(gauges(&counters), (1, 0));
        drop(third);
        drop(streams);
        assert_eq!(gauges(&counters), (0, 0));
        assert_eq!(counters.pool_connections_opened(), 2);
    }

    /// Envoy's `max_connection_duration`: a connection is used until it is that old
    /// (counted in sweeps from when it was made), however busy, then closed.
    #[tokio::test]
    async fn connections_close_after_the_max_connection_duration() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut kept = Vec::new();
            for _ in 0..2 {
                kept.push(listener.accept().await.unwrap().0);
            }
            kept
        });
        let mut a = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let mut b = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let _server_side = accept.await.unwrap();
        // 4s: two sweeps; made at the pool's epoch 0
        let four = UpstreamPool {
            max_connection_duration: Some(Duration::from_secs(4)),
            ..UpstreamPool::default()
        };
        assert_eq!(crate::upstream::max_age_sweeps(&four), 2);
        assert_eq!(
            crate::upstream::max_age_sweeps(&UpstreamPool::default()),
            u32::MAX
        );
        a.configure(four);
        b.configure(four);
        let pool = Pool::default();
        let key = PoolKey { addr, tls: 0 };
        pool.release_h1(key, a, 10);
        assert_eq!(pool.sweep_now(), 1);
        let a = pool.pop_h1(&key).expect("one sweep old: still used");
        pool.release_h1(key, a, 10);
        assert_eq!(
            pool.sweep_now(),
            0,
            "two sweeps old: closed though just used"
        );
        pool.release_h1(key, b, 10);
        assert!(
            pool.pop_h1(&key).is_none(),
            "an old connection is not pooled"
        );
    }
}

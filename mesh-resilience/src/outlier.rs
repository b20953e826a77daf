//! Outlier detection: a DestinationRule's `trafficPolicy.outlierDetection` (Envoy's cluster
//! `outlier_detection`), the passive health check that ejects failing endpoints.
//!
//! [`OutlierLayer`] sits below the balancer and watches each attempt's outcome on the
//! endpoint the balancer picked ([`upstream_cluster`]: the endpoint's
//! [`HealthCell`] and its cluster's [`OutlierPolicy`], compiled by `mesh-lb` from the merged
//! per-subset, per-port traffic policy). It counts, per endpoint and shared by every worker
//! (the counters live in the cell, [`OutlierCounters`]):
//!
//! - **`consecutive5xxErrors`** (default 5; 0 turns it off): 5xx answers in a row;
//! - **`consecutiveGatewayErrors`** (off unless set): 502, 503, 504 in a row (they count as
//!   5xx too, as in Envoy);
//! - without **`splitExternalLocalOriginErrors`**, a failure of the mesh's own connection
//!   (the connector's `503 UF` connect failure, `UR`/`UC` reset, `UPE` protocol error) counts
//!   as a 503 and an attempt dropped before its answer (a per-try or route timeout above)
//!   as a 504, as Envoy maps `LocalOriginConnectFailed` and `LocalOriginTimeout`; with the
//!   split they count only towards **`consecutiveLocalOriginFailures`** (default 5), and an
//!   answer from the endpoint resets that counter;
//! - **`outlierDetectionHttpErrorCodes`**: when set, exactly these statuses are errors
//!   (counted as 5xx, and as gateway errors when 502–504), every other answer a success;
//! - a gRPC answer's `grpc-status` header (trailers-only) is judged as the HTTP status Envoy
//!   maps it to (`UNAVAILABLE` a 503, `INTERNAL` a 500, …).
//!
//! Any other answer resets the consecutive counters. Answers the mesh made for reasons that
//! are not the endpoint's (`UO` overflow, `UH`, `NR`, `RL`, `FI`, …) do not count at all.
//!
//! When a counter reaches its threshold the endpoint is **ejected**: its cell gets
//! [`HealthFlags::EJECTED`], which the balancers read (they skip it unless the cluster is in
//! panic, `minHealthPercent`; locality failover moves to the next priority as a locality's
//! endpoints are ejected). **`maxEjectionPercent`** (default 10) bounds the ejected share of
//! the cluster: an ejection is refused when `100 × (ejected + 1) / endpoints` would exceed
//! it (Envoy's `ejectHost`; Envoy's `always_eject_one_host` is off in Istio, so a cluster of
//! fewer than ten endpoints ejects nothing under the default). The n-th ejection of an
//! endpoint lasts **`baseEjectionTime` × n** (default 30s), at most Envoy's
//! `max_ejection_time` (300s); n goes down by one for each **`interval`** (default 10s) the
//! endpoint then stays in (Envoy ≥ 1.19's `ejectTimeBackoff`).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response, StatusCode};
//! use mesh_core::ext::{UpstreamCluster, UpstreamPool};
//! use mesh_core::health::{HealthCell, HealthFlags};
//! use mesh_core::policy::{OutlierPolicy, grpc_to_http_status};
//! use mesh_resilience::outlier::OutlierLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let cell = Arc::new(HealthCell::detached());
//! let cluster = UpstreamCluster {
//!     name: "outbound|9080||ratings.default.svc.cluster.local".into(),
//!     health: cell.clone(),
//!     pool: UpstreamPool::default(),
//!     // eject after 2 errors in a row; a cluster of one may be ejected
//!     outlier: Some(Arc::new(OutlierPolicy {
//!         consecutive_5xx: Some(2),
//!         max_ejection_percent: 100,
//!         ..OutlierPolicy::default()
//!     })),
//!     limits: None,
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(OutlierLayer::new())
//!     .service_fn(|_req: Request<()>| async {
//!         let mut res = Response::new(String::new());
//!         *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!         Ok::<_, Infallible>(res)
//!     });
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! for _ in 0..2 {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(cluster.clone());
//!     svc.clone().oneshot(req).await.unwrap();
//! }
//! assert_eq!(cell.flags(), HealthFlags::EJECTED);
//! // back after baseEjectionTime (30s) × 1
//! tokio::time::sleep(std::time::Duration::from_secs(31)).await;
//! assert!(cell.is_healthy());
//! # });
//! ```
//!
//! # Ordering
//!
//! Below the balancer, so that it sees each attempt on its endpoint (a retried request is
//! counted once per attempt, on the endpoint each attempt went to), and above the connector,
//! whose local replies it judges: `… ─► Retry ─► Mirror ─► Lb ─► Outlier ─► connector`
//! (circuit breaking goes between the balancer and this layer). Requests without an
//! [`UpstreamCluster`] (passthrough, inbound) and clusters without a policy (and no layer
//! default, [`OutlierLayer::with_policy`]) pass through untouched.
//!
//! # Reads and writes
//!
//! Reads [`upstream_cluster`] from the request (its `health` cell and `outlier` policy) and
//! [`ResponseFlags`] from answers. Writes the cell's [`OutlierCounters`] and
//! [`HealthFlags::EJECTED`], and its cluster's [`ClusterHealth`] (ejected count, the cells
//! to review). Nothing is added to requests or answers.
//!
//! # Un-ejection
//!
//! The first ejection in a cluster starts a review task on the current tokio runtime,
//! every `interval`: it returns endpoints whose ejection time is over and lowers the
//! ejection multiplier of those that stayed in, and ends when no endpoint of the cluster is
//! ejected or has a multiplier left (or the cluster is gone: no task outlives a reload that
//! removed its cluster). Without a tokio runtime nothing is ejected, since nothing could
//! bring the endpoint back.
//!
//! # Differences from Envoy/Istio
//!
//! - A per-try or route timeout cancels the attempt above this layer: the layer sees its
//!   answer dropped and, told by the [`TimeoutMark`] the timeout layer or the retry layer
//!   put in the request, counts a local-origin timeout, as Envoy counts the timeout. A client
//!   that goes away before the answer is not counted (nor in Envoy).
//! - The review clock starts at the cluster's first ejection rather than when the cluster
//!   is created: an ejection still lasts between `baseEjectionTime × n` and one `interval`
//!   more.
//! - The cluster's size (for `maxEjectionPercent`) is the number of its endpoints that some
//!   worker's balancer holds: right after an endpoint is removed it may count a little
//!   longer, until every worker has rebuilt the cluster.
//! - The policy in force at an ejection decides its review interval until the review ends.
//! - Not done: success-rate and failure-percentage detection (Istio disables them), Envoy's
//!   ejection jitter, the outlier event log, and Envoy's per-cluster `outlier_detection.*`
//!   statistics (the counters in the cells, [`OutlierCounters`], are what the proxy shows
//!   per endpoint: `mesh_proxy_endpoint_ejections_total` and `mesh_proxy_endpoint_ejected`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::ext::{SelectedUpstream, SlotsView, TimeoutMark, UpstreamCluster, flags_of};
#[cfg(doc)]
use mesh_core::ext::{selected_upstream, timeout_mark, upstream_cluster};
use mesh_core::flags::ResponseFlags;
use mesh_core::health::{ClusterHealth, HealthCell, HealthFlags, OutlierCounters};
use mesh_core::policy::{OutlierPolicy, grpc_to_http_status};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// Ejects endpoints that fail in a row; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct OutlierLayer {
    policy: Option<Arc<OutlierPolicy>>,
}

/// The service of [`OutlierLayer`].
#[derive(Debug, Clone)]
pub struct Outlier<S> {
    inner: S,
    policy: Option<Arc<OutlierPolicy>>,
}

/// The future of [`Outlier`]: the inner future, and the attempt to judge when it ends (or
/// is dropped unanswered).
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    attempt: Attempt,
}

/// An attempt being watched; judged once, when its answer comes, or as a timeout when it is
/// dropped before.
struct Attempt(Option<Watched>, Option<TimeoutMark>);

/// What an attempt is judged against: the endpoint's cluster (through the request's shared
/// [`SelectedUpstream`] when it has one: one reference count, on a value of this worker's
/// balancer, rather than the cell's, which every worker shares) and the policy when it is
/// the layer's; else (a standalone [`UpstreamCluster`]) the cluster's health cell, all the
/// detector writes to (not the whole cluster: every layer above moves this future).
enum Watched {
    Upstream(SelectedUpstream, Option<Arc<OutlierPolicy>>),
    Cluster(Arc<HealthCell>, Arc<OutlierPolicy>),
}

/// How an attempt ended, for the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// An answer of the endpoint with this status.
    Status(u16),
    /// The mesh's own connection failed (connect failure, reset, protocol error).
    LocalFailure,
    /// The attempt was dropped before its answer.
    Timeout,
    /// Not the endpoint's doing (overflow, no healthy upstream, …): not counted.
    Ignored,
}

/// The flags of connector replies that are the endpoint's failures.
const LOCAL_ORIGIN: ResponseFlags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE
    .union(ResponseFlags::UPSTREAM_REMOTE_RESET)
    .union(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION)
    .union(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);

/// What a TCP proxy's connection attempt tells about an endpoint, for [`record_connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectOutcome {
    /// The connection was established (Envoy's `LocalOriginConnectSuccessFinal`: a TCP
    /// proxy has no answer to judge after it).
    Connected,
    /// The connection was refused or failed (`LocalOriginConnectFailed`).
    Failed,
    /// No connection within the connect timeout (`LocalOriginTimeout`).
    TimedOut,
}

/// Judges a connection attempt to the endpoint of `cluster` under its `outlierDetection`
/// (nothing when it has none), as Envoy's TCP proxy reports it to the outlier detector:
/// a failure or timeout counts as a local-origin failure (a 503 or a 504 towards
/// `consecutive5xxErrors` and `consecutiveGatewayErrors` without
/// `splitExternalLocalOriginErrors`, towards `consecutiveLocalOriginFailures` with it), a
/// connection as a success (a 200, which resets the counters). Ejects the endpoint when a
/// counter reaches its threshold, as the [`OutlierLayer`] does for requests.
pub fn record_connect(cluster: &UpstreamCluster, outcome: ConnectOutcome) {
    let Some(policy) = &cluster.outlier else {
        return;
    };
    let outcome = match outcome {
        ConnectOutcome::Connected => Outcome::Status(200),
        ConnectOutcome::Failed => Outcome::LocalFailure,
        ConnectOutcome::TimedOut => Outcome::Timeout,
    };
    record(&cluster.health, policy, outcome);
}

// === impl OutlierLayer ===

impl OutlierLayer {
    /// A layer applying each cluster's own policy ([`UpstreamCluster::outlier`]).
    pub fn new() -> Self {
        OutlierLayer::default()
    }

    /// Applies `policy` to clusters that carry none (a service used without the balancer's
    /// DestinationRule policies).
    pub fn with_policy(mut self, policy: Arc<OutlierPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl<S> Layer<S> for OutlierLayer {
    type Service = Outlier<S>;

    fn layer(&self, inner: S) -> Outlier<S> {
        Outlier {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl Outlier ===

mesh_core::accessors!(Outlier);

impl<S> Outlier<S> {
    /// Wraps `inner`, applying each cluster's own policy.
    pub fn new(inner: S) -> Self {
        OutlierLayer::new().layer(inner)
    }
}

impl<S, B, R> Service<Request<B>> for Outlier<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let view = SlotsView::new(req.extensions());
        let watched = watch(view, self.policy.as_ref());
        let mark = watched.as_ref().and_then(|_| view.timeout_mark().cloned());
        ResponseFuture {
            inner: self.inner.call(req),
            attempt: Attempt(watched, mark),
        }
    }
}

/// What to judge the attempt against, if it is to be judged.
#[inline]
fn watch(view: SlotsView<'_>, default: Option<&Arc<OutlierPolicy>>) -> Option<Watched> {
    if let Some(up) = view.selected_upstream() {
        return match (&up.cluster().outlier, default) {
            (Some(_), _) => Some(Watched::Upstream(up.clone(), None)),
            (None, Some(d)) => Some(Watched::Upstream(up.clone(), Some(d.clone()))),
            (None, None) => None,
        };
    }
    let cluster = view.upstream_cluster()?;
    let policy = cluster.outlier.as_ref().or(default)?;
    Some(Watched::Cluster(cluster.health.clone(), policy.clone()))
}

// === impl ResponseFuture ===

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("watched", &self.attempt.0.is_some())
            .finish()
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        if let Some(w) = this.attempt.0.take() {
            let outcome = match &res {
                Ok(res) => outcome(res),
                // the connector answers its failures; an error is the connection's failure
                Err(_) => Outcome::LocalFailure,
            };
            w.judge(outcome);
        }
        Poll::Ready(res)
    }
}

/// What an answer says about the endpoint.
#[inline]
fn outcome<R>(res: &Response<R>) -> Outcome {
    let flags = flags_of(res);
    if flags.is_empty() {
        return Outcome::Status(grpc_status(res).unwrap_or(res.status().as_u16()));
    }
    if flags.intersects(LOCAL_ORIGIN) {
        Outcome::LocalFailure
    } else if flags.contains(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT) {
        Outcome::Timeout
    } else {
        Outcome::Ignored
    }
}

/// A gRPC answer's `grpc-status` header (a trailers-only answer) as Envoy maps it to an
/// HTTP status for outlier detection (`onUpstreamHeaders`; a status in trailers is not
/// judged, as in Envoy). Only `application/grpc` answers are looked at: a standard header's
/// look-up is cheap, `grpc-status`'s is not.
fn grpc_status<R>(res: &Response<R>) -> Option<u16> {
    let grpc = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return None;
    }
    let code = res
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(grpc_to_http_status(code))
}

// === impl Attempt ===

impl Drop for Attempt {
    fn drop(&mut self) {
        // dropped before its answer: a timeout above fired (it says so through the mark), or
        // the client went away, which is not the endpoint's fault (Envoy does not count a
        // downstream reset either)
        if let Some(w) = self.0.take()
            && self.1.as_ref().is_some_and(TimeoutMark::fired)
        {
            w.judge(Outcome::Timeout);
        }
    }
}

// === impl Watched ===

impl Watched {
    fn judge(&self, outcome: Outcome) {
        let (health, policy) = match self {
            Watched::Upstream(up, default) => {
                let c = up.cluster();
                match c.outlier.as_ref().or(default.as_ref()) {
                    Some(p) => (&c.health, p),
                    None => return,
                }
            }
            Watched::Cluster(h, p) => (h, p),
        };
        record(health, policy, outcome);
    }
}

/// Counts `outcome` for the endpoint of `cell` under `policy`, ejecting it when a counter
/// reaches its threshold (Envoy's `DetectorHostMonitorImpl::putResult`).
fn record(cell: &Arc<HealthCell>, policy: &OutlierPolicy, outcome: Outcome) {
    let c = cell.outlier();
    // Envoy's resultToHttpCode: without the split, local-origin failures are 503s and
    // timeouts 504s
    let status = match outcome {
        Outcome::Ignored => return,
        Outcome::Status(s) => {
            if policy.split_local_origin {
                // the connection worked (Envoy's LocalOriginConnectSuccess)
                reset(&c.consecutive_local_origin);
            }
            s
        }
        Outcome::LocalFailure | Outcome::Timeout if policy.split_local_origin => {
            if bump(&c.consecutive_local_origin, policy.consecutive_local_origin) {
                eject(cell, policy);
            }
            return;
        }
        Outcome::LocalFailure => 503,
        Outcome::Timeout => 504,
    };
    if !is_error(policy, status) {
        reset(&c.consecutive_5xx);
        reset(&c.consecutive_gateway);
        return;
    }
    let mut trip = false;
    if matches!(status, 502..=504) {
        trip |= bump(&c.consecutive_gateway, policy.consecutive_gateway);
    } else {
        reset(&c.consecutive_gateway);
    }
    trip |= bump(&c.consecutive_5xx, policy.consecutive_5xx);
    if trip {
        eject(cell, policy);
    }
}

/// Whether `status` is an error for the policy: a listed code, or any 5xx when none is
/// listed.
#[inline]
fn is_error(policy: &OutlierPolicy, status: u16) -> bool {
    if policy.error_codes.is_empty() {
        (500..600).contains(&status)
    } else {
        policy.error_codes.contains(&status)
    }
}

/// Zeroes a counter, writing only when it is not zero already: most answers are successes,
/// and a store on a line every worker reads would bounce it between cores.
#[inline]
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// Counts one more error; returns whether the threshold is reached (then the counter starts
/// again, as Envoy resets it after its ejection attempt).
fn bump(counter: &AtomicU32, threshold: Option<u32>) -> bool {
    let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    match threshold {
        Some(t) if n >= t => {
            counter.store(0, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// Ejects the endpoint of `cell` if `maxEjectionPercent` allows (Envoy's `ejectHost`), and
/// makes sure its cluster is reviewed.
fn eject(cell: &Arc<HealthCell>, policy: &OutlierPolicy) {
    if cell.flags().contains(HealthFlags::EJECTED) {
        return;
    }
    // no runtime, no review to bring it back: then it stays in
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let cluster = cell.cluster();
    let members = u64::from(cluster.members().max(1));
    let max = u64::from(policy.max_ejection_percent.min(100));
    // Envoy: 100 × (ejected + 1) / hosts ≤ max_ejection_percent
    if !cluster.try_count_ejection(|e| 100 * (u64::from(e) + 1) <= max * members) {
        return;
    }
    if !cell.set(HealthFlags::EJECTED) {
        // another worker ejected it meanwhile
        cluster.count_return();
        return;
    }
    let c = cell.outlier();
    c.ejections.fetch_add(1, Ordering::Relaxed);
    // Envoy raises the multiplier while base × multiplier < max + base
    let base = policy.base_ejection_time;
    let _ = c
        .backoff
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            (base.saturating_mul(b) < policy.max_ejection_time.saturating_add(base))
                .then_some(b + 1)
        });
    let n = c.backoff.load(Ordering::Relaxed);
    let now = tokio::time::Instant::now().into_std();
    {
        let mut t = c.times();
        t.ejected_at = Some(now);
        t.ejected_until = Some(now + policy.ejection_time(n));
    }
    cluster.track(cell);
    if !cluster.start_review() {
        rt.spawn(review(Arc::downgrade(cluster), policy.interval));
    }
}

/// The periodic review of a cluster (Envoy's `onIntervalTimer`), until nothing is left to
/// review or the cluster is gone.
async fn review(cluster: std::sync::Weak<ClusterHealth>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(1));
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::time::sleep_until(next).await;
        next += interval;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now().into_std();
        if review_once(&cluster, now, interval) {
            continue;
        }
        cluster.end_review();
        // an ejection between the last look and the end: it saw a review scheduled
        if cluster.tracked().is_empty() || cluster.start_review() {
            return;
        }
    }
}

/// One review: returns ejected endpoints whose time is over, and lowers the multiplier of
/// those in for at least an interval; keeps the cells with something left to do. Returns
/// whether any is left.
fn review_once(cluster: &ClusterHealth, now: std::time::Instant, interval: Duration) -> bool {
    let mut tracked = cluster.tracked();
    tracked.retain(|w| {
        let Some(cell) = w.upgrade() else {
            return false;
        };
        let c = cell.outlier();
        if cell.flags().contains(HealthFlags::EJECTED) {
            let until = c.times().ejected_until;
            if until.is_none_or(|u| now >= u) {
                unject(&cell, c, now);
                cluster.count_return();
            }
            return true;
        }
        // Envoy: the multiplier goes down once per interval the endpoint stays in
        let back_for = c
            .times()
            .returned_at
            .map(|r| now.saturating_duration_since(r));
        if back_for.is_some_and(|d| d >= interval) {
            let _ = c
                .backoff
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
        }
        c.backoff.load(Ordering::Relaxed) > 0
    });
    !tracked.is_empty()
}

/// Returns an ejected endpoint (Envoy's `unejectHost`): its counters start again, so that a
/// few errors do not eject it at once.
fn unject(cell: &HealthCell, c: &OutlierCounters, now: std::time::Instant) {
    c.consecutive_5xx.store(0, Ordering::Relaxed);
    c.consecutive_gateway.store(0, Ordering::Relaxed);
    c.consecutive_local_origin.store(0, Ordering::Relaxed);
    {
        let mut t = c.times();
        t.ejected_until = None;
        t.returned_at = Some(now);
    }
    cell.clear(HealthFlags::EJECTED);
}

#[cfg(test)]
mod tests;

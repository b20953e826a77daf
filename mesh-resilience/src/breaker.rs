//! Circuit breaking: Istio's `DestinationRule` `connectionPool` limits (Envoy's cluster
//! `circuit_breakers`).
//!
//! [`CircuitBreakerLayer`] admits each request against the limits of the cluster the
//! balancer picked it for ([`upstream_cluster`]'s `limits`, a [`ClusterLimits`]; the layer's
//! own, for a service without a balancer), with Envoy's semantics
//! (`intro/arch_overview/upstream/circuit_breaking`) and Istio's translation
//! (`applyConnectionPool`):
//!
//! - **`tcp.maxConnections`**: HTTP/1.1 connections in use to the cluster. Each carries one
//!   request at a time, so a request to an HTTP/1.1 endpoint takes a connection slot, held
//!   until its response body ends (when its connection is free again). HTTP/2 connections
//!   open count too (the connector's pool takes their permits: see below);
//! - **`http.http1MaxPendingRequests`**: a request that finds no free slot waits for one as
//!   a *pending* request, if fewer than this many are waiting (Envoy's pending requests
//!   wait for a connection of the pool);
//! - **`http.http2MaxRequests`**: requests in flight to the cluster, any protocol, checked
//!   once the request has its connection (Envoy's `max_requests`, checked on attach);
//! - a request over a limit is not sent: it gets Envoy's overflow answer, `503` with
//!   `x-envoy-overloaded: true`, flag `UO` and the body `upstream connect error or
//!   disconnect/reset before headers. reset reason: overflow` (never retried, as Envoy
//!   never retries an overflow).
//!
//! An unset (or non-positive) field is unlimited, as Istio writes it (`math.MaxUint32`, not
//! Envoy's defaults of 1024). The counts are the cluster's, shared by all worker threads
//! (atomics), as Envoy's circuit breakers are per cluster and per proxy.
//!
//! **Retries** (`http.maxRetries`, `trafficPolicy.retryBudget`): this layer records the
//! cluster's limits in the request's [`PreviousHosts`], through which the
//! [`retry`](crate::retry) layer above the balancer asks them for a permit before each retry
//! (see [`ClusterLimits::try_retry`]); a retry refused is not sent, and the client gets the
//! last answer with flag `UO` added, as Envoy's router does on `RetryStatus::NoOverflow`.
//!
//! # Safe by default (beyond Istio)
//!
//! Istio sets `max_retries` to `2^32-1` and no retry budget, so retries are unbounded. Here
//! every cluster has a retry budget: the DestinationRule's `retryBudget` when it sets one,
//! else Envoy's default budget (Linkerd-style): retries in flight at most 20 % of the
//! requests active or pending, and at least 3 ([`DEFAULT_RETRY_BUDGET`]), and at most
//! `maxRetries`. A failing upstream then sees a few retries, not a storm.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response, StatusCode};
//! use mesh_core::MeshBody;
//! use mesh_core::limits::{ClusterLimits, Thresholds};
//! use mesh_resilience::breaker::CircuitBreakerLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! // at most one request in flight (`http2MaxRequests: 1`)
//! let limits = Arc::new(ClusterLimits::detached(Thresholds {
//!     max_requests: 1,
//!     ..Thresholds::default()
//! }));
//! let mut svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new().with_limits(limits))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(MeshBody::<String>::inner("hello".into())))
//!     });
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let first = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! // the first response's body has not ended: the second request overflows
//! let second = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(second.headers()["x-envoy-overloaded"], "true");
//! assert_eq!(second.headers()["x-mesh-response-flags"], "UO");
//! drop(first);
//! let third = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(third.status(), StatusCode::OK);
//! # });
//! ```
//!
//! # Ordering
//!
//! Below the balancer, which picks the cluster and the endpoint (and so the protocol), and
//! above the connector: `… Retry ─► Mirror ─► Lb ─► CircuitBreaker ─► connector`. On
//! mesh-proxy's inbound listeners, with no balancer, the inbound cluster is set by the
//! stack's end (`InboundForward`) and the breaker sits just before the connector to the
//! application. The inner service must be `Clone`: a pending request calls a clone once
//! it has its connection.
//!
//! # Reads and writes
//!
//! Reads [`upstream_cluster`] (`limits`) and [`selected_endpoint`] (`http2`) from the
//! request; writes the limits into its [`PreviousHosts`] when it has one; hands its permit
//! to the response body ([`ReplyBody::on_end`]); answers overflows with
//! [`UpstreamReset::Overflow`](mesh_core::ext::UpstreamReset::Overflow)'s reply (flag `UO`) and
//! `x-envoy-overloaded`.
//!
//! # Differences from Envoy/Istio
//!
//! - The retry budget above (safe by default).
//! - `maxConnections` bounds the HTTP/1.1 connections *in use* (each carrying a request),
//!   not the connections open: idle connections kept in the pools of other worker threads
//!   or endpoints do not count (Envoy counts every open connection, but lets each worker's
//!   pool open one connection whatever the limit, so it may exceed it too). The upstream
//!   never sees more than `maxConnections` HTTP/1.1 requests at once.
//! - HTTP/2 endpoints: this layer applies `http2MaxRequests`; `maxConnections` and
//!   `http1MaxPendingRequests` are applied by the connector's pool (`mesh-transport`), on
//!   the same counters: a new HTTP/2 connection (opened when `maxConcurrentStreams` or the
//!   server's `SETTINGS_MAX_CONCURRENT_STREAMS` fill the others) takes a connection permit
//!   until it closes, the first of an endpoint per worker whatever the limit (as Envoy),
//!   and a request finding every connection full and no permit waits as pending, or gets
//!   the overflow answer past `http1MaxPendingRequests`. Envoy counts as pending the HTTP/2
//!   requests waiting for a connection being made too; here they take a stream on it. A
//!   pending HTTP/2 request counts among the requests in flight (`http2MaxRequests`) while
//!   it waits, as this layer admitted it before the pool (Envoy counts it once attached).
//! - A pending request waits until a connection is free, or until the route timeout above
//!   drops it; a waiter is woken when a slot is freed but a new request may take the slot
//!   first (no strict queue order).
//! - A reload that changes a DestinationRule keeps the cluster's counts (Envoy rebuilds the
//!   cluster, whose new circuit breakers start at zero while the old requests finish on the
//!   old one): a reload never lets a burst past the limits.
//! - A request upgraded to a tunnel (WebSocket `101`, `CONNECT`) holds its permit until the
//!   answer's (empty) body ends, not for the tunnel's life.
//! - `retryBudget.budgetInterval` (Istio's API has it; Envoy's `RetryBudget` has no such
//!   field): with it, the budget is a share of the requests begun within the last interval
//!   (a sliding window counted in tenths of it), as Istio documents, instead of the
//!   requests active and pending ([`RetryBudget::interval`]).
//! - Not done: per-host thresholds, priorities, the `remaining_*`/`*_open` gauges.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::body::ReplyBody;
use mesh_core::ext::SlotsView;
#[cfg(doc)]
use mesh_core::ext::{PreviousHosts, selected_endpoint, upstream_cluster};
use mesh_core::flags::ResponseFlags;
use mesh_core::limits::{Admission, ClusterLimits, Permit};
#[cfg(doc)]
use mesh_core::limits::{DEFAULT_RETRY_BUDGET, RetryBudget};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The body of an overflow answer, as Envoy's router writes it for a pool overflow.
pub const OVERFLOW_BODY: &str = mesh_core::limits::OVERFLOW_BODY;

/// The header Envoy adds to an answer it made because a limit was reached.
pub use mesh_core::hcm::ENVOY_OVERLOADED;

/// Admits requests against their cluster's circuit-breaker limits; see the
/// [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerLayer {
    limits: Option<Arc<ClusterLimits>>,
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    limits: Option<Arc<ClusterLimits>>,
}

/// The future of [`CircuitBreaker`].
#[pin_project]
pub struct ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    #[pin]
    state: State<S, B>,
}

#[pin_project(project = StateProj)]
enum State<S, B>
where
    S: Service<Request<B>>,
{
    /// Sent; the permit goes to the response body.
    Called {
        #[pin]
        fut: S::Future,
        permit: Option<Permit>,
    },
    /// Pending: waiting for an HTTP/1.1 connection. Boxed: only overloaded clusters wait.
    Waiting { waiting: Box<Waiting<S, B>> },
    /// Over a limit.
    Overflow,
}

struct Waiting<S, B> {
    wait: Pin<Box<dyn Future<Output = Result<Permit, ()>> + Send>>,
    permit: Option<Permit>,
    svc: S,
    req: Option<Request<B>>,
}

// === impl CircuitBreakerLayer ===

impl CircuitBreakerLayer {
    /// A layer applying each request's cluster limits (requests without any are sent as
    /// they come).
    pub fn new() -> Self {
        CircuitBreakerLayer::default()
    }

    /// Applies `limits` to requests whose cluster carries none (a service used without the
    /// balancer): all of them count against these.
    pub fn with_limits(mut self, limits: Arc<ClusterLimits>) -> Self {
        self.limits = Some(limits);
        self
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            limits: self.limits.clone(),
        }
    }
}

// === impl CircuitBreaker ===

mesh_core::accessors!(CircuitBreaker);

impl<S, B, R> Service<Request<B>> for CircuitBreaker<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // one look-up of the slots for the balancer's pick (endpoint and cluster), else the
        // standalone parts, and the retry layer's list
        let view = SlotsView::new(req.extensions());
        let (cluster, http2) = match view.selected_upstream() {
            // (the protocol the connector will open: `useClientProtocol` decides by the
            // request's)
            Some(u) => (u.cluster().limits.as_ref(), u.http2_for(req.version())),
            None => (
                view.upstream_cluster().and_then(|c| c.limits.as_ref()),
                view.selected_endpoint().is_some_and(|e| e.http2),
            ),
        };
        let Some(limits) = cluster.or(self.limits.as_ref()) else {
            return ResponseFuture::called(self.inner.call(req), None);
        };
        if let Some(attempts) = view.previous_hosts() {
            attempts.set_limits(limits);
        }
        let state = match limits.admit(!http2) {
            Admission::Admitted(permit) => State::Called {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            Admission::Overflow => State::Overflow,
            Admission::Pending => State::Waiting {
                waiting: Box::new(Waiting {
                    wait: Box::pin(limits.clone().wait()),
                    permit: None,
                    svc: self.inner.clone(),
                    req: Some(req),
                }),
            },
        };
        ResponseFuture { state }
    }
}

/// Envoy's overflow answer.
fn overflow<R: ReplyBody>() -> Response<R> {
    let mut res = mesh_core::ext::UpstreamReset::Overflow.reply(
        StatusCode::SERVICE_UNAVAILABLE,
        ResponseFlags::UPSTREAM_OVERFLOW,
        false,
    );
    res.headers_mut()
        .insert(ENVOY_OVERLOADED, HeaderValue::from_static("true"));
    res
}

// === impl ResponseFuture ===

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn called(fut: S::Future, permit: Option<Permit>) -> Self {
        ResponseFuture {
            state: State::Called { fut, permit },
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "pending",
            State::Overflow => "overflow",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Output = Result<Response<R>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Called { fut, permit } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(p) = permit.take() {
                        // in flight (and its connection in use) until the body ends
                        res.body_mut().on_end(p.into_body_end());
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Waiting { waiting } => {
                    if waiting.permit.is_none() {
                        match ready!(waiting.wait.as_mut().poll(cx)) {
                            Ok(p) => waiting.permit = Some(p),
                            Err(()) => {
                                state.set(State::Overflow);
                                continue;
                            }
                        }
                    }
                    ready!(waiting.svc.poll_ready(cx))?;
                    let req = waiting
                        .req
                        .take()
                        .expect("breaker::ResponseFuture polled after completion");
                    let fut = waiting.svc.call(req);
                    let permit = waiting.permit.take();
                    state.set(State::Called { fut, permit });
                }
                StateProj::Overflow => return Poll::Ready(Ok(overflow())),
            }
        }
    }
}

#[cfg(test)]
mod tests;

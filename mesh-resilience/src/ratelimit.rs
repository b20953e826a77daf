//! Local rate limiting: this project's `LocalRateLimit` kind (Envoy's local rate limit HTTP
//! filter, `envoy.filters.http.local_ratelimit`, which Istio configures through an
//! EnvoyFilter: istio.io/latest/docs/tasks/policy-enforcement/rate-limit).
//!
//! [`RateLimitLayer`] takes a token from the bucket of the request's limit, and answers a
//! request that finds the bucket empty itself, as Envoy's filter does: status 429 (or the
//! limit's `statusCode`), body `local_rate_limited`, the limit's `responseHeadersToAdd`, and
//! response flag `RL`. No `x-envoy-ratelimited`: Envoy's docs say the local filter sets it,
//! but Envoy 1.40 does not (its global rate limit filter does, when asked; checked with
//! `benches/conformance/envoy_diff.py`). A gRPC request gets Envoy's gRPC local
//! reply instead: a trailers-only `200` with `grpc-status: 14` (UNAVAILABLE, Envoy's mapping
//! of 429) and `grpc-message: local_rate_limited`. A limited request never reaches the
//! layers below: it is not delayed, retried or sent upstream.
//!
//! Which limit applies (the narrowest, as Envoy's `resolveMostSpecificPerFilterConfig`):
//! the route's or its host's
//! ([`RoutePolicy::rate_limit`](mesh_core::ext::RoutePolicy::rate_limit), built by the
//! router), else the layer's own, listener-wide one ([`RateLimitLayer::with_policy`],
//! [`RateLimitLayer::store`]); a request with neither is not limited. Each limit's
//! [`TokenBucket`](mesh_core::ratelimit::TokenBucket) is lock-free and shared by every
//! clone of the layer and every worker thread, so a limit is per process, as Envoy's.
//!
//! With `x-ratelimit-*` headers on (`enableXRateLimitHeaders: DRAFT_VERSION_03`), every
//! answer to a request the limit applied to carries `x-ratelimit-limit` (the bucket's size),
//! `x-ratelimit-remaining` (the tokens left when the answer passes) and `x-ratelimit-reset`
//! (whole seconds to the next token, `0` while one is there), as Envoy 1.40's
//! `encodeHeaders`.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use mesh_core::MeshBody;
//! use mesh_core::ratelimit::RateLimitPolicy;
//! use mesh_resilience::ratelimit::RateLimitLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! // two requests per second for the whole service
//! let limit = RateLimitPolicy::new(2, 2, Duration::from_secs(1));
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new().with_policy(Arc::new(limit)))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(MeshBody::<http_body_util::Empty<bytes::Bytes>>::empty()))
//!     });
//! for _ in 0..2 {
//!     let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//! }
//! let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["x-mesh-response-flags"], "RL");
//! # });
//! ```
//!
//! # Ordering
//!
//! After the router (which chooses the route, and so the limit) and before fault
//! injection: `Route ─► RateLimit ─► Fault ─► Timeout ─► Retry ─► Mirror ─► Lb ─►
//! connector`, as Envoy's filter sits before its fault filter and router. A limited request
//! takes no token of anything below.
//!
//! # Reads and writes
//!
//! Reads [`route_policy`] (`rate_limit`) from the request; writes [`ResponseFlags`] `RL`
//! ([`local_reply`]) on limited answers and the `x-ratelimit-*` headers when enabled.
//!
//! # Differences from Envoy/Istio
//!
//! - The limit is always enabled and enforced (Envoy's `filter_enabled` and
//!   `filter_enforced` at 100%, as the Istio task sets them); there is no shadow mode.
//! - A reload builds new buckets (full), as Envoy does when the filter configuration
//!   changes; an unchanged limit is not carried over.
//! - No descriptors, no per-connection buckets, no `local_cluster_rate_limit`; literal
//!   `responseHeadersToAdd` values only; a `statusCode` under 400 is refused by validation
//!   (Envoy answers 429 instead).
//! - The layer sits after the router: answers the router makes itself (404 `NR`, redirects,
//!   direct responses) take no token; Envoy's filter, before its router, counts them.
//! - Limits apply on the outbound listener (the requests this workload sends); the Istio
//!   task's limit on the inbound side (`SIDECAR_INBOUND`) has no equivalent yet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwapOption;
use http::{HeaderName, Request, Response};
use mesh_core::body::ReplyBody;
use mesh_core::ext::{local_reply, route_policy};
use mesh_core::flags::ResponseFlags;
use mesh_core::ratelimit::{RATE_LIMITED_BODY, RateLimitPolicy, header_number};
use pin_project::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::fault::{http_to_grpc, is_grpc};

/// `x-ratelimit-limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `x-envoy-ratelimited`: what an upstream Envoy's global rate limit filter writes on the
/// answers it limits (the retry layer's `envoy-ratelimited` condition); the local limit does
/// not write it, as Envoy 1.40's does not.
pub const X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");

/// Limits requests by their route's (or the listener's) token bucket; see the
/// [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RateLimitLayer {
    /// The listener-wide limit, swapped on reload; shared by every service of the layer.
    listener: Arc<ArcSwapOption<RateLimitPolicy>>,
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    /// The layer's listener-wide limit, cached: a pointer comparison per request rather
    /// than an `ArcSwap::load`.
    listener: arc_swap::Cache<Arc<ArcSwapOption<RateLimitPolicy>>, Option<Arc<RateLimitPolicy>>>,
}

/// The future of [`RateLimit`]: the inner service's, or the answer to a limited request.
#[pin_project(project = ResponseFutureProj)]
#[derive(Debug)]
pub enum ResponseFuture<F> {
    /// The request went on.
    Inner {
        /// The inner service's future.
        #[pin]
        fut: F,
        /// The limit, when its answer gets `x-ratelimit-*` headers.
        headers: Option<Arc<RateLimitPolicy>>,
    },
    /// The request was limited: the answer, made when polled.
    Limited {
        /// The limit (taken when the answer is made).
        policy: Option<Arc<RateLimitPolicy>>,
        /// Whether the request was a gRPC one.
        grpc: bool,
    },
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// A layer applying each request's route limit (none without one).
    pub fn new() -> Self {
        RateLimitLayer::default()
    }

    /// Applies `policy` to every request whose route has no limit of its own (and to
    /// requests no router saw): the listener-wide limit.
    pub fn with_policy(self, policy: Arc<RateLimitPolicy>) -> Self {
        self.store(Some(policy));
        self
    }

    /// Replaces the listener-wide limit (on a reload): requests from now on take from the
    /// new bucket, in every service made from this layer.
    pub fn store(&self, policy: Option<Arc<RateLimitPolicy>>) {
        self.listener.store(policy);
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            listener: arc_swap::Cache::new(self.listener.clone()),
        }
    }
}

// === impl RateLimit ===

mesh_core::accessors!(RateLimit);

impl<S, B, R> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = route_policy(req.extensions()).and_then(|r| r.rate_limit.as_ref());
        let policy = match route {
            Some(p) => {
                if p.bucket.try_acquire().is_none() {
                    return ResponseFuture::limited(p.clone(), &req);
                }
                p.x_ratelimit_headers.then(|| p.clone())
            }
            None => {
                let Some(p) = self.listener.load() else {
                    return ResponseFuture::inner(self.inner.call(req), None);
                };
                if p.bucket.try_acquire().is_none() {
                    return ResponseFuture::limited(p.clone(), &req);
                }
                p.x_ratelimit_headers.then(|| p.clone())
            }
        };
        ResponseFuture::inner(self.inner.call(req), policy)
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    fn inner(fut: F, headers: Option<Arc<RateLimitPolicy>>) -> Self {
        ResponseFuture::Inner { fut, headers }
    }

    fn limited<B>(policy: Arc<RateLimitPolicy>, req: &Request<B>) -> Self {
        ResponseFuture::Limited {
            grpc: is_grpc(req),
            policy: Some(policy),
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: ReplyBody,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { fut, headers } => {
                let mut res = ready!(fut.poll(cx))?;
                if let Some(p) = headers.take() {
                    add_x_ratelimit(&mut res, &p);
                }
                Poll::Ready(Ok(res))
            }
            ResponseFutureProj::Limited { policy, grpc } => {
                let p = policy.take().expect(POLLED_AFTER_COMPLETION);
                Poll::Ready(Ok(limited_response(&p, *grpc)))
            }
        }
    }
}

/// A future polled after it completed (a caller's bug) panics, as tower's do.
const POLLED_AFTER_COMPLETION: &str = "ratelimit::ResponseFuture polled after completion";

/// The answer to a limited request (Envoy's `sendLocalReply(status, "local_rate_limited")`).
fn limited_response<R: ReplyBody>(p: &RateLimitPolicy, grpc: bool) -> Response<R> {
    let mut res = if grpc {
        // Envoy's gRPC local reply: trailers-only, HTTP 200, the status mapped to gRPC's
        mesh_core::grpc::grpc_reply(
            http_to_grpc(p.status),
            RATE_LIMITED_BODY,
            ResponseFlags::RATE_LIMITED,
        )
    } else {
        local_reply(p.status, ResponseFlags::RATE_LIMITED, RATE_LIMITED_BODY)
    };
    let h = res.headers_mut();
    for (name, value) in p.response_headers.iter() {
        h.insert(name.clone(), value.clone());
    }
    if p.x_ratelimit_headers {
        add_x_ratelimit(&mut res, p);
    }
    res
}

/// Envoy's `encodeHeaders` with `DRAFT_VERSION_03`: the bucket's size, the tokens left and
/// the seconds to the next token, read when the answer passes. The names are constants, the
/// size's value is the policy's (made once), and counts under
/// [`SMALL_NUMBERS`](mesh_core::ratelimit::SMALL_NUMBERS) come from a static table: no
/// allocation for a header but the map's own, unless a count is larger.
fn add_x_ratelimit<R>(res: &mut Response<R>, p: &RateLimitPolicy) {
    let (remaining, reset) = p.bucket.remaining_and_reset_at(Instant::now());
    let h = res.headers_mut();
    h.reserve(3);
    h.insert(X_RATELIMIT_LIMIT, p.limit_value().clone());
    h.insert(X_RATELIMIT_REMAINING, header_number(u64::from(remaining)));
    h.insert(X_RATELIMIT_RESET, header_number(reset));
}

#[cfg(test)]
mod tests;

//! Route timeouts: Istio's `HTTPRoute.timeout` (Envoy's route `timeout`).
//!
//! [`TimeoutLayer`] bounds each request by the timeout of the route the router chose
//! ([`route_policy`]; or the layer's own, for a service without a router). Off by default,
//! as Istio's (`timeout` unset or `0s`: no timeout). The deadline covers the whole exchange,
//! as Envoy's does ("until the upstream response has been completely processed"):
//!
//! - before the response head arrives, the request is dropped (so is its upstream
//!   connection, never reused) and the client gets `504 upstream request timeout` with flag
//!   `UT`, as from Envoy;
//! - after the head, the response body ends with an error when the deadline passes (the
//!   client sees the stream reset, as with Envoy); it never hangs.
//!
//! The deadline starts when the request is complete, as Envoy arms it in
//! `Router::Filter::onRequestComplete`: at once for a request without a body; for one with
//! a body, when the body has ended (its last frame read by the layers below, or the body
//! dropped unread). The inner service gets the body in an [`EndBody`] that tells when; a
//! client uploading slowly is bounded by the listener's idle timeouts, not by the route
//! timeout. An answer that comes before the upload ends is bounded from the upload's end
//! too.
//!
//! gRPC: a gRPC request (`content-type: application/grpc`) with a `grpc-timeout` header is
//! bounded by it, capped by the route timeout when there is one. Istio always sets Envoy's
//! `max_grpc_timeout`, to the route timeout or to `0` (uncapped) without one
//! (`pilot/pkg/networking/core/route/route.go`, `setTimeout`), so Envoy honours the header
//! on every route (`FilterUtility::finalTimeout`). A gRPC request that times out is answered
//! as Envoy answers a gRPC request locally: trailers-only `200`, `content-type:
//! application/grpc`, `grpc-status: 14` (UNAVAILABLE, Envoy's mapping of 504) and
//! `grpc-message: upstream request timeout`, flag `UT` (a gRPC client cannot decode the
//! text body of a plain `504`).
//!
//! `x-envoy-upstream-rq-timeout-ms`: removed from every request; with
//! [`TimeoutLayer::with_envoy_headers`]`(`[`EnvoyHeaderPolicy::Honour`]`)` it first replaces
//! the timeout (route and `grpc-timeout` alike; `0`: none), as Envoy does for internal
//! requests. By default it is not honoured: Istio's sidecars and gateways strip it from
//! their clients' requests (see [`mesh_core::envoy_headers`]). `x-envoy-expected-rq-timeout-ms`
//! and `x-envoy-upstream-rq-timeout-alt-response` are removed and not honoured.
//!
//! Where this differs from Envoy: Envoy rewrites `grpc-timeout` (and sets
//! `x-envoy-expected-rq-timeout-ms`) to the time left for the upstream; here the client's
//! `grpc-timeout` goes upstream unchanged. The retry layer's per-try timeout starts with
//! each attempt (Envoy starts the first attempt's at the end of the request too).
//!
//! The timer is one allocation per request that has a timeout, and a request with a body
//! also allocates the end marker its [`EndBody`] shares (and `mesh-proxy`'s connector boxes
//! that body); a request without a timeout costs a lookup of its route policy and a scan of
//! its header names for `x-envoy-`.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Empty;
//! use mesh_core::MeshBody;
//! use mesh_core::request_end::EndBody;
//! use mesh_resilience::timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let hangs = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(1)))
//!     .service_fn(|_req: Request<EndBody<Empty<Bytes>>>| async {
//!         std::future::pending::<()>().await;
//!         Ok::<_, Infallible>(Response::new(MeshBody::<Empty<Bytes>>::empty()))
//!     });
//! let res = hangs.oneshot(Request::new(Empty::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(res.headers()["x-mesh-response-flags"], "UT");
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use mesh_core::body::{OnBodyEnd, ReplyBody};
use mesh_core::envoy_headers::{EnvoyHeaderPolicy, EnvoyHeaders};
use mesh_core::ext::{TimeoutMark, local_reply, route_policy, slots_mut};
use mesh_core::flags::ResponseFlags;
use mesh_core::request_end::{EndBody, RequestEnd};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// The body of a timeout answer, as Envoy's.
pub const TIMEOUT_BODY: &str = "upstream request timeout";

/// Bounds requests by their route's timeout; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer {
    timeout: Option<Duration>,
    envoy_headers: EnvoyHeaderPolicy,
}

impl TimeoutLayer {
    /// A layer applying each request's route timeout (none without one).
    pub const fn new() -> Self {
        TimeoutLayer {
            timeout: None,
            envoy_headers: EnvoyHeaderPolicy::Strip,
        }
    }

    /// Whether a request's `x-envoy-upstream-rq-timeout-ms` replaces its route timeout
    /// ([`EnvoyHeaderPolicy::Honour`]: for trusted callers only) or is only removed (the
    /// default); see [`mesh_core::envoy_headers`].
    pub const fn with_envoy_headers(mut self, policy: EnvoyHeaderPolicy) -> Self {
        self.envoy_headers = policy;
        self
    }

    /// Applies `timeout` to requests that carry no route policy of their own (a service used
    /// without the router). Zero means none.
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = if timeout.is_zero() {
            None
        } else {
            Some(timeout)
        };
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            layer: *self,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

mesh_core::accessors!(Timeout);

impl<S, B, R> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<EndBody<B>>, Response = Response<R>>,
    B: Body,
    R: ReplyBody<Error: Into<BoxError>>,
{
    type Response = Response<TimeoutBody<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = match route_policy(req.extensions()) {
            Some(p) => p.timeout,
            None => self.layer.timeout,
        };
        // Envoy reads `grpc-timeout` on gRPC requests only (`isGrpcRequestHeaders`): the
        // content type, a standard header, is checked first (a lookup of `grpc-timeout`
        // hashes a non-standard name, measurable per request).
        let is_grpc = mesh_core::grpc::is_grpc_request(&req);
        let grpc = if is_grpc {
            req.headers()
                .get("grpc-timeout")
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        } else {
            None
        };
        let mut timeout = match (route, grpc) {
            (Some(r), Some(g)) => Some(r.min(g)),
            (r, g) => r.or(g),
        };
        let envoy = EnvoyHeaders::present(req.headers()) & EnvoyHeaders::TIMEOUT;
        if !envoy.is_empty() {
            timeout = self
                .layer
                .consume_envoy_headers(req.headers_mut(), envoy, timeout);
        }
        // Envoy arms the route timeout in `onRequestComplete`: at once for a request
        // without a body, when the body has ended otherwise
        // tells outlier detection below that an attempt dropped at the deadline timed out
        let mark = timeout.map(|_| {
            let m = TimeoutMark::new();
            slots_mut(req.extensions_mut()).timeout = Some(m.clone());
            m
        });
        let (req, deadline) = match timeout {
            None => (req.map(EndBody::plain), Deadline::None),
            Some(t) if req.body().is_end_stream() => (
                req.map(EndBody::plain),
                Deadline::Armed(Box::pin(tokio::time::sleep(t))),
            ),
            Some(t) => {
                let end = RequestEnd::new();
                let deadline = Deadline::Waiting(end.clone(), t);
                (req.map(|b| EndBody::new(b, end)), deadline)
            }
        };
        ResponseFuture {
            inner: self.inner.call(req),
            deadline,
            mark,
            grpc: is_grpc,
        }
    }
}

impl TimeoutLayer {
    /// Removes the route timeout's `x-envoy-*` headers, first applying
    /// `x-envoy-upstream-rq-timeout-ms` when this layer honours it: it replaces the timeout
    /// (route and `grpc-timeout` alike; `0`: none), as Envoy's `FilterUtility::finalTimeout`
    /// does. Only requests that carry one come here.
    #[cold]
    fn consume_envoy_headers(
        &self,
        h: &mut HeaderMap,
        present: EnvoyHeaders,
        timeout: Option<Duration>,
    ) -> Option<Duration> {
        let mut timeout = timeout;
        if self.envoy_headers == EnvoyHeaderPolicy::Honour
            && let Some(ms) = EnvoyHeaders::UPSTREAM_RQ_TIMEOUT_MS
                .value(h)
                .and_then(|v| v.trim().parse::<u64>().ok())
        {
            timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        EnvoyHeaders::strip(h, present);
        timeout
    }
}

/// Parses a gRPC `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), as the gRPC over HTTP/2 spec writes it.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The future of [`Timeout`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    deadline: Deadline,
    mark: Option<TimeoutMark>,
    /// The request is gRPC: a timeout is answered as Envoy's gRPC local reply.
    grpc: bool,
}

/// A request's route deadline.
#[derive(Debug)]
enum Deadline {
    /// No route timeout.
    None,
    /// The request body has not ended: the timeout starts when it does.
    Waiting(Arc<RequestEnd>, Duration),
    /// Running.
    Armed(Pin<Box<Sleep>>),
}

impl Deadline {
    /// Ready when the deadline passes; arms it when the request body has just ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Deadline::Waiting(end, t) = self {
            ready!(end.poll_ended(cx));
            *self = Deadline::Armed(Box::pin(tokio::time::sleep(*t)));
        }
        match self {
            Deadline::Armed(sleep) => sleep.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: ReplyBody<Error: Into<BoxError>>,
{
    type Output = Result<Response<TimeoutBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            let deadline = std::mem::replace(this.deadline, Deadline::None);
            return Poll::Ready(res.map(|r| r.map(|inner| TimeoutBody { inner, deadline })));
        }
        ready!(this.deadline.poll(cx));
        if let Some(m) = this.mark.as_ref() {
            m.fire();
        }
        if *this.grpc {
            return Poll::Ready(Ok(grpc_timeout_reply()));
        }
        Poll::Ready(Ok(local_reply(
            StatusCode::GATEWAY_TIMEOUT,
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            TIMEOUT_BODY,
        )))
    }
}

/// The timeout of a gRPC request as Envoy answers it (`sendLocalReply` of a gRPC request):
/// trailers-only, HTTP 200, `grpc-status` 14 (UNAVAILABLE: `Grpc::Utility::httpToGrpcStatus`
/// of 504) and the timeout's text as `grpc-message`, so that a gRPC client reads a status
/// rather than a text body it cannot decode.
fn grpc_timeout_reply<R: ReplyBody>() -> Response<TimeoutBody<R>> {
    let code = mesh_core::grpc::http_to_grpc(StatusCode::GATEWAY_TIMEOUT);
    mesh_core::grpc::grpc_reply::<R>(code, TIMEOUT_BODY, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)
        .map(|inner| TimeoutBody {
            inner,
            deadline: Deadline::None,
        })
}

/// A response body that ends with [`TimedOut`] when its route's deadline passes.
#[pin_project]
#[derive(Debug)]
pub struct TimeoutBody<B> {
    #[pin]
    inner: B,
    deadline: Deadline,
}

impl<B> TimeoutBody<B> {
    /// `inner`, with no deadline.
    pub fn new(inner: B) -> Self {
        TimeoutBody {
            inner,
            deadline: Deadline::None,
        }
    }

    /// When the body times out, if its deadline runs (it starts when the request body
    /// has ended).
    pub fn deadline(&self) -> Option<Instant> {
        match &self.deadline {
            Deadline::Armed(s) => Some(s.deadline()),
            _ => None,
        }
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

/// The error a [`TimeoutBody`] ends with when the route timeout passes while it streams
/// (other errors are the inner body's, boxed, as tower-http's `TimeoutBody` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(TIMEOUT_BODY)
    }
}

impl std::error::Error for TimedOut {}

/// A boxed error, as tower's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.deadline.poll(cx));
        *this.deadline = Deadline::None;
        Poll::Ready(Some(Err(Box::new(TimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> ReplyBody for TimeoutBody<B>
where
    B: ReplyBody,
    B::Error: Into<BoxError>,
{
    fn local(bytes: Bytes) -> Self {
        TimeoutBody::new(B::local(bytes))
    }

    fn on_end(&mut self, end: Arc<dyn OnBodyEnd>) {
        self.inner.on_end(end);
    }
}

#[cfg(test)]
mod tests;

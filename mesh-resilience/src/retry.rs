//! Retries: Istio's `HTTPRoute.retries` (Envoy's route `retry_policy`).
//!
//! [`RetryLayer`] sends a request again when an attempt fails in a way its route's
//! [`RetryPolicy`] names ([`route_policy`]'s `retries`; Istio's default policy,
//! [`RetryPolicy::default`], for a routed request whose route sets none; the layer's own,
//! for a service without a router):
//!
//! - **`attempts`** retries at most (not counting the first attempt); `attempts: 0` turns
//!   retries off, and `perTryTimeout` with them (Istio then sends no retry policy at all);
//! - **`retryOn`**, Envoy's conditions (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`):
//!   `5xx` (any 5xx, a reset, a connect failure, a per-try timeout), `gateway-error` (502,
//!   503, 504, and the same failures), `reset` (no answer: the connection was closed or
//!   reset, a protocol error, a per-try timeout), `connect-failure`, `refused-stream`,
//!   `reset-before-request` (here: a connect failure, the only reset known to come before
//!   any byte was sent), `retriable-4xx` (409), `retriable-status-codes` and bare status
//!   codes, `envoy-ratelimited` (`x-envoy-ratelimited` in the answer: an upstream
//!   Envoy's rate limit, retried under this condition only, as Envoy), and the gRPC
//!   statuses `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
//!   `unavailable`, read from the `grpc-status` of a gRPC answer, in its head (a
//!   trailers-only answer) **or in its trailers** (see below);
//! - **`perTryTimeout`** bounds each attempt; an attempt that runs out is dropped and
//!   retried like a reset (as Envoy's `onPerTryTimeout`); with no attempt left the client
//!   gets `504 upstream request timeout` with flag `UT`. The route `timeout` (the
//!   [`timeout`](crate::timeout) layer, above this one) bounds all attempts together;
//! - **backoff**: before each retry, Envoy's fully jittered exponential backoff: a random
//!   wait in `[0, interval)`, the interval starting at the policy's `backoff` (25 ms by
//!   default) and doubling up to ten times it (`JitteredExponentialBackOffStrategy`);
//! - **`retryIgnorePreviousHosts`** (on by default, as Istio's): each attempt carries a
//!   [`PreviousHosts`] that the balancer fills and honours, so a retry goes to another
//!   endpoint when there is one;
//! - **`retryRemoteLocalities`** (off by default, as Istio's): each attempt carries a
//!   [`PreviousPriorities`] that the balancer fills and honours: after every second attempt
//!   the locality priorities tried are left out of the priority load (Envoy's
//!   `previous_priorities` retry priority with Istio's `update_frequency: 2`), so the
//!   second retry goes to the next locality when the closest ones are healthy.
//!
//! When the attempts run out on a failure the policy would retry, the last answer goes to
//! the client with flag `URX` added, as Envoy does. Each retry also needs a permit from the
//! limits of the cluster the request went to (`maxRetries`, the retry budget; see
//! [`breaker`](crate::breaker)); without one it is not sent and the last answer goes to the
//! client with flag `UO` added (Envoy's `upstream_rq_retry_overflow`). An error of the
//! inner service (not an answer: the mesh's connector answers its failures) is returned at
//! once.
//!
//! Which failures are which: answers the mesh made below this layer carry
//! [`ResponseFlags`] (the connector's `UF` 503 is a connect failure, `UR`/`UC` a reset, `UPE`
//! a protocol error; a [`RefusedStream`] marker a refused stream) and are judged by their
//! flags only: a `503 UH` (no healthy upstream), `NR` or `UO` from the balancer is never
//! retried, as Envoy never retries its own local replies. Other answers are the upstream's,
//! judged by status and headers.
//!
//! # A `grpc-status` in the trailers (beyond Envoy)
//!
//! A gRPC server that sent its answer's head before it failed puts the status in trailers
//! after the head, with no message: `200`, then `grpc-status: 14`. Envoy never retries
//! those: its router decides in `onUpstreamHeaders` only and forwards the head at once;
//! `onUpstreamTrailers` reads the status for the host's statistics
//! (`source/common/router/router.cc`). This layer holds such an answer (`200`,
//! `application/grpc`, no `grpc-status` in the head, a body to come) until its first body
//! frame, when the policy retries on a gRPC status and a retry could be sent:
//!
//! - trailers first, with a status the policy names: retried like a trailers-only answer;
//! - a message first, or another status, or the end: passed on, the frame given back in
//!   front of the rest ([`ReplyBody::resume`]: `MeshBody` and the boxed bodies can);
//! - a reset before any frame: judged as a reset, and answered as the connector answers
//!   one (`503 UR`) when not retried: the error cannot be given back in the body;
//! - at the per-try timeout the answer goes on as it is: its head came in time (Envoy's
//!   per-try timeout ends at the head), and a stream whose first message is slow is not
//!   cut. The head waits at most that long (with no per-try timeout, until the first frame
//!   or the route timeout).
//!
//! The last attempt's answer is not held (nothing would be retried: it goes on at once,
//! without the `URX` its trailers would have earned). Nor is any answer unless the client
//! has sent its whole request body (a call still streaming its
//! messages, bidirectional, may wait on the answer's head) and the body type can be given
//! its frame back. A unary or server-streaming call's head then waits for its first message,
//! which a unary server sends with it. A `POST` (every gRPC call) is retried on a gRPC
//! status only when the route writes `retryOn` (next section), so under Istio's default
//! policy no answer waits.
//!
//! # Safe by default (beyond Istio)
//!
//! A non-idempotent request (RFC 9110 §9.2.2: anything but `GET`, `HEAD`, `OPTIONS`,
//! `TRACE`, `PUT`, `DELETE`) is retried only on failures where the upstream application
//! cannot have seen it (a connect failure, a refused stream), **unless the route writes
//! `retryOn` itself** ([`RetryPolicy::explicit_retry_on`]): then it is retried on what
//! `retryOn` names, as Envoy would. Istio's default policy would retry a `POST` answered
//! `503` by the application; this layer does not.
//!
//! # Envoy's request headers (`x-envoy-*`)
//!
//! `x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries`,
//! `x-envoy-retriable-status-codes` and `x-envoy-upstream-rq-per-try-timeout-ms` are
//! removed from every request (with the route timeout's, should no timeout layer above
//! have taken them, and `x-envoy-retriable-header-names`, `x-envoy-hedge-on-per-try-timeout`):
//! they never reach the upstream. By default they are not honoured, as an Istio sidecar or
//! gateway strips them from its clients' requests (Envoy honours them on internal requests
//! only; see [`mesh_core::envoy_headers`]), so a client cannot raise the retries the
//! operator configured. [`RetryLayer::with_envoy_headers`]`(`[`EnvoyHeaderPolicy::Honour`]`)`
//! applies them first, for trusted callers, as Envoy's `RetryStateImpl` does: conditions
//! and status codes are added to the policy's (the policy then counts as one whose
//! `retryOn` was written), `x-envoy-max-retries` replaces `attempts` when there is a
//! condition, the per-try timeout is replaced (`0`: none); a route without retries starts
//! from Envoy's empty policy (no condition, one retry).
//!
//! With [`RetryLayer::with_attempt_count`] (mesh-proxy's, as Istio's virtual hosts set
//! `include_request_attempt_count`), every attempt carries `x-envoy-attempt-count`: `1`,
//! then `2`, `3` for the retries, in place of the client's value.
//!
//! # Request bodies
//!
//! The body reaches the layers below as a [`ReplayBody`]: a request without a body costs
//! nothing, and a body is recorded as the first attempt streams it, up to
//! [`RetryLayer::with_max_body_bytes`] (default [`DEFAULT_MAX_REPLAY_BYTES`], 64 KiB). A body
//! over the limit is sent once and not retried (unless nothing of it was sent: a connect
//! failure). A retry waits until the previous attempt has let go of the body; an attempt
//! still reading it when its answer arrived (an HTTP/2 upstream answering before the whole
//! body was sent) is not retried.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use http::{Request, Response, StatusCode};
//! use mesh_core::MeshBody;
//! use mesh_core::policy::{RetryOn, RetryPolicy};
//! use mesh_core::replay::ReplayBody;
//! use mesh_resilience::retry::RetryLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let calls = Arc::new(AtomicUsize::new(0));
//! let seen = calls.clone();
//! let policy = RetryPolicy { attempts: 2, retry_on: RetryOn::FIVE_XX, ..RetryPolicy::default() };
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new().with_policy(Arc::new(policy)).with_seed(1))
//!     .service_fn(move |_req: Request<ReplayBody<String>>| {
//!         // fails twice, then answers
//!         let n = seen.fetch_add(1, Ordering::SeqCst);
//!         let mut res = Response::new(MeshBody::<String>::empty());
//!         if n < 2 {
//!             *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!         }
//!         async move { Ok::<_, Infallible>(res) }
//!     });
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # });
//! ```
//!
//! # Ordering
//!
//! Below the route timeout (which bounds all attempts) and above the mirror layer (a
//! request is mirrored once, however often it is retried) and the balancer (which picks
//! each attempt's endpoint): `Route ─► Fault ─► Timeout ─► Retry ─► Mirror ─► Lb ─►
//! connector`. The inner service must be `Clone`: each retry calls a clone, made ready
//! after the backoff. The clone is made when a request is retried, from one clone of the
//! inner service the layer's service makes at its first request and shares with its
//! requests (a reference count each): a request answered at once copies no service.
//!
//! # The head sent again
//!
//! The inner service takes each attempt's request. By default the layer keeps a copy of
//! the head (method, target, headers, extensions) of every request it may retry, made
//! before the first attempt: most of its cost per request. Over `mesh-transport`'s
//! connector (as mesh-proxy runs it), [`RetryLayer::with_heads_handed_back`] asks the
//! connector to put the head back with each answer (or when an attempt is dropped at its
//! per-try timeout) instead, in a [`ReturnHead`] the request carries (one per service,
//! reused from request to request): no copy on the HTTP/1.1 path, the common one; the
//! connector copies only where its protocol consumes the head (HTTP/2, `CONNECT`).
//!
//! # Reads and writes
//!
//! Reads [`route_policy`] (`retries`) and the `x-envoy-*` headers above (then removes them)
//! from the request; writes a [`PreviousHosts`] into each attempt (avoided when the policy
//! says so; it brings back the cluster's limits, for retry permits) and a
//! [`PreviousPriorities`] (when it retries remote localities); reads [`ResponseFlags`] and
//! [`RefusedStream`] from answers; adds `URX` or `UO` (and makes `504 UT` answers) with
//! [`mark`] / [`local_reply`].
//!
//! # Differences from Envoy/Istio
//!
//! - Non-idempotent requests are safe by default (above).
//! - A body is kept for retries up to 64 KiB by default (Envoy: its 1 MiB buffer limit).
//! - Retries are bounded per cluster by a retry budget even when the DestinationRule sets
//!   none (see [`breaker`](crate::breaker)).
//! - A per-try timeout runs from the attempt's call, a wait in the circuit breaker's pending
//!   queue included; with heads handed back, an attempt cut during that wait (before the
//!   connector had the request) ends with its `504 UT` rather than a retry.
//! - A `grpc-status` in trailers before any message is retried (Envoy: never; above).
//! - `retriable-headers` has no effect (validation warns): Istio configures no retriable
//!   header names, and `x-envoy-retriable-header-names` is not read. Not done yet:
//!   `Retry-After`/rate-limited backoff.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use mesh_core::body::ReplyBody;
use mesh_core::envoy_headers::{EnvoyHeaderPolicy, EnvoyHeaders};
use mesh_core::ext::{
    LocalReplyText, PreviousHosts, PreviousPriorities, RefusedStream, ResponseCodeDetails,
    ReturnHead, TimeoutMark, UpstreamReset, flags_of, local_reply, mark, route_policy,
    selected_endpoint, slots_mut, timeout_mark, upstream_cluster,
};
#[cfg(doc)]
use mesh_core::ext::{SelectedEndpoint, SelectedUpstream, UpstreamCluster};
use mesh_core::flags::ResponseFlags;
use mesh_core::limits::RetryPermit;
use mesh_core::policy::{RetryOn, RetryPolicy};
use mesh_core::replay::{DEFAULT_MAX_REPLAY_BYTES, ReplayBody, Replayer};
use mesh_core::rng::Rng;
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::timeout::TIMEOUT_BODY;

/// Retries failed requests by their route's policy; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Option<Arc<RetryPolicy>>,
    default: Arc<RetryPolicy>,
    max_body_bytes: usize,
    seed: Option<u64>,
    counter: Arc<AtomicU64>,
    envoy_headers: EnvoyHeaderPolicy,
    heads_handed_back: bool,
    attempt_count: bool,
}

/// `x-envoy-attempt-count` ([`RetryLayer::with_attempt_count`]).
pub const X_ENVOY_ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-attempt-count");

/// The service of [`RetryLayer`].
#[derive(Debug)]
pub struct Retry<S> {
    inner: S,
    rng: Rng,
    layer: RetryLayer,
    /// The place for heads handed back, reused by the next request once no request holds
    /// it (see [`ReturnHead::try_reuse`]).
    spare: ReturnHead,
    /// A clone of the inner service, made at the first request that may be retried and
    /// shared by the requests (one reference count each), cloned again for a retry only:
    /// a request's future carries a pointer, not the services below (hundreds of bytes,
    /// and a reference count for each of their shared parts, per request). Behind a mutex
    /// (locked only to clone it) so that the future is `Send` whenever the service is,
    /// `Sync` or not.
    template: Option<Shared<S>>,
}

/// The shared clone of a [`Retry`]'s inner service.
type Shared<S> = Arc<std::sync::Mutex<S>>;

/// The future of [`Retry`]; `R` is the inner service's response body.
#[pin_project]
pub struct ResponseFuture<S, B, R>
where
    S: Service<Request<ReplayBody<B>>>,
{
    #[pin]
    state: State<S::Future, R>,
    /// What the retries need; `None` when the request is sent once. Boxed: the future of
    /// every request moves through the layers above, and stays small.
    retry: Option<Box<Attempts<S, B>>>,
    /// Heads handed back, until the first answer: what a retry needs besides the head,
    /// boxed into `retry` only when that answer is retried (a request answered at once
    /// allocates nothing here).
    first: Option<First<S, B>>,
}

/// What a request whose head is handed back keeps for a retry before its first answer.
struct First<S, B> {
    svc: Shared<S>,
    body: Replay<B>,
    policy: Arc<RetryPolicy>,
    safe_only: bool,
    priorities: Option<PreviousPriorities>,
    /// Where the inner service puts the head back.
    back: Option<ReturnHead>,
    /// The seed of the retries' backoff draws.
    seed: u64,
    /// Whether attempts carry `x-envoy-attempt-count`.
    attempt_count: bool,
}

#[pin_project(project = StateProj)]
enum State<F, R> {
    /// An attempt in flight.
    Called {
        #[pin]
        fut: F,
    },
    /// A gRPC answer's first body frame read ahead, for a `grpc-status` in its trailers
    /// (the answer's head waits in [`Attempts::held`]).
    Peeking { body: Option<Pin<Box<R>>> },
    /// Waiting out the backoff, then for the inner service to be ready.
    Backoff,
}

/// A request's retry state.
struct Attempts<S, B> {
    /// The layer's shared clone of the inner service, cloned into `svc` by the first retry.
    template: Shared<S>,
    /// The service retries go through (see [`Attempts::svc`]).
    svc: Option<S>,
    /// The head to send again: a copy kept from the start, or (heads handed back) the one
    /// the last answer brought back, `None` while an attempt holds it.
    parts: Option<http::request::Parts>,
    body: Replay<B>,
    policy: Arc<RetryPolicy>,
    /// Retries left.
    left: u32,
    /// Non-idempotent under a policy that did not write `retryOn`: retried only where the
    /// upstream cannot have seen it.
    safe_only: bool,
    /// The upper bound of the next backoff draw.
    interval: Duration,
    rng: Rng,
    /// The per-try deadline, then the backoff (one timer, reset for each).
    timer: Option<Pin<Box<Sleep>>>,
    /// The hosts and priorities tried, shared with the balancer
    /// (`retryIgnorePreviousHosts`, `retryRemoteLocalities`).
    tried: Tried,
    /// The next attempt's body, during the backoff.
    next: Option<ReplayBody<B>>,
    /// The cluster's permit for the retry in flight ([`Attempts::retry_permit`]).
    permit: Option<RetryPermit>,
    /// The attempt in flight's [`TimeoutMark`] (with a per-try timeout).
    mark: Option<TimeoutMark>,
    /// The head of an answer whose first body frame is being read ([`State::Peeking`]).
    held: Option<http::response::Parts>,
    /// Whether attempts carry `x-envoy-attempt-count`.
    attempt_count: bool,
}

/// What the attempts of a request share with the balancer.
struct Tried {
    hosts: Option<PreviousHosts>,
    priorities: Option<PreviousPriorities>,
    /// Where the inner service puts each attempt's head back (heads handed back).
    back: Option<ReturnHead>,
}

/// How a retry gets the body again.
enum Replay<B> {
    /// The request had no body.
    Empty,
    Recorded(Replayer<B>),
}

/// What an attempt came to.
enum Outcome<R> {
    Answer(Response<R>),
    PerTryTimeout,
}

// === impl RetryLayer ===

impl RetryLayer {
    /// A layer applying each routed request's retry policy (Istio's default policy when its
    /// route sets none); requests without a route policy are sent once.
    pub fn new() -> Self {
        RetryLayer {
            policy: None,
            default: Arc::new(RetryPolicy::default()),
            max_body_bytes: DEFAULT_MAX_REPLAY_BYTES,
            seed: None,
            counter: Arc::default(),
            envoy_headers: EnvoyHeaderPolicy::Strip,
            heads_handed_back: false,
            attempt_count: false,
        }
    }

    /// Writes `x-envoy-attempt-count` into every attempt it sends (`1`, then `2`, `3` for
    /// the retries), replacing the client's, as Envoy does for a virtual host with
    /// `include_request_attempt_count`, which Istio sets on its sidecars' and gateways'
    /// (`meshConfig.defaultConfig.proxyHeaders.attemptCount`): the application can tell a
    /// retry from a first try. Off by default, as Envoy's; mesh-proxy turns it on.
    pub fn with_attempt_count(mut self, on: bool) -> Self {
        self.attempt_count = on;
        self
    }

    /// Declares that the inner service puts each request's head back when the request asks
    /// (in the [`ReturnHead`] of its `RequestSlots`), as `mesh-transport`'s connector does:
    /// then a request is retried from the head its answer brought back, instead of from a
    /// copy made before the first attempt (a copy of every retriable request's
    /// method, target, headers and extensions, most of this layer's cost per request).
    ///
    /// The list of the hosts tried ([`PreviousHosts`], which the balancer avoids and the
    /// circuit breaker writes the cluster's limits in) is then made for the first retry,
    /// from the first attempt's host and cluster as its head names them, rather than for
    /// every request: a request answered at once allocates no list, nor the layer's retry
    /// state (kept in the future until the first answer, boxed when it is retried).
    ///
    /// An answer that would be retried but came without its head is passed on as it is
    /// (the layers between this one and the connector make no retriable answer of their
    /// own). With a `perTryTimeout`, the inner service must also put the head back when an
    /// attempt is dropped at its timeout (the connector does, once the request reached it):
    /// an attempt cut before the request reached it (waiting for the circuit breaker, say)
    /// ends the request with its `504 UT`, not retried.
    pub fn with_heads_handed_back(mut self) -> Self {
        self.heads_handed_back = true;
        self
    }

    /// The layer copying the head of each request it may retry before the first attempt
    /// (the default), undoing [`with_heads_handed_back`](Self::with_heads_handed_back): for
    /// an inner service that cannot hand heads back without copying them itself, where the
    /// copy made here is the cheaper one (it holds only the extensions of the layers above).
    pub fn with_heads_copied(mut self) -> Self {
        self.heads_handed_back = false;
        self
    }

    /// Whether the `x-envoy-*` retry headers of a request override its policy
    /// ([`EnvoyHeaderPolicy::Honour`]: for trusted callers only) or are only removed (the
    /// default); see [`mesh_core::envoy_headers`].
    pub fn with_envoy_headers(mut self, policy: EnvoyHeaderPolicy) -> Self {
        self.envoy_headers = policy;
        self
    }

    /// Applies `policy` to requests that carry no route policy of their own (a service
    /// used without the router).
    pub fn with_policy(mut self, policy: Arc<RetryPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Keeps up to `max` bytes of a request body for retries (default
    /// [`DEFAULT_MAX_REPLAY_BYTES`], 64 KiB); a larger body is sent once.
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Seeds the backoff draws for reproducible runs: the n-th service made from this layer
    /// (or cloned from one) draws from a generator seeded by `seed` and n.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn next_rng(&self) -> Rng {
        Rng::nth(self.seed, &self.counter)
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            rng: self.next_rng(),
            layer: self.clone(),
            spare: ReturnHead::new(),
            template: None,
        }
    }
}

// === impl Retry ===

mesh_core::accessors!(Retry);

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            rng: self.layer.next_rng(),
            layer: self.layer.clone(),
            spare: ReturnHead::new(),
            template: None,
        }
    }
}

impl<S: Clone> Retry<S> {
    /// The shared clone of the inner service retries go through (see `template`).
    fn template(&mut self) -> Shared<S> {
        let inner = &self.inner;
        self.template
            .get_or_insert_with(|| Arc::new(std::sync::Mutex::new(inner.clone())))
            .clone()
    }
}

impl<S> Retry<S> {
    /// The place the inner service puts a request's head back in: this service's own when
    /// no earlier request still holds it (no allocation), else a new one, kept for the next.
    fn spare_place(&mut self) -> ReturnHead {
        if !self.spare.try_reuse() {
            self.spare = ReturnHead::new();
        }
        self.spare.clone()
    }
}

impl<S, B, R> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>> + Clone,
    B: Body<Data = Bytes>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let envoy = EnvoyHeaders::present(req.headers());
        if self.layer.attempt_count {
            req.headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from_static("1"));
        }
        let policy = match route_policy(req.extensions()) {
            Some(route) => Some(route.retries.as_ref().unwrap_or(&self.layer.default)),
            None => self.layer.policy.as_ref(),
        };
        let mut policy = if envoy.is_empty() {
            policy.filter(|p| p.attempts > 0).cloned()
        } else {
            policy.cloned()
        };
        if !envoy.is_empty() {
            policy = self
                .layer
                .consume_envoy_headers(req.headers_mut(), envoy, policy);
        }
        let Some(policy) = policy else {
            return ResponseFuture::once(self.inner.call(req.map(ReplayBody::plain)));
        };
        let (parts, body) = req.into_parts();
        let mut timer = None;
        if let Some(t) = policy.per_try_timeout {
            timer = Some(Box::pin(tokio::time::sleep(t)));
        }
        let handed_back = self.layer.heads_handed_back;
        let tried = Tried {
            // With a copy of the head: from the first attempt on, as it also brings the
            // cluster's limits back from below the balancer. Heads handed back: made for the
            // first retry from the head the answer brought back, which names the first
            // attempt's host and cluster (`Tried::first_retry`): a request answered at once
            // allocates no list.
            hosts: (!handed_back).then(|| previous_hosts(&policy)),
            priorities: policy.retry_remote_localities.then(PreviousPriorities::new),
            back: handed_back.then(|| self.spare_place()),
        };
        let (first, replay) = if body.is_end_stream() {
            (ReplayBody::plain(body), Replay::Empty)
        } else {
            let (first, replayer) = ReplayBody::replayable(body, self.layer.max_body_bytes);
            (first, Replay::Recorded(replayer))
        };
        let safe_only = !policy.explicit_retry_on && !is_idempotent(&parts.method);
        let mark = per_try_mark(&parts, &policy);
        let seed = self.rng.next_u64();
        if handed_back && timer.is_none() {
            let fut = self.inner.call(attempt(parts, &tried, first, None));
            return ResponseFuture {
                state: State::Called { fut },
                retry: None,
                first: Some(First {
                    svc: self.template(),
                    body: replay,
                    policy,
                    safe_only,
                    priorities: tried.priorities,
                    back: tried.back,
                    seed,
                    attempt_count: self.layer.attempt_count,
                }),
            };
        }
        // the first attempt gets the original, the copy waits for a retry: the original's
        // header map has room for the fields the layers below add (`Host` under
        // mesh-stack's `EndpointUri`), where a copy's is cloned full and would grow. Heads
        // handed back (with a per-try timeout here): no copy, the head comes back with the
        // answer or when the attempt is dropped at its timeout.
        let copy = (!handed_back).then(|| parts.clone());
        let fut = self
            .inner
            .call(attempt(parts, &tried, first, mark.as_ref()));
        ResponseFuture {
            state: State::Called { fut },
            retry: Some(Box::new(Attempts {
                template: self.template(),
                svc: None,
                parts: copy,
                body: replay,
                left: policy.attempts,
                safe_only,
                interval: policy.backoff.max(Duration::from_millis(1)),
                policy,
                rng: Rng::new(Some(seed)),
                timer,
                tried,
                next: None,
                permit: None,
                mark,
                held: None,
                attempt_count: self.layer.attempt_count,
            })),
            first: None,
        }
    }
}

impl RetryLayer {
    /// Removes the router's `x-envoy-*` headers from a request (all of them: the timeout
    /// layer above has taken its own), first applying the retry ones to `policy` when this
    /// layer honours them. Only requests that carry one come here.
    #[cold]
    fn consume_envoy_headers(
        &self,
        h: &mut HeaderMap,
        present: EnvoyHeaders,
        policy: Option<Arc<RetryPolicy>>,
    ) -> Option<Arc<RetryPolicy>> {
        let honoured = (self.envoy_headers == EnvoyHeaderPolicy::Honour)
            .then(|| envoy_overrides(h, present, policy.as_deref()));
        EnvoyHeaders::strip(h, present);
        match honoured {
            Some(p) => p.map(Arc::new),
            None => policy,
        }
        .filter(|p| p.attempts > 0)
    }
}

/// `policy` with a request's `x-envoy-*` retry headers applied, as Envoy's
/// `RetryStateImpl` merges them: `x-envoy-retry-on` and `x-envoy-retry-grpc-on` add
/// conditions (then the policy counts as one whose `retryOn` was written: the caller asked),
/// `x-envoy-max-retries` replaces the number of retries when there is a condition,
/// `x-envoy-retriable-status-codes` adds status codes, and
/// `x-envoy-upstream-rq-per-try-timeout-ms` sets the per-try timeout (`0`: none). A route
/// without retries (`attempts: 0`, which Istio sends as no retry policy at all) starts from
/// Envoy's empty policy: no condition, one retry. Malformed values are ignored.
fn envoy_overrides(
    h: &HeaderMap,
    present: EnvoyHeaders,
    policy: Option<&RetryPolicy>,
) -> Option<RetryPolicy> {
    let consumed = EnvoyHeaders::RETRY_ON
        | EnvoyHeaders::RETRY_GRPC_ON
        | EnvoyHeaders::MAX_RETRIES
        | EnvoyHeaders::RETRIABLE_STATUS_CODES
        | EnvoyHeaders::UPSTREAM_RQ_PER_TRY_TIMEOUT_MS;
    if !present.intersects(consumed) {
        return policy.cloned();
    }
    let mut p = match policy {
        Some(p) if p.attempts > 0 => p.clone(),
        _ => RetryPolicy {
            attempts: 1,
            retry_on: RetryOn::empty(),
            retriable_status_codes: Vec::new(),
            retry_ignore_previous_hosts: false,
            ..RetryPolicy::default()
        },
    };
    for (header, grpc) in [
        (EnvoyHeaders::RETRY_ON, false),
        (EnvoyHeaders::RETRY_GRPC_ON, true),
    ] {
        if let Some(v) = header.value(h) {
            p.retry_on |= RetryOn::from_header(v, grpc);
            p.explicit_retry_on = true;
        }
    }
    let number = |header: EnvoyHeaders| header.value(h).and_then(|v| v.trim().parse::<u64>().ok());
    if !p.retry_on.is_empty()
        && let Some(n) = number(EnvoyHeaders::MAX_RETRIES)
    {
        p.attempts = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(v) = EnvoyHeaders::RETRIABLE_STATUS_CODES.value(h) {
        let codes = v
            .split(',')
            .filter_map(|c| c.trim().parse::<u16>().ok())
            .filter_map(|c| StatusCode::from_u16(c).ok());
        p.retriable_status_codes.extend(codes);
    }
    if let Some(ms) = number(EnvoyHeaders::UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
        p.per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    Some(p)
}

/// The list of the hosts a request's attempts went to, avoided by the balancer under
/// `retryIgnorePreviousHosts` (else only recorded: it brings the cluster's limits back).
fn previous_hosts(policy: &RetryPolicy) -> PreviousHosts {
    if policy.retry_ignore_previous_hosts {
        PreviousHosts::new()
    } else {
        PreviousHosts::recording_only()
    }
}

/// An attempt's request: the head (a copy of the one kept for retries, or the one handed
/// back), the hosts and priorities tried so far, the body.
fn attempt<B>(
    mut head: http::request::Parts,
    tried: &Tried,
    body: ReplayBody<B>,
    timeout: Option<&TimeoutMark>,
) -> Request<ReplayBody<B>> {
    if timeout.is_some()
        || tried.hosts.is_some()
        || tried.priorities.is_some()
        || tried.back.is_some()
    {
        let slots = slots_mut(&mut head.extensions);
        if let Some(m) = timeout {
            slots.timeout = Some(m.clone());
        }
        if let Some(h) = &tried.hosts {
            slots.hosts = Some(h.clone());
        }
        if let Some(p) = &tried.priorities {
            slots.priorities = Some(p.clone());
        }
        if let Some(b) = &tried.back {
            slots.return_head = Some(b.clone());
        }
    }
    Request::from_parts(head, body)
}

/// A new attempt's [`TimeoutMark`] when the policy has a per-try timeout (chained to the
/// route timeout's, which the request may carry).
fn per_try_mark(parts: &http::request::Parts, policy: &RetryPolicy) -> Option<TimeoutMark> {
    policy
        .per_try_timeout
        .map(|_| TimeoutMark::child_of(timeout_mark(&parts.extensions)))
}

/// RFC 9110 §9.2.2's idempotent methods.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

// === impl ResponseFuture ===

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn once(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { fut },
            retry: None,
            first: None,
        }
    }
}

impl<S, B, R> std::fmt::Debug for ResponseFuture<S, B, R>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Peeking { .. } => "reading the answer's first frame",
            State::Backoff => "backoff",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field(
                "retries_left",
                &(self.retry.as_ref().map(|r| r.left))
                    .or(self.first.as_ref().map(|f| f.policy.attempts)),
            )
            .finish()
    }
}

impl<S, B, R> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>> + Clone,
    B: Body<Data = Bytes>,
    R: ReplyBody,
{
    type Output = Result<Response<R>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // what the attempt came to, and the verdict on it when the answer's trailers gave
            // it (`None`: judged below, from the answer's head)
            let (outcome, verdict) = match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let outcome = match fut.poll(cx) {
                        Poll::Ready(res) => {
                            let res = res?;
                            if let Some(first) = this.first.take() {
                                // taken out whatever comes next (dropped with the place
                                // when the answer is not retried)
                                let head = first.back.as_ref().and_then(ReturnHead::take);
                                match judge(&res, &first.policy, first.safe_only) {
                                    Verdict::Retry => {}
                                    Verdict::Trailers if reads_ahead::<R, B>(&first.body) => {}
                                    _ => return Poll::Ready(Ok(res)),
                                }
                                *this.retry = Some(Box::new(first.into_attempts(head)));
                            } else if let Some(retry) = this.retry.as_mut()
                                && retry.tried.back.is_some()
                            {
                                retry.parts = retry.tried.back.as_ref().and_then(ReturnHead::take);
                            }
                            Outcome::Answer(res)
                        }
                        Poll::Pending if per_try_expired(this.retry, cx) => Outcome::PerTryTimeout,
                        Poll::Pending => return Poll::Pending,
                    };
                    (outcome, None)
                }
                StateProj::Peeking { body } => {
                    let Some(rest) = body.as_mut() else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    let (Some(retry), polled) = (this.retry.as_mut(), rest.as_mut().poll_frame(cx))
                    else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    let frame = match polled {
                        Poll::Ready(frame) => Some(frame),
                        // at the per-try timeout the answer goes on as it is: its head came
                        // before the timeout, which then ends, as Envoy's does at the head (a
                        // stream whose first message is slow is not cut)
                        Poll::Pending => match retry.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                            Some(Poll::Ready(())) => None,
                            _ => return Poll::Pending,
                        },
                    };
                    let (Some(rest), Some(head)) = (body.take(), retry.held.take()) else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    let on = retry.policy.retry_on;
                    // an upstream Envoy's rate limit: retried under `envoy-ratelimited` only
                    // (which the head's verdict already applied)
                    let limited = head.headers.contains_key("x-envoy-ratelimited");
                    let resumed = |first| match R::resume(rest, first) {
                        Some(body) => Response::from_parts(head, body),
                        // not reached: only `RESUMABLE` bodies are read ahead
                        None => local_reply(
                            StatusCode::BAD_GATEWAY,
                            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                            "upstream answer lost",
                        ),
                    };
                    let (res, verdict) = match frame {
                        // the per-try timeout, or the end of the body
                        None | Some(None) => (resumed(None), false),
                        Some(Some(Ok(f))) => {
                            let named = f
                                .trailers_ref()
                                .and_then(|t| t.get("grpc-status"))
                                .and_then(grpc_condition)
                                .is_some_and(|c| on.contains(c));
                            (resumed(Some(f)), named && !limited)
                        }
                        // reset before the first frame: judged as a reset, and answered as
                        // the connector answers one (the error cannot be given back; a `200`
                        // whose body ends cleanly would hide it)
                        Some(Some(Err(_))) => (
                            UpstreamReset::RemoteReset.reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                ResponseFlags::UPSTREAM_REMOTE_RESET,
                                false,
                            ),
                            on.intersects(RESET_LIKE),
                        ),
                    };
                    (Outcome::Answer(res), Some(verdict))
                }
                StateProj::Backoff => {
                    let Some(retry) = this.retry.as_mut() else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    if let Some(t) = retry.timer.as_mut() {
                        ready!(t.as_mut().poll(cx));
                    }
                    ready!(retry.svc().poll_ready(cx))?;
                    let body = retry.next.take().expect(POLLED_AFTER_COMPLETION);
                    let head = if retry.tried.back.is_some() {
                        retry.parts.take()
                    } else {
                        retry.parts.clone()
                    };
                    let mut head = head.expect(POLLED_AFTER_COMPLETION);
                    if retry.attempt_count {
                        // the retries sent so far, and the first attempt
                        let n = u64::from(retry.policy.attempts - retry.left) + 1;
                        head.headers
                            .insert(X_ENVOY_ATTEMPT_COUNT, mesh_core::header_values::number(n));
                    }
                    retry.mark = per_try_mark(&head, &retry.policy);
                    let req = attempt(head, &retry.tried, body, retry.mark.as_ref());
                    let fut = retry.svc().call(req);
                    match (retry.policy.per_try_timeout, retry.timer.as_mut()) {
                        (Some(t), Some(timer)) => timer.as_mut().reset(Instant::now() + t),
                        // no per-try timeout: the backoff timer must not fire during the attempt
                        _ => retry.timer = None,
                    }
                    this.state.set(State::Called { fut });
                    continue;
                }
            };
            let Some(retry) = this.retry.as_mut() else {
                return Poll::Ready(Ok(outcome.into_response(ResponseFlags::empty(), false)));
            };
            let retried = retry.left < retry.policy.attempts;
            if matches!(outcome, Outcome::PerTryTimeout)
                && retry.tried.back.is_some()
                && retry.parts.is_none()
            {
                // heads handed back: the attempt goes first, which puts its head back
                this.state.set(State::Backoff);
                retry.parts = retry.tried.back.as_ref().and_then(ReturnHead::take);
            }
            let retriable = match (&outcome, verdict) {
                (_, Some(v)) => v,
                (Outcome::Answer(res), None) => {
                    match judge(res, &retry.policy, retry.safe_only) {
                        Verdict::Retry => true,
                        Verdict::Trailers
                            if retry.left > 0
                                && retry.parts.is_some()
                                && reads_ahead::<R, B>(&retry.body) =>
                        {
                            // the answer waits for its first body frame: a `grpc-status`
                            // in trailers that come first decides
                            if let Outcome::Answer(res) = outcome {
                                let (head, body) = res.into_parts();
                                retry.held = Some(head);
                                this.state.set(State::Peeking {
                                    body: Some(Box::pin(body)),
                                });
                            }
                            continue;
                        }
                        _ => false,
                    }
                }
                (Outcome::PerTryTimeout, None) => {
                    !retry.safe_only && retry.policy.retry_on.intersects(RESET_LIKE)
                }
            };
            if !retriable {
                return Poll::Ready(Ok(outcome.into_response(ResponseFlags::empty(), retried)));
            }
            if retry.left == 0 {
                return Poll::Ready(Ok(
                    outcome.into_response(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, retried)
                ));
            }
            let Some(head) = retry.parts.as_ref() else {
                // heads handed back, but not this one (see `with_heads_handed_back`)
                return Poll::Ready(Ok(outcome.into_response(ResponseFlags::empty(), retried)));
            };
            if retry.tried.hosts.is_none() {
                retry.tried.hosts = Some(Tried::first_retry(&retry.policy, head));
            }
            if !retry.retry_permit() {
                return Poll::Ready(Ok(
                    outcome.into_response(ResponseFlags::UPSTREAM_OVERFLOW, retried)
                ));
            }
            // the attempt (and its hold on the body) goes before the body is asked for
            this.state.set(State::Backoff);
            let Some(next) = retry.next_body() else {
                return Poll::Ready(Ok(outcome.into_response(ResponseFlags::empty(), retried)));
            };
            retry.left -= 1;
            retry.next = Some(next);
            let wait = retry.backoff();
            let deadline = Instant::now() + wait;
            match &mut retry.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => retry.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
    }
}

/// Whether the attempt in flight ran out of its per-try timeout; then the layers below
/// learn why the attempt goes (its [`TimeoutMark`] fires).
fn per_try_expired<S, B>(retry: &mut Option<Box<Attempts<S, B>>>, cx: &mut Context<'_>) -> bool {
    let Some(retry) = retry.as_mut() else {
        return false;
    };
    match retry.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
        Some(Poll::Ready(())) => {
            if let Some(m) = retry.mark.as_ref() {
                m.fire();
            }
            true
        }
        _ => false,
    }
}

/// Whether an answer's first body frame may be read ahead: its body type can be given the
/// frame back ([`ReplyBody::RESUMABLE`]), and the client has sent its whole request body
/// (a request still streaming, a bidirectional gRPC call, may wait on the answer's head;
/// and a retry needs the whole body anyway).
fn reads_ahead<R: ReplyBody, B>(body: &Replay<B>) -> bool {
    R::RESUMABLE
        && match body {
            Replay::Empty => true,
            Replay::Recorded(r) => r.is_whole(),
        }
}

/// A future polled after it completed (a caller's bug) panics, as tower's do.
const POLLED_AFTER_COMPLETION: &str = "retry::ResponseFuture polled after completion";

/// The conditions under which a reset (and a per-try timeout, which Envoy handles as one)
/// is retried.
const RESET_LIKE: RetryOn = RetryOn::FIVE_XX
    .union(RetryOn::GATEWAY_ERROR)
    .union(RetryOn::RESET);

/// What the policy says of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Retry,
    Pass,
    /// A gRPC answer whose `grpc-status` would be in its trailers (`200`, the status not
    /// in the head, a body to come), under a policy that retries on gRPC statuses: its
    /// first body frame decides (trailers first: a status the policy names is retried).
    Trailers,
}

/// Whether the policy retries this answer.
fn judge<R: Body>(res: &Response<R>, policy: &RetryPolicy, safe_only: bool) -> Verdict {
    let on = policy.retry_on;
    let verdict = |retry: bool| if retry { Verdict::Retry } else { Verdict::Pass };
    let flags = flags_of(res);
    if !flags.is_empty() {
        // an answer the mesh made below: judged by its cause only
        if flags.contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE)
            && res.status() == StatusCode::SERVICE_UNAVAILABLE
        {
            // Envoy counts a connect failure as a reset too (`wouldRetryFromReset`), and as
            // one before the request (nothing was sent)
            return verdict(on.intersects(
                RESET_LIKE | RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST,
            ));
        }
        if res.extensions().get::<RefusedStream>().is_some() {
            return verdict(on.intersects(RESET_LIKE | RetryOn::REFUSED_STREAM));
        }
        if flags.intersects(
            ResponseFlags::UPSTREAM_REMOTE_RESET
                | ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
                | ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
        ) {
            return verdict(!safe_only && on.intersects(RESET_LIKE));
        }
        return Verdict::Pass;
    }
    if safe_only {
        return Verdict::Pass;
    }
    // Envoy's `wouldRetryFromHeaders`: an answer an upstream Envoy rate limited (it carries
    // `x-envoy-ratelimited`, whatever its value) is retried under `envoy-ratelimited` and under no other
    // condition (looked up only for an answer another condition would retry, or under
    // `envoy-ratelimited`: most answers are not)
    let limited = || res.headers().contains_key("x-envoy-ratelimited");
    if on.contains(RetryOn::ENVOY_RATELIMITED) && limited() {
        return Verdict::Retry;
    }
    let status = res.status();
    let code = status.as_u16();
    if (on.contains(RetryOn::FIVE_XX) && status.is_server_error())
        || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(code, 502..=504))
        || (on.contains(RetryOn::RETRIABLE_4XX) && code == 409)
        || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
            && policy.retriable_status_codes.contains(&status))
    {
        return verdict(!limited());
    }
    if on.intersects(GRPC) && is_grpc(res) {
        return match res.headers().get("grpc-status") {
            Some(v) => verdict(grpc_condition(v).is_some_and(|c| on.contains(c)) && !limited()),
            None if status == StatusCode::OK && !res.body().is_end_stream() => Verdict::Trailers,
            None => Verdict::Pass,
        };
    }
    Verdict::Pass
}

/// The `retryOn` condition naming a `grpc-status` value, if one does.
fn grpc_condition(v: &http::HeaderValue) -> Option<RetryOn> {
    match v.as_bytes() {
        b"1" => Some(RetryOn::GRPC_CANCELLED),
        b"4" => Some(RetryOn::GRPC_DEADLINE_EXCEEDED),
        b"8" => Some(RetryOn::GRPC_RESOURCE_EXHAUSTED),
        b"13" => Some(RetryOn::GRPC_INTERNAL),
        b"14" => Some(RetryOn::GRPC_UNAVAILABLE),
        _ => None,
    }
}

/// A gRPC answer (`content-type: application/grpc…`): only those carry a `grpc-status` to
/// judge (a standard header's lookup is cheap; `grpc-status`'s is not).
fn is_grpc<R>(res: &Response<R>) -> bool {
    res.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

const GRPC: RetryOn = RetryOn::GRPC_CANCELLED
    .union(RetryOn::GRPC_DEADLINE_EXCEEDED)
    .union(RetryOn::GRPC_INTERNAL)
    .union(RetryOn::GRPC_RESOURCE_EXHAUSTED)
    .union(RetryOn::GRPC_UNAVAILABLE);

// === impl Tried ===

impl Tried {
    /// The hosts list of a request whose first attempt went without one (heads handed
    /// back): what the balancer and the circuit breaker would have written in it, read from
    /// the first attempt's head as it came back: the host it went to and its cluster's limits
    /// (the balancer's [`SelectedUpstream`], else standalone [`SelectedEndpoint`] and
    /// [`UpstreamCluster`] extensions).
    #[cold]
    fn first_retry(policy: &RetryPolicy, head: &http::request::Parts) -> PreviousHosts {
        let hosts = previous_hosts(policy);
        let ext = &head.extensions;
        if let Some(e) = selected_endpoint(ext) {
            hosts.record(e.addr);
        }
        if let Some(l) = upstream_cluster(ext).and_then(|c| c.limits.as_ref()) {
            hosts.set_limits(l);
        }
        hosts
    }
}

// === impl First ===

impl<S, B> First<S, B> {
    /// The retry state of a request whose first answer is retried, with the head that
    /// answer brought back.
    #[cold]
    fn into_attempts(self, parts: Option<http::request::Parts>) -> Attempts<S, B> {
        Attempts {
            template: self.svc,
            svc: None,
            parts,
            body: self.body,
            left: self.policy.attempts,
            safe_only: self.safe_only,
            interval: self.policy.backoff.max(Duration::from_millis(1)),
            policy: self.policy,
            rng: Rng::new(Some(self.seed)),
            timer: None,
            tried: Tried {
                hosts: None,
                priorities: self.priorities,
                back: self.back,
            },
            next: None,
            permit: None,
            mark: None,
            held: None,
            attempt_count: self.attempt_count,
        }
    }
}

// === impl Attempts ===

impl<S: Clone, B> Attempts<S, B> {
    /// The request's own clone of the inner service, made from the layer's shared one by
    /// the first retry.
    fn svc(&mut self) -> &mut S {
        let template = &self.template;
        self.svc
            .get_or_insert_with(|| template.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl<S, B> Attempts<S, B>
where
    B: Body<Data = Bytes>,
{
    /// The next attempt's body, if it can be sent again.
    fn next_body(&self) -> Option<ReplayBody<B>> {
        match &self.body {
            Replay::Empty => Some(ReplayBody::empty()),
            Replay::Recorded(r) => r.replay(),
        }
    }

    /// Envoy's retry circuit breaker (`RetryStateImpl::shouldRetry`): the previous retry's
    /// permit is given back, and the next retry needs one from the cluster's limits
    /// (`maxRetries`, `retryBudget`), which the circuit breaker below the balancer recorded
    /// in [`PreviousHosts`]. `false`: not sent (the client gets the last answer with `UO`,
    /// as Envoy's router on `RetryStatus::NoOverflow`).
    fn retry_permit(&mut self) -> bool {
        self.permit = None;
        let Some(limits) = self.tried.hosts.as_ref().and_then(PreviousHosts::limits) else {
            return true;
        };
        self.permit = limits.try_retry();
        self.permit.is_some()
    }

    /// The next backoff: Envoy's `JitteredExponentialBackOffStrategy`, a random whole
    /// number of milliseconds in `[0, interval)`, the interval doubling up to ten times the
    /// base.
    fn backoff(&mut self) -> Duration {
        let bound = self.interval;
        let max = self.policy.backoff.max(Duration::from_millis(1)) * 10;
        self.interval = (self.interval * 2).min(max);
        let ms = usize::try_from(bound.as_millis()).unwrap_or(usize::MAX);
        Duration::from_millis(self.rng.below(ms) as u64)
    }
}

// === impl Outcome ===

impl<R: ReplyBody> Outcome<R> {
    /// The answer to pass on, with `flags` added. `retried`: at least one retry was sent,
    /// and a reset's reply says so as Envoy's (`… retried and the latest reset reason: …`).
    fn into_response(self, flags: ResponseFlags, retried: bool) -> Response<R> {
        match self {
            Outcome::Answer(mut res) => {
                mark(&mut res, flags);
                if retried && let Some(r) = res.extensions().get::<UpstreamReset>().copied() {
                    let text = bytes::Bytes::from_static(r.body(true).as_bytes());
                    *res.body_mut() = R::local(text.clone());
                    res.extensions_mut().insert(LocalReplyText(text));
                }
                res
            }
            Outcome::PerTryTimeout => {
                let mut res = local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    ResponseFlags::UPSTREAM_REQUEST_TIMEOUT | flags,
                    TIMEOUT_BODY,
                );
                // Envoy's details for it, beside the route timeout's `response_timeout`
                res.extensions_mut()
                    .insert(ResponseCodeDetails(Arc::from("upstream_per_try_timeout")));
                res
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod trailer_tests;

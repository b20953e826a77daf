//! Fault injection: Istio's `HTTPRoute.fault` (Envoy's `envoy.filters.http.fault`).
//!
//! [`FaultLayer`] reads the [`FaultPolicy`] of the route the router chose
//! ([`route_policy`]; or the layer's own, for a service without a router) and, for each
//! request, draws the delay and the abort **independently** (Istio: "delay and abort faults
//! are independent of one another, even if both are specified simultaneously"):
//!
//! - **delay** (`fixedDelay`, in `percentage` of requests): the request waits before it goes
//!   on. Nothing is held meanwhile (the inner service is not polled ready, no connection is
//!   taken from a pool), and the response carries flag `DI`. The delay sits before the
//!   timeout layer, as Envoy's fault filter sits before its router: it does not count
//!   against the route `timeout`.
//! - **abort** (`httpStatus` or `grpcStatus`, in `percentage` of requests): the request never
//!   reaches the upstream. An HTTP abort answers that status with the body
//!   `fault filter abort`; a gRPC abort answers as Envoy does for a gRPC local reply, a
//!   trailers-only `200` with `content-type: application/grpc`, `grpc-status` and
//!   `grpc-message: fault filter abort`. Flag `FI` (with `DI` when it was delayed first).
//!
//! An unset `percentage` injects **nothing**, as Istio does (istio/istio#36303, #39969:
//! the documentation said "all requests" and was changed to match the behaviour);
//! validation warns about it. `http2Error` and `exponentialDelay` are refused by validation,
//! as Istio's.
//!
//! The draws come from a generator per service: [`FaultLayer::with_seed`] makes them
//! reproducible.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use mesh_core::MeshBody;
//! use mesh_core::policy::{AbortError, AbortFault, FaultPolicy};
//! use mesh_resilience::fault::FaultLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let policy = FaultPolicy {
//!     delay: None,
//!     abort: Some(AbortFault { error: AbortError::Http(StatusCode::IM_A_TEAPOT), fraction: 1.0 }),
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(FaultLayer::new().with_policy(Arc::new(policy)))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(MeshBody::<http_body_util::Empty<bytes::Bytes>>::empty()))
//!     });
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
//! assert_eq!(res.headers()["x-mesh-response-flags"], "FI");
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use mesh_core::body::ReplyBody;
use mesh_core::ext::InjectedDelay;
use mesh_core::ext::{local_reply, mark, route_policy};
use mesh_core::flags::ResponseFlags;
use mesh_core::policy::{AbortError, AbortFault, FaultPolicy};
use mesh_core::rng::Rng;
use pin_project::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

/// The body of an HTTP abort, as Envoy's.
pub const ABORT_BODY: &str = "fault filter abort";

/// Injects the route's faults; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct FaultLayer {
    policy: Option<Arc<FaultPolicy>>,
    seed: Option<u64>,
    counter: Arc<AtomicU64>,
}

impl FaultLayer {
    /// A layer that injects the faults of each request's route (none without one).
    pub fn new() -> Self {
        FaultLayer::default()
    }

    /// Injects `policy` into requests that carry no route policy of their own (a service
    /// used without the router).
    pub fn with_policy(mut self, policy: Arc<FaultPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Seeds the draws for reproducible runs: the n-th service made from this layer (or
    /// cloned from one) draws from a generator seeded by `seed` and n.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            rng: Rng::nth(self.seed, &self.counter),
            layer: self.clone(),
        }
    }
}

/// The service of [`FaultLayer`].
#[derive(Debug)]
pub struct Fault<S> {
    inner: S,
    rng: Rng,
    layer: FaultLayer,
}

mesh_core::accessors!(Fault);

impl<S: Clone> Clone for Fault<S> {
    fn clone(&self) -> Self {
        Fault {
            inner: self.inner.clone(),
            rng: Rng::nth(self.layer.seed, &self.layer.counter),
            layer: self.layer.clone(),
        }
    }
}

impl<S, B, R> Service<Request<B>> for Fault<S>
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

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A routed request gets its route's faults (or none); the layer's own policy is for
        // requests no router saw.
        let policy = match route_policy(req.extensions()) {
            Some(route) => route.fault.as_ref(),
            None => self.layer.policy.as_ref(),
        };
        let Some(policy) = policy else {
            return ResponseFuture::inner(self.inner.call(req), ResponseFlags::empty());
        };
        // Both draws happen for every request, so that one fault's percentage does not
        // shift the other's sequence.
        let delay = policy
            .delay
            .as_ref()
            .filter(|d| draw(&mut self.rng, d.fraction))
            .map(|d| d.fixed_delay);
        let abort = policy
            .abort
            .as_ref()
            .filter(|a| draw(&mut self.rng, a.fraction))
            .cloned();
        match (delay, abort) {
            (None, None) => ResponseFuture::inner(self.inner.call(req), ResponseFlags::empty()),
            (None, Some(abort)) => ResponseFuture::abort(&abort, &req, ResponseFlags::empty()),
            (Some(delay), abort) => ResponseFuture {
                state: State::Delay(Box::new(Delayed {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                    delay,
                    // A clone, polled ready only after the delay: nothing is reserved while
                    // the request waits (this service's own readiness stays for the next call).
                    svc: Some(self.inner.clone()),
                    grpc_request: is_grpc(&req),
                    req: Some(req),
                    abort,
                })),
            },
        }
    }
}

fn draw(rng: &mut Rng, fraction: f64) -> bool {
    fraction >= 1.0 || (fraction > 0.0 && rng.next_f64() < fraction)
}

/// The generator of the next service made from a layer (`mesh_core::rng::seed`: the
/// configured seed and the service's number, or entropy).
/// The future of [`Fault`].
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
    Inner {
        #[pin]
        fut: S::Future,
        flags: ResponseFlags,
        /// The injected delay before the request went on, in milliseconds (0: none; in the
        /// flags' padding).
        delayed_ms: u32,
    },
    // Boxed: delays are rare, and the future of every undelayed request stays small.
    Delay(Box<Delayed<S, B>>),
    Abort {
        error: Option<AbortError>,
        grpc_request: bool,
        flags: ResponseFlags,
    },
}

/// A request waiting out its injected delay.
struct Delayed<S, B> {
    sleep: Pin<Box<Sleep>>,
    /// The delay, for [`InjectedDelay`].
    delay: std::time::Duration,
    svc: Option<S>,
    req: Option<Request<B>>,
    grpc_request: bool,
    abort: Option<AbortFault>,
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::Delay(_) => "delay",
            State::Abort { .. } => "abort",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn inner(fut: S::Future, flags: ResponseFlags) -> Self {
        ResponseFuture {
            state: State::Inner {
                fut,
                flags,
                delayed_ms: 0,
            },
        }
    }

    fn abort(abort: &AbortFault, req: &Request<B>, flags: ResponseFlags) -> Self {
        ResponseFuture {
            state: State::Abort {
                error: Some(abort.error.clone()),
                grpc_request: is_grpc(req),
                flags,
            },
        }
    }
}

/// Whether `req` is a gRPC call ([`mesh_core::grpc::is_grpc_request`]).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    mesh_core::grpc::is_grpc_request(req)
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
                StateProj::Inner {
                    fut,
                    flags,
                    delayed_ms,
                } => {
                    let mut res = ready!(fut.poll(cx))?;
                    mark(&mut res, *flags);
                    if *delayed_ms > 0 {
                        // (not the upstream's time: `x-envoy-upstream-service-time` leaves it out)
                        res.extensions_mut().insert(InjectedDelay(
                            std::time::Duration::from_millis(u64::from(*delayed_ms)),
                        ));
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Delay(d) => {
                    let Delayed {
                        sleep,
                        delay,
                        svc,
                        req,
                        grpc_request,
                        abort,
                    } = &mut **d;
                    ready!(sleep.as_mut().poll(cx));
                    if let Some(abort) = abort.take() {
                        let next = State::Abort {
                            error: Some(abort.error),
                            grpc_request: *grpc_request,
                            flags: ResponseFlags::DELAY_INJECTED,
                        };
                        state.set(next);
                        continue;
                    }
                    let s = svc.as_mut().expect(POLLED_AFTER_COMPLETION);
                    ready!(s.poll_ready(cx))?;
                    let (Some(mut s), Some(req)) = (svc.take(), req.take()) else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    let fut = s.call(req);
                    let delayed_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
                    state.set(State::Inner {
                        fut,
                        flags: ResponseFlags::DELAY_INJECTED,
                        delayed_ms,
                    });
                }
                StateProj::Abort {
                    error,
                    grpc_request,
                    flags,
                } => {
                    let error = error.take().expect(POLLED_AFTER_COMPLETION);
                    let flags = *flags | ResponseFlags::FAULT_INJECTED;
                    return Poll::Ready(Ok(abort_response(error, *grpc_request, flags)));
                }
            }
        }
    }
}

/// A future polled after it completed (a caller's bug) panics, as tower's do.
const POLLED_AFTER_COMPLETION: &str = "fault::ResponseFuture polled after completion";

/// The answer to an aborted request.
fn abort_response<R: ReplyBody>(
    error: AbortError,
    grpc_request: bool,
    flags: ResponseFlags,
) -> Response<R> {
    match error {
        // Envoy's gRPC local reply: trailers-only, HTTP 200
        AbortError::Grpc(code) => mesh_core::grpc::grpc_reply(code, ABORT_BODY, flags),
        // an HTTP status for a gRPC caller: Envoy maps it to a gRPC status
        // (`Grpc::Utility::httpToGrpcStatus`) in a trailers-only answer
        AbortError::Http(status) if grpc_request => {
            mesh_core::grpc::grpc_reply(http_to_grpc(status), ABORT_BODY, flags)
        }
        AbortError::Http(status) => local_reply(status, flags, ABORT_BODY),
        // Refused by validation (Istio: "HTTP/2 abort fault injection not supported yet");
        // a policy built in code gets Envoy's nearest answer.
        _ => local_reply(StatusCode::SERVICE_UNAVAILABLE, flags, ABORT_BODY),
    }
}

pub(crate) use mesh_core::grpc::http_to_grpc;

#[cfg(test)]
mod tests;

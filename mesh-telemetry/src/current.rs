//! In-process trace forwarding: the trace context of the request a service is serving is
//! handed to the outbound calls it makes while serving it (the thing a sidecar cannot do for
//! the application, which must copy the headers itself).
//!
//! On the server side, [`CurrentTraceLayer`] (inside a [`TraceLayer`](crate::TraceLayer))
//! runs the handler's future with the request's [`TraceContext`] and `x-request-id` as the
//! *current* ones, in a tokio task-local. On the client side, a [`TraceLayer`](crate::TraceLayer)
//! takes the current context as the parent of a request that carries no trace header of its
//! own: the outbound request continues the inbound trace with a span of its own, and keeps
//! the inbound `x-request-id`.
//!
//! ```
//! use http::Request;
//! use mesh_telemetry::current::CurrentTraceLayer;
//! use mesh_telemetry::trace::{TraceConfig, TraceLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // the service's own client: trace propagation on every call it makes
//! let client = ServiceBuilder::new()
//!     .layer(TraceLayer::new(TraceConfig::default()))
//!     .service_fn(|req: Request<()>| async move { Ok::<_, std::convert::Infallible>(req) });
//! // the server: trace context, then the current-trace scope, then the handler
//! let server = ServiceBuilder::new()
//!     .layer(TraceLayer::new(TraceConfig::default()))
//!     .layer(CurrentTraceLayer::new())
//!     .service_fn(move |_inbound: Request<()>| {
//!         let client = client.clone();
//!         async move {
//!             // no trace header written by hand
//!             client.oneshot(Request::new(())).await
//!         }
//!     });
//! let inbound = Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(())
//!     .unwrap();
//! let outbound = server.oneshot(inbound).await.unwrap();
//! let tp = outbound.headers()["traceparent"].to_str().unwrap();
//! assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")); // the inbound trace
//! # });
//! ```
//!
//! A task the handler spawns does not inherit a task-local: wrap its future in [`scope`]
//! with [`current`] to carry the context over.

use std::future::Future;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;

use crate::trace::{TraceContext, X_REQUEST_ID, trace_context};

/// The context of the request being served: its trace context and `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The server hop's trace context (its span is the parent of the outbound calls').
    pub ctx: TraceContext,
    /// The inbound request's `x-request-id`, kept by the outbound calls.
    pub request_id: Option<HeaderValue>,
}

tokio::task_local! {
    static CURRENT: Inbound;
}

/// The context of the request the current task is serving, if any.
pub fn current() -> Option<Inbound> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `inbound` as the current context.
pub fn scope<F: Future>(inbound: Inbound, fut: F) -> TaskLocalFuture<Inbound, F> {
    CURRENT.scope(inbound, fut)
}

/// Makes the request's [`TraceContext`] (written by a [`TraceLayer`](crate::TraceLayer)
/// outside it) the current one while the inner service serves it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CurrentTraceLayer;

impl CurrentTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        CurrentTraceLayer
    }
}

/// The service of a [`CurrentTraceLayer`].
#[derive(Debug, Clone)]
pub struct CurrentTrace<S> {
    inner: S,
}

mesh_core::accessors!(CurrentTrace);

impl<S> tower_layer::Layer<S> for CurrentTraceLayer {
    type Service = CurrentTrace<S>;

    fn layer(&self, inner: S) -> CurrentTrace<S> {
        CurrentTrace { inner }
    }
}

/// The future of a [`CurrentTrace`] service: the inner future, in the request's scope (or
/// in none, for a request without a [`TraceContext`]).
pub type ResponseFuture<F> = Either<TaskLocalFuture<Inbound, F>, F>;

impl<S, B> tower_service::Service<http::Request<B>> for CurrentTrace<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match trace_context(req.extensions()).copied() {
            Some(ctx) => {
                let request_id = req.headers().get(X_REQUEST_ID).cloned();
                let fut = self.inner.call(req);
                Either::Left(scope(Inbound { ctx, request_id }, fut))
            }
            None => Either::Right(self.inner.call(req)),
        }
    }
}

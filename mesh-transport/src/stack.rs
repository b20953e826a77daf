//! The contract between the engine and the layers: how a worker gets its service stack
//! (see [`StackFactory`]).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::body::ReplyBody;
use tower_service::Service;

use crate::limits::Limits;
use crate::pool::Pool;
use crate::upstream::Connector;

/// The error a response body's errors become (hyper's).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds one worker's service stack: the contract between the engine and the layers.
///
/// The engine runs `concurrency` workers; each builds **its own** stack, once, on its own
/// thread, by calling [`StackFactory::make`] with its [`WorkerContext`], and then calls that
/// stack for every request its connections carry. Nothing of a stack is shared with another
/// worker unless the factory shares it (an `Arc` of an immutable snapshot, typically).
///
/// ```text
///  worker thread k ─► StackFactory::make(&WorkerContext{k, connector}) ─► S   (once, and after a reload)
///  request        ─► engine checks (Host, framing, limits) ─► S::call(req)
///                    S = telemetry ─► authz ─► routing ─► resilience ─► lb ─► ctx.connector()
/// ```
///
/// # What a stack must be
///
/// `S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<R>,
/// Error = std::convert::Infallible> + Clone + 'static`, for any response body
/// `R: mesh_core::body::ReplyBody` (the engine answers malformed requests itself, in `R`):
/// the connector's `MeshBody<UpstreamBody>`, a `Full<Bytes>`, a boxed body.
///
/// - **No `Send` needed.** A worker's stack lives and runs on that worker's thread only, so it
///   may use `Rc`/`Cell` for per-worker state (counters, balancer cursors) without atomics.
///   Its futures need not be `Send` either.
/// - **`Error = Infallible`.** A failure the mesh decides is a response
///   ([`mesh_core::ext::local_reply`] with its [`ResponseFlags`](mesh_core::ResponseFlags)).
/// - **Readiness.** The engine calls `poll_ready` before every `call`. A stack that is always
///   ready (the usual case: the mesh answers overload with `503 UO` rather than by waiting)
///   costs nothing more. A stack that returns `Pending` is handed to that request, whose
///   own task drives it to readiness and calls it, and the worker goes on with a clone; so
///   `Clone` must share whatever state readiness depends on (as tower's `Buffer` and
///   `ConcurrencyLimit` do).
/// - **The innermost service is the connector**, [`WorkerContext::connector`]: it sends the
///   request to the [`SelectedEndpoint`](mesh_core::ext::SelectedEndpoint) that the balancer put
///   in the request extensions (absent: `503 UH`).
/// - `make` runs on the worker thread; it should be cheap (wrap `Arc`s of compiled state):
///   compile route tables once, before storing them, not per worker.
///
/// # Reload
///
/// A worker builds its stack once. To change what the stack does while it runs, put what
/// changes behind a handle its layers read per request (an [`arc_swap::ArcSwap`]), and store
/// a new value there: mesh-routing's `RouteTableHandle::store` and mesh-lb's
/// `LbLayer::store` are such handles, and `mesh-proxy` reloads through them. A request
/// loads what it routes on once, so requests already running finish on the old value, and
/// a value nobody reads any more is dropped.
///
/// # Implementations
///
/// Implemented for every `Fn(&WorkerContext) -> S + Send + Sync + 'static`.
pub trait StackFactory: Send + Sync + 'static {
    /// The response body of the stack.
    type Body: ReplyBody<Error: Into<BoxError>> + 'static;

    /// The stack a worker runs.
    type Service: Service<Request<Incoming>, Response = Response<Self::Body>, Error = Infallible>
        + Clone
        + 'static;

    /// Builds the stack of one worker; called once, on that worker's thread, at start-up.
    fn make(&self, ctx: &WorkerContext) -> Self::Service;
}

/// What a worker tells the factory about itself.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    index: usize,
    workers: usize,
    connector: Connector,
    limits: Arc<Limits>,
}

// === impl WorkerContext ===

impl WorkerContext {
    pub(crate) fn new(
        index: usize,
        workers: usize,
        limits: Arc<Limits>,
        pool: Pool,
        upstream_tls: Option<Arc<dyn crate::tls::UpstreamTls>>,
    ) -> Self {
        let mut connector = Connector::with_pool(limits.connect_timeout, pool);
        if let Some(tls) = upstream_tls {
            connector = connector.with_tls(tls);
        }
        WorkerContext {
            index,
            workers,
            connector,
            limits,
        }
    }

    /// This worker's index, `0..workers()`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many workers the engine runs.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The connector to put innermost in the stack: this worker's pool of upstream
    /// connections (owned by the worker, shared by every stack it builds), with the engine's
    /// `connectTimeout`.
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// The engine's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

// === impl StackFactory for closures ===

impl<F, S, R> StackFactory for F
where
    F: Fn(&WorkerContext) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<R>, Error = Infallible> + Clone + 'static,
    R: ReplyBody<Error: Into<BoxError>> + 'static,
{
    type Body = R;
    type Service = S;

    fn make(&self, ctx: &WorkerContext) -> S {
        self(ctx)
    }
}

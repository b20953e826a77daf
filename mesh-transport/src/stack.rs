//! The contract between the engine and the layers: how a worker gets its service stack
//! (see [`StackFactory`]).

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::MeshBody;
use tower_service::Service;

use crate::limits::Limits;
use crate::pool::Pool;
use crate::upstream::{Connector, UpstreamBody};

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
/// `S: tower::Service<http::Request<hyper::body::Incoming>,
/// Response = http::Response<mesh_core::MeshBody<mesh_transport::UpstreamBody>>,
/// Error = std::convert::Infallible> + Clone + 'static`.
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
/// [`StackFactory::generation`] is read (one atomic load) before every request; when it
/// differs from the generation the worker's stack was built at, the worker calls `make` again
/// and replaces its stack. Requests already running keep the futures of the old stack and
/// finish on it; the old stack is dropped when they are done with it. [`Reloadable`] does this
/// for you around an [`arc_swap::ArcSwap`] snapshot:
///
/// ```
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use mesh_core::MeshBody;
/// use mesh_core::ext::SelectedEndpoint;
/// use mesh_transport::{Reloadable, StackFactory, WorkerContext};
/// use tower::ServiceExt as _;
///
/// // the "configuration": where to send everything
/// let factory = Arc::new(Reloadable::new(
///     "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap(),
///     |ctx: &WorkerContext, upstream: &Arc<std::net::SocketAddr>| {
///         let upstream = **upstream;
///         let connector = ctx.connector();
///         tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
///             req.extensions_mut().insert(SelectedEndpoint {
///                 addr: upstream,
///                 http2: false,
///                 service_account: None,
///                 istio_tls: false,
///             });
///             connector.clone().oneshot(req)
///         })
///     },
/// ));
/// let before = factory.generation();
/// factory.store("127.0.0.1:9090".parse().unwrap()); // every worker rebuilds on its next request
/// assert_eq!(factory.generation(), before + 1);
/// ```
///
/// # Implementations
///
/// Implemented for every `Fn(&WorkerContext) -> S + Send + Sync + 'static` (a stack that never
/// changes) and by [`Reloadable`] (a stack rebuilt when its snapshot is replaced).
pub trait StackFactory: Send + Sync + 'static {
    /// The stack a worker runs.
    type Service: Service<Request<Incoming>, Response = Response<MeshBody<UpstreamBody>>, Error = Infallible>
        + Clone
        + 'static;

    /// Builds the stack of one worker; called on that worker's thread, at start-up and after
    /// every change of [`generation`](Self::generation).
    fn make(&self, ctx: &WorkerContext) -> Self::Service;

    /// The generation of the configuration `make` builds from; a worker rebuilds its stack
    /// when this changes. Read before every request: keep it to one atomic load.
    /// Default: always 0 (never rebuilt).
    fn generation(&self) -> u64 {
        0
    }
}

/// What a worker tells the factory about itself.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    index: usize,
    workers: usize,
    connector: Connector,
    limits: Arc<Limits>,
}

/// A [`StackFactory`] around a configuration snapshot that can be replaced atomically.
///
/// `build(ctx, snapshot)` makes a worker's stack from the current snapshot; [`store`](Self::store)
/// publishes a new snapshot and bumps the generation, so every worker rebuilds its stack on
/// its next request while in-flight requests finish on the old one. A bad configuration
/// should be rejected before `store` (keep the last good one).
pub struct Reloadable<T, B> {
    current: ArcSwap<T>,
    generation: AtomicU64,
    build: B,
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

impl<F, S> StackFactory for F
where
    F: Fn(&WorkerContext) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<MeshBody<UpstreamBody>>, Error = Infallible>
        + Clone
        + 'static,
{
    type Service = S;

    fn make(&self, ctx: &WorkerContext) -> S {
        self(ctx)
    }
}

// === impl Reloadable ===

impl<T, B> Reloadable<T, B> {
    /// A factory starting at generation 0 with `initial`.
    pub fn new(initial: T, build: B) -> Self {
        Reloadable {
            current: ArcSwap::from_pointee(initial),
            generation: AtomicU64::new(0),
            build,
        }
    }

    /// Publishes a new snapshot; workers switch to it on their next request.
    pub fn store(&self, next: T) {
        self.store_arc(Arc::new(next));
    }

    /// Publishes a new snapshot already in an `Arc`.
    pub fn store_arc(&self, next: Arc<T>) {
        self.current.store(next);
        // after the store: a worker that sees the new generation loads this snapshot or a newer one
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }
}

impl<T, B, S> StackFactory for Reloadable<T, B>
where
    T: Send + Sync + 'static,
    B: Fn(&WorkerContext, &Arc<T>) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<MeshBody<UpstreamBody>>, Error = Infallible>
        + Clone
        + 'static,
{
    type Service = S;

    fn make(&self, ctx: &WorkerContext) -> S {
        let snapshot = self.current.load_full();
        (self.build)(ctx, &snapshot)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl<T: fmt::Debug, B> fmt::Debug for Reloadable<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("current", &self.current.load())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

//! `mesh-transport`: the data-plane engine (listener, workers, limits, drain) and the
//! upstream connector (pooled HTTP/1.1 and HTTP/2 client), reusable by `mesh-proxy`, by custom
//! proxies and by in-process clients.
//!
//! The engine is how `mesh-proxy` (or your own proxy) serves HTTP (and, in its [L4
//! mode](l4), opaque TCP and TLS): it listens on one address,
//! speaks HTTP/1.1 and h2c (prior knowledge) on it, enforces the [`Limits`], hands each
//! request to a per-worker service stack made by a [`StackFactory`], and drains gracefully.
//!
//! # Workers, as Envoy and HAProxy run them
//!
//! `concurrency` threads (0 = one per core), each with its own tokio current-thread runtime,
//! its own listening socket on the same address (`SO_REUSEPORT`: the kernel spreads
//! connections), its own accept loop, its own stack and its own upstream connection pool.
//! Nothing on the request path crosses threads; workers share only immutable snapshots that
//! the factory hands them.
//!
//! ```text
//!             ┌ worker 0: accept ─► conn task ─► checks ─► stack₀ ─► … ─► Connector ─► pool₀ ─► upstream
//!  :15001 ────┤ worker 1: accept ─► conn task ─► checks ─► stack₁ ─► … ─► Connector ─► pool₁ ─► upstream
//!             └ …
//! ```
//!
//! # L4 serving mode
//!
//! [`BoundEngine::start_l4`] runs the same workers, accept loop, readiness, drain and
//! own-address set with a connection handler per worker instead of an HTTP server: opaque
//! TCP and TLS proxies (Istio's `tcp` and `tls` routes in `mesh-proxy`'s `outboundPorts`
//! listeners). The pieces such a handler needs, connect with a timeout, splice with
//! half-close, idle timeout and byte counts, and the SNI of a ClientHello read without
//! terminating TLS, are in [`l4`].
//!
//! # Example
//!
//! A proxy sending everything to one upstream (`mesh-routing` and `mesh-lb` replace the
//! closure in the real stack):
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::ext::SelectedEndpoint;
//! use mesh_transport::{Engine, EngineConfig, WorkerContext};
//! use tower::ServiceExt as _;
//!
//! let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
//! let factory = Arc::new(move |ctx: &WorkerContext| {
//!     let connector = ctx.connector();
//!     tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
//!         req.extensions_mut().insert(SelectedEndpoint::new(upstream));
//!         connector.clone().oneshot(req)
//!     })
//! });
//! let config = EngineConfig { concurrency: 2, ..EngineConfig::new("127.0.0.1:0".parse().unwrap()) };
//! let engine = Engine::start(config, factory).unwrap();
//! assert_ne!(engine.local_addr().port(), 0);
//! assert!(engine.is_ready());
//! engine.drain_blocking(); // stop accepting, finish in-flight requests, join the workers
//! ```
//!
//! # What the engine does to requests
//!
//! Before the stack sees a request, the listener refuses (and closes the connection):
//!
//! | request | answer |
//! |---|---|
//! | head larger than `maxRequestHeadersKb`, more than `maxRequestHeadersCount` headers | 431 (hyper, HTTP/1.1; the engine with flag `DPE`, HTTP/2) |
//! | HTTP/1.1 without `Host` | 400, flag `DPE` |
//! | two `Host` fields, or a `Host` list (`Host: a, b`); any version | 400, flag `DPE` |
//! | userinfo in `Host` or in the target's authority (`evil@web`, `http://evil@web/`, HTTP/2 `:authority`) | 400, flag `DPE` |
//! | a `Host` (or target authority) byte no authority has (a space, `/`, non-ASCII) | 400, flag `DPE` |
//! | `Content-Length` with `Transfer-Encoding`; repeated or list-valued `Content-Length` | 400, flag `DPE` |
//! | conflicting `Content-Length`, malformed request line or header | 400 (hyper) |
//! | a well-formed HTTP version other than 1.0/1.1 on a non-h2c connection (`GET / HTTP/3.0`) | 505, flag `DPE` |
//! | a malformed version token (`GET / HTTP/11`) | 400 (hyper) |
//! | head not complete within `requestHeadersTimeout` | connection closed |
//!
//! and answers without forwarding (the connection stays open):
//!
//! | request | answer |
//! |---|---|
//! | carries this listener's own `Via` entry (it has looped back) | 508, flag `UF` |
//! | `Connection: upgrade` with an `Upgrade` other than `websocket` and `h2c`; HTTP/2 extended `CONNECT` with a `:protocol` other than `websocket` | 403 `upgrade_failed`, no flag, connection closed (as Envoy) |
//!
//! and lets through to the stack, marked for the connector, the upgrades Istio enables
//! (see [`upgrade`]):
//!
//! | request | forwarded as | once the upstream agrees |
//! |---|---|---|
//! | HTTP/1.1 `Connection: upgrade`, `Upgrade: websocket` | an upgrade, `Upgrade` and `Connection: upgrade` kept (HTTP/1.1 upstream; an HTTP/2-only endpoint: `403 upgrade_failed`) | its `101` relayed, then the connections spliced |
//! | HTTP/2 extended `CONNECT`, `:protocol websocket` (RFC 8441) | an HTTP/1.1 WebSocket upgrade | `200` on the stream, then the stream and the upstream connection spliced |
//! | `CONNECT host:port` (HTTP/1.1, HTTP/2), routed by that authority | a new TCP connection to the chosen endpoint | `200`, then spliced |
//! | `Upgrade: h2c`, or `Upgrade` without `Connection: upgrade` | a plain request (`Upgrade` removed) | — |
//!
//! A tunnel ends when both sides have closed (each direction is half-closed as its source
//! ends), on an error, or after `streamIdleTimeout` without a byte either way.
//!
//! It rewrites one thing: a request whose target has an authority (absolute-form
//! `GET http://other/ HTTP/1.1`, HTTP/2's `:authority`) and a `Host` that says otherwise gets
//! the target's authority as `Host` (RFC 9112 §3.2.2, as Envoy), so that routing, policy and
//! the upstream all see one authority. A request with only `Host`, or only `:authority`, is
//! left as it is (no allocation); layers read the target's authority first, then `Host`.
//!
//! The rest is the [`Connector`]'s job (see [`upstream`]): hop-by-hop stripping, the target
//! in origin-form, the listener's `Via` entry, and refusing to connect to the proxy's own
//! listening addresses ([`OwnAddrs`], `508 UF`; see [`loops`]). A malformed request only
//! ever affects its own connection.
//!
//! # What the engine bounds (abuse)
//!
//! | resource | bound | over it |
//! |---|---|---|
//! | connections open at once, over every engine sharing a [`DownstreamConnections`] | `maxDownstreamConnections` (50,000; Envoy's `global_downstream_max_connections`) | accepted and closed at once, counted ([`GuardStats::refused_over_cap`]) |
//! | descriptors or buffers (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` on `accept`) | the process' | the accept loop backs off (10 ms doubling to 640 ms), logs once per 10 s, counts ([`GuardStats::accept_errors`]); connections wait in the kernel's queue and are served once descriptors are free |
//! | a silent connection | `requestHeadersTimeout` to its first byte; ~2 KB of memory (the protocol's state is allocated once its first bytes arrive) | closed |
//! | an idle connection | `streamIdleTimeout` without a byte either way (Envoy's `idle_timeout` is 1 h and counts only connections without streams: this is stricter); ~23 KB each (measured, 10,000 idle, half HTTP/1.1, half h2c) | closed |
//! | HTTP/1.1 read buffer | the head limit + 16 KiB (hyper's default ~400 KiB) | hyper applies back-pressure |
//! | HTTP/2 streams | `http2MaxConcurrentStreams` (`SETTINGS_MAX_CONCURRENT_STREAMS`) | `REFUSED_STREAM` |
//! | HTTP/2 header list | `maxRequestHeadersKb` (`SETTINGS_MAX_HEADER_LIST_SIZE`); HPACK table 4096 | `431`; over 4× (an HPACK bomb): GOAWAY `ENHANCE_YOUR_CALM` (`h2`) |
//! | HTTP/2 CONTINUATION frames per header block (CVE-2024-27316) | what the header list size needs (`h2`) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 streams reset before accepted (CVE-2023-44487) | 20 at once (`h2`) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 streams reset after accepted (rapid reset, Envoy's premature reset) | half of the streams, once 500 were opened ([`h2guard`]) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 streams the server resets for the client's errors | 200 per connection (`h2`) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 PING and SETTINGS | 1000 a second ([`h2guard`]); one acknowledgement pending (`h2` stops reading) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 PRIORITY, WINDOW_UPDATE | 100 per stream opened; 5 + 10 per DATA frame sent or stream opened ([`h2guard`], Envoy's) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 empty or tiny DATA frames | a framing-overhead budget (`h2`) | GOAWAY `ENHANCE_YOUR_CALM` |
//! | HTTP/2 receive buffer | the connection window (1 MiB, hyper's) | flow control |
//!
//! Every GOAWAY with an error is counted by cause ([`GuardStats::goaways`]; mesh-proxy's
//! `mesh_proxy_http2_goaways_total{cause}`); a well-behaved client on another connection is
//! not affected (`e2e/tests/abuse.rs`).
//!
//! # Drain and readiness
//!
//! [`Engine::drain`] stops accepting, sends HTTP/1.1 responses in flight with
//! `Connection: close` (idle keep-alive connections close at once) and GOAWAY on HTTP/2,
//! waits up to `drainTimeout` for in-flight requests, then closes what is left and returns when
//! every worker thread has exited. [`Readiness`] (for the admin's `/ready`) is true while every
//! worker accepts and the engine is not draining.
//!
//! # Differences from Envoy
//!
//! - `streamIdleTimeout` is enforced per downstream connection (no byte either way for that
//!   long closes it), not per stream, and closes rather than answering 408/504. A tunnel
//!   (WebSocket, `CONNECT`) has its own, with the same timeout, as Envoy applies its stream
//!   idle timeout to upgraded streams.
//! - Upgrades: WebSocket and `CONNECT` are always enabled, as Istio configures every HTTP
//!   connection manager (`upgrade_configs: websocket`), not per route; `CONNECT` is always
//!   terminated at the proxy; no extended `CONNECT` towards HTTP/2 upstreams.
//! - `requestHeadersTimeout` runs from the first byte of an HTTP/1.1 head, as Envoy's; it
//!   is checked by a per-connection watchdog (no timer per request), so it fires between 1×
//!   and 1.25× its value. On HTTP/2 it bounds only the wait for the preface.
//! - Loops: Envoy adds `Via` only when its connection manager is configured to, and has no
//!   loop check nor response flag for one; the engine always adds its own entry, refuses a
//!   request that carries it and never connects to its own listeners, answering
//!   `508 Loop Detected` with flag `UF` (why that pair: see [`loops`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

mod coalesce;
mod conn;
mod defer;
#[doc(hidden)]
pub mod fuzzing;
mod h1client;
pub mod h2guard;
mod h2streams;
pub mod headers;
pub mod l4;
mod limits;
mod listener;
pub mod loops;
pub mod pool;
mod reqbody;
mod stack;
mod stats;
pub mod tls;
pub mod upgrade;
pub mod upstream;
mod worker;

pub use h2guard::GoAwayCause;
pub use limits::Limits;
pub use loops::OwnAddrs;
pub use pool::{Pool, PoolKey};
pub use reqbody::{RequestBody, RequestBodyError};
pub use stack::{StackFactory, WorkerContext};
pub use stats::{DownstreamConnections, GuardStats};
pub use upstream::{Connector, ConnectorFuture, EngineResponse, UpstreamBody, UpstreamBodyError};

/// Where and how the engine listens.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address to listen on; port 0 picks a free port (see [`Engine::local_addr`]).
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per available core (as Envoy's `--concurrency`).
    /// Default: 1.
    pub concurrency: usize,
    /// Connection and request limits. Default: [`Limits::default`].
    pub limits: Limits,
    /// The listening addresses of the whole proxy, which the engine's connector never
    /// connects to (a request would loop back into the proxy). The engine adds its own
    /// bound address when it starts and removes it when it stops; give every listener of
    /// one proxy the same set (and add its other listeners, e.g. an admin one) so that none
    /// forwards to another. Default: a set of the engine's own.
    pub own_addrs: OwnAddrs,
    /// Where the workers' connectors originate TLS ([`tls`]). Default: never (plaintext).
    pub upstream_tls: Option<Arc<dyn tls::UpstreamTls>>,
    /// Terminates TLS on every accepted connection ([`tls`]), within the limits'
    /// `tlsHandshakeTimeout`. Default: plaintext (HTTP/1.1 and h2c).
    pub downstream_tls: Option<Arc<dyn tls::DownstreamTls>>,
    /// The open connections [`Limits::max_downstream_connections`] caps: share one between
    /// the engines of a process for a process-wide cap. Default: the engine's own.
    pub connections: DownstreamConnections,
    /// The `server` header of the answers the engine makes itself, before a request reaches
    /// the stack (a malformed request's 400, 431 or 505, a loop's 508, a refused upgrade's
    /// 403): the name the listener's layers give the other answers (Envoy's connection
    /// manager writes it on its codec errors too). Default: none.
    pub server: Option<http::HeaderValue>,
}

/// A running engine: its workers, its address, its drain.
///
/// Dropping it without [`drain`](Engine::drain) stops the workers at once (open connections
/// are closed) without waiting for them.
#[derive(Debug)]
pub struct Engine {
    local_addr: SocketAddr,
    own_addrs: OwnAddrs,
    hop: loops::Hop,
    control: watch::Sender<Phase>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    done: Vec<oneshot::Receiver<()>>,
}

/// An engine's listening sockets, bound and listening but not accepting yet (the kernel
/// queues connections): made by [`Engine::bind`], started by [`BoundEngine::start`].
/// Dropping it closes the sockets.
#[derive(Debug)]
pub struct BoundEngine {
    local_addr: SocketAddr,
    workers: usize,
    listeners: Vec<std::net::TcpListener>,
    limits: Limits,
    own_addrs: OwnAddrs,
    upstream_tls: Option<Arc<dyn tls::UpstreamTls>>,
    downstream_tls: Option<Arc<dyn tls::DownstreamTls>>,
    connections: DownstreamConnections,
    server: Option<http::HeaderValue>,
}

/// The engine's readiness, for an admin `/ready` endpoint: cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<Shared>);

/// What the engine handle and the workers share.
#[derive(Debug)]
pub(crate) struct Shared {
    workers: usize,
    listening: AtomicUsize,
    draining: AtomicBool,
    /// Downstream connections accepted, and open now (every worker's).
    pub(crate) accepted: std::sync::atomic::AtomicU64,
    pub(crate) open: std::sync::atomic::AtomicU64,
    /// The process-wide count the connection cap applies to.
    pub(crate) connections: DownstreamConnections,
    /// What the guards did.
    pub(crate) counters: stats::Counters,
}

/// The engine's phase, watched by every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Draining,
    Stopping,
}

// === impl EngineConfig ===

impl EngineConfig {
    /// One worker listening on `listen`, with the default limits.
    pub fn new(listen: SocketAddr) -> Self {
        EngineConfig {
            listen,
            concurrency: 1,
            limits: Limits::default(),
            own_addrs: OwnAddrs::new(),
            upstream_tls: None,
            downstream_tls: None,
            connections: DownstreamConnections::new(),
            server: None,
        }
    }
}

// === impl BoundEngine ===

impl BoundEngine {
    /// The bound address (with the actual port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many worker threads [`start`](Self::start) runs (one listening socket each).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Starts the workers on the bound sockets and returns once every worker has built its
    /// stack and accepts connections.
    ///
    /// Fails if a worker cannot start (then the workers already started are stopped and
    /// the sockets closed).
    pub fn start<F: StackFactory>(self, factory: Arc<F>) -> io::Result<Engine> {
        let server = self.server.clone();
        self.start_with(move |init: worker::WorkerInit| {
            let hop = init.guard.hop.clone();
            // the worker's pool: its connectors refuse the proxy's own addresses and mark
            // requests with the listener's `Via` entry
            let pool = pool::Pool::with_guard(init.guard);
            let ctx = WorkerContext::new(
                init.index,
                init.workers,
                init.limits.clone(),
                pool,
                init.upstream_tls,
            );
            conn::Worker::new(
                factory,
                ctx,
                init.limits,
                hop,
                init.downstream_tls,
                init.shared,
                server,
            )
        })
    }

    /// Starts the workers in the L4 serving mode ([`l4`]): each accepted connection goes to
    /// the connection handler its worker's [`HandlerFactory`](l4::HandlerFactory) made,
    /// instead of an HTTP server. Accept loop, readiness, drain and the own-address set are
    /// those of [`start`](Self::start); the engine's `downstream_tls` and `upstream_tls` are
    /// not used (an L4 listener forwards bytes as they are).
    pub fn start_l4<H: l4::HandlerFactory>(self, factory: Arc<H>) -> io::Result<Engine> {
        self.start_with(move |init: worker::WorkerInit| l4::L4Worker::new(&*factory, init))
    }

    fn start_with<W, B>(self, build: B) -> io::Result<Engine>
    where
        W: worker::ConnWorker,
        B: FnOnce(worker::WorkerInit) -> W + Send + Clone + 'static,
    {
        let BoundEngine {
            local_addr,
            workers,
            listeners,
            limits,
            own_addrs,
            upstream_tls,
            downstream_tls,
            connections,
            server: _,
        } = self;
        // before any worker forwards: no connector of this proxy connects to it
        own_addrs.add(local_addr);
        let hop = loops::Hop::random();
        let guard = loops::Guard {
            own: own_addrs.clone(),
            hop: hop.clone(),
        };
        let limits = Arc::new(limits);
        let shared = Arc::new(Shared {
            workers,
            listening: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            accepted: std::sync::atomic::AtomicU64::new(0),
            open: std::sync::atomic::AtomicU64::new(0),
            connections,
            counters: stats::Counters::default(),
        });
        let (control, control_rx) = watch::channel(Phase::Running);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let mut engine = Engine {
            local_addr,
            own_addrs,
            hop,
            control,
            shared: shared.clone(),
            threads: Vec::with_capacity(workers),
            done: Vec::with_capacity(workers),
        };
        for (index, listener) in listeners.into_iter().enumerate() {
            let (done_tx, done_rx) = oneshot::channel();
            let spawned = worker::spawn(worker::Spawn {
                index,
                listener,
                build: build.clone(),
                limits: limits.clone(),
                guard: guard.clone(),
                upstream_tls: upstream_tls.clone(),
                downstream_tls: downstream_tls.clone(),
                control: control_rx.clone(),
                shared: shared.clone(),
                started: started_tx.clone(),
                done: done_tx,
            });
            match spawned {
                Ok(handle) => {
                    engine.threads.push(handle);
                    engine.done.push(done_rx);
                }
                Err(e) => {
                    // the sockets not handed out yet close with the iterator
                    engine.shutdown_now();
                    return Err(e);
                }
            }
        }
        drop(started_tx);
        for _ in 0..workers {
            let failed = match started_rx.recv() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => io::Error::other("a worker exited during start-up"),
            };
            // stop the workers that did start and wait for them: their sockets are closed
            // when this returns
            engine.shutdown_now();
            return Err(failed);
        }
        Ok(engine)
    }
}

// === impl Engine ===

impl Engine {
    /// Binds the listening sockets, starts the workers and returns once every worker has built
    /// its stack and accepts connections: [`Engine::bind`] then [`BoundEngine::start`].
    ///
    /// Fails if an address cannot be bound (with [`io::ErrorKind::AddrInUse`] when another
    /// socket, e.g. another process, already listens on it: the engine's own workers share
    /// their port, nobody else may) or a worker cannot start (then the workers already
    /// started are stopped).
    pub fn start<F: StackFactory>(config: EngineConfig, factory: Arc<F>) -> io::Result<Engine> {
        Engine::bind(config)?.start(factory)
    }

    /// Binds the listening sockets (one per worker, `SO_REUSEPORT`) without starting the
    /// workers: the kernel queues connections from now on, and they are served once
    /// [`BoundEngine::start`] runs. Dropping the [`BoundEngine`] closes the sockets.
    ///
    /// Binding every listener of a proxy first, then starting them, means a start-up that
    /// fails on one address leaves none of the others listening.
    ///
    /// Fails with [`io::ErrorKind::AddrInUse`] when another socket already listens on a
    /// non-zero port (another process's `SO_REUSEPORT` group included: it would silently
    /// take a share of the connections).
    pub fn bind(config: EngineConfig) -> io::Result<BoundEngine> {
        let workers = match config.concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (local_addr, listeners) = listener::bind_all(config.listen, workers)?;
        Ok(BoundEngine {
            local_addr,
            workers,
            listeners,
            limits: config.limits,
            own_addrs: config.own_addrs,
            upstream_tls: config.upstream_tls,
            downstream_tls: config.downstream_tls,
            connections: config.connections,
            server: config.server,
        })
    }

    /// The bound address (with the actual port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The pseudonym of this listener's `Via` entries (`mesh-` and 16 random hex digits):
    /// every request it forwards carries `Via: <protocol> <pseudonym>`, and a request that
    /// arrives with it is answered `508 Loop Detected` (flag `UF`) instead of forwarded.
    pub fn via_pseudonym(&self) -> &str {
        self.hop.pseudonym()
    }

    /// How many worker threads run.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Downstream connections accepted since the start, and open now (Envoy's listener
    /// `downstream_cx_total` and `downstream_cx_active`).
    pub fn connections(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::Relaxed),
            self.shared.open.load(Ordering::Relaxed),
        )
    }

    /// What the listener's guards did since the start: connections refused by the cap,
    /// accept errors, HTTP/2 `GOAWAY`s by cause.
    pub fn guards(&self) -> GuardStats {
        self.shared.counters.snapshot()
    }

    /// A handle telling whether the engine is ready to serve.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.shared.clone())
    }

    /// Whether every worker accepts and the engine is not draining.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Drains gracefully and returns when every worker has exited: stops accepting,
    /// closes idle connections, lets in-flight requests finish (HTTP/1.1 responses carry
    /// `Connection: close`, HTTP/2 connections get GOAWAY) for up to `drainTimeout`, then
    /// closes the rest.
    ///
    /// Runs on any tokio runtime (or none: see [`drain_blocking`](Self::drain_blocking)).
    pub async fn drain(mut self) {
        self.begin(Phase::Draining);
        for done in self.done.drain(..) {
            let _ = done.await; // Err: the worker is gone, which is what we wait for
        }
        for t in self.threads.drain(..) {
            let _ = t.join(); // already finished: it signalled `done` as its last act
        }
    }

    /// [`drain`](Self::drain), blocking the calling thread (not for use inside an async task).
    pub fn drain_blocking(mut self) {
        self.begin(Phase::Draining);
        self.done.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops at once: closes every connection without waiting; returns when the workers have
    /// exited (blocking the calling thread).
    pub fn shutdown_now(mut self) {
        self.begin(Phase::Stopping);
        self.done.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn begin(&self, phase: Phase) {
        self.shared.draining.store(true, Ordering::Release);
        self.control.send_if_modified(|p| {
            // Stopping overrides Draining; nothing goes back to Running
            let next = if *p == Phase::Stopping {
                Phase::Stopping
            } else {
                phase
            };
            let changed = *p != next;
            *p = next;
            changed
        });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.begin(Phase::Stopping);
        }
        self.own_addrs.remove(self.local_addr);
    }
}

// === impl Readiness ===

impl Readiness {
    /// Whether every worker accepts and the engine is not draining.
    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    /// The engine's downstream connections: accepted since the start, open now (see
    /// [`Engine::connections`]).
    pub fn connections(&self) -> (u64, u64) {
        (
            self.0.accepted.load(Ordering::Relaxed),
            self.0.open.load(Ordering::Relaxed),
        )
    }

    /// What the engine's guards did (see [`Engine::guards`]).
    pub fn guards(&self) -> GuardStats {
        self.0.counters.snapshot()
    }
}

// === impl Shared ===

impl Shared {
    fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && self.listening.load(Ordering::Acquire) == self.workers
    }
}

//! One downstream connection: protocol detection, hyper's HTTP/1.1 or HTTP/2 server, the
//! listener's request checks, the idle watchdog and drain.
//!
//! Detection peeks at the first bytes: the HTTP/2 client preface (`PRI * HTTP/2.0…`, h2c
//! with prior knowledge) selects HTTP/2, anything else HTTP/1.x. In the rare case where the
//! client sends a proper prefix of the preface and waits, the bytes are read and replayed
//! to the chosen server.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::ResponseFlags;
use mesh_core::body::ReplyBody;
use mesh_core::ext::{ClientAddr, local_reply, slots_mut};
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tower_service::Service;

use crate::Shared;
use crate::defer::DeferredTcp;
use crate::h2guard::H2Guard;
use crate::headers::{HeadScanner, Reject, inspect};
use crate::limits::Limits;
use crate::loops::{Hop, Loop, loop_reply};
use crate::stack::{StackFactory, WorkerContext};
use crate::tls::{Accepts, DownstreamTls, PeerTls, PeerTlsInfo};
use crate::upgrade::{Tunnel, TunnelHandle, Upgrade, splice};

pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The state one worker shares with its connections (all on the worker's thread).
pub(crate) struct Worker<F: StackFactory> {
    stack: RefCell<Slot<F::Service>>,
    h1: http1::Builder,
    h2: http2::Builder<LocalExec>,
    limits: Arc<Limits>,
    max_headers: usize,
    /// The listener's `Via` marker: a request carrying it has looped.
    hop: Hop,
    /// Terminates TLS on accepted connections, when set.
    downstream_tls: Option<Arc<dyn DownstreamTls>>,
    /// The `server` of the answers this worker makes itself ([`Worker::own`]).
    server: Option<HeaderValue>,
    /// Set once drain starts; `drain` wakes the connections.
    draining: Cell<bool>,
    drain: Notify,
    /// Open downstream connections; `all_closed` is notified when it drops to 0.
    active: Cell<usize>,
    all_closed: Notify,
    /// The engine's counters (what the guards did).
    shared: Arc<Shared>,
}

struct Slot<S> {
    service: S,
}

/// Spawns hyper's HTTP/2 stream tasks on the worker's `LocalSet`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

/// The hyper service of one connection: checks, then the worker's stack.
struct ConnService<F: StackFactory> {
    worker: Rc<Worker<F>>,
    conn: Rc<ConnState>,
    /// The client's address, given to every request as [`ClientAddr`].
    peer: ClientAddr,
    /// What the TLS handshake told, when the listener terminates TLS.
    tls: Option<PeerTls>,
}

/// What a connection's socket wrapper and its service share.
#[derive(Default)]
struct ConnState {
    /// Reads and writes so far (for the idle watchdog).
    activity: Cell<u32>,
    /// HTTP/1.x only: the raw framing scan, and how many requests hyper has handed over.
    scan: Option<RefCell<HeadScanner>>,
    dispatched: Cell<u32>,
    /// HTTP/1.x: the first request line has been checked for its version.
    version_checked: Cell<bool>,
    /// HTTP/1.x: the first request named an unsupported version (answered 505).
    bad_version: Cell<bool>,
    /// HTTP/1.x: the upstream half of a tunnel, set when the response that switches
    /// protocols is handed to hyper; spliced with the connection once hyper lets it go.
    tunnel: RefCell<Option<Tunnel>>,
}

/// The response future of one request: the stack's own future (the common case), a clone of
/// the stack still waiting to be ready, or a reply the engine made itself.
#[pin_project(project = EngineFutureProj)]
pub(crate) enum EngineFuture<S: Service<Request<Incoming>, Response = Response<R>>, R> {
    Stack(#[pin] S::Future),
    /// Boxed: the whole stack's services (a kilobyte) would make every request's future,
    /// which hyper moves into its connection, that size (1,088 bytes, 256 for the stack's
    /// future).
    Waiting(Box<(S, Option<Request<Incoming>>)>),
    Local(Option<Response<R>>),
    /// An upgrade or `CONNECT` (boxed: only these pay for it): the response may switch the
    /// connection (or the HTTP/2 stream) to a tunnel.
    Upgrade(Pin<Box<EngineFuture<S, R>>>, Option<Switch>),
}

/// What a response that switches protocols needs to start its tunnel.
pub(crate) struct Switch {
    kind: Upgrade,
    conn: Rc<ConnState>,
    /// HTTP/2: the client's stream, once hyper has sent the `200`.
    h2: Option<OnUpgrade>,
    idle: Duration,
}

/// The downstream socket: replays the bytes read during detection (if any) and counts
/// reads and writes for the idle watchdog.
struct DownIo {
    stream: Down,
    prefix: [u8; 24],
    prefix_pos: u8,
    prefix_len: u8,
    state: Rc<ConnState>,
    /// HTTP/2: the abuse guards ([`crate::h2guard`]) and the counters they report to.
    h2: Option<Box<(H2Guard, Arc<Shared>)>>,
}

/// The accepted socket, plain or with TLS terminated.
enum Down {
    /// Small writes wait for the end of the worker's turn ([`crate::defer`]).
    Tcp(DeferredTcp),
    Tls(Box<tokio_rustls::server::TlsStream<DeferredTcp>>),
}

enum Proto {
    H1,
    H2,
}

/// Decrements the worker's connection count when a connection task ends, however it ends.
struct ConnGuard<F: StackFactory>(Rc<Worker<F>>);

// === impl Worker ===

impl<F: StackFactory> Worker<F> {
    pub(crate) fn new(
        factory: Arc<F>,
        ctx: WorkerContext,
        limits: Arc<Limits>,
        hop: Hop,
        downstream_tls: Option<Arc<dyn DownstreamTls>>,
        shared: Arc<Shared>,
        server: Option<HeaderValue>,
    ) -> Self {
        let head = limits.max_request_head_bytes();
        let mut h1 = http1::Builder::new();
        // `requestHeadersTimeout` is the connection watchdog's (see `drive`): hyper's own
        // header timer costs an allocation and a timer-wheel entry per request.
        h1.header_read_timeout(None)
            .max_header_size(head)
            // the read buffer of a connection: a head at the limit plus a read's worth
            // (hyper's default lets it grow to ~400 KiB)
            .max_buf_size(head.saturating_add(16 * 1024))
            .keep_alive(true);
        let max_headers = limits.max_request_headers_count as usize;
        if max_headers != 100 {
            // hyper's default is 100 on the stack; another value is a heap buffer per request
            h1.max_headers(max_headers);
        }
        let mut h2 = http2::Builder::new(LocalExec);
        // RFC 8441: WebSocket over HTTP/2 streams (extended CONNECT)
        h2.enable_connect_protocol()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
            // HPACK: the decoder's dynamic table is bounded by what we advertise
            .header_table_size(limits.http2_header_table_size)
            // CVE-2023-44487 as `h2` bounds it (the scanner in `h2guard` adds Envoy's
            // premature-reset check for streams reset after they were accepted)
            .max_pending_accept_reset_streams(
                limits.http2_max_pending_accept_reset_streams as usize,
            )
            .max_local_error_reset_streams(limits.http2_max_local_error_reset_streams as usize);
        let service = factory.make(&ctx);
        Worker {
            stack: RefCell::new(Slot { service }),
            h1,
            h2,
            limits,
            max_headers,
            hop,
            downstream_tls,
            server,
            draining: Cell::new(false),
            drain: Notify::new(),
            active: Cell::new(0),
            all_closed: Notify::new(),
            shared,
        }
    }

    /// Starts draining: every connection finishes what it has in flight and closes
    /// (HTTP/1.1 with `Connection: close`, HTTP/2 with GOAWAY).
    pub(crate) fn start_drain(&self) {
        self.draining.set(true);
        self.drain.notify_waiters();
    }

    /// Resolves when no downstream connection is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let mut n = pin!(self.all_closed.notified());
            n.as_mut().enable();
            if self.active.get() == 0 {
                return;
            }
            n.await;
        }
    }

    /// An answer this worker makes itself, with the listener's `server` (when it has one).
    fn own<B>(&self, mut res: Response<B>) -> Response<B> {
        if let Some(server) = &self.server {
            res.headers_mut().insert(header::SERVER, server.clone());
        }
        res
    }

    /// Calls the stack; with a `switch`, the response may start a tunnel.
    fn call(
        &self,
        req: Request<Incoming>,
        switch: Option<Switch>,
    ) -> EngineFuture<F::Service, F::Body> {
        let Ok(mut slot) = self.stack.try_borrow_mut() else {
            // unreachable: `call` does not re-enter; answer rather than panic
            return EngineFuture::Local(Some(self.own(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::LOCAL_RESET,
                "stack busy",
            ))));
        };
        let mut cx = Context::from_waker(Waker::noop());
        match slot.service.poll_ready(&mut cx) {
            // the future built in place (a `let` and a move would copy the whole stack's
            // future on every request)
            Poll::Ready(Ok(())) => match switch {
                None => EngineFuture::Stack(slot.service.call(req)),
                Some(switch) => switching(EngineFuture::Stack(slot.service.call(req)), switch),
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {
                // The service that said Pending may hold a place in a queue (a semaphore
                // permit being acquired): hand it to this request, whose task polls it with
                // a real waker, and keep a fresh clone for the next requests.
                let fresh = slot.service.clone();
                let waiting = std::mem::replace(&mut slot.service, fresh);
                match switch {
                    None => EngineFuture::Waiting(Box::new((waiting, Some(req)))),
                    Some(switch) => switching(
                        EngineFuture::Waiting(Box::new((waiting, Some(req)))),
                        switch,
                    ),
                }
            }
        }
    }
}

impl<F: StackFactory> crate::worker::ConnWorker for Worker<F> {
    fn accept(
        self: &Rc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        open: crate::worker::OpenConnection,
    ) {
        let served = serve(stream, peer, self.clone());
        tokio::task::spawn_local(async move {
            served.await;
            drop(open);
        });
    }

    fn start_drain(&self) {
        Worker::start_drain(self);
    }

    fn all_closed(&self) -> impl Future<Output = ()> + '_ {
        Worker::all_closed(self)
    }
}

/// Serves one accepted downstream connection to its end.
pub(crate) async fn serve<F: StackFactory>(
    stream: TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker<F>>,
) {
    worker.active.set(worker.active.get() + 1);
    let _guard = ConnGuard(worker.clone());
    let _ = stream.set_nodelay(true);
    // A connection that has not sent a byte yet has nothing in flight: on drain it closes at
    // once rather than holding the drain until its first bytes or `requestHeadersTimeout`.
    let mut drain = pin!(worker.drain.notified());
    drain.as_mut().enable();
    if worker.draining.get() {
        return;
    }
    // PERMISSIVE: a connection whose first byte is not a TLS handshake record (0x16) is
    // served as plaintext (Envoy's tls_inspector picking the filter chain)
    let tls_config = match &worker.downstream_tls {
        None => None,
        Some(tls) => match tls.accepts() {
            Accepts::TlsOnly => Some(tls),
            Accepts::PlaintextOnly => None,
            Accepts::TlsOrPlaintext => {
                let first = tokio::select! {
                    f = tokio::time::timeout(worker.limits.request_headers_timeout, first_byte(&stream)) => f,
                    () = drain.as_mut() => return,
                };
                match first {
                    Ok(Ok(b)) if is_tls(b) => Some(tls),
                    Ok(Ok(_)) => None,
                    _ => return,
                }
            }
        },
    };
    let (detected, tls) = match tls_config {
        None => {
            let detected = tokio::select! {
                d = tokio::time::timeout(worker.limits.request_headers_timeout, detect(stream)) => d,
                () = drain.as_mut() => return,
            };
            (detected, None)
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let accepted = tokio::select! {
                // boxed: only TLS connections pay for the handshake's state
                a = tokio::time::timeout(worker.limits.tls_handshake_timeout, Box::pin(acceptor.accept(DeferredTcp::new(stream)))) => a,
                () = drain.as_mut() => return,
            };
            // a stalled or failed handshake closes the connection
            let Ok(Ok(stream)) = accepted else { return };
            let (_, conn) = stream.get_ref();
            let info = PeerTlsInfo {
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                server_name: conn.server_name().map(str::to_string),
                peer_certificates: conn
                    .peer_certificates()
                    .map(<[_]>::to_vec)
                    .unwrap_or_default(),
            };
            let proto = if info.alpn.as_deref() == Some(b"h2") {
                Proto::H2
            } else {
                Proto::H1
            };
            let http1 = matches!(proto, Proto::H1);
            let io = DownIo::new(Down::Tls(Box::new(stream)), [0; 24], 0, http1);
            (Ok(Ok((proto, io))), Some(PeerTls(Arc::new(info))))
        }
    };
    let Ok(Ok((proto, mut io))) = detected else {
        return;
    };
    if matches!(proto, Proto::H2) {
        io.h2 = Some(Box::new((
            H2Guard::new(&worker.limits),
            worker.shared.clone(),
        )));
    }
    // Boxed: a connection waiting for its first bytes holds only this small future; hyper's
    // connection state (kilobytes) is allocated once the protocol is known (measured: 9.8 KB
    // per silent connection before, see `e2e/tests/abuse.rs`).
    Box::pin(serve_http(proto, io, ClientAddr(peer), tls, worker.clone())).await;
}

/// Serves HTTP/1.x or HTTP/2 on a connection whose protocol is known.
async fn serve_http<F: StackFactory>(
    proto: Proto,
    io: DownIo,
    peer: ClientAddr,
    tls: Option<PeerTls>,
    worker: Rc<Worker<F>>,
) {
    let state = io.state.clone();
    let io = TokioIo::new(io);
    let svc = ConnService {
        worker: worker.clone(),
        conn: state.clone(),
        peer,
        tls,
    };
    match proto {
        Proto::H1 => {
            // Not hyper's `with_upgrades` (it needs a `Send` socket, and this one shares its
            // counters with the connection's service through `Rc`/`Cell`): after a switch
            // hyper's connection ends, and its parts (socket, bytes read past the request)
            // are spliced here with the upstream half the response carried.
            let mut conn = worker.h1.serve_connection(io, svc);
            drive(
                &mut conn,
                |c| Pin::new(&mut **c.get_mut()).graceful_shutdown(),
                &worker,
                &state,
            )
            .await;
            let tunnel = state.tunnel.borrow_mut().take();
            if let Some(tunnel) = tunnel {
                if let Some(scan) = &state.scan {
                    scan.borrow_mut().stop();
                }
                let parts = conn.into_parts();
                splice(
                    parts.io.into_inner(),
                    parts.read_buf,
                    tunnel,
                    worker.limits.stream_idle_timeout,
                )
                .await;
            }
        }
        Proto::H2 => {
            let conn = worker.h2.serve_connection(io, svc);
            drive(conn, |c| c.graceful_shutdown(), &worker, &state).await
        }
    }
}

/// The content type of a TLS handshake record: the first byte of every ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

/// The first byte of a connection, without consuming it.
async fn first_byte(stream: &TcpStream) -> io::Result<u8> {
    let mut b = [0u8; 1];
    match stream.peek(&mut b).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(b[0]),
    }
}

/// A plaintext connection, `len` bytes of `buf` read during detection (to replay).
fn plain(stream: TcpStream, buf: [u8; 24], len: usize, proto: Proto) -> (Proto, DownIo) {
    let http1 = matches!(proto, Proto::H1);
    let io = DownIo::new(Down::Tcp(DeferredTcp::new(stream)), buf, len, http1);
    (proto, io)
}

/// Tells HTTP/2 (client preface) from HTTP/1.x by the first bytes.
async fn detect(mut stream: TcpStream) -> io::Result<(Proto, DownIo)> {
    let mut buf = [0u8; 24];
    let n = stream.peek(&mut buf).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    match sniff(&buf[..n]) {
        Sniffed::H1 => return Ok(plain(stream, buf, 0, Proto::H1)),
        Sniffed::H2 => return Ok(plain(stream, buf, 0, Proto::H2)),
        Sniffed::NeedMore => {}
    }
    // A proper prefix of the preface so far: read (and later replay) until it is decided.
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        match sniff(&buf[..len]) {
            Sniffed::H1 => return Ok(plain(stream, buf, len, Proto::H1)),
            Sniffed::H2 => return Ok(plain(stream, buf, len, Proto::H2)),
            Sniffed::NeedMore => {}
        }
    }
}

/// What a plaintext connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// Anything that is not the HTTP/2 preface: HTTP/1.x.
    H1,
    /// The HTTP/2 client preface (h2c with prior knowledge).
    H2,
    /// A proper prefix of the preface (or nothing): more bytes decide.
    NeedMore,
}

/// Tells HTTP/2 (the 24-byte client preface) from HTTP/1.x by the first bytes of a
/// connection: HTTP/2 once all 24 match, HTTP/1.x at the first byte that differs.
pub(crate) fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Sniffed::H1
    } else if n == H2_PREFACE.len() {
        Sniffed::H2
    } else {
        Sniffed::NeedMore
    }
}

/// PERMISSIVE: whether a connection whose first byte is `first` starts a TLS handshake
/// (Envoy's `tls_inspector`: a TLS record of type handshake, 0x16) rather than plaintext.
pub(crate) fn is_tls(first: u8) -> bool {
    first == TLS_HANDSHAKE
}

/// Polls a hyper connection to its end, starting its graceful shutdown on drain, and closing
/// it when no byte moved for `streamIdleTimeout` or a request head took longer than
/// `requestHeadersTimeout` from its first byte.
///
/// One timer per connection, re-armed every quarter of the shorter timeout (not per request):
/// a timeout fires between 1× and 1.25× its value.
async fn drive<F, C, G>(conn: C, graceful: G, worker: &Worker<F>, state: &ConnState)
where
    F: StackFactory,
    C: Future,
    G: Fn(Pin<&mut C>),
{
    let mut conn = pin!(conn);
    let mut drain = pin!(worker.drain.notified());
    drain.as_mut().enable();
    let mut draining = worker.draining.get();
    if draining {
        graceful(conn.as_mut());
    }
    let limits = &worker.limits;
    let period = (limits
        .stream_idle_timeout
        .min(limits.request_headers_timeout)
        / 4)
    .max(Duration::from_millis(1));
    let ticks_for = |t: Duration| (t.as_nanos().div_ceil(period.as_nanos())).max(1);
    let (idle_ticks, head_ticks) = (
        ticks_for(limits.stream_idle_timeout),
        ticks_for(limits.request_headers_timeout),
    );
    let mut tick = pin!(tokio::time::sleep(period));
    let (mut seen, mut quiet) = (state.activity.get(), 0u128);
    // consecutive ticks that saw the same head still incomplete, and which head
    let (mut slow_head, mut head_no) = (0u128, 0u32);
    // The drain and the tick are polled once to register the task's waker with them, and
    // after that only when they have something to say (the worker is draining, the tick's
    // deadline has passed), not at each of the connection's wake-ups: a poll of the
    // `Notified` takes the `Notify`'s lock, a poll of the `Sleep` re-registers the waker
    // (callgrind.py: about 400 instructions per proxied request for the two). Not
    // `select!` with preconditions: those are read once per `select!`, not at each poll.
    if !draining && !pending_once(drain.as_mut()).await {
        draining = true;
        graceful(conn.as_mut());
    }
    let mut tick_armed = pending_once(tick.as_mut()).await;
    loop {
        let event = std::future::poll_fn(|cx| {
            if conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Done);
            }
            if !draining && worker.draining.get() && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if (!tick_armed || tick.is_elapsed()) && tick.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done => return,
            Event::Drain => {
                draining = true;
                graceful(conn.as_mut());
            }
            Event::Tick => {
                let now = state.activity.get();
                if now == seen {
                    quiet += 1;
                    if quiet >= idle_ticks {
                        return; // idle for the whole timeout: drop (close) the connection
                    }
                } else {
                    (seen, quiet) = (now, 0);
                }
                if let Some(scan) = &state.scan {
                    let scan = scan.borrow();
                    if scan.reading_head() && (slow_head == 0 || scan.heads() == head_no) {
                        head_no = scan.heads();
                        slow_head += 1;
                        // first seen up to one period after it began: one more tick
                        if slow_head > head_ticks {
                            return;
                        }
                    } else {
                        slow_head = 0;
                    }
                }
                tick.as_mut().reset(tokio::time::Instant::now() + period);
                tick_armed = pending_once(tick.as_mut()).await;
            }
        }
    }
}

/// What woke [`drive`]'s connection.
enum Event {
    /// The connection ended.
    Done,
    /// The worker started draining.
    Drain,
    /// The idle tick's deadline passed.
    Tick,
}

/// Polls `f` once with the task's context, registering the task's waker with it: whether it
/// is still pending. Outside tokio's cooperative budget: a `Sleep` polled on an exhausted
/// budget would answer pending without registering the waker.
fn pending_once<F: Future + ?Sized>(mut f: Pin<&mut F>) -> impl Future<Output = bool> + '_ {
    tokio::task::unconstrained(std::future::poll_fn(move |cx| {
        Poll::Ready(f.as_mut().poll(cx).is_pending())
    }))
}

fn reject_reply<R: ReplyBody>(r: Reject) -> Response<R> {
    let (status, text) = match r {
        Reject::MissingHost => (StatusCode::BAD_REQUEST, "missing Host header"),
        Reject::DuplicateHost => (StatusCode::BAD_REQUEST, "more than one Host"),
        Reject::UserinfoInAuthority => (StatusCode::BAD_REQUEST, "userinfo in the authority"),
        Reject::InvalidHost => (StatusCode::BAD_REQUEST, "invalid Host header"),
        Reject::ContentLengthWithTransferEncoding => (
            StatusCode::BAD_REQUEST,
            "Content-Length with Transfer-Encoding",
        ),
        Reject::DuplicateContentLength => (StatusCode::BAD_REQUEST, "duplicate Content-Length"),
        Reject::TooManyHeaders => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
        ),
        Reject::UnsupportedVersion => (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "HTTP version not supported",
        ),
    };
    let mut res = local_reply(status, ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, text);
    // the rest of the connection can no longer be trusted (HTTP/1.1; ignored on HTTP/2)
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// RFC 9112 §3.2.2: a request whose target has an authority (absolute-form, HTTP/2's
/// `:authority`) is about that authority, whatever its `Host` says; `Host` becomes the
/// target's authority, so that routing, policy and the upstream all see one authority.
/// Returns false if the authority is not a valid field value (it always is once parsed).
fn authority_to_host<B>(req: &mut Request<B>) -> bool {
    let Some(v) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    else {
        return false;
    };
    req.headers_mut().insert(header::HOST, v);
    true
}

// === impl ConnService ===

impl<F: StackFactory> hyper::service::Service<Request<Incoming>> for ConnService<F> {
    type Response = Response<F::Body>;
    type Error = Infallible;
    type Future = EngineFuture<F::Service, F::Body>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(scan) = &self.conn.scan {
            let n = self.conn.dispatched.get().wrapping_add(1);
            self.conn.dispatched.set(n);
            if n == 1 && self.conn.bad_version.get() {
                return EngineFuture::Local(Some(
                    self.worker.own(reject_reply(Reject::UnsupportedVersion)),
                ));
            }
            if let Some(r) = scan.borrow().verdict(n) {
                return EngineFuture::Local(Some(self.worker.own(reject_reply(r))));
            }
        }
        let seen = match inspect(&req, self.worker.max_headers) {
            Ok(seen) => seen,
            Err(r) => return EngineFuture::Local(Some(self.worker.own(reject_reply(r)))),
        };
        if seen.host_differs && !authority_to_host(&mut req) {
            return EngineFuture::Local(Some(self.worker.own(reject_reply(Reject::InvalidHost))));
        }
        if seen.via && self.worker.hop.seen_in(req.headers()) {
            return EngineFuture::Local(Some(self.worker.own(loop_reply(Loop::Via))));
        }
        // hyper flags upgrade requests (and CONNECT) with `OnUpgrade`: one branch for the rest
        let switch =
            if req.extensions().get::<OnUpgrade>().is_some() || req.method() == Method::CONNECT {
                match self.upgrade(&mut req) {
                    Ok(switch) => switch,
                    Err(refused) => return EngineFuture::Local(Some(self.worker.own(refused))),
                }
            } else {
                None
            };
        // for `consistentHash.useSourceIp`, and later access logs and `remoteIpBlocks`
        slots_mut(req.extensions_mut()).client = Some(self.peer);
        if let Some(tls) = &self.tls {
            req.extensions_mut().insert(tls.clone());
        }
        // the one call site of the worker's stack, so that it stays inlined here (callgrind:
        // with a second one in the upgrade path it was not, and building the future here
        // then moving it copied the whole stack's future on every request)
        self.worker.call(req, switch)
    }
}

/// The response future of a request that may switch protocols (boxed: only these pay).
#[cold]
#[inline(never)]
fn switching<S, R>(fut: EngineFuture<S, R>, switch: Switch) -> EngineFuture<S, R>
where
    S: Service<Request<Incoming>, Response = Response<R>>,
{
    EngineFuture::Upgrade(Box::pin(fut), Some(switch))
}

impl<F: StackFactory> ConnService<F> {
    /// A request that asks to switch protocols or to tunnel: marked with its [`Upgrade`] for
    /// the connector when it is one the mesh forwards (WebSocket, `CONNECT`), refused with
    /// `403` (Envoy's `upgrade_failed`) when it is another, left a plain request when it is
    /// none (`h2c`, `Upgrade` without `Connection: upgrade`: `Upgrade` is then removed).
    ///
    /// `Ok(Some)`: the request is marked, and its response may start a tunnel;
    /// `Err`: the refusal to answer.
    #[cold]
    #[inline(never)]
    fn upgrade(&self, req: &mut Request<Incoming>) -> Result<Option<Switch>, Response<F::Body>> {
        let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
        let kind = match classify(req) {
            Ok(Some(kind)) => kind,
            Ok(None) => return Ok(None),
            Err(()) => {
                // Envoy: 403, details `upgrade_failed`, and the connection is closed (the
                // client may already be sending the other protocol)
                let mut res = local_reply(
                    StatusCode::FORBIDDEN,
                    ResponseFlags::empty(),
                    "upgrade_failed",
                );
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(res);
            }
        };
        req.extensions_mut().insert(kind);
        let h2 = req.version() == http::Version::HTTP_2;
        Ok(Some(Switch {
            kind,
            conn: self.conn.clone(),
            h2: if h2 { on_upgrade } else { None },
            idle: self.worker.limits.stream_idle_timeout,
        }))
    }
}

/// The upgrade a request asks for: `Ok(None)` for none the mesh acts on, `Err` for one it
/// refuses. WebSocket as Envoy recognises it (`Utility::isUpgrade`: an `Upgrade` field and
/// `upgrade` among the `Connection` options; the type compared without case).
fn classify<B>(req: &Request<B>) -> Result<Option<Upgrade>, ()> {
    let h = req.headers();
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<hyper::ext::Protocol>() {
            None => Ok(Some(Upgrade::Connect)),
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {
                Ok(Some(Upgrade::ExtendedConnect))
            }
            Some(_) => Err(()),
        };
    }
    // one pass over the fields (cold: only requests hyper flagged come here)
    let (mut asked, mut kind) = (false, None);
    for (name, value) in h {
        if name == header::CONNECTION {
            asked |= crate::headers::connection_tokens(value.as_bytes())
                .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        } else if name == header::UPGRADE && kind.is_none() {
            kind = Some(value);
        }
    }
    let Some(kind) = kind.filter(|_| asked) else {
        return Ok(None);
    };
    let kind = kind.as_bytes().trim_ascii();
    if kind.eq_ignore_ascii_case(b"websocket") {
        Ok(Some(Upgrade::WebSocket))
    } else if kind.eq_ignore_ascii_case(b"h2c") {
        Ok(None)
    } else {
        Err(())
    }
}

// === impl EngineFuture ===

impl<S, R> Future for EngineFuture<S, R>
where
    S: Service<Request<Incoming>, Response = Response<R>, Error = Infallible>,
{
    type Output = Result<Response<R>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                EngineFutureProj::Stack(f) => return f.poll(cx),
                EngineFutureProj::Local(res) => {
                    return match res.take() {
                        Some(res) => Poll::Ready(Ok(res)),
                        None => Poll::Pending,
                    };
                }
                EngineFutureProj::Upgrade(inner, switch) => {
                    let mut res = ready!(inner.as_mut().poll(cx))?;
                    if let Some(switch) = switch.take() {
                        switch.start(&mut res);
                    }
                    return Poll::Ready(Ok(res));
                }
                EngineFutureProj::Waiting(waiting) => {
                    let (svc, req) = &mut **waiting;
                    match svc.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Ready(Ok(())) => {}
                    }
                    match req.take() {
                        Some(req) => EngineFuture::Stack(svc.call(req)),
                        None => return Poll::Pending,
                    }
                }
            };
            self.set(next);
        }
    }
}

// === impl Switch ===

impl Switch {
    /// Starts the tunnel when the response switches protocols (`101` to a WebSocket upgrade,
    /// `2xx` to a `CONNECT`) and carries the upstream half; otherwise the upstream half, if
    /// any, is dropped (closed) and the response is an ordinary one.
    fn start<R>(self, res: &mut Response<R>) {
        let Some(handle) = res.extensions_mut().remove::<TunnelHandle>() else {
            return;
        };
        let switches = match self.kind {
            Upgrade::WebSocket => res.status() == StatusCode::SWITCHING_PROTOCOLS,
            _ => res.status().is_success(),
        };
        let Some(tunnel) = handle.take().filter(|_| switches) else {
            return;
        };
        match self.h2 {
            // HTTP/1.1: spliced by the connection's task once hyper has written the head
            None => *self.conn.tunnel.borrow_mut() = Some(tunnel),
            Some(on_upgrade) => {
                let idle = self.idle;
                tokio::task::spawn_local(async move {
                    if let Ok(stream) = on_upgrade.await {
                        splice(TokioIo::new(stream), bytes::Bytes::new(), tunnel, idle).await;
                    }
                });
            }
        }
    }
}

// === impl LocalExec ===

impl<Fut> hyper::rt::Executor<Fut> for LocalExec
where
    Fut: Future + 'static,
    Fut::Output: 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn_local(fut);
    }
}

// === impl ConnGuard ===

impl<F: StackFactory> Drop for ConnGuard<F> {
    fn drop(&mut self) {
        let n = self.0.active.get().saturating_sub(1);
        self.0.active.set(n);
        if n == 0 {
            self.0.all_closed.notify_waiters();
        }
    }
}

// === impl DownIo ===

impl DownIo {
    fn new(stream: Down, prefix: [u8; 24], len: usize, http1: bool) -> Self {
        DownIo {
            stream,
            prefix,
            prefix_pos: 0,
            // `len` ≤ 24 by construction
            prefix_len: u8::try_from(len).unwrap_or(0),
            state: Rc::new(ConnState {
                scan: http1.then(RefCell::default),
                ..ConnState::default()
            }),
            h2: None,
        }
    }

    #[inline]
    fn bump(&self) {
        let a = &self.state.activity;
        a.set(a.get().wrapping_add(1));
    }

    /// The first request line of an HTTP/1.x connection: an unsupported version is
    /// rewritten for hyper and remembered, so the request is answered 505, not 400.
    #[inline]
    fn check_version(&self, bytes: &mut [u8]) {
        if self.state.scan.is_none() || self.state.version_checked.get() {
            return;
        }
        if let Some(bad) = crate::headers::unsupported_version(bytes) {
            self.state.version_checked.set(true);
            self.state.bad_version.set(bad);
        }
    }

    /// Bytes the client sent, on their way to hyper. False when they trip an HTTP/2 guard:
    /// they are then not handed over, and the connection closes with a GOAWAY.
    #[inline]
    fn received(&mut self, bytes: &[u8]) -> bool {
        self.bump();
        if let Some(scan) = &self.state.scan {
            scan.borrow_mut().feed(bytes);
        }
        if let Some(h2) = &mut self.h2
            && let Some(cause) = h2.0.received(bytes)
        {
            h2.1.counters.goaway(cause);
            tracing::debug!(
                cause = cause.as_str(),
                "HTTP/2 connection closed: GOAWAY ENHANCE_YOUR_CALM"
            );
            return false;
        }
        true
    }

    /// Bytes hyper wrote (HTTP/2: the guards find frame boundaries and count DATA frames).
    #[inline]
    fn sent(&mut self, bytes: &[u8]) {
        if let Some(h2) = &mut self.h2 {
            h2.0.sent(bytes);
            if let Some(cause) = h2.0.h2_goaway.take() {
                h2.1.counters.goaway(cause);
            }
        }
    }

    /// After a guard tripped: waits for hyper to finish the frame it is writing, writes the
    /// guard's GOAWAY, then reports end of input (hyper then closes the connection).
    #[cold]
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(h2) = &mut self.h2 else {
            return Poll::Ready(Ok(()));
        };
        let guard = &mut h2.0;
        if usize::from(guard.goaway_pos) < guard.goaway.len() && !guard.may_write_goaway() {
            guard.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        while usize::from(guard.goaway_pos) < guard.goaway.len() {
            let rest = &guard.goaway[usize::from(guard.goaway_pos)..];
            let n = match &mut self.stream {
                Down::Tcp(s) => ready!(Pin::new(s).poll_write(cx, rest))?,
                Down::Tls(s) => ready!(Pin::new(&mut **s).poll_write(cx, rest))?,
            };
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            guard.goaway_pos += n as u8;
        }
        match &mut self.stream {
            Down::Tcp(s) => ready!(Pin::new(s).poll_flush(cx))?,
            Down::Tls(s) => ready!(Pin::new(&mut **s).poll_flush(cx))?,
        }
        Poll::Ready(Ok(()))
    }

    /// Whether a guard's GOAWAY is out: what hyper writes after it is dropped.
    #[inline]
    fn closed_by_guard(&self) -> bool {
        self.h2
            .as_ref()
            .is_some_and(|h2| usize::from(h2.0.goaway_pos) == h2.0.goaway.len())
    }
}

impl AsyncRead for DownIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.h2.as_ref().is_some_and(|h2| h2.0.tripped.is_some()) {
            return this.poll_goaway(cx);
        }
        if this.prefix_pos < this.prefix_len {
            let (pos, len) = (this.prefix_pos as usize, this.prefix_len as usize);
            let n = buf.remaining().min(len - pos);
            let start = buf.filled().len();
            buf.put_slice(&this.prefix[pos..pos + n]);
            this.check_version(&mut buf.filled_mut()[start..]);
            this.prefix_pos += n as u8;
            if !this.received(&buf.filled()[start..]) {
                buf.set_filled(start);
                return this.poll_goaway(cx);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = match &mut this.stream {
            Down::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Down::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        };
        if buf.filled().len() != before {
            this.check_version(&mut buf.filled_mut()[before..]);
            // `received` needs `&mut self` and the bytes: the bytes are in `buf`, not `this`
            let tripped = {
                let filled = &buf.filled()[before..];
                !this.received(filled)
            };
            if tripped {
                buf.set_filled(before);
                return this.poll_goaway(cx);
            }
        }
        res
    }
}

impl AsyncWrite for DownIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed_by_guard() {
            return Poll::Ready(Ok(buf.len()));
        }
        let res = match &mut this.stream {
            Down::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Down::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            this.bump();
            this.sent(&buf[..n.min(buf.len())]);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed_by_guard() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let res = match &mut this.stream {
            // deferred to the end of the turn, or (large) one `send` or `writev`
            Down::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Down::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            this.bump();
            if this.h2.is_some() {
                let mut left = n;
                for b in bufs {
                    if left == 0 {
                        break;
                    }
                    let k = left.min(b.len());
                    this.sent(&b[..k]);
                    left -= k;
                }
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Down::Tcp(s) => s.is_write_vectored(),
            Down::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Down::Tcp(s) => Pin::new(s).poll_flush(cx),
            Down::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Down::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Down::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack whose services weigh a kilobyte and whose future is small.
    #[derive(Clone)]
    struct Heavy(#[allow(dead_code, reason = "its size is the point")] [u8; 1024]);

    impl Service<Request<Incoming>> for Heavy {
        type Response = Response<mesh_core::MeshBody<http_body_util::Empty<bytes::Bytes>>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Incoming>) -> Self::Future {
            std::future::ready(Ok(Response::new(mesh_core::MeshBody::inner(
                http_body_util::Empty::new(),
            ))))
        }
    }

    /// hyper moves each request's future into its connection: the stack's services, held
    /// only while a stack waits to be ready, are not part of its size.
    #[test]
    fn a_request_s_future_does_not_hold_the_stack_s_services() {
        type Body = mesh_core::MeshBody<http_body_util::Empty<bytes::Bytes>>;
        let size = std::mem::size_of::<EngineFuture<Heavy, Body>>();
        assert!(size < 512, "{size} bytes");
    }
}

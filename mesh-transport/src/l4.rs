//! The L4 serving mode: the engine's workers, accept loop, readiness, drain and own-address
//! set, with each accepted connection handed to a connection handler instead of an HTTP
//! server. `mesh-proxy` serves its `outboundPorts` (Istio's TCP and TLS routes) with it; a
//! custom proxy brings its own handler.
//!
//! ```text
//!             ┌ worker 0: accept ─► handler₀.serve(conn) ─► pick ─► connect ─► splice ─► upstream
//!  :15432 ────┤ worker 1: accept ─► handler₁.serve(conn) ─► …
//!             └ …
//! ```
//!
//! The pieces a handler is usually made of are here too:
//!
//! - [`connect`]: a TCP connection with a connect timeout, the cluster's TCP keep-alive, and
//!   the proxy's own listening addresses refused (a connection to itself would loop);
//! - [`client_hello_sni`]: the SNI of a TLS ClientHello read from the first bytes, without
//!   terminating TLS (Envoy's `tls_inspector`): the handler reads those bytes, decides, and
//!   forwards them untouched ([`splice`]'s `early`);
//! - [`splice`]: both directions copied until both have ended (each half-closed as its
//!   source ends), an error, or [`SpliceConfig::idle`] without a byte either way (Istio's TCP
//!   `idleTimeout`, 1 h by default); byte counts kept in the task (no atomics per chunk) and
//!   reported every [`SpliceConfig::report_every`] and at the end.
//!
//! # Example
//!
//! A TCP proxy to one upstream:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mesh_transport::l4::{self, Accepted, L4WorkerContext, SpliceConfig};
//! use mesh_transport::{Engine, EngineConfig};
//!
//! let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
//! let factory = Arc::new(move |ctx: &L4WorkerContext| {
//!     let own = ctx.own_addrs().clone();
//!     let timeout = ctx.limits().connect_timeout;
//!     move |conn: Accepted| {
//!         let own = own.clone();
//!         async move {
//!             let Ok(up) = l4::connect(upstream, timeout, None, &own).await else { return };
//!             let cfg = SpliceConfig::new(Duration::from_secs(3600));
//!             l4::splice(conn.stream, up, &[], &cfg, |_, _| {}).await;
//!         }
//!     }
//! });
//! let bound = Engine::bind(EngineConfig::new("127.0.0.1:0".parse().unwrap())).unwrap();
//! let engine = bound.start_l4(factory).unwrap();
//! assert!(engine.is_ready());
//! engine.drain_blocking();
//! ```
//!
//! # Drain
//!
//! On drain the workers stop accepting; open connections keep flowing until they end or
//! `drainTimeout` passes, then they are closed (Envoy's TCP proxy has no protocol-level way
//! to ask a client to go away either).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::limits::Limits;
use crate::loops::OwnAddrs;
use crate::worker::{ConnWorker, OpenConnection, WorkerInit};

/// Serves the connections of one worker (made once per worker by a [`HandlerFactory`]).
///
/// Implemented for every `Fn(Accepted) -> Fut + 'static` with `Fut: Future<Output = ()>`.
/// Like an HTTP stack, a handler lives on its worker's thread only: it may hold `Rc`s and
/// `Cell`s, and its futures need not be `Send`.
pub trait ConnectionHandler: 'static {
    /// The future serving one connection to its end.
    type Future: Future<Output = ()> + 'static;

    /// Serves `conn`; the connection is closed when the future ends (or is dropped, at the
    /// end of a drain).
    fn serve(&self, conn: Accepted) -> Self::Future;
}

/// Builds one worker's [`ConnectionHandler`]: the L4 counterpart of
/// [`StackFactory`](crate::StackFactory).
///
/// Implemented for every `Fn(&L4WorkerContext) -> H + Send + Sync + 'static`.
pub trait HandlerFactory: Send + Sync + 'static {
    /// The handler a worker runs.
    type Handler: ConnectionHandler;

    /// Builds the handler of one worker; called once, on that worker's thread.
    fn make(&self, ctx: &L4WorkerContext) -> Self::Handler;
}

/// An accepted downstream connection.
#[derive(Debug)]
pub struct Accepted {
    /// The connection (`TCP_NODELAY` set).
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to (the listener's, or the original destination
    /// under a redirect).
    pub local: SocketAddr,
}

/// What a worker tells the handler factory about itself.
#[derive(Debug, Clone)]
pub struct L4WorkerContext {
    index: usize,
    workers: usize,
    limits: Arc<Limits>,
    own: OwnAddrs,
}

/// How [`splice`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceConfig {
    /// No byte in either direction for this long closes both connections (Istio's TCP
    /// `idleTimeout`; its default is 1 h). Checked at a quarter of the period (capped by
    /// `report_every`), so the close happens between 1× and 1.25× the timeout.
    pub idle: Duration,
    /// How often the byte counts moved since the last report are handed to the reporter
    /// while the connection is open (Istio's `tcp_reporting_duration`, 5 s by default; zero:
    /// never, as Istio's stats filter then arms no timer); they are also reported once at
    /// the end. Default: 5 s.
    pub report_every: Duration,
}

/// How a [`splice`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes read from the downstream connection and written upstream (Envoy's
    /// `received` of the downstream connection).
    pub received: u64,
    /// Bytes read from the upstream connection and written downstream.
    pub sent: u64,
    /// Why it ended.
    pub end: SpliceEnd,
}

/// Why a [`splice`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpliceEnd {
    /// Both directions ended (each side half-closed its sending direction).
    Closed,
    /// A read or write failed (a reset, usually).
    Error,
    /// Nothing moved for [`SpliceConfig::idle`].
    Idle,
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address is one of the proxy's own listeners: the connection would loop.
    #[error("{0} is one of this proxy's listeners (a loop)")]
    Loop(SocketAddr),
    /// No connection within the connect timeout.
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    /// The connection was refused or failed.
    #[error("connect to {addr}: {source}")]
    Io {
        /// Where to.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

/// What [`client_hello_sni`] found in the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHello<'a> {
    /// A complete ClientHello with this server name (ASCII, as sent).
    Sni(&'a str),
    /// A complete ClientHello without a server name.
    NoSni,
    /// The bytes so far are the beginning of a ClientHello: read more.
    Incomplete,
    /// Not a TLS ClientHello (plaintext, or malformed).
    NotTls,
}

/// The most bytes [`client_hello_sni`] needs (a ClientHello split over records is read up to
/// this; Envoy's `tls_inspector` reads up to 64 KiB as well).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// One worker of an L4 engine.
pub(crate) struct L4Worker<H> {
    handler: H,
    active: Cell<usize>,
    all_closed: Notify,
}

/// Counts the bytes read through a connection (in the task: no atomics).
struct Counted<'a, T> {
    inner: T,
    read: &'a Cell<u64>,
}

// === impl L4WorkerContext ===

impl L4WorkerContext {
    /// This worker's index, `0..workers()`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many workers the engine runs.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The engine's limits (`connectTimeout`, `drainTimeout`).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The proxy's listening addresses, which [`connect`] refuses.
    pub fn own_addrs(&self) -> &OwnAddrs {
        &self.own
    }
}

// === impl L4Worker ===

impl<H: ConnectionHandler> L4Worker<H> {
    pub(crate) fn new<F: HandlerFactory<Handler = H>>(factory: &F, init: WorkerInit) -> Self {
        let ctx = L4WorkerContext {
            index: init.index,
            workers: init.workers,
            limits: init.limits,
            own: init.guard.own,
        };
        L4Worker {
            handler: factory.make(&ctx),
            active: Cell::new(0),
            all_closed: Notify::new(),
        }
    }
}

impl<H: ConnectionHandler> ConnWorker for L4Worker<H> {
    fn accept(self: &Rc<Self>, stream: TcpStream, peer: SocketAddr, open: OpenConnection) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let served = self.handler.serve(Accepted {
            stream,
            peer,
            local,
        });
        self.active.set(self.active.get() + 1);
        let worker = self.clone();
        tokio::task::spawn_local(async move {
            served.await;
            drop(open);
            worker.active.set(worker.active.get() - 1);
            if worker.active.get() == 0 {
                worker.all_closed.notify_waiters();
            }
        });
    }

    fn start_drain(&self) {}

    async fn all_closed(&self) {
        loop {
            let mut n = pin!(self.all_closed.notified());
            n.as_mut().enable();
            if self.active.get() == 0 {
                return;
            }
            n.await;
        }
    }
}

// === impl HandlerFactory / ConnectionHandler for closures ===

impl<F, H> HandlerFactory for F
where
    F: Fn(&L4WorkerContext) -> H + Send + Sync + 'static,
    H: ConnectionHandler,
{
    type Handler = H;

    fn make(&self, ctx: &L4WorkerContext) -> H {
        self(ctx)
    }
}

impl<F, Fut> ConnectionHandler for F
where
    F: Fn(Accepted) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    type Future = Fut;

    fn serve(&self, conn: Accepted) -> Fut {
        self(conn)
    }
}

// === impl SpliceConfig ===

impl SpliceConfig {
    /// `idle` as the idle timeout, reports every 5 s (Istio's default).
    pub fn new(idle: Duration) -> Self {
        SpliceConfig {
            idle,
            report_every: mesh_core::telemetry::TCP_REPORTING_INTERVAL,
        }
    }
}

impl Default for SpliceConfig {
    /// Istio's TCP defaults: 1 h idle timeout, reports every 5 s.
    fn default() -> Self {
        SpliceConfig::new(Duration::from_secs(3600))
    }
}

// === connect ===

/// Connects to `addr` within `timeout`, with TCP keep-alive when `keepalive` is set
/// (`connectionPool.tcp.tcpKeepalive`) and `TCP_NODELAY`; refuses an address of `own`
/// (the proxy's own listeners) without connecting.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<mesh_core::ext::TcpKeepalive>,
    own: &OwnAddrs,
) -> Result<TcpStream, ConnectError> {
    if own.reaches(addr) {
        return Err(ConnectError::Loop(addr));
    }
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout(addr)),
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            crate::upstream::apply_keepalive(&stream, keepalive);
            Ok(stream)
        }
    }
}

// === splice ===

/// The buffer of each direction of a spliced connection: 16 KiB, HAProxy's `bufsize` (tokio's
/// default of 8 KiB took twice the reads and writes per byte: `benches/load/tcp.py` measured
/// 1.9 s of CPU per GB against HAProxy's 1.0).
pub const SPLICE_BUF: usize = 16 * 1024;

/// Splices `down` and `up` both ways, after writing `early` (bytes already read from `down`,
/// such as a peeked ClientHello) to `up`: until both directions have ended (each direction
/// is half-closed as its source ends), either side fails, or nothing moved for
/// [`SpliceConfig::idle`]. `report(received, sent)` gets the bytes moved since its last call
/// every [`SpliceConfig::report_every`] (when any moved) and once at the end; the result has
/// the totals. Dropping the connections at the end closes them.
///
/// Two [`SPLICE_BUF`] buffers per connection (tokio's `copy_bidirectional_with_sizes`);
/// nothing is allocated per chunk, and the byte counts are plain cells of the task.
pub async fn splice<D, U, R>(
    down: D,
    mut up: U,
    early: &[u8],
    config: &SpliceConfig,
    mut report: R,
) -> Spliced
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    R: FnMut(u64, u64),
{
    let received = Cell::new(0u64);
    let sent = Cell::new(0u64);
    if !early.is_empty() {
        if up.write_all(early).await.is_err() {
            report(0, 0);
            return Spliced {
                received: 0,
                sent: 0,
                end: SpliceEnd::Error,
            };
        }
        received.set(early.len() as u64);
    }
    let mut down = Counted {
        inner: down,
        read: &received,
    };
    let mut up = Counted {
        inner: up,
        read: &sent,
    };
    let idle = config.idle.max(Duration::from_millis(1));
    // one timer for the connection, re-armed every period: the idle check and the reports
    // (none while open when `report_every` is zero)
    let report_every = Some(config.report_every).filter(|r| !r.is_zero());
    let period = (idle / 4)
        .min(report_every.unwrap_or(Duration::MAX))
        .max(Duration::from_millis(1));
    let idle_ticks = idle.as_nanos().div_ceil(period.as_nanos()).max(1);
    let report_ticks = report_every.map_or(u128::MAX, |r| {
        r.as_nanos().div_ceil(period.as_nanos()).max(1)
    });
    let mut copy = pin!(tokio::io::copy_bidirectional_with_sizes(
        &mut down, &mut up, SPLICE_BUF, SPLICE_BUF,
    ));
    let mut tick = pin!(tokio::time::sleep(period));
    let (mut seen, mut quiet, mut since_report) = (0u64, 0u128, 0u128);
    let (mut reported_rx, mut reported_tx) = (0u64, 0u64);
    let end = loop {
        tokio::select! {
            biased;
            r = copy.as_mut() => break if r.is_ok() { SpliceEnd::Closed } else { SpliceEnd::Error },
            () = tick.as_mut() => {
                let (rx, tx) = (received.get(), sent.get());
                let moved = rx + tx;
                if moved == seen {
                    quiet += 1;
                    if quiet >= idle_ticks {
                        break SpliceEnd::Idle;
                    }
                } else {
                    (seen, quiet) = (moved, 0);
                }
                since_report += 1;
                if since_report >= report_ticks {
                    since_report = 0;
                    if rx != reported_rx || tx != reported_tx {
                        report(rx - reported_rx, tx - reported_tx);
                        (reported_rx, reported_tx) = (rx, tx);
                    }
                }
                tick.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
    };
    let (rx, tx) = (received.get(), sent.get());
    report(rx - reported_rx, tx - reported_tx);
    Spliced {
        received: rx,
        sent: tx,
        end,
    }
}

// === impl Counted ===

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.set(self.read.get() + n);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === ClientHello ===

/// Reads the server name (SNI, RFC 6066 §3) of the TLS ClientHello at the start of `buf`,
/// the first bytes a client sent, without terminating TLS. A ClientHello spread over several
/// TLS records is reassembled (up to [`MAX_CLIENT_HELLO`]).
///
/// ```
/// use mesh_transport::l4::{ClientHello, client_hello_sni};
///
/// assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), ClientHello::NotTls);
/// assert_eq!(client_hello_sni(&[0x16, 0x03, 0x01]), ClientHello::Incomplete);
/// ```
pub fn client_hello_sni(buf: &[u8]) -> ClientHello<'_> {
    // the handshake message, possibly over several records: find where it is complete
    let mut hs_len: Option<usize> = None;
    let mut have = 0usize;
    let mut pos = 0usize;
    let mut first_fragment: Option<(usize, usize)> = None;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return ClientHello::Incomplete;
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return ClientHello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 2048 {
            return ClientHello::NotTls;
        }
        let start = pos + 5;
        if first_fragment.is_none() {
            first_fragment = Some((start, len));
        }
        if hs_len.is_none() {
            // the handshake header is in the first record (records of at least 4 bytes)
            let Some(h) = buf.get(start..start + 4) else {
                return ClientHello::Incomplete;
            };
            if h[0] != 0x01 {
                return ClientHello::NotTls;
            }
            let l = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
            if l + 4 > MAX_CLIENT_HELLO {
                return ClientHello::NotTls;
            }
            hs_len = Some(l + 4);
        }
        have += len;
        pos = start + len;
        let need = hs_len.unwrap_or(usize::MAX);
        if have >= need {
            break;
        }
        if pos >= MAX_CLIENT_HELLO + 5 * 8 {
            return ClientHello::NotTls;
        }
    }
    if buf.len() < pos {
        return ClientHello::Incomplete;
    }
    let need = hs_len.unwrap_or(0);
    // the common case: one record holds the whole ClientHello; parse in place
    if let Some((start, len)) = first_fragment
        && len >= need
    {
        return parse_client_hello(&buf[start..start + need]);
    }
    // reassembled over records: the SNI must then borrow from `buf`, so find it in a copy
    // and point back into the record that holds it (the extension never spans records in
    // practice; if it does, it is treated as absent)
    let mut hs = Vec::with_capacity(need);
    let mut p = 0;
    while p < pos && hs.len() < need {
        let len = usize::from(u16::from_be_bytes([buf[p + 3], buf[p + 4]]));
        hs.extend_from_slice(&buf[p + 5..p + 5 + len]);
        p += 5 + len;
    }
    hs.truncate(need);
    match parse_client_hello(&hs) {
        ClientHello::Sni(name) => {
            let needle = name.as_bytes();
            match buf.windows(needle.len()).position(|w| w == needle) {
                Some(i) => std::str::from_utf8(&buf[i..i + needle.len()])
                    .map_or(ClientHello::NoSni, ClientHello::Sni),
                None => ClientHello::NoSni,
            }
        }
        ClientHello::NoSni => ClientHello::NoSni,
        ClientHello::Incomplete => ClientHello::Incomplete,
        ClientHello::NotTls => ClientHello::NotTls,
    }
}

/// Parses a complete handshake message (type, length, body) as a ClientHello.
fn parse_client_hello(hs: &[u8]) -> ClientHello<'_> {
    let mut r = Reader { buf: hs, pos: 4 };
    let ok = (|| {
        r.skip(2)?; // legacy_version
        r.skip(32)?; // random
        let sid = usize::from(r.u8()?);
        r.skip(sid)?;
        let suites = usize::from(r.u16()?);
        r.skip(suites)?;
        let comp = usize::from(r.u8()?);
        r.skip(comp)?;
        Some(())
    })();
    if ok.is_none() {
        return ClientHello::NotTls;
    }
    if r.pos == hs.len() {
        return ClientHello::NoSni; // no extensions at all
    }
    let Some(ext_len) = r.u16() else {
        return ClientHello::NotTls;
    };
    let end = r.pos + usize::from(ext_len);
    if end > hs.len() {
        return ClientHello::NotTls;
    }
    while r.pos + 4 <= end {
        let (Some(ty), Some(len)) = (r.u16(), r.u16()) else {
            return ClientHello::NotTls;
        };
        let len = usize::from(len);
        if r.pos + len > end {
            return ClientHello::NotTls;
        }
        if ty == 0 {
            // server_name_list: name_type (0 = host_name), then a 16-bit length
            let mut s = Reader {
                buf: &hs[..r.pos + len],
                pos: r.pos,
            };
            let _list = s.u16();
            while s.pos + 3 <= r.pos + len {
                let (Some(kind), Some(n)) = (s.u8(), s.u16()) else {
                    return ClientHello::NotTls;
                };
                let n = usize::from(n);
                let Some(name) = s.take(n) else {
                    return ClientHello::NotTls;
                };
                if kind == 0 {
                    return match std::str::from_utf8(name) {
                        Ok(n) if !n.is_empty() && n.is_ascii() => ClientHello::Sni(n),
                        _ => ClientHello::NotTls,
                    };
                }
            }
            return ClientHello::NoSni;
        }
        r.pos += len;
    }
    ClientHello::NoSni
}

/// A bounds-checked cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Reads from `stream` into `buf` until it holds a complete ClientHello (or shows it is not
/// one), at most [`MAX_CLIENT_HELLO`] bytes, within `timeout`. The bytes read are in `buf`
/// for the caller to forward. `Ok(false)`: the client closed, or the timeout passed, before
/// the first byte.
pub async fn read_client_hello<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> io::Result<bool> {
    use tokio::io::AsyncReadExt as _;
    let read = async {
        loop {
            match client_hello_sni(buf) {
                ClientHello::Incomplete if buf.len() < MAX_CLIENT_HELLO + 64 => {}
                _ => return Ok(true),
            }
            if buf.capacity() - buf.len() < 2048 {
                buf.reserve(4096);
            }
            let n = stream.read_buf(buf).await?;
            if n == 0 {
                return Ok(!buf.is_empty());
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Ok(!buf.is_empty()),
    }
}

#[cfg(test)]
mod tests;

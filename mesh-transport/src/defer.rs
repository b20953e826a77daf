//! Small sends deferred to the end of the worker's turn, and sent there back to back.
//!
//! A worker runs a task per connection: each reads what arrived, runs the request or the
//! response through the stack and writes the result at once, so its `send`s are spread
//! over the turn, one per connection between the reads and the processing of the others.
//! A peer (the client, the origin) that has handled the previous send is often asleep by
//! the next one, and each send pays for waking it (`sock_def_readable`, 7.5–8.9 % of the
//! mesh's CPU samples at saturation against HAProxy's 4.4–4.7 %, whose event loop reads
//! every ready connection first and sends what the turn produced back to back; see
//! `docs/performance.md`, 2026-12-05).
//!
//! [`DeferredTcp`] is a TCP stream whose small writes (at most [`DEFER`] bytes each) are
//! copied into the connection's own buffer and reported written; the connection joins the
//! thread's turn list. [`end_of_turn`] sends every listed buffer, back to back. A worker
//! ends a turn before it waits for events (its runtime's `on_thread_park`), so bytes wait
//! for the tasks woken with their own, no longer. A worker too busy ever to wait ends one
//! between two batches of the tasks its `LocalSet` runs (at most 61 each) once bytes have
//! waited for [`BATCHES`] batches or [`MANY`] connections are listed ([`end_of_batch`],
//! from `worker::ending_turns`).
//!
//! Only the turns after a busy one ([`BUSY`] small writes or more) defer. At low load a
//! turn has a request or two, nothing to batch with, and a send at once lets the peer
//! answer while the worker is still running: deferring in every turn cost 1.12 and 1.17
//! times the CPU per request at 2,000 requests a second (`compare.py`, 2026-12-05 13:43).
//!
//! Off a worker (no [`Enabled`] on the thread) every write goes out at once. Under TLS
//! the stream rustls writes its records to is a `DeferredTcp` too, downstream and to an
//! HTTP/1.1 upstream: a record is a small write like any other. An HTTP/2 upstream's
//! connection (plaintext or TLS) writes at once ([`DeferredTcp::at_once`]): hyper drives it
//! from a task of the runtime, not of the worker's `LocalSet`. L4 connections are not
//! deferred.
//!
//! Why not a flusher task woken by the first deferred write: it costs a task poll per
//! turn, which at low load is one per request (31.6k instructions per request against
//! 31.1k on one connection, `CONNS=1 callgrind.py`, 2026-12-05).
//!
//! Nothing is lost or reordered:
//! - a write too large to defer, a `poll_shutdown`, or a write after the buffer's
//!   [`LIMIT`], first sends what the connection has deferred;
//! - what the end of the turn cannot send (the socket's buffer is full) stays with the
//!   connection, whose task is woken and sends it on its next read, write or flush, before
//!   any other write (a read goes on meanwhile: reads never wait for writes);
//! - a send that fails is reported by the connection's next write or flush; a read goes on
//!   (the peer's end of stream or reset is what it then sees, as after a failed write);
//! - a connection dropped with bytes deferred keeps its socket open until the end of the
//!   turn has sent them (the socket is shared with the turn list). What the socket does not
//!   take then is lost, as the bytes still in hyper's own buffer are when a connection is
//!   dropped with its socket full.
//!
//! `poll_flush` is ready once the bytes are deferred: they leave before the worker waits
//! for events again, which is what a flush before waiting for the peer needs.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Writes of at most this many bytes (in all, for a vectored write) are deferred.
pub(crate) const DEFER: usize = 4 * 1024;

/// At most this many bytes are deferred per connection: a write beyond it sends them first.
pub(crate) const LIMIT: usize = 16 * 1024;

/// Buffers kept for reuse per thread (each of at most [`LIMIT`] bytes' capacity).
const POOL: usize = 128;

/// Batches of a busy worker's tasks that deferred bytes wait for at most ([`end_of_batch`]).
const BATCHES: u8 = 4;

/// Listed connections that end the turn at the end of a batch ([`end_of_batch`]).
const MANY: usize = 64;

/// Small writes in a turn that make it busy: the next turn defers its writes.
const BUSY: u32 = 8;

/// A TCP stream whose small writes wait for the end of the worker's turn (module docs).
#[derive(Debug)]
pub(crate) struct DeferredTcp {
    read: OwnedReadHalf,
    sock: Arc<Sock>,
    /// False: every write goes out at once ([`DeferredTcp::at_once`]).
    defers: bool,
}

/// The write side, shared with the thread's turn list while bytes are deferred.
#[derive(Debug)]
struct Sock {
    out: Mutex<Out>,
    /// `out` holds bytes the end of a turn could not send, or a failed send: the
    /// connection's next operation looks at `out` first. Derived from `out` ([`Sock::sync`]).
    attention: AtomicBool,
    /// `out` holds anything (deferred or left bytes, a failure): a write that is not
    /// deferred goes through it. Clear, it goes straight to the socket, with no lock.
    /// Derived from `out` ([`Sock::sync`]).
    pending: AtomicBool,
}

#[derive(Debug)]
struct Out {
    write: Option<OwnedWriteHalf>,
    /// Bytes deferred or left unsent, in order.
    buf: Vec<u8>,
    /// In the thread's turn list.
    listed: bool,
    /// The end of the turn left bytes in `buf`: the connection sends them itself.
    stuck: bool,
    /// A deferred send failed: the next write or flush reports it.
    error: Option<io::ErrorKind>,
    /// The connection's task (woken when the end of the turn leaves it bytes or an error).
    waker: Option<Waker>,
}

/// The thread's turn: the sockets with deferred bytes.
#[derive(Default)]
struct Turn {
    listed: Vec<Arc<Sock>>,
    /// Writes may be deferred on this thread (an [`Enabled`] lives).
    enabled: bool,
    /// Writes are deferred in this turn: the last one was busy.
    deferring: bool,
    /// Small writes since the turn's end (deferred or not).
    writes: u32,
    /// The writes that make a turn busy ([`BUSY`]; tests: 0, always).
    busy_at: u32,
    /// Batches of tasks that ended with something listed, since the turn's end.
    batches: u8,
    /// Empty buffers for reuse.
    pool: Vec<Vec<u8>>,
}

thread_local! {
    static TURN: RefCell<Turn> = RefCell::default();
}

/// While it lives, [`DeferredTcp`]s on this thread defer their small writes, and
/// [`end_of_turn`] must run before the thread waits for events (a worker's runtime calls
/// it from `on_thread_park`). Dropped, it sends what is still deferred.
pub(crate) struct Enabled(());

impl Enabled {
    /// Defers small writes on this thread, in the turns after a busy one.
    pub(crate) fn new() -> Enabled {
        TURN.with_borrow_mut(|t| {
            t.enabled = true;
            t.busy_at = BUSY;
        });
        Enabled(())
    }

    /// Defers small writes on this thread in every turn (tests).
    #[cfg(test)]
    fn always() -> Enabled {
        let on = Enabled::new();
        TURN.with_borrow_mut(|t| {
            t.busy_at = 0;
            t.deferring = true;
        });
        on
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = TURN.try_with(|t| {
            let mut t = t.borrow_mut();
            t.enabled = false;
            t.deferring = false;
        });
        end_of_turn();
    }
}

/// Sends what every listed connection deferred: the end of a turn, before the thread
/// waits for events (the worker runtime's `on_thread_park`).
pub(crate) fn end_of_turn() {
    let Ok(Some((mut listed, mut pool))) = TURN.try_with(|t| {
        let mut t = t.borrow_mut();
        t.batches = 0;
        t.deferring = t.enabled && t.writes >= t.busy_at;
        t.writes = 0;
        if t.listed.is_empty() {
            return None;
        }
        Some((std::mem::take(&mut t.listed), std::mem::take(&mut t.pool)))
    }) else {
        return;
    };
    for sock in listed.drain(..) {
        sock.flush_listed(&mut pool);
    }
    // (nothing is listed while the list is out: nothing else runs on the thread meanwhile;
    // a buffer may have come back, from a connection dropped meanwhile)
    let _ = TURN.try_with(|t| {
        let mut t = t.borrow_mut();
        if t.listed.is_empty() {
            t.listed = listed;
        }
        let back = std::mem::replace(&mut t.pool, pool);
        for buf in back {
            give(&mut t.pool, buf);
        }
    });
}

/// The end of a batch of a worker's tasks (`worker::ending_turns`): ends the turn when
/// what is listed has waited for [`BATCHES`] batches, or when [`MANY`] connections are
/// listed. A worker busy enough never to wait for events still sends within a few batches,
/// and in runs of sends as long as when it waits (a batch is at most 61 tasks).
pub(crate) fn end_of_batch() {
    let due = TURN.try_with(|t| {
        let mut t = t.borrow_mut();
        if t.listed.is_empty() {
            // a worker that never waits: busy as soon as it writes enough
            t.deferring = t.deferring || (t.enabled && t.writes >= t.busy_at);
            return false;
        }
        t.batches += 1;
        t.batches >= BATCHES || t.listed.len() >= MANY
    });
    if due == Ok(true) {
        end_of_turn();
    }
}

/// Returns an emptied buffer to `pool`.
fn give(pool: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > LIMIT || pool.len() >= POOL {
        return;
    }
    buf.clear();
    pool.push(buf);
}

/// Returns an emptied buffer to the thread's pool.
fn give_buf(buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    let _ = TURN.try_with(|t| give(&mut t.borrow_mut().pool, buf));
}

// === impl DeferredTcp ===

impl DeferredTcp {
    /// Wraps a connected socket.
    pub(crate) fn new(tcp: TcpStream) -> Self {
        let (read, write) = tcp.into_split();
        DeferredTcp {
            read,
            defers: true,
            sock: Arc::new(Sock {
                out: Mutex::new(Out {
                    write: Some(write),
                    buf: Vec::new(),
                    listed: false,
                    stuck: false,
                    error: None,
                    waker: None,
                }),
                attention: AtomicBool::new(false),
                pending: AtomicBool::new(false),
            }),
        }
    }

    /// Wraps a connected socket whose writes all go out at once: one that a task of the
    /// runtime drives rather than one of the worker's `LocalSet` (hyper's HTTP/2 client
    /// connection, started with `tokio::spawn`). A worker ends its turns between batches of
    /// its `LocalSet`'s tasks and when it parks; a runtime task that kept the worker busy
    /// would hold its own deferred bytes until one of those. Its vectored writes are still
    /// copied into one `send` ([`crate::coalesce`]).
    pub(crate) fn at_once(tcp: TcpStream) -> Self {
        DeferredTcp {
            defers: false,
            ..DeferredTcp::new(tcp)
        }
    }

    /// The socket (its options, its readiness, non-blocking reads).
    pub(crate) fn tcp(&self) -> &TcpStream {
        self.read.as_ref()
    }

    /// Before a read: sends what the end of the turn left, as far as the socket takes it,
    /// and never holds the read up. What does not fit waits for the socket (the task is
    /// woken when it may take more): reads and writes stay independent, as a full-duplex
    /// exchange needs (an upstream that answers while the request body streams, a tunnel).
    /// A failed send is not a read error (the read sees the peer's end of stream or reset).
    #[inline]
    pub(crate) fn send_left(&self, cx: &mut Context<'_>) {
        if self.sock.attention.load(Ordering::Relaxed) {
            self.send_left_cold(cx);
        }
    }

    #[cold]
    fn send_left_cold(&self, cx: &mut Context<'_>) {
        let mut out = self.sock.lock();
        // a failure is kept in `out.error` (and `attention` stays set) for the writes
        if out.error.is_none() {
            let _ = out.poll_send_all(cx);
        }
        self.sock.sync(&out);
    }

    /// Whether the end of a turn left bytes or a failed send (a connection that is not to be
    /// pooled).
    pub(crate) fn has_left(&self) -> bool {
        self.sock.attention.load(Ordering::Relaxed)
    }

    /// Defers `bufs` (`total` bytes, at most [`DEFER`]) when the thread defers writes and
    /// the connection's buffer has room: `None` when they must be written now.
    fn defer(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>], total: usize) -> Option<()> {
        if total > DEFER || !self.defers {
            return None;
        }
        let deferring = TURN.with_borrow_mut(|t| {
            t.writes = t.writes.saturating_add(1);
            t.deferring
        });
        if !deferring {
            return None;
        }
        let mut out = self.sock.lock();
        if out.stuck || out.error.is_some() || out.buf.len() + total > LIMIT {
            return None;
        }
        if !out.listed {
            let pooled = TURN.with_borrow_mut(|t| {
                t.listed.push(self.sock.clone());
                t.pool.pop()
            });
            out.listed = true;
            self.sock.sync(&out);
            if out.buf.capacity() == 0
                && let Some(buf) = pooled
            {
                out.buf = buf;
            }
        }
        for b in bufs {
            out.buf.extend_from_slice(b);
        }
        if !out.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            out.waker = Some(cx.waker().clone());
        }
        Some(())
    }

    /// A write that is not deferred: what is deferred goes first, then `bufs` directly.
    fn poll_write_now(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.sock.pending.load(Ordering::Relaxed) {
            ready!(self.sock.poll_drain(&mut self.sock.lock(), cx))?;
        }
        // one non-empty slice as it is, small ones copied into one `send`, large ones vectored
        crate::coalesce::poll_write_coalesced(Pin::new(&mut Direct(self.tcp())), cx, bufs)
    }
}

/// The socket written directly (nothing pending): tokio's own write path, through `&self`.
struct Direct<'a>(&'a TcpStream);

impl Direct<'_> {
    /// `write` once the socket is writable, again after a spurious readiness.
    fn poll_written(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                res => return Poll::Ready(res),
            }
        }
    }
}

impl AsyncWrite for Direct<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_written(cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_written(cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for DeferredTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.send_left(cx);
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeferredTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let bufs = [IoSlice::new(buf)];
        if self.defer(cx, &bufs, buf.len()).is_some() {
            return Poll::Ready(Ok(buf.len()));
        }
        self.poll_write_now(cx, &bufs)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.defer(cx, bufs, total).is_some() {
            return Poll::Ready(Ok(total));
        }
        self.poll_write_now(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Ready once nothing is left to the connection itself: deferred bytes leave at the
    /// end of the turn (module docs).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.sock.attention.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        self.sock.poll_drain(&mut self.sock.lock(), cx)
    }

    /// Sends what is deferred, then shuts the write side down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut out = self.sock.lock();
        ready!(self.sock.poll_drain(&mut out, cx))?;
        match out.write.as_mut() {
            Some(w) => Pin::new(w).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// === impl Sock ===

impl Sock {
    /// Sends what `out` holds, then syncs the flags; a send that failed before is reported
    /// instead (the writes' path: flush, shutdown, a write that is not deferred).
    fn poll_drain(&self, out: &mut Out, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = out.error {
            return Poll::Ready(Err(e.into()));
        }
        let sent = out.poll_send_all(cx);
        self.sync(out);
        sent
    }

    /// Sets the flags the lock-free paths read from what `out` holds: after every change
    /// to it.
    fn sync(&self, out: &Out) {
        let attention = out.stuck || out.error.is_some();
        self.attention.store(attention, Ordering::Relaxed);
        let pending = attention || out.listed || !out.buf.is_empty();
        self.pending.store(pending, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Out> {
        // an `Out` is consistent between any two statements: a panic elsewhere leaves it usable
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The end of the turn: sends what the connection deferred, as far as the socket takes
    /// it; what it does not take stays for the connection, which is woken.
    fn flush_listed(&self, pool: &mut Vec<Vec<u8>>) {
        let mut out = self.lock();
        out.listed = false;
        if !out.stuck && out.error.is_none() {
            // (empty: sent by the connection itself meanwhile, a write that could not wait)
            match out.try_send_all() {
                Ok(()) => give(pool, std::mem::take(&mut out.buf)),
                Err(left) => {
                    match left {
                        io::ErrorKind::WouldBlock => out.stuck = true,
                        e => {
                            out.buf.clear();
                            out.error = Some(e);
                        }
                    }
                    if let Some(w) = out.waker.take() {
                        w.wake();
                    }
                }
            }
        }
        self.sync(&out);
    }
}

// === impl Out ===

impl Out {
    /// Sends what of `buf` the socket takes now, without waiting: Err(`WouldBlock`) with
    /// the rest left in `buf`, or the error of a failed send.
    fn try_send_all(&mut self) -> Result<(), io::ErrorKind> {
        let Some(w) = self.write.as_ref() else {
            return Err(io::ErrorKind::NotConnected);
        };
        let mut sent = 0;
        let res = loop {
            if sent == self.buf.len() {
                break Ok(());
            }
            match w.try_write(&self.buf[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e.kind()),
            }
        };
        self.buf.drain(..sent);
        res
    }

    /// Sends everything in `buf` (deferred or left), with the connection's task waiting on
    /// the socket when it does not take it all.
    fn poll_send_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let Some(w) = self.write.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            match ready!(Pin::new(w).poll_write(cx, &self.buf)) {
                Ok(0) => {
                    self.error = Some(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) => {
                    self.buf.clear();
                    self.error = Some(e.kind());
                    return Poll::Ready(Err(e));
                }
            }
        }
        self.stuck = false;
        if !self.listed && self.buf.capacity() > 0 {
            give_buf(std::mem::take(&mut self.buf));
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        // closing the socket is for the read half's drop: no FIN here before the read
        // side is done with it (tokio's `OwnedWriteHalf` shuts down on drop otherwise)
        if let Some(w) = self.write.take() {
            w.forget();
        }
        give_buf(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair: the deferring side, and the peer as a blocking std socket (reads
    /// time out rather than hang a failing test).
    async fn pair() -> (DeferredTcp, std::net::TcpStream) {
        pair_with_window(None).await
    }

    /// A pair whose peer has a receive buffer of `window` bytes (no autotuning: a full
    /// socket stays full until the peer reads).
    async fn pair_with_window(window: Option<usize>) -> (DeferredTcp, std::net::TcpStream) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(w) = window {
            socket.set_recv_buffer_size(w).unwrap();
        }
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(8).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (DeferredTcp::new(tcp), peer)
    }

    /// What the peer has received so far, without waiting.
    fn arrived(peer: &std::net::TcpStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match (&*peer).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        peer.set_nonblocking(false).unwrap();
        got
    }

    fn read_n(peer: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        peer.read_exact(&mut got).unwrap();
        got
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn off_a_worker_a_write_goes_out_at_once() {
        let (mut tcp, mut peer) = pair().await;
        tcp.write_all(b"hello").await.unwrap();
        assert_eq!(read_n(&mut peer, 5), b"hello");
        assert!(TURN.with_borrow(|t| t.listed.is_empty()));
    }

    #[tokio::test]
    async fn a_small_write_waits_for_the_end_of_the_turn_and_keeps_its_order() {
        let (mut tcp, mut peer) = pair().await;
        let on = Enabled::always();
        tcp.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let n = tcp
            .write_vectored(&[IoSlice::new(b"a: b\r\n"), IoSlice::new(b"\r\n")])
            .await
            .unwrap();
        assert_eq!(n, 8, "a deferred vectored write takes every slice");
        tcp.flush().await.unwrap(); // ready: the bytes leave at the end of the turn
        assert!(arrived(&peer).is_empty(), "sent before the end of the turn");
        end_of_turn();
        assert_eq!(read_n(&mut peer, 25), b"HTTP/1.1 200 OK\r\na: b\r\n\r\n");
        // the next turn defers again, and the buffer came back to the thread's pool
        assert_eq!(TURN.with_borrow(|t| t.pool.len()), 1);
        tcp.write_all(b"next").await.unwrap();
        assert!(arrived(&peer).is_empty());
        drop(on); // sends what is left
        assert_eq!(read_n(&mut peer, 4), b"next");
    }

    /// A connection a runtime task drives writes at once even in a deferring turn.
    #[tokio::test]
    async fn a_connection_made_to_write_at_once_never_defers() {
        let (tcp, mut peer) = pair().await;
        let write = take_write(&tcp);
        let DeferredTcp { read, .. } = tcp;
        let mut tcp = DeferredTcp::at_once(read.reunite(write).unwrap());
        let _on = Enabled::always();
        tcp.write_all(b"now").await.unwrap();
        assert!(TURN.with_borrow(|t| t.listed.is_empty()), "deferred");
        assert_eq!(read_n(&mut peer, 3), b"now");
    }

    /// The write half of a connection nothing was written to (to make another kind of it).
    fn take_write(tcp: &DeferredTcp) -> OwnedWriteHalf {
        tcp.sock.lock().write.take().unwrap()
    }

    #[tokio::test]
    async fn only_the_turn_after_a_busy_one_defers() {
        let (mut tcp, mut peer) = pair().await;
        let _on = Enabled::new();
        // a quiet turn: each write goes out at once
        tcp.write_all(b"a").await.unwrap();
        assert_eq!(read_n(&mut peer, 1), b"a"); // (nothing ends a turn here)
        for _ in 1..BUSY {
            tcp.write_all(b"b").await.unwrap();
        }
        assert_eq!(
            read_n(&mut peer, BUSY as usize - 1),
            vec![b'b'; BUSY as usize - 1]
        );
        // BUSY small writes made the turn busy: the next one defers
        end_of_turn();
        tcp.write_all(b"c").await.unwrap();
        assert!(arrived(&peer).is_empty(), "not deferred after a busy turn");
        // which, with one write, was quiet: the one after does not
        end_of_turn();
        assert_eq!(read_n(&mut peer, 1), b"c");
        tcp.write_all(b"d").await.unwrap();
        assert_eq!(read_n(&mut peer, 1), b"d");
    }

    #[tokio::test]
    async fn a_large_write_sends_what_was_deferred_first() {
        let (mut tcp, mut peer) = pair().await;
        let _on = Enabled::always();
        tcp.write_all(b"head").await.unwrap();
        let body = vec![7u8; DEFER + 1];
        tcp.write_all(&body).await.unwrap();
        // no end of turn: the large write went out at once, after the deferred head
        let got = read_n(&mut peer, 4 + body.len());
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &body[..]);
        // and more than LIMIT deferred in one turn goes out too, in order
        let mut sent = Vec::new();
        for i in 0..(LIMIT / DEFER + 2) {
            let chunk = vec![u8::try_from(i).unwrap(); DEFER];
            tcp.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
        }
        end_of_turn();
        assert_eq!(read_n(&mut peer, sent.len()), sent);
    }

    #[tokio::test]
    async fn shutdown_sends_what_was_deferred_then_the_end_of_stream() {
        let (mut tcp, mut peer) = pair().await;
        let _on = Enabled::always();
        tcp.write_all(b"bye").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"bye");
    }

    #[tokio::test]
    async fn a_dropped_connection_still_sends_what_it_deferred_then_closes() {
        let (mut tcp, mut peer) = pair().await;
        let _on = Enabled::always();
        tcp.write_all(b"last words").await.unwrap();
        drop(tcp);
        assert!(arrived(&peer).is_empty());
        end_of_turn();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"last words");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_stays_with_the_connection_and_wakes_it() {
        let (mut tcp, mut peer) = pair_with_window(Some(4096)).await;
        socket2::SockRef::from(tcp.tcp())
            .set_send_buffer_size(4096)
            .unwrap();
        let _on = Enabled::always();
        // fill the socket (the peer reads nothing yet): direct writes until one waits
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut sent = Vec::new();
        let big = vec![1u8; DEFER + 1];
        loop {
            match Pin::new(&mut tcp).poll_write(&mut cx, &big) {
                Poll::Ready(Ok(n)) => sent.extend_from_slice(&big[..n]),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => break,
            }
        }
        // deferred (the socket is not asked), then left over at the end of the turn
        let tail = b"tail";
        assert!(matches!(
            Pin::new(&mut tcp).poll_write(&mut cx, tail),
            Poll::Ready(Ok(4))
        ));
        sent.extend_from_slice(tail);
        let before = count.0.load(Ordering::SeqCst);
        end_of_turn();
        assert!(
            count.0.load(Ordering::SeqCst) > before,
            "the task was not woken"
        );
        assert!(tcp.has_left());
        // a small write now waits behind the left bytes, not deferred past them
        assert!(Pin::new(&mut tcp).poll_write(&mut cx, b"!").is_pending());
        // and reads do not wait for them (a full-duplex peer may wait for us to read before
        // it reads on)
        (&peer).write_all(b"answer").unwrap();
        let mut answer = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut answer))
            .await
            .expect("a read waited for the left bytes")
            .unwrap();
        assert_eq!(&answer, b"answer");
        // the peer reads everything; the connection sends the rest itself, in order
        let expect = sent.len();
        let reader = std::thread::spawn(move || read_n(&mut peer, expect + 1));
        poll_fn(|cx| Pin::new(&mut tcp).poll_flush(cx))
            .await
            .unwrap();
        tcp.write_all(b"!").await.unwrap();
        tcp.flush().await.unwrap();
        end_of_turn();
        let got = reader.join().unwrap();
        assert_eq!(got[..expect], sent[..]);
        assert_eq!(got[expect..], *b"!");
        assert!(!tcp.sock.attention.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_failed_deferred_send_is_reported_by_the_next_write_not_by_reads() {
        let (mut tcp, peer) = pair().await;
        // the peer resets the connection
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        let mut buf = [0u8; 8];
        // the reset arrived: reads see it (or the end of stream) as they would anyway
        let read = tcp.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let _on = Enabled::always();
        tcp.write_all(b"into the void").await.unwrap(); // deferred
        end_of_turn();
        assert!(tcp.sock.attention.load(Ordering::Relaxed));
        let read = tcp.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(tcp.flush().await.is_err());
        assert!(tcp.write_all(b"more").await.is_err());
    }

    /// `future` on a fresh worker runtime, its turns ending as `worker::run` sets them up.
    fn on_a_worker<F: Future>(future: F) -> F::Output {
        let rt = crate::worker::runtime().unwrap();
        let local = tokio::task::LocalSet::new();
        let on = Enabled::always();
        let out = local.block_on(&rt, crate::worker::ending_turns(future));
        drop(on);
        out
    }

    /// A task writes `ping` (and checks that it was deferred); the peer must get it.
    async fn ping_deferred_then_received() {
        let (mut tcp, peer) = pair().await;
        peer.set_nonblocking(true).unwrap();
        let mut peer = TcpStream::from_std(peer).unwrap();
        let writer = tokio::task::spawn_local(async move {
            tcp.write_all(b"ping").await.unwrap();
            tcp.flush().await.unwrap();
            assert_eq!(TURN.with_borrow(|t| t.listed.len()), 1, "not deferred");
            tcp
        });
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
            .await
            .expect("the deferred bytes were never sent")
            .unwrap();
        assert_eq!(&got, b"ping");
        drop(writer.await.unwrap());
    }

    /// Under TLS (rustls writing its records into a `DeferredTcp`), the handshake's and the
    /// application's records are deferred like any small write and reach the peer in order.
    #[test]
    fn tls_records_are_deferred_and_reach_the_peer() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        on_a_worker(async move {
            let (tcp, peer) = pair().await;
            peer.set_nonblocking(true).unwrap();
            let peer = TcpStream::from_std(peer).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let served = tokio::task::spawn_local(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut got = [0u8; 4];
                tls.read_exact(&mut got).await.unwrap();
                tls.write_all(b"pong").await.unwrap();
                tls.flush().await.unwrap();
                let deferred = TURN.with_borrow(|t| t.listed.len());
                tls.shutdown().await.unwrap();
                (got, deferred)
            });
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls =
                tokio::time::timeout(Duration::from_secs(10), connector.connect(name, peer))
                    .await
                    .expect("the handshake's deferred records were never sent")
                    .unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
                .await
                .expect("the deferred records were never sent")
                .unwrap();
            assert_eq!(got, b"pong");
            let (ping, deferred) = served.await.unwrap();
            assert_eq!(&ping, b"ping");
            assert_eq!(deferred, 1, "the record was written at once, not deferred");
        });
    }

    /// An idle worker's runtime ends the turn before it waits for events (`on_thread_park`).
    #[test]
    fn a_worker_sends_what_its_tasks_deferred_before_it_waits() {
        on_a_worker(ping_deferred_then_received());
    }

    /// A worker that never waits for events (a task always ready) still sends: its turns
    /// end between batches of tasks (`worker::ending_turns`).
    #[test]
    fn a_worker_too_busy_to_wait_still_sends_between_batches_of_tasks() {
        on_a_worker(async {
            let stop = std::rc::Rc::new(std::cell::Cell::new(false));
            let spinner = tokio::task::spawn_local({
                let stop = stop.clone();
                async move {
                    let mut spins = 0u64;
                    while !stop.get() {
                        tokio::task::yield_now().await;
                        spins += 1;
                    }
                    spins
                }
            });
            ping_deferred_then_received().await;
            stop.set(true);
            // the spinner kept the runtime busy all along
            assert!(spinner.await.unwrap() > 0);
        });
    }
}

//! One upstream HTTP/1.1 connection: its transport ([`Io`]), its read and write buffers,
//! and the non-blocking reads and writes an exchange is made of.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use mesh_core::ext::UpstreamPool;
use tokio::io::{AsyncWrite, Interest};

use super::request::ReqBody;
use super::{COALESCE, MAX_READ, MIN_READ};
use crate::defer::DeferredTcp;

/// One upstream HTTP/1.1 connection and its buffers. Idle in the pool, it holds no bytes.
/// Boxed wherever it travels (pool, exchange, response body): a pointer moves instead of
/// the whole state on every request.
pub(crate) struct H1Conn {
    pub(super) io: Io,
    /// Bytes read and not yet consumed.
    pub(super) buf: BytesMut,
    /// Output not yet written: `wbuf[wpos..]`, then `data`, then `tail`.
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    pub(super) data: Bytes,
    pub(super) tail: &'static [u8],
    pub(super) read_size: usize,
    /// The pool's sweep count when the connection last went idle (the pool's clock).
    pub(crate) idle_since: u32,
    /// Sweeps it may stay idle (its cluster's `idleTimeout`).
    pub(crate) idle_sweeps: u32,
    /// The pool's sweep count when it was made, and for how many sweeps it is used (its
    /// cluster's `maxConnectionDuration`).
    pub(crate) born: u32,
    pub(crate) max_age: u32,
    /// Exchanges begun on it, and its cluster's `maxRequestsPerConnection`.
    pub(super) requests: u32,
    pub(super) max_requests: Option<u32>,
    /// Counts it in the pool gauges of the cluster that opened it (open until dropped, idle
    /// while in the pool); `None`: a tunnel's, or a request without a cluster.
    pub(crate) gauge: Option<mesh_core::limits::ConnectionGauge>,
    /// The connection's local address, noted when it was made (telemetry's
    /// `%UPSTREAM_LOCAL_ADDRESS%`).
    pub(crate) local: Option<std::net::SocketAddr>,
}

/// The connection's transport: plain TCP (read without spurious `EAGAIN`s, see
/// [`H1Conn::poll_fill`]), or TLS over TCP (rustls, from the connector's
/// [`UpstreamTls`](crate::tls::UpstreamTls)).
pub(crate) enum Io {
    /// Small writes wait for the end of the worker's turn ([`crate::defer`]).
    Tcp(DeferredTcp),
    Tls(Box<tokio_rustls::client::TlsStream<DeferredTcp>>),
}

/// Why sending stopped.
pub(super) enum SendError {
    /// Writing to the upstream failed: it may have answered and closed; read on.
    Write,
    /// The request body failed (the client's stream broke, or it did not match its
    /// `Content-Length`): the exchange is abandoned.
    Body,
}

// === impl Io ===

/// The transport as a tokio stream (for the client's own writes, and for a tunnel after a
/// `101` or a CONNECT): every call goes to TCP or to rustls.
impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}

// === impl H1Conn ===

impl H1Conn {
    /// Wraps a connected socket.
    #[cfg(test)]
    pub(crate) fn new(io: tokio::net::TcpStream) -> Box<Self> {
        H1Conn::with_io(Io::Tcp(DeferredTcp::new(io)))
    }

    /// Wraps a connected transport.
    pub(crate) fn with_io(io: Io) -> Box<Self> {
        Box::new(H1Conn {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            wpos: 0,
            data: Bytes::new(),
            tail: b"",
            read_size: MIN_READ,
            idle_since: 0,
            idle_sweeps: u32::MAX,
            born: 0,
            max_age: u32::MAX,
            requests: 0,
            max_requests: None,
            gauge: None,
            local: None,
        })
    }

    /// Marks it idle (in the pool) or busy in its cluster's pool gauges.
    #[inline]
    pub(crate) fn set_idle(&mut self, idle: bool) {
        if let Some(g) = &mut self.gauge {
            g.set_idle_mut(idle);
        }
    }

    /// The TCP socket under it (tests: its options).
    #[cfg(test)]
    pub(crate) fn tcp(&self) -> &tokio::net::TcpStream {
        match &self.io {
            Io::Tcp(io) => io.tcp(),
            Io::Tls(io) => io.get_ref().0.tcp(),
        }
    }

    /// The transport, for a tunnel (the connection is done with HTTP).
    pub(crate) fn into_io(self) -> Io {
        self.io
    }

    /// Takes the connection settings of the cluster of the request about to use it.
    pub(crate) fn configure(&mut self, pool: UpstreamPool) {
        self.max_requests = pool.max_requests_per_connection;
        self.idle_sweeps = crate::upstream::idle_sweeps(&pool);
        self.max_age = crate::upstream::max_age_sweeps(&pool);
    }

    /// Whether it has lived its `maxConnectionDuration` at sweep count `epoch` (then it is
    /// not used again).
    pub(crate) fn expired(&self, epoch: u32) -> bool {
        epoch.wrapping_sub(self.born) >= self.max_age
    }

    /// Whether the connection has carried its `maxRequestsPerConnection` (then it is closed
    /// rather than pooled).
    pub(crate) fn spent(&self) -> bool {
        self.max_requests.is_some_and(|m| self.requests >= m)
    }

    /// Whether an idle connection can take a request: nothing (end of stream, reset, stray
    /// bytes) has arrived on it while it waited. Costs no system call unless the socket
    /// became readable.
    pub(crate) fn idle_ok(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match &mut self.io {
            // bytes the end of a turn could not send (an early answer): not reused
            Io::Tcp(io) if io.has_left() => false,
            Io::Tcp(io) => match io.tcp().poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    // Readable: end of stream, stray bytes, or readiness left over from the
                    // last read. Only the last one leaves the connection usable.
                    self.buf.reserve(64);
                    matches!(io.tcp().try_read_buf(&mut self.buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Io::Tls(io) if io.get_ref().0.has_left() => false,
            // through the TLS layer: session tickets and the like are not application bytes
            Io::Tls(io) => {
                self.buf.reserve(64);
                matches!(
                    tokio_util::io::poll_read_buf(Pin::new(&mut **io), &mut cx, &mut self.buf),
                    Poll::Pending
                )
            }
        }
    }

    pub(super) fn output_empty(&self) -> bool {
        self.wpos == self.wbuf.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// Writes the pending output; Ready(Ok) once all of it is written.
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output_empty() {
            let head = &self.wbuf[self.wpos..];
            let n = if self.data.is_empty() && self.tail.is_empty() {
                ready!(Pin::new(&mut self.io).poll_write(cx, head))?
            } else {
                let slices = [
                    IoSlice::new(head),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.tail),
                ];
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume_output(n);
        }
        // TLS holds what it encrypted until flushed
        if let Io::Tls(io) = &mut self.io {
            ready!(Pin::new(&mut **io).poll_flush(cx))?;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    pub(super) fn consume_output(&mut self, mut n: usize) {
        let head = (self.wbuf.len() - self.wpos).min(n);
        self.wpos += head;
        n -= head;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    /// Reads what the socket has into `buf`. `Ready(Ok(0))` is the end of the stream.
    ///
    /// A read that does not fill the free space clears the socket's readiness, as tokio's
    /// own `poll_read` does: the next read waits for the reactor instead of costing a
    /// system call that would only say `EAGAIN`.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let io = match &mut self.io {
            Io::Tcp(io) => {
                // what the end of a turn could not send goes on (reads do not wait for it)
                io.send_left(cx);
                io.tcp()
            }
            Io::Tls(io) => {
                let n = ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut **io),
                    cx,
                    &mut self.buf
                ))?;
                if n == spare {
                    self.read_size = (self.read_size * 2).min(MAX_READ);
                }
                return Poll::Ready(Ok(n));
            }
        };
        loop {
            let mut got = 0;
            let buf = &mut self.buf;
            let res = io.try_io(Interest::READABLE, || {
                let n = io.try_read_buf(buf)?;
                got = n;
                if n > 0 && n < spare {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match res {
                Ok(n) => {
                    if n == spare {
                        self.read_size = (self.read_size * 2).min(MAX_READ);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got > 0 {
                        return Poll::Ready(Ok(got));
                    }
                    ready!(io.poll_read_ready(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Sends the output and the request body; Ready(Ok) when all of it is written.
    pub(super) fn poll_send(
        &mut self,
        req: &mut Option<ReqBody>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            let mut body_pending = false;
            while let Some(rb) = req.as_mut().filter(|rb| !rb.done) {
                if !self.data.is_empty() || self.wbuf.len() - self.wpos >= COALESCE {
                    break;
                }
                match Pin::new(&mut rb.body).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(frame) => rb.frame(frame, self).map_err(|_| SendError::Body)?,
                }
            }
            if self.output_empty() {
                if body_pending {
                    return Poll::Pending;
                }
                *req = None;
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_flush(cx)).map_err(|_| SendError::Write)?;
        }
    }
}

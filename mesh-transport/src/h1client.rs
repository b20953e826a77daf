//! The connector's HTTP/1.1 client: one request at a time over one pooled upstream
//! connection, written and read by the request's own task.
//!
//! hyper's client connection runs as a task of its own and is fed through a channel: every
//! request crosses two task hand-offs (request in, response out), an `mpsc` and a
//! `oneshot`, and moves its head through both. A proxy worker that owns its upstream
//! connections does not need that: here the request task encodes the head, writes it, reads
//! and parses the response head, and (for the common small response) has the whole body in
//! the same read, so the connection goes back to the worker's pool before the response is
//! returned. Measured (callgrind, routing and balancing on): see `docs/performance.md`.
//!
//! Message framing follows RFC 9112:
//!
//! - **Request**: origin-form request line and the headers as the stack left them (the
//!   connector has removed hop-by-hop fields). An empty body is sent as is; a body with a
//!   `Content-Length` (or an exact size) is sent raw and counted; any other body is sent
//!   `Transfer-Encoding: chunked`, with its trailers.
//! - **Response** (§6.3): no body for `HEAD`, 1xx, 204 and 304; `Transfer-Encoding` ending in
//!   `chunked` is decoded (a `Content-Length` beside it is dropped and the connection is not
//!   reused); otherwise `Content-Length` (conflicting values are a protocol error); otherwise
//!   the body runs to the end of the connection. Interim 1xx responses (`100 Continue`,
//!   `103 Early Hints`) are skipped; `101` ends the exchange when the request asked for an
//!   upgrade (the connection becomes a [`Tunnel`], never pooled), else it is a protocol
//!   error.
//! - **Reuse**: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
//!   `Connection: keep-alive`; never after a close-delimited body, a framing conflict, a
//!   request body the upstream did not wait for, or bytes beyond the response.
//!
//! The request body streams while the response is read (an upstream may answer early, or
//! stream its answer while the upload goes on); the response body streams to the caller.

use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use crate::headers::{CONNECTION, TRANSFER_ENCODING, UPGRADE, connection_tokens, hop_by_hop_bit};
use crate::reqbody::{RequestBody, RequestBodyError};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use mesh_core::MeshBody;
use mesh_core::ext::UpstreamPool;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use crate::pool::{Pool, PoolKey};
use crate::upgrade::{Tunnel, TunnelHandle};
use crate::upstream::{EngineResponse, UpstreamBody};

/// The largest response head (status line and header fields) accepted from an upstream;
/// Envoy's `max_response_headers_kb` defaults to 60.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The largest trailer section, and the longest chunk-size line, accepted.
const MAX_TRAILERS: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Header fields parsed without a heap buffer; more (up to [`MAX_HEADERS`]) take one.
const STACK_HEADERS: usize = 64;
const MAX_HEADERS: usize = 1024;
/// Free space made before each read; grows (to [`MAX_READ`]) while reads fill it.
const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Request body frames up to this size are copied next to the head (one write); larger
/// ones are written from their own buffer.
const COALESCE: usize = 16 * 1024;

/// One upstream HTTP/1.1 connection and its buffers. Idle in the pool, it holds no bytes.
/// Boxed wherever it travels (pool, exchange, response body): a pointer moves instead of
/// the whole state on every request.
pub(crate) struct H1Conn {
    io: Io,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Output not yet written: `wbuf[wpos..]`, then `data`, then `tail`.
    wbuf: Vec<u8>,
    wpos: usize,
    data: Bytes,
    tail: &'static [u8],
    read_size: usize,
    /// The pool's sweep count when the connection last went idle (the pool's clock).
    pub(crate) idle_since: u32,
    /// Sweeps it may stay idle (its cluster's `idleTimeout`).
    pub(crate) idle_sweeps: u32,
    /// Exchanges begun on it, and its cluster's `maxRequestsPerConnection`.
    requests: u32,
    max_requests: Option<u32>,
}

/// The connection's transport: plain TCP (read without spurious `EAGAIN`s, see
/// [`H1Conn::poll_fill`]), or TLS over TCP (rustls, from the connector's
/// [`UpstreamTls`](crate::tls::UpstreamTls)).
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// What is left of the request body to send.
struct ReqBody {
    body: RequestBody,
    chunked: bool,
    /// With `Content-Length` framing: bytes still expected.
    remaining: u64,
    /// The end of the body has been framed (it may still sit in the output).
    done: bool,
}

/// Why an exchange failed, and whether nothing of it reached the upstream's answer (so
/// that a request without a body may be sent again on another connection).
pub(crate) struct Failed {
    pub(crate) kind: FailKind,
    /// No byte of a response was received and the failure was the connection's (closed,
    /// reset): the usual fate of a pooled connection the upstream closed while idle.
    pub(crate) retryable: bool,
}

/// The local reply an exchange failure maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// The connection closed or reset before a complete response head (`503 UC`).
    Closed,
    /// The client's request body failed before the response head (`400 DPE`).
    Downstream,
    /// The response head is malformed or too large (`502 UPE`).
    Protocol,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// The body of an upstream HTTP/1.1 response that did not arrive whole with its head. It
/// owns the connection until the body ends, then returns it to the pool.
pub(crate) struct H1Body {
    conn: Option<Box<H1Conn>>,
    req: Option<ReqBody>,
    state: BodyState,
    reusable: bool,
    release: Release,
}

/// Where a connection goes back when its exchange is over.
pub(crate) struct Release {
    pub(crate) pool: Pool,
    pub(crate) key: PoolKey,
    pub(crate) max_idle: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    /// In a chunked body: before a chunk-size line, inside a chunk's data, before the CRLF
    /// that ends a chunk's data, in the trailer section.
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Eof,
    /// Failed; the error is reported at the next poll (see [`H1Body::fail`]).
    Failing(&'static str),
    Done,
}

/// An error of the response body, after its head was sent on.
#[derive(Debug)]
pub(crate) struct BodyError(&'static str);

// === impl Io ===

impl Io {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

// === impl H1Conn ===

impl H1Conn {
    /// Wraps a connected socket.
    #[cfg(test)]
    pub(crate) fn new(io: TcpStream) -> Box<Self> {
        H1Conn::with_io(Io::Tcp(io))
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
            requests: 0,
            max_requests: None,
        })
    }

    /// The transport, for a tunnel (the connection is done with HTTP).
    pub(crate) fn into_io(self) -> Io {
        self.io
    }

    /// Takes the connection settings of the cluster of the request about to use it.
    pub(crate) fn configure(&mut self, pool: UpstreamPool) {
        self.max_requests = pool.max_requests_per_connection;
        self.idle_sweeps = crate::upstream::idle_sweeps(&pool);
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
            Io::Tcp(io) => match io.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    // Readable: end of stream, stray bytes, or readiness left over from the
                    // last read. Only the last one leaves the connection usable.
                    self.buf.reserve(64);
                    matches!(io.try_read_buf(&mut self.buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
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

    fn output_empty(&self) -> bool {
        self.wpos == self.wbuf.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// Writes the pending output; Ready(Ok) once all of it is written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output_empty() {
            let head = &self.wbuf[self.wpos..];
            let n = if self.data.is_empty() && self.tail.is_empty() {
                ready!(self.io.poll_write(cx, head))?
            } else {
                let slices = [
                    IoSlice::new(head),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.tail),
                ];
                ready!(self.io.poll_write_vectored(cx, &slices))?
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

    fn consume_output(&mut self, mut n: usize) {
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
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let io = match &mut self.io {
            Io::Tcp(io) => io,
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
    fn poll_send(
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

/// Why sending stopped.
enum SendError {
    /// Writing to the upstream failed: it may have answered and closed; read on.
    Write,
    /// The request body failed (the client's stream broke, or it did not match its
    /// `Content-Length`): the exchange is abandoned.
    Body,
}

// === impl ReqBody ===

impl ReqBody {
    /// Frames one frame of the body into the connection's output.
    fn frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, RequestBodyError>>,
        out: &mut H1Conn,
    ) -> io::Result<()> {
        match frame {
            None => {
                self.done = true;
                if self.chunked {
                    out.wbuf.extend_from_slice(b"0\r\n\r\n");
                } else if self.remaining != 0 {
                    return Err(io::Error::other(
                        "request body shorter than its content-length",
                    ));
                }
            }
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if self.chunked {
                        let _ = write!(out.wbuf, "{:x}\r\n", data.len());
                    } else {
                        let len = data.len() as u64;
                        if len > self.remaining {
                            return Err(io::Error::other(
                                "request body longer than its content-length",
                            ));
                        }
                        self.remaining -= len;
                    }
                    if data.len() <= COALESCE {
                        out.wbuf.extend_from_slice(&data);
                        if self.chunked {
                            out.wbuf.extend_from_slice(b"\r\n");
                        }
                    } else {
                        out.data = data;
                        out.tail = if self.chunked { b"\r\n" } else { b"" };
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // Trailers end the body. Only chunked framing can carry them.
                        self.done = true;
                        if self.chunked {
                            out.wbuf.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                put_field(&mut out.wbuf, name, value);
                            }
                            out.wbuf.extend_from_slice(b"\r\n");
                        } else if self.remaining != 0 {
                            return Err(io::Error::other(
                                "request body shorter than its content-length",
                            ));
                        }
                    }
                }
            },
        }
        Ok(())
    }
}

fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

// === the exchange ===

/// Sends one request (head from `req`, body `body`) over `conn` and reads the response
/// head. A response that arrived whole returns the connection to the pool before this
/// returns; otherwise the connection travels in the response body.
///
/// `received` is the protocol the request arrived in, for the proxy's `Via` entry.
pub(crate) async fn exchange(
    mut conn: Box<H1Conn>,
    req: &Request<RequestBody>,
    received: Version,
    body: Option<RequestBody>,
    release: Release,
    upgrade: bool,
) -> Result<EngineResponse, Failed> {
    let is_head = req.method() == Method::HEAD;
    conn.requests = conn.requests.saturating_add(1);
    let via = release.pool.guard().map(|g| g.hop.via_line(received));
    let mut req = encode_head(&mut conn.wbuf, req, via, body);
    let mut received = false;
    let mut send_failed = false;
    let head = std::future::poll_fn(|cx| {
        if !send_failed && (req.is_some() || !conn.output_empty()) {
            match conn.poll_send(&mut req, cx) {
                Poll::Ready(Err(SendError::Write)) => {
                    // The upstream may have answered and closed; read what it sent.
                    send_failed = true;
                    req = None;
                }
                Poll::Ready(Err(SendError::Body)) => {
                    return Poll::Ready(Err(FailKind::Downstream));
                }
                _ => {}
            }
        }
        poll_head(&mut conn, is_head, upgrade, &mut received, cx)
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(kind) => {
            return Err(Failed {
                kind,
                retryable: kind == FailKind::Closed && !received,
            });
        }
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(switched(*conn, head));
    }
    let mut reusable = head.keep_alive && !send_failed;
    let body = match head.framing {
        Framing::Empty => Some(None),
        Framing::Length(n) if (conn.buf.len() as u64) >= n => {
            // usize: n <= buf.len()
            let n = n as usize;
            Some((n > 0).then(|| conn.buf.split_to(n).freeze()))
        }
        _ => None,
    };
    let body = match body {
        Some(bytes) => {
            // Complete. The connection is reusable if the request was all sent, nothing
            // follows the response, and both sides keep it alive.
            reusable &= req.is_none() && conn.buf.is_empty();
            if reusable {
                conn.read_size = MIN_READ;
                release.pool.release_h1(release.key, conn, release.max_idle);
            }
            UpstreamBody::full(bytes)
        }
        None => {
            let state = match head.framing {
                Framing::Length(n) => BodyState::Length(n),
                Framing::Chunked => BodyState::ChunkSize,
                Framing::Eof | Framing::Empty => BodyState::Eof,
            };
            if head.framing == Framing::Eof {
                reusable = false;
            }
            UpstreamBody::h1(H1Body {
                conn: Some(conn),
                req,
                state,
                reusable,
                release,
            })
        }
    };
    let mut res = Response::new(MeshBody::inner(body));
    *res.status_mut() = head.status;
    // RFC 9110 §6.2: a proxy sends its own version; the upstream's only decides reuse.
    *res.version_mut() = Version::HTTP_11;
    *res.headers_mut() = head.headers;
    Ok(res)
}

/// The upstream agreed to an upgrade: the connection leaves the pool's world and becomes
/// the upstream half of a tunnel (with whatever it sent past the `101` head), carried to
/// the engine in the response.
#[cold]
fn switched(conn: H1Conn, head: Head) -> EngineResponse {
    let tunnel = Tunnel::new(conn.io, conn.buf.freeze());
    let mut res = Response::new(MeshBody::inner(UpstreamBody::full(None)));
    *res.status_mut() = head.status;
    *res.version_mut() = Version::HTTP_11;
    *res.headers_mut() = head.headers;
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    res.extensions_mut().insert(TunnelHandle::new(tunnel));
    res
}

/// Encodes the request line and header fields into `out`, with the proxy's `Via` entry
/// last (after any `Via` the request already had: RFC 9110 §7.6.3 appends); returns how the
/// body goes.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &Request<RequestBody>,
    via: Option<&[u8]>,
    body: Option<RequestBody>,
) -> Option<ReqBody> {
    out.clear();
    out.extend_from_slice(parts.method().as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers() {
        put_field(out, name, value);
    }
    if let Some(via) = via {
        out.extend_from_slice(via);
    }
    let rb = body.map(|body| {
        let declared = parts
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared.or_else(|| body.size_hint().exact()) {
            Some(n) => {
                if declared.is_none() {
                    let _ = write!(out, "content-length: {n}\r\n");
                }
                ReqBody {
                    body,
                    chunked: false,
                    remaining: n,
                    done: false,
                }
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                ReqBody {
                    body,
                    chunked: true,
                    remaining: 0,
                    done: false,
                }
            }
        }
    });
    out.extend_from_slice(b"\r\n");
    rb
}

/// Reads until a final response head is complete, skipping interim (1xx) responses.
fn poll_head(
    conn: &mut H1Conn,
    is_head: bool,
    upgrade: bool,
    received: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, FailKind>> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, is_head, upgrade) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {
                    if conn.buf.len() > MAX_RESPONSE_HEAD {
                        return Poll::Ready(Err(FailKind::Protocol));
                    }
                }
                Err(()) => return Poll::Ready(Err(FailKind::Protocol)),
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Err(FailKind::Closed)),
            Ok(_) => *received = true,
        }
    }
}

/// Where a parsed field lies in the head: name offset and length, value offset and length.
type Field = [u32; 4];

/// Parses a response head at the start of `buf`. `Ok(None)`: more bytes are needed.
/// Interim responses are consumed and skipped; the final head is consumed (split off and
/// frozen: header values share its bytes). `101` is final when the request asked for an
/// `upgrade`, an error otherwise.
fn parse_head(buf: &mut BytesMut, is_head: bool, upgrade: bool) -> Result<Option<Head>, ()> {
    loop {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut offsets: [Field; STACK_HEADERS] = [[0; 4]; STACK_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut stack);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return parse_head_heap(buf, is_head, upgrade),
            Ok(httparse::Status::Complete(_)) | Err(_) => return Err(()),
        };
        let code = res.code.ok_or(())?;
        let http10 = res.version == Some(0);
        let n = record_offsets(buf.as_ptr(), res.headers, &mut offsets);
        match finish_head(buf, len, code, http10, &offsets[..n], is_head, upgrade)? {
            Some(head) => return Ok(Some(head)),
            None if buf.is_empty() => return Ok(None),
            None => {} // an interim response: the next one follows
        }
    }
}

/// After a complete parse of `len` bytes: an interim response is consumed (`None`), a final
/// one split off, frozen and built.
fn finish_head(
    buf: &mut BytesMut,
    len: usize,
    code: u16,
    http10: bool,
    fields: &[Field],
    is_head: bool,
    upgrade: bool,
) -> Result<Option<Head>, ()> {
    if interim(code, upgrade)? {
        buf.advance(len);
        return Ok(None);
    }
    let head = buf.split_to(len).freeze();
    build_head(&head, fields, code, http10, is_head).map(Some)
}

#[cold]
fn parse_head_heap(buf: &mut BytesMut, is_head: bool, upgrade: bool) -> Result<Option<Head>, ()> {
    let mut heap = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut heap);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) | Err(_) => return Err(()),
    };
    let code = res.code.ok_or(())?;
    let http10 = res.version == Some(0);
    let mut offsets = vec![[0; 4]; res.headers.len()];
    let n = record_offsets(buf.as_ptr(), res.headers, &mut offsets);
    match finish_head(buf, len, code, http10, &offsets[..n], is_head, upgrade)? {
        Some(head) => Ok(Some(head)),
        None => parse_head(buf, is_head, upgrade),
    }
}

/// Whether `code` is an interim response to skip; `101` (an upgrade) is final when the
/// request asked for an `upgrade`, refused otherwise.
fn interim(code: u16, upgrade: bool) -> Result<bool, ()> {
    match code {
        101 if upgrade => Ok(false),
        101 => Err(()),
        100..=199 => Ok(true),
        _ => Ok(false),
    }
}

/// Records where each field's name and value lie relative to `base` (the parsed buffer).
fn record_offsets(base: *const u8, fields: &[httparse::Header<'_>], out: &mut [Field]) -> usize {
    let base = base as usize;
    let mut n = 0;
    for (f, o) in fields.iter().zip(out.iter_mut()) {
        // offsets within a head of at most MAX_HEADERS fields and a few hundred KiB
        *o = [
            (f.name.as_ptr() as usize - base) as u32,
            f.name.len() as u32,
            (f.value.as_ptr() as usize - base) as u32,
            f.value.len() as u32,
        ];
        n += 1;
    }
    n
}

/// Builds the header map (hop-by-hop fields left out) and decides framing and reuse.
fn build_head(
    head: &Bytes,
    fields: &[Field],
    code: u16,
    http10: bool,
    is_head: bool,
) -> Result<Head, ()> {
    let status = StatusCode::from_u16(code).map_err(|_| ())?;
    let version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    // Field names listed in `Connection` other than close / keep-alive (rare).
    let mut named: Vec<HeaderName> = Vec::new();
    for &[no, nl, vo, vl] in fields {
        let name = head.get(no as usize..(no + nl) as usize).ok_or(())?;
        let value_range = vo as usize..(vo + vl) as usize;
        let raw_value = head.get(value_range.clone()).ok_or(())?;
        match hop_by_hop_bit(name) {
            0 => {
                let name = HeaderName::from_bytes(name).map_err(|_| ())?;
                let value =
                    HeaderValue::from_maybe_shared(head.slice(value_range)).map_err(|_| ())?;
                if name == header::CONTENT_LENGTH {
                    let n = parse_content_length(raw_value)?;
                    match content_length {
                        Some(prev) if prev != n => return Err(()),
                        Some(_) => continue, // an identical repeat: keep one
                        None => content_length = Some(n),
                    }
                }
                headers.append(name, value);
            }
            CONNECTION => {
                for token in connection_tokens(raw_value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if code == 101 && token.eq_ignore_ascii_case(b"upgrade") {
                        // the `Upgrade` of a `101` is relayed (see below)
                    } else if let Ok(n) = HeaderName::from_bytes(token) {
                        named.push(n);
                    }
                }
            }
            TRANSFER_ENCODING => {
                transfer_encoding = true;
                // chunked must be the final coding (RFC 9112 §6.3 rule 4)
                chunked = raw_value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            // the protocol switched to, relayed with the `101` that agrees to it
            UPGRADE if code == 101 => {
                let value =
                    HeaderValue::from_maybe_shared(head.slice(value_range)).map_err(|_| ())?;
                headers.append(header::UPGRADE, value);
            }
            // `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`: dropped
            _ => {}
        }
    }
    for n in named {
        headers.remove(n);
    }
    let no_body = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep = if version == Version::HTTP_10 {
        keep_alive && !close
    } else {
        !close
    };
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        if content_length.is_some() {
            // RFC 9112 §6.3 rule 3: Transfer-Encoding wins; the length is dropped and the
            // connection is not trusted further.
            headers.remove(header::CONTENT_LENGTH);
            keep = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep = false;
            Framing::Eof
        }
    } else if let Some(n) = content_length {
        if n == 0 {
            Framing::Empty
        } else {
            Framing::Length(n)
        }
    } else {
        keep = false;
        Framing::Eof
    };
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive: keep,
    })
}

fn parse_content_length(v: &[u8]) -> Result<u64, ()> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

// === impl H1Body ===

impl H1Body {
    /// Ends the body: the connection goes back to the pool when it can be reused.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(mut conn) = self.conn.take()
            && self.reusable
            && self.req.is_none()
            && conn.buf.is_empty()
            && conn.output_empty()
        {
            conn.read_size = MIN_READ;
            self.release
                .pool
                .release_h1(self.release.key, conn, self.release.max_idle);
        }
        self.req = None;
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Keep sending the request body while the response streams.
        if self.req.is_some()
            && let Some(conn) = self.conn.as_mut()
        {
            match conn.poll_send(&mut self.req, cx) {
                Poll::Ready(Err(SendError::Write)) => {
                    self.req = None;
                    self.reusable = false;
                }
                Poll::Ready(Err(SendError::Body)) => {
                    return self.fail(cx, BodyError("request body failed"));
                }
                _ => {}
            }
        }
        loop {
            match self.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failing(e) => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Some(Err(BodyError(e))));
                }
                _ => {}
            }
            let Some(conn) = self.conn.as_mut() else {
                return self.fail(cx, BodyError("connection gone"));
            };
            match decode(&mut self.state, &mut conn.buf) {
                Err(e) => return self.fail(cx, e),
                Ok(Step::Data(data)) => {
                    if self.state == BodyState::Done {
                        // the last bytes: the connection can serve the next request now
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) if self.state == BodyState::Eof => {
                        self.reusable = false;
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(0) => {
                        return self.fail(cx, BodyError("upstream closed the connection mid-body"));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return self.fail(cx, BodyError("upstream connection failed mid-body"));
                    }
                },
            }
        }
    }

    /// Drops the connection and fails the body, one poll later: hyper's server writes the
    /// response head (and the data so far) when a body poll is pending, and would drop them
    /// if the error came in the same turn. The client then sees the status and a truncated
    /// body, as with Envoy, rather than a connection closed before any response.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        e: BodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.reusable = false;
        self.conn = None;
        self.req = None;
        self.state = BodyState::Failing(e.0);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(rem) => SizeHint::with_exact(rem),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }
}

/// What [`decode`] found in the buffer.
#[derive(Debug)]
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete (nothing more to yield).
    End,
    /// More bytes are needed.
    More,
}

/// Takes the next piece of a response body from `buf` (RFC 9112 §6.3, §7.1), advancing
/// `state`. Data is split off the buffer, not copied. Pure: no I/O, so that the framing is
/// tested (and property-tested) on byte strings.
fn decode(state: &mut BodyState, buf: &mut BytesMut) -> Result<Step, BodyError> {
    loop {
        match *state {
            BodyState::Done | BodyState::Failing(_) => return Ok(Step::End),
            BodyState::Length(rem) | BodyState::ChunkData(rem) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                // usize: at most buf.len()
                let n = rem.min(buf.len() as u64) as usize;
                let data = buf.split_to(n).freeze();
                let rem = rem - n as u64;
                *state = match *state {
                    BodyState::Length(_) if rem == 0 => BodyState::Done,
                    BodyState::Length(_) => BodyState::Length(rem),
                    _ if rem == 0 => BodyState::ChunkEnd,
                    _ => BodyState::ChunkData(rem),
                };
                return Ok(Step::Data(data));
            }
            BodyState::Eof => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                return Ok(Step::Data(buf.split().freeze()));
            }
            BodyState::ChunkSize => match chunk_size_line(buf)? {
                Some((line, size)) => {
                    buf.advance(line);
                    *state = if size == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                None => return Ok(Step::More),
            },
            BodyState::ChunkEnd => match buf.first() {
                Some(b'\n') => {
                    buf.advance(1);
                    *state = BodyState::ChunkSize;
                }
                Some(b'\r') if buf.len() >= 2 => {
                    if buf[1] != b'\n' {
                        return Err(BodyError("malformed chunk end"));
                    }
                    buf.advance(2);
                    *state = BodyState::ChunkSize;
                }
                Some(b'\r') | None => return Ok(Step::More),
                Some(_) => return Err(BodyError("malformed chunk end")),
            },
            BodyState::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; STACK_HEADERS];
                let mut offsets: [Field; STACK_HEADERS] = [[0; 4]; STACK_HEADERS];
                let parsed = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fs))) => {
                        Some((len, record_offsets(buf.as_ptr(), fs, &mut offsets)))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Err(BodyError("malformed trailer section")),
                };
                let Some((len, n)) = parsed else {
                    if buf.len() > MAX_TRAILERS {
                        return Err(BodyError("trailer section too large"));
                    }
                    return Ok(Step::More);
                };
                let bytes = buf.split_to(len).freeze();
                let trailers = trailer_map(&bytes, &offsets[..n])?;
                *state = BodyState::Done;
                return Ok(if trailers.is_empty() {
                    Step::End
                } else {
                    Step::Trailers(trailers)
                });
            }
        }
    }
}

/// Parses a chunk-size line (`1a;ext=v CRLF`, RFC 9112 §7.1) at the start of `buf`:
/// `Ok(Some((line length, size)))`, or `Ok(None)` when the line is not complete yet.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, BodyError> {
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Err(BodyError("chunk-size line too long"))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(BodyError("malformed chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(BodyError("malformed chunk size"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        size = (size << 4) | u64::from(v);
    }
    Ok(Some((lf + 1, size)))
}

fn trailer_map(bytes: &Bytes, fields: &[Field]) -> Result<HeaderMap, BodyError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for &[no, nl, vo, vl] in fields {
        let name = bytes
            .get(no as usize..(no + nl) as usize)
            .ok_or(BodyError("malformed trailer name"))?;
        if hop_by_hop_bit(name) != 0 {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| BodyError("malformed trailer name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vo as usize..(vo + vl) as usize))
            .map_err(|_| BodyError("malformed trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        H1Body::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        H1Body::size_hint(self)
    }
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("state", &self.state)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(raw: &str, is_head: bool) -> Result<Option<Head>, ()> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, is_head, false)
    }

    fn framing(raw: &str) -> (Framing, bool) {
        let h = head(raw, false).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn framing_follows_rfc9112_section_6_3() {
        // rule 1: no body for 1xx (skipped), 204, 304, and responses to HEAD
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Empty, true)
        );
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.headers["content-length"], "5");
        // rule 3: Transfer-Encoding and Content-Length: chunked wins, length dropped, no reuse
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(h.headers.get("content-length").is_none());
        assert!(h.headers.get("transfer-encoding").is_none());
        // rule 4: a final coding other than chunked runs to the close
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            (Framing::Eof, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        // rule 5: conflicting lengths are an error; identical repeats are one length
        assert!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                false
            )
            .is_err()
        );
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(h.headers.get_all("content-length").iter().count(), 1);
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false).is_err());
        // rule 6 and 8
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), (Framing::Eof, false));
    }

    #[test]
    fn persistence_follows_rfc9112_section_9_3() {
        let cl = "content-length: 1\r\n";
        assert!(framing(&format!("HTTP/1.1 200 OK\r\n{cl}\r\n")).1);
        assert!(!framing(&format!("HTTP/1.1 200 OK\r\n{cl}connection: close\r\n\r\n")).1);
        assert!(
            !framing(&format!(
                "HTTP/1.1 200 OK\r\n{cl}connection: x, Close\r\n\r\n"
            ))
            .1
        );
        assert!(!framing(&format!("HTTP/1.0 200 OK\r\n{cl}\r\n")).1);
        assert!(
            framing(&format!(
                "HTTP/1.0 200 OK\r\n{cl}connection: keep-alive\r\n\r\n"
            ))
            .1
        );
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_dropped() {
        let h = head(
            "HTTP/1.1 200 OK\r\nconnection: x-a, keep-alive\r\nx-a: 1\r\nx-b: 2\r\nkeep-alive: timeout=5\r\nupgrade: h2c\r\nproxy-connection: x\r\nte: trailers\r\nset-cookie: a\r\nset-cookie: b\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let mut names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "set-cookie", "x-b"]);
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a", "b"]);
    }

    #[test]
    fn interim_responses_are_skipped_and_101_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        let h = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(h.headers.get("link").is_none());
        assert_eq!(&buf[..], b"ok");
        // an interim response alone: consumed, more needed
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, false, false).unwrap().is_none());
        assert!(buf.is_empty());
        assert!(
            head(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\n\r\n",
                false
            )
            .is_err()
        );
    }

    /// An upgrade request: `101` is the final head, its `Upgrade` is kept, and what follows
    /// it (the new protocol's first bytes) stays in the buffer for the tunnel.
    #[test]
    fn switching_protocols_ends_the_head_when_an_upgrade_was_asked() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n\x81\x02hi"[..],
        );
        let h = parse_head(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["sec-websocket-accept"], "x");
        assert!(h.headers.get("connection").is_none());
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(&buf[..], b"\x81\x02hi");
        // not asked for: still refused; and a 200 to an upgrade request is a plain answer
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, false, false).is_err());
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nupgrade: ws\r\ncontent-length: 0\r\n\r\n"[..]);
        let h = parse_head(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.headers.get("upgrade").is_none());
    }

    #[test]
    fn malformed_partial_and_oversized_heads() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
        assert!(head("HTTP/1.1 abc\r\n\r\n", false).is_err());
        assert!(head("garbage\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).is_err());
        let big = format!(
            "HTTP/1.1 200 OK\r\nx: {}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert!(head(&big, false).is_err());
        // more fields than the stack array: parsed from the heap
        let many: String = (0..STACK_HEADERS + 10)
            .map(|i| format!("x-{i}: {i}\r\n"))
            .collect();
        let h = head(
            &format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n"),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.headers.len(), STACK_HEADERS + 11);
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size_line(b"1a\r\n").unwrap(), Some((4, 26)));
        assert_eq!(
            chunk_size_line(b"A;ext=1;q=\"x\"\r\nrest").unwrap(),
            Some((15, 10))
        );
        assert_eq!(chunk_size_line(b"5 ;e\r\n").unwrap(), Some((6, 5)));
        assert_eq!(chunk_size_line(b"0\n").unwrap(), Some((2, 0)));
        assert_eq!(chunk_size_line(b"1a").unwrap(), None);
        assert!(chunk_size_line(b"zz\r\n").is_err());
        assert!(chunk_size_line(b"\r\n").is_err());
        assert!(chunk_size_line(b"-1\r\n").is_err());
        assert!(chunk_size_line(b"1 2\r\n").is_err());
        // 17 hex digits would overflow 64 bits
        assert!(chunk_size_line(b"10000000000000000\r\n").is_err());
        assert!(chunk_size_line(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
    }

    /// Feeds `wire` to the decoder in the given pieces; returns the data and trailers, or
    /// the error.
    fn run(
        mut state: BodyState,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), BodyError> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut cuts = cuts
            .iter()
            .copied()
            .filter(|&c| c > 0 && c < wire.len())
            .collect::<Vec<_>>();
        cuts.sort_unstable();
        cuts.push(wire.len());
        let mut cuts = cuts.into_iter();
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match decode(&mut state, &mut buf)? {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::Trailers(t) => {
                    trailers = Some(t);
                    return Ok((data, trailers, buf.is_empty()));
                }
                Step::End => return Ok((data, trailers, buf.is_empty())),
                Step::More => match cuts.next() {
                    Some(c) if c > fed => {
                        buf.extend_from_slice(&wire[fed..c]);
                        fed = c;
                    }
                    Some(_) => {}
                    None => return Err(BodyError("incomplete")),
                },
            }
        }
    }

    fn chunked(body: &[u8], sizes: &[usize], ext: bool, trailer: bool) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            wire.extend_from_slice(format!("{n:X}").as_bytes());
            if ext {
                wire.extend_from_slice(b" ;name=\"v\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend_from_slice(b"0\r\n");
        if trailer {
            wire.extend_from_slice(b"x-checksum: abc\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    proptest! {
        /// Any body, chunked any way, with or without extensions and trailers, and delivered
        /// in any pieces, decodes to itself and consumes exactly its bytes.
        #[test]
        fn chunked_bodies_decode_whatever_the_split(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            cuts in proptest::collection::vec(0usize..4000, 0..12),
            ext in any::<bool>(),
            trailer in any::<bool>(),
        ) {
            let wire = chunked(&body, &sizes, ext, trailer);
            let (data, trailers, all_consumed) = run(BodyState::ChunkSize, &wire, &cuts).unwrap();
            prop_assert_eq!(data, body);
            prop_assert!(all_consumed);
            prop_assert_eq!(trailers.map(|t| t["x-checksum"].clone()), trailer.then(|| HeaderValue::from_static("abc")));
        }

        /// A Content-Length body yields exactly its length and leaves what follows.
        #[test]
        fn length_bodies_stop_at_their_length(
            body in proptest::collection::vec(any::<u8>(), 1..3000),
            extra in proptest::collection::vec(any::<u8>(), 0..10),
            cuts in proptest::collection::vec(0usize..4000, 0..12),
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(&extra);
            let mut state = BodyState::Length(body.len() as u64);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c > 0 && c < wire.len()).collect();
            cuts.sort_unstable();
            cuts.push(wire.len());
            let mut fed = 0;
            for c in cuts {
                buf.extend_from_slice(&wire[fed..c]);
                fed = c;
                while let Step::Data(d) = decode(&mut state, &mut buf).unwrap() {
                    got.extend_from_slice(&d);
                }
            }
            prop_assert_eq!(got, body);
            prop_assert_eq!(state, BodyState::Done);
            prop_assert_eq!(&buf[..], &extra[..]);
        }

        /// Arbitrary bytes in a chunked body end in data, an error or a request for more:
        /// never a panic, and never more data than bytes given.
        #[test]
        fn garbage_in_a_chunked_body_never_panics(
            wire in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut state = BodyState::ChunkSize;
            let mut buf = BytesMut::from(&wire[..]);
            let mut total = 0;
            for _ in 0..1000 {
                match decode(&mut state, &mut buf) {
                    Ok(Step::Data(d)) => total += d.len(),
                    _ => break,
                }
            }
            prop_assert!(total <= wire.len());
        }

        /// Arbitrary response heads parse or fail; never a panic.
        #[test]
        fn garbage_heads_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&wire[..]);
            let _ = parse_head(&mut buf, false, false);
        }
    }
}

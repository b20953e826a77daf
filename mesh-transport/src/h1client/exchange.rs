//! One exchange: the request written, the response head read (interim responses skipped),
//! and the response handed on with its body whole, streaming, or (after a `101`) a tunnel.

use std::task::{Context, Poll, ready};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use mesh_core::MeshBody;

use super::body::{H1Body, Release};
use super::conn::{H1Conn, SendError};
use super::decode::BodyState;
use super::head::{Framing, Head, HeadError, parse_head};
use super::request::encode_head;
use super::{MAX_RESPONSE_HEAD, MIN_READ};
use crate::reqbody::RequestBody;
use crate::upgrade::{Tunnel, TunnelHandle};
use crate::upstream::{EngineResponse, UpstreamBody};

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
    /// The response head is malformed or too large (`502 UPE`), and why.
    Protocol(HeadError),
}

// === the exchange ===

/// Sends one request (head from `req`, body `body`) over `conn` and reads the response
/// head. A response that arrived whole returns the connection to the pool before this
/// returns; otherwise the connection travels in the response body.
///
/// `received` is the protocol the request arrived in, for the proxy's `Via` entry. (Not an
/// `async fn`, whose future would hold its arguments twice: see `Connector::forward_h1`.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(crate) fn exchange(
    mut conn: Box<H1Conn>,
    req: &Request<RequestBody>,
    received: Version,
    body: Option<RequestBody>,
    release: Release,
    upgrade: bool,
) -> impl Future<Output = Result<EngineResponse, Failed>> + Send + '_ {
    async move {
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
                        return Poll::Ready(Err(FailKind::Protocol(HeadError::TooLarge)));
                    }
                }
                Err(e) => return Poll::Ready(Err(FailKind::Protocol(e))),
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Err(FailKind::Closed)),
            Ok(_) => *received = true,
        }
    }
}

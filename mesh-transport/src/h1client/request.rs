//! The request side of an exchange: the head (request line, fields, the proxy's `Via`)
//! and the body's framing (`Content-Length` counted, or chunked with its trailers).

use std::io::{self, Write as _};

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderName, HeaderValue};
use http_body::{Body, Frame};

use super::COALESCE;
use super::conn::H1Conn;
use crate::reqbody::{RequestBody, RequestBodyError};

/// What is left of the request body to send.
pub(super) struct ReqBody {
    pub(super) body: RequestBody,
    pub(super) chunked: bool,
    /// With `Content-Length` framing: bytes still expected.
    pub(super) remaining: u64,
    /// The end of the body has been framed (it may still sit in the output).
    pub(super) done: bool,
}

// === impl ReqBody ===

impl ReqBody {
    /// Frames one frame of the body into the connection's output.
    pub(super) fn frame(
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

/// Encodes the request line and header fields into `out`, with the proxy's `Via` entry
/// last (after any `Via` the request already had: RFC 9110 §7.6.3 appends); returns how the
/// body goes.
// one call site; kept inlined (callgrind, with `Pool::pop_h1`'s: 25 fewer Ir per request)
#[inline]
pub(super) fn encode_head(
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

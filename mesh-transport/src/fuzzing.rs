//! Thin wrappers over the engine's byte parsers, for the fuzz targets (`fuzz/fuzz_targets/`)
//! and the property tests (`tests/parsers.rs`). Not a supported API: hidden from the docs,
//! and free to change with the parsers.
//!
//! - [`response_head`]: the HTTP/1.1 client's response-head parser (status line, fields,
//!   interim responses, framing and reuse);
//! - [`chunked_body`]: the response body decoder from a chunked body's start;
//! - [`request_heads`]: the listener's raw request-head scanner (the `Content-Length` /
//!   `Transfer-Encoding` smuggling checks).

use bytes::BytesMut;
use http::{HeaderMap, StatusCode};

use crate::h1client::{self, BodyState, Framing};
use crate::headers::HeadScanner;

pub use crate::h1client::{BodyError, Decoded, HeadError};
pub use crate::headers::Reject;

/// A response head as the HTTP/1.1 client parsed it.
#[derive(Debug)]
pub struct ResponseHead {
    /// The final status (interim `1xx` responses skipped).
    pub status: StatusCode,
    /// The end-to-end fields (hop-by-hop ones, and those `Connection` names, dropped).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may carry another exchange after this one.
    pub keep_alive: bool,
    /// Bytes of the input the head (and the interim responses before it) took.
    pub consumed: usize,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (`HEAD`, `1xx`, `204`, `304`, `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
    /// Until the connection closes.
    ToClose,
}

/// Parses a response head at the start of `bytes` (a response to a `HEAD` request when
/// `is_head`; `101` accepted when `upgrade`): `Ok(None)` when more bytes are needed.
pub fn response_head(
    bytes: &[u8],
    is_head: bool,
    upgrade: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut buf = BytesMut::from(bytes);
    let Some(head) = h1client::parse_head(&mut buf, is_head, upgrade)? else {
        return Ok(None);
    };
    Ok(Some(ResponseHead {
        status: head.status,
        headers: head.headers,
        framing: match head.framing {
            Framing::Empty => BodyFraming::Empty,
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Chunked => BodyFraming::Chunked,
            Framing::Eof => BodyFraming::ToClose,
        },
        keep_alive: head.keep_alive,
        consumed: bytes.len() - buf.len(),
    }))
}

/// Decodes a chunked body from the start of `wire`, delivered in pieces ending at `cuts`:
/// `Ok(None)` when the input ends before the body does.
pub fn chunked_body(wire: &[u8], cuts: &[usize]) -> Result<Option<Decoded>, BodyError> {
    h1client::feed(BodyState::ChunkSize, wire, cuts)
}

/// Scans a client's byte stream (HTTP/1.x requests) delivered in pieces ending at `cuts`,
/// as the listener does: for each complete head the scanner followed, whether it is to be
/// refused and why.
pub fn request_heads(stream: &[u8], cuts: &[usize]) -> Vec<Option<Reject>> {
    let mut cuts: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < stream.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut scanner = HeadScanner::default();
    let mut from = 0;
    for c in cuts.into_iter().chain([stream.len()]) {
        scanner.feed(&stream[from..c]);
        from = c;
    }
    (1..=scanner.heads()).map(|n| scanner.verdict(n)).collect()
}

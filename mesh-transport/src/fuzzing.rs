//! Thin wrappers over the engine's byte parsers, for the fuzz targets (`fuzz/fuzz_targets/`)
//! and the property tests (`tests/parsers.rs`). Not a supported API: hidden from the docs,
//! and free to change with the parsers.
//!
//! - [`response_head`]: the HTTP/1.1 client's response-head parser (status line, fields,
//!   interim responses, framing and reuse);
//! - [`chunked_body`]: the response body decoder from a chunked body's start;
//! - [`request_heads`]: the listener's raw request-head scanner (the `Content-Length` /
//!   `Transfer-Encoding` smuggling checks);
//! - [`sniff`]: the listener's protocol detection (PERMISSIVE's TLS-or-plaintext first byte,
//!   then the HTTP/2 preface or HTTP/1.x), as each read extends what was seen;
//! - [`h2_guard`]: the HTTP/2 abuse guards' frame scanner (`h2guard`), over both directions;
//! - [`client_hello_sni`]: the L4 listeners' SNI reader (the TLS ClientHello parser the
//!   gateway's PASSTHROUGH servers and the SNI listeners route by), re-exported from
//!   [`crate::l4`] as is.

use bytes::BytesMut;
use http::{HeaderMap, StatusCode};

use crate::h1client::{self, BodyState, Framing};
use crate::headers::HeadScanner;

pub use crate::h1client::{BodyError, Decoded, HeadError};
pub use crate::h2guard::{FrameCursor, FrameHead, GoAwayCause, Seen};
pub use crate::headers::Reject;
pub use crate::l4::{ClientHello, MAX_CLIENT_HELLO, client_hello_sni};

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

/// What the listener decides from a connection's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A TLS handshake (only where the listener accepts TLS or plaintext: PERMISSIVE).
    Tls,
    /// The HTTP/2 client preface.
    H2,
    /// HTTP/1.x.
    H1,
    /// Not decided yet: more bytes are needed.
    NeedMore,
}

/// The listener's protocol detection on a connection whose bytes arrive in the reads given
/// (`reads` concatenated is the stream): with `permissive`, the first byte chooses TLS or
/// plaintext, as the PERMISSIVE listener does; then the HTTP/2 preface or HTTP/1.x, decided
/// at the first read that settles it (what `conn.rs` does with `peek` and `read`).
pub fn sniff(reads: &[&[u8]], permissive: bool) -> Detected {
    let mut seen = Vec::with_capacity(24);
    for r in reads {
        if r.is_empty() {
            continue;
        }
        if seen.is_empty() && permissive && crate::conn::is_tls(r[0]) {
            return Detected::Tls;
        }
        let room = 24 - seen.len();
        seen.extend_from_slice(&r[..r.len().min(room)]);
        match crate::conn::sniff(&seen) {
            crate::conn::Sniffed::H1 => return Detected::H1,
            crate::conn::Sniffed::H2 => return Detected::H2,
            crate::conn::Sniffed::NeedMore => {}
        }
    }
    Detected::NeedMore
}

/// Feeds a connection's bytes to the HTTP/2 abuse guards with the default limits: `client`
/// (after the 24-byte preface) as read from the client in pieces cut at `cuts` (offsets,
/// any order, out-of-range ignored), and `server` as `h2` wrote it. Returns the cause of the
/// first guard that tripped, and the GOAWAY frame it would write.
pub fn h2_guard(client: &[u8], cuts: &[usize], server: &[u8]) -> Option<(GoAwayCause, [u8; 17])> {
    let limits = crate::Limits::default();
    let mut g = crate::h2guard::H2Guard::new(&limits);
    g.sent(server);
    let mut at: Vec<usize> = cuts.iter().copied().filter(|c| *c < client.len()).collect();
    at.sort_unstable();
    at.dedup();
    let mut start = 0;
    // the preface is skipped by the scanner, never a frame
    let _ = g.received(crate::conn::H2_PREFACE);
    for end in at.into_iter().chain(std::iter::once(client.len())) {
        if let Some(cause) = g.received(&client[start..end]) {
            return Some((cause, g.goaway));
        }
        start = end;
    }
    None
}

/// The HTTP/2 abuse guards of one connection with the default limits, for the benchmarks
/// (`benches/benches/h2guard.rs`): what the listener runs on every read and write.
#[derive(Debug)]
pub struct H2Guards(crate::h2guard::H2Guard);

impl Default for H2Guards {
    fn default() -> Self {
        H2Guards(crate::h2guard::H2Guard::new(&crate::Limits::default()))
    }
}

impl H2Guards {
    /// Bytes read from the client (the first 24 are the preface); the cause when a guard
    /// trips.
    pub fn received(&mut self, bytes: &[u8]) -> Option<GoAwayCause> {
        self.0.received(bytes)
    }

    /// Bytes written to the client.
    pub fn sent(&mut self, bytes: &[u8]) {
        self.0.sent(bytes);
    }
}

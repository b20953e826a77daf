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
//!
//! The modules follow the seams of an exchange: [`conn`] (the connection, its transport and
//! buffers, reading and writing), [`request`] (the request head and body framing),
//! [`head`] (response-head parsing, framing and reuse decisions), [`decode`] (the response
//! body decoder: `Content-Length`, chunked, to the close), [`body`] (the streaming response
//! body that owns the connection) and [`exchange`] (one request and its response head).
//! [`head`] and [`decode`] are pure functions of byte strings, property-tested here and
//! fuzzed (`fuzz/fuzz_targets/`) through [`crate::fuzzing`].

mod body;
mod conn;
mod decode;
mod exchange;
mod head;
mod request;

pub(crate) use body::{H1Body, Release};
pub(crate) use conn::{H1Conn, Io};
pub use decode::{BodyError, Decoded};
pub(crate) use decode::{BodyState, feed};
pub(crate) use exchange::{FailKind, exchange};
pub use head::HeadError;
pub(crate) use head::{Framing, parse_head};

/// The largest response head (status line and header fields) accepted from an upstream;
/// Envoy's `max_response_headers_kb` defaults to 60.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The largest trailer section, and the longest chunk-size line, accepted.
pub(crate) const MAX_TRAILERS: usize = 64 * 1024;
pub(crate) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Header fields parsed without a heap buffer; more (up to [`MAX_HEADERS`]) take one.
pub(crate) const STACK_HEADERS: usize = 64;
pub(crate) const MAX_HEADERS: usize = 1024;
/// Free space made before each read; grows (to [`MAX_READ`]) while reads fill it.
pub(crate) const MIN_READ: usize = 16 * 1024;
pub(crate) const MAX_READ: usize = 256 * 1024;
/// Request body frames up to this size are copied next to the head (one write); larger
/// ones are written from their own buffer.
pub(crate) const COALESCE: usize = 16 * 1024;

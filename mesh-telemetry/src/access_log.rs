//! Access logs in Istio's default formats: Envoy's text line with Istio's additions, and
//! Istio's JSON object, written by a thread of their own.
//!
//! [`LogEntry`] holds what one request says about itself; [`Encoding::format`] writes its
//! line into a buffer on the worker (no I/O there); [`AccessLog::log`] hands the line to an
//! [`AccessLogWriter`], whose bounded queue a writer thread drains into the file: a request
//! never waits for a write, and a full queue drops the line and counts it
//! ([`AccessLogWriter::dropped`]).
//!
//! # Formats
//!
//! `TEXT` is Istio's default `accessLogFormat` (istio.io, "Envoy Access Logs", "Default
//! access log format"; `pilot/pkg/model/telemetry_logging.go`):
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```
//!
//! `JSON` is Istio's `EnvoyJSONLogFormatIstio` (the same operators under the keys
//! `start_time`, `method`, `path`, `protocol`, `response_code`, `response_flags`,
//! `response_code_details`, `connection_termination_details`, `bytes_received`,
//! `bytes_sent`, `duration`, `upstream_service_time`, `x_forwarded_for`, `user_agent`,
//! `request_id`, `authority`, `upstream_host`, `upstream_cluster`, `upstream_local_address`,
//! `downstream_local_address`, `downstream_remote_address`, `requested_server_name`,
//! `upstream_transport_failure_reason`, `route_name`), keys in alphabetical order, numbers as
//! numbers (`response_code` 0 when no response was sent, as Envoy's `%RESPONSE_CODE%`), a
//! header's value as a string (`upstream_service_time`) and a missing value as `null`, as
//! Envoy's JSON formatter writes them. Istio's object has no trace id; this one adds
//! `trace_id` (Envoy's `%TRACE_ID%`, 32 hex digits), the trace the request's context
//! belongs to, sampled or not (Envoy's operator is empty for a request its tracer did not
//! trace).
//!
//! A value the entry does not have is `-` in the text line (Envoy's rule).
//! `%CONNECTION_TERMINATION_DETAILS%` is always `-`; `%UPSTREAM_TRANSPORT_FAILURE_REASON%`
//! says why the connection to the upstream failed (refused, or a TLS handshake's failure,
//! as `mesh-transport`'s connector names it: Envoy 1.40's words and BoringSSL's errors),
//! `-` otherwise.
//!
//! The byte counts are the bodies' (Envoy's `%BYTES_RECEIVED%` and `%BYTES_SENT%`: no head,
//! no trailers), unlike Istio's `istio_request_bytes` and `istio_response_bytes` metrics,
//! which count the heads too (see [`crate::record`]).
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use mesh_telemetry::access_log::{Encoding, LogEntry};
//!
//! let mut e = LogEntry::new(UNIX_EPOCH + Duration::from_millis(1_606_339_578_409));
//! e.method = "GET";
//! e.path = "/status/418";
//! e.response_code = 418;
//! let mut line = Vec::new();
//! Encoding::Text.format(&e, &mut line);
//! assert!(line.starts_with(b"[2020-11-25T21:26:18.409Z] \"GET /status/418 HTTP/1.1\" 418 - "));
//! ```

mod writer;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use writer::{AccessLogWriter, DEFAULT_QUEUE, FLUSH_INTERVAL};

use crate::log_filter::LogFilter;

/// The line format (MeshConfig's `accessLogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Istio's default text line.
    #[default]
    Text,
    /// Istio's JSON object, one per line.
    Json,
}

/// What one request says about itself, for its access log line. Every field has a "none"
/// value (empty string, `None`, 0) that the formats write as Envoy does (`-`, `null`).
#[derive(Debug, Clone)]
pub struct LogEntry<'a> {
    /// `%START_TIME%`: when the request's first byte arrived.
    pub start_time: SystemTime,
    /// `%REQ(:METHOD)%`.
    pub method: &'a str,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the path as the client sent it (before a
    /// rewrite), with its query.
    pub path: &'a str,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// `%RESPONSE_CODE%`; 0 when no response was sent.
    pub response_code: u16,
    /// `%RESPONSE_FLAGS%`: Envoy's short flags, comma-separated; empty when none.
    pub response_flags: &'a str,
    /// `%RESPONSE_CODE_DETAILS%` (`via_upstream`, `route_not_found`, …); empty when unknown.
    pub response_code_details: &'a str,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the connection to the upstream failed
    /// (a TLS handshake's failure, named as Envoy names it; its log writes the spaces as
    /// underscores, which the access log recorder does before it gets here).
    pub upstream_transport_failure_reason: Option<&'a str>,
    /// `%BYTES_RECEIVED%`: request body bytes (without the head, as Envoy counts them;
    /// Istio's `istio_request_bytes` metric counts the head too).
    pub bytes_received: u64,
    /// `%BYTES_SENT%`: response body bytes (without the head and trailers).
    pub bytes_sent: u64,
    /// `%DURATION%`: from the start to the last byte sent; written in whole milliseconds.
    pub duration: Option<Duration>,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: from the request handed to the upstream
    /// connection to the upstream's response head; written in whole milliseconds (a string
    /// in JSON, as Envoy writes a header's value). `None` for a local reply.
    pub upstream_service_time: Option<Duration>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    pub x_forwarded_for: Option<&'a str>,
    /// `%REQ(USER-AGENT)%`.
    pub user_agent: Option<&'a str>,
    /// `%REQ(X-REQUEST-ID)%`.
    pub request_id: Option<&'a str>,
    /// `%REQ(:AUTHORITY)%`.
    pub authority: Option<&'a str>,
    /// `%UPSTREAM_HOST%`: the endpoint the request went to.
    pub upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`: Istio's cluster name
    /// (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub upstream_cluster: Option<&'a str>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`: the local address of the connection the request went
    /// out on.
    pub upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the listener's address.
    pub downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client's address.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `%REQUESTED_SERVER_NAME%`: the SNI of a TLS downstream connection.
    pub requested_server_name: Option<&'a str>,
    /// `%ROUTE_NAME%`: the VirtualService route's `name`.
    pub route_name: Option<&'a str>,
    /// `%TRACE_ID%` (JSON only; Istio's text line has none).
    pub trace_id: Option<u128>,
    /// The request's headers (as sent upstream, else as they arrived), when a [`LogFilter`]
    /// reads them (`request.headers`); not written.
    pub request_headers: Option<&'a http::HeaderMap>,
    /// Whether the downstream connection is TLS (a filter's `request.scheme`); not written.
    pub downstream_tls: bool,
    /// Whether the downstream presented a client certificate (a filter's
    /// `connection.mtls`); not written.
    pub mtls: bool,
    /// A gRPC response's status (a filter's `response.grpc_status`); not written.
    pub grpc_status: Option<u32>,
    /// The upstream endpoint's metadata (its labels, namespace, workload): Istio's
    /// `upstream_peer` attribute, for a CEL expression (not written in lines).
    pub upstream_meta: Option<&'a mesh_core::ext::EndpointMeta>,
    /// The downstream peer's SPIFFE identity (inbound, over mTLS): Istio's
    /// `downstream_peer` attribute, for a CEL expression (not written in lines).
    pub downstream_peer: Option<&'a mesh_core::ext::PeerIdentity>,
}

impl<'a> LogEntry<'a> {
    /// An entry that started at `start_time` and knows nothing else yet.
    pub fn new(start_time: SystemTime) -> Self {
        LogEntry {
            start_time,
            method: "",
            path: "",
            protocol: "HTTP/1.1",
            response_code: 0,
            response_flags: "",
            response_code_details: "",
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: None,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            route_name: None,
            trace_id: None,
            request_headers: None,
            downstream_tls: false,
            mtls: false,
            grpc_status: None,
            upstream_meta: None,
            downstream_peer: None,
        }
    }
}

/// An access log: a format, the writer its lines go to, and the filter that chooses them.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    encoding: Encoding,
    writer: Arc<AccessLogWriter>,
    filter: Option<Arc<LogFilter>>,
}

impl AccessLog {
    /// Lines in `encoding`, written by `writer`.
    pub fn new(encoding: Encoding, writer: Arc<AccessLogWriter>) -> Self {
        AccessLog {
            encoding,
            writer,
            filter: None,
        }
    }

    /// Writes only the lines `filter` lets through (a Telemetry's `filter.expression`).
    pub fn with_filter(self, filter: Option<Arc<LogFilter>>) -> Self {
        AccessLog { filter, ..self }
    }

    /// The filter, if any.
    pub fn filter(&self) -> Option<&Arc<LogFilter>> {
        self.filter.as_ref()
    }

    /// The line format.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The writer.
    pub fn writer(&self) -> &Arc<AccessLogWriter> {
        &self.writer
    }

    /// Formats `entry` and queues its line; never blocks (a full queue drops and counts).
    pub fn log(&self, entry: &LogEntry<'_>) {
        if self.filter.as_ref().is_some_and(|f| !f.matches(entry)) {
            return;
        }
        // about the length of a line, so that it is not grown; a buffer the writer thread
        // handed back (no allocation per line)
        let mut line = self.writer.buffer(match self.encoding {
            Encoding::Text => 384,
            Encoding::Json => 768,
        });
        self.encoding.format(entry, &mut line);
        self.writer.write(line);
    }
}

// === formatting ===

impl Encoding {
    /// Appends `entry`'s line (with its `\n`) to `out`.
    pub fn format(self, entry: &LogEntry<'_>, out: &mut Vec<u8>) {
        match self {
            Encoding::Text => text(entry, out),
            Encoding::Json => json(entry, out),
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn opt(s: Option<&str>) -> &str {
    s.filter(|s| !s.is_empty()).unwrap_or("-")
}

// The line is written with `extend_from_slice` and `itoa`, not `write!`: `core::fmt`'s
// machinery (a `dyn Write` call per piece, padding checks) was most of the line's cost
// (criterion `access_log_text`: 1.7 µs per request with `write!`).

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn put_num<I: itoa::Integer>(out: &mut Vec<u8>, n: I) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// How many formatted IPv4 addresses each thread keeps ([`put_socket_addr`]).
const ADDR_CACHE: usize = 8;

/// A formatted IPv4 address: the address, its text and the text's length.
type CachedAddr = (std::net::SocketAddrV4, [u8; 21], u8);

thread_local! {
    /// The IPv4 addresses this thread wrote last, by a hash of the address (direct-mapped):
    /// a line has two or three, the listener's the same on every line and the upstream's
    /// one of a few endpoints.
    static ADDRS: std::cell::RefCell<[Option<CachedAddr>; ADDR_CACHE]> =
        const { std::cell::RefCell::new([None; ADDR_CACHE]) };
}

/// `a`, as `SocketAddr`'s `Display` writes it (`1.2.3.4:80`, `[::1]:80`): an IPv4 address
/// is copied from this thread's cache of the last ones written, else written into a stack
/// buffer first and copied once (no `itoa` call per octet).
fn put_socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            let ip = v4.ip().to_bits();
            let slot = ((ip ^ (ip >> 8) ^ u32::from(v4.port())) as usize) % ADDR_CACHE;
            ADDRS.with_borrow_mut(|cache| {
                let (_, text, n) = match &mut cache[slot] {
                    Some(c) if c.0 == v4 => c,
                    entry => entry.insert(format_v4(v4)),
                };
                out.extend_from_slice(&text[..usize::from(*n)]);
            });
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `v4`'s text (at most 21 bytes: `255.255.255.255:65535`).
fn format_v4(v4: std::net::SocketAddrV4) -> CachedAddr {
    let mut buf = [0u8; 21];
    let mut n = 0;
    for (i, o) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    buf[n] = b':';
    n += 1;
    let port = v4.port();
    let digits = match port {
        0..10 => 1,
        10..100 => 2,
        100..1000 => 3,
        1000..10000 => 4,
        _ => 5,
    };
    let mut p = port;
    for d in buf[n..n + digits].iter_mut().rev() {
        *d = b'0' + (p % 10) as u8;
        p /= 10;
    }
    n += digits;
    (v4, buf, n as u8)
}

fn put_addr(out: &mut Vec<u8>, a: Option<SocketAddr>) {
    match a {
        Some(a) => put_socket_addr(out, a),
        None => out.push(b'-'),
    }
}

fn text(e: &LogEntry<'_>, out: &mut Vec<u8>) {
    out.push(b'[');
    put_time(out, e.start_time);
    put(out, "] \"");
    put(out, or_dash(e.method));
    out.push(b' ');
    put(out, or_dash(e.path));
    out.push(b' ');
    put(out, or_dash(e.protocol));
    put(out, "\" ");
    put_num(out, e.response_code);
    out.push(b' ');
    put(out, or_dash(e.response_flags));
    out.push(b' ');
    put(out, or_dash(e.response_code_details));
    put(out, " - \"");
    put(out, e.upstream_transport_failure_reason.unwrap_or("-"));
    put(out, "\" ");
    put_num(out, e.bytes_received);
    out.push(b' ');
    put_num(out, e.bytes_sent);
    out.push(b' ');
    match e.duration {
        Some(d) => put_num(out, d.as_millis()),
        None => out.push(b'-'),
    }
    out.push(b' ');
    match e.upstream_service_time {
        Some(d) => put_num(out, d.as_millis()),
        None => out.push(b'-'),
    }
    for v in [e.x_forwarded_for, e.user_agent, e.request_id, e.authority] {
        put(out, " \"");
        put(out, opt(v));
        out.push(b'"');
    }
    put(out, " \"");
    put_addr(out, e.upstream_host);
    put(out, "\" ");
    put(out, opt(e.upstream_cluster));
    out.push(b' ');
    put_addr(out, e.upstream_local_address);
    out.push(b' ');
    put_addr(out, e.downstream_local_address);
    out.push(b' ');
    put_addr(out, e.downstream_remote_address);
    out.push(b' ');
    put(out, opt(e.requested_server_name));
    out.push(b' ');
    put(out, opt(e.route_name));
    out.push(b'\n');
}

/// A JSON object writer: keys in the order given (callers give them sorted).
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    fn key(&mut self, k: &str) {
        self.out
            .extend_from_slice(if self.first { b"{\"" } else { b",\"" });
        self.first = false;
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v.filter(|v| !v.is_empty()) {
            Some(v) => json_string(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn num(&mut self, k: &str, v: Option<u128>) {
        self.key(k);
        match v {
            Some(v) => put_num(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn addr(&mut self, k: &str, v: Option<SocketAddr>) {
        self.key(k);
        match v {
            Some(a) => {
                self.out.push(b'"');
                put_socket_addr(self.out, a);
                self.out.push(b'"');
            }
            None => self.out.extend_from_slice(b"null"),
        }
    }
}

fn json(e: &LogEntry<'_>, out: &mut Vec<u8>) {
    let mut trace_id = [0u8; 32];
    let trace_id = e.trace_id.map(|t| hex32(t, &mut trace_id));
    let mut o = Obj { out, first: true };
    o.str("authority", e.authority);
    o.num("bytes_received", Some(u128::from(e.bytes_received)));
    o.num("bytes_sent", Some(u128::from(e.bytes_sent)));
    o.str("connection_termination_details", None);
    o.addr("downstream_local_address", e.downstream_local_address);
    o.addr("downstream_remote_address", e.downstream_remote_address);
    o.num("duration", e.duration.map(|d| d.as_millis()));
    o.str("method", Some(e.method));
    o.str("path", Some(e.path));
    o.str("protocol", Some(e.protocol));
    o.str("request_id", e.request_id);
    o.str("requested_server_name", e.requested_server_name);
    // Envoy's `%RESPONSE_CODE%` is 0 when no response was sent, in JSON too
    o.num("response_code", Some(u128::from(e.response_code)));
    o.str("response_code_details", Some(e.response_code_details));
    // Envoy writes "-" for no flags in JSON too
    o.str("response_flags", Some(or_dash(e.response_flags)));
    o.str("route_name", e.route_name);
    o.key("start_time");
    o.out.push(b'"');
    put_time(o.out, e.start_time);
    o.out.push(b'"');
    o.str("trace_id", trace_id);
    o.str("upstream_cluster", e.upstream_cluster);
    o.addr("upstream_host", e.upstream_host);
    o.addr("upstream_local_address", e.upstream_local_address);
    // a header's value (`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`): a string
    o.key("upstream_service_time");
    match e.upstream_service_time {
        Some(d) => {
            o.out.push(b'"');
            put_num(o.out, d.as_millis());
            o.out.push(b'"');
        }
        None => o.out.extend_from_slice(b"null"),
    }
    o.str(
        "upstream_transport_failure_reason",
        e.upstream_transport_failure_reason,
    );
    o.str("user_agent", e.user_agent);
    o.str("x_forwarded_for", e.x_forwarded_for);
    out.extend_from_slice(b"}\n");
}

/// `v` as 32 lower-case hex digits (`{v:032x}`), written into `buf`.
fn hex32(v: u128, buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(buf).unwrap_or_default()
}

/// A JSON string literal (RFC 8259 §7): the runs that need no escape copied whole.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // no early exit: the compiler vectorises the check, and nearly every value passes it
    let plain = !bytes.iter().fold(false, |esc, &b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(esc);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

thread_local! {
    /// The last second written by this thread and its `YYYY-MM-DDTHH:MM:SS` (Envoy caches
    /// the formatted second the same way).
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// Envoy's `%START_TIME%`: `%Y-%m-%dT%H:%M:%E3SZ`, UTC.
fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let (y, m, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        let mut w = &mut text[..];
        let fits = write!(
            w,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
        )
        .is_ok()
            && w.is_empty();
        if !fits {
            // a year past 9999: not cached
            let _ = write!(
                out,
                "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60,
                d.subsec_millis()
            );
            return;
        }
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests;

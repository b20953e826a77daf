//! Trace context propagation: W3C Trace Context, B3 (multi-header and single `b3`) and
//! `x-request-id`, as Envoy's tracers propagate them.
//!
//! A sidecar is one hop of a distributed trace: it reads the caller's trace context from the
//! request, opens its own span (a new span id whose parent is the caller's span), and sends
//! the upstream the same trace with its span as the parent. [`TraceLayer`] does that for
//! every request:
//!
//! - **Extract** ([`Extracted::from_headers`]): `traceparent` (W3C, with `tracestate`
//!   carried unchanged) first, else the single `b3` header, else the `x-b3-*` headers (Envoy's
//!   OpenTelemetry tracer reads W3C; its Zipkin tracer reads B3, single before multi). A
//!   malformed header is ignored, as if absent (W3C Trace Context §3.2.2.x: a vendor that
//!   cannot parse `traceparent` restarts the trace), never an error: a bad trace header must
//!   not cost the request.
//! - **Decide sampling**: a caller's decision (`sampled` flag, `x-b3-sampled`, debug
//!   `x-b3-flags: 1`) is kept; a request without one (no context, or B3's deferred decision)
//!   is sampled with the configured probability (Istio's `tracing.sampling`, 1 % by
//!   default), from a seeded generator.
//! - **Inject**: the request leaves with its hop's context in every format it arrived with,
//!   so that no stale or malformed trace header travels on (a B3 caller gets B3 back, as
//!   from Envoy's Zipkin tracer; a W3C caller W3C, as from its OpenTelemetry tracer), and in
//!   the formats configured ([`Propagation`]; none by default); a request that carried none
//!   starts its trace in W3C's `traceparent`. The B3 trace id keeps its 64-bit form when it
//!   came that way. Headers are found in one pass over the request's headers.
//! - **`x-request-id`**: kept when the request has one, generated (a random UUID, version 4)
//!   when it has none, as Envoy's `generate_request_id` does.
//! - **In-process forwarding**: a request that carries no trace header, sent while this
//!   process serves an inbound request inside a [`CurrentTraceLayer`](crate::current::CurrentTraceLayer),
//!   continues the inbound trace (its span the parent) and keeps the inbound `x-request-id`
//!   ([`crate::current`]).
//!
//! The hop's context goes into the request's
//! [`RequestSlots`](mesh_core::ext::RequestSlots) as a [`TraceContext`] (read with
//! [`trace_context`]), for the layers after it (access log, metrics, spans).
//!
//! ```
//! use http::Request;
//! use mesh_telemetry::trace::{TraceConfig, TraceLayer, trace_context};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::new(TraceConfig::default().with_seed(7)))
//!     .service_fn(|req: Request<()>| async move {
//!         // what the upstream receives
//!         Ok::<_, std::convert::Infallible>(req)
//!     });
//! let req = Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(())
//!     .unwrap();
//! let sent = svc.oneshot(req).await.unwrap();
//! let tp = sent.headers()["traceparent"].to_str().unwrap();
//! assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")); // the same trace
//! assert!(!tp.contains("00f067aa0ba902b7")); // the proxy's own span
//! assert!(!sent.headers().contains_key("x-b3-traceid")); // W3C in, W3C out
//! let ctx = trace_context(sent.extensions()).unwrap();
//! assert_eq!(ctx.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
//! assert!(ctx.sampled);
//! assert!(sent.headers().contains_key("x-request-id"));
//! # });
//! ```
//!
//! # Differences from Envoy
//!
//! - The layer propagates and records the context; spans are made from it by
//!   [`crate::span`] and exported by [`crate::span::SpanSink`].
//! - Envoy encodes its trace decision in the version nibble of `x-request-id`'s UUID; this
//!   layer leaves `x-request-id` as it found it.

use std::fmt;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_core::header_values::shared;
use mesh_core::rng::{self, Rng, SharedRng};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The single-header B3 form.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi-header: the trace id (16 or 32 hex digits).
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi-header: the span id.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi-header: the parent span id.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi-header: the sampling decision (`1`/`0`, or `true`/`false`).
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi-header: `1` for debug (implies sampled).
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// The request id Envoy generates and every Istio proxy logs.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

bitflags::bitflags! {
    /// The trace header formats a [`TraceLayer`] writes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Propagation: u8 {
        /// W3C `traceparent` (and `tracestate`, carried).
        const W3C = 1 << 0;
        /// B3 multi-header (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
        /// `x-b3-sampled`).
        const B3_MULTI = 1 << 1;
        /// B3 single header (`b3`).
        const B3_SINGLE = 1 << 2;
    }
}

impl Default for Propagation {
    /// None besides those the request carried (W3C for a request that carried none): each
    /// hop answers in the format it was spoken to, as an Envoy sidecar's tracer does (the
    /// OpenTelemetry tracer W3C, the Zipkin tracer B3), and a new trace costs one header.
    fn default() -> Self {
        Propagation::empty()
    }
}

/// The trace context of this hop (defined in `mesh-core`, where the request's
/// [`RequestSlots`](mesh_core::ext::RequestSlots) carry it; read it with [`trace_context`]).
pub use mesh_core::trace::TraceContext;

/// The request's trace context, as [`TraceLayer`] wrote it (in its
/// [`RequestSlots`](mesh_core::ext::RequestSlots); or inserted on its own as an extension).
pub use mesh_core::ext::trace_context;

/// What a request's headers said about its trace (see [`Extracted::from_headers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// The trace id.
    pub trace_id: u128,
    /// The caller's span id.
    pub span_id: u64,
    /// The caller's sampling decision; `None` when deferred.
    pub sampled: Option<bool>,
    /// Whether the trace id came as 64 bits in a B3 header (B3 output keeps that width).
    pub b3_64bit: bool,
    /// Which format the context was read from.
    pub from: Propagation,
}

// === parsing ===

/// Each byte's value as a hex digit (`0-9`, `a-f`, and `A-F` when `upper`), or `0xff` for a
/// byte that is not one.
const fn unhex(upper: bool) -> [u8; 256] {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        if upper {
            t[b'A' as usize + i] = 10 + i as u8;
        }
        i += 1;
    }
    t
}

/// Hex digits in either case: B3 implementations accept both (taken, and written
/// lowercase).
const UNHEX: [u8; 256] = unhex(true);

/// Lowercase hex digits only: W3C's `traceparent` (§3.2.2.3).
const UNHEX_LOWER: [u8; 256] = unhex(false);

// One table look-up per digit and no branch until the end (an invalid digit has high bits
// set): the ids of every traced request are parsed here.
fn hex_u128(s: &[u8]) -> Option<u128> {
    hex_u128_in(s, &UNHEX)
}

fn hex_u128_in(s: &[u8], table: &[u8; 256]) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    let (mut hi, mut lo, mut bad) = (0u64, 0u64, 0u8);
    for &c in s {
        let d = table[usize::from(c)];
        bad |= d;
        hi = (hi << 4) | (lo >> 60);
        lo = (lo << 4) | u64::from(d & 0xf);
    }
    (bad & 0xf0 == 0).then_some((u128::from(hi) << 64) | u128::from(lo))
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    hex_u64_in(s, &UNHEX)
}

fn hex_u64_in(s: &[u8], table: &[u8; 256]) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    let (mut v, mut bad) = (0u64, 0u8);
    for &c in s {
        let d = table[usize::from(c)];
        bad |= d;
        v = (v << 4) | u64::from(d & 0xf);
    }
    (bad & 0xf0 == 0).then_some(v)
}

/// A B3 trace id: 16 or 32 hex digits, not all zero; `(id, is_64bit)`.
fn b3_trace_id(s: &[u8]) -> Option<(u128, bool)> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    hex_u128(s).filter(|v| *v != 0).map(|v| (v, s.len() == 16))
}

fn b3_span_id(s: &[u8]) -> Option<u64> {
    hex_u64(s).filter(|v| *v != 0)
}

/// `traceparent`: `version-traceid-parentid-flags` (W3C Trace Context §3.2). Version `00`
/// has exactly four fields; a higher version may append fields after a `-` (§3.2.4), version
/// `ff` is invalid.
fn parse_traceparent(v: &[u8]) -> Option<Extracted> {
    if v.len() < 55 {
        return None;
    }
    let version = u8::try_from(hex_u128(&v[0..2])?).ok()?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    // lowercase only (§3.2.2.3)
    let trace_id = hex_u128_in(&v[3..35], &UNHEX_LOWER).filter(|t| *t != 0)?;
    let span_id = hex_u64_in(&v[36..52], &UNHEX_LOWER).filter(|s| *s != 0)?;
    let flags = u8::try_from(hex_u128_in(&v[53..55], &UNHEX_LOWER)?).ok()?;
    Some(Extracted {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        b3_64bit: false,
        from: Propagation::W3C,
    })
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or a bare sampling decision
/// (`0`, `1`, `d`) which carries no context (openzipkin/b3-propagation).
fn parse_b3_single(v: &[u8]) -> Option<Extracted> {
    let mut parts = v.split(|c| *c == b'-');
    let (trace_id, b3_64bit) = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(b"1") | Some(b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Extracted {
        trace_id,
        span_id,
        sampled,
        b3_64bit,
        from: Propagation::B3_SINGLE,
    })
}

/// The trace headers of a request, found in one pass over its headers (a request has a
/// handful; one look-up per trace header would hash each name again).
#[derive(Default)]
struct Seen<'a> {
    traceparent: Option<&'a HeaderValue>,
    tracestate: bool,
    b3: Option<&'a HeaderValue>,
    trace_id: Option<&'a HeaderValue>,
    span_id: Option<&'a HeaderValue>,
    parent_span_id: bool,
    sampled: Option<&'a HeaderValue>,
    flags: Option<&'a HeaderValue>,
    request_id: bool,
}

impl<'a> Seen<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut s = Seen::default();
        for (name, value) in headers {
            match name.as_str() {
                "traceparent" => s.traceparent = s.traceparent.or(Some(value)),
                "tracestate" => s.tracestate = true,
                "b3" => s.b3 = s.b3.or(Some(value)),
                "x-b3-traceid" => s.trace_id = s.trace_id.or(Some(value)),
                "x-b3-spanid" => s.span_id = s.span_id.or(Some(value)),
                "x-b3-parentspanid" => s.parent_span_id = true,
                "x-b3-sampled" => s.sampled = s.sampled.or(Some(value)),
                "x-b3-flags" => s.flags = s.flags.or(Some(value)),
                "x-request-id" => s.request_id |= !value.as_bytes().is_empty(),
                _ => {}
            }
        }
        s
    }

    /// Which formats the request carried (well-formed or not).
    fn carried(&self) -> Propagation {
        let mut p = Propagation::empty();
        if self.traceparent.is_some() {
            p |= Propagation::W3C;
        }
        if self.b3.is_some() {
            p |= Propagation::B3_SINGLE;
        }
        if self.trace_id.is_some() || self.span_id.is_some() {
            p |= Propagation::B3_MULTI;
        }
        p
    }

    /// The context: `traceparent` first, else `b3`, else the `x-b3-*` headers.
    fn extract(&self) -> Option<Extracted> {
        if let Some(e) = self
            .traceparent
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            return Some(e);
        }
        if let Some(e) = self.b3.and_then(|v| parse_b3_single(v.as_bytes())) {
            return Some(e);
        }
        let (trace_id, b3_64bit) = b3_trace_id(self.trace_id?.as_bytes())?;
        let span_id = b3_span_id(self.span_id?.as_bytes())?;
        let sampled = if self.debug() {
            Some(true)
        } else {
            self.sampled.and_then(|v| decision(v.as_bytes()))
        };
        Some(Extracted {
            trace_id,
            span_id,
            sampled,
            b3_64bit,
            from: Propagation::B3_MULTI,
        })
    }

    fn debug(&self) -> bool {
        self.flags.is_some_and(|f| f.as_bytes() == b"1")
    }

    /// A B3 sampling decision sent without a trace context: `b3: 0|1|d`, or `x-b3-sampled`
    /// / `x-b3-flags` alone.
    fn bare_decision(&self) -> Option<bool> {
        match self.b3.map(HeaderValue::as_bytes) {
            Some(b"0") => return Some(false),
            Some(b"1") | Some(b"d") => return Some(true),
            _ => {}
        }
        if self.debug() {
            return Some(true);
        }
        self.sampled.and_then(|v| decision(v.as_bytes()))
    }
}

/// `x-b3-sampled`'s values.
fn decision(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
fn parse_b3_multi(h: &HeaderMap) -> Option<Extracted> {
    let seen = Seen::scan(h);
    Seen {
        traceparent: None,
        b3: None,
        ..seen
    }
    .extract()
}

impl Extracted {
    /// The trace context `headers` carry: `traceparent` first, else `b3`, else the `x-b3-*`
    /// headers; `None` when none is present and well-formed.
    pub fn from_headers(headers: &HeaderMap) -> Option<Extracted> {
        Seen::scan(headers).extract()
    }
}

// === formatting ===

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two hex digits: one look-up and one shift per two digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// The low `out.len()` hex digits of `v`, written from the last, two at a time.
fn put_hex(out: &mut [u8], v: u128) {
    let mut v = v;
    let mut chunks = out.rchunks_exact_mut(2);
    for pair in &mut chunks {
        pair.copy_from_slice(&HEX_PAIRS[(v & 0xff) as usize]);
        v >>= 8;
    }
    if let [first] = chunks.into_remainder() {
        *first = HEX[(v & 0xf) as usize];
    }
}

fn hex_value(v: u128, digits: usize) -> HeaderValue {
    let mut buf = [0u8; 32];
    put_hex(&mut buf[..digits], v);
    shared(&buf[..digits])
}

fn traceparent(ctx: &TraceContext) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut buf[3..35], ctx.trace_id);
    put_hex(&mut buf[36..52], u128::from(ctx.span_id));
    buf[54] = if ctx.sampled { b'1' } else { b'0' };
    shared(&buf)
}

fn b3_single(ctx: &TraceContext, b3_64bit: bool) -> HeaderValue {
    let mut buf = [0u8; 32 + 1 + 16 + 2 + 17];
    let w = if b3_64bit { 16 } else { 32 };
    put_hex(&mut buf[..w], ctx.trace_id & trace_mask(b3_64bit));
    buf[w] = b'-';
    put_hex(&mut buf[w + 1..w + 17], u128::from(ctx.span_id));
    buf[w + 17] = b'-';
    buf[w + 18] = if ctx.sampled { b'1' } else { b'0' };
    let mut n = w + 19;
    if let Some(p) = ctx.parent_span_id {
        buf[n] = b'-';
        put_hex(&mut buf[n + 1..n + 17], u128::from(p));
        n += 17;
    }
    shared(&buf[..n])
}

fn trace_mask(b3_64bit: bool) -> u128 {
    if b3_64bit {
        u128::from(u64::MAX)
    } else {
        u128::MAX
    }
}

/// A random UUID (version 4, RFC 9562 §5.4) in its 36-character form.
fn uuid_v4(hi: u64, lo: u64) -> HeaderValue {
    let v = (u128::from(hi) << 64) | u128::from(lo);
    // version 4, variant 10
    let mut v = (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let mut buf = [b'-'; 36];
    // 8-4-4-4-12 digits, from the last group (every group has an even number of digits)
    for (at, digits) in [(24, 12), (19, 4), (14, 4), (9, 4), (0, 8)] {
        put_hex(&mut buf[at..at + digits], v);
        v >>= 4 * digits;
    }
    // shared by its clones (the record layer keeps one for the sinks): a value copied from
    // a slice would allocate again at its first clone
    shared(&buf)
}

// === the layer ===

/// How a [`TraceLayer`] propagates and samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceConfig {
    /// Probability (0.0 ..= 1.0) of sampling a request that carries no sampling decision.
    /// Default: 0.01 (Istio's `meshConfig.defaultConfig.tracing.sampling: 1.0`, a percentage).
    pub sampling: f64,
    /// The formats written on every request, besides those the request arrived with (a
    /// request with none and no format configured gets W3C's `traceparent`).
    pub propagation: Propagation,
    /// Whether to generate `x-request-id` when absent. Default: true (Envoy's
    /// `generate_request_id`).
    pub generate_request_id: bool,
    /// Seed of the generator of span ids, request ids and sampling draws (tests); `None`:
    /// entropy.
    pub seed: Option<u64>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            sampling: 0.01,
            propagation: Propagation::default(),
            generate_request_id: true,
            seed: None,
        }
    }
}

impl TraceConfig {
    /// Samples `percent` % of the requests without a decision (Istio's `tracing.sampling`).
    pub fn with_sampling_percent(mut self, percent: f64) -> Self {
        self.sampling = (percent / 100.0).clamp(0.0, 1.0);
        self
    }

    /// Writes these formats on every request.
    pub fn with_propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Seeds the generator (reproducible ids and sampling, for tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

thread_local! {
    /// The generator of the layers without a seed, one per thread (from entropy).
    static THREAD_RNG: std::cell::RefCell<Rng> = std::cell::RefCell::new(Rng::new(None));
}

/// A number in `[0, 1)` from 64 random bits (the top 53), as `Rng::next_f64`.
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Propagates trace context and `x-request-id` (see the [module docs](self)).
#[derive(Clone)]
pub struct TraceLayer {
    config: TraceConfig,
    shared: Arc<Shared>,
}

/// What the clones of a layer share: the generator and the sampling probability (which a
/// reload may change, [`TraceLayer::set_sampling_percent`]).
struct Shared {
    /// A seeded layer's generator (reproducible draws, tests); `None`: each thread's own
    /// ([`THREAD_RNG`]), no atomic shared by the workers.
    rng: Option<SharedRng>,
    /// `f64` bits of the probability.
    sampling: AtomicU64,
}

impl fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer")
            .field("config", &self.config)
            .field("sampling", &self.sampling())
            .finish()
    }
}

/// The service of a [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
    layer: TraceLayer,
}

impl TraceLayer {
    /// A layer with `config`.
    pub fn new(config: TraceConfig) -> Self {
        TraceLayer {
            config,
            shared: Arc::new(Shared {
                rng: config
                    .seed
                    .map(|seed| SharedRng::new(Some(rng::seed(Some(seed), 0)))),
                sampling: AtomicU64::new(config.sampling.clamp(0.0, 1.0).to_bits()),
            }),
        }
    }

    /// The layer's configuration (its `sampling` as built; see [`TraceLayer::sampling`]).
    pub fn config(&self) -> &TraceConfig {
        &self.config
    }

    /// The probability of sampling a request without a caller's decision, now.
    pub fn sampling(&self) -> f64 {
        f64::from_bits(self.shared.sampling.load(Ordering::Relaxed))
    }

    /// Changes the sampling rate of this layer and every service it made (a reload).
    pub fn set_sampling_percent(&self, percent: f64) {
        let p = (percent / 100.0).clamp(0.0, 1.0);
        self.shared.sampling.store(p.to_bits(), Ordering::Relaxed);
    }

    /// Gives `headers` this hop's trace context (and `x-request-id`) and returns it.
    pub fn propagate(&self, headers: &mut HeaderMap) -> TraceContext {
        let seen = Seen::scan(headers);
        let extracted = seen.extract();
        let span_id = self.nonzero_u64();
        // a request without a trace of its own, sent while serving an inbound request of
        // this process, continues the inbound trace (crate::current)
        let inherited = match (extracted, seen.carried().is_empty()) {
            (None, true) => crate::current::current(),
            _ => None,
        };
        let ctx = match (extracted, &inherited) {
            (Some(e), _) => TraceContext {
                trace_id: e.trace_id,
                span_id,
                parent_span_id: Some(e.span_id),
                sampled: e.sampled.unwrap_or_else(|| self.sample()),
            },
            (None, Some(i)) => TraceContext {
                trace_id: i.ctx.trace_id,
                span_id,
                parent_span_id: Some(i.ctx.span_id),
                sampled: i.ctx.sampled,
            },
            (None, None) => TraceContext {
                trace_id: (u128::from(self.nonzero_u64()) << 64) | u128::from(self.next_u64()),
                span_id,
                parent_span_id: None,
                // B3 may carry a decision without a context (`b3: 0`, a lone `x-b3-sampled`):
                // the new trace keeps it (openzipkin/b3-propagation, "Sampling State")
                sampled: seen.bare_decision().unwrap_or_else(|| self.sample()),
            },
        };
        let b3_64bit = extracted.is_some_and(|e| e.b3_64bit);
        let (tracestate, parent_present, flags_present, request_id) = (
            seen.tracestate,
            seen.parent_span_id,
            seen.flags.is_some(),
            seen.request_id,
        );
        let mut write = self.config.propagation | seen.carried();
        if write.is_empty() {
            write = Propagation::W3C;
        }
        if write.contains(Propagation::W3C) {
            headers.insert(TRACEPARENT, traceparent(&ctx));
            if tracestate && extracted.is_none_or(|e| e.from != Propagation::W3C) {
                // a tracestate belongs to the traceparent it came with (W3C §3.3.1.1)
                headers.remove(&TRACESTATE);
            }
        }
        if write.contains(Propagation::B3_MULTI) {
            let w = if b3_64bit { 16 } else { 32 };
            headers.insert(
                X_B3_TRACEID,
                hex_value(ctx.trace_id & trace_mask(b3_64bit), w),
            );
            headers.insert(X_B3_SPANID, hex_value(u128::from(ctx.span_id), 16));
            match ctx.parent_span_id {
                Some(p) => {
                    headers.insert(X_B3_PARENTSPANID, hex_value(u128::from(p), 16));
                }
                None if parent_present => {
                    headers.remove(&X_B3_PARENTSPANID);
                }
                None => {}
            }
            headers.insert(
                X_B3_SAMPLED,
                HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
            );
            if flags_present {
                headers.remove(&X_B3_FLAGS);
            }
        }
        if write.contains(Propagation::B3_SINGLE) {
            headers.insert(B3, b3_single(&ctx, b3_64bit));
        }
        if let Some(id) = inherited.and_then(|i| i.request_id).filter(|_| !request_id) {
            headers.insert(X_REQUEST_ID, id);
        } else if self.config.generate_request_id && !request_id {
            headers.insert(X_REQUEST_ID, uuid_v4(self.next_u64(), self.next_u64()));
        }
        ctx
    }

    /// The next 64 random bits: the seeded generator's, else this thread's.
    #[inline]
    fn next_u64(&self) -> u64 {
        match &self.shared.rng {
            Some(r) => r.next_u64(),
            None => THREAD_RNG.with_borrow_mut(Rng::next_u64),
        }
    }

    fn nonzero_u64(&self) -> u64 {
        loop {
            let v = self.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    fn sample(&self) -> bool {
        let p = self.sampling();
        p >= 1.0 || unit(self.next_u64()) < p
    }
}

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            layer: self.clone(),
        }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Trace<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        let ctx = self.layer.propagate(req.headers_mut());
        mesh_core::ext::slots_mut(req.extensions_mut()).trace = Some(ctx);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests;

//! Spans: one OpenTelemetry span per sampled request, exported off the request path.
//!
//! A sidecar's span is the hop [`TraceLayer`](crate::TraceLayer) opened: its trace and span
//! ids are the [`TraceContext`] the layer propagated upstream (so the upstream's spans are
//! its children), its parent the caller's span. [`RequestSpan`] holds what one request
//! says about itself (method, URL, status, flags, cluster, request id); [`SpanSink::record`]
//! turns it into the SDK's [`SpanData`] with OpenTelemetry's semantic conventions and
//! Envoy's own tags, and hands it to a bounded queue. An exporter thread takes the spans
//! in batches (whatever has queued while the previous export ran, at most
//! [`SpanOptions::max_batch`]) and gives them to any [`SpanExporter`] of the SDK: OTLP
//! ([`crate::otlp`], feature `otlp`), the SDK's in-memory exporter in tests.
//!
//! Only sampled traces make spans; a request never waits for the exporter: a full queue
//! drops the span and counts it ([`SpanSink::dropped`]).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use mesh_telemetry::span::{RequestSpan, SpanOptions, SpanSink};
//! use mesh_telemetry::TraceContext;
//! use opentelemetry::trace::SpanKind;
//! use opentelemetry_sdk::trace::InMemorySpanExporter;
//!
//! let exporter = InMemorySpanExporter::default();
//! let sink = SpanSink::new(exporter.clone(), SpanOptions::default()).unwrap();
//! let ctx = TraceContext { trace_id: 7, span_id: 8, parent_span_id: Some(9), sampled: true };
//! let start = SystemTime::now();
//! let mut span = RequestSpan::new(SpanKind::Client, ctx, start, "GET", "reviews:9080", "/");
//! span.status = 200;
//! span.end = start + Duration::from_millis(3);
//! sink.record(&span);
//! sink.flush();
//! let spans = exporter.get_finished_spans().unwrap();
//! assert_eq!(spans[0].name, "reviews:9080/*");
//! assert_eq!(u64::from_be_bytes(spans[0].span_context.span_id().to_bytes()), 8);
//! ```
//!
//! # Attributes
//!
//! OpenTelemetry's HTTP semantic conventions (stable since v1.23):
//!
//! | attribute | server span (inbound) | client span (outbound) |
//! |---|---|---|
//! | `http.request.method` | the method, `_OTHER` for one outside RFC 9110's and `PATCH` (then `http.request.method_original`) | the same |
//! | `url.scheme` | `x-forwarded-proto`, else the request's own (HTTP/2's `:scheme`, an absolute target), else `https` over a TLS connection, else `http` | `https` when the connector originated TLS (mTLS, TLS origination), else the request's own, else `http` |
//! | `url.path`, `url.query` | the path; the query (without `?`) when there is one | — |
//! | `url.full` | — | `<scheme>://<authority><path and query>` |
//! | `server.address`, `server.port` | the `:authority` / `Host`, its port or the scheme's (80, 443) | the same |
//! | `http.response.status_code` | when a response was sent | the same |
//! | `error.type` | the status as a string for a 5xx; the response flags (`DC`, `UC`), else `_OTHER`, when no response was sent | the same, from 4xx on |
//! | `network.protocol.version` | `1.1`, `2` | the same |
//! | `user_agent.original` | `User-Agent` | the same |
//! | `client.address` | the first address of `x-forwarded-for`, else the peer's | — |
//! | `network.peer.address`, `network.peer.port` | the downstream peer | the upstream endpoint |
//! | `http.request.resend_count` | — | the retries, when there were any |
//!
//! The span's status is an error for a 5xx, for a 4xx on a client span, and when no response
//! was sent (the conventions' rule; its description only when the status code does not
//! tell), and the span context carries the request's `tracestate`.
//!
//! Beside them, the tags Envoy's tracers write on an Istio sidecar's spans (`component:
//! proxy`, `node_id`, `guid:x-request-id`, `upstream_cluster`, `upstream_cluster.name`,
//! `response_flags`, `request_size` and `response_size` (the bodies' bytes), `peer.address`,
//! `istio.namespace`, `istio.canonical_service`), and a Telemetry's custom tags
//! ([`RequestSpan::tags`]; one named as a tag above replaces it).
//!
//! The span's name is Envoy's default operation name on an Istio route, `<host>:<port>/*`
//! (the decorator Istio gives each route: the destination service's host and port; else the
//! request's authority), not the conventions' `{method} {http.route}`, on purpose: it is the
//! name an Istio sidecar's spans have, which Jaeger and Kiali users of Istio group and search
//! traces by, and it keeps what the conventions ask of a span name, a low cardinality (a
//! service's host and port, never the path or its ids).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::Thread;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};

use crate::trace::TraceContext;

/// How a [`SpanSink`] queues and names its spans.
#[derive(Debug, Clone)]
pub struct SpanOptions {
    /// Spans waiting for the exporter, at most; more are dropped (and counted). Default:
    /// 2048 (the SDK's `BatchSpanProcessor` default).
    pub queue: usize,
    /// Spans per export call, at most. Default: 512 (the SDK's default).
    pub max_batch: usize,
    /// The resource's `service.name`. Default: `mesh-proxy`.
    pub service_name: String,
    /// Envoy's `node_id` tag (Istio: `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`).
    /// Default: empty (the tag is left out).
    pub node_id: String,
    /// Istio's `istio.namespace` tag. Default: empty (left out).
    pub namespace: String,
}

impl Default for SpanOptions {
    fn default() -> Self {
        SpanOptions {
            queue: 2048,
            max_batch: 512,
            service_name: "mesh-proxy".into(),
            node_id: String::new(),
            namespace: String::new(),
        }
    }
}

/// What one request says about its span (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RequestSpan<'a> {
    /// `Client` for a sidecar's outbound request, `Server` for its inbound one.
    pub kind: SpanKind,
    /// The hop's trace context (its span id is the span's).
    pub ctx: TraceContext,
    /// When the request arrived.
    pub start: SystemTime,
    /// When it finished (the response's end, or its head when the body is not followed).
    pub end: SystemTime,
    /// The request method.
    pub method: &'a str,
    /// `:authority` / `Host` as the request carried it.
    pub authority: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The operation name's host and port, when known (Istio: the route's destination
    /// service, `reviews.default.svc.cluster.local:9080`); else the authority is used.
    pub operation: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// `url.scheme`: `http` or `https` (see the [module docs](self) for how the recorder
    /// tells).
    pub scheme: &'a str,
    /// The `tracestate` carried with the trace context (W3C), for the span's context.
    pub tracestate: Option<&'a str>,
    /// `x-forwarded-for`, whose first address is a server span's `client.address`.
    pub x_forwarded_for: Option<&'a str>,
    /// The upstream endpoint (a client span's `network.peer.address` and `.port`).
    pub upstream: Option<SocketAddr>,
    /// Times the request was sent again (retries): `http.request.resend_count` when not 0.
    pub resend_count: u32,
    /// The response status; 0 when there was no response.
    pub status: u16,
    /// Envoy's response flags (`UH`, `NR,URX`), empty when none.
    pub flags: &'a str,
    /// The upstream cluster (Istio's `outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub upstream_cluster: Option<&'a str>,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// The downstream peer.
    pub peer: Option<SocketAddr>,
    /// Request body bytes (Envoy's `request_size` tag).
    pub request_size: u64,
    /// Response body bytes (Envoy's `response_size` tag).
    pub response_size: u64,
    /// Custom tags (a Telemetry's `customTags`), name and value.
    pub tags: &'a [(&'a str, &'a str)],
}

impl<'a> RequestSpan<'a> {
    /// A span that started at `start` (and, until told otherwise, ended then too), with no
    /// response yet.
    pub fn new(
        kind: SpanKind,
        ctx: TraceContext,
        start: SystemTime,
        method: &'a str,
        authority: &'a str,
        path: &'a str,
    ) -> Self {
        RequestSpan {
            kind,
            ctx,
            start,
            end: start,
            method,
            authority,
            path,
            operation: None,
            protocol: "HTTP/1.1",
            scheme: "http",
            tracestate: None,
            x_forwarded_for: None,
            upstream: None,
            resend_count: 0,
            status: 0,
            flags: "",
            upstream_cluster: None,
            request_id: None,
            user_agent: None,
            peer: None,
            request_size: 0,
            response_size: 0,
            tags: &[],
        }
    }
}

/// Records spans into a bounded queue that an exporter thread drains (see the
/// [module docs](self)). Cheap to clone; the thread ends when the last clone is dropped,
/// after exporting what was queued.
#[derive(Clone)]
pub struct SpanSink {
    inner: Arc<Inner>,
}

struct Inner {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    /// Spans queued and not yet taken by the thread.
    pending: Arc<AtomicUsize>,
    /// `pending` at which the thread is woken early (a batch is ready).
    high: usize,
    /// The exporter thread (`None` in tests that drive no thread).
    thread: Option<Thread>,
    node_id: Option<Arc<str>>,
    namespace: Option<Arc<str>>,
    service: Arc<str>,
    scope: InstrumentationScope,
}

enum Msg {
    Span(Box<SpanData>),
    /// Export what was queued before, then answer.
    Flush(SyncSender<()>),
}

impl fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanSink")
            .field("service", &self.inner.service)
            .field("dropped", &self.dropped())
            .finish()
    }
}

// === impl SpanSink ===

impl SpanSink {
    /// A sink exporting through `exporter` on a thread of its own (`mesh-spans`), which runs
    /// a current-thread tokio runtime for exporters that need one (OTLP's HTTP client).
    pub fn new<E: SpanExporter + 'static>(
        mut exporter: E,
        options: SpanOptions,
    ) -> std::io::Result<SpanSink> {
        let (tx, rx) = mpsc::sync_channel(options.queue.max(1));
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(options.service_name.clone())
                .build(),
        );
        let max_batch = options.max_batch.max(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let p = pending.clone();
        let thread = std::thread::Builder::new()
            .name("mesh-spans".into())
            .spawn(move || export_loop(exporter, &rx, max_batch, &p))?;
        let non_empty = |s: String| (!s.is_empty()).then(|| Arc::from(s));
        Ok(SpanSink {
            inner: Arc::new(Inner {
                tx,
                dropped: AtomicU64::new(0),
                pending,
                high: max_batch.min(options.queue.max(1)),
                thread: Some(thread.thread().clone()),
                node_id: non_empty(options.node_id),
                namespace: non_empty(options.namespace),
                service: Arc::from(options.service_name),
                scope: InstrumentationScope::builder("mesh-telemetry")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            }),
        })
    }

    /// Queues the span of `req` when its trace is sampled; never blocks (a full queue drops
    /// the span and counts it).
    pub fn record(&self, req: &RequestSpan<'_>) {
        if !req.ctx.sampled {
            return;
        }
        let span = self.span_data(req);
        match self.inner.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {
                if self.inner.pending.fetch_add(1, Ordering::Relaxed) + 1 == self.inner.high {
                    self.inner.wake();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Spans dropped because the queue was full (or the exporter thread gone).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until every span queued before the call has been handed to the exporter
    /// (tests, shutdown). Never call it on a request's path.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.inner.wake();
        if self.inner.tx.send(Msg::Flush(tx)).is_ok() {
            self.inner.wake();
            let _ = rx.recv();
        }
    }

    /// The SDK's span for `req`.
    pub fn span_data(&self, req: &RequestSpan<'_>) -> SpanData {
        let ctx = req.ctx;
        let flags = if ctx.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let server = req.kind == SpanKind::Server;
        let mut attrs = Vec::with_capacity(28);
        let (method, known) = method(req.method);
        attrs.push(KeyValue::new("http.request.method", method));
        if !known {
            attrs.push(KeyValue::new(
                "http.request.method_original",
                req.method.to_owned(),
            ));
        }
        attrs.push(KeyValue::new("url.scheme", scheme(req.scheme)));
        if server {
            let (path, query) = match req.path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (req.path, None),
            };
            attrs.push(KeyValue::new("url.path", path.to_owned()));
            if let Some(q) = query.filter(|q| !q.is_empty()) {
                attrs.push(KeyValue::new("url.query", q.to_owned()));
            }
        } else {
            let mut full =
                String::with_capacity(req.scheme.len() + 3 + req.authority.len() + req.path.len());
            for piece in [req.scheme, "://", req.authority, req.path] {
                full.push_str(piece);
            }
            attrs.push(KeyValue::new("url.full", full));
        }
        let (host, port) = split_authority(req.authority);
        attrs.push(KeyValue::new("server.address", host.to_owned()));
        attrs.push(KeyValue::new(
            "server.port",
            i64::from(port.unwrap_or_else(|| default_port(req.scheme))),
        ));
        if req.status != 0 {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(req.status),
            ));
        }
        let error = error_type(req.kind.clone(), req.status, req.flags);
        if let Some(e) = &error {
            attrs.push(KeyValue::new("error.type", e.clone()));
        }
        let version = req.protocol.strip_prefix("HTTP/").unwrap_or(req.protocol);
        attrs.push(KeyValue::new(
            "network.protocol.version",
            version.to_owned(),
        ));
        if let Some(ua) = req.user_agent {
            attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
        }
        // the downstream peer's address, formatted once for the attributes that name it
        let downstream: Option<Arc<str>> = req.peer.map(|p| p.ip().to_string().into());
        let peer = if server { req.peer } else { req.upstream };
        if let Some(p) = peer {
            let address = match (server, &downstream) {
                (true, Some(d)) => shared(d),
                _ => p.ip().to_string().into(),
            };
            attrs.push(KeyValue::new("network.peer.address", address));
            attrs.push(KeyValue::new("network.peer.port", i64::from(p.port())));
        }
        if server {
            // the original client behind the proxies, else the peer
            let forwarded = req
                .x_forwarded_for
                .and_then(|x| x.split(',').next())
                .map(str::trim)
                .filter(|c| !c.is_empty());
            match (forwarded, &downstream) {
                (Some(c), _) => attrs.push(KeyValue::new("client.address", c.to_owned())),
                (None, Some(d)) => attrs.push(KeyValue::new("client.address", shared(d))),
                (None, None) => {}
            }
        } else if req.resend_count > 0 {
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(req.resend_count),
            ));
        }
        // Envoy's tags (source/common/tracing/http_tracer_impl.cc, finalizeDownstreamSpan /
        // finalizeUpstreamSpan) and Istio's
        attrs.push(KeyValue::new("component", "proxy"));
        if let Some(n) = &self.inner.node_id {
            attrs.push(KeyValue::new("node_id", shared(n)));
        }
        if let Some(id) = req.request_id {
            attrs.push(KeyValue::new("guid:x-request-id", id.to_owned()));
        }
        attrs.push(KeyValue::new(
            "response_flags",
            if req.flags.is_empty() { "-" } else { req.flags }.to_owned(),
        ));
        if let Some(c) = req.upstream_cluster {
            let c: Arc<str> = c.into();
            attrs.push(KeyValue::new("upstream_cluster", shared(&c)));
            attrs.push(KeyValue::new("upstream_cluster.name", shared(&c)));
        }
        attrs.push(KeyValue::new("request_size", req.request_size as i64));
        attrs.push(KeyValue::new("response_size", req.response_size as i64));
        if let Some(d) = &downstream {
            attrs.push(KeyValue::new("peer.address", shared(d)));
        }
        if let Some(ns) = &self.inner.namespace {
            attrs.push(KeyValue::new("istio.namespace", shared(ns)));
        }
        attrs.push(KeyValue::new(
            "istio.canonical_service",
            shared(&self.inner.service),
        ));
        // a custom tag named as one of the span's own replaces it (Envoy's tags are a
        // map): each key once
        for (name, value) in req.tags {
            let kv = KeyValue::new(name.to_string(), value.to_string());
            match attrs.iter_mut().find(|a| a.key.as_str() == *name) {
                Some(a) => *a = kv,
                None => attrs.push(kv),
            }
        }
        // the conventions: no description when the status code tells the error
        let status = match (error, req.status) {
            (None, _) => Status::Unset,
            (Some(_), 0) if req.flags.is_empty() => Status::error("no response"),
            (Some(_), 0) => Status::error(req.flags.to_owned()),
            (Some(_), _) => Status::error(""),
        };
        let state = req
            .tracestate
            .and_then(|t| t.parse::<TraceState>().ok())
            .unwrap_or_default();
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(ctx.trace_id),
                SpanId::from(ctx.span_id),
                flags,
                false,
                state,
            ),
            parent_span_id: ctx.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: ctx.parent_span_id.is_some(),
            span_kind: req.kind.clone(),
            name: Cow::Owned(operation_name(
                req.operation.unwrap_or(req.authority),
                default_port(req.scheme),
            )),
            start_time: req.start,
            end_time: req.end.max(req.start),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.inner.scope.clone(),
        }
    }
}

/// `error.type` (OpenTelemetry's HTTP conventions): the status code as a string when it is
/// an error for the span's kind (5xx; for a client span, 4xx too); when no response was
/// sent, the mesh's response flags (`DC`, `UC,URX`), else `_OTHER`; `None`: no error.
fn error_type(kind: SpanKind, status: u16, flags: &str) -> Option<opentelemetry::Value> {
    let first = match kind {
        SpanKind::Client => 400,
        _ => 500,
    };
    match status {
        0 if flags.is_empty() => Some("_OTHER".into()),
        0 => Some(flags.to_owned().into()),
        s if s >= first => Some(s.to_string().into()),
        _ => None,
    }
}

/// `url.scheme`'s value, without a copy for `http` and `https`.
fn scheme(s: &str) -> opentelemetry::Value {
    match s {
        "http" => "http".into(),
        "https" => "https".into(),
        other => other.to_owned().into(),
    }
}

/// The port of a URL of `scheme` without one (RFC 9110 §4.2).
fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

/// `http.request.method`: a method of RFC 9110 or `PATCH` (RFC 5789) as it is, without a
/// copy, any other `_OTHER` (the conventions' rule, which keeps the attribute's cardinality
/// bounded); and whether it was one of those.
fn method(m: &str) -> (opentelemetry::Value, bool) {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    match STANDARD.iter().find(|s| **s == m) {
        Some(s) => (opentelemetry::Value::from(*s), true),
        None => (opentelemetry::Value::from("_OTHER"), false),
    }
}

/// A shared string attribute value (a reference count, no copy).
fn shared(s: &Arc<str>) -> opentelemetry::Value {
    opentelemetry::Value::String(s.clone().into())
}

impl Inner {
    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // the thread sees the queue closed at once, exports what is left and ends
        let (tx, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.tx, tx));
        self.wake();
    }
}

/// The span's name: Envoy's default operation name on an Istio route, `<host>:<port>/*`
/// (the decorator Istio gives each route: the destination service's host and port), from
/// the route's destination, else the request's authority (a host without a port gets
/// `default_port`, the scheme's).
///
/// Not OpenTelemetry's `{method} {http.route}` (or `{method}`), on purpose: this is the name
/// an Istio sidecar's spans have, which Jaeger and Kiali users of Istio group and search
/// traces by, and a sidecar's span is the same hop Envoy's is. It keeps what the
/// conventions ask of a span name: low cardinality (a service's host and port, never the
/// path or its ids; the authority only when no route was chosen).
fn operation_name(authority: &str, default_port: u16) -> String {
    let (host, port) = split_authority(authority);
    // pieces pushed rather than `format!` (its machinery is most of a span's formatting)
    let mut name = String::with_capacity(host.len() + 8);
    name.push_str(host);
    name.push(':');
    push_u16(&mut name, port.unwrap_or(default_port));
    name.push_str("/*");
    name
}

/// Appends `n` in decimal.
fn push_u16(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// `host[:port]`, `[v6]:port`.
fn split_authority(a: &str) -> (&str, Option<u16>) {
    if let Some((h, p)) = a.rsplit_once(':')
        && !h.ends_with(':')
        && (!h.contains(':') || h.ends_with(']'))
        && let Ok(port) = p.parse::<u16>()
    {
        return (h, Some(port));
    }
    (a, None)
}

/// How long the exporter thread sleeps when no span is queued.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(100);

/// The exporter thread: takes what has queued (up to `max_batch` a call), exports it, and
/// sleeps [`EXPORT_INTERVAL`] when the queue is empty (a full batch or a flush wakes it
/// early); ends when every sink is dropped. It is not woken per span: a wake-up is a system
/// call on the request's path.
fn export_loop<E: SpanExporter>(
    exporter: E,
    rx: &Receiver<Msg>,
    max_batch: usize,
    pending: &AtomicUsize,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "span exporter: no runtime; spans are dropped");
            return;
        }
    };
    let mut failing = false;
    let mut batch = Vec::with_capacity(max_batch);
    let mut acks = Vec::new();
    loop {
        let (mut empty, mut closed) = (false, false);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Span(s)) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    batch.push(*s);
                }
                // what came before the flush is exported before it is answered
                Ok(Msg::Flush(ack)) => {
                    acks.push(ack);
                    break;
                }
                Err(TryRecvError::Empty) => {
                    empty = true;
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len();
            match rt.block_on(exporter.export(std::mem::take(&mut batch))) {
                Ok(()) => failing = false,
                Err(e) => {
                    // once per run of failures, not once per batch
                    if !failing {
                        tracing::warn!(error = %e, spans = n, "span export failed");
                    }
                    failing = true;
                }
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if closed {
            break;
        }
        if empty {
            std::thread::park_timeout(EXPORT_INTERVAL);
        }
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn ports_are_written_in_decimal() {
        for n in [0u16, 7, 10, 80, 443, 9080, 10000, 65535] {
            let mut s = String::from("x");
            push_u16(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn operation_names_are_istio_route_decorators() {
        assert_eq!(operation_name("reviews:9080", 80), "reviews:9080/*");
        assert_eq!(operation_name("reviews", 80), "reviews:80/*");
        assert_eq!(operation_name("reviews", 443), "reviews:443/*");
        assert_eq!(operation_name("[::1]:8080", 80), "[::1]:8080/*");
        assert_eq!(operation_name("::1", 80), "::1:80/*");
    }

    #[test]
    fn unsampled_requests_make_no_span_and_a_full_queue_drops_and_counts() {
        let exporter = InMemorySpanExporter::default();
        let sink = SpanSink::new(exporter.clone(), SpanOptions::default()).unwrap();
        let ctx = TraceContext {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            sampled: false,
        };
        let now = SystemTime::now();
        sink.record(&RequestSpan::new(
            SpanKind::Server,
            ctx,
            now,
            "GET",
            "a",
            "/",
        ));
        sink.flush();
        assert!(exporter.get_finished_spans().unwrap().is_empty());
        assert_eq!(sink.dropped(), 0);

        // a queue of one that no thread drains (an exporter held up by a slow collector):
        // the second and third spans are dropped
        let (tx, rx) = mpsc::sync_channel(1);
        let sink = SpanSink {
            inner: Arc::new(Inner {
                tx,
                dropped: AtomicU64::new(0),
                pending: Arc::default(),
                high: 1,
                thread: None,
                node_id: None,
                namespace: None,
                service: Arc::from("s"),
                scope: InstrumentationScope::builder("test").build(),
            }),
        };
        let sampled = TraceContext {
            sampled: true,
            ..ctx
        };
        for _ in 0..3 {
            sink.record(&RequestSpan::new(
                SpanKind::Server,
                sampled,
                now,
                "GET",
                "a",
                "/",
            ));
        }
        assert_eq!(sink.dropped(), 2);
        drop(rx);
    }

    #[test]
    fn a_5xx_is_an_error_and_a_client_span_carries_the_full_url() {
        let exporter = InMemorySpanExporter::default();
        let sink = SpanSink::new(
            exporter.clone(),
            SpanOptions {
                node_id: "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local".into(),
                namespace: "default".into(),
                ..SpanOptions::default()
            },
        )
        .unwrap();
        let ctx = TraceContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x1111,
            parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
            sampled: true,
        };
        let now = SystemTime::now();
        let mut r = RequestSpan::new(SpanKind::Client, ctx, now, "POST", "ratings:9080", "/r?x=1");
        r.status = 503;
        r.flags = "UH";
        r.request_id = Some("id-1");
        r.upstream_cluster = Some("outbound|9080||ratings.default.svc.cluster.local");
        sink.record(&r);
        sink.flush();
        let spans = exporter.get_finished_spans().unwrap();
        let s = &spans[0];
        assert_eq!(s.span_kind, SpanKind::Client);
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(
            s.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            s.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(s.parent_span_is_remote);
        assert_eq!(
            attr(s, "url.full").unwrap().as_str(),
            "http://ratings:9080/r?x=1"
        );
        assert_eq!(attr(s, "http.response.status_code"), Some(&Value::I64(503)));
        assert_eq!(attr(s, "response_flags").unwrap().as_str(), "UH");
        assert_eq!(attr(s, "guid:x-request-id").unwrap().as_str(), "id-1");
        assert_eq!(attr(s, "component").unwrap().as_str(), "proxy");
        assert_eq!(attr(s, "istio.namespace").unwrap().as_str(), "default");
        assert!(attr(s, "node_id").unwrap().as_str().starts_with("sidecar~"));
        assert_eq!(
            attr(s, "upstream_cluster").unwrap().as_str(),
            "outbound|9080||ratings.default.svc.cluster.local"
        );
        assert_eq!(attr(s, "error.type").unwrap().as_str(), "503");
        assert_eq!(attr(s, "url.scheme").unwrap().as_str(), "http");
        assert_eq!(attr(s, "server.address").unwrap().as_str(), "ratings");
        assert_eq!(attr(s, "server.port"), Some(&Value::I64(9080)));
    }

    /// The span of `r`, built without a thread.
    fn data(r: &RequestSpan<'_>) -> SpanData {
        let sink = SpanSink::new(InMemorySpanExporter::default(), SpanOptions::default()).unwrap();
        sink.span_data(r)
    }

    fn sampled() -> TraceContext {
        TraceContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x1111,
            parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
            sampled: true,
        }
    }

    #[test]
    fn a_4xx_is_an_error_on_a_client_span_only_and_a_5xx_on_both() {
        let now = SystemTime::now();
        for (kind, status, error) in [
            (SpanKind::Client, 200, None),
            (SpanKind::Client, 404, Some("404")),
            (SpanKind::Client, 503, Some("503")),
            (SpanKind::Server, 404, None),
            (SpanKind::Server, 499, None),
            (SpanKind::Server, 500, Some("500")),
        ] {
            let mut r = RequestSpan::new(kind.clone(), sampled(), now, "GET", "a:80", "/");
            r.status = status;
            let s = data(&r);
            assert_eq!(
                attr(&s, "error.type").map(|v| v.as_str().into_owned()),
                error.map(str::to_owned),
                "{kind:?} {status}"
            );
            match error {
                // the status code tells why: no description (the conventions)
                Some(_) => assert_eq!(s.status, Status::error(""), "{kind:?} {status}"),
                None => assert_eq!(s.status, Status::Unset, "{kind:?} {status}"),
            }
            assert_eq!(
                attr(&s, "http.response.status_code"),
                Some(&Value::I64(i64::from(status)))
            );
        }
    }

    #[test]
    fn without_a_response_the_error_type_is_the_flags_else_other() {
        let now = SystemTime::now();
        for (flags, error) in [("DC", "DC"), ("URX,UC", "URX,UC"), ("", "_OTHER")] {
            let mut r = RequestSpan::new(SpanKind::Server, sampled(), now, "GET", "a", "/");
            r.flags = flags;
            let s = data(&r);
            assert_eq!(attr(&s, "error.type").unwrap().as_str(), error);
            assert!(attr(&s, "http.response.status_code").is_none());
            assert!(matches!(s.status, Status::Error { .. }), "{flags}");
        }
    }

    #[test]
    fn a_server_span_has_the_scheme_path_query_client_and_peer() {
        let now = SystemTime::now();
        let mut r = RequestSpan::new(
            SpanKind::Server,
            sampled(),
            now,
            "GET",
            "reviews.default.svc.cluster.local",
            "/reviews/1?id=7&x=1",
        );
        r.scheme = "https";
        r.status = 200;
        r.peer = Some("10.0.0.9:50412".parse().unwrap());
        r.x_forwarded_for = Some(" 203.0.113.7 , 10.0.0.1");
        let s = data(&r);
        assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "https");
        assert_eq!(attr(&s, "url.path").unwrap().as_str(), "/reviews/1");
        assert_eq!(attr(&s, "url.query").unwrap().as_str(), "id=7&x=1");
        assert!(attr(&s, "url.full").is_none(), "a client span's");
        assert_eq!(
            attr(&s, "server.address").unwrap().as_str(),
            "reviews.default.svc.cluster.local"
        );
        // no port in the authority: the scheme's
        assert_eq!(attr(&s, "server.port"), Some(&Value::I64(443)));
        assert_eq!(s.name, "reviews.default.svc.cluster.local:443/*");
        // the original client behind the proxies; the peer is the hop
        assert_eq!(attr(&s, "client.address").unwrap().as_str(), "203.0.113.7");
        assert_eq!(
            attr(&s, "network.peer.address").unwrap().as_str(),
            "10.0.0.9"
        );
        assert_eq!(attr(&s, "network.peer.port"), Some(&Value::I64(50412)));
        assert!(attr(&s, "error.type").is_none());
        assert_eq!(s.status, Status::Unset);

        // without x-forwarded-for the client is the peer; no query, no url.query
        r.x_forwarded_for = None;
        r.path = "/reviews/1?";
        let s = data(&r);
        assert_eq!(attr(&s, "client.address").unwrap().as_str(), "10.0.0.9");
        assert!(attr(&s, "url.query").is_none());
    }

    #[test]
    fn a_client_span_over_tls_has_an_https_url_the_upstream_peer_and_its_resends() {
        let now = SystemTime::now();
        let mut r = RequestSpan::new(
            SpanKind::Client,
            sampled(),
            now,
            "GET",
            "api.example.com",
            "/v1?q=1",
        );
        r.scheme = "https";
        r.status = 200;
        r.upstream = Some("93.184.216.34:443".parse().unwrap());
        r.peer = Some("127.0.0.1:40000".parse().unwrap());
        r.resend_count = 2;
        let s = data(&r);
        assert_eq!(
            attr(&s, "url.full").unwrap().as_str(),
            "https://api.example.com/v1?q=1"
        );
        assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "https");
        assert_eq!(attr(&s, "server.port"), Some(&Value::I64(443)));
        assert_eq!(
            attr(&s, "network.peer.address").unwrap().as_str(),
            "93.184.216.34"
        );
        assert_eq!(attr(&s, "network.peer.port"), Some(&Value::I64(443)));
        assert_eq!(attr(&s, "http.request.resend_count"), Some(&Value::I64(2)));
        assert!(attr(&s, "client.address").is_none(), "a server span's");
        assert!(attr(&s, "url.path").is_none(), "a server span's");
        // Envoy's tag keeps the downstream peer
        assert_eq!(attr(&s, "peer.address").unwrap().as_str(), "127.0.0.1");

        r.resend_count = 0;
        assert!(attr(&data(&r), "http.request.resend_count").is_none());
    }

    #[test]
    fn an_unknown_method_is_other_with_the_original_beside_it() {
        let now = SystemTime::now();
        let r = RequestSpan::new(SpanKind::Server, sampled(), now, "PURGE", "a", "/");
        let s = data(&r);
        assert_eq!(attr(&s, "http.request.method").unwrap().as_str(), "_OTHER");
        assert_eq!(
            attr(&s, "http.request.method_original").unwrap().as_str(),
            "PURGE"
        );
        let r = RequestSpan::new(SpanKind::Server, sampled(), now, "PATCH", "a", "/");
        let s = data(&r);
        assert_eq!(attr(&s, "http.request.method").unwrap().as_str(), "PATCH");
        assert!(attr(&s, "http.request.method_original").is_none());
    }

    #[test]
    fn the_span_context_carries_the_tracestate() {
        let now = SystemTime::now();
        let mut r = RequestSpan::new(SpanKind::Server, sampled(), now, "GET", "a", "/");
        r.tracestate = Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        let s = data(&r);
        let state = s.span_context.trace_state();
        assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(state.get("rojo"), Some("00f067aa0ba902b7"));
        assert_eq!(state.header(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        // a malformed one is left out of the span (the header itself travels on unchanged)
        r.tracestate = Some("not a list member");
        assert_eq!(data(&r).span_context.trace_state().header(), "");
        r.tracestate = None;
        assert_eq!(data(&r).span_context.trace_state(), &TraceState::NONE);
    }
}

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
//! OpenTelemetry's HTTP semantic conventions (`http.request.method`, `url.full` on client
//! spans, `url.path` on server spans, `server.address`, `http.response.status_code`,
//! `network.protocol.version`, `user_agent.original`) and the tags Envoy's tracers write on
//! an Istio sidecar's spans (`component: proxy`, `node_id`, `guid:x-request-id`,
//! `upstream_cluster`, `upstream_cluster.name`, `response_flags`, `request_size`,
//! `response_size`, `peer.address`, `istio.namespace`, `istio.canonical_service`). The span's
//! name is Envoy's default operation name on an Istio route, `<host>:<port>/*`. A 5xx answer
//! sets the span's status to error (Envoy's `error: true` tag).

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
    /// Request body bytes.
    pub request_size: u64,
    /// Response body bytes.
    pub response_size: u64,
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
            status: 0,
            flags: "",
            upstream_cluster: None,
            request_id: None,
            user_agent: None,
            peer: None,
            request_size: 0,
            response_size: 0,
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
        let mut attrs = Vec::with_capacity(20);
        attrs.push(KeyValue::new("http.request.method", method(req.method)));
        match req.kind {
            SpanKind::Server => {
                let path = req.path.split('?').next().unwrap_or(req.path);
                attrs.push(KeyValue::new("url.path", path.to_owned()));
            }
            _ => attrs.push(KeyValue::new(
                "url.full",
                format!("http://{}{}", req.authority, req.path),
            )),
        }
        let (host, port) = split_authority(req.authority);
        attrs.push(KeyValue::new("server.address", host.to_owned()));
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
        if req.status != 0 {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(req.status),
            ));
        }
        let version = req.protocol.strip_prefix("HTTP/").unwrap_or(req.protocol);
        attrs.push(KeyValue::new(
            "network.protocol.version",
            version.to_owned(),
        ));
        if let Some(ua) = req.user_agent {
            attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
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
            attrs.push(KeyValue::new("upstream_cluster", c.to_owned()));
            attrs.push(KeyValue::new("upstream_cluster.name", c.to_owned()));
        }
        attrs.push(KeyValue::new("request_size", req.request_size as i64));
        attrs.push(KeyValue::new("response_size", req.response_size as i64));
        if let Some(p) = req.peer {
            attrs.push(KeyValue::new("peer.address", p.ip().to_string()));
        }
        if let Some(ns) = &self.inner.namespace {
            attrs.push(KeyValue::new("istio.namespace", shared(ns)));
        }
        attrs.push(KeyValue::new(
            "istio.canonical_service",
            shared(&self.inner.service),
        ));
        let status = if req.status >= 500 || req.status == 0 {
            Status::error(if req.status == 0 {
                Cow::Borrowed("no response")
            } else {
                Cow::Owned(format!("{}", req.status))
            })
        } else {
            Status::Unset
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(ctx.trace_id),
                SpanId::from(ctx.span_id),
                flags,
                false,
                TraceState::NONE,
            ),
            parent_span_id: ctx.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: ctx.parent_span_id.is_some(),
            span_kind: req.kind.clone(),
            name: Cow::Owned(operation_name(req.operation.unwrap_or(req.authority))),
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

/// The method without a copy when it is a standard one.
fn method(m: &str) -> opentelemetry::Value {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    match STANDARD.iter().find(|s| **s == m) {
        Some(s) => opentelemetry::Value::from(*s),
        None => opentelemetry::Value::from(m.to_owned()),
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

/// Envoy's default operation name on an Istio route: `<host>:<port>/*` (Istio's route
/// decorator); a host without a port is HTTP's 80.
fn operation_name(authority: &str) -> String {
    let (host, port) = split_authority(authority);
    format!("{host}:{}/*", port.unwrap_or(80))
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
    fn operation_names_are_istio_route_decorators() {
        assert_eq!(operation_name("reviews:9080"), "reviews:9080/*");
        assert_eq!(operation_name("reviews"), "reviews:80/*");
        assert_eq!(operation_name("[::1]:8080"), "[::1]:8080/*");
        assert_eq!(operation_name("::1"), "::1:80/*");
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
    }
}

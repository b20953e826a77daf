//! The span and access log sinks of the per-request record ([`crate::record`]): what turns a
//! [`Completed`] request into an OpenTelemetry span ([`SpanRecorder`]) and an access log
//! line ([`AccessLogRecorder`]).
//!
//! Both hold what they write to in a [`Reloadable`] shared with their owner: a reload swaps
//! the exporter or the log file without rebuilding the record layers, and `None` turns the
//! sink off. A sink that is off, or a span sink asked about an unsampled request, answers
//! [`Interest::Nothing`] (one relaxed atomic load): the record layer neither calls it nor
//! captures the request's [`Details`] for it. One that reads request headers (an access log
//! filter on `request.headers`, a span's header tag) answers [`Interest::Headers`]: the
//! headers are kept as they arrived and as the connector sent them.
//!
//! ```
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use mesh_telemetry::access_log::{AccessLog, AccessLogWriter, Encoding};
//! use mesh_telemetry::record::{RecordLayer, Sink};
//! use mesh_telemetry::sinks::{AccessLogRecorder, Reloadable, Side};
//! use mesh_telemetry::trace::{TraceConfig, TraceLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # let dir = std::env::temp_dir().join(format!("mesh-doc-al-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("access.log");
//! let writer = Arc::new(AccessLogWriter::open(&path, 1024).unwrap());
//! let log = Arc::new(Reloadable::new(Some(Arc::new(AccessLog::new(Encoding::Json, writer.clone())))));
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::new(TraceConfig::default()))
//!     .layer(RecordLayer::new(vec![Arc::new(AccessLogRecorder::new(Side::Outbound, log)) as Arc<dyn Sink>]))
//!     .service_fn(|_req: Request<http_body_util::Empty<bytes::Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     });
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let res = svc.oneshot(Request::new(Default::default())).await.unwrap();
//! drop(res); // the body has ended
//! # });
//! writer.flush();
//! let line = std::fs::read_to_string(&path).unwrap();
//! assert!(line.contains("\"response_code\":200"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Version};
use mesh_core::ext::UpstreamReset;
use mesh_core::flags::ResponseFlags;
use mesh_core::telemetry::CustomTagValue;
use opentelemetry::trace::SpanKind;

use crate::access_log::{AccessLog, LogEntry};
use crate::record::{Completed, Details, Interest, Sink};
use crate::span::{RequestSpan, SpanSink};
use crate::trace::TraceContext;

/// What a sink writes to (an exporter, a log file), swapped by a reload; `None`: the sink is
/// off.
///
/// An [`ArcSwapOption`] with a flag beside it: whether it holds anything is one relaxed
/// atomic load ([`Reloadable::is_set`], asked for every request by [`Sink::interest`]),
/// where a load of the value takes a reference.
///
/// ```
/// use std::sync::Arc;
/// use mesh_telemetry::sinks::Reloadable;
///
/// let r = Reloadable::empty();
/// assert!(!r.is_set());
/// assert_eq!(r.swap(Some(Arc::new(7))), None);
/// assert!(r.is_set());
/// assert_eq!(r.load().as_deref(), Some(&7));
/// ```
#[derive(Debug)]
pub struct Reloadable<T> {
    value: ArcSwapOption<T>,
    /// Whether `value` holds anything (written under `swaps`, after the value).
    set: AtomicBool,
    /// Swaps one at a time, so that `set` ends as the last swap left `value`.
    swaps: Mutex<()>,
}

impl<T> Reloadable<T> {
    /// Holding `value`.
    pub fn new(value: Option<Arc<T>>) -> Self {
        Reloadable {
            set: AtomicBool::new(value.is_some()),
            value: ArcSwapOption::new(value),
            swaps: Mutex::new(()),
        }
    }

    /// Holding nothing (the sink is off).
    pub fn empty() -> Self {
        Reloadable::new(None)
    }

    /// Replaces the value (`None`: turns the sink off) and returns the previous one.
    pub fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        let _one = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        let set = value.is_some();
        let old = self.value.swap(value);
        self.set.store(set, Ordering::Release);
        old
    }

    /// The value now.
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<T>>> {
        self.value.load()
    }

    /// Whether it holds a value now (a relaxed load: a request that races a reload may see
    /// the value before or after it).
    #[inline]
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }
}

impl<T> Default for Reloadable<T> {
    fn default() -> Self {
        Reloadable::empty()
    }
}

/// Which listener of a sidecar a sink watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The application's outbound calls: client spans.
    Outbound,
    /// Peers' calls to the application: server spans.
    Inbound,
}

/// Makes the span of every sampled request (see the [module docs](self)).
#[derive(Debug)]
pub struct SpanRecorder {
    side: Side,
    sink: Arc<Reloadable<SpanSink>>,
    /// The spans' custom tags (a Telemetry's `customTags`; none: empty), swapped whole.
    tags: ArcSwapOption<SpanTags>,
}

/// A side's custom tags, and whether one reads a request header.
#[derive(Debug)]
struct SpanTags {
    tags: Vec<(String, TagSource)>,
    headers: bool,
}

/// Where a tag's value comes from, ready for the span.
#[derive(Debug)]
enum TagSource {
    Fixed(String),
    Header(http::HeaderName, Option<String>),
}

impl SpanRecorder {
    /// Spans of `side`'s requests, to whatever `sink` holds.
    pub fn new(side: Side, sink: Arc<Reloadable<SpanSink>>) -> Self {
        SpanRecorder {
            side,
            sink,
            tags: ArcSwapOption::empty(),
        }
    }

    /// Adds `tags` to the spans from now on (a Telemetry's `customTags`: literals and
    /// environment variables already read; request headers read from the request as it was
    /// sent upstream, after the mesh's changes, so a request the mesh answered itself has
    /// a header tag's default). A tag whose value is empty is left out, as Envoy's.
    pub fn set_tags(&self, tags: &[(String, CustomTagValue)]) {
        let tags: Vec<(String, TagSource)> = tags
            .iter()
            .filter_map(|(name, v)| {
                let source = match v {
                    CustomTagValue::Fixed(v) => TagSource::Fixed(v.clone()),
                    CustomTagValue::Header { name, default } => TagSource::Header(
                        http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                        default.clone(),
                    ),
                };
                Some((name.clone(), source))
            })
            .collect();
        let headers = tags.iter().any(|(_, s)| matches!(s, TagSource::Header(..)));
        self.tags
            .store((!tags.is_empty()).then(|| Arc::new(SpanTags { tags, headers })));
    }
}

impl Sink for SpanRecorder {
    /// The details of a sampled request while an exporter is set (with the request's
    /// headers when a custom tag reads one); nothing otherwise.
    fn interest(&self, trace: Option<&TraceContext>) -> Interest {
        if !(trace.is_some_and(|t| t.sampled) && self.sink.is_set()) {
            Interest::Nothing
        } else if self.tags.load().as_ref().is_some_and(|t| t.headers) {
            Interest::Headers
        } else {
            Interest::Details
        }
    }

    fn complete(&self, c: &Completed<'_>) {
        let Some(ctx) = c.trace.copied().filter(|t| t.sampled) else {
            return;
        };
        let Some(details) = c.details else {
            return;
        };
        let guard = self.sink.load();
        let Some(sink) = guard.as_ref() else {
            return;
        };
        let (start, end) = wall_clock(c.start, c.end);
        let flags = flags_value(c.flags);
        let operation = c
            .info
            .destination
            .as_ref()
            .map(|d| format!("{}:{}", d.host, d.port.unwrap_or(80)));
        let kind = match self.side {
            Side::Outbound => SpanKind::Client,
            Side::Inbound => SpanKind::Server,
        };
        let mut span = RequestSpan::new(
            kind,
            ctx,
            start,
            details.method.as_str(),
            c.authority.unwrap_or(""),
            path(details),
        );
        span.end = end;
        span.operation = operation.as_deref();
        span.protocol = protocol(c.version);
        span.scheme = scheme(self.side, details, c);
        span.tracestate = header_str(&details.tracestate);
        span.x_forwarded_for = header_str(&details.x_forwarded_for);
        span.upstream = c.info.endpoint().map(|ep| ep.addr);
        span.resend_count = c.info.attempts.saturating_sub(1);
        span.status = c.status.map_or(0, |s| s.as_u16());
        span.flags = flags.as_ref().and_then(|f| f.to_str().ok()).unwrap_or("");
        span.upstream_cluster = c.info.cluster().map(|cl| &*cl.name);
        span.request_id = header_str(&details.request_id);
        span.user_agent = header_str(&details.user_agent);
        span.peer = c.client_addr;
        // the bodies, as Envoy's `request_size` and `response_size` tags
        span.request_size = c.request_body_bytes().unwrap_or(0);
        span.response_size = c.response_body_bytes().unwrap_or(0);
        let tags = self.tags.load();
        let tags: Vec<(&str, &str)> = tags
            .as_deref()
            .into_iter()
            .flat_map(|t| &t.tags)
            .filter_map(|(name, v)| {
                let value = match v {
                    TagSource::Fixed(v) => v.as_str(),
                    TagSource::Header(h, default) => c
                        .info
                        .request_headers
                        .as_ref()
                        .and_then(|m| m.get(h))
                        .and_then(|v| v.to_str().ok())
                        .or(default.as_deref())?,
                };
                (!value.is_empty()).then_some((name.as_str(), value))
            })
            .collect();
        span.tags = &tags;
        sink.record(&span);
    }
}

/// Writes the access log line of every request (see the [module docs](self)).
#[derive(Debug)]
pub struct AccessLogRecorder {
    side: Side,
    log: Arc<Reloadable<AccessLog>>,
    local: OnceLock<SocketAddr>,
    /// Inbound: Istio's name of the local application's cluster (`inbound|9080||`).
    app_cluster: Option<Arc<str>>,
    /// Whether the service time is logged only as the `x-envoy-upstream-service-time`
    /// header the client got (a listener that writes it; Envoy's `-` without it).
    service_time_header_only: bool,
}

impl AccessLogRecorder {
    /// Lines for `side`'s requests, to whatever `log` holds.
    pub fn new(side: Side, log: Arc<Reloadable<AccessLog>>) -> Self {
        AccessLogRecorder {
            side,
            log,
            local: OnceLock::new(),
            app_cluster: None,
            service_time_header_only: false,
        }
    }

    /// Logs `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%` as the header the client got only, `-`
    /// without it (as Envoy with its debug headers off: mesh-proxy under
    /// `proxyHeaders.envoyDebugHeaders.disabled`); by default the record's own measure
    /// stands in where no listener wrote the header (an in-process stack).
    pub fn with_service_time_header_only(mut self) -> Self {
        self.service_time_header_only = true;
        self
    }

    /// The inbound side's cluster when a request records none and names no destination
    /// port (a local reply before the inbound cluster, such as an authorization's `403`):
    /// the local application's, Istio's `inbound|<port>||`.
    pub fn with_local_app_port(mut self, port: u16) -> Self {
        self.app_cluster = Some(Arc::from(mesh_core::health::inbound_cluster_name(port)));
        self
    }

    /// The listener's address (`%DOWNSTREAM_LOCAL_ADDRESS%`), once it is bound; set once.
    pub fn set_local_addr(&self, addr: SocketAddr) {
        let _ = self.local.set(addr);
    }

    /// The side watched.
    pub fn side(&self) -> Side {
        self.side
    }
}

impl Sink for AccessLogRecorder {
    /// The details while a log is set (with the request's headers when its filter reads
    /// them); nothing otherwise.
    fn interest(&self, _: Option<&TraceContext>) -> Interest {
        if !self.log.is_set() {
            return Interest::Nothing;
        }
        match self.log.load().as_ref().and_then(|l| l.filter()) {
            Some(f) if f.needs_headers() => Interest::Headers,
            _ => Interest::Details,
        }
    }

    fn complete(&self, c: &Completed<'_>) {
        let guard = self.log.load();
        let Some(log) = guard.as_ref() else {
            return;
        };
        let cx = EntryContext {
            side: self.side,
            local: self.local.get().copied(),
            app_cluster: self.app_cluster.as_deref(),
            service_time_header_only: self.service_time_header_only,
        };
        with_entry(c, &cx, |e| log.log(e));
    }
}

/// What a request's [`LogEntry`] needs beyond its [`Completed`] record: who records it.
pub(crate) struct EntryContext<'a> {
    /// The listener's side.
    pub(crate) side: Side,
    /// The listener's address (`%DOWNSTREAM_LOCAL_ADDRESS%`), when known.
    pub(crate) local: Option<SocketAddr>,
    /// The inbound side's cluster for a reply that names none
    /// ([`AccessLogRecorder::with_local_app_port`]).
    pub(crate) app_cluster: Option<&'a str>,
    /// [`AccessLogRecorder::with_service_time_header_only`].
    pub(crate) service_time_header_only: bool,
}

/// Calls `f` with `c`'s [`LogEntry`] (the access log's line; the attributes of a CEL
/// expression).
pub(crate) fn with_entry<R>(
    c: &Completed<'_>,
    cx: &EntryContext<'_>,
    f: impl FnOnce(&LogEntry<'_>) -> R,
) -> R {
    let (start, _) = wall_clock(c.start, c.end);
    let flags = flags_value(c.flags);
    let mut e = LogEntry::new(start);
    // Envoy's formatter writes the reason with its spaces as underscores
    // (`SSL_routines`), as its logs show it
    let transport_failure = c
        .details
        .and_then(|d| d.upstream_transport_failure_reason)
        .map(|r| r.replace(' ', "_"));
    e.upstream_transport_failure_reason = transport_failure.as_deref();
    // and the response code details carry it too, as Envoy 1.40's
    // (`upstream_reset_before_response_started{remote_connection_failure|<reason>}`)
    let details_with_reason = transport_failure.as_deref().map(|r| {
        format!("upstream_reset_before_response_started{{remote_connection_failure|{r}}}")
    });
    if let Some(d) = c.details {
        e.method = d.method.as_str();
        e.path = path(d);
        e.user_agent = header_str(&d.user_agent);
        e.request_id = header_str(&d.request_id);
        e.x_forwarded_for = header_str(&d.x_forwarded_for);
        e.requested_server_name = d.requested_server_name.as_deref();
        // as sent upstream when the request was (after the mesh's changes), else as it
        // arrived
        e.request_headers = c.info.request_headers.as_deref().or(d.headers.as_ref());
        e.downstream_tls = d.downstream_tls;
    }
    e.mtls = c.peer.is_some();
    e.grpc_status = c.grpc_status;
    e.protocol = protocol(c.version);
    e.response_code = c.status.map_or(0, |s| s.as_u16());
    e.response_flags = flags.as_ref().and_then(|f| f.to_str().ok()).unwrap_or("");
    e.response_code_details = details_with_reason.as_deref().unwrap_or(details(c));
    // the bodies, as Envoy counts them (the details know the heads' sizes; this sink
    // always reads them)
    e.bytes_received = c.request_body_bytes().unwrap_or(0);
    e.bytes_sent = c.response_body_bytes().unwrap_or(0);
    e.duration = Some(c.end.saturating_duration_since(c.start));
    // Envoy's router writes `x-envoy-upstream-service-time` on the upstream's answers
    // only, not on its local replies
    if e.response_code_details == VIA_UPSTREAM {
        e.upstream_service_time = match cx.service_time_header_only {
            true => c
                .details
                .and_then(|d| d.upstream_service_time_header)
                .map(std::time::Duration::from_millis),
            false => c.upstream_service_time(),
        };
    }
    e.upstream_local_address = c.info.connection.and_then(|conn| conn.local);
    e.authority = c.authority;
    // a connection-pool limit's reply went to no host (Envoy's `-`)
    e.upstream_host = match e.response_code_details == OVERFLOW_DETAILS {
        true => None,
        false => c.info.endpoint().map(|ep| ep.addr),
    };
    e.upstream_cluster = match c.info.cluster() {
        Some(cl) => Some(&*cl.name),
        None if c.info.passthrough => Some("PassthroughCluster"),
        None => None,
    };
    // inbound, a request the stack forwarded has its cluster recorded (the port's, with
    // no host when its pool overflowed); a reply made before it (an authorization's
    // 403, a rate limit's 429) went to no host, and its cluster is the one Envoy's route
    // names: the workload port's `inbound|<port>||`
    let port_cluster;
    if cx.side == Side::Inbound && e.upstream_cluster.is_none() && c.status.is_some() {
        match c.details.and_then(|d| d.destination_port) {
            Some(port) => {
                port_cluster = mesh_core::health::inbound_cluster_name(port);
                e.upstream_cluster = Some(&port_cluster);
            }
            None => e.upstream_cluster = cx.app_cluster,
        }
    }
    e.downstream_local_address = cx.local;
    e.downstream_remote_address = c.client_addr;
    e.route_name = c.info.route_name();
    e.upstream_meta = c.info.endpoint().and_then(|ep| ep.meta.as_deref());
    e.downstream_peer = c.peer;
    e.trace_id = c.trace.map(|t| t.trace_id);
    f(&e)
}

/// The wall-clock times of a request's start and end, from its monotonic ones: the
/// thread's last reading of the wall clock plus the monotonic time since it. The wall clock
/// is read at most once a second per thread (a read costs 25–30 ns here, a tenth of the
/// access log line), so a step of the system clock shows in the lines and spans within a
/// second; the monotonic clock is slewed with the wall clock, so between steps the two
/// agree far below the millisecond the logs write.
fn wall_clock(start: Instant, end: Instant) -> (SystemTime, SystemTime) {
    let wall = WALL.with(|anchor| {
        wall_from(anchor.get(), end).unwrap_or_else(|| {
            // a second old, or an end before the reading (another thread's instant)
            let reading = (Instant::now(), SystemTime::now());
            anchor.set(reading);
            reading.1 - reading.0.saturating_duration_since(end)
        })
    });
    (wall - end.saturating_duration_since(start), wall)
}

/// The wall-clock time of `at` from a reading of both clocks, unless the reading is older
/// than [`WALL_READ_EVERY`] or later than `at`.
fn wall_from((read_at, wall): (Instant, SystemTime), at: Instant) -> Option<SystemTime> {
    at.checked_duration_since(read_at)
        .filter(|since| *since < WALL_READ_EVERY)
        .map(|since| wall + since)
}

/// How long a thread's reading of the wall clock serves ([`wall_clock`]).
const WALL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// The thread's last reading of the wall clock, with the monotonic time of it.
    static WALL: std::cell::Cell<(Instant, SystemTime)> =
        std::cell::Cell::new((Instant::now(), SystemTime::now()));
}

fn path(d: &Details) -> &str {
    d.uri.path_and_query().map_or("", |p| p.as_str())
}

/// A span's `url.scheme` (OpenTelemetry's HTTP conventions): on the inbound side (a server
/// span) the original client's, `x-forwarded-proto`, else the request's own (HTTP/2's
/// `:scheme`, an absolute target), else `https` over a TLS connection; on the outbound side
/// (a client span) `https` when the connector originated TLS to the upstream (Istio's mTLS,
/// TLS origination), else the request's own; else `http`.
fn scheme(side: Side, d: &Details, c: &Completed<'_>) -> &'static str {
    let https = |s: &[u8]| s.eq_ignore_ascii_case(b"https");
    let own = d.uri.scheme_str().map(|s| https(s.as_bytes()));
    let tls = match side {
        Side::Inbound => d
            .x_forwarded_proto
            .as_ref()
            .map(|p| {
                https(
                    p.as_bytes()
                        .split(|b| *b == b',')
                        .next()
                        .unwrap_or(b"")
                        .trim_ascii(),
                )
            })
            .or(own)
            .unwrap_or(d.downstream_tls),
        Side::Outbound => match c.info.connection {
            Some(conn) if conn.tls => true,
            _ => own.unwrap_or(false),
        },
    };
    if tls { "https" } else { "http" }
}

/// A header's value as text (`None`: absent, or not UTF-8).
fn header_str(v: &Option<HeaderValue>) -> Option<&str> {
    // as Envoy writes the value, UTF-8 beyond ASCII included (`HeaderValue::to_str` refuses
    // any byte over 0x7e; it is the cheaper check of the short ASCII values requests carry,
    // 100 instructions a line fewer than `from_utf8`, so it goes first); a value that is not
    // UTF-8 is `-`
    let v = v.as_ref()?;
    v.to_str()
        .ok()
        .or_else(|| std::str::from_utf8(v.as_bytes()).ok())
}

/// `%PROTOCOL%`.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The flags' short form (no allocation for a single flag); `None` when there is none.
fn flags_value(f: ResponseFlags) -> Option<HeaderValue> {
    (!f.is_empty()).then(|| f.to_header_value())
}

/// `%RESPONSE_CODE_DETAILS%` of an upstream's answer.
const VIA_UPSTREAM: &str = "via_upstream";

/// The details of the mesh's own overflow reply (a connection-pool limit).
const OVERFLOW_DETAILS: &str = UpstreamReset::Overflow.details();

/// `%RESPONSE_CODE_DETAILS%` as Envoy writes it for the mesh's own answers
/// (`envoy/stream_info/stream_info.h`, `ResponseCodeDetailValues`; a reset before the
/// response, `upstream_reset_before_response_started{<reason>}`: the reply's own
/// [`UpstreamReset`](mesh_core::ext::UpstreamReset) or
/// [`ResponseCodeDetails`](mesh_core::ext::ResponseCodeDetails) when it names them, else
/// its flags), `via_upstream` for an upstream's answer (also one the retry layer passed on
/// with `URX` or `UO`), `downstream_remote_disconnect` when the client left first.
fn details<'a>(c: &Completed<'a>) -> &'a str {
    if c.status.is_none() {
        // the client went away before the answer (Envoy's connection manager's details)
        return match c
            .flags
            .contains(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION)
        {
            true => "downstream_remote_disconnect",
            false => "",
        };
    }
    if let Some(named) = c.details.and_then(|d| d.response_code_details.as_deref()) {
        return named;
    }
    const LOCAL: &[(ResponseFlags, &str)] = &[
        (ResponseFlags::NO_ROUTE, "route_not_found"),
        (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
        (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, "response_timeout"),
        (ResponseFlags::RATE_LIMITED, "local_rate_limited"),
        (ResponseFlags::FAULT_INJECTED, "fault_filter_abort"),
        (
            ResponseFlags::RBAC_DENIED,
            "rbac_access_denied_matched_policy[none]",
        ),
        (
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            UpstreamReset::RemoteConnectionFailure.details(),
        ),
        (
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            UpstreamReset::ConnectionTermination.details(),
        ),
        (
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            UpstreamReset::RemoteReset.details(),
        ),
        (
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            UpstreamReset::ProtocolError.details(),
        ),
    ];
    LOCAL
        .iter()
        .find(|(f, _)| c.flags.contains(*f))
        .map_or(VIA_UPSTREAM, |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn recorders_read_requests_only_while_on_and_spans_only_sampled_ones() {
        use crate::access_log::{AccessLogWriter, Encoding};
        use crate::span::{SpanOptions, SpanSink};
        use opentelemetry_sdk::trace::InMemorySpanExporter;

        let ctx = |sampled| TraceContext {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            sampled,
        };
        let (sampled, unsampled) = (ctx(true), ctx(false));

        let log = Arc::new(Reloadable::empty());
        let recorder = AccessLogRecorder::new(Side::Outbound, log.clone());
        assert_eq!(recorder.interest(Some(&sampled)), Interest::Nothing);
        let writer = Arc::new(AccessLogWriter::open("/dev/null", 16).unwrap());
        assert!(
            log.swap(Some(Arc::new(AccessLog::new(Encoding::Text, writer))))
                .is_none()
        );
        assert_eq!(recorder.interest(None), Interest::Details);
        assert!(log.swap(None).is_some());
        assert_eq!(recorder.interest(None), Interest::Nothing);

        let spans = Arc::new(Reloadable::empty());
        let recorder = SpanRecorder::new(Side::Inbound, spans.clone());
        assert_eq!(recorder.interest(Some(&sampled)), Interest::Nothing);
        let sink = SpanSink::new(InMemorySpanExporter::default(), SpanOptions::default()).unwrap();
        spans.swap(Some(Arc::new(sink)));
        assert_eq!(recorder.interest(Some(&sampled)), Interest::Details);
        assert_eq!(recorder.interest(Some(&unsampled)), Interest::Nothing);
        assert_eq!(recorder.interest(None), Interest::Nothing);
        // custom tags: the headers are asked for only when a tag reads one
        let fixed = ("team".to_string(), CustomTagValue::Fixed("a".into()));
        recorder.set_tags(std::slice::from_ref(&fixed));
        assert_eq!(recorder.interest(Some(&sampled)), Interest::Details);
        let header = (
            "user".to_string(),
            CustomTagValue::Header {
                name: "x-user".into(),
                default: None,
            },
        );
        recorder.set_tags(&[fixed, header]);
        assert_eq!(recorder.interest(Some(&sampled)), Interest::Headers);
        assert_eq!(recorder.interest(Some(&unsampled)), Interest::Nothing);
        recorder.set_tags(&[]);
        assert_eq!(recorder.interest(Some(&sampled)), Interest::Details);
        // an access log whose filter reads request headers asks for them
        let writer = Arc::new(AccessLogWriter::open("/dev/null", 16).unwrap());
        let filter = crate::log_filter::LogFilter::new("request.headers['x'] == 'y'").unwrap();
        log.swap(Some(Arc::new(
            AccessLog::new(Encoding::Text, writer).with_filter(Some(Arc::new(filter))),
        )));
        let recorder = AccessLogRecorder::new(Side::Outbound, log);
        assert_eq!(recorder.interest(None), Interest::Headers);
    }

    /// Sends `req` through a record layer with a JSON access log to `path`, to a service
    /// that records an upstream connection as the connector does and answers `answer`.
    async fn logged(
        path: &std::path::Path,
        side: Side,
        req: http::Request<http_body_util::Full<bytes::Bytes>>,
        answer: fn() -> http::Response<http_body_util::Full<bytes::Bytes>>,
    ) -> serde_json::Value {
        use crate::access_log::{AccessLogWriter, Encoding};
        use crate::record::RecordLayer;
        use http_body_util::BodyExt;
        use tower::{ServiceBuilder, ServiceExt};

        let _ = std::fs::remove_file(path);
        let writer = Arc::new(AccessLogWriter::open(path, 16).unwrap());
        let log = Arc::new(Reloadable::new(Some(Arc::new(AccessLog::new(
            Encoding::Json,
            writer.clone(),
        )))));
        let recorder = AccessLogRecorder::new(side, log);
        recorder.set_local_addr("127.0.0.1:15001".parse().unwrap());
        let svc = ServiceBuilder::new()
            .layer(RecordLayer::new(vec![Arc::new(recorder) as Arc<dyn Sink>]))
            .service_fn(move |req: http::Request<_>| async move {
                let info = mesh_core::ext::stream_info(req.extensions()).unwrap();
                let res = answer();
                info.set_endpoint(&mesh_core::ext::SelectedEndpoint::new(
                    "10.0.0.7:9080".parse().unwrap(),
                ));
                if res.extensions().get::<ResponseFlags>().is_none() {
                    info.set_connection(mesh_core::stream_info::UpstreamConnection {
                        local: Some("10.0.0.1:40000".parse().unwrap()),
                        tls: false,
                        sent: Instant::now(),
                    });
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                Ok::<_, std::convert::Infallible>(res)
            });
        let res = svc.oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        writer.flush();
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(text.trim_end()).unwrap()
    }

    #[tokio::test]
    async fn a_user_agent_beyond_ascii_is_written_as_envoy_writes_it() {
        use bytes::Bytes;
        use http_body_util::Full;

        let dir = std::env::temp_dir().join(format!("mesh-sinks-ua-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let ua = "Mozilla/5.0 (Überall; ÿ)";
        let req = http::Request::builder()
            .uri("/")
            .header("host", "reviews:9080")
            .header(
                "user-agent",
                HeaderValue::from_bytes(ua.as_bytes()).unwrap(),
            )
            .header(
                "x-request-id",
                HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = || http::Response::new(Full::new(Bytes::new()));
        let v = logged(&path, Side::Outbound, req, answer).await;
        assert_eq!(v["user_agent"], ua);
        // bytes that are not UTF-8: not written (the key is there, its value null)
        assert_eq!(v.get("request_id"), Some(&serde_json::Value::Null), "{v}");
    }

    #[tokio::test]
    async fn a_line_has_body_bytes_the_forwarded_client_sni_local_address_and_service_time() {
        use bytes::Bytes;
        use http_body_util::Full;

        let dir = std::env::temp_dir().join(format!("mesh-sinks-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let mut req = http::Request::builder()
            .method("POST")
            .uri("/reviews/1")
            .header("host", "reviews:9080")
            .header("x-forwarded-for", "10.1.2.3")
            .header("content-length", "11")
            .body(Full::new(Bytes::from_static(b"hello world")))
            .unwrap();
        req.extensions_mut()
            .insert(mesh_core::ext::ConnectionSni(Arc::from(
                "outbound_.9080_._.reviews.default.svc.cluster.local",
            )));
        let answer = || {
            http::Response::builder()
                .header("x-backend", "v1")
                .body(Full::new(Bytes::from_static(b"v1")))
                .unwrap()
        };
        let v = logged(&path, Side::Inbound, req, answer).await;
        // the bodies only: not the heads (Istio's metrics count those)
        assert_eq!(v["bytes_received"], 11);
        assert_eq!(v["bytes_sent"], 2);
        assert_eq!(v["x_forwarded_for"], "10.1.2.3");
        assert_eq!(
            v["requested_server_name"],
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        assert_eq!(v["upstream_local_address"], "10.0.0.1:40000");
        assert_eq!(v["upstream_host"], "10.0.0.7:9080");
        assert_eq!(v["downstream_local_address"], "127.0.0.1:15001");
        assert_eq!(v["response_code_details"], "via_upstream");
        let service: u64 = v["upstream_service_time"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let duration = v["duration"].as_u64().unwrap();
        assert!(
            (15..=duration).contains(&service),
            "{service} ms of {duration}"
        );

        // the listener wrote the header (mesh_core::hcm): the log says what the client got,
        // as Envoy's %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
        let answer = || {
            http::Response::builder()
                .header("x-envoy-upstream-service-time", "42")
                .body(Full::new(Bytes::from_static(b"v1")))
                .unwrap()
        };
        let req = http::Request::builder()
            .uri("/")
            .header("host", "reviews")
            .body(Full::default())
            .unwrap();
        let v = logged(&path, Side::Outbound, req, answer).await;
        assert_eq!(v["upstream_service_time"], "42");

        // a local reply: no upstream, no service time, nor local address
        let answer = || {
            mesh_core::ext::local_reply::<Full<Bytes>>(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                "upstream connect error",
            )
        };
        let req = http::Request::builder()
            .uri("/")
            .header("host", "reviews")
            .body(Full::default())
            .unwrap();
        let v = logged(&path, Side::Outbound, req, answer).await;
        assert_eq!(
            v["response_code_details"],
            "upstream_reset_before_response_started{connection_termination}"
        );
        assert_eq!(v["bytes_received"], 0);
        assert_eq!(v["bytes_sent"], 22);
        assert_eq!(v["upstream_service_time"], serde_json::Value::Null);
        assert_eq!(v["upstream_local_address"], serde_json::Value::Null);
        assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(v["requested_server_name"], serde_json::Value::Null);
        assert_eq!(
            v["upstream_transport_failure_reason"],
            serde_json::Value::Null
        );

        // a failed TLS handshake: its reason, spaces as underscores (as Envoy's log)
        let answer = || {
            let mut res = mesh_core::ext::local_reply::<Full<Bytes>>(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                "upstream connect error",
            );
            res.extensions_mut().insert(mesh_core::ext::TransportFailure(
                "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end",
            ));
            res
        };
        let req = http::Request::builder()
            .uri("/")
            .header("host", "reviews")
            .body(Full::default())
            .unwrap();
        let v = logged(&path, Side::Outbound, req, answer).await;
        assert_eq!(
            v["upstream_transport_failure_reason"],
            "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
        );
        // Envoy 1.40's details for it (checked against envoy 1.40 with a plaintext upstream)
        assert_eq!(
            v["response_code_details"],
            "upstream_reset_before_response_started{remote_connection_failure|TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end}"
        );

        // details a reply names itself, as envoy 1.40 writes them
        let get = || {
            http::Request::builder()
                .uri("/")
                .header("host", "reviews")
                .body(Full::default())
                .unwrap()
        };
        let per_try = || {
            let mut res = mesh_core::ext::local_reply::<Full<Bytes>>(
                http::StatusCode::GATEWAY_TIMEOUT,
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT
                    | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
                "upstream request timeout",
            );
            res.extensions_mut()
                .insert(mesh_core::ext::ResponseCodeDetails(Arc::from(
                    "upstream_per_try_timeout",
                )));
            res
        };
        let v = logged(&path, Side::Outbound, get(), per_try).await;
        assert_eq!(v["response_code_details"], "upstream_per_try_timeout");
        assert_eq!(v["upstream_host"], "10.0.0.7:9080");
        let refused = || {
            mesh_core::ext::UpstreamReset::RemoteRefusedStreamReset.reply::<Full<Bytes>>(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_REMOTE_RESET,
                false,
            )
        };
        let v = logged(&path, Side::Outbound, get(), refused).await;
        assert_eq!(
            v["response_code_details"],
            "upstream_reset_before_response_started{remote_refused_stream_reset}"
        );
        // a pool's overflow went to no host (Envoy's `-`)
        let overflow = || {
            mesh_core::ext::UpstreamReset::Overflow.reply::<Full<Bytes>>(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_OVERFLOW,
                false,
            )
        };
        let v = logged(&path, Side::Outbound, get(), overflow).await;
        assert_eq!(
            v["response_code_details"],
            "upstream_reset_before_response_started{overflow}"
        );
        assert_eq!(v["upstream_host"], serde_json::Value::Null);
        // an upstream's answer the retry layer passed on with UO (its budget spent): the
        // upstream's, from its host
        let budget_spent = || {
            let mut res = http::Response::new(Full::new(Bytes::from_static(b"busy")));
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            mesh_core::ext::mark(&mut res, ResponseFlags::UPSTREAM_OVERFLOW);
            res
        };
        let v = logged(&path, Side::Outbound, get(), budget_spent).await;
        assert_eq!(v["response_code_details"], "via_upstream");
        assert_eq!(v["upstream_host"], "10.0.0.7:9080");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_client_gone_before_the_answer_is_logged_as_envoy_logs_it() {
        // envoy 1.40: `0 DC downstream_remote_disconnect` for a client that gave up waiting
        use crate::access_log::{AccessLogWriter, Encoding};
        use crate::record::RecordLayer;
        use http_body_util::Full;
        use tower::{Service, ServiceBuilder, ServiceExt};

        let dir = std::env::temp_dir().join(format!("mesh-sinks-dc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let writer = Arc::new(AccessLogWriter::open(&path, 16).unwrap());
        let log = Arc::new(Reloadable::new(Some(Arc::new(AccessLog::new(
            Encoding::Json,
            writer.clone(),
        )))));
        let recorder = AccessLogRecorder::new(Side::Outbound, log);
        let mut svc = ServiceBuilder::new()
            .layer(RecordLayer::new(vec![Arc::new(recorder) as Arc<dyn Sink>]))
            .service_fn(|_req: http::Request<Full<bytes::Bytes>>| {
                std::future::pending::<
                    Result<http::Response<Full<bytes::Bytes>>, std::convert::Infallible>,
                >()
            });
        let req = http::Request::builder()
            .uri("/")
            .header("host", "reviews")
            .body(Full::default())
            .unwrap();
        let mut fut = Box::pin(svc.ready().await.unwrap().call(req));
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
        drop(fut);
        writer.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["response_code"], 0);
        assert_eq!(v["response_flags"], "DC");
        assert_eq!(v["response_code_details"], "downstream_remote_disconnect");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wall_times_come_from_a_reading_under_a_second_old() {
        let read_at = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = read_at + Duration::from_millis(300);
        assert_eq!(
            wall_from((read_at, wall), later),
            Some(wall + Duration::from_millis(300))
        );
        assert_eq!(wall_from((read_at, wall), read_at), Some(wall));
        // stale, or an instant before the reading: the clock is read again
        assert_eq!(wall_from((read_at, wall), read_at + WALL_READ_EVERY), None);
        assert_eq!(wall_from((later, wall), read_at), None);
        // through the thread's reading: the end is now, the start its duration before
        let (start, end) = (Instant::now(), Instant::now() + Duration::from_millis(5));
        let before = SystemTime::now();
        let (s, e) = wall_clock(start, end);
        assert_eq!(e.duration_since(s).unwrap(), end - start);
        let off = e
            .duration_since(before)
            .unwrap_or_else(|err| err.duration());
        assert!(off < WALL_READ_EVERY + Duration::from_millis(10), "{off:?}");
    }
}

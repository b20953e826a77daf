//! The completion hook: what happened to a request, handed to telemetry sinks when its
//! response has ended.
//!
//! [`RecordLayer`] is the telemetry layer's half that watches a request from arrival to the
//! end of its response, as Envoy's connection manager does for its access loggers and its
//! stats filter (`istio_stats`: `log()`, called once the stream is complete):
//!
//! 1. on the request: each sink's [`Interest`] in it, the start [`Instant`], `Host`, the
//!    size of the head and the body's length when known, its [`TraceContext`], the
//!    downstream [`ClientAddr`](mesh_core::ext::ClientAddr) (read with
//!    [`client_addr`](mesh_core::ext::client_addr)) and [`PeerIdentity`] (inbound), the
//!    request's [`Details`] when a sink reads them (method, URI, `x-request-id`,
//!    `user-agent`, `x-forwarded-for`, `x-forwarded-proto`, `tracestate`, the SNI of a TLS
//!    downstream ([`ConnectionSni`]), whether the downstream is TLS
//!    ([`RecordLayer::with_downstream_tls`]), the head's size), and a fresh [`StreamInfo`]
//!    put in its [`RequestSlots`](mesh_core::ext::RequestSlots) for the layers inside to
//!    record into (the router's decision, each attempt's upstream; with the details, the
//!    connector also records each attempt's upstream connection: its local address, TLS,
//!    when the request went out, [`StreamInfo::with_connection`]);
//! 2. on the response head: the status, the [`ResponseFlags`] of its extensions,
//!    `grpc-status` from its headers, and the time to first byte and the head's size when a
//!    sink reads the details;
//! 3. on the response body: the bytes, `grpc-status` from the trailers;
//! 4. at the end of the body (or its error, or when the body or the future is dropped before
//!    the end: a client gone away), one [`Completed`] to each interested [`Sink`], in order. A
//!    trailers frame is the end: hyper's HTTP/2 server and tonic's client drop the body
//!    after it without polling for the end, and the exchange is complete, not a `DC`;
//! 5. with [`RecordLayer::with_progress_reports`], while a gRPC call is open (from its
//!    arrival, or once its response's head has come: [`ReportsFrom`]), to the sinks that ask
//!    for it ([`Sink::progress_interval`]: Istio's metrics, for a long stream's messages),
//!    its record so far ([`Sink::progress`], [`End::Open`]) about every interval: the
//!    first when the call has waited an interval since its start, the next an interval
//!    after the one before, from a tokio timer the response future and body poll. The
//!    timer is set the first time the call has to wait, or when its response's second
//!    message comes: a call answered at once (most unary calls) costs none.
//!
//! With no sink, or none interested in the request (an access log or a span exporter turned
//! off, an unsampled request for spans), the layer only passes the request on: no
//! [`StreamInfo`] is inserted (the layers inside record nothing) and the body is not
//! watched. What a request's details cost (copies of its method, URI and a few headers, a
//! clock read here and one in the connector, an allocation) is paid only when a sink reads
//! them: Istio's metrics do not. The request's headers are copied (as they arrived, and by
//! the connector as it sent them) only for a sink that reads them ([`Interest::Headers`]).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use http::{Request, Response};
//! use mesh_telemetry::record::{Completed, RecordLayer, Sink};
//! use tower::{ServiceBuilder, ServiceExt};
//! use http_body_util::{BodyExt, Full};
//!
//! #[derive(Default)]
//! struct Statuses(Mutex<Vec<u16>>);
//! impl Sink for Statuses {
//!     fn complete(&self, c: &Completed<'_>) {
//!         self.0.lock().unwrap().push(c.status.map_or(0, |s| s.as_u16()));
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let seen = Arc::new(Statuses::default());
//! let svc = ServiceBuilder::new()
//!     .layer(RecordLayer::new(vec![seen.clone() as Arc<dyn Sink>]))
//!     .service_fn(|_req: Request<Full<bytes::Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("hi"))))
//!     });
//! let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
//! assert!(seen.0.lock().unwrap().is_empty(), "not before the body ends");
//! res.into_body().collect().await.unwrap();
//! assert_eq!(*seen.0.lock().unwrap(), [200]);
//! # });
//! ```
//!
//! Reads (request extensions): [`TraceContext`] (written by [`crate::TraceLayer`], which goes
//! outside this layer, into the request's `RequestSlots`),
//! [`ClientAddr`](mesh_core::ext::ClientAddr) (there or on its own), [`PeerIdentity`];
//! [`ConnectionSni`] (with the details); (response extensions): [`ResponseFlags`]. Writes:
//! [`StreamInfo`] into the request's
//! [`RequestSlots::info`](mesh_core::ext::RequestSlots::info).
//!
//! # Differences from Envoy
//!
//! - [`Completed::request_bytes`] and [`Completed::response_bytes`] (Istio's
//!   `istio_request_bytes` and `istio_response_bytes`) are the body bytes plus the size of
//!   the head as HTTP/1.1 writes it (`name: value\r\n` per header and the request or status
//!   line; the response's trailers too), whatever the protocol (Envoy's
//!   `wireBytesReceived`/`wireBytesSent` count the bytes on the connection, after HPACK and
//!   TLS). With the details, [`Completed::request_body_bytes`] and
//!   [`Completed::response_body_bytes`] are the bodies alone (Envoy's `%BYTES_RECEIVED%`
//!   and `%BYTES_SENT%`, its spans' `request_size` and `response_size`). A request body of
//!   known length counts its `content-length`; one of unknown length (chunked, an HTTP/2
//!   stream without `content-length`) what `mesh-transport`'s connector read of it
//!   ([`StreamInfo::request_body_bytes`]: the longest attempt's count), so far when the
//!   response ends first; 0 over an inner service that does not count it.
//! - The upstream service time ([`Completed::upstream_service_time`]) is the answer's
//!   `x-envoy-upstream-service-time` when the listener wrote one (mesh-proxy's listeners,
//!   `mesh_core::hcm`), as Envoy's access log reads the header; otherwise (in-process, or
//!   `proxyHeaders.envoyDebugHeaders` off, where Envoy logs `-`) it runs from the moment
//!   the last attempt's request is handed to its connection.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use mesh_core::body::{OnBodyEnd, ReplyBody};
use mesh_core::ext::{
    ConnectionSni, PeerIdentity, ResponseCodeDetails, SlotsView, StreamInfo, TransportFailure,
    UpstreamReset, slots_mut,
};
use mesh_core::flags::ResponseFlags;
use mesh_core::stream_info::Recorded;
use pin_project::pin_project;

use crate::trace::{TRACESTATE, TraceContext, X_REQUEST_ID};

/// `x-forwarded-for` (Envoy's `%REQ(X-FORWARDED-FOR)%`).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto` (the scheme of a server span, OpenTelemetry's `url.scheme`).
pub use mesh_core::hcm::X_FORWARDED_PROTO;

/// Receives the completed requests of a [`RecordLayer`] it is interested in.
///
/// Called on the worker that served the request, when the response has ended: keep it short
/// (an atomic add, a push onto a channel), never block.
pub trait Sink: Send + Sync + 'static {
    /// One request is complete.
    fn complete(&self, done: &Completed<'_>);

    /// What this sink reads of a request with trace context `trace`, asked when the request
    /// arrives (as short as [`Sink::complete`]: an atomic load). A sink answering
    /// [`Interest::Nothing`] is not called for the request; the request's [`Details`] are
    /// captured only when a sink answers [`Interest::Details`]. Default: the details.
    fn interest(&self, trace: Option<&TraceContext>) -> Interest {
        let _ = trace;
        Interest::Details
    }

    /// How often this sink wants a gRPC call that is still open reported to
    /// [`Sink::progress`], asked when a gRPC call the sink is interested in arrives (as
    /// short as [`Sink::interest`]). `None` (the default), or zero: never; the call is
    /// reported once, complete. The layer reports at the shortest interval its sinks ask
    /// for, to those that asked.
    fn progress_interval(&self) -> Option<Duration> {
        None
    }

    /// A gRPC call still open, about every [`Sink::progress_interval`] (Istio's stats
    /// filter reports a gRPC stream's messages every `tcp_reporting_duration`, once it
    /// knows the peer), on a layer
    /// [`with_progress_reports`](RecordLayer::with_progress_reports): the record so far,
    /// [`End::Open`], its `end` the time of the report. Its message counts are the call's
    /// so far; [`Completed::messages_reported`] what the reports before carried (the last
    /// report, [`Sink::complete`], carries them too): a sink adding counts adds the
    /// difference. A call whose counts did not change since the last report is not reported.
    fn progress(&self, open: &Completed<'_>) {
        let _ = open;
    }
}

/// What a [`Sink`] reads of a request ([`Sink::interest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Interest {
    /// Nothing: the sink is not called for the request.
    Nothing,
    /// Its outcome: every field of [`Completed`] but [`Completed::details`] (`None`).
    Outcome,
    /// Its outcome and its [`Details`].
    Details,
    /// Its outcome and its [`Details`] with the request's headers: as they arrived
    /// ([`Details::headers`]) and as the connector sent them
    /// ([`Recorded::request_headers`]): an access log filter reading `request.headers`, a
    /// span's header tags.
    Headers,
}

/// A request's head as it arrived (before any rewrite), its connection, and the sizes and
/// time of its response's head: what an access log line or a span reads beyond the outcome,
/// captured only for a sink interested in it ([`Interest::Details`]).
#[derive(Debug, Clone)]
pub struct Details {
    /// The request's method.
    pub method: Method,
    /// The request's URI as it arrived.
    pub uri: Uri,
    /// `x-request-id` (as the trace layer left it).
    pub request_id: Option<HeaderValue>,
    /// `user-agent`.
    pub user_agent: Option<HeaderValue>,
    /// `x-forwarded-for` (the first field of that name), as it arrived.
    pub x_forwarded_for: Option<HeaderValue>,
    /// `x-forwarded-proto` (the first field of that name), as it arrived.
    pub x_forwarded_proto: Option<HeaderValue>,
    /// `tracestate`, as the trace layer left it (the caller's, carried with its
    /// `traceparent`; removed when the context came in another format).
    pub tracestate: Option<HeaderValue>,
    /// The server name the downstream asked for in its TLS handshake
    /// ([`ConnectionSni`], Envoy's `%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<Arc<str>>,
    /// Whether the downstream connection is TLS (see [`RecordLayer::with_downstream_tls`]).
    pub downstream_tls: bool,
    /// The size of the request's head as HTTP/1.1 writes it (request line, fields, blank
    /// line): [`Completed::request_bytes`] less this is its body.
    pub request_head_bytes: u64,
    /// The size of the response's head as HTTP/1.1 writes it, and of its trailers:
    /// [`Completed::response_bytes`] less this is its body.
    pub response_head_bytes: u64,
    /// When the response's head came back (`None`: no response).
    pub first_byte: Option<Instant>,
    /// Why the connection to the upstream failed, when the connector knew more than
    /// "connection failure" (a TLS handshake's failure: [`TransportFailure`], read from a
    /// `UF` answer): Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub upstream_transport_failure_reason: Option<&'static str>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` as the layer that answered named it
    /// ([`ResponseCodeDetails`], or an [`UpstreamReset`]'s), for the mesh's own replies
    /// whose response flags do not tell it (`None`: the flags do).
    pub response_code_details: Option<Arc<str>>,
    /// The answer's `x-envoy-upstream-service-time`, in milliseconds, as the listener wrote
    /// it (`mesh_core::hcm`): what Envoy's `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%` logs.
    pub upstream_service_time_header: Option<u64>,
    /// The port of the request's [`DestinationAddr`](mesh_core::ext::DestinationAddr), when
    /// the listener set one (an inbound listener: the workload port the peer meant, whose
    /// inbound cluster is `inbound|<port>||`).
    pub destination_port: Option<u16>,
    /// The request's headers as they arrived, when a sink answered [`Interest::Headers`]
    /// (those sent upstream are in [`Recorded::request_headers`]).
    pub headers: Option<HeaderMap>,
}

/// How a request's exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The response body was read to its end.
    Complete,
    /// The inner service or the response body failed.
    Error,
    /// The response (or the future waiting for it) was dropped before its end: the client
    /// went away (Envoy's `DC`).
    Dropped,
    /// Not ended: a gRPC call still open, reported to [`Sink::progress`] (never to
    /// [`Sink::complete`]).
    Open,
}

/// What happened to one request, handed to every [`Sink`] when it is complete, and so far
/// to those asking for reports of an open gRPC call ([`Sink::progress`]) (a read-only
/// view; it lives for the call).
#[derive(Debug)]
pub struct Completed<'a> {
    /// When the request reached the layer.
    pub start: Instant,
    /// When the response ended (or failed, or was dropped).
    pub end: Instant,
    /// How it ended.
    pub how: End,
    /// The request's method, URI, `x-request-id`, `user-agent` and time to first byte;
    /// `None` when no sink answered [`Interest::Details`] for the request.
    pub details: Option<&'a Details>,
    /// The request's protocol version.
    pub version: Version,
    /// `Host` (or the URI's authority, HTTP/2's `:authority`), as it arrived.
    pub authority: Option<&'a str>,
    /// Whether the request is gRPC (`content-type: application/grpc…`), Istio's
    /// `request_protocol="grpc"`.
    pub grpc: bool,
    /// The request's bytes: its head and its body (see the module docs).
    pub request_bytes: u64,
    /// The response's status (`None`: no response).
    pub status: Option<StatusCode>,
    /// The flags the mesh recorded on the response (empty: none), plus `DC` when the client
    /// went away before the end.
    pub flags: ResponseFlags,
    /// `grpc-status`, from the response's trailers or headers, for a gRPC request (content
    /// type `application/grpc…`; `None` for the others, as Istio's empty label).
    pub grpc_status: Option<u32>,
    /// The response's bytes: its head and the body bytes sent.
    pub response_bytes: u64,
    /// A gRPC request's messages the connector sent upstream (the most of any attempt; 0
    /// for another request, or one the mesh answered itself): Istio's
    /// `istio_request_messages_total`.
    pub request_messages: u64,
    /// A gRPC request's response messages sent to the client (0 for another request):
    /// Istio's `istio_response_messages_total`.
    pub response_messages: u64,
    /// The request and response messages that earlier [`Sink::progress`] reports of the
    /// call carried to this sink (`(0, 0)` for a call never reported open, and for a sink
    /// that asked for no report): what a sink adding counts added already.
    pub messages_reported: (u64, u64),
    /// The hop's trace context.
    pub trace: Option<&'a TraceContext>,
    /// What the layers inside recorded: the route, the last attempt's upstream, attempts.
    pub info: &'a Recorded,
    /// The downstream peer's address.
    pub client_addr: Option<SocketAddr>,
    /// The downstream peer's SPIFFE identity (inbound, over mTLS).
    pub peer: Option<&'a PeerIdentity>,
}

impl Completed<'_> {
    /// The request's body bytes, without its head (Envoy's `%BYTES_RECEIVED%`, the spans'
    /// `request_size`); `None` without the [`Details`], which know the head's size. A body
    /// of unknown length counts what the connector read of it (see the
    /// [module docs](self)).
    pub fn request_body_bytes(&self) -> Option<u64> {
        self.details
            .map(|d| self.request_bytes.saturating_sub(d.request_head_bytes))
    }

    /// The response's body bytes sent, without its head and trailers (Envoy's
    /// `%BYTES_SENT%`, the spans' `response_size`); `None` without the [`Details`].
    pub fn response_body_bytes(&self) -> Option<u64> {
        self.details
            .map(|d| self.response_bytes.saturating_sub(d.response_head_bytes))
    }

    /// The upstream service time (Envoy's `x-envoy-upstream-service-time`): the answer's
    /// header when the listener wrote one (mesh-proxy's listeners: what the client got, as
    /// Envoy's access log reads it), else from the moment the last attempt's request was
    /// handed to its upstream connection (as the connector recorded it,
    /// [`Recorded::connection`]) to the response's head; `None` without the [`Details`],
    /// or without the header, a connection or a response. Whether the response is the
    /// upstream's (not a local reply of the mesh made after the request went out) is the
    /// caller's to tell.
    pub fn upstream_service_time(&self) -> Option<Duration> {
        let d = self.details?;
        if let Some(ms) = d.upstream_service_time_header {
            return Some(Duration::from_millis(ms));
        }
        let sent = self.info.connection.as_ref()?.sent;
        d.first_byte?.checked_duration_since(sent)
    }
}

/// Watches requests and hands their [`Completed`] record to sinks (see the
/// [module docs](self)).
#[derive(Clone, Default)]
pub struct RecordLayer {
    sinks: Arc<[Arc<dyn Sink>]>,
    /// Whether a request came over TLS ([`RecordLayer::with_downstream_tls`]).
    tls: Option<DownstreamTlsProbe>,
    /// Whether open gRPC calls are reported, and from when
    /// ([`RecordLayer::with_progress_reports`]).
    progress: Option<ReportsFrom>,
}

/// From when a [`RecordLayer`] reports an open gRPC call
/// ([`RecordLayer::with_progress_reports`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportsFrom {
    /// From its arrival: the side whose peer is known then (Istio's server side reads the
    /// client's metadata from the request), the inbound side.
    Arrival,
    /// From its response's head: the side that knows its peer once it answered (Istio's
    /// client side reads it from the response; before, a retry could still pick another
    /// endpoint), the outbound side.
    Head,
}

/// Tells whether a request's extensions say its downstream connection is TLS (the listener's
/// own extension, which this crate does not know: `mesh-transport`'s `PeerTls`).
pub type DownstreamTlsProbe = fn(&http::Extensions) -> bool;

/// The service of a [`RecordLayer`].
#[derive(Clone, Debug)]
pub struct Record<S> {
    inner: S,
    layer: RecordLayer,
}

/// What is known of a request until its response ends.
struct Pending {
    sinks: Arc<[Arc<dyn Sink>]>,
    /// The sinks interested in the request (bit `i`: `sinks[i]`; a sink past the 64th is
    /// always called).
    called: u64,
    info: StreamInfo,
    start: Instant,
    details: Option<Box<Details>>,
    version: Version,
    authority: Option<HeaderValue>,
    grpc: bool,
    request_bytes: u64,
    status: Option<StatusCode>,
    flags: ResponseFlags,
    grpc_status: Option<u32>,
    response_bytes: u64,
    /// A gRPC response's messages so far (`None`: not counted, the request is not a gRPC
    /// call with a framed body: the connector's definition).
    response_messages: Option<mesh_core::grpc::MessageCounter>,
    /// The reports of a gRPC call still open, when a sink asked for them.
    progress: Reports,
    trace: Option<TraceContext>,
    client_addr: Option<SocketAddr>,
    peer: Option<PeerIdentity>,
}

/// Whether a call is reported while it is open ([`Sink::progress`]).
enum Reports {
    /// No sink asked for it.
    Off,
    /// The sinks asked for it (bits as [`Pending::called`]), at the shortest interval of
    /// theirs, from when; no timer yet (the call has not had to wait).
    Asked(u64, Duration, ReportsFrom),
    /// The timer is set.
    Armed(Box<Progress>),
}

/// A gRPC call's reports while it is open ([`Sink::progress`]).
struct Progress {
    /// The sinks that asked for them (bits as [`Pending::called`]).
    sinks: u64,
    every: Duration,
    /// The next report's timer (tokio's: a runtime with its time driver).
    tick: Pin<Box<tokio::time::Sleep>>,
    /// The request and response messages the reports so far carried.
    reported: (u64, u64),
    from: ReportsFrom,
}

/// Reports its request when dropped, if nothing reported it before.
struct Guard(Option<Box<Pending>>);

/// The future of a [`Record`] service.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    guard: Guard,
}

/// The response body of a [`Record`] service: the inner body, counted.
#[pin_project]
pub struct RecordBody<B> {
    #[pin]
    inner: B,
    guard: Guard,
}

// === impl RecordLayer ===

impl RecordLayer {
    /// A layer handing every completed request to `sinks`, in order. No sink: the layer only
    /// passes requests on.
    pub fn new(sinks: Vec<Arc<dyn Sink>>) -> Self {
        RecordLayer {
            sinks: sinks.into(),
            tls: None,
            progress: None,
        }
    }

    /// Reports gRPC calls while they are open, `from` their arrival or their response's
    /// head, to the sinks that ask for it ([`Sink::progress_interval`], [`Sink::progress`]):
    /// Istio's metrics add a long stream's messages every reporting interval, as Istio's
    /// sidecars do; without it (the default) a call is reported when it ends only. The
    /// reports run on tokio timers: the layer must then serve on a runtime with its time
    /// driver (`enable_time`, `enable_all`, `#[tokio::main]`), and a call's response on
    /// that runtime. A call's timer is set the first time it has to wait for its response
    /// (from its arrival) or its response's body, or when its response's second message
    /// comes: a call answered at once sets none. A report is made when the call's future or
    /// body is polled after the timer fired: a client that does not read (its connection's
    /// flow control full) delays it.
    pub fn with_progress_reports(mut self, from: ReportsFrom) -> Self {
        self.progress = Some(from);
        self
    }

    /// Tells [`Details::downstream_tls`] with `probe` (a listener that terminates TLS marks
    /// its requests with an extension of its own: the proxy's inbound listener passes
    /// `|ext| ext.get::<mesh_transport::tls::PeerTls>().is_some()`). Asked only for the
    /// requests whose details are captured. Without it (and as well as it), a request
    /// carrying a [`ConnectionSni`] or a [`PeerIdentity`] came over TLS.
    pub fn with_downstream_tls(mut self, probe: DownstreamTlsProbe) -> Self {
        self.tls = Some(probe);
        self
    }

    /// Whether the layer has any sink (records anything).
    pub fn is_recording(&self) -> bool {
        !self.sinks.is_empty()
    }
}

impl fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordLayer")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl<S> tower_layer::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl Record ===

mesh_core::accessors!(Record);

impl<S, B, R> tower_service::Service<Request<B>> for Record<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    B: Body,
    R: Body,
{
    type Response = Response<RecordBody<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // each sink's interest, from the request's trace context
        let view = SlotsView::new(req.extensions());
        let (mut called, mut details, mut headers) = (0u64, false, false);
        for (i, sink) in self.layer.sinks.iter().enumerate() {
            let interest = sink.interest(view.trace_context());
            if interest != Interest::Nothing || i >= 64 {
                called |= 1u64.checked_shl(i as u32).unwrap_or(0);
                details |= interest >= Interest::Details;
                headers |= interest == Interest::Headers;
            }
        }
        if called == 0 && self.layer.sinks.len() <= 64 {
            return ResponseFuture {
                inner: self.inner.call(req),
                guard: Guard(None),
            };
        }
        let start = Instant::now();
        // the connector records the upstream connection for the sinks that read the details
        let info = match (details, headers) {
            (_, true) => StreamInfo::with_request_headers(),
            (true, false) => StreamInfo::with_connection(),
            (false, false) => StreamInfo::new(),
        };
        let sinks = self.layer.sinks.clone();
        let tls = details.then(|| self.layer.downstream_tls(req.extensions(), &view));
        let mut pending = Pending::new(sinks, called, tls, info.clone(), start, &req, &view);
        if let Some(from) = self.layer.progress
            && pending.response_messages.is_some()
        {
            pending.ask_progress(from);
        }
        if headers && let Some(d) = pending.details.as_mut() {
            d.headers = Some(req.headers().clone());
        }
        slots_mut(req.extensions_mut()).info = Some(info);
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Guard(Some(Box::new(pending))),
        }
    }
}

impl RecordLayer {
    /// Whether the request came over TLS: the probe's answer, or the TLS facts the listener
    /// wrote.
    fn downstream_tls(&self, ext: &http::Extensions, view: &SlotsView<'_>) -> bool {
        self.tls.is_some_and(|probe| probe(ext))
            || view.own::<ConnectionSni>().is_some()
            || view.own::<PeerIdentity>().is_some()
    }
}

// === impl Pending ===

/// The size of a header block as HTTP/1.1 writes it (`name: value\r\n` each).
fn head_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum()
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Pending {
    /// `tls`: `Some` (whether the downstream connection is TLS) when a sink reads the
    /// details.
    fn new<B: Body>(
        sinks: Arc<[Arc<dyn Sink>]>,
        called: u64,
        tls: Option<bool>,
        info: StreamInfo,
        start: Instant,
        req: &Request<B>,
        view: &SlotsView<'_>,
    ) -> Pending {
        let details = tls.is_some();
        // one pass over the headers (no hashed look-up per name): those the sinks read (the
        // first of each, as `HeaderMap::get`), and the head's size
        let (mut host, mut request_id, mut user_agent) = (None, None, None);
        let (mut xff, mut xfp, mut tracestate) = (None, None, None);
        let (mut grpc, mut framed, mut head) = (false, false, 0u64);
        for (name, value) in req.headers() {
            head += (name.as_str().len() + value.len() + 4) as u64;
            if *name == http::header::HOST && host.is_none() {
                host = Some(value);
            } else if *name == http::header::CONTENT_TYPE {
                grpc = value.as_bytes().starts_with(b"application/grpc");
                // a body framed as gRPC's (not gRPC-Web's base64 text): its messages count
                framed = mesh_core::grpc::is_framed_content_type(value.as_bytes());
            } else if details {
                let seen = if *name == http::header::USER_AGENT {
                    &mut user_agent
                } else if *name == X_REQUEST_ID {
                    &mut request_id
                } else if *name == X_FORWARDED_FOR {
                    &mut xff
                } else if *name == X_FORWARDED_PROTO {
                    &mut xfp
                } else if *name == TRACESTATE {
                    &mut tracestate
                } else {
                    continue;
                };
                seen.get_or_insert(value);
            }
        }
        let authority = host.cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // request line: method, target, version, separators
        let line = req.method().as_str().len()
            + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
            + 12;
        let body = req.body().size_hint().exact().unwrap_or(0);
        let head = line as u64 + head + 2;
        Pending {
            sinks,
            called,
            info,
            start,
            details: tls.map(|tls| {
                Box::new(Details {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    request_id: request_id.cloned(),
                    user_agent: user_agent.cloned(),
                    x_forwarded_for: xff.cloned(),
                    x_forwarded_proto: xfp.cloned(),
                    tracestate: tracestate.cloned(),
                    requested_server_name: view.own::<ConnectionSni>().map(|s| s.0.clone()),
                    downstream_tls: tls,
                    request_head_bytes: head,
                    response_head_bytes: 0,
                    first_byte: None,
                    upstream_transport_failure_reason: None,
                    response_code_details: None,
                    upstream_service_time_header: None,
                    destination_port: view
                        .own::<mesh_core::ext::DestinationAddr>()
                        .map(|d| d.0.port()),
                    headers: None,
                })
            }),
            version: req.version(),
            authority,
            grpc,
            request_bytes: head + body,
            status: None,
            flags: ResponseFlags::empty(),
            grpc_status: None,
            response_bytes: 0,
            response_messages: (framed && req.method() == http::Method::POST)
                .then(mesh_core::grpc::MessageCounter::default),
            progress: Reports::Off,
            trace: view.trace_context().copied(),
            client_addr: view.client_addr().map(|c| c.0),
            peer: view.own::<PeerIdentity>().cloned(),
        }
    }

    /// Notes the response's head.
    fn on_head(&mut self, res: &http::response::Parts) {
        self.status = Some(res.status);
        self.flags = res
            .extensions
            .get::<ResponseFlags>()
            .copied()
            .unwrap_or_default();
        // a gRPC request's answer only (Istio's grpc_response_status is empty otherwise): no
        // look-up of `grpc-status` in every HTTP answer
        self.grpc_status = if self.grpc {
            grpc_status(&res.headers)
        } else {
            None
        };
        // status line: "HTTP/1.1 200 OK\r\n", and the blank line
        self.response_bytes = 17 + 2 + head_bytes(&res.headers);
        if let Some(d) = self.details.as_mut() {
            d.response_head_bytes = self.response_bytes;
            d.upstream_service_time_header = res
                .headers
                .get(&mesh_core::hcm::UPSTREAM_SERVICE_TIME)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            if self
                .flags
                .contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE)
            {
                d.upstream_transport_failure_reason =
                    res.extensions.get::<TransportFailure>().map(|t| t.0);
            }
            // the mesh's own replies (an upstream's answer has no flags, or the retry
            // layer's alone; a route's direct response none either, but its details)
            d.response_code_details = res
                .extensions
                .get::<ResponseCodeDetails>()
                .map(|d| d.0.clone());
            if d.response_code_details.is_none() && !self.flags.is_empty() {
                d.response_code_details = res
                    .extensions
                    .get::<UpstreamReset>()
                    .map(|r| Arc::from(r.details()));
            }
        }
    }

    /// Notes the reports of a gRPC call while it is open, if a sink interested in it asks
    /// for them ([`Sink::progress_interval`]).
    fn ask_progress(&mut self, from: ReportsFrom) {
        let (mut sinks, mut every) = (0u64, Duration::MAX);
        for (i, sink) in self.sinks.iter().enumerate().take(64) {
            if self.called & (1 << i) != 0
                && let Some(d) = sink.progress_interval().filter(|d| !d.is_zero())
            {
                sinks |= 1 << i;
                every = every.min(d);
            }
        }
        if sinks != 0 {
            self.progress = Reports::Asked(sinks, every, from);
        }
    }

    /// Before the response future or body is polled (`waits` false): reports the call to
    /// the sinks that asked, if its timer is due (and sets it again), and registers `cx`
    /// with the timer. When the call has to wait, or goes on (`waits`): sets the timer if it
    /// is not (its first report due an interval after the call's start) and does the same.
    #[inline]
    fn poll_progress(&mut self, cx: &mut Context<'_>, waits: bool) {
        match (&self.progress, waits) {
            (Reports::Armed(_), false) | (Reports::Asked(..), true) => self.poll_progress_timer(cx),
            _ => {}
        }
    }

    /// Whether the reports, not armed yet, begin before the response's head (an armed
    /// timer is polled before the response future is).
    #[inline]
    fn asked_from_arrival(&self) -> bool {
        matches!(&self.progress, Reports::Asked(_, _, ReportsFrom::Arrival))
    }

    fn poll_progress_timer(&mut self, cx: &mut Context<'_>) {
        let mut p = match std::mem::replace(&mut self.progress, Reports::Off) {
            Reports::Off => return,
            Reports::Armed(p) => p,
            Reports::Asked(sinks, every, from) => {
                let first = later(tokio::time::Instant::from_std(self.start), every);
                Box::new(Progress {
                    sinks,
                    every,
                    tick: Box::pin(tokio::time::sleep_until(first)),
                    reported: (0, 0),
                    from,
                })
            }
        };
        while p.tick.as_mut().poll(cx).is_ready() {
            let next = later(tokio::time::Instant::now(), p.every);
            p.tick.as_mut().reset(next);
            // reported from the head: the endpoint that answers is known (a retry cannot
            // move what was reported), as Istio's client side reports once its peer is
            if p.from == ReportsFrom::Head && self.status.is_none() {
                continue;
            }
            let sinks = p.sinks;
            let reported = p.reported;
            p.reported = self.info.read(|recorded| {
                let open = self.completed(End::Open, Instant::now(), recorded, reported);
                let counts = (open.request_messages, open.response_messages);
                if counts != reported {
                    for (i, sink) in self.sinks.iter().enumerate().take(64) {
                        if sinks & (1 << i) != 0 {
                            sink.progress(&open);
                        }
                    }
                }
                counts
            });
        }
        self.progress = Reports::Armed(p);
    }

    /// Whether the response's messages so far make it a stream (more than one).
    #[inline]
    fn streams(&self) -> bool {
        self.response_messages.is_some_and(|m| m.count() > 1)
    }

    fn finish(self: Box<Self>, how: End, end: Instant) {
        // every attempt is over: the record is read in place, not copied
        self.info.read(|recorded| self.report(how, end, recorded));
    }

    fn report(&self, how: End, end: Instant, recorded: &Recorded) {
        let (asked, reported) = match &self.progress {
            Reports::Armed(p) => (p.sinks, p.reported),
            _ => (0, (0, 0)),
        };
        let mut done = self.completed(how, end, recorded, (0, 0));
        for (i, sink) in self.sinks.iter().enumerate() {
            if i >= 64 || self.called & (1 << i) != 0 {
                // what the reports carried, to the sinks that had them
                done.messages_reported = match i < 64 && asked & (1 << i) != 0 {
                    true => reported,
                    false => (0, 0),
                };
                sink.complete(&done);
            }
        }
    }

    /// The record of the request as it ended (`how`), or so far ([`End::Open`]).
    fn completed<'a>(
        &'a self,
        how: End,
        end: Instant,
        recorded: &'a Recorded,
        messages_reported: (u64, u64),
    ) -> Completed<'a> {
        let flags = match how {
            End::Dropped => self.flags | ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            _ => self.flags,
        };
        Completed {
            start: self.start,
            end,
            how,
            details: self.details.as_deref(),
            version: self.version,
            authority: self.authority.as_ref().and_then(|v| v.to_str().ok()),
            grpc: self.grpc,
            // a body of unknown length: what the connector counted (0 for the others,
            // whose length is in the head)
            request_bytes: self.request_bytes + self.info.request_body_bytes(),
            status: self.status,
            flags,
            grpc_status: self.grpc_status,
            response_bytes: self.response_bytes,
            request_messages: self.info.request_messages(),
            response_messages: self.response_messages.map_or(0, |m| m.count()),
            messages_reported,
            trace: self.trace.as_ref(),
            info: recorded,
            client_addr: self.client_addr,
            peer: self.peer.as_ref(),
        }
    }
}

/// `at` + `every`, or a time a century on when that is past tokio's clock (a sink's
/// interval of `Duration::MAX`).
fn later(at: tokio::time::Instant, every: Duration) -> tokio::time::Instant {
    at.checked_add(every)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
}

// === impl Guard ===

impl Guard {
    fn finish(&mut self, how: End) {
        if let Some(p) = self.0.take() {
            p.finish(how, Instant::now());
        }
    }

    /// Finishes with an end read just before (the head's, for a response without a body:
    /// one clock read for both).
    fn finish_at(&mut self, how: End, end: Instant) {
        if let Some(p) = self.0.take() {
            p.finish(how, end);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish(End::Dropped);
    }
}

// === impl ResponseFuture ===

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: Body,
{
    type Output = Result<Response<RecordBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(p) = this.guard.0.as_mut() {
            p.poll_progress(cx, false);
        }
        let res = match this.inner.poll(cx) {
            Poll::Ready(res) => res,
            Poll::Pending => {
                // reported from its arrival: the call waits for its answer
                if let Some(p) = this.guard.0.as_mut()
                    && p.asked_from_arrival()
                {
                    p.poll_progress(cx, true);
                }
                return Poll::Pending;
            }
        };
        let mut guard = Guard(this.guard.0.take());
        Poll::Ready(match res {
            Ok(res) => {
                let (parts, inner) = res.into_parts();
                let mut end = None;
                if let Some(p) = guard.0.as_mut() {
                    p.on_head(&parts);
                    let ended = inner.is_end_stream();
                    // the clock is read for the time to first byte when a sink reads it, and
                    // for a response without a body, whose end is its head's (one read)
                    if ended || p.details.is_some() {
                        let now = Instant::now();
                        if let Some(d) = p.details.as_mut() {
                            d.first_byte = Some(now);
                        }
                        end = ended.then_some(now);
                    }
                }
                let mut body = RecordBody { inner, guard };
                if let Some(now) = end {
                    body.guard.finish_at(End::Complete, now);
                }
                Ok(Response::from_parts(parts, body))
            }
            Err(e) => {
                guard.finish(End::Error);
                Err(e)
            }
        })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === impl RecordBody ===

impl<B> RecordBody<B> {
    /// A body reporting nothing (the layer had no sink).
    pub fn new(inner: B) -> Self {
        RecordBody {
            inner,
            guard: Guard(None),
        }
    }
}

impl<B: Body> Body for RecordBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(p) = this.guard.0.as_mut() {
            p.poll_progress(cx, false);
        }
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(p) = this.guard.0.as_mut() {
                    p.poll_progress(cx, true);
                }
                return Poll::Pending;
            }
        };
        if let Some(p) = this.guard.0.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        p.response_bytes += bytes::Buf::remaining(d) as u64;
                        if let Some(m) = p.response_messages.as_mut() {
                            // (`Bytes`, this proxy's data, is one slice; a buffer of more than
                            // 16 is counted in its first 16)
                            let mut slices = [std::io::IoSlice::new(&[]); 16];
                            let n = bytes::Buf::chunks_vectored(d, &mut slices);
                            for s in &slices[..n] {
                                m.feed(s);
                            }
                            // a stream, which may never have to wait (a fast upstream, a
                            // client that reads slowly): its reports' timer
                            if p.streams() {
                                p.poll_progress(cx, true);
                            }
                        }
                        // a server stops polling a body that says it has ended
                        if this.inner.is_end_stream() {
                            this.guard.finish(End::Complete);
                        }
                    } else if let Some(t) = f.trailers_ref() {
                        if p.grpc
                            && let Some(s) = grpc_status(t)
                        {
                            p.grpc_status = Some(s);
                        }
                        let trailers = head_bytes(t);
                        p.response_bytes += trailers;
                        if let Some(d) = p.details.as_mut() {
                            d.response_head_bytes += trailers;
                        }
                        // trailers are the last frame: hyper's HTTP/2 server and tonic's
                        // client stop polling after them (the exchange is complete, not a
                        // client gone: no `DC`)
                        this.guard.finish(End::Complete);
                    }
                }
                Some(Err(_)) => this.guard.finish(End::Error),
                None => this.guard.finish(End::Complete),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: ReplyBody> ReplyBody for RecordBody<B> {
    fn local(bytes: bytes::Bytes) -> Self {
        RecordBody::new(B::local(bytes))
    }

    fn on_end(&mut self, end: Arc<dyn OnBodyEnd>) {
        self.inner.on_end(end);
    }
}

impl<B: Default> Default for RecordBody<B> {
    fn default() -> Self {
        RecordBody::new(B::default())
    }
}

impl<B> fmt::Debug for RecordBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBody").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

//! The connector: the innermost service of every stack, which sends a request to the endpoint
//! the balancer chose, over a per-thread pool of upstream connections.
//!
//! **When to use**: as the innermost service of a stack built by a
//! [`StackFactory`](crate::StackFactory) (take it from
//! [`WorkerContext::connector`](crate::WorkerContext::connector)), or alone as a pooled
//! HTTP/1.1 and HTTP/2 (prior knowledge) client in any tokio program.
//!
//! **Accepts** any `http::Request<B>` whose body converts into a [`RequestBody`] (hyper's
//! `Incoming`, a `RequestBody`), of any method and HTTP version, as the stack left it. It
//! does not check the request (the engine's listener did: one `Host`, no userinfo,
//! framing); it forwards what it is given, except:
//!
//! - the **authority** is the target's when the URI has one (absolute-form, HTTP/2's
//!   `:authority`; userinfo dropped), else the `Host` field (RFC 9112 §3.2.2: a received
//!   `Host` never overrides the target). No authority at all is fine for an HTTP/1.1
//!   upstream (an HTTP/1.0 client's request gets an empty `Host`, as RFC 9112 §3.2 asks of
//!   HTTP/1.1), not for an HTTP/2 one (`400 DPE`, as is a `Host` that is no authority);
//! - **upgrades** are forwarded only when the engine marked the request with an
//!   [`crate::upgrade::Upgrade`] extension (WebSocket: `Upgrade` and
//!   `Connection: upgrade` kept, the upstream's `101` answered with a
//!   [`crate::upgrade::TunnelHandle`] extension; see [`crate::upgrade`]);
//!   otherwise `Upgrade` is hop-by-hop (removed) and an upstream's `101` is a protocol error
//!   (`502 UPE`). `CONNECT` opens a connection to the endpoint and answers `200` with the
//!   tunnel, whether marked or not;
//! - the **endpoint** may be any address but, on an engine worker, one of the proxy's own
//!   listening addresses ([`OwnAddrs`](crate::OwnAddrs)): that would be a loop (`508 UF`).
//!
//! **Reads**: the balancer's `SelectedUpstream` from the request extensions (the endpoint's
//! `addr` and `http2`, its cluster's connection settings), else a standalone
//! [`SelectedEndpoint`] (with default settings).
//! **Writes**: on failures it makes, a local reply with [`ResponseFlags`] in the extensions
//! and the `x-mesh-response-flags` header:
//!
//! | failure | status | flag |
//! |---|---|---|
//! | no `SelectedEndpoint` (nor `SelectedUpstream`) extension | 503 | `UH` |
//! | the endpoint is one of the proxy's own listeners (engine workers; see [`loops`](crate::loops)) | 508 | `UF` |
//! | connection refused, connect timeout (`connectTimeout`) | 503 | `UF` |
//! | upstream closed or reset the connection before the response head | 503 | `UC` |
//! | HTTP/2 stream reset by the upstream before the response head | 503 | `UR` |
//! | the same with `REFUSED_STREAM` (the upstream did not process it) | 503 | `UR`, and a [`RefusedStream`] extension |
//! | malformed response head | 502 | `UPE` |
//! | no authority (neither in the target nor a valid `Host`) for an HTTP/2 upstream | 400 | `DPE` |
//! | a WebSocket upgrade (or RFC 8441 extended `CONNECT`) to an HTTP/2 endpoint | 403 (`upgrade_failed`) | none |
//! | the client's request body broke (or did not match its `Content-Length`) before the response head | 400 | `DPE` |
//!
//! A failure after the response head (the upstream resets mid-body) cannot change the status
//! any more: the body ends with an error and the engine resets the downstream stream (HTTP/2)
//! or closes the connection (HTTP/1.1), as Envoy does.
//!
//! **Rewrites**: hop-by-hop headers are removed both ways ([`strip_hop_by_hop`]); other
//! headers pass untouched. To an HTTP/1.1 upstream the request goes in origin-form
//! (`GET /path?q HTTP/1.1`) with `Host` set to the authority above; to an HTTP/2 upstream
//! the authority becomes `:authority` and `Host` is removed. On an engine worker the
//! listener's `Via` entry (`Via: 1.1 mesh-…`, the protocol the request was received in) is
//! added after any the request had (RFC 9110 §7.6.3): to an HTTP/1.1 upstream written
//! straight into the head, with no change to the request's map. Bodies stream both ways,
//! never buffered.
//!
//! **HTTP/1.1** is the engine's own client (`mesh-transport/src/h1client/`): the request's
//! task writes the request and reads the response on the pooled connection itself, with no
//! connection task, channel or hand-off in between. **HTTP/2** is hyper's client.
//!
//! **Pooling**: each thread has its own pool (a thread-local), so an engine worker's
//! requests never touch another thread's state and nothing is locked: per endpoint a LIFO
//! stack of idle HTTP/1.1 connections and the multiplexed HTTP/2 connections (one, unless
//! streams fill it: see `maxConcurrentStreams` below). An HTTP/1.1
//! connection goes back to the stack as soon as its response has been read (for a small
//! response, before the response is even returned). An idle connection the upstream closed
//! is noticed when it is next taken (no system call unless its socket became readable) and
//! by a sweep every few seconds on current-thread runtimes (the engine's workers); a request
//! without a body that meets a pooled connection closed under it (no response byte
//! received) is sent again on another connection, then on a new one.
//!
//! **Connection settings** (DestinationRule `connectionPool`, carried by the balancer's
//! `UpstreamCluster`): `maxRequestsPerConnection` closes an HTTP/1.1 connection after that
//! many requests (1: no keep-alive), and takes an HTTP/2 connection out of the pool after
//! that many streams (it closes once they are done); `idleTimeout` (default one hour,
//! Envoy's) closes an HTTP/1.1 connection idle that long, and takes out of the pool an
//! HTTP/2 connection on which no request began for that long, checked by the sweep (so to
//! within its two seconds); `tcp.maxConnectionDuration` ends a connection's use (HTTP/1.1:
//! closed after its request; HTTP/2: out of the pool, its streams finish) once it is that
//! old, checked by the sweep too; `tcp.connectTimeout` replaces the connector's connect
//! timeout for the cluster, `tcp.tcpKeepalive` turns TCP keep-alive on for its new
//! connections, and `http.http2KeepAlive` has its HTTP/2 connections PING the upstream
//! while streams are open (closed when a PING goes unanswered for the timeout).
//! `http.maxConcurrentStreams` (Envoy's `http2_protocol_options.max_concurrent_streams`)
//! bounds the streams open at once on one HTTP/2 connection, as does the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (the lower of the two): a request takes a stream on
//! the first connection with room, else opens another connection, which takes requests once
//! the server's first `SETTINGS` has arrived (so that its limit holds from the first
//! stream; requests arriving while it connects wait for it, up to its limit). A stream
//! counts until its response body ends or is dropped.
//!
//! **Connection limit** (HTTP/2): the cluster's `tcp.maxConnections` (its `ClusterLimits`,
//! shared by all workers) counts the HTTP/2 connections open, as Envoy's `max_connections`
//! does (`intro/arch_overview/upstream/circuit_breaking`): a new connection needs a permit,
//! given back when it closes, except the first of an endpoint in a worker's pool that
//! holds none (Envoy gives a host the balancer picked at least one connection; it counts
//! all the same, so the count may pass the limit by one per endpoint and worker). A
//! request that finds every connection at its stream limit and may not open one waits as
//! a *pending* request, counted among the cluster's pending requests and bounded by
//! `http1MaxPendingRequests` (Envoy applies `max_pending_requests` to HTTP/2 once
//! `max_concurrent_streams` is set): past it, Envoy's overflow answer (`503`,
//! `x-envoy-overloaded: true`, flag `UO`, counted in the cluster's overflows). A pending
//! request is woken when a stream of the cluster ends or a connection permit is given
//! back; dropped (the route timeout), it leaves the pending requests. The common case (a
//! stream free on a pooled connection, or no `maxConnections`) takes no permit and reads no
//! counter. A server that allows no stream at all (`SETTINGS_MAX_CONCURRENT_STREAMS` 0)
//! gets its connections taken out of the pool; a request moved twice for that answers
//! `503 UR` rather than opening connections forever.
//!
//! **Differences from Envoy**: no per-endpoint connection limit (circuit breaking lives in
//! `mesh-resilience`); the HTTP/1.1 connections `maxConnections` counts are those in use
//! (see the breaker); an HTTP/2 request waiting for a connection still being made takes a
//! stream on it (Envoy counts those requests as pending too); a pending HTTP/2 request
//! waits for a stream on its worker's connections to its endpoint, or a permit for a new
//! one; a stream that ends wakes the waiters at its endpoint of every cluster (two subsets
//! share an endpoint's connections). HTTP/2 uses one connection per endpoint and thread
//! until its streams fill it, and its idle time counts from the last request begun, not
//! from the end of the last stream (streams in flight finish on it).
//!
//! ```
//! use mesh_transport::Connector;
//! use std::time::Duration;
//!
//! let connector = Connector::new(Duration::from_secs(1));
//! assert_eq!(connector.connect_timeout(), Duration::from_secs(1));
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::MeshBody;
use mesh_core::ResponseFlags;
use mesh_core::ext::{
    RefusedStream, ReturnHead, SelectedEndpoint, TransportFailure, UpstreamPool, UpstreamReset,
    local_reply, take_return_head,
};
use mesh_core::limits::ClusterLimits;
use tokio::net::TcpStream;

use crate::defer::DeferredTcp;
use crate::h1client::{self, FailKind, H1Body, H1Conn, Io};
use crate::h2streams::{H2Streams, SettingsReader, StreamSlot};
use crate::headers::{UPGRADE, hop_by_hop_present, strip_hop_by_hop, strip_present};
use crate::loops::{Loop, loop_reply};
use crate::pool::{DEFAULT_MAX_IDLE_PER_ENDPOINT, Pool, PoolKey, SWEEP_EVERY};
use crate::reqbody::RequestBody;
use crate::tls::{ClientTls, UpstreamTls};
use crate::upgrade::{Tunnel, TunnelHandle, Upgrade};

/// How many times a request's HTTP/2 stream moves to another connection because the one it
/// was given, once connected, turned out to be over the server's limit.
const MAX_STREAM_MOVES: u32 = 2;

/// The response type of every stack: the upstream's body or a local one.
pub type EngineResponse = Response<MeshBody<UpstreamBody>>;

/// The body of an upstream's response: an HTTP/1.1 body read by the engine's own client
/// (whole, or streaming from the connection), or hyper's HTTP/2 body.
pub struct UpstreamBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    H1(Box<H1Body>),
    /// An HTTP/2 body, with the stream it holds on a pooled connection until it ends.
    H2(Incoming, Option<StreamSlot>),
}

/// The error of an [`UpstreamBody`]: the upstream reset, closed or broke framing mid-body.
pub type UpstreamBodyError = Box<dyn std::error::Error + Send + Sync>;

/// How many sweeps an idle HTTP/1.1 connection is kept: its cluster's
/// `connectionPool.http.idleTimeout`, by default one hour (Envoy's default upstream
/// `idle_timeout`), rounded up to whole sweeps.
pub(crate) fn idle_sweeps(pool: &UpstreamPool) -> u32 {
    let every = SWEEP_EVERY.as_millis();
    let timeout = pool.idle_timeout.map_or(3_600_000, |d| d.as_millis());
    u32::try_from(timeout.div_ceil(every).max(1)).unwrap_or(u32::MAX)
}

/// How many sweeps a connection is used from when it was made: its cluster's
/// `connectionPool.tcp.maxConnectionDuration` rounded up to whole sweeps, else no limit.
pub(crate) fn max_age_sweeps(pool: &UpstreamPool) -> u32 {
    pool.max_connection_duration.map_or(u32::MAX, |d| {
        let sweeps = d.as_millis().div_ceil(SWEEP_EVERY.as_millis()).max(1);
        u32::try_from(sweeps).unwrap_or(u32::MAX)
    })
}

/// The innermost service: forwards a request to its [`SelectedEndpoint`] over the
/// connections of its [`Pool`]. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Connector {
    connect_timeout: Duration,
    /// The cluster's TCP and HTTP/2 keep-alive (set per request on the request's copy).
    keepalive: Option<mesh_core::ext::TcpKeepalive>,
    h2_keepalive: Option<mesh_core::ext::Http2Keepalive>,
    max_idle_per_endpoint: usize,
    pool: Pool,
    tls: Option<Arc<dyn UpstreamTls>>,
}

/// The future of [`Connector::call`](tower_service::Service::call).
///
/// One allocation per forwarded request (hyper's send future is not nameable), and one for
/// a local reply (boxed too: a response held inline would make this future, and each
/// layer's future around it, 200 bytes larger, moved on every request).
pub struct ConnectorFuture(Inner);

enum Inner {
    Ready(Box<Option<EngineResponse>>),
    Forward(Pin<Box<dyn Future<Output = EngineResponse> + Send>>),
}

/// Why sending failed, for the local reply.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendFailure {
    /// The upstream is one of the proxy's own listeners.
    Loop,
    /// No connection: with the TLS handshake's failure when that is why (Envoy's transport
    /// failure reason, [`transport_failure_reason`]).
    Connect(Option<&'static str>),
    Closed,
    Reset,
    /// The upstream reset the stream with `REFUSED_STREAM`: it did not process the request.
    Refused,
    Protocol,
    BadRequest,
    BadBody,
    /// An upgrade the endpoint's protocol cannot carry.
    UpgradeFailed,
}

// === impl Connector ===

impl Connector {
    /// A connector with a pool of its own, giving up on a TCP connect (and, for HTTP/2,
    /// the handshake) after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Connector::with_pool(connect_timeout, Pool::new())
    }

    /// A connector on `pool` (shared with its other connectors).
    pub fn with_pool(connect_timeout: Duration, pool: Pool) -> Self {
        Connector {
            connect_timeout,
            keepalive: None,
            h2_keepalive: None,
            max_idle_per_endpoint: DEFAULT_MAX_IDLE_PER_ENDPOINT,
            pool,
            tls: None,
        }
    }

    /// Originates TLS where `tls` says so (see [`tls`](crate::tls)).
    pub fn with_tls(mut self, tls: Arc<dyn UpstreamTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The pool this connector takes its connections from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Sets how many idle HTTP/1.1 connections per endpoint the pool keeps (default 1024).
    pub fn with_max_idle_per_endpoint(mut self, max: usize) -> Self {
        self.max_idle_per_endpoint = max;
        self
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Idle HTTP/1.1 connections this connector's pool holds for `addr` (for tests and
    /// stats).
    pub fn idle_connections(&self, addr: SocketAddr) -> usize {
        self.pool.idle_connections(addr)
    }
}

impl<B> tower_service::Service<Request<B>> for Connector
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::RequestBodyError>,
{
    type Response = EngineResponse;
    type Error = Infallible;
    type Future = ConnectorFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ConnectorFuture {
        // one look-up: the balancer's endpoint and its cluster's connection settings, and
        // the protocol (the breaker above counted by the same decision)
        let picked = match mesh_core::ext::selected_upstream(req.extensions()) {
            Some(u) => Some((
                u.endpoint(),
                u.cluster().pool,
                u.cluster().limits.as_ref(),
                u.http2_for(req.version()),
            )),
            None => req
                .extensions()
                .get::<SelectedEndpoint>()
                .map(|e| (e, UpstreamPool::default(), None, e.http2)),
        };
        let Some((ep, pool, limits, h2)) = picked else {
            return ConnectorFuture(Inner::Ready(Box::new(Some(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream",
            )))));
        };
        let addr = ep.addr;
        // the cluster's limits, for HTTP/2 only when `maxConnections` bounds its connections
        let limits = match h2 {
            true => limits.filter(|l| l.limits_connections()).cloned(),
            false => None,
        };
        let tls = match &self.tls {
            Some(t) => {
                let host = req.uri().host().or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                });
                t.client_tls(req.extensions(), host, ep)
            }
            None => None,
        };
        let mut this = self.clone();
        if let Some(t) = pool.connect_timeout {
            this.connect_timeout = t; // the DestinationRule's `tcp.connectTimeout`
        }
        this.keepalive = pool.tcp_keepalive;
        this.h2_keepalive = pool.http2_keepalive;
        // a body of unknown length: its bytes counted into the request's record (Istio's
        // `istio_request_bytes`, Envoy's `%BYTES_RECEIVED%`; other lengths are in the head);
        // a gRPC call's messages (`istio_request_messages_total`; the record layer's
        // definition: a `POST` with a framed gRPC or gRPC-Web body)
        let (parts, body) = req.into_parts();
        let mut body = RequestBody::new(body);
        let post = parts.method == http::Method::POST;
        // (a bodyless request, or a known length other than a POST's, is not looked at:
        // most requests pay two checks)
        if !http_body::Body::is_end_stream(&body)
            && (post || http_body::Body::size_hint(&body).exact().is_none())
            && let Some(info) = mesh_core::ext::stream_info(&parts.extensions)
        {
            let grpc = post && mesh_core::grpc::has_framed_content_type(&parts.headers);
            body = body.counted(Some(info), grpc);
        }
        let req = http::Request::from_parts(parts, body);
        // Two separate futures (each boxed at its own, smaller size) rather than one holding
        // both paths: the box is written once per request.
        ConnectorFuture(Inner::Forward(if h2 {
            Box::pin(this.forward_h2(addr, pool, limits, tls, req))
        } else {
            Box::pin(this.forward_h1(addr, pool, tls, req))
        }))
    }
}

/// A request whose head goes back ([`ReturnHead`]) whatever ends its exchange: with the
/// answer, or when the exchange is dropped before one (an attempt the retry layer's per-try
/// timeout ended), so that the retry layer can send it again. The head goes back as it was
/// sent: the HTTP/1.1 rewrites (`Host` from the target, origin-form target, hop-by-hop
/// fields removed, an upgrade's `Connection: upgrade`) make the same request when it is
/// prepared again, and the version goes back to the client's, which the next attempt's `Via`
/// entry names.
///
/// (It borrows the request, which stays where the forwarding future keeps it: a request
/// moved into the guard would take a second place in every request's future.)
struct PutBack<'a> {
    req: &'a mut Request<RequestBody>,
    /// Where the head goes (`None`: the request did not ask).
    back: Option<ReturnHead>,
    received: Version,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            let (mut head, ()) = Request::new(()).into_parts();
            head.method = std::mem::take(self.req.method_mut());
            head.uri = std::mem::take(self.req.uri_mut());
            head.headers = std::mem::take(self.req.headers_mut());
            head.extensions = std::mem::take(self.req.extensions_mut());
            head.version = self.received;
            back.put(head);
        }
    }
}

/// Telemetry's hook: records the connection an attempt's request is handed to (its local
/// address, noted once when the connection was made; whether it is TLS; the time now) in the
/// request's [`StreamInfo`](mesh_core::stream_info::StreamInfo), when the record asks for
/// it (an access log or a span reads it: `%UPSTREAM_LOCAL_ADDRESS%`, the upstream service
/// time). Otherwise one look-up of the request's slots and no clock read.
#[inline]
fn note_connection(req: &Request<RequestBody>, local: Option<SocketAddr>, tls: bool) {
    if let Some(info) = mesh_core::ext::slots(req.extensions()).and_then(|s| s.info.as_ref())
        && info.wants_connection()
    {
        note(info, req.headers(), local, tls);
    }
}

/// [`note_connection`] into a record already found; and the headers the request is sent
/// with, when the record asks for them (a span's header tags, an access log filter).
fn note(
    info: &mesh_core::stream_info::StreamInfo,
    headers: &http::HeaderMap,
    local: Option<SocketAddr>,
    tls: bool,
) {
    info.set_connection(mesh_core::stream_info::UpstreamConnection {
        local,
        tls,
        sent: std::time::Instant::now(),
    });
    if info.wants_request_headers() {
        info.set_request_headers(headers);
    }
}

/// The request's place for its head ([`ReturnHead`], taken out) and its record when the
/// record asks for the upstream connection ([`note_connection`]): one look-up of the
/// request's slots for both.
#[inline]
fn take_back_and_record(
    ext: &mut http::Extensions,
) -> (
    Option<ReturnHead>,
    Option<mesh_core::stream_info::StreamInfo>,
) {
    match ext.get_mut::<mesh_core::ext::RequestSlots>() {
        Some(s) => (
            s.return_head.take(),
            s.info.as_ref().filter(|i| i.wants_connection()).cloned(),
        ),
        None => (None, None),
    }
}

/// The TLS handshake to an upstream, over a connected socket.
async fn handshake(
    tls: &ClientTls,
    io: DeferredTcp,
) -> std::io::Result<tokio_rustls::client::TlsStream<DeferredTcp>> {
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), io)
        .await
}

/// Why a connection to an upstream failed, as Envoy 1.40's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`
/// names it: a refused connection `delayed connect error: Connection refused`; a failed TLS
/// handshake BoringSSL's error for the same failure (`TLS_error:|<packed code>:SSL
/// routines:OPENSSL_internal:<REASON>:TLS_error_end`; the code is BoringSSL's `ERR_PACK` of the
/// SSL library and the reason, an alert's reason being 1000 + the alert's number), so that
/// what operators search for in Envoy's logs (`CERTIFICATE_VERIFY_FAILED`,
/// `WRONG_VERSION_NUMBER`, `TLSV1_ALERT_UNKNOWN_CA`) is what they find here. `None`: another
/// failure (a timed-out TCP connection).
pub(crate) fn transport_failure_reason(e: &std::io::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as A, Error as E, InvalidMessage};
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        return Some("delayed connect error: Connection refused");
    }
    let tls = e.get_ref()?.downcast_ref::<E>()?;
    Some(match tls {
        // the server's certificate (chain, validity, name, SPIFFE identity, subjectAltNames)
        // not accepted
        E::InvalidCertificate(_) => {
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
        }
        // not TLS at all (a plaintext server answering the ClientHello)
        E::InvalidMessage(InvalidMessage::InvalidContentType) => {
            "TLS_error:|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end"
        }
        E::AlertReceived(A::HandshakeFailure) => {
            "TLS_error:|268436496:SSL routines:OPENSSL_internal:SSLV3_ALERT_HANDSHAKE_FAILURE:TLS_error_end"
        }
        E::AlertReceived(A::BadCertificate) => {
            "TLS_error:|268436498:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE:TLS_error_end"
        }
        E::AlertReceived(A::CertificateExpired) => {
            "TLS_error:|268436501:SSL routines:OPENSSL_internal:SSLV3_ALERT_CERTIFICATE_EXPIRED:TLS_error_end"
        }
        E::AlertReceived(A::CertificateUnknown) => {
            "TLS_error:|268436502:SSL routines:OPENSSL_internal:SSLV3_ALERT_CERTIFICATE_UNKNOWN:TLS_error_end"
        }
        E::AlertReceived(A::UnknownCA) => {
            "TLS_error:|268436504:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA:TLS_error_end"
        }
        E::AlertReceived(A::AccessDenied) => {
            "TLS_error:|268436505:SSL routines:OPENSSL_internal:TLSV1_ALERT_ACCESS_DENIED:TLS_error_end"
        }
        E::AlertReceived(A::CertificateRequired) => {
            "TLS_error:|268436572:SSL routines:OPENSSL_internal:TLSV1_CERTIFICATE_REQUIRED:TLS_error_end"
        }
        E::AlertReceived(A::NoApplicationProtocol) | E::NoApplicationProtocol => {
            "TLS_error:|268436576:SSL routines:OPENSSL_internal:TLSV1_ALERT_NO_APPLICATION_PROTOCOL:TLS_error_end"
        }
        // no BoringSSL name to borrow: said plainly
        _ => "TLS_error:|TLS handshake failed:TLS_error_end",
    })
}

/// The upstream's response as the stack's: hop-by-hop headers removed, body wrapped.
/// A stream on a pooled HTTP/2 connection is counted open until the body ends.
fn into_engine_response(res: Response<Incoming>, slot: Option<StreamSlot>) -> EngineResponse {
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        MeshBody::inner(UpstreamBody(BodyKind::H2(body, slot))),
    )
}

impl Connector {
    // `forward_h1`, `forward_h2` and `h1client::exchange` are functions returning an `async
    // move` block rather than `async fn`s: rustc keeps an `async fn`'s arguments in its
    // future twice, as arguments and as the locals they become (rust-lang/rust#62958).
    // forward_h1's future: 1,664 -> 976 bytes, the box every request writes
    // (`forwarding_futures_stay_small`).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn forward_h1(
        self,
        addr: SocketAddr,
        pool: UpstreamPool,
        tls: Option<ClientTls>,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = EngineResponse> + Send {
        async move {
            // (taken out: the head put back must not hold its own place)
            let (back, record) = take_back_and_record(req.extensions_mut());
            // here rather than in `call`, which is inlined into every layer above it
            if req.method() == Method::CONNECT {
                // (boxed: the copy's state stays out of every request's future)
                if let Some(back) = back {
                    // the tunnel takes the request: a copy of the head
                    return Box::pin(self.forward_copied(addr, pool, None, tls, req, false, back))
                        .await;
                }
                return self.connect_method(addr, false, pool, tls, req).await;
            }
            // the protocol the request was received in, for its `Via` entry
            let received = req.version();
            let upgrade = prepare_h1(&mut req);
            // An empty body is not sent at all, and lets the request be sent again. (The head
            // stays in `req`, borrowed by each attempt: no move of the request's parts.)
            let mut body = (!http_body::Body::is_end_stream(req.body()))
                .then(|| std::mem::replace(req.body_mut(), RequestBody::empty()));
            // from here on, whatever ends the exchange (an answer, a failure, a drop) puts
            // the head back when the request asked
            let held = PutBack {
                req: &mut req,
                back,
                received,
            };
            let key = PoolKey {
                addr,
                tls: tls.as_ref().map_or(0, |t| t.key),
            };
            loop {
                let pooled = self.pool.pop_h1(&key);
                let reused = pooled.is_some();
                let mut conn = match pooled {
                    Some(c) => c,
                    // boxed: keeps the connect state out of every request's future
                    None => match Box::pin(self.connect_h1(addr, tls.as_ref())).await {
                        Ok(mut c) => {
                            // counted in the pool gauges of the cluster that opened it
                            c.gauge = crate::pool::gauge_for(held.req.extensions());
                            c
                        }
                        Err(f) => return f.reply(),
                    },
                };
                conn.configure(pool);
                if let Some(info) = &record {
                    note(info, held.req.headers(), conn.local, tls.is_some());
                }
                let retry_possible = reused && body.is_none();
                let exchange = h1client::exchange(
                    conn,
                    &*held.req,
                    received,
                    body.take(),
                    h1client::Release {
                        pool: self.pool.clone(),
                        key,
                        max_idle: self.max_idle_per_endpoint,
                    },
                    upgrade,
                );
                let res = match exchange.await {
                    Ok(res) => res,
                    // the pooled connection was closed under us before any answer: again
                    Err(f) if retry_possible && f.retryable => continue,
                    Err(f) => match f.kind {
                        FailKind::Closed => SendFailure::Closed.reply(),
                        FailKind::Protocol(e) => {
                            log_malformed_head(addr, e);
                            SendFailure::Protocol.reply()
                        }
                        FailKind::Downstream => SendFailure::BadBody.reply(),
                    },
                };
                // (`held` goes with the return: the head is back before the answer is seen)
                return res;
            }
        }
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
        tls: Option<&ClientTls>,
    ) -> Result<Box<H1Conn>, SendFailure> {
        self.refuse_own(addr)?;
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            self.set_keepalive(&stream);
            // once per connection, for telemetry (`note_connection`)
            let local = stream.local_addr().ok();
            Ok::<_, std::io::Error>((
                match tls {
                    None => Io::Tcp(DeferredTcp::new(stream)),
                    Some(t) => Io::Tls(Box::new(handshake(t, DeferredTcp::new(stream)).await?)),
                },
                local,
            ))
        };
        // the handshake counts against the connect timeout, as Envoy's does
        let (io, local) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendFailure::Connect(None))?
            .map_err(|e| SendFailure::Connect(transport_failure_reason(&e)))?;
        let mut conn = H1Conn::with_io(io);
        conn.born = self.pool.epoch();
        conn.local = local;
        Ok(conn)
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn forward_h2(
        self,
        addr: SocketAddr,
        pool: UpstreamPool,
        limits: Option<Arc<ClusterLimits>>,
        tls: Option<ClientTls>,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = EngineResponse> + Send {
        async move {
            if let Some(back) = take_return_head(req.extensions_mut()) {
                // hyper takes the request: a copy of the head for the retry layer
                return Box::pin(self.forward_copied(addr, pool, limits, tls, req, true, back))
                    .await;
            }
            if req.method() == Method::CONNECT {
                return self.connect_method(addr, true, pool, tls, req).await;
            }
            let received = req.version();
            match prepare_h2(&mut req) {
                Ok(false) => {}
                Ok(true) => return SendFailure::UpgradeFailed.reply(),
                Err(()) => return SendFailure::BadRequest.reply(),
            }
            // after the hop-by-hop fields are gone: `Connection: via` cannot remove this one
            self.append_via(&mut req, received);
            let key = PoolKey {
                addr,
                tls: tls.as_ref().map_or(0, |t| t.key),
            };
            // the DestinationRule's `maxConcurrentStreams` (and the server's limit, which the
            // pool knows): a stream on a connection with room, else a new connection
            let max_streams = pool.max_concurrent_streams.unwrap_or(u32::MAX);
            let mut moves = 0;
            let (mut sender, slot) = loop {
                // `maxConnections` (Envoy's `max_connections` counts HTTP/2 connections too): no
                // stream, and no new connection allowed: a pending request until one is free
                let (conn, slot) =
                    match self
                        .pool
                        .checkout_h2(key, max_streams, pool, limits.as_deref())
                    {
                        Some(found) => found,
                        None => match limits.as_deref() {
                            // boxed: the wait's state stays out of every request's future
                            Some(l) => {
                                match Box::pin(self.pool.wait_h2(key, max_streams, pool, l)).await {
                                    Some(found) => found,
                                    None => return overflow_reply(),
                                }
                            }
                            None => return overflow_reply(), // without limits, never
                        },
                    };
                let connected = conn
                    .sender
                    .get_or_init(|| {
                        // counted in the pool gauges of the cluster that opened it
                        conn.streams
                            .set_gauge(crate::pool::gauge_for(req.extensions()));
                        Box::pin(self.connect_h2(addr, tls.as_ref(), conn.streams.clone()))
                    })
                    .await;
                match connected {
                    // a server allowing no stream at all (`SETTINGS_MAX_CONCURRENT_STREAMS` 0,
                    // out of the pool now): after two moves, the request ends as refused by a
                    // reset rather than opening connections forever
                    Ok(_) if moves == MAX_STREAM_MOVES && conn.streams.server_max() == 0 => {
                        return SendFailure::Reset.reply();
                    }
                    // moved twice already (connections filled by others meanwhile): it waits on
                    // this connection, which queues it, rather than opening connections forever
                    Ok(s) if moves == MAX_STREAM_MOVES => break (s.clone(), slot),
                    // a stream taken while the connection was made may be over the server's
                    // limit, known now: then it goes to another connection
                    Ok(s) => match slot.within_server_limit() {
                        Some(slot) => break (s.clone(), slot),
                        None => moves += 1,
                    },
                    Err(f) => {
                        // never connected: out of its cluster's pool gauges now (its reading
                        // side, which counts it out, never starts)
                        conn.streams.close_gauge();
                        return f.reply();
                    }
                }
            };
            note_connection(&req, slot.local_addr(), tls.is_some());
            match sender.try_send_request(req).await {
                Ok(res) => into_engine_response(res, Some(slot)),
                // a refused stream first: the connection may be closing too (a GOAWAY), but the
                // upstream said it did not process the request
                Err(e) if refused_stream(e.error()) => SendFailure::Refused.reply(),
                Err(e) if sender.is_closed() => SendFailure::from_h2(e.error()).reply(),
                Err(e) if e.error().is_parse() => SendFailure::Protocol.reply(),
                Err(_) => SendFailure::Reset.reply(),
            }
        }
    }

    /// Forwards a request that asked for its head back ([`ReturnHead`], taken out of it)
    /// where the forwarding consumes the head (HTTP/2, `CONNECT`): from a copy of the head
    /// taken first and put back at once, there when the answer comes or the exchange is
    /// dropped before one.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    async fn forward_copied(
        self,
        addr: SocketAddr,
        pool: UpstreamPool,
        limits: Option<Arc<ClusterLimits>>,
        tls: Option<ClientTls>,
        req: Request<RequestBody>,
        h2: bool,
        back: ReturnHead,
    ) -> EngineResponse {
        let (head, body) = req.into_parts();
        back.put(head.clone());
        let req = Request::from_parts(head, body);
        if req.method() == Method::CONNECT {
            self.connect_method(addr, h2, pool, tls, req).await
        } else if h2 {
            Box::pin(self.forward_h2(addr, pool, limits, tls, req)).await
        } else {
            Box::pin(self.forward_h1(addr, pool, tls, req)).await
        }
    }

    async fn connect_h2(
        &self,
        addr: SocketAddr,
        tls: Option<&ClientTls>,
        streams: Arc<H2Streams>,
    ) -> Result<http2::SendRequest<RequestBody>, SendFailure> {
        self.refuse_own(addr)?;
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            self.set_keepalive(&stream);
            // once per connection, for telemetry (`note_connection`)
            streams.set_local_addr(stream.local_addr().ok());
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            // the DestinationRule's `http2KeepAlive`: PINGs while streams are open
            if let Some(k) = self.h2_keepalive {
                builder.keep_alive_interval(k.interval);
                if let Some(t) = k.timeout {
                    builder.keep_alive_timeout(t);
                }
            }
            // the connection task runs on its own; only the sender is kept
            let sender = match tls {
                None => {
                    // the reading side records the server's SETTINGS_MAX_CONCURRENT_STREAMS
                    // (small frames written together go out with one `send`)
                    let io = SettingsReader::new(DeferredTcp::at_once(stream), streams.clone());
                    let (sender, conn) = builder
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(std::io::Error::other)?;
                    tokio::spawn(conn);
                    sender
                }
                Some(t) => {
                    let stream = handshake(t, DeferredTcp::at_once(stream)).await?;
                    let io = SettingsReader::new(stream, streams.clone());
                    let (sender, conn) = builder
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(std::io::Error::other)?;
                    tokio::spawn(conn);
                    sender
                }
            };
            // the server's preface: its stream limit is known before the first request
            streams.settled().await;
            Ok::<_, std::io::Error>(sender)
        };
        let sender = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendFailure::Connect(None))?
            .map_err(|e| SendFailure::Connect(transport_failure_reason(&e)))?;
        Ok(sender)
    }
}

impl Connector {
    /// Turns TCP keep-alive on for a new upstream connection when its cluster asks for it
    /// (`tcp.tcpKeepalive`).
    fn set_keepalive(&self, stream: &TcpStream) {
        apply_keepalive(stream, self.keepalive);
    }

    /// A `CONNECT` request (cold: one method comparison on every request): an RFC 8441
    /// WebSocket goes out as an HTTP/1.1 upgrade, anything else is a TCP tunnel.
    #[cold]
    #[inline(never)]
    fn connect_method(
        self,
        addr: SocketAddr,
        h2: bool,
        pool: UpstreamPool,
        tls: Option<ClientTls>,
        mut req: Request<RequestBody>,
    ) -> Pin<Box<dyn Future<Output = EngineResponse> + Send>> {
        if req.extensions().get::<Upgrade>() != Some(&Upgrade::ExtendedConnect) {
            return Box::pin(self.tunnel(addr, tls));
        }
        if h2 {
            return Box::pin(std::future::ready(SendFailure::UpgradeFailed.reply()));
        }
        // Envoy's `transformUpgradeRequestFromH2toH1`, and the key RFC 8441 clients omit
        *req.method_mut() = Method::GET;
        let h = req.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if !h.contains_key(header::SEC_WEBSOCKET_KEY) {
            h.insert(header::SEC_WEBSOCKET_KEY, crate::upgrade::websocket_key());
        }
        if !h.contains_key(header::SEC_WEBSOCKET_VERSION) {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        Box::pin(async move {
            let mut res = self.forward_h1(addr, pool, tls, req).await;
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                // RFC 8441 §5: the stream is the tunnel once the response is 2xx
                *res.status_mut() = StatusCode::OK;
                let h = res.headers_mut();
                for name in [
                    header::UPGRADE,
                    header::CONNECTION,
                    header::SEC_WEBSOCKET_ACCEPT,
                ] {
                    h.remove(name);
                }
            }
            res
        })
    }

    /// A terminated `CONNECT`: a new connection to the endpoint (with TLS when the cluster
    /// originates it), answered `200` with the tunnel as a [`TunnelHandle`] extension.
    async fn tunnel(self, addr: SocketAddr, tls: Option<ClientTls>) -> EngineResponse {
        let conn = match Box::pin(self.connect_h1(addr, tls.as_ref())).await {
            Ok(c) => c,
            Err(f) => return f.reply(),
        };
        let mut res = Response::new(MeshBody::inner(UpstreamBody::full(None)));
        res.extensions_mut().insert(TunnelHandle::new(Tunnel::new(
            (*conn).into_io(),
            Bytes::new(),
        )));
        res
    }

    /// `Err(Loop)` when `addr` is one of the proxy's own listeners (see [`OwnAddrs`]).
    ///
    /// [`OwnAddrs`]: crate::OwnAddrs
    fn refuse_own(&self, addr: SocketAddr) -> Result<(), SendFailure> {
        if self.pool.guard().is_some_and(|g| g.own.reaches(addr)) {
            Err(SendFailure::Loop)
        } else {
            Ok(())
        }
    }

    /// Appends this listener's `Via` value (for a request received as `received`) to a
    /// request (for an HTTP/2 upstream: hyper writes the head); nothing off an engine
    /// worker.
    fn append_via<B>(&self, req: &mut Request<B>, received: Version) {
        if let Some(g) = self.pool.guard() {
            req.headers_mut()
                .append(header::VIA, g.hop.via(received).clone());
        }
    }
}

/// Logs why an upstream's response head was refused (the request is answered `502 UPE`):
/// at `warn` at most once a second per process, the others at `debug`, so that a broken
/// upstream cannot flood the log.
#[cold]
#[inline(never)]
fn log_malformed_head(addr: SocketAddr, error: h1client::HeadError) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static NEXT_WARN: AtomicU64 = AtomicU64::new(0);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    let next = NEXT_WARN.load(Ordering::Relaxed);
    let warn = now >= next
        && NEXT_WARN
            .compare_exchange(next, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    if warn {
        tracing::warn!(upstream = %addr, %error, "502 UPE: malformed response head (warned at most once a second)");
    } else {
        tracing::debug!(upstream = %addr, %error, "502 UPE: malformed response head");
    }
}

/// The authority of a request's target (absolute-form, or HTTP/2's `:authority`) without
/// userinfo, if it has one: the authority the request names, whatever its `Host` says.
///
/// RFC 9112 §3.2.2: with an absolute-form target the received `Host` is ignored and a
/// proxy generates a new one from the target. (The engine has already made `Host` equal
/// to the target's authority; this keeps a standalone connector to the same rule.)
fn target_authority(uri: &Uri) -> Option<&str> {
    uri.authority()
        .map(|a| mesh_core::authority::strip_userinfo(a.as_str()))
}

/// Rewrites a request for an HTTP/1.1 upstream: `Host` from the target's authority when it
/// has one (HTTP/2's `:authority`, absolute-form), hop-by-hop headers removed, origin-form
/// target. Returns whether it is a WebSocket upgrade to forward (then `Upgrade` and
/// `Connection: upgrade` are kept).
fn prepare_h1<B>(req: &mut Request<B>) -> bool {
    let uri = req.uri();
    if uri.scheme().is_some() || uri.authority().is_some() {
        if let Some(a) = target_authority(uri)
            && req
                .headers()
                .get(header::HOST)
                .is_none_or(|h| h.as_bytes() != a.as_bytes())
            && let Ok(v) = HeaderValue::from_str(a)
        {
            req.headers_mut().insert(header::HOST, v);
        }
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    } else if req.version() == Version::HTTP_10 && !req.headers().contains_key(header::HOST) {
        // RFC 9112 §3.2: an HTTP/1.1 request always has Host, empty when there is no
        // authority (HTTP/1.1 clients without Host are refused by the listener).
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static(""));
    }
    let present = hop_by_hop_present(req.headers());
    let upgrade = present & UPGRADE != 0 && forwards_upgrade(req);
    strip_present(req.headers_mut(), present, upgrade);
    *req.version_mut() = Version::HTTP_11;
    if upgrade {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    upgrade
}

/// Whether a request with an `Upgrade` field is one the engine marked for forwarding.
#[cold]
fn forwards_upgrade<B>(req: &Request<B>) -> bool {
    matches!(
        req.extensions().get::<Upgrade>(),
        Some(Upgrade::WebSocket | Upgrade::ExtendedConnect)
    )
}

/// Rewrites a request for an HTTP/2 upstream: absolute target whose authority is the
/// target's (without userinfo), else the client's `Host`; `Host` removed, hop-by-hop
/// headers removed. `Ok(true)`: a marked WebSocket upgrade, which HTTP/2 cannot carry here.
fn prepare_h2<B>(req: &mut Request<B>) -> Result<bool, ()> {
    let present = hop_by_hop_present(req.headers());
    if present & UPGRADE != 0 && forwards_upgrade(req) {
        return Ok(true);
    }
    strip_present(req.headers_mut(), present, false);
    let host = req.headers_mut().remove(header::HOST);
    let authority = match (req.uri().authority(), host) {
        (Some(a), _) if !a.as_str().contains('@') => a.clone(),
        (Some(a), _) => Authority::try_from(target_authority(req.uri()).unwrap_or(a.as_str()))
            .map_err(|_| ())?,
        (None, Some(h)) => Authority::try_from(h.as_bytes()).map_err(|_| ())?,
        (None, None) => return Err(()),
    };
    *req.uri_mut() = mesh_core::uri::with_authority(req.uri(), authority).map_err(|_| ())?;
    *req.version_mut() = Version::HTTP_2;
    Ok(false)
}

/// Whether an HTTP/2 request failed because the upstream reset its stream with
/// `REFUSED_STREAM` (RFC 9113 §8.7: the request was not processed, safe to retry anywhere):
/// hyper's error carries h2's, which has the reason, in its source chain. Envoy tells this
/// reset apart as `RemoteRefusedStreamReset` (its `refused-stream` retry condition).
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

// === impl ConnectorFuture ===

impl Future for ConnectorFuture {
    type Output = Result<EngineResponse, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Ready(res) => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
            Inner::Forward(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

impl std::fmt::Debug for ConnectorFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorFuture")
    }
}

// === impl UpstreamBody ===

impl UpstreamBody {
    /// Wraps a hyper body (an HTTP/2 upstream's, or any `Incoming`).
    pub fn from_incoming(body: Incoming) -> Self {
        UpstreamBody(BodyKind::H2(body, None))
    }

    /// A complete body (`None`: empty).
    pub(crate) fn full(bytes: Option<Bytes>) -> Self {
        UpstreamBody(BodyKind::Full(bytes))
    }

    /// An HTTP/1.1 body still streaming from its connection.
    pub(crate) fn h1(body: H1Body) -> Self {
        UpstreamBody(BodyKind::H1(Box::new(body)))
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, UpstreamBodyError>>> {
        match &mut self.0 {
            BodyKind::Full(bytes) => {
                Poll::Ready(bytes.take().map(|b| Ok(http_body::Frame::data(b))))
            }
            BodyKind::H1(body) => Pin::new(&mut **body).poll_frame(cx).map_err(Into::into),
            BodyKind::H2(body, slot) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if frame.is_none() {
                    *slot = None; // the stream is over: room for another on its connection
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::H1(body) => body.is_end_stream(),
            BodyKind::H2(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            BodyKind::Full(bytes) => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyKind::H1(body) => body.size_hint(),
            BodyKind::H2(body, _) => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyKind::Full(b) => f
                .debug_tuple("Full")
                .field(&b.as_ref().map(Bytes::len))
                .finish(),
            BodyKind::H1(b) => b.fmt(f),
            BodyKind::H2(b, _) => b.fmt(f),
        }
    }
}

// === impl SendFailure ===

impl SendFailure {
    fn from_h2(e: &hyper::Error) -> Self {
        if e.is_parse() {
            SendFailure::Protocol
        } else {
            SendFailure::Closed
        }
    }

    fn reply(self) -> EngineResponse {
        match self {
            SendFailure::Loop => loop_reply(Loop::OwnAddress),
            SendFailure::Connect(reason) => {
                // Envoy 1.40's reply to a failed connection, TLS handshakes included (the
                // reason goes to the access log, not the body)
                let mut res: EngineResponse = UpstreamReset::RemoteConnectionFailure.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                    false,
                );
                if let Some(r) = reason {
                    res.extensions_mut().insert(TransportFailure(r));
                }
                res
            }
            // Envoy's replies to a reset before the response started (checked against
            // envoy 1.40: an upstream that closes, one that answers garbage)
            SendFailure::Closed => UpstreamReset::ConnectionTermination.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                false,
            ),
            SendFailure::Reset => UpstreamReset::RemoteReset.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_REMOTE_RESET,
                false,
            ),
            SendFailure::Refused => {
                let mut res: EngineResponse = UpstreamReset::RemoteRefusedStreamReset.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::UPSTREAM_REMOTE_RESET,
                    false,
                );
                res.extensions_mut().insert(RefusedStream);
                res
            }
            SendFailure::Protocol => UpstreamReset::ProtocolError.reply(
                StatusCode::BAD_GATEWAY,
                ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                false,
            ),
            SendFailure::BadBody => local_reply(
                StatusCode::BAD_REQUEST,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "request body error",
            ),
            SendFailure::BadRequest => local_reply(
                StatusCode::BAD_REQUEST,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "request has no authority",
            ),
            // Envoy's `upgrade_failed`: 403, no response flag
            SendFailure::UpgradeFailed => local_reply(
                StatusCode::FORBIDDEN,
                ResponseFlags::empty(),
                "upgrade_failed",
            ),
        }
    }
}

/// Envoy's overflow answer (as the circuit breaker's): `503`, `x-envoy-overloaded: true`,
/// flag `UO`, for an HTTP/2 request over `http1MaxPendingRequests` while it waits for a
/// stream.
#[cold]
fn overflow_reply() -> EngineResponse {
    let mut res: EngineResponse = UpstreamReset::Overflow.reply(
        StatusCode::SERVICE_UNAVAILABLE,
        ResponseFlags::UPSTREAM_OVERFLOW,
        false,
    );
    res.headers_mut().insert(
        mesh_core::hcm::ENVOY_OVERLOADED,
        HeaderValue::from_static("true"),
    );
    res
}

/// Turns TCP keep-alive on for `stream` when `keepalive` is set (a cluster's
/// `tcp.tcpKeepalive`); a part the system refuses is left at its default.
pub(crate) fn apply_keepalive(stream: &TcpStream, keepalive: Option<mesh_core::ext::TcpKeepalive>) {
    let Some(k) = keepalive else { return };
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(t);
    }
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    {
        if let Some(i) = k.interval {
            ka = ka.with_interval(i);
        }
        if let Some(p) = k.probes {
            ka = ka.with_retries(p);
        }
    }
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's transport failure reasons (BoringSSL's names) for rustls's handshake errors,
    /// as tokio-rustls reports them (an `InvalidData` I/O error wrapping the rustls error).
    #[test]
    fn transport_failures_are_named_as_envoy_names_them() {
        use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};
        let io = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let reason = |e: Error| transport_failure_reason(&io(e)).expect("a TLS error");
        for e in [
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Error::InvalidCertificate(CertificateError::Expired),
            Error::InvalidCertificate(CertificateError::NotValidForName),
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
        ] {
            assert!(
                reason(e).contains(
                    "|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
                )
            );
        }
        assert!(
            reason(Error::InvalidMessage(InvalidMessage::InvalidContentType))
                .contains("|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:")
        );
        for (alert, code, name) in [
            (
                AlertDescription::HandshakeFailure,
                1040,
                "SSLV3_ALERT_HANDSHAKE_FAILURE",
            ),
            (
                AlertDescription::BadCertificate,
                1042,
                "SSLV3_ALERT_BAD_CERTIFICATE",
            ),
            (
                AlertDescription::CertificateExpired,
                1045,
                "SSLV3_ALERT_CERTIFICATE_EXPIRED",
            ),
            (
                AlertDescription::CertificateUnknown,
                1046,
                "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
            ),
            (AlertDescription::UnknownCA, 1048, "TLSV1_ALERT_UNKNOWN_CA"),
            (
                AlertDescription::AccessDenied,
                1049,
                "TLSV1_ALERT_ACCESS_DENIED",
            ),
            (
                AlertDescription::CertificateRequired,
                1116,
                "TLSV1_CERTIFICATE_REQUIRED",
            ),
            (
                AlertDescription::NoApplicationProtocol,
                1120,
                "TLSV1_ALERT_NO_APPLICATION_PROTOCOL",
            ),
        ] {
            // BoringSSL's ERR_PACK(ERR_LIB_SSL = 16, reason): 16 << 24 | reason
            let packed = (16u32 << 24) | code;
            assert_eq!(
                reason(Error::AlertReceived(alert)),
                format!("TLS_error:|{packed}:SSL routines:OPENSSL_internal:{name}:TLS_error_end"),
            );
        }
        for e in [Error::DecryptError, Error::General("signing failed".into())] {
            assert_eq!(reason(e), "TLS_error:|TLS handshake failed:TLS_error_end");
        }
        // a refused connection as Envoy 1.40 says it; other errors (a timeout) unnamed
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            transport_failure_reason(&refused),
            Some("delayed connect error: Connection refused")
        );
        assert_eq!(
            transport_failure_reason(&std::io::Error::other("no route")),
            None
        );
    }

    /// Every request writes its forwarding future into a box: each argument kept once, not
    /// twice as an `async fn` keeps them (1,664 and 1,640 bytes before; see
    /// `Connector::forward_h1`).
    #[tokio::test]
    async fn forwarding_futures_stay_small() {
        let c = Connector::new(Duration::from_secs(5));
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h1 = c.clone().forward_h1(
            addr,
            UpstreamPool::default(),
            None,
            Request::new(RequestBody::empty()),
        );
        let h2 = c.clone().forward_h2(
            addr,
            UpstreamPool::default(),
            None,
            None,
            Request::new(RequestBody::empty()),
        );
        let (h1, h2) = (std::mem::size_of_val(&h1), std::mem::size_of_val(&h2));
        assert!(
            h1 <= 1100 && h2 <= 1100,
            "forward_h1 {h1} bytes, forward_h2 {h2}"
        );
    }

    #[test]
    fn h1_target_is_origin_form_with_host_from_authority() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://reviews:9080/a/b?c=d")
            .header("connection", "x-drop")
            .header("x-drop", "1")
            .header("x-keep", "2")
            .body(())
            .unwrap();
        prepare_h1(&mut req);
        assert_eq!(req.uri(), "/a/b?c=d");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "reviews:9080");
        assert_eq!(req.headers()["x-keep"], "2");
        assert!(req.headers().get("x-drop").is_none());
    }

    #[test]
    fn h1_origin_form_request_is_left_alone() {
        let mut req = Request::builder()
            .uri("/x")
            .header("host", "a.example")
            .body(())
            .unwrap();
        prepare_h1(&mut req);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()["host"], "a.example");
    }

    #[test]
    fn h2_target_takes_authority_from_host() {
        let mut req = Request::builder()
            .uri("/x?y")
            .header("host", "reviews:9080")
            .header("te", "trailers")
            .body(())
            .unwrap();
        prepare_h2(&mut req).unwrap();
        assert_eq!(req.uri(), "http://reviews:9080/x?y");
        assert!(req.headers().get("host").is_none());
        assert_eq!(req.headers()["te"], "trailers");
        assert_eq!(req.version(), Version::HTTP_2);
    }

    /// RFC 9112 §3.2.2: a proxy forwards a `Host` generated from an absolute target, not
    /// the one received (the engine has done so already; a standalone connector too).
    #[test]
    fn absolute_target_authority_wins_over_host() {
        let mut req = Request::builder()
            .uri("http://other:8081/x")
            .header("host", "web")
            .body(())
            .unwrap();
        prepare_h1(&mut req);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()["host"], "other:8081");
        assert_eq!(req.headers().get_all("host").iter().count(), 1);
        let mut req = Request::builder()
            .uri("http://user@other/x")
            .header("host", "web")
            .body(())
            .unwrap();
        prepare_h1(&mut req);
        assert_eq!(req.headers()["host"], "other", "userinfo is never a Host");
        for uri in ["http://other:8081/x", "http://u:p@other:8081/x"] {
            let mut req = Request::builder()
                .uri(uri)
                .header("host", "web")
                .body(())
                .unwrap();
            prepare_h2(&mut req).unwrap();
            assert_eq!(req.uri(), "http://other:8081/x", "{uri}");
            assert!(req.headers().get("host").is_none());
        }
    }

    /// `Upgrade` is kept (with `Connection: upgrade`) only on a request the engine marked;
    /// the other options of `Connection` still go.
    #[test]
    fn upgrade_is_kept_only_when_marked() {
        let build = || {
            Request::builder()
                .uri("/ws")
                .header("host", "chat")
                .header("connection", "Upgrade, x-private")
                .header("x-private", "1")
                .header("upgrade", "websocket")
                .body(())
                .unwrap()
        };
        let mut plain = build();
        assert!(!prepare_h1(&mut plain));
        assert!(plain.headers().get("upgrade").is_none());
        assert!(plain.headers().get("connection").is_none());
        let mut marked = build();
        marked.extensions_mut().insert(Upgrade::WebSocket);
        assert!(prepare_h1(&mut marked));
        assert_eq!(marked.headers()["upgrade"], "websocket");
        assert_eq!(marked.headers()["connection"], "upgrade");
        assert!(marked.headers().get("x-private").is_none());
        // HTTP/2 upstreams cannot take it
        let mut marked = build();
        marked.extensions_mut().insert(Upgrade::WebSocket);
        assert_eq!(prepare_h2(&mut marked), Ok(true));
        let mut plain = build();
        assert_eq!(prepare_h2(&mut plain), Ok(false));
        assert!(plain.headers().get("upgrade").is_none());
    }

    #[test]
    fn h2_target_without_any_authority_is_refused() {
        let mut req = Request::builder().uri("/x").body(()).unwrap();
        assert!(prepare_h2(&mut req).is_err());
    }
}

/// The DestinationRule's connection settings on real connections: HTTP/2
/// `maxRequestsPerConnection` and `idleTimeout`, and a cluster's `tcp.connectTimeout`.
#[cfg(test)]
mod settings_tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use mesh_core::ext::UpstreamCluster;
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    use super::*;

    /// An h2c upstream on port 0 answering 200; counts the connections it accepted.
    async fn h2_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn request(addr: SocketAddr, http2: bool, pool: UpstreamPool) -> Request<RequestBody> {
        let mut req = Request::builder()
            .uri("/")
            .header(header::HOST, "svc")
            .body(RequestBody::empty())
            .unwrap();
        req.extensions_mut()
            .insert(mesh_core::ext::SelectedUpstream::new(
                SelectedEndpoint::new(addr).with_http2(http2),
                UpstreamCluster {
                    name: "outbound|80||svc".into(),
                    health: Arc::new(mesh_core::health::HealthCell::detached()),
                    pool,
                    limits: None,
                    outlier: None,
                },
            ));
        req
    }

    async fn get(c: &Connector, addr: SocketAddr, http2: bool, pool: UpstreamPool) -> u16 {
        let res = c.clone().oneshot(request(addr, http2, pool)).await.unwrap();
        let status = res.status().as_u16();
        res.into_body().collect().await.unwrap();
        status
    }

    /// Envoy's `max_requests_per_connection` on HTTP/2: a connection carries that many
    /// streams, then the next request opens another.
    #[tokio::test]
    async fn h2_connection_is_replaced_after_max_requests_per_connection() {
        let (addr, accepted) = h2_upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        let two = UpstreamPool {
            max_requests_per_connection: Some(2),
            ..UpstreamPool::default()
        };
        for _ in 0..5 {
            assert_eq!(get(&c, addr, true, two).await, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "2 + 2 + 1 requests");
        let one = UpstreamPool {
            max_requests_per_connection: Some(1),
            ..UpstreamPool::default()
        };
        let c = Connector::new(Duration::from_secs(5));
        for _ in 0..2 {
            assert_eq!(get(&c, addr, true, one).await, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5, "one each");
    }

    /// Envoy's `idle_timeout` on HTTP/2: a connection no request began on for the idle
    /// timeout (counted in sweeps) leaves the pool; one in use stays.
    #[tokio::test]
    async fn h2_connection_idle_past_the_idle_timeout_is_replaced() {
        let (addr, accepted) = h2_upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        // two sweeps of two seconds
        let four = UpstreamPool {
            idle_timeout: Some(Duration::from_secs(4)),
            ..UpstreamPool::default()
        };
        assert_eq!(get(&c, addr, true, four).await, 200);
        assert_eq!(c.pool().sweep_now(), 1);
        assert_eq!(get(&c, addr, true, four).await, 200); // used again: idle from now
        assert_eq!(c.pool().sweep_now(), 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.pool().sweep_now(), 0, "two sweeps without a request");
        assert_eq!(get(&c, addr, true, four).await, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Envoy's `max_connection_duration` on HTTP/2: a connection that old takes no new
    /// request, however busy (counted in sweeps from when it was made).
    #[tokio::test]
    async fn h2_connection_is_replaced_after_max_connection_duration() {
        let (addr, accepted) = h2_upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        let four = UpstreamPool {
            max_connection_duration: Some(Duration::from_secs(4)),
            ..UpstreamPool::default()
        };
        assert_eq!(get(&c, addr, true, four).await, 200);
        assert_eq!(c.pool().sweep_now(), 1);
        assert_eq!(get(&c, addr, true, four).await, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.pool().sweep_now(), 0, "two sweeps old, though just used");
        assert_eq!(get(&c, addr, true, four).await, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// What an upstream that holds its answers saw: connections, and the most streams open
    /// at once on one connection.
    #[derive(Default)]
    struct StreamCounts {
        connections: AtomicUsize,
        most_on_one: AtomicUsize,
    }

    /// An h2c upstream on port 0 (advertising `server_max` streams, if set) that holds every
    /// answer until `release` has a permit for it; each request is announced on `started`.
    async fn holding_h2_upstream(
        server_max: Option<u32>,
    ) -> (
        SocketAddr,
        Arc<StreamCounts>,
        Arc<tokio::sync::Semaphore>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(StreamCounts::default());
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (started, started_rx) = tokio::sync::mpsc::unbounded_channel();
        let (c, r) = (counts.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::SeqCst);
                let open = Arc::new(AtomicUsize::new(0));
                let (c, r, started) = (c.clone(), r.clone(), started.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let (c, r, open, started) =
                            (c.clone(), r.clone(), open.clone(), started.clone());
                        async move {
                            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                            c.most_on_one.fetch_max(now, Ordering::SeqCst);
                            let _ = started.send(());
                            r.acquire().await.unwrap().forget();
                            open.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if let Some(m) = server_max {
                        b.max_concurrent_streams(m);
                    }
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (addr, counts, release, started_rx)
    }

    /// Sends `n` requests at once and waits until the upstream holds all of them; then
    /// releases them and checks every answer.
    async fn hold_n(
        c: &Connector,
        addr: SocketAddr,
        pool: UpstreamPool,
        n: usize,
        release: &tokio::sync::Semaphore,
        started: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let sent: Vec<_> = (0..n)
            .map(|_| tokio::spawn(get_owned(c.clone(), addr, pool)))
            .collect();
        for _ in 0..n {
            started.recv().await.unwrap();
        }
        release.add_permits(n);
        for s in sent {
            assert_eq!(s.await.unwrap(), 200);
        }
    }

    async fn get_owned(c: Connector, addr: SocketAddr, pool: UpstreamPool) -> u16 {
        get(&c, addr, true, pool).await
    }

    /// Envoy's `max_concurrent_streams` (Istio's `maxConcurrentStreams`): a connection never
    /// carries more than that many streams; when every one is at the limit another is
    /// opened, and a stream that ended makes room again.
    #[tokio::test]
    async fn h2_streams_per_connection_are_limited_by_max_concurrent_streams() {
        let (addr, counts, release, mut started) = holding_h2_upstream(None).await;
        let c = Connector::new(Duration::from_secs(5));
        let two = UpstreamPool {
            max_concurrent_streams: Some(2),
            ..UpstreamPool::default()
        };
        hold_n(&c, addr, two, 6, &release, &mut started).await;
        assert_eq!(
            counts.connections.load(Ordering::SeqCst),
            3,
            "6 streams, 2 each"
        );
        assert_eq!(counts.most_on_one.load(Ordering::SeqCst), 2);
        // the streams ended: the three connections take six more
        hold_n(&c, addr, two, 6, &release, &mut started).await;
        assert_eq!(counts.connections.load(Ordering::SeqCst), 3);
        assert_eq!(counts.most_on_one.load(Ordering::SeqCst), 2);
        // without the limit, one connection carries them all
        let c = Connector::new(Duration::from_secs(5));
        hold_n(&c, addr, UpstreamPool::default(), 6, &release, &mut started).await;
        assert_eq!(counts.connections.load(Ordering::SeqCst), 4);
        assert_eq!(counts.most_on_one.load(Ordering::SeqCst), 6);
    }

    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` is a connection's limit too (the lower
    /// of the two): over it, another connection is opened instead of the stream waiting.
    #[tokio::test]
    async fn h2_streams_per_connection_respect_the_server_s_limit() {
        let (addr, counts, release, mut started) = holding_h2_upstream(Some(2)).await;
        let c = Connector::new(Duration::from_secs(5));
        hold_n(&c, addr, UpstreamPool::default(), 5, &release, &mut started).await;
        assert_eq!(counts.connections.load(Ordering::SeqCst), 3, "2 + 2 + 1");
        assert_eq!(counts.most_on_one.load(Ordering::SeqCst), 2);
        // the cluster's limit, lower, wins
        let c = Connector::new(Duration::from_secs(5));
        let one = UpstreamPool {
            max_concurrent_streams: Some(1),
            ..UpstreamPool::default()
        };
        hold_n(&c, addr, one, 3, &release, &mut started).await;
        assert_eq!(counts.connections.load(Ordering::SeqCst), 6);
    }

    /// `request` to a cluster with `limits`.
    fn limited(
        addr: SocketAddr,
        pool: UpstreamPool,
        limits: &Arc<ClusterLimits>,
    ) -> Request<RequestBody> {
        let mut req = request(addr, true, pool);
        let picked = req
            .extensions_mut()
            .remove::<mesh_core::ext::SelectedUpstream>()
            .unwrap();
        let mut cluster = picked.cluster().clone();
        cluster.limits = Some(limits.clone());
        req.extensions_mut()
            .insert(mesh_core::ext::SelectedUpstream::new(
                picked.endpoint().clone(),
                cluster,
            ));
        req
    }

    /// Envoy's circuit breakers on HTTP/2 (`intro/arch_overview/upstream/circuit_breaking`):
    /// `max_connections` counts HTTP/2 connections, and with `max_concurrent_streams` set a
    /// request that finds every connection full waits as pending, bounded by
    /// `max_pending_requests`. `maxConcurrentStreams: 1`, `maxConnections: 2`,
    /// `http1MaxPendingRequests: 1`, four slow requests at once: two connections carry two,
    /// one waits and goes once a stream ends, one gets Envoy's overflow answer.
    #[tokio::test]
    async fn h2_connections_are_bounded_by_max_connections_and_the_rest_wait_as_pending() {
        let (addr, counts, release, mut started) = holding_h2_upstream(None).await;
        let c = Connector::new(Duration::from_secs(5));
        let one = UpstreamPool {
            max_concurrent_streams: Some(1),
            ..UpstreamPool::default()
        };
        let limits = Arc::new(ClusterLimits::detached(mesh_core::limits::Thresholds {
            max_connections: 2,
            max_pending_requests: 1,
            ..mesh_core::limits::Thresholds::default()
        }));
        let (answer, mut answers_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (c, req, answer) = (c.clone(), limited(addr, one, &limits), answer.clone());
            tokio::spawn(async move {
                let res = c.oneshot(req).await.unwrap();
                let status = res.status().as_u16();
                let overloaded = res.headers().get("x-envoy-overloaded").cloned();
                let flags = res.headers().get("x-mesh-response-flags").cloned();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                let _ = answer.send((status, overloaded, flags, body));
            });
        }
        started.recv().await.unwrap();
        started.recv().await.unwrap();
        // while two are held and one pends, the only answer that can come is the overflow
        let over = answers_rx.recv().await.unwrap();
        assert_eq!(over.0, 503, "{over:?}");
        assert_eq!(over.1.as_ref().unwrap(), "true");
        assert_eq!(over.2.as_ref().unwrap(), "UO");
        assert_eq!(over.3, mesh_core::limits::OVERFLOW_BODY.as_bytes());
        assert_eq!(limits.counters().pending(), 1);
        assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
        assert_eq!(limits.counters().connections(), 2);
        release.add_permits(3);
        for _ in 0..3 {
            let a = answers_rx.recv().await.unwrap();
            assert_eq!(a.0, 200, "{a:?}");
        }
        assert_eq!(limits.pending_overflows(), 1);
        assert_eq!(limits.counters().pending(), 0);
        assert_eq!(
            counts.connections.load(Ordering::SeqCst),
            2,
            "no third connection"
        );
        assert_eq!(counts.most_on_one.load(Ordering::SeqCst), 1);
    }

    /// The guard of `forward_h2` (`MAX_STREAM_MOVES`): a server whose
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` is 0 takes no stream; the request moves to a new
    /// connection twice, then ends with a reset answer (`503 UR`, as a stream the server
    /// would not open) instead of opening connections forever or waiting forever; the
    /// connections leave the pool, so the next request does the same, no more.
    #[tokio::test]
    async fn a_server_allowing_no_stream_ends_the_request_with_few_connections() {
        let (addr, counts, _release, _started) = holding_h2_upstream(Some(0)).await;
        let c = Connector::new(Duration::from_secs(5));
        let req = request(addr, true, UpstreamPool::default());
        let res = tokio::time::timeout(Duration::from_secs(30), c.clone().oneshot(req))
            .await
            .expect("the request ends")
            .unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["x-mesh-response-flags"], "UR");
        let opened = counts.connections.load(Ordering::SeqCst);
        assert_eq!(
            opened,
            1 + MAX_STREAM_MOVES as usize,
            "{opened} connections"
        );
        let req = request(addr, true, UpstreamPool::default());
        let res = tokio::time::timeout(Duration::from_secs(30), c.clone().oneshot(req))
            .await
            .expect("the request ends")
            .unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(counts.connections.load(Ordering::SeqCst), 2 * opened);
        assert_eq!(counts.most_on_one.load(Ordering::SeqCst), 0);
    }

    /// Istio's `applyTCPKeepalive`: `tcp.tcpKeepalive` turns `SO_KEEPALIVE` on for the
    /// cluster's new connections, with its time, interval and probes; without it, off.
    #[tokio::test]
    async fn tcp_keepalive_is_set_on_new_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let key = PoolKey { addr, tls: 0 };
        let keepalive = UpstreamPool {
            tcp_keepalive: Some(mesh_core::ext::TcpKeepalive {
                time: Some(Duration::from_secs(30)),
                interval: Some(Duration::from_secs(7)),
                probes: Some(4),
            }),
            ..UpstreamPool::default()
        };
        let c = Connector::new(Duration::from_secs(5));
        assert_eq!(get(&c, addr, false, keepalive).await, 200);
        let conn = c.pool().pop_h1(&key).expect("pooled");
        let sock = socket2::SockRef::from(conn.tcp());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        // a cluster without it
        let c = Connector::new(Duration::from_secs(5));
        assert_eq!(get(&c, addr, false, UpstreamPool::default()).await, 200);
        let conn = c.pool().pop_h1(&key).expect("pooled");
        assert!(!socket2::SockRef::from(conn.tcp()).keepalive().unwrap());
    }

    /// Envoy's HTTP/2 `connection_keepalive` (Istio's `http2KeepAlive`): an upstream that
    /// completes the HTTP/2 handshake but then answers nothing, PINGs included, has its
    /// connection closed at the PING timeout; the request held on it fails (`503 UC`)
    /// instead of hanging.
    #[tokio::test]
    async fn h2_keepalive_closes_a_connection_whose_pings_go_unanswered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // the server's SETTINGS (empty) and an ACK of the client's, then silence
            s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
                .await
                .unwrap();
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let pool = UpstreamPool {
            http2_keepalive: Some(mesh_core::ext::Http2Keepalive {
                interval: Duration::from_millis(100),
                timeout: Some(Duration::from_millis(100)),
            }),
            ..UpstreamPool::default()
        };
        let c = Connector::new(Duration::from_secs(5));
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            c.clone().oneshot(request(addr, true, pool)),
        )
        .await
        .expect("the unanswered PING ends the request")
        .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            res.extensions()
                .get::<ResponseFlags>()
                .is_some_and(|f| !f.is_empty())
        );
    }

    /// `tcp.connectTimeout` replaces the connector's own for the cluster: a connect that
    /// hangs (the listener's accept queue is full, its SYNs dropped) gives up after the
    /// cluster's 200 ms, not the connector's 60 s, with `503 UF`.
    #[tokio::test]
    async fn the_cluster_connect_timeout_replaces_the_connector_s() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        // fill the accept queue (never accepted)
        let mut fill = Vec::new();
        for _ in 0..4 {
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            fill.push(s);
        }
        let c = Connector::new(Duration::from_secs(60));
        let pool = UpstreamPool {
            connect_timeout: Some(Duration::from_millis(200)),
            ..UpstreamPool::default()
        };
        let start = std::time::Instant::now();
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            c.clone().oneshot(request(addr, false, pool)),
        )
        .await
        .expect("the cluster's connect timeout applies")
        .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.extensions().get::<ResponseFlags>(),
            Some(&ResponseFlags::UPSTREAM_CONNECTION_FAILURE)
        );
        assert!(start.elapsed() >= Duration::from_millis(200));
        drop((fill, listener));
    }

    /// An HTTP/1.1 upstream on port 0 answering 200 with the target and `Host` it got.
    async fn h1_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let seen = format!("{} {:?}", req.uri(), req.headers().get(header::HOST));
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                            seen,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// A request received over HTTP/2 (`:authority`, no `Host`) that asks for its head back
    /// (in the place returned).
    fn asking(addr: SocketAddr, http2: bool) -> (Request<RequestBody>, ReturnHead) {
        let mut req = request(addr, http2, UpstreamPool::default());
        req.headers_mut().remove(header::HOST);
        *req.uri_mut() = Uri::from_static("http://svc/x?y");
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut()
            .insert("te", HeaderValue::from_static("trailers"));
        let back = ReturnHead::new();
        ask(&mut req, &back);
        (req, back)
    }

    fn ask(req: &mut Request<RequestBody>, back: &ReturnHead) {
        mesh_core::ext::slots_mut(req.extensions_mut()).return_head = Some(back.clone());
    }

    async fn body_of(res: EngineResponse) -> String {
        let b = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// HTTP/1.1: the head goes back as it was rewritten for the upstream (which makes the
    /// same request again), with the client's version for the next `Via` entry.
    #[tokio::test]
    async fn h1_hands_the_head_back_when_asked_and_it_makes_the_same_request_again() {
        let addr = h1_upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        let (req, back) = asking(addr, false);
        let res = c.clone().oneshot(req).await.unwrap();
        let mut head = back.take().expect("handed back");
        assert_eq!(body_of(res).await, "/x?y Some(\"svc\")");
        assert_eq!(head.version, Version::HTTP_2, "the client's version");
        assert_eq!(head.uri, "/x?y");
        assert_eq!(head.headers[header::HOST], "svc");
        assert!(
            head.headers.get(header::VIA).is_none(),
            "Via is written on the wire only"
        );
        assert!(
            take_return_head(&mut head.extensions).is_none(),
            "the head does not hold its own place (the retry layer asks again)"
        );
        // sent again, to HTTP/1.1 or HTTP/2 alike
        let mut again = Request::from_parts(head, RequestBody::empty());
        ask(&mut again, &back);
        let res = c.clone().oneshot(again).await.unwrap();
        assert!(back.take().is_some());
        assert_eq!(body_of(res).await, "/x?y Some(\"svc\")");
        // not asked: not handed back
        let (mut plain, back) = asking(addr, false);
        assert!(take_return_head(plain.extensions_mut()).is_some());
        let res = c.clone().oneshot(plain).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(back.take().is_none());
    }

    /// A connect failure (the retryable answer that matters most) brings the head back too.
    #[tokio::test]
    async fn a_connect_failure_hands_the_head_back() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let c = Connector::new(Duration::from_secs(5));
        for http2 in [false, true] {
            let (req, back) = asking(addr, http2);
            let res = c.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                res.extensions().get::<ResponseFlags>(),
                Some(&ResponseFlags::UPSTREAM_CONNECTION_FAILURE)
            );
            let head = back.take().expect("handed back");
            assert_eq!(head.uri, if http2 { "http://svc/x?y" } else { "/x?y" });
        }
    }

    /// An exchange dropped before its answer (the retry layer's per-try timeout) hands the
    /// head back too, so that the attempt can be sent again without a copy.
    #[tokio::test]
    async fn an_exchange_dropped_before_its_answer_hands_the_head_back() {
        use tokio::io::AsyncReadExt;
        for http2 in [false, true] {
            // an upstream that reads the request (or the HTTP/2 preface), then says nothing
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (read, mut arrived) = tokio::sync::mpsc::channel::<()>(1);
            let upstream = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                read.send(()).await.unwrap();
                std::future::pending::<()>().await;
                drop(s);
            });
            let c = Connector::new(Duration::from_secs(5));
            let (req, back) = asking(addr, http2);
            let mut exchange = Box::pin(c.clone().oneshot(req));
            tokio::select! {
                _ = &mut exchange => panic!("an answer from a silent upstream"),
                _ = arrived.recv() => {}
            }
            drop(exchange);
            let mut head = back.take().expect("handed back");
            assert_eq!(head.uri, if http2 { "http://svc/x?y" } else { "/x?y" });
            assert_eq!(head.version, Version::HTTP_2, "the client's version");
            assert!(take_return_head(&mut head.extensions).is_none());
            upstream.abort();
        }
    }

    /// HTTP/2: hyper takes the request, so the head handed back is a copy taken before the
    /// rewrites (no `Via` added, `te: trailers` kept).
    #[tokio::test]
    async fn h2_hands_back_a_copy_of_the_head_as_received() {
        let (addr, _) = h2_upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        let (req, back) = asking(addr, true);
        let res = c.clone().oneshot(req).await.unwrap();
        let mut head = back.take().expect("handed back");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(head.uri, "http://svc/x?y");
        assert_eq!(head.version, Version::HTTP_2);
        assert_eq!(head.headers["te"], "trailers");
        assert!(head.headers.get(header::VIA).is_none());
        assert!(take_return_head(&mut head.extensions).is_none());
    }

    /// `useClientProtocol`: an HTTP/2 request goes to the endpoint in HTTP/2 and an HTTP/1.1
    /// one in HTTP/1.1, whatever the endpoint's port protocol (here HTTP/1.1, to an upstream
    /// that speaks only h2c: the HTTP/1.1 request fails).
    #[tokio::test]
    async fn use_client_protocol_follows_the_client_s_version() {
        let (addr, _) = h2_upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        let follow = UpstreamPool {
            use_client_protocol: true,
            ..UpstreamPool::default()
        };
        let mut h2 = request(addr, false, follow);
        *h2.version_mut() = Version::HTTP_2;
        let res = c.clone().oneshot(h2).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let h1 = request(addr, false, follow);
        let res = c.clone().oneshot(h1).await.unwrap();
        assert_ne!(
            res.status(),
            StatusCode::OK,
            "HTTP/1.1 to an h2c-only upstream"
        );
        // without it, the endpoint's protocol (HTTP/1.1) wins for an HTTP/2 request
        let mut h2 = request(addr, false, UpstreamPool::default());
        *h2.version_mut() = Version::HTTP_2;
        let res = c.clone().oneshot(h2).await.unwrap();
        assert_ne!(res.status(), StatusCode::OK);
    }
}

//! Typed request and response extensions: how layers talk to each other.
//!
//! Layers never call each other; the router writes what it chose into the request's
//! extensions and the layers below read it when present (falling back to their own
//! configuration otherwise). Each type here says who writes it and who reads it.
//!
//! The layers of the stack write their per-request values into one extension,
//! [`RequestSlots`] (one boxed map entry per request, allocated by the first writer, copied
//! whole by the retry layer's copy of the head): the listener the [`ClientAddr`], the router
//! its [`RouteDecision`], the timeout layer its [`TimeoutMark`], the retry layer its
//! [`PreviousHosts`] and [`PreviousPriorities`], the balancer its [`SelectedUpstream`], the
//! telemetry layers their [`TraceContext`] and [`StreamInfo`]. Writers go through
//! [`slots_mut`]; readers through [`route_destination`], [`route_policy`],
//! [`selected_upstream`], [`selected_endpoint`], [`upstream_cluster`], [`timeout_mark`],
//! [`previous_hosts`], [`previous_priorities`], [`stream_info`], [`trace_context`] and
//! [`client_addr`], which also accept each value inserted on its own as an extension (by
//! in-process users, tests, or the paths that have only one part: passthrough).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderValue, Response, StatusCode};

#[cfg(test)]
use crate::body::MeshBody;
use crate::body::ReplyBody;
use crate::flags::{RESPONSE_FLAGS_HEADER, ResponseFlags};
use crate::limits::ClusterLimits;
use crate::policy::{FaultPolicy, OutlierPolicy, RetryPolicy};
pub use crate::stream_info::StreamInfo;
pub use crate::trace::TraceContext;

/// The destination the router chose for a request: a service host, an optional subset, and
/// the service port.
///
/// Written by the router (`mesh-routing`) inside its [`RouteDecision`] for forwarded and
/// mirrored requests, and on its own for passthrough requests (beside [`Passthrough`]); an
/// in-process user without a router may also insert it directly. Read by the balancer (`mesh-lb`) through
/// [`route_destination`], which looks in a [`RouteDecision`] first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteDestination {
    /// The fully qualified service host, e.g. `reviews.default.svc.cluster.local`.
    pub host: Arc<str>,
    /// The DestinationRule subset name, if the route named one.
    pub subset: Option<Arc<str>>,
    /// The service port; `None` means the service's only port (or the request's port).
    pub port: Option<u16>,
}

/// Marks a [`RouteDestination`] whose host is not in the service registry: the request is
/// passed through to the host it named (Istio's `PassthroughCluster`, under
/// `outboundTrafficPolicy: ALLOW_ANY`).
///
/// Written by the router (`mesh-routing`) beside the `RouteDestination` (whose `host` is the
/// request's host, without the port, and `port` the request's port); read by the balancer
/// (`mesh-lb`), which then resolves and connects to that host instead of a service's
/// endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Passthrough;

/// The policy of the route the router chose: what the resilience layers apply.
///
/// Written by the router inside its [`RouteDecision`] (shared, built once per route and
/// match block; mirrored copies get their own); an in-process user may also insert it
/// directly. Read by the rate limit, timeout,
/// retry and fault layers (`mesh-resilience`) through [`route_policy`], which looks in a
/// [`RouteDecision`] first; they fall back to their own configuration when it is absent.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// The route's name (`HTTPRoute.name`), for telemetry.
    pub route_name: Option<Arc<str>>,
    /// `HTTPRoute.timeout`. `None`: no route timeout (Istio's default: disabled).
    pub timeout: Option<Duration>,
    /// `HTTPRoute.retries`, compiled. `None`: the mesh default retry policy applies.
    pub retries: Option<Arc<RetryPolicy>>,
    /// `HTTPRoute.fault`, compiled.
    pub fault: Option<Arc<FaultPolicy>>,
    /// The `LocalRateLimit` of the route or of its host (its bucket, built once per
    /// configuration load and shared by the route's requests). `None`: the rate limit
    /// layer's own (listener-wide) limit applies, if any.
    pub rate_limit: Option<Arc<crate::ratelimit::RateLimitPolicy>>,
}

/// The endpoint the balancer picked: the address to connect to and how.
///
/// Written by the balancer (`mesh-lb`) inside a [`SelectedUpstream`] for endpoints of a
/// cluster, and on its own for passthrough requests (which have no cluster); the proxy's
/// inbound listener and in-process users may also insert it directly. Read by the connector
/// (`mesh-proxy`, `mesh-tls`), outlier detection and telemetry through [`selected_endpoint`],
/// which looks in a [`SelectedUpstream`] first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedEndpoint {
    /// Address and port to connect to.
    pub addr: SocketAddr,
    /// Whether the upstream speaks HTTP/2 (service port protocol `HTTP2`/`GRPC`, or
    /// `h2UpgradePolicy: UPGRADE`); otherwise HTTP/1.1.
    pub http2: bool,
    /// The endpoint's service account, when known (for SPIFFE peer verification).
    pub service_account: Option<Arc<str>>,
    /// Whether requests to the endpoint use Istio's mTLS when this proxy has an identity
    /// (auto mTLS): the endpoint carries `security.istio.io/tlsMode: istio` (it has a
    /// sidecar) and no DestinationRule `tls` disables it, or a DestinationRule says
    /// `ISTIO_MUTUAL`.
    pub istio_tls: bool,
    /// The SPIFFE identity expected of the endpoint: its service account in its namespace
    /// and the mesh's trust domain (`None`: unknown, any identity of the trust domain).
    pub identity: Option<Arc<crate::identity::SpiffeId>>,
    /// Who the endpoint is, for telemetry (Istio's `destination_workload`, `_app`,
    /// `_version` labels); `None`: unknown. Built once per endpoint with its cluster.
    pub meta: Option<Arc<EndpointMeta>>,
}

/// What the registry knows of an endpoint's workload: read by telemetry only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// The endpoint's labels (the WorkloadEntry's, or the ServiceEntry endpoint's).
    pub labels: crate::selector::Labels,
    /// The workload's namespace: its WorkloadEntry's, else its service's.
    pub namespace: Arc<str>,
    /// The workload's name: its WorkloadEntry's (`None` for an inline endpoint).
    pub workload: Option<Arc<str>>,
}

/// The endpoints the earlier attempts of a request went to, and where the balancer records
/// this attempt's: Istio's `retryIgnorePreviousHosts` (Envoy's `previous_hosts` retry host
/// predicate). It also hands the retry layer the limits of the cluster the attempts went to
/// (for its retry permits: `maxRetries`, `retryBudget`).
///
/// Written by the retry layer (`mesh-resilience`) into every attempt of a request it may
/// retry ([`RequestSlots::hosts`]; one list shared by the attempts; [`PreviousHosts::new`] when the policy avoids
/// previous hosts, else [`PreviousHosts::recording_only`]); read and written by the balancer
/// (`mesh-lb`), which reselects a host already in the list (up to
/// [`PreviousHosts::RESELECT`] times, as Istio's `HostSelectionRetryMaxAttempts`, then
/// accepts it) and records the host it picked; the circuit breaker (`mesh-resilience`,
/// below the balancer) records the cluster's [`ClusterLimits`] ([`PreviousHosts::set_limits`]).
#[derive(Debug, Clone)]
pub struct PreviousHosts(Arc<Attempted>);

#[derive(Debug)]
struct Attempted {
    /// Inline up to Istio's default attempts (the first and two retries): recording a host
    /// allocates nothing.
    hosts: std::sync::Mutex<smallvec::SmallVec<[SocketAddr; 3]>>,
    /// Whether the balancer avoids the hosts (else they are only recorded).
    avoid: bool,
    limits: std::sync::OnceLock<Arc<ClusterLimits>>,
}

/// The locality priorities the earlier attempts of a request went to, and where the
/// balancer records this attempt's: Istio's `retryRemoteLocalities` (Envoy's
/// `previous_priorities` retry priority, which Istio configures with `update_frequency: 2`).
///
/// Written by the retry layer (`mesh-resilience`) into every attempt of a request whose
/// retry policy has `retryRemoteLocalities` ([`RequestSlots::priorities`]; one list shared
/// by the attempts); read (through [`previous_priorities`]) and
/// written by the balancer (`mesh-lb`), which picks the priority of an attempt from the
/// priority load recomputed without [`PreviousPriorities::excluded`] (falling back to the
/// unmodified load when that leaves no priority able to take traffic) and records the
/// priority it picked.
#[derive(Debug, Clone, Default)]
pub struct PreviousPriorities(Arc<std::sync::Mutex<Vec<u32>>>);

/// Marks a local reply of the connector for an HTTP/2 stream the upstream refused
/// (`REFUSED_STREAM`): the application never saw the request (Envoy's `refused-stream`
/// retry condition).
///
/// Written by the connector (`mesh-transport`'s, for an upstream `RST_STREAM` with
/// `REFUSED_STREAM`) beside the reply's `UR` flag; read by the retry layer
/// (`mesh-resilience`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusedStream;

/// Why the connection to the upstream could not be made, when the connector knows more than
/// "connection failure": a refused connection (`delayed connect error: Connection refused`,
/// Envoy 1.40's words) or a TLS handshake's failure, named as Envoy (BoringSSL) names it
/// (`TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end`):
/// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
///
/// Written by the connector (`mesh-transport`) into its `503 UF` reply's extensions; read by
/// the telemetry layer (`mesh-telemetry`'s access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportFailure(pub &'static str);

/// Why an upstream exchange ended before its response started, as Envoy names its stream
/// reset reasons (`Http::Utility::resetReasonToString`): the words of the `503`/`502` local
/// reply's body (`upstream connect error or disconnect/reset before headers. reset reason:
/// connection termination`) and of `%RESPONSE_CODE_DETAILS%`
/// (`upstream_reset_before_response_started{connection_termination}`).
///
/// Written by the connector (`mesh-transport`) into such replies' extensions; read by the
/// retry layer (`mesh-resilience`), which words the body as Envoy does after a retry
/// (`… retried and the latest reset reason: …`), and by the telemetry layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamReset {
    /// The connection could not be made (`UF`).
    RemoteConnectionFailure,
    /// The upstream closed the connection before answering (`UC`).
    ConnectionTermination,
    /// The upstream reset the stream (`UR`).
    RemoteReset,
    /// The upstream refused the HTTP/2 stream (`UR`).
    RemoteRefusedStreamReset,
    /// The upstream's answer could not be read (`UPE`).
    ProtocolError,
    /// A connection-pool limit (`UO`).
    Overflow,
}

/// Each reason's texts from one list: its words, the reply's body (first try and after a
/// retry) and its details, so that the four never disagree.
macro_rules! upstream_reset_texts {
    ($($variant:ident => $words:literal, $snake:literal;)*) => {
        impl UpstreamReset {
            /// `[words, body, body after a retry, details]`.
            const fn texts(self) -> [&'static str; 4] {
                match self {
                    $(UpstreamReset::$variant => [
                        $words,
                        concat!(
                            "upstream connect error or disconnect/reset before headers. ",
                            "reset reason: ",
                            $words
                        ),
                        concat!(
                            "upstream connect error or disconnect/reset before headers. ",
                            "retried and the latest reset reason: ",
                            $words
                        ),
                        concat!("upstream_reset_before_response_started{", $snake, "}"),
                    ],)*
                }
            }
        }
    };
}

upstream_reset_texts! {
    RemoteConnectionFailure => "remote connection failure", "remote_connection_failure";
    ConnectionTermination => "connection termination", "connection_termination";
    RemoteReset => "remote reset", "remote_reset";
    RemoteRefusedStreamReset => "remote refused stream reset", "remote_refused_stream_reset";
    ProtocolError => "protocol error", "protocol_error";
    Overflow => "overflow", "overflow";
}

impl UpstreamReset {
    /// Envoy's words for the reason (`remote connection failure`).
    pub const fn words(self) -> &'static str {
        self.texts()[0]
    }

    /// The body of Envoy's local reply (router's `onUpstreamReset`): `retried` after at
    /// least one retry, as Envoy's `is_retry_`.
    pub const fn body(self, retried: bool) -> &'static str {
        self.texts()[if retried { 2 } else { 1 }]
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for it.
    pub const fn details(self) -> &'static str {
        self.texts()[3]
    }

    /// Envoy's local reply for it: `status` (503, 502 for a protocol error), the response
    /// flag, the body, and this reason in its extensions.
    pub fn reply<R: ReplyBody>(
        self,
        status: StatusCode,
        flags: ResponseFlags,
        retried: bool,
    ) -> Response<R> {
        let mut res = local_reply(status, flags, self.body(retried));
        res.extensions_mut().insert(self);
        res
    }
}

/// The delay the fault layer injected before the request went upstream (VirtualService
/// `fault.delay`), on the answer: left out of `x-envoy-upstream-service-time`
/// ([`crate::hcm`]), which Envoy's router starts after the fault filter has let the request
/// through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedDelay(pub std::time::Duration);

/// The text of a reply the mesh made itself ([`local_reply`], a VirtualService's
/// `directResponse` or `redirect`), its body: what [`crate::grpc`] turns into
/// `grpc-message` when the request was gRPC. Its presence marks the answer as the mesh's own
/// rather than an upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplyText(pub bytes::Bytes);

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a local reply whose response flags do not tell it
/// apart: a per-try timeout's `upstream_per_try_timeout` beside the route timeout's
/// `response_timeout` (both `UT`), the DENY rule an AuthorizationPolicy denied with
/// (`rbac_access_denied_matched_policy[ns[foo]-policy[deny-get]-rule[0]]`).
///
/// Written by the layer that answers (`mesh-resilience`'s retry layer, `mesh-tls`'s
/// authorization) into its reply's extensions; read by the telemetry layer
/// (`mesh-telemetry`'s access log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCodeDetails(pub Arc<str>);

impl ResponseCodeDetails {
    /// `direct_response`: a route's own answer, a VirtualService's `directResponse` or
    /// `redirect` and a gateway's `httpsRedirect` (Envoy's router answers every
    /// `DirectResponseEntry` with these details). One shared string: no allocation.
    pub fn direct_response() -> Self {
        static DIRECT: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("direct_response"));
        ResponseCodeDetails(DIRECT.clone())
    }

    /// `cors_response`: the CORS filter's own answer to a preflight (Envoy's
    /// `CorsFilter::decodeHeaders`). One shared string: no allocation.
    pub fn cors_response() -> Self {
        static CORS: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("cors_response"));
        ResponseCodeDetails(CORS.clone())
    }

    /// Marks `res` as a route's own answer ([`direct_response`](Self::direct_response)),
    /// with `body` as its text for a gRPC caller ([`LocalReplyText`]): what a
    /// VirtualService's `directResponse` and `redirect`, and a gateway's `httpsRedirect`,
    /// answer.
    pub fn mark_direct<R>(res: &mut Response<R>, body: bytes::Bytes) {
        let ext = res.extensions_mut();
        ext.insert(Self::direct_response());
        ext.insert(LocalReplyText(body));
    }
}

/// Where the service at the bottom of the stack puts the request's head back when it is
/// done with it, so that a retry can send it again without having copied it up front.
///
/// Written by the retry layer (`mesh-resilience`, when built with
/// `RetryLayer::with_heads_handed_back`) into [`RequestSlots::return_head`] of the requests
/// it may retry; taken out of the request by the connector (`mesh-transport`'s, with
/// [`take_return_head`], so that the head never holds the place it is put in), which puts
/// every head that asked into it ([`ReturnHead::put`]) with every answer it makes (the
/// upstream's and its own local replies alike), and when the exchange is dropped before an
/// answer (an attempt the retry layer's per-try timeout ended): method, target, headers and extensions as
/// the layers above the connector sent them (the connector's own rewrites for the
/// upstream's protocol are such that sending it again makes the same request). The retry
/// layer takes the head out ([`ReturnHead::take`]) when the answer comes.
///
/// One handle is shared by the retry layer and the request: cloning it is a reference-count
/// increment, and the retry layer's service reuses its handle for the next request once no
/// request holds it ([`ReturnHead::try_reuse`]), so a request answered at once allocates
/// nothing for it.
///
/// ```
/// use mesh_core::ext::{ReturnHead, slots_mut, take_return_head};
///
/// let back = ReturnHead::new();
/// let mut req = http::Request::new(());
/// slots_mut(req.extensions_mut()).return_head = Some(back.clone());
/// // the connector, when it is done with the request:
/// let (mut head, ()) = req.into_parts();
/// let asked = take_return_head(&mut head.extensions).expect("asked");
/// asked.put(head);
/// // the retry layer, when the answer comes:
/// assert!(back.take().is_some_and(|h| take_return_head(&mut { h }.extensions).is_none()));
/// ```
#[derive(Clone, Default)]
pub struct ReturnHead(Arc<std::sync::Mutex<Option<http::request::Parts>>>);

impl ReturnHead {
    /// An empty place.
    pub fn new() -> Self {
        ReturnHead::default()
    }

    /// Puts a head back (the connector's part), replacing any earlier one. The head must
    /// not carry this handle ([`take_return_head`] took it out), or it would hold itself.
    pub fn put(&self, head: http::request::Parts) {
        *self.lock() = Some(head);
    }

    /// Takes the head put back, if any (the retry layer's part).
    pub fn take(&self) -> Option<http::request::Parts> {
        self.lock().take()
    }

    /// Whether this is the only handle to the place (no request, connector or future holds
    /// it): then it is emptied and may serve another request.
    pub fn try_reuse(&mut self) -> bool {
        match Arc::get_mut(&mut self.0) {
            Some(m) => {
                *m.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<http::request::Parts>> {
        // held for a move in or out: never contended in practice, never poisoned by a panic
        // that matters (the value is replaced whole)
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for ReturnHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never waits (a Debug call under the lock would deadlock): `None` while in use
        let held = self.0.try_lock().ok().map(|h| h.is_some());
        f.debug_struct("ReturnHead").field("held", &held).finish()
    }
}

/// The [`ReturnHead`] a request carries, taken out of its [`RequestSlots`] (the connector's
/// part: the head it puts back must not hold its own place).
#[inline]
pub fn take_return_head(ext: &mut Extensions) -> Option<ReturnHead> {
    ext.get_mut::<RequestSlots>()?.return_head.take()
}

/// Why the layers below the balancer lost an attempt they were working on: a timeout above
/// them fired (the retry layer's `perTryTimeout`, the timeout layer's route timeout), rather
/// than the client going away.
///
/// Written by the timeout layer (`mesh-resilience`) into a request with a route timeout and
/// by the retry layer into each attempt with a per-try timeout (chained to the route's), in
/// [`RequestSlots::timeout`] (read through [`timeout_mark`]); the
/// layer whose timer fires calls [`TimeoutMark::fire`] before it drops the attempt. Read by
/// outlier detection when its attempt is dropped unanswered: a timeout counts against the
/// endpoint (Envoy's `LocalOriginTimeout`), a client's disconnect does not.
#[derive(Debug, Clone, Default)]
pub struct TimeoutMark {
    flag: Arc<std::sync::atomic::AtomicBool>,
    parent: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl TimeoutMark {
    /// A mark not fired yet.
    pub fn new() -> Self {
        TimeoutMark::default()
    }

    /// A mark of its own that also reads as fired when `parent` (the route's) fires.
    pub fn child_of(parent: Option<&TimeoutMark>) -> Self {
        TimeoutMark {
            flag: Arc::default(),
            parent: parent.map(|p| p.flag.clone()),
        }
    }

    /// Records that the timeout fired.
    pub fn fire(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether this mark's timeout, or its parent's, fired.
    pub fn fired(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.flag.load(Acquire) || self.parent.as_ref().is_some_and(|p| p.load(Acquire))
    }
}

/// The downstream peer's address (the client of this hop), for `consistentHash.useSourceIp`
/// and access logs.
///
/// Written by the proxy's listener for every request of a connection, into the request's
/// [`RequestSlots`] ([`client`](RequestSlots::client)), or by an in-process user, there or as
/// an extension of its own; read through [`client_addr`] by the balancer (`mesh-lb`), the
/// telemetry, authorization and header formatting. Absent: source-IP hashing has no key (a
/// random endpoint is picked, as Envoy does when a hash policy yields nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The SPIFFE identity of the peer that sent a request over mTLS (the client certificate's
/// URI SAN), with its AuthorizationPolicy principal (`<trust-domain>/ns/<ns>/sa/<sa>`).
///
/// Written by the proxy's inbound listener for every request of an mTLS connection whose
/// client certificate carries one SPIFFE identity (computed once per connection), or by an
/// in-process user that authenticated the peer itself; read by the authorization layer
/// (`mesh-tls`'s `authz`: `principals`, `namespaces`, `serviceAccounts`, `source.principal`,
/// `source.namespace`). Absent: the peer is not authenticated (plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(Arc<(crate::identity::SpiffeId, Box<str>)>);

impl PeerIdentity {
    /// The peer `id`.
    pub fn new(id: crate::identity::SpiffeId) -> Self {
        let principal = id.principal().into_boxed_str();
        PeerIdentity(Arc::new((id, principal)))
    }

    /// The SPIFFE identity.
    pub fn id(&self) -> &crate::identity::SpiffeId {
        &self.0.0
    }

    /// The principal as AuthorizationPolicy writes it: `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> &str {
        &self.0.1
    }
}

/// The claims of a request's validated JWT, for VirtualService matches on
/// `@request.auth.claims.<name>` (JWT claim based routing).
///
/// Written by the JWT layer (`mesh-tls`'s `jwt`, RequestAuthentication) when a token is
/// valid, as Envoy's `jwt_authn` writes its payload into the request's metadata; removed by it
/// from every request it sees first (a client never supplies its own); read by the router
/// (`mesh-routing`). Absent: no validated token, and claim matches do not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtClaims(pub Arc<serde_json::Map<String, serde_json::Value>>);

impl JwtClaims {
    /// The claim at `path` (`["groups"]`, or nested `["a", "b"]`).
    pub fn get(&self, path: &[impl AsRef<str>]) -> Option<&serde_json::Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.0.get(first.as_ref())?;
        for k in rest {
            v = v.as_object()?.get(k.as_ref())?;
        }
        Some(v)
    }

    /// Whether the claim at `path` is a string `matches` accepts, or a list holding one
    /// (Istio's `MetadataMatcherForJWTClaims`: a string or a list's `one_of`).
    pub fn any_str(&self, path: &[impl AsRef<str>], matches: impl Fn(&str) -> bool) -> bool {
        match self.get(path) {
            Some(serde_json::Value::String(s)) => matches(s),
            Some(serde_json::Value::Array(items)) => {
                items.iter().any(|i| i.as_str().is_some_and(&matches))
            }
            _ => false,
        }
    }
}

/// The address a request was sent to, as the workload sees it: Envoy's
/// `destination.address` (the original destination of the connection).
///
/// Written by the proxy's inbound listener (the listener's IP and the local application's
/// port: the workload port the peer meant); read by the authorization layer (`ports`,
/// `destination.ip`, `destination.port`). Absent: rules on the destination do not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestinationAddr(pub SocketAddr);

/// The server name (SNI) the peer asked for in its TLS handshake.
///
/// Written by the proxy's inbound listener for requests of a TLS connection that sent one;
/// read by the authorization layer (`connection.sni`). Absent: plaintext, or no SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionSni(pub Arc<str>);

/// The cluster the balancer picked the [`SelectedEndpoint`] from: its Istio name
/// (`outbound|9080|v1|reviews.default.svc.cluster.local`) and the endpoint's health cell.
///
/// Written by the balancer (`mesh-lb`) inside a [`SelectedUpstream`], beside the
/// [`SelectedEndpoint`]; read by outlier detection (which counts the attempt's outcome in
/// the cell and ejects the endpoint through it, by the cluster's `outlier` policy; see
/// [`crate::health`]) and telemetry (Envoy's `upstream_cluster`) through
/// [`upstream_cluster`].
#[derive(Debug, Clone)]
pub struct UpstreamCluster {
    /// The Istio cluster name ([`crate::health::cluster_name`]).
    pub name: Arc<str>,
    /// The selected endpoint's health cell in this cluster.
    pub health: Arc<crate::health::HealthCell>,
    /// The cluster's `connectionPool` settings that the connector applies.
    pub pool: UpstreamPool,
    /// The cluster's `outlierDetection`, compiled (`None`: the DestinationRule sets none).
    pub outlier: Option<Arc<OutlierPolicy>>,
    /// The cluster's circuit-breaker thresholds and shared counters (`connectionPool`,
    /// `retryBudget`), read by the circuit breaker and, through [`PreviousHosts`], the retry
    /// layer (`mesh-resilience`); the connector (`mesh-transport`) counts the connections it
    /// opens for the cluster in the counters' pool gauges. `None`: no limits.
    pub limits: Option<Arc<ClusterLimits>>,
}

/// A DestinationRule's `connectionPool` settings that concern the upstream connections
/// themselves (the limits on requests are circuit breaking's, in [`UpstreamCluster::limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamPool {
    /// `maxRequestsPerConnection`: requests an upstream connection carries before it is
    /// closed (`None`: no limit; 1 disables keep-alive). Envoy's
    /// `max_requests_per_connection`.
    pub max_requests_per_connection: Option<u32>,
    /// `idleTimeout`: how long an idle upstream connection is kept (`None`: Envoy's default,
    /// one hour).
    pub idle_timeout: Option<std::time::Duration>,
    /// `tcp.idleTimeout`: how long a proxied TCP connection (an L4 listener's) may carry no
    /// byte either way before it is closed (`None`: Istio's default for the TCP proxy, one
    /// hour). Envoy's `tcp_proxy` `idle_timeout`.
    pub tcp_idle_timeout: Option<std::time::Duration>,
    /// `tcp.connectTimeout`: the cluster's connect timeout (`None`: the connector's own,
    /// the bootstrap's `limits.connectTimeout`).
    pub connect_timeout: Option<std::time::Duration>,
    /// `tcp.maxConnectionDuration`: how long an upstream connection is used from when it was
    /// established (`None`: no limit). Envoy's `max_connection_duration`.
    pub max_connection_duration: Option<std::time::Duration>,
    /// `tcp.tcpKeepalive`: TCP keep-alive on upstream connections (`None`: off).
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `http.http2KeepAlive`: HTTP/2 PINGs on upstream HTTP/2 connections (`None`: none).
    pub http2_keepalive: Option<Http2Keepalive>,
    /// `http.useClientProtocol`: a request goes upstream in the protocol the client used
    /// (HTTP/2 for an HTTP/2 request, HTTP/1.1 otherwise), whatever the endpoint's port
    /// protocol or `h2UpgradePolicy` say (Envoy's `use_downstream_protocol_config`).
    pub use_client_protocol: bool,
    /// `http.maxConcurrentStreams`: streams an upstream HTTP/2 connection carries at once
    /// (`None`: no limit but the server's `SETTINGS_MAX_CONCURRENT_STREAMS`); when every
    /// connection to an endpoint is at the limit, another is opened. Envoy's
    /// `http2_protocol_options.max_concurrent_streams`.
    pub max_concurrent_streams: Option<u32>,
}

impl UpstreamPool {
    /// The connection settings of a merged traffic policy's `connectionPool`, as Istio's
    /// `applyConnectionPool` writes them into the cluster (the outbound clusters'
    /// DestinationRule, and the inbound clusters' Sidecar or DestinationRule pool).
    pub fn from_traffic_policy(tp: &crate::model::networking::TrafficPolicy) -> Self {
        let http = tp.connection_pool.as_ref().and_then(|c| c.http.as_ref());
        let tcp = tp.connection_pool.as_ref().and_then(|c| c.tcp.as_ref());
        UpstreamPool {
            // Istio: 0 (the proto default) means no limit
            max_requests_per_connection: http
                .and_then(|h| h.max_requests_per_connection)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            // Istio: the HTTP idle timeout, else the TCP one
            idle_timeout: http
                .and_then(|h| h.idle_timeout)
                .or_else(|| tcp.and_then(|t| t.idle_timeout))
                .map(|d| d.get()),
            tcp_idle_timeout: tcp.and_then(|t| t.idle_timeout).map(|d| d.get()),
            connect_timeout: tcp.and_then(|t| t.connect_timeout).map(|d| d.get()),
            // a zero duration is taken as unset (Envoy: "if not set, there is no max")
            max_connection_duration: tcp
                .and_then(|t| t.max_connection_duration)
                .map(|d| d.get())
                .filter(|d| !d.is_zero()),
            http2_keepalive: http
                .and_then(|h| h.http2_keep_alive.as_ref())
                .and_then(|k| {
                    Some(Http2Keepalive {
                        interval: k.interval?.get(),
                        timeout: k.timeout.map(|d| d.get()),
                    })
                })
                .filter(|k| !k.interval.is_zero()),
            use_client_protocol: http.is_some_and(|h| h.use_client_protocol),
            // Istio sets `max_concurrent_streams` only when positive
            max_concurrent_streams: http
                .and_then(|h| h.max_concurrent_streams)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            // Istio's applyTCPKeepalive: whole seconds; probes only when positive
            tcp_keepalive: tcp
                .and_then(|t| t.tcp_keepalive.as_ref())
                .map(|k| TcpKeepalive {
                    time: k.time.map(|d| Duration::from_secs(d.get().as_secs())),
                    interval: k.interval.map(|d| Duration::from_secs(d.get().as_secs())),
                    probes: k.probes.filter(|p| *p > 0),
                }),
        }
    }
}

/// HTTP/2 keep-alive of upstream connections (Envoy's `Http2ProtocolOptions.connection_keepalive`):
/// a PING every `interval` while streams are open; a connection whose PING is not answered
/// within `timeout` is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Keepalive {
    /// `interval`: time between PINGs.
    pub interval: std::time::Duration,
    /// `timeout`: how long a PING may go unanswered (`None`: the client's default, 20 s).
    pub timeout: Option<std::time::Duration>,
}

/// TCP keep-alive of upstream connections (Envoy's `upstream_connection_options.tcp_keepalive`,
/// as Istio's `applyTCPKeepalive` fills it): `SO_KEEPALIVE` on, each unset part the
/// operating system's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// `time`: idle time before the first probe (Linux's default: 2 h).
    pub time: Option<std::time::Duration>,
    /// `interval`: time between probes (Linux's default: 75 s).
    pub interval: Option<std::time::Duration>,
    /// `probes`: unanswered probes before the connection is dead (Linux's default: 9).
    pub probes: Option<u32>,
}

/// What the router decided for a forwarded request: the destination and the route's policy,
/// in one value (the policy is shared, built once per route and match block).
///
/// Written by the router (`mesh-routing`) for every request it forwards to a route's
/// destination, and by its mirror layer on each mirrored copy, in
/// [`RequestSlots::decision`] (an in-process user may also insert it as an extension of its
/// own). Readers (the balancer, the
/// resilience layers) use [`route_destination`] and [`route_policy`], which also accept a
/// standalone [`RouteDestination`] / [`RoutePolicy`] (passthrough requests, requests from
/// in-process users without a router).
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// The chosen destination, port filled in from the request when the route names none.
    pub dest: RouteDestination,
    /// The chosen route's policy (`route_name` is the match block's when it has one).
    pub policy: Arc<RoutePolicy>,
}

/// What the balancer picked for a request: the [`SelectedEndpoint`] and its
/// [`UpstreamCluster`], in one shared value (built once per endpoint when the cluster is
/// built; a request's insert is one reference-count increment).
///
/// Written by the balancer (`mesh-lb`) for every request sent to an endpoint of a cluster,
/// in [`RequestSlots::upstream`]. Readers use [`selected_upstream`], [`selected_endpoint`]
/// and [`upstream_cluster`], which also accept a standalone [`SelectedUpstream`] (as an
/// extension of its own), [`SelectedEndpoint`] or [`UpstreamCluster`].
#[derive(Debug, Clone)]
pub struct SelectedUpstream(Arc<(SelectedEndpoint, UpstreamCluster)>);

// === impl SelectedEndpoint ===

impl SelectedEndpoint {
    /// An endpoint at `addr` spoken to in HTTP/1.1, with no known identity and no sidecar: what
    /// passthrough, the inbound listener and in-process users connect to. Set the rest with
    /// the `with_*` methods.
    ///
    /// ```
    /// use mesh_core::ext::SelectedEndpoint;
    ///
    /// let ep = SelectedEndpoint::new("10.0.0.7:9080".parse().unwrap()).with_http2(true);
    /// assert!(ep.http2 && ep.service_account.is_none() && !ep.istio_tls);
    /// ```
    pub fn new(addr: SocketAddr) -> Self {
        SelectedEndpoint {
            addr,
            http2: false,
            service_account: None,
            istio_tls: false,
            identity: None,
            meta: None,
        }
    }

    /// Speaks HTTP/2 to the endpoint when `http2`, else HTTP/1.1.
    pub fn with_http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    /// The endpoint's service account (for SPIFFE peer verification), if known.
    pub fn with_service_account(mut self, service_account: Option<Arc<str>>) -> Self {
        self.service_account = service_account;
        self
    }

    /// Whether requests to the endpoint use Istio's mTLS (see [`SelectedEndpoint::istio_tls`]).
    pub fn with_istio_tls(mut self, istio_tls: bool) -> Self {
        self.istio_tls = istio_tls;
        self
    }

    /// The SPIFFE identity expected of the endpoint.
    pub fn with_identity(mut self, identity: Option<Arc<crate::identity::SpiffeId>>) -> Self {
        self.identity = identity;
        self
    }

    /// Who the endpoint is, for telemetry.
    pub fn with_meta(mut self, meta: Option<Arc<EndpointMeta>>) -> Self {
        self.meta = meta;
        self
    }
}

// === impl SelectedUpstream ===

impl SelectedUpstream {
    /// The endpoint and the cluster it belongs to.
    pub fn new(endpoint: SelectedEndpoint, cluster: UpstreamCluster) -> Self {
        SelectedUpstream(Arc::new((endpoint, cluster)))
    }

    /// The endpoint to connect to.
    pub fn endpoint(&self) -> &SelectedEndpoint {
        &self.0.0
    }

    /// The cluster the endpoint was picked from.
    pub fn cluster(&self) -> &UpstreamCluster {
        &self.0.1
    }

    /// Whether a request of `version` goes to the endpoint in HTTP/2: the request's own
    /// protocol under the cluster's `useClientProtocol`, else the endpoint's. The one
    /// decision the circuit breaker (what it counts) and the connector (what it opens)
    /// share.
    pub fn http2_for(&self, version: http::Version) -> bool {
        match self.cluster().pool.use_client_protocol {
            true => version == http::Version::HTTP_2,
            false => self.endpoint().http2,
        }
    }
}

// === impl PreviousHosts ===

impl Default for PreviousHosts {
    fn default() -> Self {
        PreviousHosts::new()
    }
}

impl PreviousHosts {
    /// How many times the balancer picks again when it picked a previous host (Istio's
    /// `HostSelectionRetryMaxAttempts`: 5).
    pub const RESELECT: u32 = 5;

    /// An empty list, whose hosts the balancer avoids.
    pub fn new() -> Self {
        PreviousHosts::with_avoid(true)
    }

    /// An empty list that only records the hosts (the policy does not avoid them): it
    /// carries the cluster's limits back to the retry layer.
    pub fn recording_only() -> Self {
        PreviousHosts::with_avoid(false)
    }

    fn with_avoid(avoid: bool) -> Self {
        PreviousHosts(Arc::new(Attempted {
            hosts: std::sync::Mutex::default(),
            avoid,
            limits: std::sync::OnceLock::new(),
        }))
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, smallvec::SmallVec<[SocketAddr; 3]>> {
        self.0.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an earlier attempt went to `addr` and the hosts are to be avoided.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.0.avoid && self.hosts().contains(&addr)
    }

    /// Records the limits of the attempt's cluster (the first attempt's are kept).
    #[inline]
    pub fn set_limits(&self, limits: &Arc<ClusterLimits>) {
        if self.0.limits.get().is_none() {
            let _ = self.0.limits.set(limits.clone());
        }
    }

    /// The limits of the cluster the first attempt went to, if known.
    pub fn limits(&self) -> Option<&Arc<ClusterLimits>> {
        self.0.limits.get()
    }

    /// Records that an attempt goes to `addr`.
    pub fn record(&self, addr: SocketAddr) {
        self.hosts().push(addr);
    }

    /// The hosts attempted so far, in order.
    pub fn to_vec(&self) -> Vec<SocketAddr> {
        self.hosts().to_vec()
    }
}

// === impl PreviousPriorities ===

impl PreviousPriorities {
    /// Istio's `update_frequency` of Envoy's `previous_priorities`
    /// (`pilot/pkg/networking/core/route/retry`): the priorities tried are excluded after
    /// every second attempt, so the first retry may go to the same priority as the first
    /// attempt, the second retry goes elsewhere.
    pub const UPDATE_FREQUENCY: usize = 2;

    /// An empty list.
    pub fn new() -> Self {
        PreviousPriorities::default()
    }

    fn priorities(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that an attempt goes to `priority`.
    pub fn record(&self, priority: u32) {
        self.priorities().push(priority);
    }

    /// The priorities this attempt's pick excludes, as a bit set (bit `p` for priority `p`;
    /// priorities from 64 on are never excluded): those of the attempts up to the last
    /// multiple of [`Self::UPDATE_FREQUENCY`], as Envoy's
    /// `PreviousPrioritiesRetryPriority::determinePriorityLoad` recomputes the load then.
    pub fn excluded(&self) -> u64 {
        let tried = self.priorities();
        let upto = tried.len() - tried.len() % Self::UPDATE_FREQUENCY;
        tried[..upto]
            .iter()
            .filter(|&&p| p < 64)
            .fold(0, |set, &p| set | 1 << p)
    }

    /// The priorities attempted so far, in order.
    pub fn to_vec(&self) -> Vec<u32> {
        self.priorities().clone()
    }
}

/// The values the layers of the stack write for a request, in one request extension
/// instead of a boxed extension each: one allocation per request (by the first writer,
/// [`slots_mut`]), one clone when the retry layer copies the head, no growth of the
/// extension map as the request goes inwards.
///
/// Written through [`slots_mut`] by the listener ([`client`](Self::client)), trace
/// propagation ([`trace`](Self::trace)) and the telemetry record layer
/// ([`info`](Self::info)) outermost, the router ([`decision`](Self::decision)), the timeout
/// and retry layers ([`timeout`](Self::timeout), [`hosts`](Self::hosts),
/// [`priorities`](Self::priorities)) and the balancer ([`upstream`](Self::upstream)). Read
/// through the accessors ([`route_destination`], [`route_policy`], [`selected_upstream`],
/// [`selected_endpoint`], [`upstream_cluster`], [`timeout_mark`], [`previous_hosts`],
/// [`previous_priorities`], [`stream_info`], [`trace_context`], [`client_addr`]): a slot
/// that is set wins over the same value inserted on its own as an extension.
///
/// ```
/// use mesh_core::ext::{TimeoutMark, slots_mut, timeout_mark};
///
/// let mut req = http::Request::new(());
/// assert!(timeout_mark(req.extensions()).is_none());
/// slots_mut(req.extensions_mut()).timeout = Some(TimeoutMark::new());
/// assert!(timeout_mark(req.extensions()).is_some_and(|m| !m.fired()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequestSlots {
    /// The router's decision (see [`RouteDecision`]).
    pub decision: Option<RouteDecision>,
    /// The timeout mark of the attempt: the route timeout's, or the retry layer's per-try
    /// one (see [`TimeoutMark`]).
    pub timeout: Option<TimeoutMark>,
    /// The hosts of the earlier attempts (see [`PreviousHosts`]).
    pub hosts: Option<PreviousHosts>,
    /// The priorities of the earlier attempts (see [`PreviousPriorities`]).
    pub priorities: Option<PreviousPriorities>,
    /// The balancer's pick for the attempt (see [`SelectedUpstream`]).
    pub upstream: Option<SelectedUpstream>,
    /// The telemetry layer's per-request record, shared by the attempts (see
    /// [`StreamInfo`]; a mirrored copy has none).
    pub info: Option<StreamInfo>,
    /// The hop's trace context (see [`TraceContext`]).
    pub trace: Option<TraceContext>,
    /// Where the connector puts the head back (see [`ReturnHead`]); taken out by the
    /// connector ([`take_return_head`]).
    pub return_head: Option<ReturnHead>,
    /// The downstream peer's address (see [`ClientAddr`]), written by the listener: in the
    /// slots rather than an extension of its own, one allocation fewer per request.
    pub client: Option<ClientAddr>,
}

/// The request's [`RequestSlots`], inserted empty if it has none yet.
#[inline]
pub fn slots_mut(ext: &mut Extensions) -> &mut RequestSlots {
    ext.get_or_insert_default::<RequestSlots>()
}

/// The request's [`RequestSlots`], if a layer wrote any.
#[inline]
pub fn slots(ext: &Extensions) -> Option<&RequestSlots> {
    ext.get::<RequestSlots>()
}

/// A request's extensions with its [`RequestSlots`] looked up once, for a layer that reads
/// several of their values: each free accessor of this module ([`route_policy`],
/// [`selected_upstream`], …) looks the slots up again, a view's methods share one look-up.
/// The answers are the free accessors': a slot that is set wins over the same value
/// inserted on its own as an extension; when the slots are the request's only extension
/// (the proxy's plaintext requests), an empty slot is the answer, without a second
/// look-up.
///
/// ```
/// use mesh_core::ext::{SlotsView, TimeoutMark, slots_mut};
///
/// let mut req = http::Request::new(());
/// slots_mut(req.extensions_mut()).timeout = Some(TimeoutMark::new());
/// let view = SlotsView::new(req.extensions());
/// assert!(view.timeout_mark().is_some());
/// assert!(view.route_policy().is_none());
/// assert!(view.own::<u32>().is_none());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SlotsView<'a> {
    ext: &'a Extensions,
    slots: Option<&'a RequestSlots>,
    /// The slots are the request's only extension: no value stands on its own.
    only: bool,
}

impl<'a> SlotsView<'a> {
    /// The view of `ext` (one look-up of its [`RequestSlots`]).
    #[inline]
    pub fn new(ext: &'a Extensions) -> Self {
        let slots = slots(ext);
        SlotsView {
            ext,
            slots,
            only: slots.is_some() && ext.len() == 1,
        }
    }

    /// A value inserted on its own as an extension (`ext.get::<T>()`); no look-up when the
    /// slots are the only extension.
    #[inline]
    pub fn own<T: Send + Sync + 'static>(&self) -> Option<&'a T> {
        match self.only {
            true => None,
            false => self.ext.get::<T>(),
        }
    }

    /// A value of the slots (`slot`), else the same type on its own.
    #[inline]
    fn slot_or_own<T: Send + Sync + 'static>(
        &self,
        slot: impl FnOnce(&'a RequestSlots) -> Option<&'a T>,
    ) -> Option<&'a T> {
        match self.slots.and_then(slot) {
            Some(v) => Some(v),
            None => self.own::<T>(),
        }
    }

    /// See [`client_addr`].
    #[inline]
    pub fn client_addr(&self) -> Option<&'a ClientAddr> {
        self.slot_or_own(|s| s.client.as_ref())
    }

    /// See [`route_decision`].
    #[inline]
    pub fn route_decision(&self) -> Option<&'a RouteDecision> {
        self.slot_or_own(|s| s.decision.as_ref())
    }

    /// See [`route_destination`].
    #[inline]
    pub fn route_destination(&self) -> Option<&'a RouteDestination> {
        match self.route_decision() {
            Some(d) => Some(&d.dest),
            None => self.own::<RouteDestination>(),
        }
    }

    /// See [`route_policy`].
    #[inline]
    pub fn route_policy(&self) -> Option<&'a RoutePolicy> {
        match self.route_decision() {
            Some(d) => Some(&d.policy),
            None => self.own::<RoutePolicy>(),
        }
    }

    /// See [`selected_upstream`].
    #[inline]
    pub fn selected_upstream(&self) -> Option<&'a SelectedUpstream> {
        self.slot_or_own(|s| s.upstream.as_ref())
    }

    /// See [`selected_endpoint`].
    #[inline]
    pub fn selected_endpoint(&self) -> Option<&'a SelectedEndpoint> {
        match self.selected_upstream() {
            Some(u) => Some(u.endpoint()),
            None => self.own::<SelectedEndpoint>(),
        }
    }

    /// See [`upstream_cluster`].
    #[inline]
    pub fn upstream_cluster(&self) -> Option<&'a UpstreamCluster> {
        match self.selected_upstream() {
            Some(u) => Some(u.cluster()),
            None => self.own::<UpstreamCluster>(),
        }
    }

    /// See [`stream_info`].
    #[inline]
    pub fn stream_info(&self) -> Option<&'a StreamInfo> {
        self.slot_or_own(|s| s.info.as_ref())
    }

    /// See [`trace_context`].
    #[inline]
    pub fn trace_context(&self) -> Option<&'a TraceContext> {
        self.slot_or_own(|s| s.trace.as_ref())
    }

    /// See [`timeout_mark`].
    #[inline]
    pub fn timeout_mark(&self) -> Option<&'a TimeoutMark> {
        self.slot_or_own(|s| s.timeout.as_ref())
    }

    /// See [`previous_hosts`].
    #[inline]
    pub fn previous_hosts(&self) -> Option<&'a PreviousHosts> {
        self.slot_or_own(|s| s.hosts.as_ref())
    }

    /// See [`previous_priorities`].
    #[inline]
    pub fn previous_priorities(&self) -> Option<&'a PreviousPriorities> {
        self.slot_or_own(|s| s.priorities.as_ref())
    }
}

/// The downstream peer's address: the request's [`RequestSlots`]', else a standalone
/// [`ClientAddr`].
#[inline]
pub fn client_addr(ext: &Extensions) -> Option<&ClientAddr> {
    SlotsView::new(ext).client_addr()
}

/// The request's route decision: its [`RequestSlots`]', else a standalone
/// [`RouteDecision`].
#[inline]
pub fn route_decision(ext: &Extensions) -> Option<&RouteDecision> {
    SlotsView::new(ext).route_decision()
}

/// The request's destination: its [`RouteDecision`]'s ([`route_decision`]), else a
/// standalone [`RouteDestination`].
#[inline]
pub fn route_destination(ext: &Extensions) -> Option<&RouteDestination> {
    SlotsView::new(ext).route_destination()
}

/// The request's route policy: its [`RouteDecision`]'s ([`route_decision`]), else a
/// standalone [`RoutePolicy`].
#[inline]
pub fn route_policy(ext: &Extensions) -> Option<&RoutePolicy> {
    SlotsView::new(ext).route_policy()
}

/// The balancer's pick: its [`RequestSlots`]', else a standalone [`SelectedUpstream`].
#[inline]
pub fn selected_upstream(ext: &Extensions) -> Option<&SelectedUpstream> {
    SlotsView::new(ext).selected_upstream()
}

/// The endpoint to connect to: the [`SelectedUpstream`]'s ([`selected_upstream`]), else a
/// standalone [`SelectedEndpoint`].
#[inline]
pub fn selected_endpoint(ext: &Extensions) -> Option<&SelectedEndpoint> {
    SlotsView::new(ext).selected_endpoint()
}

/// The cluster of the selected endpoint: the [`SelectedUpstream`]'s ([`selected_upstream`]),
/// else a standalone [`UpstreamCluster`].
#[inline]
pub fn upstream_cluster(ext: &Extensions) -> Option<&UpstreamCluster> {
    SlotsView::new(ext).upstream_cluster()
}

/// The telemetry layer's per-request record: its [`RequestSlots`]', else a standalone
/// [`StreamInfo`]. The router and the balancer record into it when present.
#[inline]
pub fn stream_info(ext: &Extensions) -> Option<&StreamInfo> {
    SlotsView::new(ext).stream_info()
}

/// The hop's trace context: its [`RequestSlots`]', else a standalone [`TraceContext`].
#[inline]
pub fn trace_context(ext: &Extensions) -> Option<&TraceContext> {
    SlotsView::new(ext).trace_context()
}

/// The attempt's timeout mark: its [`RequestSlots`]', else a standalone [`TimeoutMark`].
#[inline]
pub fn timeout_mark(ext: &Extensions) -> Option<&TimeoutMark> {
    SlotsView::new(ext).timeout_mark()
}

/// The hosts of the request's earlier attempts: its [`RequestSlots`]', else a standalone
/// [`PreviousHosts`].
#[inline]
pub fn previous_hosts(ext: &Extensions) -> Option<&PreviousHosts> {
    SlotsView::new(ext).previous_hosts()
}

/// The priorities of the request's earlier attempts: its [`RequestSlots`]', else a
/// standalone [`PreviousPriorities`].
#[inline]
pub fn previous_priorities(ext: &Extensions) -> Option<&PreviousPriorities> {
    SlotsView::new(ext).previous_priorities()
}

/// The workload that sent a request, for `sourceLabels` / `sourceNamespace` matching.
///
/// Written by the proxy (its own workload on outbound; the peer's on inbound) or by an
/// in-process user; read by the router. Absent means the router's configured source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceWorkload {
    /// The source workload's labels.
    pub labels: Arc<crate::selector::Labels>,
    /// The source workload's namespace.
    pub namespace: Arc<str>,
}

/// Builds a response the mesh made itself: the status, the flags as an extension and as
/// the [`RESPONSE_FLAGS_HEADER`] header, and an optional text body, in any [`ReplyBody`],
/// also kept as a [`LocalReplyText`] (for a gRPC caller: [`crate::grpc`]).
pub fn local_reply<R: ReplyBody>(
    status: StatusCode,
    flags: ResponseFlags,
    body: &'static str,
) -> Response<R> {
    let text = bytes::Bytes::from_static(body.as_bytes());
    let mut res = Response::new(R::local(text.clone()));
    *res.status_mut() = status;
    res.extensions_mut().insert(LocalReplyText(text));
    if !body.is_empty() {
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    mark(&mut res, flags);
    res
}

/// Adds `flags` to a response: merged into its [`ResponseFlags`] extension and written to
/// the [`RESPONSE_FLAGS_HEADER`] header.
pub fn mark<B>(res: &mut Response<B>, flags: ResponseFlags) {
    if flags.is_empty() {
        return;
    }
    let merged = res
        .extensions()
        .get::<ResponseFlags>()
        .copied()
        .unwrap_or_default()
        | flags;
    res.extensions_mut().insert(merged);
    res.headers_mut()
        .insert(RESPONSE_FLAGS_HEADER, merged.to_header_value());
}

/// The flags recorded on a response, if any.
pub fn flags_of<B>(res: &Response<B>) -> ResponseFlags {
    res.extensions()
        .get::<ResponseFlags>()
        .copied()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[test]
    fn local_reply_carries_flags_in_extension_and_header() {
        let res: Response<MeshBody<http_body_util::Empty<bytes::Bytes>>> =
            local_reply(StatusCode::NOT_FOUND, ResponseFlags::NO_ROUTE, "no route");
        assert_eq!(res.status(), 404);
        assert_eq!(flags_of(&res), ResponseFlags::NO_ROUTE);
        assert_eq!(res.headers()[RESPONSE_FLAGS_HEADER], "NR");
        assert_eq!(res.body().size_hint().exact(), Some(8));
    }

    #[test]
    fn upstream_resets_are_answered_in_envoy_1_40_s_words() {
        // bodies and lengths as envoy 1.40 answered them (a refused, a closing, a garbling
        // upstream; a pool overflow), with and without a retry before
        use UpstreamReset::*;
        let cases = [
            (
                RemoteConnectionFailure,
                false,
                "remote connection failure",
                98,
            ),
            (
                RemoteConnectionFailure,
                true,
                "remote connection failure",
                121,
            ),
            (ConnectionTermination, false, "connection termination", 95),
            (ProtocolError, false, "protocol error", 87),
            (Overflow, false, "overflow", 81),
        ];
        for (why, retried, words, len) in cases {
            let body = why.body(retried);
            assert_eq!(body.len(), len, "{body}");
            assert!(
                body.starts_with("upstream connect error or disconnect/reset before headers. ")
            );
            assert!(body.ends_with(&format!("reset reason: {words}")));
            assert_eq!(body.contains("retried and the latest "), retried);
            assert_eq!(why.words(), words);
        }
        assert_eq!(crate::limits::OVERFLOW_BODY, Overflow.body(false));
        assert_eq!(
            RemoteRefusedStreamReset.details(),
            "upstream_reset_before_response_started{remote_refused_stream_reset}"
        );
        let res: Response<MeshBody<http_body_util::Empty<bytes::Bytes>>> = ConnectionTermination
            .reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                false,
            );
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[RESPONSE_FLAGS_HEADER], "UC");
        assert_eq!(
            res.extensions().get::<UpstreamReset>(),
            Some(&ConnectionTermination)
        );
        assert_eq!(res.body().size_hint().exact(), Some(95));
    }

    #[test]
    fn accessors_read_merged_and_standalone_extensions() {
        let dest = RouteDestination {
            host: "a".into(),
            subset: None,
            port: Some(80),
        };
        let mut ext = Extensions::new();
        assert!(route_destination(&ext).is_none() && route_policy(&ext).is_none());
        ext.insert(dest.clone());
        ext.insert(RoutePolicy::default());
        assert_eq!(route_destination(&ext), Some(&dest));
        assert!(route_policy(&ext).is_some_and(|p| p.route_name.is_none()));
        let merged = RouteDestination {
            host: "b".into(),
            ..dest
        };
        ext.insert(RouteDecision {
            dest: merged.clone(),
            policy: Arc::new(RoutePolicy {
                route_name: Some("r".into()),
                ..RoutePolicy::default()
            }),
        });
        assert_eq!(route_destination(&ext), Some(&merged));
        assert_eq!(route_policy(&ext).unwrap().route_name.as_deref(), Some("r"));

        let ep = SelectedEndpoint::new("127.0.0.1:1".parse().unwrap());
        let mut ext = Extensions::new();
        assert!(selected_endpoint(&ext).is_none() && upstream_cluster(&ext).is_none());
        ext.insert(ep.clone());
        assert_eq!(selected_endpoint(&ext), Some(&ep));
        assert!(upstream_cluster(&ext).is_none());
        let other = SelectedEndpoint { http2: true, ..ep };
        ext.insert(SelectedUpstream::new(
            other.clone(),
            UpstreamCluster {
                name: "c".into(),
                health: Arc::new(crate::health::HealthCell::detached()),
                pool: UpstreamPool::default(),
                outlier: None,
                limits: None,
            },
        ));
        assert_eq!(selected_endpoint(&ext), Some(&other));
        assert_eq!(&*upstream_cluster(&ext).unwrap().name, "c");
    }

    #[test]
    fn slots_win_over_standalone_extensions() {
        let mut ext = Extensions::new();
        assert!(slots(&ext).is_none());
        assert!(timeout_mark(&ext).is_none() && previous_hosts(&ext).is_none());
        assert!(previous_priorities(&ext).is_none() && selected_upstream(&ext).is_none());
        // standalone values (in-process users, tests) are read when no slot is set
        let standalone = TimeoutMark::new();
        standalone.fire();
        ext.insert(standalone);
        ext.insert(PreviousPriorities::new());
        assert!(timeout_mark(&ext).is_some_and(TimeoutMark::fired));
        assert!(previous_priorities(&ext).is_some());
        let decision = RouteDecision {
            dest: RouteDestination {
                host: "slot".into(),
                subset: None,
                port: None,
            },
            policy: Arc::default(),
        };
        let s = slots_mut(&mut ext);
        s.timeout = Some(TimeoutMark::new());
        s.hosts = Some(PreviousHosts::recording_only());
        s.decision = Some(decision);
        assert!(timeout_mark(&ext).is_some_and(|m| !m.fired()), "the slot's");
        assert!(previous_hosts(&ext).is_some());
        assert_eq!(&*route_destination(&ext).unwrap().host, "slot");
        assert!(route_policy(&ext).is_some());
        assert!(route_decision(&ext).is_some());
        // one extension for every slot: a copy of the head clones one entry
        let copy = ext.clone();
        slots_mut(&mut ext).hosts = None;
        assert!(previous_hosts(&copy).is_some(), "copies are independent");
        assert!(previous_hosts(&ext).is_none());
    }

    #[test]
    fn the_client_address_is_read_from_the_slots_else_from_its_own_extension() {
        let peer = |port| ClientAddr(SocketAddr::from(([10, 0, 0, 1], port)));
        // the listener's: in the slots, the request's only extension
        let mut ext = Extensions::new();
        slots_mut(&mut ext).client = Some(peer(1));
        assert_eq!(ext.len(), 1);
        assert_eq!(client_addr(&ext), Some(&peer(1)));
        // an empty slot with no other extension: none, without a second look-up
        slots_mut(&mut ext).client = None;
        assert_eq!(client_addr(&ext), None);
        // an in-process user's or a test's own extension, beside the slots or alone
        ext.insert(peer(2));
        assert_eq!(client_addr(&ext), Some(&peer(2)), "the standalone value");
        slots_mut(&mut ext).client = Some(peer(3));
        assert_eq!(client_addr(&ext), Some(&peer(3)), "the slot wins");
        let mut own = Extensions::new();
        own.insert(peer(4));
        assert_eq!(client_addr(&own), Some(&peer(4)));
        // the other accessors take the same path: a standalone value beside slots whose
        // own slot is empty is found
        let mut both = Extensions::new();
        slots_mut(&mut both).client = Some(peer(5));
        both.insert(PreviousPriorities::new());
        assert!(previous_priorities(&both).is_some());
        assert!(previous_hosts(&both).is_none());
    }

    #[test]
    fn telemetry_slots_win_over_standalone_and_copies_share_the_record() {
        let ctx = |trace_id| TraceContext {
            trace_id,
            span_id: 1,
            parent_span_id: None,
            sampled: false,
        };
        let mut ext = Extensions::new();
        assert!(stream_info(&ext).is_none() && trace_context(&ext).is_none());
        // inserted on their own (an in-process user, a test): found
        let standalone = StreamInfo::new();
        ext.insert(standalone.clone());
        ext.insert(ctx(1));
        assert_eq!(trace_context(&ext).map(|c| c.trace_id), Some(1));
        stream_info(&ext)
            .unwrap()
            .set_endpoint(&SelectedEndpoint::new("10.0.0.1:1".parse().unwrap()));
        assert_eq!(standalone.attempts(), 1);
        // in the slots (the telemetry layers): the slot's win
        let info = StreamInfo::new();
        let s = slots_mut(&mut ext);
        s.info = Some(info.clone());
        s.trace = Some(ctx(2));
        assert_eq!(trace_context(&ext).map(|c| c.trace_id), Some(2));
        // a copy of the head (the retry layer's) records into the same StreamInfo
        let copy = ext.clone();
        let ep = SelectedEndpoint::new("10.0.0.2:2".parse().unwrap());
        stream_info(&copy).unwrap().set_endpoint(&ep);
        stream_info(&ext).unwrap().set_endpoint(&ep);
        assert_eq!(info.attempts(), 2, "both attempts counted in one record");
        assert_eq!(standalone.attempts(), 1, "the standalone one is not read");
    }

    #[test]
    fn previous_priorities_exclude_after_every_second_attempt() {
        let p = PreviousPriorities::new();
        assert_eq!(p.excluded(), 0);
        p.record(0);
        assert_eq!(p.excluded(), 0, "the first retry uses the unmodified load");
        p.record(0);
        assert_eq!(p.excluded(), 0b1);
        p.record(1);
        assert_eq!(p.excluded(), 0b1, "updated every second attempt");
        p.record(3);
        assert_eq!(p.excluded(), 0b1011);
        p.record(70);
        p.record(70);
        assert_eq!(p.excluded(), 0b1011, "beyond 64: never excluded");
        assert_eq!(p.to_vec(), [0, 0, 1, 3, 70, 70]);
    }

    #[test]
    fn previous_hosts_avoid_unless_recording_only() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let avoid = PreviousHosts::new();
        let record = PreviousHosts::recording_only();
        avoid.record(a);
        record.record(a);
        assert!(avoid.contains(a));
        assert!(!record.contains(a), "recorded, not avoided");
        assert_eq!(record.to_vec(), [a]);
        let first = Arc::new(ClusterLimits::detached(Default::default()));
        let second = Arc::new(ClusterLimits::detached(Default::default()));
        assert!(record.limits().is_none());
        record.set_limits(&first);
        record.clone().set_limits(&second);
        assert!(
            Arc::ptr_eq(record.limits().unwrap(), &first),
            "the first attempt's"
        );
    }

    #[test]
    fn mark_merges_flags() {
        let mut res = Response::new(());
        mark(&mut res, ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        mark(&mut res, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(res.headers()[RESPONSE_FLAGS_HEADER], "URX,UF");
    }
}

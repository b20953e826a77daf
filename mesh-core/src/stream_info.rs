//! The per-request record: what the layers inside decided, for the telemetry layer outside.
//!
//! Envoy keeps a `StreamInfo` per request that every filter writes into (the route chosen,
//! the upstream host, the response flags) and the access log and stats filters read when the
//! stream ends. The layers here cannot see each other, and the telemetry layer outermost
//! never sees the request again once it handed it inwards (the router and the balancer put
//! their decisions in the request's extensions, which travel inwards with the request and are
//! dropped by the connector). [`StreamInfo`] is the way back: a cheap handle (one `Arc`) that
//! the telemetry layer puts in the request's [`RequestSlots`](crate::ext::RequestSlots)
//! ([`RequestSlots::info`](crate::ext::RequestSlots::info)) and keeps a clone of; the layers
//! inside find it with [`stream_info`](crate::ext::stream_info) and record into it, and the
//! telemetry layer reads it when the response completes.
//!
//! - **Written** by the router (`mesh-routing`: its [`RouteDecision`], or the passthrough
//!   [`RouteDestination`]; [`StreamInfo::set_route`], [`StreamInfo::set_destination`]) and
//!   the balancer (`mesh-lb`: the [`SelectedUpstream`] of each attempt, or the passthrough
//!   [`SelectedEndpoint`]; [`StreamInfo::set_upstream`], [`StreamInfo::set_endpoint`]), each
//!   only when a `StreamInfo` is present: without telemetry nothing is recorded and nothing
//!   is allocated. Every record is a reference-count increment, never formatting.
//! - **Written** by the connector (`mesh-transport`), for a record made with
//!   [`StreamInfo::with_connection`] only (a sink reads the access log's or the span's
//!   details): the [`UpstreamConnection`] each attempt went out on (its local address,
//!   whether it is TLS, when the request was handed to it; [`StreamInfo::set_connection`]).
//!   A record made with [`StreamInfo::new`] (Istio's metrics alone) asks for none, and the
//!   connector reads no clock for it.
//! - **Shared** by the attempts of a retried request (the retry layer clones the request's
//!   extensions, and its `RequestSlots` with them, into each attempt): the last attempt's endpoint wins, as Envoy's
//!   `upstream_host` is the last attempt's, and [`StreamInfo::attempts`] counts the picks.
//!   A mirrored copy is built with extensions of its own (`mesh-routing`'s `shadow_request`),
//!   so its picks never overwrite the original's.
//! - **Read** by the telemetry layer (`mesh-telemetry`), through [`StreamInfo::read`] (no
//!   copy) or [`StreamInfo::snapshot`] once the response has ended.
//!
//! ```
//! use mesh_core::ext::{SelectedEndpoint, slots_mut, stream_info};
//! use mesh_core::stream_info::StreamInfo;
//!
//! let info = StreamInfo::new();
//! let mut req = http::Request::new(());
//! slots_mut(req.extensions_mut()).info = Some(info.clone());
//! // … a layer inside:
//! if let Some(i) = stream_info(req.extensions()) {
//!     i.set_endpoint(&SelectedEndpoint::new("10.0.0.7:9080".parse().unwrap()));
//! }
//! let seen = info.snapshot();
//! assert_eq!(seen.endpoint().unwrap().addr.port(), 9080);
//! assert_eq!(seen.attempts, 1);
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::ext::{
    RouteDecision, RouteDestination, RoutePolicy, SelectedEndpoint, SelectedUpstream,
    UpstreamCluster,
};

/// The per-request record (see the [module docs](self)): a handle shared by the telemetry
/// layer, the request and every attempt of it.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    recorded: Mutex<Recorded>,
    /// Whether the connector records the upstream connection ([`StreamInfo::with_connection`]).
    connection: bool,
    /// Whether the connector records the request's headers as it sends them
    /// ([`StreamInfo::with_request_headers`]).
    headers: bool,
    /// The request body bytes an attempt read, the longest count (a body of unknown length
    /// only; [`StreamInfo::note_request_body`]).
    request_body: AtomicU64,
    /// The gRPC messages of the request body an attempt sent, the most of any attempt
    /// ([`StreamInfo::note_request_messages`]).
    request_messages: AtomicU64,
}

/// What the layers recorded, as read by [`StreamInfo::snapshot`].
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The destination the router chose (a route's, or the passthrough host's).
    pub destination: Option<RouteDestination>,
    /// The chosen route's policy (its `route_name`); `None` for passthrough or no route.
    pub policy: Option<Arc<RoutePolicy>>,
    /// Whether the destination is not in the registry (Istio's `PassthroughCluster`).
    pub passthrough: bool,
    /// The last attempt's upstream.
    pub upstream: Option<Upstream>,
    /// How many times the balancer picked an endpoint for the request (1 + retries that
    /// reached the balancer).
    pub attempts: u32,
    /// The connection the last attempt went out on; recorded only for a record made with
    /// [`StreamInfo::with_connection`].
    pub connection: Option<UpstreamConnection>,
    /// The last attempt's request headers as the connector sent them (after every change
    /// the mesh made: route rules, a validated JWT removed, trace headers); recorded only
    /// for a record made with [`StreamInfo::with_request_headers`], and only for a request
    /// that was sent.
    pub request_headers: Option<Arc<http::HeaderMap>>,
}

/// The upstream connection an attempt's request was handed to, as the connector recorded it
/// ([`StreamInfo::set_connection`]): Envoy's `%UPSTREAM_LOCAL_ADDRESS%` and the start of its
/// `x-envoy-upstream-service-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConnection {
    /// The connection's local address (`None`: unknown).
    pub local: Option<SocketAddr>,
    /// Whether the connector originated TLS on it (mTLS or TLS origination).
    pub tls: bool,
    /// When the request was handed to the connection.
    pub sent: Instant,
}

/// The upstream the balancer picked for an attempt.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// An endpoint of a cluster (its endpoint and cluster, shared with the balancer).
    Cluster(SelectedUpstream),
    /// An endpoint outside any cluster (passthrough).
    Endpoint(SelectedEndpoint),
}

// === impl StreamInfo ===

impl StreamInfo {
    /// An empty record.
    pub fn new() -> Self {
        StreamInfo::default()
    }

    /// An empty record that also asks the connector for the upstream connection of each
    /// attempt ([`StreamInfo::set_connection`]): for the sinks that read it (an access log,
    /// a span), not for Istio's metrics.
    pub fn with_connection() -> Self {
        StreamInfo::recording(false)
    }

    /// A record asking for the upstream connection, and for the request's headers as sent
    /// when `headers`.
    fn recording(headers: bool) -> Self {
        StreamInfo(Arc::new(Inner {
            recorded: Mutex::default(),
            connection: true,
            headers,
            request_body: AtomicU64::new(0),
            request_messages: AtomicU64::new(0),
        }))
    }

    /// [`with_connection`](Self::with_connection), and the connector records the request's
    /// headers as it sends them ([`StreamInfo::set_request_headers`]): for a span's header
    /// tags and an access log filter reading `request.headers`.
    pub fn with_request_headers() -> Self {
        StreamInfo::recording(true)
    }

    /// Whether the record asks for the request's headers as sent
    /// ([`StreamInfo::with_request_headers`]).
    #[inline]
    pub fn wants_request_headers(&self) -> bool {
        self.0.headers
    }

    /// Records the headers an attempt's request is sent with (the connector's part, when
    /// [`wants_request_headers`](Self::wants_request_headers)).
    pub fn set_request_headers(&self, headers: &http::HeaderMap) {
        self.recorded().request_headers = Some(Arc::new(headers.clone()));
    }

    /// Whether the record asks for the upstream connection (made with
    /// [`StreamInfo::with_connection`]): the connector reads the clock only then.
    #[inline]
    pub fn wants_connection(&self) -> bool {
        self.0.connection
    }

    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        // one writer at a time in practice (the request's layers run in turn): never contended
        self.0.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the router's decision (the route's destination and policy).
    #[inline]
    pub fn set_route(&self, decision: &RouteDecision) {
        let mut r = self.recorded();
        r.destination = Some(decision.dest.clone());
        r.policy = Some(decision.policy.clone());
        r.passthrough = false;
    }

    /// Records a destination without a route policy; `passthrough` when the host is not in
    /// the registry.
    #[inline]
    pub fn set_destination(&self, dest: &RouteDestination, passthrough: bool) {
        let mut r = self.recorded();
        r.destination = Some(dest.clone());
        r.policy = None;
        r.passthrough = passthrough;
    }

    /// Records an attempt's upstream (the last one wins) and counts the attempt; the
    /// connection of an earlier attempt is forgotten (the new attempt's is recorded when it
    /// gets one).
    #[inline]
    pub fn set_upstream(&self, upstream: &SelectedUpstream) {
        let mut r = self.recorded();
        r.upstream = Some(Upstream::Cluster(upstream.clone()));
        r.attempts += 1;
        if self.0.connection {
            r.connection = None;
        }
    }

    /// Records an attempt's endpoint outside any cluster (passthrough) and counts the
    /// attempt; the connection of an earlier attempt is forgotten.
    #[inline]
    pub fn set_endpoint(&self, endpoint: &SelectedEndpoint) {
        let mut r = self.recorded();
        r.upstream = Some(Upstream::Endpoint(endpoint.clone()));
        r.attempts += 1;
        if self.0.connection {
            r.connection = None;
        }
    }

    /// Records the connection an attempt's request was handed to (the last one wins); the
    /// connector's part, for a record that [wants it](StreamInfo::wants_connection).
    #[inline]
    pub fn set_connection(&self, connection: UpstreamConnection) {
        self.recorded().connection = Some(connection);
    }

    /// Records that an attempt has read `bytes` of a request body whose length was not known
    /// in advance (chunked, an HTTP/2 stream without `content-length`); the connector's
    /// part. The record keeps the longest count: a retry reads the body again from its start.
    #[inline]
    pub fn note_request_body(&self, bytes: u64) {
        self.0.request_body.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The request body bytes counted by [`note_request_body`](Self::note_request_body)
    /// (0 for a body whose length was known in advance: the telemetry layer reads it from
    /// the head).
    pub fn request_body_bytes(&self) -> u64 {
        self.0.request_body.load(Ordering::Relaxed)
    }

    /// Records that an attempt has sent `messages` gRPC messages of the request body
    /// (counted by [`MessageCounter`](crate::grpc::MessageCounter)); the connector's part,
    /// for a gRPC request. The record keeps the most of any attempt (a retry sends the body
    /// again).
    #[inline]
    pub fn note_request_messages(&self, messages: u64) {
        self.0
            .request_messages
            .fetch_max(messages, Ordering::Relaxed);
    }

    /// The gRPC messages [`note_request_messages`](Self::note_request_messages) counted
    /// (Istio's `istio_request_messages_total`).
    pub fn request_messages(&self) -> u64 {
        self.0.request_messages.load(Ordering::Relaxed)
    }

    /// How many attempts the balancer picked an endpoint for so far.
    pub fn attempts(&self) -> u32 {
        self.recorded().attempts
    }

    /// Calls `f` with what was recorded so far, without copying it (the record is locked
    /// meanwhile: `f` must not record into it).
    pub fn read<R>(&self, f: impl FnOnce(&Recorded) -> R) -> R {
        f(&self.recorded())
    }

    /// A copy of what was recorded so far (reference-count increments).
    pub fn snapshot(&self) -> Recorded {
        self.recorded().clone()
    }
}

// === impl Recorded ===

impl Recorded {
    /// The last attempt's endpoint.
    pub fn endpoint(&self) -> Option<&SelectedEndpoint> {
        match self.upstream.as_ref()? {
            Upstream::Cluster(u) => Some(u.endpoint()),
            Upstream::Endpoint(e) => Some(e),
        }
    }

    /// The last attempt's cluster (none for passthrough).
    pub fn cluster(&self) -> Option<&UpstreamCluster> {
        match self.upstream.as_ref()? {
            Upstream::Cluster(u) => Some(u.cluster()),
            Upstream::Endpoint(_) => None,
        }
    }

    /// The chosen route's name (`HTTPRoute.name`), if it has one.
    pub fn route_name(&self) -> Option<&str> {
        self.policy.as_ref()?.route_name.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_record_and_the_last_attempt_wins() {
        let info = StreamInfo::new();
        let attempt = info.clone();
        let dest = RouteDestination {
            host: "reviews.default.svc.cluster.local".into(),
            subset: Some("v1".into()),
            port: Some(9080),
        };
        attempt.set_route(&RouteDecision {
            dest: dest.clone(),
            policy: Arc::new(RoutePolicy {
                route_name: Some("r1".into()),
                ..RoutePolicy::default()
            }),
        });
        attempt.set_endpoint(&SelectedEndpoint::new("10.0.0.1:1".parse().unwrap()));
        attempt.set_endpoint(&SelectedEndpoint::new("10.0.0.2:2".parse().unwrap()));
        let seen = info.snapshot();
        assert_eq!(seen.destination.as_ref(), Some(&dest));
        assert_eq!(seen.route_name(), Some("r1"));
        assert_eq!(
            seen.endpoint().unwrap().addr.port(),
            2,
            "the last attempt's"
        );
        assert!(seen.cluster().is_none());
        assert_eq!(seen.attempts, 2);
        assert!(!seen.passthrough);
        info.set_destination(&dest, true);
        let seen = info.snapshot();
        assert!(seen.passthrough && seen.policy.is_none());
    }

    #[test]
    fn only_a_record_made_with_connection_asks_for_it_and_the_last_one_wins() {
        assert!(!StreamInfo::new().wants_connection());
        let info = StreamInfo::with_connection();
        assert!(info.wants_connection() && info.clone().wants_connection());
        assert!(info.snapshot().connection.is_none());
        let sent = Instant::now();
        let first = UpstreamConnection {
            local: Some("127.0.0.1:40000".parse().unwrap()),
            tls: false,
            sent,
        };
        info.set_connection(first);
        let second = UpstreamConnection {
            local: Some("127.0.0.1:40001".parse().unwrap()),
            tls: true,
            sent,
        };
        info.clone().set_connection(second);
        assert_eq!(info.snapshot().connection, Some(second));
        // a new attempt: no connection until it gets one
        info.set_endpoint(&SelectedEndpoint::new("10.0.0.1:1".parse().unwrap()));
        assert!(info.snapshot().connection.is_none());
    }

    #[test]
    fn an_independent_record_sees_nothing() {
        let a = StreamInfo::new();
        let b = StreamInfo::new();
        a.set_endpoint(&SelectedEndpoint::new("10.0.0.1:1".parse().unwrap()));
        assert!(b.snapshot().upstream.is_none());
        assert_eq!(b.attempts(), 0);
    }
}

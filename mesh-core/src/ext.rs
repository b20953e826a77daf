//! Typed request and response extensions: how layers talk to each other.
//!
//! Layers never call each other; the router writes what it chose into the request's
//! extensions and the layers below read it when present (falling back to their own
//! configuration otherwise). Each type here says who writes it and who reads it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use crate::body::MeshBody;
use crate::flags::{RESPONSE_FLAGS_HEADER, ResponseFlags};
use crate::policy::{FaultPolicy, RetryPolicy};

/// The destination the router chose for a request: a service host, an optional subset, and
/// the service port.
///
/// Written by the router (`mesh-routing`); read by the balancer (`mesh-lb`).
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
/// Written by the router; read by the timeout, retry and fault layers (`mesh-resilience`),
/// which fall back to their own configuration when it is absent.
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
}

/// The endpoint the balancer picked: the address to connect to and how.
///
/// Written by the balancer (`mesh-lb`); read by the connector (`mesh-proxy`, `mesh-tls`),
/// outlier detection and telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedEndpoint {
    /// Address and port to connect to.
    pub addr: SocketAddr,
    /// Whether the upstream speaks HTTP/2 (service port protocol `HTTP2`/`GRPC`, or
    /// `h2UpgradePolicy: UPGRADE`); otherwise HTTP/1.1.
    pub http2: bool,
    /// The endpoint's service account, when known (for SPIFFE peer verification).
    pub service_account: Option<Arc<str>>,
    /// Whether the endpoint carries `security.istio.io/tlsMode: istio` (has a sidecar).
    pub istio_tls: bool,
}

/// The downstream peer's address (the client of this hop), for `consistentHash.useSourceIp`
/// and access logs.
///
/// Written by the proxy's listener for every request of a connection, or by an in-process
/// user; read by the balancer (`mesh-lb`). Absent: source-IP hashing has no key (a random
/// endpoint is picked, as Envoy does when a hash policy yields nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The cluster the balancer picked the [`SelectedEndpoint`] from: its Istio name
/// (`outbound|9080|v1|reviews.default.svc.cluster.local`) and the endpoint's health cell.
///
/// Written by the balancer (`mesh-lb`) beside [`SelectedEndpoint`]; read by outlier
/// detection (which ejects the endpoint through the cell; see [`crate::health`]) and
/// telemetry (Envoy's `upstream_cluster`).
#[derive(Debug, Clone)]
pub struct UpstreamCluster {
    /// The Istio cluster name ([`crate::health::cluster_name`]).
    pub name: Arc<str>,
    /// The selected endpoint's health cell in this cluster.
    pub health: Arc<crate::health::HealthCell>,
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
/// the [`RESPONSE_FLAGS_HEADER`] header, and an optional text body.
pub fn local_reply<B>(
    status: StatusCode,
    flags: ResponseFlags,
    body: &'static str,
) -> Response<MeshBody<B>> {
    let mut res = Response::new(MeshBody::local(bytes::Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
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
    fn mark_merges_flags() {
        let mut res = Response::new(());
        mark(&mut res, ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        mark(&mut res, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(res.headers()[RESPONSE_FLAGS_HEADER], "UF,URX");
    }
}

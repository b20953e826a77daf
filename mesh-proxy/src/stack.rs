//! The service stack each worker runs: the mesh's layers around the engine's connector.
//!
//! ```text
//! request ─► Trace (traceparent, B3, x-request-id) ─► Record (StreamInfo; at the end of
//!            the response: Istio's metrics) ─► GrpcLocalReply (the mesh's own answers
//!            to a gRPC caller as gRPC statuses) ─► Route (VirtualService: match,
//!            rewrite, redirect, …) ─► RateLimit (LocalRateLimit) ─► Fault (fault: delay,
//!            abort) ─► Timeout (timeout) ─► Retry (retries) ─► Mirror (mirror, mirrors) ─►
//!            Lb (DestinationRule, subsets, endpoints, balancer) ─► CircuitBreaker
//!            (connectionPool limits, per cluster) ─► Outlier (outlierDetection) ─►
//!            Connector (per-worker pool) ─► upstream
//! ```
//!
//! Trace propagation comes first, as in Envoy's connection manager: every request, a local
//! reply's too, has its hop's trace context and an `x-request-id` before anything decides
//! about it (`ProxyBootstrap.tracing.sampling`, or a Telemetry's `randomSamplingPercentage`
//! for the side: the inbound stacks have a trace layer of their own; a reload changes the
//! rates).
//!
//! The record layer comes right after it ([`crate::telemetry`]): it sees every request with
//! its trace context, local replies included, puts the per-request record
//! ([`mesh_core::stream_info::StreamInfo`]) in its `RequestSlots` for the router and the
//! balancer to write their decisions into, and hands the whole exchange to the telemetry
//! sinks (Istio's standard metrics) when the response body ends.
//!
//! The rate limit sits after routing (the route chooses the limit) and before everything
//! else, as Envoy's local rate limit filter before its fault filter and router: a limited
//! request is never delayed, retried or sent upstream. Its buckets are shared by every
//! worker (one atomic each) and built anew with every configuration load.
//!
//! Fault injection sits before the timeout, as Envoy's fault filter sits before its router: an
//! injected delay does not count against the route timeout, and an abort never reaches the
//! layers below. The route timeout bounds all the attempts of a retried request; each attempt
//! goes through the mirror (which fires once) and the balancer (which picks its endpoint,
//! avoiding the ones tried before), then the circuit breaker of the cluster picked (whose
//! counts all workers share; it also hands the retry layer the cluster's retry budget);
//! outlier detection, below it, judges each attempt on the endpoint it went to (an overflow
//! is not the endpoint's fault) and ejects the endpoint through the health cell the
//! balancers of every worker read.
//!
//! The request body becomes a [`TeeBody`] on the way in ([`IntoRequestBody`]), so that the
//! mirror layer can hand mirrored copies the client's body as it streams; the timeout layer
//! wraps it in an [`EndBody`] (which tells the route timeout when the client's body has
//! ended, for a request with a body on a route with a timeout), and the retry layer in a
//! [`ReplayBody`] (recorded for retries when the request has a body and may be retried);
//! [`PlainBody`] hands the connector the client's own body again when nothing copied,
//! recorded or watched it.
//!
//! The layers are built once ([`Layers::new`]) and shared by every worker; each worker wraps
//! its own connector with them ([`Layers::stack`]), so per-worker state (balancer cursors,
//! pools) stays on its thread. The route table comes built from the configuration pipeline
//! ([`crate::pipeline`]), which refuses a configuration whose table cannot be built; a
//! reload ([`Layers::store`]) swaps the balancer's snapshot and the route table atomically,
//! and in-flight requests finish on what they loaded.

use std::sync::Arc;

use mesh_core::compile::Snapshot;
use mesh_core::envoy_headers::EnvoyHeaderPolicy;
use mesh_core::model::networking::Resolution;
use mesh_lb::discover::{
    Chain, Discover, DnsDiscover, HickoryResolver, Resolver, StaticDiscover, SystemResolver,
};
use mesh_lb::{Lb, LbLayer};
use mesh_routing::{Route, RouteLayer, RouteTable, RouteTableHandle};
use tokio::sync::Notify;
use tower_layer::Layer;

use crate::engine::{Connector, RequestBody, WorkerContext};
use hyper::body::Incoming;
use mesh_core::grpc::GrpcLocalReply;
use mesh_core::hcm::ConnectionManagerLayer;
use mesh_core::replay::ReplayBody;
use mesh_core::request_end::EndBody;
use mesh_resilience::{
    CircuitBreaker, CircuitBreakerLayer, Fault, FaultLayer, Outlier, OutlierLayer, RateLimit,
    RateLimitLayer, Retry, RetryLayer, Timeout, TimeoutLayer,
};
use mesh_routing::{Mirror, MirrorLayer, TeeBody};
use mesh_telemetry::record::{Record, RecordLayer};
use mesh_telemetry::trace::{Trace, TraceConfig, TraceLayer};
use mesh_tls::authz::{Authz, AuthzLayer};
use mesh_tls::jwt::{JwtAuthn, JwtAuthnLayer};

use crate::gateway::{HttpsRedirect, HttpsRedirectLayer};

/// The type of a worker's stack, around the innermost service `S`: the engine's
/// [`Connector`] in the proxy, any client in-process (`mesh-stack`, through
/// [`Layers::wrap`]). Every layer writes its per-request values into one request
/// extension, [`RequestSlots`](mesh_core::ext::RequestSlots): the trace and record layers
/// their `TraceContext` and `StreamInfo`, the router its `RouteDecision`, the timeout and
/// retry layers their `TimeoutMark`, `PreviousHosts` and `ReturnHead`, the balancer its
/// `SelectedUpstream` (one more extension with mirrors).
pub type MeshStack<S = Connector> = IntoRequestBody<
    Trace<
        Record<
            GrpcLocalReply<
                Route<
                    RateLimit<
                        Fault<
                            Timeout<
                                Retry<BoxFuture<Mirror<Lb<CircuitBreaker<Outlier<PlainBody<S>>>>>>>,
                            >,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// The type of a gateway listener's stack ([`crate::gateway`]): the outbound stack with
/// `httpsRedirect`, JWT validation (RequestAuthentication) and authorization
/// (AuthorizationPolicy) between the record layer and the router.
pub type GatewayStack = crate::gateway::GatewayFront<
    IntoRequestBody<
        Trace<
            Record<
                GrpcLocalReply<
                    HttpsRedirect<
                        JwtAuthn<
                            Authz<
                                Route<
                                    RateLimit<
                                        Fault<
                                            Timeout<
                                                Retry<
                                                    Mirror<
                                                        Lb<
                                                            CircuitBreaker<
                                                                Outlier<PlainBody<Connector>>,
                                                            >,
                                                        >,
                                                    >,
                                                >,
                                            >,
                                        >,
                                    >,
                                >,
                            >,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// What one gateway listener adds to the shared layers.
#[derive(Clone)]
pub struct GatewayLayers {
    /// The listener's router (its own table, swapped on reload).
    pub route: RouteLayer,
    /// `httpsRedirect` of its plaintext servers.
    pub redirect: HttpsRedirectLayer,
    /// Its route-level rate limits (no listener-wide bucket).
    pub rate_limit: RateLimitLayer,
    /// The workload's RequestAuthentications.
    pub jwt: Arc<arc_swap::ArcSwap<mesh_tls::jwt::Authenticator>>,
    /// The workload's AuthorizationPolicies.
    pub authz: Arc<arc_swap::ArcSwap<mesh_tls::authz::Authorizer>>,
    /// The listener's address (`destination.ip`/`destination.port` for policies).
    pub listener: std::net::SocketAddr,
}

/// The body the layers see: the client's, which mirrored copies can share.
pub type LayerBody = TeeBody<Incoming>;

/// Turns the engine's `Request<Incoming>` (in-process: any `Request<B>`) into a
/// `Request<TeeBody<B>>` for the layers inside (a move; nothing is allocated), so that the
/// mirror layer can copy the body.
#[derive(Debug, Clone)]
pub struct IntoRequestBody<S>(S);

impl<S> IntoRequestBody<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        IntoRequestBody(inner)
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for IntoRequestBody<S>
where
    S: tower_service::Service<http::Request<TeeBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<B>) -> S::Future {
        self.0.call(req.map(TeeBody::new))
    }
}

/// Puts the future of the service inside on the heap: in [`MeshStack`], the mirror's (with the
/// balancer's, the circuit breaker's, outlier detection's and the innermost service's inside
/// it), so that the retry layer and every layer above it build and move their futures
/// around a pointer instead of those layers' state (hundreds of bytes copied at every layer
/// otherwise): one allocation per attempt, fewer bytes copied per request.
#[derive(Debug, Clone)]
pub struct BoxFuture<S>(S);

impl<S> BoxFuture<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        BoxFuture(inner)
    }
}

impl<S, R> tower_service::Service<R> for BoxFuture<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<S::Future>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: R) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}

/// Hands the connector the client's own body when no mirror copied it, no retry recorded it
/// and no route timeout waits for its end (no allocation for hyper's `Incoming`, which
/// [`RequestBody::new`] keeps as it is), the tee, the copy, the recording or the watched
/// body otherwise.
#[derive(Debug, Clone)]
pub struct PlainBody<S>(S);

impl<S> PlainBody<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        PlainBody(inner)
    }
}

impl<S, B> tower_service::Service<http::Request<ReplayBody<EndBody<TeeBody<B>>>>> for PlainBody<S>
where
    S: tower_service::Service<http::Request<RequestBody>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<mesh_transport::RequestBodyError>,
    ReplayBody<EndBody<TeeBody<B>>>: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    <ReplayBody<EndBody<TeeBody<B>>> as http_body::Body>::Error:
        Into<mesh_transport::RequestBodyError>,
    EndBody<TeeBody<B>>: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    <EndBody<TeeBody<B>> as http_body::Body>::Error: Into<mesh_transport::RequestBodyError>,
    TeeBody<B>: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    <TeeBody<B> as http_body::Body>::Error: Into<mesh_transport::RequestBodyError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReplayBody<EndBody<TeeBody<B>>>>) -> S::Future {
        self.0.call(req.map(|b| match b.into_plain() {
            Ok(watched) => match watched.into_plain() {
                Ok(tee) => match tee.into_plain() {
                    Ok(plain) => RequestBody::new(plain),
                    Err(tee) => RequestBody::new(tee),
                },
                Err(watched) => RequestBody::new(watched),
            },
            Err(replay) if replay.is_empty_body() => RequestBody::empty(),
            Err(replay) => RequestBody::new(replay),
        }))
    }
}

/// The shared layers of the outbound stack.
#[derive(Debug, Clone)]
pub struct Layers {
    trace: TraceLayer,
    /// The inbound stacks' trace layer: the server side's sampling (a Telemetry may set
    /// each side's, [`mesh_core::telemetry`]).
    inbound_trace: TraceLayer,
    record: RecordLayer,
    telemetry: Arc<crate::telemetry::Telemetry>,
    routes: RouteTableHandle,
    route_layer: RouteLayer,
    rate_limit: RateLimitLayer,
    /// The inbound listeners' limit (`context: SIDECAR_INBOUND`), shared by the inbound
    /// stacks of every worker and listener.
    inbound_rate_limit: RateLimitLayer,
    fault: FaultLayer,
    timeout: TimeoutLayer,
    retry: RetryLayer,
    mirror: MirrorLayer,
    lb: LbLayer,
    outlier: OutlierLayer,
    breaker: CircuitBreakerLayer,
    /// The inbound listeners' clusters (their connection pools), swapped on reload.
    inbound_clusters: Arc<crate::inbound::InboundClusters>,
    dns: Arc<DnsRefresher>,
    /// Each kind of listener's connection-manager headers, `spec.proxyHeaders` applied
    /// (read at start-up).
    hcm: ListenerKinds,
}

/// The [`ConnectionManagerLayer`] of each kind of listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerKinds {
    pub(crate) outbound: ConnectionManagerLayer,
    pub(crate) inbound: ConnectionManagerLayer,
    pub(crate) gateway: ConnectionManagerLayer,
}

impl ListenerKinds {
    /// Istio's headers per listener, with `spec.proxyHeaders`' switches.
    pub(crate) fn new(h: &mesh_core::model::bootstrap::ProxyHeaders) -> Self {
        // (`Some(None)`: no server of the proxy's; `None`: Istio's names)
        let server: Option<Option<&'static http::HeaderValue>> = match &h.server {
            Some(s) if s.disabled => Some(None),
            Some(s) => s
                .value
                .as_deref()
                .and_then(mesh_core::hcm::server_name)
                .map(Some),
            None => None,
        };
        let apply = |base: ConnectionManagerLayer| {
            let base = base.with_debug_headers(h.envoy_debug_headers());
            match server {
                Some(s) => base.with_server(s),
                None => base,
            }
        };
        ListenerKinds {
            outbound: apply(ConnectionManagerLayer::sidecar_outbound()),
            inbound: apply(ConnectionManagerLayer::sidecar_inbound(|ext| {
                ext.get::<mesh_transport::tls::PeerTls>().is_some()
            })),
            gateway: apply(ConnectionManagerLayer::gateway()),
        }
    }
}

/// Resolves the hostnames of `resolution: DNS` ServiceEntries on a thread of its own, with
/// [`HickoryResolver`] (`/etc/resolv.conf`, `/etc/hosts`; [`SystemResolver`] when the
/// configuration cannot be read): each name when the TTL of its records runs out (at most
/// every 30s, Envoy's `dns_refresh_rate`; see [`DnsDiscover`]), and new names at once after
/// a reload.
///
/// The thread starts with the first configuration that has a DNS service: a proxy whose
/// services are all STATIC runs no resolver thread at all.
#[derive(Debug)]
struct DnsRefresher {
    dns: Arc<DnsDiscover>,
    now: Arc<Notify>,
    started: std::sync::atomic::AtomicBool,
}

/// The DNS resolver, built on first use: a proxy whose configuration has no DNS service
/// never reads the resolver configuration nor pages in the resolver's code (idle RSS is
/// mostly the binary's touched text).
#[derive(Debug, Default)]
struct LazyResolver(std::sync::OnceLock<Arc<dyn Resolver>>);

impl LazyResolver {
    fn get(&self) -> &Arc<dyn Resolver> {
        self.0.get_or_init(|| match HickoryResolver::from_system_conf() {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the DNS configuration; using the system resolver");
                Arc::new(SystemResolver)
            }
        })
    }
}

impl Resolver for LazyResolver {
    fn resolve(&self, host: &str) -> mesh_lb::discover::ResolveFuture {
        self.get().resolve(host)
    }

    fn resolve_with_ttl(&self, host: &str) -> mesh_lb::discover::ResolvedFuture {
        self.get().resolve_with_ttl(host)
    }
}

/// How long start-up waits for the first DNS answers (then DNS services answer `503 UH`
/// until their names resolve, as a warming Envoy cluster).
const FIRST_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(5);

impl DnsRefresher {
    fn new(snapshot: &Snapshot) -> Arc<DnsRefresher> {
        let resolver: Arc<dyn Resolver> = Arc::new(LazyResolver::default());
        let dns = Arc::new(DnsDiscover::new(resolver));
        dns.set_snapshot(snapshot);
        let r = Arc::new(DnsRefresher {
            dns,
            now: Arc::new(Notify::new()),
            started: std::sync::atomic::AtomicBool::new(false),
        });
        r.start_if_needed(snapshot);
        r
    }

    /// Starts the thread (once) when `snapshot` has a DNS service, and waits (at most
    /// [`FIRST_RESOLUTION`]) for its first answers; otherwise asks a running thread to
    /// resolve new names now.
    fn start_if_needed(&self, snapshot: &Snapshot) {
        use std::sync::atomic::Ordering;
        let has_dns = snapshot
            .services
            .iter()
            .any(|s| matches!(s.resolution, Resolution::Dns | Resolution::DnsRoundRobin));
        if self.started.load(Ordering::Acquire) {
            self.now.notify_one();
            return;
        }
        if !has_dns || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let (d, n) = (self.dns.clone(), self.now.clone());
        let spawned = std::thread::Builder::new()
            .name("mesh-dns".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    d.refresh().await;
                    let _ = first_tx.send(());
                    loop {
                        // until the earliest deadline of the names (with no name, until a reload)
                        let next = d.next_refresh();
                        let sleep = tokio::time::sleep_until(
                            next.unwrap_or_else(tokio::time::Instant::now),
                        );
                        tokio::select! {
                            _ = sleep, if next.is_some() => {}
                            _ = n.notified() => {}
                        }
                        d.refresh_due().await;
                    }
                });
            });
        if spawned.is_ok() {
            let _ = first_rx.recv_timeout(FIRST_RESOLUTION);
        }
    }
}

// === impl Layers ===

impl Layers {
    /// The layers of a sidecar (`mesh` gateway): its route table (built by
    /// [`crate::pipeline`]) and a balancer over the snapshot.
    pub fn new(snapshot: &Arc<Snapshot>, table: RouteTable) -> Layers {
        Layers::with_sources(snapshot, table, Vec::new())
    }

    /// The layers of a sidecar whose balancer asks `sources` (in order) for a service's
    /// endpoints before DNS and the snapshot's STATIC endpoints: an in-process service's
    /// own discovery (a `mesh_lb::discover::FeedDiscover`), a Kubernetes watch.
    pub fn with_sources(
        snapshot: &Arc<Snapshot>,
        table: RouteTable,
        mut sources: Vec<Arc<dyn Discover>>,
    ) -> Layers {
        let routes = RouteTableHandle::new(table);
        let dns = DnsRefresher::new(snapshot);
        sources.push(dns.dns.clone());
        sources.push(Arc::new(StaticDiscover));
        let discover: Arc<dyn Discover> = Arc::new(Chain::new(sources));
        let lb = LbLayer::builder(snapshot.clone())
            .discover(discover)
            .build();
        // `outbound.trustEnvoyHeaders`: the application's x-envoy-* overrides (read at start-up)
        let envoy_headers = match &snapshot.bootstrap.outbound {
            Some(o) if o.trust_envoy_headers => EnvoyHeaderPolicy::Honour,
            _ => EnvoyHeaderPolicy::Strip,
        };
        // what the Telemetries make of the telemetry, worked out once per configuration
        let view = mesh_core::telemetry::resolve(snapshot);
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(snapshot, &view));
        let sampling = &view.tracing;
        Layers {
            record: telemetry.outbound(),
            telemetry,
            trace: TraceLayer::new(
                TraceConfig::default().with_sampling_percent(sampling.client.sampling),
            ),
            inbound_trace: TraceLayer::new(
                TraceConfig::default().with_sampling_percent(sampling.server.sampling),
            ),
            route_layer: RouteLayer::new(routes.clone()),
            rate_limit: RateLimitLayer::new(),
            inbound_rate_limit: RateLimitLayer::new(),
            fault: FaultLayer::new(),
            timeout: TimeoutLayer::new().with_envoy_headers(envoy_headers),
            // the connector puts each retriable request's head back (in the request's
            // `ReturnHead`) when it is done with it: no copy of the head before the first
            // attempt
            retry: RetryLayer::new()
                .with_envoy_headers(envoy_headers)
                .with_heads_handed_back()
                // Istio's virtual hosts set `include_request_attempt_count`
                // (`proxyHeaders.attemptCount.disabled` turns it off)
                .with_attempt_count(snapshot.bootstrap.proxy_headers.attempt_count()),
            // Mirrored requests run as tasks of the worker that received the original (the
            // engine's workers are current-thread runtimes), on that worker's pool.
            mirror: MirrorLayer::new(|task| {
                tokio::spawn(task);
            }),
            hcm: ListenerKinds::new(&snapshot.bootstrap.proxy_headers),
            routes,
            lb,
            outlier: OutlierLayer::new(),
            breaker: CircuitBreakerLayer::new(),
            inbound_clusters: Arc::new(crate::inbound::InboundClusters::new(snapshot)),
            dns,
        }
        .with_listener_limit(snapshot)
    }

    /// The listener-wide `LocalRateLimit` of the snapshot (a new bucket), or none.
    fn with_listener_limit(self, snapshot: &Snapshot) -> Layers {
        self.rate_limit
            .store(mesh_core::ratelimit::listener_policy(snapshot));
        self.inbound_rate_limit
            .store(mesh_core::ratelimit::inbound_policy(snapshot));
        self
    }

    /// The inbound listeners' `LocalRateLimit` layer (`context: SIDECAR_INBOUND`; a reload
    /// replaces its bucket).
    pub fn inbound_rate_limit(&self) -> RateLimitLayer {
        self.inbound_rate_limit.clone()
    }

    /// The inbound listeners' clusters ([`crate::inbound`]).
    pub fn inbound_clusters(&self) -> &Arc<crate::inbound::InboundClusters> {
        &self.inbound_clusters
    }

    /// The circuit breakers' counts of every cluster with limits, outbound (the
    /// balancer's) and inbound, for `/clusters` and `/stats/prometheus`.
    pub fn circuit_breakers(&self) -> Vec<(Arc<str>, Arc<mesh_core::limits::ClusterCounters>)> {
        let mut all = self.lb.circuit_breakers();
        all.extend(self.inbound_clusters.circuit_breakers());
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Applies a new snapshot and its route table: swaps the balancer's snapshot, then the
    /// table.
    pub fn store(&self, snapshot: &Arc<Snapshot>, table: RouteTable) {
        // the balancer first: new routes may name services only the new snapshot has
        self.lb.store(snapshot.clone());
        // route and host limits come with the table; the listener's bucket is new too
        self.rate_limit
            .store(mesh_core::ratelimit::listener_policy(snapshot));
        self.inbound_rate_limit
            .store(mesh_core::ratelimit::inbound_policy(snapshot));
        self.inbound_clusters.store(snapshot);
        self.routes.store(table);
        // what the Telemetries make of the telemetry, worked out once per configuration
        let view = mesh_core::telemetry::resolve(snapshot);
        self.trace
            .set_sampling_percent(view.tracing.client.sampling);
        self.inbound_trace
            .set_sampling_percent(view.tracing.server.sampling);
        self.telemetry.store(snapshot, &view);
        // new DNS names resolve now rather than at the next period (the first DNS service
        // starts the resolver thread)
        self.dns.start_if_needed(snapshot);
    }

    /// One worker's stack around its connector: the outbound listener's, with the headers
    /// an Istio sidecar's outbound listener sets ([`ConnectionManagerLayer::sidecar_outbound`]:
    /// `server: envoy`, `x-forwarded-proto: http` when absent).
    pub fn stack(&self, ctx: &WorkerContext) -> MeshStack {
        self.wrap_with(ctx.connector(), self.hcm.outbound)
    }

    /// The stack around any innermost service: the proxy's worker stacks
    /// ([`stack`](Self::stack)) and `mesh-stack`'s in-process clients are this one
    /// assembly. `inner` gets the request with the balancer's
    /// [`SelectedUpstream`](mesh_core::ext::SelectedUpstream) in its extensions (read it with
    /// [`selected_upstream`](mesh_core::ext::selected_upstream)) and a
    /// [`RequestBody`].
    ///
    /// No listener header is set (an in-process client has no listener): gRPC local replies
    /// only.
    pub fn wrap<S>(&self, inner: S) -> MeshStack<S> {
        self.wrap_with(inner, ConnectionManagerLayer::default())
    }

    fn wrap_with<S>(&self, inner: S, hcm: ConnectionManagerLayer) -> MeshStack<S> {
        let lb = self
            .lb
            .layer(self.breaker.layer(self.outlier.layer(PlainBody(inner))));
        // boxed: the layers above move a pointer rather than the lower layers' futures
        let mirror = BoxFuture(self.mirror.layer(lb));
        let retry = self.retry.layer(mirror);
        let fault = self.fault.layer(self.timeout.layer(retry));
        IntoRequestBody(self.trace.layer(self.record.layer(
            // local replies to gRPC requests in gRPC's form, and the listener's headers,
            // before the record reads them
            hcm.layer(self.route_layer.layer(self.rate_limit.layer(fault))),
        )))
    }

    /// One worker's stack for a gateway listener ([`crate::gateway`]): the outbound
    /// layers around its connector, with the listener's router, `httpsRedirect`, and the
    /// workload's JWT validation and authorization before routing. Telemetry reports as
    /// `source`, as Istio's gateways do.
    pub fn gateway_stack(&self, ctx: &WorkerContext, gw: &GatewayLayers) -> GatewayStack {
        let lb = self.lb.layer(
            self.breaker
                .layer(self.outlier.layer(PlainBody(ctx.connector()))),
        );
        let mirror = self.mirror.layer(lb);
        let retry = self.retry.layer(mirror);
        let fault = self.fault.layer(self.timeout.layer(retry));
        let routed = gw.route.layer(gw.rate_limit.layer(fault));
        let policed = JwtAuthnLayer::shared(gw.jwt.clone())
            .layer(AuthzLayer::shared(gw.authz.clone()).layer(routed));
        crate::gateway::GatewayFront::new(
            IntoRequestBody(
                self.trace.layer(
                    self.record
                        .layer(self.hcm.gateway.layer(gw.redirect.layer(policed))),
                ),
            ),
            gw.listener,
        )
    }

    /// These layers with a retry layer that copies each retriable request's head itself
    /// ([`RetryLayer::with_heads_copied`]) rather than asking the innermost service for it
    /// back: for innermost services that would have to copy the head to hand it back
    /// (`mesh-stack`'s clients other than the connector). Everything else is shared with
    /// `self` (routes, balancer, limits, telemetry, reloads).
    pub fn with_heads_copied(&self) -> Layers {
        Layers {
            retry: self.retry.clone().with_heads_copied(),
            ..self.clone()
        }
    }

    /// The proxy's telemetry: the record layers' sinks, the metrics.
    pub fn telemetry(&self) -> &Arc<crate::telemetry::Telemetry> {
        &self.telemetry
    }

    /// The inbound listeners' connection-manager headers ([`ConnectionManagerLayer::sidecar_inbound`]
    /// with `spec.proxyHeaders` applied).
    pub fn inbound_connection_manager(&self) -> ConnectionManagerLayer {
        self.hcm.inbound
    }

    /// The outbound stack's trace layer (the client side's sampling).
    pub fn trace(&self) -> &TraceLayer {
        &self.trace
    }

    /// The inbound stacks' trace layer (the server side's sampling).
    pub fn inbound_trace(&self) -> &TraceLayer {
        &self.inbound_trace
    }

    /// The balancer layer (health, snapshot).
    pub fn lb(&self) -> &LbLayer {
        &self.lb
    }

    /// The route table handle ([`store`](Self::store) swaps it with the snapshot).
    pub fn routes(&self) -> &RouteTableHandle {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    /// Each layer below the retry layer moves the request on (a `memcpy` of its size): its
    /// body wrappers stay small (a `ReplayBody` holds its recording boxed; 472 bytes when it
    /// was inline).
    #[test]
    fn a_request_below_the_retry_layer_stays_small() {
        let size = std::mem::size_of::<http::Request<ReplayBody<EndBody<TeeBody<RequestBody>>>>>();
        assert!(size <= 320, "{size} bytes");
    }

    /// Every layer builds its future around the one inside and moves it up: the whole
    /// stack's future is what the engine moves per request. The retry layer's future
    /// carries a pointer to a shared clone of the services below (not the services, 550
    /// bytes), and the layers below the retry layer are boxed ([`BoxFuture`]).
    #[tokio::test]
    async fn the_stack_s_future_stays_small() {
        let mut loader = mesh_core::load::Loader::new();
        loader.add_str(
            "mesh.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews}\n\
             spec:\n  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  \
             ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
             endpoints: [{address: 10.0.0.7}]\n",
        );
        let built = crate::pipeline::build(loader).expect("builds");
        let layers = Layers::new(&built.compiled.snapshot, built.routes);
        let mut stack = layers.wrap(Connector::new(std::time::Duration::from_secs(1)));
        let req = http::Request::get("http://reviews:9080/")
            .body(RequestBody::empty())
            .expect("a request");
        let fut = stack.call(req);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 256, "the stack's future is {size} bytes");
    }
}

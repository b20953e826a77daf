//! `mesh-lb`: discovery, subsets and load balancing for the mesh SDK, with Istio's
//! DestinationRule semantics.
//!
//! [`LbLayer`] is a tower layer placed after the router: it reads the [`RouteDestination`]
//! the router chose (a host, a subset, a port), finds the service and the subset's
//! endpoints, picks one with the algorithm the DestinationRule asks for, and writes it as
//! a [`SelectedUpstream`] (the [`SelectedEndpoint`] and its [`UpstreamCluster`]) for the
//! connector, which reads it with [`selected_endpoint`].
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use mesh_core::MeshBody;
//! use mesh_core::compile::compile;
//! use mesh_core::ext::{RouteDestination, selected_endpoint};
//! use mesh_core::load::Loader;
//! use mesh_lb::LbLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let mut l = Loader::new();
//! l.add_str("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews.default.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   resolution: STATIC
//!   ports: [{number: 9080, name: http, protocol: HTTP}]
//!   endpoints:
//!   - {address: 10.0.0.1, labels: {version: v1}}
//!   - {address: 10.0.0.2, labels: {version: v2}}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: {name: reviews}
//! spec:
//!   host: reviews
//!   trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
//!   subsets:
//!   - {name: v2, labels: {version: v2}}
//! "#);
//! let layer = LbLayer::new(Arc::new(compile(l.finish().resources)));
//!
//! // the connector: here it just reports where it would connect
//! let connector = service_fn(|req: Request<()>| async move {
//!     let ep = selected_endpoint(req.extensions()).unwrap();
//!     Ok::<_, Infallible>(Response::new(MeshBody::<String>::inner(ep.addr.to_string())))
//! });
//! let svc = ServiceBuilder::new().layer(layer.clone()).service(connector);
//!
//! let mut req = Request::new(());
//! req.extensions_mut().insert(RouteDestination {
//!     host: "reviews.default.svc.cluster.local".into(),
//!     subset: Some("v2".into()),
//!     port: None,
//! });
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let res = svc.oneshot(req).await.unwrap();
//! let MeshBody::Inner(addr) = res.into_body() else { unreachable!() };
//! assert_eq!(addr, "10.0.0.2:9080");
//! # });
//! ```
//!
//! # What it does
//!
//! * **Discovery** ([`discover`]): endpoints of STATIC ServiceEntries and their
//!   WorkloadEntries, DNS and DNS_ROUND_ROBIN resolution refreshed periodically, and sets
//!   pushed by a control plane, behind the small [`Discover`](discover::Discover) trait.
//! * **Subsets**: the endpoints whose labels contain all of the subset's labels, with the
//!   subset's merged traffic policy (`Snapshot::traffic_policy`, port-level settings
//!   included) choosing the balancer.
//! * **Balancers**: `ROUND_ROBIN` (weighted by endpoint weight, EDF-style schedule),
//!   `RANDOM`, `LEAST_REQUEST` (the default; `LEAST_CONN` is an alias; power of two
//!   choices, Envoy's `weight / (active + 1)` when weights differ), `PASSTHROUGH`, and
//!   `consistentHash` with ring hash or Maglev tables built exactly as Envoy's ([`hash`]).
//!   Hash keys: a header, a cookie (generated with a `Set-Cookie` when absent and a `ttl`
//!   is set), the source IP ([`ClientAddr`]) or a query parameter.
//! * **Peak-EWMA** (extension beyond Istio, Linkerd's default): power of two choices on
//!   `latency × (active + 1)`, for the hosts listed in [`LbConfig::peak_ewma_hosts`].
//! * **Sticky sessions across weighted routes**: the generated cookie is
//!   [`mesh_core::sticky::encode`]`(subset, key)`, so the router can keep the client on its
//!   subset and the balancer hashes on `key` to keep it on its endpoint.
//! * **Locality**: `distribute`, `failover` and
//!   `failoverPriority` relative to `ProxyBootstrap.workload.locality`, with Envoy's priority
//!   load (overprovisioning 1.4) and panic threshold (`outlierDetection.minHealthPercent`, or
//!   Envoy's 50% without outlier detection). As in Istio, failover priorities (explicit or
//!   the default region/zone/subzone ones) only apply when the destination has
//!   `outlierDetection`: without it nothing marks endpoints unhealthy, so Istio does not
//!   program them. `distribute` applies regardless. Warm-up (`warmupDurationSecs` /
//!   `warmup`, `ROUND_ROBIN` and `LEAST_REQUEST` only) follows Envoy's slow start:
//!   `max(minimumPercent, (t / duration)^(1 / aggression))` of the weight for endpoints
//!   that joined after the cluster's first build.
//! * **Health**: endpoints whose [`HealthCell`](mesh_core::health::HealthCell) is not
//!   healthy (ejected by outlier detection, failing active checks) are skipped unless their
//!   priority is in panic.
//!
//! # Ordering
//!
//! ```text
//! router ─► retry/timeout ─► LbLayer ─► outlier detection / circuit breaker ─► connector
//! ```
//!
//! Place it below retries, so each attempt picks again (Envoy's behaviour), and above the
//! per-endpoint layers, which read [`SelectedEndpoint`] and [`UpstreamCluster`] (with
//! [`selected_endpoint`] and [`upstream_cluster`]).
//!
//! # Reads and writes
//!
//! * Reads [`RouteDestination`] (with [`route_destination`]: the router's
//!   [`RouteDecision`](mesh_core::ext::RouteDecision), else a standalone one; absent: the request's authority is the destination, short
//!   names resolved in the client's namespace; an unknown host then passes through under
//!   `ALLOW_ANY`), [`Passthrough`](mesh_core::ext::Passthrough) (connect to the
//!   destination's host and port), [`ClientAddr`] (`useSourceIp`),
//!   [`PreviousHosts`](mesh_core::ext::PreviousHosts) (a retry's `retryIgnorePreviousHosts`:
//!   a host an earlier attempt went to is picked again, up to five times, as Envoy's
//!   `previous_hosts` predicate; the pick is recorded in it),
//!   [`PreviousPriorities`](mesh_core::ext::PreviousPriorities) (a retry's
//!   `retryRemoteLocalities`: the priority is drawn from the priority load without the
//!   priorities tried before, as Envoy's `previous_priorities` with Istio's
//!   `update_frequency: 2`; the level picked is recorded in it).
//! * Writes one [`SelectedUpstream`] ([`SelectedEndpoint`] and [`UpstreamCluster`], with
//!   the cluster's compiled `outlierDetection` for outlier detection, built once per
//!   endpoint and shared); on passthrough, a standalone [`SelectedEndpoint`] (there
//!   is no cluster). On a generated sticky cookie, a
//!   `Set-Cookie` response header.
//! * Answers itself, with Envoy's flags: `503 NR` when the destination's port or subset does
//!   not exist (the Envoy cluster would not exist), or its host is unknown and not passed
//!   through; `503 UH` when the cluster has no endpoint or none that can take traffic;
//!   `503 DF` when a passthrough host does not resolve.
//!
//! # Workers and hot path
//!
//! Each [`tower_layer::Layer::layer`] call makes an independent balancer (cursors and a
//! cache of clusters keyed by destination): the proxy builds one per worker thread.
//! Endpoint counters (requests in flight, latency) are shared by all workers, as Envoy's
//! host stats. A pick is a few atomic loads, a hash-map lookup with the fast hasher
//! (`mesh_core::hash`, foldhash), and the algorithm: no lock, no allocation. Clusters are built lazily on first use and rebuilt
//! when the snapshot ([`LbLayer::store`]), the discovered endpoints or any endpoint's health
//! change; endpoints that persist keep their counters. So do clusters: the circuit-breaker
//! counters a cluster carries ([`UpstreamCluster::limits`], from `connectionPool` and
//! `retryBudget`) are found by cluster name, shared by every worker's copy of the cluster
//! and kept across rebuilds and reloads while anything holds them.
//!
//! # Differences from Istio/Envoy
//!
//! * Requests in flight are counted, as Envoy's `rq_active`, until the response body ends
//!   (its last frame read, an error, or a drop: the count moves into the body through
//!   [`MeshBody::on_end`](mesh_core::MeshBody::on_end)), or until the request fails or is
//!   dropped. Peak-EWMA measures time to the response headers (as Linkerd does), and only
//!   from successful, non-5xx answers. Only the
//!   algorithms that read the count (least request, peak-EWMA) count requests; round robin,
//!   random and consistent hashing leave the shared counters alone ([`Lb::pick`] always
//!   counts).
//! * Weighted round robin walks a precomputed earliest-deadline-first schedule (the same
//!   proportions and spreading as Envoy's EDF scheduler, not the same sequence); weighted
//!   least request draws from Envoy's target distribution `weight / (active + 1)` by
//!   rejection sampling (falling back to the best of four proposals) rather than from an
//!   EDF queue; `RANDOM` ignores weights, as Envoy's does.
//! * A health change anywhere rebuilds clusters (lazily, each on its next use) rather than
//!   one host set.
//! * Locality: a `distribute` destination weight of 0 removes the locality (Istio keeps the
//!   locality's original weight); `to` patterns are applied in sorted order (Istio iterates
//!   a Go map).
//! * Passthrough resolves the host with the resolver and connects to the first address,
//!   where Envoy's `ORIGINAL_DST` uses the address the connection was captured for.
//! * DNS services ([`DnsDiscover`](discover::DnsDiscover)): Istio sets `respect_dns_ttl` and
//!   `dns_refresh_rate` (`meshConfig.dnsRefreshRate`, 60s by default), so Envoy re-resolves
//!   a name at the smallest TTL of its records, however long, and at the refresh rate for a
//!   TTL of 0. Here each hostname is re-resolved at its TTL clamped between 1s and the
//!   refresh interval (30s by default), so a long TTL still sees changes within the
//!   interval and a TTL of 0 means once a second. Answers without a TTL (`/etc/hosts`, the
//!   system resolver) and failures wait the refresh interval (Envoy's
//!   `dns_failure_refresh_rate`, which Istio leaves unset: the refresh rate, without its
//!   optional backoff and jitter). Each hostname has its own schedule, as each target of an
//!   Envoy `STRICT_DNS` cluster has its own timer. The proxy's resolver is hickory's stub
//!   resolver ([`HickoryResolver`](discover::HickoryResolver), plain UDP/TCP), not c-ares;
//!   a reload resolves the new hostnames at once and leaves the others on their schedule.
//! * Without a `RouteDestination`, the client namespace for DestinationRule lookup is the
//!   bootstrap workload's.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cluster;
mod config;
pub mod discover;
mod endpoint;
pub mod hash;
mod locality;
mod policy;
mod service;

#[cfg(test)]
mod tests;

pub use config::{LbConfig, PeakEwmaConfig};
pub use endpoint::EndpointState;
pub use policy::{Algorithm, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MIN_RING_SIZE, MAX_RING_SIZE};
pub use service::{Lb, LbBuilder, LbLayer, Picked, ResponseFuture};

#[doc(hidden)]
pub use mesh_core::ext::{
    ClientAddr, RouteDestination, SelectedEndpoint, SelectedUpstream, UpstreamCluster,
    route_destination, selected_endpoint, upstream_cluster,
};

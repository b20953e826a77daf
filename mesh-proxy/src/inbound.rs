//! The inbound clusters: Istio's `inbound|PORT||`, one per workload port an inbound
//! listener forwards to (the main inbound listener's application port, each
//! `inboundPorts` port, each Sidecar `ingress` port), with the connection pool Istio gives
//! them ([`Snapshot::inbound_traffic_policy`]: the Sidecar's `ingress[].connectionPool` for
//! the port, else its `inboundConnectionPool`, else the `connectionPool` of the service's
//! DestinationRule: "when users specify circuit breakers, they need to be set on the
//! receiver end as well").
//!
//! What the pool does inbound is what it does to an outbound cluster, the application
//! being the upstream:
//!
//! - the **circuit breaker** (`tcp.maxConnections`, `http.http1MaxPendingRequests`,
//!   `http.http2MaxRequests`) admits each request forwarded to the application; over a
//!   limit the client gets Envoy's overflow answer (`503`, `x-envoy-overloaded: true`, flag
//!   `UO`) and the application never sees the request. An L4 ingress port counts its
//!   connections against `tcp.maxConnections` (a connection over it is closed, flag `UO`,
//!   as Envoy's `tcp_proxy`);
//! - the **connector** applies `maxRequestsPerConnection`, `idleTimeout`,
//!   `tcp.connectTimeout`, `tcp.tcpKeepalive`, `tcp.maxConnectionDuration`,
//!   `http.maxConcurrentStreams` and `http.http2KeepAlive` to the connections to the
//!   application; an L4 ingress port its `tcp.connectTimeout` and `tcp.tcpKeepalive` (its
//!   idle timeout stays Istio's inbound default: Istio takes it from the proxy's
//!   `IDLE_TIMEOUT` metadata, not from the pool);
//! - `h2UpgradePolicy` and `useClientProtocol` change nothing inbound, as in Istio (its
//!   `applyH2Upgrade` and `useClientProtocol` are outbound only), nor does `maxRetries`:
//!   inbound routes do not retry.
//!
//! The cluster also says how the application is spoken to (Istio's `setUpstreamProtocol`):
//! HTTP/2 (h2c) to a port declared `HTTP2`, `GRPC` or `GRPC-Web` (the Sidecar ingress
//! entry's `port.protocol`, else the port of the service that selects the workload),
//! HTTP/1.1 to an `HTTP` or (terminated) `HTTPS` port, and the client's protocol to a port
//! nothing declares (Istio's protocol detection, `use_downstream_protocol`) or one declared
//! `TCP` or another L4 protocol (whose bytes Istio passes through untouched).
//!
//! Counts are per cluster and per proxy (every worker and listener of the port shares
//! them) and survive reloads; `/clusters` and `/stats/prometheus` show them beside the
//! outbound clusters'. A reload applies new limits to the requests that follow.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::compile::Snapshot;
use mesh_core::ext::{SelectedEndpoint, SelectedUpstream, UpstreamCluster, UpstreamPool};
use mesh_core::health::{HealthCell, inbound_cluster_name};
use mesh_core::limits::{ClusterCounters, ClusterLimits, CountersRegistry, Thresholds};

/// The inbound clusters of the running configuration, shared by every inbound listener.
#[derive(Debug, Default)]
pub struct InboundClusters {
    /// (In an `Arc` of its own: each worker's [`InboundTarget`] reads it through an
    /// `arc_swap::Cache`, one atomic load per request.)
    table: Arc<ArcSwap<Table>>,
    /// Each cluster's counters by name, kept across reloads (as the balancer keeps the
    /// outbound clusters'): requests in flight when a reload lands still count.
    counters: CountersRegistry,
}

/// One configuration's inbound clusters, by workload port.
#[derive(Debug, Default)]
struct Table {
    clusters: Vec<(u16, Inbound)>,
}

/// One inbound cluster and how its endpoint is spoken to.
#[derive(Debug, Clone)]
struct Inbound {
    cluster: UpstreamCluster,
    /// HTTP/2 to the endpoint (a port declared `HTTP2`, `GRPC` or `GRPC-Web`); with the
    /// pool's `use_client_protocol` (a port that declares no protocol), the client's.
    http2: bool,
}

impl InboundClusters {
    /// The inbound clusters of `snapshot`.
    pub fn new(snapshot: &Snapshot) -> Self {
        let c = InboundClusters::default();
        c.store(snapshot);
        c
    }

    /// Replaces the clusters with `snapshot`'s (the counters of a cluster that stays are
    /// kept).
    pub fn store(&self, snapshot: &Snapshot) {
        let clusters = ports(snapshot)
            .into_iter()
            .map(|port| (port, self.build(snapshot, port)))
            .collect();
        self.table.store(Arc::new(Table { clusters }));
    }

    /// The cluster of workload port `port`, or one without a pool when no inbound listener
    /// is configured to forward to it.
    pub fn for_port(&self, port: u16) -> UpstreamCluster {
        self.table.load().inbound(port).cluster
    }

    /// The counters of every cluster that has limits, for `/clusters` and
    /// `/stats/prometheus`.
    pub fn circuit_breakers(&self) -> Vec<(Arc<str>, Arc<ClusterCounters>)> {
        // the running configuration's (a cluster a reload took the pool from is not listed,
        // even while requests of its time still hold its counters)
        self.table
            .load()
            .clusters
            .iter()
            .filter_map(|(_, i)| {
                let c = &i.cluster;
                Some((c.name.clone(), c.limits.as_ref()?.counters().clone()))
            })
            .collect()
    }

    fn build(&self, snapshot: &Snapshot, port: u16) -> Inbound {
        let tp = snapshot.inbound_traffic_policy(port);
        let mut inbound = Inbound::unconfigured(port);
        // no pool anywhere: no limits to count (Istio's defaults are unlimited)
        let limits = tp.connection_pool.is_some().then(|| {
            Arc::new(ClusterLimits::new(
                Thresholds::from_traffic_policy(&tp),
                self.counters.counters(&inbound.cluster.name),
            ))
        });
        let mut pool = UpstreamPool::from_traffic_policy(&tp);
        // the port's protocol (Istio's `setUpstreamProtocol` for the inbound cluster):
        // HTTP/2 to an `HTTP2`, `GRPC` or `GRPC-Web` port, HTTP/1.1 to an `HTTP` one and
        // to an `HTTPS` one (a Sidecar ingress port whose TLS the listener terminates), and
        // the client's protocol to any other: a port that declares none (protocol
        // detection) or a TCP one, whose bytes Istio passes through untouched
        // (`useClientProtocol` itself is outbound only in Istio)
        let protocol = snapshot.inbound_protocol(port);
        pool.use_client_protocol =
            !protocol.is_some_and(|p| p.is_http() || p == mesh_core::compile::Protocol::Https);
        inbound.cluster.pool = pool;
        inbound.cluster.limits = limits;
        inbound.http2 = protocol.is_some_and(|p| p.is_http2());
        inbound
    }
}

impl Inbound {
    /// The cluster of `port` without a pool, spoken to in HTTP/1.1.
    fn unconfigured(port: u16) -> Self {
        Inbound {
            cluster: UpstreamCluster {
                name: inbound_cluster_name(port).into(),
                health: Arc::new(HealthCell::detached()),
                pool: UpstreamPool::default(),
                outlier: None,
                limits: None,
            },
            http2: false,
        }
    }
}

impl Table {
    /// The cluster of workload port `port`.
    fn entry(&self, port: u16) -> Option<&Inbound> {
        self.clusters
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, i)| i)
    }

    /// The inbound of workload port `port`: its entry, else one without a pool (no inbound
    /// listener is configured to forward to it).
    fn inbound(&self, port: u16) -> Inbound {
        self.entry(port)
            .cloned()
            .unwrap_or_else(|| Inbound::unconfigured(port))
    }
}

/// The workload ports the inbound listeners forward to: the application's (`localApp`),
/// each `inboundPorts` port, each `ingress` port of the workload's Sidecar.
fn ports(snapshot: &Snapshot) -> Vec<u16> {
    let boot = &snapshot.bootstrap;
    let mut ports: Vec<u16> = Vec::new();
    if let Some(inb) = &boot.inbound {
        ports.extend(inb.local_app_port());
        ports.extend(
            boot.inbound_ports
                .keys()
                .filter_map(|p| p.parse::<u16>().ok()),
        );
    }
    let (sidecar, _) = mesh_core::scope::select(&snapshot.sidecars, boot);
    if let Some(sc) = sidecar {
        ports.extend(
            sc.spec
                .ingress
                .iter()
                .filter_map(|i| u16::try_from(i.port.as_ref()?.number).ok()),
        );
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What one inbound worker stack forwards with: the application's endpoint and its
/// cluster, made once per configuration (each request takes a reference to it).
#[derive(Debug, Clone)]
pub struct InboundTarget {
    table: arc_swap::Cache<Arc<ArcSwap<Table>>, Arc<Table>>,
    app: SocketAddr,
    port: u16,
    /// The last configuration's pick, by the table it came from.
    last: Option<(Arc<Table>, SelectedUpstream)>,
}

impl InboundTarget {
    /// Forwards to `app`, the endpoint of workload port `port`.
    pub fn new(clusters: Arc<InboundClusters>, app: SocketAddr, port: u16) -> Self {
        InboundTarget {
            table: arc_swap::Cache::new(clusters.table.clone()),
            app,
            port,
            last: None,
        }
    }

    /// The application's endpoint with its cluster, under the running configuration (the
    /// protocol of a request to it: [`SelectedUpstream::http2_for`], which the circuit
    /// breaker and the connector share).
    pub fn upstream(&mut self) -> SelectedUpstream {
        let table = self.table.load();
        if let Some((t, up)) = &self.last
            && Arc::ptr_eq(t, table)
        {
            return up.clone();
        }
        let inbound = table.inbound(self.port);
        let endpoint = SelectedEndpoint::new(self.app).with_http2(inbound.http2);
        let up = SelectedUpstream::new(endpoint, inbound.cluster);
        self.last = Some((table.clone(), up.clone()));
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pool: &str) -> Snapshot {
        let mut l = mesh_core::load::Loader::new();
        l.add_str(
            "t.yaml",
            &format!(
                "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: b}}
spec:
  workload: {{name: reviews-v1, namespace: default, labels: {{app: reviews}}}}
  inbound: {{address: 127.0.0.1, port: 15006, localApp: '127.0.0.1:9080'}}
  inboundPorts: {{\"9443\": 0}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: 9000, protocol: GRPC, name: grpc}}
    defaultEndpoint: 127.0.0.1:9000
{pool}"
            ),
        );
        let loaded = l.finish();
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        mesh_core::compile::compile(loaded.resources)
    }

    /// One cluster per port an inbound listener forwards to; a reload keeps a cluster's
    /// counts (requests in flight still count) and applies its new limits; a pool removed
    /// takes the limits away.
    #[test]
    fn a_reload_applies_new_limits_and_keeps_the_counts() {
        let c = InboundClusters::new(&snapshot(
            "  inboundConnectionPool: {http: {http2MaxRequests: 1}}\n",
        ));
        let ports: Vec<u16> = c.table.load().clusters.iter().map(|(p, _)| *p).collect();
        assert_eq!(ports, [9000, 9080, 9443]);
        let app = c.for_port(9080);
        assert_eq!(&*app.name, "inbound|9080||");
        let limits = app.limits.clone().unwrap();
        assert_eq!(limits.thresholds().max_requests, 1);
        let mesh_core::limits::Admission::Admitted(held) = limits.admit(true) else {
            panic!("the first request is admitted");
        };
        c.store(&snapshot(
            "  inboundConnectionPool: {http: {http2MaxRequests: 2}}\n",
        ));
        let after = c.for_port(9080).limits.unwrap();
        assert_eq!(after.thresholds().max_requests, 2);
        assert!(Arc::ptr_eq(after.counters(), limits.counters()));
        assert_eq!(
            after.counters().requests(),
            1,
            "the request in flight still counts"
        );
        drop(held);
        assert_eq!(after.counters().requests(), 0);
        c.store(&snapshot(""));
        assert!(c.for_port(9080).limits.is_none());
        drop((app, limits, after));
        assert!(
            c.circuit_breakers().is_empty(),
            "no cluster with limits is left"
        );
        // the GRPC ingress port's endpoint is spoken to in HTTP/2, the others as the client
        let t = c.table.load();
        assert!(t.entry(9000).unwrap().http2);
        assert!(!t.entry(9080).unwrap().http2);
        assert!(t.entry(9080).unwrap().cluster.pool.use_client_protocol);
        assert!(!t.entry(9000).unwrap().cluster.pool.use_client_protocol);
    }

    /// A worker's target picks the new configuration up at its next request (its
    /// `arc_swap::Cache` sees the stored table), and keeps its pick while none lands.
    #[test]
    fn a_worker_s_target_follows_reloads() {
        let c = Arc::new(InboundClusters::new(&snapshot(
            "  inboundConnectionPool: {http: {http2MaxRequests: 1}}\n",
        )));
        let app: SocketAddr = "127.0.0.1:9080".parse().unwrap();
        let mut target = InboundTarget::new(c.clone(), app, 9080);
        let first = target.upstream();
        assert_eq!(first.endpoint().addr, app);
        let max = |u: &SelectedUpstream| {
            u.cluster()
                .limits
                .as_ref()
                .map(|l| l.thresholds().max_requests)
        };
        assert_eq!(max(&first), Some(1));
        let again = target.upstream();
        assert!(
            std::ptr::eq(first.cluster(), again.cluster()),
            "the same pick"
        );
        c.store(&snapshot(
            "  inboundConnectionPool: {http: {http2MaxRequests: 7}}\n",
        ));
        let after = target.upstream();
        assert_eq!(max(&after), Some(7));
        // the GRPC ingress port's target speaks HTTP/2 whatever the request's version
        let mut grpc = InboundTarget::new(c, "127.0.0.1:9000".parse().unwrap(), 9000);
        let up = grpc.upstream();
        assert!(up.http2_for(http::Version::HTTP_11));
        assert!(!after.http2_for(http::Version::HTTP_11));
        assert!(
            after.http2_for(http::Version::HTTP_2),
            "the client's protocol on 9080"
        );
    }
}

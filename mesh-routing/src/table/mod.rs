//! The compiled route table: virtual hosts indexed by domain, and each host's routes.
//!
//! A [`RouteTable`] is what Istio would program into one Envoy route configuration for one
//! proxy: built once from an `Arc<Snapshot>` for a [`RouterContext`] (who the proxy is: the
//! `mesh` gateway of a sidecar, or a set of named gateways; its namespace and labels), then
//! only read. Swapping tables while requests are in flight goes through a
//! [`RouteTableHandle`].
//!
//! # Virtual hosts (Istio `httproute.go`, Envoy virtual host matching)
//!
//! - Every HTTP port of every service visible to the proxy's namespace (`exportTo`) gets a
//!   virtual host whose domains are the forms Istio generates
//!   (`generateVirtualHostDomains`): the FQDN, the FQDN with a trailing dot, and for
//!   Kubernetes-style hosts (`<name>.<ns>.svc.<domain>`) `name.ns` and `name.ns.svc` (plus the
//!   bare `name` only for clients in the same namespace), each with and without `:port`.
//!   Without a port, the service's only port (else 80) is meant.
//! - A VirtualService claims the services its hosts name; a wildcard host
//!   (`*.example.com`) claims the services under it; for each service the most specific host
//!   wins (exact over wildcard, longer wildcard over shorter, then the first in source order).
//!   Hosts that name no service get a virtual host of their own on port 80, as Istio does.
//! - A service no VirtualService claims gets the default route: all its endpoints, on the
//!   port the request named.
//! - Lookup is Envoy's: the request's `:authority` (Host), ASCII case-insensitively, exact
//!   domains first, then the longest wildcard suffix, then `*`.
//! - A host no virtual host serves goes, on a sidecar, to the passthrough destination under
//!   `outboundTrafficPolicy: ALLOW_ANY`, or gets 502 `NR` under `REGISTRY_ONLY` (Istio's
//!   `BlackHoleCluster`); on a gateway it gets 404 `NR`.
//!
//! # Route matching and performance
//!
//! Within a virtual host the routes are tried in order and the first whose match block holds
//! wins, exactly as Envoy's route list. A host with more than 8 routes gets a candidate index
//! (`index.rs`): every match block's `uri` gives a literal the `:path` must start with (the
//! `exact` or `prefix` value, ASCII-lowercased for `ignoreUriCase`; the literal prefix of a
//! `regex`), and the literals go into a case-folded radix trie whose nodes hold the ordered
//! routes each path under them may match. A request walks the trie along its path (at most
//! the longest literal), then tries that node's routes merged in route order with the routes
//! that may match any path (no `uri`, a regex without a literal prefix, no match block): no
//! allocation, and the result is the one the full scan gives. Hosts whose literals nest so
//! deeply that the lists would grow past ~64 entries per route keep the scan. A
//! VirtualService claiming several services shares one index. The cost of a request thus
//! depends on how many routes share its path prefix (and how many have no `uri` condition),
//! not on the host's route count.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request};
use mesh_core::authority::split_port;
use mesh_core::compile::{Protocol, Service, Snapshot, VirtualServiceEntry, host_matches};
use mesh_core::error::ResourceRef;
use mesh_core::ext::{RouteDestination, RoutePolicy, SourceWorkload};
use mesh_core::hash::FastHashMap;
use mesh_core::model::Kind;
use mesh_core::model::networking::{Destination, HttpRoute, OutboundTrafficMode, ServicePort};
use mesh_core::policy::{FaultPolicy, RetryPolicy};
use mesh_core::rng::Rng;
use mesh_core::selector::Labels;

use crate::action::{Cors, Direct, HeaderRules, Redirect, UriRewrite};
use crate::delegate;
use crate::error::BuildError;
use crate::index::PathIndex;
use crate::matcher::{MatchBlock, RegexLimits, RequestView};

mod build;
mod lookup;

pub(crate) use build::vs_ref;
pub(crate) use lookup::{TableCache, view_of};
#[cfg(test)]
mod tests;

/// The gateway context a router serves: which VirtualServices (by their `gateways`) apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GatewayContext {
    /// A sidecar: VirtualServices bound to the reserved `mesh` gateway (the default).
    #[default]
    Mesh,
    /// A gateway: VirtualServices bound to any of these gateways, written `<ns>/<name>`.
    Gateways(Vec<String>),
}

/// The `hosts` of one `Gateway` server, for a gateway router: a VirtualService bound to the
/// gateway is served for the hosts it shares with the server (Istio's
/// `pickMatchingGatewayHosts`), if the server lets its namespace bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHosts {
    /// The gateway, `<ns>/<name>`.
    pub gateway: String,
    /// The server's hosts as written: `ns/host`, `*/host`, `./host` (the gateway's
    /// namespace) or `host` (any namespace).
    pub hosts: Vec<String>,
}

/// Who the router routes for: the gateway context and the source workload.
///
/// Build one with [`RouterContext::sidecar`] or [`RouterContext::gateway`], which read the
/// snapshot's `ProxyBootstrap`, and adjust the public fields as needed.
#[derive(Debug, Clone)]
pub struct RouterContext {
    /// Which VirtualServices apply. Default: `mesh`.
    pub gateways: GatewayContext,
    /// On a gateway, its servers' `hosts`: each VirtualService host is served where it meets
    /// a host of a server of a gateway the VirtualService is bound to (the narrower of the
    /// two names the virtual host). Empty: the VirtualServices' hosts are served as written.
    /// Default: empty.
    pub servers: Vec<ServerHosts>,
    /// On a gateway, the port of the servers this table serves: `match[].port` compares
    /// with it (Istio generates one route configuration per gateway port). `None`: the
    /// request's port (its authority's, else the virtual host's). Default: `None`.
    pub port: Option<u16>,
    /// The proxy's namespace: `exportTo` visibility, short-name domains, and the default
    /// source namespace for `sourceNamespace` matches. Default: the bootstrap workload's.
    pub namespace: String,
    /// The proxy's workload labels, for `sourceLabels` matches (a [`SourceWorkload`] request
    /// extension overrides them per request). Default: the bootstrap workload's.
    pub labels: Labels,
    /// The cluster DNS suffix. Default: the bootstrap's `mesh.clusterDomain` (`cluster.local`).
    pub cluster_domain: String,
    /// The largest compiled program one regex may produce, in bytes (the `regex` crate's
    /// `size_limit`); a larger one fails the build. Default: 256 KiB.
    pub regex_size_limit: usize,
}

/// A compiled route table. Immutable, `Send + Sync`, shared as `Arc<RouteTable>`.
pub struct RouteTable {
    generation: u64,
    exact: FastHashMap<Box<str>, DomainTarget>,
    /// Wildcard domains by suffix, the leading `*` removed (`.example.com`, `.example.com:80`).
    wildcard: FastHashMap<Box<str>, DomainTarget>,
    catch_all: Option<DomainTarget>,
    strip_port: bool,
    /// [`RouterContext::port`].
    listener_port: Option<u16>,
    vhosts: Vec<VirtualHost>,
    unknown: UnknownHost,
    source_labels: Labels,
    source_namespace: Box<str>,
    warnings: Vec<BuildError>,
    route_count: usize,
}

/// A [`RouteTable`] behind an [`ArcSwap`]: the proxy [`store`](Self::store)s a new table
/// while requests are in flight; each request routes on the table it loaded.
#[derive(Clone)]
pub struct RouteTableHandle {
    inner: Arc<ArcSwap<RouteTable>>,
}

#[derive(Debug, Clone, Copy)]
struct DomainTarget {
    vhost: u32,
    /// The port this domain form means (`None`: the request's own port, if any).
    port: Option<u16>,
}

#[derive(Debug)]
struct VirtualHost {
    name: Arc<str>,
    routes: Box<[Arc<CompiledRoute>]>,
    /// The candidate index of `routes` (hosts with more than a few routes).
    index: Option<Arc<PathIndex>>,
}

#[derive(Debug, Clone)]
enum UnknownHost {
    Passthrough,
    /// `ALLOW_ANY` with a Sidecar's `egressProxy`: this route (to the egress proxy, the
    /// request's authority kept), on the proxy's port.
    Forward(Arc<CompiledRoute>, Option<u16>),
    BlackHole,
    NotFound,
}

/// One `HTTPRoute`, compiled.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    /// Empty: matches every request.
    pub(crate) blocks: Box<[MatchBlock]>,
    pub(crate) action: Action,
    pub(crate) headers: HeaderRules,
    pub(crate) cors: Option<Cors>,
    /// The route's policy, shared by every request it forwards.
    pub(crate) policy: Arc<RoutePolicy>,
    /// Per match block (same order as `blocks`): the route's policy with the block's
    /// `route_name` when the block is named, else the route's `policy`.
    pub(crate) block_policies: Box<[Arc<RoutePolicy>]>,
    pub(crate) mirrors: Box<[MirrorSpec]>,
}

#[derive(Debug)]
pub(crate) enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct(Direct),
}

#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) dests: Box<[WeightedDest]>,
    total_weight: u32,
    pub(crate) rewrite: Option<UriRewrite>,
    /// `rewrite.authority`, else the route-level `headers` authority.
    pub(crate) authority: Option<HeaderValue>,
    /// Whether any destination hashes on a cookie (sticky subsets).
    sticky: bool,
}

#[derive(Debug)]
pub(crate) struct WeightedDest {
    pub(crate) dest: RouteDestination,
    weight: u32,
    pub(crate) headers: HeaderRules,
    /// The `consistentHash.httpCookie.name` of the destination's DestinationRule.
    cookie: Option<Box<str>>,
}

#[derive(Debug)]
pub(crate) struct MirrorSpec {
    pub(crate) dest: RouteDestination,
    /// Fraction of requests mirrored, in (0, 1].
    pub(crate) fraction: f64,
}

/// What the table decided for one request.
pub(crate) enum Selected<'t> {
    /// A route matched; `block` is the index of the match block that did (if any).
    Route {
        route: &'t Arc<CompiledRoute>,
        block: Option<usize>,
        port: Option<u16>,
    },
    /// The virtual host has no route for the request: 404 `NR`.
    NoRoute,
    /// Unknown host, `ALLOW_ANY`: pass through to the host the request named.
    Passthrough { port: Option<u16> },
    /// Unknown host, `REGISTRY_ONLY`: 502 `NR`.
    BlackHole,
}

/// Hosts longer than this match no domain (not even `*`): they are treated as unknown.
const MAX_HOST_LEN: usize = 320;

// === impl RouterContext ===

impl RouterContext {
    /// A sidecar's context (`mesh` gateway) for the snapshot's bootstrap workload.
    pub fn sidecar(snapshot: &Snapshot) -> Self {
        let b = &snapshot.bootstrap;
        RouterContext {
            gateways: GatewayContext::Mesh,
            servers: Vec::new(),
            port: None,
            namespace: b.workload.namespace.clone(),
            labels: b.workload.labels.clone(),
            cluster_domain: b.mesh.cluster_domain.clone(),
            regex_size_limit: mesh_core::pattern::SIZE_LIMIT,
        }
    }

    /// A gateway's context: VirtualServices bound to any of `gateways` (`<ns>/<name>`).
    pub fn gateway<I, G>(snapshot: &Snapshot, gateways: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<String>,
    {
        RouterContext {
            gateways: GatewayContext::Gateways(gateways.into_iter().map(Into::into).collect()),
            ..RouterContext::sidecar(snapshot)
        }
    }

    fn serves(&self, gateway: &str) -> bool {
        match &self.gateways {
            GatewayContext::Mesh => gateway == "mesh",
            GatewayContext::Gateways(list) => list.iter().any(|g| g == gateway),
        }
    }

    fn is_mesh(&self) -> bool {
        self.gateways == GatewayContext::Mesh
    }

    /// The hosts a gateway serves `vs` for (lowercase, without duplicates): its own hosts
    /// without [`servers`](Self::servers), else their intersections with the hosts of the
    /// servers of the gateways `vs` is bound to whose namespace part admits `vs`'s namespace
    /// (`*/`, `<vs ns>/`, `./` when the gateway is in `vs`'s namespace, or none).
    pub(crate) fn gateway_hosts(&self, vs: &VirtualServiceEntry) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |h: &str| {
            let h = h.to_ascii_lowercase();
            if !out.contains(&h) {
                out.push(h);
            }
        };
        if self.servers.is_empty() {
            vs.hosts.iter().for_each(|h| push(h));
            return out;
        }
        for server in &self.servers {
            if !vs.gateways.contains(&server.gateway) || !self.serves(&server.gateway) {
                continue;
            }
            let gw_ns = server.gateway.split_once('/').map_or("", |(ns, _)| ns);
            for written in &server.hosts {
                let (ns, host) = written.split_once('/').unwrap_or(("*", written));
                let admitted =
                    ns == "*" || ns == vs.namespace || (ns == "." && gw_ns == vs.namespace);
                if !admitted {
                    continue;
                }
                for vh in &vs.hosts {
                    if build::covers(host, vh) {
                        push(vh);
                    } else if build::covers(vh, host) {
                        push(host);
                    }
                }
            }
        }
        out
    }
}

//! VirtualService `tcp` and `tls` routes: the route table of one L4 listener.
//!
//! An [`L4RouteTable`] is built for one listener: a service port captured by a sidecar
//! (`ProxyBootstrap.outboundPorts`, [`L4RouteTable::sidecar`]) or a gateway server port
//! ([`L4RouteTable::gateway`]), TCP or TLS. Each new connection is routed once, on what is
//! known of it before any byte is forwarded ([`L4Connection`]: the client's and the
//! listener's addresses and, on a TLS listener, the ClientHello's SNI); the route picks one
//! destination by weight for the whole connection.
//!
//! ```
//! use mesh_core::compile::compile;
//! use mesh_core::load::Loader;
//! use mesh_core::rng::Rng;
//! use mesh_routing::l4::{L4Connection, L4RouteTable};
//!
//! let mut l = Loader::new();
//! l.add_str("tcp-echo.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: tcp-echo}
//! spec:
//!   hosts: [tcp-echo.default.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   resolution: STATIC
//!   ports: [{number: 9000, name: tcp, protocol: TCP}]
//!   endpoints: [{address: 10.0.0.1, labels: {version: v1}}]
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: tcp-echo}
//! spec:
//!   hosts: [tcp-echo]
//!   tcp:
//!   - match: [{port: 9000}]
//!     route:
//!     - {destination: {host: tcp-echo, subset: v1}, weight: 100}
//! "#);
//! let snap = compile(l.finish().resources);
//! let table = L4RouteTable::sidecar(&snap, "tcp-echo.default.svc.cluster.local", 9000).unwrap();
//! let conn = L4Connection::new("10.1.0.1:40000".parse().unwrap(), "127.0.0.1:15432".parse().unwrap());
//! let dest = table.route(&conn, &mut Rng::new(Some(1))).unwrap();
//! assert_eq!(dest.subset.as_deref(), Some("v1"));
//! assert_eq!(dest.port, Some(9000));
//! ```
//!
//! [`sni_cluster`] reads Istio's SNI cluster names (`outbound_.<port>_.<subset>_.<host>`),
//! the destination an `AUTO_PASSTHROUGH` gateway server routes by
//! ([`L4RouteTable::auto_passthrough`]): an SNI that matches the servers' `hosts` and names
//! a service visible to the gateway's namespace (`exportTo`; the snapshot holds only what
//! the workload's Sidecar imports), one of its ports and a subset of its DestinationRule;
//! any other name is no route (`NR`).
//!
//! # Istio's semantics
//!
//! - **Which VirtualServices**: those bound to the table's gateways (`mesh` for a sidecar),
//!   visible to the proxy's namespace (`exportTo`). On a sidecar, `tcp` routes apply when
//!   one of the VirtualService's `hosts` is the listener's service (or a wildcard covering
//!   it), as Istio builds a service's TCP filter chains from the VirtualServices of its
//!   host; on a gateway, every bound VirtualService's routes apply.
//! - **`tls` routes** (TLS listeners: service ports `TLS`/`HTTPS`, gateway `TLS` /
//!   `PASSTHROUGH` servers) match the ClientHello's SNI against `sniHosts` (`*.example.com`
//!   matches `a.example.com` and `a.b.example.com`; `*` any name), as Envoy's filter chain
//!   match does: an exact name wins over a wildcard, a longer wildcard over a shorter, and
//!   otherwise the first in order. Without a matching `tls` route, a sidecar routes an SNI
//!   that names a TLS service on the listener's port to that service (Istio's filter chain
//!   per TLS service), then tries the `tcp` routes, then the listener's own service.
//! - **`tcp` routes**: in order, the first whose `match` (any of its entries; none: always)
//!   holds. A sidecar connection no route takes goes to the listener's service (Istio adds
//!   that default route); a gateway's is closed.
//! - **Match fields**: `port` (the listener's service or server port), `destinationSubnets`
//!   (the address the client connected to, [`L4Connection::local`]), `sourceSubnet` (the
//!   client's address), `sourceLabels` and `sourceNamespace` (the proxy's own workload:
//!   decided when the table is built, as Istio decides it when it generates the proxy's
//!   configuration), `gateways` (the table's gateways).
//! - **Weights**: one destination per connection, drawn with the caller's RNG (seedable),
//!   in proportion to `weight` (a lone destination without weight takes everything).
//!   A destination's port defaults to the listener's.
//!
//! # Differences from Istio
//!
//! - Istio does not program `sourceSubnet` (a field hidden from its docs); it is matched here
//!   as documented (the client's address), so a rule that uses it works as written.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use mesh_core::compile::{Protocol, Snapshot, VirtualServiceEntry};
use mesh_core::ext::RouteDestination;
use mesh_core::model::networking::{Destination, RouteDestination as ModelDest};
use mesh_core::rng::Rng;
use mesh_core::selector::Labels;

use crate::error::BuildError;
use crate::table::{GatewayContext, RouterContext};

/// What an L4 listener serves: its port, whether it reads the SNI, and (on a sidecar) the
/// service it captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4Listener {
    /// The service port (sidecar) or the gateway server's port.
    pub port: u16,
    /// Route by SNI (`tls` routes): a `TLS`/`HTTPS` service port, a gateway's `TLS` or
    /// `PASSTHROUGH` server.
    pub tls: bool,
    /// The service the sidecar listener captures (`outboundPorts`): its `tcp` routes apply
    /// and it is the default destination. `None`: a gateway listener.
    pub service: Option<Arc<str>>,
}

/// What is known of a connection when it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Connection<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The ClientHello's server name (TLS listeners).
    pub sni: Option<&'a str>,
}

/// The compiled `tcp`/`tls` routes of one L4 listener (see the [module docs](self)).
/// Immutable, `Send + Sync`.
#[derive(Debug)]
pub struct L4RouteTable {
    generation: u64,
    port: u16,
    /// A TLS listener: connections are routed on their ClientHello's SNI.
    reads_sni: bool,
    /// `tls` rules (SNI), then the sidecar's per-service SNI defaults.
    tls: Vec<Rule>,
    /// `tcp` rules, in order.
    tcp: Vec<Rule>,
    /// The listener's own service (sidecar): where nothing else routes.
    fallback: Option<Arc<Split>>,
    /// `AUTO_PASSTHROUGH`: the destinations an SNI cluster name may name, by host; when
    /// set, the only routes.
    sni_clusters: Option<SniClusters>,
}

/// The destinations of an `AUTO_PASSTHROUGH` listener: by host (lower case), each port
/// with its destinations (the whole service first, then each subset); the server names the
/// SNI must match first.
#[derive(Debug, Default)]
struct SniClusters {
    server_names: Vec<Box<str>>,
    by_host: std::collections::HashMap<Box<str>, Vec<(u16, Vec<RouteDestination>)>>,
}

/// An [`L4RouteTable`] behind an [`ArcSwap`], swapped on reload; each connection routes on
/// the table it loaded.
#[derive(Debug, Clone)]
pub struct L4RouteTableHandle(Arc<ArcSwap<L4RouteTable>>);

#[derive(Debug)]
struct Rule {
    /// Empty: matches any connection (a `tcp` route without `match`).
    matches: Vec<L4Match>,
    split: Arc<Split>,
}

#[derive(Debug, Default)]
struct L4Match {
    /// `sniHosts` (TLS rules only; lower case; `*.x` kept as written).
    sni: Vec<Box<str>>,
    destination_subnets: Vec<IpNet>,
    source_subnet: Option<IpNet>,
}

/// Weighted destinations of one route.
#[derive(Debug)]
struct Split {
    dests: Vec<(RouteDestination, u32)>,
    total: u32,
}

// === impl L4RouteTable ===

impl L4RouteTable {
    /// The table of a sidecar listener capturing `service:port` (`outboundPorts`), for the
    /// snapshot's own workload; TLS (SNI routing) when the service port's protocol is `TLS`
    /// or `HTTPS`.
    pub fn sidecar(snapshot: &Snapshot, service: &str, port: u16) -> Result<Self, BuildError> {
        let ctx = RouterContext::sidecar(snapshot);
        let tls = snapshot
            .service(service, &ctx.namespace)
            .and_then(|s| s.ports.iter().find(|p| p.number == u32::from(port)))
            .is_some_and(|p| is_tls(Protocol::of(p)));
        let listener = L4Listener {
            port,
            tls,
            service: Some(service.into()),
        };
        L4RouteTable::new(snapshot, &ctx, &listener)
    }

    /// The table of a gateway server: `port`, bound to any of `gateways` (`<ns>/<name>`),
    /// SNI-routed when `tls` (`TLS` and `PASSTHROUGH` servers). A connection no route
    /// takes is closed.
    pub fn gateway<I, G>(
        snapshot: &Snapshot,
        gateways: I,
        port: u16,
        tls: bool,
    ) -> Result<Self, BuildError>
    where
        I: IntoIterator<Item = G>,
        G: Into<String>,
    {
        let ctx = RouterContext::gateway(snapshot, gateways);
        let listener = L4Listener {
            port,
            tls,
            service: None,
        };
        L4RouteTable::new(snapshot, &ctx, &listener)
    }

    /// The table of a gateway server in `AUTO_PASSTHROUGH` mode on `port` (Istio's SNI-DNAT
    /// filter chain): a connection's SNI, matched against the servers' `hosts`
    /// (`server_names`: `*.local`, `*`; a `namespace/` part ignored, as Istio's filter chain
    /// match), then read as Istio's cluster name `outbound_.<port>_.<subset>_.<host>`
    /// ([`sni_cluster`]), names its destination among the services visible to the proxy's
    /// namespace (`exportTo`), their ports and the subsets of their DestinationRule. No
    /// VirtualService applies; any other SNI (or none) is no route.
    pub fn auto_passthrough<I, S>(snapshot: &Snapshot, port: u16, server_names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ctx = RouterContext::sidecar(snapshot);
        let ns = ctx.namespace.as_str();
        let mut clusters = SniClusters {
            server_names: server_names
                .into_iter()
                .map(|h| {
                    let h = h.as_ref();
                    let h = h.split_once('/').map_or(h, |(_, h)| h);
                    h.to_ascii_lowercase().into_boxed_str()
                })
                .collect(),
            ..SniClusters::default()
        };
        for s in &snapshot.services {
            if s.hostname.starts_with('*') || !(s.namespace == ns || s.export_to.visible_to(ns)) {
                continue;
            }
            let host = s.hostname.to_ascii_lowercase().into_boxed_str();
            if clusters.by_host.contains_key(&host) {
                continue; // the first visible service of a host (the lookup's own rule)
            }
            let subsets: Vec<&str> = snapshot
                .destination_rule(&s.hostname, ns)
                .map(|d| d.spec.subsets.iter().map(|x| x.name.as_str()).collect())
                .unwrap_or_default();
            let ports = s
                .ports
                .iter()
                .filter_map(|p| u16::try_from(p.number).ok())
                .map(|p| {
                    let dest = |subset: Option<&str>| RouteDestination {
                        host: s.hostname.clone(),
                        subset: subset.map(Into::into),
                        port: Some(p),
                    };
                    let mut dests = vec![dest(None)];
                    dests.extend(subsets.iter().map(|n| dest(Some(n))));
                    (p, dests)
                })
                .collect();
            clusters.by_host.insert(host, ports);
        }
        L4RouteTable {
            generation: snapshot.generation,
            port,
            reads_sni: true,
            tls: Vec::new(),
            tcp: Vec::new(),
            fallback: None,
            sni_clusters: Some(clusters),
        }
    }

    /// Compiles the snapshot's `tcp`/`tls` routes for `listener` in `ctx`.
    ///
    /// Fails on a subnet that does not parse (validation refuses those first), naming the
    /// resource and field.
    pub fn new(
        snapshot: &Snapshot,
        ctx: &RouterContext,
        listener: &L4Listener,
    ) -> Result<Self, BuildError> {
        let ns = ctx.namespace.as_str();
        let mut table = L4RouteTable {
            generation: snapshot.generation,
            port: listener.port,
            reads_sni: listener.tls,
            tls: Vec::new(),
            tcp: Vec::new(),
            fallback: None,
            sni_clusters: None,
        };
        let vss = snapshot
            .virtual_services
            .iter()
            .filter(|vs| !vs.hosts.is_empty())
            .filter(|vs| vs.namespace == ns || vs.export_to.visible_to(ns))
            .filter(|vs| vs.gateways.iter().any(|g| serves(ctx, g)));
        for vs in vss {
            let resource = crate::table::vs_ref(vs);
            let build = |e: BuildError| e.within(&resource);
            if listener.tls {
                for (ri, route) in vs.spec.tls.iter().enumerate() {
                    let at = format!("spec.tls[{ri}]");
                    let mut matches = Vec::new();
                    for (mi, m) in route.matches.iter().enumerate() {
                        if !applies(
                            ctx,
                            listener.port,
                            m.port,
                            &m.gateways,
                            &m.source_labels,
                            m.source_namespace.as_deref(),
                        ) {
                            continue;
                        }
                        let at = format!("{at}.match[{mi}]");
                        matches.push(L4Match {
                            sni: m
                                .sni_hosts
                                .iter()
                                .map(|h| h.to_ascii_lowercase().into_boxed_str())
                                .collect(),
                            destination_subnets: subnets(
                                &m.destination_subnets,
                                &format!("{at}.destinationSubnets"),
                            )
                            .map_err(build)?,
                            source_subnet: None,
                        });
                    }
                    if matches.is_empty() {
                        continue; // Istio requires a match with sniHosts: none applies here
                    }
                    let split = split(&route.route, vs, listener.port);
                    table.tls.push(Rule { matches, split });
                }
            }
            let covers = match &listener.service {
                Some(s) => vs.hosts.iter().any(|h| host_covers(h, s)),
                None => true,
            };
            if !covers {
                continue;
            }
            for (ri, route) in vs.spec.tcp.iter().enumerate() {
                let at = format!("spec.tcp[{ri}]");
                let mut matches = Vec::new();
                for (mi, m) in route.matches.iter().enumerate() {
                    if !applies(
                        ctx,
                        listener.port,
                        m.port,
                        &m.gateways,
                        &m.source_labels,
                        m.source_namespace.as_deref(),
                    ) {
                        continue;
                    }
                    let at = format!("{at}.match[{mi}]");
                    let source_subnet = match &m.source_subnet {
                        Some(s) => subnets(std::slice::from_ref(s), &format!("{at}.sourceSubnet"))
                            .map_err(build)?
                            .pop(),
                        None => None,
                    };
                    matches.push(L4Match {
                        sni: Vec::new(),
                        destination_subnets: subnets(
                            &m.destination_subnets,
                            &format!("{at}.destinationSubnets"),
                        )
                        .map_err(build)?,
                        source_subnet,
                    });
                }
                if !route.matches.is_empty() && matches.is_empty() {
                    continue; // every match is for another port, workload or gateway
                }
                let split = split(&route.route, vs, listener.port);
                table.tcp.push(Rule { matches, split });
            }
        }
        if let Some(service) = &listener.service {
            if listener.tls {
                // Istio's filter chain per TLS service of the port, matched by its hostname
                for s in &snapshot.services {
                    let tls_port = s
                        .ports
                        .iter()
                        .any(|p| p.number == u32::from(listener.port) && is_tls(Protocol::of(p)));
                    if tls_port && (s.namespace == ns || s.export_to.visible_to(ns)) {
                        table.tls.push(Rule {
                            matches: vec![L4Match {
                                sni: vec![s.hostname.to_ascii_lowercase().into_boxed_str()],
                                ..L4Match::default()
                            }],
                            split: Arc::new(Split::one(&s.hostname, listener.port)),
                        });
                    }
                }
            }
            table.fallback = Some(Arc::new(Split::one(service, listener.port)));
        }
        Ok(table)
    }

    /// Routes a connection: the destination of its route (drawn by weight with `rng`), or
    /// `None` when no route takes it (close the connection, flag `NR`).
    pub fn route(&self, conn: &L4Connection<'_>, rng: &mut Rng) -> Option<&RouteDestination> {
        if let Some(clusters) = &self.sni_clusters {
            return clusters.route(conn.sni?);
        }
        let split = self.select(conn)?;
        Some(split.pick(rng))
    }

    fn select(&self, conn: &L4Connection<'_>) -> Option<&Split> {
        if let Some(sni) = conn.sni {
            // Envoy's filter chain match: the most specific server name wins
            let mut best: Option<(usize, &Split)> = None;
            for rule in &self.tls {
                for m in &rule.matches {
                    if !m.addresses_match(conn) {
                        continue;
                    }
                    let score = m.sni.iter().filter_map(|h| sni_score(h, sni)).max();
                    if let Some(score) = score
                        && best.is_none_or(|(b, _)| score > b)
                    {
                        best = Some((score, &rule.split));
                    }
                }
            }
            if let Some((_, split)) = best {
                return Some(split);
            }
        }
        for rule in &self.tcp {
            if rule.matches.is_empty() || rule.matches.iter().any(|m| m.addresses_match(conn)) {
                return Some(&rule.split);
            }
        }
        self.fallback.as_deref()
    }

    /// The generation of the snapshot it was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The listener port it was built for.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it routes on the SNI: read the ClientHello ([`L4Connection::sni`]) before
    /// routing.
    pub fn reads_sni(&self) -> bool {
        self.reads_sni
    }

    /// The number of `tls` and `tcp` rules (the sidecar's defaults included).
    pub fn rule_count(&self) -> usize {
        self.tls.len() + self.tcp.len()
    }

    /// Whether it routes by SNI cluster names ([`L4RouteTable::auto_passthrough`]): the
    /// connection's TLS is the client's own, end to end, never originated again.
    pub fn is_auto_passthrough(&self) -> bool {
        self.sni_clusters.is_some()
    }
}

// === impl SniClusters ===

impl SniClusters {
    fn route(&self, sni: &str) -> Option<&RouteDestination> {
        if !self
            .server_names
            .iter()
            .any(|h| sni_score(h, sni).is_some())
        {
            return None;
        }
        let c = sni_cluster(sni)?;
        let ports = if c.host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(c.host.to_ascii_lowercase().as_str())?
        } else {
            self.by_host.get(c.host)?
        };
        let (_, dests) = ports.iter().find(|(p, _)| *p == c.port)?;
        match c.subset {
            None => dests.first(),
            Some(n) => dests[1..].iter().find(|d| d.subset.as_deref() == Some(n)),
        }
    }
}

// === impl L4RouteTableHandle ===

impl L4RouteTableHandle {
    /// A handle serving `table`.
    pub fn new(table: L4RouteTable) -> Self {
        L4RouteTableHandle(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// Replaces the table; connections already routed keep their destination.
    pub fn store(&self, table: L4RouteTable) {
        self.0.store(Arc::new(table));
    }

    /// The current table.
    pub fn load_full(&self) -> Arc<L4RouteTable> {
        self.0.load_full()
    }
}

// === impl L4Connection ===

impl<'a> L4Connection<'a> {
    /// A connection from `peer` to `local`, without SNI.
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        L4Connection {
            peer,
            local,
            sni: None,
        }
    }

    /// With the ClientHello's server name.
    pub fn with_sni(mut self, sni: Option<&'a str>) -> Self {
        self.sni = sni;
        self
    }
}

// === impl L4Match ===

impl L4Match {
    fn addresses_match(&self, conn: &L4Connection<'_>) -> bool {
        let local = canonical(conn.local.ip());
        let peer = canonical(conn.peer.ip());
        (self.destination_subnets.is_empty()
            || self.destination_subnets.iter().any(|n| n.contains(&local)))
            && self.source_subnet.is_none_or(|n| n.contains(&peer))
    }
}

// === impl Split ===

impl Split {
    fn one(host: &str, port: u16) -> Split {
        Split {
            dests: vec![(
                RouteDestination {
                    host: host.into(),
                    subset: None,
                    port: Some(port),
                },
                1,
            )],
            total: 1,
        }
    }

    fn pick(&self, rng: &mut Rng) -> &RouteDestination {
        if self.dests.len() > 1 && self.total > 0 {
            let mut x = (rng.next_u64() % u64::from(self.total)) as u32;
            for (d, w) in &self.dests {
                if x < *w {
                    return d;
                }
                x -= w;
            }
        }
        &self.dests[0].0
    }
}

/// The weighted destinations of a route (hosts already resolved by the compile step).
fn split(route: &[ModelDest], vs: &VirtualServiceEntry, port: u16) -> Arc<Split> {
    let mut dests = Vec::with_capacity(route.len());
    let mut total = 0u32;
    for d in route {
        let Some(dest) = &d.destination else { continue };
        let w = u32::try_from(d.weight).unwrap_or(0);
        let w = if route.len() == 1 && w == 0 { 1 } else { w };
        total = total.saturating_add(w);
        dests.push((destination(dest, port), w));
    }
    if dests.is_empty() {
        // refused by validation; route to the VirtualService's first host rather than panic
        let host = vs.hosts.first().map_or("", |h| h);
        return Arc::new(Split::one(host, port));
    }
    Arc::new(Split { dests, total })
}

fn destination(d: &Destination, port: u16) -> RouteDestination {
    RouteDestination {
        host: d.host.as_str().into(),
        subset: d.subset.as_deref().map(Into::into),
        port: Some(
            d.port
                .as_ref()
                .and_then(|p| u16::try_from(p.number).ok())
                .filter(|p| *p != 0)
                .unwrap_or(port),
        ),
    }
}

/// Whether a match entry applies to this listener and proxy at all (decided at build time).
fn applies(
    ctx: &RouterContext,
    listener_port: u16,
    port: Option<u32>,
    gateways: &[String],
    source_labels: &Labels,
    source_namespace: Option<&str>,
) -> bool {
    port.is_none_or(|p| p == u32::from(listener_port))
        && (gateways.is_empty() || gateways.iter().any(|g| serves(ctx, g)))
        && source_labels
            .iter()
            .all(|(k, v)| ctx.labels.get(k) == Some(v))
        && source_namespace.is_none_or(|n| n == ctx.namespace)
}

fn serves(ctx: &RouterContext, gateway: &str) -> bool {
    match &ctx.gateways {
        GatewayContext::Mesh => gateway == "mesh",
        GatewayContext::Gateways(list) => list.iter().any(|g| g == gateway),
    }
}

fn is_tls(p: Protocol) -> bool {
    matches!(p, Protocol::Tls | Protocol::Https)
}

/// Whether VirtualService host `h` (an FQDN or a wildcard) names `service`.
fn host_covers(h: &str, service: &str) -> bool {
    if h == "*" || h.eq_ignore_ascii_case(service) {
        return true;
    }
    match h.strip_prefix('*') {
        Some(suffix) => {
            service.len() > suffix.len()
                && service[service.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => false,
    }
}

/// How specifically `pattern` (lower case) matches `sni`: exact beats any wildcard, a longer
/// wildcard beats a shorter; `None`: no match.
fn sni_score(pattern: &str, sni: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        let ok = sni.len() > suffix.len()
            && sni[sni.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            && sni.is_char_boundary(sni.len() - suffix.len());
        return ok.then_some(suffix.len());
    }
    pattern.eq_ignore_ascii_case(sni).then_some(usize::MAX)
}

fn subnets(list: &[String], at: &str) -> Result<Vec<IpNet>, BuildError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| match n {
                    IpNet::V4(_) => n,
                    IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                        Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len().saturating_sub(96))
                            .unwrap_or(n),
                        None => n,
                    },
                })
                .map_err(|_| BuildError::new(at, format!("{s:?} is not an IP address or CIDR")))
        })
        .collect()
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The destination an `AUTO_PASSTHROUGH` gateway reads from a connection's SNI: Istio's
/// cluster name in its DNS SRV form, `outbound_.<port>_.<subset>_.<host>` (the subset may
/// be empty: `outbound_.8080_._.reviews.default.svc.cluster.local`), as sidecars send it to
/// reach a service through an east-west gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SniCluster<'a> {
    /// The service port.
    pub port: u16,
    /// The DestinationRule subset; `None` when the name's subset is empty.
    pub subset: Option<&'a str>,
    /// The service's hostname, as sent (DNS names are compared case-insensitively).
    pub host: &'a str,
}

/// Parses an SNI as Istio's cluster name `outbound_.<port>_.<subset>_.<host>`: `None` when
/// it is not one (another prefix, a port that is not a number from 1 to 65535, no host).
///
/// ```
/// use mesh_routing::l4::{SniCluster, sni_cluster};
///
/// assert_eq!(
///     sni_cluster("outbound_.8080_.v1_.reviews.default.svc.cluster.local"),
///     Some(SniCluster { port: 8080, subset: Some("v1"), host: "reviews.default.svc.cluster.local" })
/// );
/// assert_eq!(sni_cluster("outbound_.8080_._.reviews").map(|c| c.subset), Some(None));
/// assert_eq!(sni_cluster("reviews.default.svc.cluster.local"), None);
/// ```
pub fn sni_cluster(sni: &str) -> Option<SniCluster<'_>> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let (subset, host) = rest.split_once("_.")?;
    if host.is_empty() || host.starts_with('.') || host.ends_with('.') {
        return None;
    }
    Some(SniCluster {
        port,
        subset: (!subset.is_empty()).then_some(subset),
        host,
    })
}

#[cfg(test)]
mod tests;

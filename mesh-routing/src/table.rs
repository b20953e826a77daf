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
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use http::{HeaderValue, Request};
use mesh_core::compile::{Protocol, Service, Snapshot, VirtualServiceEntry, host_matches};
use mesh_core::error::ResourceRef;
use mesh_core::ext::{RouteDestination, RoutePolicy, SourceWorkload};
use mesh_core::model::Kind;
use mesh_core::model::networking::{Destination, HttpRoute, OutboundTrafficMode, ServicePort};
use mesh_core::policy::{FaultPolicy, RetryPolicy};
use mesh_core::selector::Labels;

use crate::action::{Cors, Direct, HeaderRules, Redirect, UriRewrite, split_port};
use crate::delegate;
use crate::error::BuildError;
use crate::index::PathIndex;
use crate::matcher::{MatchBlock, RegexLimits, RequestView};

/// The gateway context a router serves: which VirtualServices (by their `gateways`) apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GatewayContext {
    /// A sidecar: VirtualServices bound to the reserved `mesh` gateway (the default).
    #[default]
    Mesh,
    /// A gateway: VirtualServices bound to any of these gateways, written `<ns>/<name>`.
    Gateways(Vec<String>),
}

/// Who the router routes for: the gateway context and the source workload.
///
/// Build one with [`RouterContext::sidecar`] or [`RouterContext::gateway`], which read the
/// snapshot's `ProxyBootstrap`, and adjust the public fields as needed.
#[derive(Debug, Clone)]
pub struct RouterContext {
    /// Which VirtualServices apply. Default: `mesh`.
    pub gateways: GatewayContext,
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
    exact: HashMap<Box<str>, DomainTarget, FxBuild>,
    /// Wildcard domains by suffix, the leading `*` removed (`.example.com`, `.example.com:80`).
    wildcard: HashMap<Box<str>, DomainTarget, FxBuild>,
    catch_all: Option<DomainTarget>,
    strip_port: bool,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnknownHost {
    Passthrough,
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

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0x5eed);

/// A fast, unkeyed hash for the domain maps. Their keys come from configuration; requests
/// only look up, so they cannot fill a bucket chain.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

// === impl RouterContext ===

impl RouterContext {
    /// A sidecar's context (`mesh` gateway) for the snapshot's bootstrap workload.
    pub fn sidecar(snapshot: &Snapshot) -> Self {
        let b = &snapshot.bootstrap;
        RouterContext {
            gateways: GatewayContext::Mesh,
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
}

// === impl RouteTable ===

/// Whether traffic to a service port is routed by HTTP rules: an HTTP protocol, or one Istio
/// would sniff (no protocol and no protocol-prefixed name).
fn http_capable(p: &ServicePort) -> bool {
    let proto = Protocol::of(p);
    if proto.is_http() {
        return true;
    }
    p.protocol.is_none()
        && proto == Protocol::Tcp
        && !p.name.to_ascii_lowercase().starts_with("tcp")
}

/// Whether host `pattern` (possibly a wildcard) covers `name` (possibly a wildcard itself),
/// as Istio's `host.Name.Matches`.
fn covers(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('*'), name.strip_prefix('*')) {
        (Some(_), None) => host_matches(pattern, name),
        (Some(p), Some(n)) => n.ends_with(p),
        (None, None) => pattern.eq_ignore_ascii_case(name),
        (None, Some(_)) => false,
    }
}

/// The reference of a compiled VirtualService.
fn vs_ref(vs: &VirtualServiceEntry) -> ResourceRef {
    ResourceRef {
        kind: Kind::VirtualService,
        namespace: vs.namespace.clone(),
        name: vs.name.clone(),
    }
}

/// The domains (without port) Istio generates for `host` for a client in `ns`.
fn service_domain_forms(host: &str, ns: &str, cluster_domain: &str) -> Vec<String> {
    let mut v = vec![host.to_ascii_lowercase()];
    if host.starts_with('*') || host.parse::<std::net::IpAddr>().is_ok() {
        return v;
    }
    // EnableAbsoluteFqdnVhostDomain (default on): the absolute form with a trailing dot.
    v.push(format!("{}.", v[0]));
    let suffix = format!(".svc.{cluster_domain}");
    if let Some(name_ns) = v[0].strip_suffix(&suffix).map(str::to_string)
        && let Some((name, svc_ns)) = name_ns.split_once('.')
        && !svc_ns.contains('.')
    {
        // generateAltVirtualHostsForKubernetesService
        if svc_ns == ns {
            v.push(name.to_string());
        }
        v.push(format!("{name_ns}.svc"));
        v.push(name_ns);
    }
    v
}

struct Builder<'a> {
    warnings: std::cell::RefCell<Vec<BuildError>>,
    /// Indexes already built, by the identity of the routes they index: a VirtualService
    /// claiming several services shares one.
    indexes: HashMap<Vec<usize>, Option<Arc<PathIndex>>>,
    snap: &'a Snapshot,
    ctx: &'a RouterContext,
    limits: RegexLimits<'a>,
    table: RouteTable,
}

impl Builder<'_> {
    fn add_vhost(&mut self, name: &str, routes: Vec<Arc<CompiledRoute>>) -> u32 {
        self.table.route_count += routes.len();
        let index = if routes.len() < crate::index::INDEX_MIN_ROUTES {
            None
        } else {
            let key: Vec<usize> = routes.iter().map(|r| Arc::as_ptr(r) as usize).collect();
            self.indexes
                .entry(key)
                .or_insert_with(|| {
                    PathIndex::build(
                        routes
                            .iter()
                            .map(|r| r.blocks.iter().map(MatchBlock::path_cond)),
                    )
                    .map(Arc::new)
                })
                .clone()
        };
        self.table.vhosts.push(VirtualHost {
            name: name.into(),
            routes: routes.into(),
            index,
        });
        u32::try_from(self.table.vhosts.len() - 1).unwrap_or(u32::MAX)
    }

    fn add_domain(&mut self, domain: &str, target: DomainTarget) {
        let domain = domain.to_ascii_lowercase();
        if domain == "*" {
            self.table.catch_all.get_or_insert(target);
        } else if let Some(suffix) = domain.strip_prefix('*') {
            self.table.wildcard.entry(suffix.into()).or_insert(target);
        } else {
            self.table.exact.entry(domain.into()).or_insert(target);
        }
    }

    /// Domains of a service's virtual host: every form, with and without each HTTP port.
    fn add_service_domains(&mut self, svc: &Service, vhost: u32) {
        let default_port = svc
            .default_port()
            .and_then(|p| u16::try_from(p.number).ok());
        let ports: Vec<u16> = svc
            .ports
            .iter()
            .filter(|p| http_capable(p))
            .filter_map(|p| u16::try_from(p.number).ok())
            .collect();
        let mut forms =
            service_domain_forms(&svc.hostname, &self.ctx.namespace, &self.ctx.cluster_domain);
        for a in &svc.addresses {
            if a.parse::<std::net::IpAddr>().is_ok() {
                forms.push(a.clone());
            }
        }
        for f in &forms {
            self.add_domain(
                f,
                DomainTarget {
                    vhost,
                    port: default_port,
                },
            );
            for p in &ports {
                self.add_domain(
                    &format!("{f}:{p}"),
                    DomainTarget {
                        vhost,
                        port: Some(*p),
                    },
                );
            }
        }
    }

    fn destination(&self, d: &Destination) -> RouteDestination {
        let port = d
            .port
            .and_then(|p| u16::try_from(p.number).ok())
            .filter(|p| *p != 0)
            .or_else(|| {
                // GetDestinationCluster: a service with one port needs none; else the request's.
                let svc = self.snap.service(&d.host, &self.ctx.namespace)?;
                match svc.ports.as_slice() {
                    [only] => u16::try_from(only.number).ok(),
                    _ => None,
                }
            });
        RouteDestination {
            host: d.host.as_str().into(),
            subset: d
                .subset
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(Into::into),
            port,
        }
    }

    fn sticky_cookie(&self, d: &RouteDestination) -> Option<Box<str>> {
        let tp =
            self.snap
                .traffic_policy(&d.host, d.subset.as_deref(), d.port, &self.ctx.namespace);
        let name = tp.load_balancer?.consistent_hash?.http_cookie?.name;
        (!name.is_empty()).then(|| name.into_boxed_str())
    }

    fn compile_route(
        &self,
        r: &HttpRoute,
        field: &str,
    ) -> Result<Option<CompiledRoute>, BuildError> {
        let mut blocks = Vec::new();
        for (i, m) in r.matches.iter().enumerate() {
            // sourceMatchHTTP: match-level gateways replace the VirtualService's.
            if !m.gateways.is_empty() && !m.gateways.iter().any(|g| self.ctx.serves(g)) {
                continue;
            }
            blocks.push(MatchBlock::compile(
                m,
                r.name.as_deref(),
                self.limits,
                &format!("{field}.match[{i}]"),
            )?);
        }
        if !r.matches.is_empty() && blocks.is_empty() {
            return Ok(None); // no block applies to this gateway context
        }
        let pre = &*self.snap.precompiled;
        let headers = HeaderRules::compile(r.headers.as_ref(), &format!("{field}.headers"), pre)?;
        let action = if let Some(redirect) = &r.redirect {
            match Redirect::compile(redirect) {
                Some(rd) => Action::Redirect(rd),
                None => {
                    // ApplyRedirect: an unsupported code leaves the route without an action.
                    self.warnings.borrow_mut().push(BuildError::new(
                        format!("{field}.redirect.redirectCode"),
                        format!(
                            "{} is not supported: the route is dropped (as Istio drops it)",
                            redirect.redirect_code.unwrap_or(0)
                        ),
                    ));
                    return Ok(None);
                }
            }
        } else if let Some(d) = &r.direct_response {
            Action::Direct(Direct::compile(d, &format!("{field}.directResponse"))?)
        } else {
            let mut dests = Vec::new();
            for (i, rd) in r.route.iter().enumerate() {
                let Some(d) = &rd.destination else { continue };
                let dest = self.destination(d);
                let cookie = self.sticky_cookie(&dest);
                dests.push(WeightedDest {
                    dest,
                    weight: u32::try_from(rd.weight).unwrap_or(0),
                    headers: HeaderRules::compile(
                        rd.headers.as_ref(),
                        &format!("{field}.route[{i}].headers"),
                        pre,
                    )?,
                    cookie,
                });
            }
            if dests.is_empty() {
                return Ok(None);
            }
            if dests.len() > 1 {
                // applyHTTPRouteDestination: 0-weight clusters are dropped when there are others.
                let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
                if total > 0 {
                    dests.retain(|d| d.weight > 0);
                }
            }
            let total_weight = dests
                .iter()
                .map(|d| d.weight)
                .fold(0u32, u32::saturating_add);
            let rewrite = match &r.rewrite {
                Some(rw) => UriRewrite::compile(rw, self.limits, &format!("{field}.rewrite"))?,
                None => None,
            };
            let rewrite_authority = r
                .rewrite
                .as_ref()
                .and_then(|rw| rw.authority.as_deref())
                .filter(|a| !a.is_empty())
                .map(|a| {
                    HeaderValue::from_str(a).map_err(|e| {
                        BuildError::new(format!("{field}.rewrite.authority"), e.to_string())
                    })
                })
                .transpose()?;
            let sticky = dests.iter().any(|d| d.cookie.is_some());
            Action::Forward(Forward {
                dests: dests.into(),
                total_weight,
                rewrite,
                authority: rewrite_authority.or_else(|| headers.authority.clone()),
                sticky,
            })
        };
        let cors = match &r.cors_policy {
            Some(c) => Some(Cors::compile(
                c,
                self.limits,
                &format!("{field}.corsPolicy"),
            )?),
            None => None,
        };
        let mut mirrors = Vec::new();
        if matches!(action, Action::Forward(_)) {
            if let Some(m) = &r.mirror {
                // MirrorPercent: mirrorPercentage, else mirrorPercent, else 100; 0 disables.
                let fraction = match (r.mirror_percentage, r.mirror_percent) {
                    (Some(p), _) => p.fraction(),
                    (None, Some(p)) => (f64::from(p) / 100.0).clamp(0.0, 1.0),
                    (None, None) => 1.0,
                };
                if fraction > 0.0 {
                    mirrors.push(MirrorSpec {
                        dest: self.destination(m),
                        fraction,
                    });
                }
            }
            for m in &r.mirrors {
                let Some(d) = &m.destination else { continue };
                let fraction = m.percentage.map_or(1.0, |p| p.fraction());
                if fraction > 0.0 {
                    mirrors.push(MirrorSpec {
                        dest: self.destination(d),
                        fraction,
                    });
                }
            }
        }
        let policy = RoutePolicy {
            route_name: r.name.as_deref().map(Into::into),
            timeout: r.timeout.map(|t| t.0).filter(|t| !t.is_zero()),
            retries: r
                .retries
                .as_ref()
                .map(|rt| Arc::new(RetryPolicy::from_istio(rt))),
            fault: r
                .fault
                .as_ref()
                .map(|f| Arc::new(FaultPolicy::from_istio(f))),
        };
        let policy = Arc::new(policy);
        let block_policies = blocks
            .iter()
            .map(|b| match &b.route_name {
                Some(name) => Arc::new(RoutePolicy {
                    route_name: Some(name.clone()),
                    ..(*policy).clone()
                }),
                None => policy.clone(),
            })
            .collect();
        Ok(Some(CompiledRoute {
            blocks: blocks.into(),
            action,
            headers,
            cors,
            policy,
            block_policies,
            mirrors: mirrors.into(),
        }))
    }

    fn compile_vs(&self, vs: &VirtualServiceEntry) -> Result<Vec<Arc<CompiledRoute>>, BuildError> {
        let resource = vs_ref(vs);
        let mut out = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            if r.delegate.is_some() {
                // errors in a delegate's routes are the delegate's, at its own route
                let Some((delegate, routes)) = delegate::expand(self.snap, vs, r) else {
                    continue;
                };
                let dref = vs_ref(delegate);
                for (k, merged) in routes {
                    let field = format!("spec.http[{k}]");
                    if let Some(c) = self.attributed(&dref, |b| b.compile_route(&merged, &field))? {
                        out.push(Arc::new(c));
                    }
                }
                continue;
            }
            let field = format!("spec.http[{i}]");
            if let Some(c) = self.attributed(&resource, |b| b.compile_route(r, &field))? {
                out.push(Arc::new(c));
            }
        }
        Ok(out)
    }

    /// Runs `f`, naming `resource` in its error and in the warnings it adds.
    fn attributed<T>(
        &self,
        resource: &ResourceRef,
        f: impl FnOnce(&Self) -> Result<T, BuildError>,
    ) -> Result<T, BuildError> {
        let before = self.warnings.borrow().len();
        let out = f(self).map_err(|e| e.within(resource));
        for w in self.warnings.borrow_mut().iter_mut().skip(before) {
            w.resource = Some(resource.clone());
        }
        out
    }

    fn default_route(&self, svc: &Service) -> Arc<CompiledRoute> {
        let dest = RouteDestination {
            host: svc.hostname.clone(),
            subset: None,
            port: None,
        };
        let cookie = self.sticky_cookie(&dest);
        Arc::new(CompiledRoute {
            blocks: Box::new([]),
            action: Action::Forward(Forward {
                sticky: false,
                dests: Box::new([WeightedDest {
                    dest,
                    weight: 100,
                    headers: HeaderRules::default(),
                    cookie,
                }]),
                total_weight: 100,
                rewrite: None,
                authority: None,
            }),
            headers: HeaderRules::default(),
            cors: None,
            policy: Arc::new(RoutePolicy {
                route_name: Some("default".into()),
                ..RoutePolicy::default()
            }),
            block_policies: Box::new([]),
            mirrors: Box::new([]),
        })
    }

    fn finish(self) -> RouteTable {
        let mut table = self.table;
        table.warnings = self.warnings.into_inner();
        table
    }

    fn build(mut self) -> Result<RouteTable, BuildError> {
        let ns = self.ctx.namespace.as_str();
        let vss: Vec<&Arc<VirtualServiceEntry>> = self
            .snap
            .virtual_services
            .iter()
            .filter(|vs| !vs.hosts.is_empty())
            .filter(|vs| vs.namespace == ns || vs.export_to.visible_to(ns))
            .filter(|vs| vs.gateways.iter().any(|g| self.ctx.serves(g)))
            .collect();
        let mut compiled = Vec::with_capacity(vss.len());
        for vs in &vss {
            compiled.push(self.compile_vs(vs)?);
        }

        if !self.ctx.is_mesh() {
            // Gateways: one virtual host per VirtualService host, routes of every
            // VirtualService naming it concatenated in order; matched without the port.
            let mut by_host: Vec<(String, Vec<Arc<CompiledRoute>>)> = Vec::new();
            for (vs, routes) in vss.iter().zip(&compiled) {
                for h in &vs.hosts {
                    let h = h.to_ascii_lowercase();
                    match by_host.iter_mut().find(|(x, _)| *x == h) {
                        Some((_, rs)) => rs.extend(routes.iter().cloned()),
                        None => by_host.push((h, routes.clone())),
                    }
                }
            }
            for (h, routes) in by_host {
                let vhost = self.add_vhost(&h, routes);
                self.add_domain(&h, DomainTarget { vhost, port: None });
            }
            self.table.strip_port = true;
            self.table.unknown = UnknownHost::NotFound;
            return Ok(self.finish());
        }

        // Visible services, one per hostname (Snapshot::service picks which).
        let mut services: Vec<&Arc<Service>> = Vec::new();
        for s in &self.snap.services {
            if services.iter().any(|x| x.hostname == s.hostname) {
                continue;
            }
            if let Some(chosen) = self.snap.service(&s.hostname, ns)
                && chosen.hostname == s.hostname
            {
                services.push(chosen);
            }
        }
        // For each service, the VirtualService whose host names it most specifically.
        let mut claim: Vec<Option<(bool, usize, usize)>> = vec![None; services.len()];
        let mut non_service: Vec<(String, usize)> = Vec::new();
        for (vi, (vs, routes)) in vss.iter().zip(&compiled).enumerate() {
            if routes.is_empty() {
                continue; // BuildHTTPRoutesForVirtualService found no route: no virtual host
            }
            for h in &vs.hosts {
                let exact = !h.starts_with('*');
                let mut found = false;
                for (si, s) in services.iter().enumerate() {
                    if !covers(h, &s.hostname) {
                        continue;
                    }
                    found = true;
                    let rank = (exact, h.len(), vi);
                    let better = match claim[si] {
                        None => true,
                        Some((e, l, _)) => (exact, h.len()) > (e, l),
                    };
                    if better {
                        claim[si] = Some(rank);
                    }
                }
                if !found && !non_service.iter().any(|(x, _)| x.eq_ignore_ascii_case(h)) {
                    non_service.push((h.to_string(), vi));
                }
            }
        }
        let mut vs_vhost: HashMap<(usize, Arc<str>), u32> = HashMap::new();
        for (si, s) in services.iter().enumerate() {
            if let Some((_, _, vi)) = claim[si] {
                let key = (vi, s.hostname.clone());
                let vhost = match vs_vhost.get(&key) {
                    Some(v) => *v,
                    None => {
                        let name = format!("{}:{}/{}", s.hostname, vss[vi].namespace, vss[vi].name);
                        let v = self.add_vhost(&name, compiled[vi].clone());
                        vs_vhost.insert(key, v);
                        v
                    }
                };
                self.add_service_domains(s, vhost);
            }
        }
        for (h, vi) in &non_service {
            // separateVSHostsAndServices: non-registry hosts are served on port 80.
            let vhost = self.add_vhost(h, compiled[*vi].clone());
            self.add_domain(
                h,
                DomainTarget {
                    vhost,
                    port: Some(80),
                },
            );
            self.add_domain(
                &format!("{h}:80"),
                DomainTarget {
                    vhost,
                    port: Some(80),
                },
            );
        }
        for (si, s) in services.iter().enumerate() {
            if claim[si].is_none() && s.ports.iter().any(http_capable) {
                let route = self.default_route(s);
                let vhost = self.add_vhost(&s.hostname, vec![route]);
                self.add_service_domains(s, vhost);
            }
        }
        self.table.unknown = match self.snap.bootstrap.mesh.outbound_traffic_policy {
            OutboundTrafficMode::AllowAny => UnknownHost::Passthrough,
            OutboundTrafficMode::RegistryOnly => UnknownHost::BlackHole,
        };
        Ok(self.finish())
    }
}

impl RouteTable {
    /// Compiles the snapshot's VirtualServices and services for `ctx`.
    ///
    /// Fails on a regex that does not compile or is larger than
    /// [`RouterContext::regex_size_limit`], or a header that is not valid HTTP; the error
    /// names the resource and field.
    pub fn new(snapshot: &Snapshot, ctx: &RouterContext) -> Result<Self, BuildError> {
        let table = RouteTable {
            generation: snapshot.generation,
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            catch_all: None,
            strip_port: false,
            vhosts: Vec::new(),
            unknown: UnknownHost::NotFound,
            source_labels: ctx.labels.clone(),
            source_namespace: ctx.namespace.as_str().into(),
            warnings: Vec::new(),
            route_count: 0,
        };
        let limits = RegexLimits {
            size_limit: ctx.regex_size_limit,
            pre: &snapshot.precompiled,
        };
        Builder {
            warnings: Default::default(),
            indexes: HashMap::new(),
            snap: snapshot,
            ctx,
            limits,
            table,
        }
        .build()
    }

    /// A sidecar table for the snapshot's own workload: `RouterContext::sidecar`.
    pub fn sidecar(snapshot: &Snapshot) -> Result<Self, BuildError> {
        RouteTable::new(snapshot, &RouterContext::sidecar(snapshot))
    }

    /// The snapshot generation the table was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The number of virtual hosts.
    pub fn virtual_host_count(&self) -> usize {
        self.vhosts.len()
    }

    /// The number of compiled routes (one per `HTTPRoute` that applies, summed over hosts).
    pub fn route_count(&self) -> usize {
        self.route_count
    }

    /// Non-fatal findings while building (routes Istio would drop), naming their
    /// resource and field.
    pub fn warnings(&self) -> &[BuildError] {
        &self.warnings
    }

    /// The name of the virtual host that serves `authority` (as a request would send it),
    /// for diagnostics: `<host>:<ns>/<virtualservice>`, or the service host for a default
    /// route. `None` when no virtual host serves it.
    pub fn virtual_host_for(&self, authority: &str) -> Option<&str> {
        let t = self.lookup(authority)?;
        self.vhosts.get(t.vhost as usize).map(|v| &*v.name)
    }

    /// Envoy's virtual host selection: exact domain, then the longest wildcard suffix, then
    /// `*`. ASCII case-insensitive without allocating.
    fn lookup(&self, authority: &str) -> Option<DomainTarget> {
        self.lookup_split(authority, split_port(authority).0)
    }

    /// [`lookup`](Self::lookup) with the authority's port already split off (`bare`).
    #[inline]
    fn lookup_split(&self, authority: &str, bare: &str) -> Option<DomainTarget> {
        let host = if self.strip_port { bare } else { authority };
        if host.len() > MAX_HOST_LEN {
            return None;
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_mixed_case(host);
        }
        self.lookup_lower(host)
    }

    /// The rare path: a host with upper-case letters, lower-cased into a buffer first.
    #[cold]
    #[inline(never)]
    fn lookup_mixed_case(&self, host: &str) -> Option<DomainTarget> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let bytes = host.as_bytes();
        let lowered = buf.get_mut(..bytes.len())?;
        lowered.copy_from_slice(bytes);
        lowered.make_ascii_lowercase();
        let host = std::str::from_utf8(lowered).ok()?;
        self.lookup_lower(host)
    }

    /// The lookup proper, on an ASCII-lower-case host.
    #[inline]
    fn lookup_lower(&self, host: &str) -> Option<DomainTarget> {
        if let Some(t) = self.exact.get(host) {
            return Some(*t);
        }
        if !self.wildcard.is_empty() {
            // Leftmost dot first: the longest suffix is the most specific wildcard.
            for (i, b) in host.bytes().enumerate() {
                if b == b'.'
                    && i > 0
                    && let Some(t) = self.wildcard.get(&host[i..])
                {
                    return Some(*t);
                }
            }
        }
        self.catch_all
    }

    /// Selects the route for a request (the match path: no allocation).
    pub(crate) fn select<'t>(&'t self, view: &mut RequestView<'_>) -> Selected<'t> {
        let (bare, port) = split_port(view.authority);
        let Some(target) = self.lookup_split(view.authority, bare) else {
            return match self.unknown {
                UnknownHost::Passthrough => Selected::Passthrough { port },
                UnknownHost::BlackHole => Selected::BlackHole,
                UnknownHost::NotFound => Selected::NoRoute,
            };
        };
        view.port = port.or(target.port);
        let Some(vhost) = self.vhosts.get(target.vhost as usize) else {
            return Selected::NoRoute;
        };
        match &vhost.index {
            // Only the routes that can match this path, in route order.
            Some(index) => first_match(
                index
                    .candidates(view.path_and_query.as_bytes())
                    .filter_map(|i| vhost.routes.get(i as usize)),
                view,
            ),
            None => first_match(vhost.routes.iter(), view),
        }
    }

    /// The source labels and namespace for a request: its [`SourceWorkload`] extension, else
    /// the context's.
    pub(crate) fn source<'a>(&'a self, ext: Option<&'a SourceWorkload>) -> (&'a Labels, &'a str) {
        match ext {
            Some(s) => (&s.labels, &s.namespace),
            None => (&self.source_labels, &self.source_namespace),
        }
    }
}

/// The first route (of `routes`, in order) with a block that matches; a route without blocks
/// matches every request.
#[inline]
fn first_match<'t>(
    routes: impl Iterator<Item = &'t Arc<CompiledRoute>>,
    view: &RequestView<'_>,
) -> Selected<'t> {
    for route in routes {
        if route.blocks.is_empty() {
            return Selected::Route {
                route,
                block: None,
                port: view.port,
            };
        }
        if let Some(i) = route.blocks.iter().position(|b| b.matches(view)) {
            return Selected::Route {
                route,
                block: Some(i),
                port: view.port,
            };
        }
    }
    Selected::NoRoute
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("generation", &self.generation)
            .field("virtual_hosts", &self.vhosts.len())
            .field("routes", &self.route_count)
            .field("domains", &(self.exact.len() + self.wildcard.len()))
            .finish_non_exhaustive()
    }
}

// === impl Forward ===

impl Forward {
    /// Chooses a destination: the sticky cookie's subset when it names a live destination
    /// (`mesh_core::sticky`), else by weight.
    pub(crate) fn choose(&self, headers: &http::HeaderMap, rng: &mut fastrand::Rng) -> usize {
        if self.dests.len() == 1 {
            return 0;
        }
        if self.sticky {
            for d in self.dests.iter() {
                let Some(cookie) = &d.cookie else { continue };
                let Some((subset, _)) = mesh_core::sticky::find_cookie(headers, cookie)
                    .and_then(mesh_core::sticky::decode)
                else {
                    continue;
                };
                if let Some(i) = self.dests.iter().position(|x| {
                    x.weight > 0 && x.dest.host == d.dest.host && x.dest.subset.as_deref() == subset
                }) {
                    return i;
                }
            }
        }
        if self.total_weight == 0 {
            return 0;
        }
        let mut pick = rng.u32(0..self.total_weight);
        for (i, d) in self.dests.iter().enumerate() {
            if pick < d.weight {
                return i;
            }
            pick -= d.weight;
        }
        self.dests.len() - 1
    }
}

// === impl RouteTableHandle ===

impl RouteTableHandle {
    /// A handle serving `table`.
    pub fn new(table: RouteTable) -> Self {
        RouteTableHandle {
            inner: Arc::new(ArcSwap::from_pointee(table)),
        }
    }

    /// Replaces the table. Requests already routed keep what they chose; the next request
    /// routes on the new table.
    pub fn store(&self, table: RouteTable) {
        self.inner.store(Arc::new(table));
    }

    /// The current table.
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.inner.load_full()
    }

    pub(crate) fn load(&self) -> Guard<Arc<RouteTable>> {
        self.inner.load()
    }
}

impl std::fmt::Debug for RouteTableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RouteTableHandle")
            .field(&*self.inner.load())
            .finish()
    }
}

/// A seed for a new router instance's RNG: the configured seed mixed with a counter, so
/// clones draw different but reproducible sequences.
pub(crate) fn next_seed(base: Option<u64>, counter: &AtomicU64) -> fastrand::Rng {
    match base {
        Some(seed) => {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            fastrand::Rng::with_seed(splitmix(seed ^ splitmix(n)))
        }
        None => fastrand::Rng::with_seed(splitmix(
            SEED_COUNTER.fetch_add(1, Ordering::Relaxed) ^ fastrand::u64(..),
        )),
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds a [`RequestView`] of `req` (the port is filled in by [`RouteTable::select`]).
///
/// The authority is the target's when the URI has one (absolute-form, HTTP/2's
/// `:authority`), else `Host`: RFC 9112 §3.2.2 (a received `Host` never overrides the
/// target), as the balancer and the connector read it too. `mesh-proxy`'s engine makes `Host`
/// equal to the target's authority before the stack sees a request, and refuses requests
/// with two `Host` fields or userinfo, so every layer routes, applies policy to and forwards
/// one authority.
pub(crate) fn view_of<'a, B>(
    req: &'a Request<B>,
    source: (&'a Labels, &'a str),
) -> RequestView<'a> {
    let uri = req.uri();
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let authority = match uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or(""),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    RequestView {
        path_and_query,
        path,
        query,
        method: req.method().as_str(),
        scheme: uri.scheme_str().unwrap_or("http"),
        authority,
        headers: req.headers(),
        port: None,
        source_labels: source.0,
        source_namespace: source.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_forms_follow_generate_alt_virtual_hosts() {
        // httproute.go generateAltVirtualHostsForKubernetesService
        let same = service_domain_forms(
            "reviews.default.svc.cluster.local",
            "default",
            "cluster.local",
        );
        assert!(same.contains(&"reviews".to_string()));
        assert!(same.contains(&"reviews.default".to_string()));
        assert!(same.contains(&"reviews.default.svc".to_string()));
        assert!(same.contains(&"reviews.default.svc.cluster.local.".to_string()));
        let other =
            service_domain_forms("reviews.default.svc.cluster.local", "prod", "cluster.local");
        assert!(!other.contains(&"reviews".to_string()));
        assert!(other.contains(&"reviews.default".to_string()));
        let ext = service_domain_forms("api.example.com", "default", "cluster.local");
        assert_eq!(
            ext,
            vec![
                "api.example.com".to_string(),
                "api.example.com.".to_string()
            ]
        );
    }

    mod indexed_matches_linear {
        //! The candidate index against the plain scan: the same route and block for every
        //! request, over random route lists and paths.

        use super::*;
        use mesh_core::compile::compile;
        use mesh_core::load::Loader;
        use proptest::prelude::*;

        const SEGMENTS: &[&str] = &[
            "", "a", "A", "ab", "aB", "api", "API", "v1", "v2", "x.y", "é",
        ];
        const REGEXES: &[&str] = &[
            "/a.*",
            "/api/[a-z0-9]+",
            "/ab+",
            "/A/.*",
            ".*",
            "/(a|b)/.*",
            r"/a\.b",
            "/api/v1",
            "/api/v[12]/.*",
            "(?i)/api/.*",
            r"/a\<b.*",
            "/ab*",
            "/x.y/?",
            "[/]api.*",
        ];

        /// A path-like literal: segments, cut anywhere (mid-segment too), maybe a query.
        fn literal() -> impl Strategy<Value = String> {
            (
                proptest::collection::vec(proptest::sample::select(SEGMENTS), 0..4),
                any::<prop::sample::Index>(),
                any::<bool>(),
                proptest::option::of(proptest::sample::select(&["?", "?q=1", "?Q"][..])),
            )
                .prop_map(|(segs, cut, cut_it, query)| {
                    let mut s = String::new();
                    for seg in segs {
                        s.push('/');
                        s.push_str(seg);
                    }
                    if cut_it && !s.is_empty() {
                        let mut at = cut.index(s.len() + 1);
                        while !s.is_char_boundary(at) {
                            at -= 1;
                        }
                        s.truncate(at);
                    }
                    if let Some(q) = query {
                        s.push_str(q);
                    }
                    s
                })
        }

        #[derive(Debug, Clone)]
        enum Uri {
            None,
            Exact(String),
            Prefix(String),
            Regex(&'static str),
        }

        #[derive(Debug, Clone)]
        struct Block {
            uri: Uri,
            ignore_case: bool,
            header: bool,
            query: bool,
            claim: bool,
        }

        fn block() -> impl Strategy<Value = Block> {
            let uri = prop_oneof![
                1 => Just(Uri::None),
                3 => literal().prop_map(Uri::Exact),
                4 => literal().prop_map(Uri::Prefix),
                2 => proptest::sample::select(REGEXES).prop_map(Uri::Regex),
            ];
            (
                uri,
                any::<bool>(),
                prop::bool::weighted(0.25),
                prop::bool::weighted(0.15),
                prop::bool::weighted(0.05),
            )
                .prop_map(|(uri, ignore_case, header, query, claim)| Block {
                    uri,
                    ignore_case,
                    header,
                    query,
                    claim,
                })
        }

        fn yaml(routes: &[Vec<Block>]) -> String {
            let mut y = String::from(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: p, namespace: default}\nspec:\n  hosts: [p.example.com]\n  http:\n",
            );
            for (i, blocks) in routes.iter().enumerate() {
                y.push_str(&format!("  - name: r{i}\n"));
                if !blocks.is_empty() {
                    y.push_str("    match:\n");
                }
                for b in blocks {
                    let mut c = Vec::new();
                    match &b.uri {
                        Uri::None => {}
                        Uri::Exact(l) => c.push(format!("uri: {{exact: '{l}'}}")),
                        Uri::Prefix(l) => c.push(format!("uri: {{prefix: '{l}'}}")),
                        Uri::Regex(r) => c.push(format!("uri: {{regex: '{r}'}}")),
                    }
                    if b.ignore_case {
                        c.push("ignoreUriCase: true".into());
                    }
                    let mut headers = Vec::new();
                    if b.header {
                        headers.push("x-h: {exact: '1'}");
                    }
                    if b.claim {
                        headers.push("'@request.auth.claims.sub': {exact: a}");
                    }
                    if !headers.is_empty() {
                        c.push(format!("headers: {{{}}}", headers.join(", ")));
                    }
                    if b.query {
                        c.push("queryParams: {q: {exact: '1'}}".into());
                    }
                    y.push_str(&format!("    - {{{}}}\n", c.join(", ")));
                }
                y.push_str(&format!(
                    "    route: [{{destination: {{host: r{i}.dest}}}}]\n"
                ));
            }
            y
        }

        fn request_path() -> impl Strategy<Value = String> {
            (literal(), proptest::collection::vec(any::<bool>(), 8)).prop_map(|(l, flips)| {
                // Random case changes, so that ignoreUriCase and case-folded keys are exercised.
                let mut p: String = l
                    .chars()
                    .zip(flips.iter().cycle())
                    .map(|(c, f)| if *f { c.to_ascii_uppercase() } else { c })
                    .collect();
                if !p.starts_with('/') {
                    p.insert(0, '/');
                }
                p.replace('é', "%C3%A9")
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn same_route_as_linear_scan(
                routes in proptest::collection::vec(proptest::collection::vec(block(), 0..3), crate::index::INDEX_MIN_ROUTES..40),
                reqs in proptest::collection::vec((request_path(), any::<bool>()), 24),
            ) {
                let mut l = Loader::new();
                l.add_str("p.yaml", &yaml(&routes));
                let table = RouteTable::sidecar(&compile(l.finish().resources)).unwrap();
                let target = table.lookup("p.example.com").unwrap();
                let vhost = &table.vhosts[target.vhost as usize];
                // Every route survives validation and compilation, and the host is indexed.
                prop_assert_eq!(vhost.routes.len(), routes.len());
                prop_assert!(vhost.index.is_some());
                for (path, header) in &reqs {
                    let mut b = Request::builder().uri(path.as_str()).header("host", "p.example.com");
                    if *header {
                        b = b.header("x-h", "1");
                    }
                    let req = b.body(()).unwrap();
                    let mut view = view_of(&req, table.source(None));
                    let got = table.select(&mut view);
                    let want = first_match(vhost.routes.iter(), &view);
                    let id = |s: &Selected<'_>| match s {
                        Selected::Route { route, block, .. } => Some((Arc::as_ptr(route), *block)),
                        _ => None,
                    };
                    let name = |s: &Selected<'_>| match s {
                        Selected::Route { route, .. } => route.policy.route_name.clone(),
                        _ => None,
                    };
                    prop_assert_eq!(id(&got), id(&want), "path {} header {}: got {:?}, want {:?}", path, header, name(&got), name(&want));
                }
            }
        }
    }

    #[test]
    fn covers_handles_wildcards_on_both_sides() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.com", "*.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
    }
}

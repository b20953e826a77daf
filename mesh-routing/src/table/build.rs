//! Building a [`RouteTable`]: virtual hosts and their domains from the snapshot's services
//! and VirtualServices.

use super::*;

mod ratelimit;
mod route;

use ratelimit::RateLimits;

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
pub(super) fn covers(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('*'), name.strip_prefix('*')) {
        (Some(_), None) => host_matches(pattern, name),
        (Some(p), Some(n)) => n.ends_with(p),
        (None, None) => pattern.eq_ignore_ascii_case(name),
        (None, Some(_)) => false,
    }
}

/// The reference of a compiled VirtualService.
pub(crate) fn vs_ref(vs: &VirtualServiceEntry) -> ResourceRef {
    ResourceRef {
        kind: Kind::VirtualService,
        namespace: vs.namespace.clone(),
        name: vs.name.clone(),
    }
}

/// The domains (without port) Istio generates for `host` for a client in `ns`.
pub(super) fn service_domain_forms(host: &str, ns: &str, cluster_domain: &str) -> Vec<String> {
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
    rate_limits: RateLimits<'a>,
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
}

impl Builder<'_> {
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
        self.forward_route(dest, "default")
    }

    /// A route that forwards everything to `dest` (named `name` in its policy).
    fn forward_route(&self, dest: RouteDestination, name: &str) -> Arc<CompiledRoute> {
        let cookie = self.sticky_cookie(&dest);
        let dest_host = dest.host.clone();
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
                route_name: Some(name.into()),
                rate_limit: self
                    .rate_limits
                    .within(&dest_host, || self.rate_limits.for_route(Some(name))),
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
                for h in self.ctx.gateway_hosts(vs) {
                    let routes = self.routes_for(vs, routes, &h)?;
                    match by_host.iter_mut().find(|(x, _)| *x == h) {
                        Some((_, rs)) => rs.extend(routes),
                        None => by_host.push((h, routes)),
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
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for s in &self.snap.services {
            if !seen.insert(&s.hostname) {
                continue;
            }
            if let Some(chosen) = self.snap.service(&s.hostname, ns)
                && chosen.hostname == s.hostname
            {
                services.push(chosen);
            }
        }
        // The services of each exact hostname (lower-cased): an exact VirtualService host
        // covers only those, so claiming is a look-up rather than a scan of the mesh.
        let mut by_name: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        for (si, s) in services.iter().enumerate() {
            if !s.hostname.starts_with('*') {
                by_name
                    .entry(s.hostname.to_ascii_lowercase().into())
                    .or_default()
                    .push(si);
            }
        }
        let all: Vec<usize> = (0..services.len()).collect();
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
                let candidates: &[usize] = if exact {
                    by_name
                        .get(h.to_ascii_lowercase().as_str())
                        .map_or(&[], Vec::as_slice)
                } else {
                    &all
                };
                for &si in candidates {
                    let s = services[si];
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
                        let routes = self.routes_for(vss[vi], &compiled[vi], &s.hostname)?;
                        let v = self.add_vhost(&name, routes);
                        vs_vhost.insert(key, v);
                        v
                    }
                };
                self.add_service_domains(s, vhost);
            }
        }
        for (h, vi) in &non_service {
            // separateVSHostsAndServices: non-registry hosts are served on port 80.
            let routes = self.routes_for(vss[*vi], &compiled[*vi], h)?;
            let vhost = self.add_vhost(h, routes);
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
            // Sidecar `outboundTrafficPolicy.egressProxy`: unknown hosts go to the egress
            // proxy (Istio's sidecar.go: the passthrough cluster becomes the proxy's)
            OutboundTrafficMode::AllowAny => match &self.snap.egress_proxy {
                Some(d) => {
                    let dest = self.destination(d);
                    let port = dest.port;
                    UnknownHost::Forward(self.forward_route(dest, "egress-proxy"), port)
                }
                None => UnknownHost::Passthrough,
            },
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
            listener_port: ctx.port,
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
            rate_limits: RateLimits::new(snapshot),
            table,
        }
        .build()
    }

    /// A sidecar table for the snapshot's own workload: `RouterContext::sidecar`.
    pub fn sidecar(snapshot: &Snapshot) -> Result<Self, BuildError> {
        RouteTable::new(snapshot, &RouterContext::sidecar(snapshot))
    }
}

//! Reading a [`RouteTable`]: virtual host lookup by authority, route selection, the
//! swappable handle and the per-request view.

use super::*;

impl RouteTable {
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
    pub(super) fn lookup(&self, authority: &str) -> Option<DomainTarget> {
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
            return match &self.unknown {
                UnknownHost::Passthrough => Selected::Passthrough { port },
                UnknownHost::Forward(route, port) => Selected::Route {
                    route,
                    block: None,
                    port: *port,
                },
                UnknownHost::BlackHole => Selected::BlackHole,
                UnknownHost::NotFound => Selected::NoRoute,
            };
        };
        view.port = self.listener_port.or(port).or(target.port);
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
pub(super) fn first_match<'t>(
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
    pub(crate) fn choose(&self, headers: &http::HeaderMap, rng: &mut Rng) -> usize {
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
        let mut pick = rng.below(self.total_weight as usize) as u32;
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

    /// A cache of the current table for one service: its `load` compares a pointer with the
    /// shared one (an `ArcSwap::load` is a few dozen instructions and atomic writes).
    pub(crate) fn cache(&self) -> TableCache {
        arc_swap::Cache::new(self.inner.clone())
    }
}

/// A service's cache of its handle's table ([`RouteTableHandle::cache`]).
pub(crate) type TableCache = arc_swap::Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>;

impl std::fmt::Debug for RouteTableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RouteTableHandle")
            .field(&*self.inner.load())
            .finish()
    }
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
    let authority = mesh_core::authority::of_request(req).unwrap_or("");
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
        claims: req.extensions().get::<mesh_core::ext::JwtClaims>(),
    }
}

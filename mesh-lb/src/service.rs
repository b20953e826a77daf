//! The tower layer: [`LbLayer`], [`Lb`] and [`ResponseFuture`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::SET_COOKIE;
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::authority::{self, Authority};
use mesh_core::body::ReplyBody;
use mesh_core::compile::{Snapshot, resolve_host};
use mesh_core::ext::stream_info;
use mesh_core::ext::{
    Passthrough, PreviousHosts, PreviousPriorities, RouteDestination, SelectedEndpoint,
    SelectedUpstream, SlotsView, local_reply, route_destination, route_policy, slots_mut,
};
use mesh_core::flags::ResponseFlags;
use mesh_core::hash::{FastHashMap, stable_hash};
use mesh_core::health::{HealthSource, HealthTable, cluster_name};
use mesh_core::locality::Locality;
use mesh_core::model::networking::{OutboundTrafficMode, Resolution};
use mesh_core::sticky;
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::cluster::{BuildInput, Cluster, Host};
use crate::config::LbConfig;
use crate::discover::{
    Discover, EndpointSet, ResolveFuture, Resolver, StaticDiscover, SystemResolver,
};
use crate::endpoint::{EndpointState, Registry};
use crate::hash::{header_hash, ip_hash, query_hash};
use crate::policy::{Algorithm, HashKey, Policy};

/// Builds [`Lb`] services; holds what every worker shares (the snapshot, discovery, health,
/// endpoint counters). Cheap to clone.
#[derive(Clone)]
pub struct LbLayer {
    shared: Arc<Shared>,
}

/// Builds an [`LbLayer`] with non-default parts.
pub struct LbBuilder {
    snapshot: Arc<Snapshot>,
    config: LbConfig,
    discover: Option<Arc<dyn Discover>>,
    health: Option<Arc<dyn HealthSource>>,
    resolver: Option<Arc<dyn Resolver>>,
}

/// The balancer service: picks an endpoint for the request's [`RouteDestination`], records
/// it as a [`SelectedUpstream`](mesh_core::ext::SelectedUpstream) (the [`SelectedEndpoint`]
/// and its cluster), and calls the inner service (the connector).
///
/// Each [`Layer::layer`] call makes an independent balancer state (cursors, caches): build
/// one per worker thread. Clones share it.
pub struct Lb<S> {
    inner: S,
    shared: Arc<Shared>,
    worker: Arc<Worker>,
    /// This clone's view of the worker's cache: read without any atomic read-modify-write.
    local: Arc<Cache>,
    /// Recent destinations by the address of their host's `Arc` (the router hands out the
    /// same `Arc`s request after request), so a repeat needs no string hashing. Holding the
    /// `Arc`s keeps their addresses from being reused by other strings.
    memo: [Option<(RouteDestination, usize)>; MEMO],
}

const MEMO: usize = 8;

/// The future of [`Lb`]: the inner service's, or a local reply, or a DNS lookup then the
/// inner service's (passthrough).
#[pin_project]
pub struct ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    #[pin]
    state: State<S, B>,
    guard: Option<Guard>,
    set_cookie: Option<HeaderValue>,
}

#[pin_project(project = StateProj)]
enum State<S, B>
where
    S: Service<Request<B>>,
{
    Called {
        #[pin]
        fut: S::Future,
    },
    /// Boxed: passthrough by name is rare, and keeps every other future small.
    Resolving { resolving: Box<Resolving<S, B>> },
    /// A reply of the balancer's own (boxed: rare, and a response inline would make every
    /// request's future 200 bytes larger).
    Local { res: Box<Option<S::Response>> },
}

struct Resolving<S, B> {
    resolve: ResolveFuture,
    svc: Option<S>,
    req: Option<Request<B>>,
    port: u16,
}

struct Shared {
    snapshot: ArcSwap<Snapshot>,
    snapshot_gen: AtomicU64,
    config: LbConfig,
    discover: Arc<dyn Discover>,
    health: Arc<dyn HealthSource>,
    resolver: Arc<dyn Resolver>,
    registry: Registry,
    workers: AtomicU64,
    /// Destinations whose first `503 NR` was logged, since the last configuration.
    no_route_logged: std::sync::Mutex<std::collections::HashSet<RouteDestination>>,
    /// How many `503 NR` lines were logged (for tests and stats).
    no_route_logs: AtomicU64,
}

/// At most this many destinations have their first `503 NR` logged per configuration.
const NO_ROUTE_LOG_LIMIT: usize = 256;

struct Worker {
    cache: ArcSwap<Cache>,
    seed: u64,
}

/// Built entries by destination: an index into `entries`, so a lookup leaves no borrow
/// behind when the entry must be replaced.
#[derive(Clone)]
struct Cache {
    snapshot_gen: u64,
    index: FastHashMap<RouteDestination, usize>,
    entries: Vec<Arc<Entry>>,
}

/// What a destination resolves to.
enum Entry {
    Cluster(Cluster),
    /// Host, port or subset unknown: the cluster does not exist (`503 NR`).
    NoCluster,
    /// The host is not in the registry.
    UnknownHost,
    /// `PASSTHROUGH` or `resolution: NONE`: connect to the host the request named.
    Passthrough {
        default_port: u16,
    },
}

/// An endpoint picked by [`Lb::pick`]; counted as in flight until dropped.
pub struct Picked {
    /// The endpoint.
    pub endpoint: SelectedEndpoint,
    /// The endpoint with its cluster (health cell, `connectionPool`, `outlierDetection`,
    /// circuit-breaker limits), as a request to it would carry.
    pub upstream: SelectedUpstream,
    _guard: Guard,
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Counts a request in flight on an endpoint until its response body ends (the guard
/// moves into the body when the response head arrives) or the future is dropped; measures
/// latency (to the response head) for peak-EWMA.
struct Guard {
    state: Option<Arc<EndpointState>>,
    started: Option<(Instant, Duration)>,
}

// === impl LbLayer ===

impl LbLayer {
    /// A layer over `snapshot` with static discovery, a fresh [`HealthTable`], the system
    /// resolver for passthrough, and the default [`LbConfig`].
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        LbLayer::builder(snapshot).build()
    }

    /// A builder starting from `snapshot`.
    pub fn builder(snapshot: Arc<Snapshot>) -> LbBuilder {
        LbBuilder {
            snapshot,
            config: LbConfig::default(),
            discover: None,
            health: None,
            resolver: None,
        }
    }

    /// Replaces the snapshot. Every [`Lb`] built by this layer (or its clones) uses it from
    /// its next request; requests in flight are not affected. Endpoint counters survive for
    /// endpoints that remain.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.shared.discover.snapshot_changed(&snapshot);
        self.shared.snapshot.store(snapshot);
        self.shared.snapshot_gen.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut logged) = self.shared.no_route_logged.lock() {
            logged.clear();
        }
    }

    /// How many `503 NR` answers were logged: the first of each destination per
    /// configuration (a route to a host or subset that does not exist; IST0101).
    pub fn no_route_logs(&self) -> u64 {
        self.shared.no_route_logs.load(Ordering::Relaxed)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The health source the balancers read (hand it to outlier detection).
    pub fn health(&self) -> Arc<dyn HealthSource> {
        self.shared.health.clone()
    }

    /// The circuit-breaker counters (`connectionPool`, retry budget) of every cluster a
    /// worker or an in-flight request holds now, sorted by cluster name: what the proxy
    /// shows on `/clusters` and `/stats/prometheus`.
    pub fn circuit_breakers(&self) -> Vec<(Arc<str>, Arc<mesh_core::limits::ClusterCounters>)> {
        self.shared.registry.live_counters()
    }

    /// The configuration.
    pub fn config(&self) -> &LbConfig {
        &self.shared.config
    }
}

impl<S> Layer<S> for LbLayer {
    type Service = Lb<S>;

    fn layer(&self, inner: S) -> Lb<S> {
        let n = self.shared.workers.fetch_add(1, Ordering::Relaxed);
        let seed = mesh_core::rng::seed(self.shared.config.seed, n);
        let empty = Arc::new(Cache::empty(u64::MAX));
        let worker = Worker {
            cache: ArcSwap::new(empty.clone()),
            seed,
        };
        Lb {
            inner,
            shared: self.shared.clone(),
            worker: Arc::new(worker),
            local: empty,
            memo: Default::default(),
        }
    }
}

impl fmt::Debug for LbLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LbLayer")
            .field("generation", &self.shared.snapshot.load().generation)
            .field("config", &self.shared.config)
            .field("discover", &self.shared.discover)
            .field("health", &self.shared.health)
            .finish()
    }
}

// === impl LbBuilder ===

impl LbBuilder {
    /// Sets the configuration. Default: [`LbConfig::default`].
    pub fn config(mut self, config: LbConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets where endpoints come from. Default: [`StaticDiscover`]. Combine sources with
    /// [`Chain`](crate::discover::Chain) (e.g. a feed, DNS, then static).
    pub fn discover(mut self, discover: Arc<dyn Discover>) -> Self {
        self.discover = Some(discover);
        self
    }

    /// Sets the health source shared with outlier detection and health checks. Default: a
    /// new [`HealthTable`].
    pub fn health(mut self, health: Arc<dyn HealthSource>) -> Self {
        self.health = Some(health);
        self
    }

    /// Sets the resolver used for passthrough destinations. Default: [`SystemResolver`].
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> LbLayer {
        let discover = self.discover.unwrap_or_else(|| Arc::new(StaticDiscover));
        discover.snapshot_changed(&self.snapshot);
        let shared = Shared {
            snapshot: ArcSwap::new(self.snapshot),
            snapshot_gen: AtomicU64::new(0),
            config: self.config,
            discover,
            health: self.health.unwrap_or_else(|| Arc::new(HealthTable::new())),
            resolver: self.resolver.unwrap_or_else(|| Arc::new(SystemResolver)),
            registry: Registry::new(),
            workers: AtomicU64::new(0),
            no_route_logged: Default::default(),
            no_route_logs: AtomicU64::new(0),
        };
        LbLayer {
            shared: Arc::new(shared),
        }
    }
}

impl fmt::Debug for LbBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LbBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === impl Cache ===

impl Cache {
    fn empty(snapshot_gen: u64) -> Self {
        Cache {
            snapshot_gen,
            index: HashMap::default(),
            entries: Vec::new(),
        }
    }
}

// === impl Entry ===

impl Entry {
    #[inline]
    fn fresh(&self, version: u64) -> bool {
        match self {
            Entry::Cluster(c) => {
                c.version == version && c.refresh_at.is_none_or(|t| Instant::now() < t)
            }
            _ => true,
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Logs the first `503 NR` of a destination (until the next configuration): a route to a
    /// host or subset that does not exist, which the configuration's analysis reported as
    /// IST0101 when it was loaded. Later requests to it are not logged.
    #[cold]
    #[inline(never)]
    fn log_no_route(&self, dest: &RouteDestination, why: &str, route: Option<&str>) {
        let Ok(mut logged) = self.no_route_logged.lock() else {
            return;
        };
        if logged.len() >= NO_ROUTE_LOG_LIMIT || !logged.insert(dest.clone()) {
            return;
        }
        self.no_route_logs.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            host = %dest.host,
            subset = dest.subset.as_deref().unwrap_or(""),
            port = dest.port.unwrap_or(0),
            route = route.unwrap_or(""),
            "503 NR: {why} (IST0101; logged for the first request to this destination only)"
        );
    }

    #[inline]
    fn version(&self, snapshot_gen: u64) -> u64 {
        snapshot_gen
            .wrapping_add(self.discover.version())
            .wrapping_add(self.health.generation())
    }

    fn build(&self, dest: &RouteDestination, version: u64, seed: u64) -> Entry {
        let snap = self.snapshot.load();
        let ns = snap.bootstrap.workload.namespace.as_str();
        let host = &*dest.host;
        let Some(service) = snap.service(host, ns) else {
            return Entry::UnknownHost;
        };
        let port = match dest.port {
            Some(p) => service.port(p),
            None => service.default_port(),
        };
        let Some(port) = port else {
            return Entry::NoCluster;
        };
        let port_number = u16::try_from(port.number).unwrap_or(0);
        let subset = match dest.subset.as_deref() {
            Some(name) => match snap.subset(host, name, ns) {
                Some(s) => Some(s),
                None => return Entry::NoCluster,
            },
            None => None,
        };
        let client_locality = snap
            .bootstrap
            .workload
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default();
        let tp = snap.traffic_policy(host, dest.subset.as_deref(), Some(port_number), ns);
        let policy = Policy::from_traffic_policy(
            &tp,
            host,
            &self.config,
            !client_locality.region.is_empty(),
        );
        if service.resolution == Resolution::None || policy.algorithm == Algorithm::Passthrough {
            return Entry::Passthrough {
                default_port: port_number,
            };
        }
        let endpoints = self
            .discover
            .endpoints(service)
            .unwrap_or_else(|| Arc::new(EndpointSet::default()));
        let name: Arc<str> = cluster_name(port_number, dest.subset.as_deref(), host).into();
        let seed = seed ^ stable_hash(name.as_bytes());
        Entry::Cluster(Cluster::build(BuildInput {
            name,
            subset: dest.subset.clone(),
            subset_labels: subset.map(|s| &s.labels),
            service,
            port,
            endpoints: &endpoints,
            policy,
            client_locality: &client_locality,
            client_labels: &snap.bootstrap.workload.labels,
            registry: &self.registry,
            health: &*self.health,
            version,
            seed,
            overprovisioning: self.config.overprovisioning_factor,
            ewma_default_rtt: self.config.peak_ewma.default_rtt.0,
            now: Instant::now(),
            trust_domain: &snap.bootstrap.mesh.trust_domain,
        }))
    }

    fn allow_any(&self) -> bool {
        self.snapshot.load().bootstrap.mesh.outbound_traffic_policy == OutboundTrafficMode::AllowAny
    }
}

// === impl Lb ===

impl<S> Lb<S> {
    /// Wraps `inner` with a balancer over `snapshot` (static discovery, default config).
    /// Prefer building an [`LbLayer`] once and calling `layer` per worker.
    pub fn new(inner: S, snapshot: Arc<Snapshot>) -> Self {
        LbLayer::new(snapshot).layer(inner)
    }

    /// Makes sure this clone's cache has a fresh entry for `dest`; returns its index.
    #[inline]
    fn slot(&mut self, dest: &RouteDestination) -> usize {
        let shared = &*self.shared;
        let snapshot_gen = shared.snapshot_gen.load(Ordering::Acquire);
        let version = shared.version(snapshot_gen);
        if self.local.snapshot_gen == snapshot_gen {
            let m = memo_index(dest);
            if let Some((key, i)) = &self.memo[m]
                && Arc::ptr_eq(&key.host, &dest.host)
                && key.port == dest.port
                && key.subset == dest.subset
                && self.local.entries[*i].fresh(version)
            {
                return *i;
            }
            if let Some(&i) = self.local.index.get(dest)
                && self.local.entries[i].fresh(version)
            {
                self.memo[m] = Some((dest.clone(), i));
                return i;
            }
        }
        self.memo = Default::default();
        let i = self.refresh(dest, snapshot_gen, version);
        self.memo[memo_index(dest)] = Some((dest.clone(), i));
        i
    }

    /// The slow path: adopt the worker's cache if another clone built the entry, else build
    /// it and publish the new cache to the worker.
    #[cold]
    fn refresh(&mut self, dest: &RouteDestination, snapshot_gen: u64, version: u64) -> usize {
        let base = self.worker.cache.load_full();
        if base.snapshot_gen == snapshot_gen
            && let Some(&i) = base.index.get(dest)
            && base.entries[i].fresh(version)
        {
            self.local = base;
            return i;
        }
        let entry = Arc::new(self.shared.build(dest, version, self.worker.seed));
        let mut cache = if base.snapshot_gen == snapshot_gen {
            (*base).clone()
        } else {
            Cache::empty(snapshot_gen)
        };
        let i = match cache.index.get(dest) {
            Some(&i) => {
                cache.entries[i] = entry;
                i
            }
            None => {
                cache.entries.push(entry);
                cache.index.insert(dest.clone(), cache.entries.len() - 1);
                cache.entries.len() - 1
            }
        };
        let cache = Arc::new(cache);
        self.worker.cache.store(cache.clone());
        self.local = cache;
        i
    }
}

impl<S> Lb<S> {
    /// Logs the first `503 NR` of the request's destination (see [`Shared::log_no_route`]).
    #[cold]
    fn no_route<B>(&self, req: &Request<B>, derived: Option<&RouteDestination>, why: &str) {
        let ext = req.extensions();
        if let Some(dest) = route_destination(ext).or(derived) {
            let route = route_policy(ext).and_then(|p| p.route_name.as_deref());
            self.shared.log_no_route(dest, why, route);
        }
    }

    /// Picks an endpoint of `dest` without a request: for opaque TCP connections, or to look
    /// at what the balancer would do. `hash` is the consistent-hash key when the caller has
    /// one (a random one is used otherwise). The pick counts as a request in flight on the
    /// endpoint until the returned [`Picked`] is dropped (least request then balances
    /// connections, as Envoy's `LEAST_CONN` does for TCP).
    ///
    /// Errors are the flags a request would get: `NR` when the cluster does not exist (and
    /// for passthrough destinations, which have no endpoints to pick), `UH` when no endpoint
    /// can take traffic.
    pub fn pick(
        &mut self,
        dest: &RouteDestination,
        hash: Option<u64>,
    ) -> Result<Picked, ResponseFlags> {
        let i = self.slot(dest);
        let Entry::Cluster(cluster) = &*self.local.entries[i] else {
            return Err(ResponseFlags::NO_ROUTE);
        };
        let host = cluster
            .pick(hash)
            .ok_or(ResponseFlags::NO_HEALTHY_UPSTREAM)?;
        host.state.begin();
        Ok(Picked {
            endpoint: host.upstream.endpoint().clone(),
            upstream: host.upstream.clone(),
            _guard: Guard {
                state: Some(host.state.clone()),
                started: None,
            },
        })
    }
}

impl<S: Clone> Clone for Lb<S> {
    fn clone(&self) -> Self {
        Lb {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            worker: self.worker.clone(),
            local: self.local.clone(),
            // Empty: the layers above clone this service for every request that might be
            // retried (or is delayed, or mirrored) and mostly drop the clone unused; copying
            // eight destinations (their `Arc`s) each time would cost more than a clone that
            // is used refilling its memo.
            memo: Default::default(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Lb<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lb")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, R> Service<Request<B>> for Lb<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // the slots looked up once for the values read below
        let view = SlotsView::new(req.extensions());
        let (slot, derived) = match view.route_destination() {
            Some(dest) if view.own::<Passthrough>().is_some() => {
                let (host, port) = (dest.host.clone(), dest.port.unwrap_or(80));
                return self.passthrough(req, &host, port);
            }
            Some(dest) => (self.slot(dest), None),
            None => match destination_from_authority(&req, &self.shared.snapshot.load()) {
                Some(dest) => (self.slot(&dest), Some(dest)),
                None => {
                    return ResponseFuture::local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlags::NO_ROUTE,
                        "",
                    );
                }
            },
        };
        let cluster = match &*self.local.entries[slot] {
            Entry::Cluster(c) => c,
            Entry::NoCluster => {
                self.no_route(&req, derived.as_ref(), "the subset or port does not exist");
                return ResponseFuture::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::NO_ROUTE,
                    "",
                );
            }
            Entry::UnknownHost => match derived {
                Some(dest) if self.shared.allow_any() => {
                    return self.passthrough(req, &dest.host, dest.port.unwrap_or(80));
                }
                _ => {
                    self.no_route(&req, derived.as_ref(), "the host is not in the registry");
                    return ResponseFuture::local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlags::NO_ROUTE,
                        "",
                    );
                }
            },
            &Entry::Passthrough { default_port } => {
                let (host, port) = match request_authority(&req) {
                    Some((h, p)) => (Arc::<str>::from(h), p.unwrap_or(default_port)),
                    None => {
                        return ResponseFuture::local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            ResponseFlags::NO_ROUTE,
                            "",
                        );
                    }
                };
                return self.passthrough(req, &host, port);
            }
        };

        let mut set_cookie = None;
        let hash = match &cluster.hash {
            None => None,
            Some(HashKey::Header(name)) => header_hash(req.headers(), name),
            Some(HashKey::SourceIp) => view.client_addr().map(|c| ip_hash(c.0.ip())),
            Some(HashKey::Query(name)) => query_hash(req.uri(), name),
            Some(HashKey::Cookie(c)) => match sticky::find_cookie(req.headers(), &c.name) {
                Some(v) => Some(match sticky::decode(v) {
                    Some((_, key)) => key,
                    None => stable_hash(v.as_bytes()),
                }),
                None if c.ttl.is_some() => {
                    let key = cluster.rng.next_u64();
                    let value = sticky::encode(cluster.subset.as_deref(), key);
                    set_cookie =
                        HeaderValue::try_from(format!("{}={value}{}", c.name, c.attributes)).ok();
                    Some(key)
                }
                None => None,
            },
        };
        // retryRemoteLocalities: only a cluster with several priorities has any to avoid
        let priorities = match cluster.has_priorities() {
            true => view.previous_priorities(),
            false => None,
        };
        let excluded = priorities.map_or(0, PreviousPriorities::excluded);
        let Some(mut picked) = cluster.pick_at(hash, excluded) else {
            return ResponseFuture::local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream",
            );
        };
        if let Some(previous) = view.previous_hosts() {
            picked = avoid_previous(cluster, picked, hash, excluded, previous);
            previous.record(picked.0.addr);
        }
        if let Some(p) = priorities {
            p.record(u32::try_from(picked.1).unwrap_or(u32::MAX));
        }
        let host = picked.0;
        // Only least request and peak-EWMA read the in-flight count (and latency): the other
        // algorithms skip the shared counter's two atomic updates and the guard.
        let guard = cluster.algorithm.reads_active().then(|| {
            host.state.begin();
            let started = (cluster.algorithm == Algorithm::PeakEwma)
                .then(|| (Instant::now(), self.shared.config.peak_ewma.decay.0));
            Guard {
                state: Some(host.state.clone()),
                started,
            }
        });
        if let Some(info) = view.stream_info() {
            info.set_upstream(&host.upstream);
        }
        slots_mut(req.extensions_mut()).upstream = Some(host.upstream.clone());
        let fut = self.inner.call(req);
        ResponseFuture {
            state: State::Called { fut },
            guard,
            set_cookie,
        }
    }
}

impl<S> Lb<S> {
    /// Connects to `host:port` as the request named it: an IP at once, a name through the
    /// resolver (first address).
    fn passthrough<B, R>(
        &mut self,
        mut req: Request<B>,
        host: &str,
        port: u16,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>, Response = Response<R>> + Clone,
        R: ReplyBody,
    {
        if let Ok(ip) = authority::unbracket(host).parse::<IpAddr>() {
            let ep = SelectedEndpoint::new(SocketAddr::new(ip, port));
            if let Some(info) = stream_info(req.extensions()) {
                info.set_endpoint(&ep);
            }
            req.extensions_mut().insert(ep);
            let fut = self.inner.call(req);
            return ResponseFuture {
                state: State::Called { fut },
                guard: None,
                set_cookie: None,
            };
        }
        // The inner service was made ready for this request: take it, leave a clone.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        let resolve = self.shared.resolver.resolve(host);
        ResponseFuture {
            state: State::Resolving {
                resolving: Box::new(Resolving {
                    resolve,
                    svc: Some(svc),
                    req: Some(req),
                    port,
                }),
            },
            guard: None,
            set_cookie: None,
        }
    }
}

/// Envoy's `previous_hosts` retry host predicate (Istio's `retryIgnorePreviousHosts`): a host
/// an earlier attempt of the request went to is picked again, up to
/// [`PreviousHosts::RESELECT`] times (Istio's `HostSelectionRetryMaxAttempts`), then
/// accepted. A consistent-hash pick moves its key on at each try (Envoy walks the ring).
///
/// Each pick draws from the same priority load (`excluded`: the priorities a
/// `retryRemoteLocalities` retry avoids), as Envoy's reselection does.
fn avoid_previous<'c>(
    cluster: &'c Cluster,
    mut picked: (&'c Host, usize),
    hash: Option<u64>,
    excluded: u64,
    previous: &PreviousHosts,
) -> (&'c Host, usize) {
    for attempt in 1..=u64::from(PreviousHosts::RESELECT) {
        if !previous.contains(picked.0.addr) {
            break;
        }
        let moved = hash.map(|h| h ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        match cluster.pick_at(moved, excluded) {
            Some(p) => picked = p,
            None => break,
        }
    }
    picked
}

/// The memo slot of a destination: from the address of its host string.
#[inline]
fn memo_index(dest: &RouteDestination) -> usize {
    (Arc::as_ptr(&dest.host) as *const u8 as usize >> 4) % MEMO
}

/// The request's host (IPv6 literals without brackets) and port, from the URI or the `Host`
/// header; `None` without an authority or with one that does not parse (`mesh_core::authority`).
fn request_authority<B>(req: &Request<B>) -> Option<(&str, Option<u16>)> {
    let a = Authority::parse(authority::of_request(req)?).ok()?;
    Some((a.unbracketed(), a.port()))
}

/// Without a router: the destination is the request's authority, short names resolved in
/// the client's namespace.
fn destination_from_authority<B>(req: &Request<B>, snap: &Snapshot) -> Option<RouteDestination> {
    let (host, port) = request_authority(req)?;
    let ns = &snap.bootstrap.workload.namespace;
    let host = resolve_host(
        &host.to_ascii_lowercase(),
        ns,
        &snap.bootstrap.mesh.cluster_domain,
    );
    Some(RouteDestination {
        host: host.into(),
        subset: None,
        port,
    })
}

// === impl ResponseFuture ===

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn local<R>(status: StatusCode, flags: ResponseFlags, body: &'static str) -> Self
    where
        S: Service<Request<B>, Response = Response<R>>,
        R: ReplyBody,
    {
        ResponseFuture {
            state: State::Local {
                res: Box::new(Some(local_reply(status, flags, body))),
            },
            guard: None,
            set_cookie: None,
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Output = Result<Response<R>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProj::Called { fut } => {
                    let mut res = ready!(fut.poll(cx));
                    if let (Ok(r), Some(c)) = (&mut res, this.set_cookie.take()) {
                        r.headers_mut().append(SET_COOKIE, c);
                    }
                    if let Some(g) = this.guard.take() {
                        let ok = res.as_ref().is_ok_and(|r| !r.status().is_server_error());
                        if let (Some(state), Ok(r)) = (g.finish(ok), &mut res) {
                            // in flight until the body ends, as Envoy's `rq_active`
                            r.body_mut().on_end(state);
                        }
                    }
                    return Poll::Ready(res);
                }
                StateProj::Resolving { resolving } => {
                    let Resolving {
                        resolve,
                        svc,
                        req,
                        port,
                    } = &mut **resolving;
                    let addrs = ready!(resolve.as_mut().poll(cx));
                    let (Some(mut svc), Some(mut req)) = (svc.take(), req.take()) else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let next = match addrs.ok().and_then(|a| a.first().copied()) {
                        Some(ip) => {
                            let ep = SelectedEndpoint::new(SocketAddr::new(ip, *port));
                            if let Some(info) = stream_info(req.extensions()) {
                                info.set_endpoint(&ep);
                            }
                            req.extensions_mut().insert(ep);
                            State::Called { fut: svc.call(req) }
                        }
                        None => State::Local {
                            res: Box::new(Some(local_reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                ResponseFlags::DNS_RESOLUTION_FAILURE,
                                "DNS resolution failed",
                            ))),
                        },
                    };
                    self.as_mut().project().state.set(next);
                }
                StateProj::Local { res } => {
                    return Poll::Ready(Ok(res
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Resolving { .. } => "resolving",
            State::Local { .. } => "local",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

// === impl Guard ===

impl Guard {
    /// Records the latency (on success) and hands back the in-flight count, still held.
    fn finish(mut self, success: bool) -> Option<Arc<EndpointState>> {
        let state = self.state.take()?;
        if let (true, Some((start, decay))) = (success, self.started) {
            let now = Instant::now();
            state.observe_rtt(now.saturating_duration_since(start), now, decay);
        }
        Some(state)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.end();
        }
    }
}

mesh_core::accessors!(Lb);

#[cfg(test)]
impl<S> Lb<S> {
    /// Runs `f` on the current cluster of `dest` (built if needed).
    pub(crate) fn with_cluster<R>(
        &mut self,
        dest: &RouteDestination,
        f: impl FnOnce(&Cluster) -> R,
    ) -> Option<R> {
        let i = self.slot(dest);
        match &*self.local.entries[i] {
            Entry::Cluster(c) => Some(f(c)),
            _ => None,
        }
    }
}

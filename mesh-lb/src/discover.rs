//! Discovery: where a service's endpoints come from.
//!
//! A [`Discover`] source answers "what are the endpoints of this service now?" with an
//! immutable [`EndpointSet`], and bumps a version whenever an answer changes; the balancer
//! reads the version on every request (one atomic load) and rebuilds a cluster's state when
//! it moved. Requests in flight keep the endpoint they were given: a change never drops one.
//!
//! Sources:
//!
//! * [`StaticDiscover`]: `resolution: STATIC` ServiceEntries and their WorkloadEntries,
//!   straight from the [`Snapshot`] (IP addresses; `unix://` endpoints are skipped).
//! * [`DnsDiscover`]: `resolution: DNS` (every address of every endpoint hostname, or of the
//!   host itself when there are no endpoints, is an endpoint) and `DNS_ROUND_ROBIN` (one
//!   logical endpoint per hostname: its first address), each hostname re-resolved when the
//!   TTL of its records runs out (Envoy's `respect_dns_ttl`, which Istio sets), between
//!   [`MIN_TTL`] and [`DnsDiscover::refresh_interval`] (default 30s), and at the refresh
//!   interval when the resolver tells no TTL ([`SystemResolver`]). A failed or empty
//!   resolution keeps the last good addresses and is retried at the refresh interval. The
//!   [`Resolver`] is a trait, so tests use a fake; [`HickoryResolver`] (feature `hickory`,
//!   on by default) is the one that reports TTLs.
//! * [`FeedDiscover`]: endpoint sets pushed by any control plane through an [`EndpointFeed`]
//!   (a Kubernetes watch, an xDS client, a test).
//! * [`Chain`]: asks sources in order; the first that knows a service answers.
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::compile::Endpoint;
//! use mesh_lb::discover::{Discover, DiscoveredEndpoint, EndpointSet, FeedDiscover};
//!
//! let (source, feed) = FeedDiscover::new();
//! let v0 = source.version();
//! feed.publish("reviews.default.svc.cluster.local", EndpointSet::new(vec![
//!     DiscoveredEndpoint::new("10.0.0.7".parse().unwrap(), Arc::new(Endpoint {
//!         address: "10.0.0.7".into(), ports: Default::default(), labels: Default::default(),
//!         locality: Default::default(), weight: 1, service_account: None, network: None,
//!         workload_entry: None,
//!     })),
//! ]));
//! assert!(source.version() > v0);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::compile::{Endpoint, Service, Snapshot};
use mesh_core::model::networking::Resolution;
use tokio::sync::Notify;
use tokio::time::Instant;

/// An endpoint found by discovery: its IP and what the registry says about it (labels,
/// locality, weight, ports by name, service account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredEndpoint {
    /// The IP to connect to; the port comes from the service port and `endpoint.ports`.
    pub ip: IpAddr,
    /// The registry's description of the endpoint.
    pub endpoint: Arc<Endpoint>,
}

/// The endpoints of one service at one moment. Immutable; replaced whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// The endpoints, in registry order (the order ring hash and Maglev tables follow).
    pub endpoints: Vec<DiscoveredEndpoint>,
}

/// A source of endpoint sets.
pub trait Discover: Send + Sync + fmt::Debug + 'static {
    /// The current endpoints of `service`, or `None` when this source does not handle it.
    /// Called when a cluster is built, not per request.
    fn endpoints(&self, service: &Service) -> Option<Arc<EndpointSet>>;

    /// A number that increases whenever an answer of [`Discover::endpoints`] may have
    /// changed. Read on every request: keep it one atomic load.
    fn version(&self) -> u64;

    /// Told of every snapshot the balancer starts using (at build and on
    /// [`LbLayer::store`](crate::LbLayer::store)), for sources that derive their work from
    /// it (DNS hostnames to resolve). Default: nothing.
    fn snapshot_changed(&self, snapshot: &Snapshot) {
        let _ = snapshot;
    }
}

/// Endpoints of `STATIC` services, from the snapshot itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticDiscover;

/// Resolves host names. The default is [`SystemResolver`]; tests use a fake.
///
/// [`Resolver::resolve`] is all a resolver must provide. One that knows how long its answers
/// stay valid also implements [`Resolver::resolve_with_ttl`], which [`DnsDiscover`] calls to
/// schedule each name's next resolution; the default gives the addresses of
/// [`Resolver::resolve`] with no TTL (the name is re-resolved every
/// [`DnsDiscover::refresh_interval`]).
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    /// The addresses of `host`, in the order the resolver gives them.
    fn resolve(&self, host: &str) -> ResolveFuture;

    /// The addresses of `host` and how long they may be used. Default: those of
    /// [`Resolver::resolve`], with `ttl: None`.
    fn resolve_with_ttl(&self, host: &str) -> ResolvedFuture {
        let fut = self.resolve(host);
        Box::pin(async move {
            Ok(Resolved {
                addrs: fut.await?,
                ttl: None,
            })
        })
    }
}

/// The future a [`Resolver`] returns.
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// The future of [`Resolver::resolve_with_ttl`].
pub type ResolvedFuture = Pin<Box<dyn Future<Output = io::Result<Resolved>> + Send>>;

/// An answer of [`Resolver::resolve_with_ttl`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses, in the order the resolver gives them.
    pub addrs: Vec<IpAddr>,
    /// How long the addresses may be used before resolving again (the smallest TTL of the
    /// records, less the time they spent in a cache); `None` when the resolver does not know
    /// (the system resolver, `/etc/hosts`, IP literals).
    pub ttl: Option<Duration>,
}

/// The system resolver, through `tokio::net::lookup_host` (`getaddrinfo`: no TTLs, so
/// [`DnsDiscover`] re-resolves its names every [`DnsDiscover::refresh_interval`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

/// A stub resolver that reports TTLs, from the [`hickory-resolver`](hickory_resolver) crate:
/// name servers, search domains and options from `/etc/resolv.conf`, and `/etc/hosts`
/// (answered first, with no TTL). It keeps a cache of answers (by TTL) of its own. Its
/// lookups run on the Tokio runtime that polls them (it spawns no thread).
///
/// Only plain DNS (UDP, then TCP on truncation): no DNS over TLS or HTTPS.
///
/// Feature `hickory` (on by default).
#[cfg(feature = "hickory")]
#[derive(Clone)]
pub struct HickoryResolver {
    inner: hickory_resolver::TokioResolver,
}

/// Endpoints of `DNS` and `DNS_ROUND_ROBIN` services, resolved when their records expire.
///
/// Hand it to [`LbBuilder::discover`](crate::LbBuilder::discover) (the layer tells it each
/// snapshot; or call [`DnsDiscover::set_snapshot`] yourself), then run [`DnsDiscover::run`]
/// on a runtime (or drive it yourself: [`DnsDiscover::refresh_due`] at
/// [`DnsDiscover::next_refresh`]). Until a hostname's first successful resolution, its
/// service has no endpoints (requests get `503 UH`), as an Envoy cluster that is still
/// warming.
///
/// Each hostname has its own schedule:
///
/// * after an answer with a TTL, it is resolved again when the TTL runs out, but at least
///   [`MIN_TTL`] (1s) and at most [`DnsDiscover::refresh_interval`] later (a TTL of 0 cannot
///   make it spin; a TTL of a day does not hide a change for a day);
/// * after an answer without one ([`SystemResolver`], `/etc/hosts`), at the refresh
///   interval;
/// * after a failure or an empty answer, it keeps its last good addresses and is tried again
///   at the refresh interval (Envoy's `dns_failure_refresh_rate` when unset, as Istio leaves
///   it: the refresh rate, without backoff).
pub struct DnsDiscover {
    resolver: Arc<dyn Resolver>,
    refresh_interval: Duration,
    targets: ArcSwap<Vec<Target>>,
    /// Last good addresses per hostname.
    resolved: ArcSwap<HashMap<Arc<str>, Arc<Vec<IpAddr>>>>,
    /// When each hostname is next resolved; a hostname missing here is due now.
    schedule: Mutex<HashMap<Arc<str>, Instant>>,
    /// Told by [`DnsDiscover::set_snapshot`], to wake [`DnsDiscover::run`] for new names.
    snapshot_changed: Notify,
    /// Held while the endpoint sets are rebuilt (from the resolver task and from reloads),
    /// so the last rebuild sees both the latest targets and the latest addresses.
    rebuilding: Mutex<()>,
    /// Endpoint sets per (service host, namespace).
    sets: ArcSwap<HashMap<ServiceKey, Arc<EndpointSet>>>,
    version: AtomicU64,
}

/// The shortest time between two resolutions of a hostname, whatever the TTL of its
/// records (a TTL of 0 would otherwise resolve it in a loop).
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// A service's host and namespace.
type ServiceKey = (Arc<str>, Arc<str>);

/// A DNS service to resolve: its key and its endpoint hostnames.
#[derive(Debug, Clone)]
struct Target {
    key: ServiceKey,
    round_robin: bool,
    /// (hostname, description) per endpoint; the service host itself when it has none.
    names: Vec<(Arc<str>, Arc<Endpoint>)>,
}

/// Endpoint sets published by a control plane through an [`EndpointFeed`].
#[derive(Debug, Clone)]
pub struct FeedDiscover {
    inner: Arc<FeedInner>,
}

/// The publishing side of a [`FeedDiscover`]: cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct EndpointFeed {
    inner: Arc<FeedInner>,
}

#[derive(Debug, Default)]
struct FeedInner {
    sets: ArcSwap<HashMap<Arc<str>, Arc<EndpointSet>>>,
    version: AtomicU64,
}

/// Several sources asked in order.
#[derive(Debug, Clone)]
pub struct Chain {
    sources: Vec<Arc<dyn Discover>>,
}

// === impl DiscoveredEndpoint ===

impl DiscoveredEndpoint {
    /// An endpoint at `ip` described by `endpoint`.
    pub fn new(ip: IpAddr, endpoint: Arc<Endpoint>) -> Self {
        DiscoveredEndpoint { ip, endpoint }
    }
}

// === impl EndpointSet ===

impl EndpointSet {
    /// A set of these endpoints.
    pub fn new(endpoints: Vec<DiscoveredEndpoint>) -> Self {
        EndpointSet { endpoints }
    }
}

// === impl StaticDiscover ===

impl Discover for StaticDiscover {
    fn endpoints(&self, service: &Service) -> Option<Arc<EndpointSet>> {
        if service.resolution != Resolution::Static {
            return None;
        }
        let endpoints = service
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(DiscoveredEndpoint {
                    ip: e.address.parse().ok()?,
                    endpoint: e.clone(),
                })
            })
            .collect();
        Some(Arc::new(EndpointSet { endpoints }))
    }

    fn version(&self) -> u64 {
        0
    }
}

// === impl SystemResolver ===

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        let host = host.to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut out: Vec<IpAddr> = Vec::new();
            for a in addrs {
                if !out.contains(&a.ip()) {
                    out.push(a.ip());
                }
            }
            Ok(out)
        })
    }
}

// === impl HickoryResolver ===

#[cfg(feature = "hickory")]
impl HickoryResolver {
    /// A resolver with the system's configuration (`/etc/resolv.conf`, `/etc/hosts`), asking
    /// for IPv4 addresses and for IPv6 ones only when a name has none (Envoy's
    /// `V4_PREFERRED`; Istio asks for IPv4 only when the proxy has only IPv4 addresses, the
    /// common case). Fails when the configuration cannot be read.
    pub fn from_system_conf() -> io::Result<Self> {
        let mut builder =
            hickory_resolver::TokioResolver::builder_tokio().map_err(io::Error::other)?;
        builder.options_mut().ip_strategy =
            hickory_resolver::config::LookupIpStrategy::Ipv4thenIpv6;
        let inner = builder.build().map_err(io::Error::other)?;
        Ok(HickoryResolver { inner })
    }

    /// Wraps a resolver configured by hand (other name servers, options).
    pub fn from_resolver(inner: hickory_resolver::TokioResolver) -> Self {
        HickoryResolver { inner }
    }
}

#[cfg(feature = "hickory")]
impl Resolver for HickoryResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        let fut = self.resolve_with_ttl(host);
        Box::pin(async move { Ok(fut.await?.addrs) })
    }

    fn resolve_with_ttl(&self, host: &str) -> ResolvedFuture {
        let inner = self.inner.clone();
        let host = host.to_string();
        Box::pin(async move {
            let lookup = inner
                .lookup_ip(host.as_str())
                .await
                .map_err(io::Error::other)?;
            let mut addrs: Vec<IpAddr> = Vec::new();
            let mut min_ttl = u32::MAX;
            for record in lookup.as_lookup().answers() {
                if let Some(ip) = record.data.ip_addr() {
                    min_ttl = min_ttl.min(record.ttl);
                    if !addrs.contains(&ip) {
                        addrs.push(ip);
                    }
                }
            }
            // `/etc/hosts`, `localhost` and IP literals are answered with the largest TTL
            // hickory knows (a day): no TTL to follow.
            let ttl = (min_ttl < hickory_resolver::MAX_TTL).then(|| {
                let left = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                left.min(Duration::from_secs(u64::from(min_ttl)))
            });
            Ok(Resolved { addrs, ttl })
        })
    }
}

#[cfg(feature = "hickory")]
impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver").finish_non_exhaustive()
    }
}

// === impl DnsDiscover ===

impl DnsDiscover {
    /// A DNS source using `resolver`, re-resolving each name when its TTL runs out and at
    /// least every 30s.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        DnsDiscover {
            resolver,
            refresh_interval: Duration::from_secs(30),
            targets: ArcSwap::from_pointee(Vec::new()),
            resolved: ArcSwap::from_pointee(HashMap::new()),
            schedule: Mutex::new(HashMap::new()),
            snapshot_changed: Notify::new(),
            rebuilding: Mutex::new(()),
            sets: ArcSwap::from_pointee(HashMap::new()),
            version: AtomicU64::new(1),
        }
    }

    /// Sets the longest time between two resolutions of a hostname: the period when the
    /// resolver gives no TTL or fails, the cap when it gives one. Default: 30s (Envoy's
    /// `dns_refresh_rate`, which Istio sets from `meshConfig.dnsRefreshRate`). A zero
    /// interval is taken as 1s.
    pub fn with_refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = if every.is_zero() {
            Duration::from_secs(1)
        } else {
            every
        };
        self
    }

    /// The longest time between two resolutions of a hostname (see
    /// [`DnsDiscover::with_refresh_interval`]).
    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval
    }

    /// Takes the DNS services of `snapshot` as the hostnames to resolve, and rebuilds the
    /// endpoint sets from the addresses already known (a reload does not wait for DNS).
    pub fn set_snapshot(&self, snapshot: &Snapshot) {
        let targets: Vec<Target> = snapshot
            .services
            .iter()
            .filter(|s| matches!(s.resolution, Resolution::Dns | Resolution::DnsRoundRobin))
            .filter(|s| !s.hostname.starts_with('*'))
            .map(|s| {
                let names = if s.endpoints.is_empty() {
                    let ep = Endpoint {
                        address: s.hostname.to_string(),
                        ports: Default::default(),
                        labels: Default::default(),
                        locality: Default::default(),
                        weight: 1,
                        service_account: None,
                        network: None,
                        workload_entry: None,
                    };
                    vec![(s.hostname.clone(), Arc::new(ep))]
                } else {
                    s.endpoints
                        .iter()
                        .map(|e| (Arc::<str>::from(e.address.as_str()), e.clone()))
                        .collect()
                };
                Target {
                    key: (s.hostname.clone(), s.namespace.as_str().into()),
                    round_robin: s.resolution == Resolution::DnsRoundRobin,
                    names,
                }
            })
            .collect();
        self.targets.store(Arc::new(targets));
        self.rebuild_sets();
        self.snapshot_changed.notify_one();
    }

    /// Resolves every hostname now (concurrently), whatever its schedule, keeping the last
    /// good addresses of any that fails, and publishes the sets that changed.
    pub async fn refresh(&self) {
        let names = self.names();
        self.resolve(names.clone(), names).await;
    }

    /// Resolves the hostnames whose time has come (see [`DnsDiscover::next_refresh`]) and
    /// those never resolved yet, concurrently, and publishes the sets that changed.
    pub async fn refresh_due(&self) {
        let names = self.names();
        let now = Instant::now();
        let due = {
            let schedule = lock(&self.schedule);
            names
                .iter()
                .filter(|n| schedule.get(*n).is_none_or(|at| *at <= now))
                .cloned()
                .collect()
        };
        self.resolve(names, due).await;
    }

    /// When the next hostname is due for resolution: the earliest of their deadlines (now,
    /// when one was never resolved). `None` when there is no hostname to resolve.
    pub fn next_refresh(&self) -> Option<Instant> {
        let names = self.names();
        let schedule = lock(&self.schedule);
        let now = Instant::now();
        names
            .iter()
            .map(|n| schedule.get(n).copied().unwrap_or(now))
            .min()
    }

    /// Resolves each hostname when it is due, forever, starting now; wakes early for the
    /// new hostnames of a snapshot. Spawn it: `tokio::spawn(dns.clone().run())`.
    pub async fn run(self: Arc<Self>) {
        loop {
            // registered before looking at the schedule: a snapshot stored meanwhile wakes us
            let changed = self.snapshot_changed.notified();
            self.refresh_due().await;
            match self.next_refresh() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// The hostnames of the current targets, sorted and deduplicated.
    fn names(&self) -> Vec<Arc<str>> {
        let targets = self.targets.load();
        let mut names: Vec<Arc<str>> = targets
            .iter()
            .flat_map(|t| t.names.iter().map(|n| n.0.clone()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// How long to keep an answer with this TTL before resolving again.
    fn keep_for(&self, ttl: Option<Duration>) -> Duration {
        match ttl {
            Some(ttl) => ttl.max(MIN_TTL).min(self.refresh_interval),
            None => self.refresh_interval,
        }
    }

    /// Resolves `due`, schedules each name's next resolution, forgets names not in `current`
    /// (hostnames the snapshot no longer has), and publishes the sets that changed.
    async fn resolve(&self, current: Vec<Arc<str>>, due: Vec<Arc<str>>) {
        let lookups = due.into_iter().map(|name| {
            let fut = match name.parse::<IpAddr>() {
                Ok(ip) => Box::pin(async move {
                    Ok(Resolved {
                        addrs: vec![ip],
                        ttl: None,
                    })
                }) as ResolvedFuture,
                Err(_) => self.resolver.resolve_with_ttl(&name),
            };
            Box::pin(async move { (name, fut.await) })
                as Pin<Box<dyn Future<Output = (Arc<str>, io::Result<Resolved>)> + Send>>
        });
        let results = join_all(lookups.collect()).await;
        let now = Instant::now();
        let mut resolved = (**self.resolved.load()).clone();
        {
            let mut schedule = lock(&self.schedule);
            for (name, result) in results {
                let wait = match result {
                    Ok(r) if !r.addrs.is_empty() => {
                        resolved.insert(name.clone(), Arc::new(r.addrs));
                        self.keep_for(r.ttl)
                    }
                    Ok(_) => {
                        tracing::debug!(host = %name, "DNS answered no address; keeping the last good set");
                        self.refresh_interval
                    }
                    Err(e) => {
                        tracing::debug!(host = %name, error = %e, "DNS resolution failed; keeping the last good set");
                        self.refresh_interval
                    }
                };
                schedule.insert(name, now + wait);
            }
            let keep = |n: &Arc<str>| current.binary_search(n).is_ok();
            schedule.retain(|n, _| keep(n));
            resolved.retain(|n, _| keep(n));
        }
        self.resolved.store(Arc::new(resolved));
        self.rebuild_sets();
    }

    fn rebuild_sets(&self) {
        let _rebuilding = lock(&self.rebuilding);
        let resolved = self.resolved.load();
        let old = self.sets.load();
        let mut sets = HashMap::new();
        let mut changed = false;
        for t in self.targets.load().iter() {
            let mut endpoints = Vec::new();
            for (name, ep) in &t.names {
                let Some(ips) = resolved.get(name) else {
                    continue;
                };
                let ips = if t.round_robin {
                    &ips[..1.min(ips.len())]
                } else {
                    &ips[..]
                };
                endpoints.extend(ips.iter().map(|ip| DiscoveredEndpoint {
                    ip: *ip,
                    endpoint: ep.clone(),
                }));
            }
            let set = EndpointSet { endpoints };
            let set = match old.get(&t.key) {
                Some(prev) if **prev == set => prev.clone(),
                _ => {
                    changed = true;
                    Arc::new(set)
                }
            };
            sets.insert(t.key.clone(), set);
        }
        changed |= sets.len() != old.len();
        if changed {
            self.sets.store(Arc::new(sets));
            self.version.fetch_add(1, Ordering::Release);
        }
    }
}

impl Discover for DnsDiscover {
    fn endpoints(&self, service: &Service) -> Option<Arc<EndpointSet>> {
        if !matches!(
            service.resolution,
            Resolution::Dns | Resolution::DnsRoundRobin
        ) {
            return None;
        }
        let key = (
            service.hostname.clone(),
            Arc::<str>::from(service.namespace.as_str()),
        );
        Some(self.sets.load().get(&key).cloned().unwrap_or_default())
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn snapshot_changed(&self, snapshot: &Snapshot) {
        self.set_snapshot(snapshot);
    }
}

impl fmt::Debug for DnsDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("resolver", &self.resolver)
            .field("refresh_interval", &self.refresh_interval)
            .field("services", &self.targets.load().len())
            .finish()
    }
}

/// Locks `m`, also when a panic poisoned it (the maps stay consistent between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls futures concurrently until all are done (a tiny `join_all`, to stay off
/// `futures-util`).
async fn join_all<T>(futs: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut futs: Vec<Option<Pin<Box<dyn Future<Output = T> + Send + '_>>>> =
        futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

// === impl FeedDiscover ===

impl FeedDiscover {
    /// A source and the feed that publishes into it.
    pub fn new() -> (FeedDiscover, EndpointFeed) {
        let inner = Arc::new(FeedInner::default());
        (
            FeedDiscover {
                inner: inner.clone(),
            },
            EndpointFeed { inner },
        )
    }
}

impl Discover for FeedDiscover {
    fn endpoints(&self, service: &Service) -> Option<Arc<EndpointSet>> {
        self.inner.sets.load().get(&*service.hostname).cloned()
    }

    fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }
}

// === impl EndpointFeed ===

impl EndpointFeed {
    /// Replaces the endpoints of service `host` (an FQDN). Takes effect on the balancers'
    /// next request.
    pub fn publish(&self, host: &str, set: EndpointSet) {
        self.inner.sets.rcu(|m| {
            let mut m = (**m).clone();
            m.insert(host.into(), Arc::new(set.clone()));
            m
        });
        self.inner.version.fetch_add(1, Ordering::Release);
    }

    /// Forgets service `host`: other sources (or none) answer for it again.
    pub fn remove(&self, host: &str) {
        self.inner.sets.rcu(|m| {
            let mut m = (**m).clone();
            m.remove(host);
            m
        });
        self.inner.version.fetch_add(1, Ordering::Release);
    }
}

// === impl Chain ===

impl Chain {
    /// Asks `sources` in order.
    pub fn new(sources: Vec<Arc<dyn Discover>>) -> Self {
        Chain { sources }
    }
}

impl Discover for Chain {
    fn endpoints(&self, service: &Service) -> Option<Arc<EndpointSet>> {
        self.sources.iter().find_map(|s| s.endpoints(service))
    }

    fn version(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.version())
            .fold(0u64, u64::wrapping_add)
    }

    fn snapshot_changed(&self, snapshot: &Snapshot) {
        self.sources
            .iter()
            .for_each(|s| s.snapshot_changed(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::compile::compile;
    use mesh_core::load::Loader;
    use std::sync::Mutex;

    /// Answers from a table, with the TTL of `ttls` (none when missing); a missing name
    /// fails. Counts the calls, in all and per name.
    #[derive(Debug, Default)]
    pub(crate) struct FakeResolver {
        pub(crate) answers: Mutex<HashMap<String, Vec<IpAddr>>>,
        pub(crate) ttls: Mutex<HashMap<String, Duration>>,
        pub(crate) calls: AtomicU64,
        pub(crate) calls_per_name: Mutex<HashMap<String, u64>>,
    }

    impl FakeResolver {
        fn answer(&self, host: &str, ips: &[&str], ttl: Option<Duration>) {
            let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
            self.answers.lock().unwrap().insert(host.into(), ips);
            match ttl {
                Some(ttl) => self.ttls.lock().unwrap().insert(host.into(), ttl),
                None => self.ttls.lock().unwrap().remove(host),
            };
        }

        fn calls_for(&self, host: &str) -> u64 {
            let calls = self.calls_per_name.lock().unwrap();
            calls.get(host).copied().unwrap_or(0)
        }
    }

    impl Resolver for FakeResolver {
        fn resolve(&self, host: &str) -> ResolveFuture {
            self.calls.fetch_add(1, Ordering::Relaxed);
            *self
                .calls_per_name
                .lock()
                .unwrap()
                .entry(host.into())
                .or_default() += 1;
            let r = self.answers.lock().unwrap().get(host).cloned();
            Box::pin(async move { r.ok_or_else(|| io::Error::other("NXDOMAIN")) })
        }

        fn resolve_with_ttl(&self, host: &str) -> ResolvedFuture {
            let ttl = self.ttls.lock().unwrap().get(host).copied();
            let addrs = self.resolve(host);
            Box::pin(async move {
                Ok(Resolved {
                    addrs: addrs.await?,
                    ttl,
                })
            })
        }
    }

    /// Lets spawned tasks run to their next await (time is paused: nothing moves the clock).
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    /// Moves the paused clock to `at` (relative to `start`) and lets the tasks run.
    async fn at(start: Instant, at: Duration) {
        tokio::time::sleep_until(start + at).await;
        settle().await;
    }

    /// A resolver and a source on it resolving the names of `DNS`, spawned with `run`; the
    /// instant it started.
    async fn running(
        fake: &Arc<FakeResolver>,
    ) -> (Arc<DnsDiscover>, tokio::task::JoinHandle<()>, Instant) {
        let dns = Arc::new(DnsDiscover::new(fake.clone()));
        dns.set_snapshot(&snap(DNS));
        let start = Instant::now();
        let task = tokio::spawn(dns.clone().run());
        settle().await;
        (dns, task, start)
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const SECS: fn(u64) -> Duration = Duration::from_secs;

    fn snap(text: &str) -> Snapshot {
        let mut l = Loader::new();
        l.add_str("t.yaml", text);
        compile(l.finish().resources)
    }

    const DNS: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  resolution: DNS\n  ports: [{number: 443, name: tls, protocol: TLS}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: rr}\nspec:\n  hosts: [rr.example.com]\n  resolution: DNS_ROUND_ROBIN\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: a.example.com}, {address: b.example.com}]\n";

    fn ips(set: &EndpointSet) -> Vec<String> {
        set.endpoints.iter().map(|e| e.ip.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn dns_refreshes_periodically_and_keeps_the_last_good_set() {
        let s = snap(DNS);
        let fake = Arc::new(FakeResolver::default());
        fake.answers.lock().unwrap().insert(
            "api.example.com".into(),
            vec!["1.1.1.1".parse().unwrap(), "1.1.1.2".parse().unwrap()],
        );
        fake.answers.lock().unwrap().insert(
            "a.example.com".into(),
            vec!["2.2.2.1".parse().unwrap(), "2.2.2.9".parse().unwrap()],
        );
        fake.answers
            .lock()
            .unwrap()
            .insert("b.example.com".into(), vec!["3.3.3.1".parse().unwrap()]);
        let dns =
            Arc::new(DnsDiscover::new(fake.clone()).with_refresh_interval(Duration::from_secs(5)));
        dns.set_snapshot(&s);
        let api = s.service("api.example.com", "default").unwrap();
        let rr = s.service("rr.example.com", "default").unwrap();
        assert!(
            dns.endpoints(api).unwrap().endpoints.is_empty(),
            "nothing before the first resolution"
        );
        let task = tokio::spawn(dns.clone().run());
        tokio::task::yield_now().await;
        // DNS: every address of the host; DNS_ROUND_ROBIN: the first address per hostname
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
        assert_eq!(ips(&dns.endpoints(rr).unwrap()), ["2.2.2.1", "3.3.3.1"]);
        let v = dns.version();

        // failure: keep the last good set
        fake.answers.lock().unwrap().remove("api.example.com");
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert_eq!(fake.calls.load(Ordering::Relaxed), 6);
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
        assert_eq!(dns.version(), v, "nothing changed");

        // recovery with new addresses: published at the next refresh
        fake.answers
            .lock()
            .unwrap()
            .insert("api.example.com".into(), vec!["1.1.1.3".parse().unwrap()]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.3"]);
        assert!(dns.version() > v);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_is_resolved_again_when_its_ttl_runs_out_and_not_before() {
        let fake = Arc::new(FakeResolver::default());
        fake.answer("api.example.com", &["1.1.1.1"], Some(SECS(5)));
        fake.answer("a.example.com", &["2.2.2.1"], None);
        fake.answer("b.example.com", &["3.3.3.1"], None);
        let (dns, task, start) = running(&fake).await;
        assert_eq!(fake.calls_for("api.example.com"), 1);
        assert_eq!(dns.next_refresh(), Some(start + SECS(5)));

        at(start, MS(4_999)).await;
        assert_eq!(fake.calls_for("api.example.com"), 1, "not before the TTL");
        fake.answer("api.example.com", &["1.1.1.9"], Some(SECS(5)));
        at(start, SECS(5)).await;
        assert_eq!(
            fake.calls_for("api.example.com"),
            2,
            "when the TTL runs out"
        );
        let api = snap(DNS);
        let api = api.service("api.example.com", "default").unwrap();
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.9"]);
        at(start, SECS(10)).await;
        assert_eq!(fake.calls_for("api.example.com"), 3, "and again, every TTL");
        // the names without a TTL kept their own schedule
        assert_eq!(fake.calls_for("a.example.com"), 1);
        assert_eq!(fake.calls_for("b.example.com"), 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_without_ttl_is_resolved_at_the_refresh_interval() {
        let fake = Arc::new(FakeResolver::default());
        fake.answer("api.example.com", &["1.1.1.1"], None);
        fake.answer("a.example.com", &["2.2.2.1"], None);
        // a TTL longer than the refresh interval is capped by it
        fake.answer("b.example.com", &["3.3.3.1"], Some(SECS(3600)));
        let (dns, task, start) = running(&fake).await;
        assert_eq!(dns.refresh_interval(), SECS(30));
        assert_eq!(dns.next_refresh(), Some(start + SECS(30)));
        at(start, MS(29_999)).await;
        assert_eq!(
            fake.calls.load(Ordering::Relaxed),
            3,
            "not before the interval"
        );
        at(start, SECS(30)).await;
        for host in ["api.example.com", "a.example.com", "b.example.com"] {
            assert_eq!(fake.calls_for(host), 2, "{host} at the interval");
        }
        at(start, SECS(60)).await;
        assert_eq!(fake.calls.load(Ordering::Relaxed), 9);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_last_good_set_and_is_retried_at_the_refresh_interval() {
        let fake = Arc::new(FakeResolver::default());
        fake.answer("api.example.com", &["1.1.1.1", "1.1.1.2"], Some(SECS(5)));
        fake.answer("a.example.com", &["2.2.2.1"], None);
        fake.answer("b.example.com", &["3.3.3.1"], None);
        let (dns, task, start) = running(&fake).await;
        let s = snap(DNS);
        let api = s.service("api.example.com", "default").unwrap();
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
        let v = dns.version();

        fake.answers.lock().unwrap().remove("api.example.com");
        at(start, SECS(5)).await;
        assert_eq!(fake.calls_for("api.example.com"), 2, "tried at the TTL");
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
        assert_eq!(dns.version(), v, "the last good set stays");
        // an empty answer is a failure too
        fake.answer("api.example.com", &[], Some(SECS(5)));
        at(start, SECS(34)).await;
        assert_eq!(
            fake.calls_for("api.example.com"),
            2,
            "retried at the refresh interval, not the TTL"
        );
        at(start, SECS(35)).await;
        assert_eq!(fake.calls_for("api.example.com"), 3, "retried");
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);

        fake.answer("api.example.com", &["1.1.1.3"], Some(SECS(5)));
        at(start, SECS(65)).await;
        assert_eq!(fake.calls_for("api.example.com"), 4);
        assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.3"]);
        assert!(dns.version() > v);
        assert_eq!(
            dns.next_refresh(),
            Some(start + SECS(70)),
            "back on the TTL"
        );
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_is_floored() {
        let fake = Arc::new(FakeResolver::default());
        fake.answer("api.example.com", &["1.1.1.1"], Some(Duration::ZERO));
        fake.answer("a.example.com", &["2.2.2.1"], Some(MS(10)));
        fake.answer("b.example.com", &["3.3.3.1"], None);
        let (dns, task, start) = running(&fake).await;
        assert_eq!(dns.next_refresh(), Some(start + MIN_TTL));
        at(start, MS(999)).await;
        assert_eq!(fake.calls_for("api.example.com"), 1);
        assert_eq!(fake.calls_for("a.example.com"), 1);
        at(start, SECS(1)).await;
        assert_eq!(fake.calls_for("api.example.com"), 2);
        assert_eq!(fake.calls_for("a.example.com"), 2);
        at(start, SECS(10)).await;
        assert_eq!(fake.calls_for("api.example.com"), 11, "once a second");
        assert_eq!(fake.calls_for("b.example.com"), 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn run_resolves_the_new_names_of_a_snapshot_at_once() {
        let fake = Arc::new(FakeResolver::default());
        fake.answer("api.example.com", &["1.1.1.1"], None);
        fake.answer("a.example.com", &["2.2.2.1"], None);
        fake.answer("b.example.com", &["3.3.3.1"], None);
        let dns = Arc::new(DnsDiscover::new(fake.clone()));
        let task = tokio::spawn(dns.clone().run());
        settle().await;
        assert_eq!(dns.next_refresh(), None, "nothing to resolve");
        assert_eq!(fake.calls.load(Ordering::Relaxed), 0);
        // a first snapshot wakes a task with nothing to do
        let only_api = DNS.split("---\n").next().unwrap();
        dns.set_snapshot(&snap(only_api));
        settle().await;
        assert_eq!(fake.calls_for("api.example.com"), 1);
        // the next wakes it from its 30s sleep: no time passes
        let start = Instant::now();
        let s = snap(DNS);
        dns.set_snapshot(&s);
        settle().await;
        assert_eq!(Instant::now(), start);
        assert_eq!(fake.calls_for("a.example.com"), 1);
        assert_eq!(fake.calls_for("api.example.com"), 1, "not due yet");
        let rr = s.service("rr.example.com", "default").unwrap();
        assert_eq!(ips(&dns.endpoints(rr).unwrap()), ["2.2.2.1", "3.3.3.1"]);
        // names the snapshot no longer has are forgotten
        dns.set_snapshot(&snap(""));
        settle().await;
        assert_eq!(dns.next_refresh(), None);
        task.abort();
    }

    #[cfg(feature = "hickory")]
    #[tokio::test]
    async fn hickory_answers_localhost_and_literals_without_ttl() {
        let r = HickoryResolver::from_system_conf().unwrap();
        let local = r.resolve_with_ttl("localhost").await.unwrap();
        // IPv4 first, IPv6 only for names without IPv4 (hickory answers `localhost` with
        // `::1` too, which may not be reachable)
        assert_eq!(
            local.addrs,
            ["127.0.0.1".parse::<IpAddr>().unwrap()],
            "{local:?}"
        );
        assert_eq!(local.ttl, None);
        let lit = r.resolve_with_ttl("10.1.2.3").await.unwrap();
        assert_eq!(lit.addrs, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(lit.ttl, None);
        assert_eq!(
            r.resolve("localhost").await.unwrap(),
            local.addrs,
            "resolve gives the same addresses"
        );
    }

    #[test]
    fn static_and_chain() {
        let s = snap(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [s.default.svc.cluster.local]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: 10.0.0.1}, {address: 'unix:///sock'}]\n",
        );
        let svc = s.service("s.default.svc.cluster.local", "default").unwrap();
        assert_eq!(ips(&StaticDiscover.endpoints(svc).unwrap()), ["10.0.0.1"]);
        let (feed_src, feed) = FeedDiscover::new();
        let chain = Chain::new(vec![Arc::new(feed_src), Arc::new(StaticDiscover)]);
        let v = chain.version();
        feed.publish(
            "s.default.svc.cluster.local",
            EndpointSet::new(vec![DiscoveredEndpoint::new(
                "10.9.9.9".parse().unwrap(),
                svc.endpoints[0].clone(),
            )]),
        );
        assert!(chain.version() > v);
        assert_eq!(ips(&chain.endpoints(svc).unwrap()), ["10.9.9.9"]);
        feed.remove("s.default.svc.cluster.local");
        assert_eq!(ips(&chain.endpoints(svc).unwrap()), ["10.0.0.1"]);
    }
}

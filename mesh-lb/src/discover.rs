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
//!   logical endpoint per hostname: its first address), re-resolved every
//!   [`DnsDiscover::refresh_interval`] (default 30s, Envoy's `dns_refresh_rate`, since the
//!   system resolver does not tell TTLs). A failed or empty resolution keeps the last good
//!   addresses. The [`Resolver`] is a trait, so tests use a fake.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::compile::{Endpoint, Service, Snapshot};
use mesh_core::model::networking::Resolution;

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
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    /// The addresses of `host`, in the order the resolver gives them.
    fn resolve(&self, host: &str) -> ResolveFuture;
}

/// The future a [`Resolver`] returns.
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// The system resolver, through `tokio::net::lookup_host` (no TTLs; see
/// [`DnsDiscover::refresh_interval`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

/// Endpoints of `DNS` and `DNS_ROUND_ROBIN` services, resolved periodically.
///
/// Hand it to [`LbBuilder::discover`](crate::LbBuilder::discover) (the layer tells it each
/// snapshot; or call [`DnsDiscover::set_snapshot`] yourself), then run [`DnsDiscover::run`]
/// on a runtime (or call [`DnsDiscover::refresh`] yourself). Until a
/// hostname's first successful resolution, its service has no endpoints (requests get
/// `503 UH`), as an Envoy cluster that is still warming.
pub struct DnsDiscover {
    resolver: Arc<dyn Resolver>,
    refresh_interval: Duration,
    targets: ArcSwap<Vec<Target>>,
    /// Last good addresses per hostname.
    resolved: ArcSwap<HashMap<Arc<str>, Arc<Vec<IpAddr>>>>,
    /// Endpoint sets per (service host, namespace).
    sets: ArcSwap<HashMap<ServiceKey, Arc<EndpointSet>>>,
    version: AtomicU64,
}

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

// === impl DnsDiscover ===

impl DnsDiscover {
    /// A DNS source using `resolver`, refreshing every 30s.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        DnsDiscover {
            resolver,
            refresh_interval: Duration::from_secs(30),
            targets: ArcSwap::from_pointee(Vec::new()),
            resolved: ArcSwap::from_pointee(HashMap::new()),
            sets: ArcSwap::from_pointee(HashMap::new()),
            version: AtomicU64::new(1),
        }
    }

    /// Sets how often every hostname is re-resolved. Default: 30s (Envoy's
    /// `dns_refresh_rate`). A zero interval is taken as 1s.
    pub fn with_refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = if every.is_zero() {
            Duration::from_secs(1)
        } else {
            every
        };
        self
    }

    /// How often every hostname is re-resolved.
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
    }

    /// Resolves every hostname once (concurrently), keeping the last good addresses of any
    /// that fails, and publishes the sets that changed.
    pub async fn refresh(&self) {
        let targets = self.targets.load_full();
        let mut names: Vec<Arc<str>> = targets
            .iter()
            .flat_map(|t| t.names.iter().map(|n| n.0.clone()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let lookups = names.into_iter().map(|name| {
            let fut = match name.parse::<IpAddr>() {
                Ok(ip) => Box::pin(async move { Ok(vec![ip]) }) as ResolveFuture,
                Err(_) => self.resolver.resolve(&name),
            };
            Box::pin(async move { (name, fut.await) })
                as Pin<Box<dyn Future<Output = (Arc<str>, io::Result<Vec<IpAddr>>)> + Send>>
        });
        let results = join_all(lookups.collect()).await;
        let mut resolved = (**self.resolved.load()).clone();
        for (name, result) in results {
            match result {
                Ok(ips) if !ips.is_empty() => {
                    resolved.insert(name, Arc::new(ips));
                }
                Ok(_) => {
                    tracing::debug!(host = %name, "DNS answered no address; keeping the last good set")
                }
                Err(e) => {
                    tracing::debug!(host = %name, error = %e, "DNS resolution failed; keeping the last good set")
                }
            }
        }
        self.resolved.store(Arc::new(resolved));
        self.rebuild_sets();
    }

    /// Refreshes forever, every [`DnsDiscover::refresh_interval`], starting now. Spawn it:
    /// `tokio::spawn(dns.clone().run())`.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::time::sleep(self.refresh_interval).await;
        }
    }

    fn rebuild_sets(&self) {
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

    /// Answers from a table; a missing name fails.
    #[derive(Debug, Default)]
    pub(crate) struct FakeResolver {
        pub(crate) answers: Mutex<HashMap<String, Vec<IpAddr>>>,
        pub(crate) calls: AtomicU64,
    }

    impl Resolver for FakeResolver {
        fn resolve(&self, host: &str) -> ResolveFuture {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let r = self.answers.lock().unwrap().get(host).cloned();
            Box::pin(async move { r.ok_or_else(|| io::Error::other("NXDOMAIN")) })
        }
    }

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

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
//!     DiscoveredEndpoint::new("10.0.0.7".parse().unwrap(), Arc::new(Endpoint::new("10.0.0.7"))),
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

mod dns;
mod feed;
mod resolve;
#[cfg(test)]
mod tests;

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

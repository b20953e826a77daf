//! Pushed endpoints ([`FeedDiscover`]) and a chain of sources ([`Chain`]).

use super::*;

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

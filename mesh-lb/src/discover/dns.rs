//! DNS discovery: `resolution: DNS` services, refreshed as their answers' TTLs expire.

use super::*;

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
                    let ep = Endpoint::new(s.hostname.to_string());
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

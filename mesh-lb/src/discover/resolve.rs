//! Resolvers: the system's `getaddrinfo` and hickory's stub resolver with TTLs.

use super::*;

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

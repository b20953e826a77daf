//! The effective load-balancing policy of a destination, from its merged `TrafficPolicy`.

use std::fmt::Write as _;
use std::time::Duration;

use http::HeaderName;
use mesh_core::model::networking::{
    ConsistentHashLb, H2UpgradePolicy, LoadBalancerSettings, LocalityDistribute, LocalityFailover,
    SimpleLb, TrafficPolicy,
};

use crate::config::LbConfig;

/// Envoy's default `min_ring_size` (and Istio's `minimumRingSize`).
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default `max_ring_size`: 8M entries.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size, a prime.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Envoy's default healthy panic threshold, in percent.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

/// The balancing algorithm of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// `ROUND_ROBIN` (weighted when endpoint weights differ).
    RoundRobin,
    /// `RANDOM` (uniform, ignoring weights, as Envoy).
    Random,
    /// `LEAST_REQUEST` / `LEAST_CONN` / unset: power of two choices on active requests.
    LeastRequest,
    /// Peak-EWMA (mesh extension): power of two choices on `rtt × (active + 1)`.
    PeakEwma,
    /// `consistentHash` with a ring (Ketama), of at least this many entries.
    RingHash {
        /// `minimumRingSize`.
        min_ring_size: u64,
    },
    /// `consistentHash.maglev` with this table size.
    Maglev {
        /// `tableSize`.
        table_size: u64,
    },
    /// `PASSTHROUGH`: connect to the host the request named.
    Passthrough,
}

impl Algorithm {
    /// Whether picks read the endpoints' in-flight counts (least request, peak-EWMA): only
    /// then do requests need counting while in flight.
    #[inline]
    pub(crate) fn reads_active(self) -> bool {
        matches!(self, Algorithm::LeastRequest | Algorithm::PeakEwma)
    }
}

/// Where a consistent hash comes from.
#[derive(Debug, Clone)]
pub(crate) enum HashKey {
    /// xxHash64 of the header's values (joined by `,`).
    Header(HeaderName),
    /// The cookie (generated when absent and a TTL is set).
    Cookie(CookieKey),
    /// xxHash64 of the client IP as text.
    SourceIp,
    /// xxHash64 of the query parameter's value.
    Query(Box<str>),
}

/// `consistentHash.httpCookie`.
#[derive(Debug, Clone)]
pub(crate) struct CookieKey {
    pub(crate) name: Box<str>,
    pub(crate) ttl: Option<Duration>,
    /// What follows the value in a generated `Set-Cookie`: `; Max-Age=…; Path=…; HttpOnly`.
    pub(crate) attributes: Box<str>,
}

/// Slow start (`warmupDurationSecs` / `warmup`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Warmup {
    pub(crate) duration: Duration,
    pub(crate) min_fraction: f64,
    pub(crate) aggression: f64,
}

/// What `localityLbSetting` does for this client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LocalityMode {
    /// Every endpoint in one priority, localities flattened.
    Off,
    /// Locality-weighted: the weights of the first `distribute` entry whose `from` matches
    /// the client's locality (none matching: locality weighting does not apply).
    Distribute(Vec<LocalityDistribute>),
    /// Priorities by locality (and `failoverPriority` labels).
    Failover {
        failover: Vec<LocalityFailover>,
        failover_priority: Vec<String>,
    },
}

/// The effective policy of a (host, subset, port).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) algorithm: Algorithm,
    pub(crate) hash: Option<HashKey>,
    pub(crate) warmup: Option<Warmup>,
    pub(crate) locality: LocalityMode,
    /// Percent of healthy endpoints under which a priority is in panic (0 = never).
    pub(crate) panic_threshold: u32,
    /// `h2UpgradePolicy: UPGRADE`.
    pub(crate) h2_upgrade: bool,
    /// `connectionPool.http.maxRequestsPerConnection`, `idleTimeout` (else `tcp.idleTimeout`)
    /// and `tcp.connectTimeout`, for the connector.
    pub(crate) pool: mesh_core::ext::UpstreamPool,
    /// `outlierDetection`, compiled once per build, for outlier detection.
    pub(crate) outlier: Option<std::sync::Arc<mesh_core::policy::OutlierPolicy>>,
    /// The circuit-breaker thresholds (`connectionPool`, `retryBudget`).
    pub(crate) limits: mesh_core::limits::Thresholds,
    /// `tls.mode`, when the merged policy sets one (auto mTLS otherwise).
    pub(crate) tls_mode: Option<mesh_core::model::networking::ClientTlsMode>,
}

// === impl Policy ===

impl Policy {
    /// The policy of `host` under the merged traffic policy `tp`, for a client at
    /// `client_locality` (empty: none known).
    pub(crate) fn from_traffic_policy(
        tp: &TrafficPolicy,
        host: &str,
        cfg: &LbConfig,
        client_locality_known: bool,
    ) -> Self {
        let lb = tp.load_balancer.clone().unwrap_or_default();
        let (algorithm, hash) = algorithm(&lb, host, cfg);
        let warmup = match algorithm {
            Algorithm::RoundRobin | Algorithm::LeastRequest => warmup(&lb),
            _ => None,
        };
        let outlier = tp.outlier_detection.as_ref();
        // Istio: minHealthPercent becomes Envoy's healthy_panic_threshold when outlier
        // detection is configured (its proto default, 0, disables panic); otherwise Envoy's
        // default of 50% applies.
        let panic_threshold = match outlier {
            Some(od) => od.min_health_percent.unwrap_or(0).clamp(0, 100) as u32,
            None => DEFAULT_PANIC_THRESHOLD,
        };
        let locality = locality_mode(&lb, outlier.is_some(), client_locality_known);
        let h2_upgrade = tp
            .connection_pool
            .as_ref()
            .and_then(|c| c.http.as_ref())
            .and_then(|h| h.h2_upgrade_policy)
            .is_some_and(|p| p == H2UpgradePolicy::Upgrade);
        let pool = mesh_core::ext::UpstreamPool::from_traffic_policy(tp);
        Policy {
            algorithm,
            hash,
            warmup,
            locality,
            panic_threshold,
            h2_upgrade,
            pool,
            outlier: outlier
                .map(|od| std::sync::Arc::new(mesh_core::policy::OutlierPolicy::from_istio(od))),
            limits: mesh_core::limits::Thresholds::from_traffic_policy(tp),
            tls_mode: tp.tls.as_ref().map(|t| t.mode),
        }
    }
}

fn algorithm(
    lb: &LoadBalancerSettings,
    host: &str,
    cfg: &LbConfig,
) -> (Algorithm, Option<HashKey>) {
    if let Some(ch) = &lb.consistent_hash {
        let algo = match (&ch.maglev, &ch.ring_hash) {
            (Some(m), _) => Algorithm::Maglev {
                table_size: if m.table_size > 1 {
                    m.table_size
                } else {
                    DEFAULT_MAGLEV_TABLE_SIZE
                },
            },
            (None, ring) => {
                let min = ring
                    .map(|r| r.minimum_ring_size)
                    .filter(|n| *n > 0)
                    .or(ch.minimum_ring_size.filter(|n| *n > 0))
                    .unwrap_or(DEFAULT_MIN_RING_SIZE);
                Algorithm::RingHash {
                    min_ring_size: min.min(MAX_RING_SIZE),
                }
            }
        };
        return (algo, hash_key(ch));
    }
    let algo = match lb.simple.unwrap_or_default() {
        SimpleLb::RoundRobin => Algorithm::RoundRobin,
        SimpleLb::Random => Algorithm::Random,
        SimpleLb::Passthrough => Algorithm::Passthrough,
        SimpleLb::LeastRequest | SimpleLb::LeastConn => Algorithm::LeastRequest,
        SimpleLb::Unspecified if cfg.uses_peak_ewma(host) => Algorithm::PeakEwma,
        SimpleLb::Unspecified => Algorithm::LeastRequest,
    };
    (algo, None)
}

fn hash_key(ch: &ConsistentHashLb) -> Option<HashKey> {
    if let Some(name) = &ch.http_header_name {
        return HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .ok()
            .map(HashKey::Header);
    }
    if let Some(c) = &ch.http_cookie {
        let ttl = c.ttl.map(|d| d.0);
        let mut attributes = String::new();
        if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
            let _ = write!(attributes, "; Max-Age={}", ttl.as_secs());
        }
        if let Some(path) = c.path.as_deref().filter(|p| !p.is_empty()) {
            let _ = write!(attributes, "; Path={path}");
        }
        for a in &c.attributes {
            match &a.value {
                Some(v) => {
                    let _ = write!(attributes, "; {}={v}", a.name);
                }
                None => {
                    let _ = write!(attributes, "; {}", a.name);
                }
            }
        }
        attributes.push_str("; HttpOnly");
        return Some(HashKey::Cookie(CookieKey {
            name: c.name.clone().into(),
            ttl,
            attributes: attributes.into(),
        }));
    }
    if ch.use_source_ip == Some(true) {
        return Some(HashKey::SourceIp);
    }
    ch.http_query_parameter_name
        .as_deref()
        .map(|q| HashKey::Query(q.into()))
}

fn warmup(lb: &LoadBalancerSettings) -> Option<Warmup> {
    if let Some(w) = &lb.warmup {
        let duration = w.duration?.0;
        if duration.is_zero() {
            return None;
        }
        let min = w.minimum_percent.unwrap_or(10.0).clamp(0.0, 100.0) / 100.0;
        let aggression = w.aggression.filter(|a| *a > 0.0).unwrap_or(1.0);
        return Some(Warmup {
            duration,
            min_fraction: min,
            aggression,
        });
    }
    let d = lb.warmup_duration_secs?.0;
    (!d.is_zero()).then_some(Warmup {
        duration: d,
        min_fraction: 0.1,
        aggression: 1.0,
    })
}

/// Istio's `ApplyLocalityLoadBalancer`: `distribute` applies whenever set; failover
/// (explicit or the default by region/zone/subzone) only with outlier detection, since
/// without it Envoy never sees an endpoint as unhealthy and would never fail over.
fn locality_mode(
    lb: &LoadBalancerSettings,
    outlier_detection: bool,
    client_known: bool,
) -> LocalityMode {
    if !client_known {
        return LocalityMode::Off;
    }
    let setting = lb.locality_lb_setting.clone().unwrap_or_default();
    if setting.enabled == Some(false) {
        return LocalityMode::Off;
    }
    if !setting.distribute.is_empty() {
        return LocalityMode::Distribute(setting.distribute);
    }
    if outlier_detection {
        return LocalityMode::Failover {
            failover: setting.failover,
            failover_priority: setting.failover_priority,
        };
    }
    LocalityMode::Off
}

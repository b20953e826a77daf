//! The balancer's own configuration: what Istio's API does not say.

use std::time::Duration;

use mesh_core::GoDuration;
use mesh_core::compile::host_matches;
use serde::{Deserialize, Serialize};

/// Configuration of [`LbLayer`](crate::LbLayer) beyond what DestinationRules say.
///
/// Everything Istio's API expresses (the algorithm, hash keys, locality, warm-up) comes from
/// the DestinationRule of each destination; this struct only holds the mesh-specific
/// extensions and tuning knobs.
///
/// ```
/// let cfg: mesh_lb::LbConfig = serde_json::from_str(
///     r#"{"peakEwmaHosts": ["*.shop.svc.cluster.local"], "peakEwma": {"decay": "5s"}}"#,
/// ).unwrap();
/// assert!(cfg.uses_peak_ewma("cart.shop.svc.cluster.local"));
/// assert!(!cfg.uses_peak_ewma("reviews.default.svc.cluster.local"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LbConfig {
    /// **Extension beyond Istio.** Hosts (exact FQDNs, `*.suffix` wildcards or `*`) whose
    /// destinations use peak-EWMA latency-aware balancing (what Linkerd does by default)
    /// where Istio would use its default: when the effective `loadBalancer` has neither
    /// `simple` nor `consistentHash`, or `simple: UNSPECIFIED`. An explicit `simple` or
    /// `consistentHash` always wins. Default: none.
    pub peak_ewma_hosts: Vec<String>,
    /// Tuning of peak-EWMA. Default: see [`PeakEwmaConfig`].
    pub peak_ewma: PeakEwmaConfig,
    /// Seed of the balancers' random numbers, for reproducible tests and simulations.
    /// Default: none (seeded from entropy for each layer; see `mesh_core::rng`).
    pub seed: Option<u64>,
    /// Envoy's overprovisioning factor, in percent, used to compute priority and locality
    /// load from health. Istio leaves Envoy's default. Default: 140.
    pub overprovisioning_factor: u32,
}

/// Tuning of peak-EWMA ([`LbConfig::peak_ewma_hosts`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PeakEwmaConfig {
    /// The latency assumed for an endpoint with no measurement yet. Default: 30ms (Linkerd's).
    pub default_rtt: GoDuration,
    /// How fast old measurements fade: the weight of a measurement `t` old is `e^(-t/decay)`.
    /// Default: 10s (Linkerd's).
    pub decay: GoDuration,
}

// === impl LbConfig ===

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            peak_ewma_hosts: Vec::new(),
            peak_ewma: PeakEwmaConfig::default(),
            seed: None,
            overprovisioning_factor: 140,
        }
    }
}

impl LbConfig {
    /// Whether destinations of `host` use peak-EWMA where Istio's default would apply.
    pub fn uses_peak_ewma(&self, host: &str) -> bool {
        self.peak_ewma_hosts.iter().any(|p| host_matches(p, host))
    }
}

// === impl PeakEwmaConfig ===

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        PeakEwmaConfig {
            default_rtt: GoDuration(Duration::from_millis(30)),
            decay: GoDuration(Duration::from_secs(10)),
        }
    }
}

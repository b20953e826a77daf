//! The project's own kind `mesh.proxy/v1alpha1` `LocalRateLimit`: Envoy's local rate limit
//! HTTP filter (`envoy.filters.http.local_ratelimit`), which Istio can only configure through
//! an `EnvoyFilter` (istio.io/latest/docs/tasks/policy-enforcement/rate-limit, "Local rate
//! limit"). Every field is described in docs/local-rate-limit.md; fields are only ever added.
//!
//! What one resource limits, from the widest to the narrowest (Envoy's filter-level,
//! virtual-host-level and route-level `typed_per_filter_config`; the narrowest that applies
//! to a request wins, as Envoy's `resolveMostSpecificPerFilterConfig`):
//!
//! - `context: SIDECAR_INBOUND`: the whole inbound listener, one bucket;
//! - neither `hosts` nor `routes`: the whole outbound listener, one bucket;
//! - `hosts` only: the routes of those hosts, one bucket per host (virtual host);
//! - `routes` (with or without `hosts`): the routes of that name (`HTTPRoute.name`), of those
//!   hosts when `hosts` is given, one bucket per route of each host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::duration::GoDuration;
use crate::selector::LabelSelector;

/// `LocalRateLimit.spec`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    /// The workloads the limit applies to, as an EnvoyFilter's `workloadSelector`: it applies
    /// only when its labels select the bootstrap workload (and the resource is in the
    /// workload's namespace or the root namespace). Omitted: every workload of its namespace
    /// (every workload, in the root namespace).
    pub workload_selector: Option<LabelSelector>,
    /// Which listener of the workload's sidecar the limit is on, as an EnvoyFilter's
    /// `match.context`: `SIDECAR_OUTBOUND` (the requests the workload sends; the default) or
    /// `SIDECAR_INBOUND` (the requests peers send it, the Istio task's). An inbound limit
    /// covers the whole inbound listener: `hosts` and `routes` name outbound routes.
    #[serde(default)]
    pub context: RateLimitContext,
    /// Limit the routes of these hosts (short names resolve in the resource's namespace,
    /// as VirtualService hosts do). Omitted: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Limit the routes of these names (`HTTPRoute.name`). Omitted: any route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Envoy's `token_bucket` (required).
    pub token_bucket: Option<TokenBucketSpec>,
    /// The status of a limited request's answer (400–599). Default: 429.
    pub status_code: Option<u16>,
    /// Envoy's `enable_x_ratelimit_headers`. Default: `OFF`.
    #[serde(default)]
    pub enable_x_rate_limit_headers: XRateLimitHeaders,
    /// Headers added to every limited answer (Envoy's `response_headers_to_add`), e.g. the
    /// Istio task's `x-local-rate-limit: "true"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers_to_add: BTreeMap<String, String>,
}

/// `spec.tokenBucket`: Envoy's `envoy.type.v3.TokenBucket`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucketSpec {
    /// The bucket's size, and its content at start (required, > 0).
    #[serde(default)]
    pub max_tokens: u32,
    /// Tokens that come back per `fillInterval` (> 0), continuously (Envoy 1.40's bucket).
    /// Default: 1.
    pub tokens_per_fill: Option<u32>,
    /// How often tokens are added (required, at least 50ms as Envoy's).
    pub fill_interval: Option<GoDuration>,
}

/// `spec.context`: the listener a limit is on (an EnvoyFilter's `PatchContext`, the two a
/// sidecar has).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimitContext {
    /// The outbound listener: the requests the workload sends (the default).
    #[default]
    #[serde(rename = "SIDECAR_OUTBOUND")]
    SidecarOutbound,
    /// The inbound listeners: the requests peers send the workload.
    #[serde(rename = "SIDECAR_INBOUND")]
    SidecarInbound,
}

/// `spec.enableXRateLimitHeaders`: Envoy's `XRateLimitHeadersRFCVersion`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum XRateLimitHeaders {
    /// No `x-ratelimit-*` headers (Envoy's default).
    #[default]
    #[serde(rename = "OFF")]
    Off,
    /// `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` on every answer
    /// to a request the limit applied to (draft 03 of the IETF RateLimit header fields).
    #[serde(rename = "DRAFT_VERSION_03")]
    DraftVersion03,
}

//! `networking.istio.io` kinds: VirtualService, DestinationRule, ServiceEntry, WorkloadEntry,
//! Gateway and Sidecar, field for field as Istio's API protos (`networking/v1alpha3/*.proto`;
//! `v1` and `v1beta1` serve the same schema). Field names are the protobuf JSON names.
//!
//! Defaults noted on fields are Istio's (what istiod programs into Envoy when the field is
//! omitted). `oneof` groups are separate optional fields here, as in protobuf JSON; the
//! validator rejects setting two members of one group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::duration::GoDuration;
use crate::percent::Percent;
use crate::selector::{LabelSelector, Labels, WorkloadSelector};

// ============================================================================================
// VirtualService
// ============================================================================================

/// `VirtualService`: traffic routing rules for a set of hosts.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Destination hosts the rules apply to: short names (`reviews`, resolved in the
    /// VirtualService's namespace), FQDNs, wildcards (`*.example.com`), or `*` (gateways only).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`<ns>/<name>` or `<name>`) and/or the reserved `mesh` the rules apply to.
    /// Default: `mesh` only.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP rules, evaluated in order; the first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS (SNI) rules for unterminated TLS.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Opaque TCP rules.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces this VirtualService is visible to (`.` own, `*` all). Default: all.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// `Destination`: a service (and optionally subset and port) to forward to.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host from the registry (required). Short names resolve in the rule's namespace.
    #[serde(default)]
    pub host: String,
    /// Subset name declared in the host's DestinationRule.
    #[serde(default)]
    pub subset: Option<String>,
    /// Port on the host. Required when the service exposes several ports.
    pub port: Option<PortSelector>,
}

/// `PortSelector`: a port number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    #[serde(default)]
    pub number: u32,
}

/// `HTTPRoute`: match conditions and the action for HTTP/1.1, HTTP/2 and gRPC traffic.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name, for debugging and access logs; also names the route for delegation.
    pub name: Option<String>,
    /// Match conditions: OR across blocks, AND within one. Empty: match everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly instead of forwarding.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VirtualService (root VirtualServices only).
    pub delegate: Option<Delegate>,
    /// Rewrite URI/authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout. Default: disabled (no timeout).
    pub timeout: Option<GoDuration>,
    /// Retry policy. Default: 2 attempts on connect-failure, refused-stream, unavailable,
    /// cancelled and 503.
    pub retries: Option<HttpRetry>,
    /// Fault injection (delay and/or abort), applied before retries and timeouts.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror (shadow) traffic to another destination.
    pub mirror: Option<Destination>,
    /// Several mirror destinations, each with its own percentage.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated: percentage of traffic mirrored (use `mirrorPercentage`).
    pub mirror_percent: Option<u32>,
    /// Percentage of traffic mirrored to `mirror`. Default: 100.
    pub mirror_percentage: Option<Percent>,
    /// Cross-origin resource sharing policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation.
    pub headers: Option<Headers>,
}

/// `Delegate`: the VirtualService an HTTP route delegates to.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    #[serde(default)]
    pub name: String,
    /// Namespace of the delegate. Default: the root VirtualService's namespace.
    pub namespace: Option<String>,
}

/// `Headers`: request and response header operations.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Operations on the request before forwarding.
    pub request: Option<HeaderOperations>,
    /// Operations on the response before returning it.
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`: set (overwrite), add (append) and remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `TLSRoute`: routing of unterminated TLS by SNI.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Match conditions (required).
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `TCPRoute`: routing of opaque TCP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Match conditions.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `HTTPMatchRequest`: conditions on a request, all of which must hold.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name, prefixed to the route name in logs.
    pub name: Option<String>,
    /// URI (path and query, as Envoy's `:path`) match.
    pub uri: Option<StringMatch>,
    /// Scheme match (`http`, `https`).
    pub scheme: Option<StringMatch>,
    /// Method match.
    pub method: Option<StringMatch>,
    /// `:authority` / Host match.
    pub authority: Option<StringMatch>,
    /// Header matches; names are lowercase, `{}` matches presence. Keys must be lowercase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Destination port of the request (when the service has several).
    pub port: Option<u32>,
    /// Labels of the source workload (sidecar `mesh` gateway only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    /// Gateways this match applies to, overriding the VirtualService's `gateways`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Query parameter matches (`exact: ""` matches a bare key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive URI matching (exact and prefix only). Default: false.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Headers that must not match (missing headers count as empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the source workload.
    pub source_namespace: Option<String>,
    /// Stat prefix for this match.
    pub stat_prefix: Option<String>,
}

/// `HTTPRouteDestination`: a weighted destination with its own header operations.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send (required).
    pub destination: Option<Destination>,
    /// Relative weight (proportion of `weight / sum(weights)`). Default: 0, or 100 when it
    /// is the only destination.
    #[serde(default)]
    pub weight: i32,
    /// Header operations applied when this destination is chosen.
    pub headers: Option<Headers>,
}

/// `RouteDestination` (TLS and TCP routes): a weighted destination.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send (required).
    pub destination: Option<Destination>,
    /// Relative weight. Default: 0, or 100 when alone.
    #[serde(default)]
    pub weight: i32,
}

/// `L4MatchAttributes`: TCP match conditions.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// IPv4/IPv6 destination addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Source address or CIDR.
    pub source_subnet: Option<String>,
    /// Labels of the source workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    /// Gateways the match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the source workload.
    pub source_namespace: Option<String>,
}

/// `TLSMatchAttributes`: TLS match conditions.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match (required; wildcards allowed).
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Labels of the source workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    /// Gateways the match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the source workload.
    pub source_namespace: Option<String>,
}

/// `HTTPRedirect.RedirectPortSelection`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    #[default]
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// `HTTPRedirect`: answer with a redirect.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the whole URI path.
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Replace the port.
    pub port: Option<u32>,
    /// Derive the port (oneof with `port`).
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme.
    pub scheme: Option<String>,
    /// Status code. Default: 301.
    pub redirect_code: Option<u32>,
    /// Replace the matched prefix of the path (prefix matches only).
    pub prefix_rewrite: Option<String>,
}

/// `HTTPDirectResponse`: answer with a fixed status and body.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code (required, 200..=599).
    #[serde(default)]
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: a body as text or base64 bytes (oneof).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Body text.
    pub string: Option<String>,
    /// Body bytes, base64 in YAML.
    pub bytes: Option<String>,
}

/// `HTTPRewrite`: rewrite before forwarding.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched prefix (prefix match) or the whole path (exact match).
    pub uri: Option<String>,
    /// Replace the authority / Host.
    pub authority: Option<String>,
    /// Rewrite the path with a regex and a replacement (`\1` capture groups).
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 regular expression.
    #[serde(default, rename = "match")]
    pub pattern: String,
    /// Replacement, with `\1`-style capture groups.
    #[serde(default)]
    pub rewrite: String,
}

/// `StringMatch`: exact, prefix or RE2 regex (oneof). Empty (`{}`) means "present" in
/// header matches.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Exact value.
    pub exact: Option<String>,
    /// Prefix.
    pub prefix: Option<String>,
    /// RE2 regex (full match).
    pub regex: Option<String>,
}

/// `HTTPRetry`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries. 0 disables retries. Default: 2 (when `retries` is omitted).
    #[serde(default)]
    pub attempts: i32,
    /// Timeout per attempt (>= 1ms). Default: the route timeout.
    pub per_try_timeout: Option<GoDuration>,
    /// Comma-separated Envoy retry conditions and status codes.
    /// Default: `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub retry_on: Option<String>,
    /// Retry to other localities. Default: false.
    pub retry_remote_localities: Option<bool>,
    /// Avoid previously tried hosts. Default: true.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base back-off between retries. Default: 25ms.
    pub backoff: Option<GoDuration>,
}

/// `CorsPolicy.UnmatchedPreflights`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Default: FORWARD.
    #[default]
    Unspecified,
    /// Forward preflights that match no origin to the upstream.
    Forward,
    /// Answer them without CORS headers.
    Ignore,
}

/// `CorsPolicy`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact origins (use `allowOrigins`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Origins allowed, as string matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<GoDuration>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// What to do with preflights whose origin matches nothing. Default: FORWARD.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `HTTPFaultInjection`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// Abort with an error.
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Deprecated integer percentage (use `percentage`).
    pub percent: Option<i32>,
    /// Fixed delay (>= 1ms).
    pub fixed_delay: Option<GoDuration>,
    /// Exponential delay (not supported by Istio; rejected by validation).
    pub exponential_delay: Option<GoDuration>,
    /// Percentage of requests delayed. Default: 100.
    pub percentage: Option<Percent>,
}

/// `HTTPFaultInjection.Abort`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status returned (200..=599).
    pub http_status: Option<i32>,
    /// gRPC status name (e.g. `UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// HTTP/2 error (not supported by Istio).
    pub http2_error: Option<String>,
    /// Percentage of requests aborted. Default: 100.
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Mirror destination (required).
    pub destination: Option<Destination>,
    /// Percentage mirrored. Default: 100.
    pub percentage: Option<Percent>,
}

// ============================================================================================
// DestinationRule
// ============================================================================================

/// `DestinationRule`: policies applied after routing, per service, subset and port.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// Service host (required); short names resolve in the rule's namespace.
    #[serde(default)]
    pub host: String,
    /// Policies for the whole service.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets (labelled endpoint groups) with policy overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces this rule is visible to. Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Workloads the rule applies to (the rule's namespace only).
    pub workload_selector: Option<WorkloadSelector>,
}

/// `TrafficPolicy`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing. Default: LEAST_REQUEST.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits (circuit breaking).
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection (passive health checking). Default: disabled.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS. Default: auto mTLS to sidecars, plaintext otherwise.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides; they do not inherit from the top level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// HTTP CONNECT / POST tunnelling.
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol towards the upstream.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget.
    pub retry_budget: Option<RetryBudget>,
}

/// `TrafficPolicy.PortTrafficPolicy`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port (required).
    pub port: Option<PortSelector>,
    /// Load balancing for this port.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool for this port.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection for this port.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS for this port.
    pub tls: Option<ClientTlsSettings>,
}

/// `TrafficPolicy.TunnelSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    pub protocol: Option<String>,
    /// Host to tunnel to (required).
    #[serde(default)]
    pub target_host: String,
    /// Port to tunnel to (required).
    #[serde(default)]
    pub target_port: u32,
}

/// `TrafficPolicy.ProxyProtocol`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// PROXY protocol version. Default: V1.
    pub version: Option<ProxyProtocolVersion>,
}

/// `TrafficPolicy.ProxyProtocol.VERSION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyProtocolVersion {
    /// Version 1 (text).
    #[default]
    V1,
    /// Version 2 (binary).
    V2,
}

/// `TrafficPolicy.RetryBudget`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries. Default: 20.
    pub percent: Option<f64>,
    /// Retries always allowed regardless of the percentage. Default: 3.
    #[serde(default)]
    pub min_retry_concurrency: u32,
    /// Interval over which the budget is computed.
    pub budget_interval: Option<GoDuration>,
}

/// `Subset`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name (required), used in route destinations.
    #[serde(default)]
    pub name: String,
    /// Labels the subset's endpoints carry (all of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Overrides of the top-level policy, merged field by field.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default: LEAST_REQUEST.
    #[default]
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Random.
    Random,
    /// Forward to the original destination address.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Power of two choices on active requests.
    LeastRequest,
}

/// `LoadBalancerSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple policy (oneof with `consistentHash`).
    pub simple: Option<SimpleLb>,
    /// Consistent hashing (oneof with `simple`).
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-weighted load balancing.
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Zone-aware load balancing.
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Slow start: ramp a new endpoint's share over this period.
    pub warmup_duration_secs: Option<GoDuration>,
    /// Slow start, detailed.
    pub warmup: Option<WarmupConfiguration>,
}

/// `WarmupConfiguration`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Warm-up duration (required).
    pub duration: Option<GoDuration>,
    /// Minimum share in percent at the start. Default: 10.
    pub minimum_percent: Option<f64>,
    /// Aggression of the ramp (1.0 = linear). Default: 1.0.
    pub aggression: Option<f64>,
}

/// `LoadBalancerSettings.ConsistentHashLB`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash on a request header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie (generated when absent and `ttl` is set).
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash (Ketama). Default algorithm.
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<MagLev>,
    /// Deprecated: use `ringHash.minimumRingSize`. Default: 1024.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size. Default: 1024.
    #[serde(default)]
    pub minimum_ring_size: u64,
}

/// `ConsistentHashLB.MagLev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Table size, a prime. Default: 65537.
    #[serde(default)]
    pub table_size: u64,
}

/// `ConsistentHashLB.HTTPCookie`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name (required).
    #[serde(default)]
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Cookie lifetime; when set, the cookie is generated if absent.
    pub ttl: Option<GoDuration>,
    /// Extra cookie attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// `HTTPCookie.Attribute`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name (required).
    #[serde(default)]
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// `ConnectionPoolSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Maximum connections per upstream cluster. Default: 2^32-1.
    pub max_connections: Option<i32>,
    /// Connect timeout. Default: 10s.
    pub connect_timeout: Option<GoDuration>,
    /// TCP keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum connection lifetime.
    pub max_connection_duration: Option<GoDuration>,
    /// Idle timeout for TCP connections. Default: 1h.
    pub idle_timeout: Option<GoDuration>,
}

/// `TCPSettings.TcpKeepalive`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead. Default: OS (9 on Linux).
    pub probes: Option<u32>,
    /// Idle time before probes start. Default: OS (2h on Linux).
    pub time: Option<GoDuration>,
    /// Interval between probes. Default: OS (75s on Linux).
    pub interval: Option<GoDuration>,
}

/// `HTTPSettings.H2UpgradePolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh default (do not upgrade).
    #[default]
    Default,
    /// Never upgrade to HTTP/2.
    DoNotUpgrade,
    /// Upgrade HTTP/1.1 to HTTP/2 towards the upstream.
    Upgrade,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Maximum pending requests. Default: 2^32-1.
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests. Default: 2^32-1.
    pub http2_max_requests: Option<i32>,
    /// Maximum requests per connection; 1 disables keep-alive. Default: unlimited.
    pub max_requests_per_connection: Option<i32>,
    /// Maximum outstanding retries. Default: 2^32-1.
    pub max_retries: Option<i32>,
    /// Idle timeout of upstream connections. Default: 1h.
    pub idle_timeout: Option<GoDuration>,
    /// HTTP/2 upgrade policy.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol towards the upstream.
    #[serde(default)]
    pub use_client_protocol: bool,
    /// Maximum concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 keep-alive pings.
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// `HTTPSettings.ConnectionKeepalive`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    /// Ping interval.
    pub interval: Option<GoDuration>,
    /// Ping timeout.
    pub timeout: Option<GoDuration>,
}

/// `OutlierDetection`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: use `consecutive5xxErrors`.
    pub consecutive_errors: Option<i32>,
    /// Count local-origin errors (connect failures, timeouts) separately. Default: false.
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    /// Local-origin failures before ejection. Default: 5.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Gateway errors (502, 503, 504) before ejection. Default: disabled.
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx errors before ejection; 0 disables. Default: 5.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between ejection sweeps (>= 1ms). Default: 10s.
    pub interval: Option<GoDuration>,
    /// Minimum ejection duration (>= 1ms), times the number of ejections. Default: 30s.
    pub base_ejection_time: Option<GoDuration>,
    /// Maximum percentage of hosts ejected. Default: 10.
    pub max_ejection_percent: Option<i32>,
    /// Outlier detection is disabled when fewer than this percentage are healthy.
    /// Default: 0.
    pub min_health_percent: Option<i32>,
    /// Statuses counted as errors instead of 5xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// Mutual TLS with the given client certificate.
    Mutual,
    /// Mutual TLS with the mesh's workload certificate.
    IstioMutual,
}

/// `ClientTLSSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// TLS mode. Default: DISABLE.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client private key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA certificates file to verify the server.
    pub ca_certificates: Option<String>,
    /// Kubernetes secret holding the credentials.
    pub credential_name: Option<String>,
    /// Names accepted in the server certificate's SAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI sent.
    pub sni: Option<String>,
    /// Skip server verification.
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    pub ca_crl: Option<String>,
}

/// `LocalityLoadBalancerSetting`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Explicit weights per locality (oneof-ish with `failover`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region to fail over to when a region is unhealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Ordered label keys defining failover priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Enable locality load balancing. Default: from MeshConfig (enabled).
    pub enabled: Option<bool>,
}

/// `LocalityLoadBalancerSetting.Distribute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Origin locality (`region/zone/subzone`, `*` allowed as last part).
    #[serde(default)]
    pub from: String,
    /// Destination localities and their weights (summing to 100).
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// `LocalityLoadBalancerSetting.Failover`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Origin region.
    #[serde(default)]
    pub from: String,
    /// Destination region.
    #[serde(default)]
    pub to: String,
}

/// `ZoneAwareLoadBalancerSetting`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    /// Enable zone-aware routing.
    pub enabled: Option<bool>,
    /// Failover between regions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Ordered label keys defining failover priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Minimum cluster size for zone-aware routing.
    pub min_cluster_size: Option<u64>,
}

// ============================================================================================
// ServiceEntry and WorkloadEntry
// ============================================================================================

/// `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh (no mTLS, no sidecar).
    #[default]
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the original destination address.
    #[default]
    None,
    /// Use the listed endpoint addresses.
    Static,
    /// Resolve endpoint hostnames (or the hosts) by DNS; all addresses are endpoints.
    Dns,
    /// Resolve by DNS; use the first address only, as one logical endpoint.
    DnsRoundRobin,
    /// Dynamic DNS.
    DynamicDns,
}

/// `ServiceEntry`: a service added to the mesh's registry.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Hosts (required); wildcards allowed except with DNS resolution.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh. Default: MESH_EXTERNAL.
    pub location: Option<Location>,
    /// How endpoints are found. Default: NONE.
    pub resolution: Option<Resolution>,
    /// Endpoints (oneof with `workloadSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// Select WorkloadEntries (and pods) as endpoints.
    pub workload_selector: Option<LabelSelector>,
    /// Namespaces this entry is visible to. Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities accepted for the service's endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number (required).
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`... Default: inferred (TCP).
    pub protocol: Option<String>,
    /// Port name (required, unique).
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints. Default: `number`.
    pub target_port: Option<u32>,
}

impl ServicePort {
    /// Whether the port sends to workload port `port` (its `targetPort`, else its number).
    pub fn sends_to(&self, port: u32) -> bool {
        self.target_port.unwrap_or(self.number) == port
    }
}

/// `WorkloadEntry`: a non-Kubernetes workload (VM, bare metal), also used inline as a
/// ServiceEntry endpoint.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address, hostname (DNS resolution) or `unix://` socket.
    #[serde(default)]
    pub address: String,
    /// Service port name → endpoint port.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels (for subsets and selectors).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Network, for multi-network meshes.
    pub network: Option<String>,
    /// Locality `region/zone/subzone`.
    pub locality: Option<String>,
    /// Load balancing weight. Default: 1.
    pub weight: Option<u32>,
    /// Service account (identity) of the workload.
    pub service_account: Option<String>,
}

// ============================================================================================
// Gateway
// ============================================================================================

/// `Gateway`: a load balancer at the edge of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Servers (listeners).
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this applies to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: Labels,
}

/// `Server`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port (required).
    pub port: Option<Port>,
    /// Bind address.
    pub bind: Option<String>,
    /// Hosts exposed (required): `ns/host`, `*/host`, `./host` or `host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings.
    pub tls: Option<ServerTlsSettings>,
    /// Default endpoint.
    pub default_endpoint: Option<String>,
    /// Server name (unique across the gateway).
    pub name: Option<String>,
}

/// `Port` (Gateway).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number (required).
    #[serde(default)]
    pub number: u32,
    /// Protocol (required): HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS.
    #[serde(default)]
    pub protocol: String,
    /// Name (required).
    #[serde(default)]
    pub name: String,
    /// Deprecated target port.
    pub target_port: Option<u32>,
}

/// `ServerTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Route by SNI without terminating TLS.
    #[default]
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS, requiring client certificates.
    Mutual,
    /// SNI-based routing to services (multi-cluster).
    AutoPassthrough,
    /// Terminate with the mesh's certificates.
    IstioMutual,
    /// Client certificate optional.
    OptionalMutual,
}

/// `ServerTLSSettings.TLSProtocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsProtocol {
    /// Automatic.
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// `ServerTLSSettings`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect HTTP to HTTPS with 301.
    #[serde(default)]
    pub https_redirect: bool,
    /// TLS mode. Default: PASSTHROUGH.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Private key file.
    pub private_key: Option<String>,
    /// CA certificates to verify clients.
    pub ca_certificates: Option<String>,
    /// CRL file.
    pub ca_crl: Option<String>,
    /// Secret holding the credentials.
    pub credential_name: Option<String>,
    /// Several secrets (RSA and ECDSA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Secret holding the CA certificate.
    pub ca_cert_credential_name: Option<String>,
    /// Several certificate/key pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Client SANs accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Client certificate SPKI hashes accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Client certificate hashes accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Skip client verification.
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSCertificate`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Certificate file.
    pub server_certificate: Option<String>,
    /// Private key file.
    pub private_key: Option<String>,
    /// CA certificates file.
    pub ca_certificates: Option<String>,
}

// ============================================================================================
// Sidecar
// ============================================================================================

/// `Sidecar`: scope of a sidecar's ingress and egress.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// Workloads it applies to; none: every workload of the namespace.
    pub workload_selector: Option<LabelSelector>,
    /// Inbound listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners and reachable hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Inbound connection pool.
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// Policy for unknown outbound destinations.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `CaptureMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The environment's default.
    #[default]
    Default,
    /// iptables capture.
    Iptables,
    /// No capture.
    None,
}

/// `SidecarPort`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// Protocol.
    pub protocol: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Deprecated.
    pub target_port: Option<u32>,
}

/// `IstioIngressListener`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Port (required).
    pub port: Option<SidecarPort>,
    /// Bind address.
    pub bind: Option<String>,
    /// Capture mode.
    pub capture_mode: Option<CaptureMode>,
    /// Where to forward (`127.0.0.1:PORT`, `0.0.0.0:PORT` or `unix://`).
    pub default_endpoint: Option<String>,
    /// TLS termination.
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool.
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// `IstioEgressListener`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Port.
    pub port: Option<SidecarPort>,
    /// Bind address.
    pub bind: Option<String>,
    /// Capture mode.
    pub capture_mode: Option<CaptureMode>,
    /// Reachable hosts as `namespace/dnsName` (required).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `OutboundTrafficPolicy.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Only registry services are reachable; others get 502 `NR`.
    RegistryOnly,
    /// Unknown destinations pass through. Istio's MeshConfig default.
    #[default]
    AllowAny,
}

/// `OutboundTrafficPolicy`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// Mode. In a Sidecar, omitted means REGISTRY_ONLY (the proto's zero value).
    pub mode: Option<OutboundTrafficMode>,
    /// Egress proxy for unknown destinations (ALLOW_ANY).
    pub egress_proxy: Option<Destination>,
}

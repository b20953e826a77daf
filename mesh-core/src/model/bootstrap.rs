//! The project's own kind, `mesh.proxy/v1alpha1` `ProxyBootstrap`: what Istio's API cannot
//! say (where to listen, who this workload is, its certificates, limits). This document is a
//! contract operators script against (see docs/architecture.md; every field is described in
//! docs/bootstrap.md, which a test keeps complete): fields are only ever added.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::duration::GoDuration;
use crate::model::networking::OutboundTrafficMode;
use crate::selector::Labels;

/// `ProxyBootstrap.spec`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyBootstrap {
    /// Worker threads; 0 = one per core (as Envoy's `--concurrency`). Default: 2 (Istio's
    /// sidecar default).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Who this proxy serves.
    #[serde(default)]
    pub workload: Workload,
    /// MeshConfig equivalents; omitted fields take Istio's defaults.
    #[serde(default)]
    pub mesh: MeshSettings,
    /// Outbound listener (the app sends plain HTTP here). Omitted: no outbound listener.
    pub outbound: Option<OutboundListener>,
    /// Inbound listener (peers reach the app here). Omitted: no inbound listener.
    pub inbound: Option<InboundListener>,
    /// When a Gateway selects this workload: server port → local port (a server port not
    /// listed is bound as it is, as Envoy does).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gateway_ports: BTreeMap<String, u16>,
    /// The address gateway listeners bind when their server has no `bind`. Default:
    /// `0.0.0.0` (Envoy's gateway listeners).
    #[serde(default = "default_gateway_address")]
    pub gateway_address: String,
    /// Where `credentialName` secrets are read from: `<dir>/<namespace>/<name>/` holding
    /// Istio's secret keys as files (`tls.crt`, `tls.key`, `ca.crt`; the CA also from a
    /// `<name>-cacert` secret). Omitted: `credentialName` is refused.
    pub credentials_dir: Option<String>,
    /// Explicit capture: `"<host>:<port>"` → local port: an L4 listener per entry (on
    /// `outbound.address`) for that service port, served with its VirtualService `tcp`
    /// routes, or `tls` routes by SNI for a `TLS`/`HTTPS` port. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outbound_ports: BTreeMap<String, u16>,
    /// Workload port → local inbound port (portLevelMtls, per-port policy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inbound_ports: BTreeMap<String, u16>,
    /// Admin listener (`/ready`, `/stats/prometheus`, `/config_dump`, `/clusters`).
    /// Default: 127.0.0.1:15000.
    #[serde(default)]
    pub admin: AdminListener,
    /// SPIFFE identity and certificates. Omitted: plaintext only.
    pub identity: Option<Identity>,
    /// Limits; safe defaults when omitted.
    #[serde(default)]
    pub limits: Limits,
    /// Trace propagation and sampling; Istio's defaults when omitted.
    #[serde(default)]
    pub tracing: Tracing,
    /// The access log (MeshConfig's `accessLogFile`, `accessLogEncoding`). Omitted: none, as
    /// Istio's default install.
    pub access_log: Option<AccessLog>,
    /// The headers the proxy adds, as Istio's `ProxyConfig.proxyHeaders`; Istio's defaults
    /// when omitted.
    #[serde(default)]
    pub proxy_headers: ProxyHeaders,
}

fn default_concurrency() -> u32 {
    2
}

fn default_gateway_address() -> String {
    "0.0.0.0".into()
}

impl Default for ProxyBootstrap {
    fn default() -> Self {
        ProxyBootstrap {
            concurrency: default_concurrency(),
            workload: Workload::default(),
            mesh: MeshSettings::default(),
            outbound: None,
            inbound: None,
            gateway_ports: BTreeMap::new(),
            gateway_address: default_gateway_address(),
            credentials_dir: None,
            outbound_ports: BTreeMap::new(),
            inbound_ports: BTreeMap::new(),
            admin: AdminListener::default(),
            identity: None,
            limits: Limits::default(),
            tracing: Tracing::default(),
            access_log: None,
            proxy_headers: ProxyHeaders::default(),
        }
    }
}

/// `spec.workload`: the workload this proxy serves (source of `sourceLabels` matching,
/// Sidecar/policy selection, locality load balancing and identity).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Workload name. Default: `mesh-proxy`.
    #[serde(default = "default_workload_name")]
    pub name: String,
    /// Namespace; documents without `metadata.namespace` belong to it. Default: `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Service account. Default: `default`.
    #[serde(default = "default_sa")]
    pub service_account: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Locality `region/zone/subzone`.
    pub locality: Option<String>,
}

fn default_workload_name() -> String {
    "mesh-proxy".into()
}
fn default_namespace() -> String {
    "default".into()
}
fn default_sa() -> String {
    "default".into()
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: default_workload_name(),
            namespace: default_namespace(),
            service_account: default_sa(),
            labels: Labels::new(),
            locality: None,
        }
    }
}

/// `spec.mesh`: MeshConfig equivalents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSettings {
    /// Trust domain of SPIFFE identities. Default: `cluster.local`.
    #[serde(default = "default_domain")]
    pub trust_domain: String,
    /// Root namespace: mesh-wide policies and fallback DestinationRules. Default:
    /// `istio-system`.
    #[serde(default = "default_root_ns")]
    pub root_namespace: String,
    /// What happens to hosts not in the registry. Default: ALLOW_ANY.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficMode,
    /// DNS suffix of service hosts (`<name>.<ns>.svc.<clusterDomain>`). Default:
    /// `cluster.local`.
    #[serde(default = "default_domain")]
    pub cluster_domain: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}
fn default_root_ns() -> String {
    "istio-system".into()
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: default_domain(),
            root_namespace: default_root_ns(),
            outbound_traffic_policy: OutboundTrafficMode::AllowAny,
            cluster_domain: default_domain(),
        }
    }
}

/// Downstream protocol detection of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and h2c prior knowledge on one port.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// h2c prior knowledge only.
    Http2,
}

/// `spec.outbound`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundListener {
    /// Address. Default: 127.0.0.1.
    #[serde(default = "default_loopback")]
    pub address: String,
    /// Port; 0 picks a free one. Default: 15001.
    #[serde(default = "default_outbound_port")]
    pub port: u16,
    /// Protocol detection. Default: auto.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Whether the application's `x-envoy-*` retry and timeout headers
    /// (`x-envoy-retry-on`, `x-envoy-max-retries`, `x-envoy-upstream-rq-timeout-ms`, …) are
    /// honoured, as Envoy honours them on internal requests (Istio:
    /// `PILOT_SIDECAR_USE_REMOTE_ADDRESS=true` with the application's address internal).
    /// Default: false, as an Istio sidecar: they are removed and the route's policy applies.
    #[serde(default)]
    pub trust_envoy_headers: bool,
}

fn default_loopback() -> String {
    "127.0.0.1".into()
}
fn default_outbound_port() -> u16 {
    15001
}
fn default_inbound_port() -> u16 {
    15006
}
fn default_admin_port() -> u16 {
    15000
}

/// `spec.inbound`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundListener {
    /// Address. Default: 127.0.0.1.
    #[serde(default = "default_loopback")]
    pub address: String,
    /// Port; 0 picks a free one. Default: 15006.
    #[serde(default = "default_inbound_port")]
    pub port: u16,
    /// The local application, `host:port` (required).
    #[serde(default)]
    pub local_app: String,
}

impl InboundListener {
    /// The port of `localApp` (the application's workload port), read without resolving its
    /// host; `None` when it has none.
    pub fn local_app_port(&self) -> Option<u16> {
        self.local_app.rsplit_once(':')?.1.parse().ok()
    }
}

/// `spec.admin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminListener {
    /// Address. Default: 127.0.0.1.
    #[serde(default = "default_loopback")]
    pub address: String,
    /// Port; 0 picks a free one. Default: 15000.
    #[serde(default = "default_admin_port")]
    pub port: u16,
}

impl Default for AdminListener {
    fn default() -> Self {
        AdminListener {
            address: default_loopback(),
            port: default_admin_port(),
        }
    }
}

/// `spec.identity`: the workload's SPIFFE identity and its certificate files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: crate::identity::SpiffeId,
    /// PEM certificate chain file.
    pub certificate_chain: String,
    /// PEM private key file.
    pub private_key: String,
    /// PEM trust bundle (CA certificates) file.
    pub trust_bundle: String,
}

/// `spec.tracing`: trace context propagation (W3C Trace Context, B3, `x-request-id`) and
/// span export.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Percentage (0–100) of the requests without a caller's sampling decision that start a
    /// sampled trace, as Istio's `meshConfig.defaultConfig.tracing.sampling`. Default: 1.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// Where the spans of sampled requests are exported (OTLP/HTTP). Omitted: no export.
    pub otlp: Option<Otlp>,
}

/// `spec.tracing.otlp`: an OpenTelemetry collector reached over OTLP/HTTP (protobuf), as
/// Istio's `extensionProviders[].opentelemetry` with `http`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Otlp {
    /// The collector's URL, `http://host:port[/path]`; without a path, OTLP's `/v1/traces`.
    #[serde(default)]
    pub endpoint: String,
    /// How long one export may take. Default: 10s.
    #[serde(default = "d_10s")]
    pub timeout: GoDuration,
}

/// `spec.proxyHeaders`: the headers the proxy adds to requests and answers, as Istio's
/// `ProxyConfig.proxyHeaders` (`meshConfig.defaultConfig.proxyHeaders`); an omitted field
/// keeps Istio's default (the header is added).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyHeaders {
    /// `server` on every answer (default: `envoy` from the outbound listener, `istio-envoy`
    /// from the inbound listener and gateways, whatever the application answered).
    pub server: Option<ServerHeader>,
    /// `x-envoy-attempt-count` on the requests sent upstream.
    pub attempt_count: Option<HeaderSwitch>,
    /// Envoy's debug headers on answers: `x-envoy-upstream-service-time` on the upstream's,
    /// `x-envoy-overloaded` on a connection pool's overflow.
    pub envoy_debug_headers: Option<HeaderSwitch>,
}

impl ProxyHeaders {
    /// Whether `x-envoy-attempt-count` is added.
    pub fn attempt_count(&self) -> bool {
        !self.attempt_count.as_ref().is_some_and(|s| s.disabled)
    }

    /// Whether Envoy's debug headers are added.
    pub fn envoy_debug_headers(&self) -> bool {
        !self
            .envoy_debug_headers
            .as_ref()
            .is_some_and(|s| s.disabled)
    }
}

/// `spec.proxyHeaders.server`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerHeader {
    /// No `server` of the proxy's: the application's passes (Istio's `PASS_THROUGH`).
    #[serde(default)]
    pub disabled: bool,
    /// The name every answer's `server` gets instead of Istio's.
    pub value: Option<String>,
}

/// A header of `spec.proxyHeaders` turned off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderSwitch {
    /// Whether the header is not added.
    #[serde(default)]
    pub disabled: bool,
}

/// `spec.accessLog`: Istio's access log (MeshConfig's `accessLogFile`, `accessLogEncoding`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    /// The file lines are appended to (`/dev/stdout`: the proxy's standard output).
    #[serde(default)]
    pub path: String,
    /// The line format. Default: TEXT.
    #[serde(default)]
    pub encoding: AccessLogEncoding,
}

/// MeshConfig's `accessLogEncoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessLogEncoding {
    /// Istio's default text line.
    #[default]
    #[serde(rename = "TEXT")]
    Text,
    /// Istio's JSON object.
    #[serde(rename = "JSON")]
    Json,
}

fn default_sampling() -> f64 {
    1.0
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            sampling: default_sampling(),
            otlp: None,
        }
    }
}

/// `spec.limits`: resource limits with safe defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Maximum size of a request's header block in KiB (431 above). Default: 60.
    #[serde(default = "d_60")]
    pub max_request_headers_kb: u32,
    /// Maximum number of request headers (431 above). Default: 100.
    #[serde(default = "d_100")]
    pub max_request_headers_count: u32,
    /// Time allowed to receive a request's headers. Default: 10s.
    #[serde(default = "d_10s")]
    pub request_headers_timeout: GoDuration,
    /// Idle time after which a stream is reset. Default: 300s.
    #[serde(default = "d_300s")]
    pub stream_idle_timeout: GoDuration,
    /// Upstream connect timeout. Default: 10s.
    #[serde(default = "d_10s")]
    pub connect_timeout: GoDuration,
    /// TLS handshake timeout. Default: 10s.
    #[serde(default = "d_10s")]
    pub tls_handshake_timeout: GoDuration,
    /// Maximum concurrent streams per downstream HTTP/2 connection. Default: 100.
    #[serde(default = "d_100")]
    pub http2_max_concurrent_streams: u32,
    /// Time in-flight requests get to finish on SIGTERM. Default: 10s.
    #[serde(default = "d_10s")]
    pub drain_timeout: GoDuration,
    /// The most downstream connections open at once over every listener of the proxy
    /// (Envoy's overload manager `global_downstream_max_connections`); one over it is closed
    /// as soon as it is accepted. Default: 50000.
    #[serde(default = "d_50000")]
    pub max_downstream_connections: u32,
}

fn d_60() -> u32 {
    60
}
fn d_100() -> u32 {
    100
}
fn d_50000() -> u32 {
    50_000
}
fn d_10s() -> GoDuration {
    GoDuration(Duration::from_secs(10))
}
fn d_300s() -> GoDuration {
    GoDuration(Duration::from_secs(300))
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_headers_kb: d_60(),
            max_request_headers_count: d_100(),
            request_headers_timeout: d_10s(),
            stream_idle_timeout: d_300s(),
            connect_timeout: d_10s(),
            tls_handshake_timeout: d_10s(),
            http2_max_concurrent_streams: d_100(),
            drain_timeout: d_10s(),
            max_downstream_connections: d_50000(),
        }
    }
}

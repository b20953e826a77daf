//! `telemetry.istio.io` `Telemetry`: which metrics, traces and access logs Istio's sidecars
//! make for the workloads a resource selects (istio/api `telemetry/v1alpha1/telemetry.proto`,
//! served as `v1` and `v1alpha1`). What applies to the proxy's workload, merged from the
//! root namespace's, its namespace's and its own resources, is [`crate::telemetry`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::duration::GoDuration;
use crate::model::security::PolicyTargetReference;
use crate::selector::WorkloadSelector;

/// `Telemetry.spec`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// The workloads it applies to; none: every workload of its namespace (of the mesh, in
    /// the root namespace).
    pub selector: Option<WorkloadSelector>,
    /// A Gateway API resource (a gateway or a waypoint) it attaches to instead.
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API resources it attaches to instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Tracing: sampling, span reporting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    /// Metrics: which of Istio's standard metrics are made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// Access logging: on or off, by side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// A provider by name (`ProviderRef`): built-in (`envoy`, `prometheus`) or one of MeshConfig's
/// `extensionProviders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name (required).
    #[serde(default)]
    pub name: String,
}

/// `WorkloadMode`: the side of the sidecar traffic is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkloadMode {
    /// Both sides (the default).
    #[default]
    #[serde(rename = "CLIENT_AND_SERVER")]
    ClientAndServer,
    /// The workload as a client: its outbound traffic.
    #[serde(rename = "CLIENT")]
    Client,
    /// The workload as a server: its inbound traffic.
    #[serde(rename = "SERVER")]
    Server,
}

impl WorkloadMode {
    /// Whether the mode covers the client (outbound) side.
    pub fn client(self) -> bool {
        self != WorkloadMode::Server
    }

    /// Whether the mode covers the server (inbound) side.
    pub fn server(self) -> bool {
        self != WorkloadMode::Client
    }
}

/// `TracingSelector` / `AccessLogging.LogSelector`: the side an entry applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelector {
    /// Default: both sides.
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// `Tracing`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The side it applies to.
    #[serde(rename = "match")]
    pub match_: Option<ModeSelector>,
    /// The tracing providers (at most one is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// The share of new traces sampled, in percent (0–100).
    pub random_sampling_percentage: Option<f64>,
    /// Spans are not reported (trace headers are still propagated).
    pub disable_span_reporting: Option<bool>,
    /// Tags added to spans.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Envoy's sampling decision read from `x-request-id`.
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Istio's own span tags.
    pub enable_istio_tags: Option<bool>,
    /// Trace headers are neither read nor written.
    pub disable_context_propagation: Option<bool>,
}

/// `Tracing.CustomTag`: one of a literal, an environment variable or a request header.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    /// A fixed value.
    pub literal: Option<TagLiteral>,
    /// An environment variable of the proxy.
    pub environment: Option<TagSource>,
    /// A request header.
    pub header: Option<TagSource>,
    /// An Envoy access-log formatter (`%REQ(...)%`).
    pub formatter: Option<TagLiteral>,
}

/// `Tracing.Literal`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagLiteral {
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// `Tracing.Environment` / `Tracing.RequestHeader`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagSource {
    /// The variable's or header's name.
    #[serde(default)]
    pub name: String,
    /// The value when it is absent.
    pub default_value: Option<String>,
}

/// `Metrics`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// The metrics providers (`prometheus`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Per-metric changes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    /// How often long-lived connections' metrics are reported.
    pub reporting_interval: Option<GoDuration>,
}

/// `MetricsOverrides`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    /// The metrics it changes; omitted: every metric, both sides.
    #[serde(rename = "match")]
    pub match_: Option<MetricSelector>,
    /// The metrics are not made.
    pub disabled: Option<bool>,
    /// Label changes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `MetricSelector`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics, or all of them (the default).
    pub metric: Option<IstioMetric>,
    /// A metric by its name (without the `istio_` prefix), instead of `metric`.
    pub custom_metric: Option<String>,
    /// The side. Default: both.
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// `MetricSelector.IstioMetric`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every metric.
    #[default]
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total` (gRPC streaming).
    GrpcRequestMessages,
    /// `istio_response_messages_total` (gRPC streaming).
    GrpcResponseMessages,
}

/// `MetricsOverrides.TagOverride`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (the default) or `REMOVE`.
    #[serde(default)]
    pub operation: TagOperation,
    /// The label's value, a CEL expression (`UPSERT`).
    pub value: Option<String>,
}

/// `TagOverride.Operation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Insert or update the label.
    #[default]
    Upsert,
    /// Remove the label.
    Remove,
}

/// `AccessLogging`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// The side it applies to.
    #[serde(rename = "match")]
    pub match_: Option<ModeSelector>,
    /// The access log providers (`envoy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// No line is written.
    pub disabled: Option<bool>,
    /// Which requests are logged, a CEL expression.
    pub filter: Option<LogFilter>,
}

/// `AccessLogging.Filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFilter {
    /// The CEL expression.
    #[serde(default)]
    pub expression: String,
}

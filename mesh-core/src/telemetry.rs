//! What the `Telemetry` resources make of the bootstrap workload's telemetry, merged as
//! Istio's pilot merges them (`pilot/pkg/model/telemetry.go`) over ProxyBootstrap's
//! `accessLog` and `tracing`, which play MeshConfig's part (`accessLogFile`,
//! `accessLogEncoding`, `defaultConfig.tracing.sampling`).
//!
//! **Which resources apply** (`applicableTelemetries`), in this order, each overriding the
//! one before: the root namespace's Telemetry without a selector (mesh-wide), the
//! workload's namespace's without a selector, then the one of the workload's namespace
//! whose `selector` matches the workload's labels. A Telemetry with `targetRef(s)` attaches
//! to gateways and waypoints of the Gateway API: a sidecar does not apply it. Two
//! selector-less Telemetries in one namespace, or two selecting the workload, are what
//! Istio's analyzers report as errors (IST0160, IST0159: its pilot then applies the oldest,
//! or all in creation order, which the files do not say): the proxy refuses them
//! ([`check`]).
//!
//! **Sides.** A `match.mode` of `CLIENT` is the workload's outbound traffic and a gateway's
//! (Istio's gateways take the client's configuration), `SERVER` its inbound traffic;
//! omitted, both.
//!
//! - **Access logging** (`mergeLogs`): the providers in scope are the last level's that
//!   names any; each entry then turns its providers (or the previous entry's) on, or off
//!   with `disabled: true` (provider names compare case-insensitively, as Istio's), and
//!   with the last `filter` written for it (a CEL expression, evaluated per line by
//!   `mesh_telemetry::log_filter`). Only Istio's built-in `envoy` provider is a log this proxy has:
//!   lines to `/dev/stdout`, in `accessLog.encoding`. When no entry decides for `envoy`,
//!   the bootstrap's `accessLog` applies (Istio's `accessLogFile` fallback).
//! - **Tracing** (`Telemetries.Tracing`): entries in order replace the sampling percentage,
//!   `disableSpanReporting` and the `customTags` map when they set them; an unset
//!   percentage is the bootstrap's `tracing.sampling`, as Istio falls back to MeshConfig's.
//! - **Metrics** (`mergeMetrics`): the providers are the last entry's that names any
//!   (default: `prometheus`, as Istio's installation sets `defaultProviders.metrics`);
//!   without `prometheus` no metric is made. An override matching every metric
//!   (no `match`, or `ALL_METRICS`) with `disabled: true` turns a side's metrics off; any
//!   other override (a `customMetric` one too) clears that, and sets its metrics'
//!   `disabled` when it says, and its `tagOverrides` for its metrics and sides, label by
//!   label (a later entry's operation on a label replaces an earlier one's), sorted by
//!   name as pilot sorts them ([`MetricTags`]). The last `reportingInterval` set for
//!   `prometheus` is the TCP metrics' reporting interval (Istio's default: 5 s).

use std::sync::Arc;

use crate::compile::{Named, Snapshot};
use crate::error::{FieldPath, ResourceRef, Severity};
use crate::load::Issue;
use crate::model::Kind;
use crate::model::telemetry::{IstioMetric, TagOperation, Telemetry, WorkloadMode};

/// Istio's built-in access log provider (a file log, `/dev/stdout`).
pub const ENVOY_PROVIDER: &str = "envoy";
/// Istio's built-in metrics provider.
pub const PROMETHEUS_PROVIDER: &str = "prometheus";
/// The file Istio's `envoy` provider writes to.
pub const ENVOY_LOG_PATH: &str = "/dev/stdout";

/// A value for each side of the workload's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sides<T> {
    /// The workload as a client: the outbound listener (and a gateway's listeners).
    pub client: T,
    /// The workload as a server: the inbound listener.
    pub server: T,
}

impl<T> Sides<T> {
    fn both(v: T) -> Sides<T>
    where
        T: Clone,
    {
        Sides {
            client: v.clone(),
            server: v,
        }
    }

    fn each(&mut self, mode: WorkloadMode, mut f: impl FnMut(&mut T)) {
        if mode.client() {
            f(&mut self.client);
        }
        if mode.server() {
            f(&mut self.server);
        }
    }
}

/// Where a side's access log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogChoice {
    /// No Telemetry decides: ProxyBootstrap's `accessLog`, if any (Istio's
    /// `accessLogFile`).
    #[default]
    Bootstrap,
    /// No line (`disabled: true`).
    Off,
    /// Istio's `envoy` provider: [`ENVOY_LOG_PATH`], in the bootstrap's `accessLog.encoding`.
    Envoy,
}

/// A side's tracing.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingChoice {
    /// The share of new traces sampled, in percent.
    pub sampling: f64,
    /// Whether sampled requests make spans (to the bootstrap's `tracing.otlp`).
    pub report_spans: bool,
    /// The spans' custom tags (`customTags`, the last entry's that sets them: Istio
    /// replaces the whole map), by name.
    pub custom_tags: Arc<[(String, CustomTagValue)]>,
}

/// Where a custom tag's value comes from (`Tracing.CustomTag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomTagValue {
    /// A fixed value (`literal`), or an environment variable of the proxy
    /// (`environment`), read when the configuration is applied (Envoy reads it when it
    /// builds the listener's configuration: the process's environment is the same).
    Fixed(String),
    /// A request header (`header`): its value, else the default (no tag without one).
    Header {
        /// The header's name, lowercase.
        name: String,
        /// The value when the request has no such header.
        default: Option<String>,
    },
}

/// The standard metrics a side makes: a set of [`IstioMetric`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSet(u16);

impl MetricSet {
    /// Every metric.
    pub const ALL: MetricSet = MetricSet(0x7fe);
    /// None.
    pub const NONE: MetricSet = MetricSet(0);

    /// `m`'s bit in [`bits`](Self::bits).
    pub const fn bit(m: IstioMetric) -> u16 {
        1 << (m as u16)
    }

    /// Whether `m` is made (`ALL_METRICS`: whether every metric is).
    pub fn has(self, m: IstioMetric) -> bool {
        match m {
            IstioMetric::AllMetrics => self == MetricSet::ALL,
            m => self.0 & MetricSet::bit(m) != 0,
        }
    }

    /// Whether no metric is made.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as bits, one per [`IstioMetric`] (by its number in Istio's enum).
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set of [`bits`](Self::bits) (others ignored).
    pub fn from_bits(bits: u16) -> MetricSet {
        MetricSet(bits & MetricSet::ALL.0)
    }

    fn set(&mut self, m: IstioMetric, on: bool) {
        match on {
            true => self.0 |= MetricSet::bit(m),
            false => self.0 &= !MetricSet::bit(m),
        }
    }
}

impl Default for MetricSet {
    fn default() -> Self {
        MetricSet::ALL
    }
}

/// A Telemetry's change to one label of a standard metric (`tagOverrides`), as istiod
/// hands it to the proxy's stats filter (`tags_to_remove`, `dimensions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelOverride {
    /// The label's name.
    pub name: String,
    /// `None`: the label is removed (`REMOVE`; a name that is not one of Istio's standard
    /// labels is left alone). `Some`: the CEL expression whose value, per request, the label
    /// takes (`UPSERT`): a standard label keeps its place with that value, another name
    /// is added after the standard ones.
    pub value: Option<Arc<str>>,
}

/// The names of Istio's standard labels (its stats filter's `all_tags_`): what a
/// [`LabelOverride`] removes or sets in place; another name is added.
pub const STANDARD_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The Prometheus name a label added by a [`LabelOverride`] is exposed under (characters
/// other than `[a-zA-Z0-9_]` become `_`, a leading digit gets a `_` before it, as Envoy's
/// exposition sanitizes names); `None` when Prometheus would refuse it or take a label
/// twice: `le` (a histogram's bucket bound), a name beginning with `__`, or one of
/// [`STANDARD_LABELS`] once sanitized.
pub fn added_label_name(name: &str) -> Option<String> {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    let refused = s == "le" || s.starts_with("__") || STANDARD_LABELS.contains(&s.as_str());
    (!refused && !s.is_empty()).then_some(s)
}

/// Each standard metric's label overrides on one side ([`LabelOverride`], sorted by
/// name), in Istio's enum order; a metric without any is left out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricTags(pub Vec<(IstioMetric, Arc<[LabelOverride]>)>);

impl MetricTags {
    /// `metric`'s overrides (empty: its labels are Istio's standard set).
    pub fn get(&self, metric: IstioMetric) -> &[LabelOverride] {
        self.0
            .iter()
            .find(|(m, _)| *m == metric)
            .map_or(&[], |(_, o)| o)
    }

    /// Whether no metric has an override.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The standard metrics, in Istio's enum order.
const METRICS: [IstioMetric; 10] = [
    IstioMetric::RequestCount,
    IstioMetric::RequestDuration,
    IstioMetric::RequestSize,
    IstioMetric::ResponseSize,
    IstioMetric::TcpOpenedConnections,
    IstioMetric::TcpClosedConnections,
    IstioMetric::TcpSentBytes,
    IstioMetric::TcpReceivedBytes,
    IstioMetric::GrpcRequestMessages,
    IstioMetric::GrpcResponseMessages,
];

/// The workload's telemetry (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryView {
    /// Access logging, by side.
    pub access_log: Sides<AccessLogChoice>,
    /// The CEL expression that chooses each side's lines (`filter.expression` of the last
    /// entry naming the `envoy` provider for the side; `None`: every line).
    pub access_log_filter: Sides<Option<Arc<str>>>,
    /// Tracing, by side.
    pub tracing: Sides<TracingChoice>,
    /// The standard metrics, by side.
    pub metrics: Sides<MetricSet>,
    /// The standard metrics' label overrides, by side (none when the side makes no metric).
    pub metric_tags: Sides<MetricTags>,
    /// How often a TCP connection's bytes, and a gRPC call's messages, are reported while
    /// it is open (`reportingInterval` of the last entry that sets it for `prometheus`, both
    /// sides: Istio keeps it per provider; its stats filter's `tcp_reporting_duration` paces
    /// both); `None`: Istio's default, [`TCP_REPORTING_INTERVAL`]; zero: only at the end,
    /// as Istio's stats filter arms no timer for a connection then.
    pub tcp_reporting_interval: Option<std::time::Duration>,
}

/// Istio's default TCP reporting interval (its stats filter's `tcp_reporting_duration`).
pub const TCP_REPORTING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `list` names `provider` (case-insensitive, as Istio's `fetchProvider`).
fn names(list: &[&str], provider: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(provider))
}

/// Whether `t` has no selector labels and no target: its namespace's default.
fn namespace_wide(t: &Telemetry) -> bool {
    t.selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
        && t.target_ref.is_none()
        && t.target_refs.is_empty()
}

/// The levels that apply to the bootstrap workload, root first: the Telemetries of each
/// level in source order (more than one in a level is a [`check`] error).
fn levels(snapshot: &Snapshot) -> [Vec<&Named<Telemetry>>; 3] {
    let w = &snapshot.bootstrap.workload;
    let root = snapshot.bootstrap.mesh.root_namespace.as_str();
    let all = || snapshot.telemetries.iter().map(|t| &**t);
    [
        all()
            .filter(|t| t.namespace == root && namespace_wide(&t.spec))
            .collect(),
        all()
            .filter(|t| t.namespace != root)
            .filter(|t| t.namespace == w.namespace && namespace_wide(&t.spec))
            .collect(),
        all()
            .filter(|t| t.namespace == w.namespace && !namespace_wide(&t.spec))
            .filter(|t| t.spec.target_ref.is_none() && t.spec.target_refs.is_empty())
            .filter(|t| {
                t.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(&w.labels))
            })
            .collect(),
    ]
}

/// The Telemetries that apply, root first, at most one per level (the first; see
/// [`check`]).
fn applicable(snapshot: &Snapshot) -> Vec<&Telemetry> {
    levels(snapshot)
        .into_iter()
        .filter_map(|l| l.first().map(|t| &t.spec))
        .collect()
}

/// What the Telemetries make of the bootstrap workload's telemetry.
pub fn resolve(snapshot: &Snapshot) -> TelemetryView {
    let applied = applicable(snapshot);
    let (access_log, access_log_filter) = access_log(&applied);
    let (metrics, metric_tags, tcp_reporting_interval) = metrics(&applied);
    TelemetryView {
        access_log,
        access_log_filter,
        tracing: tracing(&applied, snapshot.bootstrap.tracing.sampling),
        metrics,
        metric_tags,
        tcp_reporting_interval,
    }
}

/// `mergeLogs` for Istio's `envoy` provider, the one log provider of this proxy.
fn access_log(applied: &[&Telemetry]) -> (Sides<AccessLogChoice>, Sides<Option<Arc<str>>>) {
    let mut out = Sides::both(AccessLogChoice::Bootstrap);
    let mut filters: Sides<Option<Arc<str>>> = Sides::both(None);
    for (mode, side, filter) in [
        (WorkloadMode::Client, &mut out.client, &mut filters.client),
        (WorkloadMode::Server, &mut out.server, &mut filters.server),
    ] {
        let matches = |m: Option<&crate::model::telemetry::ModeSelector>| {
            let m = m.map_or(WorkloadMode::ClientAndServer, |s| s.mode);
            m == WorkloadMode::ClientAndServer || m == mode
        };
        // pass 1: the providers in scope, the last level's that names any (the default
        // providers, Istio's `defaultProviders.accessLogging`, are none), and each one's
        // filter, the last entry's that names it
        let mut in_scope: Vec<&str> = Vec::new();
        for a in applied.iter().flat_map(|t| &t.access_logging) {
            if matches(a.match_.as_ref())
                && a.providers
                    .iter()
                    .any(|p| p.name.eq_ignore_ascii_case(ENVOY_PROVIDER))
            {
                *filter = a
                    .filter
                    .as_ref()
                    .filter(|f| !f.expression.is_empty())
                    .map(|f| Arc::from(f.expression.as_str()));
            }
        }
        for t in applied {
            let names: Vec<&str> = t
                .access_logging
                .iter()
                .filter(|a| matches(a.match_.as_ref()))
                .flat_map(|a| a.providers.iter().map(|p| p.name.as_str()))
                .collect();
            if !names.is_empty() {
                in_scope = names;
            }
        }
        // pass 2: each entry turns its providers (or the previous entry's) on or off
        let mut previous: Vec<&str> = Vec::new();
        let mut envoy = None;
        for a in applied.iter().flat_map(|t| &t.access_logging) {
            if !a.providers.is_empty() {
                previous = a.providers.iter().map(|p| p.name.as_str()).collect();
            }
            if !matches(a.match_.as_ref()) {
                continue;
            }
            if names(&previous, ENVOY_PROVIDER) && names(&in_scope, ENVOY_PROVIDER) {
                envoy = Some(a.disabled != Some(true));
            }
        }
        *side = match envoy {
            Some(true) => AccessLogChoice::Envoy,
            Some(false) => AccessLogChoice::Off,
            None => AccessLogChoice::Bootstrap,
        };
        if *side != AccessLogChoice::Envoy {
            *filter = None;
        }
    }
    (out, filters)
}

/// `Telemetries.Tracing`, for the fields this proxy's tracer has.
fn tracing(applied: &[&Telemetry], sampling: f64) -> Sides<TracingChoice> {
    let mut out = Sides::both(TracingChoice {
        sampling,
        report_spans: true,
        custom_tags: Arc::from([]),
    });
    for t in applied.iter().flat_map(|t| &t.tracing) {
        let mode = t.match_.map_or(WorkloadMode::ClientAndServer, |m| m.mode);
        out.each(mode, |c| {
            if let Some(p) = t.random_sampling_percentage {
                c.sampling = p;
            }
            if let Some(d) = t.disable_span_reporting {
                c.report_spans = !d;
            }
            if !t.custom_tags.is_empty() {
                c.custom_tags = custom_tags(&t.custom_tags);
            }
        });
    }
    out
}

/// The tags of a `customTags` map, by name; a tag of no kind, or a `formatter` (the
/// support table tells), has no value here.
fn custom_tags(
    tags: &std::collections::BTreeMap<String, crate::model::telemetry::CustomTag>,
) -> Arc<[(String, CustomTagValue)]> {
    tags.iter()
        .filter_map(|(name, t)| {
            let value = if let Some(l) = &t.literal {
                CustomTagValue::Fixed(l.value.clone())
            } else if let Some(e) = &t.environment {
                let v = std::env::var(&e.name)
                    .ok()
                    .or_else(|| e.default_value.clone())?;
                CustomTagValue::Fixed(v)
            } else if let Some(h) = &t.header {
                CustomTagValue::Header {
                    name: h.name.to_ascii_lowercase(),
                    default: h.default_value.clone(),
                }
            } else {
                return None;
            };
            Some((name.clone(), value))
        })
        .collect()
}

/// The label operations of one side, per metric ([`METRICS`] order), by label name.
type TagMaps = [std::collections::BTreeMap<String, Option<Arc<str>>>; 10];

/// `mergeMetrics` for the `prometheus` provider: the metrics each side makes, their label
/// overrides, and the TCP reporting interval.
fn metrics(
    applied: &[&Telemetry],
) -> (
    Sides<MetricSet>,
    Sides<MetricTags>,
    Option<std::time::Duration>,
) {
    let mut in_scope = vec![PROMETHEUS_PROVIDER];
    let mut previous = in_scope.clone();
    let mut all_off = Sides::both(false);
    let mut disabled: Sides<[Option<bool>; 10]> = Sides::both([None; 10]);
    let mut tags: Sides<TagMaps> = Sides::default();
    let mut interval = None;
    for m in applied.iter().flat_map(|t| &t.metrics) {
        if !m.providers.is_empty() {
            previous = m.providers.iter().map(|p| p.name.as_str()).collect();
            in_scope = previous.clone();
        }
        if !names(&previous, PROMETHEUS_PROVIDER) {
            continue;
        }
        if let Some(i) = m.reporting_interval {
            interval = Some(i.0);
        }
        for o in &m.overrides {
            let sel = o.match_.as_ref();
            let mode = sel.map_or(WorkloadMode::ClientAndServer, |s| s.mode);
            if sel.is_some_and(|s| s.custom_metric.is_some()) {
                // no custom metric here (the support table warns); as in Istio, it still
                // clears the side's all-disabled mark
                all_off.each(mode, |a| *a = false);
                continue;
            }
            let metric = sel.and_then(|s| s.metric).unwrap_or_default();
            if metric == IstioMetric::AllMetrics && o.disabled == Some(true) {
                all_off.each(mode, |a| *a = true);
                continue;
            }
            all_off.each(mode, |a| *a = false);
            let matched = |m: &IstioMetric| metric == IstioMetric::AllMetrics || metric == *m;
            // each label's last operation wins (`override.TagOverrides[k] = v`); an empty
            // name (Istio's validation warns) is no label
            tags.each(mode, |maps| {
                for (i, _) in METRICS.iter().enumerate().filter(|(_, m)| matched(m)) {
                    for (name, t) in o.tag_overrides.iter().filter(|(n, _)| !n.is_empty()) {
                        let value = match t.operation {
                            TagOperation::Remove => None,
                            TagOperation::Upsert => {
                                Some(Arc::from(t.value.as_deref().unwrap_or("")))
                            }
                        };
                        maps[i].insert(name.clone(), value);
                    }
                }
            });
            let Some(d) = o.disabled else { continue };
            disabled.each(mode, |set| {
                for (i, m) in METRICS.iter().enumerate() {
                    if matched(m) {
                        set[i] = Some(d);
                    }
                }
            });
        }
    }
    let set = |off: bool, disabled: &[Option<bool>; 10]| {
        let mut s = MetricSet::ALL;
        if off || !names(&in_scope, PROMETHEUS_PROVIDER) {
            return MetricSet::NONE;
        }
        for (i, m) in METRICS.iter().enumerate() {
            if disabled[i] == Some(true) {
                s.set(*m, false);
            }
        }
        s
    };
    let sets = Sides {
        client: set(all_off.client, &disabled.client),
        server: set(all_off.server, &disabled.server),
    };
    let labels = |maps: TagMaps, on: MetricSet| {
        MetricTags(
            METRICS
                .iter()
                .zip(maps)
                .filter(|(m, map)| on.has(**m) && !map.is_empty())
                .map(|(m, map)| {
                    let list: Arc<[LabelOverride]> = map
                        .into_iter()
                        .map(|(name, value)| LabelOverride { name, value })
                        .collect();
                    (*m, list)
                })
                .collect(),
        )
    };
    let metric_tags = Sides {
        client: labels(tags.client, sets.client),
        server: labels(tags.server, sets.server),
    };
    (sets, metric_tags, interval)
}

/// The longest access log filter expression accepted, in bytes: cel-rust's parser recurses
/// once per term of a flat chain (`a || b || …`), so the length bounds its stack.
pub const MAX_FILTER_LEN: usize = 1024;
/// The deepest nesting of brackets, or the longest run of unary operators (`!`, `-`), in an
/// access log filter's text: the parser recurses a few frames per level of either.
pub const MAX_FILTER_NESTING: usize = 32;

/// Whether cel-rust's parser can read `expression` within the stack of any thread of the
/// proxy: at most [`MAX_FILTER_LEN`] bytes and [`MAX_FILTER_NESTING`] levels of brackets or
/// unary operators (found in the text, outside string literals). The error says which.
pub fn check_filter_text(expression: &str) -> Result<(), String> {
    if expression.len() > MAX_FILTER_LEN {
        return Err(format!(
            "the expression is {} bytes long, more than the {MAX_FILTER_LEN} this proxy parses",
            expression.len()
        ));
    }
    let (mut depth, mut deepest, mut unary, mut longest) = (0usize, 0usize, 0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &b in expression.as_bytes() {
        if let Some(q) = quote {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, _) if b == q => quote = None,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        deepest = deepest.max(depth);
        match b {
            b'!' | b'-' => unary += 1,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => unary = 0,
        }
        longest = longest.max(unary);
    }
    if deepest.max(longest) > MAX_FILTER_NESTING {
        return Err(format!(
            "the expression nests more than {MAX_FILTER_NESTING} levels of brackets or unary operators, more than this proxy parses"
        ));
    }
    Ok(())
}
/// The deepest access log filter expression accepted: the evaluator recurses once per
/// level, on the worker's stack.
pub const MAX_FILTER_DEPTH: usize = 100;

/// Parses `expression` with cel-rust (call [`check_filter_text`] first); the error is the
/// first line of the parser's, without its picture of the text.
pub(crate) fn parse_filter(expression: &str) -> Result<cel::Program, String> {
    cel::Program::compile(expression).map_err(|e| {
        let e = e.to_string();
        e.lines().next().unwrap_or_default().to_string()
    })
}

/// Compiles an access log filter (a Telemetry's `filter.expression`) as the proxy
/// evaluates it: CEL, within [`check_filter_text`]'s bounds and [`MAX_FILTER_DEPTH`] levels,
/// and no message literal (`google.protobuf.Duration{…}`: the evaluator has no message types).
/// The error is the first line of the parser's, or which bound the expression passes.
pub fn compile_filter(expression: &str) -> Result<cel::Program, String> {
    use cel::common::ast::{EntryExpr, Expr};
    check_filter_text(expression)?;
    let program = parse_filter(expression)?;
    // the tree, walked without recursion
    let mut stack = vec![(program.expression(), 1usize)];
    while let Some((e, depth)) = stack.pop() {
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "the expression is more than {MAX_FILTER_DEPTH} levels deep, more than this proxy accepts"
            ));
        }
        let below = depth + 1;
        match &e.expr {
            Expr::Struct(s) => {
                return Err(format!(
                    "message literals ({}{{…}}) are not supported by this proxy",
                    s.type_name
                ));
            }
            Expr::Call(c) => {
                stack.extend(c.target.iter().map(|t| (&**t, below)));
                stack.extend(c.args.iter().map(|a| (a, below)));
            }
            Expr::Comprehension(c) => stack.extend(
                [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]
                .map(|x| (x, below)),
            ),
            Expr::List(l) => stack.extend(l.elements.iter().map(|x| (x, below))),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            stack.push((&me.key, below));
                            stack.push((&me.value, below));
                        }
                        EntryExpr::StructField(f) => stack.push((&f.value, below)),
                    }
                }
            }
            Expr::Select(s) => stack.push((&s.operand, below)),
            Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        }
    }
    Ok(program)
}

/// Envoy's attribute roots the access log filter fills, and Istio's peer metadata.
const ROOTS: &[&str] = &[
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
    "xds",
    "upstream_peer",
    "downstream_peer",
];

/// The attributes the access log filter fills, `root.name` (`mesh_telemetry::log_filter`).
pub const FILTER_ATTRIBUTES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.headers",
    "request.referer",
    "request.useragent",
    "request.id",
    "request.protocol",
    "request.duration",
    "request.size",
    "response.code",
    "response.code_details",
    "response.grpc_status",
    "response.size",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "connection.mtls",
    "connection.requested_server_name",
    "upstream.address",
    "upstream.port",
    "upstream.local_address",
    "upstream.transport_failure_reason",
    "xds.cluster_name",
    "xds.route_name",
    "upstream_peer.workload",
    "upstream_peer.namespace",
    "upstream_peer.app",
    "upstream_peer.version",
    "upstream_peer.service",
    "upstream_peer.revision",
    "upstream_peer.labels",
    "downstream_peer.namespace",
];

/// The attributes `expression` (an access log filter) reads that the proxy does not fill (`response.headers`,
/// `metadata`, …), in order of appearance: each evaluates as an error, which skips the
/// line. Found in the text (outside string literals), `root.name` for Envoy's roots and
/// `root` alone for the others Envoy and Istio have (`metadata`, `filter_state`, `node`,
/// `upstream_peer`, `downstream_peer`, …).
pub fn unsupported_attributes(expression: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (root, name) in attribute_references(expression) {
        let found = match (root.as_str(), &name) {
            // Envoy's metadata and filter state
            (
                "metadata"
                | "filter_state"
                | "node"
                | "cluster_metadata"
                | "listener_metadata"
                | "route_metadata"
                | "upstream_host_metadata",
                _,
            ) => Some(root.clone()),
            (r, Some(n)) if ROOTS.contains(&r) => {
                let attr = format!("{r}.{n}");
                (!FILTER_ATTRIBUTES.contains(&attr.as_str())).then_some(attr)
            }
            _ => None,
        };
        if let Some(f) = found
            && !out.contains(&f)
        {
            out.push(f);
        }
    }
    out
}

/// The paths `expression` reads, found in its text outside string literals: `(root,
/// Some(name))` for `root.name`, `(root, None)` for an identifier read otherwise
/// (`request['path']`, `has(request)`, a variable of a comprehension). An attribute an
/// access log filter does not read need not be filled for it.
pub fn attribute_references(expression: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = expression.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if b == b'"' || b == b'\'' {
            quote = Some(b);
            i += 1;
            continue;
        }
        let ident = |j: usize| bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_';
        if ident(i) && (i == 0 || (!ident(i - 1) && bytes[i - 1] != b'.')) {
            let start = i;
            while i < bytes.len() && (ident(i) || bytes[i] == b'.') {
                i += 1;
            }
            let mut parts = expression[start..i].split('.');
            let root = parts.next().unwrap_or("").to_string();
            let name = parts.next().filter(|n| !n.is_empty()).map(str::to_string);
            out.push((root, name));
            continue;
        }
        i += 1;
    }
    out
}

/// The proxy's own checks of the Telemetries that apply to the workload, beyond Istio's
/// validation. Errors (the configuration is refused): two Telemetries at one level (Istio's
/// analyzers' IST0160 and IST0159), an access log filter beyond what the proxy evaluates
/// safely. Warnings: what the proxy does with `tagOverrides` Istio lets through (a value it
/// cannot compile, a label name Prometheus would refuse or take twice, a `REMOVE` of a
/// label that is not standard).
pub fn check(snapshot: &Snapshot) -> Vec<Issue> {
    let levels = levels(snapshot);
    let mut out = conflicts(&levels);
    out.extend(label_warnings(&levels));
    out
}

/// What the proxy does with the applicable Telemetries' `tagOverrides` that Istio's
/// validation lets through, as warnings naming the field: a value this proxy cannot compile
/// (Istio's proxy logs "Failed to parse expression" and leaves the label out), a name
/// Prometheus would refuse or take twice (not added), a `REMOVE` of a label that is not
/// one of Istio's standard labels (Istio's proxy logs "Tag is not standard": nothing is
/// removed).
fn label_warnings(levels: &[Vec<&Named<Telemetry>>; 3]) -> Vec<Issue> {
    let mut out = Vec::new();
    for t in levels.iter().flatten() {
        let resource = ResourceRef {
            kind: Kind::Telemetry,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
        };
        for (i, m) in t.spec.metrics.iter().enumerate() {
            for (j, o) in m.overrides.iter().enumerate() {
                // the names added so far, sanitized: a second one alike is not added
                let mut added: Vec<String> = Vec::new();
                for (name, to) in o.tag_overrides.iter().filter(|(n, _)| !n.is_empty()) {
                    let field = FieldPath::root()
                        .key("spec")
                        .key("metrics")
                        .index(i)
                        .key("overrides")
                        .index(j)
                        .key("tagOverrides")
                        .key(name);
                    let standard = STANDARD_LABELS.contains(&name.as_str());
                    let value = to.value.as_deref().unwrap_or("");
                    let (field, message) = match to.operation {
                        TagOperation::Upsert if value.is_empty() => continue,
                        TagOperation::Upsert => match compile_filter(value) {
                            Err(e) => (
                                field.key("value"),
                                format!(
                                    "is not a CEL expression this proxy evaluates ({e}): as Istio's proxy does, the label is left out (a standard label) or not added"
                                ),
                            ),
                            Ok(_) if standard => continue,
                            Ok(_) => match added_label_name(name) {
                                Some(n) if !added.contains(&n) => {
                                    added.push(n);
                                    continue;
                                }
                                _ => (
                                    field,
                                    "is a label name Prometheus would refuse or take twice (`le`, `__…`, a standard label's or another added label's once sanitized): the label is not added".to_owned(),
                                ),
                            },
                        },
                        TagOperation::Remove if !standard => (
                            field,
                            "is not one of Istio's standard labels: nothing is removed (as Istio's proxy)".to_owned(),
                        ),
                        TagOperation::Remove => continue,
                    };
                    out.push(Issue {
                        severity: Severity::Warning,
                        resource: resource.clone(),
                        field,
                        message,
                    });
                }
            }
        }
    }
    out
}

/// Two Telemetries at one level for the workload (two without a selector in the root
/// namespace or in its own, two selecting it): an error on the later one. Istio's analyzers
/// report them as errors (IST0160 `MultipleTelemetriesWithoutWorkloadSelectors`, IST0159
/// `MultipleTelemetriesWithSameSelector`); its pilot then applies the oldest by creation
/// time, or all in that order, which the files do not say, so the proxy refuses them.
///
/// And an access log filter of a Telemetry that applies which the proxy would not evaluate
/// safely ([`compile_filter`]'s bounds): an error on its expression.
fn conflicts(levels: &[Vec<&Named<Telemetry>>; 3]) -> Vec<Issue> {
    let error = |t: &Named<Telemetry>, field: FieldPath, message: String| Issue {
        severity: Severity::Error,
        resource: ResourceRef {
            kind: Kind::Telemetry,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
        },
        field,
        message,
    };
    let mut out = Vec::new();
    for t in levels.iter().flatten() {
        for (i, a) in t.spec.access_logging.iter().enumerate() {
            let Some(f) = a.filter.as_ref().filter(|f| !f.expression.is_empty()) else {
                continue;
            };
            if let Err(e) = compile_filter(&f.expression) {
                let field = FieldPath::root()
                    .key("spec")
                    .key("accessLogging")
                    .index(i)
                    .key("filter")
                    .key("expression");
                out.push(error(t, field, e));
            }
        }
    }
    for (i, level) in levels.iter().enumerate() {
        let Some((first, rest)) = level.split_first() else {
            continue;
        };
        for t in rest {
            let (field, what) = match i {
                2 => (
                    FieldPath::root().key("spec").key("selector"),
                    format!(
                        "Telemetry/{}/{} selects this workload too (Istio's IST0159)",
                        first.namespace, first.name
                    ),
                ),
                _ => (
                    FieldPath::root().key("spec"),
                    format!(
                        "Telemetry/{}/{} has no workload selector either, in the same namespace (Istio's IST0160)",
                        first.namespace, first.name
                    ),
                ),
            };
            let message = format!(
                "{what}: which one applies would depend on creation times the files do not carry; merge them"
            );
            out.push(error(t, field, message));
        }
    }
    out
}

#[cfg(test)]
mod tests;

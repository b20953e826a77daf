//! Istio's standard metrics, recorded from each [`Completed`] request and exposed in
//! Prometheus' text format.
//!
//! [`IstioMetrics`] is a [`Sink`] for the [`RecordLayer`](crate::RecordLayer): every
//! completed request adds to the series Istio's sidecars report (`istio_stats` in
//! istio/proxy, `source/extensions/filters/http/istio_stats/istio_stats.cc`; the
//! "Istio Standard Metrics" page of Istio's docs), with Istio's names, types, buckets, labels
//! and values for what is unknown:
//!
//! | metric | type | value |
//! |---|---|---|
//! | `istio_requests_total` | counter | requests |
//! | `istio_request_duration_milliseconds` | histogram | from the request's arrival to the end of the response, in whole milliseconds |
//! | `istio_request_bytes` | histogram | the request's head and body (see [`crate::record`]) |
//! | `istio_response_bytes` | histogram | the response's head and body |
//! | `istio_request_messages_total` | counter | a gRPC call's messages from the client (what the connector sent upstream), added about every reporting interval while the call is open (on a record layer [`with_progress_reports`](crate::RecordLayer::with_progress_reports)) and when it ends |
//! | `istio_response_messages_total` | counter | a gRPC call's messages to the client, the same way |
//! | `istio_tcp_connections_opened_total` | counter | TCP connections proxied (L4 listeners; see [`TcpPeer`]) |
//! | `istio_tcp_connections_closed_total` | counter | those that ended |
//! | `istio_tcp_received_bytes_total` | counter | bytes received from the client |
//! | `istio_tcp_sent_bytes_total` | counter | bytes sent to the client |
//!
//! The histograms have Envoy's default buckets ([`BUCKETS`]), which Istio's sidecars use
//! for every histogram. Labels: `reporter` (`source` for the outbound side, `destination` for
//! the inbound side), `source_workload`, `source_canonical_service`,
//! `source_canonical_revision`, `source_workload_namespace`, `source_principal`,
//! `source_app`, `source_version`, `source_cluster`, `destination_workload`,
//! `destination_workload_namespace`, `destination_principal`, `destination_app`,
//! `destination_version`, `destination_service`, `destination_canonical_service`,
//! `destination_canonical_revision`, `destination_service_name`,
//! `destination_service_namespace`, `destination_cluster`, `request_protocol`,
//! `response_code`, `grpc_response_status`, `response_flags`, `connection_security_policy`;
//! the gRPC message counts have the labels up to `destination_cluster` only, as Istio's
//! stats filter records them (before it knows the answer; istio/proxy's
//! `testdata/metric/*_messages.yaml.tmpl`), so that an open stream's count can grow.
//! Where they come from is [`LocalWorkload`] (this proxy's workload) and, per request, the
//! [`Completed`] record: the route's destination host, the selected endpoint's
//! [`EndpointMeta`] (labels, namespace, WorkloadEntry name) and identity, the peer's SPIFFE
//! identity, the `Host` header. Without Istio's metadata exchange the peer's workload name,
//! app and version are `unknown` on the inbound side, and its namespace comes from its
//! SPIFFE identity, as Istio's fallback does.
//!
//! Decisions the mesh took are counted as well, with bounded labels ([`decisions`]):
//! `mesh_proxy_response_flags_total{reporter,flag}` (one series per Envoy flag: `URX`
//! retries exhausted, `UO` overflows, `UH` no healthy upstream, `FI`/`DI` faults, `RL` rate
//! limited, `RBAC` denied, `UT` timeouts, …), `mesh_proxy_upstream_retries_total{reporter}`
//! (attempts beyond the first that reached the balancer), and both per route:
//! `mesh_proxy_route_response_flags_total{reporter,route,destination_service,flag}` and
//! `mesh_proxy_route_upstream_retries_total{reporter,route,destination_service}`. The
//! registry's own: `mesh_proxy_metrics_series` (label sets, what the cap counts) and
//! `mesh_proxy_metrics_dropped_total` (requests not recorded because the series cap,
//! [`IstioMetrics::with_max_series`], was reached: a `Host` header is the peer's to choose,
//! so the number of series is bounded).
//!
//! # The hot path
//!
//! A request's labels are not formatted: the label set of a peer (everything but the
//! protocol, code, gRPC status and flags) is resolved once per distinct (reporter, local
//! workload, endpoint, destination host, `Host` when used, peer principal) and cached by
//! pointer and content; the series of a peer are found by a small key (code, flags, gRPC
//! status). A request costs two read locks held for two small hash look-ups (no reference
//! count taken) and six relaxed atomic additions (`istio_requests_total` is the duration
//! histogram's count), shared by the workers without a lock taken for writing except when
//! a new label set or series appears. A request with a response flag or a retry adds to
//! its route's decision counters too, found the same way ([`decisions`]); the others pay
//! one branch for them. A gRPC call also adds its message counts to its peer's (kept at
//! hand by the thread beside the series, found in the same pass; two atomic additions),
//! at its end and in each report while it is open. `benches/benches/telemetry.rs` measures it against
//! `prometheus-client` (docs/performance.md: 13–16× faster).
//!
//! ```
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mesh_telemetry::metrics::{IstioMetrics, LocalWorkload, Reporter};
//! use mesh_telemetry::RecordLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let metrics = Arc::new(IstioMetrics::new(LocalWorkload::named("productpage-v1", "default")));
//! let svc = ServiceBuilder::new()
//!     .layer(RecordLayer::new(vec![metrics.sink(Reporter::Source)]))
//!     .service_fn(|_req: Request<Full<bytes::Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("ok"))))
//!     });
//! let req = Request::builder().header("host", "reviews:9080").body(Full::default()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! res.into_body().collect().await.unwrap();
//! let text = metrics.encode_to_string();
//! assert!(text.contains("# TYPE istio_requests_total counter"));
//! assert!(text.contains(r#"source_workload="productpage-v1""#));
//! assert!(text.contains(r#"destination_service="reviews:9080""#));
//! assert!(text.contains(r#"response_code="200""#));
//! # });
//! ```
//!
//! # Label overrides
//!
//! A Telemetry's `tagOverrides` ([`IstioMetrics::set_label_overrides`]) change a metric's
//! labels on one side, as Istio's stats filter's `tags_to_remove` and `dimensions` do
//! (istio/proxy's `istio_stats`, `MetricOverrides::overrideTags`):
//!
//! - `REMOVE` leaves a standard label out (a name that is not one is ignored, as Istio's
//!   proxy logs "Tag is not standard" and goes on);
//! - `UPSERT` gives a standard label, in its place, the value of a CEL expression, and adds
//!   any other name after the standard labels, in name order (characters Prometheus does
//!   not take become `_`, as Envoy's exposition sanitizes names; `le`, `__…` and names that
//!   would repeat a label are not added). The expression reads Envoy's attributes as the
//!   access log's filter does ([`crate::log_filter`]: `destination.*` is the side's
//!   listener, [`IstioMetrics::set_listener_addr`]); its value is printed as Envoy's `print`
//!   does (a string as it is, a number in decimal, a bool as `true`/`false`, a duration as
//!   `1.5s`); one that fails, or is `null` (cel-rust's absent header, an error in Envoy's
//!   CEL), a list or a map, gives `unknown`; a value is cut at 1024 bytes (a value a client
//!   chooses, a header's, makes a series per value under the cap: this bounds their memory;
//!   Envoy does not). An expression that does not compile leaves a
//!   standard label out and adds no label, as Istio's proxy does ("Failed to parse
//!   expression"; the configuration's warnings tell it).
//!
//! The expressions are evaluated per request, on a side with overrides only (a request's
//! details are then captured for them), and when a TCP connection opens (what is known
//! then: its upstream, the listener; `connection.mtls` is the downstream's, as Envoy's).
//! Request metrics with the same overrides share a series, one per label set (what the
//! series cap counts), found again by the standard labels' series and the expressions'
//! values; its labels are written once (the gRPC message counts have label sets of their
//! own, found by their text). An expression that is one attribute, `string()` of one, or one
//! request header is read without CEL's evaluator. The metrics without overrides keep the
//! path above. Series recorded under other overrides (before a reload) stay; the
//! exposition writes one line per label set, summing series whose labels differ only by
//! labels with an empty value (which Prometheus takes for no label).
//!
//! # Differences from Istio
//!
//! - No metadata exchange (Istio's `x-envoy-peer-metadata` / `istio-peer-exchange`): the
//!   outbound side knows the destination from the configuration (the endpoint's
//!   WorkloadEntry or ServiceEntry labels), the inbound side knows the source from its
//!   certificate only.
//! - `destination_service_name` is the first label of a `<name>.<namespace>.svc.…` host
//!   (a Kubernetes service), the host itself otherwise (a ServiceEntry), as Istio's cluster
//!   metadata names them.
//! - On the inbound side `destination_service` is the service selecting the workload
//!   ([`LocalWorkload::services`]: a `MESH_INTERNAL` ServiceEntry of its namespace whose
//!   `workloadSelector` matches its labels, with a port on the application's), the first
//!   of them by host whatever `Host` the client called, as Istio's stats filter takes the
//!   first service of the inbound cluster's metadata, with its name in
//!   `destination_service_name`; when none selects the workload, the request's `Host`
//!   (Istio's fallback), in both.
//! - `source_cluster`/`destination_cluster` are `unknown`: the proxy has no cluster id.
//! - The TCP families (`istio_tcp_*`) count the L4 listeners' connections ([`TcpPeer`],
//!   [`TcpInbound`]); the HTTP listeners' WebSocket and CONNECT tunnels are counted as the
//!   HTTP requests that opened them, not as TCP connections.
//! - Byte counts are the HTTP/1.1 size of the heads plus the bodies, not the bytes on the
//!   connection.
//! - A gRPC call's message counts are added about every reporting interval while it is
//!   open ([`Sink::progress`], on a record layer
//!   [`with_progress_reports`](crate::RecordLayer::with_progress_reports), as mesh-proxy's;
//!   a call whose counts did not change is not reported) and when it ends, as Istio's
//!   stats filter does; Istio reports an open stream once the peer's metadata is known,
//!   which its metadata exchange tells (mesh-proxy: the outbound side once the answer's
//!   head has come, the inbound side from the call's arrival), and a zero interval reports
//!   without pause there, only at the end here. The request's are the messages the
//!   connector sent upstream (none for a call answered before: `UH`, `UF`, a fault's
//!   abort), where Envoy counts what the client sent. A gRPC-Web call's are counted from
//!   its binary frames (its trailers frame is not a message); `application/grpc-web-text`
//!   (base64) is not counted.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{
    AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_core::ext::{EndpointMeta, PeerIdentity};
use mesh_core::flags::ResponseFlags;
use mesh_core::hash::{FastHashMap, FastState};
use mesh_core::model::bootstrap::ProxyBootstrap;
use mesh_core::model::telemetry::IstioMetric;
use mesh_core::selector::Labels;
use mesh_core::telemetry::{MetricSet, MetricTags};

use crate::record::{Completed, Interest, Sink};

/// The upper bounds of the histograms' buckets: Envoy's default `histogram_buckets`, which
/// Istio's sidecars report every histogram with (milliseconds for durations, bytes for
/// sizes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The bounds as Prometheus prints them (`le="0.5"`).
const LE: [&str; 19] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000",
];

/// [`BUCKETS`] for whole numbers: a value `v` is in bucket `i` when `v <= FLOOR[i]`.
const FLOOR: [u64; 19] = [
    0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
];

/// Which side of the sidecar reports (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's sidecar: the outbound stack (`reporter="source"`).
    Source,
    /// The server's sidecar: the inbound stack (`reporter="destination"`).
    Destination,
}

/// Who this proxy's workload is: the `source_*` labels of outbound requests and the
/// `destination_*` labels of inbound ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalWorkload {
    /// The workload's name (`source_workload`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (`app`, `version`, `service.istio.io/canonical-*`,
    /// `app.kubernetes.io/*`).
    pub labels: Labels,
    /// Its SPIFFE identity (`spiffe://<td>/ns/<ns>/sa/<sa>`) when it has one.
    pub principal: Option<String>,
    /// Its cluster id (`None`: `unknown`).
    pub cluster: Option<String>,
    /// The hosts of the services that select it (`MESH_INTERNAL` ServiceEntries of its
    /// namespace whose `workloadSelector` matches its labels, with a port on the
    /// application's), sorted: the inbound side's `destination_service` is the first, as
    /// Istio's inbound cluster metadata names it. Empty: the request's `Host` stands in.
    pub services: Vec<Arc<str>>,
}

/// Istio's standard metrics (see the [module docs](self)): a registry of atomics shared by
/// every worker, fed by its [`sink`](IstioMetrics::sink)s.
pub struct IstioMetrics {
    /// Unique in the process: tells this registry's series and message counts at hand from
    /// another's.
    id: u64,
    local: ArcSwap<LocalWorkload>,
    /// Bumped after each change of `local`: a thread's copy at hand ([`AtHand::local`]) of
    /// the same generation is current, and saves the request an `ArcSwap` load.
    local_generation: AtomicU64,
    /// Resolved label sets, by what identifies them (pointers and strings).
    cache: RwLock<FastHashMap<u64, Vec<Cached>>>,
    /// Every label set, by its text (one entry per distinct text).
    peers: RwLock<FastHashMap<Box<str>, Arc<Peer>>>,
    series: AtomicUsize,
    max_series: usize,
    dropped: AtomicU64,
    /// The decision counters, per reporter and per route ([`decisions`]).
    decisions: decisions::Decisions,
    /// The TCP connection series (`istio_tcp_*`), by peer and flags.
    tcp: tcp::TcpRegistry,
    /// The metrics each reporter makes ([`MetricSet`] bits; `source`, `destination`): a
    /// Telemetry's `overrides` may turn them off ([`IstioMetrics::set_enabled`]); in the
    /// high 16 bits, the metrics whose labels it overrides ([`labels::LabelRules::mask`]):
    /// one load tells a request both.
    enabled: [AtomicU32; 2],
    /// Each reporter's label overrides ([`IstioMetrics::set_label_overrides`]).
    label_rules: [ArcSwapOption<labels::LabelRules>; 2],
    /// What each reporter's sink reads of a request ([`Interest`] as a number): the label
    /// overrides' expressions may read more than the outcome.
    interest: [AtomicU8; 2],
    /// The override groups' ids, by their text ([`labels::Group::id`]).
    group_ids: Mutex<FastHashMap<String, u32>>,
    /// The series of overridden labels.
    overridden: RwLock<Overridden>,
    /// The gRPC message counts, by label set.
    messages: RwLock<FastHashMap<MessagesId, Arc<Messages>>>,
    /// Each reporter's listener address ([`IstioMetrics::set_listener_addr`]).
    listener_addrs: [OnceLock<std::net::SocketAddr>; 2],
    /// How often an open TCP connection's bytes are reported, in milliseconds
    /// ([`IstioMetrics::set_tcp_reporting_interval`]).
    tcp_report_ms: AtomicU64,
}

/// The series of overridden labels: one per reporter, group and label set (what the cap
/// counts, what is exposed), and found again by what made them.
#[derive(Default)]
struct Overridden {
    series: FastHashMap<(Reporter, u32, Box<str>), Arc<Series>>,
    /// Cleared beyond [`CACHE_LIMIT`] entries: it only saves writing the labels.
    cache: FastHashMap<OverriddenKey, Arc<Series>>,
}

/// What finds a series of overridden labels: the group, the standard labels' peer (by its
/// address: peers are never removed) and series key, and the values of the group's
/// expressions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OverriddenKey {
    group: u32,
    peer: usize,
    key: SeriesKey,
    values: Box<[Box<str>]>,
}

/// How many series each thread keeps at hand ([`LastSeries`]).
const LAST_SERIES_SLOTS: usize = 8;

/// A series a thread recorded into, with what found it: the next request of the same peer
/// and key on that thread finds it without taking the registry's locks (four atomic
/// read-modify-writes fewer per request). Series are never removed from a registry, so a
/// series at hand is always the one its scrape reads.
struct LastSeries {
    /// [`IstioMetrics::id`] of the registry it is in.
    registry: u64,
    ident: Ident,
    key: SeriesKey,
    series: Arc<Series>,
}

/// How many gRPC message label sets each thread keeps at hand ([`LastMessages`]).
const LAST_MESSAGES_SLOTS: usize = 4;

/// A peer's gRPC message counts (Istio's labels) a thread added to, with what found them: the
/// next gRPC call of the same peer on that thread adds to them without the label cache's
/// lock. Message counts are never removed from a registry either.
struct LastMessages {
    /// [`IstioMetrics::id`] of the registry they are in.
    registry: u64,
    ident: Ident,
    messages: Arc<Messages>,
}

/// The series and message counts a thread keeps at hand, direct-mapped.
struct Slots {
    /// Series, by peer and key.
    series: [Option<LastSeries>; LAST_SERIES_SLOTS],
    /// Message counts under Istio's labels, by peer.
    messages: [Option<LastMessages>; LAST_MESSAGES_SLOTS],
}

/// What a thread keeps at hand to record a request without the registry's locks.
struct AtHand {
    /// A registry's ([`IstioMetrics::id`]) local workload, as of a generation
    /// ([`IstioMetrics::local_generation`]).
    local: Option<(u64, u64, Arc<LocalWorkload>)>,
    slots: Slots,
}

thread_local! {
    /// This thread's local workload, series and message counts at hand.
    static AT_HAND: std::cell::RefCell<AtHand> = const {
        std::cell::RefCell::new(AtHand {
            local: None,
            slots: Slots {
                series: [const { None }; LAST_SERIES_SLOTS],
                messages: [const { None }; LAST_MESSAGES_SLOTS],
            },
        })
    };
}

/// The slot of a peer's (by its identity's hash) series `key` in [`Slots::series`].
fn last_slot(hash: u64, key: &SeriesKey) -> usize {
    let k = hash ^ u64::from(key.code) ^ (u64::from(key.flags) << 16);
    (k ^ (k >> 32)) as usize % LAST_SERIES_SLOTS
}

/// The next [`IstioMetrics::id`].
static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

/// A [`Sink`] adding to an [`IstioMetrics`] as one reporter.
#[derive(Clone)]
pub struct MetricsSink {
    metrics: Arc<IstioMetrics>,
    reporter: Reporter,
}

/// The number of Envoy flags [`ResponseFlags`] has.
const FLAG_COUNT: usize = 32;

/// A label set without the per-request labels, and its series.
struct Peer {
    labels: Box<str>,
    series: RwLock<FastHashMap<SeriesKey, Arc<Series>>>,
    reporter: Reporter,
    /// Its gRPC message counts under Istio's labels (shared with the peers whose labels
    /// differ only by `connection_security_policy`), once made.
    messages: OnceLock<Arc<Messages>>,
}

/// The [`MetricSet`] bits of the request metrics (`istio_request*` but the message counts).
const HTTP_METRICS: u16 = MetricSet::bit(IstioMetric::RequestCount)
    | MetricSet::bit(IstioMetric::RequestDuration)
    | MetricSet::bit(IstioMetric::RequestSize)
    | MetricSet::bit(IstioMetric::ResponseSize);

/// The [`MetricSet`] bits of the gRPC message counts.
const GRPC_METRICS: u16 = MetricSet::bit(IstioMetric::GrpcRequestMessages)
    | MetricSet::bit(IstioMetric::GrpcResponseMessages);

/// The per-request labels, and the metrics the series is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    /// The [`MetricSet`] bits of the request metrics recorded in the series (those whose
    /// labels are not overridden).
    mask: u16,
    code: u16,
    flags: u32,
    grpc: bool,
    grpc_status: Option<u32>,
}

struct Series {
    /// `,request_protocol="…",response_code="…",…` (after the peer's labels); a series of
    /// overridden labels: all of them.
    labels: Box<str>,
    /// The [`MetricSet`] bits of the metrics recorded in it: it is exposed in those.
    mask: u16,
    /// Its count is `istio_requests_total` too (every request has a duration).
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// A gRPC call's messages to add to its peer's message counts under Istio's labels.
#[derive(Clone, Copy)]
struct MessageCounts {
    /// The [`MetricSet`] bits to add them to (of [`GRPC_METRICS`]).
    on: u16,
    /// Request and response messages.
    counts: (u64, u64),
    /// A label set the cap refuses counts as a dropped request.
    drops: bool,
}

/// What identifies a label set of the gRPC message counts: its reporter, its override
/// group (`None`: Istio's labels), and its labels' text.
type MessagesId = (Reporter, Option<u32>, Box<str>);

/// A label set's gRPC message counts (`istio_request_messages_total`,
/// `istio_response_messages_total`).
#[derive(Default)]
struct Messages {
    /// The [`MetricSet`] bits recorded in it (of [`GRPC_METRICS`]): it is exposed in those.
    mask: std::sync::atomic::AtomicU16,
    request: AtomicU64,
    response: AtomicU64,
}

/// Per-bucket counts (not cumulative; the last one is `+Inf` only) and the sum.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 20],
    sum: AtomicU64,
}

/// A resolved label set and what identifies it.
type Cached = (Ident, Arc<Peer>);

/// A histogram family: the metric it is, its name, its help, and its histogram in a series.
type Family = (
    IstioMetric,
    &'static str,
    &'static str,
    fn(&Series) -> &Histogram,
);

/// A gRPC message count family: the metric it is, its name, its help, and its counter.
type CounterFamily = (
    IstioMetric,
    &'static str,
    &'static str,
    fn(&Messages) -> &AtomicU64,
);

/// What identifies a label set, owned (the pointers it compares are kept alive by it).
struct Ident {
    reporter: Reporter,
    local: Arc<LocalWorkload>,
    /// The endpoint's address in its shared `SelectedUpstream`, kept alive by `upstream`.
    endpoint: usize,
    /// Keeps `endpoint`'s memory alive (so no other endpoint can have its address).
    _upstream: Option<mesh_core::ext::SelectedUpstream>,
    meta: Option<Arc<EndpointMeta>>,
    mtls: bool,
    dest_host: Option<Arc<str>>,
    passthrough: bool,
    authority: Option<Box<str>>,
    principal: Option<Box<str>>,
}

/// [`Ident`] borrowed from a request.
struct IdentRef<'a> {
    reporter: Reporter,
    local: &'a Arc<LocalWorkload>,
    endpoint: usize,
    meta: Option<&'a Arc<EndpointMeta>>,
    mtls: bool,
    dest_host: Option<&'a Arc<str>>,
    passthrough: bool,
    authority: Option<&'a str>,
    principal: Option<&'a PeerIdentity>,
}

/// How many resolved label sets are cached before the cache starts again (a new
/// connection's peer identity, a reload's endpoints: the cache only saves formatting).
const CACHE_LIMIT: usize = 4096;

/// The default cap on series ([`IstioMetrics::with_max_series`]).
pub const DEFAULT_MAX_SERIES: usize = 10_000;

// === impl LocalWorkload ===

impl LocalWorkload {
    /// A workload `name` in `namespace`, no labels, no identity.
    pub fn named(name: &str, namespace: &str) -> Self {
        LocalWorkload {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ..LocalWorkload::default()
        }
    }

    /// The proxy's workload from its bootstrap (`workload`, `identity`).
    pub fn from_bootstrap(b: &ProxyBootstrap) -> Self {
        LocalWorkload {
            name: b.workload.name.clone(),
            namespace: b.workload.namespace.clone(),
            labels: b.workload.labels.clone(),
            principal: b.identity.as_ref().map(|i| i.spiffe_id.to_string()),
            cluster: None,
            services: Vec::new(),
        }
    }

    /// The proxy's workload from its configuration: [`from_bootstrap`](Self::from_bootstrap)
    /// and the services that select it ([`LocalWorkload::services`]).
    pub fn from_snapshot(snapshot: &mesh_core::compile::Snapshot) -> Self {
        let mut local = LocalWorkload::from_bootstrap(&snapshot.bootstrap);
        // the application's port: Istio's inbound cluster lists the services with a port
        // on it (their `targetPort`, else their `number`)
        let app_port = snapshot
            .bootstrap
            .inbound
            .as_ref()
            .and_then(|i| i.local_app_port())
            .map(u32::from);
        let services: Vec<Arc<str>> = snapshot
            .workload_services(app_port)
            .into_iter()
            .map(|s| s.hostname.clone())
            .collect();
        local.services = services;
        local
    }

    /// The inbound `destination_service`: the first of [`LocalWorkload::services`], as
    /// Istio's stats filter takes the first service of the inbound cluster's metadata
    /// (whatever `Host` the client called it by); `None` when no service selects the
    /// workload (then the request's `Host` stands in, Istio's fallback).
    fn inbound_service(&self) -> Option<&Arc<str>> {
        self.services.first()
    }
}

/// `app`: the `app` label, else `app.kubernetes.io/name`.
pub(crate) fn app(labels: &Labels) -> Option<&str> {
    labels
        .get("app")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .map(String::as_str)
}

/// `version`: the `version` label, else `app.kubernetes.io/version`.
pub(crate) fn version(labels: &Labels) -> Option<&str> {
    labels
        .get("version")
        .or_else(|| labels.get("app.kubernetes.io/version"))
        .map(String::as_str)
}

/// Istio's canonical service (`service.istio.io/canonical-name`, else
/// `app.kubernetes.io/name`, else `app`, else the workload's name), as its injector sets it.
pub(crate) fn canonical_name<'a>(labels: &'a Labels, workload: Option<&'a str>) -> Option<&'a str> {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k).map(String::as_str))
    .or(workload)
}

/// Istio's canonical revision (`service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`), `latest` when none.
pub(crate) fn canonical_revision(labels: &Labels) -> &str {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).map(String::as_str))
    .unwrap_or("latest")
}

/// Istio's service name of a host: `<name>` of `<name>.<ns>.svc.<domain>`, the host otherwise.
fn service_name(host: &str) -> &str {
    let mut parts = host.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(_ns), Some("svc")) => name,
        _ => host,
    }
}

/// The namespace in a SPIFFE id or principal (`…/ns/<ns>/…`), as Istio's `getNamespace`.
fn spiffe_namespace(principal: &str) -> Option<&str> {
    let at = principal.find("/ns/")? + 4;
    let rest = &principal[at..];
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Writes `name="value"` (escaped as the text format wants; empty: `unknown`).
fn label(out: &mut String, name: &str, value: Option<&str>) {
    out.push(',');
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value.filter(|v| !v.is_empty()).unwrap_or("unknown"));
    out.push('"');
}

/// Writes `value` escaped as a label value of the text format.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

// === impl IstioMetrics ===

impl std::fmt::Debug for IstioMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioMetrics")
            .field("series", &self.series.load(Relaxed))
            .field("dropped", &self.dropped.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl IstioMetrics {
    /// An empty registry for `local`, with at most [`DEFAULT_MAX_SERIES`] series.
    pub fn new(local: LocalWorkload) -> Self {
        IstioMetrics {
            id: NEXT_REGISTRY.fetch_add(1, Relaxed),
            local: ArcSwap::from_pointee(local),
            local_generation: AtomicU64::new(0),
            cache: RwLock::default(),
            peers: RwLock::default(),
            series: AtomicUsize::new(0),
            max_series: DEFAULT_MAX_SERIES,
            dropped: AtomicU64::new(0),
            decisions: decisions::Decisions::default(),
            tcp: tcp::TcpRegistry::default(),
            enabled: [
                AtomicU32::new(u32::from(MetricSet::ALL.bits())),
                AtomicU32::new(u32::from(MetricSet::ALL.bits())),
            ],
            label_rules: [ArcSwapOption::empty(), ArcSwapOption::empty()],
            interest: [
                AtomicU8::new(Interest::Outcome as u8),
                AtomicU8::new(Interest::Outcome as u8),
            ],
            group_ids: Mutex::default(),
            overridden: RwLock::default(),
            messages: RwLock::default(),
            listener_addrs: [OnceLock::new(), OnceLock::new()],
            tcp_report_ms: AtomicU64::new(
                mesh_core::telemetry::TCP_REPORTING_INTERVAL.as_millis() as u64
            ),
        }
    }

    /// Which of Istio's standard metrics `reporter` makes from now on (a Telemetry's
    /// `metrics` overrides, [`mesh_core::telemetry`]): a metric turned off is neither
    /// recorded nor exposed (its series so far are kept, and exposed again if it is turned
    /// back on). `istio_requests_total` is the duration histogram's count: either one on
    /// counts a request. A TCP connection counts as the metrics were when it opened.
    /// Default: every one.
    pub fn set_enabled(&self, reporter: Reporter, set: MetricSet) {
        let _ = self.enabled[reporter as usize].fetch_update(Relaxed, Relaxed, |w| {
            Some((w & 0xffff_0000) | u32::from(set.bits()))
        });
    }

    /// The address of `reporter`'s listener, once it is bound (set once): the
    /// `destination.address` and `destination.port` a label override's expression reads,
    /// as the access log's (`%DOWNSTREAM_LOCAL_ADDRESS%`).
    pub fn set_listener_addr(&self, reporter: Reporter, addr: std::net::SocketAddr) {
        let _ = self.listener_addrs[reporter as usize].set(addr);
    }

    /// How often the L4 listeners report an open TCP connection's bytes, and a record layer
    /// [`with_progress_reports`](crate::RecordLayer::with_progress_reports) an open gRPC
    /// call's messages ([`Sink::progress`]), from now on (a Telemetry's
    /// `reportingInterval`, Istio's `tcp_reporting_duration`, which paces both; zero: only
    /// at the end). Default: Istio's 5 s ([`mesh_core::telemetry::TCP_REPORTING_INTERVAL`]).
    /// A call or connection keeps the interval it began with.
    pub fn set_tcp_reporting_interval(&self, every: std::time::Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        self.tcp_report_ms.store(ms, Relaxed);
    }

    /// How often an open TCP connection's bytes are reported (the splice's
    /// `report_every`), as [`set_tcp_reporting_interval`](Self::set_tcp_reporting_interval)
    /// set it.
    pub fn tcp_reporting_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tcp_report_ms.load(Relaxed))
    }

    /// Which metrics `reporter` makes.
    pub fn enabled(&self, reporter: Reporter) -> MetricSet {
        MetricSet::from_bits(self.enabled[reporter as usize].load(Relaxed) as u16)
    }

    /// The labels of `reporter`'s metrics from now on: a Telemetry's `tagOverrides`
    /// ([`mesh_core::telemetry::MetricTags`]; empty: Istio's standard labels), as the
    /// [module docs](self#label-overrides) say. The series recorded so far keep their
    /// labels; a metric's series of either kind are exposed (one line per label set).
    pub fn set_label_overrides(&self, reporter: Reporter, tags: &MetricTags) {
        let r = reporter as usize;
        let rules = (!tags.is_empty()).then(|| {
            let mut ids = self.group_ids.lock().unwrap_or_else(|e| e.into_inner());
            labels::LabelRules::new(tags, |text| {
                let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                *ids.entry(text.to_owned()).or_insert(next)
            })
        });
        let mask = rules.as_ref().map_or(0, |r| r.mask);
        let interest = rules.as_ref().map_or(Interest::Outcome, |r| r.interest);
        // the rules, then the mask that sends requests to them (a request between the two
        // finds the rules in force, or none: the standard labels, whichever way it goes)
        self.label_rules[r].store(rules.map(Arc::new));
        self.interest[r].store(interest as u8, Relaxed);
        let _ = self.enabled[r].fetch_update(Release, Relaxed, |w| {
            Some((w & 0xffff) | (u32::from(mask) << 16))
        });
    }

    /// Caps the number of series (each a label set of the request metrics, of the gRPC
    /// message counts, of the TCP metrics, or of a route's decision counters): the requests
    /// of a new label set beyond it are counted in `mesh_proxy_metrics_dropped_total` only.
    pub fn with_max_series(mut self, max: usize) -> Self {
        self.max_series = max;
        self
    }

    /// A sink recording as `reporter`.
    pub fn sink(self: &Arc<Self>, reporter: Reporter) -> Arc<dyn Sink> {
        Arc::new(MetricsSink {
            metrics: self.clone(),
            reporter,
        })
    }

    /// Changes the local workload (a reload): the requests from now on have its labels; the
    /// series recorded so far keep theirs.
    pub fn set_local(&self, local: LocalWorkload) {
        if **self.local.load() != local {
            self.local.store(Arc::new(local));
            self.local_generation.fetch_add(1, Release);
        }
    }

    /// The number of series.
    pub fn series(&self) -> usize {
        self.series.load(Relaxed)
    }

    /// Requests not recorded because the series cap was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Records one completed request as `reporter`.
    pub fn record(&self, reporter: Reporter, done: &Completed<'_>) {
        self.record_decisions(reporter, done);
        let word = self.enabled[reporter as usize].load(Acquire);
        // a gRPC call's messages, what earlier reports of it did not count (to the peer's
        // standard set below, with the request's series)
        let messages = match done.grpc {
            true => self.record_messages(reporter, done, word),
            false => None,
        };
        let http = HTTP_METRICS;
        let (on, mut overridden) = (word as u16 & http, (word >> 16) as u16);
        let key = SeriesKey {
            mask: http,
            code: done.status.map_or(0, |s| s.as_u16()),
            flags: done.flags.bits(),
            grpc: done.grpc,
            grpc_status: done.grpc_status.filter(|_| done.grpc),
        };
        if on & overridden != 0 {
            overridden = self.record_overridden(reporter, done, key, on);
        }
        let key = SeriesKey {
            mask: http & !overridden,
            ..key
        };
        let on = on & key.mask;
        if on == 0 && messages.is_none() {
            return;
        }
        self.with_at_hand(reporter, done, |ident, hash, slots| {
            if let Some(m) = messages {
                self.add_messages(m, (ident, hash), slots, done);
            }
            if on == 0 {
                return;
            }
            // the common case: the series this thread recorded into last for this peer and
            // key (no lock, no reference count taken)
            let slot = last_slot(hash, &key);
            if let Some(l) = &slots.series[slot]
                && l.registry == self.id
                && l.key == key
                && ident.matches(&l.ident)
            {
                l.series.observe(done, on);
                return;
            }
            let Some(series) = self.find_series(ident, hash, key, done) else {
                self.dropped.fetch_add(1, Relaxed);
                return;
            };
            series.observe(done, on);
            slots.series[slot] = Some(LastSeries {
                registry: self.id,
                ident: ident.to_owned(done),
                key,
                series,
            });
        });
    }

    /// Runs `f` with the request's peer as `reporter` sees it (and its hash) under the local
    /// workload of the registry's current generation, and this thread's slots.
    fn with_at_hand(
        &self,
        reporter: Reporter,
        done: &Completed<'_>,
        f: impl FnOnce(&IdentRef<'_>, u64, &mut Slots),
    ) {
        let generation = self.local_generation.load(Acquire);
        AT_HAND.with_borrow_mut(|AtHand { local, slots }| {
            // the local workload at hand, unless a reload changed it since
            if !matches!(local, Some((id, g, _)) if *id == self.id && *g == generation) {
                *local = Some((self.id, generation, self.local.load_full()));
            }
            let Some((_, _, local)) = local.as_ref() else {
                return;
            };
            let ident = IdentRef::of(reporter, local, done);
            f(&ident, ident.hash(), slots);
        });
    }

    /// A request's series: a known label set and series found under the read locks, else
    /// resolved (and made, under the series cap).
    fn find_series(
        &self,
        ident: &IdentRef<'_>,
        hash: u64,
        key: SeriesKey,
        done: &Completed<'_>,
    ) -> Option<Arc<Series>> {
        if let Ok(cache) = self.cache.read()
            && let Some(list) = cache.get(&hash)
            && let Some((_, peer)) = list.iter().find(|(i, _)| ident.matches(i))
            && let Ok(series) = peer.series.read()
            && let Some(s) = series.get(&key)
        {
            return Some(s.clone());
        }
        let peer = self.peer(ident, hash, done)?;
        self.series_of(&peer, key)
    }

    /// Records `done` in the series of overridden labels of the metrics the rules in force
    /// override among `on` (the metrics `reporter` makes); returns the metrics they override (a reload between the caller's read of the mask and this read of the
    /// rules: the caller records the others with the standard labels, so none is lost).
    fn record_overridden(
        &self,
        reporter: Reporter,
        done: &Completed<'_>,
        key: SeriesKey,
        on: u16,
    ) -> u16 {
        let Some(rules) = self.label_rules[reporter as usize].load_full() else {
            return 0;
        };
        let values = self.evaluate(reporter, &rules, done);
        let local = self.local.load_full();
        let ident = IdentRef::of(reporter, &local, done);
        let hash = ident.hash();
        let Some(peer) = self.peer(&ident, hash, done) else {
            self.dropped.fetch_add(1, Relaxed);
            return rules.mask;
        };
        let on = on & rules.mask;
        for g in rules.groups.iter().filter(|g| g.mask & on != 0) {
            let key = SeriesKey {
                mask: g.mask,
                ..key
            };
            let okey = OverriddenKey {
                group: g.id,
                peer: Arc::as_ptr(&peer) as usize,
                key,
                values: g.reads.iter().map(|i| values[*i].clone()).collect(),
            };
            let found = self
                .overridden
                .read()
                .ok()
                .and_then(|m| m.cache.get(&okey).cloned());
            let series = match found {
                Some(s) => s,
                None => {
                    let standard = Series::new(key);
                    let text = format!("{}{}", peer.labels, standard.labels);
                    let labels = g.apply(&text, &values).into_boxed_str();
                    // a series per label set (the cap counts what is exposed: a removed
                    // label's values share one), found again by what made it
                    let id = (reporter, g.id, labels);
                    let known = self
                        .overridden
                        .read()
                        .ok()
                        .and_then(|m| m.series.get(&id).cloned());
                    // over the cap, a new label set is dropped without the write lock
                    if known.is_none() && self.series.load(Relaxed) >= self.max_series {
                        self.dropped.fetch_add(1, Relaxed);
                        continue;
                    }
                    let mut map = self.overridden.write().unwrap_or_else(|e| e.into_inner());
                    let s = match known.or_else(|| map.series.get(&id).cloned()) {
                        Some(s) => s,
                        None if !self.new_series() => continue,
                        None => {
                            let s = Arc::new(Series {
                                labels: id.2.clone(),
                                ..standard
                            });
                            map.series.insert(id, s.clone());
                            s
                        }
                    };
                    if map.cache.len() >= CACHE_LIMIT {
                        map.cache.clear();
                    }
                    map.cache.insert(okey, s.clone());
                    s
                }
            };
            series.observe(done, on & g.mask);
        }
        rules.mask
    }

    /// The values of `rules`' expressions over `done`, as `reporter` sees it.
    fn evaluate(
        &self,
        reporter: Reporter,
        rules: &labels::LabelRules,
        done: &Completed<'_>,
    ) -> Vec<Box<str>> {
        let cx = crate::sinks::EntryContext {
            side: match reporter {
                Reporter::Source => crate::sinks::Side::Outbound,
                Reporter::Destination => crate::sinks::Side::Inbound,
            },
            local: self.listener_addrs[reporter as usize].get().copied(),
            app_cluster: None,
            service_time_header_only: false,
        };
        crate::sinks::with_entry(done, &cx, |e| rules.evaluate(e))
    }

    /// The first half of adding a gRPC call's messages not counted yet (those since the
    /// earlier reports of it, [`Completed::messages_reported`]) to its label sets: the
    /// peer's labels, as Istio's stats filter records `istio_request_messages_total` and
    /// `istio_response_messages_total` (`reportHelper`: the reporter and the peer's
    /// `source_*` and `destination_*` labels, without the request's protocol, code, gRPC
    /// status, flags and security policy, which it adds only after), with a side's overrides
    /// applied. `word`: [`IstioMetrics::enabled`]'s word as the caller read it. A report of
    /// an open call ([`End::Open`](crate::record::End::Open)) beyond the series cap is not
    /// counted dropped; the call's end is, once, however many of its label sets the cap
    /// refuses.
    ///
    /// Adds to the overridden label sets here; returns what the caller adds to the peer's
    /// standard set with [`add_messages`](Self::add_messages), with the thread's slots.
    fn record_messages(
        &self,
        reporter: Reporter,
        done: &Completed<'_>,
        word: u32,
    ) -> Option<MessageCounts> {
        let on = word as u16 & GRPC_METRICS;
        if on == 0 {
            return None;
        }
        let (sent, got) = done.messages_reported;
        let counts = (
            done.request_messages.saturating_sub(sent),
            done.response_messages.saturating_sub(got),
        );
        // a call's end beyond the cap is one dropped request: counted here only when the
        // side records no request metric (their path counts it otherwise)
        let mut drops = done.how != crate::record::End::Open && word as u16 & HTTP_METRICS == 0;
        // the metrics whose labels the rules in force override (a reload since the
        // caller's read: those the rules say, so that none is counted twice or lost)
        let mut covered = 0;
        if (word >> 16) as u16 & on != 0
            && let Some(rules) = self.label_rules[reporter as usize].load_full()
        {
            let local = self.local.load_full();
            let ident = IdentRef::of(reporter, &local, done);
            let Some(peer) = self.peer(&ident, ident.hash(), done) else {
                if drops {
                    self.dropped.fetch_add(1, Relaxed);
                }
                return None;
            };
            let values = self.evaluate(reporter, &rules, done);
            let text = message_labels(&peer.labels);
            let mut refused = false;
            for g in rules.groups.iter().filter(|g| g.mask & on != 0) {
                let id = (reporter, Some(g.id), g.apply(text, &values).into());
                match self.messages_of(id) {
                    Some(m) => m.add(g.mask & on, counts),
                    None => refused = true,
                }
            }
            covered = rules.mask & on;
            if refused && drops {
                // the call is one dropped request, whatever else the cap refuses
                self.dropped.fetch_add(1, Relaxed);
                drops = false;
            }
        }
        let on = on & !covered;
        (on != 0).then_some(MessageCounts { on, counts, drops })
    }

    /// Adds `m` to the standard message counts of the peer `ident` (`hash`): those this
    /// thread added to last for it, else the peer's (found through the label cache), then
    /// kept at hand.
    fn add_messages(
        &self,
        m: MessageCounts,
        (ident, hash): (&IdentRef<'_>, u64),
        slots: &mut Slots,
        done: &Completed<'_>,
    ) {
        let slot = (hash ^ (hash >> 32)) as usize % LAST_MESSAGES_SLOTS;
        if let Some(l) = &slots.messages[slot]
            && l.registry == self.id
            && ident.matches(&l.ident)
        {
            l.messages.add(m.on, m.counts);
            return;
        }
        let Some(peer) = self.peer(ident, hash, done) else {
            if m.drops {
                self.dropped.fetch_add(1, Relaxed);
            }
            return;
        };
        let Some(messages) = self.standard_messages(&peer, ident.reporter) else {
            if m.drops {
                self.dropped.fetch_add(1, Relaxed);
            }
            return;
        };
        messages.add(m.on, m.counts);
        slots.messages[slot] = Some(LastMessages {
            registry: self.id,
            ident: ident.to_owned(done),
            messages,
        });
    }

    /// A peer's message counts under Istio's labels: made once (`None`: refused by the
    /// series cap).
    fn standard_messages(&self, peer: &Peer, reporter: Reporter) -> Option<Arc<Messages>> {
        if let Some(m) = peer.messages.get() {
            return Some(m.clone());
        }
        let id = (reporter, None, Box::from(message_labels(&peer.labels)));
        self.messages_of(id)
            .map(|m| peer.messages.get_or_init(|| m).clone())
    }

    /// The message counts of label set `id`: found, or made under the series cap (`None`:
    /// refused; the caller counts the dropped request).
    fn messages_of(&self, id: MessagesId) -> Option<Arc<Messages>> {
        self.interned(&self.messages, id, |_| Messages::default())
    }

    /// `key`'s entry of `map`: found under the read lock, else made by `make` under the
    /// series cap (`None`: refused; over the cap without taking the write lock).
    fn interned<K: Hash + Eq, V>(
        &self,
        map: &RwLock<FastHashMap<K, Arc<V>>>,
        key: K,
        make: impl FnOnce(&K) -> V,
    ) -> Option<Arc<V>> {
        if let Ok(m) = map.read()
            && let Some(v) = m.get(&key)
        {
            return Some(v.clone());
        }
        if self.series.load(Relaxed) >= self.max_series {
            return None;
        }
        let mut m = map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get(&key) {
            return Some(v.clone());
        }
        if !self.reserve_series() {
            return None;
        }
        let v = Arc::new(make(&key));
        m.insert(key, v.clone());
        Some(v)
    }

    /// Counts a new series against the cap: `false` (the count unchanged) when it is
    /// reached.
    fn reserve_series(&self) -> bool {
        if self.series.fetch_add(1, Relaxed) >= self.max_series {
            self.series.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// [`reserve_series`](Self::reserve_series), the request or connection counted dropped
    /// when the cap is reached.
    fn new_series(&self) -> bool {
        let made = self.reserve_series();
        if !made {
            self.dropped.fetch_add(1, Relaxed);
        }
        made
    }

    /// The label set of a request's peer: from the cache, else resolved and interned.
    fn peer(&self, ident: &IdentRef<'_>, hash: u64, done: &Completed<'_>) -> Option<Arc<Peer>> {
        if let Ok(cache) = self.cache.read()
            && let Some(list) = cache.get(&hash)
            && let Some((_, p)) = list.iter().find(|(i, _)| ident.matches(i))
        {
            return Some(p.clone());
        }
        let text = ident.labels(done);
        let peer = {
            let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
            match peers.get(text.as_str()) {
                Some(p) => p.clone(),
                None if self.series.load(Relaxed) >= self.max_series => return None,
                None => {
                    let p = Arc::new(Peer {
                        labels: text.into_boxed_str(),
                        series: RwLock::default(),
                        reporter: ident.reporter,
                        messages: OnceLock::new(),
                    });
                    peers.insert(p.labels.clone(), p.clone());
                    p
                }
            }
        };
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache
            .entry(hash)
            .or_default()
            .push((ident.to_owned(done), peer.clone()));
        Some(peer)
    }

    fn series_of(&self, peer: &Peer, key: SeriesKey) -> Option<Arc<Series>> {
        self.interned(&peer.series, key, |k| Series::new(*k))
    }

    /// The metrics in Prometheus' text format (version 0.0.4).
    pub fn encode(&self, out: &mut String) {
        // every series, with its labels in two parts (the peer's and the series'; a series
        // of overridden labels has them all in the second) and its reporter
        let peers: Vec<Arc<Peer>> = {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            peers.values().cloned().collect()
        };
        let mut rows: Vec<(Arc<Peer>, Arc<Series>)> = Vec::new();
        for p in &peers {
            let series = p.series.read().unwrap_or_else(|e| e.into_inner());
            rows.extend(series.values().map(|s| (p.clone(), s.clone())));
        }
        let overridden: Vec<(Reporter, Arc<Series>)> = self
            .overridden
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .series
            .iter()
            .map(|((r, _, _), s)| (*r, s.clone()))
            .collect();
        let mut all: Vec<Row<'_, Series>> = rows
            .iter()
            .map(|(p, s)| Row::new(p.reporter, &p.labels, s))
            .chain(overridden.iter().map(|(r, s)| Row::new(*r, "", s)))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        let _ = writeln!(
            out,
            "# HELP istio_requests_total Requests, as Istio's sidecars count them.\n# TYPE istio_requests_total counter"
        );
        for run in self
            .runs(&all, IstioMetric::RequestCount)
            .chunk_by(|a, b| a.key == b.key)
        {
            let count: u64 = run.iter().map(|r| r.series.duration.count()).sum();
            let _ = writeln!(out, "istio_requests_total{{{}}} {count}", run[0].text);
        }
        let histograms: [Family; 3] = [
            (
                IstioMetric::RequestDuration,
                "istio_request_duration_milliseconds",
                "Request durations in milliseconds, from the request's arrival to the end of the response.",
                |s| &s.duration,
            ),
            (
                IstioMetric::RequestSize,
                "istio_request_bytes",
                "Request sizes in bytes (head and body).",
                |s| &s.request_bytes,
            ),
            (
                IstioMetric::ResponseSize,
                "istio_response_bytes",
                "Response sizes in bytes (head and body).",
                |s| &s.response_bytes,
            ),
        ];
        for (metric, name, help, get) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for run in self.runs(&all, metric).chunk_by(|a, b| a.key == b.key) {
                let mut sum = Snapshot::default();
                for r in run {
                    sum.add(get(r.series));
                }
                sum.encode(out, name, &run[0].text);
            }
        }
        self.encode_messages(out);
        self.encode_tcp(out);
        self.encode_decisions(out);
        self.encode_registry(out);
    }

    /// A gRPC call's messages, each way (Istio's sidecars count them through Envoy's
    /// `grpc_stats` filter), one line per label set.
    fn encode_messages(&self, out: &mut String) {
        // copied out: the lock is not held while the text is written
        let mut sets: Vec<(Reporter, String, Arc<Messages>)> = {
            let map = self.messages.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|((reporter, _, labels), m)| (*reporter, labels.to_string(), m.clone()))
                .collect()
        };
        let mut rows: Vec<Row<'_, Messages>> = sets
            .iter_mut()
            .map(|(r, labels, m)| {
                Row::with_text(*r, std::mem::take(labels), m.mask.load(Relaxed), &**m)
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        let families: [CounterFamily; 2] = [
            (
                IstioMetric::GrpcRequestMessages,
                "istio_request_messages_total",
                "gRPC messages sent by the clients of gRPC calls.",
                |m| &m.request,
            ),
            (
                IstioMetric::GrpcResponseMessages,
                "istio_response_messages_total",
                "gRPC messages sent by the servers of gRPC calls.",
                |m| &m.response,
            ),
        ];
        for (metric, name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for run in self.runs(&rows, metric).chunk_by(|a, b| a.key == b.key) {
                let sum = run
                    .iter()
                    .fold(0u64, |sum, r| sum.wrapping_add(get(r.series).load(Relaxed)));
                let _ = writeln!(out, "{name}{{{}}} {sum}", run[0].text);
            }
        }
    }

    /// The registry's own gauges: its series and what the cap dropped.
    fn encode_registry(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_metrics_series Label sets of the istio_* metrics and of the per-route decision counters (what the series cap counts).\n# TYPE mesh_proxy_metrics_series gauge\nmesh_proxy_metrics_series {}",
            self.series()
        );
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_metrics_dropped_total Requests (or TCP connections) not recorded in a series because the series cap was reached.\n# TYPE mesh_proxy_metrics_dropped_total counter\nmesh_proxy_metrics_dropped_total {}",
            self.dropped()
        );
    }

    /// [`encode`](Self::encode) into a new string.
    pub fn encode_to_string(&self) -> String {
        let mut s = String::new();
        self.encode(&mut s);
        s
    }
}

/// A series in the exposition (a request series, or a label set's message counts `T`): its
/// reporter, its labels' text, what identifies its label set (the text without labels whose
/// value is empty: Prometheus takes `x=""` for no `x`, so a series recorded before a reload
/// removed `grpc_response_status` and one after are one series), and the [`MetricSet`]
/// bits recorded in it.
struct Row<'a, T> {
    reporter: Reporter,
    text: String,
    key: String,
    mask: u16,
    series: &'a T,
}

impl<'a, T> Row<'a, T> {
    fn with_text(reporter: Reporter, text: String, mask: u16, series: &'a T) -> Row<'a, T> {
        Row {
            reporter,
            key: without_empty(&text),
            text,
            mask,
            series,
        }
    }
}

impl<'a> Row<'a, Series> {
    /// The row of `series`, after the labels `peer` (empty: the series has them all).
    fn new(reporter: Reporter, peer: &str, series: &'a Series) -> Row<'a, Series> {
        let text = match peer.is_empty() {
            true => series.labels.trim_start_matches(',').to_owned(),
            false => format!("{peer}{}", series.labels),
        };
        Row::with_text(reporter, text, series.mask, series)
    }
}

/// A label text without its `name=""` pairs.
pub(super) fn without_empty(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (name, value) in labels::split_labels(text).filter(|(_, v)| !v.is_empty()) {
        labels::push_raw(&mut out, name, value);
    }
    out
}

impl IstioMetrics {
    /// The rows exposed in `metric` (recorded for it, and its reporter makes it), in runs
    /// of one label set: a metric's series recorded under other overrides than now (a
    /// reload) may have the same labels as today's, and Prometheus wants one line per set.
    fn runs<'r, 'a, T>(&self, all: &'r [Row<'a, T>], metric: IstioMetric) -> Vec<&'r Row<'a, T>> {
        let on = [Reporter::Source, Reporter::Destination].map(|r| self.enabled(r).has(metric));
        all.iter()
            .filter(|r| r.mask & MetricSet::bit(metric) != 0 && on[r.reporter as usize])
            .collect()
    }
}

/// The exposition as a tower service, for an in-process user's own server: every request
/// is answered with [`IstioMetrics::encode`] (`text/plain; version=0.0.4`).
#[derive(Debug, Clone)]
pub struct MetricsService(Arc<IstioMetrics>);

/// The content type of Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl MetricsService {
    /// Serves `metrics`.
    pub fn new(metrics: Arc<IstioMetrics>) -> Self {
        MetricsService(metrics)
    }
}

impl<B> tower_service::Service<http::Request<B>> for MetricsService {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<B>) -> Self::Future {
        let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            self.0.encode_to_string(),
        )));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(CONTENT_TYPE),
        );
        std::future::ready(Ok(res))
    }
}

// === impl MetricsSink ===

impl Sink for MetricsSink {
    #[inline]
    fn complete(&self, done: &Completed<'_>) {
        self.metrics.record(self.reporter, done);
    }

    /// Every request's outcome; its details too when a label override's expression reads
    /// them.
    #[inline]
    fn interest(&self, _: Option<&crate::trace::TraceContext>) -> Interest {
        match self.metrics.interest[self.reporter as usize].load(Relaxed) {
            x if x == Interest::Headers as u8 => Interest::Headers,
            x if x == Interest::Details as u8 => Interest::Details,
            _ => Interest::Outcome,
        }
    }

    /// A gRPC call's messages are reported every reporting interval while it is open
    /// ([`IstioMetrics::set_tcp_reporting_interval`], Istio's `tcp_reporting_duration`,
    /// which paces its gRPC streams' reports too), when the side makes a message count.
    fn progress_interval(&self) -> Option<std::time::Duration> {
        let m = &self.metrics;
        let on = m.enabled[self.reporter as usize].load(Relaxed) as u16 & GRPC_METRICS != 0;
        on.then(|| m.tcp_reporting_interval())
    }

    fn progress(&self, open: &Completed<'_>) {
        let m = &self.metrics;
        let word = m.enabled[self.reporter as usize].load(Acquire);
        if let Some(counts) = m.record_messages(self.reporter, open, word) {
            m.with_at_hand(self.reporter, open, |ident, hash, slots| {
                m.add_messages(counts, (ident, hash), slots, open);
            });
        }
    }
}

impl std::fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSink")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

// === impl Messages ===

impl Messages {
    /// Adds `counts` (request, response) to the metrics `on` ([`MetricSet`] bits) has.
    fn add(&self, on: u16, counts: (u64, u64)) {
        if self.mask.load(Relaxed) & on != on {
            self.mask.fetch_or(on, Relaxed);
        }
        if on & MetricSet::bit(IstioMetric::GrpcRequestMessages) != 0 {
            self.request.fetch_add(counts.0, Relaxed);
        }
        if on & MetricSet::bit(IstioMetric::GrpcResponseMessages) != 0 {
            self.response.fetch_add(counts.1, Relaxed);
        }
    }
}

// === impl Series ===

impl Series {
    fn new(key: SeriesKey) -> Series {
        let mut labels = String::new();
        label(
            &mut labels,
            "request_protocol",
            Some(if key.grpc { "grpc" } else { "http" }),
        );
        label(&mut labels, "response_code", Some(&key.code.to_string()));
        // Istio: empty for a request that is not gRPC (and for one without a status)
        let grpc = key.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        labels.push_str(",grpc_response_status=\"");
        labels.push_str(&grpc);
        labels.push('"');
        let flags = ResponseFlags::from_bits_retain(key.flags).to_string();
        label(&mut labels, "response_flags", Some(&flags));
        Series {
            labels: labels.into_boxed_str(),
            mask: key.mask,
            duration: Histogram::default(),
            request_bytes: Histogram::default(),
            response_bytes: Histogram::default(),
        }
    }
}

impl Series {
    /// Records `done` in the histograms `on` ([`MetricSet`] bits) has: the duration's
    /// count is the request count, so either one on observes the duration.
    #[inline]
    fn observe(&self, done: &Completed<'_>, on: u16) {
        if on
            & (MetricSet::bit(IstioMetric::RequestCount)
                | MetricSet::bit(IstioMetric::RequestDuration))
            != 0
        {
            let ms = done.end.saturating_duration_since(done.start).as_millis();
            self.duration.observe(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        if on & MetricSet::bit(IstioMetric::RequestSize) != 0 {
            self.request_bytes.observe(done.request_bytes);
        }
        if on & MetricSet::bit(IstioMetric::ResponseSize) != 0 {
            self.response_bytes.observe(done.response_bytes);
        }
    }
}

// === impl Histogram ===

impl Histogram {
    #[inline]
    fn observe(&self, v: u64) {
        let i = FLOOR.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// The number of observations.
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// A histogram's counts, summed over series of one label set.
#[derive(Default)]
struct Snapshot {
    buckets: [u64; 20],
    sum: u64,
}

impl Snapshot {
    fn add(&mut self, h: &Histogram) {
        for (b, h) in self.buckets.iter_mut().zip(&h.buckets) {
            *b = b.wrapping_add(h.load(Relaxed));
        }
        self.sum = self.sum.wrapping_add(h.sum.load(Relaxed));
    }

    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        // (every label removed: the bound alone)
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0u64;
        for (i, le) in LE.iter().enumerate() {
            total = total.wrapping_add(self.buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
        }
        total = total.wrapping_add(self.buckets[LE.len()]);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

// === impl IdentRef ===

impl<'a> IdentRef<'a> {
    fn of(reporter: Reporter, local: &'a Arc<LocalWorkload>, done: &'a Completed<'a>) -> Self {
        let info = done.info;
        let endpoint = info.endpoint();
        // the endpoint of a cluster lives in the balancer's shared record: its address
        // identifies it (a passthrough endpoint lives in the request only); inbound, the
        // labels are the local workload's and the peer's, whatever the application's
        // endpoint (each worker and configuration makes its own), so it is not part of them
        let cluster_endpoint = match (&info.upstream, reporter) {
            (Some(mesh_core::stream_info::Upstream::Cluster(u)), Reporter::Source) => {
                Some(u.endpoint())
            }
            _ => None,
        };
        let (dest_host, passthrough) = match (reporter, &info.destination) {
            (Reporter::Source, Some(d)) => (Some(&d.host), info.passthrough),
            // inbound: the workload's service the request names, when services select it
            (Reporter::Destination, _) => (local.inbound_service(), false),
            _ => (None, false),
        };
        // Istio's service host is the cluster's when there is one, else `Host`
        let authority = match dest_host {
            Some(_) if !passthrough => None,
            _ => done.authority,
        };
        let mtls = match reporter {
            Reporter::Source => local.principal.is_some() && endpoint.is_some_and(|e| e.istio_tls),
            Reporter::Destination => done.peer.is_some(),
        };
        IdentRef {
            reporter,
            local,
            endpoint: cluster_endpoint.map_or(0, |e| e as *const _ as usize),
            meta: endpoint.and_then(|e| e.meta.as_ref()),
            mtls,
            dest_host,
            passthrough,
            authority,
            principal: done.peer,
        }
    }

    fn hash(&self) -> u64 {
        let mut h = FastState::default().build_hasher();
        self.reporter.hash(&mut h);
        (Arc::as_ptr(self.local) as usize).hash(&mut h);
        self.meta.map(Arc::as_ptr).hash(&mut h);
        self.mtls.hash(&mut h);
        // the router shares one host per route: its address identifies it
        self.dest_host
            .map(|h| Arc::as_ptr(h) as *const u8 as usize)
            .hash(&mut h);
        self.passthrough.hash(&mut h);
        self.authority.hash(&mut h);
        self.principal.map(PeerIdentity::principal).hash(&mut h);
        h.finish()
    }

    fn matches(&self, i: &Ident) -> bool {
        self.reporter == i.reporter
            && Arc::ptr_eq(self.local, &i.local)
            && self.endpoint == i.endpoint
            && self.mtls == i.mtls
            && self.passthrough == i.passthrough
            && match (self.meta, &i.meta) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && match (self.dest_host, &i.dest_host) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.authority == i.authority.as_deref()
            && self.principal.map(PeerIdentity::principal) == i.principal.as_deref()
    }

    fn to_owned(&self, done: &Completed<'_>) -> Ident {
        // (kept alive while the entry is keyed by its address; inbound entries have none)
        let upstream = match (done.info.upstream.as_ref(), self.endpoint) {
            (_, 0) => None,
            (Some(mesh_core::stream_info::Upstream::Cluster(u)), _) => Some(u.clone()),
            _ => None,
        };
        Ident {
            reporter: self.reporter,
            local: self.local.clone(),
            endpoint: self.endpoint,
            _upstream: upstream,
            meta: self.meta.cloned(),
            mtls: self.mtls,
            dest_host: self.dest_host.cloned(),
            passthrough: self.passthrough,
            authority: self.authority.map(Box::from),
            principal: self.principal.map(|p| Box::from(p.principal())),
        }
    }

    /// The peer's labels, as Istio's `populatePeerInfo` computes them.
    fn labels(&self, done: &Completed<'_>) -> String {
        let local = &**self.local;
        let mut s = String::with_capacity(1024);
        match self.reporter {
            Reporter::Source => {
                let host = match (self.dest_host, self.passthrough) {
                    (Some(h), false) => Some(&**h),
                    _ => self.authority,
                };
                let name = match (self.dest_host, self.passthrough) {
                    (_, true) => Some("PassthroughCluster"),
                    (Some(h), false) => Some(service_name(h)),
                    (None, _) => self.authority,
                };
                let endpoint = done.info.endpoint();
                source_labels(&mut s, local, self.mtls, endpoint, self.meta, host, name);
            }
            Reporter::Destination => {
                let service = match self.dest_host {
                    Some(h) => Some((&**h, service_name(h))),
                    None => self.authority.map(|a| (a, a)),
                };
                destination_labels(&mut s, local, self.mtls, self.principal, service);
            }
        }
        s
    }
}

/// The labels of a gRPC message count: `peer`'s (a label set of the request metrics, as
/// [`IdentRef::labels`] writes it) without `connection_security_policy` (its last).
fn message_labels(peer: &str) -> &str {
    peer.rfind(",connection_security_policy=\"")
        .map_or(peer, |i| &peer[..i])
}

/// The labels of a `reporter="destination"` series (the proxy's workload is the
/// destination; the peer, known only by its certificate, the source), as Istio's
/// `populatePeerInfo` computes them: shared by the request and the TCP metrics. `service`
/// is the request's service (host and name: one of [`LocalWorkload::services`], else its
/// authority); without one (TCP), the first service selecting the workload, else its
/// canonical service.
fn destination_labels(
    s: &mut String,
    local: &LocalWorkload,
    mtls: bool,
    principal: Option<&PeerIdentity>,
    service: Option<(&str, &str)>,
) {
    let own_principal = local.principal.as_deref().filter(|_| mtls);
    let own_name = Some(local.name.as_str());
    let own_ns = Some(local.namespace.as_str());
    let own_canonical = canonical_name(&local.labels, own_name);
    let own_revision = Some(canonical_revision(&local.labels));
    let own_cluster = local.cluster.as_deref();
    s.push_str("reporter=\"destination\"");
    let peer = principal.map(|p| p.id().to_string());
    let peer_ns = peer.as_deref().and_then(spiffe_namespace);
    label(s, "source_workload", None);
    label(s, "source_canonical_service", None);
    label(s, "source_canonical_revision", Some("latest"));
    label(s, "source_workload_namespace", peer_ns);
    label(s, "source_principal", peer.as_deref());
    label(s, "source_app", None);
    label(s, "source_version", None);
    label(s, "source_cluster", None);
    label(s, "destination_workload", own_name);
    label(s, "destination_workload_namespace", own_ns);
    label(s, "destination_principal", own_principal);
    label(s, "destination_app", app(&local.labels));
    label(s, "destination_version", version(&local.labels));
    // the request's service (its host, and its name); without one (TCP), the first service
    // selecting the workload, else its canonical service
    let service = service.or_else(|| local.services.first().map(|h| (&**h, service_name(h))));
    label(
        s,
        "destination_service",
        service.map(|s| s.0).or(own_canonical),
    );
    label(s, "destination_canonical_service", own_canonical);
    label(s, "destination_canonical_revision", own_revision);
    label(
        s,
        "destination_service_name",
        service.map(|s| s.1).or(own_canonical),
    );
    label(s, "destination_service_namespace", own_ns);
    label(s, "destination_cluster", own_cluster);
    label(
        s,
        "connection_security_policy",
        Some(if mtls { "mutual_tls" } else { "none" }),
    );
}

/// The labels of a `reporter="source"` series (the proxy's workload is the source; the
/// endpoint, its metadata and the destination service the peer), as Istio's
/// `populatePeerInfo` computes them: shared by the request and the TCP metrics.
fn source_labels(
    s: &mut String,
    local: &LocalWorkload,
    mtls: bool,
    endpoint: Option<&mesh_core::ext::SelectedEndpoint>,
    meta: Option<&Arc<EndpointMeta>>,
    host: Option<&str>,
    name: Option<&str>,
) {
    let own_principal = local.principal.as_deref().filter(|_| mtls);
    let own_name = Some(local.name.as_str());
    s.push_str("reporter=\"source\"");
    label(s, "source_workload", own_name);
    label(
        s,
        "source_canonical_service",
        canonical_name(&local.labels, own_name),
    );
    label(
        s,
        "source_canonical_revision",
        Some(canonical_revision(&local.labels)),
    );
    label(
        s,
        "source_workload_namespace",
        Some(local.namespace.as_str()),
    );
    label(s, "source_principal", own_principal);
    label(s, "source_app", app(&local.labels));
    label(s, "source_version", version(&local.labels));
    label(s, "source_cluster", local.cluster.as_deref());
    let meta = meta.map(|m| &**m);
    let empty = Labels::new();
    let labels = meta.map_or(&empty, |m| &m.labels);
    let peer_principal = endpoint
        .filter(|_| mtls)
        .and_then(|e| e.identity.as_ref())
        .map(|id| id.to_string());
    // the namespace from the peer's certificate, else from its metadata
    let peer_ns = peer_principal
        .as_deref()
        .and_then(spiffe_namespace)
        .or(meta.map(|m| &*m.namespace));
    let workload = meta.and_then(|m| m.workload.as_deref());
    label(s, "destination_workload", workload);
    label(s, "destination_workload_namespace", peer_ns);
    label(s, "destination_principal", peer_principal.as_deref());
    label(s, "destination_app", app(labels));
    label(s, "destination_version", version(labels));
    label(s, "destination_service", host);
    label(
        s,
        "destination_canonical_service",
        meta.and_then(|m| canonical_name(labels, m.workload.as_deref())),
    );
    label(
        s,
        "destination_canonical_revision",
        Some(canonical_revision(labels)),
    );
    label(s, "destination_service_name", name);
    label(s, "destination_service_namespace", peer_ns);
    label(s, "destination_cluster", None);
    // Istio's client side does not know the policy
    label(s, "connection_security_policy", None);
}

pub mod decisions;
mod labels;
mod tcp;
pub use tcp::{TcpConnectionStats, TcpInbound, TcpPeer};

#[cfg(test)]
mod tests;

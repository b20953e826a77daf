//! Istio's TCP metrics (`istio_tcp_*`), for the proxy's L4 listeners: `reporter="source"`
//! for the `outboundPorts` and gateway listeners ([`IstioMetrics::tcp_open`]),
//! `reporter="destination"` for the Sidecar `ingress` TCP listeners
//! ([`IstioMetrics::tcp_open_inbound`]).
//!
//! A connection's series is found once, when its upstream is decided
//! ([`IstioMetrics::tcp_open`]); its bytes are counted by the connection's own task and added
//! here when it reports them ([`TcpConnectionStats::add`]: periodically and at the end, as
//! Envoy's `istio_stats` reports TCP bytes every `tcp_reporting_duration`: 5 s by default, a
//! Telemetry's `reportingInterval`: [`IstioMetrics::set_tcp_reporting_interval`]),
//! so no atomic operation is paid per chunk of data.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use mesh_core::ResponseFlags;
use mesh_core::ext::{PeerIdentity, SelectedUpstream};
use mesh_core::hash::{FastHashMap, FastState};
use mesh_core::model::telemetry::IstioMetric;
use mesh_core::telemetry::MetricSet;

use crate::access_log::LogEntry;

use super::{
    IstioMetrics, LocalWorkload, Reporter, destination_labels, label, service_name, source_labels,
};

/// Who a proxied TCP connection went to, for its `reporter="source"` labels (Istio's
/// `destination_*` from the endpoint and the route's service; `response_flags`).
#[derive(Debug, Clone, Copy)]
pub struct TcpPeer<'a> {
    /// The endpoint it was sent to, with its cluster (`None`: none was picked).
    pub upstream: Option<&'a SelectedUpstream>,
    /// The route's destination service (`None`: not routed).
    pub service: Option<&'a Arc<str>>,
    /// Envoy's flags of the connection (`UO` overflow, `UF` connect failure, `UH` no healthy
    /// endpoint, `NR` no route; empty when it was proxied).
    pub flags: ResponseFlags,
}

/// One connection's series: add its bytes with [`add`](Self::add); dropping it counts the
/// connection closed.
#[derive(Debug)]
pub struct TcpConnectionStats {
    /// The series of the standard labels, with the metrics counted in it.
    standard: Option<(Arc<TcpSeries>, u16)>,
    /// The series of overridden labels (a Telemetry's `tagOverrides`), with theirs.
    overridden: Vec<(Arc<TcpSeries>, u16)>,
}

impl TcpConnectionStats {
    const NONE: TcpConnectionStats = TcpConnectionStats {
        standard: None,
        overridden: Vec::new(),
    };
}

/// The TCP series of one [`IstioMetrics`].
#[derive(Default)]
pub(super) struct TcpRegistry {
    series: RwLock<FastHashMap<u64, Vec<Arc<TcpSeries>>>>,
    /// The series of overridden labels, by override group and label text.
    overridden: RwLock<FastHashMap<OverriddenTcp, Arc<TcpSeries>>>,
}

/// What finds a TCP series of overridden labels: its reporter, override group and labels.
type OverriddenTcp = (Reporter, u32, Box<str>);

/// The [`MetricSet`](mesh_core::telemetry::MetricSet) bits of the TCP metrics.
const TCP_METRICS: u16 = MetricSet::bit(IstioMetric::TcpOpenedConnections)
    | MetricSet::bit(IstioMetric::TcpClosedConnections)
    | MetricSet::bit(IstioMetric::TcpSentBytes)
    | MetricSet::bit(IstioMetric::TcpReceivedBytes);

/// A counter family: the metric it is, its name, its help, and its counter in a series.
type TcpFamily = (
    IstioMetric,
    &'static str,
    &'static str,
    fn(&TcpSeries) -> &AtomicU64,
);

/// One label set's counters.
#[derive(Debug)]
pub(super) struct TcpSeries {
    key: Key,
    labels: Box<str>,
    opened: AtomicU64,
    closed: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
}

/// Who opened a TCP connection to this workload (a Sidecar `ingress` listener), for its
/// `reporter="destination"` labels: the peer as its certificate names it (`None`: plaintext
/// or no client certificate), the workload's canonical service as `destination_service`.
#[derive(Debug, Clone, Copy)]
pub struct TcpInbound<'a> {
    /// The peer's SPIFFE identity, from its certificate (`source_principal`; with one, the
    /// connection's policy is `mutual_tls`).
    pub peer: Option<&'a PeerIdentity>,
    /// Envoy's flags of the connection (`UF`: the endpoint refused or timed out; empty when
    /// it was proxied).
    pub flags: ResponseFlags,
}

/// What identifies a series; the upstream is kept to keep its address unique.
#[derive(Debug)]
struct Key {
    reporter: Reporter,
    endpoint: usize,
    _upstream: Option<SelectedUpstream>,
    service: Option<Arc<str>>,
    principal: Option<Box<str>>,
    flags: u32,
    mtls: bool,
    local: usize,
    /// The metrics counted in the series (those whose labels are not overridden, or the
    /// override group's): it is exposed in those.
    mask: u16,
    /// Keeps `local`'s workload alive: its address identifies it (a reloaded workload
    /// allocated where a freed one was would otherwise match the old series).
    _workload: Arc<LocalWorkload>,
}

/// A [`Key`] as the caller has it, before a series is made.
struct KeyRef<'a> {
    reporter: Reporter,
    endpoint: usize,
    upstream: Option<&'a SelectedUpstream>,
    service: Option<&'a Arc<str>>,
    principal: Option<&'a str>,
    flags: ResponseFlags,
    mtls: bool,
    local: usize,
    mask: u16,
    workload: &'a Arc<LocalWorkload>,
    /// The downstream peer's identity (inbound), for a label override's expression.
    peer: Option<&'a PeerIdentity>,
}

impl KeyRef<'_> {
    fn hash(&self) -> u64 {
        let mut h = FastState::default().build_hasher();
        self.reporter.hash(&mut h);
        self.endpoint.hash(&mut h);
        self.service.map(|s| &**s).hash(&mut h);
        self.principal.hash(&mut h);
        self.flags.bits().hash(&mut h);
        self.mtls.hash(&mut h);
        self.local.hash(&mut h);
        self.mask.hash(&mut h);
        h.finish()
    }

    fn matches(&self, k: &Key) -> bool {
        k.reporter == self.reporter
            && k.endpoint == self.endpoint
            && k.service.as_deref() == self.service.map(|s| &**s)
            && k.principal.as_deref() == self.principal
            && k.flags == self.flags.bits()
            && k.mtls == self.mtls
            && k.local == self.local
            && k.mask == self.mask
    }

    fn to_owned(&self) -> Key {
        Key {
            reporter: self.reporter,
            endpoint: self.endpoint,
            _upstream: self.upstream.cloned(),
            service: self.service.cloned(),
            principal: self.principal.map(Box::from),
            flags: self.flags.bits(),
            mtls: self.mtls,
            local: self.local,
            mask: self.mask,
            _workload: self.workload.clone(),
        }
    }
}

// === impl IstioMetrics ===

impl IstioMetrics {
    /// Counts a TCP connection opened as `peer` (`reporter="source"`) and returns its
    /// handle. A connection of a new label set beyond the series cap is counted in
    /// `mesh_proxy_metrics_dropped_total` only.
    pub fn tcp_open(&self, peer: &TcpPeer<'_>) -> TcpConnectionStats {
        let local = self.local.load();
        let endpoint = peer.upstream.map(|u| u.endpoint());
        let mtls = local.principal.is_some() && endpoint.is_some_and(|e| e.istio_tls);
        let key = KeyRef {
            reporter: Reporter::Source,
            endpoint: endpoint.map_or(0, |e| e as *const _ as usize),
            upstream: peer.upstream,
            service: peer.service,
            principal: None,
            flags: peer.flags,
            mtls,
            local: Arc::as_ptr(&local) as usize,
            mask: TCP_METRICS,
            workload: &local,
            peer: None,
        };
        self.tcp_series(key, |labels| {
            let host = peer.service.map(|s| &**s);
            let meta = endpoint.and_then(|e| e.meta.as_ref());
            let name = host.map(service_name);
            source_labels(labels, &local, mtls, endpoint, meta, host, name);
        })
    }

    /// Counts a TCP connection opened to this workload (`reporter="destination"`: a
    /// Sidecar `ingress` listener's) and returns its handle, as [`tcp_open`](Self::tcp_open).
    pub fn tcp_open_inbound(&self, inbound: &TcpInbound<'_>) -> TcpConnectionStats {
        let local = self.local.load();
        let principal = inbound.peer.map(PeerIdentity::principal);
        let key = KeyRef {
            reporter: Reporter::Destination,
            endpoint: 0,
            upstream: None,
            service: None,
            principal,
            flags: inbound.flags,
            mtls: inbound.peer.is_some(),
            local: Arc::as_ptr(&local) as usize,
            mask: TCP_METRICS,
            workload: &local,
            peer: inbound.peer,
        };
        let mtls = key.mtls;
        self.tcp_series(key, |labels| {
            destination_labels(labels, &local, mtls, inbound.peer, None);
        })
    }

    /// The series of `key`, made with the labels `write` writes (before the protocol and
    /// the flags) when it is new; the connection counted opened in it. With label
    /// overrides for the reporter's TCP metrics, those are counted in the series of their
    /// labels instead.
    fn tcp_series(&self, mut key: KeyRef<'_>, write: impl Fn(&mut String)) -> TcpConnectionStats {
        let word = self.enabled[key.reporter as usize].load(Acquire);
        // what the reporter makes now (a Telemetry's overrides) holds for the connection
        let (on, mut overridden) = (word as u16 & TCP_METRICS, (word >> 16) as u16 & TCP_METRICS);
        if on == 0 {
            return TcpConnectionStats::NONE; // every TCP metric of the reporter is off
        }
        let labels = || {
            let mut labels = String::with_capacity(1024);
            write(&mut labels);
            label(&mut labels, "request_protocol", Some("tcp"));
            label(&mut labels, "response_flags", Some(&key.flags.to_string()));
            labels
        };
        let mut stats = TcpConnectionStats::NONE;
        if on & overridden != 0 {
            (stats.overridden, overridden) = self.tcp_overridden(&key, on, &labels);
        }
        key.mask = TCP_METRICS & !overridden;
        let on = on & key.mask;
        if on == 0 {
            return stats;
        }
        let hash = key.hash();
        let found = self.tcp.series.read().ok().and_then(|m| {
            m.get(&hash)
                .and_then(|l| l.iter().find(|s| key.matches(&s.key)).cloned())
        });
        let series = match found {
            Some(s) => s,
            None => {
                let mut map = self.tcp.series.write().unwrap_or_else(|e| e.into_inner());
                let list = map.entry(hash).or_default();
                match list.iter().find(|s| key.matches(&s.key)) {
                    Some(s) => s.clone(),
                    None => {
                        if !self.new_series() {
                            return stats;
                        }
                        let s = Arc::new(TcpSeries::new(key.to_owned(), labels()));
                        list.push(s.clone());
                        s
                    }
                }
            }
        };
        if on & MetricSet::bit(IstioMetric::TcpOpenedConnections) != 0 {
            series.opened.fetch_add(1, Relaxed);
        }
        stats.standard = Some((series, on));
        stats
    }

    /// The series of overridden labels of a connection (the metrics the rules in force
    /// override among `on`), the connection counted opened in them; and the TCP metrics
    /// those rules override (the caller counts the others with the standard labels).
    fn tcp_overridden(
        &self,
        key: &KeyRef<'_>,
        on: u16,
        labels: &dyn Fn() -> String,
    ) -> (Vec<(Arc<TcpSeries>, u16)>, u16) {
        let Some(rules) = self.label_rules[key.reporter as usize].load_full() else {
            return (Vec::new(), 0);
        };
        let on = on & rules.mask;
        // (a TCP entry: no method; the attributes read nothing of its time)
        let mut e = LogEntry::new(std::time::UNIX_EPOCH);
        // Envoy's `connection.mtls` is the downstream connection's: a peer's certificate,
        // inbound (the outbound side's mTLS is its upstream's)
        e.mtls = key.reporter == Reporter::Destination && key.mtls;
        e.downstream_local_address = self.listener_addrs[key.reporter as usize].get().copied();
        // what is known when the connection opens: its upstream
        e.upstream_host = key.upstream.map(|u| u.endpoint().addr);
        e.upstream_cluster = key.upstream.map(|u| &*u.cluster().name);
        e.upstream_meta = key.upstream.and_then(|u| u.endpoint().meta.as_deref());
        e.downstream_peer = key.peer;
        let values = rules.evaluate(&e);
        let standard = labels();
        let mut out = Vec::new();
        for g in rules.groups.iter().filter(|g| g.mask & on != 0) {
            let text: Box<str> = g.apply(&standard, &values).into_boxed_str();
            let id = (key.reporter, g.id, text);
            let found = self
                .tcp
                .overridden
                .read()
                .ok()
                .and_then(|m| m.get(&id).cloned());
            let series = match found {
                Some(s) => s,
                None => {
                    let mut map = self
                        .tcp
                        .overridden
                        .write()
                        .unwrap_or_else(|e| e.into_inner());
                    match map.get(&id) {
                        Some(s) => s.clone(),
                        None => {
                            if !self.new_series() {
                                continue;
                            }
                            let mut k = key.to_owned();
                            k.mask = g.mask;
                            let s = Arc::new(TcpSeries::new(k, id.2.clone()));
                            map.insert(id, s.clone());
                            s
                        }
                    }
                }
            };
            let on = on & g.mask;
            if on & MetricSet::bit(IstioMetric::TcpOpenedConnections) != 0 {
                series.opened.fetch_add(1, Relaxed);
            }
            out.push((series, on));
        }
        (out, rules.mask & TCP_METRICS)
    }

    pub(super) fn encode_tcp(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut all: Vec<Arc<TcpSeries>> = self
            .tcp
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect();
        all.extend(
            self.tcp
                .overridden
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        // by label set (Prometheus takes `x=""` for no `x`: a series from before a reload
        // that removed a label with an empty value and one after are one)
        let mut all: Vec<(String, Arc<TcpSeries>)> = all
            .into_iter()
            .map(|s| (super::without_empty(&s.labels), s))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let families: [TcpFamily; 4] = [
            (
                IstioMetric::TcpOpenedConnections,
                "istio_tcp_connections_opened_total",
                "TCP connections opened, as Istio's sidecars count them.",
                |s| &s.opened,
            ),
            (
                IstioMetric::TcpClosedConnections,
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |s| &s.closed,
            ),
            (
                IstioMetric::TcpReceivedBytes,
                "istio_tcp_received_bytes_total",
                "Bytes received from the client on TCP connections (reported periodically and at the close).",
                |s| &s.received,
            ),
            (
                IstioMetric::TcpSentBytes,
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the client on TCP connections (reported periodically and at the close).",
                |s| &s.sent,
            ),
        ];
        for (metric, name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            // a reporter's metric a Telemetry turned off is not exposed
            let on = [Reporter::Source, Reporter::Destination].map(|r| self.enabled(r).has(metric));
            let shown: Vec<&(String, Arc<TcpSeries>)> = all
                .iter()
                .filter(|(_, s)| s.key.mask & MetricSet::bit(metric) != 0)
                .filter(|(_, s)| on[s.key.reporter as usize])
                .collect();
            // series are keyed by the balancer's endpoint record, so one endpoint reached
            // through two clusters (a subset's and the whole service's) or across a reload
            // has two series of the same labels: one line, their sum (Prometheus refuses a
            // label set twice); `all` is sorted by labels, so they are neighbours
            for run in shown.chunk_by(|a, b| a.0 == b.0) {
                let sum = run
                    .iter()
                    .fold(0u64, |sum, (_, s)| sum.wrapping_add(get(s).load(Relaxed)));
                let labels = run[0].1.labels.trim_start_matches(',');
                let _ = writeln!(out, "{name}{{{labels}}} {sum}");
            }
        }
    }
}

// === impl TcpSeries ===

impl TcpSeries {
    fn new(key: Key, labels: impl Into<Box<str>>) -> TcpSeries {
        TcpSeries {
            key,
            labels: labels.into(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }
}

// === impl TcpConnectionStats ===

impl TcpConnectionStats {
    /// Adds bytes the connection moved since its last report: `received` from the client,
    /// `sent` to it.
    pub fn add(&self, received: u64, sent: u64) {
        for (s, on) in self.standard.iter().chain(&self.overridden) {
            if received != 0 && on & MetricSet::bit(IstioMetric::TcpReceivedBytes) != 0 {
                s.received.fetch_add(received, Relaxed);
            }
            if sent != 0 && on & MetricSet::bit(IstioMetric::TcpSentBytes) != 0 {
                s.sent.fetch_add(sent, Relaxed);
            }
        }
    }
}

impl Drop for TcpConnectionStats {
    fn drop(&mut self) {
        for (s, on) in self.standard.iter().chain(&self.overridden) {
            if on & MetricSet::bit(IstioMetric::TcpClosedConnections) != 0 {
                s.closed.fetch_add(1, Relaxed);
            }
        }
    }
}

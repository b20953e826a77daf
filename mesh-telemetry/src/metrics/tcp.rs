//! Istio's TCP metrics (`istio_tcp_*`), for the proxy's L4 listeners.
//!
//! A connection's series is found once, when its upstream is decided
//! ([`IstioMetrics::tcp_open`]); its bytes are counted by the connection's own task and added
//! here when it reports them ([`TcpConnectionStats::add`]: periodically and at the end, as
//! Envoy's `istio_stats` reports TCP bytes every `tcp_reporting_duration`, 15 s by default),
//! so no atomic operation is paid per chunk of data.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use mesh_core::ResponseFlags;
use mesh_core::ext::SelectedUpstream;
use mesh_core::hash::{FastHashMap, FastState};

use super::{IstioMetrics, label, service_name, source_labels};

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
pub struct TcpConnectionStats(Option<Arc<TcpSeries>>);

/// The TCP series of one [`IstioMetrics`].
#[derive(Default)]
pub(super) struct TcpRegistry {
    series: RwLock<FastHashMap<u64, Vec<Arc<TcpSeries>>>>,
}

/// A counter family: its name, its help, and its counter in a series.
type TcpFamily = (&'static str, &'static str, fn(&TcpSeries) -> &AtomicU64);

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

/// What identifies a series; the upstream is kept to keep its address unique.
#[derive(Debug)]
struct Key {
    endpoint: usize,
    _upstream: Option<SelectedUpstream>,
    service: Option<Arc<str>>,
    flags: u32,
    mtls: bool,
    local: usize,
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
        let ep_addr = endpoint.map_or(0, |e| e as *const _ as usize);
        let local_addr = Arc::as_ptr(&local) as usize;
        let mut h = FastState::default().build_hasher();
        ep_addr.hash(&mut h);
        peer.service.map(|s| &**s).hash(&mut h);
        peer.flags.bits().hash(&mut h);
        mtls.hash(&mut h);
        local_addr.hash(&mut h);
        let hash = h.finish();
        let same = |s: &Arc<TcpSeries>| {
            s.key.endpoint == ep_addr
                && s.key.service.as_deref() == peer.service.map(|s| &**s)
                && s.key.flags == peer.flags.bits()
                && s.key.mtls == mtls
                && s.key.local == local_addr
        };
        let found = self.tcp.series.read().ok().and_then(|m| {
            m.get(&hash)
                .and_then(|l| l.iter().find(|s| same(s)).cloned())
        });
        let series = match found {
            Some(s) => s,
            None => {
                let mut map = self.tcp.series.write().unwrap_or_else(|e| e.into_inner());
                let list = map.entry(hash).or_default();
                match list.iter().find(|s| same(s)) {
                    Some(s) => s.clone(),
                    None => {
                        if self.series.fetch_add(1, Relaxed) >= self.max_series {
                            self.series.fetch_sub(1, Relaxed);
                            self.dropped.fetch_add(1, Relaxed);
                            return TcpConnectionStats(None);
                        }
                        let mut labels = String::with_capacity(1024);
                        let host = peer.service.map(|s| &**s);
                        let meta = endpoint.and_then(|e| e.meta.as_ref());
                        source_labels(
                            &mut labels,
                            &local,
                            mtls,
                            endpoint,
                            meta,
                            host,
                            host.map(service_name),
                        );
                        label(&mut labels, "request_protocol", Some("tcp"));
                        let flags = peer.flags.to_string();
                        label(&mut labels, "response_flags", Some(&flags));
                        let s = Arc::new(TcpSeries {
                            key: Key {
                                endpoint: ep_addr,
                                _upstream: peer.upstream.cloned(),
                                service: peer.service.cloned(),
                                flags: peer.flags.bits(),
                                mtls,
                                local: local_addr,
                            },
                            labels: labels.into_boxed_str(),
                            opened: AtomicU64::new(0),
                            closed: AtomicU64::new(0),
                            received: AtomicU64::new(0),
                            sent: AtomicU64::new(0),
                        });
                        list.push(s.clone());
                        s
                    }
                }
            }
        };
        series.opened.fetch_add(1, Relaxed);
        TcpConnectionStats(Some(series))
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
        all.sort_by(|a, b| a.labels.cmp(&b.labels));
        let families: [TcpFamily; 4] = [
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened, as Istio's sidecars count them.",
                |s| &s.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |s| &s.closed,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the client on TCP connections (reported every 15s and at the close).",
                |s| &s.received,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the client on TCP connections (reported every 15s and at the close).",
                |s| &s.sent,
            ),
        ];
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            // series are keyed by the balancer's endpoint record, so one endpoint reached
            // through two clusters (a subset's and the whole service's) or across a reload
            // has two series of the same labels: one line, their sum (Prometheus refuses a
            // label set twice); `all` is sorted by labels, so they are neighbours
            let mut i = 0;
            while i < all.len() {
                let labels = &all[i].labels;
                let mut sum = 0u64;
                while i < all.len() && all[i].labels == *labels {
                    sum = sum.wrapping_add(get(&all[i]).load(Relaxed));
                    i += 1;
                }
                let _ = writeln!(out, "{name}{{{labels}}} {sum}");
            }
        }
    }
}

// === impl TcpConnectionStats ===

impl TcpConnectionStats {
    /// Adds bytes the connection moved since its last report: `received` from the client,
    /// `sent` to it.
    pub fn add(&self, received: u64, sent: u64) {
        if let Some(s) = &self.0 {
            if received != 0 {
                s.received.fetch_add(received, Relaxed);
            }
            if sent != 0 {
                s.sent.fetch_add(sent, Relaxed);
            }
        }
    }
}

impl Drop for TcpConnectionStats {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.closed.fetch_add(1, Relaxed);
        }
    }
}

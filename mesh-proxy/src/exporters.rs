//! The proxy's span exporter and access log (`ProxyBootstrap.tracing.otlp`, `accessLog`):
//! built from the configuration, swapped on reload, handed to the record layers of both
//! listeners as sinks ([`mesh_telemetry::sinks`]).
//!
//! Spans go to an OTLP/HTTP collector from the [`SpanSink`]'s own thread; access log lines
//! to the [`AccessLogWriter`]'s own thread: the workers only format and queue. A reload
//! builds a new exporter when `tracing.otlp` changed, opens the new file when `accessLog`
//! changed, and otherwise reopens the log file; SIGUSR1 reopens it too, as Envoy's log
//! rotation signal (`logrotate`'s `postrotate`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_core::compile::Snapshot;
use mesh_core::model::bootstrap::{AccessLog as AccessLogConfig, AccessLogEncoding, Otlp};
use mesh_telemetry::access_log::{AccessLog, AccessLogWriter, DEFAULT_QUEUE, Encoding};
use mesh_telemetry::otlp::{OtlpConfig, exporter};
use mesh_telemetry::record::Sink;
use mesh_telemetry::sinks::{AccessLogRecorder, Reloadable, Side, SpanRecorder};
use mesh_telemetry::span::{SpanOptions, SpanSink};

/// The span exporter and the access log of a proxy (see the [module docs](self)).
#[derive(Debug)]
pub struct Exporters {
    spans: Arc<Reloadable<SpanSink>>,
    log: Arc<Reloadable<AccessLog>>,
    /// The configuration the current exporter and log were built from.
    built: Mutex<(Option<Otlp>, Option<AccessLogConfig>)>,
    outbound_log: Arc<AccessLogRecorder>,
    inbound_log: Arc<AccessLogRecorder>,
    /// What the span sinks and log writers replaced by reloads had dropped (the counters
    /// stay monotonic).
    retired: (AtomicU64, AtomicU64),
}

// === impl Exporters ===

impl Exporters {
    /// The exporter and log `snapshot`'s bootstrap asks for (none when it asks for none).
    pub fn new(snapshot: &Snapshot) -> Exporters {
        let log = Arc::new(Reloadable::empty());
        let app_port = snapshot
            .bootstrap
            .inbound
            .as_ref()
            .and_then(|i| i.local_app_port());
        // with Envoy's debug headers off (`proxyHeaders.envoyDebugHeaders.disabled`, read
        // at start-up) no `x-envoy-upstream-service-time` is written, and Envoy logs `-`
        // for it; otherwise the header the client got, or (an in-process stack, which
        // writes none) the record's own measure
        let header_only = !snapshot.bootstrap.proxy_headers.envoy_debug_headers();
        let recorder = |side| {
            let r = AccessLogRecorder::new(side, log.clone());
            match header_only {
                true => r.with_service_time_header_only(),
                false => r,
            }
        };
        let inbound_log = recorder(Side::Inbound);
        let inbound_log = match app_port {
            Some(port) => inbound_log.with_local_app_port(port),
            None => inbound_log,
        };
        let e = Exporters {
            spans: Arc::new(Reloadable::empty()),
            outbound_log: Arc::new(recorder(Side::Outbound)),
            inbound_log: Arc::new(inbound_log),
            log,
            built: Mutex::new((None, None)),
            retired: (AtomicU64::new(0), AtomicU64::new(0)),
        };
        e.store(snapshot);
        e
    }

    /// The access log, for the listeners that write lines themselves (the L4 listeners: a
    /// line per connection, [`crate::l4::ConnLog`]); empty when none is configured.
    pub fn access_log(&self) -> &Arc<Reloadable<AccessLog>> {
        &self.log
    }

    /// Applies `snapshot`'s `tracing.otlp` and `accessLog` (see the [module docs](self)).
    pub fn store(&self, snapshot: &Snapshot) {
        let b = &snapshot.bootstrap;
        let Ok(mut built) = self.built.lock() else {
            return;
        };
        if built.0 != b.tracing.otlp {
            let old = self
                .spans
                .swap(b.tracing.otlp.as_ref().and_then(|o| span_sink(o, snapshot)));
            if let Some(old) = old {
                self.retired.0.fetch_add(old.dropped(), Ordering::Relaxed);
            }
            built.0 = b.tracing.otlp.clone();
        }
        match (&built.1, &b.access_log) {
            (Some(old), Some(new)) if old == new => {
                if let Some(log) = self.log.load().as_ref() {
                    log.writer().reopen();
                }
            }
            (_, Some(new)) => match AccessLogWriter::open(&new.path, DEFAULT_QUEUE) {
                Ok(w) => {
                    let encoding = match new.encoding {
                        AccessLogEncoding::Text => Encoding::Text,
                        AccessLogEncoding::Json => Encoding::Json,
                    };
                    let old = self
                        .log
                        .swap(Some(Arc::new(AccessLog::new(encoding, Arc::new(w)))));
                    self.retire_log(old);
                    built.1 = Some(new.clone());
                }
                Err(e) => {
                    tracing::error!(path = %new.path, error = %e, "cannot open the access log; lines are not written");
                }
            },
            (_, None) => {
                let old = self.log.swap(None);
                self.retire_log(old);
                built.1 = None;
            }
        }
    }

    /// Reopens the access log file after the lines queued so far (log rotation: SIGUSR1).
    pub fn reopen(&self) {
        if let Some(log) = self.log.load().as_ref() {
            log.writer().reopen();
        }
    }

    /// The sinks of the outbound listener's record layer.
    pub fn outbound_sinks(&self) -> Vec<Arc<dyn Sink>> {
        vec![
            Arc::new(SpanRecorder::new(Side::Outbound, self.spans.clone())),
            self.outbound_log.clone(),
        ]
    }

    /// The sinks of the inbound listener's record layer.
    pub fn inbound_sinks(&self) -> Vec<Arc<dyn Sink>> {
        vec![
            Arc::new(SpanRecorder::new(Side::Inbound, self.spans.clone())),
            self.inbound_log.clone(),
        ]
    }

    /// The listeners' addresses, once bound (`%DOWNSTREAM_LOCAL_ADDRESS%`).
    pub fn set_local_addrs(&self, outbound: Option<SocketAddr>, inbound: Option<SocketAddr>) {
        if let Some(a) = outbound {
            self.outbound_log.set_local_addr(a);
        }
        if let Some(a) = inbound {
            self.inbound_log.set_local_addr(a);
        }
    }

    /// Blocks until the spans and lines recorded so far are exported and written (tests,
    /// drain).
    pub fn flush(&self) {
        if let Some(s) = self.spans.load().as_ref() {
            s.flush();
        }
        if let Some(l) = self.log.load().as_ref() {
            l.writer().flush();
        }
    }

    /// Spans and access log lines dropped because their queue was full, since start.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.retired.0.load(Ordering::Relaxed)
                + self.spans.load().as_ref().map_or(0, |s| s.dropped()),
            self.retired.1.load(Ordering::Relaxed)
                + self.log.load().as_ref().map_or(0, |l| l.writer().dropped()),
        )
    }

    fn retire_log(&self, old: Option<Arc<AccessLog>>) {
        if let Some(old) = old {
            self.retired
                .1
                .fetch_add(old.writer().dropped(), Ordering::Relaxed);
        }
    }

    /// `mesh_proxy_telemetry_dropped_total` in Prometheus' text format.
    pub fn encode(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (spans, lines) = self.dropped();
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_telemetry_dropped_total Spans and access log lines dropped because their queue was full.\n# TYPE mesh_proxy_telemetry_dropped_total counter\nmesh_proxy_telemetry_dropped_total{{sink=\"spans\"}} {spans}\nmesh_proxy_telemetry_dropped_total{{sink=\"access_log\"}} {lines}"
        );
    }
}

/// The span sink of `otlp`: Istio's resource and node names for the bootstrap's workload.
fn span_sink(otlp: &Otlp, snapshot: &Snapshot) -> Option<Arc<SpanSink>> {
    let b = &snapshot.bootstrap;
    let w = &b.workload;
    let app = w.labels.get("app").unwrap_or(&w.name);
    let ip = b
        .outbound
        .as_ref()
        .map_or("127.0.0.1", |o| o.address.as_str());
    let options = SpanOptions {
        // Istio's OpenTelemetry provider: `<canonical service>.<namespace>`
        service_name: format!("{app}.{}", w.namespace),
        // Istio's node id: sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>
        node_id: format!(
            "sidecar~{ip}~{}.{}~{}.svc.{}",
            w.name, w.namespace, w.namespace, b.mesh.cluster_domain
        ),
        namespace: w.namespace.clone(),
        ..SpanOptions::default()
    };
    let config = OtlpConfig {
        endpoint: otlp.endpoint.clone(),
        timeout: otlp.timeout.get(),
    };
    match exporter(&config).and_then(|e| {
        SpanSink::new(e, options).map_err(|e| mesh_telemetry::otlp::OtlpError::new(e.to_string()))
    }) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the span exporter; spans are not exported");
            None
        }
    }
}

//! The proxy's span exporter and access log (`ProxyBootstrap.tracing.otlp`, `accessLog`):
//! built from the configuration, swapped on reload, handed to the record layers of both
//! listeners as sinks ([`mesh_telemetry::sinks`]).
//!
//! Spans go to an OTLP/HTTP collector from the [`SpanSink`]'s own thread; access log lines
//! to the [`AccessLogWriter`]'s own thread: the workers only format and queue. Each side
//! (client: the outbound and gateway listeners; server: the inbound ones) has its own span
//! and log slot, as the Telemetries decide ([`mesh_core::telemetry`]): spans off with
//! `disableSpanReporting`, lines to the bootstrap's `accessLog`, to Istio's `envoy` provider
//! (`/dev/stdout`) or nowhere; one file open per path, shared by the sides that write to it.
//! A reload builds a new exporter when `tracing.otlp` changed, opens a file newly asked
//! for, and otherwise reopens the log files; SIGUSR1 reopens them too, as Envoy's log
//! rotation signal (`logrotate`'s `postrotate`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_core::compile::Snapshot;
use mesh_core::model::bootstrap::{AccessLog as AccessLogConfig, AccessLogEncoding, Otlp};
use mesh_core::telemetry::{AccessLogChoice, ENVOY_LOG_PATH, TelemetryView};
use mesh_telemetry::access_log::{AccessLog, AccessLogWriter, DEFAULT_QUEUE, Encoding};
use mesh_telemetry::log_filter::LogFilter;
use mesh_telemetry::otlp::{OtlpConfig, exporter};
use mesh_telemetry::record::Sink;
use mesh_telemetry::sinks::{AccessLogRecorder, Reloadable, Side, SpanRecorder};
use mesh_telemetry::span::{SpanOptions, SpanSink};

/// An access log file open, with the configuration it was opened from.
type OpenLog = (AccessLogConfig, Arc<AccessLog>);

/// The span exporter and the access log of a proxy (see the [module docs](self)).
#[derive(Debug)]
pub struct Exporters {
    /// The span exporter, when `tracing.otlp` asks for one.
    spans: Mutex<Option<Arc<SpanSink>>>,
    /// Each side's span sink: the exporter, unless a Telemetry's `disableSpanReporting`
    /// turned the side off.
    client_spans: Arc<Reloadable<SpanSink>>,
    server_spans: Arc<Reloadable<SpanSink>>,
    /// Each side's access log: the bootstrap's `accessLog`, Istio's `envoy` provider
    /// (`/dev/stdout`), or none, as the Telemetries say ([`mesh_core::telemetry`]).
    client_log: Arc<Reloadable<AccessLog>>,
    server_log: Arc<Reloadable<AccessLog>>,
    /// The configuration the current exporter and logs were built from: the exporter's,
    /// and each open log with what it was opened from.
    built: Mutex<(Option<Otlp>, Vec<OpenLog>)>,
    outbound_log: Arc<AccessLogRecorder>,
    inbound_log: Arc<AccessLogRecorder>,
    /// Each side's span recorder (its custom tags set by [`store`](Self::store)).
    outbound_spans: Arc<SpanRecorder>,
    inbound_spans: Arc<SpanRecorder>,
    /// What the span sinks and log writers replaced by reloads had dropped (the counters
    /// stay monotonic).
    retired: (AtomicU64, AtomicU64),
}

// === impl Exporters ===

impl Exporters {
    /// The exporter and log `snapshot`'s bootstrap and Telemetries ask for (none when they
    /// ask for none).
    pub fn new(snapshot: &Snapshot, view: &TelemetryView) -> Exporters {
        let client_log = Arc::new(Reloadable::empty());
        let server_log = Arc::new(Reloadable::empty());
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
        let recorder = |side, log: &Arc<Reloadable<AccessLog>>| {
            let r = AccessLogRecorder::new(side, log.clone());
            match header_only {
                true => r.with_service_time_header_only(),
                false => r,
            }
        };
        let inbound_log = recorder(Side::Inbound, &server_log);
        let inbound_log = match app_port {
            Some(port) => inbound_log.with_local_app_port(port),
            None => inbound_log,
        };
        let (client_spans, server_spans) =
            (Arc::new(Reloadable::empty()), Arc::new(Reloadable::empty()));
        let e = Exporters {
            spans: Mutex::new(None),
            outbound_spans: Arc::new(SpanRecorder::new(Side::Outbound, client_spans.clone())),
            inbound_spans: Arc::new(SpanRecorder::new(Side::Inbound, server_spans.clone())),
            client_spans,
            server_spans,
            outbound_log: Arc::new(recorder(Side::Outbound, &client_log)),
            inbound_log: Arc::new(inbound_log),
            client_log,
            server_log,
            built: Mutex::new((None, Vec::new())),
            retired: (AtomicU64::new(0), AtomicU64::new(0)),
        };
        e.store(snapshot, view);
        e
    }

    /// The access log of one side, for the listeners that write lines themselves (the L4
    /// listeners: a line per connection, [`crate::l4::ConnLog`]): the client side's for
    /// the outbound and gateway listeners, the server side's for Sidecar ingress ports;
    /// empty when none is configured.
    pub fn access_log(&self, side: Side) -> &Arc<Reloadable<AccessLog>> {
        match side {
            Side::Outbound => &self.client_log,
            Side::Inbound => &self.server_log,
        }
    }

    /// Applies `snapshot`'s `tracing.otlp` and `accessLog`, and what its Telemetries make
    /// of them (`view`, [`mesh_core::telemetry::resolve`]'s; see the [module docs](self)).
    pub fn store(&self, snapshot: &Snapshot, view: &TelemetryView) {
        let b = &snapshot.bootstrap;
        let Ok(mut built) = self.built.lock() else {
            return;
        };
        let exporter = match self.spans.lock() {
            Ok(mut spans) => {
                if built.0 != b.tracing.otlp {
                    let sink = b.tracing.otlp.as_ref().and_then(|o| span_sink(o, snapshot));
                    if let Some(old) = std::mem::replace(&mut *spans, sink) {
                        self.retired.0.fetch_add(old.dropped(), Ordering::Relaxed);
                    }
                    built.0 = b.tracing.otlp.clone();
                }
                spans.clone()
            }
            Err(_) => None,
        };
        for (slot, on) in [
            (&self.client_spans, view.tracing.client.report_spans),
            (&self.server_spans, view.tracing.server.report_spans),
        ] {
            slot.swap(exporter.clone().filter(|_| on));
        }
        self.outbound_spans
            .set_tags(&view.tracing.client.custom_tags);
        self.inbound_spans
            .set_tags(&view.tracing.server.custom_tags);
        // each side's log file: opened once for both sides when they agree, kept (and
        // reopened, as a reload always did) when it was open already
        let wanted = |choice| match choice {
            AccessLogChoice::Bootstrap => b.access_log.clone(),
            AccessLogChoice::Off => None,
            AccessLogChoice::Envoy => Some(AccessLogConfig {
                path: ENVOY_LOG_PATH.to_string(),
                encoding: b
                    .access_log
                    .as_ref()
                    .map(|a| a.encoding)
                    .unwrap_or_default(),
            }),
        };
        let mut open: Vec<OpenLog> = Vec::new();
        let mut failed: Vec<AccessLogConfig> = Vec::new();
        for (slot, choice, filter) in [
            (
                &self.client_log,
                view.access_log.client,
                &view.access_log_filter.client,
            ),
            (
                &self.server_log,
                view.access_log.server,
                &view.access_log_filter.server,
            ),
        ] {
            let Some(want) = wanted(choice) else {
                slot.swap(None);
                continue;
            };
            // a side with a filter (a Telemetry's CEL expression) writes to the same file
            // through a log of its own
            let filtered = |base: &Arc<AccessLog>| match filter.as_deref().map(LogFilter::new) {
                Some(Ok(f)) => Arc::new((**base).clone().with_filter(Some(Arc::new(f)))),
                Some(Err(e)) => {
                    // validated before: not expected
                    tracing::error!(error = %e, "access log filter not compiled; every line is written");
                    base.clone()
                }
                None => base.clone(),
            };
            if let Some((_, l)) = open.iter().find(|(c, _)| *c == want) {
                slot.swap(Some(filtered(l)));
                continue;
            }
            let log = match built.1.iter().find(|(c, _)| *c == want) {
                Some((_, l)) => {
                    l.writer().reopen();
                    Some(l.clone())
                }
                None if failed.contains(&want) => None,
                None => open_log(&want),
            };
            match log {
                Some(log) => {
                    open.push((want, log.clone()));
                    slot.swap(Some(filtered(&log)));
                }
                None => {
                    // the file cannot be opened (logged): the side keeps the log it had (its
                    // filter too), and the next reload tries again
                    failed.push(want);
                    let kept = slot.load().as_ref().and_then(|cur| {
                        built
                            .1
                            .iter()
                            .find(|(_, l)| Arc::ptr_eq(l.writer(), cur.writer()))
                            .cloned()
                    });
                    if let Some(k) = kept
                        && !open.iter().any(|(c, _)| *c == k.0)
                    {
                        open.push(k);
                    }
                }
            }
        }
        for (c, old) in std::mem::replace(&mut built.1, open.clone()) {
            if !open.iter().any(|(o, _)| *o == c) {
                self.retired
                    .1
                    .fetch_add(old.writer().dropped(), Ordering::Relaxed);
            }
        }
    }

    /// Reopens the access log files after the lines queued so far (log rotation: SIGUSR1).
    pub fn reopen(&self) {
        for log in self.open_logs() {
            log.writer().reopen();
        }
    }

    /// The access logs open now (one per file).
    fn open_logs(&self) -> Vec<Arc<AccessLog>> {
        self.built
            .lock()
            .map(|b| b.1.iter().map(|(_, l)| l.clone()).collect())
            .unwrap_or_default()
    }

    /// The sinks of the outbound listener's record layer.
    pub fn outbound_sinks(&self) -> Vec<Arc<dyn Sink>> {
        vec![self.outbound_spans.clone(), self.outbound_log.clone()]
    }

    /// The sinks of the inbound listener's record layer.
    pub fn inbound_sinks(&self) -> Vec<Arc<dyn Sink>> {
        vec![self.inbound_spans.clone(), self.inbound_log.clone()]
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
        if let Some(s) = self.spans.lock().ok().and_then(|s| s.clone()) {
            s.flush();
        }
        for l in self.open_logs() {
            l.writer().flush();
        }
    }

    /// Spans and access log lines dropped because their queue was full, since start.
    pub fn dropped(&self) -> (u64, u64) {
        let spans = self
            .spans
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.dropped()))
            .unwrap_or(0);
        let lines: u64 = self.open_logs().iter().map(|l| l.writer().dropped()).sum();
        (
            self.retired.0.load(Ordering::Relaxed) + spans,
            self.retired.1.load(Ordering::Relaxed) + lines,
        )
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

/// A new access log writing to `config`'s file; none (logged) when it cannot be opened.
fn open_log(config: &AccessLogConfig) -> Option<Arc<AccessLog>> {
    match AccessLogWriter::open(&config.path, DEFAULT_QUEUE) {
        Ok(w) => {
            let encoding = match config.encoding {
                AccessLogEncoding::Text => Encoding::Text,
                AccessLogEncoding::Json => Encoding::Json,
            };
            Some(Arc::new(AccessLog::new(encoding, Arc::new(w))))
        }
        Err(e) => {
            tracing::error!(path = %config.path, error = %e, "cannot open the access log; lines are not written");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(log: &str, telemetry: &str) -> Arc<Snapshot> {
        let yaml = format!(
            "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {{name: p}}\nspec:\n  workload: {{name: productpage, namespace: default, labels: {{app: productpage}}}}\n  accessLog: {{path: {log}}}\n{telemetry}"
        );
        mesh_core::config::load_str("e.yaml", &yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .snapshot
    }

    fn exporters(s: &Snapshot) -> Exporters {
        Exporters::new(s, &mesh_core::telemetry::resolve(s))
    }

    fn store(e: &Exporters, s: &Snapshot) {
        e.store(s, &mesh_core::telemetry::resolve(s));
    }

    fn same(a: &Reloadable<AccessLog>, b: &Reloadable<AccessLog>) -> bool {
        match (a.load().as_ref(), b.load().as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    const SERVER_ENVOY: &str = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  accessLogging:\n  - match: {mode: SERVER}\n    providers: [{name: envoy}]\n";

    #[test]
    fn the_sides_share_one_file_and_part_when_a_telemetry_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let path = path.to_str().unwrap();
        let e = exporters(&snapshot(path, ""));
        assert!(same(
            e.access_log(Side::Outbound),
            e.access_log(Side::Inbound)
        ));
        assert_eq!(e.open_logs().len(), 1);
        // the server side goes to Istio's `envoy` provider (/dev/stdout), the client side
        // keeps the bootstrap's file
        let before = e.access_log(Side::Outbound).load().clone();
        store(&e, &snapshot(path, SERVER_ENVOY));
        assert!(!same(
            e.access_log(Side::Outbound),
            e.access_log(Side::Inbound)
        ));
        assert!(
            Arc::ptr_eq(
                e.access_log(Side::Outbound).load().as_ref().unwrap(),
                before.as_ref().unwrap()
            ),
            "the client side's file stays open"
        );
        assert_eq!(e.open_logs().len(), 2);
        // turned off on the client side: no log there, the server's stays
        let off = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  accessLogging:\n  - providers: [{name: envoy}]\n    match: {mode: CLIENT}\n    disabled: true\n";
        store(&e, &snapshot(path, off));
        assert!(!e.access_log(Side::Outbound).is_set());
        assert!(e.access_log(Side::Inbound).is_set());
    }

    #[test]
    fn a_file_a_reload_cannot_open_leaves_the_running_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let e = exporters(&snapshot(path.to_str().unwrap(), ""));
        let before = e.access_log(Side::Outbound).load().clone();
        let missing = dir.path().join("no-such-dir").join("b.log");
        store(&e, &snapshot(missing.to_str().unwrap(), ""));
        for side in [Side::Outbound, Side::Inbound] {
            assert!(
                Arc::ptr_eq(
                    e.access_log(side).load().as_ref().unwrap(),
                    before.as_ref().unwrap()
                ),
                "{side:?} keeps the open file"
            );
        }
        assert_eq!(e.open_logs().len(), 1, "kept, not retired");
        // the next reload that can open it does
        std::fs::create_dir(dir.path().join("no-such-dir")).unwrap();
        store(&e, &snapshot(missing.to_str().unwrap(), ""));
        assert!(!Arc::ptr_eq(
            e.access_log(Side::Outbound).load().as_ref().unwrap(),
            before.as_ref().unwrap()
        ));
        assert!(missing.exists());
    }
}

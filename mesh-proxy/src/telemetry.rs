//! The proxy's telemetry: the sinks its record layers hand every completed request to.
//!
//! Today: Istio's standard metrics ([`IstioMetrics`], served by the admin listener at
//! `/stats/prometheus` after the proxy's own gauges), on by default as in Istio's sidecar
//! (a Telemetry's `metrics` may turn them off by side and metric, and change their labels),
//! with the bootstrap's
//! `workload` and `identity` as the local workload (changed by a reload).
//!
//! One [`Telemetry`] lives as long as the proxy (its counters survive reloads); it makes the
//! [`RecordLayer`] of the outbound stack (`reporter="source"`, [`crate::stack`]) and of the
//! inbound stack (`reporter="destination"`, [`crate::proxy::InboundStack`]). Sinks are
//! added here: each is an `Arc<dyn Sink>` shared by every worker.

use std::sync::Arc;

use mesh_core::compile::Snapshot;
use mesh_core::telemetry::TelemetryView;
use mesh_telemetry::metrics::{IstioMetrics, LocalWorkload, Reporter};
use mesh_telemetry::record::{RecordLayer, ReportsFrom, Sink};

/// The proxy's telemetry sinks (see the [module docs](self)).
#[derive(Debug)]
pub struct Telemetry {
    outbound: RecordLayer,
    inbound: RecordLayer,
    /// Spans (`tracing.otlp`) and the access log (`accessLog`).
    exporters: crate::exporters::Exporters,
    metrics: Arc<IstioMetrics>,
}

// === impl Telemetry ===

impl Telemetry {
    /// The telemetry of a proxy starting with `snapshot`.
    /// `view` is what `snapshot`'s Telemetries make of it ([`mesh_core::telemetry::resolve`]).
    pub fn new(snapshot: &Snapshot, view: &TelemetryView) -> Telemetry {
        let metrics = Arc::new(IstioMetrics::new(LocalWorkload::from_snapshot(snapshot)));
        enable(&metrics, view);
        let exporters = crate::exporters::Exporters::new(snapshot, view);
        let mut outbound: Vec<Arc<dyn Sink>> = vec![metrics.sink(Reporter::Source)];
        let mut inbound: Vec<Arc<dyn Sink>> = vec![metrics.sink(Reporter::Destination)];
        outbound.extend(exporters.outbound_sinks());
        inbound.extend(exporters.inbound_sinks());
        // open gRPC calls' messages reported every reporting interval, as Istio's sidecars
        // do (the workers' runtimes have their time driver): the client side once the
        // answer tells which endpoint it is, the server side from the call's arrival
        Telemetry {
            outbound: RecordLayer::new(outbound).with_progress_reports(ReportsFrom::Head),
            // the inbound listener terminates TLS (mTLS): its requests carry `PeerTls`
            // (a server span's `url.scheme`)
            inbound: RecordLayer::new(inbound)
                .with_progress_reports(ReportsFrom::Arrival)
                .with_downstream_tls(|ext| ext.get::<mesh_transport::tls::PeerTls>().is_some()),
            metrics,
            exporters,
        }
    }

    /// Istio's standard metrics of both sides.
    pub fn metrics(&self) -> &Arc<IstioMetrics> {
        &self.metrics
    }

    /// The record layer of the outbound stack.
    pub fn outbound(&self) -> RecordLayer {
        self.outbound.clone()
    }

    /// The record layer of the inbound stack.
    pub fn inbound(&self) -> RecordLayer {
        self.inbound.clone()
    }

    /// Applies a new configuration (the workload's labels, identity and services may
    /// change, and its Telemetries).
    pub fn store(&self, snapshot: &Snapshot, view: &TelemetryView) {
        self.metrics
            .set_local(LocalWorkload::from_snapshot(snapshot));
        enable(&self.metrics, view);
        self.exporters.store(snapshot, view);
    }

    /// The span exporter and the access log.
    pub fn exporters(&self) -> &crate::exporters::Exporters {
        &self.exporters
    }
}

/// The metrics each side makes and their labels, as the Telemetries say
/// ([`mesh_core::telemetry`]).
fn enable(metrics: &IstioMetrics, view: &TelemetryView) {
    metrics.set_enabled(Reporter::Source, view.metrics.client);
    metrics.set_enabled(Reporter::Destination, view.metrics.server);
    metrics.set_label_overrides(Reporter::Source, &view.metric_tags.client);
    metrics.set_label_overrides(Reporter::Destination, &view.metric_tags.server);
    metrics.set_tcp_reporting_interval(
        view.tcp_reporting_interval
            .unwrap_or(mesh_core::telemetry::TCP_REPORTING_INTERVAL),
    );
}

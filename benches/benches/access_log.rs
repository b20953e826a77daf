//! What the access log and spans cost per request, on the worker (the writes and exports
//! happen on threads of their own): the record layer (`mesh_telemetry::record`) around an
//! inner service that answers at once, with one sink each:
//!
//! - `record_only`: a sink that does nothing (the record layer's own cost: subtract it);
//! - `access_log_text` / `access_log_json`: an Istio access log line formatted and queued
//!   (the writer thread writes to `/dev/null`);
//! - `span_sampled`: a sampled request's span built and queued (the exporter thread
//!   discards it);
//! - `span_unsampled`: an unsampled request (no span).
//!
//! The request is a routed GET with four headers, its trace context in its extensions.
use std::sync::Arc;
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::Empty;
use mesh_benches::layer::{NoopInner, send};
use mesh_telemetry::TraceContext;
use mesh_telemetry::access_log::{AccessLog, AccessLogWriter, Encoding};
use mesh_telemetry::record::{Completed, RecordLayer, Sink};
use mesh_telemetry::sinks::{AccessLogRecorder, Reloadable, Side, SpanRecorder};
use mesh_telemetry::span::{SpanOptions, SpanSink};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tower_layer::Layer;

/// Discards every span (the exporter thread's work is not the worker's).
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

struct Nothing;

impl Sink for Nothing {
    fn complete(&self, done: &Completed<'_>) {
        std::hint::black_box(done.status);
    }
}

fn request(sampled: bool) -> Request<Empty<bytes::Bytes>> {
    let mut req = Request::builder()
        .uri("/reviews/1")
        .header("host", "reviews:9080")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("x-request-id", "2f1c6b0e-5b7a-4d7e-9a51-8a3c1f0d9e42")
        .body(Empty::new())
        .unwrap_or_default();
    req.extensions_mut().insert(TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x0102_0304_0506_0708,
        parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
        sampled,
    });
    req
}

fn access_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("telemetry_sinks");
    let mut cx = Context::from_waker(Waker::noop());
    let log = |encoding| -> Arc<dyn Sink> {
        let writer = Arc::new(AccessLogWriter::open("/dev/null", 1 << 16).expect("/dev/null"));
        let log = Arc::new(Reloadable::new(Some(Arc::new(AccessLog::new(
            encoding, writer,
        )))));
        Arc::new(AccessLogRecorder::new(Side::Outbound, log))
    };
    let spans: Arc<dyn Sink> = Arc::new(SpanRecorder::new(
        Side::Outbound,
        Arc::new(Reloadable::new(Some(Arc::new(
            SpanSink::new(
                Discard,
                SpanOptions {
                    queue: 1 << 16,
                    ..SpanOptions::default()
                },
            )
            .expect("a span thread"),
        )))),
    ));
    let cases: [(&str, Arc<dyn Sink>, bool); 5] = [
        ("record_only", Arc::new(Nothing), true),
        ("access_log_text", log(Encoding::Text), true),
        ("access_log_json", log(Encoding::Json), true),
        ("span_sampled", spans.clone(), true),
        ("span_unsampled", spans, false),
    ];
    for (name, sink, sampled) in cases {
        let mut svc = RecordLayer::new(vec![sink]).layer(NoopInner);
        g.bench_function(name, |b| {
            b.iter_batched(
                || request(sampled),
                |req| send(&mut svc, &mut cx, req),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, access_log);
criterion_main!(benches);

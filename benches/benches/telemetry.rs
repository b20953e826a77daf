//! What the telemetry layer costs per request with Istio's metrics on
//! (`mesh_telemetry::RecordLayer` + `mesh_telemetry::metrics::IstioMetrics`), over an inner
//! service that is always ready and answers at once (`noop_inner` is the harness alone:
//! subtract it). The requests are routed GETs with four headers, their URI and values slices
//! of a shared buffer as hyper parses them.
//!
//! - `record_no_sink`: the layer without a sink (no `StreamInfo`, the body not watched);
//! - `record_metrics`: the layer with the metrics sink; the inner service records a route
//!   and an upstream into the `StreamInfo`, as the router and the balancer do, and its empty
//!   body ends the exchange at once (the whole per-request cost of the metrics: the record,
//!   the clock read twice (the start; the head, which ends an empty body), the view, two
//!   cached look-ups, six atomic additions);
//! - `all_on`: the whole telemetry of a mesh-proxy sidecar with the access log on, as its
//!   outbound stack runs it: trace propagation (`mesh_telemetry::TraceLayer`, Istio's 1 %
//!   sampling; the request continues a W3C `traceparent` and has no `x-request-id`, so one is
//!   generated) outside the record layer with the proxy's sinks in its order: the metrics, the
//!   span recorder (no exporter configured, the default) and the `TEXT` access log (its
//!   writer thread writes to `/dev/null`). The request has the same four headers as the
//!   others, `traceparent` instead of `x-request-id`. This is the number of issue 14's goal
//!   (under 1 µs): over `routed_inner` for mesh-proxy, over `noop_inner` for the telemetry
//!   alone; with the system allocator, or with mesh-proxy's (`--features mimalloc`, see
//!   `mesh_benches`). With no exporter the span recorder asks for nothing and no span is
//!   built: "tracing" here is the headers' propagation alone, what an unsampled request
//!   (99 % of them at Istio's default) costs;
//! - `all_on_sampled`: `all_on` with every span built and exported: 100 % sampling, the span
//!   recorder's sink (`mesh_telemetry::span::SpanSink`, mesh-proxy's options) exporting to the
//!   SDK's `InMemorySpanExporter` on the sink's own thread (emptied every 16,384 requests,
//!   untimed). What a sampled request costs the worker; one request is checked to make its
//!   span before the timed loop, and the spans the full queue dropped (built all the same)
//!   are printed after it;
//! - `routed_inner`: `all_on`'s inner service and request without the telemetry: the
//!   router's decision written into the request's `RequestSlots`, as mesh-proxy's router
//!   does with or without telemetry (the slots' allocation is the router's there; over
//!   `noop_inner`, the telemetry pays for it).
//!
//! And the recorder alone, one `Completed` recorded (labels of a known peer and series):
//!
//! - `istio_metrics_record`: this project's registry of atomics, the request's series found
//!   from its peer per call (the thread's last series), with one clock read of the bench's
//!   own (`record_one`'s `Instant::now`);
//! - `prometheus_client_record`: the same four families with `prometheus-client` (0.24), its
//!   label sets built once and looked up per request (`Family::get_or_create` hashes the 25
//!   labels; each histogram observation takes a write lock), which is what a recorder on it
//!   would do at best;
//! - `metrics_facade_record`: the same four families and labels through the `metrics` facade
//!   (0.24) into `metrics-exporter-prometheus`'s recorder (0.17, Istio's buckets), installed
//!   with `metrics::with_local_recorder`, the labels passed per call as `&[(&str, String)]`
//!   (the facade builds the 25-label key and the recorder looks it up, per metric);
//! - `metrics_facade_handles`: the facade's handles registered once for the label set (the
//!   fair comparison with `IstioMetrics`' label sets cached per peer), without the look-up
//!   of which handles a request's peer has, which `istio_metrics_record` pays;
//! - `metrics_facade_handles_no_upkeep`: the same without the recorder's upkeep in the
//!   time. That recorder's histograms keep each observation (value and time) until an
//!   upkeep (its exporter's, every 5 s, or a scrape) sorts them into buckets; the two
//!   facade cases above run it every 65,536 records, in the time, so they count the
//!   recorder's whole work per record, as the others do. This one is the recording
//!   thread's part alone.
//!
//! Each facade case renders its exposition after the timed loop and checks it has the four
//! families and Istio's labels.
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Empty;
use mesh_benches::layer::{NoopInner, Res, send};
use mesh_core::MeshBody;
use mesh_core::ext::{
    EndpointMeta, RouteDecision, RouteDestination, RoutePolicy, SelectedEndpoint, SelectedUpstream,
    UpstreamCluster, UpstreamPool,
};
use mesh_core::flags::ResponseFlags;
use mesh_core::stream_info::{Recorded, StreamInfo};
use mesh_telemetry::access_log::{AccessLog, AccessLogWriter, Encoding};
use mesh_telemetry::metrics::{BUCKETS, IstioMetrics, LocalWorkload, Reporter};
use mesh_telemetry::record::{Completed, End, RecordLayer, Sink};
use mesh_telemetry::sinks::{AccessLogRecorder, Reloadable, Side, SpanRecorder};
use mesh_telemetry::span::{SpanOptions, SpanSink};
use mesh_telemetry::trace::{TraceConfig, TraceLayer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower_layer::Layer;
use tower_service::Service;

const HEAD: &str = "GET /reviews/1 HTTP/1.1\r\nhost: reviews:9080\r\nuser-agent: bench/1.0\r\n\
                    accept: application/json\r\n\
                    x-request-id: 2f1c6b0e-5b7a-4d7e-9a51-8a3c1f0d9e42\r\n\r\n";

/// A header value as hyper parses it: a slice of the connection's shared read buffer.
fn parsed(buf: &Bytes, value: &str) -> HeaderValue {
    let at = buf
        .windows(value.len())
        .position(|w| w == value.as_bytes())
        .expect("in the buffer");
    HeaderValue::from_maybe_shared(buf.slice(at..at + value.len())).expect("valid value")
}

fn request() -> Request<Empty<Bytes>> {
    let buf = Bytes::from(HEAD.as_bytes().to_vec());
    let at = HEAD.find("/reviews/1").expect("in the head");
    let path = Uri::from_maybe_shared(buf.slice(at..at + "/reviews/1".len())).expect("a path");
    Request::get(path)
        .header("host", parsed(&buf, "reviews:9080"))
        .header("user-agent", parsed(&buf, "bench/1.0"))
        .header("accept", parsed(&buf, "application/json"))
        .header(
            "x-request-id",
            parsed(&buf, "2f1c6b0e-5b7a-4d7e-9a51-8a3c1f0d9e42"),
        )
        .body(Empty::new())
        .expect("valid request")
}

const TRACED: &str = "GET /reviews/1 HTTP/1.1\r\nhost: reviews:9080\r\nuser-agent: bench/1.0\r\n\
                      accept: application/json\r\n\
                      traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";

/// `all_on`'s request: a W3C trace to continue, no `x-request-id` (one is generated).
fn traced_request() -> Request<Empty<Bytes>> {
    let buf = Bytes::from(TRACED.as_bytes().to_vec());
    let at = TRACED.find("/reviews/1").expect("in the head");
    let path = Uri::from_maybe_shared(buf.slice(at..at + "/reviews/1".len())).expect("a path");
    Request::get(path)
        .header("host", parsed(&buf, "reviews:9080"))
        .header("user-agent", parsed(&buf, "bench/1.0"))
        .header("accept", parsed(&buf, "application/json"))
        .header(
            "traceparent",
            parsed(
                &buf,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        )
        .body(Empty::new())
        .expect("valid request")
}

fn upstream() -> SelectedUpstream {
    let mut labels = mesh_core::selector::Labels::new();
    labels.insert("app".into(), "reviews".into());
    labels.insert("version".into(), "v1".into());
    SelectedUpstream::new(
        SelectedEndpoint::new("10.0.0.7:9080".parse().expect("an address")).with_meta(Some(
            Arc::new(EndpointMeta {
                labels,
                namespace: "default".into(),
                workload: Some("reviews-v1".into()),
            }),
        )),
        UpstreamCluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            health: Arc::new(mesh_core::health::HealthCell::detached()),
            pool: UpstreamPool::default(),
            outlier: None,
            limits: None,
        },
    )
}

fn decision() -> RouteDecision {
    RouteDecision {
        dest: RouteDestination {
            host: "reviews.default.svc.cluster.local".into(),
            subset: None,
            port: Some(9080),
        },
        policy: Arc::new(RoutePolicy::default()),
    }
}

/// The router's and the balancer's part: the router's decision into the request's
/// `RequestSlots` (what the router does with or without telemetry: `routed_inner`), and,
/// with telemetry, the records into its `StreamInfo`.
#[derive(Clone)]
struct Routed {
    decision: RouteDecision,
    upstream: SelectedUpstream,
}

impl<B> Service<Request<B>> for Routed {
    type Response = Res;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Res, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // the router's own write, telemetry or not
        mesh_core::ext::slots_mut(req.extensions_mut()).decision = Some(self.decision.clone());
        if let Some(info) = mesh_core::ext::stream_info(req.extensions()) {
            info.set_route(&self.decision);
            info.set_upstream(&self.upstream);
        }
        std::future::ready(Ok(Response::new(MeshBody::empty())))
    }
}

fn local() -> LocalWorkload {
    let mut l = LocalWorkload::named("productpage-v1", "default");
    l.labels.insert("app".into(), "productpage".into());
    l.labels.insert("version".into(), "v1".into());
    l
}

/// One request through `svc` (`send`), kept out of line: the function whose inclusive cost
/// `benches/load/telemetry_callgrind.py` counts per request.
#[inline(never)]
fn timed<S, R>(svc: &mut S, cx: &mut Context<'_>, req: Request<Empty<Bytes>>) -> StatusCode
where
    S: Service<Request<Empty<Bytes>>, Response = Response<R>, Error = std::convert::Infallible>,
{
    send(svc, cx, req)
}

fn layer(c: &mut Criterion) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("telemetry");
    let mut bare = NoopInner;
    g.bench_function("noop_inner", |b| {
        b.iter_batched(
            request,
            |req| timed(&mut bare, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let mut router = Routed {
        decision: decision(),
        upstream: upstream(),
    };
    g.bench_function("routed_inner", |b| {
        b.iter_batched(
            traced_request,
            |req| timed(&mut router, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let mut off = RecordLayer::new(Vec::new()).layer(NoopInner);
    g.bench_function("record_no_sink", |b| {
        b.iter_batched(
            request,
            |req| send(&mut off, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let metrics = Arc::new(IstioMetrics::new(local()));
    let routed = Routed {
        decision: decision(),
        upstream: upstream(),
    };
    let mut on = RecordLayer::new(vec![metrics.sink(Reporter::Source)]).layer(routed);
    g.bench_function("record_metrics", |b| {
        b.iter_batched(
            request,
            |req| send(&mut on, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    // (none when the bench was filtered out)
    assert!(
        metrics.series() <= 1,
        "one series: the label set was cached"
    );

    // the proxy's outbound telemetry with the access log on (mesh-proxy's `Telemetry`
    // and `Exporters`): metrics, spans (no exporter: no span is built), the TEXT access log
    let metrics = Arc::new(IstioMetrics::new(local()));
    let (sinks, writer) = proxy_sinks(&metrics, Reloadable::empty());
    let trace = TraceLayer::new(TraceConfig::default().with_sampling_percent(1.0));
    let mut all = trace.layer(RecordLayer::new(sinks).layer(Routed {
        decision: decision(),
        upstream: upstream(),
    }));
    g.bench_function("all_on", |b| {
        b.iter_batched(
            traced_request,
            |req| timed(&mut all, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    assert!(metrics.series() <= 1, "one series");
    report_dropped("all_on", &writer);

    // the same with every span built and exported: 100 % sampling, the span sink exporting
    // to the SDK's in-memory exporter on its own thread (`mesh-spans`), as mesh-proxy's with
    // an OTLP exporter
    let metrics = Arc::new(IstioMetrics::new(local()));
    let exporter = InMemorySpanExporter::default();
    let spans = SpanSink::new(
        exporter.clone(),
        SpanOptions {
            service_name: "productpage.default".into(),
            node_id: "sidecar~10.0.0.5~productpage-v1.default~default.svc.cluster.local".into(),
            namespace: "default".into(),
            ..SpanOptions::default()
        },
    )
    .expect("the exporter thread");
    let (sinks, writer) = proxy_sinks(&metrics, Reloadable::new(Some(Arc::new(spans.clone()))));
    let trace = TraceLayer::new(TraceConfig::default().with_sampling_percent(100.0));
    let mut sampled = trace.layer(RecordLayer::new(sinks).layer(Routed {
        decision: decision(),
        upstream: upstream(),
    }));
    // one request outside the timed loop: its span is built and exported, or the bench
    // would measure nothing (`send`, not `timed`: telemetry_callgrind.py counts `timed`'s
    // calls in the other cases)
    send(&mut sampled, &mut cx, traced_request());
    spans.flush();
    let made = exporter.get_finished_spans().expect("the spans");
    assert_eq!(made.len(), 1, "a span per sampled request");
    assert_eq!(made[0].name, "reviews.default.svc.cluster.local:9080/*");
    exporter.reset();
    let mut requests = 0u64;
    g.bench_function("all_on_sampled", |b| {
        b.iter_batched(
            || {
                // the in-memory exporter keeps every span: emptied now and then, untimed
                requests += 1;
                if requests.is_multiple_of(16_384) {
                    exporter.reset();
                }
                traced_request()
            },
            |req| timed(&mut sampled, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    spans.flush();
    assert!(metrics.series() <= 1, "one series");
    if spans.dropped() > 0 {
        eprintln!(
            "all_on_sampled: {} of {requests} spans dropped (queue full)",
            spans.dropped()
        );
    }
    report_dropped("all_on_sampled", &writer);
    g.finish();
}

/// mesh-proxy's outbound sinks in its order (its `Telemetry` and `Exporters`): the metrics,
/// the span recorder with `spans`, the `TEXT` access log (its writer thread writes to
/// `/dev/null`); and the access log's writer.
fn proxy_sinks(
    metrics: &Arc<IstioMetrics>,
    spans: Reloadable<SpanSink>,
) -> (Vec<Arc<dyn Sink>>, Arc<AccessLogWriter>) {
    let writer = Arc::new(AccessLogWriter::open("/dev/null", 1 << 16).expect("/dev/null"));
    let log = Arc::new(Reloadable::new(Some(Arc::new(AccessLog::new(
        Encoding::Text,
        writer.clone(),
    )))));
    let access_log = AccessLogRecorder::new(Side::Outbound, log);
    access_log.set_local_addr("127.0.0.1:15001".parse().expect("an address"));
    let sinks: Vec<Arc<dyn Sink>> = vec![
        metrics.sink(Reporter::Source),
        Arc::new(SpanRecorder::new(Side::Outbound, Arc::new(spans))),
        Arc::new(access_log),
    ];
    (sinks, writer)
}

/// Prints the access log lines `case` dropped (queue full), if any.
fn report_dropped(case: &str, writer: &AccessLogWriter) {
    writer.flush();
    if writer.dropped() > 0 {
        eprintln!(
            "{case}: {} access log lines dropped (queue full)",
            writer.dropped()
        );
    }
}

/// The labels of the one series, as a `prometheus-client` label set.
fn client_labels() -> Vec<(String, String)> {
    let m = IstioMetrics::new(local());
    record_one(&m, &recorded());
    let text = m.encode_to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a series");
    let inner = &line[line.find('{').expect("labels") + 1..line.rfind('}').expect("labels")];
    inner
        .split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once("=\"").expect("a label");
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect()
}

fn recorded() -> Recorded {
    let info = StreamInfo::new();
    info.set_route(&decision());
    info.set_upstream(&upstream());
    info.snapshot()
}

fn record_one(m: &IstioMetrics, info: &Recorded) {
    let start = Instant::now();
    let done = Completed {
        start,
        end: start + Duration::from_millis(3),
        how: End::Complete,
        details: None,
        version: Version::HTTP_11,
        authority: Some("reviews:9080"),
        grpc: false,
        request_bytes: 120,
        status: Some(StatusCode::OK),
        flags: ResponseFlags::empty(),
        grpc_status: None,
        response_bytes: 2000,
        request_messages: 0,
        response_messages: 0,
        messages_reported: (0, 0),
        trace: None,
        info,
        client_addr: None,
        peer: None,
    };
    m.record(Reporter::Source, &done);
}

fn recorder(c: &mut Criterion) {
    let mut g = c.benchmark_group("recorder");
    let m = IstioMetrics::new(local());
    let info = recorded();
    g.bench_function("istio_metrics_record", |b| b.iter(|| record_one(&m, &info)));

    let labels = client_labels();
    assert_eq!(labels.len(), 25, "Istio's labels");
    let requests = Family::<Vec<(String, String)>, Counter>::default();
    let hist = || {
        Family::<Vec<(String, String)>, Histogram, _>::new_with_constructor(|| {
            Histogram::new(BUCKETS)
        })
    };
    let (duration, req_bytes, res_bytes) = (hist(), hist(), hist());
    g.bench_function("prometheus_client_record", |b| {
        b.iter(|| {
            requests.get_or_create(&labels).inc();
            duration.get_or_create(&labels).observe(3.0);
            req_bytes.get_or_create(&labels).observe(120.0);
            res_bytes.get_or_create(&labels).observe(2000.0);
        })
    });

    // the `metrics` facade: the label names are static strings in a real user's code
    let labels: Vec<(&'static str, String)> =
        labels.into_iter().map(|(k, v)| (&*k.leak(), v)).collect();

    // labels passed per call: the facade builds the key (25 labels) and the recorder looks
    // it up, per metric
    let recorder = facade_recorder();
    let handle = recorder.handle();
    let per_call = || {
        metrics::counter!("istio_requests_total", &labels).increment(1);
        metrics::histogram!("istio_request_duration_milliseconds", &labels).record(3.0);
        metrics::histogram!("istio_request_bytes", &labels).record(120.0);
        metrics::histogram!("istio_response_bytes", &labels).record(2000.0);
    };
    metrics::with_local_recorder(&recorder, || {
        per_call();
        g.bench_function("metrics_facade_record", |b| {
            let mut done = 0;
            b.iter_custom(|iters| facade_iters(iters, &mut done, &handle, true, per_call))
        });
    });
    check_exposition("metrics_facade_record", &handle);

    // handles registered once (what `IstioMetrics` does with its label sets, cached per peer)
    let recorder = facade_recorder();
    let handle = recorder.handle();
    let (requests, duration, req_bytes, res_bytes) =
        metrics::with_local_recorder(&recorder, || {
            (
                metrics::counter!("istio_requests_total", &labels),
                metrics::histogram!("istio_request_duration_milliseconds", &labels),
                metrics::histogram!("istio_request_bytes", &labels),
                metrics::histogram!("istio_response_bytes", &labels),
            )
        });
    let handles = || {
        requests.increment(1);
        duration.record(3.0);
        req_bytes.record(120.0);
        res_bytes.record(2000.0);
    };
    handles();
    g.bench_function("metrics_facade_handles", |b| {
        let mut done = 0;
        b.iter_custom(|iters| facade_iters(iters, &mut done, &handle, true, handles))
    });
    g.bench_function("metrics_facade_handles_no_upkeep", |b| {
        let mut done = 0;
        b.iter_custom(|iters| facade_iters(iters, &mut done, &handle, false, handles))
    });
    check_exposition("metrics_facade_handles", &handle);
    g.finish();
}

/// Records between two upkeeps of the `metrics` facade's recorder, which drain its
/// histograms' samples into their buckets (its own exporter does it every 5 s and at each
/// scrape; the samples wait in memory until then).
const UPKEEP_EVERY: u64 = 1 << 16;

/// `metrics-exporter-prometheus`'s recorder with Istio's buckets (Envoy's defaults) on the
/// histograms.
fn facade_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .expect("Istio's buckets")
        .build_recorder()
}

/// The time of `iters` calls of `record`, with the recorder's upkeep after every
/// [`UPKEEP_EVERY`]th record (`done` counts them across calls): in the time when
/// `upkeep_timed` (the recorder's whole cost per record), else left out (the recording
/// thread's part alone, the upkeep being another thread's).
fn facade_iters(
    iters: u64,
    done: &mut u64,
    handle: &PrometheusHandle,
    upkeep_timed: bool,
    record: impl Fn(),
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut start = Instant::now();
    for _ in 0..iters {
        record();
        *done += 1;
        if done.is_multiple_of(UPKEEP_EVERY) {
            if upkeep_timed {
                handle.run_upkeep();
            } else {
                spent += start.elapsed();
                handle.run_upkeep();
                start = Instant::now();
            }
        }
    }
    spent + start.elapsed()
}

/// The facade's exposition has the series and its buckets (the bench measured something).
fn check_exposition(case: &str, handle: &PrometheusHandle) {
    let text = handle.render();
    for family in [
        "istio_requests_total{",
        "istio_request_duration_milliseconds_bucket{",
        "istio_request_bytes_bucket{",
        "istio_response_bytes_bucket{",
    ] {
        assert!(
            text.contains(family),
            "{case}: no {family} in the exposition:\n{text}"
        );
    }
    assert!(
        text.contains("reporter=\"source\""),
        "{case}: Istio's labels"
    );
}

criterion_group!(benches, layer, recorder);
criterion_main!(benches);

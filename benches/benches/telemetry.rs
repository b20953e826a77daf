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
//!   `mesh_benches`);
//! - `routed_inner`: `all_on`'s inner service and request without the telemetry: the
//!   router's decision written into the request's `RequestSlots`, as mesh-proxy's router
//!   does with or without telemetry (the slots' allocation is the router's there; over
//!   `noop_inner`, the telemetry pays for it).
//!
//! And the recorder alone, one `Completed` recorded (labels of a known peer and series):
//!
//! - `istio_metrics_record`: this project's registry of atomics;
//! - `prometheus_client_record`: the same four families with `prometheus-client` (0.24), its
//!   label sets built once and looked up per request (`Family::get_or_create` hashes the 25
//!   labels; each histogram observation takes a write lock), which is what a recorder on it
//!   would do at best.
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
use mesh_telemetry::trace::{TraceConfig, TraceLayer};
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
    // and `Exporters`): metrics, spans (no exporter), the TEXT access log
    let metrics = Arc::new(IstioMetrics::new(local()));
    let writer = Arc::new(AccessLogWriter::open("/dev/null", 1 << 16).expect("/dev/null"));
    let log = Arc::new(Reloadable::new(Some(Arc::new(AccessLog::new(
        Encoding::Text,
        writer.clone(),
    )))));
    let access_log = AccessLogRecorder::new(Side::Outbound, log);
    access_log.set_local_addr("127.0.0.1:15001".parse().expect("an address"));
    let sinks: Vec<Arc<dyn Sink>> = vec![
        metrics.sink(Reporter::Source),
        Arc::new(SpanRecorder::new(
            Side::Outbound,
            Arc::new(Reloadable::empty()),
        )),
        Arc::new(access_log),
    ];
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
    writer.flush();
    if writer.dropped() > 0 {
        eprintln!(
            "all_on: {} access log lines dropped (queue full)",
            writer.dropped()
        );
    }
    g.finish();
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
    g.finish();
}

criterion_group!(benches, layer, recorder);
criterion_main!(benches);

//! Istio's `Telemetry` resource through the real proxy: a mesh-wide Telemetry applied by a
//! reload turns the client side's access log and `istio_requests_total` off and samples
//! every new trace; a workload's own Telemetry then samples none on the client side while
//! its namespace's samples every one on the server side; two Telemetries without a selector
//! in one namespace are refused and the running configuration stays.

use crate::support;

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use support::*;

/// A backend answering `app` that keeps the `traceparent` of each request it got.
async fn traced_backend() -> (Backend, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let s = s.clone();
        Box::pin(async move {
            if let Some(tp) = req.headers().get("traceparent") {
                s.lock()
                    .unwrap()
                    .push(tp.to_str().unwrap_or_default().to_string());
            }
            Response::builder().body(full("app")).unwrap()
        })
    });
    (backend_with("app", handler).await, seen)
}

fn config(log: &std::path::Path, app: u16, telemetries: &str) -> String {
    format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app}}}}}]
{telemetries}",
        bootstrap(
            1,
            &format!(
                "  accessLog: {{path: {}}}\n  inbound: {{address: 127.0.0.1, port: 0, localApp: 127.0.0.1:{app}}}\n",
                log.display()
            )
        ),
    )
}

/// The istio.io access-log task's mesh-wide Telemetry, narrowed to the client side and
/// turned off, with every new trace sampled and the client side's request count off.
const MESH_DEFAULT: &str = "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - match: {mode: CLIENT}
    providers: [{name: envoy}]
    disabled: true
  tracing:
  - randomSamplingPercentage: 100.0
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      disabled: true
";

/// The last `traceparent`'s flags (`01`: sampled).
fn last_flags(seen: &Mutex<Vec<String>>) -> String {
    let seen = seen.lock().unwrap();
    let tp = seen.last().expect("the backend saw a traceparent");
    tp.rsplit('-').next().unwrap().to_string()
}

fn lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_telemetry_applied_by_reload_changes_logs_metrics_and_sampling_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let file = dir.path().join("mesh.yaml");
    let (app, seen) = traced_backend().await;
    write(&file, &config(&log, app.port(), ""));
    let p = start_files(vec![file.clone()]).await;
    let inbound = p.proxy.inbound_addr().unwrap();

    // before: the bootstrap's log has both sides' lines, both reporters count requests
    let r = get_once(p.out, "reviews:9080", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let r = get_once(inbound, "reviews", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    p.proxy.flush_telemetry();
    assert_eq!(lines(&log).len(), 2, "{:#?}", lines(&log));
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert!(
        stats.contains("istio_requests_total{reporter=\"source\""),
        "{stats}"
    );
    assert!(
        stats.contains("istio_requests_total{reporter=\"destination\""),
        "{stats}"
    );

    // the mesh-wide Telemetry: no client lines, no client request count, every trace
    // sampled
    write(&file, &config(&log, app.port(), MESH_DEFAULT));
    p.proxy.reload().unwrap();
    for _ in 0..5 {
        let r = get_once(p.out, "reviews:9080", &[]).await;
        assert_eq!(r.status.as_u16(), 200, "{r:?}");
        assert_eq!(last_flags(&seen), "01", "sampled at 100 %");
    }
    let r = get_once(inbound, "reviews", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    p.proxy.flush_telemetry();
    let after = lines(&log);
    assert_eq!(
        after.len(),
        3,
        "one more line, the server side's: {after:#?}"
    );
    assert!(after[2].contains("inbound|"), "{}", after[2]);
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert!(
        !stats.contains("istio_requests_total{reporter=\"source\""),
        "{stats}"
    );
    assert!(
        stats.contains("istio_requests_total{reporter=\"destination\""),
        "{stats}"
    );
    // the client side's other metrics are still made, with the requests since
    let count = stats
        .lines()
        .find(|l| l.starts_with("istio_request_duration_milliseconds_count{reporter=\"source\""))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(count.ends_with(" 6"), "{count}");

    // the workload's own Telemetry samples no new trace on the client side (it overrides
    // the mesh's); its namespace's keeps every one on the server side
    let none = format!(
        "{MESH_DEFAULT}---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: productpage, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  tracing:
  - match: {{mode: CLIENT}}
    randomSamplingPercentage: 0
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: namespace-default, namespace: default}}
spec:
  tracing:
  - match: {{mode: SERVER}}
    randomSamplingPercentage: 100
"
    );
    write(&file, &config(&log, app.port(), &none));
    p.proxy.reload().unwrap();
    for _ in 0..5 {
        get_once(p.out, "reviews:9080", &[]).await;
        assert_eq!(last_flags(&seen), "00", "client side sampled at 0 %");
        get_once(inbound, "reviews", &[]).await;
        assert_eq!(last_flags(&seen), "01", "server side sampled at 100 %");
    }

    // two without a selector in one namespace: refused, and the running configuration
    // (0 %) stays
    let two = format!(
        "{none}---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: another, namespace: istio-system}}
spec:
  tracing:
  - randomSamplingPercentage: 100
"
    );
    write(&file, &config(&log, app.port(), &two));
    let err = p.proxy.reload().unwrap_err().to_string();
    assert!(err.contains("IST0160"), "{err}");
    get_once(p.out, "reviews:9080", &[]).await;
    assert_eq!(last_flags(&seen), "00");
}

/// Istio's metrics tasks' label overrides ("Customizing Istio Metrics with Telemetry API":
/// `grpc_response_status` removed from `REQUEST_COUNT`), with the labels the task's readers
/// add most: the request's host and method, and the listener's port.
const METRIC_TAGS: &str = "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        grpc_response_status: {operation: REMOVE}
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        request_host: {value: request.host}
        destination_port: {value: string(destination.port)}
    - match: {mode: SERVER}
      tagOverrides:
        request_method: {value: request.method}
        response_code: {value: \"response.code >= 500 ? 'error' : 'ok'\"}
";

#[tokio::test]
async fn a_telemetry_s_tag_overrides_change_the_labels_by_metric_and_side() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let file = dir.path().join("mesh.yaml");
    let (app, _) = traced_backend().await;
    write(&file, &config(&log, app.port(), METRIC_TAGS));
    let p = start_files(vec![file.clone()]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    for _ in 0..2 {
        let r = get_once(p.out, "reviews:9080", &[]).await;
        assert_eq!(r.status.as_u16(), 200, "{r:?}");
    }
    let r = get_once(p.out, "reviews.default.svc.cluster.local:9080", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let r = get_once(inbound, "reviews", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    support::prom::promtool_check(&stats);
    let lines = |family: &str, reporter: &str| -> Vec<String> {
        stats
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(reporter))
            .map(str::to_owned)
            .collect()
    };

    // client side, istio_requests_total: one series per host, the outbound listener's port,
    // no grpc_response_status
    let source = lines("istio_requests_total{", "reporter=\"source\"");
    assert_eq!(source.len(), 2, "{source:#?}");
    let port = format!("destination_port=\"{}\"", p.out.port());
    let short = source
        .iter()
        .find(|l| l.contains("request_host=\"reviews:9080\""))
        .unwrap_or_else(|| panic!("{source:#?}"));
    assert!(short.ends_with(" 2"), "{short}");
    assert!(short.contains(&port), "{short}");
    assert!(!short.contains("grpc_response_status"), "{short}");
    assert!(source.iter().any(|l| {
        l.contains("request_host=\"reviews.default.svc.cluster.local:9080\"") && l.ends_with(" 1")
    }));
    // the client side's duration keeps Istio's labels
    let duration = lines(
        "istio_request_duration_milliseconds_count{",
        "reporter=\"source\"",
    );
    assert_eq!(duration.len(), 1, "{duration:#?}");
    assert!(duration[0].ends_with(" 3") && duration[0].contains("grpc_response_status=\"\""));
    assert!(!duration[0].contains("request_host"), "{}", duration[0]);

    // server side, every metric: the method added, the code a class; REQUEST_COUNT without
    // grpc_response_status too
    let dest = lines("istio_requests_total{", "reporter=\"destination\"");
    assert_eq!(dest.len(), 1, "{dest:#?}");
    assert!(
        dest[0].contains("response_code=\"ok\"") && dest[0].contains("request_method=\"GET\""),
        "{}",
        dest[0]
    );
    assert!(!dest[0].contains("grpc_response_status") && !dest[0].contains("request_host"));
    let size = lines("istio_response_bytes_count{", "reporter=\"destination\"");
    assert_eq!(size.len(), 1, "{size:#?}");
    assert!(size[0].contains("request_method=\"GET\"") && size[0].contains("grpc_response_status"));

    // a reload without the Telemetry: Istio's labels again, the series so far kept
    write(&file, &config(&log, app.port(), ""));
    p.proxy.reload().unwrap();
    get_once(p.out, "reviews:9080", &[]).await;
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    support::prom::promtool_check(&stats);
    let source: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{reporter=\"source\""))
        .collect();
    assert_eq!(source.len(), 3, "{source:#?}");
    assert!(
        source
            .iter()
            .any(|l| l.contains("grpc_response_status=\"\"")
                && !l.contains("request_host")
                && l.ends_with(" 1")),
        "{source:#?}"
    );
}

/// A gRPC upstream that answers every call, once its request has ended, with `data` (data
/// frames) and `grpc-status: 0` in trailers.
fn grpc_answering(data: &'static [&'static [u8]]) -> Handler {
    use http_body_util::BodyExt;
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            grpc_reply(data, "0")
        })
    })
}

/// Istio's `istio_request_messages_total` and `istio_response_messages_total` through the
/// real proxy: a gRPC call's messages each way, with the peer's labels (Istio's stats
/// filter records them before it knows the answer: no protocol, code, status, flags or
/// security policy).
#[tokio::test]
async fn a_grpc_call_s_messages_are_counted_each_way() {
    // two messages, split across data frames
    let up = backend_with(
        "grpc",
        grpc_answering(&[b"\0\0\0\0\x01a\0\0", b"\0\0\x01b"]),
    )
    .await;
    let yaml = bootstrap(1, "") + &service_entry("ratings", 9080, "GRPC", &[&up]);
    let p = start(&yaml).await;
    let mut tx = h2(p.out).await;
    for _ in 0..2 {
        let req = Request::builder()
            .method("POST")
            .uri("http://ratings:9080/pkg.Ratings/Get")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(&b"\0\0\0\0\x02hi\0\0\0\0\x00\0\0\0\0\x01x"[..]))
            .unwrap();
        bounded(tx.ready()).await.unwrap();
        let res = bounded(tx.send_request(req)).await.unwrap();
        assert_eq!(res.status(), 200);
        bounded(http_body_util::BodyExt::collect(res.into_body()))
            .await
            .unwrap();
    }
    // and a plain request, whose series has no message count
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    support::prom::promtool_check(&stats);
    let line = |family: &str| -> Vec<String> {
        stats
            .lines()
            .filter(|l| l.starts_with(family))
            .map(str::to_owned)
            .collect()
    };
    let sent = line("istio_request_messages_total{");
    let got = line("istio_response_messages_total{");
    assert_eq!((sent.len(), got.len()), (1, 1), "{stats}");
    assert!(
        sent[0].ends_with(" 6"),
        "three messages a call: {}",
        sent[0]
    );
    assert!(got[0].ends_with(" 4"), "two a call: {}", got[0]);
    for l in [&sent[0], &got[0]] {
        assert!(
            l.contains(r#"destination_service_name="ratings""#)
                && l.contains(r#",destination_cluster="unknown"} "#)
                && !l.contains("request_protocol")
                && !l.contains("response_code"),
            "{l}"
        );
    }
    assert_eq!(line("istio_requests_total{").len(), 2, "{stats}");
}

/// A Telemetry reporting open connections and calls every 100 ms (Istio's default: 5 s).
const REPORT_EVERY_100MS: &str = "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    reportingInterval: 100ms
";

type Sent = Result<hyper::body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>;

/// A gRPC call to `uri` whose request body is what is sent on the returned channel, until
/// it is dropped.
fn grpc_stream(uri: &str) -> (Request<UpBody>, tokio::sync::mpsc::Sender<Sent>) {
    use http_body_util::BodyExt;
    let (body_tx, mut body_rx) = tokio::sync::mpsc::channel::<Sent>(4);
    let body = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        body_rx.poll_recv(cx)
    }));
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body.boxed())
        .unwrap();
    (req, body_tx)
}

/// A gRPC upstream streaming back: two messages at once, the trailers when the request's
/// stream ends.
fn grpc_streaming_back() -> Handler {
    use http_body_util::BodyExt;
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Sent>(4);
            let two = bytes::Bytes::from_static(b"\0\0\0\0\x01a\0\0\0\0\x01b");
            let _ = tx.send(Ok(hyper::body::Frame::data(two))).await;
            tokio::spawn(async move {
                let _ = req.into_body().collect().await;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
            });
            let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Response::builder()
                .header("content-type", "application/grpc")
                .body(http_body_util::StreamBody::new(frames).boxed())
                .unwrap()
        })
    })
}

/// A Telemetry's `reportingInterval` paces an open gRPC stream's message counts too (Istio's
/// `tcp_reporting_duration` does): counted while the stream is open, and not again at its
/// end.
#[tokio::test]
async fn an_open_grpc_stream_s_messages_are_reported_every_reporting_interval() {
    use http_body_util::BodyExt;
    let up = backend_with("grpc", grpc_streaming_back()).await;
    let yaml =
        bootstrap(1, "") + &service_entry("ratings", 9080, "GRPC", &[&up]) + REPORT_EVERY_100MS;
    let p = start(&yaml).await;
    let mut tx = h2(p.out).await;
    let (req, body_tx) = grpc_stream("http://ratings:9080/pkg.Ratings/Watch");
    bounded(tx.ready()).await.unwrap();
    let res = bounded(tx.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    let three = bytes::Bytes::from_static(b"\0\0\0\0\x01x\0\0\0\0\x01y\0\0\0\0\x01z");
    body_tx
        .send(Ok(hyper::body::Frame::data(three)))
        .await
        .unwrap();
    let mut res = res.into_body();
    let first = bounded(res.frame()).await.unwrap().unwrap();
    assert_eq!(first.data_ref().map(|d| d.len()), Some(12));
    // while the stream is open: its messages so far, and no request yet
    let admin = p.admin;
    let value = |stats: &str, family: &str| -> Option<u64> {
        let l = stats.lines().find(|l| l.starts_with(family))?;
        l.rsplit_once(' ')?.1.parse().ok()
    };
    eventually("the open stream's messages reported", || async move {
        let (_, stats) = admin_get(admin, "/stats/prometheus").await;
        value(&stats, "istio_request_messages_total{") == Some(3)
            && value(&stats, "istio_response_messages_total{") == Some(2)
    })
    .await;
    let (_, stats) = admin_get(admin, "/stats/prometheus").await;
    assert_eq!(value(&stats, "istio_requests_total{"), None, "{stats}");
    support::prom::promtool_check(&stats);
    // the end: the request counted, the messages not twice
    drop(body_tx);
    let rest = bounded(res.collect()).await.unwrap();
    assert_eq!(rest.trailers().unwrap()["grpc-status"], "0");
    eventually("the call recorded", || async move {
        let (_, stats) = admin_get(admin, "/stats/prometheus").await;
        value(&stats, "istio_requests_total{") == Some(1)
    })
    .await;
    let (_, stats) = admin_get(admin, "/stats/prometheus").await;
    assert_eq!(value(&stats, "istio_request_messages_total{"), Some(3));
    assert_eq!(value(&stats, "istio_response_messages_total{"), Some(2));
}

/// The server side reports an open gRPC call from its arrival, as Istio's (which reads the
/// client's metadata from the request): a client stream's messages through the inbound
/// listener are counted (`reporter="destination"`) before the application answers.
#[tokio::test]
async fn an_inbound_client_stream_is_reported_before_the_application_answers() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_tls::ca::MeshCa::generate(support::mtls::TD).unwrap();
    // the application answers the client stream when it ends: one message
    let app = backend_with("app", grpc_answering(&[b"\0\0\0\0\x01k"])).await;
    let p = start(&support::mtls::reviews_config(
        dir.path(),
        &ca,
        &app,
        REPORT_EVERY_100MS,
    ))
    .await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let mut tx = h2(inbound).await;
    let (req, body_tx) = grpc_stream("http://reviews:9080/pkg.Reviews/Upload");
    bounded(tx.ready()).await.unwrap();
    let call = tokio::spawn(tx.send_request(req));
    let three = bytes::Bytes::from_static(b"\0\0\0\0\x01x\0\0\0\0\x01y\0\0\0\0\x01z");
    body_tx
        .send(Ok(hyper::body::Frame::data(three)))
        .await
        .unwrap();
    let admin = p.admin;
    let sent = |stats: &str| -> Option<u64> {
        let l = stats.lines().find(|l| {
            l.starts_with("istio_request_messages_total{")
                && l.contains(r#"reporter="destination""#)
        })?;
        l.rsplit_once(' ')?.1.parse().ok()
    };
    eventually(
        "the open client stream's messages reported",
        || async move {
            let (_, stats) = admin_get(admin, "/stats/prometheus").await;
            sent(&stats) == Some(3)
        },
    )
    .await;
    assert!(!call.is_finished(), "the application has not answered yet");
    drop(body_tx);
    let res = bounded(call).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    let got = bounded(res.into_body().collect()).await.unwrap();
    assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
    let (_, stats) = admin_get(admin, "/stats/prometheus").await;
    support::prom::promtool_check(&stats);
    assert_eq!(
        sent(&stats),
        Some(3),
        "not counted again at the end: {stats}"
    );
}

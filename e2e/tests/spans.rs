//! Spans through the real proxy, exported over OTLP/HTTP to a receiver the test starts (a
//! hyper server on port 0 decoding the protobuf `ExportTraceServiceRequest` with
//! `opentelemetry-proto`, as a collector's `otlphttp` receiver): a client span per sampled
//! outbound request and a server span per sampled inbound one, whose ids are the ones the
//! proxy propagated; no span for an unsampled trace.

use crate::support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

/// Every export the receiver got: (path, content type, decoded body).
type Exports = Arc<Mutex<Vec<(String, String, ExportTraceServiceRequest)>>>;

async fn receiver() -> (std::net::SocketAddr, Exports) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Exports = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let g = g.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ct = req.headers()["content-type"].to_str().unwrap().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                        g.lock().unwrap().push((path, ct, decoded));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn spans(got: &Exports) -> Vec<Span> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|(_, _, r)| r.resource_spans.iter())
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter().cloned())
        .collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v.clone(),
        other => panic!("{key}: {other:?} in {s:?}"),
    }
}

fn int(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("{key}: {other:?} in {s:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A backend that keeps the headers it received.
async fn recording() -> (Backend, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        s.lock().unwrap().push(req.headers().clone());
        Box::pin(async move { Response::new(full("ok")) })
    });
    (backend_with("traced", handler).await, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_are_exported_as_spans_with_the_propagated_ids() {
    let (collector, got) = receiver().await;
    let (b, seen) = recording().await;
    let yaml = bootstrap(
        1,
        &format!(
            "  tracing: {{sampling: 0, otlp: {{endpoint: \"http://{collector}\"}}}}\n  inbound: {{address: 127.0.0.1, port: 0, localApp: 127.0.0.1:{}}}\n",
            b.port()
        ),
    ) + &service_entry("ratings", 9080, "HTTP", &[&b]);
    let p = start(&yaml).await;

    // not sampled by the caller: no span
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let r = get_once(p.out, "ratings:9080", &[("traceparent", unsampled)]).await;
    assert_eq!(r.status, 200);
    // sampled by the caller
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_once(
        p.out,
        "ratings:9080",
        &[("traceparent", caller), ("x-request-id", "req-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    // what the upstream received: the proxy's span as the parent
    let sent = seen.lock().unwrap().last().cloned().unwrap();
    let tp = sent["traceparent"].to_str().unwrap().to_string();
    // a sampled request on the inbound side, continuing that trace
    let r = get_once(
        p.proxy.inbound_addr().unwrap(),
        "ratings:9080",
        &[("traceparent", &tp)],
    )
    .await;
    assert_eq!(r.status, 200);
    let to_app = seen.lock().unwrap().last().cloned().unwrap();
    let tp_app = to_app["traceparent"].to_str().unwrap().to_string();

    // every span recorded so far has been exported (the flush blocks this thread while the
    // receiver answers on the runtime's other one)
    tokio::task::block_in_place(|| p.proxy.flush_telemetry());
    {
        let g = got.lock().unwrap();
        assert!(!g.is_empty(), "no export");
        for (path, ct, _) in g.iter() {
            assert_eq!(path, "/v1/traces");
            assert_eq!(ct, "application/x-protobuf");
        }
    }
    let all = spans(&got);
    assert_eq!(all.len(), 2, "one client and one server span: {all:#?}");
    assert!(
        all.iter()
            .all(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736"),
        "the unsampled trace made no span: {all:#?}"
    );

    let client = all.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex(&client.span_id), &tp[36..52], "the id sent upstream");
    assert_eq!(
        hex(&client.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's"
    );
    assert_eq!(client.name, "ratings.default.svc.cluster.local:9080/*");
    assert_eq!(string(client, "http.request.method"), "GET");
    assert_eq!(string(client, "url.full"), "http://ratings:9080/");
    assert_eq!(int(client, "http.response.status_code"), 200);
    assert_eq!(
        string(client, "upstream_cluster"),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    assert_eq!(string(client, "response_flags"), "-");
    assert_eq!(string(client, "component"), "proxy");
    assert_eq!(string(client, "guid:x-request-id"), "req-1");
    assert!(string(client, "node_id").starts_with("sidecar~"));

    let server = all.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(hex(&server.parent_span_id), &tp[36..52], "the client span");
    assert_eq!(
        hex(&server.span_id),
        &tp_app[36..52],
        "the id sent to the app"
    );
    assert_eq!(string(server, "url.path"), "/");
    assert_eq!(int(server, "http.response.status_code"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_is_an_error_span_with_its_flag() {
    let (collector, got) = receiver().await;
    let yaml = bootstrap(
        1,
        &format!(
            "  mesh: {{outboundTrafficPolicy: REGISTRY_ONLY}}\n  tracing: {{sampling: 100, otlp: {{endpoint: \"http://{collector}/v1/traces\"}}}}\n"
        ),
    );
    let p = start(&yaml).await;
    let r = get_once(p.out, "unknown.example:80", &[]).await;
    assert_eq!((r.status.as_u16(), r.flags()), (502, "NR"), "{r:?}");
    tokio::task::block_in_place(|| p.proxy.flush_telemetry());
    let all = spans(&got);
    assert_eq!(all.len(), 1, "{all:#?}");
    let s = &all[0];
    assert_eq!(int(s, "http.response.status_code"), 502);
    assert_eq!(string(s, "response_flags"), "NR");
    // STATUS_CODE_ERROR
    assert_eq!(s.status.as_ref().unwrap().code, 2);
    assert!(s.parent_span_id.is_empty(), "a new trace: a root span");
}

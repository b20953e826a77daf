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
    // a sampled request on the inbound side, continuing that trace, with a tracestate and
    // the original client forwarded
    let r = get_once(
        p.proxy.inbound_addr().unwrap(),
        "ratings:9080",
        &[
            ("traceparent", &tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
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
    // OpenTelemetry's HTTP conventions for a client span
    assert_eq!(string(client, "url.scheme"), "http");
    assert_eq!(string(client, "server.address"), "ratings");
    assert_eq!(int(client, "server.port"), 9080);
    assert_eq!(string(client, "network.protocol.version"), "1.1");
    assert_eq!(string(client, "network.peer.address"), "127.0.0.1");
    assert_eq!(int(client, "network.peer.port"), i64::from(b.port()));
    assert!(attr(client, "error.type").is_none());
    assert!(attr(client, "http.request.resend_count").is_none());
    // the bodies: none sent, "ok" received
    assert_eq!(int(client, "request_size"), 0);
    assert_eq!(int(client, "response_size"), 2);

    let server = all.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(hex(&server.parent_span_id), &tp[36..52], "the client span");
    assert_eq!(
        hex(&server.span_id),
        &tp_app[36..52],
        "the id sent to the app"
    );
    assert_eq!(string(server, "url.path"), "/");
    assert!(attr(server, "url.query").is_none());
    assert_eq!(int(server, "http.response.status_code"), 200);
    // plaintext inbound: http
    assert_eq!(string(server, "url.scheme"), "http");
    assert_eq!(string(server, "client.address"), "203.0.113.7");
    assert_eq!(string(server, "network.peer.address"), "127.0.0.1");
    assert!(attr(server, "error.type").is_none());
    // the caller's tracestate is the span context's
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(client.trace_state, "", "the outbound request carried none");
}

/// `reviews`' sidecar (STRICT mTLS inbound, spans to `collector`) and a `productpage`
/// sidecar calling it over auto mTLS, spans to `collector` too: a client span whose URL is
/// `https` (the connector originated TLS) and a server span whose scheme is the original
/// client's, `http`: the client's sidecar adds `x-forwarded-proto: http` (its application
/// spoke plaintext), which the inbound sidecar keeps, as Envoy's connection managers do
/// (and Envoy's server span builds its URL from it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mtls_the_client_span_s_url_is_https_the_server_span_s_scheme_the_client_s() {
    use mesh_tls::ca::MeshCa;
    use support::mtls::{TD, client_proxy, reviews_config};

    let (collector, got) = receiver().await;
    let tracing =
        format!("  tracing: {{sampling: 100, otlp: {{endpoint: \"http://{collector}\"}}}}\n");
    let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = MeshCa::generate(TD).unwrap();
    let (app, _) = recording().await;
    let server = start(&reviews_config(
        server_dir.path(),
        &ca,
        &app,
        &format!(
            "{tracing}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
"
        ),
    ))
    .await;
    let inbound = server.proxy.inbound_addr().unwrap();

    // the client sidecar of the mTLS tests, with the tracing settings in its bootstrap
    let client = start(
        &client_proxy(client_dir.path(), &ca, inbound, "reviews", true, "").replacen(
            "spec:\n",
            &format!("spec:\n{tracing}"),
            1,
        ),
    )
    .await;

    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    tokio::task::block_in_place(|| {
        client.proxy.flush_telemetry();
        server.proxy.flush_telemetry();
    });
    let all = spans(&got);
    assert_eq!(all.len(), 2, "{all:#?}");
    let c = all.iter().find(|s| s.kind == 3).expect("a client span");
    let s = all.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(
        s.parent_span_id, c.span_id,
        "one trace, the client span the parent"
    );
    assert_eq!(string(c, "url.full"), "https://reviews:9080/");
    assert_eq!(string(c, "url.scheme"), "https");
    assert_eq!(int(c, "network.peer.port"), i64::from(inbound.port()));
    assert_eq!(string(s, "url.scheme"), "http");
    assert_eq!(int(s, "http.response.status_code"), 200);
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
    // OpenTelemetry's error.type: the status code, as a string
    assert_eq!(string(s, "error.type"), "502");
    // STATUS_CODE_ERROR
    assert_eq!(s.status.as_ref().unwrap().code, 2);
    assert!(s.parent_span_id.is_empty(), "a new trace: a root span");
}

/// A Telemetry's tracing through the real proxy: every new trace sampled
/// (`randomSamplingPercentage: 100` over the bootstrap's 0); each side's spans with its own
/// `customTags` (client: a literal, an unset environment variable's default, a request
/// header, an absent header without default; server: a literal and the header as the
/// inbound listener sent it to the application); then, by reload, the server side's spans
/// not reported (`disableSpanReporting`) while its trace headers still reach the
/// application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_samples_tags_each_side_and_turns_a_sides_spans_off_on_reload() {
    let (collector, got) = receiver().await;
    let (b, seen) = recording().await;
    let config = |extra: &str| {
        bootstrap(
            1,
            &format!(
                "  tracing: {{sampling: 0, otlp: {{endpoint: \"http://{collector}\"}}}}\n  inbound: {{address: 127.0.0.1, port: 0, localApp: 127.0.0.1:{}}}\n",
                b.port()
            ),
        ) + &service_entry("ratings", 9080, "HTTP", &[&b])
            + "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
    match: {mode: CLIENT}
    customTags:
      team: {literal: {value: bookinfo}}
      region: {environment: {name: MESH_E2E_UNSET_REGION, defaultValue: eu-west}}
      user: {header: {name: X-User}}
      absent: {header: {name: x-absent}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: namespace-default, namespace: default}
spec:
  tracing:
  - randomSamplingPercentage: 100
    match: {mode: SERVER}
    customTags:
      side: {literal: {value: server}}
      who: {header: {name: x-user}}
" + extra
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &config(""));
    let p = start_files(vec![file.clone()]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let r = get_once(p.out, "ratings:9080", &[("x-user", "jason")]).await;
    assert_eq!(r.status, 200);
    let r = get_once(inbound, "ratings:9080", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 200);
    tokio::task::block_in_place(|| p.proxy.flush_telemetry());
    let all = spans(&got);
    assert_eq!(all.len(), 2, "a client and a server span: {all:#?}");
    let client = all.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(string(client, "team"), "bookinfo");
    assert_eq!(string(client, "region"), "eu-west");
    assert_eq!(string(client, "user"), "jason");
    assert!(
        attr(client, "absent").is_none(),
        "no header, no default: no tag"
    );
    assert!(
        attr(client, "side").is_none(),
        "the server side's tags only there"
    );
    let server = all.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(string(server, "side"), "server");
    assert_eq!(string(server, "who"), "alice");
    assert!(attr(server, "team").is_none());

    // the workload's own Telemetry turns the server side's spans off
    write(
        &file,
        &config(
            "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  tracing:
  - match: {mode: SERVER}
    disableSpanReporting: true
",
        ),
    );
    p.proxy.reload().unwrap();
    let r = get_once(inbound, "ratings:9080", &[]).await;
    assert_eq!(r.status, 200);
    let to_app = seen.lock().unwrap().last().cloned().unwrap();
    let tp = to_app["traceparent"].to_str().unwrap();
    assert!(tp.ends_with("-01"), "the server side still samples: {tp}");
    tokio::task::block_in_place(|| p.proxy.flush_telemetry());
    assert_eq!(spans(&got).len(), 2, "no new span");
}

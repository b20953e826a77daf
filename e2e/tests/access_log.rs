//! Istio's access log through the real proxy (`ProxyBootstrap.accessLog`, MeshConfig's
//! `accessLogFile` / `accessLogEncoding`): one line per request, in Istio's default text
//! format or its JSON, with the response flags the proxy decided (`NR`, `UH`), the upstream
//! host and cluster, the route's name, the body bytes, the upstream service time, the
//! forwarded client, the upstream connection's local address (the address the backend saw
//! the proxy connect from), the SNI of an mTLS client and the trace id.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The body the `/ok` request sends (11 bytes).
const SENT: &str = "hello world";

/// The addresses the backend's connections came from.
type Peers = Arc<Mutex<Vec<SocketAddr>>>;

/// A backend on 127.0.0.1:0 answering `v1` (header `x-backend: v1`), keeping the address
/// each of its connections came from: the proxy's `%UPSTREAM_LOCAL_ADDRESS%`.
async fn peers_backend() -> (SocketAddr, Peers) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Peers::default();
    let p = peers.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            p.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    // read the body whole: what the proxy forwarded
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-backend", "v1")
                            .body(Full::new(Bytes::from_static(b"v1")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, peers)
}

/// `reviews` with one endpoint, the backend at `port` (version `v1`).
fn reviews_entry(port: u16) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {port}}}
    labels: {{app: reviews, version: v1}}
"
    )
}

/// What a scenario left: the lines, the backend's port and the addresses the proxy
/// connected to it from.
struct Logged {
    lines: Vec<String>,
    port: u16,
    peers: Vec<String>,
}

/// A proxy logging to `file` in `encoding`, with routes named `ok` (to `reviews` v1), and
/// `empty` (to a subset without endpoints), an inbound listener forwarding to the backend;
/// sends `POST /ok` (with a trace, `x-forwarded-for` and an 11-byte body), `/empty`,
/// `/missing` (no route) and one inbound request.
async fn scenario(encoding: &str, file: &Path) -> Logged {
    let (v1, peers) = peers_backend().await;
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: empty
    match: [{{uri: {{prefix: /empty}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - name: ok
    match: [{{uri: {{prefix: /ok}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
",
        bootstrap(
            1,
            &format!(
                "  accessLog: {{path: {}, encoding: {encoding}}}\n  inbound: {{address: 127.0.0.1, port: 0, localApp: 127.0.0.1:{}}}\n",
                file.display(),
                v1.port()
            )
        ),
        reviews_entry(v1.port()),
        destination_rule("reviews", &["v1", "v9"], ""),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut b = http::Request::builder()
            .uri(path)
            .header("host", "reviews")
            .header("user-agent", "e2e-client");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(full("")).unwrap()
    };
    let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let mut post = get(
        "/ok",
        &[
            ("traceparent", &tp),
            ("x-request-id", "req-ok"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
    );
    *post.method_mut() = http::Method::POST;
    *post.body_mut() = full(SENT);
    let r = c.send(post).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "v1"), "{r:?}");
    let r = c.send(get("/empty", &[])).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "UH"), "{r:?}");
    let r = c.send(get("/missing", &[])).await;
    assert_eq!((r.status.as_u16(), r.flags()), (404, "NR"), "{r:?}");
    let inbound = p.proxy.inbound_addr().unwrap();
    let r = get_once(inbound, "reviews", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    // every line queued so far is in the file (no waiting on the writer thread's timing)
    p.proxy.flush_telemetry();
    let (status, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_telemetry_dropped_total{sink=\"access_log\"}"
        ),
        0.0,
        "nothing dropped"
    );
    let text = std::fs::read_to_string(file).unwrap();
    let peers = peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    Logged {
        lines: text.lines().map(str::to_owned).collect(),
        port: v1.port(),
        peers,
    }
}

fn line<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

#[tokio::test]
async fn text_lines_are_istio_s_default_format_with_flags_upstream_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let Logged { lines, port, peers } = scenario("TEXT", &file).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");

    let ok = line(&lines, "/ok ");
    assert!(ok.starts_with('['), "{ok}");
    assert!(
        ok.contains("] \"POST /ok HTTP/1.1\" 200 - via_upstream - \"-\" "),
        "{ok}"
    );
    assert!(
        ok.contains(&format!(
            "\"10.1.2.3\" \"e2e-client\" \"req-ok\" \"reviews\" \"127.0.0.1:{port}\" outbound|9080|v1|reviews.default.svc.cluster.local "
        )),
        "{ok}"
    );
    assert!(ok.ends_with(" - ok"), "route name last: {ok}");
    // %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%: the
    // bodies ("hello world", "v1"), not the heads
    let fields: Vec<&str> = ok.split(' ').collect();
    let at = fields.iter().position(|f| *f == "\"-\"").unwrap();
    assert_eq!((fields[at + 1], fields[at + 2]), ("11", "2"), "{ok}");
    let duration: u64 = fields[at + 3].parse().unwrap();
    let service: u64 = fields[at + 4].parse().unwrap();
    assert!(service <= duration, "{ok}");
    // %UPSTREAM_LOCAL_ADDRESS%: where the backend saw the proxy connect from; then
    // %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% (none:
    // plaintext) %ROUTE_NAME%
    let n = fields.len();
    assert!(peers.contains(&fields[n - 5].to_string()), "{ok} {peers:?}");
    assert_eq!(fields[n - 2], "-", "no SNI over plaintext: {ok}");

    let uh = line(&lines, "/empty ");
    assert!(
        uh.contains("\"GET /empty HTTP/1.1\" 503 UH no_healthy_upstream "),
        "{uh}"
    );
    // the local reply's body ("no healthy upstream"), no upstream service time, nothing
    // forwarded, no upstream connection
    assert!(uh.contains(" - \"-\" 0 19 "), "{uh}");
    let fields: Vec<&str> = uh.split(' ').collect();
    let at = fields.iter().position(|f| *f == "\"-\"").unwrap();
    assert_eq!((fields[at + 4], fields[at + 5]), ("-", "\"-\""), "{uh}");
    assert_eq!(fields[fields.len() - 5], "-", "{uh}");
    assert!(
        uh.contains("\"-\" - "),
        "no upstream host nor cluster: {uh}"
    );
    assert!(uh.ends_with(" - empty"), "{uh}");

    let nr = line(&lines, "/missing ");
    assert!(
        nr.contains("\"GET /missing HTTP/1.1\" 404 NR route_not_found "),
        "{nr}"
    );
    assert!(nr.ends_with(" - -"), "no route, no name: {nr}");
}

#[tokio::test]
async fn json_lines_have_istio_s_keys_and_the_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    let Logged { lines, port, peers } = scenario("JSON", &file).await;
    let all: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(all.len(), 4, "{lines:#?}");
    let by_path = |p: &str| {
        all.iter()
            .find(|v| v["path"] == p && v["upstream_cluster"] != format!("inbound|{port}||"))
            .unwrap_or_else(|| panic!("no {p} in {lines:#?}"))
    };

    let ok = by_path("/ok");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["response_code_details"], "via_upstream");
    assert_eq!(ok["upstream_host"], format!("127.0.0.1:{port}"));
    assert_eq!(
        ok["upstream_cluster"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(ok["route_name"], "ok");
    assert_eq!(ok["request_id"], "req-ok");
    assert_eq!(ok["user_agent"], "e2e-client");
    assert_eq!(ok["authority"], "reviews");
    assert_eq!(ok["trace_id"], TRACE);
    // the bodies ("hello world", "v1"), as Envoy counts them
    assert_eq!(ok["bytes_received"], 11);
    assert_eq!(ok["bytes_sent"], 2);
    let duration = ok["duration"].as_u64().unwrap();
    // a header's value in Envoy's JSON: a string of milliseconds
    let service: u64 = ok["upstream_service_time"]
        .as_str()
        .unwrap_or_else(|| panic!("{ok}"))
        .parse()
        .unwrap();
    assert!(service <= duration, "{ok}");
    assert_eq!(ok["x_forwarded_for"], "10.1.2.3");
    let local = ok["upstream_local_address"].as_str().unwrap().to_string();
    assert!(peers.contains(&local), "{local} not in {peers:?}");
    assert_eq!(ok["requested_server_name"], serde_json::Value::Null);
    assert!(
        ok["downstream_remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let uh = by_path("/empty");
    assert_eq!(
        (uh["response_code"].as_u64(), uh["response_flags"].as_str()),
        (Some(503), Some("UH"))
    );
    assert_eq!(uh["upstream_host"], serde_json::Value::Null);
    assert_eq!(uh["route_name"], "empty");
    assert_eq!(
        (uh["bytes_received"].as_u64(), uh["bytes_sent"].as_u64()),
        (Some(0), Some(19))
    );
    assert_eq!(uh["upstream_service_time"], serde_json::Value::Null);
    assert_eq!(uh["upstream_local_address"], serde_json::Value::Null);
    assert_eq!(uh["x_forwarded_for"], serde_json::Value::Null);

    let nr = by_path("/missing");
    assert_eq!(
        (nr["response_code"].as_u64(), nr["response_flags"].as_str()),
        (Some(404), Some("NR"))
    );
    assert_eq!(nr["route_name"], serde_json::Value::Null);

    // the inbound side logs too: Istio's inbound cluster, the local application, a trace id
    // (the inbound listener starts or continues a trace as the outbound one does)
    let inbound = all
        .iter()
        .find(|v| v["upstream_cluster"] == format!("inbound|{port}||"))
        .unwrap_or_else(|| panic!("no inbound line in {lines:#?}"));
    assert_eq!(inbound["response_code"], 200);
    assert_eq!(inbound["upstream_host"], format!("127.0.0.1:{port}"));
    assert_eq!(inbound["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(
        (
            inbound["bytes_received"].as_u64(),
            inbound["bytes_sent"].as_u64()
        ),
        (Some(0), Some(2))
    );
    // the inbound connection to the application is an upstream connection too
    let local = inbound["upstream_local_address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(peers.contains(&local), "{local} not in {peers:?}");
    assert!(inbound["upstream_service_time"].is_string(), "{inbound}");
}

/// `reviews`' sidecar under `STRICT` mTLS logging JSON to `file`, its application the
/// backend at `app`; `reviews_config`'s own application is replaced by it.
fn mtls_reviews(dir: &Path, ca: &mesh_tls::ca::MeshCa, app: &Backend, file: &Path) -> String {
    let config = support::mtls::reviews_config(
        dir,
        ca,
        app,
        &format!(
            "  accessLog: {{path: {}, encoding: JSON}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
",
            file.display()
        ),
    );
    assert!(config.contains("  accessLog:"), "{config}");
    config
}

#[tokio::test]
async fn an_mtls_inbound_line_has_the_sni_the_upstream_local_address_and_the_bodies_bytes() {
    use support::mtls::client_tls;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    let ca = mesh_tls::ca::MeshCa::generate(support::mtls::TD).unwrap();
    // the application: a backend that keeps its peers' addresses, in place of
    // `reviews_config`'s own (whose port it takes in the configuration)
    let placeholder = backend("app").await;
    let (app, peers) = peers_backend().await;
    let config = mtls_reviews(dir.path(), &ca, &placeholder, &file).replace(
        &format!("127.0.0.1:{}", placeholder.port()),
        &format!("127.0.0.1:{}", app.port()),
    );
    let p = start(&config).await;
    let inbound = p.proxy.inbound_addr().unwrap();

    // an mTLS client asking for Istio's SNI of the service, sending a 5-byte body
    let sni = "outbound_.9080_._.reviews.default.svc.cluster.local";
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
    let tls = client_tls(&ca, "productpage");
    let stream = tls.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("PUT")
        .uri("/reviews/1")
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"v1");

    p.proxy.flush_telemetry();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v = &lines[0];
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v["requested_server_name"], sni);
    assert_eq!(
        (v["bytes_received"].as_u64(), v["bytes_sent"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(v["upstream_host"], format!("127.0.0.1:{}", app.port()));
    assert_eq!(v["upstream_cluster"], format!("inbound|{}||", app.port()));
    let local = v["upstream_local_address"].as_str().unwrap().to_string();
    let peers: Vec<String> = peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(peers, [local], "the one connection to the application");
    assert!(v["upstream_service_time"].is_string(), "{v}");
    assert_eq!(v["downstream_local_address"], inbound.to_string());
}

/// A request body of unknown length (HTTP/1.1 `chunked`, an HTTP/2 stream without
/// `content-length`) counts the bytes the proxy read of it, as Envoy's `%BYTES_RECEIVED%`,
/// and Istio's `istio_request_bytes` counts them with the head.
#[tokio::test]
async fn a_body_of_unknown_length_counts_the_bytes_the_proxy_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    // the upstream reads the whole body before it answers: an answer that came first would
    // end the exchange with the bytes read so far (the count is then racy by design)
    let read_all: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 23);
            Response::new(full("v1"))
        })
    });
    let up = backend_with("v1", read_all).await;
    let yaml = bootstrap(
        1,
        &format!(
            "  accessLog: {{path: {}, encoding: JSON}}\n",
            file.display()
        ),
    ) + &service_entry("reviews", 9080, "HTTP", &[&up]);
    let p = start(&yaml).await;
    let chunks = || {
        let frames = ["0123456789", "abcdefghij", "xyz"].map(|c| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                Bytes::from(c),
            ))
        });
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    };
    let post = |path: &str| {
        Request::builder()
            .method("POST")
            .uri(format!("http://reviews:9080{path}"))
            .header("host", "reviews:9080")
            .body(chunks())
            .unwrap()
    };
    // HTTP/1.1: a body without a length is sent chunked
    let r = H1::connect(p.out).await.send(post("/h1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    // HTTP/2: a stream without content-length
    let mut tx = h2(p.out).await;
    bounded(tx.ready()).await.unwrap();
    let res = bounded(tx.send_request(post("/h2"))).await.unwrap();
    assert_eq!(res.status(), 200);
    let _ = bounded(res.into_body().collect()).await.unwrap();
    p.proxy.flush_telemetry();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for path in ["/h1", "/h2"] {
        let line = lines
            .iter()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {text}"));
        assert_eq!(line["bytes_received"], 23, "{path}: {line}");
    }
    // Istio's request size: the heads and the 46 body bytes
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    let sum: f64 = stats
        .lines()
        .filter(|l| l.starts_with("istio_request_bytes_sum{") && l.contains("reporter=\"source\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(sum >= 46.0 + 2.0 * 30.0, "{sum}: {stats}");
}

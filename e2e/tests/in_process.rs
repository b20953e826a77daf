//! The in-process stacks of `mesh-stack` on real sockets: the client stack over the
//! project's connector and over hyper_util's client, live reloads and discovery feeds under
//! traffic, and the server stack behind the workload's mTLS (issue 16).

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::compile::Endpoint;
use mesh_core::ext::PeerIdentity;
use mesh_lb::discover::{DiscoveredEndpoint, EndpointSet};
use mesh_stack::{Mesh, RequestBody, ServiceBuilderExt};
use mesh_tls::ca::MeshCa;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

const HOST: &str = "reviews.default.svc.cluster.local";

fn config(backends: &[&Backend], vs: &str) -> String {
    format!(
        "{}{}{vs}",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", backends)
    )
}

/// A VirtualService for reviews with retries (5xx, 2 attempts) and a timeout.
const RETRYING_VS: &str = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    timeout: 5s
    retries: {attempts: 2, retryOn: 5xx}
";

fn get(host: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{host}/reviews/1"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A backend answering 503 to its first request and its name afterwards.
async fn flaky(name: &'static str) -> Backend {
    let seen = Arc::new(AtomicUsize::new(0));
    backend_with(
        name,
        Arc::new(move |_req| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let status = if n == 0 { 503 } else { 200 };
                Response::builder()
                    .status(status)
                    .header("x-backend", name)
                    .body(full(name))
                    .unwrap()
            })
        }),
    )
    .await
}

#[tokio::test]
async fn client_stack_over_the_connector_retries_a_503_and_records_source_metrics() {
    let b = flaky("v1").await;
    let mesh = Mesh::from_yaml("mesh.yaml", &config(&[&b], RETRYING_VS)).unwrap();
    let client = mesh.client();
    let res = bounded(client.clone().oneshot(get("reviews:9080")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-backend"], "v1");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "v1");
    // the 503 was retried: two attempts reached the upstream
    assert_eq!(b.hits(), 2);
    let text = mesh.metrics().encode_to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"source\""))
        .unwrap_or_else(|| panic!("no source istio_requests_total in\n{text}"));
    assert!(line.contains("response_code=\"200\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");

    // a host nothing serves, under REGISTRY_ONLY: the proxy's answer, 502 NR
    let registry_only = format!(
        "{}{}{RETRYING_VS}",
        bootstrap(1, "  mesh: {outboundTrafficPolicy: REGISTRY_ONLY}\n"),
        service_entry("reviews", 9080, "HTTP", &[&b])
    );
    mesh.reload_yaml("mesh.yaml", &registry_only).unwrap();
    let res = bounded(client.oneshot(get("nowhere"))).await.unwrap();
    assert_eq!(res.headers()[FLAGS], "NR");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn client_stack_over_hyper_util_client_routes_by_host() {
    let b = backend("v1").await;
    let mesh = Mesh::from_yaml("mesh.yaml", &config(&[&b], RETRYING_VS)).unwrap();
    let hyper_client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<RequestBody>();
    let client = mesh.client_layer().wrap_uri_client(hyper_client);
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default.svc.cluster.local:9080",
    ] {
        let res = bounded(client.clone().oneshot(get(host))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{host}");
        assert_eq!(res.headers()["x-backend"], "v1", "{host}");
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_discovery_updates_under_traffic_drop_no_request() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let mesh = Mesh::from_yaml("mesh.yaml", &config(&[&a], RETRYING_VS)).unwrap();
    let client = mesh.client();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (client, stop, failures, sent) =
            (client.clone(), stop.clone(), failures.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let res = client.clone().oneshot(get("reviews")).await.unwrap();
                let ok = res.status() == StatusCode::OK;
                let body = res.into_body().collect().await;
                if !ok || body.is_err() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    eventually("traffic reaches a", || async { a.hits() >= 50 }).await;

    // a reload moves the service to b
    mesh.reload_yaml("mesh.yaml", &config(&[&b], RETRYING_VS))
        .unwrap();
    eventually("traffic reaches b", || async { b.hits() >= 50 }).await;

    // a bad reload changes nothing: traffic stays on b
    let bad = config(&[&c], RETRYING_VS).replace("attempts: 2", "attempts: -2");
    let err = mesh.reload_yaml("bad.yaml", &bad).unwrap_err();
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    let on_b = b.hits();
    eventually("traffic stays on b", || async { b.hits() >= on_b + 50 }).await;
    assert_eq!(c.hits(), 0);

    // the service's own discovery moves it to c
    let mut ep = Endpoint::new("127.0.0.1");
    ep.ports.insert("http".into(), u32::from(c.port()));
    mesh.endpoints().publish(
        HOST,
        EndpointSet {
            endpoints: vec![DiscoveredEndpoint {
                ip: "127.0.0.1".parse().unwrap(),
                endpoint: Arc::new(ep),
            }],
        },
    );
    eventually("traffic reaches c", || async { c.hits() >= 50 }).await;

    stop.store(true, Ordering::SeqCst);
    for s in senders {
        bounded(s).await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    // every request was answered by one of the three (none lost, none doubled: no retries
    // were needed)
    assert_eq!(a.hits() + b.hits() + c.hits(), sent.load(Ordering::SeqCst));
}

/// The `reviews` workload's configuration with STRICT mTLS and an AuthorizationPolicy that
/// allows `productpage` only.
fn strict_server_config(dir: &std::path::Path, ca: &MeshCa) -> String {
    let cert = ca
        .issue(&mtls::id("reviews"), Duration::from_secs(3600))
        .unwrap();
    std::fs::write(dir.join("reviews.pem"), &cert.chain_pem).unwrap();
    std::fs::write(dir.join("reviews.key"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: in-process}}
spec:
  workload: {{name: reviews-v1, namespace: default, serviceAccount: reviews, labels: {{app: reviews}}}}
  identity:
    spiffeId: spiffe://cluster.local/ns/default/sa/reviews
    certificateChain: {d}/reviews.pem
    privateKey: {d}/reviews.key
    trustBundle: {d}/ca.pem
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage]}}}}]
",
        d = dir.display()
    )
}

/// One HTTP/1.1 request over `who`'s mTLS to `addr`.
async fn mtls_get(
    addr: std::net::SocketAddr,
    ca: &MeshCa,
    who: &str,
) -> std::io::Result<Response<Incoming>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name =
        rustls::pki_types::ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
    let tls = mtls::client_tls(ca, who).connect(name, tcp).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    send.send_request(
        Request::get("/reviews/1")
            .header("host", "reviews")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .map_err(std::io::Error::other)
}

#[tokio::test]
async fn server_stack_behind_mtls_enforces_peer_authentication_and_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(mtls::TD).unwrap();
    let mesh = Mesh::from_yaml("reviews.yaml", &strict_server_config(dir.path(), &ca)).unwrap();
    let app = tower::service_fn(|req: Request<Incoming>| async move {
        // the peer's identity reaches the application as the proxy hands it to the layers
        let who = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.principal().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
    });
    let svc = ServiceBuilder::new().mesh_server(&mesh).service(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(mesh_stack::serve(listener, mesh.acceptor(), svc));

    // productpage is allowed, and the app sees its identity
    let res = bounded(mtls_get(addr, &ca, "productpage")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "cluster.local/ns/default/sa/productpage");

    // ratings has a valid certificate, but the policy does not allow it: RBAC
    let res = bounded(mtls_get(addr, &ca, "ratings")).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()[FLAGS], "RBAC");

    // STRICT: plaintext gets no answer (the handshake fails and the connection closes)
    let reply = bounded(raw(addr, b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n")).await;
    assert!(!reply.starts_with("HTTP/1.1 200"), "{reply}");

    // the server side's metrics
    let text = mesh.metrics().encode_to_string();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_code=\"403\"")
        })
        .unwrap_or_else(|| panic!("no destination 403 in\n{text}"));
    assert!(
        line.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/ratings\""),
        "{line}"
    );
    server.abort();
}

#[tokio::test]
async fn server_stack_forwards_the_trace_to_the_client_stack_in_process() {
    let echo = backend_with(
        "echo",
        Arc::new(|req: Request<Incoming>| {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            Box::pin(async move { Response::builder().body(full(tp)).unwrap() })
        }),
    )
    .await;
    let mesh = Mesh::from_yaml("mesh.yaml", &config(&[&echo], RETRYING_VS)).unwrap();
    let client = mesh.client();
    // the application calls reviews while serving: no trace header copied by hand
    let app = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = client.oneshot(get("reviews")).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }
    });
    let server = ServiceBuilder::new().mesh_server(&mesh).service(app);
    let inbound = Request::get("http://reviews/")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = bounded(server.oneshot(inbound)).await.unwrap();
    let tp = res.into_body().collect().await.unwrap().to_bytes();
    let tp = String::from_utf8(tp.to_vec()).unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "outbound traceparent {tp:?}"
    );
    // a span of its own
    assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
}

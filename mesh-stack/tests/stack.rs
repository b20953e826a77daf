//! `mesh-stack`'s API in memory, no network (the real-socket tests are in
//! `e2e/tests/in_process.rs`): `ServiceBuilderExt::mesh_client` around a user's client,
//! [`SyncBody`], and a tonic client over a user's URI client (what a tonic `Channel` is)
//! talking to a tonic server method inside the server stack: retries on a gRPC status,
//! consistent hashing by a metadata key, a `grpc-timeout` deadline answered as Envoy
//! answers it, and `grpc_response_status` on both sides (issue 16).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use mesh_core::MeshBody;
use mesh_stack::client::SyncBody;
use mesh_stack::{Mesh, RequestBody, ServiceBuilderExt};
use tonic::server::UnaryService;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::{ServiceBuilder, ServiceExt};
use tower_layer::Layer;

/// `reviews` on two endpoints (`port` names the protocol), with `vs` as its VirtualService.
fn mesh(protocol: &str, dr: &str, vs: &str) -> Mesh {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: p, protocol: {protocol}}}]
  endpoints: [{{address: 10.0.0.1}}, {{address: 10.0.0.2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
{dr}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews}}}}]
{vs}"
    );
    Mesh::from_yaml("mesh.yaml", &yaml).unwrap()
}

fn istio_requests(mesh: &Mesh, needles: &[&str]) -> u64 {
    mesh.metrics()
        .encode_to_string()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && needles.iter().all(|n| l.contains(n)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn service_builder_ext_mesh_client_routes_balances_and_retries_around_a_users_client() {
    let mesh = mesh(
        "HTTP",
        "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n",
        "    retries: {attempts: 2, retryOn: 5xx}\n",
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    // the user's client: its first answer is a 503
    let client =
        ServiceBuilder::new()
            .mesh_client(&mesh)
            .service_fn(move |req: Request<RequestBody>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let to = mesh_core::ext::selected_upstream(req.extensions())
                    .unwrap()
                    .endpoint()
                    .addr;
                async move {
                    let status = if n == 0 { 503 } else { 200 };
                    let res = Response::builder()
                        .status(status)
                        .body(MeshBody::<Full<Bytes>>::local(to.to_string()))
                        .unwrap();
                    Ok::<_, Infallible>(res)
                }
            });
    let mut to = BTreeSet::new();
    for _ in 0..4 {
        let req = Request::get("http://reviews:9080/r")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        to.insert(res.into_body().collect().await.unwrap().to_bytes());
    }
    // the 503 retried (5 calls for 4 requests); round robin reaches both endpoints
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let to: Vec<_> = to.into_iter().collect();
    assert_eq!(to, ["10.0.0.1:9080", "10.0.0.2:9080"]);
    assert_eq!(
        istio_requests(&mesh, &["reporter=\"source\"", "response_code=\"200\""]),
        4
    );
    // a host nothing routes: the proxy's own answer, the user's client never called
    let req = Request::get("http://ratings:9080/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.clone().oneshot(req).await.unwrap();
    assert_ne!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn sync_body_passes_data_trailers_and_the_end_through() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"ab"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut body = SyncBody::new(StreamBody::new(futures_util::stream::iter(frames)));
    assert!(!body.is_end_stream());
    let data = body.frame().await.unwrap().unwrap();
    assert_eq!(data.into_data().unwrap(), "ab");
    let t = body.frame().await.unwrap().unwrap();
    assert_eq!(t.into_trailers().unwrap()["grpc-status"], "0");
    assert!(body.frame().await.is_none());

    let full = SyncBody::new(Full::new(Bytes::from_static(b"xyz")));
    assert_eq!(full.size_hint().exact(), Some(3));
    let collected = full.collect().await.unwrap().to_bytes();
    assert_eq!(collected, "xyz");
}

/// The request of `reviews.Reviews/Get` (what protoc generates from a two-field message).
#[derive(Clone, PartialEq, prost::Message)]
struct GetReview {
    #[prost(string, tag = "1")]
    request_id: String,
    #[prost(bool, tag = "2")]
    flaky: bool,
}

/// The answer.
#[derive(Clone, PartialEq, prost::Message)]
struct Review {
    #[prost(string, tag = "1")]
    text: String,
}

/// Answers UNAVAILABLE to the first attempt of a flaky request.
#[derive(Clone, Default)]
struct Reviews {
    seen: Arc<Mutex<HashSet<String>>>,
    unavailable: Arc<AtomicUsize>,
}

impl UnaryService<GetReview> for Reviews {
    type Response = Review;
    type Future = Ready<Result<tonic::Response<Review>, Status>>;

    fn call(&mut self, req: tonic::Request<GetReview>) -> Self::Future {
        let m = req.into_inner();
        if m.flaky && self.seen.lock().unwrap().insert(m.request_id.clone()) {
            self.unavailable.fetch_add(1, Ordering::SeqCst);
            return ready(Err(Status::unavailable("warming up")));
        }
        ready(Ok(tonic::Response::new(Review { text: "ok".into() })))
    }
}

/// Answers after a second.
struct Slow;

impl UnaryService<GetReview> for Slow {
    type Response = Review;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Review>, Status>> + Send + 'static>>;

    fn call(&mut self, _req: tonic::Request<GetReview>) -> Self::Future {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(tonic::Response::new(Review::default()))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn tonic_client_over_a_users_uri_client_to_a_tonic_server_in_the_server_stack() {
    let client_mesh = mesh(
        "GRPC",
        "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n",
        "    timeout: 5s\n    retries: {attempts: 2, retryOn: unavailable}\n",
    );
    let server_mesh = Mesh::from_yaml("server.yaml", "").unwrap();
    let reviews = Reviews::default();
    let methods = {
        let reviews = reviews.clone();
        tower::service_fn(move |req: Request<RequestBody>| {
            let reviews = reviews.clone();
            async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Review, GetReview>::default());
                Ok::<_, Infallible>(match req.uri().path() {
                    "/reviews.Reviews/Get" => grpc.unary(reviews, req).await,
                    "/reviews.Reviews/Slow" => grpc.unary(Slow, req).await,
                    _ => Status::unimplemented("no such method").into_http(),
                })
            }
        })
    };
    // the server: tonic's methods inside the mesh's server stack
    let server = server_mesh.server_layer().layer(methods);
    // the user's URI client: it "sends" to the server in memory and notes where the URI
    // (rewritten by the mesh to the chosen endpoint) points
    let sent_to = Arc::new(Mutex::new(Vec::<String>::new()));
    let uri_client = {
        let sent_to = sent_to.clone();
        tower::service_fn(move |req: Request<RequestBody>| {
            sent_to
                .lock()
                .unwrap()
                .push(req.uri().authority().unwrap().to_string());
            server.clone().oneshot(req)
        })
    };
    let stack = ServiceBuilder::new()
        .map_request(|r: Request<tonic::body::Body>| r.map(SyncBody::new))
        .service(client_mesh.client_layer().wrap_uri_client(uri_client));
    let mut grpc = tonic::client::Grpc::with_origin(stack, "http://reviews:9080".parse().unwrap());

    let mut call = async |path: &'static str, user: &str, m: GetReview, deadline: Option<u64>| {
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(m);
        req.metadata_mut().insert("x-user", user.parse().unwrap());
        if let Some(ms) = deadline {
            req.set_timeout(Duration::from_millis(ms));
        }
        let codec = ProstCodec::<GetReview, Review>::default();
        grpc.unary(req, PathAndQuery::from_static(path), codec)
            .await
    };
    let get = |id: usize, flaky: bool| GetReview {
        request_id: id.to_string(),
        flaky,
    };

    // consistent hashing by the x-user metadata key: each user's calls on one endpoint
    let mut endpoints = BTreeSet::new();
    for (i, user) in ["alice", "bob", "carol", "dave", "erin", "frank"]
        .iter()
        .enumerate()
    {
        sent_to.lock().unwrap().clear();
        for j in 0..5 {
            let got = call("/reviews.Reviews/Get", user, get(i * 10 + j, false), None).await;
            assert_eq!(got.unwrap().into_inner().text, "ok");
        }
        let to: BTreeSet<_> = sent_to.lock().unwrap().drain(..).collect();
        assert_eq!(to.len(), 1, "{user}: {to:?}");
        endpoints.extend(to);
    }
    assert!(
        endpoints.iter().all(|e| e.starts_with("10.0.0.")),
        "{endpoints:?}"
    );

    // retries on the gRPC status UNAVAILABLE
    for id in 100..110 {
        let got = call("/reviews.Reviews/Get", "gina", get(id, true), None).await;
        assert_eq!(got.unwrap().into_inner().text, "ok");
    }
    assert_eq!(reviews.unavailable.load(Ordering::SeqCst), 10);

    // a grpc-timeout shorter than the method: Envoy's gRPC answer to a timeout
    let status = call("/reviews.Reviews/Slow", "hal", get(200, false), Some(100))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream request timeout");

    // grpc_response_status on both sides
    let source = |grpc: &str| {
        istio_requests(
            &client_mesh,
            &[
                "reporter=\"source\"",
                &format!("grpc_response_status=\"{grpc}\""),
            ],
        )
    };
    assert_eq!(source("0"), 40);
    assert_eq!(source("14"), 1);
    let destination = |grpc: &str| {
        istio_requests(
            &server_mesh,
            &[
                "reporter=\"destination\"",
                &format!("grpc_response_status=\"{grpc}\""),
            ],
        )
    };
    assert_eq!(destination("0"), 40);
    assert_eq!(destination("14"), 10);
}

/// The Sidecar's inbound connection pools limit a proxy's connections to the application;
/// in-process there is none, and the mesh says so (with file, line and field) rather than
/// accept them silently.
#[test]
fn inbound_connection_pools_are_announced_as_not_applied_in_process() {
    let mesh = Mesh::from_yaml(
        "mesh.yaml",
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: b}
spec:
  workload: {name: reviews-v1, namespace: default, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  inboundConnectionPool:
    http: {http2MaxRequests: 10}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:9080
    connectionPool: {tcp: {maxConnections: 5}}
",
    )
    .unwrap();
    let warnings: Vec<String> = mesh.warnings().iter().map(|d| d.to_string()).collect();
    for (line, field) in [
        (12, "spec.inboundConnectionPool"),
        (17, "spec.ingress[0].connectionPool"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("mesh.yaml:{line}:"))
                    && w.contains(field)
                    && w.contains("not applied in-process")),
            "{field}: {warnings:?}"
        );
    }
}

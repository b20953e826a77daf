//! What `mesh-stack`'s full client stack adds to each request a service sends, against the
//! same client without it (issue 16's goal: under 2 µs with routing, balancing, retry,
//! timeout and telemetry on).
//!
//! The configuration ([`MESH`]): a ServiceEntry of two endpoints balanced `ROUND_ROBIN`, a
//! VirtualService with a header match, `retries: {attempts: 2, retryOn: 5xx}` and a
//! `timeout`, Istio's metrics recorded (`reporter="source"`). Two pairs, each measured in
//! one run:
//!
//! - `in_memory/*`: a client that answers `200` at once (as an infinitely fast upstream):
//!   `bare` is the client alone, `mesh` the stack around it; the difference is the stack's
//!   own cost per request.
//! - `loopback/*`: hyper_util's legacy client (HTTP/1.1, pooled) to a hyper echo server on
//!   127.0.0.1, one request at a time: `bare_hyper` is the client alone, `mesh_hyper` the
//!   stack around the same client (`ClientLayer::wrap_uri_client`).
//!
//! `cargo bench -p mesh-benches --bench client_stack`
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_stack::{Mesh, RequestBody};
use tower_service::Service;

/// The client's mesh: `{A}` and `{B}` are the endpoints' ports.
const MESH: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: {A}}}, {address: 127.0.0.1, ports: {http: {B}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-canary: {exact: 'yes'}}}]
    route: [{destination: {host: reviews}}]
    timeout: 1s
  - route: [{destination: {host: reviews}}]
    timeout: 5s
    retries: {attempts: 2, retryOn: 5xx}
";

/// A client that answers `200` at once.
#[derive(Clone)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        black_box(req.uri());
        ready(Ok(Response::new(Empty::new())))
    }
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// A hyper HTTP/1.1 server answering `ok` on 127.0.0.1, port 0.
async fn echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// One request through `svc`, its body read to the end.
async fn send<S, B>(svc: &mut S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect("ready");
    let res = svc.call(req).await.expect("answered");
    assert_eq!(res.status(), 200);
    black_box(res.into_body().collect().await.expect("body"));
}

fn client_stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (a, b) = rt.block_on(async { (echo().await, echo().await) });
    let yaml = MESH
        .replace("{A}", &a.port().to_string())
        .replace("{B}", &b.port().to_string());
    let mesh = Mesh::from_yaml("mesh.yaml", &yaml).expect("the bench's mesh");
    let mut g = c.benchmark_group("client_stack");

    // in memory: the stack's own cost
    let mut bare = Noop;
    g.bench_function("in_memory/bare", |bench| {
        bench.iter(|| rt.block_on(send(&mut bare, get("http://reviews:9080/r"))))
    });
    let mut meshed = mesh.client_layer().wrap_uri_client(Noop);
    g.bench_function("in_memory/mesh", |bench| {
        bench.iter(|| rt.block_on(send(&mut meshed, get("http://reviews:9080/r"))))
    });

    // over loopback: hyper_util's client alone, then inside the stack
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let direct = format!("http://{a}/r");
    let mut bare = hyper.clone();
    g.bench_function("loopback/bare_hyper", |bench| {
        bench.iter(|| rt.block_on(send(&mut bare, get(&direct))))
    });
    let hyper = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
    let mut meshed = mesh.client_layer().wrap_uri_client(hyper);
    g.bench_function("loopback/mesh_hyper", |bench| {
        bench.iter(|| rt.block_on(send(&mut meshed, get("http://reviews:9080/r"))))
    });
    g.finish();

    // the stack did what it says: every request recorded in Istio's metrics
    let text = mesh.metrics().encode_to_string();
    assert!(
        text.contains("reporter=\"source\""),
        "no source metrics:\n{text}"
    );
}

criterion_group!(benches, client_stack);
criterion_main!(benches);

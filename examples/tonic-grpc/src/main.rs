//! A tonic gRPC client and server inside the mesh, with no protoc and no sidecar: the
//! messages are prost structs written by hand, and tonic's own transport carries the calls
//! with the mesh's stacks in it.
//!
//! ```text
//! tonic::client::Grpc ─► SyncBody ─► mesh client stack (route, consistent hash on x-user,
//!     retries on UNAVAILABLE, deadline) ─► Channels: a tonic::transport::Channel per endpoint
//!     ─► tonic::transport::Server::builder().layer(mesh server stack: metrics,
//!     reporter="destination") ─► tonic::server::Grpc ─► Reviews
//! ```
//!
//! It starts three `reviews` instances and prints: each user's calls staying on one instance
//! (consistent hashing by the `x-user` metadata key), calls that fail once with UNAVAILABLE
//! and are retried by the mesh, a call whose deadline is shorter than the method, and
//! Istio's `istio_requests_total` with `grpc_response_status` from both sides.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::error::Error;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use mesh_stack::client::SyncBody;
use mesh_stack::{Mesh, RequestBody};
use tonic::server::UnaryService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn Error + Send + Sync>;

/// `reviews.Reviews/Get`'s request (what protoc would generate from
/// `message GetReview { string product = 1; string request_id = 2; bool flaky = 3; }`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetReview {
    /// The product.
    #[prost(string, tag = "1")]
    pub product: String,
    /// The caller's id for this request (the same on every retry).
    #[prost(string, tag = "2")]
    pub request_id: String,
    /// Answer UNAVAILABLE the first time this request id is seen.
    #[prost(bool, tag = "3")]
    pub flaky: bool,
}

/// The answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Review {
    /// The review.
    #[prost(string, tag = "1")]
    pub text: String,
    /// The instance that answered.
    #[prost(string, tag = "2")]
    pub served_by: String,
}

const GET: &str = "/reviews.Reviews/Get";
const SLOW: &str = "/reviews.Reviews/Slow";

/// The `Get` method of one instance.
#[derive(Clone)]
struct Reviews {
    name: &'static str,
    seen: Arc<Mutex<HashSet<String>>>,
    unavailable: Arc<AtomicUsize>,
}

impl UnaryService<GetReview> for Reviews {
    type Response = Review;
    type Future = Ready<Result<Response<Review>, Status>>;

    fn call(&mut self, req: Request<GetReview>) -> Self::Future {
        let m = req.into_inner();
        let first = self.seen.lock().map(|mut s| s.insert(m.request_id.clone()));
        if m.flaky && first.unwrap_or(false) {
            self.unavailable.fetch_add(1, Ordering::SeqCst);
            return ready(Err(Status::unavailable("warming up")));
        }
        let text = format!("review of {}", m.product);
        ready(Ok(Response::new(Review {
            text,
            served_by: self.name.into(),
        })))
    }
}

/// The `Slow` method: answers after a second.
struct Slow;

impl UnaryService<GetReview> for Slow {
    type Response = Review;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Review>, Status>> + Send>>;

    fn call(&mut self, _req: Request<GetReview>) -> Self::Future {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(Response::new(Review::default()))
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("tonic-grpc: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    // the server side: one mesh (its workload, its metrics) for the three instances
    let server_mesh = Mesh::from_yaml("server.yaml", SERVER_YAML)?;
    let (seen, unavailable) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
    let mut addrs = Vec::new();
    for name in ["a", "b", "c"] {
        let reviews = Reviews {
            name,
            seen: Arc::clone(&seen),
            unavailable: unavailable.clone(),
        };
        addrs.push(instance(&server_mesh, reviews).await?);
    }
    println!("upstreams: a {}, b {}, c {}", addrs[0], addrs[1], addrs[2]);

    // the client side: the mesh's client stack between tonic's client and tonic's Channels
    let yaml = include_str!("../mesh.yaml")
        .replace("{A}", &addrs[0].port().to_string())
        .replace("{B}", &addrs[1].port().to_string())
        .replace("{C}", &addrs[2].port().to_string());
    let mesh = Mesh::from_yaml("mesh.yaml", &yaml)?;
    let stack = ServiceBuilder::new()
        .map_request(|r: http::Request<tonic::body::Body>| r.map(SyncBody::new))
        .service(mesh.client_layer().wrap_uri_client(Channels::default()));
    let mut grpc = tonic::client::Grpc::with_origin(stack, "http://reviews:9090".parse()?);

    let mut call =
        async |path: &'static str, user: &str, m: GetReview, deadline: Option<Duration>| {
            grpc.ready()
                .await
                .map_err(|e| Status::unknown(e.to_string()))?;
            let mut req = Request::new(m);
            req.metadata_mut().insert(
                "x-user",
                user.parse().map_err(|_| Status::internal("user"))?,
            );
            if let Some(d) = deadline {
                req.set_timeout(d); // grpc-timeout: the mesh's timeout layer enforces it
            }
            let codec = ProstCodec::<GetReview, Review>::default();
            grpc.unary(req, PathAndQuery::from_static(path), codec)
                .await
                .map(Response::into_inner)
        };
    let get = |product: &str, id: usize, flaky: bool| GetReview {
        product: product.into(),
        request_id: id.to_string(),
        flaky,
    };

    // consistent hashing on the x-user metadata key
    let mut id = 0;
    for user in ["alice", "bob", "carol", "dave"] {
        let mut by = BTreeSet::new();
        for _ in 0..10 {
            id += 1;
            by.insert(
                call(GET, user, get("book", id, false), None)
                    .await?
                    .served_by,
            );
        }
        let by: Vec<_> = by.into_iter().collect();
        match by.as_slice() {
            [only] => println!("user {user}: 10 calls, all to {only}"),
            _ => println!("user {user}: 10 calls, spread over {by:?}"),
        }
    }

    // retries on UNAVAILABLE: each of these fails once, and the mesh retries it
    let mut failed = 0;
    for _ in 0..20 {
        id += 1;
        if call(GET, "erin", get("book", id, true), None)
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    let retried = unavailable.load(Ordering::SeqCst);
    println!("retries: 20 flaky calls, {retried} UNAVAILABLE answers retried, {failed} failed");

    // a deadline shorter than the method: the mesh ends the call
    id += 1;
    match call(
        SLOW,
        "frank",
        get("book", id, false),
        Some(Duration::from_millis(100)),
    )
    .await
    {
        Ok(_) => println!("deadline: answered"),
        Err(s) => println!("deadline: {:?} {}", s.code(), s.message()),
    }

    for text in [
        mesh.metrics().encode_to_string(),
        server_mesh.metrics().encode_to_string(),
    ] {
        for line in text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
        {
            println!("{line}");
        }
    }
    Ok(())
}

/// The server side's workload.
const SERVER_YAML: &str = "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: reviews}
spec:
  workload: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
";

/// tonic's `Channel`s, one per endpoint: a `Channel` connects to the one endpoint it was
/// built for (it sets each request's origin to it), so the mesh's balancer picks the
/// endpoint (the URI's authority, under `ClientLayer::wrap_uri_client`) and this picks that
/// endpoint's `Channel`, connected on first use and reused after.
///
/// The `Channel` gets the call without `grpc-timeout`: tonic's `Channel` enforces that header
/// itself, below the mesh, and its timer starts before the mesh's (which starts when the
/// request body ends, as Envoy's does), so the caller would get tonic's `Cancelled` and the
/// mesh would record a reset instead of Envoy's gRPC local reply (`UNAVAILABLE`, flag `UT`).
/// The mesh's timeout layer enforces the deadline; the price is that the server does not
/// see it.
#[derive(Clone, Default)]
struct Channels(Arc<Mutex<HashMap<http::uri::Authority, Channel>>>);

impl Channels {
    fn channel(&self, uri: &http::Uri) -> Result<Channel, BoxError> {
        let authority = uri.authority().ok_or("no endpoint in the URI")?;
        let mut channels = self.0.lock().map_err(|_| "poisoned")?;
        if let Some(c) = channels.get(authority) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{authority}"))?.connect_lazy();
        channels.insert(authority.clone(), c.clone());
        Ok(c)
    }
}

impl Service<http::Request<RequestBody>> for Channels {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(())) // each call waits for its own endpoint's Channel
    }

    fn call(&mut self, mut req: http::Request<RequestBody>) -> Self::Future {
        req.headers_mut().remove("grpc-timeout");
        let channel = self.channel(req.uri());
        Box::pin(async move {
            let res = channel?.oneshot(req.map(tonic::body::Body::new)).await?;
            Ok(res)
        })
    }
}

/// One instance: tonic's server-side `Grpc` for the methods, served by tonic's own
/// `Server` with the mesh's server stack as its layer (HTTP/2, plaintext here).
async fn instance(mesh: &Mesh, reviews: Reviews) -> Result<SocketAddr, BoxError> {
    let methods = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let reviews = reviews.clone();
        async move {
            let codec = ProstCodec::<Review, GetReview>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok::<_, Infallible>(match req.uri().path() {
                GET => grpc.unary(reviews, req).await,
                SLOW => grpc.unary(Slow, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .layer(mesh.server_layer())
        .serve_with_incoming(methods, TcpIncoming::from(listener));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("tonic-grpc: server {addr}: {e}");
        }
    });
    Ok(addr)
}

//! Shared helpers of the end-to-end tests: named upstream servers on port 0, Istio YAML
//! builders, an in-process proxy that is waited on until `/ready` says 200, and small
//! HTTP/1.1 and h2c clients. Every wait is bounded ([`LIMIT`]) so a broken proxy fails a
//! test instead of hanging it; nothing sleeps to synchronise.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod l4;
pub mod mtls;
pub mod pki;
pub mod prom;
pub mod ws;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every await of a test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The header Envoy-style local replies carry (`mesh_core::flags::RESPONSE_FLAGS_HEADER`).
pub const FLAGS: &str = mesh_core::flags::RESPONSE_FLAGS_HEADER;

pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

/// Polls `cond` every millisecond until it holds; panics after [`LIMIT`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await; // polling interval, not a synchronisation
    }
}

// === upstreams ===

pub type UpBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A gRPC server's answer: `200`, `content-type: application/grpc`, `data` as its data
/// frames, then `grpc-status: <status>` in trailers.
pub fn grpc_reply(data: &[&'static [u8]], status: &'static str) -> Response<UpBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let frames: Vec<_> = data
        .iter()
        .map(|d| hyper::body::Frame::data(Bytes::from_static(d)))
        .chain([hyper::body::Frame::trailers(trailers)])
        .map(Ok::<_, Box<dyn std::error::Error + Send + Sync>>)
        .collect();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap()
}

/// A real upstream server on `127.0.0.1:0` (HTTP/1.1 and h2c on one port) that answers with
/// its own name: body `<name>`, header `x-backend: <name>`, and the HTTP version it was
/// spoken to in `x-upstream-version`.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The default handler: answers with the backend's name.
pub fn named(name: &'static str) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            Response::builder()
                .header("x-backend", name)
                .header("x-upstream-version", format!("{:?}", req.version()))
                .body(full(name))
                .unwrap()
        })
    })
}

pub async fn backend(name: &'static str) -> Backend {
    backend_with(name, named(name)).await
}

pub async fn backend_with(name: &'static str, handler: Handler) -> Backend {
    backend_at("127.0.0.1", name, handler).await
}

/// A backend on another loopback address (`127.0.0.2`…), to tell endpoints apart by address.
pub async fn backend_at(ip: &str, name: &'static str, handler: Handler) -> Backend {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    serve_backend(listener, name, handler)
}

/// A backend on exactly `addr`, if it can be bound (another family's loopback may be absent).
pub async fn backend_on(addr: SocketAddr, name: &'static str) -> Option<Backend> {
    let listener = TcpListener::bind(addr).await.ok()?;
    Some(serve_backend(listener, name, named(name)))
}

fn serve_backend(listener: TcpListener, name: &'static str, handler: Handler) -> Backend {
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (h, count) = (handler.clone(), count.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        name,
        addr,
        hits,
        connections,
        task,
    }
}

/// A port on which nothing listens, for as long as the value lives: bound without
/// `SO_REUSEADDR` and not listening, so a connection to it is refused and no other socket
/// of the machine (another test's listener on port 0) can take it meanwhile, which a port
/// bound and closed again did not ensure.
pub struct DeadPort {
    /// Holds the port.
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl DeadPort {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for DeadPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.port)
    }
}

/// A port on which nothing listens while the [`DeadPort`] lives.
pub async fn dead_port() -> DeadPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    DeadPort {
        _socket: socket,
        port,
    }
}

/// A port free now (bound, then closed), for a server the test starts on it.
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// === configuration ===

/// A ProxyBootstrap on ports 0 with `concurrency` workers; `extra` is indented YAML appended
/// to `spec` (e.g. `"  mesh:\n    outboundTrafficPolicy: REGISTRY_ONLY\n"`).
pub fn bootstrap(concurrency: u32, extra: &str) -> String {
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: e2e}}
spec:
  concurrency: {concurrency}
  workload:
    name: productpage-v1
    namespace: default
    labels: {{app: productpage, version: v1}}
  outbound: {{address: 127.0.0.1, port: 0}}
  admin: {{address: 127.0.0.1, port: 0}}
{extra}"
    )
}

/// The bootstrap of an ingress gateway workload (`istio: ingressgateway`), its gateway
/// listeners on 127.0.0.1, `ports` mapped to port 0.
pub fn gateway_bootstrap(ports: &[u16], extra: &str) -> String {
    let map: Vec<String> = ports.iter().map(|p| format!("\"{p}\": 0")).collect();
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: ingress}}
spec:
  concurrency: 1
  workload:
    name: istio-ingressgateway
    namespace: istio-system
    labels: {{istio: ingressgateway, app: istio-ingressgateway}}
  outbound: {{address: 127.0.0.1, port: 0}}
  admin: {{address: 127.0.0.1, port: 0}}
  gatewayAddress: 127.0.0.1
  gatewayPorts: {{{}}}
{extra}",
        map.join(", ")
    )
}

/// A STATIC, MESH_INTERNAL ServiceEntry for `<name>.default.svc.cluster.local` with one port
/// (`number`, `protocol`) and one endpoint per backend on 127.0.0.1, labelled
/// `{app: <name>, version: <backend name>}`.
pub fn service_entry(name: &str, number: u16, protocol: &str, backends: &[&Backend]) -> String {
    let mut eps = String::new();
    for b in backends {
        eps.push_str(&format!(
            "  - address: 127.0.0.1\n    ports: {{http: {}}}\n    labels: {{app: {name}, version: {}}}\n",
            b.port(),
            b.name
        ));
    }
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {number}, name: http, protocol: {protocol}}}
  endpoints:
{eps}"
    )
}

/// A DestinationRule for `host` with one subset per version name; `policy` is YAML placed
/// under `spec` (already indented by two spaces) or empty.
pub fn destination_rule(host: &str, subsets: &[&str], policy: &str) -> String {
    let mut s = String::new();
    for v in subsets {
        s.push_str(&format!("  - name: {v}\n    labels: {{version: {v}}}\n"));
    }
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
{policy}  subsets:
{s}"
    )
}

/// A VirtualService for `host` splitting traffic between subsets by weight.
pub fn weighted_vs(host: &str, split: &[(&str, u32)]) -> String {
    let mut r = String::new();
    for (subset, w) in split {
        r.push_str(&format!(
            "    - destination: {{host: {host}, subset: {subset}}}\n      weight: {w}\n"
        ));
    }
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
  - route:
{r}"
    )
}

/// Writes a configuration file (a test failure if it cannot).
pub fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// The value of a sample (`name` with its labels, as printed) in Prometheus text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

// === the proxy ===

/// A proxy started in-process, ready (its admin `/ready` answered 200).
pub struct Running {
    pub proxy: Proxy,
    pub out: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts a proxy from YAML text (no files: reload only re-applies).
pub async fn start(yaml: &str) -> Running {
    let compiled = match mesh_core::config::load_str("e2e.yaml", yaml) {
        Ok(c) => c,
        Err(e) => panic!("configuration rejected:\n{e}\n--- config ---\n{yaml}"),
    };
    let proxy =
        Proxy::start_compiled(compiled, Vec::new()).unwrap_or_else(|e| panic!("start: {e}"));
    ready(proxy).await
}

/// Starts a proxy from configuration files (what `reload` re-reads).
pub async fn start_files(files: Vec<PathBuf>) -> Running {
    let proxy = Proxy::start(files).unwrap_or_else(|e| panic!("start: {e}"));
    ready(proxy).await
}

async fn ready(proxy: Proxy) -> Running {
    let out = proxy.outbound_addr().expect("an outbound listener");
    let admin = proxy.admin_addr().expect("an admin listener");
    assert_ne!(out.port(), 0);
    assert_ne!(admin.port(), 0);
    eventually("/ready answers 200", || async move {
        matches!(admin_get_opt(admin, "/ready").await, Some((200, _)))
    })
    .await;
    Running { proxy, out, admin }
}

/// `GET path` on the admin listener; `None` if the connection fails.
pub async fn admin_get_opt(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = TcpStream::connect(admin).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "admin")
        .body(full(""))
        .ok()?;
    let res = tx.send_request(req).await.ok()?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    bounded(admin_get_opt(admin, path))
        .await
        .unwrap_or_else(|| panic!("admin GET {path} failed"))
}

// === clients ===

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The backend that answered (`x-backend`), or `""` for a proxy-made answer.
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Envoy's response flags of a proxy-made answer, or `""`.
    pub fn flags(&self) -> &str {
        self.headers
            .get(FLAGS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn read(res: Response<Incoming>) -> Reply {
    let (parts, body) = res.into_parts();
    let body = bounded(body.collect())
        .await
        .expect("response body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn request(host: &str, headers: &[(&str, &str)]) -> Request<UpBody> {
    let mut b = Request::builder().uri("/").header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full("")).unwrap()
}

/// One keep-alive HTTP/1.1 connection to the proxy.
pub struct H1 {
    tx: hyper::client::conn::http1::SendRequest<UpBody>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = bounded(TcpStream::connect(addr))
            .await
            .expect("connect to the proxy");
        let (tx, conn) = bounded(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1 { tx }
    }

    /// Whether the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends `req`; `Err` if the connection failed.
    pub async fn try_send(&mut self, req: Request<UpBody>) -> Result<Reply, hyper::Error> {
        bounded(self.tx.ready()).await?;
        let res = bounded(self.tx.send_request(req)).await?;
        Ok(read(res).await)
    }

    pub async fn send(&mut self, req: Request<UpBody>) -> Reply {
        self.try_send(req).await.expect("request through the proxy")
    }

    /// `GET /` with `Host: host` and extra headers.
    pub async fn get(&mut self, host: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(request(host, headers)).await
    }
}

/// `GET /` over a fresh connection.
pub async fn get_once(addr: SocketAddr, host: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr).await.get(host, headers).await
}

/// An h2c (prior knowledge) connection to the proxy.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<UpBody> {
    let stream = bounded(TcpStream::connect(addr)).await.unwrap();
    let (tx, conn) = bounded(hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(stream),
    ))
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx
}

/// Sends raw bytes and reads until the proxy closes the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = bounded(TcpStream::connect(addr)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = bounded(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

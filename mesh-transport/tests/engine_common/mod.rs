//! Shared helpers of the engine's end-to-end tests: a real upstream (hyper, HTTP/1.1 and h2c
//! on one port, counting its accepted connections), engines on port 0, simple clients.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ext::SelectedEndpoint;
use mesh_transport::{Engine, EngineConfig, Limits, WorkerContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

pub type UpBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// Every await in a test is bounded by this, so a broken engine fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(10);

pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

/// A real upstream server on 127.0.0.1:0 (HTTP/1.1 and h2c), on the test's runtime.
pub struct Upstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// The default handler: 200, the request's target, version and headers in the body
/// (`uri`, `version`, then `name: value` lines), and `x-upstream: yes`.
pub fn echo() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let mut text = format!("uri={}\nversion={:?}\n", req.uri(), req.version());
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            text.push_str(&format!("body-len={}\n", body.len()));
            Response::builder()
                .header("x-upstream", "yes")
                .body(full(text))
                .unwrap()
        })
    })
}

pub async fn upstream(handler: Handler) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        accepted,
        task,
    }
}

/// A port on which nothing listens (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Requests carrying `x-test-no-endpoint` get no `SelectedEndpoint`; every response carries
/// `x-worker: <worker index>`.
pub fn forward_to(
    addr: SocketAddr,
    http2: bool,
) -> impl Fn(&WorkerContext) -> ForwardSvc + Send + Sync + 'static {
    move |ctx: &WorkerContext| ForwardSvc {
        addr,
        http2,
        worker: ctx.index(),
        connector: ctx.connector(),
    }
}

#[derive(Clone)]
pub struct ForwardSvc {
    addr: SocketAddr,
    http2: bool,
    worker: usize,
    connector: mesh_transport::Connector,
}

impl tower::Service<Request<Incoming>> for ForwardSvc {
    type Response = mesh_transport::EngineResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if !req.headers().contains_key("x-test-no-endpoint") {
            req.extensions_mut()
                .insert(SelectedEndpoint::new(self.addr).with_http2(self.http2));
        }
        let worker = self.worker;
        let fut = self.connector.clone().oneshot(req);
        Box::pin(async move {
            let mut res = fut.await?;
            res.headers_mut().insert("x-worker", worker.into());
            Ok(res)
        })
    }
}

pub fn start(up: SocketAddr, http2: bool, limits: Limits, concurrency: usize) -> Engine {
    let config = EngineConfig {
        concurrency,
        limits,
        ..EngineConfig::new("127.0.0.1:0".parse().unwrap())
    };
    Engine::start(config, Arc::new(forward_to(up, http2))).unwrap()
}

pub async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<UpBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

pub async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<UpBody>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, task)
}

pub fn get(uri: &str, host: &str) -> Request<UpBody> {
    Request::builder()
        .uri(uri)
        .header("host", host)
        .body(full(""))
        .unwrap()
}

pub async fn text(res: Response<Incoming>) -> String {
    let b = bounded(res.into_body().collect()).await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

/// Sends raw bytes, reads until the server closes; returns what it answered.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = bounded(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 response with a `content-length` from a raw stream.
pub async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = bounded(s.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request body fed through a channel, to stream it piece by piece.
pub struct ChanBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Waits until the server closes the stream (EOF or reset); panics if it answers bytes.
pub async fn expect_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1024];
    match bounded(s.read(&mut b)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected close, got {:?}", String::from_utf8_lossy(&b[..n])),
    }
}

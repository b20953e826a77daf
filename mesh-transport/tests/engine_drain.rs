//! Drain, readiness, and reloading the stack.

mod engine_common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use engine_common::*;
use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_transport::{Engine, EngineConfig, Limits, WorkerContext};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

/// An upstream whose `/slow` requests wait for `release`, announcing themselves on `arrived`.
async fn slow_upstream() -> (Upstream, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let handler: Handler = Arc::new(move |req: Request<hyper::body::Incoming>| {
        let (arrived_tx, r) = (arrived_tx.clone(), r.clone());
        Box::pin(async move {
            if req.uri().path() == "/slow" {
                let released = r.notified();
                let _ = arrived_tx.send(());
                released.await;
            }
            Response::new(full("done"))
        })
    });
    (upstream(handler).await, arrived, release)
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_closes_idle_connections() {
    let (up, mut arrived, release) = slow_upstream().await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let addr = engine.local_addr();
    let readiness = engine.readiness();
    assert!(readiness.is_ready());

    // an idle keep-alive connection
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    // a request in flight
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    bounded(arrived.recv()).await.unwrap();
    // an h2 request in flight
    let (mut h2, h2_conn) = h2_client(addr).await;
    let h2_res = tokio::spawn(
        h2.send_request(
            Request::builder()
                .uri("http://a/slow")
                .body(full(""))
                .unwrap(),
        ),
    );
    bounded(arrived.recv()).await.unwrap();

    let drain = tokio::spawn(engine.drain());
    expect_closed(&mut idle).await;
    assert!(!readiness.is_ready());
    assert!(!drain.is_finished());

    release.notify_waiters();
    let res = read_response(&mut busy).await.to_ascii_lowercase();
    assert!(res.starts_with("http/1.1 200"), "{res}");
    assert!(res.contains("connection: close"), "{res}");
    assert!(res.ends_with("done"), "{res}");
    expect_closed(&mut busy).await;
    let h2_res = bounded(h2_res).await.unwrap().unwrap();
    assert_eq!(text(h2_res).await, "done");
    bounded(h2_conn).await.unwrap(); // GOAWAY, then closed
    bounded(drain).await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after drain"
    );
}

#[tokio::test]
async fn drain_gives_up_after_the_drain_timeout() {
    let (up, mut arrived, _release) = slow_upstream().await;
    let limits = Limits {
        drain_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let engine = start(up.addr, false, limits, 1);
    let mut busy = TcpStream::connect(engine.local_addr()).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    bounded(arrived.recv()).await.unwrap();
    let started = std::time::Instant::now();
    bounded(engine.drain()).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    expect_closed(&mut busy).await;
}

#[test]
fn drain_blocking_and_readiness_without_a_runtime() {
    let engine = Engine::start(
        EngineConfig::new("127.0.0.1:0".parse().unwrap()),
        Arc::new(forward_to("127.0.0.1:9".parse().unwrap(), false)),
    )
    .unwrap();
    let readiness = engine.readiness();
    assert!(readiness.is_ready());
    engine.drain_blocking();
    assert!(!readiness.is_ready());
}

#[test]
fn binding_a_used_address_fails() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // no SO_REUSEPORT
    let config = EngineConfig::new(l.local_addr().unwrap());
    let res = Engine::start(
        config,
        Arc::new(forward_to("127.0.0.1:9".parse().unwrap(), false)),
    );
    assert!(res.is_err());
}

/// A stack forwarding to the upstream and marking the response with its configuration, read
/// per request from a swappable handle (how layers reload).
#[derive(Clone)]
struct Marker {
    marker: Arc<ArcSwap<&'static str>>,
    upstream: std::net::SocketAddr,
    connector: mesh_transport::Connector,
}

impl tower::Service<Request<hyper::body::Incoming>> for Marker {
    type Response = Response<MeshBody<mesh_transport::UpstreamBody>>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>>>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<hyper::body::Incoming>) -> Self::Future {
        use tower::ServiceExt as _;
        req.extensions_mut()
            .insert(mesh_core::ext::SelectedEndpoint::new(self.upstream));
        let marker = **self.marker.load();
        let fut = self.connector.clone().oneshot(req);
        Box::pin(async move {
            let mut res = fut.await?;
            res.headers_mut()
                .insert("x-config", http::HeaderValue::from_static(marker));
            Ok(res)
        })
    }
}

/// Reload is a store into a handle the stack reads per request: new requests see the new
/// value at once, a request in flight finishes with what it loaded, and the stack is never
/// rebuilt.
#[tokio::test]
async fn reload_switches_new_requests_while_in_flight_ones_finish_on_the_old_value() {
    let (up, mut arrived, release) = slow_upstream().await;
    let builds = Arc::new(AtomicUsize::new(0));
    let b = builds.clone();
    let upstream = up.addr;
    let config = Arc::new(ArcSwap::from_pointee("v1"));
    let handle = config.clone();
    let factory = Arc::new(move |ctx: &WorkerContext| {
        b.fetch_add(1, Ordering::SeqCst);
        Marker {
            marker: handle.clone(),
            upstream,
            connector: ctx.connector(),
        }
    });
    let engine = Engine::start(EngineConfig::new("127.0.0.1:0".parse().unwrap()), factory).unwrap();
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.headers()["x-config"], "v1");
    text(res).await;

    // in flight on v1
    let mut old = h1_client(engine.local_addr()).await;
    let slow = tokio::spawn(old.send_request(get("/slow", "a")));
    bounded(arrived.recv()).await.unwrap();

    config.store(Arc::new("v2"));
    let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.headers()["x-config"], "v2");
    text(res).await;

    release.notify_waiters();
    let res = bounded(slow).await.unwrap().unwrap();
    assert_eq!(res.headers()["x-config"], "v1");
    assert_eq!(text(res).await, "done");
    assert_eq!(builds.load(Ordering::SeqCst), 1, "never rebuilt");
    engine.drain().await;
}

#[tokio::test]
async fn a_stack_that_is_not_ready_is_waited_for() {
    // ConcurrencyLimit(1): the second concurrent request waits for the first one's permit
    let (up, mut arrived, release) = slow_upstream().await;
    let upstream = up.addr;
    let factory = Arc::new(move |ctx: &WorkerContext| {
        tower::limit::ConcurrencyLimit::new(
            Marker {
                marker: Arc::new(ArcSwap::from_pointee("m")),
                upstream,
                connector: ctx.connector(),
            },
            1,
        )
    });
    let engine = Engine::start(EngineConfig::new("127.0.0.1:0".parse().unwrap()), factory).unwrap();
    let addr = engine.local_addr();
    let mut a = h1_client(addr).await;
    let first = tokio::spawn(a.send_request(get("/slow", "a")));
    bounded(arrived.recv()).await.unwrap();
    let mut b = h1_client(addr).await;
    let second = tokio::spawn(b.send_request(get("/", "a")));
    // the first holds the only permit; releasing it lets the second through
    release.notify_waiters();
    let first = bounded(first).await.unwrap().unwrap();
    assert_eq!(text(first).await, "done");
    let second = bounded(second).await.unwrap().unwrap();
    assert_eq!(second.status(), 200);
    engine.drain().await;
}

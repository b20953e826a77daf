//! The connector's telemetry hook: a request whose `StreamInfo` asks for it
//! (`StreamInfo::with_connection`, made by the record layer for an access log or a span)
//! gets the upstream connection it went out on recorded (its local address, the address
//! the upstream saw it come from; TLS or not; when it was handed to it), over HTTP/1.1 and
//! HTTP/2, on a new connection and a pooled one; a request whose record does not ask (Istio's
//! metrics alone) gets nothing.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ext::{SelectedEndpoint, slots_mut};
use mesh_core::stream_info::StreamInfo;
use mesh_transport::Connector;
use tower::ServiceExt as _;

/// A plaintext upstream (HTTP/1.1 and h2c) keeping the address each connection came from.
async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let p = peers.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            p.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, peers)
}

async fn send(c: &Connector, addr: SocketAddr, http2: bool, info: &StreamInfo) {
    let mut req = Request::builder()
        .uri("/")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(SelectedEndpoint::new(addr).with_http2(http2));
    slots_mut(req.extensions_mut()).info = Some(info.clone());
    let res = tokio::time::timeout(Duration::from_secs(10), c.clone().oneshot(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn the_connection_is_recorded_only_when_the_record_asks_for_it() {
    for http2 in [false, true] {
        let (addr, peers) = upstream().await;
        let c = Connector::new(Duration::from_secs(5));
        for _ in 0..2 {
            // a new connection, then the pooled one
            let info = StreamInfo::with_connection();
            let before = Instant::now();
            send(&c, addr, http2, &info).await;
            let conn = info.snapshot().connection.expect("recorded");
            let seen = peers.lock().unwrap().clone();
            assert_eq!(seen.len(), 1, "one connection (h2 {http2})");
            assert_eq!(
                conn.local,
                Some(seen[0]),
                "where the upstream saw it come from"
            );
            assert!(!conn.tls);
            assert!(conn.sent >= before && conn.sent <= Instant::now());
        }
        // Istio's metrics alone: nothing recorded
        let info = StreamInfo::new();
        send(&c, addr, http2, &info).await;
        assert!(info.snapshot().connection.is_none(), "h2 {http2}");
    }
}

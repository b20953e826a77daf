//! The connector against a real HTTP/2 upstream (the `h2` crate's server on port 0) that
//! resets streams before answering: a `REFUSED_STREAM` reset (RFC 9113 §8.7: the request
//! was not processed) is told from other resets by a `RefusedStream` extension beside the
//! `UR` flag, which the retry layer's `refused-stream` condition reads (Envoy's
//! `RemoteRefusedStreamReset`).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use mesh_core::ResponseFlags;
use mesh_core::ext::{RefusedStream, SelectedEndpoint, flags_of};
use mesh_transport::Connector;
use tower::ServiceExt as _;

/// An h2c upstream that resets `/refuse` with `REFUSED_STREAM`, `/cancel` with `CANCEL`,
/// `/internal` with `INTERNAL_ERROR`, and answers anything else `200`; counts the streams
/// it received.
async fn resetting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    match req.uri().path() {
                        "/refuse" => respond.send_reset(h2::Reason::REFUSED_STREAM),
                        "/cancel" => respond.send_reset(h2::Reason::CANCEL),
                        "/internal" => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                        _ => {
                            let _ = respond.send_response(Response::new(()), true);
                        }
                    }
                }
            });
        }
    });
    (addr, streams)
}

fn request(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "reviews:9080")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(SelectedEndpoint::new(addr).with_http2(true));
    req
}

#[tokio::test]
async fn a_refused_stream_is_ur_with_a_refused_stream_marker_other_resets_are_not() {
    let (addr, streams) = resetting_upstream().await;
    let connector = Connector::new(Duration::from_secs(5));
    let send = |path: &'static str| {
        let c = connector.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), c.oneshot(request(addr, path)))
                .await
                .expect("the connector answers")
                .unwrap()
        }
    };
    let refused = send("/refuse").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flags_of(&refused), ResponseFlags::UPSTREAM_REMOTE_RESET);
    assert_eq!(refused.headers()["x-mesh-response-flags"], "UR");
    assert_eq!(
        refused.extensions().get::<RefusedStream>(),
        Some(&RefusedStream)
    );
    for path in ["/cancel", "/internal"] {
        let reset = send(path).await;
        assert_eq!(reset.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(
            flags_of(&reset),
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            "{path}"
        );
        assert!(
            reset.extensions().get::<RefusedStream>().is_none(),
            "{path}"
        );
    }
    // the connection stays usable after the resets (stream errors, not connection errors)
    assert_eq!(send("/").await.status(), StatusCode::OK);
    assert_eq!(streams.load(Ordering::SeqCst), 4);
}

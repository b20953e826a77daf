//! Upgrades through the engine and its connector: a WebSocket (tokio-tungstenite client and
//! server) over HTTP/1.1 and over HTTP/2 extended CONNECT (RFC 8441), a `CONNECT` tunnel,
//! an upgrade the upstream declines, and an upgrade type the mesh refuses.
#![allow(clippy::unwrap_used)]

mod engine_common;

use std::net::SocketAddr;

use engine_common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_transport::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A WebSocket echo server on 127.0.0.1:0 (every text or binary message comes back).
async fn ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP echo server on 127.0.0.1:0.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_through_the_engine() {
    let up = ws_echo().await;
    let engine = start(up, false, Limits::default(), 1);
    let url = format!("ws://{}/chat", engine.local_addr());
    let (mut ws, res) = bounded(tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(res.headers()["upgrade"], "websocket");
    bounded(ws.send(Message::text("hello"))).await.unwrap();
    assert_eq!(
        bounded(ws.next()).await.unwrap().unwrap(),
        Message::text("hello")
    );
    let big = vec![7u8; 256 * 1024];
    bounded(ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    assert_eq!(
        bounded(ws.next()).await.unwrap().unwrap(),
        Message::binary(big)
    );
    bounded(ws.close(None)).await.unwrap();
    // the server's close frame comes back, then the end of the stream
    loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Close(_))) => {}
            None => break,
            Some(Ok(m)) => panic!("unexpected {m:?}"),
            Some(Err(e)) => panic!("unexpected error {e}"),
        }
    }
    drop(ws);
    engine.drain().await;
}

/// Bytes the upstream sends in the same segment as its `101` (read by the client with the
/// head) reach the client right after the relayed `101`; the connection is not pooled.
#[tokio::test]
async fn bytes_behind_the_101_are_relayed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                return;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(head.contains("connection: upgrade"), "{head}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nfirst-bytes")
            .await
            .unwrap();
        // then echo
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let engine = start(up, false, Limits::default(), 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: web\r\nconnection: Upgrade\r\nupgrade: WebSocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let want_tail = b"\r\n\r\nfirst-bytes";
    while !got.ends_with(want_tail) {
        let mut b = [0u8; 64];
        let n = bounded(s.read(&mut b)).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: websocket"), "{text}");
    assert!(text.contains("connection: upgrade"), "{text}");
    s.write_all(b"more").await.unwrap();
    let mut back = [0u8; 4];
    bounded(s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"more");
    // the client leaves: the tunnel ends both ways, and nothing holds the drain
    drop(s);
    engine.drain().await;
}

/// The upstream answers the upgrade request with an ordinary response: relayed as is, and
/// the client's connection carries further requests.
#[tokio::test]
async fn a_declined_upgrade_is_an_ordinary_response() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // the upstream saw the upgrade request's headers
    let lower = first.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{first}");
    assert!(lower.contains("connection: upgrade"), "{first}");
    s.write_all(b"GET /b HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("uri=/b"), "{second}");
    engine.drain().await;
}

/// Envoy answers an upgrade type no `upgrade_configs` enables with 403 (`upgrade_failed`)
/// and closes the connection; `h2c` is not an upgrade the mesh forwards: `Upgrade` is
/// removed and the request goes on.
#[tokio::test]
async fn other_upgrade_types_are_refused_and_h2c_is_stripped() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let answer = raw(
        engine.local_addr(),
        b"GET / HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: spdy/3.1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("upgrade_failed"), "{answer}");
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: web\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let lower = res.to_ascii_lowercase();
    assert!(!lower.contains("upgrade:"), "{res}");
    assert!(!lower.contains("http2-settings"), "{res}");
    engine.drain().await;
}

/// `CONNECT host:port`: the proxy opens a TCP connection to the chosen endpoint, answers
/// 200, and relays bytes both ways (bytes sent right behind the request head included).
#[tokio::test]
async fn connect_tunnels_to_the_endpoint() {
    let up = tcp_echo().await;
    let engine = start(up, false, Limits::default(), 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"CONNECT echo:7 HTTP/1.1\r\nhost: echo:7\r\n\r\nearly")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(bounded(s.read(&mut b)).await.unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut got = [0u8; 5];
    bounded(s.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"early");
    let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let (mut r, mut w) = s.into_split();
    let send = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&send).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    bounded(r.read_to_end(&mut back)).await.unwrap();
    assert_eq!(
        back, payload,
        "echoed, then closed after the client's half-close"
    );
    bounded(writer).await.unwrap();
    engine.drain().await;
}

/// A tunnel in which nothing moves for `streamIdleTimeout` is closed (both connections).
#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let up = tcp_echo().await;
    let limits = Limits {
        stream_idle_timeout: std::time::Duration::from_millis(200),
        ..Limits::default()
    };
    let engine = start(up, false, limits, 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"CONNECT echo:7 HTTP/1.1\r\nhost: echo:7\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    bounded(s.read_exact(&mut got)).await.unwrap();
    // then silence: the engine closes the tunnel
    expect_closed(&mut s).await;
    engine.drain().await;
}

/// RFC 8441: a WebSocket over an HTTP/2 stream (extended CONNECT), sent to an HTTP/1.1
/// WebSocket server as an upgrade; the upstream's 101 is the client's 200.
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let up = ws_echo().await;
    let engine = start(up, false, Limits::default(), 1);
    let stream = TcpStream::connect(engine.local_addr()).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method("CONNECT")
        .version(Version::HTTP_2)
        .uri(format!("http://{}/chat", engine.local_addr()))
        .header("sec-websocket-version", "13")
        .body(full(""))
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    bounded(tx.ready()).await.unwrap();
    let mut res = bounded(tx.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = bounded(hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    bounded(ws.send(Message::text("over h2"))).await.unwrap();
    assert_eq!(
        bounded(ws.next()).await.unwrap().unwrap(),
        Message::text("over h2")
    );
    bounded(ws.close(None)).await.unwrap();
    // the server's close frame, then the end of the stream (the upstream closed)
    while let Some(m) = bounded(ws.next()).await {
        assert!(matches!(m, Ok(Message::Close(_))), "{m:?}");
    }
    drop((ws, tx));
    engine.drain().await;
}

/// A WebSocket upgrade to an HTTP/2-only endpoint: HTTP/2 cannot carry an HTTP/1.1
/// upgrade and extended CONNECT towards upstreams is not implemented, so the mesh refuses
/// it as Envoy refuses an upgrade it cannot do (403 `upgrade_failed`), without connecting.
#[tokio::test]
async fn a_websocket_to_an_http2_endpoint_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let engine = start(up, true, Limits::default(), 1);
    let url = format!("ws://{}/chat", engine.local_addr());
    match bounded(tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            let body = res.body().as_deref().unwrap_or_default();
            assert_eq!(body, b"upgrade_failed");
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    // a connect completes in the kernel before the connector could have answered
    assert!(
        futures_util::FutureExt::now_or_never(listener.accept()).is_none(),
        "the endpoint was not connected to"
    );
    drop(listener);
    engine.drain().await;
}

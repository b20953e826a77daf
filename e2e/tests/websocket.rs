//! WebSockets and `CONNECT` through the whole proxy (listener → router → balancer →
//! connector → a real upstream): a tokio-tungstenite client and echo server, text and binary
//! messages, a 1 MiB frame, a close from either side, a tunnel closed by
//! `limits.streamIdleTimeout`, a `CONNECT` tunnel to a TCP echo service, and an upgrade type
//! Istio does not enable (403, as Envoy's `upgrade_failed`).

use crate::support;

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use support::ws::ws_echo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

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

/// A STATIC ServiceEntry `<name>.default.svc.cluster.local`, port 80 (`protocol`), one
/// endpoint on `upstream`.
fn entry(name: &str, protocol: &str, upstream: SocketAddr) -> String {
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
  - {{number: 80, name: http, protocol: {protocol}}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {}}}
",
        upstream.port()
    )
}

/// A proxy with the `chat` WebSocket service and the `echo` TCP service, and `limits`.
async fn proxy(limits: &str) -> Running {
    let (ws, tcp) = (ws_echo().await, tcp_echo().await);
    let yaml = format!(
        "{}{}{}",
        bootstrap(1, limits),
        entry("chat", "HTTP", ws),
        entry("echo", "HTTP", tcp),
    );
    start(&yaml).await
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket client connected through the proxy to `chat`.
async fn connect(p: &Running) -> Ws {
    let stream = TcpStream::connect(p.out).await.unwrap();
    let req = "ws://chat.default.svc.cluster.local/room"
        .into_client_request()
        .unwrap();
    let (ws, res) = bounded(tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws
}

async fn next(ws: &mut Ws) -> Option<Message> {
    bounded(ws.next()).await.map(|m| m.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_text_binary_and_a_large_frame() {
    let p = proxy("").await;
    let mut ws = connect(&p).await;
    bounded(ws.send(Message::text("hello"))).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hello")));
    bounded(ws.send(Message::binary(vec![0u8, 1, 2, 255])))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    bounded(ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::binary(big)));
}

/// The client closes: its close frame reaches the server, whose reply comes back, and the
/// stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closed_by_the_client() {
    let p = proxy("").await;
    let mut ws = connect(&p).await;
    bounded(ws.send(Message::text("x"))).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("x")));
    bounded(ws.close(None)).await.unwrap();
    let mut saw_close = false;
    while let Some(m) = next(&mut ws).await {
        assert!(matches!(m, Message::Close(_)), "{m:?}");
        saw_close = true;
    }
    assert!(saw_close, "the server's close frame came back");
}

/// The server closes: its close frame reaches the client, which answers, and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closed_by_the_server() {
    let p = proxy("").await;
    let mut ws = connect(&p).await;
    bounded(ws.send(Message::text("bye"))).await.unwrap();
    assert!(matches!(next(&mut ws).await, Some(Message::Close(_))));
    // tungstenite answers the close; then the server ends the connection
    assert_eq!(next(&mut ws).await, None);
}

/// `limits.streamIdleTimeout` applies to a tunnel: silence closes it (the client sees the
/// connection end without a close handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_by_the_stream_idle_timeout() {
    let p = proxy("  limits: {streamIdleTimeout: 300ms}\n").await;
    let mut ws = connect(&p).await;
    bounded(ws.send(Message::text("once"))).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("once")));
    match bounded(ws.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("expected the tunnel to close, got {m:?}"),
    }
}

/// `CONNECT echo…:80`: routed by its authority to the `echo` service, answered 200, then a
/// TCP tunnel to the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_through_the_proxy() {
    let p = proxy("").await;
    let mut s = TcpStream::connect(p.out).await.unwrap();
    s.write_all(b"CONNECT echo.default.svc.cluster.local:80 HTTP/1.1\r\nhost: echo.default.svc.cluster.local:80\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(bounded(s.read(&mut b)).await.unwrap(), 1, "{head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"through the tunnel").await.unwrap();
    let mut got = [0u8; 18];
    bounded(s.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"through the tunnel");
}

/// Istio enables only `websocket` upgrades (and CONNECT): any other type is refused as
/// Envoy refuses it, 403 `upgrade_failed`, without reaching an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrade_types_get_403() {
    let p = proxy("").await;
    let mut s = TcpStream::connect(p.out).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: chat.default.svc.cluster.local\r\nconnection: upgrade\r\nupgrade: custom-proto\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    bounded(s.read_to_end(&mut out)).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("upgrade_failed"), "{out}");
}

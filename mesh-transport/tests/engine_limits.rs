//! The listener's limits and request checks, over raw sockets.

mod engine_common;

use std::sync::Arc;
use std::time::Duration;

use engine_common::*;
use http::Response;
use mesh_transport::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn status_line(res: &str) -> &str {
    res.lines().next().unwrap_or("")
}

#[tokio::test]
async fn oversized_header_block_is_431() {
    let up = upstream(echo()).await;
    let limits = Limits {
        max_request_headers_kb: 8,
        ..Limits::default()
    };
    let engine = start(up.addr, false, limits, 1);
    let big = "v".repeat(9 * 1024);
    let res = raw(
        engine.local_addr(),
        format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&res).starts_with("HTTP/1.1 431"), "{res}");
    // just under the limit passes
    let ok = "v".repeat(7 * 1024);
    let res = raw(
        engine.local_addr(),
        format!("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-big: {ok}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&res).starts_with("HTTP/1.1 200"), "{res}");
    engine.drain().await;
}

#[tokio::test]
async fn default_limit_refuses_a_70k_header_block() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let big = "v".repeat(70 * 1024);
    let res = raw(
        engine.local_addr(),
        format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&res).starts_with("HTTP/1.1 431"), "{res}");
    engine.drain().await;
}

fn with_headers(n: usize) -> String {
    let mut req = String::from("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n");
    for i in 0..n {
        req.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    req
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    // host + connection + 98 = 100: accepted; one more: refused
    let res = raw(engine.local_addr(), with_headers(98).as_bytes()).await;
    assert!(status_line(&res).starts_with("HTTP/1.1 200"), "{res}");
    let res = raw(engine.local_addr(), with_headers(99).as_bytes()).await;
    assert!(status_line(&res).starts_with("HTTP/1.1 431"), "{res}");
    engine.drain().await;
}

#[tokio::test]
async fn configured_header_count_is_enforced() {
    let up = upstream(echo()).await;
    let limits = Limits {
        max_request_headers_count: 10,
        ..Limits::default()
    };
    let engine = start(up.addr, false, limits, 1);
    let res = raw(engine.local_addr(), with_headers(8).as_bytes()).await;
    assert!(status_line(&res).starts_with("HTTP/1.1 200"), "{res}");
    let res = raw(engine.local_addr(), with_headers(9).as_bytes()).await;
    assert!(status_line(&res).starts_with("HTTP/1.1 431"), "{res}");
    // on HTTP/2 the engine counts them
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let mut req = http::Request::builder().uri("http://a/");
    for i in 0..11 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let res = bounded(c.send_request(req.body(full("")).unwrap()))
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    engine.drain().await;
}

#[tokio::test]
async fn http11_without_host_is_400() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let res = raw(engine.local_addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(status_line(&res).starts_with("HTTP/1.1 400"), "{res}");
    assert!(
        res.to_ascii_lowercase()
            .contains("x-mesh-response-flags: dpe"),
        "{res}"
    );
    // HTTP/1.0 needs no Host
    let res = raw(engine.local_addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(status_line(&res).starts_with("HTTP/1.0 200"), "{res}");
    engine.drain().await;
}

/// The status code of a raw response (`HTTP/1.x NNN ...`).
fn status_of(res: &str) -> &str {
    status_line(res).split(' ').nth(1).unwrap_or("")
}

/// A good request on a fresh connection: the engine keeps serving after a refusal.
async fn still_serves(engine: &mesh_transport::Engine) {
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/", "a")))
        .await
        .expect("a good request after the refusal");
    assert_eq!(res.status(), 200);
}

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
/// HTTP/1.1 request message that […] contains more than one Host header field line or a
/// Host header field with an invalid field value." `h2load --h1 -H 'Host: x'` sends two
/// (its own and the one asked for); which one would the proxy route by? A list value is the
/// same thing folded into one line. Refused on every version, before the stack.
#[tokio::test]
async fn two_host_fields_or_a_host_list_are_400_dpe_and_never_forwarded() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nuser-agent: h2load\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a, x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a,a\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: x\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    ] {
        let what = String::from_utf8_lossy(req);
        let res = raw(engine.local_addr(), req).await;
        assert_eq!(status_of(&res), "400", "{what}: {res}");
        assert!(
            res.to_ascii_lowercase()
                .contains("x-mesh-response-flags: dpe"),
            "{what}: {res}"
        );
    }
    // HTTP/2: a `host` field beside `:authority`, twice
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let req = http::Request::builder()
        .uri("http://a/")
        .header("host", "a")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    let res = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-mesh-response-flags"], "DPE");
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    still_serves(&engine).await;
    engine.drain().await;
}

/// RFC 9110 §4.2.4: "A sender MUST NOT generate the userinfo subcomponent (and its "@"
/// delimiter) when an "http" URI reference is generated within a message as a target URI or
/// field value." Envoy refuses it; so does the engine, with 400 (not the 503 the upstream
/// look-up of `evil@web` ended in), in `Host` and in the target alike.
#[tokio::test]
async fn userinfo_in_host_or_target_is_400_dpe_and_never_forwarded() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: user:secret@a:80\r\n\r\n",
        b"GET http://evil@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://user:pw@a:8080/x HTTP/1.0\r\n\r\n",
    ] {
        let what = String::from_utf8_lossy(req);
        let res = raw(engine.local_addr(), req).await;
        assert_eq!(status_of(&res), "400", "{what}: {res}");
        assert!(
            res.to_ascii_lowercase()
                .contains("x-mesh-response-flags: dpe"),
            "{what}: {res}"
        );
    }
    // HTTP/2: userinfo in `:authority`
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let req = http::Request::builder()
        .uri("http://evil@a/")
        .body(full(""))
        .unwrap();
    let res = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-mesh-response-flags"], "DPE");
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    still_serves(&engine).await;
    engine.drain().await;
}

/// A `Host` that is no authority at all (a space, a slash, a non-ASCII byte) is an invalid
/// field value too (RFC 9112 §3.2; Envoy checks authority characters the same way).
#[tokio::test]
async fn host_with_bytes_no_authority_has_is_400_dpe() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
    ] {
        let what = String::from_utf8_lossy(req);
        let res = raw(engine.local_addr(), req).await;
        assert_eq!(status_of(&res), "400", "{what}: {res}");
        assert!(
            res.to_ascii_lowercase()
                .contains("x-mesh-response-flags: dpe"),
            "{what}: {res}"
        );
    }
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    still_serves(&engine).await;
    engine.drain().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_never_forwarded() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let res = raw(
        engine.local_addr(),
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert!(status_line(&res).starts_with("HTTP/1.1 400"), "{res}");
    assert_eq!(
        res.matches("HTTP/1.1").count(),
        1,
        "a second response: {res}"
    );
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    engine.drain().await;
}

#[tokio::test]
async fn duplicate_or_conflicting_content_length_is_400() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    for req in [
        &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"[..],
        &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
        &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2, 2\r\n\r\nok"[..],
    ] {
        let res = raw(engine.local_addr(), req).await;
        assert!(status_line(&res).starts_with("HTTP/1.1 400"), "{res}");
    }
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    engine.drain().await;
}

/// RFC 9110 §15.6.6: a well-formed version the proxy does not speak is 505 (and never
/// reaches the upstream); a malformed version token stays a 400 (a bad request line).
#[tokio::test]
async fn unknown_http_version_is_505_and_a_malformed_one_400() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    for (line, status) in [
        ("GET / HTTP/3.0", "505"),
        ("GET / HTTP/1.2", "505"),
        ("GET / HTTP/2.0", "505"),
        ("GET / FOO/1.1", "400"),
        ("GET / HTTP/11", "400"),
    ] {
        let res = raw(
            engine.local_addr(),
            format!("{line}\r\nhost: a\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            status_line(&res).starts_with(&format!("HTTP/1.1 {status}")),
            "{line}: {res}"
        );
    }
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // the connection after a 505 is closed, and the next connection works
    let mut good = h1_client(engine.local_addr()).await;
    let res = bounded(good.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 200);
    engine.drain().await;
}

#[tokio::test]
async fn a_malformed_request_does_not_affect_other_connections() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let addr = engine.local_addr();
    let mut good = h1_client(addr).await;
    let res = bounded(good.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 200);
    text(res).await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
        &b"GET / HTTP/1.1\r\nhost: a\r\nhost: x\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nhost: a, x\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nhost: evil@a\r\n\r\n"[..],
        &b"GET http://evil@a/ HTTP/1.1\r\nhost: a\r\n\r\n"[..],
    ] {
        let _ = raw(addr, bad).await;
        let res = bounded(good.send_request(get("/", "a"))).await.unwrap();
        assert_eq!(res.status(), 200);
        text(res).await;
    }
    let mut fresh = h1_client(addr).await;
    let res = bounded(fresh.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 200);
    engine.drain().await;
}

#[tokio::test]
async fn incomplete_header_block_is_closed_after_the_header_timeout() {
    let up = upstream(echo()).await;
    let limits = Limits {
        request_headers_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let engine = start(up.addr, false, limits, 1);
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    expect_closed(&mut s).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    // a connection that sends nothing at all is closed too
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    expect_closed(&mut s).await;
    engine.drain().await;
}

#[tokio::test]
async fn stream_idle_timeout_closes_a_connection_where_nothing_moves() {
    // the upstream never answers
    let handler: Handler = Arc::new(|_req| Box::pin(std::future::pending::<Response<UpBody>>()));
    let up = upstream(handler).await;
    let limits = Limits {
        stream_idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    };
    let engine = start(up.addr, false, limits, 1);
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    expect_closed(&mut s).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    engine.drain().await;
}

#[tokio::test]
async fn http2_max_concurrent_streams_is_advertised() {
    let up = upstream(echo()).await;
    let limits = Limits {
        http2_max_concurrent_streams: 7,
        ..Limits::default()
    };
    let engine = start(up.addr, false, limits, 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    // client preface + empty SETTINGS
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // the server's first frame is its SETTINGS
    let mut head = [0u8; 9];
    bounded(s.read_exact(&mut head)).await.unwrap();
    assert_eq!(head[3], 0x4, "not a SETTINGS frame");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    bounded(s.read_exact(&mut payload)).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    // SETTINGS_MAX_HEADER_LIST_SIZE = 60 KiB
    assert!(settings.contains(&(0x6, 60 * 1024)), "{settings:?}");
    drop(s); // a raw client would never ack the drain's GOAWAY ping
    engine.drain().await;
}

#[tokio::test]
async fn preface_split_across_writes_is_still_h2_and_split_h1_still_h1() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    // HTTP/1.1 starting like the preface
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"P").await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(b"OST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    // h2 preface in two writes
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    bounded(s.read_exact(&mut head)).await.unwrap();
    assert_eq!(head[3], 0x4, "expected the server's SETTINGS frame");
    drop(s);
    engine.drain().await;
}

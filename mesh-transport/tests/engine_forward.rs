//! The engine forwarding real traffic: HTTP/1.1 and h2c in, HTTP/1.1 and HTTP/2 out, pooling,
//! streaming, hop-by-hop headers, the connector's local replies, workers.

mod engine_common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use engine_common::*;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use mesh_core::ext::SelectedEndpoint;
use mesh_transport::{Engine, EngineConfig, Limits, WorkerContext};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::ServiceExt as _;

#[tokio::test]
async fn h1_request_reaches_upstream_with_host_and_origin_form() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/a/b?c=d", "reviews:9080")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-upstream"], "yes");
    let body = text(res).await;
    assert!(body.contains("uri=/a/b?c=d\n"), "{body}");
    assert!(body.contains("version=HTTP/1.1\n"), "{body}");
    assert!(body.contains("host: reviews:9080\n"), "{body}");
    engine.drain().await;
}

#[tokio::test]
async fn absolute_form_h1_request_goes_upstream_in_origin_form() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET http://reviews:9080/x?y HTTP/1.1\r\nhost: reviews:9080\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.contains("uri=/x?y\n"), "{res}");
    engine.drain().await;
}

/// RFC 9112 §3.2.2: with an absolute-form target "the origin server MUST ignore the
/// received Host header field […] A proxy that forwards such a request MUST generate a new
/// Host field value based on the received request-target rather than forward the received
/// Host field value". The engine replaces `Host` before the stack sees the request; the
/// stack here answers with the `Host` it saw, the upstream with the one it received.
#[tokio::test]
async fn absolute_form_target_replaces_host_for_the_stack_and_the_upstream() {
    let up = upstream(echo()).await;
    let up_addr = up.addr;
    let factory = Arc::new(move |ctx: &WorkerContext| {
        let connector = ctx.connector();
        tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let seen = req.headers().get("host").cloned();
            req.extensions_mut().insert(SelectedEndpoint::new(up_addr));
            let fut = connector.clone().oneshot(req);
            async move {
                let mut res = fut.await?;
                if let Some(h) = seen {
                    res.headers_mut().insert("x-stack-host", h);
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        })
    });
    let engine = Engine::start(EngineConfig::new("127.0.0.1:0".parse().unwrap()), factory).unwrap();
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET http://other:8081/x?y HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.contains("x-stack-host: other:8081\r\n"), "{res}");
    assert!(res.contains("uri=/x?y\n"), "{res}");
    assert!(res.contains("host: other:8081\n"), "{res}");
    assert!(!res.contains("host: web"), "{res}");
    // the same on HTTP/2: `:authority` wins over a `host` field
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let req = Request::builder()
        .uri("http://other:8081/h2")
        .header("host", "web")
        .body(full(""))
        .unwrap();
    let res = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-stack-host"], "other:8081");
    let body = text(res).await;
    assert!(body.contains("host: other:8081\n"), "{body}");
    assert!(!body.contains("host: web"), "{body}");
    engine.drain().await;
}

/// RFC 9110 §7.6.3: "A proxy MUST send an appropriate Via header field […] in each message
/// that it forwards", `received-protocol received-by`, appended after the entries the
/// request already had. The pseudonym is the listener's own (its loop marker).
#[tokio::test]
async fn forwarded_requests_carry_the_listeners_via_entry_last() {
    for upstream_h2 in [false, true] {
        let up = upstream(echo()).await;
        let engine = start(up.addr, upstream_h2, Limits::default(), 1);
        let me = engine.via_pseudonym().to_owned();
        assert!(me.starts_with("mesh-"), "{me}");
        let mut c = h1_client(engine.local_addr()).await;
        let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
        let body = text(res).await;
        assert!(body.contains(&format!("via: 1.1 {me}\n")), "{body}");
        let mut req = get("/", "a");
        req.headers_mut().append("via", "1.0 fred".parse().unwrap());
        req.headers_mut()
            .append("via", "1.1 nowhere.example (Apache/1.1)".parse().unwrap());
        let res = bounded(c.send_request(req)).await.unwrap();
        let body = text(res).await;
        let via: Vec<&str> = body.lines().filter(|l| l.starts_with("via: ")).collect();
        assert_eq!(
            via,
            [
                "via: 1.0 fred",
                "via: 1.1 nowhere.example (Apache/1.1)",
                &format!("via: 1.1 {me}")
            ],
            "upstream over HTTP/2: {upstream_h2}"
        );
        // `Connection: via` makes the client's entries hop-by-hop, never the proxy's own
        let mut req = get("/", "a");
        req.headers_mut()
            .append("connection", "via".parse().unwrap());
        req.headers_mut().append("via", "1.0 fred".parse().unwrap());
        let body = text(bounded(c.send_request(req)).await.unwrap()).await;
        let via: Vec<&str> = body.lines().filter(|l| l.starts_with("via: ")).collect();
        assert_eq!(via, [format!("via: 1.1 {me}")], "{body}");
        // an HTTP/2 client: received protocol `2`
        let (mut h2, _conn) = h2_client(engine.local_addr()).await;
        let req = Request::builder().uri("http://a/").body(full("")).unwrap();
        let body = text(bounded(h2.send_request(req)).await.unwrap()).await;
        assert!(body.contains(&format!("via: 2 {me}\n")), "{body}");
        // an HTTP/1.0 client: `1.0`
        let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let res = read_response(&mut s).await;
        assert!(res.contains(&format!("via: 1.0 {me}\n")), "{res}");
        engine.drain().await;
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_request_reaches_h1_upstream_with_authority_as_host() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri("http://bench.local/p?q=1")
        .body(full(""))
        .unwrap();
    let res = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    let body = text(res).await;
    assert!(body.contains("uri=/p?q=1\n"), "{body}");
    assert!(body.contains("version=HTTP/1.1\n"), "{body}");
    assert!(body.contains("host: bench.local\n"), "{body}");
    engine.drain().await;
}

#[tokio::test]
async fn http2_endpoint_is_reached_over_http2_with_authority() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, true, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    for _ in 0..3 {
        let res = bounded(c.send_request(get("/h2", "reviews:9080")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = text(res).await;
        assert!(body.contains("version=HTTP/2.0\n"), "{body}");
        assert!(body.contains("uri=http://reviews:9080/h2\n"), "{body}");
        assert!(
            !body.contains("host:"),
            "Host must become :authority: {body}"
        );
    }
    // one multiplexed connection for all three
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    engine.drain().await;
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    // sequential requests on one downstream connection, then on two more connections
    let mut c = h1_client(engine.local_addr()).await;
    for _ in 0..5 {
        let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
        assert_eq!(res.status(), 200);
        text(res).await;
    }
    for _ in 0..2 {
        let mut c = h1_client(engine.local_addr()).await;
        let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
        text(res).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    engine.drain().await;
}

#[tokio::test]
async fn request_body_streams_to_upstream_before_the_client_finishes() {
    const FIRST: usize = 1 << 20; // far more than any buffer on the way
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<usize>();
    let got_tx = Arc::new(std::sync::Mutex::new(Some(got_tx)));
    let handler: Handler = Arc::new(move |req: Request<hyper::body::Incoming>| {
        let got_tx = got_tx.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let (mut total, mut told) = (0usize, false);
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    total += d.len();
                }
                if total >= FIRST && !told {
                    told = true;
                    if let Some(tx) = got_tx.lock().unwrap().take() {
                        let _ = tx.send(total);
                    }
                }
            }
            Response::new(full(format!("total={total}")))
        })
    });
    let up = upstream(handler).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "a")
        .body(BodyExt::boxed(ChanBody(rx)))
        .unwrap();
    let res = tokio::spawn(c.send_request(req));
    for _ in 0..16 {
        tx.send(Bytes::from(vec![b'x'; FIRST / 16])).await.unwrap();
    }
    // the client has not finished its body; the upstream must have the first MiB already
    assert!(bounded(got_rx).await.unwrap() >= FIRST);
    tx.send(Bytes::from_static(b"end")).await.unwrap();
    drop(tx);
    let res = bounded(res).await.unwrap().unwrap();
    assert_eq!(text(res).await, format!("total={}", FIRST + 3));
    engine.drain().await;
}

#[tokio::test]
async fn response_body_streams_to_the_client_before_the_upstream_finishes() {
    let (more_tx, more_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let more_rx = Arc::new(std::sync::Mutex::new(Some(more_rx)));
    let handler: Handler = Arc::new(move |_req| {
        let rx = more_rx.lock().unwrap().take().unwrap();
        Box::pin(async move { Response::new(BodyExt::boxed(ChanBody(rx))) })
    });
    let up = upstream(handler).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/stream", "a"))).await.unwrap();
    let mut body = res.into_body();
    more_tx.send(Bytes::from_static(b"first")).await.unwrap();
    let frame = bounded(body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    more_tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(more_tx);
    let rest = bounded(body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    engine.drain().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_unknown_ones_kept() {
    let handler: Handler = Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap()));
            }
            Response::builder()
                .header("connection", "x-resp-private")
                .header("x-resp-private", "1")
                .header("keep-alive", "timeout=5")
                .header("x-resp-unknown", "kept")
                .body(full(text))
                .unwrap()
        })
    });
    let up = upstream(handler).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, x-private\r\nx-private: 1\r\n\
          keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nte: trailers\r\n\
          upgrade: websocket\r\nx-unknown-thing: Keep Me\r\n\r\n",
    )
    .await
    .unwrap();
    let res = read_response(&mut s).await;
    let (head, body) = res.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{res}");
    let upstream_saw: HashSet<&str> = body.lines().collect();
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert!(
            !upstream_saw
                .iter()
                .any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone}: {body}"
        );
    }
    assert!(upstream_saw.contains("x-unknown-thing: Keep Me"), "{body}");
    assert!(upstream_saw.contains("te: trailers"), "{body}");
    assert!(upstream_saw.contains("host: a"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("x-resp-private"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(head.contains("x-resp-unknown: kept"), "{head}");
    engine.drain().await;
}

#[tokio::test]
async fn dead_upstream_is_503_uf() {
    let dead = dead_addr().await;
    let engine = start(dead, false, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-mesh-response-flags"], "UF");
    // the downstream connection stays usable
    let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 503);
    engine.drain().await;
}

#[tokio::test]
async fn no_selected_endpoint_is_503_uh() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let mut req = get("/", "a");
    req.headers_mut()
        .insert("x-test-no-endpoint", "1".parse().unwrap());
    let res = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-mesh-response-flags"], "UH");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
    engine.drain().await;
}

#[tokio::test]
async fn upstream_closing_before_the_response_is_503_uc() {
    // an upstream that reads the request head and closes
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut b).await;
            drop(s);
        }
    });
    let engine = start(addr, false, Limits::default(), 1);
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-mesh-response-flags"], "UC");
    task.abort();
    engine.drain().await;
}

#[tokio::test]
async fn concurrency_two_serves_from_two_workers() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 2);
    assert_eq!(engine.workers(), 2);
    let mut seen = HashSet::new();
    // the kernel spreads connections by their 4-tuple: 64 connections all on one worker
    // would happen with probability 2^-63
    for _ in 0..64 {
        let mut c = h1_client(engine.local_addr()).await;
        let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
        seen.insert(res.headers()["x-worker"].to_str().unwrap().to_owned());
        text(res).await;
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, HashSet::from(["0".to_owned(), "1".to_owned()]));
    engine.drain().await;
}

#[tokio::test]
async fn concurrency_zero_means_one_worker_per_core() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 0);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(engine.workers(), cores);
    assert!(engine.is_ready());
    engine.drain().await;
}

#[tokio::test]
async fn many_concurrent_h2_streams_through_one_connection() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, Limits::default(), 1);
    let (c, _conn) = h2_client(engine.local_addr()).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri(format!("http://a/{i}"))
                .body(full(""))
                .unwrap();
            let res: Response<_> = c.send_request(req).await.unwrap();
            assert_eq!(res.status(), 200);
            let body = text(res).await;
            assert!(body.contains(&format!("uri=/{i}\n")), "{body}");
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    engine.drain().await;
}

/// The engine serves any response body a stack answers with (`ReplyBody`), here a plain
/// `Full<Bytes>` from an in-process service, and makes its own answers to malformed
/// requests in that body type too.
#[tokio::test]
async fn a_stack_answering_with_any_reply_body_is_served() {
    let factory = Arc::new(|_: &WorkerContext| {
        tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let text = format!("in-process {}", req.uri().path());
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from(text),
            )))
        })
    });
    let engine = Engine::start(EngineConfig::new("127.0.0.1:0".parse().unwrap()), factory).unwrap();
    let mut c = h1_client(engine.local_addr()).await;
    let res = bounded(c.send_request(get("/hello", "app"))).await.unwrap();
    assert_eq!(text(res).await, "in-process /hello");
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    engine.drain().await;
}

//! The connector's HTTP/1.1 client on the wire: raw TCP upstreams that read the exact request
//! bytes and answer hand-written responses, one test per framing rule (RFC 9112, RFC 9110).
//!
//! Each test scripts its upstream connection by connection ([`RawUpstream::accept`],
//! [`RawUpstream::next_on`]), so "reused" and "a new connection" are asserted exactly. No
//! sleeps: the test drives the client (spawned) and the upstream side in turn, and every await
//! is bounded. Header names compare case-insensitively and header order is not pinned, except
//! between fields of the same name; the request line and `Host` are exact.
// clippy.toml's allow-unwrap-in-tests covers #[test] functions only, not the helpers below
#![allow(clippy::unwrap_used)]

mod engine_common;

use std::net::SocketAddr;

use bytes::Bytes;
use engine_common::*;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh_transport::{Engine, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// === the raw upstream ===

/// A listener on 127.0.0.1:0 handing every accepted connection to the test.
struct RawUpstream {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<RawConn>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn bind() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                if tx.send(RawConn { s, buf: Vec::new() }).is_err() {
                    return;
                }
            }
        });
        RawUpstream { addr, conns, task }
    }

    /// The next connection the engine opens.
    async fn accept(&mut self) -> RawConn {
        bounded(self.conns.recv())
            .await
            .expect("upstream listener gone")
    }

    /// The next request on `conn`; fails if the engine opens a new connection instead of
    /// reusing `conn`, or closes `conn`.
    async fn next_on(&mut self, conn: &mut RawConn) -> RawRequest {
        bounded(async {
            tokio::select! {
                r = conn.read_request() => r,
                Some(_) = self.conns.recv() => {
                    panic!("the engine opened a new upstream connection instead of reusing the idle one")
                }
            }
        })
        .await
    }

    /// The next request, on `conn` if the engine reuses it, else on a new connection (which
    /// then replaces `conn`). Returns whether `conn` was reused.
    async fn next_anywhere(&mut self, conn: &mut RawConn) -> (RawRequest, bool) {
        bounded(async {
            tokio::select! {
                r = conn.try_read_request() => {
                    if let Some(r) = r {
                        return (r, true);
                    }
                }
                Some(mut c) = self.conns.recv() => {
                    let r = c.read_request().await;
                    *conn = c;
                    return (r, false);
                }
            }
            // `conn` was closed: the request comes on a new connection
            let mut c = self.conns.recv().await.expect("upstream listener gone");
            let r = c.read_request().await;
            *conn = c;
            (r, false)
        })
        .await
    }

    /// Asserts that no connection was accepted beyond those handed out so far.
    fn assert_no_new_connection(&mut self) {
        assert!(
            self.conns.try_recv().is_err(),
            "the engine opened an unexpected upstream connection"
        );
    }
}

/// One accepted upstream connection, read by the test.
struct RawConn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// How the request's body was framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A request as the upstream read it off the wire.
#[derive(Debug)]
struct RawRequest {
    /// The request line, exactly (without CRLF).
    line: String,
    /// Field names lowercased, values without surrounding whitespace, in wire order.
    headers: Vec<(String, String)>,
    framing: Framing,
    /// The body (chunked bodies decoded).
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl RawRequest {
    /// Every value of `name`, in order.
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The values of `name` as one comma-separated value (RFC 9110 §5.3), if any.
    fn joined(&self, name: &str) -> Option<String> {
        let v = self.values(name);
        (!v.is_empty()).then(|| v.join(", "))
    }

    fn has(&self, name: &str) -> bool {
        !self.values(name).is_empty()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_fields(text: &str) -> Vec<(String, String)> {
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("field line without a colon: {l:?}"));
            assert!(
                !n.is_empty() && !n.ends_with([' ', '\t']),
                "bad field name in {l:?}"
            );
            (
                n.to_ascii_lowercase(),
                v.trim_matches([' ', '\t']).to_owned(),
            )
        })
        .collect()
}

impl RawConn {
    /// Reads more bytes; false at EOF (or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.s.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let mut l: Vec<u8> = self.buf.drain(..i + 2).collect();
                l.truncate(i);
                return l;
            }
            assert!(self.fill().await, "upstream connection closed mid-line");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "upstream connection closed mid-body ({} of {n} bytes)",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// The next request, or `None` when the engine closes the connection before sending a
    /// byte of one.
    async fn try_read_request(&mut self) -> Option<RawRequest> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a request head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let head = String::from_utf8(head[..end].to_vec()).expect("request head is not UTF-8");
        let (line, fields) = head.split_once("\r\n").unwrap_or((&head, ""));
        let mut req = RawRequest {
            line: line.to_owned(),
            headers: parse_fields(fields),
            framing: Framing::None,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        // RFC 9112 §6.1, §6.3: never both
        let te = req.joined("transfer-encoding");
        let cl = req.values("content-length");
        assert!(
            te.is_none() || cl.is_empty(),
            "request has both Transfer-Encoding and Content-Length: {req:?}"
        );
        assert!(cl.len() <= 1, "repeated Content-Length: {req:?}");
        if let Some(te) = te {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            assert!(
                last.eq_ignore_ascii_case("chunked"),
                "request Transfer-Encoding without final chunked: {te}"
            );
            req.framing = Framing::Chunked;
            loop {
                let size_line = String::from_utf8(self.line().await).unwrap();
                let size = size_line.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    loop {
                        let l = String::from_utf8(self.line().await).unwrap();
                        if l.is_empty() {
                            break;
                        }
                        req.trailers.extend(parse_fields(&l));
                    }
                    break;
                }
                let data = self.take(size).await;
                req.body.extend_from_slice(&data);
                assert_eq!(
                    self.take(2).await,
                    b"\r\n",
                    "chunk data not followed by CRLF"
                );
            }
        } else if let Some(cl) = cl.first() {
            let n: usize = cl.parse().expect("bad request Content-Length");
            req.framing = Framing::Length(n);
            req.body = self.take(n).await;
        }
        Some(req)
    }

    async fn read_request(&mut self) -> RawRequest {
        bounded(self.try_read_request())
            .await
            .expect("the engine closed the upstream connection instead of sending a request")
    }

    async fn send(&mut self, bytes: &[u8]) {
        bounded(self.s.write_all(bytes)).await.unwrap();
    }

    /// Waits until the engine closes the connection (EOF or reset); fails if it sends bytes.
    async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut b = [0u8; 1024];
        match bounded(self.s.read(&mut b)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!(
                "expected the engine to close the upstream connection, got {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
        }
    }

    /// Closes the write side (FIN) and waits until the engine has closed its side too.
    async fn close_and_wait(mut self) {
        bounded(self.s.shutdown()).await.unwrap();
        self.expect_closed().await;
    }
}

// === the engine and its clients ===

type H1 = hyper::client::conn::http1::SendRequest<UpBody>;
type H2 = hyper::client::conn::http2::SendRequest<UpBody>;
type Pending = JoinHandle<hyper::Result<Response<Incoming>>>;

/// A raw upstream and a one-worker engine in front of it (one worker: one pool).
async fn setup() -> (RawUpstream, Engine) {
    let up = RawUpstream::bind().await;
    let engine = start(up.addr, false, Limits::default(), 1);
    (up, engine)
}

/// Sends a request on an HTTP/1.1 client without waiting for the answer.
async fn send(c: &mut H1, req: Request<UpBody>) -> Pending {
    bounded(c.ready()).await.unwrap();
    tokio::spawn(c.send_request(req))
}

async fn send_h2(c: &mut H2, req: Request<UpBody>) -> Pending {
    bounded(c.ready()).await.unwrap();
    tokio::spawn(c.send_request(req))
}

async fn response(p: Pending) -> Response<Incoming> {
    bounded(p).await.unwrap().unwrap()
}

async fn body(res: Response<Incoming>) -> Bytes {
    bounded(res.into_body().collect()).await.unwrap().to_bytes()
}

/// The body must end with an error (not complete, not hang).
async fn body_fails(res: Response<Incoming>) {
    match bounded(res.into_body().collect()).await {
        Err(_) => {}
        Ok(b) => panic!(
            "the body completed although the upstream broke it: {:?}",
            b.to_bytes()
        ),
    }
}

/// The response to a request whose upstream response broke after its head: the client gets
/// the head (the status cannot change any more) and a body that fails, as from Envoy. Never
/// a clean, complete response, and not a connection closed before any response.
async fn response_fails(p: Pending) {
    let res = bounded(p)
        .await
        .unwrap()
        .expect("the response head reaches the client before the failure");
    assert_eq!(res.status(), 200);
    body_fails(res).await;
}

fn flags(res: &Response<Incoming>) -> &str {
    res.headers()
        .get("x-mesh-response-flags")
        .map_or("", |v| v.to_str().unwrap())
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A GET through `c` answered by `OK` on the next connection the engine opens: the engine
/// still serves. Returns that connection.
async fn serves_on_a_new_connection(up: &mut RawUpstream, c: &mut H1) -> RawConn {
    let p = send(c, get("/next", "a")).await;
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "GET /next HTTP/1.1");
    conn.send(OK).await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "ok");
    conn
}

/// One GET whose upstream answer is `head` (a malformed response): 502 `UPE`, the upstream
/// connection closed, and the engine still serving on the same downstream connection.
async fn assert_bad_response_is_502(head: &[u8]) {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/bad", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(head).await;
    let res = response(p).await;
    assert_eq!(res.status(), 502, "{:?}", String::from_utf8_lossy(head));
    assert_eq!(flags(&res), "UPE");
    body(res).await;
    // RFC 9112 §6.3 rule 5: the proxy closes the connection to the server
    conn.expect_closed().await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

// === request head ===

/// RFC 9112 §3.2.1 (origin-form), §3.2 (Host); RFC 9110 §7.6.1 (hop-by-hop fields: the
/// `Connection` field, the fields it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`).
#[tokio::test]
async fn request_goes_upstream_in_origin_form_with_host_and_without_hop_by_hop_fields() {
    let (mut up, engine) = setup().await;
    let mut down = TcpStream::connect(engine.local_addr()).await.unwrap();
    down.write_all(
        b"GET /p?q=1 HTTP/1.1\r\nHost: reviews:9080\r\n\
          Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\n\
          X-Unknown: Keep Me\r\nX-Multi: a\r\nX-Multi: b\r\nAccept: */*\r\n\r\n",
    )
    .await
    .unwrap();
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "GET /p?q=1 HTTP/1.1");
    assert_eq!(req.values("host"), ["reviews:9080"]);
    assert_eq!(req.values("x-unknown"), ["Keep Me"]);
    assert_eq!(req.joined("x-multi").as_deref(), Some("a, b"));
    assert_eq!(req.values("accept"), ["*/*"]);
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!req.has(gone), "{gone} was forwarded: {req:?}");
    }
    // TE: trailers may be kept (it only says the client accepts trailers)
    assert!(req.values("te").iter().all(|v| *v == "trailers"), "{req:?}");
    // no body on a GET without one (RFC 9110 §8.6: no Content-Length, or 0)
    assert!(
        matches!(req.framing, Framing::None | Framing::Length(0)),
        "{req:?}"
    );
    conn.send(OK).await;
    let res = read_response(&mut down).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with("\r\n\r\nok"), "{res}");
    engine.drain().await;
}

/// RFC 9113 §8.3.1 and RFC 9112 §3.2: an HTTP/2 request's `:authority` becomes `Host`, and the
/// target goes in origin-form.
#[tokio::test]
async fn h2c_request_goes_upstream_in_origin_form_with_authority_as_host() {
    let (mut up, engine) = setup().await;
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri("http://bench.local:8080/p?q=1")
        .header("x-unknown", "v")
        .body(full(""))
        .unwrap();
    let p = send_h2(&mut c, req).await;
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "GET /p?q=1 HTTP/1.1");
    assert_eq!(req.values("host"), ["bench.local:8080"]);
    assert_eq!(req.values("x-unknown"), ["v"]);
    assert!(
        matches!(req.framing, Framing::None | Framing::Length(0)),
        "{req:?}"
    );
    conn.send(OK).await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §3.2: "A client MUST send a Host header field in all HTTP/1.1 request messages"
/// (empty when the target has no authority). An HTTP/1.0 client need not send one, yet the
/// engine forwards as HTTP/1.1.
#[tokio::test]

async fn http10_request_without_host_goes_upstream_with_a_host_field() {
    let (mut up, engine) = setup().await;
    let mut down = TcpStream::connect(engine.local_addr()).await.unwrap();
    down.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "GET /old HTTP/1.1");
    assert_eq!(req.values("host").len(), 1, "{req:?}");
    conn.send(OK).await;
    let res = read_response(&mut down).await;
    assert!(res.contains(" 200 "), "{res}");
    engine.drain().await;
}

// === response framing ===

/// RFC 9112 §6.3 rule 6 (Content-Length), §9.3 (persistence).
#[tokio::test]
async fn content_length_response_arrives_intact_and_the_connection_is_reused() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/one", "a")).await;
    let mut conn = up.accept().await;
    assert_eq!(conn.read_request().await.line, "GET /one HTTP/1.1");
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\nhello world")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-a"], "1");
    assert_eq!(body(res).await, "hello world");

    let p = send(&mut c, get("/two", "a")).await;
    let req = up.next_on(&mut conn).await;
    assert_eq!(req.line, "GET /two HTTP/1.1");
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        .await;
    assert_eq!(body(response(p).await).await, "two");
    up.assert_no_new_connection();
    engine.drain().await;
}

/// RFC 9112 §7.1 (chunked), §7.1.1 (chunk extensions are ignored), §7.1.2 (trailer section).
#[tokio::test]
async fn chunked_response_with_extensions_and_trailers_arrives_intact_and_the_connection_is_reused()
{
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/chunked", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n \r\n5;a=b;c=\"d e\"\r\nworld\r\n00a\r\n0123456789\r\n\
          0\r\nX-Checksum: abc\r\n\r\n",
    )
    .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "hello world0123456789");

    let p = send(&mut c, get("/after", "a")).await;
    assert_eq!(up.next_on(&mut conn).await.line, "GET /after HTTP/1.1");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §7.1.2 and RFC 9110 §6.5: the trailer fields of a chunked response reach an
/// HTTP/2 client (which always accepts trailers) as trailers.
#[tokio::test]
async fn chunked_response_trailers_reach_an_h2c_client() {
    let (mut up, engine) = setup().await;
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let req = Request::builder()
        .uri("http://a/trailers")
        .header("te", "trailers")
        .body(full(""))
        .unwrap();
    let p = send_h2(&mut c, req).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
    )
    .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    let collected = bounded(res.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "hello");
    let trailers = trailers.expect("no trailers");
    assert_eq!(trailers["x-checksum"], "abc");
    engine.drain().await;
}

/// RFC 9112 §6.3 rule 8: neither Content-Length nor Transfer-Encoding, the body ends when
/// the server closes; the connection cannot be reused.
#[tokio::test]
async fn close_delimited_response_arrives_intact_and_the_next_request_opens_a_new_connection() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/eof", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the ")
        .await;
    conn.send(b"connection closes").await;
    drop(conn);
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "until the connection closes");
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// RFC 9112 §9.6: after a response with `Connection: close` the client closes the
/// connection; the next request goes on a new one. `Connection` is hop-by-hop and not
/// forwarded: the downstream connection stays open.
#[tokio::test]
async fn connection_close_response_is_not_reused() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/close", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("connection").is_none());
    assert_eq!(body(res).await, "hello");
    conn.expect_closed().await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// RFC 9112 §9.3: an HTTP/1.0 response without `keep-alive` means the connection closes.
#[tokio::test]
async fn http10_response_without_keep_alive_is_not_reused() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/old", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "hello");
    conn.expect_closed().await;
    // a new client: whether the downstream connection survives is the next test's subject
    let mut c = h1_client(engine.local_addr()).await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// RFC 9110 §6.2: an intermediary sends its own HTTP version; the upstream's HTTP/1.0 does
/// not make the response to the client HTTP/1.0 nor close the client's connection
/// (persistence is per hop, RFC 9112 §9.3).
#[tokio::test]

async fn http10_upstream_response_reaches_the_client_as_http11_on_a_persistent_connection() {
    let (mut up, engine) = setup().await;
    let mut down = TcpStream::connect(engine.local_addr()).await.unwrap();
    down.write_all(b"GET /old HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let res = read_response(&mut down).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with("\r\n\r\nhello"), "{res}");
    down.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(OK).await;
    let res = read_response(&mut down).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    engine.drain().await;
}

/// RFC 9110 §15.2: a client parses and skips 1xx interim responses (here 100 Continue and
/// 103 Early Hints) before the final one.
#[tokio::test]
async fn interim_responses_are_skipped_and_the_final_one_delivered() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/interim", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        .await;
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "done");

    let p = send(&mut c, get("/after", "a")).await;
    up.next_on(&mut conn).await;
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §6.3 rule 1 and RFC 9110 §9.3.2: a response to HEAD ends with its head, whatever
/// its Content-Length says; the connection is then reused.
#[tokio::test]
async fn head_response_has_no_body_despite_content_length_and_the_connection_is_reused() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let req = Request::builder()
        .method(Method::HEAD)
        .uri("/h")
        .header("host", "a")
        .body(full(""))
        .unwrap();
    let p = send(&mut c, req).await;
    let mut conn = up.accept().await;
    assert_eq!(conn.read_request().await.line, "HEAD /h HTTP/1.1");
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], "100");
    assert_eq!(body(res).await, "");

    // the next response is not mistaken for the HEAD's body
    let p = send(&mut c, get("/g", "a")).await;
    assert_eq!(up.next_on(&mut conn).await.line, "GET /g HTTP/1.1");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §6.3 rule 1: 204 and 304 responses end with their head (a 304 may carry the
/// Content-Length of the representation, RFC 9110 §8.6); the connection is then reused.
#[tokio::test]
async fn no_content_and_not_modified_responses_have_no_body_and_the_connection_is_reused() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/204", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 204);
    assert_eq!(body(res).await, "");

    let p = send(&mut c, get("/304", "a")).await;
    assert_eq!(up.next_on(&mut conn).await.line, "GET /304 HTTP/1.1");
    conn.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 50\r\n\r\n")
        .await;
    let res = response(p).await;
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"], "\"x\"");
    assert_eq!(body(res).await, "");

    let p = send(&mut c, get("/200", "a")).await;
    assert_eq!(up.next_on(&mut conn).await.line, "GET /200 HTTP/1.1");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9110 §5.3: fields with the same name keep their order; `Set-Cookie` cannot be
/// combined into one line, so each arrives as its own field.
#[tokio::test]
async fn repeated_response_fields_reach_the_client_in_order() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/cookies", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-Other: x\r\n\
          Set-Cookie: b=2, c=3\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    let cookies: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2, c=3"]);
    assert_eq!(res.headers()["x-other"], "x");
    assert_eq!(body(res).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §6.3 rule 3: with both Transfer-Encoding and Content-Length, Transfer-Encoding
/// wins; such a message "ought to be handled as an error" (502 is fine), and "an intermediary
/// that chooses to forward the message MUST first remove the received Content-Length field".
/// The connection may or may not be reused afterwards.
#[tokio::test]

async fn response_with_content_length_and_chunked_is_decoded_as_chunked_or_refused() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/both", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          b\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let res = response(p).await;
    if res.status() == 502 {
        // handled as an error: refused, and the connection closed
        assert_eq!(flags(&res), "UPE");
        body(res).await;
    } else {
        assert_eq!(res.status(), 200);
        if let Some(cl) = res.headers().get("content-length") {
            assert_eq!(cl, "11", "the upstream's Content-Length was forwarded");
        }
        assert_eq!(body(res).await, "hello world");
    }

    let p = send(&mut c, get("/after", "a")).await;
    let (req, _reused) = up.next_anywhere(&mut conn).await;
    assert_eq!(req.line, "GET /after HTTP/1.1");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §9.3 / §9.4 (no pipelining was asked for): bytes the upstream sends after a
/// complete response are not the answer to the next request (response desync); the next
/// client gets what the upstream answers to its own request.
#[tokio::test]
async fn bytes_after_a_complete_response_are_not_taken_as_the_next_response() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/one", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none\
          HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale",
    )
    .await;
    let res = response(p).await;
    assert_eq!(body(res).await, "one");

    let p = send(&mut c, get("/two", "a")).await;
    let (req, _reused) = up.next_anywhere(&mut conn).await;
    assert_eq!(req.line, "GET /two HTTP/1.1");
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        .await;
    assert_eq!(body(response(p).await).await, "fresh");
    engine.drain().await;
}

/// A response head and chunked body arriving a few bytes per segment parse the same
/// (RFC 9112 §2.2: a recipient parses a message as a sequence of octets, however it arrives).
#[tokio::test]
async fn response_split_into_tiny_writes_is_parsed() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/tiny", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    let wire: &[u8] = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5\r\nhello\r\n6;e=1\r\n world\r\n0\r\n\r\n";
    for piece in wire.chunks(3) {
        conn.send(piece).await;
    }
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-a"], "1");
    assert_eq!(body(res).await, "hello world");
    let p = send(&mut c, get("/after", "a")).await;
    up.next_on(&mut conn).await;
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

// === request bodies ===

/// RFC 9112 §6.2: a request body of known length goes with that Content-Length.
#[tokio::test]
async fn request_body_with_content_length_reaches_upstream_exactly() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/post")
        .header("host", "a")
        .body(full("hello world"))
        .unwrap();
    let p = send(&mut c, req).await;
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "POST /post HTTP/1.1");
    assert_eq!(req.framing, Framing::Length(11));
    assert_eq!(req.body, b"hello world");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    // nothing after the body: the connection is reused for the next request
    let p = send(&mut c, get("/after", "a")).await;
    assert_eq!(up.next_on(&mut conn).await.line, "GET /after HTTP/1.1");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §7.1: a chunked request body (extensions, a trailer) reaches the upstream whole,
/// re-chunked or with a length.
#[tokio::test]
async fn chunked_request_body_reaches_upstream_whole() {
    let (mut up, engine) = setup().await;
    let mut down = TcpStream::connect(engine.local_addr()).await.unwrap();
    down.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "POST /up HTTP/1.1");
    assert!(
        matches!(req.framing, Framing::Chunked | Framing::Length(11)),
        "{req:?}"
    );
    assert_eq!(req.body, b"hello world");
    conn.send(OK).await;
    let res = read_response(&mut down).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    engine.drain().await;
}

/// RFC 9110 §10.1.1: a client sending `Expect: 100-continue` waits for `100 Continue` before
/// its body (curl does for large uploads). The engine answers it as soon as the request is
/// on its way upstream (hyper's server sends it when the body is first read), the body then
/// reaches the upstream, and an interim `100` from the upstream is not passed on twice.
#[tokio::test]
async fn expect_100_continue_gets_its_interim_answer_and_the_body_goes_through() {
    let (mut up, engine) = setup().await;
    let mut down = TcpStream::connect(engine.local_addr()).await.unwrap();
    down.write_all(
        b"PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // the client waits for the interim answer before sending anything more
    let mut interim = Vec::new();
    while find(&interim, b"\r\n\r\n").is_none() {
        let mut b = [0u8; 256];
        let n = bounded(down.read(&mut b)).await.unwrap();
        assert!(n > 0, "closed before 100 Continue");
        interim.extend_from_slice(&b[..n]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    down.write_all(b"hello world").await.unwrap();
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "PUT /upload HTTP/1.1");
    assert_eq!(req.framing, Framing::Length(11));
    assert_eq!(req.body, b"hello world");
    conn.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        .await;
    let res = read_response(&mut down).await;
    assert!(res.starts_with("HTTP/1.1 201"), "{res}");
    assert!(res.ends_with("ok"), "{res}");
    engine.drain().await;
}

/// RFC 9113 §8.1 and RFC 9112 §6: an HTTP/2 request body without content-length goes to an
/// HTTP/1.1 upstream chunked (or with a length), whole.
#[tokio::test]
async fn h2c_request_body_without_content_length_reaches_upstream_whole() {
    let (mut up, engine) = setup().await;
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let (tx, rx) = mpsc::channel(4);
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://a/stream")
        .body(BodyExt::boxed(ChanBody(rx)))
        .unwrap();
    let p = send_h2(&mut c, req).await;
    for piece in ["one ", "two ", "three"] {
        tx.send(Bytes::from(piece)).await.unwrap();
    }
    drop(tx);
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    assert_eq!(req.line, "POST /stream HTTP/1.1");
    assert_eq!(req.values("host"), ["a"]);
    assert!(
        matches!(req.framing, Framing::Chunked | Framing::Length(13)),
        "{req:?}"
    );
    assert_eq!(req.body, b"one two three");
    conn.send(OK).await;
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "ok");
    engine.drain().await;
}

// === failures ===

/// RFC 9112 §4: a status line that does not parse → 502 `UPE`.
#[tokio::test]
async fn unparsable_status_line_is_502_upe() {
    assert_bad_response_is_502(b"HTTP/1.1 abc\r\n\r\n").await;
}

/// RFC 9112 §2.2: bytes that are no HTTP response at all → 502 `UPE`.
#[tokio::test]
async fn garbage_response_is_502_upe() {
    assert_bad_response_is_502(b"garbage, not HTTP\r\n\r\n").await;
}

/// RFC 9112 §6.3 rule 5: an invalid Content-Length in a response: "the proxy MUST close the
/// connection to the server, discard the received response, and send a 502".
#[tokio::test]
async fn invalid_content_length_is_502_upe() {
    assert_bad_response_is_502(b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello").await;
}

/// RFC 9112 §6.3 rule 5: differing Content-Length values are invalid too.
#[tokio::test]
async fn conflicting_content_lengths_are_502_upe() {
    assert_bad_response_is_502(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
}

/// RFC 9112 §5.2: a proxy receiving obs-fold in a response either replaces the response by
/// a 502 or replaces each obs-fold by spaces before forwarding.
#[tokio::test]
async fn obs_fold_in_a_response_is_502_or_unfolded() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/fold", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n  b\r\nContent-Length: 2\r\n\r\nok")
        .await;
    let res = response(p).await;
    match res.status().as_u16() {
        502 => assert_eq!(flags(&res), "UPE"),
        200 => {
            let v = res.headers()["x-fold"].as_bytes();
            assert!(!v.contains(&b'\r') && !v.contains(&b'\n'), "{v:?}");
        }
        s => panic!("unexpected status {s}"),
    }
    engine.drain().await;
}

/// RFC 9112 §9.6 / §8: the upstream closes a fresh connection after reading the request and
/// before any response byte → 503 `UC` (not retried: a new connection is no keep-alive race).
#[tokio::test]
async fn upstream_closing_a_fresh_connection_without_answering_is_503_uc() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    drop(conn);
    let res = response(p).await;
    assert_eq!(res.status(), 503);
    assert_eq!(flags(&res), "UC");
    body(res).await;
    up.assert_no_new_connection();
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// RFC 9112 §8: a connection closed inside the response head leaves an incomplete message:
/// the upstream terminated before the response head → 503 `UC`.
#[tokio::test]
async fn upstream_closing_inside_the_response_head_is_503_uc() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    drop(conn);
    let res = response(p).await;
    assert_eq!(res.status(), 503);
    assert_eq!(flags(&res), "UC");
    body(res).await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// RFC 9112 §8: a body shorter than its Content-Length is incomplete. The head (200) cannot
/// be changed any more, so the client gets it and a body that fails, and the engine keeps
/// serving on new connections.
#[tokio::test]
async fn upstream_closing_mid_body_fails_the_client_body_and_the_engine_keeps_serving() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/short", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    drop(conn);
    response_fails(p).await;
    let mut c = h1_client(engine.local_addr()).await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// The same over HTTP/2 downstream: the stream is reset rather than ended cleanly.
#[tokio::test]
async fn upstream_closing_mid_body_resets_the_h2c_stream() {
    let (mut up, engine) = setup().await;
    let (mut c, _conn) = h2_client(engine.local_addr()).await;
    let p = send_h2(&mut c, get("http://a/short", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    drop(conn);
    response_fails(p).await;
    // the HTTP/2 connection itself still serves
    let p = send_h2(&mut c, get("http://a/next", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §7.1: a chunk size that is not hex is a framing error; the client's response
/// does not complete (as above) and the engine keeps serving.
#[tokio::test]
async fn invalid_chunk_size_fails_the_client_body_and_the_engine_keeps_serving() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/badchunk", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        .await;
    response_fails(p).await;
    // the upstream connection is not trusted any more
    conn.expect_closed().await;
    let mut c = h1_client(engine.local_addr()).await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// RFC 9112 §9.3 and §9.6: an idle pooled connection the upstream closed (and whose close
/// the engine has seen) is not used; the next request goes on a new connection and succeeds.
#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_while_idle_is_not_used() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/one", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    // the upstream closes the idle keep-alive connection; wait until the engine closed its
    // side too, so the close has been seen
    conn.close_and_wait().await;
    let p = send(&mut c, get("/two", "a")).await;
    let mut conn = up.accept().await;
    assert_eq!(conn.read_request().await.line, "GET /two HTTP/1.1");
    conn.send(OK).await;
    let res = response(p).await;
    assert_eq!(res.status(), 200, "{:?}", res.headers());
    assert_eq!(body(res).await, "ok");
    engine.drain().await;
}

/// RFC 9112 §9.3.1 and RFC 9110 §9.2.2: the keep-alive race proper: the upstream closes a
/// reused connection just as the next request arrives, without a response byte. A GET
/// without a body is idempotent and may be retried automatically on a new connection.
#[tokio::test]

async fn idempotent_request_on_a_reused_connection_closed_without_a_response_is_retried() {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/one", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    let mut p = send(&mut c, get("/two", "a")).await;
    assert_eq!(up.next_on(&mut conn).await.line, "GET /two HTTP/1.1");
    drop(conn);
    let mut conn = bounded(async {
        tokio::select! {
            c = up.conns.recv() => c.expect("upstream listener gone"),
            r = &mut p => panic!("answered without a retry: {:?}", r.unwrap().map(|r| r.status())),
        }
    })
    .await;
    assert_eq!(conn.read_request().await.line, "GET /two HTTP/1.1");
    conn.send(OK).await;
    let res = response(p).await;
    assert_eq!(res.status(), 200, "{:?}", res.headers());
    assert_eq!(body(res).await, "ok");
    engine.drain().await;
}

/// A response head of `size` bytes (one huge field), the upstream writing from its own task
/// (the engine may stop reading). Returns the setup, the client and the response.
async fn huge_head(size: usize) -> (RawUpstream, Engine, H1, Response<Incoming>) {
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/huge", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ".to_vec();
    head.resize(size - 6, b'a');
    head.extend_from_slice(b"\r\n\r\nok");
    let writer = tokio::spawn(async move {
        let _ = conn.s.write_all(&head).await;
        // hold the connection until the engine closes it (or the test ends)
        let mut b = [0u8; 1024];
        while let Ok(n) = conn.s.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    });
    let res = response(p).await;
    drop(writer);
    (up, engine, c, res)
}

/// A response head beyond any sane limit (1 MiB) → 502 `UPE`, no hang, and the engine keeps
/// serving (RFC 9112 §2.3 leaves the limit to the recipient; Envoy's is 60 KiB).
#[tokio::test]
async fn response_head_of_one_mib_is_502_upe() {
    let (mut up, engine, mut c, res) = huge_head(1 << 20).await;
    assert_eq!(res.status(), 502);
    assert_eq!(flags(&res), "UPE");
    body(res).await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// A response head over 64 KiB → 502 `UPE`.
#[tokio::test]

async fn response_head_over_64_kib_is_502_upe() {
    let (mut up, engine, mut c, res) = huge_head(80 * 1024).await;
    assert_eq!(res.status(), 502);
    assert_eq!(flags(&res), "UPE");
    body(res).await;
    serves_on_a_new_connection(&mut up, &mut c).await;
    engine.drain().await;
}

/// A 32 KiB response head (large cookies, long CSP headers) is still accepted.
#[tokio::test]
async fn response_head_of_32_kib_is_accepted() {
    let (_up, engine, _c, res) = huge_head(32 * 1024).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["x-big"].len() > 30 * 1024);
    assert_eq!(body(res).await, "ok");
    engine.drain().await;
}

// === large bodies ===

/// A 4 MiB Content-Length response streams through intact (RFC 9112 §6.3 rule 6).
#[tokio::test]
async fn large_content_length_response_streams_intact() {
    const N: usize = 4 << 20;
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let p = send(&mut c, get("/big", "a")).await;
    let mut conn = up.accept().await;
    conn.read_request().await;
    let writer = tokio::spawn(async move {
        conn.s
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {N}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        conn.s.write_all(&pattern(N)).await.unwrap();
        conn
    });
    let res = response(p).await;
    assert_eq!(res.status(), 200);
    let got = body(res).await;
    assert_eq!(got.len(), N);
    assert!(got == pattern(N), "body bytes differ");
    let mut conn = bounded(writer).await.unwrap();
    // and the connection is reused after the big body
    let p = send(&mut c, get("/after", "a")).await;
    up.next_on(&mut conn).await;
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

/// A 1 MiB request body without a length (sent chunked by the client) streams to the
/// upstream intact (RFC 9112 §7.1).
#[tokio::test]
async fn large_chunked_request_body_streams_intact() {
    const N: usize = 1 << 20;
    let (mut up, engine) = setup().await;
    let mut c = h1_client(engine.local_addr()).await;
    let (tx, rx) = mpsc::channel(4);
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/upload")
        .header("host", "a")
        .body(BodyExt::boxed(ChanBody(rx)))
        .unwrap();
    let p = send(&mut c, req).await;
    let feeder = tokio::spawn(async move {
        for piece in pattern(N).chunks(64 * 1024 - 7) {
            tx.send(Bytes::copy_from_slice(piece)).await.unwrap();
        }
    });
    let mut conn = up.accept().await;
    let req = conn.read_request().await;
    bounded(feeder).await.unwrap();
    assert_eq!(req.line, "PUT /upload HTTP/1.1");
    assert!(
        matches!(req.framing, Framing::Chunked | Framing::Length(N)),
        "{:?}",
        req.framing
    );
    assert_eq!(req.body.len(), N);
    assert!(req.body == pattern(N), "body bytes differ");
    conn.send(OK).await;
    assert_eq!(body(response(p).await).await, "ok");
    engine.drain().await;
}

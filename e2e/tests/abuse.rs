//! The reference proxy under abuse, through real sockets (issue 15, "Hardening"): the HTTP/2
//! attacks written frame by frame, slowloris, the connection cap, descriptor exhaustion and
//! ten thousand idle connections. Each test checks the limit itself (the `GOAWAY` code, the
//! connection closed, the counter on `/stats/prometheus`) and that a well-behaved client on
//! another connection is still served.
//!
//! A stalled TLS handshake on the inbound mTLS listener (`tlsHandshakeTimeout`) is
//! `mtls.rs`'s `a_stalled_handshake_is_cut_at_the_tls_handshake_timeout`; a garbage
//! ClientHello is `a_garbage_client_hello_closes_that_connection_and_the_listener_keeps_serving`.

use crate::support;

use std::io::{BufRead, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy-e2e");
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

// === frames, by hand ===

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The HPACK block of `GET http://reviews/`: `:method GET`, `:scheme http`, `:path /` from the
/// static table, `:authority reviews` as a literal that is not indexed.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 7];
    b.extend_from_slice(b"reviews");
    b
}

fn get(stream: u32, end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &get_block())
}

/// A raw h2c connection: preface and an empty SETTINGS sent.
async fn h2_raw(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf) {
    let s = bounded(TcpStream::connect(addr)).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    w.write_all(&hello).await.unwrap();
    (r, w)
}

/// Reads frames until a GOAWAY with an error code (returned) or the end of the connection
/// (`None`). A GOAWAY with `NO_ERROR` is skipped.
async fn goaway_code(r: &mut OwnedReadHalf) -> Option<u32> {
    bounded(async {
        loop {
            let mut head = [0u8; 9];
            r.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await.ok()?;
            if head[3] == GOAWAY && len >= 8 {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                if code != 0 {
                    return Some(code);
                }
            }
        }
    })
    .await
}

/// Reads (and drops) what is left until the proxy closes the connection.
async fn closed(r: &mut OwnedReadHalf) {
    let mut sink = [0u8; 4096];
    bounded(async {
        loop {
            match r.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Sends `setup`, then `unit` over and over (at most `max` times, until the proxy stops
/// reading or closes); returns the GOAWAY code the proxy answered with, after checking that
/// it closed the connection.
async fn flood(addr: SocketAddr, setup: Vec<u8>, unit: Vec<u8>, max: usize) -> Option<u32> {
    let (mut r, mut w) = h2_raw(addr).await;
    w.write_all(&setup).await.unwrap();
    let writer = tokio::spawn(async move {
        let batch: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * 64).collect();
        let mut sent = 0;
        while sent < max {
            if w.write_all(&batch).await.is_err() {
                return;
            }
            sent += 64;
        }
    });
    let code = goaway_code(&mut r).await;
    closed(&mut r).await;
    writer.abort();
    code
}

// === the proxy ===

async fn reviews_proxy(extra: &str) -> (Running, Backend) {
    let app = backend("v1").await;
    let yaml = format!(
        "{}{}",
        bootstrap(1, extra),
        service_entry("reviews", 80, "HTTP", &[&app])
    );
    (start(&yaml).await, app)
}

async fn goaways(admin: SocketAddr, cause: &str) -> f64 {
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    sample(
        &text,
        &format!("mesh_proxy_http2_goaways_total{{listener=\"outbound\",cause=\"{cause}\"}}"),
    )
}

/// A well-behaved client on its own connection: HTTP/1.1 and h2c both get `200`.
async fn others_are_served(out: SocketAddr) {
    let r = get_once(out, "reviews", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let mut h2 = h2(out).await;
    let res = bounded(h2.send_request(request("reviews", &[])))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

// === HTTP/2 ===

/// CVE-2023-44487: HEADERS then RST_STREAM, over and over. `h2` closes the connection when
/// the resets come before the server accepted the streams; the premature-reset guard when
/// they come after. Either way: GOAWAY `ENHANCE_YOUR_CALM`, the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_enhance_your_calm_and_others_are_served() {
    let (p, _app) = reviews_proxy("").await;
    let (mut r, mut w) = h2_raw(p.out).await;
    let writer = tokio::spawn(async move {
        for id in (1u32..).step_by(2).take(20_000) {
            let mut b = get(id, true);
            b.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    assert_eq!(goaway_code(&mut r).await, Some(ENHANCE_YOUR_CALM));
    closed(&mut r).await;
    writer.abort();
    let by_h2 = goaways(p.admin, "h2_enhance_your_calm").await;
    let by_guard = goaways(p.admin, "premature_reset").await;
    assert_eq!(
        by_h2 + by_guard,
        1.0,
        "one connection closed, by either guard"
    );
    others_are_served(p.out).await;
}

/// Rapid reset of streams the proxy did accept and forward: every request reaches the
/// upstream before the client cancels it (the costly form, which `h2`'s own counter of
/// streams reset before acceptance does not see). Envoy's `premature_reset_total_stream_count`
/// (500): after 500 streams, at least half of them reset, GOAWAY `ENHANCE_YOUR_CALM`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_after_the_upstream_saw_each_request_trip_the_premature_reset_guard() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<()>();
    let answer = named("v1");
    let handler: Handler = Arc::new(move |req: http::Request<hyper::body::Incoming>| {
        if req.uri().path() != "/hold" {
            return answer(req);
        }
        let seen_tx = seen_tx.clone();
        Box::pin(async move {
            let _ = seen_tx.send(());
            // answered never: the client cancels
            std::future::pending::<http::Response<UpBody>>().await
        })
    });
    let app = backend_with("slow", handler).await;
    let yaml = format!(
        "{}{}",
        bootstrap(1, ""),
        service_entry("reviews", 80, "HTTP", &[&app])
    );
    let p = start(&yaml).await;
    let (mut r, mut w) = h2_raw(p.out).await;
    let mut reader = tokio::spawn(async move {
        let code = goaway_code(&mut r).await;
        closed(&mut r).await;
        code
    });
    let mut id = 1u32;
    let code = 'attack: loop {
        // 50 streams (under the 100 concurrent), each seen upstream, then all reset
        let ids: Vec<u32> = (0..50).map(|i| id + 2 * i).collect();
        id += 100;
        assert!(id < 2000, "no GOAWAY after {} streams", id / 2);
        let mut b = Vec::new();
        for i in &ids {
            // `GET http://reviews/hold`
            let mut block = vec![0x82, 0x86, 0x04, 5];
            block.extend_from_slice(b"/hold");
            block.extend_from_slice(&[0x01, 7]);
            block.extend_from_slice(b"reviews");
            b.extend(frame(HEADERS, END_HEADERS | END_STREAM, *i, &block));
        }
        let _ = w.write_all(&b).await;
        for _ in &ids {
            tokio::select! {
                s = seen.recv() => assert!(s.is_some()),
                code = &mut reader => break 'attack code.unwrap(),
            }
        }
        let mut b = Vec::new();
        for i in &ids {
            b.extend(frame(RST_STREAM, 0, *i, &8u32.to_be_bytes()));
        }
        let _ = w.write_all(&b).await;
    };
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "premature_reset").await, 1.0);
    others_are_served(p.out).await;
}

/// CVE-2024-27316: a header block that never ends (CONTINUATION after CONTINUATION without
/// END_HEADERS). `h2` allows only the frames the header list size needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    let open = frame(HEADERS, END_STREAM, 1, &get_block()); // no END_HEADERS
    // `x-a: aaaa…` literal fields, 1 KiB a frame
    let mut field = vec![0x00, 3, b'x', b'-', b'a', 0x7f, 0xe9, 0x06];
    field.extend(std::iter::repeat_n(b'a', 1000));
    let unit = frame(CONTINUATION, 0, 1, &field);
    let code = flood(p.out, open, unit, 100_000).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "h2_enhance_your_calm").await, 1.0);
    others_are_served(p.out).await;
}

/// An HPACK bomb: one 4 KiB field put in the dynamic table, then referenced by a one-byte
/// index thousands of times: a 16 KiB block that decodes to 64 MiB. Over four times the
/// advertised header list size (`maxRequestHeadersKb`), `h2` stops decoding and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    let (mut r, mut w) = h2_raw(p.out).await;
    let mut block = get_block();
    // literal with incremental indexing, new name `x-b`, a 4000-byte value (7-bit prefix:
    // 127 + 3873 as a varint)
    block.extend([0x40, 3, b'x', b'-', b'b', 0x7f, 0xa1, 0x1e]);
    block.extend(std::iter::repeat_n(b'b', 4000));
    // index 62: the newest dynamic entry
    block.extend(std::iter::repeat_n(0xbe, 16_384 - block.len()));
    w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .unwrap();
    assert_eq!(goaway_code(&mut r).await, Some(ENHANCE_YOUR_CALM));
    closed(&mut r).await;
    assert_eq!(goaways(p.admin, "h2_enhance_your_calm").await, 1.0);
    others_are_served(p.out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    let code = flood(p.out, Vec::new(), frame(PING, 0, 0, &[7; 8]), 1_000_000).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "control_flood").await, 1.0);
    others_are_served(p.out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    // empty SETTINGS, again and again: each must be acknowledged
    let unit = frame(SETTINGS, 0, 0, &[]);
    let code = flood(p.out, Vec::new(), unit, 1_000_000).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "control_flood").await, 1.0);
    others_are_served(p.out).await;
}

/// Empty DATA frames on an open request stream: no work for the client, a frame to process
/// for the server each time (`h2`'s framing-overhead budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_flood_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    let code = flood(p.out, get(1, false), frame(DATA, 0, 1, &[]), 100_000).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "h2_enhance_your_calm").await, 1.0);
    others_are_served(p.out).await;
}

/// Envoy's `max_inbound_priority_frames_per_stream` (100 per stream opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_flood_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    let unit = frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]);
    let code = flood(p.out, Vec::new(), unit, 100_000).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "priority_flood").await, 1.0);
    others_are_served(p.out).await;
}

/// Envoy's `max_inbound_window_update_frames_per_data_frame_sent` (10 per DATA frame sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_update_flood_gets_goaway_enhance_your_calm() {
    let (p, _app) = reviews_proxy("").await;
    let unit = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes());
    let code = flood(p.out, Vec::new(), unit, 100_000).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(p.admin, "window_update_flood").await, 1.0);
    others_are_served(p.out).await;
}

/// A well-behaved h2 client on a long-lived connection trips none of the guards: many
/// requests, each answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_well_behaved_h2_connection_trips_no_guard() {
    let (p, _app) = reviews_proxy("").await;
    let mut h2 = h2(p.out).await;
    for _ in 0..600 {
        let res = bounded(h2.send_request(request("reviews", &[])))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let _ = read(res).await;
    }
    let (_, text) = admin_get(p.admin, "/stats/prometheus").await;
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("mesh_proxy_http2_goaways_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 0.0, "{text}");
}

// === HTTP/1.1 ===

/// Slowloris: a request head dribbled a byte at a time never completes;
/// `requestHeadersTimeout` closes the connection, counted from the head's first byte however
/// many bytes follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_cut_at_the_request_headers_timeout() {
    let (p, _app) = reviews_proxy("  limits: {requestHeadersTimeout: 200ms}\n").await;
    let s = bounded(TcpStream::connect(p.out)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        // the attacker's pace, not a synchronisation: one byte every 10 ms, for ever
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if w.write_all(b"x").await.is_err() {
                return n;
            }
            n += 1;
        }
    });
    let mut out = Vec::new();
    let _ = bounded(r.read_to_end(&mut out)).await;
    assert!(
        out.is_empty(),
        "no answer to a head that never ended: {out:?}"
    );
    others_are_served(p.out).await;
    let sent = bounded(dribble).await.unwrap();
    // 200 ms × 1.25 at one byte per 10 ms: a few dozen bytes, not the head limit
    assert!(sent < 60 * 1024, "{sent} bytes were accepted");
}

/// `limits.streamIdleTimeout` on a keep-alive HTTP/1.1 connection: after its answer the
/// connection says nothing more, and the proxy closes it at the timeout by itself (the idle
/// tick wakes the connection; no other event does), while a connection that keeps asking
/// stays open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_stream_idle_timeout() {
    let (p, _app) = reviews_proxy("  limits: {streamIdleTimeout: 300ms}\n").await;
    let ask = b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n";
    let mut idle = bounded(TcpStream::connect(p.out)).await.unwrap();
    let mut busy = bounded(TcpStream::connect(p.out)).await.unwrap();
    idle.write_all(ask).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = bounded(idle.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let started = std::time::Instant::now();
    // the busy connection asks every 100 ms (its pace, not a synchronisation) until the idle
    // one is closed: activity resets its own idle count, not the other's
    let mut asked = 0;
    let closed = loop {
        busy.write_all(ask).await.unwrap();
        let n = bounded(busy.read(&mut buf)).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        asked += 1;
        match tokio::time::timeout(std::time::Duration::from_millis(100), idle.read(&mut buf)).await
        {
            Ok(r) => break r,
            Err(_) => assert!(asked < 100, "the idle connection is still open after 10 s"),
        }
    };
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // not at once: the idle count starts at the connection's last activity, which the
    // client sees a little later (hence a margin below the 300 ms)
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    // the busy connection outlived the idle one's timeout and still answers
    busy.write_all(ask).await.unwrap();
    let n = bounded(busy.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}

// === connections ===

/// `limits.maxDownstreamConnections` (Envoy's `global_downstream_max_connections`): one
/// connection over the cap is closed unanswered and counted; once one closes, a new one is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_global_cap_are_closed_and_counted() {
    let (p, _app) = reviews_proxy("  limits: {maxDownstreamConnections: 3}\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = H1::connect(p.out).await;
        assert_eq!(c.get("reviews", &[]).await.status.as_u16(), 200);
        held.push(c);
    }
    let mut over = bounded(TcpStream::connect(p.out)).await.unwrap();
    // the proxy may already have closed it: a failed write is the point
    let _ = over
        .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = bounded(over.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty(),
        "a connection over the cap gets no answer"
    );
    let (_, text) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &text,
            "mesh_proxy_downstream_connections_refused_total{listener=\"outbound\"}"
        ),
        1.0
    );
    drop(held.pop());
    let admin = p.admin;
    eventually("a freed place is served again", || async move {
        let s = TcpStream::connect(p.out).await.unwrap();
        let (tx, conn) =
            match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await {
                Ok(x) => x,
                Err(_) => return false,
            };
        tokio::spawn(conn);
        let mut tx = tx;
        matches!(tx.send_request(request("reviews", &[])).await, Ok(r) if r.status() == 200)
    })
    .await;
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    assert!(
        sample(
            &text,
            "mesh_proxy_downstream_connections_refused_total{listener=\"outbound\"}"
        ) >= 1.0
    );
}

// === the real binary ===

/// `mesh-proxy run` as a child process (killed when dropped), its stderr collected.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// `[prlimit --nofile=N:N] mesh-proxy run --config FILE`.
    fn run(config: &Path, nofile: Option<u64>) -> Proc {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    async fn logged_addr(&self, what: &str) -> SocketAddr {
        let lines = self.lines.clone();
        eventually(&format!("stderr says {what:?}"), || {
            let lines = lines.clone();
            async move { lines.lock().unwrap().iter().any(|l| l.contains(what)) }
        })
        .await;
        let lines = self.lines.lock().unwrap();
        let line = lines.iter().find(|l| l.contains(what)).unwrap();
        line.split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
    }

    /// The process' resident set (`VmRSS`), in bytes.
    fn rss(&self) -> u64 {
        let mut s = String::new();
        std::fs::File::open(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }
}

async fn run_proxy(dir: &Path, app: &Backend, extra: &str, nofile: Option<u64>) -> Proc {
    let file = dir.join("mesh.yaml");
    let mut f = std::fs::File::create(&file).unwrap();
    write!(
        f,
        "{}{}",
        bootstrap(1, extra),
        service_entry("reviews", 80, "HTTP", &[app])
    )
    .unwrap();
    let proc = Proc::run(&file, nofile);
    let admin = proc.logged_addr("admin listener up").await;
    eventually("/ready answers 200", || async move {
        matches!(admin_get_opt(admin, "/ready").await, Some((200, _)))
    })
    .await;
    proc
}

/// Out of descriptors (`EMFILE` under `prlimit --nofile=64`): the accept loop backs off
/// instead of dying or spinning, logs it, counts it, and serves again once descriptors are
/// free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_proxy_backs_off_and_recovers() {
    let app = backend("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let proc = run_proxy(dir.path(), &app, "", Some(64)).await;
    let out = proc.logged_addr("outbound listener up").await;
    let admin = proc.logged_addr("admin listener up").await;
    assert_eq!(get_once(out, "reviews", &[]).await.status.as_u16(), 200);
    // more connections than the proxy has descriptors left: the kernel completes them all
    // (they wait in the listen queue), the proxy's accepts fail with EMFILE
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(bounded(TcpStream::connect(out)).await.unwrap());
    }
    let lines = proc.lines.clone();
    eventually("the proxy logs the failed accept", || {
        let lines = lines.clone();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("accept failed"))
        }
    })
    .await;
    drop(held);
    // descriptors free again: served, and the failures were counted
    eventually("served again after EMFILE", || async move {
        let Ok(s) = TcpStream::connect(out).await else {
            return false;
        };
        let Ok((mut tx, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await
        else {
            return false;
        };
        tokio::spawn(conn);
        matches!(tx.send_request(request("reviews", &[])).await, Ok(r) if r.status() == 200)
    })
    .await;
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    let errors = sample(
        &text,
        "mesh_proxy_accept_errors_total{listener=\"outbound\"}",
    );
    assert!(errors >= 1.0, "{text}");
    let logged = proc.log().matches("accept failed").count();
    assert!(
        logged <= 2,
        "logged once per interval, not per failure ({errors} failures):\n{}",
        proc.log()
    );
}

/// 10,000 idle downstream connections (half HTTP/1.1 after one request, half h2c after one
/// request) held with a bounded resident set, then 5,000 more that never sent a byte: prints
/// the bytes per connection of each kind and checks them against generous bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_hold_a_bounded_resident_set() {
    const N: usize = 10_000;
    const SILENT: usize = 5_000;
    // this process holds N + SILENT sockets, the proxy as many (it inherits the limit)
    let got = rlimit::increase_nofile_limit((N + SILENT) as u64 + 2000).unwrap();
    assert!(
        got >= (N + SILENT) as u64 + 500,
        "RLIMIT_NOFILE {got} is too low for this test"
    );
    let app = backend("v1").await;
    let dir = tempfile::tempdir().unwrap();
    // silent connections stay open for the measurement
    let proc = run_proxy(
        dir.path(),
        &app,
        "  limits: {requestHeadersTimeout: 300s}\n",
        None,
    )
    .await;
    let out = proc.logged_addr("outbound listener up").await;
    let admin = proc.logged_addr("admin listener up").await;
    assert_eq!(get_once(out, "reviews", &[]).await.status.as_u16(), 200);
    let before = proc.rss();
    let mut h1s = Vec::with_capacity(N / 2);
    let mut h2s = Vec::with_capacity(N / 2);
    for chunk in 0..(N / 2 / 100) {
        // 100 at a time, each doing one request, then left idle
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..100 {
            batch.spawn(async move {
                let mut c = H1::connect(out).await;
                assert_eq!(c.get("reviews", &[]).await.status.as_u16(), 200);
                let mut h = h2(out).await;
                let res = h.send_request(request("reviews", &[])).await.unwrap();
                assert_eq!(res.status().as_u16(), 200);
                let _ = read(res).await;
                (c, h)
            });
        }
        while let Some(r) = bounded(batch.join_next()).await {
            let (c, h) = r.unwrap_or_else(|e| panic!("batch {chunk}: {e}"));
            h1s.push(c);
            h2s.push(h);
        }
    }
    let open = |text: &str| {
        sample(
            text,
            "mesh_proxy_downstream_connections_active{listener=\"outbound\"}",
        )
    };
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    assert!(open(&text) >= N as f64, "{} open", open(&text));
    let idle = proc.rss();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(bounded(TcpStream::connect(out)).await.unwrap());
    }
    eventually(
        "the proxy accepted every silent connection",
        || async move {
            let (_, text) = admin_get(admin, "/stats/prometheus").await;
            open(&text) >= (N + SILENT) as f64
        },
    )
    .await;
    let all = proc.rss();
    let per_idle = idle.saturating_sub(before) / N as u64;
    let per_silent = all.saturating_sub(idle) / SILENT as u64;
    println!(
        "RSS {} KiB before, {} KiB with {N} idle connections (half h1, half h2c, one request \
         each): {per_idle} bytes each; {} KiB with {SILENT} more that sent nothing: \
         {per_silent} bytes each",
        before / 1024,
        idle / 1024,
        all / 1024
    );
    assert!(per_idle < 32 * 1024, "{per_idle} bytes per idle connection");
    assert!(
        per_silent < 4 * 1024,
        "{per_silent} bytes per silent connection"
    );
    assert!(h1s.iter().all(|c| !c.is_closed()));
    drop((h1s, h2s, silent));
}

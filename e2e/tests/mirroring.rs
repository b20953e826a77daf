//! Traffic mirroring through the whole proxy (istio.io/latest/docs/tasks/traffic-management/
//! mirroring): a VirtualService route's `mirror` (with `mirrorPercentage`) or `mirrors`
//! (`HTTPMirrorPolicy`: `destination`, `percentage`) sends a copy of each request to other
//! destinations, Envoy's `request_mirror_policies`.
//!
//! What Envoy does with a mirrored copy (its "shadow"):
//! - the same method, path, query, headers and body as the request;
//! - the Host/`:authority` with `-shadow` appended to the host, before any port
//!   (`shadowAppendedHost`: `httpbin` → `httpbin-shadow`, `httpbin:8000` →
//!   `httpbin-shadow:8000`);
//! - fire and forget: the shadow's response is dropped, and the main request is never delayed
//!   nor failed by it (a dead or stalled mirror does not matter to the client).
//!
//! Every upstream here records what it received (method, path and query, Host, body) on a
//! channel, so a test waits for a mirrored copy with a bounded `recv`, never a sleep.

use crate::support;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::*;
use tokio::sync::mpsc;

// === helpers ===

/// One request as an upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: Method,
    /// Path and query.
    path: String,
    /// The Host header (an HTTP/2 upstream request's `:authority` when it has none).
    host: String,
    /// The client's `x-user` header, to see that headers are copied.
    user: String,
    /// The whole body, or the error that cut it short.
    body: Result<Bytes, String>,
}

type Log = mpsc::UnboundedReceiver<Seen>;

/// A handler that reads each request whole, records it on the returned channel, then answers
/// like [`named`] (`x-backend: <name>`, body `<name>`).
fn recording(name: &'static str) -> (Handler, Log) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let tx = tx.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| e.to_string());
            let header = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let _ = tx.send(Seen {
                method: parts.method.clone(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |pq| pq.as_str().to_owned()),
                host: header("host")
                    .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
                    .unwrap_or_default(),
                user: header("x-user").unwrap_or_default(),
                body,
            });
            Response::builder()
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        })
    });
    (handler, rx)
}

/// A backend recording what it receives.
async fn recorder(name: &'static str) -> (Backend, Log) {
    let (h, log) = recording(name);
    (backend_with(name, h).await, log)
}

/// The next request `log` records, waited for at most [`LIMIT`].
async fn next(log: &mut Log, what: &str) -> Seen {
    tokio::time::timeout(LIMIT, log.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("{what}: the backend is gone"))
}

/// What an upstream should see for a request without body.
fn seen(method: Method, path: &str, host: &str, user: &str) -> Seen {
    Seen {
        method,
        path: path.into(),
        host: host.into(),
        user: user.into(),
        body: Ok(Bytes::new()),
    }
}

fn req(method: Method, path: &str, host: &str, body: UpBody) -> Request<UpBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("x-user", "alice")
        .body(body)
        .unwrap()
}

/// `len` bytes with no short period (xorshift32), so a dropped, repeated or reordered piece
/// of a body shows.
fn payload(len: usize, seed: u32) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_be_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Asserts two bodies are the same bytes, reporting lengths and the first difference rather
/// than printing hundreds of KiB.
fn same_body(what: &str, got: &Result<Bytes, String>, want: &[u8]) {
    let got = match got {
        Ok(b) => b,
        Err(e) => panic!("{what}: the body was cut short: {e}"),
    };
    if got.as_ref() != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: body of {} bytes differs from the {} bytes sent (first difference at {:?})",
            got.len(),
            want.len(),
            at.unwrap_or(got.len().min(want.len()))
        );
    }
}

/// A request body streamed from a channel, one data frame per message, with no known length:
/// an HTTP/1.1 client sends it `Transfer-Encoding: chunked`.
struct Chunks(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// A streamed body sending `data` cut at `sizes` (the rest in a last chunk), one chunk at a
/// time through a channel of capacity 1.
fn chunked(data: &Bytes, sizes: &[usize]) -> UpBody {
    let (tx, rx) = mpsc::channel(1);
    let mut chunks = Vec::new();
    let mut rest = data.clone();
    for &n in sizes {
        chunks.push(rest.split_to(n.min(rest.len())));
    }
    if !rest.is_empty() {
        chunks.push(rest);
    }
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(c).await.is_err() {
                return;
            }
        }
    });
    UpBody::new(Chunks(rx))
}

/// A VirtualService for `httpbin` routing everything to `route` with `mirror_yaml` (route-level
/// YAML indented by four spaces, e.g. `"    mirror: {host: x}\n"`).
fn mirror_vs(route: &str, mirror_yaml: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  http:
  - route: [{{destination: {route}}}]
{mirror_yaml}"
    )
}

// === tests ===

/// Istio's mirroring task: `mirror: {host: httpbin, subset: v2}` beside a route to v1 (no
/// `mirrorPercentage`: Istio mirrors 100 %). The client's answer is v1's; v2 receives a copy
/// with the same method, path, query and headers, and the Host with `-shadow` appended to
/// the host part (Envoy's `shadowAppendedHost`, "`cluster1:8000` → `cluster1-shadow:8000`"),
/// whichever Host form the client used. The primary itself sees the Host unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_method_path_query_and_appends_shadow_to_the_host() {
    let (v1, mut primary) = recorder("v1").await;
    let (v2, mut shadow) = recorder("v2").await;
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&v1, &v2]),
        destination_rule("httpbin", &["v1", "v2"], ""),
        mirror_vs(
            "{host: httpbin, subset: v1}",
            "    mirror: {host: httpbin, subset: v2}\n"
        ),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let cases = [
        (
            Method::GET,
            "/headers?show_env=1&a=b%20c",
            "httpbin",
            "httpbin-shadow",
        ),
        (
            Method::DELETE,
            "/delete?id=7",
            "httpbin:8000",
            "httpbin-shadow:8000",
        ),
        (
            Method::GET,
            "/anything/x/y?q=1",
            "httpbin.default.svc.cluster.local:8000",
            "httpbin.default.svc.cluster.local-shadow:8000",
        ),
    ];
    for (method, path, host, shadow_host) in &cases {
        let r = c.send(req(method.clone(), path, host, full(""))).await;
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags(), r.body.as_str()),
            (200, "v1", "", "v1"),
            "the client's answer is the primary's: {method} {path} Host {host}: {r:?}"
        );
        assert_eq!(
            next(&mut primary, "the primary request").await,
            seen(method.clone(), path, host, "alice"),
        );
        assert_eq!(
            next(&mut shadow, "the mirrored copy").await,
            seen(method.clone(), path, shadow_host, "alice"),
            "the mirror gets the same request with `-shadow` appended to the host"
        );
    }
    assert_eq!(
        v1.hits(),
        cases.len(),
        "each request reached the primary once"
    );
    assert_eq!(v2.hits(), cases.len(), "each request was mirrored once");
}

/// Envoy copies the whole request body to the shadow (it buffers it, or streams it with
/// `streaming_shadow`): a POST of 256 KiB with `Content-Length`, and a chunked POST of
/// several chunks with no length, reach the primary whole and the mirror identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_mirrored_byte_for_byte() {
    let (primary, mut primary_log) = recorder("httpbin").await;
    let (mirror, mut mirror_log) = recorder("httpbin-mirror").await;
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("httpbin-mirror", 8000, "HTTP", &[&mirror]),
        mirror_vs("{host: httpbin}", "    mirror: {host: httpbin-mirror}\n"),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;

    // with Content-Length
    let big = payload(256 * 1024, 0x5eed_0001);
    let r = c
        .send(req(
            Method::POST,
            "/post?len=known",
            "httpbin",
            full(big.clone()),
        ))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.backend(), r.flags()),
        (200, "httpbin", ""),
        "{r:?}"
    );
    let got = next(&mut primary_log, "the primary POST").await;
    assert_eq!(
        (got.method, got.path.as_str()),
        (Method::POST, "/post?len=known")
    );
    same_body("the primary (Content-Length)", &got.body, &big);
    let got = next(&mut mirror_log, "the mirrored POST").await;
    assert_eq!(
        (got.method, got.path.as_str(), got.host.as_str()),
        (Method::POST, "/post?len=known", "httpbin-shadow")
    );
    same_body("the mirror (Content-Length)", &got.body, &big);

    // chunked: several chunks of odd sizes, sent one at a time
    let streamed = payload(200_003, 0x5eed_0002);
    let body = chunked(&streamed, &[1, 7, 4096, 65_536, 13, 100_000]);
    let r = c
        .send(req(Method::POST, "/post?len=unknown", "httpbin", body))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.backend(), r.flags()),
        (200, "httpbin", ""),
        "{r:?}"
    );
    let got = next(&mut primary_log, "the primary chunked POST").await;
    assert_eq!(got.path, "/post?len=unknown");
    same_body("the primary (chunked)", &got.body, &streamed);
    let got = next(&mut mirror_log, "the mirrored chunked POST").await;
    assert_eq!(
        (got.method, got.path.as_str(), got.host.as_str()),
        (Method::POST, "/post?len=unknown", "httpbin-shadow")
    );
    same_body("the mirror (chunked)", &got.body, &streamed);

    assert_eq!((primary.hits(), mirror.hits()), (2, 2));
}

/// `mirrorPercentage: {value: 0}` mirrors nothing (Istio's `mirrorPercent()`: "If zero
/// percent is provided explicitly, we should not mirror"), while the requests themselves
/// are served.
///
/// "Nothing arrived" cannot be waited for, so a probe bounds it: after the 20 unmirrored
/// requests, a request on a second route that mirrors to the same backend at 100 % is sent,
/// and its copy waited for; then the mirror backend must have received that copy only.
/// This is not a proof (copies are detached tasks on separate upstream connections, so a
/// wrongly-made copy of an earlier request could in principle land after the probe's), but
/// a proxy mirroring at 0 % would have sent 20 copies, each started before the probe
/// request was even sent, and for all 20 to arrive after the probe's copy is not a
/// realistic schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_percentage_zero_mirrors_nothing() {
    let primary = backend("httpbin").await;
    let (mirror, mut mirror_log) = recorder("httpbin-mirror").await;
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  http:
  - match: [{{uri: {{prefix: /probe}}}}]
    route: [{{destination: {{host: httpbin}}}}]
    mirror: {{host: httpbin-mirror}}
    mirrorPercentage: {{value: 100}}
  - route: [{{destination: {{host: httpbin}}}}]
    mirror: {{host: httpbin-mirror}}
    mirrorPercentage: {{value: 0}}
",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("httpbin-mirror", 8000, "HTTP", &[&mirror]),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    const N: usize = 20;
    for i in 0..N {
        let r = c
            .send(req(Method::GET, &format!("/zero/{i}"), "httpbin", full("")))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags()),
            (200, "httpbin", ""),
            "request {i}: {r:?}"
        );
    }
    assert_eq!(primary.hits(), N, "the primary served every request");

    let r = c
        .send(req(Method::GET, "/probe", "httpbin", full("")))
        .await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "httpbin"), "{r:?}");
    let got = next(&mut mirror_log, "the probe's mirrored copy (100 %)").await;
    assert_eq!(
        got.path, "/probe",
        "a request of the 0 % route was mirrored: {got:?}"
    );
    assert_eq!(
        mirror.hits(),
        1,
        "the mirror backend received only the probe's copy"
    );
    assert!(mirror_log.try_recv().is_err());
    assert_eq!(primary.hits(), N + 1);
}

/// `mirrors` (`HTTPMirrorPolicy`, Envoy's `request_mirror_policies`, one per entry): each
/// request is copied to every target; a `percentage` of 100 and an absent one both mean
/// every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_with_two_targets_copy_each_request_to_both() {
    let primary = backend("httpbin").await;
    let (a, mut a_log) = recorder("mirror-a").await;
    let (b, mut b_log) = recorder("mirror-b").await;
    let yaml = format!(
        "{}{}{}{}{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("mirror-a", 8000, "HTTP", &[&a]),
        service_entry("mirror-b", 8000, "HTTP", &[&b]),
        mirror_vs(
            "{host: httpbin}",
            "    mirrors:
    - destination: {host: mirror-a}
    - destination: {host: mirror-b}
      percentage: {value: 100}
"
        ),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    const N: usize = 5;
    let paths: Vec<String> = (0..N).map(|i| format!("/req/{i}?n={i}")).collect();
    for path in &paths {
        let r = c.send(req(Method::GET, path, "httpbin", full(""))).await;
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags()),
            (200, "httpbin", ""),
            "{path}: {r:?}"
        );
    }
    for (name, log) in [("mirror-a", &mut a_log), ("mirror-b", &mut b_log)] {
        let mut got = Vec::new();
        for _ in 0..N {
            let s = next(log, &format!("a copy at {name}")).await;
            assert_eq!(
                (&s.method, s.host.as_str(), s.user.as_str()),
                (&Method::GET, "httpbin-shadow", "alice"),
                "{name}: {s:?}"
            );
            got.push(s.path);
        }
        // copies are detached: their order is not the requests'
        got.sort();
        assert_eq!(got, paths, "{name} got a copy of each request");
    }
    assert_eq!((primary.hits(), a.hits(), b.hits()), (N, N, N));
}

/// A mirror whose endpoint refuses connections: the shadow fails (Envoy: `UF` on the
/// shadow's own stream), which the client never sees: every answer is the primary's 200
/// with no `x-mesh-response-flags`, and the keep-alive connection keeps working. A second,
/// live mirror on the same route shows the copies are really being made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_mirror_endpoint_does_not_affect_the_response() {
    let dead = dead_port().await;
    let primary = backend("httpbin").await;
    let (live, mut live_log) = recorder("live-mirror").await;
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dead-mirror}}
spec:
  hosts: [dead-mirror.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {dead}}}}}]
{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("live-mirror", 8000, "HTTP", &[&live]),
        mirror_vs(
            "{host: httpbin}",
            "    mirrors:
    - destination: {host: dead-mirror}
    - destination: {host: live-mirror}
"
        ),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let check = |r: &Reply, i: usize| {
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags(), r.body.as_str()),
            (200, "httpbin", "", "httpbin"),
            "request {i}: {r:?}"
        );
    };
    const N: usize = 5;
    for i in 0..N {
        let r = c
            .send(req(Method::GET, &format!("/r/{i}"), "httpbin", full("")))
            .await;
        check(&r, i);
    }
    for i in 0..N {
        next(&mut live_log, &format!("live mirror copy {i}")).await;
    }
    // the dead mirror has been tried by now, as often as the live one
    assert!(!c.is_closed(), "the client connection survived");
    for i in N..2 * N {
        let r = c
            .send(req(Method::GET, &format!("/r/{i}"), "httpbin", full("")))
            .await;
        check(&r, i);
    }
    let r = get_once(p.out, "httpbin", &[]).await;
    check(&r, 2 * N);
    assert_eq!(primary.hits(), 2 * N + 1);
}

/// A mirror that accepts the request and never answers: the main request is not delayed by
/// its shadow (Envoy's shadows are fire-and-forget), so every main answer arrives while the
/// shadows hang, and all of them did reach the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_never_answers_does_not_delay_the_response() {
    let primary = backend("httpbin").await;
    let stall: Handler = Arc::new(|_req| Box::pin(std::future::pending()));
    let stuck = backend_with("stuck", stall).await;
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("stuck", 8000, "HTTP", &[&stuck]),
        mirror_vs("{host: httpbin}", "    mirror: {host: stuck}\n"),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    const N: usize = 5;
    for i in 0..N {
        // `send` is bounded by LIMIT: a proxy waiting on the shadow fails here
        let r = c
            .send(req(Method::GET, &format!("/r/{i}"), "httpbin", full("")))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags()),
            (200, "httpbin", ""),
            "request {i}: {r:?}"
        );
    }
    let stuck_hits = stuck.hits.clone();
    eventually("every request was mirrored to the stalled backend", || {
        let h = stuck_hits.clone();
        async move { h.load(std::sync::atomic::Ordering::SeqCst) == N }
    })
    .await;
    // with N shadows hanging, a new request on a new connection is served too
    let r = get_once(p.out, "httpbin", &[]).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "httpbin"), "{r:?}");
    assert_eq!(primary.hits(), N + 1);
}

/// Beyond the spec list: a mirror that reads the headers and never the body, with a request
/// body (16 MiB) larger than the loopback socket buffers. The primary must get the whole
/// body and the client its answer: the shadow's back-pressure must not hold back the main
/// request. (Envoy may skip the shadow of a body over its buffer limit, so whether the
/// mirror got anything is not asserted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_never_reads_the_body_does_not_hold_back_the_primary() {
    let (primary, mut primary_log) = recorder("httpbin").await;
    let stall: Handler = Arc::new(|_req| Box::pin(std::future::pending()));
    let stuck = backend_with("stuck", stall).await;
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("stuck", 8000, "HTTP", &[&stuck]),
        mirror_vs("{host: httpbin}", "    mirror: {host: stuck}\n"),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let body: Bytes = (0..16 * 1024 * 1024)
        .map(|i: usize| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let r = c
        .send(req(Method::POST, "/upload", "httpbin", full(body.clone())))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.backend(), r.flags()),
        (200, "httpbin", ""),
        "{r:?}"
    );
    let got = next(&mut primary_log, "the primary upload").await;
    same_body("the primary", &got.body, &body);
    let r = c.send(req(Method::GET, "/", "httpbin", full(""))).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "httpbin"), "{r:?}");
}

/// Mirroring applies to HTTP/2 clients too (Envoy's router shadows whatever the downstream
/// codec): over h2c with prior knowledge, a GET and a POST with a body are mirrored, the
/// `:authority` `httpbin:8000` becoming `httpbin-shadow:8000` (sent as Host to this HTTP/1.1
/// service port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_are_mirrored() {
    let (primary, mut primary_log) = recorder("httpbin").await;
    let (mirror, mut mirror_log) = recorder("httpbin-mirror").await;
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(1, ""),
        service_entry("httpbin", 8000, "HTTP", &[&primary]),
        service_entry("httpbin-mirror", 8000, "HTTP", &[&mirror]),
        mirror_vs("{host: httpbin}", "    mirror: {host: httpbin-mirror}\n"),
    );
    let p = start(&yaml).await;
    let mut tx = h2(p.out).await;
    let small = payload(3000, 0x5eed_0003);
    for (method, body) in [(Method::GET, Bytes::new()), (Method::POST, small)] {
        let r = Request::builder()
            .version(Version::HTTP_2)
            .method(method.clone())
            .uri("http://httpbin:8000/anything?via=h2")
            .header("x-user", "alice")
            .body(full(body.clone()))
            .unwrap();
        bounded(tx.ready()).await.unwrap();
        let r = read(bounded(tx.send_request(r)).await.unwrap()).await;
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags()),
            (200, "httpbin", ""),
            "{method}: {r:?}"
        );
        let got = next(&mut primary_log, "the primary h2 request").await;
        assert_eq!(
            (
                &got.method,
                got.path.as_str(),
                got.host.as_str(),
                got.user.as_str()
            ),
            (&method, "/anything?via=h2", "httpbin:8000", "alice")
        );
        same_body("the primary", &got.body, &body);
        let got = next(&mut mirror_log, "the mirrored h2 request").await;
        assert_eq!(
            (
                &got.method,
                got.path.as_str(),
                got.host.as_str(),
                got.user.as_str()
            ),
            (&method, "/anything?via=h2", "httpbin-shadow:8000", "alice"),
            "{got:?}"
        );
        same_body("the mirror", &got.body, &body);
    }
    assert_eq!((primary.hits(), mirror.hits()), (2, 2));
}

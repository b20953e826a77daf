//! Route timeouts, retries and fault injection through the whole proxy (istio.io/latest/docs/tasks/
//! traffic-management/request-timeouts and fault-injection): Istio's VirtualService
//! `timeout`, `retries` and `fault`, against real upstreams on port 0. The layers' timing is tested
//! under paused time in `mesh-resilience`; here the proxy must apply them, with Envoy's
//! answers and flags.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response};
use hyper::body::Incoming;
use support::*;

/// A handler that never answers (it holds each request until the proxy gives up on it),
/// counting the requests that reached it.
fn hanging(reached: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |_req: Request<Incoming>| {
        reached.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            std::future::pending::<()>().await;
            Response::new(full(""))
        })
    })
}

fn vs(http: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
{http}"
    )
}

#[tokio::test]
async fn a_hanging_upstream_gets_504_ut_at_the_route_timeout() {
    let reached = Arc::new(AtomicUsize::new(0));
    let slow = backend_with("slow", hanging(reached.clone())).await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&slow])
        + &vs("  - timeout: 0.3s\n    route: [{destination: {host: ratings}}]\n");
    let p = start(&yaml).await;
    let sent = std::time::Instant::now();
    let reply = get_once(p.out, "ratings:9080", &[]).await;
    // not before the route timeout (a lower bound only: how late is the machine's business;
    // the timing itself is tested under paused time in mesh-resilience)
    assert!(sent.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.flags(), "UT");
    assert_eq!(reply.body, "upstream request timeout");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "the request reached the upstream"
    );
    // The proxy goes on serving on a new connection.
    let again = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(again.status, 504);
}

#[tokio::test]
async fn an_abort_fault_never_reaches_the_upstream() {
    let up = backend("ratings-v1").await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&up])
        + &vs("  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
");
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let aborted = c.get("ratings:9080", &[("end-user", "jason")]).await;
    assert_eq!(aborted.status, 500, "{aborted:?}");
    assert_eq!(aborted.flags(), "FI");
    assert_eq!(aborted.body, "fault filter abort");
    assert_eq!(up.hits(), 0);
    // Other users, on the same connection, reach the upstream.
    let ok = c.get("ratings:9080", &[("end-user", "alice")]).await;
    assert_eq!(ok.backend(), "ratings-v1");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_grpc_abort_is_a_trailers_only_200() {
    let up = backend("ratings-v1").await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&up])
        + &vs(
            "  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
",
        );
    let p = start(&yaml).await;
    let reply = get_once(
        p.out,
        "ratings:9080",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.headers["grpc-status"], "14");
    assert_eq!(reply.flags(), "FI");
    assert_eq!(up.hits(), 0);
}

/// A gRPC upstream that sent its head before it failed, on its first call: `200`, then
/// `grpc-status: 14` in trailers and no message. Its later calls answer one message and
/// `grpc-status: 0`. Each call's request message is recorded.
fn grpc_failing_once(messages: Arc<std::sync::Mutex<Vec<bytes::Bytes>>>) -> Handler {
    use http_body_util::BodyExt;
    Arc::new(move |req: Request<Incoming>| {
        let messages = messages.clone();
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let first = {
                let mut m = messages.lock().unwrap();
                m.push(body);
                m.len() == 1
            };
            match first {
                true => grpc_reply(&[], "14"),
                false => grpc_reply(&[b"\0\0\0\0\x01x"], "0"),
            }
        })
    })
}

/// A gRPC server that sent its head before it failed puts `grpc-status: 14` in trailers after
/// the head, with no message. A route whose `retryOn` names `unavailable` retries the call,
/// its message sent again (Envoy would not: its router decides on the head alone); a route
/// whose `retryOn` does not name it passes the answer on, trailers and all.
#[tokio::test]
async fn a_grpc_status_in_trailers_before_any_message_is_retried_when_retry_on_names_it() {
    for (retry_on, calls, status) in [("unavailable", 2, "0"), ("5xx", 1, "14")] {
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let up = backend_with("grpc", grpc_failing_once(messages.clone())).await;
        let yaml = bootstrap(1, "")
            + &service_entry("ratings", 9080, "GRPC", &[&up])
            + &vs(&format!(
                "  - retries: {{attempts: 2, retryOn: '{retry_on}'}}
    route: [{{destination: {{host: ratings}}}}]
"
            ));
        let p = start(&yaml).await;
        let mut tx = h2(p.out).await;
        let req = Request::builder()
            .method("POST")
            .uri("http://ratings:9080/pkg.Ratings/Get")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(&b"\0\0\0\0\x02hi"[..]))
            .unwrap();
        bounded(tx.ready()).await.unwrap();
        let res = bounded(tx.send_request(req)).await.unwrap();
        assert_eq!(res.status(), 200, "{retry_on}");
        let collected = bounded(http_body_util::BodyExt::collect(res.into_body()))
            .await
            .unwrap();
        let got = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(got.as_deref(), Some(status), "{retry_on}");
        let sent = messages.lock().unwrap().clone();
        assert_eq!(sent.len(), calls, "{retry_on}");
        assert!(sent.iter().all(|m| m == &b"\0\0\0\0\x02hi"[..]), "{sent:?}");
        let body = collected.to_bytes();
        let expected: &[u8] = if calls == 2 { b"\0\0\0\0\x01x" } else { b"" };
        assert_eq!(&body[..], expected, "{retry_on}");
    }
}

#[tokio::test]
async fn a_delay_fault_does_not_count_against_the_route_timeout() {
    // Envoy's fault filter runs before the router: a 1s delay on a route with a 0.5s timeout
    // still reaches the (fast) upstream, flagged DI.
    let up = backend("ratings-v1").await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&up])
        + &vs(
            "  - fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    timeout: 0.5s
    route: [{destination: {host: ratings}}]
",
        );
    let p = start(&yaml).await;
    let reply = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.backend(), "ratings-v1");
    assert_eq!(reply.flags(), "DI");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_fault_without_percentage_injects_nothing_as_istio_and_is_warned_about() {
    let up = backend("ratings-v1").await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&up])
        + &vs("  - fault: {abort: {httpStatus: 418}}
    route: [{destination: {host: ratings}}]
");
    let compiled = mesh_core::config::load_str("e2e.yaml", &yaml).unwrap();
    assert!(
        compiled.warnings.iter().any(|w| w
            .to_string()
            .contains("spec.http[0].fault.abort: no percentage")),
        "{:?}",
        compiled.warnings
    );
    let p = start(&yaml).await;
    let reply = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend(), "ratings-v1");
}

/// A handler that always answers `503`, counting the requests that reached it.
fn failing(name: &'static str) -> Handler {
    Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            Response::builder()
                .status(503)
                .header("x-backend", name)
                .body(full("unavailable"))
                .unwrap()
        })
    })
}

/// A handler that answers with the request's body.
fn echo(name: &'static str) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        Box::pin(async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .header("x-backend", name)
                .body(full(body))
                .unwrap()
        })
    })
}

#[tokio::test]
async fn a_503ing_endpoint_is_retried_on_the_other_endpoint() {
    // Two endpoints, one always 503. The retry avoids the host it tried (retryIgnorePreviousHosts,
    // Istio's default): a request fails only if its first pick is the bad endpoint and every
    // retry's pick and five reselections land on it again, (1/2)(1/64)^3 per request.
    let bad = backend_with("bad", failing("bad")).await;
    let good = backend("good").await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&bad, &good])
        + &vs("  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: ratings}}]
");
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let n = 30;
    for _ in 0..n {
        let r = c.get("ratings:9080", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good"), "{r:?}");
        assert_eq!(r.flags(), "", "{r:?}");
    }
    assert_eq!(
        good.hits(),
        n,
        "each request ends on the good endpoint, once"
    );
    // about half the requests tried the bad endpoint first, and (but for a reselection that
    // landed on it again: 1/64 of retries) only once
    assert!(bad.hits() > 0, "some requests were retried");
    assert!(
        bad.hits() <= n + 3,
        "{} attempts on the bad endpoint",
        bad.hits()
    );
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_a_live_endpoint_with_the_same_body() {
    // One endpoint refuses connections. A POST is retried there too: a connect failure is safe
    // to retry (the upstream never saw the request), and its body is sent again whole.
    let dead = dead_port().await;
    let live = backend_with("live", echo("live")).await;
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {dead}}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
{}",
        bootstrap(1, ""),
        live.port(),
        vs("  - retries: {attempts: 3, retryOn: connect-failure}
    route: [{destination: {host: ratings}}]
"),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let n = 20;
    for i in 0..n {
        let body = format!("order {i}");
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "ratings:9080")
            .body(full(body.clone()))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "live"), "{r:?}");
        assert_eq!(r.body, body);
    }
    assert_eq!(live.hits(), n);
}

#[tokio::test]
async fn a_post_answered_503_is_not_retried_under_istio_s_default_policy() {
    // Safe by default (beyond Istio): the application saw the POST; a GET is retried.
    let bad = backend_with("bad", failing("bad")).await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&bad])
        + &vs("  - route: [{destination: {host: ratings}}]\n");
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let post = Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "ratings:9080")
        .body(full("x"))
        .unwrap();
    let r = c.send(post).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, ""), "{r:?}");
    assert_eq!(bad.hits(), 1);
    // a GET: Istio's default policy retries 503 twice, then URX
    let r = c.get("ratings:9080", &[]).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "URX"), "{r:?}");
    assert_eq!(bad.hits(), 4);
}

#[tokio::test]
async fn a_post_answered_503_is_retried_with_its_body_when_retry_on_names_503() {
    for protocol in ["HTTP", "HTTP2"] {
        post_retried_on_503(protocol).await;
    }
}

/// The route writes retryOn: the POST is retried (Envoy's semantics), its body recorded as
/// the first attempt sent it and sent again whole to the other endpoint, spoken to in
/// `protocol`.
async fn post_retried_on_503(protocol: &str) {
    let bad = backend_with("bad", failing("bad")).await;
    let good = backend_with("good", echo("good")).await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, protocol, &[&bad, &good])
        + &vs("  - retries: {attempts: 3, retryOn: '503'}
    route: [{destination: {host: ratings}}]
");
    let p = start(&yaml).await;
    let n = 20;
    posts_answered_by_good(&p, n, 100, protocol).await;
    assert_eq!(good.hits(), n);
    assert!(bad.hits() > 0, "some requests were retried");
}

/// `n` POSTs of `repeat` × "order i " each through the proxy to `ratings`, each answered
/// `200` by the `good` backend with its body, and no flag.
async fn posts_answered_by_good(p: &Running, n: usize, repeat: usize, protocol: &str) {
    let mut c = H1::connect(p.out).await;
    for i in 0..n {
        let body = format!("order {i} ").repeat(repeat);
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "ratings:9080")
            .body(full(body.clone()))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(
            (r.status.as_u16(), r.backend(), r.flags()),
            (200, "good", ""),
            "{protocol}: {r:?}"
        );
        assert_eq!(r.body, body);
    }
}

#[tokio::test]
async fn a_hanging_endpoint_is_cut_at_the_per_try_timeout_and_retried_elsewhere_with_the_body() {
    // Istio's `perTryTimeout`: an attempt on the endpoint that never answers is cut after
    // 0.2s and the POST (explicit retryOn) sent again, body and all, to the other endpoint,
    // spoken to in HTTP/1.1 (the head handed back by the connector as the attempt is dropped)
    // and in HTTP/2 (from the connector's copy)
    for protocol in ["HTTP", "HTTP2"] {
        let reached = Arc::new(AtomicUsize::new(0));
        let slow = backend_with("slow", hanging(reached.clone())).await;
        let good = backend_with("good", echo("good")).await;
        let yaml = bootstrap(1, "")
            + &service_entry("ratings", 9080, protocol, &[&slow, &good])
            + &vs(
                "  - retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: 'reset,5xx'}
    route: [{destination: {host: ratings}}]
",
            );
        let p = start(&yaml).await;
        let n = 20;
        posts_answered_by_good(&p, n, 50, protocol).await;
        assert_eq!(good.hits(), n);
        // about half the requests tried the hanging endpoint first: (1/2)^20 that none did
        assert!(
            reached.load(Ordering::SeqCst) > 0,
            "{protocol}: some requests were cut and retried"
        );
    }
}

/// An HTTP/2 (h2c) upstream, the `h2` crate's server, that resets the first stream of each
/// path it sees with `reason` and answers `200 <path>` after that; counts the streams.
async fn resetting_h2(reason: h2::Reason) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    tokio::spawn(async move {
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (count, seen) = (count.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let path = req.uri().path().to_string();
                    if seen.lock().unwrap().insert(path.clone()) {
                        respond.send_reset(reason);
                        continue;
                    }
                    let res = Response::builder()
                        .header("x-backend", "h2")
                        .body(())
                        .unwrap();
                    if let Ok(mut body) = respond.send_response(res, false) {
                        let _ = body.send_data(bytes::Bytes::from(path), true);
                    }
                }
            });
        }
    });
    (port, streams)
}

/// A ServiceEntry for `ratings` on one HTTP2 endpoint at `port` (no VirtualService: Istio's
/// default retry policy).
fn h2_ratings(port: u16) -> String {
    format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http2, protocol: HTTP2}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http2: {port}}}}}
",
        bootstrap(1, "")
    )
}

fn post(path: &str) -> Request<UpBody> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "ratings:9080")
        .body(full("order"))
        .unwrap()
}

#[tokio::test]
async fn a_refused_post_is_retried_by_istio_s_default_policy_a_reset_post_is_not() {
    // Istio's default policy has `refused-stream`: an HTTP/2 stream the upstream refused was
    // not processed (RFC 9113 §8.7), so even a POST is retried, with its body.
    let (port, streams) = resetting_h2(h2::Reason::REFUSED_STREAM).await;
    let p = start(&h2_ratings(port)).await;
    let mut c = H1::connect(p.out).await;
    let r = c.send(post("/refused")).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "/refused"),
        "{r:?}"
    );
    assert_eq!(streams.load(Ordering::SeqCst), 2, "refused, then retried");

    // Any other reset (here CANCEL) may come after the application saw the POST: not retried
    // (the default policy has no `reset`, and the POST is not idempotent).
    let (port, streams) = resetting_h2(h2::Reason::CANCEL).await;
    let p = start(&h2_ratings(port)).await;
    let mut c = H1::connect(p.out).await;
    let r = c.send(post("/reset")).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "UR"), "{r:?}");
    assert_eq!(streams.load(Ordering::SeqCst), 1);
}

/// A handler that answers `status`, with the `x-envoy-*` request headers it received listed
/// in `x-seen-envoy`.
fn seeing_envoy_headers(status: u16) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        let seen: Vec<&str> = req
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-envoy-"))
            .collect();
        let seen = seen.join(",");
        Box::pin(async move {
            Response::builder()
                .status(status)
                .header("x-seen-envoy", seen)
                .body(full(""))
                .unwrap()
        })
    })
}

#[tokio::test]
async fn a_client_s_x_envoy_headers_cannot_raise_retries_or_timeouts_and_are_not_forwarded() {
    // Istio's sidecar treats its application's requests as external (no use_remote_address):
    // Envoy strips the router's x-envoy-* overrides (cleanInternalHeaders), so the route's
    // policy holds. Here: `retries: {attempts: 0}` and a 0.3s timeout.
    let bad = backend_with("bad", seeing_envoy_headers(503)).await;
    let reached = Arc::new(AtomicUsize::new(0));
    let slow = backend_with("slow", hanging(reached.clone())).await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&bad])
        + &service_entry("slow", 9080, "HTTP", &[&slow])
        + &vs("  - retries: {attempts: 0}
    route: [{destination: {host: ratings}}]
") + "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http:
  - timeout: 0.3s
    route: [{destination: {host: slow}}]
";
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let r = c
        .get(
            "ratings:9080",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-max-retries", "5"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
                ("x-envoy-attempt-count", "1"),
            ],
        )
        .await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, ""), "{r:?}");
    assert_eq!(bad.hits(), 1, "not retried");
    assert_eq!(
        r.headers["x-seen-envoy"], "x-envoy-attempt-count",
        "only the attempt count is forwarded (the proxy's own, as Istio's Envoy writes it)"
    );
    let started = std::time::Instant::now();
    let r = get_once(
        p.out,
        "slow:9080",
        &[("x-envoy-upstream-rq-timeout-ms", "60000")],
    )
    .await;
    assert_eq!((r.status.as_u16(), r.flags()), (504, "UT"), "{r:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the route's 0.3s timeout, not the header's minute"
    );
}

/// A proxy in region1/zone1 in front of `ratings` with one endpoint per locality (each on
/// its own loopback address): region1/zone1 and region1/zone2 answer 503, region2/zone3
/// answers; locality load balancing on (outlier detection configured, as Istio requires for
/// locality priorities, with a threshold never reached), and `retries` as given.
async fn localities(retries: &str) -> (Running, [Backend; 3]) {
    let near = backend_at("127.0.0.1", "near", failing("near")).await;
    let zone2 = backend_at("127.0.0.2", "zone2", failing("zone2")).await;
    let far = backend_at("127.0.0.3", "far", named("far")).await;
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: region1/zone1}}
  - {{address: 127.0.0.2, ports: {{http: {}}}, locality: region1/zone2}}
  - {{address: 127.0.0.3, ports: {{http: {}}}, locality: region2/zone3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings}}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN, localityLbSetting: {{enabled: true}}}}
    outlierDetection: {{consecutive5xxErrors: 100000, interval: 1h, baseEjectionTime: 1s}}
{}",
        bootstrap(1, "").replace(
            "labels: {app: productpage, version: v1}",
            "labels: {app: productpage, version: v1}\n    locality: region1/zone1",
        ),
        near.port(),
        zone2.port(),
        far.port(),
        vs(&format!(
            "  - retries: {retries}\n    route: [{{destination: {{host: ratings}}}}]\n"
        )),
    );
    (start(&yaml).await, [near, zone2, far])
}

#[tokio::test]
async fn retry_remote_localities_sends_the_second_retry_to_the_next_locality() {
    // Envoy's previous_priorities with Istio's update_frequency 2: the first two attempts
    // use the unmodified load (region1/zone1), the next two leave it out (region1/zone2),
    // the fifth leaves both out (region2).
    let (p, [near, zone2, far]) =
        localities("{attempts: 4, retryOn: '503', retryRemoteLocalities: true}").await;
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "far"), "{r:?}");
    assert_eq!((near.hits(), zone2.hits(), far.hits()), (2, 2, 1));
    // without it, every attempt stays in the closest healthy locality
    let (p, [near, zone2, far]) = localities("{attempts: 4, retryOn: '503'}").await;
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "URX"), "{r:?}");
    assert_eq!((near.hits(), zone2.hits(), far.hits()), (5, 0, 0));
}

#[tokio::test]
async fn with_trust_envoy_headers_the_application_s_x_envoy_headers_are_honoured() {
    // `outbound.trustEnvoyHeaders: true` (Istio: PILOT_SIDECAR_USE_REMOTE_ADDRESS with the
    // application internal): Envoy's router applies them, then removes them.
    let bad = backend_with("bad", seeing_envoy_headers(503)).await;
    let good = backend_with("good", seeing_envoy_headers(200)).await;
    let yaml = bootstrap(1, "").replace(
        "outbound: {address: 127.0.0.1, port: 0}",
        "outbound: {address: 127.0.0.1, port: 0, trustEnvoyHeaders: true}",
    ) + &service_entry("ratings", 9080, "HTTP", &[&bad, &good])
        + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
" + &vs("  - retries: {attempts: 0}
    timeout: 60s
    route: [{destination: {host: ratings}}]
");
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    // the route retries nothing; the header asks for 5xx with up to 10 retries: every
    // request ends on the good endpoint (round robin: a retry goes to the other one)
    for _ in 0..10 {
        let r = c
            .get(
                "ratings:9080",
                &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "10")],
            )
            .await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, ""), "{r:?}");
        assert_eq!(
            r.headers["x-seen-envoy"], "x-envoy-attempt-count",
            "the router's headers not forwarded (the attempt count is the proxy's own)"
        );
    }
    assert!(
        bad.hits() > 0,
        "some first attempts went to the bad endpoint"
    );
    // x-envoy-upstream-rq-timeout-ms lowers the route's minute
    let reached = Arc::new(AtomicUsize::new(0));
    let slow = backend_with("slow", hanging(reached.clone())).await;
    let yaml = bootstrap(1, "").replace(
        "outbound: {address: 127.0.0.1, port: 0}",
        "outbound: {address: 127.0.0.1, port: 0, trustEnvoyHeaders: true}",
    ) + &service_entry("slow", 9080, "HTTP", &[&slow])
        + "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http:
  - timeout: 60s
    route: [{destination: {host: slow}}]
";
    let p = start(&yaml).await;
    let started = std::time::Instant::now();
    let r = get_once(
        p.out,
        "slow:9080",
        &[("x-envoy-upstream-rq-timeout-ms", "100")],
    )
    .await;
    assert_eq!((r.status.as_u16(), r.flags()), (504, "UT"), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// An upstream that closes each connection once it has read a request's head when the
/// path holds `close`, and answers garbage otherwise.
async fn misbehaving_upstream() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if !String::from_utf8_lossy(&head).contains("/close") {
                    let _ = conn.write_all(b"HELLO THERE\r\n\r\n").await;
                }
            });
        }
    });
    port
}

/// `ratings` (port 9080, `protocol`) at one endpoint, `127.0.0.1:port`, outside the mesh.
fn ratings_at(name: &str, protocol: &str, port: u16) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: {name}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, ports: {{{name}: {port}}}}}]
"
    )
}

/// Envoy 1.40's answers to an upstream that closes before answering (`503 UC`) and to one
/// that answers garbage (`502 UPE`), and its access log's details for them (checked side by
/// side with envoy 1.40: `benches/conformance/envoy_diff.py`).
#[tokio::test]
async fn an_upstream_that_closes_or_answers_garbage_gets_envoys_replies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let port = misbehaving_upstream().await;
    let yaml = bootstrap(
        1,
        &format!("  accessLog: {{path: {}, encoding: JSON}}\n", log.display()),
    ) + &ratings_at("http", "HTTP", port);
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let mut req = request("ratings:9080", &[]);
    *req.uri_mut() = "/close".parse().unwrap();
    let closed = c.send(req).await;
    assert_eq!(closed.status, 503, "{closed:?}");
    assert_eq!(closed.flags(), "UC");
    assert_eq!(
        closed.body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    let garbage = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(garbage.status, 502, "{garbage:?}");
    assert_eq!(garbage.flags(), "UPE");
    assert_eq!(
        garbage.body,
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    );
    p.proxy.flush_telemetry();
    let text = std::fs::read_to_string(&log).unwrap();
    let details: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            v["response_code_details"]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        })
        .collect();
    assert_eq!(
        details,
        [
            "upstream_reset_before_response_started{connection_termination}",
            "upstream_reset_before_response_started{protocol_error}"
        ]
    );
}

/// Istio's virtual hosts set `include_request_attempt_count`: the application sees
/// `x-envoy-attempt-count` (1, then 2 for the retry Istio's default policy makes of a 503),
/// whatever the client sent.
#[tokio::test]
async fn the_application_sees_the_attempt_count_as_behind_istios_envoy() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler: Handler = {
        let seen = seen.clone();
        Arc::new(move |req: Request<Incoming>| {
            let mut seen = seen.lock().unwrap();
            seen.push(
                req.headers()
                    .get("x-envoy-attempt-count")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            let status = if seen.len() == 1 { 503 } else { 200 };
            Box::pin(async move {
                let mut res = Response::new(full("ratings"));
                *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                res
            })
        })
    };
    let up = backend_with("v1", handler).await;
    let p = start(&(bootstrap(1, "") + &service_entry("ratings", 9080, "HTTP", &[&up]))).await;
    let r = get_once(p.out, "ratings:9080", &[("x-envoy-attempt-count", "9")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        [Some("1".to_owned()), Some("2".to_owned())]
    );
}

/// A gRPC caller gets the mesh's own answers as gRPC statuses, as Envoy's `sendLocalReply`
/// gives them (checked against envoy 1.40): a trailers-only `200`, `grpc-status` mapped
/// from the HTTP status, the reply's text as `grpc-message`; Istio's metrics and the access
/// log see that `200`. A route's `directResponse` and `redirect` too (Envoy's router answers
/// them with `sendLocalReply`: `directResponse`'s body is the message, less a trailing
/// newline; a redirect keeps its `location`), logged with Envoy's `direct_response` details.
#[tokio::test]
async fn a_grpc_caller_gets_the_mesh_s_own_answers_as_grpc_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let dead = dead_port().await;
    let yaml = format!(
        "{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - match: [{{uri: {{prefix: /ratings.Ratings/}}}}]
    route: [{{destination: {{host: ratings}}}}]
  - match: [{{uri: {{prefix: /maint.}}}}]
    directResponse: {{status: 503, body: {{string: \"down for maintenance\\n\"}}}}
  - match: [{{uri: {{prefix: /old.}}}}]
    redirect: {{uri: /new.Service/Call, authority: ratings-v2}}
",
        bootstrap(
            1,
            &format!("  accessLog: {{path: {}, encoding: JSON}}\n", log.display())
        ),
        ratings_at("grpc", "GRPC", dead.port())
    );
    let p = start(&yaml).await;
    let mut tx = h2(p.out).await;
    let call = |path: &str| {
        Request::builder()
            .method("POST")
            .uri(format!("http://ratings:9080{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(""))
            .unwrap()
    };
    let mut statuses = Vec::new();
    let mut location = None;
    for path in [
        "/ratings.Ratings/Get",
        "/other.Service/Call",
        "/maint.Service/Call",
        "/old.Service/Call",
    ] {
        bounded(tx.ready()).await.unwrap();
        let res = read(bounded(tx.send_request(call(path))).await.unwrap()).await;
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.headers["content-type"], "application/grpc");
        assert!(res.body.is_empty(), "{res:?}");
        let text = |n: &str| res.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        statuses.push((
            text("grpc-status"),
            text("grpc-message"),
            res.flags().to_owned(),
        ));
        location = location.or(text("location"));
    }
    assert_eq!(
        location.as_deref(),
        Some("http://ratings-v2/new.Service/Call")
    );
    assert_eq!(
        statuses,
        [
            (
                Some("14".to_owned()),
                Some(
                    "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
                        .to_owned()
                ),
                "URX,UF".to_owned()
            ),
            (Some("12".to_owned()), None, "NR".to_owned()),
            (
                Some("14".to_owned()),
                Some("down for maintenance".to_owned()),
                String::new()
            ),
            (Some("2".to_owned()), None, String::new()),
        ]
    );
    // an HTTP caller gets the direct response as written
    let req = Request::builder()
        .uri("/maint.Service/Call")
        .header("host", "ratings:9080")
        .body(full(""))
        .unwrap();
    let r = H1::connect(p.out).await.send(req).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, "down for maintenance\n"),
        "{r:?}"
    );
    p.proxy.flush_telemetry();
    let logged: Vec<(u64, String)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v = serde_json::from_str::<serde_json::Value>(l).unwrap();
            (
                v["response_code"].as_u64().unwrap(),
                v["response_code_details"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned(),
            )
        })
        .collect();
    let details = |d: &str| (200, d.to_owned());
    assert!(
        logged[0]
            .1
            .starts_with("upstream_reset_before_response_started{remote_connection_failure|"),
        "{logged:?}"
    );
    assert_eq!(
        logged[1..],
        [
            details("route_not_found"),
            details("direct_response"),
            details("direct_response"),
            (503, "direct_response".to_owned()),
        ]
    );
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"200\"")
            && l.contains("grpc_response_status=\"14\"")),
        "{stats}"
    );
}

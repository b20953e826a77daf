//! Route timeouts under paused time, against scripted mock upstreams.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use mesh_core::MeshBody;
use mesh_core::ext::RoutePolicy;
use mesh_core::flags::ResponseFlags;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::*;

/// A request without a body, as the layer takes it and as it hands it on.
type NoBody = http_body_util::Empty<Bytes>;
type Inner = EndBody<NoBody>;
use mesh_core::envoy_headers::EnvoyHeaderPolicy;

/// A response body fed from a channel; it ends when the sender is dropped.
struct Chunks(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// An upstream that never answers; `dropped` is set when the layer gives up on it.
fn hanging(
    dropped: Arc<AtomicBool>,
) -> impl Service<
    Request<Inner>,
    Response = Response<MeshBody<http_body_util::Empty<Bytes>>>,
    Error = Infallible,
> {
    tower::service_fn(move |_req: Request<Inner>| {
        let guard = DropFlag(dropped.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(Response::new(MeshBody::empty()))
        }
    })
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flags<B>(res: &Response<B>) -> ResponseFlags {
    res.extensions()
        .get::<ResponseFlags>()
        .copied()
        .unwrap_or_default()
}

fn with_route_timeout(timeout: Option<Duration>) -> Request<NoBody> {
    let mut req = Request::new(NoBody::new());
    req.extensions_mut().insert(RoutePolicy {
        timeout,
        ..RoutePolicy::default()
    });
    req
}

#[tokio::test(start_paused = true)]
async fn a_hanging_upstream_gets_504_ut_at_the_route_timeout() {
    let dropped = Arc::new(AtomicBool::new(false));
    let svc = TimeoutLayer::new().layer(hanging(dropped.clone()));
    let start = Instant::now();
    let res = svc
        .oneshot(with_route_timeout(Some(Duration::from_millis(1500))))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(1500), "paused clock");
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(flags(&res), ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
    assert_eq!(res.headers()["x-mesh-response-flags"], "UT");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the upstream request was dropped"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, TIMEOUT_BODY);
}

#[tokio::test(start_paused = true)]
async fn no_timeout_by_default_as_istio() {
    // A route without `timeout` and a layer without one: the request waits as long as the
    // upstream does (here: an hour of paused time, then the test gives up on it).
    let svc = TimeoutLayer::new().layer(hanging(Arc::default()));
    let res = tokio::time::timeout(
        Duration::from_secs(3600),
        svc.oneshot(with_route_timeout(None)),
    )
    .await;
    assert!(res.is_err(), "still waiting after an hour");
}

#[tokio::test(start_paused = true)]
async fn the_layer_s_timeout_applies_only_without_a_route_policy() {
    let layer = TimeoutLayer::new().with_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let res = layer
        .layer(hanging(Arc::default()))
        .oneshot(Request::new(NoBody::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    // A route policy without a timeout: none applies.
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        layer
            .layer(hanging(Arc::default()))
            .oneshot(with_route_timeout(None)),
    )
    .await;
    assert!(waited.is_err());
}

/// An upstream answering at once with a body fed from the returned channel.
fn streaming() -> (
    impl Service<Request<Inner>, Response = Response<MeshBody<Chunks>>, Error = Infallible>,
    tokio::sync::mpsc::UnboundedSender<Bytes>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let rx = std::sync::Mutex::new(Some(rx));
    let svc = tower::service_fn(move |_req: Request<Inner>| {
        let rx = rx.lock().unwrap().take().expect("one request");
        std::future::ready(Ok(Response::new(MeshBody::inner(Chunks(rx)))))
    });
    (svc, tx)
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_past_the_deadline_ends_with_an_error() {
    let (svc, tx) = streaming();
    let start = Instant::now();
    let res = TimeoutLayer::new()
        .layer(svc)
        .oneshot(with_route_timeout(Some(Duration::from_secs(5))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.body().deadline().is_some());
    tx.send(Bytes::from_static(b"first")).unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    // The upstream stalls (the sender stays open): the deadline ends the body.
    match body.frame().await {
        Some(Err(e)) if e.is::<TimedOut>() => {}
        other => panic!("expected a timeout, got {:?}", other.map(|f| f.map(|_| ()))),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_body_finished_in_time_is_whole() {
    let (svc, tx) = streaming();
    let res = TimeoutLayer::new()
        .layer(svc)
        .oneshot(with_route_timeout(Some(Duration::from_secs(5))))
        .await
        .unwrap();
    tx.send(Bytes::from_static(b"a")).unwrap();
    tx.send(Bytes::from_static(b"b")).unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ab");
}

async fn timed_out_after(route: Option<Duration>, grpc_timeout: &str) -> Duration {
    let svc = TimeoutLayer::new().layer(hanging(Arc::default()));
    let mut req = with_route_timeout(route);
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req.headers_mut()
        .insert("grpc-timeout", grpc_timeout.parse().unwrap());
    let start = Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    // a gRPC request's timeout is Envoy's gRPC local reply: trailers-only, 504 → UNAVAILABLE
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], TIMEOUT_BODY);
    assert_eq!(flags(&res), ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_bounds_the_request_capped_by_the_route_timeout() {
    // Istio sets Envoy's max_grpc_timeout to the route timeout (0: uncapped).
    let s = Duration::from_secs;
    assert_eq!(
        timed_out_after(Some(s(1)), "500m").await,
        Duration::from_millis(500)
    );
    assert_eq!(timed_out_after(Some(s(1)), "2S").await, s(1));
    assert_eq!(timed_out_after(None, "3S").await, s(3));
    // A malformed header is ignored.
    assert_eq!(timed_out_after(Some(s(1)), "3seconds").await, s(1));
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_is_read_on_grpc_requests_only() {
    // Envoy's `hasGrpcContentType`: `application/grpc`, `application/grpc+proto`; not
    // gRPC-Web, not with parameters, not a request without the content type
    for (content_type, expect) in [
        (Some("application/grpc"), 100),
        (Some("application/grpc+proto"), 100),
        (Some("application/grpc;charset=utf-8"), 1000),
        (Some("application/grpc-web"), 1000),
        (Some("text/plain"), 1000),
        (None, 1000),
    ] {
        let svc = TimeoutLayer::new().layer(hanging(Arc::default()));
        let mut req = with_route_timeout(Some(Duration::from_secs(1)));
        *req.method_mut() = http::Method::POST;
        if let Some(ct) = content_type {
            req.headers_mut()
                .insert("content-type", ct.parse().unwrap());
        }
        req.headers_mut()
            .insert("grpc-timeout", "100m".parse().unwrap());
        let start = Instant::now();
        let res = svc.oneshot(req).await.unwrap();
        // gRPC requests get the gRPC local reply (trailers-only 200), others a 504
        let grpc = expect == 100;
        let status = if grpc {
            StatusCode::OK
        } else {
            StatusCode::GATEWAY_TIMEOUT
        };
        assert_eq!(res.status(), status, "{content_type:?}");
        assert_eq!(
            res.headers().contains_key("grpc-status"),
            grpc,
            "{content_type:?}"
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(expect),
            "{content_type:?}"
        );
    }
}

/// An upstream that never answers and keeps the headers of the request it got.
fn hanging_seeing(
    seen: Arc<std::sync::Mutex<Option<http::HeaderMap>>>,
) -> impl Service<
    Request<Inner>,
    Response = Response<MeshBody<http_body_util::Empty<Bytes>>>,
    Error = Infallible,
> + Clone {
    tower::service_fn(move |req: Request<Inner>| {
        *seen.lock().unwrap() = Some(req.headers().clone());
        async move {
            std::future::pending::<()>().await;
            Ok(Response::new(MeshBody::empty()))
        }
    })
}

/// How long a request with `x-envoy-upstream-rq-timeout-ms: ms` on a route with a 1s
/// timeout took to time out (`None`: not within an hour), and whether the header reached the
/// upstream.
async fn with_envoy_timeout(policy: EnvoyHeaderPolicy, ms: &str) -> (Option<Duration>, bool) {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let svc = TimeoutLayer::new()
        .with_envoy_headers(policy)
        .layer(hanging_seeing(seen.clone()));
    let mut req = with_route_timeout(Some(Duration::from_secs(1)));
    req.headers_mut()
        .insert("x-envoy-upstream-rq-timeout-ms", ms.parse().unwrap());
    req.headers_mut()
        .insert("x-envoy-expected-rq-timeout-ms", "5".parse().unwrap());
    let start = Instant::now();
    let took = tokio::time::timeout(Duration::from_secs(3600), svc.oneshot(req))
        .await
        .ok()
        .map(|res| {
            assert_eq!(res.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
            start.elapsed()
        });
    let h = seen.lock().unwrap().clone().unwrap();
    assert!(!h.contains_key("x-envoy-expected-rq-timeout-ms"));
    (took, h.contains_key("x-envoy-upstream-rq-timeout-ms"))
}

#[tokio::test(start_paused = true)]
async fn x_envoy_upstream_rq_timeout_ms_is_stripped_and_honoured_only_when_trusted() {
    use EnvoyHeaderPolicy::{Honour, Strip};
    let s = Duration::from_secs;
    // by default (Istio's sidecars and gateways with their clients): the route's timeout
    assert_eq!(with_envoy_timeout(Strip, "50").await, (Some(s(1)), false));
    assert_eq!(with_envoy_timeout(Strip, "5000").await, (Some(s(1)), false));
    // trusted: the header replaces the route timeout, up or down; 0 means none; a malformed
    // value is ignored
    assert_eq!(
        with_envoy_timeout(Honour, "50").await,
        (Some(Duration::from_millis(50)), false)
    );
    assert_eq!(
        with_envoy_timeout(Honour, "5000").await,
        (Some(s(5)), false)
    );
    assert_eq!(with_envoy_timeout(Honour, "0").await, (None, false));
    assert_eq!(
        with_envoy_timeout(Honour, "soon").await,
        (Some(s(1)), false)
    );
}

#[test]
fn grpc_timeout_units_and_limits() {
    assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
    assert_eq!(parse_grpc_timeout(b"40m"), Some(Duration::from_millis(40)));
    assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
    assert_eq!(
        parse_grpc_timeout(b"99999999n"),
        Some(Duration::from_nanos(99_999_999))
    );
    for bad in [
        &b""[..],
        b"S",
        b"123456789S",
        b"1s",
        b"-1S",
        b"1.5S",
        b" 1S",
    ] {
        assert_eq!(
            parse_grpc_timeout(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

proptest! {
    #[test]
    fn grpc_timeout_never_panics_and_round_trips(n in 0u64..100_000_000, unit in prop::sample::select(b"HMSmun".to_vec()), junk in prop::collection::vec(any::<u8>(), 0..12)) {
        let _ = parse_grpc_timeout(&junk);
        let text = format!("{n}{}", unit as char);
        let d = parse_grpc_timeout(text.as_bytes()).expect("valid");
        let per = match unit { b'H' => 3_600_000_000_000u128, b'M' => 60_000_000_000, b'S' => 1_000_000_000, b'm' => 1_000_000, b'u' => 1_000, _ => 1 };
        prop_assert_eq!(d.as_nanos(), u128::from(n) * per);
    }
}

/// A request body the test feeds: `a` at once, `b` after `upload`, then the end.
fn slow_upload(upload: Duration) -> Request<Chunks> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Bytes::from_static(b"a")).unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(upload).await; // the scripted client's pace, in paused time
        let _ = tx.send(Bytes::from_static(b"b"));
    });
    let mut req = Request::new(Chunks(rx));
    req.extensions_mut().insert(RoutePolicy {
        timeout: Some(Duration::from_secs(1)),
        ..RoutePolicy::default()
    });
    req
}

/// An upstream that reads the whole request body, then answers after `think` (`None`:
/// never); it keeps when the body ended.
fn reading(
    think: Option<Duration>,
    body_done: Arc<std::sync::Mutex<Option<Instant>>>,
) -> impl Service<
    Request<EndBody<Chunks>>,
    Response = Response<MeshBody<http_body_util::Empty<Bytes>>>,
    Error = Infallible,
> {
    tower::service_fn(move |req: Request<EndBody<Chunks>>| {
        let body_done = body_done.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ab");
            *body_done.lock().unwrap() = Some(Instant::now());
            match think {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
            Ok(Response::new(MeshBody::empty()))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_starts_when_the_request_body_ends_as_envoy_s_on_request_complete() {
    // Envoy arms the route timeout in `onRequestComplete` (router.cc): a client uploading
    // for 3s on a route with a 1s timeout is bounded by idle timeouts, not the route timeout.
    let start = Instant::now();
    let done = Arc::new(std::sync::Mutex::new(None));
    let svc = TimeoutLayer::new().layer(reading(Some(Duration::from_millis(500)), done.clone()));
    let res = svc
        .oneshot(slow_upload(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "answered 0.5s after the upload ended"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(3500));
    // an upstream that never answers: 504 UT one second after the upload ended
    let start = Instant::now();
    let svc = TimeoutLayer::new().layer(reading(None, done.clone()));
    let res = svc
        .oneshot(slow_upload(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(flags(&res), ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
    let ended = done.lock().unwrap().unwrap();
    assert_eq!(ended - start, Duration::from_secs(3));
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn an_early_answer_s_body_is_bounded_from_the_end_of_the_request() {
    // The upstream answers at once, before the upload ends, and its body then stalls: the
    // deadline still starts with the request's end (2s), and the body fails 1s later.
    let (res_tx, res_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let res_rx = std::sync::Mutex::new(Some(res_rx));
    let svc = tower::service_fn(move |req: Request<EndBody<Chunks>>| {
        let rx = res_rx.lock().unwrap().take().unwrap();
        // the upload goes on being read in the background, as a connector's body task does
        tokio::spawn(async move {
            let _ = req.into_body().collect().await;
        });
        async move { Ok::<_, Infallible>(Response::new(MeshBody::inner(Chunks(rx)))) }
    });
    let start = Instant::now();
    let res = TimeoutLayer::new()
        .layer(svc)
        .oneshot(slow_upload(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.body().deadline(),
        None,
        "not running while the upload goes on"
    );
    let err = res.into_body().collect().await.unwrap_err();
    assert!(err.downcast_ref::<TimedOut>().is_some(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    drop(res_tx);
}

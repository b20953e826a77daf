//! Retries under paused time, against a scripted mock upstream that fails on command.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::MeshBody;
use mesh_core::ext::{
    ResponseCodeDetails, RoutePolicy, UpstreamReset, flags_of, local_reply, take_return_head,
};
use mesh_core::flags::ResponseFlags;
use mesh_core::policy::RetryPolicy;
use mesh_core::replay::ReplayBody;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::*;
use crate::timeout::TimeoutLayer;
use mesh_core::envoy_headers::EnvoyHeaderPolicy;

type Res = Response<MeshBody<Empty<Bytes>>>;

/// What the mock upstream does with the next request.
#[derive(Clone, Copy)]
enum Step {
    Status(u16),
    /// A local reply of the layers below (the connector, the balancer).
    Local(u16, ResponseFlags),
    /// `200` with this `grpc-status` header (a trailers-only gRPC answer).
    Grpc(u32),
    /// `200` with a `grpc-status` header but no gRPC `content-type`: not a gRPC answer.
    NotGrpc(u32),
    /// Never answers.
    Hang,
    /// The connector's reply to a reset before the response (`503`, the reason's flag).
    Reset(ResponseFlags, UpstreamReset),
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    body: Bytes,
    previous: Option<Vec<SocketAddr>>,
    /// The `x-envoy-*` headers the attempt carried.
    envoy: Vec<String>,
    /// The priorities tried before, when the attempt carried the list.
    priorities: Option<Vec<u32>>,
    /// The `x-handed-back` header ([`HandsBack`] writes it into the heads it hands back).
    handed_back: Option<String>,
    /// The `x-envoy-attempt-count` header.
    attempt_count: Option<String>,
}

#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    fn new(steps: &[Step]) -> Self {
        Mock {
            script: Arc::new(Mutex::new(steps.iter().copied().collect())),
            seen: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl<B> Service<Request<ReplayBody<B>>> for Mock
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    ReplayBody<B>: http_body::Body<Data = Bytes, Error: std::fmt::Debug> + Send,
{
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Status(200));
        let seen = self.seen.clone();
        Box::pin(async move {
            let at = Instant::now();
            let envoy = req
                .headers()
                .keys()
                .map(|k| k.as_str().to_string())
                .filter(|k| k.starts_with("x-envoy-"))
                .collect();
            let handed_back = req
                .headers()
                .get("x-handed-back")
                .map(|v| v.to_str().unwrap().to_string());
            let attempt_count = req
                .headers()
                .get("x-envoy-attempt-count")
                .map(|v| v.to_str().unwrap().to_string());
            let previous = mesh_core::ext::previous_hosts(req.extensions()).cloned();
            // the balancer's part: the n-th attempt goes to 10.0.0.n
            let n = seen.lock().unwrap().len();
            let addr = SocketAddr::from(([10, 0, 0, n as u8], 80));
            if let Some(info) = mesh_core::ext::stream_info(req.extensions()) {
                info.set_endpoint(&mesh_core::ext::SelectedEndpoint::new(addr));
            }
            let before = previous.as_ref().map(|p| {
                let v = p.to_vec();
                p.record(addr);
                v
            });
            // the balancer's part: the n-th attempt goes to priority n
            let priorities = mesh_core::ext::previous_priorities(req.extensions()).map(|p| {
                let v = p.to_vec();
                p.record(n as u32);
                v
            });
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(Seen {
                at,
                body,
                previous: before,
                envoy,
                priorities,
                handed_back,
                attempt_count,
            });
            Ok(match step {
                Step::Status(s) => {
                    let mut r = Response::new(MeshBody::empty());
                    *r.status_mut() = StatusCode::from_u16(s).unwrap();
                    r
                }
                Step::Local(s, flags) => local_reply(StatusCode::from_u16(s).unwrap(), flags, ""),
                Step::Grpc(code) => {
                    let mut r = Response::new(MeshBody::empty());
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    r.headers_mut()
                        .insert("grpc-status", HeaderValue::from(code));
                    r
                }
                Step::NotGrpc(code) => {
                    let mut r = Response::new(MeshBody::empty());
                    r.headers_mut()
                        .insert("grpc-status", HeaderValue::from(code));
                    r
                }
                Step::Hang => std::future::pending().await,
                Step::Reset(flags, why) => why.reply(StatusCode::SERVICE_UNAVAILABLE, flags, false),
            })
        })
    }
}

fn policy(retry_on: &str, attempts: u32) -> RetryPolicy {
    let (on, codes) = RetryPolicy::parse_retry_on(retry_on).unwrap();
    RetryPolicy {
        attempts,
        retry_on: on,
        retriable_status_codes: codes,
        explicit_retry_on: true,
        ..RetryPolicy::default()
    }
}

/// A request routed with `retries` (`None`: the route sets none, Istio's default applies).
fn routed(
    method: Method,
    body: &'static str,
    retries: Option<RetryPolicy>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    req.extensions_mut().insert(RoutePolicy {
        retries: retries.map(Arc::new),
        ..RoutePolicy::default()
    });
    req
}

fn get(retries: Option<RetryPolicy>) -> Request<Full<Bytes>> {
    routed(Method::GET, "", retries)
}

async fn run(mock: &Mock, req: Request<Full<Bytes>>) -> Res {
    RetryLayer::new()
        .with_seed(7)
        .layer(mock.clone())
        .oneshot(req)
        .await
        .unwrap()
}

use Step::*;

const UF: ResponseFlags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE;

#[tokio::test(start_paused = true)]
async fn five_xx_is_retried_until_an_answer_succeeds() {
    let mock = Mock::new(&[Status(500), Status(502), Status(200)]);
    let res = run(&mock, get(Some(policy("5xx", 3)))).await;
    assert_eq!(res.status(), 200);
    assert!(flags_of(&res).is_empty());
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_shares_the_request_s_stream_info_and_the_last_one_wins() {
    // telemetry reads the last attempt's upstream and the attempt count (Envoy's
    // `upstream_host` is the last attempt's)
    let info = mesh_core::stream_info::StreamInfo::new();
    let mut req = get(Some(policy("5xx", 3)));
    mesh_core::ext::slots_mut(req.extensions_mut()).info = Some(info.clone());
    let mock = Mock::new(&[Status(500), Status(502), Status(200)]);
    assert_eq!(run(&mock, req).await.status(), 200);
    let seen = info.snapshot();
    assert_eq!(seen.attempts, 3);
    assert_eq!(
        seen.endpoint().unwrap().addr,
        SocketAddr::from(([10, 0, 0, 2], 80))
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_error_retries_502_to_504_only() {
    let mock = Mock::new(&[Status(500)]);
    assert_eq!(
        run(&mock, get(Some(policy("gateway-error", 2))))
            .await
            .status(),
        500
    );
    assert_eq!(mock.calls(), 1);
    let mock = Mock::new(&[Status(503), Status(504), Status(200)]);
    assert_eq!(
        run(&mock, get(Some(policy("gateway-error", 2))))
            .await
            .status(),
        200
    );
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn istio_s_default_policy_retries_connect_failures_and_503_twice() {
    // a route without `retries`: connect-failure,refused-stream,unavailable,cancelled,503
    let mock = Mock::new(&[Local(503, UF), Status(503), Status(200)]);
    assert_eq!(run(&mock, get(None)).await.status(), 200);
    assert_eq!(mock.calls(), 3);
    // but 500 is not in it
    let mock = Mock::new(&[Status(500)]);
    assert_eq!(run(&mock, get(None)).await.status(), 500);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_mesh_s_own_503s_are_judged_by_their_flags_not_their_status() {
    // `503 UH` from the balancer is not an upstream's 503: never retried (as Envoy)
    for flags in [
        ResponseFlags::NO_HEALTHY_UPSTREAM,
        ResponseFlags::NO_ROUTE,
        ResponseFlags::UPSTREAM_OVERFLOW,
    ] {
        let mock = Mock::new(&[Local(503, flags)]);
        let res = run(&mock, get(Some(policy("5xx,503", 2)))).await;
        assert_eq!(flags_of(&res), flags);
        assert_eq!(mock.calls(), 1, "{flags}");
    }
    // a reset (UR/UC) is retried on `reset`, not on `connect-failure`
    let mock = Mock::new(&[Local(503, ResponseFlags::UPSTREAM_REMOTE_RESET)]);
    run(&mock, get(Some(policy("connect-failure", 2)))).await;
    assert_eq!(mock.calls(), 1);
    let mock = Mock::new(&[Local(503, ResponseFlags::UPSTREAM_CONNECTION_TERMINATION)]);
    assert_eq!(
        run(&mock, get(Some(policy("reset", 2)))).await.status(),
        200
    );
    assert_eq!(mock.calls(), 2);
    // a connect failure is retried on `5xx` too (Envoy counts it as a reset)
    let mock = Mock::new(&[Local(503, UF)]);
    assert_eq!(run(&mock, get(Some(policy("5xx", 1)))).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn retriable_status_codes_and_4xx() {
    let mock = Mock::new(&[Status(418), Status(429), Status(200)]);
    let res = run(
        &mock,
        get(Some(policy("retriable-status-codes,418,429", 2))),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 3);
    let mock = Mock::new(&[Status(409), Status(404)]);
    let res = run(&mock, get(Some(policy("retriable-4xx", 2)))).await;
    assert_eq!(res.status(), 404, "409 only");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn grpc_statuses_are_read_from_the_headers() {
    // the default policy has `unavailable` (14) and `cancelled` (1)
    let mock = Mock::new(&[Grpc(14), Grpc(1), Grpc(0)]);
    let res = run(&mock, get(None)).await;
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(mock.calls(), 3);
    let mock = Mock::new(&[Grpc(13)]);
    run(&mock, get(None)).await;
    assert_eq!(mock.calls(), 1, "internal is not in the default policy");
    let mock = Mock::new(&[Grpc(13), Grpc(8), Grpc(4)]);
    run(&mock, get(Some(policy("internal,resource-exhausted", 5)))).await;
    assert_eq!(mock.calls(), 3, "deadline-exceeded not named");
}

#[tokio::test(start_paused = true)]
async fn grpc_status_is_judged_on_grpc_answers_only() {
    // A `grpc-status` on an answer that is not gRPC (no `application/grpc` content type)
    // is an application header like any other: not retried.
    let mock = Mock::new(&[NotGrpc(14), Grpc(0)]);
    let res = run(&mock, get(None)).await;
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn when_the_attempts_run_out_the_last_answer_gets_urx() {
    let mock = Mock::new(&[Status(503), Status(503), Status(503)]);
    let res = run(&mock, get(Some(policy("5xx", 2)))).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-mesh-response-flags"], "URX");
    assert_eq!(mock.calls(), 3);
    // a connect failure keeps its flag
    let mock = Mock::new(&[Local(503, UF), Local(503, UF), Local(503, UF)]);
    let res = run(&mock, get(None)).await;
    assert_eq!(res.headers()["x-mesh-response-flags"], "URX,UF");
    // an answer the policy does not retry gets no URX
    let mock = Mock::new(&[Status(503), Status(404)]);
    let res = run(&mock, get(Some(policy("5xx", 2)))).await;
    assert!(flags_of(&res).is_empty());
}

#[tokio::test(start_paused = true)]
async fn attempts_zero_turns_retries_off() {
    let mock = Mock::new(&[Local(503, UF)]);
    let res = run(&mock, get(Some(policy("5xx", 0)))).await;
    assert_eq!(flags_of(&res), UF, "no URX: no retry policy");
    assert_eq!(mock.calls(), 1);
    // a request no router saw, through a layer without a policy: sent once
    let mock = Mock::new(&[Local(503, UF)]);
    let req = Request::new(Full::new(Bytes::new()));
    run(&mock, req).await;
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_layer_s_policy_applies_to_requests_without_a_route() {
    let mock = Mock::new(&[Status(500), Status(200)]);
    let res = RetryLayer::new()
        .with_policy(Arc::new(policy("5xx", 1)))
        .layer(mock.clone())
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_is_retried_as_a_reset_then_answers_504_ut() {
    let mut p = policy("5xx", 1);
    p.per_try_timeout = Some(Duration::from_secs(1));
    let mock = Mock::new(&[Hang, Hang]);
    let start = Instant::now();
    let res = run(&mock, get(Some(p.clone()))).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-mesh-response-flags"], "URX,UT");
    // Envoy's details for it (checked against envoy 1.40), not the route timeout's
    assert_eq!(
        res.extensions().get::<ResponseCodeDetails>(),
        Some(&ResponseCodeDetails(Arc::from("upstream_per_try_timeout")))
    );
    assert_eq!(mock.calls(), 2);
    // two attempts of one second each and one backoff under 25 ms
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2025),
        "{took:?}"
    );
    // a policy without reset-like conditions does not retry it (no URX)
    let mut p = policy("connect-failure", 1);
    p.per_try_timeout = Some(Duration::from_secs(1));
    let mock = Mock::new(&[Hang, Status(200)]);
    let res = run(&mock, get(Some(p))).await;
    assert_eq!(res.headers()["x-mesh-response-flags"], "UT");
    assert_eq!(mock.calls(), 1);
    // the second attempt answers in time
    let mut p = policy("reset", 1);
    p.per_try_timeout = Some(Duration::from_secs(1));
    let mock = Mock::new(&[Hang, Status(200)]);
    assert_eq!(run(&mock, get(Some(p))).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_all_attempts_together() {
    let mut p = policy("5xx", 5);
    p.per_try_timeout = Some(Duration::from_secs(1));
    let mut req = get(None);
    req.extensions_mut().insert(RoutePolicy {
        timeout: Some(Duration::from_millis(2500)),
        retries: Some(Arc::new(p)),
        ..RoutePolicy::default()
    });
    let mock = Mock::new(&[Hang, Hang, Hang, Hang, Hang, Hang]);
    let svc = TimeoutLayer::new().layer(RetryLayer::new().with_seed(1).layer(mock.clone()));
    let start = Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
    assert_eq!(res.headers()["x-mesh-response-flags"], "UT");
    assert_eq!(mock.calls(), 3, "the third attempt was cut off");
}

/// Retries of `p` (six, on `503`s) over 300 seeded requests: retry n waits in
/// `[0, bounds[n])`, its largest wait comes close to the bound and its mean to half of it
/// (uniform on `[0, b)`: mean b/2, standard error b/sqrt(12 * 300) ~ b/60; the waits are
/// whole milliseconds, a mean of (b - 1)/2).
async fn check_backoff(p: RetryPolicy, bounds: [u64; 6], seed: u64) {
    let mut max = [Duration::ZERO; 6];
    let mut sum = [Duration::ZERO; 6];
    let layer = RetryLayer::new().with_seed(seed);
    let runs = 300;
    for _ in 0..runs {
        let mock = Mock::new(&[Status(503); 7]);
        layer
            .layer(mock.clone())
            .oneshot(get(Some(p.clone())))
            .await
            .unwrap();
        let seen = mock.seen();
        assert_eq!(seen.len(), 7);
        for n in 0..6 {
            let wait = seen[n + 1].at - seen[n].at;
            assert!(
                wait < Duration::from_millis(bounds[n]),
                "retry {n}: {wait:?}"
            );
            max[n] = max[n].max(wait);
            sum[n] += wait;
        }
    }
    for n in 0..6 {
        let bound = Duration::from_millis(bounds[n]);
        assert!(max[n] > bound * 9 / 10, "retry {n}: max {:?}", max[n]);
        let mean = sum[n] / runs;
        assert!(
            mean > bound * 41 / 100 && mean < bound * 59 / 100,
            "retry {n}: mean {mean:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_is_fully_jittered_and_doubles_up_to_ten_times_the_base() {
    // base 100 ms: retry n waits in [0, min(100 ms * 2^n, 1 s))
    let mut p = policy("5xx", 6);
    p.backoff = Duration::from_millis(100);
    check_backoff(p, [100, 200, 400, 800, 1000, 1000], 11).await;
}

#[tokio::test(start_paused = true)]
async fn a_post_is_not_retried_where_the_application_may_have_seen_it() {
    // Istio's default policy would retry a POST answered 503; safe by default, not here
    let mock = Mock::new(&[Status(503)]);
    let res = run(&mock, routed(Method::POST, "order", None)).await;
    assert_eq!(res.status(), 503);
    assert!(flags_of(&res).is_empty());
    assert_eq!(mock.calls(), 1);
    // nor on a reset under a policy that did not write retryOn
    let mut p = policy("reset", 2);
    p.explicit_retry_on = false;
    let mock = Mock::new(&[Local(503, ResponseFlags::UPSTREAM_REMOTE_RESET)]);
    run(&mock, routed(Method::PATCH, "x", Some(p))).await;
    assert_eq!(mock.calls(), 1);
    // a route whose retryOn names 503 gets it retried
    let mock = Mock::new(&[Status(503), Status(200)]);
    let res = run(&mock, routed(Method::POST, "order", Some(policy("503", 2)))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 2);
    // a PUT is idempotent: the default policy retries it
    let mock = Mock::new(&[Status(503), Status(200)]);
    run(&mock, routed(Method::PUT, "x", None)).await;
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_post_retried_on_a_connect_failure_sends_the_same_body() {
    let mock = Mock::new(&[Local(503, UF), Status(201)]);
    let res = run(&mock, routed(Method::POST, "order 66", None)).await;
    assert_eq!(res.status(), 201);
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, "order 66");
    assert_eq!(seen[1].body, "order 66");
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once() {
    let mock = Mock::new(&[Status(503), Status(200)]);
    let res = RetryLayer::new()
        .with_max_body_bytes(4)
        .layer(mock.clone())
        .oneshot(routed(
            Method::POST,
            "more than four",
            Some(policy("5xx", 2)),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(flags_of(&res).is_empty(), "not retriable: no URX");
    assert_eq!(mock.calls(), 1);
    // within the limit: retried, whole
    let mock = Mock::new(&[Status(503), Status(200)]);
    let res = RetryLayer::new()
        .with_max_body_bytes(14)
        .layer(mock.clone())
        .oneshot(routed(
            Method::POST,
            "exactly fourte",
            Some(policy("5xx", 2)),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(mock.seen()[1].body, "exactly fourte");
}

#[tokio::test(start_paused = true)]
async fn each_attempt_carries_the_hosts_tried_before() {
    let mock = Mock::new(&[Status(503), Status(503), Status(200)]);
    run(&mock, get(None)).await;
    let seen = mock.seen();
    let host = |n: u8| SocketAddr::from(([10, 0, 0, n], 80));
    assert_eq!(seen[0].previous, Some(vec![]));
    assert_eq!(seen[1].previous, Some(vec![host(0)]));
    assert_eq!(seen[2].previous, Some(vec![host(0), host(1)]));
    // retryIgnorePreviousHosts: false
    let mut p = policy("503", 2);
    p.retry_ignore_previous_hosts = false;
    let mock = Mock::new(&[Status(503), Status(200)]);
    run(&mock, get(Some(p))).await;
    // the list still travels (it brings the cluster's limits back), but avoids nothing
    let host = SocketAddr::from(([10, 0, 0, 0], 80));
    assert_eq!(mock.seen()[1].previous, Some(vec![host]));
}

#[tokio::test(start_paused = true)]
async fn retry_remote_localities_shares_the_priorities_tried_with_the_balancer() {
    let mut p = policy("503", 2);
    p.retry_remote_localities = true;
    let mock = Mock::new(&[Status(503), Status(503), Status(200)]);
    run(&mock, get(Some(p))).await;
    let seen: Vec<_> = mock.seen().into_iter().map(|s| s.priorities).collect();
    assert_eq!(seen, [Some(vec![]), Some(vec![0]), Some(vec![0, 1])]);
    // off by default, as Istio's
    let mock = Mock::new(&[Status(503), Status(200)]);
    run(&mock, get(None)).await;
    assert!(mock.seen().iter().all(|s| s.priorities.is_none()));
}

#[test]
fn idempotent_methods_are_rfc_9110_s() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(&m.parse().unwrap()), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
        assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
    }
}

/// A streamed gRPC answer: `content-type: application/grpc`, a message, then the status in
/// the trailers (the normal case for a server that has started answering).
#[derive(Debug, Default)]
struct Streamed(VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn streamed_grpc(code: u32) -> Response<MeshBody<Streamed>> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    let frames = [
        http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\x01x")),
        http_body::Frame::trailers(trailers),
    ];
    let mut res = Response::new(MeshBody::Inner(Streamed(frames.into_iter().collect())));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    res
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_trailers_after_a_message_is_passed_through() {
    // a streamed answer whose `grpc-status: 14` arrives in the trailers after a message is
    // the client's (its first frame, read ahead, is given back: the message and the trailers
    // arrive whole), while a trailers-only `unavailable` (status in the head) is retried
    // (trailers before any message: `trailer_tests`)
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let svc = tower::service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        let n = {
            let mut c = seen.lock().unwrap();
            *c += 1;
            *c
        };
        async move {
            Ok::<_, Infallible>(if n == 1 {
                streamed_grpc(14)
            } else {
                Response::new(MeshBody::empty())
            })
        }
    });
    let res = RetryLayer::new()
        .with_seed(3)
        .layer(svc)
        .oneshot(get(None))
        .await
        .unwrap();
    assert_eq!(*calls.lock().unwrap(), 1, "not retried");
    assert!(flags_of(&res).is_empty(), "no URX");
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    assert_eq!(collected.to_bytes(), &b"\0\0\0\0\x01x"[..]);
    // the same status in the head (trailers-only): retried under Istio's default policy
    let mock = Mock::new(&[Grpc(14), Grpc(0)]);
    let res = run(&mock, get(None)).await;
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(mock.calls(), 2);
}

/// A request routed with `retries`, carrying `headers`.
fn with_headers(
    mut req: Request<Full<Bytes>>,
    headers: &[(&'static str, &'static str)],
) -> Request<Full<Bytes>> {
    for (k, v) in headers {
        req.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    req
}

async fn run_honouring(mock: &Mock, req: Request<Full<Bytes>>) -> Res {
    RetryLayer::new()
        .with_seed(5)
        .with_envoy_headers(EnvoyHeaderPolicy::Honour)
        .layer(mock.clone())
        .oneshot(req)
        .await
        .unwrap()
}

const RETRY_5XX_5: &[(&str, &str)] = &[
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-max-retries", "5"),
    ("x-envoy-retriable-status-codes", "418"),
    ("x-envoy-upstream-rq-per-try-timeout-ms", "10"),
    ("x-envoy-hedge-on-per-try-timeout", "true"),
    ("x-envoy-upstream-rq-timeout-ms", "1"),
];

#[tokio::test(start_paused = true)]
async fn x_envoy_retry_headers_are_stripped_and_not_honoured_by_default() {
    // Istio's sidecars and gateways strip them from their clients' requests (Envoy's
    // `cleanInternalHeaders` on external requests): the operator's policy holds.
    let mock = Mock::new(&[Status(500), Status(500), Status(200)]);
    let res = run(&mock, with_headers(get(None), RETRY_5XX_5)).await;
    assert_eq!(res.status(), 500, "500 is not in Istio's default policy");
    assert_eq!(mock.calls(), 1);
    assert_eq!(mock.seen()[0].envoy, Vec::<String>::new(), "none forwarded");
    // an application header that merely looks like one is left alone
    let mock = Mock::new(&[Status(200)]);
    run(
        &mock,
        with_headers(get(None), &[("x-envoy-attempt-count", "1")]),
    )
    .await;
    assert_eq!(mock.seen()[0].envoy, ["x-envoy-attempt-count"]);
}

#[tokio::test(start_paused = true)]
async fn x_envoy_retry_headers_are_honoured_when_trusted_and_not_forwarded() {
    // x-envoy-retry-on adds 5xx to Istio's default conditions; x-envoy-max-retries: 5
    let mock = Mock::new(&[
        Status(500),
        Status(502),
        Status(418),
        Status(503),
        Status(200),
    ]);
    let res = run_honouring(&mock, with_headers(get(None), &RETRY_5XX_5[..3])).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        mock.calls(),
        5,
        "418 retried through x-envoy-retriable-status-codes"
    );
    assert!(
        mock.seen().iter().all(|s| s.envoy.is_empty()),
        "none forwarded"
    );
    // x-envoy-max-retries: 1 lowers the route's attempts
    let mock = Mock::new(&[Status(503), Status(503), Status(200)]);
    let res = run_honouring(
        &mock,
        with_headers(get(Some(policy("503", 3))), &[("x-envoy-max-retries", "1")]),
    )
    .await;
    assert_eq!((res.status().as_u16(), mock.calls()), (503, 2));
    assert_eq!(res.headers()["x-mesh-response-flags"], "URX");
    // x-envoy-max-retries alone, on a route that retries nothing (attempts: 0): no condition,
    // no retry (Envoy applies it only when there is a condition)
    let mock = Mock::new(&[Status(503), Status(200)]);
    run_honouring(
        &mock,
        with_headers(get(Some(policy("503", 0))), &[("x-envoy-max-retries", "3")]),
    )
    .await;
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn x_envoy_retry_on_a_route_without_retries_retries_once_as_envoy() {
    // attempts: 0 (Istio sends no retry policy): the header's conditions alone, with Envoy's
    // default of one retry
    let mock = Mock::new(&[Status(500), Status(500), Status(200)]);
    let res = run_honouring(
        &mock,
        with_headers(
            get(Some(policy("5xx", 0))),
            &[("x-envoy-retry-on", "5xx,bogus")],
        ),
    )
    .await;
    assert_eq!((res.status().as_u16(), mock.calls()), (500, 2));
    // gRPC conditions come from x-envoy-retry-grpc-on only
    let mock = Mock::new(&[Grpc(13), Grpc(13), Grpc(0)]);
    run_honouring(
        &mock,
        with_headers(
            get(Some(policy("5xx", 0))),
            &[("x-envoy-retry-on", "internal")],
        ),
    )
    .await;
    assert_eq!(
        mock.calls(),
        1,
        "internal is not an x-envoy-retry-on condition"
    );
    let mock = Mock::new(&[Grpc(13), Grpc(13), Grpc(0)]);
    let res = run_honouring(
        &mock,
        with_headers(
            get(None),
            &[
                ("x-envoy-retry-grpc-on", "internal"),
                ("x-envoy-max-retries", "2"),
            ],
        ),
    )
    .await;
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(mock.calls(), 3);
    // the caller asked: a POST is retried on what it named
    let mock = Mock::new(&[Status(503), Status(200)]);
    let res = run_honouring(
        &mock,
        with_headers(
            routed(Method::POST, "x", None),
            &[("x-envoy-retry-on", "5xx")],
        ),
    )
    .await;
    assert_eq!((res.status().as_u16(), mock.calls()), (200, 2));
}

#[tokio::test(start_paused = true)]
async fn x_envoy_per_try_timeout_bounds_each_attempt_when_trusted() {
    let headers = &[
        ("x-envoy-retry-on", "reset"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
    ];
    let mock = Mock::new(&[Hang, Status(200)]);
    let start = Instant::now();
    let res = run_honouring(&mock, with_headers(get(None), headers)).await;
    assert_eq!((res.status().as_u16(), mock.calls()), (200, 2));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(125),
        "{took:?}"
    );
    // not trusted: the hanging attempt is not cut off (an hour of paused time)
    let mock = Mock::new(&[Hang, Status(200)]);
    let waited = tokio::time::timeout(
        Duration::from_secs(3600),
        run(&mock, with_headers(get(None), headers)),
    )
    .await;
    assert!(waited.is_err());
}

/// The connector's part of [`ReturnHead`]: puts each head that asks back in its place
/// when the answer is ready, or when the attempt is dropped before (a per-try timeout),
/// marked (`x-handed-back: <n>`, the attempt's number) so that the test sees which head the
/// next attempt was sent from.
#[derive(Clone)]
struct HandsBack(Mock);

impl<B> Service<Request<ReplayBody<B>>> for HandsBack
where
    Mock: Service<Request<ReplayBody<B>>, Response = Res, Error = Infallible>,
    <Mock as Service<Request<ReplayBody<B>>>>::Future: Send + 'static,
{
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        // the balancer's pick, which the head brings back: the n-th attempt's host (the
        // mock's 10.0.0.n)
        let n = self.0.calls() as u8;
        head.extensions
            .insert(mesh_core::ext::SelectedEndpoint::new(SocketAddr::from((
                [10, 0, 0, n],
                80,
            ))));
        let place = take_return_head(&mut head.extensions);
        let back = place.as_ref().map(|_| {
            let mut back = head.clone();
            let n = self.0.calls() + 1;
            back.headers.insert("x-handed-back", HeaderValue::from(n));
            back
        });
        let fut = self.0.call(Request::from_parts(head, body));
        let put_back = PutOnDrop(place.zip(back));
        Box::pin(async move {
            let res = fut.await?;
            drop(put_back);
            Ok(res)
        })
    }
}

/// Puts a head back in its place when dropped: with the answer, or with the attempt.
struct PutOnDrop(Option<(ReturnHead, http::request::Parts)>);

impl Drop for PutOnDrop {
    fn drop(&mut self) {
        if let Some((place, head)) = self.0.take() {
            place.put(head);
        }
    }
}

/// A request extension that counts the copies of the request's head still alive.
#[derive(Clone)]
struct Witness {
    _alive: Arc<()>,
}

/// One request through a retry layer over [`HandsBack`]; checks that once the answer is
/// out, no head put back is held anywhere (not in the service's place, which lives on for
/// the next request, nor in the answer).
async fn run_handing_back(mock: &Mock, mut req: Request<Full<Bytes>>) -> Res {
    let witness = Arc::new(());
    req.extensions_mut().insert(Witness {
        _alive: witness.clone(),
    });
    let mut svc = RetryLayer::new()
        .with_seed(7)
        .with_heads_handed_back()
        .layer(HandsBack(mock.clone()));
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    assert_eq!(
        Arc::strong_count(&witness),
        1,
        "the heads put back go no further than the retry layer, which drops them"
    );
    drop(svc);
    res
}

#[tokio::test(start_paused = true)]
async fn heads_handed_back_retry_from_the_head_the_answer_brought() {
    let mock = Mock::new(&[Local(503, UF), Status(503), Status(200)]);
    let res = run_handing_back(&mock, routed(Method::PUT, "body", None)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 3);
    let seen = mock.seen();
    // the first attempt's head was the client's; each retry went from the head handed back
    let handed: Vec<_> = seen.iter().map(|s| s.handed_back.as_deref()).collect();
    assert_eq!(handed, [None, Some("1"), Some("2")]);
    assert!(
        seen.iter().all(|s| s.body == "body"),
        "the body is replayed"
    );
    // the balancer's list of hosts tried: none for the first attempt (nothing to avoid),
    // made for the first retry from the host the first attempt's head names, then shared
    assert_eq!(seen[0].previous, None);
    let host = |n: u8| SocketAddr::from(([10, 0, 0, n], 80));
    assert_eq!(seen[1].previous, Some(vec![host(0)]));
    assert_eq!(seen[2].previous, Some(vec![host(0), host(1)]));
}

#[tokio::test(start_paused = true)]
async fn heads_handed_back_are_taken_out_of_answers_not_retried() {
    let mock = Mock::new(&[Status(500)]);
    let res = run_handing_back(&mock, get(None)).await;
    assert_eq!(res.status(), 500);
    assert_eq!(mock.calls(), 1);
    let mock = Mock::new(&[Status(503), Status(503), Status(503)]);
    let res = run_handing_back(&mock, get(None)).await;
    assert_eq!(flags_of(&res), ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_answer_without_its_head_is_passed_on_when_heads_are_handed_back() {
    // an inner service that does not hand heads back: nothing to send again
    let mock = Mock::new(&[Status(503), Status(200)]);
    let res = RetryLayer::new()
        .with_seed(7)
        .with_heads_handed_back()
        .layer(mock.clone())
        .oneshot(get(None))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(flags_of(&res).is_empty());
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_retries_from_the_head_the_dropped_attempt_put_back() {
    // no copy: the attempt cut at its per-try timeout hands its head back as it goes
    let mut p = policy("5xx", 2);
    p.per_try_timeout = Some(Duration::from_millis(100));
    let mock = Mock::new(&[Hang, Hang, Status(200)]);
    let res = run_handing_back(&mock, get(Some(p.clone()))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 3);
    let handed: Vec<_> = mock.seen().iter().map(|s| s.handed_back.clone()).collect();
    assert_eq!(handed, [None, Some("1".into()), Some("2".into())]);
    // every attempt cut: the last one's 504 UT, with URX
    let mock = Mock::new(&[Hang, Hang, Hang]);
    let res = run_handing_back(&mock, get(Some(p))).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-mesh-response-flags"], "URX,UT");
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_without_the_head_back_answers_504_ut_unretried() {
    // heads handed back, but the attempt was cut before the request reached the service
    // that hands them back (here: one that never does): nothing to send again
    let mut p = policy("5xx", 2);
    p.per_try_timeout = Some(Duration::from_millis(100));
    let mock = Mock::new(&[Hang, Status(200)]);
    let res = RetryLayer::new()
        .with_seed(7)
        .with_heads_handed_back()
        .layer(mock.clone())
        .oneshot(get(Some(p)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-mesh-response-flags"], "UT");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn the_future_is_send_over_a_service_that_is_not_sync() {
    // the services below are shared between requests (one clone per layer's service): that
    // must not ask them to be `Sync` (tower's `BoxCloneService` is `Send`, not `Sync`)
    fn is_send<T: Send>(t: T) -> T {
        t
    }
    let mock = Mock::new(&[Status(503), Status(200)]);
    let inner = tower::util::BoxCloneService::new(mock.clone());
    let mut svc = RetryLayer::new().with_seed(7).layer(inner);
    let fut = is_send(
        ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
            .await
            .unwrap()
            .call(get(None)),
    );
    let res = tokio::spawn(fut).await.unwrap().unwrap();
    assert_eq!(res.status(), 200, "retried through the shared clone");
    assert_eq!(mock.calls(), 2);
}

/// What [`Marking`] adds to the mock's next answer.
#[derive(Clone, Copy, Debug)]
enum Mark {
    /// The connector's refused stream (HTTP/2 `REFUSED_STREAM`: the upstream did not
    /// process the request): the [`mesh_core::ext::RefusedStream`] marker beside the
    /// answer's `UR`, as `mesh-transport` writes it.
    Refused,
    /// An upstream Envoy's rate limit: `x-envoy-ratelimited: true`.
    RateLimited,
}

/// The mock, its answers marked in turn by a script of [`Mark`]s (then left as they are).
#[derive(Clone)]
struct Marking(Mock, Arc<Mutex<VecDeque<Mark>>>);

impl<B> Service<Request<ReplayBody<B>>> for Marking
where
    Mock: Service<Request<ReplayBody<B>>, Response = Res, Error = Infallible>,
    <Mock as Service<Request<ReplayBody<B>>>>::Future: Send + 'static,
{
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let mark = self.1.lock().unwrap().pop_front();
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            match mark {
                Some(Mark::Refused) => {
                    res.extensions_mut().insert(mesh_core::ext::RefusedStream);
                }
                Some(Mark::RateLimited) => {
                    res.headers_mut()
                        .insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
                }
                None => {}
            }
            Ok(res)
        })
    }
}

async fn run_marked(mock: &Mock, marks: &[Mark], req: Request<Full<Bytes>>) -> Res {
    let marks = Arc::new(Mutex::new(marks.iter().copied().collect()));
    RetryLayer::new()
        .with_seed(7)
        .layer(Marking(mock.clone(), marks))
        .oneshot(req)
        .await
        .unwrap()
}

const UR: ResponseFlags = ResponseFlags::UPSTREAM_REMOTE_RESET;
const URX: ResponseFlags = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;

#[tokio::test(start_paused = true)]
async fn refused_stream_is_retried_on_its_condition_whatever_the_method() {
    use Mark::Refused;
    let mock = Mock::new(&[Local(503, UR), Local(503, UR), Status(200)]);
    let res = run_marked(
        &mock,
        &[Refused, Refused],
        get(Some(policy("refused-stream", 2))),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 3);
    // a reset that is not a refused stream is not retried on `refused-stream` alone
    let mock = Mock::new(&[Local(503, UR), Status(200)]);
    let res = run_marked(&mock, &[], get(Some(policy("refused-stream", 2)))).await;
    assert_eq!(flags_of(&res), UR);
    assert_eq!(mock.calls(), 1);
    // nor a refused stream on a policy without it (or a reset-like condition)
    let mock = Mock::new(&[Local(503, UR), Status(200)]);
    run_marked(&mock, &[Refused], get(Some(policy("connect-failure", 2)))).await;
    assert_eq!(mock.calls(), 1);
    // the upstream did not process it: a POST is retried, body whole, under Istio's default
    // policy (`refused-stream` is in it; the route wrote no retryOn)
    let mock = Mock::new(&[Local(503, UR), Status(201)]);
    let res = run_marked(&mock, &[Refused], routed(Method::POST, "order", None)).await;
    assert_eq!(res.status(), 201);
    let bodies: Vec<_> = mock.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["order", "order"]);
    // the attempts run out: the last refusal with URX
    let mock = Mock::new(&[Local(503, UR), Local(503, UR), Status(200)]);
    let res = run_marked(
        &mock,
        &[Refused, Refused],
        get(Some(policy("refused-stream", 1))),
    )
    .await;
    assert_eq!(flags_of(&res), UR | URX);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_is_retried_when_retry_on_names_it() {
    let mock = Mock::new(&[Grpc(4), Grpc(4), Grpc(0)]);
    let res = run(&mock, get(Some(policy("deadline-exceeded", 2)))).await;
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(mock.calls(), 3);
    // that status only: unavailable is not retried under it
    let mock = Mock::new(&[Grpc(14), Grpc(0)]);
    let res = run(&mock, get(Some(policy("deadline-exceeded", 2)))).await;
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(mock.calls(), 1);
    // a gRPC answer's status only
    let mock = Mock::new(&[NotGrpc(4), Status(200)]);
    run(&mock, get(Some(policy("deadline-exceeded", 2)))).await;
    assert_eq!(mock.calls(), 1);
    // the attempts run out: the last deadline-exceeded with URX
    let mock = Mock::new(&[Grpc(4), Grpc(4), Grpc(0)]);
    let res = run(&mock, get(Some(policy("deadline-exceeded", 1)))).await;
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(flags_of(&res), URX);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn reset_before_request_retries_connect_failures_only() {
    // a connect failure: nothing of the request was sent
    let mock = Mock::new(&[Local(503, UF), Local(503, UF), Status(200)]);
    let res = run(&mock, get(Some(policy("reset-before-request", 2)))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 3);
    // resets that may come after the request was sent, and an upstream's 503: not retried
    for flags in [
        UR,
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
    ] {
        let mock = Mock::new(&[Local(503, flags), Status(200)]);
        let res = run(&mock, get(Some(policy("reset-before-request", 2)))).await;
        assert_eq!(flags_of(&res), flags);
        assert_eq!(mock.calls(), 1, "{flags}");
    }
    let mock = Mock::new(&[Status(503), Status(200)]);
    run(&mock, get(Some(policy("reset-before-request", 2)))).await;
    assert_eq!(mock.calls(), 1);
    // nor a refused stream (the module docs: a connect failure is the only reset known to
    // come before any byte was sent)
    let mock = Mock::new(&[Local(503, UR), Status(200)]);
    run_marked(
        &mock,
        &[Mark::Refused],
        get(Some(policy("reset-before-request", 2))),
    )
    .await;
    assert_eq!(mock.calls(), 1);
    // the application cannot have seen it: a POST is retried even when the policy did not
    // write retryOn, its body sent again whole
    let mut p = policy("reset-before-request", 1);
    p.explicit_retry_on = false;
    let mock = Mock::new(&[Local(503, UF), Status(201)]);
    let res = run(&mock, routed(Method::POST, "order", Some(p))).await;
    assert_eq!(res.status(), 201);
    let bodies: Vec<_> = mock.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["order", "order"]);
}

#[tokio::test(start_paused = true)]
async fn envoy_ratelimited_retries_answers_carrying_x_envoy_ratelimited() {
    use Mark::RateLimited;
    // an upstream Envoy's rate limit (429, x-envoy-ratelimited), whatever the status
    let mock = Mock::new(&[Status(429), Status(503), Status(200)]);
    let res = run_marked(
        &mock,
        &[RateLimited, RateLimited],
        get(Some(policy("envoy-ratelimited", 2))),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(mock.calls(), 3);
    // the header decides, not the status: a 429 without it is not retried
    let mock = Mock::new(&[Status(429), Status(200)]);
    let res = run_marked(&mock, &[], get(Some(policy("envoy-ratelimited", 2)))).await;
    assert_eq!(res.status(), 429);
    assert_eq!(mock.calls(), 1);
    // nor is the header retried without the condition
    let mock = Mock::new(&[Status(429), Status(200)]);
    run_marked(&mock, &[RateLimited], get(Some(policy("retriable-4xx", 2)))).await;
    assert_eq!(mock.calls(), 1);
    // the mesh's own rate limit answer (429 RL, with the header) is judged by its flag
    let mock = Mock::new(&[Local(429, ResponseFlags::RATE_LIMITED), Status(200)]);
    run_marked(
        &mock,
        &[RateLimited],
        get(Some(policy("envoy-ratelimited", 2))),
    )
    .await;
    assert_eq!(mock.calls(), 1);
    // the attempts run out: the last one with URX
    let mock = Mock::new(&[Status(429), Status(429), Status(200)]);
    let res = run_marked(
        &mock,
        &[RateLimited, RateLimited],
        get(Some(policy("envoy-ratelimited", 1))),
    )
    .await;
    assert_eq!((res.status().as_u16(), flags_of(&res)), (429, URX));
}

#[tokio::test(start_paused = true)]
async fn x_envoy_ratelimited_answers_are_retried_under_envoy_ratelimited_only() {
    // Envoy's `RetryStateImpl::wouldRetryFromHeaders` returns first: "A response that
    // contains the x-envoy-ratelimited header comes from an upstream envoy. We retry these
    // only when the envoy-ratelimited policy is in effect."
    let mock = Mock::new(&[Status(503), Status(200)]);
    run_marked(&mock, &[Mark::RateLimited], get(Some(policy("5xx", 2)))).await;
    assert_eq!(mock.calls(), 1, "5xx");
    // Istio's default policy (retriable-status-codes: 503)
    let mock = Mock::new(&[Status(503), Status(200)]);
    run_marked(&mock, &[Mark::RateLimited], get(None)).await;
    assert_eq!(mock.calls(), 1, "Istio's default policy");
}

#[tokio::test(start_paused = true)]
async fn the_default_backoff_is_25_ms_fully_jittered_up_to_ten_times() {
    // Envoy's default base interval, 25 ms, capped at ten times: retry n waits in
    // [0, min(25 ms * 2^n, 250 ms)); over 300 requests each retry's largest wait comes
    // close to its bound and the mean to half of it (the waits are whole milliseconds:
    // a mean of (b - 1) / 2)
    assert_eq!(RetryPolicy::default().backoff, Duration::from_millis(25));
    check_backoff(policy("5xx", 6), [25, 50, 100, 200, 250, 250], 13).await;
    // a route without retries: Istio's default policy, its two retries with the same
    // backoff (under 25 ms, then under 50 ms)
    let layer = RetryLayer::new().with_seed(13);
    let bounds = [25u64, 50];
    let mut max = [Duration::ZERO; 2];
    for _ in 0..100 {
        let mock = Mock::new(&[Status(503); 3]);
        layer.layer(mock.clone()).oneshot(get(None)).await.unwrap();
        let seen = mock.seen();
        assert_eq!(seen.len(), 3);
        for n in 0..2 {
            let wait = seen[n + 1].at - seen[n].at;
            assert!(wait < Duration::from_millis(bounds[n]), "{n}: {wait:?}");
            max[n] = max[n].max(wait);
        }
    }
    assert!(max[0] > Duration::from_millis(20) && max[1] > Duration::from_millis(40));
}

#[tokio::test(start_paused = true)]
async fn a_reset_s_reply_says_it_was_retried_as_envoy_s() {
    // Envoy 1.40, a refused upstream under Istio's default policy: `upstream connect error
    // or disconnect/reset before headers. retried and the latest reset reason: remote
    // connection failure`
    let uf = Reset(UF, UpstreamReset::RemoteConnectionFailure);
    let mock = Mock::new(&[uf, uf, uf]);
    let res = run(&mock, get(None)).await;
    assert_eq!(mock.calls(), 3);
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-mesh-response-flags"], "URX,UF");
    assert_eq!(
        res.extensions().get::<UpstreamReset>(),
        Some(&UpstreamReset::RemoteConnectionFailure),
        "the reason stays for the access log"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
    );
    // a reset the policy does not retry keeps the connector's words
    let uc = ResponseFlags::UPSTREAM_CONNECTION_TERMINATION;
    let mock = Mock::new(&[Reset(uc, UpstreamReset::ConnectionTermination)]);
    let res = run(&mock, get(None)).await;
    assert_eq!(mock.calls(), 1);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    // retried once, then answered by the upstream: its own answer
    let mock = Mock::new(&[uf, Status(503), Status(503)]);
    let res = run(&mock, get(Some(policy("connect-failure", 2)))).await;
    assert_eq!(mock.calls(), 2);
    assert!(res.extensions().get::<UpstreamReset>().is_none());
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_carry_x_envoy_attempt_count_when_asked_as_istios_virtual_hosts() {
    // Istio sets include_request_attempt_count: Envoy writes 1, 2, 3 into the attempts,
    // replacing the client's value
    let counts = |mock: &Mock| -> Vec<Option<String>> {
        mock.seen().into_iter().map(|s| s.attempt_count).collect()
    };
    let some =
        |v: &[&str]| -> Vec<Option<String>> { v.iter().map(|s| Some((*s).to_string())).collect() };
    let mock = Mock::new(&[Status(503), Status(503), Status(200)]);
    let res = RetryLayer::new()
        .with_seed(7)
        .with_attempt_count(true)
        .layer(mock.clone())
        .oneshot(with_headers(
            get(Some(policy("5xx", 2))),
            &[("x-envoy-attempt-count", "7")],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(counts(&mock), some(&["1", "2", "3"]));
    // with heads handed back, and a request no retry policy covers: 1
    let mock = Mock::new(&[Status(503), Status(200)]);
    let svc = RetryLayer::new()
        .with_seed(7)
        .with_attempt_count(true)
        .with_heads_handed_back()
        .layer(HandsBack(mock.clone()));
    svc.oneshot(get(Some(policy("5xx", 1)))).await.unwrap();
    assert_eq!(counts(&mock), some(&["1", "2"]));
    let mock = Mock::new(&[Status(503)]);
    let svc = RetryLayer::new()
        .with_attempt_count(true)
        .layer(mock.clone());
    svc.oneshot(get(Some(policy("5xx", 0)))).await.unwrap();
    assert_eq!(counts(&mock), some(&["1"]));
    // off (the default): none written, the client's passed on
    let mock = Mock::new(&[Status(503), Status(200)]);
    let req = with_headers(
        get(Some(policy("5xx", 1))),
        &[("x-envoy-attempt-count", "7")],
    );
    run(&mock, req).await;
    assert_eq!(counts(&mock), some(&["7", "7"]));
    assert_eq!(counts(&mock).len(), 2);
}

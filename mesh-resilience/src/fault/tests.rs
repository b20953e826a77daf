//! Fault injection under paused time, against a counting mock upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use mesh_core::MeshBody;
use mesh_core::ext::RoutePolicy;
use mesh_core::flags::ResponseFlags;
use mesh_core::policy::{AbortError, AbortFault, DelayFault, FaultPolicy};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::*;

type Body = MeshBody<Empty<Bytes>>;

/// An upstream answering 200 at once, counting the requests that reach it.
fn upstream(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    })
}

fn delay(secs: u64, fraction: f64) -> Option<DelayFault> {
    Some(DelayFault {
        fixed_delay: Duration::from_secs(secs),
        fraction,
    })
}

fn abort(error: AbortError, fraction: f64) -> Option<AbortFault> {
    Some(AbortFault { error, fraction })
}

fn layer(delay: Option<DelayFault>, abort: Option<AbortFault>) -> FaultLayer {
    FaultLayer::new()
        .with_policy(Arc::new(FaultPolicy { delay, abort }))
        .with_seed(42)
}

fn flags(res: &Response<Body>) -> ResponseFlags {
    res.extensions()
        .get::<ResponseFlags>()
        .copied()
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn without_a_policy_requests_pass_untouched() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = FaultLayer::new().layer(upstream(calls.clone()));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(flags(&res).is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_http_abort_answers_its_status_and_never_reaches_the_upstream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(None, abort(AbortError::Http(StatusCode::IM_A_TEAPOT), 1.0))
        .layer(upstream(calls.clone()));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(flags(&res), ResponseFlags::FAULT_INJECTED);
    assert_eq!(res.headers()["x-mesh-response-flags"], "FI");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ABORT_BODY);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_abort_is_a_trailers_only_answer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(None, abort(AbortError::Grpc(14), 1.0)).layer(upstream(calls.clone()));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], ABORT_BODY);
    assert_eq!(flags(&res), ResponseFlags::FAULT_INJECTED);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_http_abort_of_a_grpc_request_maps_to_a_grpc_status() {
    let svc = layer(
        None,
        abort(AbortError::Http(StatusCode::SERVICE_UNAVAILABLE), 1.0),
    )
    .layer(upstream(Arc::default()));
    let req = Request::post("/svc/Call")
        .header("content-type", "application/grpc+proto")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14", "503 is UNAVAILABLE");
}

#[tokio::test(start_paused = true)]
async fn a_delay_waits_then_forwards_with_flag_di() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(delay(7, 1.0), None).layer(upstream(calls.clone()));
    let start = Instant::now();
    let mut fut = Box::pin(svc.oneshot(Request::new(())));
    // Not forwarded before the delay passes.
    assert!(futures_poll_once(&mut fut).await.is_none());
    tokio::time::advance(Duration::from_millis(6_999)).await;
    assert!(futures_poll_once(&mut fut).await.is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let res = fut.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(7), "paused clock");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(flags(&res), ResponseFlags::DELAY_INJECTED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // the delay rides on the answer, for x-envoy-upstream-service-time to leave out
    assert_eq!(
        res.extensions().get::<mesh_core::ext::InjectedDelay>(),
        Some(&mesh_core::ext::InjectedDelay(Duration::from_secs(7)))
    );
}

#[tokio::test(start_paused = true)]
async fn delay_and_abort_together_answer_after_the_delay_with_both_flags() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(
        delay(2, 1.0),
        abort(AbortError::Http(StatusCode::SERVICE_UNAVAILABLE), 1.0),
    )
    .layer(upstream(calls.clone()));
    let start = Instant::now();
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        flags(&res),
        ResponseFlags::DELAY_INJECTED | ResponseFlags::FAULT_INJECTED
    );
    assert_eq!(res.headers()["x-mesh-response-flags"], "DI,FI");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_route_policy_wins_over_the_layer_s_own() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = layer(None, abort(AbortError::Http(StatusCode::IM_A_TEAPOT), 1.0))
        .layer(upstream(calls.clone()));
    // A route without a fault: nothing is injected, although the layer has a policy.
    let mut req = Request::new(());
    req.extensions_mut().insert(RoutePolicy::default());
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // A route with its own abort.
    let mut req = Request::new(());
    req.extensions_mut().insert(RoutePolicy {
        fault: Some(Arc::new(FaultPolicy {
            delay: None,
            abort: abort(AbortError::Http(StatusCode::FORBIDDEN), 1.0),
        })),
        ..RoutePolicy::default()
    });
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Draws `n` requests through a policy and counts (delayed, aborted) answers.
async fn sample(policy: FaultPolicy, n: usize) -> (usize, usize) {
    let mut svc = FaultLayer::new()
        .with_policy(Arc::new(policy))
        .with_seed(7)
        .layer(upstream(Arc::default()));
    let (mut delayed, mut aborted) = (0, 0);
    for _ in 0..n {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        let f = flags(&res);
        delayed += usize::from(f.contains(ResponseFlags::DELAY_INJECTED));
        aborted += usize::from(f.contains(ResponseFlags::FAULT_INJECTED));
    }
    (delayed, aborted)
}

#[tokio::test(start_paused = true)]
async fn abort_percentages_hold_within_statistical_bounds() {
    // 10,000 draws at p = 0.3: σ = 45.8; the bounds are 4σ.
    let (_, aborted) = sample(
        FaultPolicy {
            delay: None,
            abort: abort(AbortError::Http(StatusCode::SERVICE_UNAVAILABLE), 0.3),
        },
        10_000,
    )
    .await;
    assert!((2_817..=3_183).contains(&aborted), "{aborted} of 10,000");
}

#[tokio::test(start_paused = true)]
async fn delay_and_abort_are_drawn_independently() {
    // p(delay) = 0.5, p(abort) = 0.2, over 4,000 requests: each within 4σ of its share
    // (σ = 31.6 and 25.3), the abort share the same among delayed and undelayed requests.
    let policy = FaultPolicy {
        delay: delay(1, 0.5),
        abort: abort(AbortError::Http(StatusCode::SERVICE_UNAVAILABLE), 0.2),
    };
    let mut svc = FaultLayer::new()
        .with_policy(Arc::new(policy))
        .with_seed(11)
        .layer(upstream(Arc::default()));
    let mut counts = [[0usize; 2]; 2]; // [delayed][aborted]
    for _ in 0..4_000 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        let f = flags(&res);
        counts[usize::from(f.contains(ResponseFlags::DELAY_INJECTED))]
            [usize::from(f.contains(ResponseFlags::FAULT_INJECTED))] += 1;
    }
    let delayed = counts[1][0] + counts[1][1];
    let aborted = counts[0][1] + counts[1][1];
    assert!((1_874..=2_126).contains(&delayed), "{counts:?}");
    assert!((699..=901).contains(&aborted), "{counts:?}");
    let share = |row: [usize; 2]| row[1] as f64 / (row[0] + row[1]) as f64;
    let (a, b) = (share(counts[0]), share(counts[1]));
    assert!(
        (a - b).abs() < 0.05,
        "abort share {a} undelayed vs {b} delayed"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_percent_never_injects() {
    let (delayed, aborted) = sample(
        FaultPolicy {
            delay: delay(1, 0.0),
            abort: abort(AbortError::Http(StatusCode::SERVICE_UNAVAILABLE), 0.0),
        },
        1_000,
    )
    .await;
    assert_eq!((delayed, aborted), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_delayed_request_holds_no_capacity_of_the_inner_service() {
    // The inner service admits one request at a time. A request delayed by 10s must not
    // hold that slot: an undelayed request sent after it is answered first.
    let calls = Arc::new(AtomicUsize::new(0));
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(upstream(calls.clone()));
    let mut svc = FaultLayer::new().layer(limited);
    let mut delayed = Request::new(());
    delayed.extensions_mut().insert(RoutePolicy {
        fault: Some(Arc::new(FaultPolicy {
            delay: delay(10, 1.0),
            abort: None,
        })),
        ..RoutePolicy::default()
    });
    let slow = svc.ready().await.unwrap().call(delayed);
    let start = Instant::now();
    let fast = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "answered before the delay ended"
    );
    let slow = slow.await.unwrap();
    assert_eq!(flags(&slow), ResponseFlags::DELAY_INJECTED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Polls `fut` once: `Some` when it completed.
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

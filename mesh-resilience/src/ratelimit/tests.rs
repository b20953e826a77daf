//! Local rate limiting under paused time, against a counting mock upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use mesh_core::MeshBody;
use mesh_core::ext::{RoutePolicy, flags_of};
use mesh_core::flags::ResponseFlags;
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

fn policy(max: u32, per_fill: u32, secs: u64) -> Arc<RateLimitPolicy> {
    Arc::new(RateLimitPolicy::new(
        max,
        per_fill,
        Duration::from_secs(secs),
    ))
}

fn routed(limit: Option<Arc<RateLimitPolicy>>) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(RoutePolicy {
        rate_limit: limit,
        ..RoutePolicy::default()
    });
    req
}

async fn send<S>(svc: &mut S, req: Request<()>) -> Response<Body>
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn without_a_limit_requests_pass_untouched() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = RateLimitLayer::new().layer(upstream(calls.clone()));
    for _ in 0..100 {
        let res = send(&mut svc, Request::new(())).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key(X_RATELIMIT_LIMIT));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn a_burst_beyond_the_bucket_gets_429_rl_and_never_reaches_the_upstream() {
    // the Istio task's numbers: 4 tokens, 4 per 60s
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = RateLimitLayer::new()
        .with_policy(policy(4, 4, 60))
        .layer(upstream(calls.clone()));
    for _ in 0..4 {
        assert_eq!(send(&mut svc, Request::new(())).await.status(), 200);
    }
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(flags_of(&res), ResponseFlags::RATE_LIMITED);
    assert_eq!(res.headers()["x-mesh-response-flags"], "RL");
    // as Envoy 1.40's local limit: no x-envoy-ratelimited (its docs say otherwise)
    assert!(!res.headers().contains_key(X_ENVOY_RATELIMITED));
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert!(
        !res.headers().contains_key(X_RATELIMIT_LIMIT),
        "off by default"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "local_rate_limited");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn the_bucket_refills_tokens_per_fill_each_interval_continuously() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = RateLimitLayer::new()
        .with_policy(policy(4, 2, 1))
        .layer(upstream(calls.clone()));
    let mut ok = 0;
    for _ in 0..10 {
        ok += usize::from(send(&mut svc, Request::new(())).await.status() == 200);
    }
    assert_eq!(ok, 4);
    // two tokens a second: one every 500 ms (Envoy 1.40's bucket, not a fill timer's)
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(send(&mut svc, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut svc, Request::new(())).await.status(), 429);
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut ok = 0;
    for _ in 0..10 {
        ok += usize::from(send(&mut svc, Request::new(())).await.status() == 200);
    }
    assert_eq!(ok, 2, "a second brings tokens_per_fill");
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_headers_count_down_on_answers_and_limited_replies() {
    let calls = Arc::new(AtomicUsize::new(0));
    let limit = RateLimitPolicy::new(2, 2, Duration::from_secs(60)).with_x_ratelimit_headers(true);
    let mut svc = RateLimitLayer::new()
        .with_policy(Arc::new(limit))
        .layer(upstream(calls.clone()));
    // a token every 30 s; reset: whole seconds to the next token, 0 while one is left
    for (remaining, reset) in [("1", "0"), ("0", "30")] {
        let res = send(&mut svc, Request::new(())).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[X_RATELIMIT_LIMIT], "2");
        assert_eq!(res.headers()[X_RATELIMIT_REMAINING], remaining);
        assert_eq!(res.headers()[X_RATELIMIT_RESET], reset);
    }
    tokio::time::advance(Duration::from_millis(20_500)).await;
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()[X_RATELIMIT_REMAINING], "0");
    assert_eq!(res.headers()[X_RATELIMIT_RESET], "10", "9.5 s, rounded up");
}

#[tokio::test(start_paused = true)]
async fn a_routes_limit_replaces_the_listeners_and_other_routes_keep_theirs() {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = policy(1, 1, 60);
    let mut svc = RateLimitLayer::new()
        .with_policy(listener)
        .layer(upstream(calls.clone()));
    let route_a = policy(3, 1, 60);
    let mut a = 0;
    for _ in 0..5 {
        a += usize::from(send(&mut svc, routed(Some(route_a.clone()))).await.status() == 200);
    }
    assert_eq!(a, 3, "route a's own bucket, not the listener's");
    // a route without a limit of its own takes from the listener's bucket
    assert_eq!(send(&mut svc, routed(None)).await.status(), 200);
    assert_eq!(send(&mut svc, routed(None)).await.status(), 429);
    // a request no router saw: the listener's too
    assert_eq!(send(&mut svc, Request::new(())).await.status(), 429);
    // another limited route is unaffected by route a's empty bucket
    let route_b = policy(1, 1, 60);
    assert_eq!(send(&mut svc, routed(Some(route_b))).await.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_bucket_and_a_store_replaces_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new().with_policy(policy(2, 1, 60));
    let mut one = layer.layer(upstream(calls.clone()));
    let mut two = one.clone();
    let mut three = layer.layer(upstream(calls.clone()));
    assert_eq!(send(&mut one, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut two, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut three, Request::new(())).await.status(), 429);
    // a reload: a new, full bucket for every service of the layer
    layer.store(Some(policy(1, 1, 60)));
    assert_eq!(send(&mut two, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut one, Request::new(())).await.status(), 429);
    layer.store(None);
    assert_eq!(send(&mut three, Request::new(())).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn status_and_response_headers_come_from_the_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut limit = RateLimitPolicy::new(1, 1, Duration::from_secs(60))
        .with_status(StatusCode::SERVICE_UNAVAILABLE);
    limit.response_headers = Box::new([(
        http::HeaderName::from_static("x-local-rate-limit"),
        http::HeaderValue::from_static("true"),
    )]);
    let mut svc = RateLimitLayer::new()
        .with_policy(Arc::new(limit))
        .layer(upstream(calls.clone()));
    let ok = send(&mut svc, Request::new(())).await;
    assert!(
        !ok.headers().contains_key("x-local-rate-limit"),
        "limited answers only"
    );
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["x-local-rate-limit"], "true");
    assert_eq!(flags_of(&res), ResponseFlags::RATE_LIMITED);
}

#[tokio::test(start_paused = true)]
async fn a_limited_grpc_request_gets_envoys_grpc_local_reply() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = RateLimitLayer::new()
        .with_policy(policy(1, 1, 60))
        .layer(upstream(calls.clone()));
    let grpc = || {
        Request::post("/svc/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    assert_eq!(send(&mut svc, grpc()).await.status(), 200);
    let res = send(&mut svc, grpc()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], "local_rate_limited");
    assert_eq!(flags_of(&res), ResponseFlags::RATE_LIMITED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn worker_threads_sharing_the_layer_never_admit_more_than_the_bucket() {
    // an hour's interval: no fill during the test
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new().with_policy(policy(300, 1, 3600));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let mut svc = layer.layer(upstream(calls.clone()));
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut limited = 0;
                    for _ in 0..100 {
                        limited +=
                            usize::from(send(&mut svc, Request::new(())).await.status() == 429);
                    }
                    limited
                })
            })
        })
        .collect();
    let limited: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(calls.load(Ordering::SeqCst), 300);
    assert_eq!(limited, 300);
}

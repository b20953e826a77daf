//! What the local rate limit layer adds to a request, over an inner service that is always
//! ready and answers at once (`noop_inner` is the harness alone: subtract it). The goal is
//! under 200 ns per admitted request. The requests are routed GETs (`RouteDecision`, as the
//! router inserts it) built outside the measurement:
//!
//! - `no_limit`: neither the route nor the layer has a limit (a route-policy look-up and an
//!   `ArcSwapOption` load);
//! - `route_admitted`: the route's bucket admits the request (`Instant::now`, one atomic
//!   load and compare-and-swap);
//! - `listener_admitted`: the layer's own, listener-wide bucket admits it;
//! - `route_admitted_x_ratelimit`: as `route_admitted`, with `DRAFT_VERSION_03` headers
//!   (three header values formatted on the answer; `remaining` in the billions);
//! - `route_admitted_x_ratelimit_small`: the same on a bucket of 1,000 tokens, one back
//!   every nanosecond (so every request finds it full and leaves 999): the counts of a
//!   limit as configurations write them;
//! - `limited`: the bucket is empty: the 429 `RL` answer, made by the layer.
//!
//! The admitting buckets never run out (`u32::MAX` tokens refilled every 50 ms); the empty
//! one refills once an hour.
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::Empty;
use mesh_benches::layer::{NoopInner, send};
use mesh_core::ext::{RouteDecision, RouteDestination, RoutePolicy};
use mesh_core::ratelimit::RateLimitPolicy;
use mesh_resilience::RateLimitLayer;
use tower_layer::Layer;

/// A routed GET, its route's policy shared as the router shares it.
fn request(policy: &Arc<RoutePolicy>) -> Request<Empty<Bytes>> {
    let mut req = Request::get("/reviews/1")
        .header("host", "reviews:9080")
        .body(Empty::new())
        .expect("valid request");
    req.extensions_mut().insert(RouteDecision {
        dest: RouteDestination {
            host: "reviews.default.svc.cluster.local".into(),
            subset: None,
            port: Some(9080),
        },
        policy: policy.clone(),
    });
    req
}

/// A bucket that never runs out.
fn endless() -> RateLimitPolicy {
    RateLimitPolicy::new(u32::MAX, u32::MAX, Duration::from_millis(50))
}

fn with_limit(limit: RateLimitPolicy) -> Arc<RoutePolicy> {
    Arc::new(RoutePolicy {
        rate_limit: Some(Arc::new(limit)),
        ..RoutePolicy::default()
    })
}

fn ratelimit(c: &mut Criterion) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("ratelimit");
    let plain = Arc::new(RoutePolicy::default());
    let mut bench = |name: &str,
                     svc: &mut dyn FnMut(Request<Empty<Bytes>>) -> http::StatusCode,
                     policy: &Arc<RoutePolicy>| {
        g.bench_function(name, |b| {
            b.iter_batched(|| request(policy), &mut *svc, BatchSize::SmallInput)
        });
    };

    let mut bare = NoopInner;
    bench(
        "noop_inner",
        &mut |req| send(&mut bare, &mut cx, req),
        &plain,
    );

    let mut svc = RateLimitLayer::new().layer(NoopInner);
    bench("no_limit", &mut |req| send(&mut svc, &mut cx, req), &plain);
    bench(
        "route_admitted",
        &mut |req| send(&mut svc, &mut cx, req),
        &with_limit(endless()),
    );
    bench(
        "route_admitted_x_ratelimit",
        &mut |req| send(&mut svc, &mut cx, req),
        &with_limit(endless().with_x_ratelimit_headers(true)),
    );
    bench(
        "route_admitted_x_ratelimit_small",
        &mut |req| send(&mut svc, &mut cx, req),
        &with_limit(
            RateLimitPolicy::new(1000, 1000, Duration::from_nanos(1))
                .with_x_ratelimit_headers(true),
        ),
    );
    let empty = RateLimitPolicy::new(1, 1, Duration::from_secs(3600));
    let _ = empty.bucket.try_acquire();
    bench(
        "limited",
        &mut |req| send(&mut svc, &mut cx, req),
        &with_limit(empty),
    );

    let mut listener = RateLimitLayer::new()
        .with_policy(Arc::new(endless()))
        .layer(NoopInner);
    bench(
        "listener_admitted",
        &mut |req| send(&mut listener, &mut cx, req),
        &plain,
    );
    g.finish();
}

criterion_group!(benches, ratelimit);
criterion_main!(benches);

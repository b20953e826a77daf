//! What the circuit breaker adds to a request admitted under its cluster's limits, over an
//! inner service that is always ready and answers at once with a streaming body (so the
//! permit is handed to the body and released when the body is dropped, as in the proxy).
//! `noop_inner` is the harness alone: subtract it.
//!
//! - `no_limits`: neither the request's cluster nor the layer has limits (a look-up);
//! - `admit_h2`: Istio's defaults (all unlimited, the default retry budget): the requests
//!   in flight are counted (one compare-and-swap, one decrement at the body's end) and the
//!   permit rides on the body;
//! - `admit_h1_max_connections`: `maxConnections` set, to an HTTP/1.1 endpoint: a
//!   connection slot too (a second compare-and-swap and decrement);
//! - `admit_with_previous_hosts`: as `admit_h2`, the request carrying the retry layer's
//!   `PreviousHosts` (the cluster's limits recorded in it once), which the retry layer keeps
//!   for the next attempt (the list is freed after the measured call).
//!
//! Goal: under 200 ns per request over `noop_inner` (the lead runs `cargo bench`).
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use mesh_benches::layer::send;
use mesh_core::MeshBody;
use mesh_core::ext::{PreviousHosts, SelectedEndpoint, SelectedUpstream, UpstreamCluster};
use mesh_core::health::HealthCell;
use mesh_core::limits::{ClusterLimits, Thresholds};
use mesh_resilience::CircuitBreakerLayer;
use tower_layer::Layer;
use tower_service::Service;

type Res = Response<MeshBody<Empty<Bytes>>>;

/// An upstream that answers `200` at once, with a (streaming) body of its own.
#[derive(Clone)]
struct NoopInner;

impl<B> Service<Request<B>> for NoopInner {
    type Response = Res;
    type Error = Infallible;
    type Future = Ready<Result<Res, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        black_box(req.uri());
        ready(Ok(Response::new(MeshBody::inner(Empty::new()))))
    }
}

/// What the balancer inserts: the endpoint and its cluster, shared.
fn upstream(http2: bool, limits: Option<Arc<ClusterLimits>>) -> SelectedUpstream {
    SelectedUpstream::new(
        SelectedEndpoint::new("10.0.0.1:9080".parse().expect("an address")).with_http2(http2),
        UpstreamCluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            health: Arc::new(HealthCell::detached()),
            pool: Default::default(),
            limits,
            outlier: None,
        },
    )
}

fn request(up: Option<&SelectedUpstream>) -> Request<Empty<Bytes>> {
    let mut req = Request::get("/reviews/1")
        .header("host", "reviews:9080")
        .body(Empty::new())
        .expect("valid request");
    if let Some(u) = up {
        req.extensions_mut().insert(u.clone());
    }
    req
}

fn breaker(c: &mut Criterion) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("breaker");

    let mut bare = NoopInner;
    let plain = upstream(true, None);
    g.bench_function("noop_inner", |b| {
        b.iter_batched(
            || request(Some(&plain)),
            |req| send(&mut bare, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    let mut svc = CircuitBreakerLayer::new().layer(NoopInner);
    g.bench_function("no_limits", |b| {
        b.iter_batched(
            || request(Some(&plain)),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    let defaults = Arc::new(ClusterLimits::detached(Thresholds::default()));
    let h2 = upstream(true, Some(defaults.clone()));
    g.bench_function("admit_h2", |b| {
        b.iter_batched(
            || request(Some(&h2)),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    let one_hundred = Arc::new(ClusterLimits::detached(Thresholds {
        max_connections: 100,
        ..Thresholds::default()
    }));
    let h1 = upstream(false, Some(one_hundred.clone()));
    g.bench_function("admit_h1_max_connections", |b| {
        b.iter_batched(
            || request(Some(&h1)),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    // the retry layer keeps the list for the request's next attempt: the request's is not
    // the last reference (dropped after the measured call, as criterion drops outputs)
    g.bench_function("admit_with_previous_hosts", |b| {
        b.iter_batched(
            || {
                let hosts = PreviousHosts::new();
                let mut req = request(Some(&h2));
                req.extensions_mut().insert(hosts.clone());
                (req, hosts)
            },
            |(req, hosts)| (send(&mut svc, &mut cx, req), hosts),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    // every permit was released: nothing leaked across iterations
    assert_eq!(defaults.counters().requests(), 0);
    assert_eq!(one_hundred.counters().connections(), 0);
    assert_eq!(
        defaults.pending_overflows() + one_hundred.pending_overflows(),
        0
    );
}

criterion_group!(benches, breaker);
criterion_main!(benches);

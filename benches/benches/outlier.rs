//! What the outlier detection layer adds to a request, over an inner service that is always
//! ready and answers at once (`noop_inner` is the harness alone: subtract it). Each request
//! carries the balancer's `SelectedUpstream`, as below the balancer:
//!
//! - `no_policy`: the cluster has no `outlierDetection` (one extension look-up);
//! - `success`: Istio's defaults, a `200`: the look-up, a reference count on the shared
//!   `SelectedUpstream`, and the consecutive counters read (not written: they are zero);
//! - `error_then_success`: every other answer a `500` (never five in a row): the counters
//!   written and reset, the worst case short of an ejection.
//!
//! The goal is under 200 ns per request over `noop_inner`.
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use mesh_core::ext::{SelectedEndpoint, SelectedUpstream, UpstreamCluster, UpstreamPool};
use mesh_core::health::{HealthKey, HealthSource, HealthTable};
use mesh_core::policy::OutlierPolicy;
use mesh_resilience::OutlierLayer;
use tower_layer::Layer;
use tower_service::Service;

/// An upstream that answers at once, alternately `500` and `200` when `flip` is set.
#[derive(Clone)]
struct NoopInner {
    flip: bool,
    n: u64,
}

impl<B> Service<Request<B>> for NoopInner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        black_box(req.uri());
        let mut res = Response::new(());
        self.n += 1;
        if self.flip && self.n.is_multiple_of(2) {
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        ready(Ok(res))
    }
}

/// The balancer's pick for an endpoint of a cluster with `policy`.
fn upstream(table: &HealthTable, policy: Option<Arc<OutlierPolicy>>) -> SelectedUpstream {
    let addr = "10.0.0.1:9080".parse().expect("an address");
    let name: Arc<str> = "outbound|9080||reviews.default.svc.cluster.local".into();
    let health = table.cell(&HealthKey {
        cluster: name.clone(),
        addr,
    });
    SelectedUpstream::new(
        SelectedEndpoint::new(addr),
        UpstreamCluster {
            name,
            health,
            pool: UpstreamPool::default(),
            outlier: policy,
            limits: None,
        },
    )
}

fn request(up: &SelectedUpstream) -> Request<()> {
    let mut req = Request::get("/reviews/1").body(()).expect("valid request");
    req.extensions_mut().insert(up.clone());
    req
}

/// Polls `svc` ready, calls it, and polls the (immediately ready) future once.
fn send<S>(svc: &mut S, cx: &mut Context<'_>, req: Request<()>) -> StatusCode
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => unreachable!("always ready"),
    }
    match pin!(svc.call(req)).poll(cx) {
        Poll::Ready(Ok(res)) => black_box(res.status()),
        _ => unreachable!("ready at once"),
    }
}

fn outlier(c: &mut Criterion) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("outlier");
    let table = HealthTable::new();
    let plain = upstream(&table, None);
    let istio = upstream(&table, Some(Arc::new(OutlierPolicy::default())));

    let mut bare = NoopInner { flip: false, n: 0 };
    g.bench_function("noop_inner", |b| {
        b.iter_batched(
            || request(&istio),
            |req| send(&mut bare, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let mut svc = OutlierLayer::new().layer(NoopInner { flip: false, n: 0 });
    g.bench_function("no_policy", |b| {
        b.iter_batched(
            || request(&plain),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("success", |b| {
        b.iter_batched(
            || request(&istio),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let mut flipping = OutlierLayer::new().layer(NoopInner { flip: true, n: 0 });
    g.bench_function("error_then_success", |b| {
        b.iter_batched(
            || request(&istio),
            |req| send(&mut flipping, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    assert!(istio.cluster().health.is_healthy(), "never ejected");
    g.finish();
}

criterion_group!(benches, outlier);
criterion_main!(benches);

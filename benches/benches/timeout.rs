//! What the route timeout layer adds to a request, over an inner service that is always
//! ready (`noop_inner` is the harness alone: subtract it). The requests are routed GETs
//! without a body (the deadline starts at the call, as Envoy's `onRequestComplete`), the
//! router's decision in their `RequestSlots`:
//!
//! - `no_timeout`: the route sets no `timeout` (Istio's default): a look-up of the route
//!   policy, the `content-type` look-up for `grpc-timeout` and the scan of the header names
//!   for `x-envoy-`;
//! - `route_timeout`: the route sets `timeout: 15s` and the inner service answers at once:
//!   the timer is made (the runtime's handle, the clock read, one allocation) with the
//!   `TimeoutMark` the layers below read (another), and dropped with the answer. Tokio puts
//!   a timer in its wheel when it is first polled, which an answer ready at the first poll
//!   never does;
//! - `route_timeout_armed` (over `pending_once_inner`, its own baseline): the inner service
//!   answers at the second poll, as a real upstream does after a wake-up: the first poll
//!   puts the timer in the runtime's wheel, the answer takes it out (armed and cancelled,
//!   the cost every proxied request with a route timeout pays).
//!
//! The goal is under 200 ns per request over the baseline. Measured (2026-12, 2 shared cores
//! under other builds: indicative, two short runs): `noop_inner` 190–200 ns; `no_timeout`
//! +30 ns; `route_timeout` +85–90 ns; `route_timeout_armed` +135–230 ns over
//! `pending_once_inner`. Callgrind (`benches/load/layer_callgrind.py`, steady whatever the
//! load): +311, +822 and +1,309 instructions per request.
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use mesh_benches::layer::{NoopInner, Res, routed_get, send};
use mesh_core::MeshBody;
use mesh_core::ext::RoutePolicy;
use mesh_resilience::TimeoutLayer;
use tower_layer::Layer;
use tower_service::Service;

/// An upstream that answers `200` at the second poll of its future (the first is
/// `Pending`), as a real upstream answers after a wake-up.
#[derive(Clone, Debug)]
struct PendingOnceInner;

/// The future of [`PendingOnceInner`].
struct SecondPoll(bool);

impl Future for SecondPoll {
    type Output = Result<Res, Infallible>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(Ok(Response::new(MeshBody::empty())))
        } else {
            Poll::Pending
        }
    }
}

impl<B> Service<Request<B>> for PendingOnceInner {
    type Response = Res;
    type Error = Infallible;
    type Future = SecondPoll;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        black_box(req.uri());
        SecondPoll(false)
    }
}

/// [`send`] for [`PendingOnceInner`]: polls `svc` ready, calls it, and polls the future
/// twice (pending, then ready).
#[inline(never)]
fn send_polled_twice<S, B, R>(svc: &mut S, cx: &mut Context<'_>, req: Request<B>) -> StatusCode
where
    S: Service<Request<B>, Response = Response<R>, Error = Infallible>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => unreachable!("always ready"),
    }
    let mut fut = pin!(svc.call(req));
    assert!(fut.as_mut().poll(cx).is_pending(), "the first poll waits");
    match fut.poll(cx) {
        Poll::Ready(Ok(res)) => black_box(res.status()),
        _ => unreachable!("ready at the second poll"),
    }
}

fn timeout(c: &mut Criterion) {
    // the timers need a runtime's time driver (entered, not driven: none fires)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _entered = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("timeout");
    let unset = Arc::new(RoutePolicy::default());
    let set = Arc::new(RoutePolicy {
        timeout: Some(Duration::from_secs(15)),
        ..RoutePolicy::default()
    });

    let mut bare = NoopInner;
    g.bench_function("noop_inner", |b| {
        b.iter_batched(
            || routed_get(&unset),
            |req| send(&mut bare, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let mut svc = TimeoutLayer::new().layer(NoopInner);
    g.bench_function("no_timeout", |b| {
        b.iter_batched(
            || routed_get(&unset),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("route_timeout", |b| {
        b.iter_batched(
            || routed_get(&set),
            |req| send(&mut svc, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    let mut bare_pending = PendingOnceInner;
    g.bench_function("pending_once_inner", |b| {
        b.iter_batched(
            || routed_get(&set),
            |req| send_polled_twice(&mut bare_pending, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    let mut armed = TimeoutLayer::new().layer(PendingOnceInner);
    g.bench_function("route_timeout_armed", |b| {
        b.iter_batched(
            || routed_get(&set),
            |req| send_polled_twice(&mut armed, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, timeout);
criterion_main!(benches);

//! The in-process client stack of `examples/in-process-client`: routing and balancing
//! (`RouteLayer` → `LbLayer` → `MeshBodyLayer` → `EndpointUriLayer`) over a no-op connector
//! that answers at once, so the figure is what the layers add to each request a service
//! sends (the configuration is the example's: a 90/10 canary and a consistent-hash rule over
//! three endpoints). `noop_connector` is the harness alone: subtract it.
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use mesh_core::body::MeshBodyLayer;
use mesh_core::uri::EndpointUriLayer;
use mesh_lb::LbLayer;
use mesh_routing::{RouteLayer, RouteTable};
use tower_layer::Layer;
use tower_service::Service;

/// A connector that answers `200` at once, as a client whose upstream is infinitely fast.
#[derive(Clone)]
struct NoopConnector;

impl Service<Request<()>> for NoopConnector {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        black_box(req.uri());
        ready(Ok(Response::new(Empty::new())))
    }
}

fn request(user: Option<&str>) -> Request<()> {
    let mut b = Request::get("http://reviews:9080/reviews/1");
    if let Some(u) = user {
        b = b.header("x-user", u);
    }
    b.body(()).expect("valid request")
}

/// Polls `svc` ready, calls it, and polls the (immediately ready) future once.
fn send<S, B>(svc: &mut S, cx: &mut Context<'_>, req: Request<()>) -> http::StatusCode
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => unreachable!("always ready"),
    }
    match pin!(svc.call(req)).poll(cx) {
        Poll::Ready(Ok(res)) => black_box(res.status()),
        other => unreachable!("ready at once: {:?}", other.map(|r| r.map(|_| ()))),
    }
}

fn in_process(c: &mut Criterion) {
    let yaml = include_str!("../../examples/in-process-client/mesh.yaml")
        .replace("{V1A}", "9081")
        .replace("{V1B}", "9082")
        .replace("{V2}", "9083");
    let compiled = mesh_core::config::load_str("mesh.yaml", &yaml).expect("the example's YAML");
    let table = RouteTable::sidecar(&compiled.snapshot).expect("table builds");
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("in_process");

    let mut bare = NoopConnector;
    g.bench_function("noop_connector", |b| {
        b.iter_batched(
            || request(None),
            |req| send(&mut bare, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    let mut stack = RouteLayer::from_table(table).with_seed(1).layer(
        LbLayer::new(compiled.snapshot.clone())
            .layer(MeshBodyLayer::new().layer(EndpointUriLayer::new().layer(NoopConnector))),
    );
    assert_eq!(
        send(&mut stack, &mut cx, request(None)),
        http::StatusCode::OK
    );
    g.bench_function("route_balance_canary", |b| {
        b.iter_batched(
            || request(None),
            |req| send(&mut stack, &mut cx, req),
            BatchSize::SmallInput,
        )
    });

    let users: Vec<String> = (0..64).map(|i| format!("user-{i}")).collect();
    let mut i = 0;
    g.bench_function("route_balance_consistent_hash", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % users.len();
                request(Some(&users[i]))
            },
            |req| send(&mut stack, &mut cx, req),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, in_process);
criterion_main!(benches);

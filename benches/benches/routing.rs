//! Routing: per-request match latency through `mesh_routing::Route` (host lookup, match
//! blocks, weighted choice, extensions written) for a 10-route table, 10,000-route tables (as
//! 1,000 hosts × 10 routes and as 100 hosts × 100 routes) and an API gateway host of 500 path
//! prefixes, and the time to compile a table from a snapshot (path indexes included). Goal:
//! under 1 µs per request at 10,000 routes, however they are spread over hosts.
use std::convert::Infallible;
use std::fmt::Write;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_core::compile::{Snapshot, compile};
use mesh_core::load::Loader;
use mesh_routing::{RouteLayer, RouteTable};
use tower_layer::Layer;
use tower_service::Service;

/// `hosts` VirtualServices (one ServiceEntry each) of `per_host` routes; the rules mix
/// prefixes, exact paths, headers, query parameters and regexes, the last one a weighted
/// canary catch-all.
fn config(hosts: usize, per_host: usize) -> String {
    let mut y = String::new();
    for h in 0..hosts {
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{h}, namespace: default}}\nspec:\n  hosts: [s{h}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: s{h}, namespace: default}}\nspec:\n  hosts: [s{h}]\n  http:\n"
        );
        for r in 0..per_host - 1 {
            let m = match r % 5 {
                0 => format!("uri: {{prefix: /api/v{r}/}}"),
                1 => format!("uri: {{exact: /login/{r}}}"),
                2 => format!("uri: {{prefix: /h}}, headers: {{x-tenant: {{exact: t{r}}}}}"),
                3 => format!("uri: {{regex: '/items/[0-9]+/r{r}'}}"),
                _ => format!("uri: {{prefix: /q}}, queryParams: {{v: {{exact: '{r}'}}}}"),
            };
            let _ = write!(
                y,
                "  - name: r{r}\n    match: [{{{m}}}]\n    timeout: 3s\n    route: [{{destination: {{host: s{h}, subset: v1}}}}]\n"
            );
        }
        let _ = write!(
            y,
            "  - name: canary\n    route:\n    - {{destination: {{host: s{h}, subset: v1}}, weight: 90}}\n    - {{destination: {{host: s{h}, subset: v2}}, weight: 10}}\n---\n"
        );
    }
    y
}

/// An API gateway host: `routes - 1` path prefixes (`/svc<r>/`, every tenth an exact
/// health path), then a catch-all.
fn gateway_config(routes: usize) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: gw, namespace: default}\nspec:\n  hosts: [gw.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: gw, namespace: default}\nspec:\n  hosts: [gw]\n  http:\n",
    );
    for r in 0..routes - 1 {
        let m = if r % 10 == 9 {
            format!("uri: {{exact: /svc{r}/healthz}}")
        } else {
            format!("uri: {{prefix: /svc{r}/}}")
        };
        let _ = write!(
            y,
            "  - name: r{r}\n    match: [{{{m}}}]\n    route: [{{destination: {{host: gw, subset: s{r}}}}}]\n"
        );
    }
    y.push_str("  - name: fallback\n    route: [{destination: {host: gw}}]\n");
    y
}

fn load(yaml: &str) -> Snapshot {
    let mut l = Loader::new();
    l.add_str("bench.yaml", yaml);
    compile(l.finish().resources)
}

fn snapshot(hosts: usize, per_host: usize) -> Snapshot {
    load(&config(hosts, per_host))
}

/// Requests to the gateway host over its prefixes, some falling through to the catch-all.
fn gateway_requests(routes: usize) -> Vec<Request<()>> {
    (0..64)
        .map(|i| {
            let r = (i * 7919) % routes;
            let path = match i % 4 {
                0 => format!("/svc{r}/v1/items/{i}"),
                1 => format!("/svc{}/healthz", r - r % 10 + 9),
                2 => format!("/svc{r}/"),
                _ => format!("/unknown/{i}"),
            };
            Request::builder()
                .uri(path)
                .header("host", "gw.default.svc.cluster.local")
                .body(())
                .expect("valid request")
        })
        .collect()
}

#[derive(Clone)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<MeshBody<http_body_util::Empty<bytes::Bytes>>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(MeshBody::empty())))
    }
}

/// Requests spread over the hosts, hitting first, middle and last rules (the last is the
/// catch-all, after every other block of its host was tried).
fn requests(hosts: usize, per_host: usize) -> Vec<Request<()>> {
    let mut out = Vec::new();
    for i in 0..64 {
        let h = (i * 7919) % hosts;
        let r = (i * 31) % per_host.max(1);
        let (path, header) = match i % 6 {
            0 => (format!("/api/v{}/users", r - r % 5), None),
            1 => (format!("/login/{}", r - r % 5 + 1), None),
            2 => ("/h/x".to_string(), Some(format!("t{}", r - r % 5 + 2))),
            3 => (format!("/items/123/r{}", r - r % 5 + 3), None),
            4 => (format!("/q?v={}", r - r % 5 + 4), None),
            _ => ("/fallthrough/to/canary".to_string(), None),
        };
        let mut b = Request::builder()
            .uri(path)
            .header("host", format!("s{h}.default.svc.cluster.local:80"));
        if let Some(t) = header {
            b = b.header("x-tenant", t);
        }
        out.push(b.body(()).expect("valid request"));
    }
    out
}

fn clone_req(r: &Request<()>) -> Request<()> {
    let mut c = Request::new(());
    *c.uri_mut() = r.uri().clone();
    *c.headers_mut() = r.headers().clone();
    c
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    {
        // The harness alone (clone-free request hand-off, response, drops): subtract it.
        let reqs = requests(1, 10);
        let mut svc = Ok200;
        let mut cx = Context::from_waker(Waker::noop());
        let mut i = 0;
        g.bench_function("baseline_no_router", |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % reqs.len();
                    clone_req(&reqs[i])
                },
                |req| match pin!(svc.call(req)).poll(&mut cx) {
                    Poll::Ready(Ok(res)) => black_box(res.status()),
                    _ => unreachable!("ready"),
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    for (name, hosts, per_host) in [
        ("10_routes", 1, 10),
        ("10000_routes_1000x10", 1000, 10),
        ("10000_routes_100x100", 100, 100),
        ("gateway_500_prefixes", 0, 500),
    ] {
        let (snap, reqs) = if hosts == 0 {
            (load(&gateway_config(per_host)), gateway_requests(per_host))
        } else {
            (snapshot(hosts, per_host), requests(hosts, per_host))
        };
        let table = RouteTable::sidecar(&snap).expect("table builds");
        assert_eq!(table.route_count(), hosts.max(1) * per_host);
        let mut svc = RouteLayer::from_table(table).with_seed(1).layer(Ok200);
        let mut cx = Context::from_waker(Waker::noop());
        let mut i = 0;
        g.bench_function(format!("match_{name}"), |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % reqs.len();
                    clone_req(&reqs[i])
                },
                |req| {
                    let fut = pin!(svc.call(req));
                    match fut.poll(&mut cx) {
                        Poll::Ready(Ok(res)) => black_box(res.status()),
                        _ => unreachable!("the inner service is ready"),
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("routing_compile");
    g.sample_size(10);
    for (name, hosts, per_host) in [
        ("10_routes", 1, 10),
        ("10000_routes", 1000, 10),
        ("10000_routes_100x100", 100, 100),
    ] {
        let snap = snapshot(hosts, per_host);
        g.bench_function(name, |b| {
            b.iter(|| black_box(RouteTable::sidecar(black_box(&snap)).expect("builds")))
        });
    }
    g.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);

//! Load balancing: per-pick latency of every balancer through `mesh_lb::Lb::pick` (version
//! check, cluster lookup, the algorithm, the in-flight counter) at 10, 100 and 10,000
//! endpoints; one full `Service::call` (extensions written); and ring-hash / Maglev table
//! build times. Goal: every pick under 100 ns at 100 endpoints.
use std::convert::Infallible;
use std::fmt::Write;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_core::compile::{Snapshot, compile};
use mesh_core::ext::RouteDestination;
use mesh_core::load::Loader;
use mesh_lb::hash::HashTable;
use mesh_lb::{LbConfig, LbLayer};
use tower_layer::Layer;
use tower_service::Service;

const HOST: &str = "svc.default.svc.cluster.local";

/// One service of `n` endpoints (weights 1..=4 when `weighted`) and a DestinationRule.
fn config(n: usize, lb: &str, weighted: bool) -> Arc<Snapshot> {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints:\n",
    );
    for i in 0..n {
        let w = if weighted {
            format!(", weight: {}", i % 4 + 1)
        } else {
            String::new()
        };
        let _ = writeln!(
            y,
            "  - {{address: 10.{}.{}.{}{w}}}",
            i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    let _ = write!(
        y,
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc}}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer: {lb}\n"
    );
    let mut l = Loader::new();
    l.add_str("bench.yaml", &y);
    Arc::new(compile(l.finish().resources))
}

/// The innermost service: answers at once.
#[derive(Clone, Copy)]
struct Echo;

impl Service<Request<()>> for Echo {
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

fn echo() -> Echo {
    Echo
}

fn picks(c: &mut Criterion) {
    let balancers: &[(&str, &str, bool)] = &[
        ("round_robin", "{simple: ROUND_ROBIN}", false),
        ("round_robin_weighted", "{simple: ROUND_ROBIN}", true),
        ("random", "{simple: RANDOM}", false),
        ("least_request", "{simple: LEAST_REQUEST}", false),
        ("least_request_weighted", "{simple: LEAST_REQUEST}", true),
        ("peak_ewma", "{}", false),
        (
            "ring_hash",
            "{consistentHash: {httpHeaderName: x-user}}",
            false,
        ),
        (
            "maglev",
            "{consistentHash: {httpHeaderName: x-user, maglev: {}}}",
            false,
        ),
    ];
    let dest = RouteDestination {
        host: HOST.into(),
        subset: None,
        port: None,
    };
    let mut g = c.benchmark_group("lb_pick");
    for &(name, lb, weighted) in balancers {
        for n in [10usize, 100, 10_000] {
            let cfg = LbConfig {
                seed: Some(1),
                peak_ewma_hosts: vec![HOST.into()],
                ..LbConfig::default()
            };
            let layer = LbLayer::builder(config(n, lb, weighted))
                .config(cfg)
                .build();
            let mut svc = layer.layer(echo());
            let hashed = lb.contains("consistentHash");
            let mut key = 0u64;
            assert!(svc.pick(&dest, None).is_ok(), "{name}: no endpoint");
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let p = svc.pick(black_box(&dest), hashed.then_some(key));
                    black_box(p.map(|p| p.endpoint.addr).ok())
                })
            });
        }
    }
    g.finish();

    // the whole service call: pick, in-flight guard, two extensions inserted, inner call
    let mut g = c.benchmark_group("lb_call");
    {
        let n = 100usize;
        let layer = LbLayer::builder(config(n, "{simple: ROUND_ROBIN}", false))
            .config(LbConfig {
                seed: Some(1),
                ..LbConfig::default()
            })
            .build();
        let mut svc = layer.layer(echo());
        g.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, _| {
            b.iter(|| {
                let mut req = Request::new(());
                req.extensions_mut().insert(dest.clone());
                let fut = pin!(svc.call(req));
                let Poll::Ready(res) = fut.poll(&mut Context::from_waker(Waker::noop())) else {
                    unreachable!()
                };
                black_box(res.map(|r| r.status()).ok())
            })
        });
    }
    g.finish();
}

fn tables(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_table_build");
    g.sample_size(10);
    for n in [10usize, 100, 10_000] {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| {
                SocketAddr::from((
                    [
                        10,
                        (i / 65536) as u8,
                        (i / 256 % 256) as u8,
                        (i % 256) as u8,
                    ],
                    80,
                ))
            })
            .collect();
        let weights = vec![1.0; n];
        g.bench_with_input(BenchmarkId::new("ring_hash_1024", n), &n, |b, _| {
            b.iter(|| black_box(HashTable::ring(&addrs, &weights, 1024).map(|t| t.len())))
        });
        g.bench_with_input(BenchmarkId::new("maglev_65537", n), &n, |b, _| {
            b.iter(|| black_box(HashTable::maglev(&addrs, &weights, 65537).map(|t| t.len())))
        });
    }
    g.finish();
}

criterion_group!(benches, picks, tables);
criterion_main!(benches);

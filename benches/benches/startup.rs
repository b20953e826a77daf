//! Start-up and reload cost at scale (issue 15): the whole configuration pipeline that
//! `mesh-proxy run` and every reload go through (load → validate → compile → route table →
//! security), then the shared layers (`Layers::new`), for the mesh
//! ([`mesh_benches::mesh_config`]) of 1,000 and 10,000 services. Both must grow linearly.
//! One more case: 10,000 services of which the workload's Sidecar lets it see 10.
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::load::Loader;

fn startup(c: &mut Criterion) {
    let mut g = c.benchmark_group("startup");
    g.sample_size(10);
    let cases = [
        ("1k", 1_000usize, ""),
        ("10k", 10_000, ""),
        ("10k_sidecar_sees_10", 10_000, mesh_benches::SEES_TEN),
    ];
    for (name, n, extra) in cases {
        let text = format!(
            "{}{}{extra}",
            mesh_benches::mesh_bootstrap(1, ""),
            mesh_benches::mesh_config(n)
        );
        g.bench_function(format!("pipeline_{name}"), |b| {
            b.iter(|| {
                let mut loader = Loader::new();
                loader.add_str("bench.yaml", black_box(&text));
                black_box(mesh_proxy::pipeline::build(loader).is_ok())
            })
        });
        g.bench_function(format!("pipeline_and_layers_{name}"), |b| {
            b.iter(|| {
                let mut loader = Loader::new();
                loader.add_str("bench.yaml", black_box(&text));
                let built = mesh_proxy::pipeline::build(loader).expect("valid");
                let snapshot: Arc<_> = built.compiled.snapshot.clone();
                black_box(mesh_proxy::stack::Layers::new(&snapshot, built.routes))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);

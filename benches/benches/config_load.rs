//! Configuration loading: parse → validate → compile of a 10,000-route configuration.
//! (The mesh-core issue's goal: "well under a second".)
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn load(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_load");
    g.sample_size(10);
    for routes in [100usize, 10_000] {
        let text = mesh_benches::routes_config(routes);
        g.bench_function(format!("{routes}_routes"), |b| {
            b.iter(|| {
                let compiled = mesh_core::config::load_str("bench.yaml", black_box(&text));
                black_box(compiled.is_ok())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);

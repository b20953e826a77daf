//! Instruction-count profile of `Lb::pick`: run under callgrind with a pick count, e.g.
//! `valgrind --tool=callgrind target/release/examples/pick_profile round_robin 100 100000`,
//! once with 0 picks and once with N; the difference over N is the cost of one pick.
use std::fmt::Write;
use std::sync::Arc;

use mesh_core::compile::compile;
use mesh_core::ext::RouteDestination;
use mesh_core::load::Loader;
use mesh_lb::{LbConfig, LbLayer};
use tower_layer::Layer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let algo = args.get(1).map_or("round_robin", String::as_str);
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let picks: u64 = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let lb = match algo {
        "round_robin" => "{simple: ROUND_ROBIN}",
        "random" => "{simple: RANDOM}",
        "least_request" => "{simple: LEAST_REQUEST}",
        "peak_ewma" => "{}",
        "ring_hash" => "{consistentHash: {httpHeaderName: x-user}}",
        "maglev" => "{consistentHash: {httpHeaderName: x-user, maglev: {}}}",
        other => panic!("unknown algorithm {other}"),
    };
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints:\n",
    );
    for i in 0..n {
        let _ = writeln!(
            y,
            "  - {{address: 10.{}.{}.{}}}",
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
    l.add_str("p.yaml", &y);
    let snap = Arc::new(compile(l.finish().resources));
    let cfg = LbConfig {
        seed: Some(1),
        peak_ewma_hosts: vec!["*".into()],
        ..LbConfig::default()
    };
    let mut svc = LbLayer::builder(snap).config(cfg).build().layer(());
    let dest = RouteDestination {
        host: "svc.default.svc.cluster.local".into(),
        subset: None,
        port: None,
    };
    let hashed = lb.contains("consistentHash");
    let _ = svc.pick(&dest, None); // build outside the measured loop
    let mut acc = 0u64;
    let mut key = 0u64;
    for _ in 0..picks {
        key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
        if let Ok(p) = svc.pick(std::hint::black_box(&dest), hashed.then_some(key)) {
            acc = acc.wrapping_add(u64::from(p.endpoint.addr.port()));
        }
    }
    println!("{algo} n={n} picks={picks} acc={acc}");
}

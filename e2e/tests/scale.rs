//! A large mesh through the real proxy (issue 15): the generated mesh
//! ([`mesh_benches::mesh_config`]) starts, serves, and reloads without stalling traffic: the
//! reload is built on the reloading thread (off the workers) and swapped atomically, so
//! requests keep completing while it builds and none fails across the swaps.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::*;

/// Services in the mesh: large enough that a reload takes many request round trips in a
/// debug build, small enough for CI.
const SERVICES: usize = 2_000;

/// The mesh with every endpoint on `port` of 127.0.0.1; `weight_v1` is the split.
fn config(port: u16, weight_v1: u32) -> String {
    let text = format!(
        "{}{}",
        mesh_benches::mesh_bootstrap(2, ""),
        mesh_benches::mesh_config_with(SERVICES, |_| {
            ("127.0.0.1".into(), "127.0.0.1".into(), port)
        })
    );
    text.replace("weight: 90\n", &format!("weight: {weight_v1}\n"))
        .replace("weight: 10\n", &format!("weight: {}\n", 100 - weight_v1))
}

/// How long a reload of the large mesh may take before the test gives up on it.
const RELOAD_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Requests flow through three reloads of a 2,000-service mesh: every request answers 200,
/// and requests complete while each reload is being built (the workers are never blocked
/// by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_flowing_across_reloads_of_a_large_mesh() {
    let up = backend("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &config(up.port(), 90));
    let p = start_files(vec![file.clone()]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, ok, failed, out) = (stop.clone(), ok.clone(), failed.clone(), p.out);
        tokio::spawn(async move {
            let mut c = H1::connect(out).await;
            let hosts = ["svc0", "svc1.ns1.svc.cluster.local", "svc1999.ns99:80"];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let r = c.get(hosts[i % hosts.len()], &[]).await;
                i += 1;
                if r.status == 200 && r.backend() == "up" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {r:?}");
                }
            }
        })
    };
    eventually("requests flow", || {
        let ok = ok.clone();
        async move { ok.load(Ordering::Relaxed) > 0 }
    })
    .await;
    let first = p.proxy.state().snapshot().generation;
    for (round, weight) in [50u32, 10, 90].into_iter().enumerate() {
        write(&file, &config(up.port(), weight));
        let before = ok.load(Ordering::Relaxed);
        let state = p.proxy.state().clone();
        // a debug build compiles 2,000 services in seconds, more on a loaded machine: the
        // step's bound is generous (it only stops a hung reload)
        let generation = tokio::time::timeout(
            RELOAD_LIMIT,
            tokio::task::spawn_blocking(move || state.reload()),
        )
        .await
        .expect("reload timed out")
        .unwrap()
        .unwrap_or_else(|e| panic!("reload {round}: {e}"));
        let during = ok.load(Ordering::Relaxed) - before;
        assert!(generation > first);
        assert!(
            during > 0,
            "reload {round}: no request completed while the reload was built"
        );
    }
    stop.store(true, Ordering::Relaxed);
    bounded(client).await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) >= 3);
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"success\"}"
        ),
        3.0
    );
    assert_eq!(sample(&stats, "mesh_proxy_services"), SERVICES as f64);
    p.proxy.drain().await;
}

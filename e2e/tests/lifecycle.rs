//! The proxy's life: configuration reloads under load (none may fail a request), refused
//! reloads (the last good configuration keeps serving, the error names file and field, the
//! failure is counted), drain (readiness drops, in-flight requests finish, new connections
//! are refused, `drainTimeout` bounds it) and the admin endpoints.

use crate::support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::sync::{Semaphore, mpsc};

fn weighted_mesh(v1: &Backend, v2: &Backend, to: &str) -> String {
    let (w1, w2) = if to == "v1" { (100, 0) } else { (0, 100) };
    format!(
        "{}{}{}{}",
        bootstrap(2, ""),
        service_entry("reviews", 9080, "HTTP", &[v1, v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
        weighted_vs("reviews", &[("v1", w1), ("v2", w2)]),
    )
}

/// Envoy's RDS/CDS updates are hitless: a new route configuration applies to requests that
/// start after it, in-flight requests finish on the old one, and no connection is closed
/// (Istio's "traffic shifting" flips weights exactly like this). Four clients (three on
/// keep-alive connections, one opening a connection per request) run through ten reloads
/// that flip a 100/0 split between v1 and v2, alternating `Proxy::reload` and
/// `ProxyState::reload`: every request must get 200, and every request that started and
/// ended between two reloads must be served by the version the configuration then named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_traffic_follows_the_new_weights() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &weighted_mesh(&v1, &v2, "v1"));
    let p = start_files(vec![file.clone()]).await;

    // phase 2k: the configuration of reload k is in force; odd: a reload is under way
    let phase = Arc::new(AtomicU64::new(0));
    let version = |phase: u64| {
        if (phase / 2).is_multiple_of(2) {
            "v1"
        } else {
            "v2"
        }
    };
    let (sent, checked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (phase, sent, checked, failures, stop, out) = (
            phase.clone(),
            sent.clone(),
            checked.clone(),
            failures.clone(),
            stop.clone(),
            p.out,
        );
        clients.push(tokio::spawn(async move {
            let mut conn = H1::connect(out).await;
            while !stop.load(Ordering::SeqCst) {
                let before = phase.load(Ordering::SeqCst);
                let res = if client == 3 {
                    H1::connect(out)
                        .await
                        .try_send(request("reviews", &[]))
                        .await
                } else {
                    conn.try_send(request("reviews", &[])).await
                };
                let after = phase.load(Ordering::SeqCst);
                sent.fetch_add(1, Ordering::SeqCst);
                match res {
                    Ok(r) if r.status == 200 => {
                        if before == after && before % 2 == 0 {
                            if r.backend() != version(before) {
                                failures.lock().unwrap().push(format!(
                                    "phase {before}: served by {} instead of {}",
                                    r.backend(),
                                    version(before)
                                ));
                            }
                            checked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("phase {before}..{after}: {r:?}")),
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("phase {before}..{after}: client {client}: {e}"));
                        conn = H1::connect(out).await;
                    }
                }
            }
        }));
    }

    let mut generation = 0;
    for k in 1..=10u64 {
        let at = checked.load(Ordering::SeqCst);
        eventually("30 checked requests in this phase", || {
            let checked = checked.clone();
            async move { checked.load(Ordering::SeqCst) >= at + 30 }
        })
        .await;
        phase.store(2 * k - 1, Ordering::SeqCst);
        write(&file, &weighted_mesh(&v1, &v2, version(2 * k)));
        let g = if k % 2 == 0 {
            p.proxy.reload()
        } else {
            p.proxy.state().reload()
        };
        let g = g.unwrap_or_else(|e| panic!("reload {k}: {e}"));
        assert!(
            g > generation,
            "generations increase: {g} after {generation}"
        );
        generation = g;
        phase.store(2 * k, Ordering::SeqCst);
    }
    let at = checked.load(Ordering::SeqCst);
    eventually("30 checked requests after the last reload", || {
        let checked = checked.clone();
        async move { checked.load(Ordering::SeqCst) >= at + 30 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        bounded(c).await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}",
        failures.len(),
        sent.load(Ordering::SeqCst)
    );
    assert!(v1.hits() > 0 && v2.hits() > 0);
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"success\"}"
        ),
        10.0,
        "{stats}"
    );
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"failure\"}"
        ),
        0.0,
        "{stats}"
    );
    assert_eq!(
        sample(&stats, "mesh_proxy_config_generation"),
        generation as f64,
        "{stats}"
    );
}

/// A bad configuration never replaces a good one (Envoy NACKs an invalid xDS update and
/// keeps the last accepted one; istiod refuses what `istioctl validate` refuses): an invalid
/// YAML file, then a validation error (`weight: -10`), are refused with errors naming the
/// file (and line) and the resource and field; the proxy keeps routing with the old
/// configuration; `/stats/prometheus` counts the failures; a fixed file then applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_is_refused_and_the_old_configuration_keeps_serving() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let base = format!(
        "{}{}{}",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1, &v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
    );
    let header_rule = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
";
    write(&file, &format!("{base}{header_rule}"));
    let p = start_files(vec![file.clone()]).await;
    let generation = p.proxy.state().snapshot().generation;
    let mut c = H1::connect(p.out).await;
    async fn old_routing(c: &mut H1) {
        assert_eq!(
            c.get("reviews", &[("x-user", "tester")]).await.backend(),
            "v2"
        );
        assert_eq!(c.get("reviews", &[]).await.backend(), "v1");
    }
    old_routing(&mut c).await;
    let name = file.display().to_string();

    // 1. not YAML
    write(
        &file,
        &format!(
            "{base}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews\n"
        ),
    );
    let e = p
        .proxy
        .reload()
        .expect_err("invalid YAML must be refused")
        .to_string();
    assert!(
        e.contains(&format!("{name}:")),
        "the error names the file and line: {e}"
    );
    old_routing(&mut c).await;

    // 2. valid YAML, invalid VirtualService (Istio: weights must be in [0, 100])
    let bad_weight = header_rule.replace(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -10\n    - destination: {host: reviews, subset: v2}\n      weight: 110\n",
    );
    write(&file, &format!("{base}{bad_weight}"));
    let e = p
        .proxy
        .state()
        .reload()
        .expect_err("a validation error must be refused")
        .to_string();
    assert!(
        e.contains(&format!("{name}:")),
        "the error names the file: {e}"
    );
    assert!(
        e.contains("VirtualService/default/reviews"),
        "the error names the resource: {e}"
    );
    assert!(
        e.contains("spec.http[1].route[0].weight"),
        "the error names the field: {e}"
    );
    old_routing(&mut c).await;
    assert_eq!(
        get_once(p.out, "reviews", &[("x-user", "tester")])
            .await
            .backend(),
        "v2",
        "new connections too"
    );

    assert_eq!(
        p.proxy.state().snapshot().generation,
        generation,
        "the running snapshot did not change"
    );
    let (_, dump) = admin_get(p.admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["generation"], generation);
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"failure\"}"
        ),
        2.0,
        "{stats}"
    );
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"success\"}"
        ),
        0.0,
        "{stats}"
    );
    assert!(
        p.proxy
            .state()
            .last_error()
            .is_some_and(|l| l.contains("spec.http[1].route[0].weight"))
    );

    // 3. fixed: everyone to v2
    write(
        &file,
        &format!("{base}{}", weighted_vs("reviews", &[("v2", 100)])),
    );
    let g = p.proxy.reload().unwrap();
    assert!(g > generation);
    assert_eq!(c.get("reviews", &[]).await.backend(), "v2");
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"success\"}"
        ),
        1.0,
        "{stats}"
    );
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"failure\"}"
        ),
        2.0,
        "{stats}"
    );
    assert!(p.proxy.state().last_error().is_none());
}

/// An upstream that tells the test when a request arrived and answers only when the test
/// adds a permit to `release`.
async fn held_backend() -> (Backend, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let r = release.clone();
    let handler: Handler = Arc::new(move |_req| {
        let (arrived_tx, release) = (arrived_tx.clone(), r.clone());
        Box::pin(async move {
            let _ = arrived_tx.send(());
            release.acquire().await.unwrap().forget();
            http::Response::builder()
                .header("x-backend", "slow")
                .body(full("slow"))
                .unwrap()
        })
    });
    (backend_with("slow", handler).await, arrived, release)
}

fn slow_mesh(slow: &Backend, fast: &Backend, extra: &str) -> String {
    format!(
        "{}{}{}",
        bootstrap(1, extra),
        service_entry("slow", 80, "HTTP", &[slow]),
        service_entry("fast", 80, "HTTP", &[fast]),
    )
}

/// Envoy's graceful drain (`/drain_listeners?graceful`, what SIGTERM starts in Istio): the
/// readiness probe fails at once (503), listeners stop accepting (new connections are
/// refused), idle keep-alive connections close, and a request in flight completes with 200,
/// marked `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_fails_readiness_finishes_in_flight_requests_and_refuses_new_connections() {
    let (slow, mut arrived, release) = held_backend().await;
    let fast = backend("fast").await;
    let p = start(&slow_mesh(&slow, &fast, "")).await;
    let (out, admin) = (p.out, p.admin);

    // a keep-alive connection, idle after one request
    let mut idle = H1::connect(out).await;
    assert_eq!(idle.get("fast", &[]).await.backend(), "fast");
    let mut busy = H1::connect(out).await;
    let in_flight = tokio::spawn(async move { busy.send(request("slow", &[])).await });
    bounded(arrived.recv()).await.unwrap();

    let drain = tokio::spawn(p.proxy.drain());
    eventually("/ready answers 503 while draining", || async move {
        matches!(admin_get_opt(admin, "/ready").await, Some((503, b)) if b.contains("DRAINING"))
    })
    .await;
    eventually("new connections are refused", || async move {
        tokio::net::TcpStream::connect(out).await.is_err()
    })
    .await;
    eventually("the idle keep-alive connection is closed", || {
        let closed = idle.is_closed();
        async move { closed }
    })
    .await;
    assert!(idle.try_send(request("slow", &[])).await.is_err());
    assert!(
        !in_flight.is_finished() && !drain.is_finished(),
        "the drain waits for the request in flight"
    );

    release.add_permits(1);
    let r = bounded(in_flight).await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "slow"), "{r:?}");
    assert_eq!(
        r.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "{r:?}"
    );
    bounded(drain).await.unwrap();
    assert!(tokio::net::TcpStream::connect(out).await.is_err());
    assert_eq!(
        slow.hits(),
        1,
        "the idle connection's request never reached the upstream"
    );
}

/// A connection that was accepted but has not sent a byte yet (a client's pre-connected pool
/// socket) is idle too: Envoy closes idle connections when its listeners drain, and the
/// engine's docs promise "idle keep-alive connections close at once". It must neither stay
/// open nor hold the drain until `drainTimeout` (or `requestHeadersTimeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_a_connection_that_never_sent_a_request_at_once() {
    let fast = backend("fast").await;
    let p = start(&format!(
        "{}{}",
        bootstrap(
            1,
            "  limits: {drainTimeout: 4s, requestHeadersTimeout: 4s}\n"
        ),
        service_entry("fast", 80, "HTTP", &[&fast])
    ))
    .await;
    let mut silent = tokio::net::TcpStream::connect(p.out).await.unwrap();
    // the proxy has accepted it: a request on another connection is served after it
    assert_eq!(get_once(p.out, "fast", &[]).await.backend(), "fast");

    let t0 = Instant::now();
    bounded(p.proxy.drain()).await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "drain waited {took:?} for a connection that never sent a byte"
    );
    let mut buf = [0u8; 16];
    let n = bounded(tokio::io::AsyncReadExt::read(&mut silent, &mut buf)).await;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the silent connection is closed: {n:?}"
    );
}

/// Envoy's `--drain-time-s` (here `limits.drainTimeout`): a request stuck upstream does not
/// hold the drain past the timeout; the drain then closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_after_drain_timeout_with_a_stuck_upstream() {
    let (slow, mut arrived, _never) = held_backend().await;
    let fast = backend("fast").await;
    let p = start(&slow_mesh(
        &slow,
        &fast,
        "  limits: {drainTimeout: 300ms}\n",
    ))
    .await;
    let mut busy = H1::connect(p.out).await;
    let stuck = tokio::spawn(async move { busy.try_send(request("slow", &[])).await });
    bounded(arrived.recv()).await.unwrap();

    let t0 = Instant::now();
    bounded(p.proxy.drain()).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "drain returned before drainTimeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "drain took {took:?} with drainTimeout 300ms"
    );
    let res = bounded(stuck).await.unwrap();
    assert!(
        res.is_err(),
        "the stuck request is cut when the drain ends: {res:?}"
    );
}

/// Envoy's admin endpoints as Istio's probes and tools read them: `/ready` (200 `LIVE`),
/// `/healthz`, `/config_dump` (the running VirtualService), `/clusters` (each service with its
/// subsets and their endpoints), `/stats/prometheus`, and 404 for anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_describe_the_running_proxy() {
    let v1 = backend_at("127.0.0.2", "v1", named("v1")).await;
    let v2 = backend_at("127.0.0.3", "v2", named("v2")).await;
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.2, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.3, ports: {{http: {}}}, labels: {{version: v2}}}}
{}{}",
        bootstrap(1, ""),
        v1.port(),
        v2.port(),
        destination_rule("reviews", &["v1", "v2"], ""),
        weighted_vs("reviews", &[("v1", 90), ("v2", 10)]),
    );
    let p = start(&yaml).await;
    // the endpoints on other loopback addresses are reachable through the proxy
    assert_eq!(get_once(p.out, "reviews:9080", &[]).await.status, 200);

    assert_eq!(
        admin_get(p.admin, "/ready").await,
        (200, "LIVE\n".to_string())
    );
    assert_eq!(admin_get(p.admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(p.admin, "/no-such-page").await.0, 404);

    let (status, dump) = admin_get(p.admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let vs = &dump["snapshot"]["virtual_services"];
    assert_eq!(vs.as_array().map(Vec::len), Some(1), "{dump:#}");
    assert_eq!(vs[0]["name"], "reviews");
    assert_eq!(vs[0]["hosts"][0], "reviews.default.svc.cluster.local");
    assert_eq!(
        vs[0]["spec"]["http"][0]["route"][1]["weight"], 10,
        "{:#}",
        vs[0]
    );

    let (status, clusters) = admin_get(p.admin, "/clusters").await;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let services = clusters["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{clusters:#}");
    let svc = &services[0];
    assert_eq!(svc["host"], "reviews.default.svc.cluster.local");
    let subset = |name: &str| {
        svc["subsets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    };
    let (s1, s2) = (subset("v1").unwrap(), subset("v2").unwrap());
    // endpoints are listed as `address:port`, as Envoy lists hosts
    assert_eq!(
        s1["endpoints"],
        serde_json::json!([format!("127.0.0.2:{}", v1.port())]),
        "{svc:#}"
    );
    assert_eq!(
        s2["endpoints"],
        serde_json::json!([format!("127.0.0.3:{}", v2.port())]),
        "{svc:#}"
    );
    let eps = svc["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0]["ports"]["9080"], v1.port(), "{svc:#}");
    assert_eq!(eps[1]["ports"]["9080"], v2.port(), "{svc:#}");
    assert_eq!(eps[0]["health"], "HEALTHY", "{svc:#}");
    assert_eq!(eps[1]["health"], "HEALTHY", "{svc:#}");
    assert_eq!(svc["unhealthy"], serde_json::json!([]), "{svc:#}");

    // the balancer's view, not a constant: eject v2 where outlier detection would
    use mesh_core::health::{HealthFlags, HealthKey, cluster_name};
    let cluster = cluster_name(9080, Some("v2"), "reviews.default.svc.cluster.local");
    let cell = p.proxy.state().layers().lb().health().cell(&HealthKey {
        cluster: cluster.clone().into(),
        addr: format!("127.0.0.3:{}", v2.port()).parse().unwrap(),
    });
    cell.set(HealthFlags::EJECTED);
    let (_, clusters) = admin_get(p.admin, "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let svc = &clusters["services"][0];
    assert_eq!(svc["endpoints"][0]["health"], "HEALTHY", "{svc:#}");
    assert_eq!(svc["endpoints"][1]["health"], "EJECTED", "{svc:#}");
    // set here, not by outlier detection: no ejection counted
    assert_eq!(svc["endpoints"][1]["ejections"], 0, "{svc:#}");
    assert_eq!(
        svc["unhealthy"],
        serde_json::json!([{
            "cluster": cluster,
            "address": format!("127.0.0.3:{}", v2.port()),
            "health": "EJECTED",
            "ejections": 0,
        }]),
        "{svc:#}"
    );

    let (status, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&stats, "mesh_proxy_ready"), 1.0, "{stats}");
    assert_eq!(sample(&stats, "mesh_proxy_services"), 1.0, "{stats}");
    assert!(
        stats.contains("# TYPE mesh_proxy_config_reloads_total counter"),
        "{stats}"
    );
}

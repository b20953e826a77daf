//! Outlier detection through the whole proxy (istio.io/latest/docs/tasks/traffic-management/
//! circuit-breaking and locality-load-balancing/failover): a DestinationRule's
//! `outlierDetection` ejects failing endpoints, the balancer stops picking them (or, in panic,
//! keeps them), locality failover moves on, and `/clusters` shows the ejections. The timing
//! (`baseEjectionTime × n`, the interval, `maxEjectionPercent`) is tested under paused time in
//! `mesh-resilience`; here it runs on real sockets, waiting on `/clusters`.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use support::*;

/// A backend that answers `503` while `failing` is set (its name otherwise), counting
/// every request it gets.
struct Switchable {
    backend: Backend,
    failing: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
}

async fn switchable(ip: &str, name: &'static str, failing: bool) -> Switchable {
    let flag = Arc::new(AtomicBool::new(failing));
    let seen = Arc::new(AtomicUsize::new(0));
    let (f, n) = (flag.clone(), seen.clone());
    let handler: Handler = Arc::new(move |_req: Request<Incoming>| {
        n.fetch_add(1, Ordering::SeqCst);
        let fail = f.load(Ordering::SeqCst);
        Box::pin(async move {
            let status = if fail { 503 } else { 200 };
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        })
    });
    Switchable {
        backend: backend_at(ip, name, handler).await,
        failing: flag,
        seen,
    }
}

impl Switchable {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// A STATIC ServiceEntry `ratings` on port 9080 whose endpoints are `(backend, locality)`.
fn ratings(endpoints: &[(&Switchable, &str)]) -> String {
    let mut eps = String::new();
    for (s, locality) in endpoints {
        eps.push_str(&format!(
            "  - address: {}\n    ports: {{http: {}}}\n    labels: {{app: ratings, version: {}}}\n    locality: {locality}\n",
            s.backend.addr.ip(),
            s.backend.port(),
            s.backend.name,
        ));
    }
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  endpoints:
{eps}"
    )
}

fn outlier_dr(outlier: &str) -> String {
    destination_rule(
        "ratings",
        &[],
        &format!("  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection: {outlier}\n"),
    )
    .replace("  subsets:\n", "")
}

/// The `/clusters` entry of the endpoint at `addr` in service `ratings`.
async fn endpoint_state(admin: std::net::SocketAddr, b: &Backend) -> serde_json::Value {
    let (status, body) = admin_get(admin, "/clusters").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let svc = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "ratings.default.svc.cluster.local")
        .unwrap()
        .clone();
    svc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["address"] == b.addr.ip().to_string() && e["ports"]["9080"] == u64::from(b.port())
        })
        .unwrap_or_else(|| panic!("{} not in {svc}", b.addr))
        .clone()
}

async fn ejected(admin: std::net::SocketAddr, b: &Backend) -> bool {
    endpoint_state(admin, b).await["health"] == "EJECTED"
}

#[tokio::test]
async fn a_503_ing_endpoint_is_retried_elsewhere_then_ejected_and_returns_after_base_ejection_time()
{
    let good = switchable("127.0.0.1", "good", false).await;
    let bad = switchable("127.0.0.1", "bad", true).await;
    let yaml = bootstrap(2, "")
        + &ratings(&[(&good, "region1/zone1"), (&bad, "region1/zone1")])
        + &outlier_dr(
            "{consecutive5xxErrors: 2, interval: 50ms, baseEjectionTime: 1s, maxEjectionPercent: 100}",
        );
    let p = start(&yaml).await;
    let started = Instant::now();
    // Istio's default retry policy retries the 503 on the other endpoint: every answer is good
    let mut c = H1::connect(p.out).await;
    let mut sent = 0;
    while !ejected(p.admin, &bad.backend).await {
        let r = c.get("ratings:9080", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good"), "{r:?}");
        sent += 1;
        assert!(sent < 100, "never ejected");
    }
    let state = endpoint_state(p.admin, &bad.backend).await;
    assert_eq!(state["ejections"], 1, "{state}");
    assert!(
        !ejected(p.admin, &good.backend).await,
        "the good one stays in"
    );
    // ejected: requests stop reaching it
    let before = bad.seen();
    for _ in 0..20 {
        let r = c.get("ratings:9080", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good"));
    }
    assert_eq!(
        bad.seen(),
        before,
        "no request reached the ejected endpoint"
    );
    // back after baseEjectionTime (1s), and picked again
    bad.failing.store(false, Ordering::SeqCst);
    eventually("the endpoint returns", || async {
        !ejected(p.admin, &bad.backend).await
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before baseEjectionTime"
    );
    let mut backends = std::collections::BTreeSet::new();
    for _ in 0..10 {
        backends.insert(c.get("ratings:9080", &[]).await.backend().to_string());
    }
    assert_eq!(
        backends.into_iter().collect::<Vec<_>>(),
        ["bad", "good"],
        "both serve again"
    );
    assert_eq!(endpoint_state(p.admin, &bad.backend).await["ejections"], 1);
}

#[tokio::test]
async fn locality_failover_moves_traffic_zone_by_zone_as_endpoints_fail() {
    let zone1 = switchable("127.0.0.1", "zone1", false).await;
    let zone2 = switchable("127.0.0.1", "zone2", false).await;
    let region2 = switchable("127.0.0.1", "region2", false).await;
    let yaml = bootstrap(1, "").replace(
        "    labels: {app: productpage, version: v1}\n",
        "    labels: {app: productpage, version: v1}\n    locality: region1/zone1\n",
    ) + &ratings(&[
        (&zone1, "region1/zone1"),
        (&zone2, "region1/zone2"),
        (&region2, "region2/zone3"),
    ]) + &outlier_dr(
        "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100}",
    ) + "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 0}
";
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let steps: [(&Switchable, &str); 3] =
        [(&zone1, "zone1"), (&zone2, "zone2"), (&region2, "region2")];
    for (i, (serving, name)) in steps.iter().enumerate() {
        // every request goes to the closest locality with a healthy endpoint
        for _ in 0..10 {
            let r = c.get("ratings:9080", &[]).await;
            assert_eq!(
                (r.status.as_u16(), r.backend()),
                (200, *name),
                "step {i}: {r:?}"
            );
        }
        if i == steps.len() - 1 {
            break;
        }
        // it fails: one 503 (consecutive5xxErrors: 1) ejects it
        serving.failing.store(true, Ordering::SeqCst);
        let r = c.get("ratings:9080", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (503, *name));
        eventually("the failing locality's endpoint is ejected", || async {
            ejected(p.admin, &serving.backend).await
        })
        .await;
    }
    assert_eq!(zone1.seen(), 11);
    assert_eq!(zone2.seen(), 11);
}

#[tokio::test]
async fn under_min_health_percent_the_balancer_panics_and_uses_ejected_endpoints_too() {
    let good = switchable("127.0.0.1", "good", false).await;
    let bad = switchable("127.0.0.1", "bad", true).await;
    // one of two ejected: 50% healthy, under minHealthPercent 60: Envoy's panic mode
    let yaml = bootstrap(1, "")
        + &ratings(&[(&good, "region1/zone1"), (&bad, "region1/zone1")])
        + &outlier_dr(
            "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100, minHealthPercent: 60}",
        );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let mut sent = 0;
    while !ejected(p.admin, &bad.backend).await {
        c.get("ratings:9080", &[]).await;
        sent += 1;
        assert!(sent < 100, "never ejected");
    }
    let before = bad.seen();
    for _ in 0..20 {
        let r = c.get("ratings:9080", &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "good"),
            "retried: {r:?}"
        );
    }
    assert!(
        bad.seen() > before,
        "in panic the ejected endpoint is picked too"
    );
    assert!(ejected(p.admin, &bad.backend).await);
}

/// Clients that give up on their requests (a closed connection, a browser's cancel) are not
/// the endpoint's fault: however many go away before the answer, the endpoint is not ejected
/// (Envoy does not count downstream resets). A load generator closing its 50 connections at
/// the end of a run used to eject a healthy upstream.
#[tokio::test]
async fn clients_that_go_away_before_the_answer_never_eject_the_endpoint() {
    /// Counts the requests whose handling the upstream gave up (the proxy closed the
    /// connection, as it does with an attempt it drops).
    struct Gone(Arc<AtomicUsize>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let reached = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicUsize::new(0));
    let (r, g) = (reached.clone(), gone.clone());
    let slow: Handler = Arc::new(move |_req: Request<Incoming>| {
        r.fetch_add(1, Ordering::SeqCst);
        let guard = Gone(g.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Response::new(full(""))
        })
    });
    let b = backend_with("slow", slow).await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&b])
        + &destination_rule(
            "ratings",
            &[],
            "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2, maxEjectionPercent: 100}\n",
        )
        .replace("  subsets:\n", "");
    let p = start(&yaml).await;
    for n in 1..=4 {
        // send, wait until the upstream has the request, then close the connection
        let mut c = H1::connect(p.out).await;
        let pending = tokio::spawn(async move { c.try_send(request("ratings:9080", &[])).await });
        let seen = reached.clone();
        eventually("the upstream to have the request", || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) >= n }
        })
        .await;
        pending.abort();
        let _ = pending.await;
    }
    // the proxy has dropped the four attempts (and closed their upstream connections)
    let g = gone.clone();
    eventually("the proxy to drop the abandoned attempts", || {
        let g = g.clone();
        async move { g.load(Ordering::SeqCst) >= 4 }
    })
    .await;
    let state = endpoint_state(p.admin, &b).await;
    assert_eq!(state["health"], "HEALTHY", "{state}");
    assert_eq!(state["ejections"], 0, "{state}");
}

/// An ejection on `/stats/prometheus`: the endpoint's `mesh_proxy_endpoint_ejections_total`
/// and `mesh_proxy_endpoint_ejected` under its cluster and address (the healthy one has
/// none), and the retry that took its request elsewhere under the route's name.
#[tokio::test]
async fn an_ejection_is_counted_with_its_endpoint_and_the_retry_with_its_route() {
    let good = switchable("127.0.0.1", "good", false).await;
    let bad = switchable("127.0.0.1", "bad", true).await;
    let yaml = bootstrap(1, "")
        + &ratings(&[(&good, "region1/zone1"), (&bad, "region1/zone1")])
        + &outlier_dr(
            "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100}",
        )
        + "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - name: ratings-route
    route: [{destination: {host: ratings}}]
    retries: {attempts: 1, retryOn: 5xx}
";
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let mut sent = 0;
    while !ejected(p.admin, &bad.backend).await {
        let r = c.get("ratings:9080", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good"), "{r:?}");
        sent += 1;
        assert!(sent < 100, "never ejected");
    }
    assert_eq!(bad.seen(), 1, "one 503 ejects it");
    let cluster = "outbound|9080||ratings.default.svc.cluster.local";
    let endpoint = |b: &Backend| format!("cluster_name=\"{cluster}\",endpoint=\"{}\"", b.addr);
    let ejections = format!(
        "mesh_proxy_endpoint_ejections_total{{{}}}",
        endpoint(&bad.backend)
    );
    let now = format!("mesh_proxy_endpoint_ejected{{{}}}", endpoint(&bad.backend));
    let retries = r#"mesh_proxy_route_upstream_retries_total{reporter="source",route="ratings-route",destination_service="ratings.default.svc.cluster.local"}"#;
    let text =
        support::prom::scraped_samples(p.admin, &[(&ejections, 1.0), (&now, 1.0), (retries, 1.0)])
            .await;
    assert!(
        !text.contains(&endpoint(&good.backend)),
        "never ejected, not listed:\n{text}"
    );
    support::prom::promtool_check(&text);
}

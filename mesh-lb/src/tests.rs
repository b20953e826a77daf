//! Layer-level tests: subsets, the 503 cases, every balancer's distribution (chi-square with
//! a seeded generator), consistent hashing and sticky cookies, locality, warm-up, discovery
//! updates and passthrough.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use mesh_core::MeshBody;
use mesh_core::compile::{Snapshot, compile};
use mesh_core::ext::{
    ClientAddr, Passthrough, PreviousHosts, PreviousPriorities, RouteDestination, SelectedEndpoint,
    UpstreamCluster, flags_of, selected_endpoint, upstream_cluster,
};
use mesh_core::flags::ResponseFlags;
use mesh_core::health::{HealthCell, HealthFlags, HealthKey, cluster_name};
use mesh_core::load::Loader;
use tower_layer::Layer;
use tower_service::Service;

use crate::discover::{
    Chain, DiscoveredEndpoint, EndpointSet, FeedDiscover, ResolveFuture, Resolver, StaticDiscover,
};
use crate::{LbConfig, LbLayer};

type Body = MeshBody<String>;
type Echo = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<Body>, Infallible>>,
>;

fn echo() -> Echo {
    fn f(req: Request<()>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
        let mut res = Response::new(MeshBody::inner(String::new()));
        if let Some(ep) = selected_endpoint(req.extensions()) {
            res.extensions_mut().insert(ep.clone());
        }
        if let Some(c) = upstream_cluster(req.extensions()) {
            res.extensions_mut().insert(c.clone());
        }
        std::future::ready(Ok(res))
    }
    tower::service_fn(f as fn(_) -> _)
}

fn snap(yaml: &str) -> Arc<Snapshot> {
    let mut l = Loader::new();
    l.add_str("t.yaml", yaml);
    let loaded = l.finish();
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    Arc::new(compile(loaded.resources))
}

fn dest(host: &str, subset: Option<&str>, port: Option<u16>) -> RouteDestination {
    RouteDestination {
        host: host.into(),
        subset: subset.map(Into::into),
        port,
    }
}

fn request(d: &RouteDestination) -> Request<()> {
    let mut r = Request::new(());
    r.extensions_mut().insert(d.clone());
    r
}

/// Polls a future that must be ready at once (the echo service's).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("not ready"),
    }
}

fn send<S>(svc: &mut S, req: Request<()>) -> Response<Body>
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    match now(svc.call(req)) {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

fn picked(res: &Response<Body>) -> SocketAddr {
    res.extensions()
        .get::<SelectedEndpoint>()
        .expect("an endpoint was selected")
        .addr
}

fn seeded(s: Arc<Snapshot>) -> LbLayer {
    LbLayer::builder(s)
        .config(LbConfig {
            seed: Some(42),
            ..LbConfig::default()
        })
        .build()
}

/// Counts picks per address over `n` requests.
fn counts<S>(svc: &mut S, d: &RouteDestination, n: usize) -> HashMap<SocketAddr, usize>
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let mut out = HashMap::new();
    for _ in 0..n {
        let res = send(svc, request(d));
        assert_eq!(res.status(), 200, "{:?}", res.headers());
        *out.entry(picked(&res)).or_default() += 1;
    }
    out
}

/// Pearson's chi-square statistic of `observed` against expected shares.
fn chi2(observed: &[usize], shares: &[f64]) -> f64 {
    let n: usize = observed.iter().sum();
    let total: f64 = shares.iter().sum();
    observed
        .iter()
        .zip(shares)
        .map(|(&o, &s)| {
            let e = n as f64 * s / total;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// Chi-square critical values at p = 0.001 by degrees of freedom.
fn chi2_bound(dof: usize) -> f64 {
    match dof {
        1 => 10.83,
        2 => 13.82,
        3 => 16.27,
        4 => 18.47,
        9 => 27.88,
        _ => panic!("add the bound for {dof} degrees of freedom"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ordered(c: &HashMap<SocketAddr, usize>, addrs: &[&str]) -> Vec<usize> {
    addrs
        .iter()
        .map(|a| c.get(&addr(a)).copied().unwrap_or(0))
        .collect()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9090, name: grpc, protocol: GRPC}
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1, security.istio.io/tlsMode: istio}, serviceAccount: reviews-v1}
  - {address: 10.0.0.2, labels: {version: v1}}
  - {address: 10.0.0.3, labels: {version: v2}, ports: {http: 8080}}
  - {address: 10.0.0.4, labels: {version: v2}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v4, labels: {version: v4}}
"#;

// ------------------------------------------------------------------------------------------
// subsets, endpoint fields, 503s
// ------------------------------------------------------------------------------------------

#[test]
fn subsets_select_by_labels_and_round_robin_is_exact() {
    let mut lb = seeded(snap(BASE)).layer(echo());
    let c = counts(&mut lb, &dest(REVIEWS, Some("v2"), Some(9080)), 100);
    // endpoint ports come from the endpoint's `ports` map
    assert_eq!(ordered(&c, &["10.0.0.3:8080", "10.0.0.4:8080"]), [50, 50]);
    let c = counts(&mut lb, &dest(REVIEWS, None, Some(9080)), 400);
    assert_eq!(
        ordered(
            &c,
            &[
                "10.0.0.1:9080",
                "10.0.0.2:9080",
                "10.0.0.3:8080",
                "10.0.0.4:8080"
            ]
        ),
        [100; 4]
    );
}

#[test]
fn selected_endpoint_carries_protocol_identity_and_cluster() {
    let layer = seeded(snap(BASE));
    let mut lb = layer.layer(echo());
    let d = dest(REVIEWS, Some("v1"), Some(9090));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let res = send(&mut lb, request(&d));
        seen.push(res.extensions().get::<SelectedEndpoint>().unwrap().clone());
        let c = res.extensions().get::<UpstreamCluster>().unwrap();
        assert_eq!(
            &*c.name,
            "outbound|9090|v1|reviews.default.svc.cluster.local"
        );
    }
    seen.sort_by_key(|e| e.addr);
    assert!(seen.iter().all(|e| e.http2), "GRPC port");
    assert!(seen[0].istio_tls && !seen[1].istio_tls);
    assert_eq!(seen[0].service_account.as_deref(), Some("reviews-v1"));
    // h2UpgradePolicy: UPGRADE makes an HTTP port HTTP/2
    let up = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}",
    );
    let mut lb = seeded(snap(&up)).layer(echo());
    let res = send(&mut lb, request(&dest(REVIEWS, None, Some(9080))));
    assert!(res.extensions().get::<SelectedEndpoint>().unwrap().http2);
    // useClientProtocol: the connector follows the client's protocol (the cluster says so)
    let client = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {http: {useClientProtocol: true}}",
    );
    let mut lb = seeded(snap(&client)).layer(echo());
    let res = send(&mut lb, request(&dest(REVIEWS, None, Some(9080))));
    let c = res.extensions().get::<UpstreamCluster>().unwrap();
    assert!(c.pool.use_client_protocol);
    let mut lb = seeded(snap(BASE)).layer(echo());
    let res = send(&mut lb, request(&dest(REVIEWS, None, Some(9080))));
    let c = res.extensions().get::<UpstreamCluster>().unwrap();
    assert!(!c.pool.use_client_protocol, "off by default");
    assert_eq!(c.pool.max_concurrent_streams, None, "no limit by default");
    // maxConcurrentStreams: the connector's streams per HTTP/2 connection (0: unset)
    for (set, want) in [("2", Some(2)), ("0", None)] {
        let streams = BASE.replace(
            "loadBalancer: {simple: ROUND_ROBIN}",
            &format!(
                "loadBalancer: {{simple: ROUND_ROBIN}}\n    connectionPool: {{http: {{maxConcurrentStreams: {set}}}}}"
            ),
        );
        let mut lb = seeded(snap(&streams)).layer(echo());
        let res = send(&mut lb, request(&dest(REVIEWS, None, Some(9080))));
        let c = res.extensions().get::<UpstreamCluster>().unwrap();
        assert_eq!(c.pool.max_concurrent_streams, want);
    }
}

/// `connectionPool` becomes the cluster's circuit-breaker thresholds and connection
/// settings; every worker's copy of a cluster, and its rebuilds after a reload, count
/// against the same counters (Envoy's circuit breakers are per cluster and proxy).
#[test]
fn connection_pool_limits_are_shared_by_workers_and_rebuilds() {
    let y = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 250ms, maxConnectionDuration: 30s, tcpKeepalive: {time: 60s, probes: 0}}\n      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, http2KeepAlive: {interval: 10s}}",
    );
    let layer = seeded(snap(&y));
    let d = dest(REVIEWS, None, Some(9080));
    let cluster_of = |lb: &mut crate::Lb<Echo>| {
        send(lb, request(&d))
            .extensions()
            .get::<UpstreamCluster>()
            .unwrap()
            .clone()
    };
    let (mut w1, mut w2) = (layer.layer(echo()), layer.layer(echo()));
    let (a, b) = (cluster_of(&mut w1), cluster_of(&mut w2));
    let (la, lb_) = (a.limits.unwrap(), b.limits.unwrap());
    assert_eq!(la.thresholds().max_connections, 1);
    assert_eq!(la.thresholds().max_pending_requests, 1);
    assert_eq!(la.thresholds().max_requests, mesh_core::limits::UNLIMITED);
    assert_eq!(a.pool.connect_timeout, Some(Duration::from_millis(250)));
    let h2 = a.pool.http2_keepalive.unwrap();
    assert_eq!((h2.interval, h2.timeout), (Duration::from_secs(10), None));
    let ka = a.pool.tcp_keepalive.unwrap();
    assert_eq!(ka.time, Some(Duration::from_secs(60)));
    assert_eq!((ka.interval, ka.probes), (None, None), "probes: 0 is unset");
    assert_eq!(
        a.pool.max_connection_duration,
        Some(Duration::from_secs(30))
    );
    assert_eq!(a.pool.max_requests_per_connection, Some(1));
    assert!(
        Arc::ptr_eq(la.counters(), lb_.counters()),
        "one set per cluster"
    );
    // a reload rebuilds the cluster: in-flight counts carry over
    let held = match la.admit(true) {
        mesh_core::limits::Admission::Admitted(p) => p,
        other => panic!("{other:?}"),
    };
    layer.store(snap(&y.replace("maxConnections: 1", "maxConnections: 2")));
    let after = cluster_of(&mut w1).limits.unwrap();
    assert_eq!(after.thresholds().max_connections, 2);
    assert!(Arc::ptr_eq(la.counters(), after.counters()));
    assert_eq!(after.counters().connections(), 1);
    drop(held);
    // another subset is another cluster
    let v1 = send(&mut w1, request(&dest(REVIEWS, Some("v1"), Some(9080))));
    let v1 = v1.extensions().get::<UpstreamCluster>().unwrap();
    assert!(!Arc::ptr_eq(
        v1.limits.as_ref().unwrap().counters(),
        la.counters()
    ));
}

#[test]
fn subset_and_port_level_policies_choose_the_balancer() {
    let y = BASE.replace(
        "  subsets:\n  - {name: v1, labels: {version: v1}}",
        "    portLevelSettings:\n    - port: {number: 9090}\n      loadBalancer: {simple: RANDOM}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1009}}}}",
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let algo = |lb: &mut crate::Lb<Echo>, subset, port| {
        lb.with_cluster(&dest(REVIEWS, subset, Some(port)), |c| c.algorithm)
            .unwrap()
    };
    assert_eq!(algo(&mut lb, None, 9080), crate::Algorithm::RoundRobin);
    assert_eq!(
        algo(&mut lb, None, 9090),
        crate::Algorithm::Random,
        "portLevelSettings"
    );
    assert_eq!(
        algo(&mut lb, Some("v1"), 9080),
        crate::Algorithm::Maglev { table_size: 1009 },
        "the subset's policy"
    );
    assert_eq!(algo(&mut lb, Some("v2"), 9090), crate::Algorithm::Random);
}

#[test]
fn undeclared_subset_unknown_port_or_host_is_503_nr() {
    let mut lb = seeded(snap(BASE)).layer(echo());
    for d in [
        dest(REVIEWS, Some("v9"), Some(9080)), // subset not in the DestinationRule
        dest(REVIEWS, None, Some(1234)),       // no such port
        dest(REVIEWS, None, None),             // two ports, none is 80
        dest("ghost.default.svc.cluster.local", None, None), // not in the registry
    ] {
        let res = send(&mut lb, request(&d));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{d:?}");
        assert_eq!(flags_of(&res), ResponseFlags::NO_ROUTE, "{d:?}");
        assert!(res.extensions().get::<SelectedEndpoint>().is_none());
    }
}

#[test]
fn the_first_503_nr_of_each_destination_is_logged_once_per_configuration() {
    // counted, not captured: a scoped tracing subscriber races with tests on other threads
    let layer = seeded(snap(BASE));
    let mut lb = layer.layer(echo());
    let ghost = dest("ghost.default.svc.cluster.local", None, None);
    let v9 = dest(REVIEWS, Some("v9"), Some(9080));
    for _ in 0..3 {
        for d in [&ghost, &v9] {
            assert_eq!(
                flags_of(&send(&mut lb, request(d))),
                ResponseFlags::NO_ROUTE
            );
        }
    }
    assert_eq!(layer.no_route_logs(), 2);
    // a new configuration logs them again
    layer.store(snap(BASE));
    send(&mut lb, request(&ghost));
    assert_eq!(layer.no_route_logs(), 3);
}

#[test]
fn the_cluster_carries_its_compiled_outlier_policy_per_port() {
    let od = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 2s}
    portLevelSettings:
    - port: {number: 9090}
      outlierDetection: {consecutiveGatewayErrors: 2, consecutive5xxErrors: 0}",
    );
    let mut lb = seeded(snap(&od)).layer(echo());
    fn outlier(
        lb: &mut crate::Lb<Echo>,
        port: u16,
    ) -> Option<Arc<mesh_core::policy::OutlierPolicy>> {
        let res = send(lb, request(&dest(REVIEWS, Some("v1"), Some(port))));
        res.extensions()
            .get::<UpstreamCluster>()
            .and_then(|c| c.outlier.clone())
    }
    let p = outlier(&mut lb, 9080).expect("the top-level policy");
    assert_eq!(p.consecutive_5xx, Some(3));
    assert_eq!(p.interval, std::time::Duration::from_secs(2));
    let p = outlier(&mut lb, 9090).expect("the port's policy replaces it");
    assert_eq!((p.consecutive_5xx, p.consecutive_gateway), (None, Some(2)));
    let mut plain = seeded(snap(BASE)).layer(echo());
    assert!(outlier(&mut plain, 9080).is_none(), "no outlierDetection");
}

#[test]
fn subset_without_endpoints_is_503_uh() {
    let mut lb = seeded(snap(BASE)).layer(echo());
    let res = send(&mut lb, request(&dest(REVIEWS, Some("v4"), Some(9080))));
    assert_eq!(res.status(), 503);
    assert_eq!(flags_of(&res), ResponseFlags::NO_HEALTHY_UPSTREAM);
}

fn eject(layer: &LbLayer, cluster: &str, a: &str) -> Arc<HealthCell> {
    let cell = layer.health().cell(&HealthKey {
        cluster: cluster.into(),
        addr: addr(a),
    });
    cell.set(HealthFlags::EJECTED);
    cell
}

#[test]
fn ejected_endpoints_are_skipped_and_panic_follows_min_health_percent() {
    let v1 = cluster_name(9080, Some("v1"), REVIEWS);
    // no outlier detection: Envoy's 50% panic threshold
    let layer = seeded(snap(BASE));
    let mut lb = layer.layer(echo());
    let d = dest(REVIEWS, Some("v1"), Some(9080));
    let _first = send(&mut lb, request(&d));
    let c1 = eject(&layer, &v1, "10.0.0.1:9080");
    let c = counts(&mut lb, &d, 50);
    // one of two healthy: 50% is not under the threshold, so only the healthy one
    assert_eq!(ordered(&c, &["10.0.0.1:9080", "10.0.0.2:9080"]), [0, 50]);
    let c2 = eject(&layer, &v1, "10.0.0.2:9080");
    let c = counts(&mut lb, &d, 50);
    assert_eq!(
        ordered(&c, &["10.0.0.1:9080", "10.0.0.2:9080"]),
        [25, 25],
        "panic: all endpoints"
    );
    c1.clear(HealthFlags::EJECTED);
    let c = counts(&mut lb, &d, 10);
    assert_eq!(ordered(&c, &["10.0.0.1:9080", "10.0.0.2:9080"]), [10, 0]);
    drop(c2);

    // outlier detection without minHealthPercent: Istio sets the panic threshold to 0
    let od = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 1}",
    );
    let layer = seeded(snap(&od));
    let mut lb = layer.layer(echo());
    let _cells = [
        eject(&layer, &v1, "10.0.0.1:9080"),
        eject(&layer, &v1, "10.0.0.2:9080"),
    ];
    let res = send(&mut lb, request(&d));
    assert_eq!(
        (res.status().as_u16(), flags_of(&res)),
        (503, ResponseFlags::NO_HEALTHY_UPSTREAM)
    );
}

#[test]
fn without_route_destination_the_authority_is_the_destination() {
    let s = BASE.replace("  - {number: 9090, name: grpc, protocol: GRPC}\n", "");
    let mut lb = seeded(snap(&s)).layer(echo());
    let req = Request::builder()
        .uri("http://reviews:9080/")
        .body(())
        .unwrap();
    let res = send(&mut lb, req);
    assert_eq!(res.status(), 200);
    let req = Request::builder()
        .header("host", "reviews.default.svc.cluster.local")
        .body(())
        .unwrap();
    assert_eq!(send(&mut lb, req).status(), 200, "the only port");
}

// ------------------------------------------------------------------------------------------
// balancer distributions
// ------------------------------------------------------------------------------------------

/// A service with `n` endpoints (weights optional) and a DestinationRule load balancer.
fn fleet(n: usize, weights: Option<&[u32]>, lb: &str) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints:\n",
    );
    for i in 0..n {
        let w = weights
            .map(|w| format!(", weight: {}", w[i]))
            .unwrap_or_default();
        y.push_str(&format!("  - {{address: 10.0.0.{}{w}}}\n", i + 1));
    }
    y.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc}}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer: {lb}\n"
    ));
    y
}

const SVC: &str = "svc.default.svc.cluster.local";

fn fleet_addrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect()
}

fn fleet_counts(lb_yaml: &str, n: usize, weights: Option<&[u32]>, picks: usize) -> Vec<usize> {
    let mut lb = seeded(snap(&fleet(n, weights, lb_yaml))).layer(echo());
    let c = counts(&mut lb, &dest(SVC, None, None), picks);
    let a = fleet_addrs(n);
    ordered(&c, &a.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn random_is_uniform() {
    let c = fleet_counts("{simple: RANDOM}", 10, None, 20_000);
    let x = chi2(&c, &[1.0; 10]);
    assert!(x < chi2_bound(9), "chi2 {x} {c:?}");
    // weights are ignored, as Envoy's random balancer does
    let c = fleet_counts("{simple: RANDOM}", 3, Some(&[1, 2, 3]), 9_000);
    assert!(chi2(&c, &[1.0; 3]) < chi2_bound(2), "{c:?}");
}

#[test]
fn least_request_idle_is_uniform_and_the_default() {
    for lb in ["{simple: LEAST_REQUEST}", "{simple: LEAST_CONN}", "{}"] {
        let c = fleet_counts(lb, 10, None, 20_000);
        let x = chi2(&c, &[1.0; 10]);
        assert!(x < chi2_bound(9), "{lb}: chi2 {x} {c:?}");
    }
}

#[test]
fn least_request_avoids_busy_endpoints() {
    let mut lb = seeded(snap(&fleet(4, None, "{simple: LEAST_REQUEST}"))).layer(echo());
    let d = dest(SVC, None, None);
    lb.with_cluster(&d, |c| c.hosts[0].state.set_active(10))
        .unwrap();
    let c = counts(&mut lb, &d, 16_000);
    let c = ordered(
        &c,
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"],
    );
    // P2C: the busy endpoint wins only when both draws hit it: 1/16 of its fair share... of
    // all picks: (1/4)² = 1/16; the others share the rest evenly.
    let x = chi2(&c, &[1.0, 5.0, 5.0, 5.0]);
    assert!(x < chi2_bound(3), "chi2 {x} {c:?}");
}

#[test]
fn weighted_round_robin_is_proportional_and_exact_over_a_period() {
    let c = fleet_counts("{simple: ROUND_ROBIN}", 3, Some(&[1, 2, 5]), 800);
    assert_eq!(c, [100, 200, 500]);
}

#[test]
fn weighted_least_request_is_proportional_when_idle() {
    let c = fleet_counts("{simple: LEAST_REQUEST}", 3, Some(&[1, 2, 5]), 16_000);
    let x = chi2(&c, &[1.0, 2.0, 5.0]);
    assert!(x < chi2_bound(2), "chi2 {x} {c:?}");
}

#[test]
fn weighted_least_request_follows_weight_over_active_plus_one() {
    let mut lb = seeded(snap(&fleet(2, Some(&[1, 4]), "{simple: LEAST_REQUEST}"))).layer(echo());
    let d = dest(SVC, None, None);
    // weight / (active + 1): 1/1 vs 4/4 → even
    lb.with_cluster(&d, |c| c.hosts[1].state.set_active(3))
        .unwrap();
    let c = counts(&mut lb, &d, 10_000);
    let c = ordered(&c, &["10.0.0.1:80", "10.0.0.2:80"]);
    assert!(chi2(&c, &[1.0, 1.0]) < chi2_bound(1), "{c:?}");
}

#[test]
fn peak_ewma_prefers_the_faster_endpoint() {
    let cfg = LbConfig {
        seed: Some(3),
        peak_ewma_hosts: vec!["*.default.svc.cluster.local".into()],
        ..LbConfig::default()
    };
    let mut lb = LbLayer::builder(snap(&fleet(2, None, "{}")))
        .config(cfg)
        .build()
        .layer(echo());
    let d = dest(SVC, None, None);
    let t = std::time::Instant::now();
    lb.with_cluster(&d, |c| {
        assert_eq!(c.algorithm, crate::Algorithm::PeakEwma);
        c.hosts[0]
            .state
            .observe_rtt(Duration::from_millis(100), t, Duration::from_secs(10));
        c.hosts[1]
            .state
            .observe_rtt(Duration::from_millis(10), t, Duration::from_secs(10));
    })
    .unwrap();
    let c = counts(&mut lb, &d, 8_000);
    let c = ordered(&c, &["10.0.0.1:80", "10.0.0.2:80"]);
    // P2C: the slow one only when both draws hit it (1/4)
    assert!(chi2(&c, &[1.0, 3.0]) < chi2_bound(1), "{c:?}");
    // an explicit simple policy wins over the extension
    let cfg = LbConfig {
        peak_ewma_hosts: vec!["*".into()],
        ..LbConfig::default()
    };
    let mut lb = LbLayer::builder(snap(&fleet(2, None, "{simple: LEAST_REQUEST}")))
        .config(cfg)
        .build()
        .layer(echo());
    assert_eq!(
        lb.with_cluster(&d, |c| c.algorithm),
        Some(crate::Algorithm::LeastRequest)
    );
}

#[test]
fn algorithms_that_ignore_in_flight_counts_do_not_keep_them() {
    for lb_yaml in ["{simple: ROUND_ROBIN}", "{simple: RANDOM}"] {
        let mut lb = seeded(snap(&fleet(1, None, lb_yaml))).layer(echo());
        let d = dest(SVC, None, None);
        let fut = lb.call(request(&d));
        assert_eq!(lb.with_cluster(&d, |c| c.hosts[0].state.active()), Some(0));
        drop(fut);
        assert_eq!(lb.with_cluster(&d, |c| c.hosts[0].state.active()), Some(0));
    }
}

#[test]
fn requests_in_flight_are_counted_until_the_response() {
    let mut lb = seeded(snap(&fleet(1, None, "{}"))).layer(echo());
    let d = dest(SVC, None, None);
    let fut = lb.call(request(&d));
    assert_eq!(lb.with_cluster(&d, |c| c.hosts[0].state.active()), Some(1));
    drop(fut); // cancelled
    assert_eq!(lb.with_cluster(&d, |c| c.hosts[0].state.active()), Some(0));
    let _ = send(&mut lb, request(&d));
    assert_eq!(lb.with_cluster(&d, |c| c.hosts[0].state.active()), Some(0));
}

/// Envoy's `rq_active` counts a request until its stream completes: a long download or a
/// stream keeps its endpoint busy for least request after the response head.
#[test]
fn requests_stay_in_flight_until_the_response_body_ends() {
    use http_body_util::BodyExt as _;
    let mut lb = seeded(snap(&fleet(1, None, "{}"))).layer(echo());
    let d = dest(SVC, None, None);
    let active = |lb: &mut crate::Lb<Echo>| lb.with_cluster(&d, |c| c.hosts[0].state.active());
    let res = send(&mut lb, request(&d));
    assert_eq!(active(&mut lb), Some(1), "head arrived, body not read");
    let mut body = res.into_body();
    assert!(now(body.frame()).is_none());
    assert_eq!(active(&mut lb), Some(0), "body read to its end");
    let res = send(&mut lb, request(&d));
    assert_eq!(active(&mut lb), Some(1));
    drop(res);
    assert_eq!(active(&mut lb), Some(0), "body dropped unread");
}

/// Two picks for one request's attempts, sharing a [`PreviousHosts`] when `avoid`.
fn two_attempts<S>(
    svc: &mut S,
    r: impl Fn() -> Request<()>,
    avoid: bool,
) -> (SocketAddr, SocketAddr)
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let previous = PreviousHosts::new();
    let mut attempt = || {
        let mut req = r();
        if avoid {
            req.extensions_mut().insert(previous.clone());
        }
        picked(&send(svc, req))
    };
    let (first, second) = (attempt(), attempt());
    if avoid {
        assert_eq!(
            previous.to_vec(),
            vec![first, second],
            "the balancer records its picks"
        );
    }
    (first, second)
}

#[test]
fn a_retry_avoids_the_hosts_tried_before() {
    // RANDOM over two endpoints: a second pick repeats the first half the time; with the
    // previous hosts, only when the pick and its five reselections all land on it: 1/64.
    // 4000 requests: 62.5 expected (binomial sd 7.8), 2000 without (sd 32).
    let mut lb = seeded(snap(&fleet(2, None, "{simple: RANDOM}"))).layer(echo());
    let d = dest(SVC, None, None);
    let repeats = |lb: &mut _, avoid| {
        (0..4000)
            .filter(|_| {
                let (a, b) = two_attempts(lb, || request(&d), avoid);
                a == b
            })
            .count()
    };
    let avoided = repeats(&mut lb, true);
    assert!((30..=100).contains(&avoided), "{avoided}");
    let control = repeats(&mut lb, false);
    assert!((1850..=2150).contains(&control), "{control}");
    // a consistent-hash key moves to another endpoint for the retry (4/5 per reselection)
    let mut lb = seeded(snap(&fleet(
        5,
        None,
        "{consistentHash: {httpHeaderName: x-user}}",
    )))
    .layer(echo());
    let with_key = |u: usize| {
        let mut r = request(&d);
        r.headers_mut()
            .insert("x-user", format!("user-{u}").parse().unwrap());
        r
    };
    let moved = (0..200)
        .filter(|&u| {
            let (a, b) = two_attempts(&mut lb, || with_key(u), true);
            a != b
        })
        .count();
    assert!(moved >= 198, "{moved}");
    let stayed = (0..200)
        .filter(|&u| {
            let (a, b) = two_attempts(&mut lb, || with_key(u), false);
            a == b
        })
        .count();
    assert_eq!(stayed, 200, "without the list the key is sticky");
}

// ------------------------------------------------------------------------------------------
// consistent hashing and sticky sessions
// ------------------------------------------------------------------------------------------

#[test]
fn header_hash_is_consistent_and_spreads_keys() {
    for lb_yaml in [
        "{consistentHash: {httpHeaderName: x-user}}",
        "{consistentHash: {httpHeaderName: X-User, maglev: {tableSize: 65537}}}",
        "{consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}}",
    ] {
        let mut lb = seeded(snap(&fleet(5, None, lb_yaml))).layer(echo());
        let d = dest(SVC, None, None);
        let mut per_user = HashMap::new();
        let mut spread: HashMap<SocketAddr, usize> = HashMap::new();
        for round in 0..3 {
            for u in 0..2_000 {
                let mut r = request(&d);
                r.headers_mut()
                    .insert("x-user", format!("user-{u}").parse().unwrap());
                let a = picked(&send(&mut lb, r));
                if round == 0 {
                    per_user.insert(u, a);
                    *spread.entry(a).or_default() += 1;
                } else {
                    assert_eq!(per_user[&u], a, "{lb_yaml}: user {u} moved");
                }
            }
        }
        let counts: Vec<usize> = spread.values().copied().collect();
        assert_eq!(counts.len(), 5);
        // consistent hashing is not perfectly even: allow ±25% per endpoint
        assert!(
            counts.iter().all(|c| (300..=500).contains(c)),
            "{lb_yaml}: {counts:?}"
        );
    }
}

#[test]
fn source_ip_and_query_parameter_hashing() {
    let mut lb = seeded(snap(&fleet(
        5,
        None,
        "{consistentHash: {useSourceIp: true}}",
    )))
    .layer(echo());
    let d = dest(SVC, None, None);
    let with_ip = |ip: &str| {
        let mut r = request(&d);
        r.extensions_mut()
            .insert(ClientAddr(SocketAddr::new(ip.parse().unwrap(), 5555)));
        r
    };
    let a = picked(&send(&mut lb, with_ip("192.168.1.7")));
    for _ in 0..20 {
        assert_eq!(picked(&send(&mut lb, with_ip("192.168.1.7"))), a);
    }
    let mut lb = seeded(snap(&fleet(
        5,
        None,
        "{consistentHash: {httpQueryParameterName: user}}",
    )))
    .layer(echo());
    let q = |v: &str| {
        let mut r = Request::builder()
            .uri(format!("/p?x=1&user={v}"))
            .body(())
            .unwrap();
        r.extensions_mut().insert(d.clone());
        r
    };
    let a = picked(&send(&mut lb, q("zoe")));
    for _ in 0..20 {
        assert_eq!(picked(&send(&mut lb, q("zoe"))), a);
    }
}

#[test]
fn removing_an_endpoint_remaps_about_one_nth_of_keys() {
    let (src, feed) = FeedDiscover::new();
    let s = snap(&fleet(
        10,
        None,
        "{consistentHash: {httpHeaderName: x-user, maglev: {}}}",
    ));
    let layer = LbLayer::builder(s.clone())
        .discover(Arc::new(Chain::new(vec![
            Arc::new(src),
            Arc::new(StaticDiscover),
        ])))
        .config(LbConfig {
            seed: Some(1),
            ..LbConfig::default()
        })
        .build();
    let mut lb = layer.layer(echo());
    let d = dest(SVC, None, None);
    let pick = |lb: &mut crate::Lb<Echo>, u: usize| {
        let mut r = request(&d);
        r.headers_mut()
            .insert("x-user", format!("u{u}").parse().unwrap());
        picked(&send(lb, r))
    };
    let before: Vec<SocketAddr> = (0..5_000).map(|u| pick(&mut lb, u)).collect();
    let svc = s.service(SVC, "default").unwrap();
    let kept: Vec<DiscoveredEndpoint> = svc.endpoints[1..]
        .iter()
        .map(|e| DiscoveredEndpoint::new(e.address.parse().unwrap(), e.clone()))
        .collect();
    feed.publish(SVC, EndpointSet::new(kept));
    let moved = (0..5_000)
        .filter(|&u| pick(&mut lb, u) != before[u])
        .count();
    let share = moved as f64 / 5_000.0;
    assert!((0.06..0.2).contains(&share), "moved {share}");
}

#[test]
fn cookie_is_generated_once_and_keeps_the_client_on_its_endpoint() {
    let y = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {consistentHash: {httpCookie: {name: user, path: /, ttl: 3600s}}}",
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let d = dest(REVIEWS, Some("v2"), Some(9080));
    let res = send(&mut lb, request(&d));
    let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("user=v2.") && set.ends_with("; Max-Age=3600; Path=/; HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let first = picked(&res);
    for _ in 0..20 {
        let mut r = request(&d);
        r.headers_mut()
            .insert("cookie", format!("a=b; {cookie}").parse().unwrap());
        let res = send(&mut lb, r);
        assert!(
            res.headers().get("set-cookie").is_none(),
            "no new cookie when present"
        );
        assert_eq!(picked(&res), first);
    }
    // without ttl, no cookie is generated (and a random endpoint is used)
    let y = y.replace(", ttl: 3600s", "");
    let mut lb = seeded(snap(&y)).layer(echo());
    assert!(
        send(&mut lb, request(&d))
            .headers()
            .get("set-cookie")
            .is_none()
    );
}

/// The router's half of sticky sessions (mesh-routing does it for real): keep a client that
/// has a cookie on the cookie's subset; choose by weight otherwise.
fn route_by_cookie(
    req: &Request<()>,
    weights: &[(&str, u32)],
    rng: &mut mesh_core::rng::Rng,
) -> RouteDestination {
    let cookie_subset = mesh_core::sticky::find_cookie(req.headers(), "user")
        .and_then(mesh_core::sticky::decode)
        .and_then(|(s, _)| s)
        .filter(|s| weights.iter().any(|(n, w)| n == s && *w > 0));
    let subset = cookie_subset.map(str::to_string).unwrap_or_else(|| {
        let total: u32 = weights.iter().map(|w| w.1).sum();
        let mut r = rng.below(total as usize) as u32;
        weights
            .iter()
            .find(|(_, w)| {
                if r < *w {
                    return true;
                }
                r -= w;
                false
            })
            .map(|w| w.0.to_string())
            .unwrap_or_default()
    });
    dest(REVIEWS, Some(&subset), Some(9080))
}

#[test]
fn sticky_sessions_compose_with_weighted_subsets() {
    let y = BASE.replace(
        "loadBalancer: {simple: ROUND_ROBIN}",
        "loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}",
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let mut rng = mesh_core::rng::Rng::new(Some(9));
    let weights = [("v1", 80), ("v2", 20)];
    let mut clients_on_v2 = 0;
    for _client in 0..500 {
        // first visit: weighted choice, the balancer sets the cookie (a session cookie: ttl 0)
        let first = Request::new(());
        let d = route_by_cookie(&first, &weights, &mut rng);
        let mut first = first;
        first.extensions_mut().insert(d.clone());
        let res = send(&mut lb, first);
        let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(!set.contains("Max-Age"), "ttl 0: session cookie");
        let cookie = set.split(';').next().unwrap().to_string();
        let endpoint = picked(&res);
        if d.subset.as_deref() == Some("v2") {
            clients_on_v2 += 1;
        }
        // later visits: same subset (router) and same endpoint (balancer), whatever the weights
        for _ in 0..10 {
            let mut r = Request::new(());
            r.headers_mut().insert("cookie", cookie.parse().unwrap());
            let d2 = route_by_cookie(&r, &weights, &mut rng);
            assert_eq!(d2.subset, d.subset);
            r.extensions_mut().insert(d2);
            assert_eq!(picked(&send(&mut lb, r)), endpoint);
        }
    }
    // the weighted split still holds across clients: 20% ± a few
    assert!((70..=130).contains(&clients_on_v2), "{clients_on_v2}");
}

// ------------------------------------------------------------------------------------------
// locality (Istio's task pages), warm-up
// ------------------------------------------------------------------------------------------

const HELLO: &str = "helloworld.default.svc.cluster.local";

fn helloworld(lb: &str, outlier: bool) -> String {
    let od = if outlier {
        "\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m}"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: sleep}}
spec:
  workload: {{name: sleep, namespace: default, locality: region1/zone1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld}}
spec:
  hosts: [helloworld.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 10.1.0.1, locality: region1/zone1}}
  - {{address: 10.1.0.2, locality: region1/zone2}}
  - {{address: 10.2.0.3, locality: region2/zone3}}
  - {{address: 10.3.0.4, locality: region3/zone4}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: helloworld}}
spec:
  host: helloworld
  trafficPolicy:
    connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}
    loadBalancer: {lb}{od}
"#
    )
}

const HELLO_ADDRS: [&str; 4] = [
    "10.1.0.1:5000",
    "10.1.0.2:5000",
    "10.2.0.3:5000",
    "10.3.0.4:5000",
];

#[test]
fn istio_task_locality_failover() {
    // https://istio.io/latest/docs/tasks/traffic-management/locality-load-balancing/failover/
    let y = helloworld(
        "\n      simple: ROUND_ROBIN\n      localityLbSetting:\n        enabled: true\n        failover: [{from: region1, to: region3}]",
        true,
    );
    let layer = seeded(snap(&y));
    let mut lb = layer.layer(echo());
    let d = dest(HELLO, None, None);
    let cluster = cluster_name(5000, None, HELLO);
    let c = counts(&mut lb, &d, 20);
    assert_eq!(ordered(&c, &HELLO_ADDRS), [20, 0, 0, 0], "same zone first");
    // "Failover to region1.zone2"
    let _z1 = eject(&layer, &cluster, HELLO_ADDRS[0]);
    assert_eq!(
        ordered(&counts(&mut lb, &d, 20), &HELLO_ADDRS),
        [0, 20, 0, 0]
    );
    // "Failover to region3" (the failover target, before region2)
    let _z2 = eject(&layer, &cluster, HELLO_ADDRS[1]);
    assert_eq!(
        ordered(&counts(&mut lb, &d, 20), &HELLO_ADDRS),
        [0, 0, 0, 20]
    );
    // "Failover to region2"
    let _r3 = eject(&layer, &cluster, HELLO_ADDRS[3]);
    assert_eq!(
        ordered(&counts(&mut lb, &d, 20), &HELLO_ADDRS),
        [0, 0, 20, 0]
    );
}

/// The endpoints five attempts of one request go to, sharing a [`PreviousPriorities`].
fn five_attempts<S>(svc: &mut S, d: &RouteDestination) -> (Vec<SocketAddr>, Vec<u32>)
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let priorities = PreviousPriorities::new();
    let picks = (0..5)
        .map(|_| {
            let mut req = request(d);
            req.extensions_mut().insert(priorities.clone());
            picked(&send(svc, req))
        })
        .collect();
    (picks, priorities.to_vec())
}

#[test]
fn retry_remote_localities_moves_retries_to_the_next_priorities() {
    // Istio's retryRemoteLocalities: Envoy's previous_priorities with update_frequency 2.
    // All four endpoints healthy, region1/zone1 (P0) takes every first pick; the first retry
    // uses the unmodified load (P0 again), the second excludes P0 (region1/zone2, P1), the
    // fourth excludes P0 and P1 (region3, the failover target).
    let y = helloworld(
        "
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover: [{from: region1, to: region3}]",
        true,
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let d = dest(HELLO, None, None);
    for _ in 0..20 {
        let (picks, priorities) = five_attempts(&mut lb, &d);
        let a = |i: usize| addr(HELLO_ADDRS[i]);
        assert_eq!(picks, [a(0), a(0), a(1), a(1), a(3)]);
        // the levels as built: region1/zone1, region1/zone2, region3, region2
        assert_eq!(
            priorities,
            [0, 0, 1, 1, 2],
            "the balancer records the levels"
        );
    }
    // without the list, every attempt stays in P0
    let c = counts(&mut lb, &d, 20);
    assert_eq!(ordered(&c, &HELLO_ADDRS), [20, 0, 0, 0]);
    // one priority (no locality priorities without outlier detection): nothing to avoid,
    // nothing recorded, the usual balancing
    let y = helloworld(
        "
      simple: ROUND_ROBIN
      localityLbSetting: {enabled: true, failover: [{from: region1, to: region3}]}",
        false,
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let (picks, priorities) = five_attempts(&mut lb, &d);
    assert_eq!(
        picks.iter().collect::<std::collections::HashSet<_>>().len(),
        4
    );
    assert!(priorities.is_empty());
}

#[test]
fn locality_failover_needs_outlier_detection() {
    let y = helloworld(
        "\n      simple: ROUND_ROBIN\n      localityLbSetting: {enabled: true, failover: [{from: region1, to: region3}]}",
        false,
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let c = counts(&mut lb, &dest(HELLO, None, None), 40);
    assert_eq!(
        ordered(&c, &HELLO_ADDRS),
        [10; 4],
        "as in Istio: no outlier detection, no locality priorities"
    );
}

#[test]
fn failover_spills_gradually_with_overprovisioning() {
    // two endpoints in region1/zone1, one of them ejected: P0 health = min(100, 1.4 × 50) = 70
    let y = helloworld("{simple: ROUND_ROBIN}", true).replace(
        "  - {address: 10.1.0.2, locality: region1/zone2}",
        "  - {address: 10.1.0.9, locality: region1/zone1}\n  - {address: 10.1.0.2, locality: region1/zone2}",
    );
    let layer = seeded(snap(&y));
    let mut lb = layer.layer(echo());
    let d = dest(HELLO, None, None);
    let _ = send(&mut lb, request(&d));
    let _cell = eject(&layer, &cluster_name(5000, None, HELLO), "10.1.0.9:5000");
    let c = counts(&mut lb, &d, 10_000);
    let c = ordered(&c, &["10.1.0.1:5000", "10.1.0.2:5000", "10.1.0.9:5000"]);
    assert_eq!(c[2], 0);
    assert!(chi2(&c[..2], &[70.0, 30.0]) < chi2_bound(1), "{c:?}");
}

#[test]
fn istio_task_locality_weighted_distribution() {
    // https://istio.io/latest/docs/tasks/traffic-management/locality-load-balancing/distribute/
    let y = helloworld(
        "\n      localityLbSetting:\n        enabled: true\n        distribute:\n        - from: region1/zone1/*\n          to:\n            \"region1/zone1/*\": 70\n            \"region1/zone2/*\": 20\n            \"region3/zone4/*\": 10",
        true,
    );
    let mut lb = seeded(snap(&y)).layer(echo());
    let c = counts(&mut lb, &dest(HELLO, None, None), 20_000);
    let c = ordered(&c, &HELLO_ADDRS);
    assert_eq!(c[2], 0, "region2 gets nothing");
    let observed = [c[0], c[1], c[3]];
    let x = chi2(&observed, &[70.0, 20.0, 10.0]);
    assert!(x < chi2_bound(2), "chi2 {x} {c:?}");
}

#[test]
fn warmup_ramps_a_new_endpoint() {
    let one = fleet(1, None, "{simple: ROUND_ROBIN, warmupDurationSecs: 100s}");
    let two = fleet(2, None, "{simple: ROUND_ROBIN, warmupDurationSecs: 100s}");
    let layer = seeded(snap(&one));
    let mut lb = layer.layer(echo());
    let d = dest(SVC, None, None);
    let _ = send(&mut lb, request(&d));
    layer.store(snap(&two));
    let c = counts(&mut lb, &d, 1_100);
    // the new endpoint starts at the minimum, 10%: weight 0.1 against 1
    assert_eq!(ordered(&c, &["10.0.0.1:80", "10.0.0.2:80"]), [1_000, 100]);
    let refresh = lb.with_cluster(&d, |c| c.refresh_at).unwrap();
    assert!(
        refresh.is_some(),
        "the cluster is rebuilt as the endpoint warms"
    );
}

// ------------------------------------------------------------------------------------------
// discovery updates, snapshots, passthrough
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn endpoint_changes_do_not_drop_requests_in_flight() {
    let (src, feed) = FeedDiscover::new();
    let s = snap(&fleet(2, None, "{simple: ROUND_ROBIN}"));
    let layer = LbLayer::builder(s.clone())
        .discover(Arc::new(Chain::new(vec![
            Arc::new(src),
            Arc::new(StaticDiscover),
        ])))
        .build();
    let slow = tower::service_fn(|req: Request<()>| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut res = Response::new(MeshBody::<String>::inner(String::new()));
        res.extensions_mut()
            .insert(selected_endpoint(req.extensions()).cloned());
        Ok::<_, Infallible>(res)
    });
    let mut lb = layer.layer(slow);
    let d = dest(SVC, None, None);
    let in_flight = tokio::spawn(lb.call(request(&d)));
    tokio::task::yield_now().await;
    let svc = s.service(SVC, "default").unwrap();
    feed.publish(
        SVC,
        EndpointSet::new(vec![DiscoveredEndpoint::new(
            "10.9.9.9".parse().unwrap(),
            svc.endpoints[0].clone(),
        )]),
    );
    let res = lb.call(request(&d)).await.unwrap();
    let ep = res
        .extensions()
        .get::<Option<SelectedEndpoint>>()
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(ep.addr, addr("10.9.9.9:80"));
    let old = in_flight.await.unwrap().unwrap();
    assert_eq!(old.status(), 200, "the request in flight completed");
}

#[test]
fn snapshot_swaps_keep_counters_of_surviving_endpoints() {
    let layer = seeded(snap(&fleet(2, None, "{simple: LEAST_REQUEST}")));
    let mut lb = layer.layer(echo());
    let d = dest(SVC, None, None);
    let fut = lb.call(request(&d)); // one request in flight
    let busy = lb
        .with_cluster(&d, |c| c.hosts.iter().position(|h| h.state.active() == 1))
        .unwrap()
        .unwrap();
    layer.store(snap(&fleet(3, None, "{simple: ROUND_ROBIN}")));
    let active: Vec<u32> = lb
        .with_cluster(&d, |c| c.hosts.iter().map(|h| h.state.active()).collect())
        .unwrap();
    assert_eq!(active.len(), 3);
    assert_eq!(active[busy], 1);
    drop(fut);
    assert_eq!(
        lb.with_cluster(&d, |c| c.hosts[busy].state.active()),
        Some(0)
    );
}

#[tokio::test(start_paused = true)]
async fn dns_services_balance_over_resolved_addresses() {
    let fake = Arc::new(FakeResolver::default());
    fake.0.lock().unwrap().insert(
        "api.example.com".into(),
        vec!["1.1.1.1".parse().unwrap(), "1.1.1.2".parse().unwrap()],
    );
    let dns = Arc::new(crate::discover::DnsDiscover::new(fake.clone()));
    let y = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  resolution: DNS\n  ports: [{number: 443, name: https, protocol: HTTP}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ext}\nspec:\n  host: api.example.com\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";
    let layer = LbLayer::builder(snap(y))
        .discover(Arc::new(Chain::new(vec![
            dns.clone(),
            Arc::new(StaticDiscover),
        ])))
        .build();
    let mut lb = layer.layer(echo());
    let d = dest("api.example.com", None, None);
    let res = send(&mut lb, request(&d));
    assert_eq!(
        flags_of(&res),
        ResponseFlags::NO_HEALTHY_UPSTREAM,
        "not resolved yet"
    );
    let task = tokio::spawn(dns.clone().run());
    tokio::task::yield_now().await;
    let c = counts(&mut lb, &d, 10);
    assert_eq!(ordered(&c, &["1.1.1.1:443", "1.1.1.2:443"]), [5, 5]);
    // DNS fails: the last good set stays
    fake.0.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(counts(&mut lb, &d, 10).len(), 2);
    task.abort();
}

#[derive(Debug, Default)]
struct FakeResolver(Mutex<HashMap<String, Vec<IpAddr>>>);

impl Resolver for FakeResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        let r = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move { r.ok_or_else(|| io::Error::other("NXDOMAIN")) })
    }
}

#[tokio::test]
async fn passthrough_connects_to_the_named_host() {
    let fake = Arc::new(FakeResolver::default());
    fake.0
        .lock()
        .unwrap()
        .insert("example.org".into(), vec!["93.184.216.34".parse().unwrap()]);
    let layer = LbLayer::builder(snap(BASE)).resolver(fake).build();
    let mut lb = layer.layer(echo());
    let pass = |host: &str, port| {
        let mut r = request(&dest(host, None, port));
        r.extensions_mut().insert(Passthrough);
        r
    };
    let res = lb.call(pass("example.org", Some(8443))).await.unwrap();
    assert_eq!(picked(&res), addr("93.184.216.34:8443"));
    let res = lb.call(pass("10.20.30.40", None)).await.unwrap();
    assert_eq!(picked(&res), addr("10.20.30.40:80"));
    let res = lb.call(pass("nowhere.invalid", None)).await.unwrap();
    assert_eq!(
        (res.status().as_u16(), flags_of(&res)),
        (503, ResponseFlags::DNS_RESOLUTION_FAILURE)
    );
    // simple: PASSTHROUGH on a registered service: the request's authority
    let y = BASE.replace("{simple: ROUND_ROBIN}", "{simple: PASSTHROUGH}");
    let mut lb = LbLayer::new(snap(&y)).layer(echo());
    let mut r = Request::builder()
        .uri("http://10.0.0.77:9080/")
        .body(())
        .unwrap();
    r.extensions_mut().insert(dest(REVIEWS, None, Some(9080)));
    assert_eq!(picked(&lb.call(r).await.unwrap()), addr("10.0.0.77:9080"));
}

/// `simple: PASSTHROUGH` reads the request's authority with `mesh_core::authority`: a
/// bracketed IPv6 literal and its port; a bare one is all host, no port (RFC 3986 §3.2.2:
/// only a bracketed literal carries a port; it used to be read as host `:` port 1); a port
/// that is not a number is no destination (it used to be dropped silently).
#[tokio::test]
async fn passthrough_reads_the_authority_as_rfc_3986_writes_it() {
    let y = BASE.replace("{simple: ROUND_ROBIN}", "{simple: PASSTHROUGH}");
    let mut lb = LbLayer::new(snap(&y)).layer(echo());
    let to = |host: &str| {
        let mut r = Request::builder()
            .uri("/")
            .header("host", host)
            .body(())
            .unwrap();
        r.extensions_mut().insert(dest(REVIEWS, None, Some(9080)));
        r
    };
    assert_eq!(
        picked(&lb.call(to("[::1]:8080")).await.unwrap()),
        addr("[::1]:8080")
    );
    assert_eq!(
        picked(&lb.call(to("::1")).await.unwrap()),
        addr("[::1]:9080")
    );
    assert_eq!(
        picked(&lb.call(to("10.0.0.77:")).await.unwrap()),
        addr("10.0.0.77:9080")
    );
    let res = lb.call(to("10.0.0.77:http")).await.unwrap();
    assert_eq!(
        (res.status().as_u16(), flags_of(&res)),
        (503, ResponseFlags::NO_ROUTE)
    );
}

#[tokio::test]
async fn unknown_hosts_without_router_pass_through_under_allow_any() {
    let fake = Arc::new(FakeResolver::default());
    fake.0
        .lock()
        .unwrap()
        .insert("api.other.com".into(), vec!["1.2.3.4".parse().unwrap()]);
    let mut lb = LbLayer::builder(snap(BASE))
        .resolver(fake.clone())
        .build()
        .layer(echo());
    let r = Request::builder()
        .uri("http://api.other.com/")
        .body(())
        .unwrap();
    assert_eq!(picked(&lb.call(r).await.unwrap()), addr("1.2.3.4:80"));
    let strict = format!(
        "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {{name: p}}\nspec:\n  mesh: {{outboundTrafficPolicy: REGISTRY_ONLY}}\n---\n{BASE}"
    );
    let mut lb = LbLayer::builder(snap(&strict))
        .resolver(fake)
        .build()
        .layer(echo());
    let r = Request::builder()
        .uri("http://api.other.com/")
        .body(())
        .unwrap();
    assert_eq!(
        flags_of(&lb.call(r).await.unwrap()),
        ResponseFlags::NO_ROUTE
    );
}

/// `connectionPool.http.idleTimeout` and `maxRequestsPerConnection`, read from the
/// DestinationRule into the cluster's pool settings (the connector's): the HTTP idle
/// timeout, else the TCP one (Istio's `applyConnectionPool`: `if idleTimeout == nil {
/// idleTimeout = settings.Tcp.IdleTimeout }`; the TCP one is the TCP proxy's too), `0`
/// requests per connection (the proto default) no limit, and a subset's `connectionPool`
/// replacing the top level's whole.
#[test]
fn connection_pool_idle_timeout_and_max_requests_per_connection_reach_the_pool() {
    let pool_of = |yaml: &str, subset: Option<&str>| {
        let mut lb = seeded(snap(yaml)).layer(echo());
        let res = send(&mut lb, request(&dest(REVIEWS, subset, Some(9080))));
        res.extensions().get::<UpstreamCluster>().unwrap().pool
    };
    let with_pool = |pool: &str| {
        BASE.replace(
            "loadBalancer: {simple: ROUND_ROBIN}",
            &format!("loadBalancer: {{simple: ROUND_ROBIN}}\n    connectionPool:\n{pool}"),
        )
    };
    // unset: the connector's defaults (Envoy's hour, no limit)
    let p = pool_of(BASE, None);
    assert_eq!(p.idle_timeout, None);
    assert_eq!(p.tcp_idle_timeout, None);
    assert_eq!(p.max_requests_per_connection, None);

    let y = with_pool(
        "      tcp: {idleTimeout: 2h}\n      http: {idleTimeout: 30s, maxRequestsPerConnection: 100}",
    );
    let p = pool_of(&y, None);
    assert_eq!(p.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(p.tcp_idle_timeout, Some(Duration::from_secs(7200)));
    assert_eq!(p.max_requests_per_connection, Some(100));
    // every subset's cluster inherits the top level's
    let v2 = pool_of(&y, Some("v2"));
    assert_eq!(v2.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(v2.max_requests_per_connection, Some(100));

    // the TCP idle timeout alone: the HTTP pool's too
    let p = pool_of(&with_pool("      tcp: {idleTimeout: 90s}"), None);
    assert_eq!(p.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(p.tcp_idle_timeout, Some(Duration::from_secs(90)));

    // the HTTP idle timeout alone: the TCP proxy keeps its default
    let p = pool_of(
        &with_pool("      http: {idleTimeout: 1500ms, maxRequestsPerConnection: 0}"),
        None,
    );
    assert_eq!(p.idle_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(p.tcp_idle_timeout, None);
    assert_eq!(p.max_requests_per_connection, None, "0: no limit");

    // a subset's connectionPool replaces the top level's (field by field of the traffic
    // policy, not inside connectionPool): v2 has its idle timeout and no request limit
    let sub = y.replace(
        "  - {name: v2, labels: {version: v2}}",
        "  - name: v2\n    labels: {version: v2}\n    trafficPolicy:\n      connectionPool: {http: {idleTimeout: 5s}}",
    );
    assert_ne!(sub, y);
    let v2 = pool_of(&sub, Some("v2"));
    assert_eq!(v2.idle_timeout, Some(Duration::from_secs(5)));
    assert_eq!(v2.max_requests_per_connection, None);
    assert_eq!(v2.tcp_idle_timeout, None);
    let v1 = pool_of(&sub, Some("v1"));
    assert_eq!(v1.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(v1.max_requests_per_connection, Some(100));
}

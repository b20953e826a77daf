//! Routing and destination outcomes through the whole proxy (listener → router → balancer →
//! connector → a real upstream): VirtualService header matches and weights, every Host form
//! Istio generates for a service, unknown hosts under `ALLOW_ANY` and `REGISTRY_ONLY`, and
//! the answers the proxy makes itself (`NR`, `UH`, `UF`) with Envoy's response flags.
//!
//! Each upstream answers with its own name, so the test sees which subset served.

use crate::support;

use support::*;

/// Bookinfo's "request routing" task (istio.io/latest/docs/tasks/traffic-management/
/// request-routing): a header match sends one user to v2, everyone else to v1. Istio's
/// `headers.exact` is a case-sensitive comparison of the value; rules are tried in order,
/// the first match wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_tester_to_v2_and_everyone_else_to_v1() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: tester
    match:
    - headers:
        x-user: {{exact: tester}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: default
    route:
    - destination: {{host: reviews, subset: v1}}
",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1, &v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    for _ in 0..20 {
        let r = c.get("reviews", &[("x-user", "tester")]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "v2"), "{r:?}");
        assert_eq!(r.body, "v2");
        for other in [
            &[][..],
            &[("x-user", "jason")],
            &[("x-user", "Tester")],
            &[("x-user", "tester2")],
        ] {
            let r = c.get("reviews", other).await;
            assert_eq!(
                (r.status.as_u16(), r.backend()),
                (200, "v1"),
                "{other:?}: {r:?}"
            );
        }
    }
    assert_eq!(v2.hits(), 20);
    assert_eq!(v1.hits(), 80);
}

/// Istio's weighted routing ("traffic shifting" task): a 90/10 split sends each request to
/// v2 with probability 0.1. Over N = 2000 requests on four keep-alive connections the v2
/// count is Binomial(2000, 0.1): mean 200, σ ≈ 13.4; the bounds [120, 280] are ±6σ, so a
/// correct router fails this test with probability < 1e-8 (a deterministic weighted
/// scheduler lands on 200 exactly). A router ignoring weights (50/50) or the split
/// (0 or 2000) fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_90_10_within_six_sigma() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(2, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1, &v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
        weighted_vs("reviews", &[("v1", 90), ("v2", 10)]),
    );
    let p = start(&yaml).await;
    const N: usize = 2000;
    const CONNS: usize = 4;
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let out = p.out;
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(out).await;
            let (mut a, mut b) = (0usize, 0usize);
            for _ in 0..N / CONNS {
                let r = c.get("reviews.default.svc.cluster.local:9080", &[]).await;
                assert_eq!(r.status, 200, "{r:?}");
                match r.backend() {
                    "v1" => a += 1,
                    "v2" => b += 1,
                    other => panic!("unexpected backend {other:?}"),
                }
            }
            (a, b)
        }));
    }
    let (mut n1, mut n2) = (0, 0);
    for t in tasks {
        let (a, b) = bounded(t).await.unwrap();
        n1 += a;
        n2 += b;
    }
    assert_eq!(n1 + n2, N);
    assert!(
        (120..=280).contains(&n2),
        "v2 served {n2} of {N} (v1 {n1}); expected 200 ± 80 (6σ)"
    );
    assert_eq!(
        (v1.hits(), v2.hits()),
        (n1, n2),
        "the backends' own counts agree"
    );
}

/// Istio's generated virtual-host domains (`generateVirtualHostDomains`): a client in the
/// same namespace reaches `reviews.default.svc.cluster.local:9080` as `reviews`,
/// `reviews.default`, `reviews.default.svc`, the FQDN (with a trailing dot too), each with
/// and without the port; Envoy matches domains case-insensitively; without a port the
/// service's only port is meant. Under `REGISTRY_ONLY`, a port the service does not have is
/// not one of its domains (502 `NR`, Istio's BlackHoleCluster), so the forms above are not
/// accepted by accident of a catch-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_form_istio_generates_reaches_the_service() {
    let up = backend("reviews-v1").await;
    let yaml = format!(
        "{}{}",
        bootstrap(1, "  mesh: {outboundTrafficPolicy: REGISTRY_ONLY}\n"),
        service_entry("reviews", 9080, "HTTP", &[&up]),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let forms = [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews.default.svc",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "reviews.default.svc.cluster.local.",
        "REVIEWS.Default.svc.cluster.local:9080",
    ];
    for host in forms {
        let r = c.get(host, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "reviews-v1"),
            "Host: {host}: {r:?}"
        );
    }
    assert_eq!(up.hits(), forms.len());
    for host in [
        "reviews:9081",
        "reviews.default.svc.cluster.local:80",
        "reviews.other",
        "ratings",
    ] {
        let r = c.get(host, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.flags()),
            (502, "NR"),
            "Host: {host}: {r:?}"
        );
    }
    assert_eq!(
        up.hits(),
        forms.len(),
        "no unknown form reached the service"
    );
}

/// A service with two ports: the Host's port chooses the service port, and the endpoint's
/// port of the same name (`ServiceEntry.endpoints[].ports`) is where the proxy connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_port_selects_the_service_port() {
    let (web, admin) = (backend("web").await, backend("admin").await);
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: multi}}
spec:
  hosts: [multi.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8080, name: http-web, protocol: HTTP}}
  - {{number: 9090, name: http-admin, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http-web: {}, http-admin: {}}}
",
        bootstrap(1, ""),
        web.port(),
        admin.port(),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    assert_eq!(c.get("multi:8080", &[]).await.backend(), "web");
    assert_eq!(
        c.get("multi.default.svc.cluster.local:9090", &[])
            .await
            .backend(),
        "admin"
    );
    assert_eq!(c.get("multi:8080", &[]).await.backend(), "web");
}

/// Istio's `outboundTrafficPolicy`: under `ALLOW_ANY` (the default) a host not in the
/// registry goes to Envoy's PassthroughCluster, i.e. to the original destination (here the
/// Host `127.0.0.1:<port>` of a server the configuration does not mention); under
/// `REGISTRY_ONLY` it goes to the BlackHoleCluster: 502 with flag `NR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_passes_through_under_allow_any_and_is_refused_under_registry_only() {
    let known = backend("known").await;
    let outside = backend("outside").await;
    let outside_host = format!("127.0.0.1:{}", outside.port());

    let yaml = format!(
        "{}{}",
        bootstrap(1, "  mesh: {outboundTrafficPolicy: ALLOW_ANY}\n"),
        service_entry("known", 80, "HTTP", &[&known])
    );
    let allow = start(&yaml).await;
    let r = get_once(allow.out, &outside_host, &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.backend(), r.flags()),
        (200, "outside", ""),
        "{r:?}"
    );
    assert_eq!(outside.hits(), 1);
    // and the registry still routes its own services
    assert_eq!(get_once(allow.out, "known", &[]).await.backend(), "known");

    let yaml = format!(
        "{}{}",
        bootstrap(1, "  mesh: {outboundTrafficPolicy: REGISTRY_ONLY}\n"),
        service_entry("known", 80, "HTTP", &[&known])
    );
    let only = start(&yaml).await;
    let r = get_once(only.out, &outside_host, &[]).await;
    assert_eq!((r.status.as_u16(), r.flags()), (502, "NR"), "{r:?}");
    assert_eq!(
        outside.hits(),
        1,
        "REGISTRY_ONLY must not reach the unknown host"
    );
    assert_eq!(get_once(only.out, "known", &[]).await.backend(), "known");
}

/// A route to a subset no DestinationRule declares names an Envoy cluster that does not
/// exist: 503 with flag `NR` (Envoy's "no cluster" answer). A declared subset whose labels
/// select no endpoint is an empty cluster: 503 with flag `UH` (no healthy upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_subset_is_nr_and_empty_subset_is_uh() {
    let v1 = backend("v1").await;
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /undeclared}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - match: [{{uri: {{prefix: /empty}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1]),
        destination_rule("reviews", &["v1", "v9"], ""),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let get = |path: &str| {
        http::Request::builder()
            .uri(path)
            .header("host", "reviews")
            .body(full(""))
            .unwrap()
    };
    let r = c.send(get("/undeclared")).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "NR"), "{r:?}");
    let r = c.send(get("/empty")).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "UH"), "{r:?}");
    let r = c.send(get("/")).await;
    assert_eq!(
        (r.status.as_u16(), r.backend(), r.flags()),
        (200, "v1", ""),
        "{r:?}"
    );
    assert_eq!(v1.hits(), 1);
}

/// An endpoint nothing listens on: the connection is refused, Istio's default retry policy
/// tries twice more (`connect-failure`), then Envoy answers 503 with flags `UF` (upstream
/// connection failure) and `URX` (retries exhausted), and the downstream connection stays
/// usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_is_503_uf() {
    let dead = dead_port().await;
    let alive = backend("alive").await;
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dead}}
spec:
  hosts: [dead.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {dead}}}}}]
{}",
        bootstrap(1, ""),
        service_entry("alive", 80, "HTTP", &[&alive]),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    for _ in 0..3 {
        let r = c.get("dead", &[]).await;
        assert_eq!((r.status.as_u16(), r.flags()), (503, "URX,UF"), "{r:?}");
        let r = c.get("alive", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "alive"), "{r:?}");
    }
}

/// A backend on 127.0.0.1, and one more on the same port at every other address `localhost`
/// resolves to here, so that whichever address a DNS service picks answers.
async fn localhost_backends(name: &'static str) -> (Backend, Vec<Backend>) {
    let first = backend(name).await;
    let mut extra = Vec::new();
    for a in std::net::ToSocketAddrs::to_socket_addrs(&("localhost", first.port())).unwrap() {
        if a.ip() != first.addr.ip() {
            match backend_on(a, name).await {
                Some(b) => extra.push(b),
                None => panic!("localhost resolves to {a}, which cannot be bound here"),
            }
        }
    }
    (first, extra)
}

/// ServiceEntry `resolution: DNS` (Istio: "DNS resolution ... all addresses are endpoints";
/// Envoy STRICT_DNS cluster): the proxy resolves the endpoint hostname `localhost` and sends
/// traffic to its addresses. Every address `localhost` resolves to here gets a backend on
/// the same port, so whichever the balancer picks answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_service_entry_resolves_endpoint_hostnames() {
    let (first, extra) = localhost_backends("dns").await;
    let port = first.port();
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-api}}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {port}}}}}]
",
        bootstrap(1, "  mesh:\n    outboundTrafficPolicy: REGISTRY_ONLY\n"),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    for _ in 0..4 {
        let r = c.get("api.external.test", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "dns"), "{r:?}");
    }
    let served = first.hits() + extra.iter().map(Backend::hits).sum::<usize>();
    assert_eq!(served, 4);
}

/// The resolver thread starts with the first DNS service: a proxy started with STATIC
/// services only resolves a `resolution: DNS` ServiceEntry that a later configuration adds,
/// and serves it as soon as that configuration is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_service_added_by_a_reload_resolves() {
    let (b, _extra) = localhost_backends("dns").await;
    let port = b.port();
    let boot = bootstrap(1, "  mesh:\n    outboundTrafficPolicy: REGISTRY_ONLY\n");
    let p = start(&format!(
        "{boot}{}",
        service_entry("static", 80, "HTTP", &[&b])
    ))
    .await;
    let mut c = H1::connect(p.out).await;
    let r = c.get("api.external.test", &[]).await;
    assert_eq!(r.status.as_u16(), 502, "not declared yet: {r:?}");
    let yaml = format!(
        "{boot}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-api}}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {port}}}}}]
"
    );
    let compiled = mesh_core::config::load_str("reload.yaml", &yaml).unwrap();
    p.proxy.state().apply(compiled).unwrap();
    let r = c.get("api.external.test", &[]).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "dns"), "{r:?}");
}

/// Envoy formats VirtualService header values per request (`request_headers_to_add`):
/// through the proxy, `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` is the client's address as
/// the listener saw it, and `%REQ(…)%` copies a request header into the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_format_the_client_address_and_request_headers() {
    let echo: Handler = std::sync::Arc::new(|req: http::Request<hyper::body::Incoming>| {
        let client = req
            .headers()
            .get("x-client")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Box::pin(async move { http::Response::builder().body(full(client)).unwrap() })
    });
    let b = backend_with("v1", echo).await;
    let yaml = format!(
        "{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - headers:
      request:
        set: {{x-client: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%'}}
      response:
        set: {{x-user-was: '%REQ(x-user)%'}}
    route:
    - destination: {{host: reviews}}
",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[&b]),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let r = c.get("reviews", &[("x-user", "jason")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "127.0.0.1");
    assert_eq!(r.headers["x-user-was"], "jason");
}

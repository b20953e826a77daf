use mesh_core::compile::compile;
use mesh_core::load::Loader;

use super::*;

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls-a}
spec:
  hosts: [a.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 10.0.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls-b}
spec:
  hosts: [b.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 10.0.1.2}]
"#;

fn snapshot(extra: &str) -> Snapshot {
    let mut l = Loader::new();
    l.add_str("t.yaml", &format!("{SERVICES}---\n{extra}"));
    compile(l.finish().resources)
}

fn conn() -> L4Connection<'static> {
    L4Connection::new(
        "10.9.0.1:40000".parse().unwrap(),
        "127.0.0.1:15432".parse().unwrap(),
    )
}

const ECHO: &str = "tcp-echo.default.svc.cluster.local";

#[test]
fn without_a_virtual_service_the_service_itself() {
    let t = L4RouteTable::sidecar(&snapshot(""), ECHO, 9000).unwrap();
    let d = t.route(&conn(), &mut Rng::new(Some(1))).unwrap();
    assert_eq!(
        (&*d.host, d.subset.as_deref(), d.port),
        (ECHO, None, Some(9000))
    );
}

/// Istio's TCP traffic shifting task: 80/20 between v1 and v2, per connection.
#[test]
fn tcp_traffic_shifting_weights_hold_over_many_connections() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{port: 9000}]
    route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 20}
"#,
    );
    let t = L4RouteTable::sidecar(&snap, ECHO, 9000).unwrap();
    let mut rng = Rng::new(Some(42));
    let n = 10_000;
    let v2 = (0..n)
        .filter(|_| t.route(&conn(), &mut rng).unwrap().subset.as_deref() == Some("v2"))
        .count();
    // binomial(10000, 0.2): sd 40; ±5 sd
    assert!((1800..=2200).contains(&v2), "v2 got {v2} of {n}");
}

#[test]
fn matches_on_port_subnets_and_the_source_workload() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{port: 9999}]
    route: [{destination: {host: tcp-echo, subset: wrong-port}}]
  - match: [{sourceLabels: {app: other}}]
    route: [{destination: {host: tcp-echo, subset: wrong-labels}}]
  - match: [{sourceNamespace: elsewhere}]
    route: [{destination: {host: tcp-echo, subset: wrong-ns}}]
  - match: [{sourceSubnet: 10.8.0.0/16}]
    route: [{destination: {host: tcp-echo, subset: wrong-source}}]
  - match: [{destinationSubnets: [127.0.0.0/8], sourceSubnet: 10.9.0.0/16}]
    route: [{destination: {host: tcp-echo, subset: v2}}]
"#,
    );
    let t = L4RouteTable::sidecar(&snap, ECHO, 9000).unwrap();
    let d = t.route(&conn(), &mut Rng::new(Some(1))).unwrap();
    assert_eq!(d.subset.as_deref(), Some("v2"));
    // another destination address: no route matches, the service's default
    let other = L4Connection::new(conn().peer, "10.0.0.9:15432".parse().unwrap());
    let d = t.route(&other, &mut Rng::new(Some(1))).unwrap();
    assert_eq!(d.subset, None);
}

#[test]
fn tls_routes_match_the_sni_most_specific_first() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sni}
spec:
  hosts: ["*.example.com"]
  tls:
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: b.example.com}}]
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: a.example.com}}]
"#,
    );
    let t = L4RouteTable::sidecar(&snap, "a.example.com", 443).unwrap();
    let route = |sni| {
        t.route(&conn().with_sni(sni), &mut Rng::new(Some(1)))
            .map(|d| d.host.to_string())
    };
    // exact beats the wildcard listed first (Envoy's filter chain match)
    assert_eq!(
        route(Some("a.example.com")).as_deref(),
        Some("a.example.com")
    );
    assert_eq!(
        route(Some("x.y.example.com")).as_deref(),
        Some("b.example.com")
    );
    // no SNI, or one nothing names: the listener's service
    assert_eq!(route(None).as_deref(), Some("a.example.com"));
    assert_eq!(route(Some("example.org")).as_deref(), Some("a.example.com"));
}

#[test]
fn without_tls_routes_the_sni_picks_the_tls_service_of_the_port() {
    let t = L4RouteTable::sidecar(&snapshot(""), "a.example.com", 443).unwrap();
    let d = t
        .route(
            &conn().with_sni(Some("B.example.com")),
            &mut Rng::new(Some(1)),
        )
        .unwrap();
    assert_eq!(&*d.host, "b.example.com");
}

#[test]
fn a_gateway_table_closes_what_no_route_takes() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: gw}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}}}]
"#,
    );
    let t = L4RouteTable::gateway(&snap, ["default/edge"], 31400, false).unwrap();
    let d = t.route(&conn(), &mut Rng::new(Some(1))).unwrap();
    assert_eq!((&*d.host, d.port), (ECHO, Some(9000)));
    let other = L4RouteTable::gateway(&snap, ["default/edge"], 31401, false).unwrap();
    assert!(other.route(&conn(), &mut Rng::new(Some(1))).is_none());
    // the sidecar does not serve a VirtualService bound to a gateway only
    let side = L4RouteTable::sidecar(&snap, ECHO, 9000).unwrap();
    assert_eq!(side.rule_count(), 0);
}

#[test]
fn sni_cluster_names_parse_as_istio_writes_them() {
    assert_eq!(
        sni_cluster("outbound_.8080_._.reviews.default.svc.cluster.local"),
        Some(SniCluster {
            port: 8080,
            subset: None,
            host: "reviews.default.svc.cluster.local"
        })
    );
    assert_eq!(
        sni_cluster("outbound_.9080_.v2_.reviews.bookinfo.svc.cluster.local"),
        Some(SniCluster {
            port: 9080,
            subset: Some("v2"),
            host: "reviews.bookinfo.svc.cluster.local"
        })
    );
    for not in [
        "",
        "reviews.default.svc.cluster.local",
        "inbound_.8080_._.reviews",
        "outbound|8080||reviews.default.svc.cluster.local",
        "outbound_.8080_._.",
        "outbound_.8080_.v1",
        "outbound_._._.reviews",
        "outbound_.0_._.reviews",
        "outbound_.65536_._.reviews",
        "outbound_.+80_._.reviews",
        "outbound_.80x_._.reviews",
        "outbound_.80_._..reviews",
    ] {
        assert_eq!(sni_cluster(not), None, "{not:?}");
    }
}

proptest::proptest! {
    #[test]
    fn sni_cluster_reads_back_what_was_written(
        port in 1u16..,
        subset in proptest::option::of("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"),
        host in "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,8}[a-z0-9])?){0,4}",
    ) {
        let sni = format!("outbound_.{port}_.{}_.{host}", subset.as_deref().unwrap_or(""));
        proptest::prop_assert_eq!(
            sni_cluster(&sni),
            Some(SniCluster { port, subset: subset.as_deref(), host: &host })
        );
    }

    #[test]
    fn sni_cluster_never_panics(sni in "\\PC{0,60}") {
        if let Some(c) = sni_cluster(&sni) {
            proptest::prop_assert!(c.port != 0 && !c.host.is_empty());
            proptest::prop_assert!(sni.ends_with(c.host));
        }
    }
}

#[test]
fn auto_passthrough_routes_sni_cluster_names_to_visible_services_ports_and_subsets() {
    let snap = snapshot(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: other}
spec:
  hosts: [hidden.other.svc.cluster.local]
  exportTo: [.]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.0.2.1}]
"#,
    );
    let t = L4RouteTable::auto_passthrough(&snap, 15443, ["*.local", "istio-system/*.com"]);
    assert!(t.reads_sni() && t.is_auto_passthrough());
    let route = |sni: &str| {
        t.route(&conn().with_sni(Some(sni)), &mut Rng::new(Some(1)))
            .map(|d| {
                (
                    d.host.to_string(),
                    d.subset.as_deref().map(str::to_owned),
                    d.port,
                )
            })
    };
    let echo =
        |subset: Option<&str>| Some((ECHO.to_string(), subset.map(str::to_owned), Some(9000)));
    assert_eq!(
        route("outbound_.9000_._.tcp-echo.default.svc.cluster.local"),
        echo(None)
    );
    assert_eq!(
        route("outbound_.9000_.v2_.tcp-echo.default.svc.cluster.local"),
        echo(Some("v2"))
    );
    assert_eq!(
        route("outbound_.9000_.v1_.TCP-ECHO.default.svc.cluster.local"),
        echo(Some("v1"))
    );
    // a subset, port or service that does not exist, a service exported elsewhere only,
    // another kind of name, no SNI: no route
    for sni in [
        "outbound_.9000_.v3_.tcp-echo.default.svc.cluster.local",
        "outbound_.9001_._.tcp-echo.default.svc.cluster.local",
        "outbound_.9000_._.nope.default.svc.cluster.local",
        "outbound_.9000_._.hidden.other.svc.cluster.local",
        "tcp-echo.default.svc.cluster.local",
    ] {
        assert_eq!(route(sni), None, "{sni}");
    }
    assert!(t.route(&conn(), &mut Rng::new(Some(1))).is_none());
    assert_eq!(
        route("outbound_.443_._.a.example.com"),
        Some(("a.example.com".into(), None, Some(443)))
    );
    // the SNI must match a server's hosts first (Istio's filter chain match)
    let narrow = L4RouteTable::auto_passthrough(&snap, 15443, ["*.svc.cluster.local"]);
    let conn_to = |sni| conn().with_sni(Some(sni));
    assert!(
        narrow
            .route(
                &conn_to("outbound_.443_._.a.example.com"),
                &mut Rng::new(Some(1))
            )
            .is_none()
    );
    assert!(
        narrow
            .route(
                &conn_to("outbound_.9000_._.tcp-echo.default.svc.cluster.local"),
                &mut Rng::new(Some(1))
            )
            .is_some()
    );
}

//! Virtual host selection (Istio `httproute.go` / `route.go` virtual hosts, Envoy domain
//! matching), default routes, passthrough and the black hole.

use mesh_routing::{RouteTable, RouterContext};

use crate::support::*;

fn vs(name: &str, ns: &str, hosts: &str, dest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: {hosts}\n  http:\n  - route: [{{destination: {{host: {dest}}}}}]\n---\n"
    )
}

#[test]
fn every_domain_form_reaches_the_service_in_the_same_namespace() {
    // httproute.go generateVirtualHostDomains + generateAltVirtualHostsForKubernetesService:
    // name, name.ns, name.ns.svc, the FQDN (and its absolute form), each with and without
    // the port.
    let s = snap(&service("reviews", "default", &[9080]));
    let h = Harness::sidecar(&s);
    block_on(async {
        for host in [
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
        ] {
            let (res, seen) = h.get(host, "/").await;
            assert_eq!(res.status(), 200, "{host}");
            let seen = seen.unwrap();
            assert!(!seen.passthrough(), "{host}");
            assert_eq!(seen.host(), "reviews.default.svc.cluster.local", "{host}");
            assert_eq!(seen.port(), Some(9080), "{host}: the only port");
        }
    });
}

#[test]
fn short_name_is_only_for_clients_in_the_service_namespace() {
    // generateAltVirtualHostsForKubernetesService: another namespace gets name.ns and
    // name.ns.svc, never the bare name.
    let s = snap(&service("reviews", "shop", &[9080]));
    let h = Harness::sidecar(&s); // the client is in `default`
    block_on(async {
        let (_, seen) = h.get("reviews", "/").await;
        assert!(
            seen.unwrap().passthrough(),
            "bare name is not a domain here"
        );
        let (_, seen) = h.get("reviews.shop:9080", "/").await;
        assert_eq!(seen.unwrap().host(), "reviews.shop.svc.cluster.local");
    });
}

#[test]
fn a_port_the_service_does_not_have_is_not_a_domain() {
    // Istio builds route configurations per service port; another port has no virtual host.
    let s = snap(&service("reviews", "default", &[9080]));
    let h = Harness::sidecar(&s);
    block_on(async {
        let (_, seen) = h.get("reviews:1234", "/").await;
        let seen = seen.unwrap();
        assert!(seen.passthrough());
        assert_eq!((seen.host(), seen.port()), ("reviews", Some(1234)));
    });
}

#[test]
fn default_route_port_comes_from_the_host_or_the_only_port() {
    // buildSidecarVirtualHostForService: one default route per service port.
    let s = snap(&service("multi", "default", &[80, 8080]));
    let h = Harness::sidecar(&s);
    block_on(async {
        let (_, seen) = h.get("multi:8080", "/").await;
        assert_eq!(seen.unwrap().port(), Some(8080));
        let (_, seen) = h.get("multi", "/").await;
        assert_eq!(
            seen.unwrap().port(),
            Some(80),
            "no port: port 80 of a multi-port service"
        );
        let (_, seen) = h.get("multi", "/").await;
        let seen = seen.unwrap();
        assert_eq!(seen.subset(), None);
        assert_eq!(
            seen.policy().and_then(|p| p.route_name.as_deref()),
            Some("default")
        );
    });
}

#[test]
fn unknown_host_passes_through_under_allow_any() {
    // MeshConfig.outboundTrafficPolicy ALLOW_ANY (the default): PassthroughCluster.
    let h = Harness::sidecar(&snap(&service("reviews", "default", &[9080])));
    block_on(async {
        let (res, seen) = h.get("api.github.com:443", "/x").await;
        assert_eq!(res.status(), 200);
        let seen = seen.unwrap();
        assert!(seen.passthrough());
        assert_eq!(
            (seen.host(), seen.port(), seen.subset()),
            ("api.github.com", Some(443), None)
        );
    });
}

/// Passthrough authorities are split by `mesh_core::authority`: a bracketed IPv6 literal
/// keeps its brackets and gives its port; a bare one is all host (RFC 3986 §3.2.2: only a
/// bracketed literal carries a port; `::1` used to pass through to host `:` port 1); an
/// empty port is no port (§3.2.3).
#[test]
fn passthrough_authorities_are_split_as_rfc_3986_says() {
    let h = Harness::sidecar(&snap(&service("reviews", "default", &[9080])));
    block_on(async {
        for (authority, host, port) in [
            ("[fd00::7]:8443", "[fd00::7]", Some(8443)),
            ("[fd00::7]", "[fd00::7]", None),
            ("fd00::7", "fd00::7", None),
            ("::1", "::1", None),
            ("api.github.com:", "api.github.com", None),
        ] {
            let (res, seen) = h.get(authority, "/").await;
            assert_eq!(res.status(), 200, "{authority}");
            let seen = seen.unwrap();
            assert!(seen.passthrough(), "{authority}");
            assert_eq!((seen.host(), seen.port()), (host, port), "{authority}");
        }
    });
}

#[test]
fn unknown_host_is_502_nr_under_registry_only() {
    // REGISTRY_ONLY: BlackHoleCluster answers 502.
    let text = format!(
        "{}apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {{name: p}}\nspec:\n  mesh: {{outboundTrafficPolicy: REGISTRY_ONLY}}\n",
        service("reviews", "default", &[9080])
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (res, seen) = h.get("api.github.com", "/").await;
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers()["x-mesh-response-flags"], "NR");
        assert!(seen.is_none());
        let (res, _) = h.get("reviews", "/").await;
        assert_eq!(res.status(), 200, "registry services still route");
    });
}

#[test]
fn virtual_service_hosts_outside_the_registry_serve_port_80() {
    // separateVSHostsAndServices: "VirtualService configuration to affect traffic to hosts
    // outside of the service registry (e.g. google.com) on port 80".
    let h = Harness::sidecar(&snap(&vs(
        "g",
        "default",
        "[www.google.com]",
        "egress.example.com",
    )));
    block_on(async {
        for host in ["www.google.com", "www.google.com:80"] {
            let (_, seen) = h.get(host, "/").await;
            assert_eq!(seen.unwrap().host(), "egress.example.com", "{host}");
        }
        let (_, seen) = h.get("www.google.com:443", "/").await;
        assert!(seen.unwrap().passthrough());
    });
}

#[test]
fn wildcard_hosts_and_the_most_specific_wins() {
    // Envoy virtual host domains: exact, then the longest suffix wildcard. Istio
    // mostSpecificWildcardVsIndex: exact VirtualService hosts before wildcards.
    let text = format!(
        "{}{}{}{}",
        vs("wide", "default", "['*.com']", "wide.dest"),
        vs("narrow", "default", "['*.example.com']", "narrow.dest"),
        vs("exact", "default", "[api.example.com]", "exact.dest"),
        "",
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (_, s) = h.get("api.example.com", "/").await;
        assert_eq!(s.unwrap().host(), "exact.dest");
        let (_, s) = h.get("web.example.com", "/").await;
        assert_eq!(s.unwrap().host(), "narrow.dest");
        let (_, s) = h.get("a.b.example.com:80", "/").await;
        assert_eq!(s.unwrap().host(), "narrow.dest");
        let (_, s) = h.get("other.com", "/").await;
        assert_eq!(s.unwrap().host(), "wide.dest");
        let (_, s) = h.get("example.com", "/").await;
        assert_eq!(
            s.unwrap().host(),
            "wide.dest",
            "*.example.com needs a label before it"
        );
    });
}

#[test]
fn wildcard_virtual_service_claims_registry_services() {
    // separateVSHostsAndServices: a wildcard host applies to the services it matches, with
    // every domain of those services.
    let text = format!(
        "{}{}",
        service("ratings", "default", &[9080]),
        vs(
            "all",
            "default",
            "['*.default.svc.cluster.local']",
            "canary.default.svc.cluster.local"
        )
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (_, s) = h.get("ratings", "/").await;
        assert_eq!(s.unwrap().host(), "canary.default.svc.cluster.local");
    });
}

#[test]
fn exact_virtual_service_wins_over_a_wildcard_one_for_a_service() {
    let text = format!(
        "{}{}{}",
        service("ratings", "default", &[9080]),
        vs(
            "all",
            "default",
            "['*.default.svc.cluster.local']",
            "wild.dest"
        ),
        vs("ratings", "default", "[ratings]", "exact.dest"),
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (_, s) = h.get("ratings.default:9080", "/").await;
        assert_eq!(s.unwrap().host(), "exact.dest");
    });
}

#[test]
fn first_virtual_service_for_a_host_wins_on_a_sidecar() {
    let text = format!(
        "{}{}{}",
        service("ratings", "default", &[9080]),
        vs("a", "default", "[ratings]", "first.dest"),
        vs("b", "default", "[ratings]", "second.dest"),
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (_, s) = h.get("ratings", "/").await;
        assert_eq!(s.unwrap().host(), "first.dest");
    });
}

#[test]
fn export_to_hides_virtual_services_from_other_namespaces() {
    // VirtualService.exportTo: "." exports only to the VirtualService's own namespace.
    let text = format!(
        "{}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: private, namespace: shop}}\nspec:\n  hosts: [ratings.shop.svc.cluster.local]\n  exportTo: ['.']\n  http:\n  - route: [{{destination: {{host: private.dest}}}}]\n",
        service("ratings", "shop", &[9080])
    );
    let s = snap(&text);
    block_on(async {
        let (_, seen) = Harness::sidecar(&s).get("ratings.shop", "/").await;
        assert_eq!(
            seen.unwrap().host(),
            "ratings.shop.svc.cluster.local",
            "default route"
        );
        let mut ctx = RouterContext::sidecar(&s);
        ctx.namespace = "shop".into();
        let (_, seen) = Harness::with_ctx(&s, &ctx).get("ratings", "/").await;
        assert_eq!(seen.unwrap().host(), "private.dest");
    });
}

#[test]
fn mesh_virtual_services_do_not_apply_to_gateways_and_back() {
    // VirtualService.gateways: default `mesh`; a named gateway applies to that gateway only.
    let text = format!(
        "{}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge, namespace: istio-system}}\nspec:\n  hosts: [bookinfo.com]\n  gateways: [ingress]\n  http:\n  - route: [{{destination: {{host: productpage.default.svc.cluster.local}}}}]\n",
        vs("m", "default", "[bookinfo.com]", "mesh.dest")
    );
    let s = snap(&text);
    let gw = Harness::with_ctx(&s, &RouterContext::gateway(&s, ["istio-system/ingress"]));
    let mesh = Harness::sidecar(&s);
    block_on(async {
        let (_, seen) = gw.get("bookinfo.com:8443", "/").await;
        assert_eq!(
            seen.unwrap().host(),
            "productpage.default.svc.cluster.local",
            "gateways ignore the port"
        );
        let (_, seen) = mesh.get("bookinfo.com", "/").await;
        assert_eq!(seen.unwrap().host(), "mesh.dest");
        let (res, seen) = gw.get("unknown.com", "/").await;
        assert_eq!(res.status(), 404, "gateways do not pass through");
        assert!(seen.is_none());
    });
}

#[test]
fn gateway_server_hosts_filter_and_narrow_virtual_service_hosts() {
    // Istio pickMatchingGatewayHosts: a VirtualService host is served where it meets a
    // server host (the narrower wins), and only if the server's `ns/` part admits the
    // VirtualService's namespace.
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/ingress]\n  http:\n  - route: [{destination: {host: web.shop.svc.cluster.local}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: other, namespace: team}\nspec:\n  hosts: [other.example.com]\n  gateways: [istio-system/ingress]\n  http:\n  - route: [{destination: {host: other.team.svc.cluster.local}}]\n";
    let s = snap(text);
    let mut ctx = RouterContext::gateway(&s, ["istio-system/ingress"]);
    ctx.servers = vec![mesh_routing::ServerHosts {
        gateway: "istio-system/ingress".into(),
        hosts: vec!["shop/web.example.com".into(), "./other.example.com".into()],
    }];
    let gw = Harness::with_ctx(&s, &ctx);
    block_on(async {
        let (_, seen) = gw.get("web.example.com", "/").await;
        assert_eq!(
            seen.unwrap().host(),
            "web.shop.svc.cluster.local",
            "`*` narrowed to the server's host"
        );
        let (res, seen) = gw.get("elsewhere.example.com", "/").await;
        assert_eq!(res.status(), 404, "not a host of the server");
        assert!(seen.is_none());
        let (res, seen) = gw.get("other.example.com", "/").await;
        assert_eq!(
            res.status(),
            404,
            "`./` admits the gateway's namespace only, not `team`"
        );
        assert!(seen.is_none());
    });
}

#[test]
fn virtual_service_with_no_applicable_route_leaves_the_default_route() {
    // buildSidecarVirtualHostsForVirtualService: no routes → no virtual host, so the
    // service keeps its default route.
    let text = format!(
        "{}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [ratings]\n  http:\n  - match: [{{gateways: [some-gw]}}]\n    route: [{{destination: {{host: other.dest}}}}]\n",
        service("ratings", "default", &[9080])
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (_, s) = h.get("ratings", "/").await;
        assert_eq!(s.unwrap().host(), "ratings.default.svc.cluster.local");
    });
}

#[test]
fn table_reports_its_virtual_hosts() {
    let s = snap(&format!(
        "{}{}",
        service("ratings", "default", &[9080]),
        vs("r", "default", "[ratings]", "x.dest")
    ));
    let t = RouteTable::sidecar(&s).unwrap();
    assert_eq!(
        t.virtual_host_for("ratings:9080"),
        Some("ratings.default.svc.cluster.local:default/r")
    );
    assert_eq!(t.virtual_host_for("nothing"), None);
    assert_eq!(t.route_count(), 1);
}

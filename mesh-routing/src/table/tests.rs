use super::build::{covers, service_domain_forms};
use super::lookup::first_match;
use super::*;

#[test]
fn domain_forms_follow_generate_alt_virtual_hosts() {
    // httproute.go generateAltVirtualHostsForKubernetesService
    let same = service_domain_forms(
        "reviews.default.svc.cluster.local",
        "default",
        "cluster.local",
    );
    assert!(same.contains(&"reviews".to_string()));
    assert!(same.contains(&"reviews.default".to_string()));
    assert!(same.contains(&"reviews.default.svc".to_string()));
    assert!(same.contains(&"reviews.default.svc.cluster.local.".to_string()));
    let other = service_domain_forms("reviews.default.svc.cluster.local", "prod", "cluster.local");
    assert!(!other.contains(&"reviews".to_string()));
    assert!(other.contains(&"reviews.default".to_string()));
    let ext = service_domain_forms("api.example.com", "default", "cluster.local");
    assert_eq!(
        ext,
        vec![
            "api.example.com".to_string(),
            "api.example.com.".to_string()
        ]
    );
}

mod indexed_matches_linear {
    //! The candidate index against the plain scan: the same route and block for every
    //! request, over random route lists and paths.

    use super::*;
    use mesh_core::compile::compile;
    use mesh_core::load::Loader;
    use proptest::prelude::*;

    const SEGMENTS: &[&str] = &[
        "", "a", "A", "ab", "aB", "api", "API", "v1", "v2", "x.y", "é",
    ];
    const REGEXES: &[&str] = &[
        "/a.*",
        "/api/[a-z0-9]+",
        "/ab+",
        "/A/.*",
        ".*",
        "/(a|b)/.*",
        r"/a\.b",
        "/api/v1",
        "/api/v[12]/.*",
        "(?i)/api/.*",
        r"/a\<b.*",
        "/ab*",
        "/x.y/?",
        "[/]api.*",
    ];

    /// A path-like literal: segments, cut anywhere (mid-segment too), maybe a query.
    fn literal() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(proptest::sample::select(SEGMENTS), 0..4),
            any::<prop::sample::Index>(),
            any::<bool>(),
            proptest::option::of(proptest::sample::select(&["?", "?q=1", "?Q"][..])),
        )
            .prop_map(|(segs, cut, cut_it, query)| {
                let mut s = String::new();
                for seg in segs {
                    s.push('/');
                    s.push_str(seg);
                }
                if cut_it && !s.is_empty() {
                    let mut at = cut.index(s.len() + 1);
                    while !s.is_char_boundary(at) {
                        at -= 1;
                    }
                    s.truncate(at);
                }
                if let Some(q) = query {
                    s.push_str(q);
                }
                s
            })
    }

    #[derive(Debug, Clone)]
    enum Uri {
        None,
        Exact(String),
        Prefix(String),
        Regex(&'static str),
    }

    #[derive(Debug, Clone)]
    struct Block {
        uri: Uri,
        ignore_case: bool,
        header: bool,
        query: bool,
        claim: bool,
    }

    fn block() -> impl Strategy<Value = Block> {
        let uri = prop_oneof![
            1 => Just(Uri::None),
            3 => literal().prop_map(Uri::Exact),
            4 => literal().prop_map(Uri::Prefix),
            2 => proptest::sample::select(REGEXES).prop_map(Uri::Regex),
        ];
        (
            uri,
            any::<bool>(),
            prop::bool::weighted(0.25),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(uri, ignore_case, header, query, claim)| Block {
                uri,
                ignore_case,
                header,
                query,
                claim,
            })
    }

    fn yaml(routes: &[Vec<Block>]) -> String {
        let mut y = String::from(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: p, namespace: default}\nspec:\n  hosts: [p.example.com]\n  http:\n",
        );
        for (i, blocks) in routes.iter().enumerate() {
            y.push_str(&format!("  - name: r{i}\n"));
            if !blocks.is_empty() {
                y.push_str("    match:\n");
            }
            for b in blocks {
                let mut c = Vec::new();
                match &b.uri {
                    Uri::None => {}
                    Uri::Exact(l) => c.push(format!("uri: {{exact: '{l}'}}")),
                    Uri::Prefix(l) => c.push(format!("uri: {{prefix: '{l}'}}")),
                    Uri::Regex(r) => c.push(format!("uri: {{regex: '{r}'}}")),
                }
                if b.ignore_case {
                    c.push("ignoreUriCase: true".into());
                }
                let mut headers = Vec::new();
                if b.header {
                    headers.push("x-h: {exact: '1'}");
                }
                if b.claim {
                    headers.push("'@request.auth.claims.sub': {exact: a}");
                }
                if !headers.is_empty() {
                    c.push(format!("headers: {{{}}}", headers.join(", ")));
                }
                if b.query {
                    c.push("queryParams: {q: {exact: '1'}}".into());
                }
                y.push_str(&format!("    - {{{}}}\n", c.join(", ")));
            }
            y.push_str(&format!(
                "    route: [{{destination: {{host: r{i}.dest}}}}]\n"
            ));
        }
        y
    }

    fn request_path() -> impl Strategy<Value = String> {
        (literal(), proptest::collection::vec(any::<bool>(), 8)).prop_map(|(l, flips)| {
            // Random case changes, so that ignoreUriCase and case-folded keys are exercised.
            let mut p: String = l
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, f)| if *f { c.to_ascii_uppercase() } else { c })
                .collect();
            if !p.starts_with('/') {
                p.insert(0, '/');
            }
            p.replace('é', "%C3%A9")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn same_route_as_linear_scan(
            routes in proptest::collection::vec(proptest::collection::vec(block(), 0..3), crate::index::INDEX_MIN_ROUTES..40),
            reqs in proptest::collection::vec((request_path(), any::<bool>()), 24),
        ) {
            let mut l = Loader::new();
            l.add_str("p.yaml", &yaml(&routes));
            let table = RouteTable::sidecar(&compile(l.finish().resources)).unwrap();
            let target = table.lookup("p.example.com").unwrap();
            let vhost = &table.vhosts[target.vhost as usize];
            // Every route survives validation and compilation, and the host is indexed.
            prop_assert_eq!(vhost.routes.len(), routes.len());
            prop_assert!(vhost.index.is_some());
            for (path, header) in &reqs {
                let mut b = Request::builder().uri(path.as_str()).header("host", "p.example.com");
                if *header {
                    b = b.header("x-h", "1");
                }
                let req = b.body(()).unwrap();
                let mut view = view_of(&req, table.source(None));
                let got = table.select(&mut view);
                let want = first_match(vhost.routes.iter(), &view);
                let id = |s: &Selected<'_>| match s {
                    Selected::Route { route, block, .. } => Some((Arc::as_ptr(route), *block)),
                    _ => None,
                };
                let name = |s: &Selected<'_>| match s {
                    Selected::Route { route, .. } => route.policy.route_name.clone(),
                    _ => None,
                };
                prop_assert_eq!(id(&got), id(&want), "path {} header {}: got {:?}, want {:?}", path, header, name(&got), name(&want));
            }
        }
    }
}

#[test]
fn covers_handles_wildcards_on_both_sides() {
    assert!(covers("*.example.com", "a.example.com"));
    assert!(covers("*.com", "*.example.com"));
    assert!(!covers("*.example.com", "example.com"));
    assert!(!covers("a.example.com", "*.example.com"));
}

mod rate_limits {
    //! `LocalRateLimit`s narrower than the listener become each route's bucket.

    use super::*;

    fn table(limits: &str) -> RouteTable {
        let mut yaml = String::new();
        for h in ["reviews", "ratings", "details"] {
            yaml.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {h}}}\nspec:\n  hosts: [{h}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 10.0.0.1}}]\n"
            ));
        }
        yaml.push_str(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews, details]\n  http:\n  - name: r1\n    match: [{uri: {prefix: /one}}]\n    route: [{destination: {host: reviews}}]\n  - name: r2\n    route: [{destination: {host: reviews}}]\n",
        );
        yaml.push_str(limits);
        let c = mesh_core::config::load_str("t.yaml", &yaml).unwrap();
        RouteTable::sidecar(&c.snapshot).unwrap()
    }

    fn limit(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: mesh.proxy/v1alpha1\nkind: LocalRateLimit\nmetadata: {{name: {name}}}\nspec:\n{spec}  tokenBucket: {{maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}}\n"
        )
    }

    /// The limits of the routes of `host`'s virtual host, in order.
    fn limits_of(
        t: &RouteTable,
        host: &str,
    ) -> Vec<Option<Arc<mesh_core::ratelimit::RateLimitPolicy>>> {
        let target = t.lookup(host).unwrap();
        t.vhosts[target.vhost as usize]
            .routes
            .iter()
            .map(|r| r.policy.rate_limit.clone())
            .collect()
    }

    #[test]
    fn without_limits_no_route_has_one() {
        let t = table("");
        for h in ["reviews", "ratings", "details"] {
            assert!(limits_of(&t, h).iter().all(Option::is_none), "{h}");
        }
    }

    #[test]
    fn a_route_limit_gives_each_route_of_that_name_its_bucket() {
        let t = table(&limit("by-route", "  routes: [r1]\n"));
        let reviews = limits_of(&t, "reviews");
        assert!(reviews[0].is_some() && reviews[1].is_none(), "{reviews:?}");
        assert!(
            limits_of(&t, "ratings")[0].is_none(),
            "other routes are unaffected"
        );
        // the VirtualService's other host: its own copy of r1, with its own bucket
        let details = limits_of(&t, "details");
        let (Some(a), Some(b)) = (&reviews[0], &details[0]) else {
            panic!("{details:?}")
        };
        assert!(!Arc::ptr_eq(a, b), "a bucket per route of each host");
    }

    #[test]
    fn a_host_limit_gives_the_virtual_host_one_bucket_and_leaves_the_vss_other_host_alone() {
        // the VirtualService serves reviews and details; the limit names details only
        let t = table(&limit("by-host", "  hosts: [details]\n"));
        let details = limits_of(&t, "details");
        let (Some(a), Some(b)) = (&details[0], &details[1]) else {
            panic!("{details:?}")
        };
        assert!(Arc::ptr_eq(a, b), "one bucket for the host's routes");
        assert!(limits_of(&t, "reviews").iter().all(Option::is_none));
        assert!(limits_of(&t, "ratings")[0].is_none());
        // a service without a VirtualService: its default route
        let t = table(&limit("by-host", "  hosts: [ratings]\n"));
        assert!(limits_of(&t, "ratings")[0].is_some());
    }

    #[test]
    fn a_route_limit_within_a_host_is_narrower_than_the_hosts_limit() {
        let t = table(
            &(limit("host", "  hosts: [reviews]\n")
                + &limit("route", "  hosts: [reviews]\n  routes: [r1]\n")),
        );
        let reviews = limits_of(&t, "reviews");
        let (Some(r1), Some(r2)) = (&reviews[0], &reviews[1]) else {
            panic!("{reviews:?}")
        };
        assert!(!Arc::ptr_eq(r1, r2), "r1 has its own bucket, r2 the host's");
        assert!(limits_of(&t, "details").iter().all(Option::is_none));
    }

    #[test]
    fn a_listener_limit_is_not_a_route_limit() {
        // the listener-wide bucket is the rate limit layer's own
        let t = table(&limit("all", ""));
        assert!(limits_of(&t, "reviews").iter().all(Option::is_none));
    }
}

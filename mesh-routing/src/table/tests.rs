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

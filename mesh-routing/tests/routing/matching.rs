//! HTTPMatchRequest semantics (Istio `TranslateRouteMatch` / `sourceMatchHTTP`, Envoy
//! `RouteMatch` / `HeaderMatcher` / `QueryParameterMatcher`).

use mesh_core::ext::SourceWorkload;
use mesh_routing::RouterContext;

use crate::support::*;

/// A VirtualService on `web.example.com` whose rules each route to `r<i>.example.com`.
fn vs(rules: &[&str]) -> String {
    let mut http = String::new();
    for (i, r) in rules.iter().enumerate() {
        if *r == "{}" {
            http.push_str(&format!(
                "  - route: [{{destination: {{host: r{i}.example.com}}}}]\n"
            ));
        } else {
            http.push_str(&format!(
                "  - {r}\n    route: [{{destination: {{host: r{i}.example.com}}}}]\n"
            ));
        }
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: default}}\nspec:\n  hosts: [web.example.com]\n  http:\n{http}"
    )
}

fn harness(rules: &[&str]) -> Harness {
    Harness::sidecar(&snap(&vs(rules)))
}

/// Which rule the request went to (`None`: 404).
fn rule_for(h: &Harness, req: http::Request<String>) -> Option<usize> {
    block_on(async {
        let (res, seen) = h.send(req).await;
        if res.status() == 404 {
            return None;
        }
        let host = seen.unwrap().host().to_string();
        host.strip_prefix('r')
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok())
    })
}

fn get(path: &str) -> http::Request<String> {
    req("web.example.com", path).body(String::new()).unwrap()
}

#[test]
fn uri_prefix_matches_the_start_of_path_including_query() {
    // Envoy RouteMatch.prefix: "the prefix must match the beginning of the :path header".
    let h = harness(&["match: [{uri: {prefix: /api}}]"]);
    assert_eq!(rule_for(&h, get("/api")), Some(0));
    assert_eq!(rule_for(&h, get("/apiv2/x")), Some(0));
    assert_eq!(rule_for(&h, get("/ap?i")), None);
    let h = harness(&["match: [{uri: {prefix: '/a?x=1'}}]"]);
    assert_eq!(
        rule_for(&h, get("/a?x=1&y=2")),
        Some(0),
        ":path includes the query"
    );
}

#[test]
fn uri_exact_matches_the_path_without_query() {
    // Envoy RouteMatch.path: "must exactly match the :path header once the query string is removed".
    let h = harness(&["match: [{uri: {exact: /login}}]"]);
    assert_eq!(rule_for(&h, get("/login")), Some(0));
    assert_eq!(rule_for(&h, get("/login?next=/")), Some(0));
    assert_eq!(rule_for(&h, get("/login/")), None);
}

#[test]
fn uri_regex_is_a_full_match_of_the_path_without_query() {
    // Envoy RouteMatch.safe_regex: "The entire path (without the query string) must match".
    let h = harness(&["match: [{uri: {regex: '/users/[0-9]+'}}]"]);
    assert_eq!(rule_for(&h, get("/users/42")), Some(0));
    assert_eq!(rule_for(&h, get("/users/42?x=1")), Some(0));
    assert_eq!(rule_for(&h, get("/users/42/x")), None);
    assert_eq!(rule_for(&h, get("/v1/users/42")), None);
}

#[test]
fn ignore_uri_case_applies_to_exact_and_prefix_not_regex() {
    // Istio: ignoreUriCase → Envoy case_sensitive: false (prefix and path only; RE2 is
    // case-sensitive unless the pattern says (?i)).
    let h = harness(&[
        "match: [{uri: {prefix: /API}, ignoreUriCase: true}]",
        "match: [{uri: {exact: /Login}, ignoreUriCase: true}]",
        "match: [{uri: {regex: '/Re'}, ignoreUriCase: true}]",
    ]);
    assert_eq!(rule_for(&h, get("/api/x")), Some(0));
    assert_eq!(rule_for(&h, get("/LOGIN")), Some(1));
    assert_eq!(rule_for(&h, get("/Re")), Some(2));
    assert_eq!(rule_for(&h, get("/re")), None);
    let h = harness(&["match: [{uri: {prefix: /API}}]"]);
    assert_eq!(rule_for(&h, get("/api")), None, "case-sensitive by default");
}

#[test]
fn method_scheme_and_authority_match_pseudo_headers() {
    // TranslateRouteMatch: method/authority/scheme become :method/:authority/:scheme matchers.
    let h = harness(&[
        "match: [{method: {exact: POST}}]",
        "match: [{scheme: {exact: https}}]",
        "match: [{authority: {prefix: 'web.example.com:8'}}]",
        "match: [{authority: {regex: 'web\\.example\\.com'}}]",
    ]);
    let post = req("web.example.com", "/")
        .method("POST")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, post), Some(0));
    let https = http::Request::builder()
        .uri("https://web.example.com/")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, https), Some(1));
    // :authority carries the port as sent; this host is served on port 80 only.
    let ported = req("web.example.com:80", "/").body(String::new()).unwrap();
    assert_eq!(rule_for(&h, ported), Some(2));
    assert_eq!(rule_for(&h, get("/")), Some(3));
}

#[test]
fn header_exact_prefix_regex_and_presence() {
    // translateHeaderMatch: exact/prefix/safe_regex string matchers; `{}` and regex "*" are
    // present_match (canBeConvertedToPresentMatch).
    let h = harness(&[
        "match: [{headers: {x-a: {exact: one}}}]",
        "match: [{headers: {x-b: {prefix: pre}}}]",
        "match: [{headers: {x-c: {regex: 'v[0-9]'}}}]",
        "match: [{headers: {x-d: {}}}]",
        "match: [{headers: {x-e: {regex: '*'}}}]",
    ]);
    let with = |k: &str, v: &str| {
        req("web.example.com", "/")
            .header(k, v)
            .body(String::new())
            .unwrap()
    };
    assert_eq!(rule_for(&h, with("x-a", "one")), Some(0));
    assert_eq!(rule_for(&h, with("x-a", "one1")), None);
    assert_eq!(rule_for(&h, with("x-b", "prefix")), Some(1));
    assert_eq!(rule_for(&h, with("x-c", "v1")), Some(2));
    assert_eq!(
        rule_for(&h, with("x-c", "v10")),
        None,
        "regex is a full match"
    );
    assert_eq!(
        rule_for(&h, with("x-d", "")),
        Some(3),
        "presence, even with an empty value"
    );
    assert_eq!(rule_for(&h, with("x-e", "anything")), Some(4));
    assert_eq!(rule_for(&h, get("/")), None);
}

#[test]
fn header_names_are_case_insensitive() {
    // HTTP header names are case-insensitive; Envoy lowercases them.
    let h = harness(&["match: [{headers: {End-User: {exact: jason}}}]"]);
    let r = req("web.example.com", "/")
        .header("END-USER", "jason")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, r), Some(0));
}

#[test]
fn header_values_are_case_sensitive() {
    let h = harness(&["match: [{headers: {end-user: {exact: jason}}}]"]);
    let r = req("web.example.com", "/")
        .header("end-user", "Jason")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, r), None);
}

#[test]
fn repeated_headers_match_as_a_comma_joined_value() {
    // Envoy HeaderUtility::getAllOfHeaderAsString joins repeated headers with ','.
    let h = harness(&["match: [{headers: {x-a: {exact: 'a,b'}}}]"]);
    let r = req("web.example.com", "/")
        .header("x-a", "a")
        .header("x-a", "b")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, r), Some(0));
}

#[test]
fn without_headers_treats_a_missing_header_as_empty_and_inverts() {
    // route.go TranslateRouteMatch: withoutHeaders → invert_match: true and
    // treat_missing_header_as_empty: true (except present matches).
    let h = harness(&["match: [{withoutHeaders: {x-canary: {exact: 'yes'}}}]"]);
    assert_eq!(rule_for(&h, get("/")), Some(0), "missing header matches");
    let r = |v: &str| {
        req("web.example.com", "/")
            .header("x-canary", v)
            .body(String::new())
            .unwrap()
    };
    assert_eq!(rule_for(&h, r("yes")), None);
    assert_eq!(rule_for(&h, r("no")), Some(0));

    // exact "": a missing header is "", which matches, so the inverted matcher fails.
    let h = harness(&["match: [{withoutHeaders: {x-id: {exact: ''}}}]"]);
    assert_eq!(rule_for(&h, get("/")), None);
    assert_eq!(rule_for(&h, r("x")), None, "other header");
    let with_id = req("web.example.com", "/")
        .header("x-id", "7")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, with_id), Some(0));

    // `{}`: inverted presence (no treat_missing_header_as_empty): only absent headers match.
    let h = harness(&["match: [{withoutHeaders: {x-debug: {}}}]"]);
    assert_eq!(rule_for(&h, get("/")), Some(0));
    let dbg = req("web.example.com", "/")
        .header("x-debug", "")
        .body(String::new())
        .unwrap();
    assert_eq!(rule_for(&h, dbg), None);

    // regex: a missing header is "", which `.+` does not match, so the block matches.
    let h = harness(&["match: [{withoutHeaders: {x-user: {regex: '.+'}}}]"]);
    assert_eq!(rule_for(&h, get("/")), Some(0));
}

#[test]
fn query_params_exact_prefix_regex_and_bare_keys() {
    // translateQueryParamMatch / Envoy QueryParameterMatcher: first value of the name; a bare
    // key has the value "" so `exact: ""` matches `?debug`.
    let h = harness(&[
        "match: [{queryParams: {v: {exact: '2'}}}]",
        "match: [{queryParams: {tag: {prefix: beta}}}]",
        "match: [{queryParams: {id: {regex: '[0-9]+'}}}]",
        "match: [{queryParams: {debug: {exact: ''}}}]",
    ]);
    assert_eq!(rule_for(&h, get("/?v=2")), Some(0));
    assert_eq!(rule_for(&h, get("/?x=1&v=2")), Some(0));
    assert_eq!(rule_for(&h, get("/?v=22")), None);
    assert_eq!(rule_for(&h, get("/?tag=beta-1")), Some(1));
    assert_eq!(rule_for(&h, get("/?id=123")), Some(2));
    assert_eq!(rule_for(&h, get("/?id=12a")), None);
    assert_eq!(rule_for(&h, get("/?debug")), Some(3));
    assert_eq!(rule_for(&h, get("/?debug=")), Some(3));
    assert_eq!(
        rule_for(&h, get("/")),
        None,
        "a missing parameter never matches"
    );
}

#[test]
fn port_matches_the_destination_port() {
    // TranslateRoute: a match whose port differs from the listener port is not generated.
    let text = format!(
        "{}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{port: 9090}}]\n    route: [{{destination: {{host: reviews, subset: admin}}}}]\n  - route: [{{destination: {{host: reviews, subset: main}}}}]\n",
        service("reviews", "default", &[9080, 9090])
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let (_, s) = h.get("reviews:9090", "/").await;
        assert_eq!(s.unwrap().subset(), Some("admin"));
        let (_, s) = h.get("reviews:9080", "/").await;
        let s = s.unwrap();
        assert_eq!(s.subset(), Some("main"));
        assert_eq!(
            s.port(),
            Some(9080),
            "no destination port: the request's port"
        );
    });
}

fn source_vs() -> String {
    vs(&[
        "match: [{sourceLabels: {app: productpage}, sourceNamespace: shop}]",
        "match: [{sourceLabels: {app: productpage}}]",
        "match: [{sourceNamespace: other}]",
    ])
}

#[test]
fn source_labels_and_namespace_use_the_router_context() {
    // sourceMatchHTTP: sourceLabels ⊆ the proxy's labels, and sourceNamespace equal.
    let s = snap(&source_vs());
    let mut ctx = RouterContext::sidecar(&s);
    ctx.labels.insert("app".into(), "productpage".into());
    ctx.labels.insert("version".into(), "v1".into());
    let h = Harness::with_ctx(&s, &ctx);
    assert_eq!(rule_for(&h, get("/")), Some(1), "namespace default ≠ shop");
    ctx.namespace = "shop".into();
    // A VirtualService in `default` is exported everywhere by default.
    let h = Harness::with_ctx(&s, &ctx);
    assert_eq!(rule_for(&h, get("/")), Some(0));
}

#[test]
fn source_workload_extension_overrides_the_context() {
    let h = Harness::sidecar(&snap(&source_vs()));
    assert_eq!(rule_for(&h, get("/")), None);
    let mut r = get("/");
    r.extensions_mut().insert(SourceWorkload {
        labels: std::sync::Arc::new([("app".to_string(), "productpage".to_string())].into()),
        namespace: "shop".into(),
    });
    assert_eq!(rule_for(&h, r), Some(0));
    let mut r = get("/");
    r.extensions_mut().insert(SourceWorkload {
        labels: Default::default(),
        namespace: "other".into(),
    });
    assert_eq!(rule_for(&h, r), Some(2));
}

#[test]
fn match_level_gateways_replace_the_virtual_service_gateways() {
    // sourceMatchHTTP: a match with gateways applies only to those gateways (and then
    // sourceLabels are not checked).
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: default}\nspec:\n  hosts: [web.example.com]\n  gateways: [mesh, edge]\n  http:\n  - match: [{gateways: [edge], sourceLabels: {never: x}}]\n    route: [{destination: {host: r0.example.com}}]\n  - match: [{gateways: [mesh]}]\n    route: [{destination: {host: r1.example.com}}]\n";
    let s = snap(text);
    let mesh = Harness::sidecar(&s);
    assert_eq!(rule_for(&mesh, get("/")), Some(1));
    let gw = Harness::with_ctx(&s, &RouterContext::gateway(&s, ["default/edge"]));
    assert_eq!(rule_for(&gw, get("/")), Some(0));
}

#[test]
fn and_within_a_block_or_across_blocks() {
    // HTTPRoute.match: "All conditions inside a single match block have AND semantics, while
    // the list of match blocks have OR semantics."
    let h =
        harness(&["match: [{uri: {prefix: /a}, headers: {x: {exact: '1'}}}, {uri: {prefix: /b}}]"]);
    let with = |p: &str| {
        req("web.example.com", p)
            .header("x", "1")
            .body(String::new())
            .unwrap()
    };
    assert_eq!(rule_for(&h, with("/a")), Some(0));
    assert_eq!(rule_for(&h, get("/a")), None);
    assert_eq!(rule_for(&h, get("/b")), Some(0));
}

#[test]
fn first_matching_rule_wins_and_a_rule_without_match_catches_all() {
    // VirtualService.http: "The first rule matching an incoming request is used."
    let h = harness(&[
        "match: [{uri: {prefix: /a}}]",
        "match: [{uri: {prefix: /}}]",
        "{}",
    ]);
    assert_eq!(rule_for(&h, get("/a/b")), Some(0));
    assert_eq!(rule_for(&h, get("/z")), Some(1));
    let h = harness(&[
        "match: [{uri: {prefix: /a}}]",
        "{}",
        "match: [{uri: {prefix: /b}}]",
    ]);
    assert_eq!(
        rule_for(&h, get("/b")),
        Some(1),
        "the catch-all shadows later rules"
    );
}

#[test]
fn no_matching_rule_is_404_nr() {
    // Envoy: no route → 404 with response flag NR.
    let h = harness(&["match: [{uri: {exact: /only}}]"]);
    block_on(async {
        let (res, seen) = h.get("web.example.com", "/other").await;
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()["x-mesh-response-flags"], "NR");
        assert!(seen.is_none());
    });
}

#[test]
fn jwt_claim_matches_never_match_without_authentication_metadata() {
    // route.go translateMetadataMatch: @request.auth.claims.* are dynamic metadata matchers.
    let h = harness(&[
        "match: [{headers: {'@request.auth.claims.group': {exact: admin}}}]",
        "{}",
    ]);
    assert_eq!(rule_for(&h, get("/")), Some(1));
}

#[test]
fn invalid_regex_fails_the_build_naming_the_field() {
    let s = snap(&vs(&["match: [{uri: {regex: '(unclosed'}}]"]));
    let err = mesh_routing::RouteTable::sidecar(&s).unwrap_err();
    assert_eq!(
        err.resource.as_ref().map(ToString::to_string).as_deref(),
        Some("VirtualService/default/web"),
        "{err}"
    );
    assert_eq!(
        err.field.to_string(),
        "spec.http[0].match[0].uri.regex",
        "{err}"
    );
}

#[test]
fn regex_size_limit_is_applied() {
    let s = snap(&vs(&[
        "match: [{headers: {x: {regex: '[a-z]{1,50}[0-9]{1,50}'}}}]",
    ]));
    let mut ctx = RouterContext::sidecar(&s);
    ctx.regex_size_limit = 100;
    assert!(mesh_routing::RouteTable::new(&s, &ctx).is_err());
    ctx.regex_size_limit = 1 << 20;
    assert!(mesh_routing::RouteTable::new(&s, &ctx).is_ok());
}

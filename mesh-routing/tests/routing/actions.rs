//! HTTPRoute actions (Istio `TranslateRoute`, `ApplyRedirect`, `ApplyDirectResponse`,
//! `applyHTTPRouteDestination`, `TranslateCORSPolicy`, `MirrorPercent`; Envoy's router,
//! CORS filter and shadowing), plus policies, sticky sessions and delegation.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_core::ext::{RouteDestination, route_destination};
use mesh_core::policy::AbortError;
use mesh_routing::{MirrorLayer, RouteLayer, RouteTable};
use tower::{Layer, ServiceExt};

use crate::support::*;

fn web(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: default}}\nspec:\n  hosts: [web.example.com]\n  http:\n{http}"
    )
}

fn h(http: &str) -> Harness {
    Harness::sidecar(&snap(&web(http)))
}

async fn location(h: &Harness, host: &str, path: &str) -> (u16, String) {
    let (res, seen) = h.get(host, path).await;
    assert!(seen.is_none(), "redirects are answered by the router");
    let loc = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (res.status().as_u16(), loc)
}

#[test]
fn redirect_defaults_to_301_and_keeps_the_query() {
    // ApplyRedirect: redirectCode 0 → MOVED_PERMANENTLY; Envoy path_redirect keeps the
    // request's query unless the new path has one.
    let h = h("  - redirect: {uri: /v2}\n");
    block_on(async {
        assert_eq!(
            location(&h, "web.example.com", "/v1?a=1").await,
            (301, "http://web.example.com/v2?a=1".into())
        );
    });
    let h2 = self::h("  - redirect: {uri: '/v2?b=2'}\n");
    block_on(async {
        assert_eq!(
            location(&h2, "web.example.com", "/v1?a=1").await.1,
            "http://web.example.com/v2?b=2"
        );
    });
}

#[test]
fn redirect_authority_scheme_port_and_code() {
    let h = h(concat!(
        "  - match: [{uri: {prefix: /a}}]\n    redirect: {authority: new.example.com, scheme: https, redirectCode: 308}\n",
        "  - match: [{uri: {prefix: /b}}]\n    redirect: {port: 8443, scheme: https}\n",
        "  - match: [{uri: {prefix: /c}}]\n    redirect: {derivePort: FROM_REQUEST_PORT}\n",
        "  - match: [{uri: {prefix: /d}}]\n    redirect: {port: 80}\n",
        "  - match: [{uri: {prefix: /e}}]\n    redirect: {scheme: https}\n",
        "  - match: [{uri: {prefix: /f}}]\n    redirect: {redirectCode: 302, uri: /x}\n",
    ));
    block_on(async {
        assert_eq!(
            location(&h, "web.example.com", "/a/1").await,
            (308, "https://new.example.com/a/1".into())
        );
        // port_redirect replaces the request's port.
        assert_eq!(
            location(&h, "web.example.com:80", "/b").await.1,
            "https://web.example.com:8443/b"
        );
        // FROM_REQUEST_PORT: Istio uses the listener port (here the request's), drops :80 for
        // http, and Envoy then keeps the request's host as sent.
        assert_eq!(
            location(&h, "web.example.com:80", "/c").await.1,
            "http://web.example.com:80/c"
        );
        assert_eq!(
            location(&h, "web.example.com", "/c").await.1,
            "http://web.example.com/c"
        );
        // ApplyRedirect drops an explicit :80 for http.
        assert_eq!(
            location(&h, "web.example.com", "/d").await.1,
            "http://web.example.com/d"
        );
        // Envoy processRequestHost: switching http→https drops the old default port.
        assert_eq!(
            location(&h, "web.example.com:80", "/e").await.1,
            "https://web.example.com/e"
        );
        assert_eq!(
            location(&h, "web.example.com", "/f").await,
            (302, "http://web.example.com/x".into())
        );
    });
}

#[test]
fn redirect_prefix_rewrite_replaces_the_matched_prefix() {
    // HTTPRedirect.redirectPrefixRewrite → Envoy prefix_rewrite on the redirect.
    let h = h("  - match: [{uri: {prefix: /old}}]\n    redirect: {prefixRewrite: /new}\n");
    block_on(async {
        assert_eq!(
            location(&h, "web.example.com", "/old/page?q=1").await.1,
            "http://web.example.com/new/page?q=1"
        );
    });
}

#[test]
fn unsupported_redirect_code_drops_the_route_with_a_warning() {
    // ApplyRedirect: "Redirect Code %d is not yet supported" → no action.
    let s = snap(&web("  - redirect: {uri: /x, redirectCode: 305}\n"));
    let t = RouteTable::sidecar(&s).unwrap();
    assert_eq!(t.warnings().len(), 1);
    let w = &t.warnings()[0];
    assert_eq!(w.field.to_string(), "spec.http[0].redirect.redirectCode");
    assert_eq!(
        w.resource.as_ref().map(|r| r.kind),
        Some(mesh_core::model::Kind::VirtualService)
    );
    assert_eq!(t.route_count(), 0);
}

#[test]
fn direct_response_with_string_and_base64_bodies() {
    // ApplyDirectResponse: status with inline_string or inline_bytes.
    let h = h(concat!(
        "  - match: [{uri: {exact: /s}}]\n    directResponse: {status: 503, body: {string: unavailable}}\n",
        "  - match: [{uri: {exact: /b}}]\n    directResponse: {status: 200, body: {bytes: aGVsbG8=}}\n",
        "  - match: [{uri: {exact: /e}}]\n    directResponse: {status: 204}\n    headers: {response: {set: {x-why: direct}}}\n",
    ));
    block_on(async {
        use http_body_util::BodyExt;
        let (res, seen) = h.get("web.example.com", "/s").await;
        assert!(seen.is_none());
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["content-type"], "text/plain");
        assert_eq!(
            &res.into_body().collect().await.unwrap().to_bytes()[..],
            b"unavailable"
        );
        let (res, _) = h.get("web.example.com", "/b").await;
        assert_eq!(
            &res.into_body().collect().await.unwrap().to_bytes()[..],
            b"hello"
        );
        let (res, _) = h.get("web.example.com", "/e").await;
        assert_eq!(res.status(), 204);
        assert_eq!(
            res.headers()["x-why"],
            "direct",
            "route response headers apply to direct responses"
        );
    });
}

#[test]
fn rewrite_uri_replaces_the_matched_prefix_or_whole_path() {
    // Envoy prefix_rewrite: the matched prefix (prefix routes) or the path (path routes); the
    // query is kept. Without a uri match Istio's match is `prefix: /`.
    let h = h(concat!(
        "  - match: [{uri: {prefix: /api/v1}}]\n    rewrite: {uri: /v1}\n    route: [{destination: {host: a.dest}}]\n",
        "  - match: [{uri: {exact: /login}}]\n    rewrite: {uri: /auth/login}\n    route: [{destination: {host: a.dest}}]\n",
        "  - match: [{uri: {prefix: /API2}, ignoreUriCase: true}]\n    rewrite: {uri: /two}\n    route: [{destination: {host: a.dest}}]\n",
        "  - rewrite: {uri: /root/}\n    route: [{destination: {host: a.dest}}]\n",
    ));
    block_on(async {
        let (_, s) = h.get("web.example.com", "/api/v1/users?id=1").await;
        assert_eq!(s.unwrap().path(), "/v1/users?id=1");
        let (_, s) = h.get("web.example.com", "/login?next=%2F").await;
        assert_eq!(s.unwrap().path(), "/auth/login?next=%2F");
        let (_, s) = h.get("web.example.com", "/api2/x").await;
        assert_eq!(s.unwrap().path(), "/two/x");
        let (_, s) = h.get("web.example.com", "/page").await;
        assert_eq!(s.unwrap().path(), "/root/page");
    });
}

#[test]
fn uri_regex_rewrite_uses_capture_groups_on_the_path() {
    // HTTPRewrite.uriRegexRewrite → Envoy regex_rewrite (RE2 GlobalReplace on the path; the
    // query string is not rewritten).
    let h = h(
        "  - rewrite: {uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}\n    route: [{destination: {host: a.dest}}]\n",
    );
    block_on(async {
        let (_, s) = h.get("web.example.com", "/service/foo/v1/api?x=1").await;
        assert_eq!(s.unwrap().path(), "/v1/api/instance/foo?x=1");
    });
}

#[test]
fn rewrite_authority_and_header_authority() {
    // applyHTTPRouteDestination: rewrite.authority wins over a headers `:authority`, which
    // wins over a destination-level one.
    let h = h(concat!(
        "  - match: [{uri: {prefix: /a}}]\n    rewrite: {authority: rewritten.example.com}\n    headers: {request: {set: {':authority': hdr.example.com}}}\n    route: [{destination: {host: a.dest}}]\n",
        "  - match: [{uri: {prefix: /b}}]\n    headers: {request: {set: {host: hdr.example.com}}}\n    route: [{destination: {host: a.dest}}]\n",
        "  - route:\n    - destination: {host: a.dest}\n      headers: {request: {set: {':authority': dest.example.com}}}\n",
    ));
    block_on(async {
        let (_, s) = h.get("web.example.com", "/a").await;
        assert_eq!(s.unwrap().header("host"), Some("rewritten.example.com"));
        let (_, s) = h.get("web.example.com", "/b").await;
        assert_eq!(s.unwrap().header("host"), Some("hdr.example.com"));
        let (_, s) = h.get("web.example.com", "/c").await;
        assert_eq!(s.unwrap().header("host"), Some("dest.example.com"));
    });
}

#[test]
fn header_operations_on_request_and_response_at_route_and_destination_level() {
    // TranslateHeadersOperations: set → OVERWRITE_IF_EXISTS_OR_ADD, add →
    // APPEND_IF_EXISTS_OR_ADD, remove; Envoy removes before it adds. Destination-level
    // operations come after the route's (processDestination).
    let h = h(concat!(
        "  - headers:\n",
        "      request: {set: {x-set: route, x-over: route}, add: {x-add: a2}, remove: [x-drop]}\n",
        "      response: {set: {x-resp: route}, add: {x-upstream: added}, remove: [x-secret]}\n",
        "    route:\n",
        "    - destination: {host: a.dest}\n",
        "      headers:\n",
        "        request: {set: {x-over: dest}}\n",
        "        response: {add: {x-dest: d}}\n",
    ));
    block_on(async {
        let r = req("web.example.com", "/")
            .header("x-set", "client")
            .header("x-add", "a1")
            .header("x-drop", "1")
            .body(String::new())
            .unwrap();
        let (res, s) = h.send(r).await;
        let s = s.unwrap();
        assert_eq!(s.header("x-set"), Some("route"));
        assert_eq!(s.header("x-over"), Some("dest"));
        let adds: Vec<_> = s
            .parts
            .headers
            .get_all("x-add")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(adds, ["a1", "a2"]);
        assert!(s.header("x-drop").is_none());
        assert_eq!(res.headers()["x-resp"], "route");
        assert_eq!(res.headers().get_all("x-upstream").iter().count(), 2);
        assert_eq!(res.headers()["x-dest"], "d");
    });
}

/// Envoy reads `request_headers_to_add` / `response_headers_to_add` values (which Istio
/// fills from `headers.request` / `headers.response`) as format strings: `%%` is `%`,
/// `%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(h?alt)%`, `%PROTOCOL:max%`… are evaluated per request,
/// and a value that formats to nothing is not added (`keep_empty_value: false`).
#[test]
fn header_values_are_envoy_format_strings() {
    let h = h(concat!(
        "  - headers:\n",
        "      request:\n",
        "        set: {x-client: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%', x-pct: '100%%', x-proto: '%PROTOCOL%'}\n",
        "        add: {x-user-copy: '%REQ(x-none?x-user)%', x-proto-name: '%PROTOCOL:4%', x-upstream: '%UPSTREAM_HOST%'}\n",
        "      response:\n",
        "        set: {x-served-for: 'user=%REQ(x-user)%'}\n",
        "    route:\n",
        "    - destination: {host: a.dest}\n",
        "      headers: {request: {set: {x-port: '%DOWNSTREAM_REMOTE_PORT%'}}}\n",
    ));
    block_on(async {
        let mut r = req("web.example.com", "/")
            .header("x-user", "jason")
            .body(String::new())
            .unwrap();
        r.extensions_mut().insert(mesh_core::ext::ClientAddr(
            "10.0.0.7:41000".parse().unwrap(),
        ));
        let (res, s) = h.send(r).await;
        let s = s.unwrap();
        assert_eq!(s.header("x-client"), Some("10.0.0.7"));
        assert_eq!(s.header("x-port"), Some("41000"));
        assert_eq!(s.header("x-pct"), Some("100%"));
        assert_eq!(s.header("x-proto"), Some("HTTP/1.1"));
        assert_eq!(s.header("x-user-copy"), Some("jason"));
        assert_eq!(s.header("x-proto-name"), Some("HTTP"));
        assert!(
            s.header("x-upstream").is_none(),
            "formats to nothing: not added"
        );
        assert_eq!(res.headers()["x-served-for"], "user=jason");
        // without a client address the operators format to nothing
        let (_, s) = h.get("web.example.com", "/").await;
        let s = s.unwrap();
        assert!(s.header("x-client").is_none());
        assert_eq!(s.header("x-pct"), Some("100%"));
    });
}

/// Envoy rejects a route configuration with a malformed or unknown format operator; so does
/// the table build, naming the field.
#[test]
fn malformed_header_formats_refuse_the_table() {
    for (value, why) in [
        ("'50%'", "Un-escaped %"),
        // Istio's validateHeaderValue: nothing but '%' may follow the arguments
        (
            "'%REQ(x-user):4%'",
            "Expecting '%' or whitespace after 'REQ(x-user)'",
        ),
        ("'%NOT_AN_OPERATOR%'", "unsupported"),
    ] {
        let s = snap(&web(&format!(
            "  - headers: {{request: {{set: {{x-a: {value}}}}}}}\n    route: [{{destination: {{host: a.dest}}}}]\n"
        )));
        let e = RouteTable::sidecar(&s).expect_err(value).to_string();
        assert!(e.contains("headers.request.set.x-a"), "{e}");
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn weighted_destinations_subsets_ports_and_zero_weights() {
    // applyHTTPRouteDestination: weight/sum; 0-weight clusters are dropped when there are
    // others; a single destination needs no weight.
    let h = h(concat!(
        "  - match: [{uri: {prefix: /single}}]\n    route: [{destination: {host: one.dest, subset: v1, port: {number: 8080}}, weight: 0}]\n",
        "  - route:\n    - {destination: {host: a.dest, subset: v1}, weight: 75}\n    - {destination: {host: a.dest, subset: v2}, weight: 25}\n    - {destination: {host: a.dest, subset: never}, weight: 0}\n",
    ));
    block_on(async {
        let (_, s) = h.get("web.example.com", "/single").await;
        let s = s.unwrap();
        assert_eq!(
            (s.host(), s.subset(), s.port()),
            ("one.dest", Some("v1"), Some(8080))
        );
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..4000 {
            let (_, s) = h.get("web.example.com", "/").await;
            *counts
                .entry(s.unwrap().subset().unwrap().to_string())
                .or_default() += 1;
        }
        assert_eq!(counts.get("never"), None);
        let v1 = f64::from(counts["v1"]) / 4000.0;
        assert!((0.72..0.78).contains(&v1), "{counts:?}");
    });
}

#[test]
fn route_policy_carries_timeout_retries_and_fault_compiled_once() {
    // HTTPRoute.timeout/retries/fault → RoutePolicy for the resilience layers.
    let h = h(concat!(
        "  - name: main\n    timeout: 2.5s\n    retries: {attempts: 5, perTryTimeout: 1s, retryOn: '5xx,503'}\n",
        "    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}\n",
        "    route: [{destination: {host: a.dest}}]\n",
    ));
    block_on(async {
        let (_, a) = h.get("web.example.com", "/").await;
        let (_, b) = h.get("web.example.com", "/").await;
        let (a, b) = (a.unwrap(), b.unwrap());
        let p = a.policy().unwrap();
        assert_eq!(p.route_name.as_deref(), Some("main"));
        assert_eq!(p.timeout, Some(Duration::from_millis(2500)));
        let r = p.retries.as_ref().unwrap();
        assert_eq!(
            (r.attempts, r.per_try_timeout),
            (5, Some(Duration::from_secs(1)))
        );
        let f = p.fault.as_ref().unwrap();
        let abort = f.abort.as_ref().unwrap();
        assert_eq!(abort.error, AbortError::Http(http::StatusCode::IM_A_TEAPOT));
        assert!((abort.fraction - 0.5).abs() < 1e-9);
        assert!(
            Arc::ptr_eq(r, b.policy().unwrap().retries.as_ref().unwrap()),
            "shared, not rebuilt"
        );
    });
}

#[test]
fn route_without_retries_leaves_the_mesh_default_and_timeout_zero_is_none() {
    // Istio: no `retries` → the mesh default policy; `timeout: 0s` disables the timeout.
    let h = h("  - timeout: 0s\n    route: [{destination: {host: a.dest}}]\n");
    block_on(async {
        let (_, s) = h.get("web.example.com", "/").await;
        let s = s.unwrap();
        let p = s.policy().unwrap();
        assert!(p.retries.is_none() && p.timeout.is_none() && p.fault.is_none());
    });
}

#[test]
fn match_name_extends_the_route_name() {
    // TranslateRoute: routeName + "." + match.Name.
    let h = h(
        "  - name: r\n    match: [{name: m, uri: {prefix: /}}]\n    route: [{destination: {host: a.dest}}]\n",
    );
    block_on(async {
        let (_, s) = h.get("web.example.com", "/").await;
        assert_eq!(
            s.unwrap().policy().unwrap().route_name.as_deref(),
            Some("r.m")
        );
    });
}

const CORS: &str = concat!(
    "  - corsPolicy:\n",
    "      allowOrigins: [{exact: 'https://a.example.com'}, {regex: 'https://.*\\.b\\.com'}]\n",
    "      allowMethods: [GET, POST]\n",
    "      allowHeaders: [x-token]\n",
    "      exposeHeaders: [x-trace]\n",
    "      maxAge: 24h\n",
    "      allowCredentials: true\n",
    "    route: [{destination: {host: a.dest}}]\n",
);

fn preflight(origin: &str) -> Request<String> {
    req("web.example.com", "/")
        .method("OPTIONS")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .body(String::new())
        .unwrap()
}

#[test]
fn cors_preflight_from_an_allowed_origin_is_answered_by_the_router() {
    // Envoy CorsFilter::decodeHeaders: a preflight from an allowed origin gets 200 with the
    // policy's headers (TranslateCORSPolicy joins lists with ',', maxAge in seconds).
    let h = h(CORS);
    block_on(async {
        let (res, seen) = h.send(preflight("https://x.b.com")).await;
        assert!(seen.is_none());
        assert_eq!(res.status(), 200);
        let hd = res.headers();
        assert_eq!(hd["access-control-allow-origin"], "https://x.b.com");
        assert_eq!(hd["access-control-allow-methods"], "GET,POST");
        assert_eq!(hd["access-control-allow-headers"], "x-token");
        assert_eq!(hd["access-control-max-age"], "86400");
        assert_eq!(hd["access-control-allow-credentials"], "true");
        // the proxy's own answer (no `x-envoy-upstream-service-time` will be put on it)
        assert!(
            res.extensions()
                .get::<mesh_core::ext::LocalReplyText>()
                .is_some()
        );
        assert_eq!(
            res.extensions()
                .get::<mesh_core::ext::ResponseCodeDetails>(),
            Some(&mesh_core::ext::ResponseCodeDetails::cors_response())
        );
    });
}

#[test]
fn cors_unmatched_preflights_forward_by_default_or_are_ignored() {
    // forwardNotMatchingPreflights: FORWARD (default) sends them upstream; IGNORE answers 200
    // without CORS headers.
    let h1 = h(CORS);
    let h2 = h(&CORS.replace(
        "allowCredentials: true\n",
        "allowCredentials: true\n      unmatchedPreflights: IGNORE\n",
    ));
    block_on(async {
        let (_, seen) = h1.send(preflight("https://evil.com")).await;
        assert!(seen.is_some());
        let (res, seen) = h2.send(preflight("https://evil.com")).await;
        assert!(seen.is_none());
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("access-control-allow-origin").is_none());
    });
}

#[test]
fn cors_simple_request_gets_origin_credentials_and_expose_headers() {
    // Envoy CorsFilter::encodeHeaders for allowed origins.
    let h = h(CORS);
    block_on(async {
        let r = req("web.example.com", "/")
            .header("origin", "https://a.example.com")
            .body(String::new())
            .unwrap();
        let (res, seen) = h.send(r).await;
        assert!(seen.is_some());
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            "https://a.example.com"
        );
        assert_eq!(res.headers()["access-control-allow-credentials"], "true");
        assert_eq!(res.headers()["access-control-expose-headers"], "x-trace");
        let r = req("web.example.com", "/")
            .header("origin", "https://nope.com")
            .body(String::new())
            .unwrap();
        let (res, _) = h.send(r).await;
        assert!(res.headers().get("access-control-allow-origin").is_none());
    });
}

#[test]
fn sticky_cookie_keeps_the_client_on_its_subset() {
    // mesh_core::sticky: before the weighted choice, the cookie's subset wins if the route
    // still sends it traffic.
    let text = format!(
        "{}{}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {{consistentHash: {{httpCookie: {{name: user, ttl: 0s}}}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}, {{name: v3, labels: {{version: v3}}}}]\n",
        service("reviews", "default", &[9080]),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 99}\n    - {destination: {host: reviews, subset: v2}, weight: 1}\n    - {destination: {host: reviews, subset: v3}, weight: 0}\n---\n",
    );
    let h = Harness::sidecar(&snap(&text));
    block_on(async {
        let cookie = |v: &str| {
            req("reviews", "/")
                .header("cookie", format!("a=b; user={v}"))
                .body(String::new())
                .unwrap()
        };
        for _ in 0..50 {
            let (_, s) = h
                .send(cookie(&mesh_core::sticky::encode(Some("v2"), 7)))
                .await;
            assert_eq!(s.unwrap().subset(), Some("v2"));
        }
        // v3 has weight 0: the cookie does not revive it.
        let mut v3 = 0;
        for _ in 0..50 {
            let (_, s) = h
                .send(cookie(&mesh_core::sticky::encode(Some("v3"), 7)))
                .await;
            v3 += u32::from(s.unwrap().subset() == Some("v3"));
        }
        assert_eq!(v3, 0);
        // An Envoy-style bare hash is not a subset cookie: weights apply.
        let (_, s) = h.send(cookie("12345")).await;
        assert!(s.unwrap().subset().is_some());
    });
}

#[test]
fn delegate_routes_merge_with_the_root() {
    // virtualservice.go mergeHTTPRoute / mergeHTTPMatchRequest / hasConflict.
    let text = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: default}\nspec:\n  hosts: [web.example.com]\n  http:\n",
        "  - name: reviews\n    match: [{uri: {prefix: /reviews}}]\n    timeout: 3s\n    delegate: {name: reviews, namespace: team}\n",
        "  - route: [{destination: {host: fallback.dest}}]\n",
        "---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: team}\nspec:\n  http:\n",
        "  - name: v2\n    match: [{uri: {prefix: /reviews/v2}, headers: {x: {exact: '1'}}}]\n    route: [{destination: {host: reviews-v2}}]\n",
        "  - name: conflict\n    match: [{uri: {prefix: /other}}]\n    route: [{destination: {host: never}}]\n",
        "  - name: rest\n    timeout: 1s\n    route: [{destination: {host: reviews-v1}}]\n",
    );
    let h = Harness::sidecar(&snap(text));
    block_on(async {
        let r = req("web.example.com", "/reviews/v2/x")
            .header("x", "1")
            .body(String::new())
            .unwrap();
        let (_, s) = h.send(r).await;
        let s = s.unwrap();
        assert_eq!(
            s.host(),
            "reviews-v2.team.svc.cluster.local",
            "delegate hosts resolve in its namespace"
        );
        let p = s.policy().unwrap();
        assert_eq!(p.route_name.as_deref(), Some("reviews-v2"));
        assert_eq!(
            p.timeout,
            Some(Duration::from_secs(3)),
            "root timeout fills in"
        );
        // The delegate's catch-all inherits the root's match: /reviews only.
        let (_, s) = h.get("web.example.com", "/reviews/v1").await;
        let s = s.unwrap();
        assert_eq!(s.host(), "reviews-v1.team.svc.cluster.local");
        assert_eq!(s.policy().unwrap().timeout, Some(Duration::from_secs(1)));
        // The conflicting delegate route is dropped; /other falls to the root's catch-all.
        let (_, s) = h.get("web.example.com", "/other").await;
        assert_eq!(s.unwrap().host(), "fallback.dest");
    });
}

#[test]
fn missing_or_unexported_delegate_drops_the_root_route() {
    // mergeVirtualServices: delegate not found, or not exported to the root's namespace.
    let text = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: default}\nspec:\n  hosts: [web.example.com]\n  http:\n",
        "  - delegate: {name: hidden, namespace: team}\n",
        "  - delegate: {name: missing}\n",
        "  - route: [{destination: {host: fallback.dest}}]\n",
        "---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: hidden, namespace: team}\nspec:\n  exportTo: ['.']\n  http:\n  - route: [{destination: {host: never}}]\n",
    );
    let h = Harness::sidecar(&snap(text));
    block_on(async {
        let (_, s) = h.get("web.example.com", "/").await;
        assert_eq!(s.unwrap().host(), "fallback.dest");
    });
}

#[tokio::test]
async fn mirror_and_mirrors_are_sent_with_a_shadow_host() {
    // MirrorPercent / MirrorPercentByPolicy; Envoy shadowAppendedHost adds "-shadow".
    let s = snap(&web(concat!(
        "  - route: [{destination: {host: main.dest}}]\n",
        "    mirror: {host: m1.dest}\n",
        "    mirrorPercentage: {value: 100}\n",
        "    mirrors:\n",
        "    - {destination: {host: m2.dest, port: {number: 81}}, percentage: {value: 0}}\n",
        "    - {destination: {host: m3.dest}}\n",
    )));
    let seen: Arc<Mutex<Vec<(RouteDestination, String, String)>>> = Arc::default();
    let log = seen.clone();
    let inner = tower::service_fn(move |req: Request<String>| {
        let log = log.clone();
        async move {
            let d = route_destination(req.extensions()).unwrap().clone();
            let host = req.headers()["host"].to_str().unwrap().to_string();
            log.lock().unwrap().push((d, host, req.into_body()));
            Ok::<_, Infallible>(Response::new(MeshBody::<String>::empty()))
        }
    });
    let svc = RouteLayer::from_table(RouteTable::sidecar(&s).unwrap()).layer(
        MirrorLayer::new(|t| {
            tokio::spawn(t);
        })
        .layer(inner),
    );
    let r = req("web.example.com:80", "/x")
        .method("POST")
        .body("payload".to_string())
        .unwrap();
    svc.oneshot(r).await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let seen = seen.lock().unwrap();
    let hosts: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|(d, h, b)| (&*d.host, h.as_str(), b.as_str()))
        .collect();
    assert_eq!(seen.len(), 3, "{hosts:?}");
    assert!(hosts.contains(&("main.dest", "web.example.com:80", "payload")));
    assert!(hosts.contains(&("m1.dest", "web.example.com-shadow:80", "payload")));
    assert!(hosts.contains(&("m3.dest", "web.example.com-shadow:80", "payload")));
    let m1 = seen.iter().find(|(d, ..)| &*d.host == "m1.dest").unwrap();
    assert_eq!(m1.0.port, Some(80), "mirror port: the request's");
}

#[test]
fn mirror_percentage_is_sampled() {
    // mirrorPercentage: {value: 25} → a quarter of requests carry the mirror.
    let s = snap(&web(
        "  - route: [{destination: {host: main.dest}}]\n    mirror: {host: m.dest}\n    mirrorPercentage: {value: 25}\n",
    ));
    let h = Harness::sidecar(&s);
    block_on(async {
        let mut n = 0;
        for _ in 0..4000 {
            let (_, s) = h.get("web.example.com", "/").await;
            n += u32::from(
                s.unwrap()
                    .parts
                    .extensions
                    .get::<mesh_routing::Mirrors>()
                    .is_some(),
            );
        }
        assert!((850..1150).contains(&n), "{n}");
    });
}

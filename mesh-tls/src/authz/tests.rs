//! Table-driven tests: the cases of istio.io's authorization tasks
//! (`docs/tasks/security/authorization/authz-http`, `authz-deny`, `authz-ip`, `authz-tcp`)
//! and Istio's matching rules (`pilot/pkg/security/authz/model`, `matcher`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh_core::ext::{ClientAddr, DestinationAddr, PeerIdentity};
use mesh_core::identity::SpiffeId;
use mesh_core::model::security::AuthorizationPolicy;
use mesh_core::selector::Labels;
use tower::{ServiceBuilder, ServiceExt};

use super::*;

const ROOT: &str = "istio-system";

fn spec(v: serde_json::Value) -> AuthorizationPolicy {
    serde_json::from_value(v).expect("a valid AuthorizationPolicy spec")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Compiles `(namespace, spec)` policies for the workload `default` / `app=productpage`.
fn compile(policies: &[(&str, AuthorizationPolicy)]) -> Result<Authorizer, Vec<AuthzError>> {
    let l = labels(&[("app", "productpage")]);
    let w = Workload {
        root_namespace: ROOT,
        namespace: "default",
        labels: &l,
    };
    let refs: Vec<PolicyRef<'_>> = policies
        .iter()
        .enumerate()
        .map(|(i, (ns, s))| PolicyRef {
            namespace: ns,
            name: ["p0", "p1", "p2", "p3"][i],
            spec: s,
        })
        .collect();
    Authorizer::compile(&refs, &w, None)
}

/// A request: method, path (with query), peer service account in `default` (None:
/// plaintext), peer IP, extra headers.
struct R<'a> {
    method: &'a str,
    path: &'a str,
    sa: Option<&'a str>,
    ip: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

const GET: R<'static> = R {
    method: "GET",
    path: "/productpage",
    sa: None,
    ip: "10.0.0.1",
    headers: &[],
};

fn request(r: &R<'_>) -> Request<()> {
    let mut b = Request::builder()
        .method(r.method)
        .uri(r.path)
        .header("host", "productpage:9080");
    for (k, v) in r.headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).expect("a valid request");
    let ip: std::net::IpAddr = r.ip.parse().expect("an IP");
    req.extensions_mut()
        .insert(ClientAddr(SocketAddr::new(ip, 40000)));
    req.extensions_mut().insert(DestinationAddr(
        "10.0.0.9:9080".parse().expect("an address"),
    ));
    if let Some(sa) = r.sa {
        req.extensions_mut().insert(PeerIdentity::new(SpiffeId::new(
            "cluster.local",
            "default",
            sa,
        )));
    }
    req
}

fn allowed(a: &Authorizer, r: &R<'_>) -> bool {
    let mut req = request(r);
    if let Some(n) = req
        .uri()
        .path_and_query()
        .and_then(|p| normalize_path(p.as_str()))
    {
        *req.uri_mut() = n.parse().expect("a normal path");
    }
    a.decide(&Attributes::of(&req)).allowed
}

/// Runs a table of (case, request, expected allowed).
fn table(a: &Authorizer, cases: &[(&str, R<'_>, bool)]) {
    for (name, r, want) in cases {
        assert_eq!(allowed(a, r), *want, "case {name:?}");
    }
}

#[test]
fn no_policy_allows_and_allow_nothing_denies_everything() {
    // authz-http: "allow-nothing" (`spec: {}`) in the namespace denies every request
    let none = compile(&[]).unwrap();
    assert!(allowed(&none, &GET));
    let nothing = compile(&[("default", spec(serde_json::json!({})))]).unwrap();
    table(
        &nothing,
        &[
            ("plain GET", GET, false),
            (
                "mTLS GET",
                R {
                    sa: Some("sleep"),
                    ..GET
                },
                false,
            ),
        ],
    );
}

#[test]
fn authz_http_productpage_viewer_allows_get_only() {
    // authz-http: "productpage-viewer" allows GET to app=productpage
    let a = compile(&[
        ("default", spec(serde_json::json!({}))),
        (
            "default",
            spec(serde_json::json!({
                "selector": {"matchLabels": {"app": "productpage"}},
                "action": "ALLOW",
                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]
            })),
        ),
    ])
    .unwrap();
    table(
        &a,
        &[
            ("GET", GET, true),
            (
                "POST",
                R {
                    method: "POST",
                    ..GET
                },
                false,
            ),
        ],
    );
}

#[test]
fn authz_http_details_viewer_allows_a_principal() {
    // authz-http: "details-viewer": only bookinfo-productpage's identity, with GET
    let a = compile(&[(
        "default",
        spec(serde_json::json!({
            "rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}}],
                "to": [{"operation": {"methods": ["GET"]}}]
            }]
        })),
    )])
    .unwrap();
    table(
        &a,
        &[
            (
                "the principal, GET",
                R {
                    sa: Some("bookinfo-productpage"),
                    ..GET
                },
                true,
            ),
            (
                "the principal, POST",
                R {
                    sa: Some("bookinfo-productpage"),
                    method: "POST",
                    ..GET
                },
                false,
            ),
            (
                "another principal",
                R {
                    sa: Some("sleep"),
                    ..GET
                },
                false,
            ),
            ("plaintext", GET, false),
        ],
    );
}

#[test]
fn authz_deny_takes_precedence_over_allow() {
    // authz-deny: "deny-method-get" (GET without x-token: admin) and "allow-path-ip"
    let a = compile(&[
        (
            "default",
            spec(serde_json::json!({
                "action": "DENY",
                "rules": [{
                    "to": [{"operation": {"methods": ["GET"]}}],
                    "when": [{"key": "request.headers[x-token]", "notValues": ["admin"]}]
                }]
            })),
        ),
        (
            "default",
            spec(serde_json::json!({
                "action": "ALLOW",
                "rules": [{"to": [{"operation": {"paths": ["/ip"]}}]}]
            })),
        ),
    ])
    .unwrap();
    let admin: &[(&str, &str)] = &[("x-token", "admin")];
    let guest: &[(&str, &str)] = &[("x-token", "guest")];
    table(
        &a,
        &[
            (
                "GET /ip without token: denied",
                R { path: "/ip", ..GET },
                false,
            ),
            (
                "GET /ip as guest: denied",
                R {
                    path: "/ip",
                    headers: guest,
                    ..GET
                },
                false,
            ),
            (
                "GET /ip as admin: allowed",
                R {
                    path: "/ip",
                    headers: admin,
                    ..GET
                },
                true,
            ),
            (
                "GET /headers as admin: no ALLOW matches",
                R {
                    path: "/headers",
                    headers: admin,
                    ..GET
                },
                false,
            ),
            (
                "POST /ip: allowed",
                R {
                    path: "/ip",
                    method: "POST",
                    ..GET
                },
                true,
            ),
        ],
    );
}

#[test]
fn a_deny_names_its_rule_as_envoys_rbac_details_and_an_unmatched_allow_none() {
    // Istio names each rule's RBAC policy `ns[<ns>]-policy[<name>]-rule[<i>]`; Envoy's
    // details: `rbac_access_denied_matched_policy[<that>]`, `[none]` when no ALLOW matched
    let a = compile(&[
        (
            "default",
            spec(serde_json::json!({
                "action": "DENY",
                "rules": [
                    {"to": [{"operation": {"methods": ["DELETE"]}}]},
                    {"to": [{"operation": {"paths": ["/admin*"]}}]}
                ]
            })),
        ),
        (
            "default",
            spec(serde_json::json!({
                "action": "ALLOW",
                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]
            })),
        ),
    ])
    .unwrap();
    let decide = |r: &R<'_>| a.decide(&Attributes::of(&request(r)));
    let d = decide(&R {
        path: "/admin/users",
        ..GET
    });
    assert!(!d.allowed);
    assert_eq!(
        d.details.as_deref(),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[p0]-rule[1]]")
    );
    let d = decide(&R {
        method: "DELETE",
        ..GET
    });
    assert_eq!(
        d.details.as_deref(),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[p0]-rule[0]]")
    );
    // several rules match: Envoy's engine names the first by name, where rule[10] comes
    // before rule[2]
    let rules: Vec<serde_json::Value> = (0..=10)
        .map(|i| {
            let path = if i == 2 || i == 10 { "/x" } else { "/never" };
            serde_json::json!({"to": [{"operation": {"paths": [path]}}]})
        })
        .collect();
    let many = compile(&[(
        "default",
        spec(serde_json::json!({"action": "DENY", "rules": rules})),
    )])
    .unwrap();
    let d = many.decide(&Attributes::of(&request(&R { path: "/x", ..GET })));
    assert_eq!(
        d.details.as_deref(),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[p0]-rule[10]]")
    );
    let d = decide(&R {
        method: "POST",
        ..GET
    });
    assert!(!d.allowed, "no ALLOW rule matches");
    assert_eq!(d.details, None);
    assert!(decide(&GET).allowed);
}

#[tokio::test]
async fn the_layers_denial_carries_the_rules_details_for_the_access_log() {
    let deny = spec(serde_json::json!({
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]
    }));
    let l = Labels::default();
    let w = Workload {
        root_namespace: ROOT,
        namespace: "default",
        labels: &l,
    };
    let refs = [PolicyRef {
        namespace: "default",
        name: "deny-admin",
        spec: &deny,
    }];
    let authz = Authorizer::compile(&refs, &w, None).unwrap();
    let svc = ServiceBuilder::new()
        .layer(AuthzLayer::new(authz))
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
    let req = Request::builder().uri("/admin/x").body(()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.extensions()
            .get::<mesh_core::ext::ResponseCodeDetails>()
            .map(|d| &*d.0),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]")
    );
}

#[test]
fn authz_ip_blocks_and_not_ip_blocks() {
    // authz-ip: ALLOW from ipBlocks, then DENY from an address
    let allow = spec(serde_json::json!({
        "rules": [{"from": [{"source": {"ipBlocks": ["1.2.3.4", "5.6.7.0/24"]}}]}]
    }));
    let deny = spec(serde_json::json!({
        "action": "DENY",
        "rules": [{"from": [{"source": {"ipBlocks": ["5.6.7.8"]}}]}]
    }));
    let a = compile(&[("default", allow.clone())]).unwrap();
    table(
        &a,
        &[
            (
                "exact IP",
                R {
                    ip: "1.2.3.4",
                    ..GET
                },
                true,
            ),
            (
                "in the CIDR",
                R {
                    ip: "5.6.7.200",
                    ..GET
                },
                true,
            ),
            (
                "outside",
                R {
                    ip: "1.2.3.5",
                    ..GET
                },
                false,
            ),
        ],
    );
    let b = compile(&[("default", allow), ("default", deny)]).unwrap();
    table(
        &b,
        &[
            (
                "denied address",
                R {
                    ip: "5.6.7.8",
                    ..GET
                },
                false,
            ),
            (
                "allowed neighbour",
                R {
                    ip: "5.6.7.9",
                    ..GET
                },
                true,
            ),
        ],
    );
    // remoteIpBlocks: the original client is the peer (no x-forwarded-for trusted)
    let remote = compile(&[(
        "default",
        spec(serde_json::json!({
            "rules": [{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}]
        })),
    )])
    .unwrap();
    let xff: &[(&str, &str)] = &[("x-forwarded-for", "1.2.3.4")];
    table(
        &remote,
        &[
            (
                "peer 1.2.3.4",
                R {
                    ip: "1.2.3.4",
                    ..GET
                },
                true,
            ),
            (
                "a forged x-forwarded-for",
                R {
                    ip: "9.9.9.9",
                    headers: xff,
                    ..GET
                },
                false,
            ),
        ],
    );
}

#[test]
fn principals_namespaces_and_service_accounts_use_istio_wildcards() {
    let a = |source: serde_json::Value| {
        compile(&[(
            "default",
            spec(serde_json::json!({"rules": [{"from": [{"source": source}]}]})),
        )])
        .unwrap()
    };
    let sleep = R {
        sa: Some("sleep"),
        ..GET
    };
    let cases: &[(serde_json::Value, bool, bool)] = &[
        // (source, sleep allowed, plaintext allowed)
        (serde_json::json!({"principals": ["*"]}), true, false),
        (
            serde_json::json!({"principals": ["cluster.local/ns/default/*"]}),
            true,
            false,
        ),
        (
            serde_json::json!({"principals": ["*/sa/sleep"]}),
            true,
            false,
        ),
        (
            serde_json::json!({"principals": ["*/sa/other"]}),
            false,
            false,
        ),
        (
            serde_json::json!({"notPrincipals": ["*/sa/sleep"]}),
            false,
            true,
        ),
        (serde_json::json!({"namespaces": ["default"]}), true, false),
        (serde_json::json!({"namespaces": ["def*"]}), true, false),
        (
            serde_json::json!({"notNamespaces": ["default"]}),
            false,
            true,
        ),
        (
            serde_json::json!({"serviceAccounts": ["default/sleep"]}),
            true,
            false,
        ),
        (
            serde_json::json!({"notServiceAccounts": ["default/sleep"]}),
            false,
            true,
        ),
    ];
    for (source, want_sleep, want_plain) in cases {
        let authz = a(source.clone());
        assert_eq!(allowed(&authz, &sleep), *want_sleep, "{source} for sleep");
        assert_eq!(allowed(&authz, &GET), *want_plain, "{source} for plaintext");
    }
}

#[test]
fn operations_hosts_ports_methods_and_paths() {
    let a = |op: serde_json::Value| {
        compile(&[(
            "default",
            spec(serde_json::json!({"rules": [{"to": [{"operation": op}]}]})),
        )])
        .unwrap()
    };
    let cases: &[(serde_json::Value, &str, &str, bool)] = &[
        // (operation, method, path, allowed); Host is `productpage:9080`, port 9080
        (
            // Istio's HostMatcher: the whole header, case-insensitively, port included
            serde_json::json!({"hosts": ["productpage"]}),
            "GET",
            "/",
            false,
        ),
        (
            serde_json::json!({"hosts": ["productpage", "productpage:*"]}),
            "GET",
            "/",
            true,
        ),
        (
            serde_json::json!({"hosts": ["PRODUCTPAGE:9080"]}),
            "GET",
            "/",
            true,
        ),
        (
            serde_json::json!({"hosts": ["productpage:80"]}),
            "GET",
            "/",
            false,
        ),
        (
            serde_json::json!({"hosts": ["*page:9080"]}),
            "GET",
            "/",
            true,
        ),
        (
            serde_json::json!({"notHosts": ["product*"]}),
            "GET",
            "/",
            false,
        ),
        (serde_json::json!({"ports": ["9080"]}), "GET", "/", true),
        (serde_json::json!({"notPorts": ["9080"]}), "GET", "/", false),
        (
            serde_json::json!({"methods": ["GET", "HEAD"]}),
            "HEAD",
            "/",
            true,
        ),
        (
            serde_json::json!({"notMethods": ["DELETE"]}),
            "DELETE",
            "/",
            false,
        ),
        (
            serde_json::json!({"paths": ["/api/*"]}),
            "GET",
            "/api/v1?x=1",
            true,
        ),
        (
            serde_json::json!({"paths": ["*.html"]}),
            "GET",
            "/index.html",
            true,
        ),
        (
            serde_json::json!({"paths": ["/exact"]}),
            "GET",
            "/exact/",
            false,
        ),
        (
            serde_json::json!({"paths": ["*"]}),
            "GET",
            "/anything",
            true,
        ),
        (
            serde_json::json!({"notPaths": ["/admin*"]}),
            "GET",
            "/admin/x",
            false,
        ),
        // normalised before matching: `..`, `.`, %-encoded unreserved characters, `\`
        (
            serde_json::json!({"notPaths": ["/admin*"]}),
            "GET",
            "/public/../admin",
            false,
        ),
        (
            serde_json::json!({"notPaths": ["/admin*"]}),
            "GET",
            "/%61dmin",
            false,
        ),
        (
            serde_json::json!({"notPaths": ["/admin*"]}),
            "GET",
            "/./admin",
            false,
        ),
        // path templates (Istio 1.22+): {*} one segment, {**} the rest
        (
            serde_json::json!({"paths": ["/foo/{*}/bar"]}),
            "GET",
            "/foo/x/bar",
            true,
        ),
        (
            serde_json::json!({"paths": ["/foo/{*}/bar"]}),
            "GET",
            "/foo/x/y/bar",
            false,
        ),
        (
            serde_json::json!({"paths": ["/foo/{**}"]}),
            "GET",
            "/foo/x/y/z",
            true,
        ),
        (
            serde_json::json!({"paths": ["/foo/{**}"]}),
            "GET",
            "/bar/x",
            false,
        ),
    ];
    for (op, method, path, want) in cases {
        let authz = a(op.clone());
        let r = R {
            method,
            path,
            ..GET
        };
        assert_eq!(allowed(&authz, &r), *want, "{op} for {method} {path}");
    }
}

#[test]
fn when_conditions() {
    let a = |when: serde_json::Value| {
        compile(&[(
            "default",
            spec(serde_json::json!({"rules": [{"when": [when]}]})),
        )])
        .unwrap()
    };
    let sleep = R {
        sa: Some("sleep"),
        ip: "10.1.2.3",
        headers: &[("x-empty", "")],
        ..GET
    };
    let cases: &[(serde_json::Value, bool)] = &[
        (
            serde_json::json!({"key": "source.ip", "values": ["10.1.0.0/16"]}),
            true,
        ),
        (
            serde_json::json!({"key": "remote.ip", "notValues": ["10.1.2.3"]}),
            false,
        ),
        (
            serde_json::json!({"key": "source.namespace", "values": ["default"]}),
            true,
        ),
        (
            serde_json::json!({"key": "source.principal", "values": ["*/sa/sleep"]}),
            true,
        ),
        (
            serde_json::json!({"key": "destination.ip", "values": ["10.0.0.9"]}),
            true,
        ),
        (
            serde_json::json!({"key": "destination.port", "values": ["9080"]}),
            true,
        ),
        (
            serde_json::json!({"key": "destination.port", "values": ["80"]}),
            false,
        ),
        (
            serde_json::json!({"key": "connection.sni", "values": ["*"]}),
            false,
        ),
        (
            serde_json::json!({"key": "request.headers[user-agent]", "values": ["curl*"]}),
            false,
        ),
        // `*` on a header is Istio's presence match, even of an empty value
        (
            serde_json::json!({"key": "request.headers[x-empty]", "values": ["*"]}),
            true,
        ),
        (
            serde_json::json!({"key": "request.headers[x-absent]", "values": ["*"]}),
            false,
        ),
    ];
    for (when, want) in cases {
        assert_eq!(allowed(&a(when.clone()), &sleep), *want, "{when}");
    }
}

#[test]
fn selection_follows_istio_scopes_and_skips_target_refs() {
    let deny_all = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"action": "DENY", "rules": [{}]});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        spec(v)
    };
    let cases: &[(&str, serde_json::Value, bool)] = &[
        // (namespace, extra fields, applies to default/app=productpage)
        (ROOT, serde_json::json!({}), true),
        ("default", serde_json::json!({}), true),
        ("other", serde_json::json!({}), false),
        (
            "default",
            serde_json::json!({"selector": {"matchLabels": {"app": "productpage"}}}),
            true,
        ),
        (
            "default",
            serde_json::json!({"selector": {"matchLabels": {"app": "reviews"}}}),
            false,
        ),
        (
            ROOT,
            serde_json::json!({"selector": {"matchLabels": {"app": "productpage"}}}),
            true,
        ),
        (
            "other",
            serde_json::json!({"selector": {"matchLabels": {"app": "productpage"}}}),
            false,
        ),
        // targetRef(s) attach to gateways and waypoints, never to a sidecar
        (
            "default",
            serde_json::json!({"targetRef": {"kind": "Gateway", "name": "gw"}}),
            false,
        ),
    ];
    for (ns, extra, applies) in cases {
        let a = compile(&[(ns, deny_all(extra.clone()))]).unwrap();
        assert_eq!(!allowed(&a, &GET), *applies, "{ns} {extra}");
    }
}

#[test]
fn what_cannot_be_enforced_is_refused_naming_the_field() {
    let cases: &[(serde_json::Value, &str)] = &[
        (
            serde_json::json!({"rules": [{"when": [{"key": "request.auth.claims", "values": ["a"]}]}]}),
            "spec.rules[0].when[0].key",
        ),
        (
            serde_json::json!({"rules": [{"when": [{"key": "request.auth.claims[a]b", "values": ["a"]}]}]}),
            "spec.rules[0].when[0].key",
        ),
        (
            serde_json::json!({"rules": [{"when": [{"key": "experimental.envoy.filters.x", "values": ["a"]}]}]}),
            "spec.rules[0].when[0].key",
        ),
        (
            serde_json::json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
            "spec.action",
        ),
    ];
    for (s, field) in cases {
        let errs = compile(&[("default", spec(s.clone()))]).unwrap_err();
        assert_eq!(errs[0].field, *field, "{s}");
        assert!(
            errs[0].message.contains("fails closed"),
            "{}",
            errs[0].message
        );
    }
}

#[derive(Debug)]
struct OnlyAdmins;

impl ExternalAuthorizer for OnlyAdmins {
    fn check(&self, provider: &str, attrs: &Attributes<'_>) -> bool {
        provider == "opa" && attrs.headers.get("x-user").is_some_and(|v| v == "admin")
    }
}

#[tokio::test]
async fn the_layer_denies_with_rbac_audits_and_asks_custom_providers_first() {
    let custom = spec(serde_json::json!({
        "action": "CUSTOM", "provider": {"name": "opa"},
        "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]
    }));
    let audit = spec(
        serde_json::json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}),
    );
    let allow = spec(
        serde_json::json!({"rules": [{"to": [{"operation": {"paths": ["/admin*", "/public*"]}}]}]}),
    );
    let l = Labels::default();
    let w = Workload {
        root_namespace: ROOT,
        namespace: "default",
        labels: &l,
    };
    let refs = [
        PolicyRef {
            namespace: "default",
            name: "ext",
            spec: &custom,
        },
        PolicyRef {
            namespace: "default",
            name: "audit",
            spec: &audit,
        },
        PolicyRef {
            namespace: "default",
            name: "allow",
            spec: &allow,
        },
    ];
    let authz = Authorizer::compile(&refs, &w, Some(Arc::new(OnlyAdmins))).unwrap();
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    let svc = ServiceBuilder::new()
        .layer(AuthzLayer::new(authz))
        .service_fn(move |req: Request<()>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = req.uri().path().to_string();
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path)))) }
        });
    let call = |method: &str, path: &str, user: Option<&str>| {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        svc.clone().oneshot(b.body(()).unwrap())
    };
    let body = |res: Response<Full<Bytes>>| async move {
        use http_body_util::BodyExt;
        res.into_body().collect().await.unwrap().to_bytes()
    };

    let denied = call("GET", "/private", None).await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-mesh-response-flags"], "RBAC");
    assert_eq!(body(denied).await, DENIED_BODY);

    let ext_denied = call("GET", "/admin", Some("guest")).await.unwrap();
    assert_eq!(ext_denied.status(), 403);
    assert_eq!(ext_denied.headers()["x-mesh-response-flags"], "UAEX");
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the app"
    );

    assert_eq!(
        call("GET", "/admin", Some("admin")).await.unwrap().status(),
        200
    );
    // the inner service gets the normalised path
    let res = call("POST", "/public/./a/../b", None).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.extensions().get::<Audited>(),
        Some(&Audited("default/audit".into()))
    );
    assert_eq!(body(res).await, "/public/b");
}

#[test]
fn normalize_path_as_envoy() {
    let cases = [
        ("/a/b", None),
        ("/a/./b", Some("/a/b")),
        ("/a/../b", Some("/b")),
        ("/../../b", Some("/b")),
        ("/a/b/..", Some("/a/")),
        ("/a/%2e%2E/b", Some("/b")),
        ("/%7Euser/%2f", Some("/~user/%2F")),
        ("/a\\b", Some("/a/b")),
        ("/a//b", None),
        ("/a/../b?x=/../y", Some("/b?x=/../y")),
    ];
    for (input, want) in cases {
        assert_eq!(normalize_path(input).as_deref(), want, "{input}");
    }
}

#[tokio::test]
async fn the_path_is_normalised_even_without_policies_as_envoy_does() {
    let svc = ServiceBuilder::new()
        .layer(AuthzLayer::new(Authorizer::allow_all()))
        .service_fn(|req: Request<()>| async move {
            let path = req.uri().to_string();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path))))
        });
    let res = svc
        .oneshot(Request::get("/a/./b/../c?q=/../x").body(()).unwrap())
        .await
        .unwrap();
    use http_body_util::BodyExt;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/a/c?q=/../x");
}

// === JWT: istio.io "Authorization with JWT" and "JWT authentication" ===

fn with_jwt(r: &R<'_>, auth: Option<serde_json::Value>) -> Request<()> {
    let mut req = request(r);
    if let Some(claims) = auth {
        let iss = claims["iss"].as_str().unwrap_or_default().to_string();
        let sub = claims["sub"].as_str().unwrap_or_default().to_string();
        let claims = claims.as_object().cloned().unwrap_or_default();
        req.extensions_mut().insert(crate::jwt::RequestAuth {
            principal: format!("{iss}/{sub}").into(),
            claims: Arc::new(claims),
        });
    }
    req
}

/// Istio's demo token (`security/tools/jwt/samples/demo.jwt`) and its `groups-scope.jwt`.
fn demo() -> serde_json::Value {
    serde_json::json!({"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io", "foo": "bar"})
}

fn groups() -> serde_json::Value {
    serde_json::json!({
        "iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io",
        "groups": ["group1", "group2"], "scope": ["scope1", "scope2"],
        "nested": {"key1": ["valueA", "valueB"], "key2": "valueC"}
    })
}

fn jwt_table(a: &Authorizer, cases: &[(&str, Option<serde_json::Value>, bool)]) {
    for (name, auth, want) in cases {
        let req = with_jwt(&GET, auth.clone());
        assert_eq!(a.decide(&Attributes::of(&req)).allowed, *want, "{name}");
    }
}

#[test]
fn istio_task_authorization_with_jwt_request_principals() {
    // authz-jwt: "require-jwt", ALLOW requestPrincipals of the demo token
    let a = compile(&[(
        "default",
        spec(serde_json::json!({
            "selector": {"matchLabels": {"app": "productpage"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": ["testing@secure.istio.io/testing@secure.istio.io"]}}]}]
        })),
    )])
    .expect("compiles");
    jwt_table(
        &a,
        &[
            ("valid token: 200", Some(demo()), true),
            ("no token: 403", None, false),
            (
                "another subject: 403",
                Some(serde_json::json!({"iss": "testing@secure.istio.io", "sub": "other"})),
                false,
            ),
        ],
    );
}

#[test]
fn istio_task_authorization_with_jwt_groups_claim() {
    // authz-jwt: "require-jwt" with `when: request.auth.claims[groups] values [group1]`
    let a = compile(&[(
        "default",
        spec(serde_json::json!({
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"requestPrincipals": ["testing@secure.istio.io/testing@secure.istio.io"]}}],
                "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}]
            }]
        })),
    )])
    .expect("compiles");
    jwt_table(
        &a,
        &[
            (
                "token with groups [group1, group2]: 200",
                Some(groups()),
                true,
            ),
            ("token without groups: 403", Some(demo()), false),
            ("no token: 403", None, false),
        ],
    );
}

#[test]
fn istio_task_jwt_authentication_deny_requests_without_principal() {
    // authn-policy "Require a valid token": DENY notRequestPrincipals ["*"]
    let a = compile(&[(
        "default",
        spec(serde_json::json!({
            "action": "DENY",
            "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]
        })),
    )])
    .expect("compiles");
    jwt_table(
        &a,
        &[
            ("valid token: 200", Some(demo()), true),
            ("no token: 403", None, false),
        ],
    );
    // ALLOW requestPrincipals ["*"], the same effect
    let a = compile(&[(
        "default",
        spec(serde_json::json!({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]})),
    )])
    .expect("compiles");
    jwt_table(&a, &[("token", Some(demo()), true), ("none", None, false)]);
}

#[test]
fn request_auth_condition_keys() {
    let one = |key: &str, values: &[&str]| {
        compile(&[(
            "default",
            spec(serde_json::json!({"rules": [{"when": [{"key": key, "values": values}]}]})),
        )])
        .expect("compiles")
    };
    let token = serde_json::json!({
        "iss": "https://accounts.example.com", "sub": "alice", "aud": ["bookinfo", "reviews"],
        "azp": "web-client", "role": "admin",
        "nested": {"key1": ["valueA", "valueB"], "key2": "valueC"}
    });
    let cases: &[(&str, &[&str], bool)] = &[
        (
            "request.auth.principal",
            &["https://accounts.example.com/alice"],
            true,
        ),
        ("request.auth.principal", &["*/alice"], true),
        (
            "request.auth.principal",
            &["https://accounts.example.com/bob"],
            false,
        ),
        ("request.auth.audiences", &["reviews"], true),
        ("request.auth.audiences", &["ratings"], false),
        ("request.auth.presenter", &["web-client"], true),
        ("request.auth.presenter", &["mobile"], false),
        ("request.auth.claims[role]", &["admin"], true),
        ("request.auth.claims[role]", &["adm*"], true),
        ("request.auth.claims[role]", &["user"], false),
        ("request.auth.claims[nested][key1]", &["valueB"], true),
        ("request.auth.claims[nested][key2]", &["valueC"], true),
        ("request.auth.claims[nested][key2]", &["valueA"], false),
        ("request.auth.claims[missing]", &["*"], false),
    ];
    for (key, values, want) in cases {
        let a = one(key, values);
        let req = with_jwt(&GET, Some(token.clone()));
        assert_eq!(
            a.decide(&Attributes::of(&req)).allowed,
            *want,
            "{key} {values:?}"
        );
        // without a token no request.auth condition matches
        let req = with_jwt(&GET, None);
        assert!(
            !a.decide(&Attributes::of(&req)).allowed,
            "{key} without token"
        );
    }
}

/// Istio's `authz-tcp` task and `rule.checkError`: on a TCP connection a rule with an
/// HTTP-only field is dropped from an ALLOW policy and widened in a DENY policy.
#[test]
fn tcp_connections_drop_allow_rules_and_widen_deny_rules_with_http_fields() {
    let headers = http::HeaderMap::new();
    let method = http::Method::GET;
    let id = PeerIdentity::new(SpiffeId::new("cluster.local", "default", "sleep"));
    let attrs = |port: u16| Attributes {
        method: &method,
        path: "",
        host: std::borrow::Cow::Borrowed(""),
        headers: &headers,
        peer: Some(&id),
        source: Some("10.0.0.1:40000".parse().expect("an address")),
        remote: Some("10.0.0.1:40000".parse().expect("an address")),
        destination: Some(SocketAddr::from(([10, 0, 0, 2], port))),
        sni: None,
        auth: None,
    };
    // ALLOW by port: allowed on 9000, not on 9001
    let a = compile(&[(
        "default",
        spec(serde_json::json!({"rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]})),
    )])
    .expect("compiles");
    assert!(a.decide_tcp(&attrs(9000)).allowed);
    assert!(!a.decide_tcp(&attrs(9001)).allowed);
    // ALLOW with a method: the rule is dropped, nothing is allowed
    let a = compile(&[(
        "default",
        spec(serde_json::json!({"rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]})),
    )])
    .expect("compiles");
    assert!(!a.decide_tcp(&attrs(9000)).allowed);
    // the same rule decides an HTTP request as written
    let req = Request::get("/")
        .extension(DestinationAddr(SocketAddr::from(([10, 0, 0, 2], 9000))))
        .body(())
        .expect("a request");
    assert!(a.decide(&Attributes::of(&req)).allowed);
    // DENY with a method: the method is ignored, the connection to 9000 is denied
    let a = compile(&[(
        "default",
        spec(serde_json::json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"], "ports": ["9000"]}}]}]})),
    )])
    .expect("compiles");
    assert!(!a.decide_tcp(&attrs(9000)).allowed);
    assert!(a.decide_tcp(&attrs(9001)).allowed);
    // DENY with a header condition and a principal: the header is ignored
    let a = compile(&[(
        "default",
        spec(serde_json::json!({"action": "DENY", "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
            "when": [{"key": "request.headers[x-token]", "values": ["admin"]}]
        }]})),
    )])
    .expect("compiles");
    assert!(!a.decide_tcp(&attrs(9000)).allowed);
}

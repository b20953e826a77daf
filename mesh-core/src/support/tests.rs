use super::*;
use crate::load::Loader;

fn scan_doc(text: &str) -> Vec<Unenforced> {
    let mut l = Loader::new();
    l.add_str("t.yaml", text);
    let out = l.finish();
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    out.resources
        .into_iter()
        .flat_map(|r| r.unenforced)
        .collect()
}

#[test]
fn kinds_are_in_kind_order() {
    let listed: Vec<Kind> = kinds().iter().map(|k| k.kind).collect();
    assert_eq!(listed, Kind::ALL.to_vec());
}

#[test]
fn an_enforced_configuration_reports_nothing() {
    let found = scan_doc(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - match: [{uri: {prefix: /a}, headers: {x: {exact: y}}}]\n    route: [{destination: {host: r, subset: v1}, weight: 100}]\n",
    );
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn not_yet_fields_are_reported_once_at_their_key() {
    // `match` is enforced, its `statPrefix` not yet
    let found = scan_doc(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route: [{destination: {host: r}}]\n    match:\n    - uri: {prefix: /}\n      statPrefix: hot\n      ignoreUriCase: true\n",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    let u = &found[0];
    assert_eq!(
        u.field.as_ref().unwrap().to_string(),
        "spec.http[0].match[0].statPrefix"
    );
    assert_eq!((u.line, u.column), (10, 7));
    assert_eq!(u.verdict, Verdict::NotYet(Area::Telemetry));
    assert!(
        u.message
            .contains("not enforced by this version (telemetry)"),
        "{}",
        u.message
    );
}

#[test]
fn values_decide_tls_and_mtls_modes() {
    let dr = |mode: &str| {
        scan_doc(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: r\n  trafficPolicy:\n    tls: {{mode: {mode}}}\n"
        ))
    };
    assert!(dr("DISABLE").is_empty());
    // ISTIO_MUTUAL is auto mTLS's (mesh-proxy's security step refuses it without an
    // identity); SIMPLE and MUTUAL are TLS origination (their files are read by the
    // security step)
    for mode in ["ISTIO_MUTUAL", "SIMPLE", "MUTUAL"] {
        assert!(dr(mode).is_empty(), "{mode}");
    }
    let pa = |mode: &str| {
        scan_doc(&format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec:\n  mtls: {{mode: {mode}}}\n"
        ))
    };
    // every mode is the inbound listener's now (STRICT without an identity is refused by
    // mesh-proxy's security step, which knows the bootstrap)
    for mode in ["DISABLE", "PERMISSIVE", "STRICT", "UNSET"] {
        assert!(pa(mode).is_empty(), "{mode}");
    }
}

#[test]
fn authorization_policy_is_enforced_except_custom_unknown_keys_or_dry_run() {
    let ap = |spec: &str| {
        scan_doc(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
        ))
    };
    // istio.io authz-deny and authz-http: enforced
    for spec in [
        "{}",
        "{action: DENY, rules: [{}]}",
        "{action: AUDIT, rules: [{to: [{operation: {paths: [/x]}}]}]}",
        "{rules: [{from: [{source: {principals: [a], notIpBlocks: [1.2.3.4]}}], when: [{key: \"request.headers[x-token]\", notValues: [admin]}, {key: source.ip, values: [10.0.0.0/8]}]}]}",
        // istio.io authz-jwt: JWT request principals and claims (RequestAuthentication)
        "{rules: [{from: [{source: {requestPrincipals: [\"testing@secure.istio.io/testing@secure.istio.io\"]}}], when: [{key: \"request.auth.claims[groups]\", values: [group1]}]}]}",
        "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}], when: [{key: request.auth.presenter, values: [a]}, {key: \"request.auth.claims[a][b]\", values: [c]}]}]}",
    ] {
        assert!(ap(spec).is_empty(), "{spec}: {:?}", ap(spec));
    }
    // refused, naming the field: CUSTOM (no provider in the proxy), unknown keys
    for (spec, field) in [
        (
            "{rules: [{when: [{key: \"experimental.envoy.filters.x[y]\", values: [a]}]}]}",
            "spec.rules[0].when[0].key",
        ),
        ("{action: CUSTOM, provider: {name: opa}}", "spec.action"),
    ] {
        let found = ap(spec);
        assert!(found[0].verdict.is_refused(), "{spec}");
        assert_eq!(found[0].field.as_ref().unwrap().to_string(), field);
    }
    // targetRef: for gateways and waypoints, a sidecar ignores the policy (a warning)
    let found = ap("{targetRef: {kind: Gateway, name: gw}, action: DENY, rules: [{}]}");
    assert_eq!(found[0].verdict, Verdict::NotYet(Area::GatewaysL4));
    // a dry-run policy is not enforced by Istio either: a warning
    let found = scan_doc(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n",
    );
    assert_eq!(found[0].verdict, Verdict::NotYet(Area::Security));
    assert_eq!(found[0].field, None);
}

#[test]
fn request_authentication_is_enforced_except_other_jwks_schemes_and_space_delimited_claims() {
    let ra = |spec: &str| {
        scan_doc(&format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r}}\nspec: {spec}\n"
        ))
    };
    for spec in [
        "{selector: {matchLabels: {app: httpbin}}, jwtRules: [{issuer: testing@secure.istio.io, jwksUri: \"http://jwks.local/jwks.json\"}]}",
        "{jwtRules: [{issuer: testing@secure.istio.io, jwksUri: \"https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json\"}]}",
        "{jwtRules: [{issuer: a, jwksUri: \"file:///etc/jwks.json\", fromHeaders: [{name: x-jwt, prefix: \"Bearer \"}], fromParams: [t], fromCookies: [c], outputPayloadToHeader: x-payload, outputClaimToHeaders: [{header: x-sub, claim: sub}], forwardOriginalToken: true, timeout: 3s, audiences: [b]}]}",
    ] {
        assert!(ra(spec).is_empty(), "{spec}: {:?}", ra(spec));
    }
    for (spec, field) in [
        (
            "{jwtRules: [{issuer: a, jwksUri: \"ftp://example.com/jwks.json\"}]}",
            "spec.jwtRules[0].jwksUri",
        ),
        (
            "{jwtRules: [{issuer: a, jwks: \"{}\", spaceDelimitedClaims: [scope]}]}",
            "spec.jwtRules[0].spaceDelimitedClaims",
        ),
    ] {
        let found = ra(spec);
        assert!(found[0].verdict.is_refused(), "{spec}");
        assert_eq!(found[0].field.as_ref().unwrap().to_string(), field);
    }
}

#[test]
fn jwt_claim_routes_are_enforced() {
    // JWT claim based routing: matched against the validated token's claims on gateways
    let found = scan_doc(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [r]\n  gateways: [gw, mesh]\n  http:\n  - match: [{headers: {\"@request.auth.claims.group\": {exact: admin}, x: {exact: y}}}]\n    route: [{destination: {host: r}}]\n",
    );
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn lists_are_judged_item_by_item() {
    let found = scan_doc(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  egress:\n  - hosts: [\"*/*\", \"./*\", \"~ns/a.com\", \"*/*.b.com\"]\n",
    );
    // every host form Istio accepts is enforced (crate::scope)
    assert!(found.is_empty(), "{found:?}");
    let found = scan_doc(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}\n  - {port: {number: 5353, name: udp, protocol: UDP}, hosts: ['*']}\n  - {port: {number: 31400, name: tcp, protocol: TCP}, hosts: ['*']}\n  - {port: {number: 27017, name: mongo, protocol: MONGO}, hosts: ['*']}\n",
    );
    // TCP and MONGO servers are L4 listeners; UDP is not served: only that item is named
    let fields: Vec<String> = found
        .iter()
        .map(|u| u.field.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["spec.servers[1].port.protocol"]);
    assert!(
        found[0]
            .message
            .starts_with("gateway server protocol UDP is not enforced"),
        "{}",
        found[0].message
    );
}

#[test]
fn port_level_mtls_is_enforced() {
    // the inbound listener of each workload port (`inboundPorts`) enforces it. (This test
    // used to show that map values are scanned, through the refused portLevelMtls; no map
    // of the table has a value that is not enforced any more.)
    let found = scan_doc(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {app: a}}\n  mtls: {mode: DISABLE}\n  portLevelMtls:\n    8080: {mode: STRICT}\n    9090: {mode: UNSET}\n",
    );
    assert!(found.is_empty(), "{found:?}");
}

//! Unit tests: each names the Istio function (and, where it has one, the Istio test case in
//! `pkg/config/validation/validation_test.go`) whose behaviour it pins.

use super::common::*;
use super::*;
use crate::load::Loader;

/// Loads one document (no parse errors allowed) and validates it.
fn findings(yaml: &str) -> Vec<Finding> {
    let mut l = Loader::new();
    l.add_str("t.yaml", yaml);
    let loaded = l.finish();
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    validate(&loaded.resources)
}

fn errors(yaml: &str) -> Vec<(String, String)> {
    findings(yaml)
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| (f.field.to_string(), f.message))
        .collect()
}

fn warnings(yaml: &str) -> Vec<String> {
    findings(yaml)
        .into_iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| f.message)
        .collect()
}

fn vs(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: default}}\nspec:\n{spec}"
    )
}

fn has(errs: &[(String, String)], field: &str, msg: &str) -> bool {
    errs.iter().any(|(f, m)| f == field && m.contains(msg))
}

// === hosts and names ===

#[test]
fn validate_wildcard_domain_like_istio() {
    // agent.ValidateWildcardDomain cases from Istio's validation_test.go
    assert!(validate_wildcard_domain("istio.io").is_ok());
    assert!(validate_wildcard_domain("*.bar.com").is_ok());
    assert!(validate_wildcard_domain("*").is_ok());
    assert!(validate_wildcard_domain("*-bar.com").is_ok());
    assert!(validate_wildcard_domain("reviews").is_ok());
    assert_eq!(
        validate_wildcard_domain(""),
        Err("empty domain name not allowed".to_string())
    );
    assert!(
        validate_wildcard_domain("bar.*.com")
            .unwrap_err()
            .contains("label \"*\" invalid")
    );
    assert!(validate_wildcard_domain("foo.*").is_err());
    assert!(
        validate_wildcard_domain("foo.1")
            .unwrap_err()
            .contains("cannot be all-numeric")
    );
    assert!(
        validate_wildcard_domain(&"a".repeat(256))
            .unwrap_err()
            .contains("too long")
    );
    assert!(validate_wildcard_domain("istio.io.").is_ok());
}

#[test]
fn validate_fqdn_rejects_wildcards_and_bad_labels() {
    // agent.ValidateFQDN
    assert!(validate_fqdn("foo.bar.com").is_ok());
    assert!(validate_fqdn("*.bar.com").is_err());
    assert!(validate_fqdn("foo_bar.com").is_err());
    assert!(validate_fqdn(&format!("{}.com", "a".repeat(64))).is_err());
}

#[test]
fn host_matches_and_subset_like_host_name() {
    // host.Name.Matches / host.Name.SubsetOf (pkg/config/host/name.go)
    assert!(hosts_match("*.foo.com", "bar.foo.com"));
    assert!(hosts_match("*.foo.com", "*.com"));
    assert!(!hosts_match("foo.com", "bar.com"));
    assert!(host_subset_of("a.foo.com", "*.foo.com"));
    assert!(host_subset_of("*.a.foo.com", "*.foo.com"));
    assert!(!host_subset_of("*.foo.com", "a.foo.com"));
    assert!(!host_subset_of("*.com", "*.foo.com"));
}

#[test]
fn label_keys_follow_kubernetes_syntax() {
    // labels.validateTagKey / labels.Instance.Validate
    assert!(validate_label_key("app").is_ok());
    assert!(validate_label_key("app.kubernetes.io/name").is_ok());
    assert!(validate_label_key("topology.istio.io/subzone").is_ok());
    assert!(validate_label_key("-app").is_err());
    assert!(validate_label_key("/app").is_err());
    assert!(validate_label_key("a/b/c").is_err());
    assert!(
        validate_label_key(&"a".repeat(64))
            .unwrap_err()
            .contains("name is too long")
    );
    assert!(validate_label_value("").is_ok());
    assert!(validate_label_value("v1.2_3").is_ok());
    assert_eq!(
        validate_label_value("v1 "),
        Err("invalid tag value: \"v1 \"".to_string())
    );
}

#[test]
fn ip_subnets_like_validate_ip_subnet() {
    // agent.ValidateIPSubnet
    assert!(validate_ip_subnet("10.0.0.0/8").is_ok());
    assert!(validate_ip_subnet("2001:db8::/32").is_ok());
    assert!(validate_ip_subnet("1.2.3.4").is_ok());
    assert_eq!(
        validate_ip_subnet("10.0.0.0/33"),
        Err("10.0.0.0/33 is not a valid CIDR block".to_string())
    );
    assert_eq!(
        validate_ip_subnet("10.0.0.0/08"),
        Err("10.0.0.0/08 is not a valid CIDR block".to_string())
    );
    assert_eq!(
        validate_ip_subnet("foo"),
        Err("foo is not a valid IP".to_string())
    );
}

#[test]
fn durations_need_one_millisecond_and_ms_precision() {
    // agent.ValidateDuration
    let d = |s: &str| crate::GoDuration::parse(s).unwrap();
    assert!(validate_duration(d("1ms")).is_ok());
    assert!(validate_duration(d("1.5s")).is_ok());
    assert_eq!(
        validate_duration(d("0s")),
        Err("duration must be greater than 1ms".to_string())
    );
    assert_eq!(
        validate_duration(d("1500us")),
        Err("only durations to ms precision are supported".to_string())
    );
}

#[test]
fn percentages_like_validate_percentage() {
    // validatePercentage and ValidatePercent
    use crate::percent::Percent;
    assert!(validate_percentage(Percent::new(0.0)).is_ok());
    assert!(validate_percentage(Percent::new(0.0001)).is_ok());
    assert_eq!(
        validate_percentage(Percent::new(0.00001)),
        Err("percentage 0.00001 is neither 0.0, nor in range [0.0001, 100.0]".to_string())
    );
    assert_eq!(
        validate_percentage(Percent::new(150.0)),
        Err("percentage 150 is neither 0.0, nor in range [0.0001, 100.0]".to_string())
    );
    assert_eq!(
        validate_percent(101),
        Err("percentage 101 is not in range 0..100".to_string())
    );
}

#[test]
fn regexes_are_re2_and_bounded() {
    // validateStringRegexp
    assert!(validate_regex("^/api/v[0-9]+/.*", "uri").is_ok());
    let e = validate_regex("(a", "uri").unwrap_err();
    assert!(e.starts_with("\"uri\": error parsing regexp:"), "{e}");
    assert!(e.ends_with("(https://github.com/google/re2/wiki/Syntax)"));
    // look-around is not RE2
    assert!(validate_regex("(?=a)b", "uri").is_err());
    assert!(
        validate_regex(&"a".repeat(1025), "uri")
            .unwrap_err()
            .contains("regex is too large, max length allowed is 1024")
    );
    // a short pattern that compiles to a huge program: Istio's rules accept it; the route
    // table build refuses it (crate::pattern::SIZE_LIMIT), in validate and run alike
    assert!(validate_regex("(\\w{500}){500}", "uri").is_ok());
    assert!(matches!(
        crate::pattern::FullMatch::compile("(\\w{500}){500}", crate::pattern::SIZE_LIMIT),
        Err(crate::pattern::PatternError::TooBig(_))
    ));
}

#[test]
fn header_names_and_values_like_istio() {
    // ValidateHTTPHeaderNameOrJwtClaimRoute, ValidateHTTPHeaderOperationName,
    // ValidateHTTPHeaderWithAuthorityOperationName, ValidateHTTPHeaderValue
    assert!(validate_header_match_name("x-user").is_ok());
    assert!(validate_header_match_name(":authority").is_ok());
    assert!(validate_header_match_name("@request.auth.claims.groups").is_ok());
    assert!(validate_header_match_name("x user").is_err());
    assert!(validate_header_set_name(":authority").is_ok());
    assert!(validate_header_set_name("Host").is_ok());
    assert_eq!(
        validate_header_set_name(":path"),
        Err("invalid header \":path\": header cannot have \":\" prefix".to_string())
    );
    assert_eq!(
        validate_header_op_name("host"),
        Err("invalid header \"host\": cannot set Host header".to_string())
    );
    assert!(validate_header_value("%HOSTNAME%").is_ok());
    assert!(validate_header_value("100%%").is_ok());
    assert!(validate_header_value("prefix %REQ(x-id)% suffix").is_ok());
    assert!(validate_header_value("abc%123").is_err());
    assert!(validate_header_value("a\u{1}b").is_err());
}

#[test]
fn is_prime_matches_envoy() {
    // isPrime copied from Envoy's utility.cc
    use super::destination_rule::is_prime;
    assert!(is_prime(65537));
    assert!(is_prime(2) && is_prime(3));
    assert!(!is_prime(0));
    assert!(!is_prime(65536));
    assert!(!is_prime(9));
    // large values: no stall, right answers (2^61-1 is prime, 2^62 - 1 is not)
    assert!(is_prime((1u64 << 61) - 1));
    assert!(!is_prime((1u64 << 62) - 1));
    assert!(is_prime(18_446_744_073_709_551_557));
    assert!(!is_prime(u64::MAX));
}

#[test]
fn retry_on_tokens_like_validate_http_retry() {
    // agent.ValidateHTTPRetry: Envoy conditions or known HTTP statuses, no trimming
    use super::virtual_service::is_retry_on_policy;
    assert!(is_retry_on_policy("gateway-error"));
    assert!(is_retry_on_policy("503"));
    assert!(is_retry_on_policy("resource-exhausted"));
    assert!(!is_retry_on_policy(" 5xx"));
    assert!(!is_retry_on_policy("999"));
    assert!(!is_retry_on_policy("bogus"));
}

#[test]
fn localities_like_validate_localities() {
    // agent.validateLocalities
    use super::destination_rule::validate_localities;
    assert!(validate_localities(&["region1/zone1/*", "region2/*"]).is_ok());
    assert!(
        validate_localities(&["region1/*", "region1/zone1"])
            .unwrap_err()
            .contains("overlap")
    );
    assert!(
        validate_localities(&["region1/*/zone"])
            .unwrap_err()
            .contains("wildcard '*' number can not exceed 1 and must be in the end")
    );
    assert!(
        validate_localities(&["region1//zone"])
            .unwrap_err()
            .contains("must not contain empty")
    );
}

#[test]
fn condition_keys_like_validate_attribute() {
    // security.ValidateAttribute
    use super::authz::validate_attribute;
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(validate_attribute("request.headers[x-token]", &v(&["a"])).is_ok());
    assert!(validate_attribute("source.ip", &v(&["10.0.0.0/8", "1.2.3.4"])).is_ok());
    assert!(validate_attribute("destination.port", &v(&["8080"])).is_ok());
    assert_eq!(
        validate_attribute("request.headers", &v(&["a"])),
        Err("bad key (request.headers): should have format a[b]".to_string())
    );
    assert_eq!(
        validate_attribute("source.ip", &v(&["1.2.3.999"])),
        Err("bad IP address (1.2.3.999)".to_string())
    );
    assert_eq!(
        validate_attribute("destination.port", &v(&["70000"])),
        Err("bad port (70000)".to_string())
    );
    assert_eq!(
        validate_attribute("destination.labels[app]", &v(&["a"])),
        Err("attribute destination.labels[app] is replaced by the workload selector".to_string())
    );
    assert_eq!(
        validate_attribute("foo.bar", &v(&["a"])),
        Err("unknown attribute: foo.bar".to_string())
    );
    assert!(validate_attribute("source.trustDomain", &v(&["*.local"])).is_ok());
    assert!(validate_attribute("source.trustDomain", &v(&["a*b"])).is_err());
}

#[test]
fn jwks_uri_like_parse_jwks_uri() {
    // security.ParseJwksURI
    use super::authz::parse_jwks_uri;
    assert!(parse_jwks_uri("https://example.com/.well-known/jwks.json").is_ok());
    assert!(parse_jwks_uri("http://example.com:8080/jwks").is_ok());
    assert_eq!(
        parse_jwks_uri("ftp://example.com/jwks"),
        Err("URI scheme \"ftp\" is not supported".to_string())
    );
    assert!(parse_jwks_uri("https://example.com:abc/jwks").is_err());
    // the authority through mesh_core::authority, as Go's url.Parse reads it
    assert!(parse_jwks_uri("https://u:p@example.com:8443/jwks").is_ok());
    assert!(parse_jwks_uri("https://[::1]:8443/jwks").is_ok());
    assert!(parse_jwks_uri("https://[::1]/jwks").is_ok());
    assert_eq!(
        parse_jwks_uri("https://[::1]:x/jwks"),
        Err("parse \"https://[::1]:x/jwks\": invalid port \":x\" after host".to_string())
    );
    assert_eq!(
        parse_jwks_uri("https://[::1/jwks"),
        Err("parse \"https://[::1/jwks\": missing ']' in host".to_string())
    );
}

// === VirtualService ===

#[test]
fn weight_errors_point_at_the_weight() {
    // validateHTTPRouteDestinations: "weight %d < 0", "total destination weight = 0"
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, subset: v1}\n      weight: -1\n    - destination: {host: r, subset: v2}\n      weight: 1\n",
    ));
    assert!(
        has(&e, "spec.http[0].route[0].weight", "weight -1 < 0"),
        "{e:?}"
    );
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, subset: v1}\n    - destination: {host: r, subset: v2}\n",
    ));
    assert!(
        has(&e, "spec.http[0].route", "total destination weight = 0"),
        "{e:?}"
    );
}

#[test]
fn mesh_bound_virtual_service_rejects_star_host() {
    // ValidateVirtualService: wildcard host * with the mesh gateway
    let e = errors(&vs(
        "  hosts: ['*']\n  http:\n  - route:\n    - destination: {host: r}\n",
    ));
    assert!(has(
        &e,
        "spec.hosts[0]",
        "wildcard host * is not allowed for virtual services bound to the mesh gateway"
    ));
    let e = errors(&vs(
        "  hosts: ['*']\n  gateways: [istio-system/gw]\n  http:\n  - route:\n    - destination: {host: r}\n",
    ));
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn duplicate_hosts_are_errors() {
    // ValidateVirtualService: "duplicate hosts in virtual service"
    let e = errors(&vs(
        "  hosts: ['*.foo.com', bar.foo.com]\n  http:\n  - route:\n    - destination: {host: r}\n",
    ));
    assert!(has(
        &e,
        "spec.hosts[1]",
        "duplicate hosts in virtual service: *.foo.com & bar.foo.com"
    ));
}

#[test]
fn route_conflicts_use_istio_wording() {
    // validateHTTPRouteConflict
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - redirect: {uri: /x}\n    route:\n    - destination: {host: r}\n",
    ));
    assert!(has(
        &e,
        "spec.http[0]",
        "HTTP route cannot contain both route and redirect"
    ));
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - match: [{uri: {prefix: /}}]\n",
    ));
    assert!(has(
        &e,
        "spec.http[0]",
        "HTTP route, redirect or direct_response is required"
    ));
}

#[test]
fn delegate_rules() {
    // validateHTTPRouteConflict (root and delegate routes) and delegate VirtualServices
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - name: root\n    delegate: {name: d}\n    route:\n    - destination: {host: r}\n",
    ));
    assert!(has(
        &e,
        "spec.http[0].route",
        "root HTTP route root must not specify route"
    ));
    let e = errors(&vs("  gateways: [gw]\n  http:\n  - delegate: {name: d}\n"));
    assert!(has(
        &e,
        "spec.gateways",
        "delegate virtual service must have no gateways specified"
    ));
    assert!(has(
        &e,
        "spec.http[0].delegate",
        "delegate HTTP route cannot contain delegate"
    ));
}

#[test]
fn retriable_headers_is_accepted_with_a_warning_it_has_no_effect() {
    let spec = "  hosts: [r]\n  http:\n  - retries: {attempts: 2, retryOn: '5xx,retriable-headers'}\n    route:\n    - destination: {host: r}\n";
    assert_eq!(errors(&vs(spec)), Vec::<(String, String)>::new());
    let w = warnings(&vs(spec));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("retriable-headers has no effect"), "{w:?}");
    let plain = spec.replace(",retriable-headers", "");
    assert!(warnings(&vs(&plain)).is_empty());
}

#[test]
fn unreachable_rules_are_warnings() {
    // analyzeUnreachableHTTPRules
    let w = warnings(&vs(
        "  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n  - name: late\n    match: [{uri: {prefix: /a}}]\n    route:\n    - destination: {host: r}\n",
    ));
    assert_eq!(
        w,
        vec!["virtualService rule \"late\" not used (route without matches defined before)"]
    );
    let w = warnings(&vs(
        "  hosts: [r]\n  http:\n  - match: [{uri: {prefix: /a}}]\n    route:\n    - destination: {host: r}\n  - match: [{uri: {prefix: /a}}]\n    route:\n    - destination: {host: r}\n",
    ));
    assert!(
        w.contains(
            &"virtualService rule #1 match #0 is not used (duplicate/overlapping match in rule #0)"
                .to_string()
        ),
        "{w:?}"
    );
    assert!(w.contains(
        &"virtualService rule #1 not used (all matches used by prior rules)".to_string()
    ));
    // overlapping prefixes: /debug covers /debugs
    let w = warnings(&vs(
        "  hosts: [r]\n  http:\n  - match: [{uri: {prefix: /debug}}]\n    route:\n    - destination: {host: r}\n  - match: [{uri: {prefix: /debugs}}]\n    route:\n    - destination: {host: r}\n",
    ));
    assert_eq!(
        w,
        vec![
            "virtualService rule #1 match #0 of prefix /debugs is not used (duplicate/overlapping match in rule #0 of prefix /debug on #0)"
        ]
    );
}

#[test]
fn retries_faults_and_redirects() {
    // agent.ValidateHTTPRetry, validateHTTPFaultInjection, validateHTTPRedirect
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    retries: {attempts: 0, perTryTimeout: 2s}\n    fault:\n      abort: {httpStatus: 700, percentage: {value: 10}}\n",
    ));
    assert!(has(
        &e,
        "spec.http[0].retries",
        "http retry policy configured when attempts are set to 0 (disabled)"
    ));
    assert!(has(
        &e,
        "spec.http[0].fault.abort.httpStatus",
        "HTTP status 700 is not in range 200-599"
    ));
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - redirect: {uri: /x, redirectCode: 200}\n",
    ));
    assert!(has(
        &e,
        "spec.http[0].redirect.redirectCode",
        "200 is not a valid redirect code, must be 3xx"
    ));
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    retries: {attempts: 3, retryOn: '5xx,bogus'}\n",
    ));
    assert!(has(
        &e,
        "spec.http[0].retries.retryOn",
        "\"bogus\" is not a valid retryOn policy"
    ));
}

#[test]
fn jwt_claim_routing_needs_a_gateway() {
    // ValidateVirtualService: JWT claim based routing is only supported for gateway
    let e = errors(&vs(
        "  hosts: [r]\n  http:\n  - match: [{headers: {'@request.auth.claims.group': {exact: admin}}}]\n    route:\n    - destination: {host: r}\n",
    ));
    assert!(e.iter().any(|(_, m)| m.starts_with("JWT claim based routing (key: @request.auth.claims.group) is only supported for gateway")), "{e:?}");
}

// === other kinds ===

#[test]
fn destination_rule_rules() {
    // ValidateDestinationRule: duplicate subsets, maglev, locality weights, MUTUAL TLS
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x, maglev: {tableSize: 1000}}\n      localityLbSetting:\n        distribute:\n        - from: a/b/*\n          to: {a/b/*: 60, c/*: 30}\n    tls: {mode: MUTUAL}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1, labels: {version: v2}}\n",
    );
    assert!(has(
        &e,
        "spec.subsets[1].name",
        "duplicate subset names: v1"
    ));
    assert!(has(
        &e,
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "tableSize must be a prime number for maglev"
    ));
    assert!(has(
        &e,
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "total locality weight 90 != 100"
    ));
    assert!(has(
        &e,
        "spec.trafficPolicy.tls",
        "client certificate required for mutual tls"
    ));
}

#[test]
fn service_entry_resolution_rules() {
    // ValidateServiceEntry
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: ['*.example.com']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n",
    );
    assert!(e.iter().any(|(_, m)| m.starts_with("hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode DNS")), "{e:?}");
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints:\n  - address: a.example.com\n    ports: {https: 443}\n",
    );
    assert!(has(
        &e,
        "spec.endpoints[0].address",
        "endpoint address \"a.example.com\" is not a valid IP address"
    ));
    assert!(has(
        &e,
        "spec.endpoints[0].ports.https",
        "endpoint port 443 is not defined by the service entry"
    ));
}

#[test]
fn gateway_rules() {
    // ValidateGateway, validateServer, validateTLSOptions
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [example.com]\n  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: ['ns/example.com']\n    tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k}\n",
    );
    assert!(has(
        &e,
        "spec.servers[0]",
        "server must have TLS settings for HTTPS/TLS protocols"
    ));
    assert!(has(
        &e,
        "spec.servers[1].tls.caCertificates",
        "MUTUAL TLS requires a client CA bundle"
    ));
    assert!(has(
        &e,
        "spec.servers[1].port.name",
        "port names in servers must be unique: duplicate name https"
    ));
}

#[test]
fn authorization_policy_rules() {
    // ValidateAuthorizationPolicy
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  action: CUSTOM\n  rules:\n  - from: [{source: {principals: [x]}}]\n",
    );
    assert!(has(
        &e,
        "spec.provider",
        "`provider.name` must not be empty"
    ));
    assert!(has(
        &e,
        "spec.rules[0].from[0].source.principals",
        "From.Principals is currently not supported with CUSTOM action"
    ));
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  action: DENY\n",
    );
    assert!(has(
        &e,
        "spec.rules",
        "DENY action without `rules` is meaningless"
    ));
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n",
    );
    assert!(w[0].starts_with("configured AuthorizationPolicy will deny all traffic to TCP ports"));
}

#[test]
fn peer_authentication_port_level_needs_selector() {
    // ValidatePeerAuthentication
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
    );
    assert!(has(
        &e,
        "spec.portLevelMtls",
        "mesh/namespace peer authentication cannot have port level mTLS"
    ));
}

#[test]
fn request_authentication_rules() {
    // validateJwtRule
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec:\n  jwtRules:\n  - fromHeaders: [{name: ''}]\n",
    );
    assert!(has(
        &e,
        "spec.jwtRules[0].issuer",
        "issuer or jwksUri must be non-empty string"
    ));
    assert!(has(
        &e,
        "spec.jwtRules[0].fromHeaders[0].name",
        "location header name must be non-empty string"
    ));
}

#[test]
fn a_file_jwks_uri_is_a_warned_extension() {
    // Istio's validateJwksURI refuses the scheme; mesh-proxy reads the file, and says so
    let doc = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec:\n  jwtRules:\n  - {issuer: a, jwksUri: 'file:///etc/jwks.json'}\n";
    assert!(errors(doc).is_empty(), "{:?}", errors(doc));
    let c = crate::config::load_str_with("ra.yaml", doc, crate::config::CheckMode::Istio)
        .expect("accepted with a warning");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.message.starts_with("file:// is a mesh-proxy extension")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn sidecar_rules() {
    // ValidateSidecar
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  egress:\n  - hosts: [foo.example.com]\n",
    );
    assert!(has(
        &e,
        "spec.egress[0].hosts[0]",
        "host must be of form namespace/dnsName"
    ));
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {}\n",
    );
    assert!(has(&e, "spec", "sidecar: empty configuration provided"));
}

#[test]
fn dry_run_annotation_only_on_authorization_policy() {
    // validateMetadata / checkDryRunAnnotation
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\n  namespace: ns\n  annotations: {istio.io/dry-run: 'true'}\nspec:\n  host: r\n",
    );
    assert!(has(
        &e,
        "metadata.annotations[\"istio.io/dry-run\"]",
        "ns/d has unsupported annotation istio.io/dry-run, please remove the annotation"
    ));
}

#[test]
fn bootstrap_rules() {
    // this project's ProxyBootstrap rules
    let e = errors(
        "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {name: p}\nspec:\n  outbound: {port: 15001}\n  admin: {port: 15001}\n  inbound: {port: 15006}\n  limits: {maxRequestHeadersKb: 0, connectTimeout: 0s}\n",
    );
    assert!(has(
        &e,
        "spec.admin.port",
        "local port 15001 is already used by spec.outbound.port"
    ));
    assert!(has(
        &e,
        "spec.inbound.localApp",
        "inbound.localApp is required"
    ));
    assert!(has(
        &e,
        "spec.limits.maxRequestHeadersKb",
        "must be greater than 0"
    ));
    assert!(has(
        &e,
        "spec.limits.connectTimeout",
        "duration must be greater than 1ms"
    ));
}

#[test]
fn every_finding_names_its_resource() {
    // findings carry the index of their resource in the slice
    let y = format!(
        "{}---\n{}",
        vs("  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n"),
        vs("  hosts: [b]\n  http:\n  - route:\n    - destination: {host: b}\n      weight: -1\n")
            .replace("name: v,", "name: w,")
    );
    let f = findings(&y);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].resource, 1);
}

//! `ValidateVirtualService` (`pkg/config/validation/validation.go`) and `validateHTTPRoute`
//! (`pkg/config/validation/virtualservice.go`).

use std::collections::{BTreeMap, HashMap};

use crate::error::FieldPath;
use crate::model::networking::{
    CorsPolicy, Destination, Headers, HttpDirectResponse, HttpFaultInjection, HttpMatchRequest,
    HttpMirrorPolicy, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination,
    L4MatchAttributes, RouteDestination, StringMatch, TcpRoute, TlsMatchAttributes, TlsRoute,
    VirtualService,
};
use crate::policy::RETRY_ON_NAMES;

use super::common::{
    self, host_subset_of, hosts_match, is_dns1123_label, is_ip, is_jwt_claim_route,
    validate_duration, validate_fqdn, validate_labels, validate_percentage, validate_port,
    validate_string_match, validate_string_match_regexp, validate_wildcard_domain,
};
use super::{PathExt, Report};

/// The reserved gateway name of the sidecars.
pub(crate) const MESH_GATEWAY: &str = "mesh";

/// Methods `validateCORSHTTPMethod` accepts (Go's `net/http` methods and `*`).
const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// `grpc.SupportedGRPCStatus`.
pub(crate) const GRPC_STATUSES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const KB: usize = 1024;
const MB: usize = 1024 * KB;

/// `ValidateVirtualService`.
pub(crate) fn validate(vs: &VirtualService, ns: &str, at: &FieldPath, rep: &mut Report<'_>) {
    let is_delegate = vs.hosts.is_empty();
    if is_delegate {
        if !vs.gateways.is_empty() {
            rep.error(
                &at.k("gateways"),
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            rep.error(
                &at.k("tls"),
                "delegate virtual service must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            rep.error(
                &at.k("tcp"),
                "delegate virtual service must have no tcp route specified",
            );
        }
    }

    let (applies_to_mesh, applies_to_gateway) = if vs.gateways.is_empty() {
        (true, false)
    } else {
        validate_gateway_names(&vs.gateways, &at.k("gateways"), rep);
        let gw = is_gateway(vs);
        (!gw, gw)
    };

    if !applies_to_gateway {
        for (i, http) in vs.http.iter().enumerate() {
            for (j, m) in http.matches.iter().enumerate() {
                let mp = at.ki("http", i).ki("match", j);
                for (field, map) in [
                    ("headers", &m.headers),
                    ("withoutHeaders", &m.without_headers),
                ] {
                    for key in map.keys().filter(|k| is_jwt_claim_route(k)) {
                        rep.error(
                            &mp.k(field).k(key),
                            format!(
                                "JWT claim based routing (key: {key}) is only supported for gateway, found no gateways: [{}]",
                                vs.gateways.join(" ")
                            ),
                        );
                    }
                }
            }
        }
    }

    let mut all_hosts_valid = true;
    let sni = is_sni_host(vs);
    for (i, host) in vs.hosts.iter().enumerate() {
        let p = at.ki("hosts", i);
        let res = if applies_to_gateway {
            validate_wildcard_domain_for_gateway_vs(sni, host)
        } else {
            validate_wildcard_domain(host)
        };
        match res {
            Err(e) => {
                if !is_ip(host) {
                    rep.error(&p, e);
                    all_hosts_valid = false;
                }
            }
            Ok(()) if applies_to_mesh && host == "*" => {
                rep.error(
                    &p,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            Ok(()) => {}
        }
    }
    if all_hosts_valid {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if hosts_match(&vs.hosts[i], &vs.hosts[j]) {
                    rep.error(
                        &at.ki("hosts", j),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            vs.hosts[i], vs.hosts[j]
                        ),
                    );
                }
            }
        }
    }

    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        rep.error(at, "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in vs.http.iter().enumerate() {
        validate_http_route(route, is_delegate, &at.ki("http", i), rep);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        validate_tls_route(route, vs, &at.ki("tls", i), rep);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        validate_tcp_route(route, &at.ki("tcp", i), rep);
    }
    common::validate_export_to(ns, &vs.export_to, false, false, &at.k("exportTo"), rep);

    analyze_unreachable_http_rules(&vs.http, &at.k("http"), rep);
    analyze_unreachable_rules(&vs.tcp, |r: &TcpRoute| &r.matches, &at.k("tcp"), rep);
    analyze_unreachable_rules(&vs.tls, |r: &TlsRoute| &r.matches, &at.k("tls"), rep);
}

/// `isGateway`: bound to gateways only (not the reserved `mesh`).
fn is_gateway(vs: &VirtualService) -> bool {
    !vs.gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// `isSniHost`.
fn is_sni_host(vs: &VirtualService) -> bool {
    vs.tls
        .iter()
        .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()))
}

/// `agent.ValidateWildcardDomainForVirtualServiceBoundToGateway`: also accepts the SNI names
/// of AUTO_PASSTHROUGH gateways (`outbound_.<port>_._.<host>`).
fn validate_wildcard_domain_for_gateway_vs(sni: bool, domain: &str) -> Result<(), String> {
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {domain} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format"
            ));
        }
        let port = parts[1].trim_matches('.');
        let host = parts[3].trim_matches('.');
        if !port.bytes().any(|c| c.is_ascii_digit()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {port:?} invalid). should follow outbound_.<PORT>_._.<HOSTNAME> format"
            ));
        }
        if !host.bytes().any(|c| c.is_ascii_alphabetic()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {host:?} invalid). should follow outbound_.<PORT>_._.<HOSTNAME> format"
            ));
        }
        return Ok(());
    }
    validate_wildcard_domain(domain)
}

/// `validateGatewayNames`. Like Istio, it stops at the first name without a namespace.
pub(crate) fn validate_gateway_names(names: &[String], at: &FieldPath, rep: &mut Report<'_>) {
    for (i, name) in names.iter().enumerate() {
        let p = at.i(i);
        let Some((ns, gw)) = name.split_once('/') else {
            if name.contains('.') {
                let parts: Vec<&str> = name.split('.').collect();
                rep.warn(
                    &p,
                    format!(
                        "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: {:?}",
                        format!("{}/{}", parts.get(1).unwrap_or(&""), parts[0])
                    ),
                );
            }
            rep.check(&p, validate_fqdn(name));
            return;
        };
        if ns.is_empty() || gw.is_empty() {
            rep.error(&p, "config namespace and gateway name cannot be empty");
        }
        if !is_dns1123_label(ns) {
            rep.error(&p, format!("invalid value for namespace: {ns:?}"));
        }
        if !is_dns1123_label(gw) {
            rep.error(&p, format!("invalid value for gateway name: {gw:?}"));
        }
    }
}

// ============================================================================================
// HTTP routes
// ============================================================================================

#[derive(PartialEq, Eq)]
enum RouteType {
    Independent,
    Root,
    Delegate,
}

/// `validateHTTPRoute`.
fn validate_http_route(http: &HttpRoute, delegate: bool, at: &FieldPath, rep: &mut Report<'_>) {
    let route_type = if delegate {
        RouteType::Delegate
    } else if http.delegate.is_some() {
        RouteType::Root
    } else {
        RouteType::Independent
    };
    validate_http_route_conflict(http, &route_type, at, rep);
    validate_http_match_requests(&http.matches, &at.k("match"), rep);
    validate_headers(http.headers.as_ref(), &at.k("headers"), rep);
    if let Some(c) = &http.cors_policy {
        validate_cors_policy(c, &at.k("corsPolicy"), rep);
    }
    if let Some(f) = &http.fault {
        validate_fault(f, &at.k("fault"), rep);
    }
    if let Some(v) = http.mirror_percent {
        let p = at.k("mirrorPercent");
        if v > 100 {
            rep.error(
                &p,
                format!("mirror_percent must have a max value of 100 (it has {v})"),
            );
        }
        rep.warn(
            &p,
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(mp) = http.mirror_percentage {
        let p = at.k("mirrorPercentage").k("value");
        if mp.value > 100.0 {
            rep.error(
                &p,
                format!(
                    "mirror_percentage must have a max value of 100 (it has {:.6})",
                    mp.value
                ),
            );
        }
        if mp.value < 0.0 {
            rep.error(
                &p,
                format!(
                    "mirror_percentage must have a min value of 0 (it has {:.6})",
                    mp.value
                ),
            );
        }
    }
    if let Some(m) = &http.mirror {
        validate_destination(m, &at.k("mirror"), rep);
    }
    validate_mirrors(&http.mirrors, &at.k("mirrors"), rep);
    if let Some(r) = &http.redirect {
        validate_redirect(r, &http.matches, &at.k("redirect"), rep);
    }
    if let Some(d) = &http.direct_response {
        validate_direct_response(d, &at.k("directResponse"), rep);
    }
    if let Some(r) = &http.retries {
        validate_retry(r, &at.k("retries"), rep);
    }
    if let Some(r) = &http.rewrite {
        validate_rewrite(r, &at.k("rewrite"), rep);
    }
    validate_authority_rewrite(http, at, rep);
    validate_http_route_destinations(&http.route, &at.k("route"), rep);
    if let Some(t) = http.timeout {
        rep.check(&at.k("timeout"), validate_duration(t));
    }
}

/// `validateHTTPRouteConflict`.
fn validate_http_route_conflict(
    http: &HttpRoute,
    route_type: &RouteType,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let name = http.name.as_deref().unwrap_or("");
    if *route_type == RouteType::Root {
        if http.redirect.is_some() {
            rep.error(
                &at.k("redirect"),
                format!("root HTTP route {name} must not specify redirect"),
            );
        }
        if !http.route.is_empty() {
            rep.error(
                &at.k("route"),
                format!("root HTTP route {name} must not specify route"),
            );
        }
        return;
    }
    if *route_type == RouteType::Delegate && http.delegate.is_some() {
        rep.error(
            &at.k("delegate"),
            "delegate HTTP route cannot contain delegate",
        );
    }
    if http.redirect.is_some() {
        if !http.route.is_empty() {
            rep.error(at, "HTTP route cannot contain both route and redirect");
        }
        if http.fault.is_some() {
            rep.error(at, "HTTP route cannot contain both fault and redirect");
        }
        if http.rewrite.is_some() {
            rep.error(
                at,
                "HTTP route rule cannot contain both rewrite and redirect",
            );
        }
        if http.direct_response.is_some() {
            rep.error(
                at,
                "HTTP route rule cannot contain both direct_response and redirect",
            );
        }
    } else if http.direct_response.is_some() {
        if !http.route.is_empty() {
            rep.error(
                at,
                "HTTP route cannot contain both route and direct_response",
            );
        }
        if http.fault.is_some() {
            rep.error(
                at,
                "HTTP route cannot contain both fault and direct_response",
            );
        }
        if http.rewrite.is_some() {
            rep.error(
                at,
                "HTTP route rule cannot contain both rewrite and direct_response",
            );
        }
    } else if http.route.is_empty() {
        rep.error(at, "HTTP route, redirect or direct_response is required");
    }
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        rep.error(at, "HTTP route cannot contain both mirror and mirrors");
    }
}

/// `validateHTTPRouteMatchRequest`.
fn validate_http_match_requests(
    matches: &[HttpMatchRequest],
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    for (i, m) in matches.iter().enumerate() {
        let mp = at.i(i);
        for (name, sm) in &m.headers {
            let p = mp.k("headers").k(name);
            rep.check(&p, common::validate_header_match_name(name));
            validate_string_match(sm, "headers", &p, rep);
        }
        for (name, sm) in &m.without_headers {
            let p = mp.k("withoutHeaders").k(name);
            rep.check(&p, common::validate_header_match_name(name));
            // `regex: "*"` is not RE2: it means "present"
            if sm.regex.as_deref() != Some("*") {
                validate_string_match(sm, "withoutHeaders", &p, rep);
            }
        }
        // an empty URI prefix is allowed (Envoy's path matcher), other empty prefixes not
        if let Some(u) = &m.uri {
            let p = mp.k("uri");
            if common::string_match_oneof(u, &p, rep) {
                validate_string_match_regexp(u, "uri", &p, rep);
            }
        }
        for (field, sm) in [
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                validate_string_match(sm, field, &mp.k(field), rep);
            }
        }
        for (name, sm) in &m.query_params {
            validate_string_match(sm, "queryParams", &mp.k("queryParams").k(name), rep);
        }
        if let Some(port) = m.port
            && port != 0
        {
            rep.check(&mp.k("port"), validate_port(i64::from(port)));
        }
        validate_labels(&m.source_labels, &mp.k("sourceLabels"), rep);
        validate_gateway_names(&m.gateways, &mp.k("gateways"), rep);
        if let Some(sn) = &m.source_namespace
            && !sn.is_empty()
            && !is_dns1123_label(sn)
        {
            rep.error(
                &mp.k("sourceNamespace"),
                format!("sourceNamespace match {sn} is invalid"),
            );
        }
    }
}

/// The header operations of a route or a destination (`validateHTTPRoute`,
/// `validateHTTPRouteDestinations`).
fn validate_headers(headers: Option<&Headers>, at: &FieldPath, rep: &mut Report<'_>) {
    let Some(h) = headers else { return };
    if let Some(req) = &h.request {
        let p = at.k("request");
        for (op, map) in [("add", &req.add), ("set", &req.set)] {
            for (name, val) in map {
                let hp = p.k(op).k(name);
                rep.check(&hp, common::validate_header_set_name(name));
                let checked = common::validate_header_value_kept(val, rep);
                rep.check(&hp, checked);
            }
        }
        for (i, name) in req.remove.iter().enumerate() {
            rep.check(&p.ki("remove", i), common::validate_header_op_name(name));
        }
    }
    if let Some(resp) = &h.response {
        let p = at.k("response");
        for (op, map) in [("add", &resp.add), ("set", &resp.set)] {
            for (name, val) in map {
                let hp = p.k(op).k(name);
                rep.check(&hp, common::validate_header_op_name(name));
                let checked = common::validate_header_value_kept(val, rep);
                rep.check(&hp, checked);
            }
        }
        for (i, name) in resp.remove.iter().enumerate() {
            rep.check(&p.ki("remove", i), common::validate_header_op_name(name));
        }
    }
}

/// `validateAuthorityRewrite`: the authority is rewritten in one place only.
fn validate_authority_rewrite(http: &HttpRoute, at: &FieldPath, rep: &mut Report<'_>) {
    let mut current = http
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .unwrap_or_default();
    let Some(req) = http.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (op, map) in [("set", &req.set), ("add", &req.add)] {
        for (k, v) in map.iter().filter(|(k, _)| common::is_authority_header(k)) {
            if !current.is_empty() {
                rep.error(
                    &at.k("headers").k("request").k(op).k(k),
                    format!(
                        "authority header cannot be set multiple times: have {current:?}, attempting to set {v:?}"
                    ),
                );
                return;
            }
            current = v.clone();
        }
    }
}

/// `validateCORSPolicy`.
fn validate_cors_policy(c: &CorsPolicy, at: &FieldPath, rep: &mut Report<'_>) {
    for (i, origin) in c.allow_origins.iter().enumerate() {
        let p = at.ki("allowOrigins", i);
        if !common::string_match_oneof(origin, &p, rep) {
            continue;
        }
        let m = origin
            .exact
            .as_deref()
            .or(origin.prefix.as_deref())
            .or(origin.regex.as_deref())
            .unwrap_or("");
        if m.is_empty() {
            rep.error(
                &p,
                format!("'{m}' is not a valid match type for CORS allow origins"),
            );
        } else {
            validate_string_match_regexp(origin, "corsPolicy.allowOrigins", &p, rep);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            rep.error(
                &at.ki("allowMethods", i),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            rep.check(&at.ki(field, i), common::validate_cors_header_name(h));
        }
    }
    if let Some(ma) = c.max_age {
        let p = at.k("maxAge");
        rep.check(&p, validate_duration(ma));
        if ma.get().subsec_nanos() > 0 {
            rep.error(&p, "max_age duration is accurate only to seconds precision");
        }
    }
}

/// A fault without a percentage injects nothing in Istio (Envoy reads the unset fraction as
/// 0; istio/istio#36303), although its documentation long said "all requests": not Istio's
/// own warning, but the surprise it hides is worth one.
const NO_PERCENTAGE: &str = "no percentage: this fault is injected into no request (as Istio); set percentage.value: 100 for every request";

/// `validateHTTPFaultInjection`.
fn validate_fault(f: &HttpFaultInjection, at: &FieldPath, rep: &mut Report<'_>) {
    if f.abort.is_none() && f.delay.is_none() {
        rep.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        let p = at.k("abort");
        if let Some(pc) = a.percentage {
            rep.check(&p.k("percentage").k("value"), validate_percentage(pc));
        } else {
            rep.warn(&p, NO_PERCENTAGE);
        }
        let ok = common::oneof(
            &[
                ("httpStatus", a.http_status.is_some()),
                ("grpcStatus", a.grpc_status.is_some()),
                ("http2Error", a.http2_error.is_some()),
            ],
            &p,
            rep,
        );
        if ok {
            if let Some(g) = &a.grpc_status {
                if !GRPC_STATUSES.contains(&g.as_str()) {
                    rep.error(
                        &p.k("grpcStatus"),
                        format!(
                            "gRPC status {g:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"
                        ),
                    );
                }
            } else if a.http2_error.is_some() {
                rep.error(
                    &p.k("http2Error"),
                    "HTTP/2 abort fault injection not supported yet",
                );
            } else if let Some(s) = a.http_status {
                rep.check(&p.k("httpStatus"), validate_http_status(i64::from(s)));
            } else {
                rep.warn(&p, "abort configured, but error type not set");
            }
        }
    }
    if let Some(d) = &f.delay {
        let p = at.k("delay");
        if let Some(pc) = d.percentage {
            rep.check(&p.k("percentage").k("value"), validate_percentage(pc));
        } else if d.percent.is_none() {
            rep.warn(&p, NO_PERCENTAGE);
        }
        let ok = common::oneof(
            &[
                ("fixedDelay", d.fixed_delay.is_some()),
                ("exponentialDelay", d.exponential_delay.is_some()),
            ],
            &p,
            rep,
        );
        if ok {
            if let Some(fd) = d.fixed_delay {
                rep.check(&p.k("fixedDelay"), validate_duration(fd));
            } else if let Some(ed) = d.exponential_delay {
                let ep = p.k("exponentialDelay");
                rep.check(&ep, validate_duration(ed));
                rep.error(&ep, "exponentialDelay not supported yet");
            }
        }
    }
}

/// `validateHTTPStatus` (Istio accepts 600 too: its bound is `> 600`).
fn validate_http_status(status: i64) -> Result<(), String> {
    if !(200..=600).contains(&status) {
        return Err(format!("HTTP status {status} is not in range 200-599"));
    }
    Ok(())
}

/// `validateDestination`.
pub(crate) fn validate_destination(d: &Destination, at: &FieldPath, rep: &mut Report<'_>) {
    let hp = at.k("host");
    if d.host == "*" {
        rep.error(&hp, format!("invalid destination host {}", d.host));
    } else {
        rep.check(&hp, validate_wildcard_domain(&d.host));
    }
    if let Some(s) = &d.subset
        && !s.is_empty()
    {
        rep.check(&at.k("subset"), validate_subset_name(s));
    }
    if let Some(port) = d.port {
        rep.check(
            &at.k("port").k("number"),
            validate_port(i64::from(port.number)),
        );
    }
}

/// `validateSubsetName`.
pub(crate) fn validate_subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}

/// `validateHTTPMirrors`.
fn validate_mirrors(mirrors: &[HttpMirrorPolicy], at: &FieldPath, rep: &mut Report<'_>) {
    for (i, m) in mirrors.iter().enumerate() {
        let p = at.i(i);
        let Some(d) = &m.destination else {
            rep.error(&p, "destination is required for mirrors");
            continue;
        };
        validate_destination(d, &p.k("destination"), rep);
        if let Some(pc) = m.percentage {
            let pp = p.k("percentage").k("value");
            if pc.value > 100.0 {
                rep.error(
                    &pp,
                    format!(
                        "mirror percentage must have a max value of 100 (it has {:.6})",
                        pc.value
                    ),
                );
            }
            if pc.value < 0.0 {
                rep.error(
                    &pp,
                    format!(
                        "mirror percentage must have a min value of 0 (it has {:.6})",
                        pc.value
                    ),
                );
            }
        }
    }
}

/// `validateHTTPRedirect`: reports the first problem only, as Istio does.
fn validate_redirect(
    r: &HttpRedirect,
    matches: &[HttpMatchRequest],
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let uri = r.uri.as_deref().unwrap_or("");
    let prefix_rewrite = r.prefix_rewrite.as_deref().unwrap_or("");
    if !uri.is_empty() && !prefix_rewrite.is_empty() {
        rep.error(at, "redirect may only specify one of uri or prefix_rewrite");
        return;
    }
    if !common::oneof(
        &[
            ("port", r.port.is_some()),
            ("derivePort", r.derive_port.is_some()),
        ],
        at,
        rep,
    ) {
        return;
    }
    if !prefix_rewrite.is_empty()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        rep.error(
            &at.k("prefixRewrite"),
            "redirect prefix_rewrite requires all URI matches to use prefix match type",
        );
        return;
    }
    let authority = r.authority.as_deref().unwrap_or("");
    let scheme = r.scheme.as_deref().unwrap_or("");
    let has_port = r.port.is_some() || r.derive_port.is_some();
    if uri.is_empty()
        && prefix_rewrite.is_empty()
        && authority.is_empty()
        && !has_port
        && scheme.is_empty()
    {
        rep.error(at, "redirect must specify URI, authority, scheme, or port");
        return;
    }
    if let Some(code) = r.redirect_code
        && code != 0
        && !(300..=399).contains(&code)
    {
        rep.error(
            &at.k("redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
        return;
    }
    if !scheme.is_empty() && scheme != "http" && scheme != "https" {
        rep.error(
            &at.k("scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
        return;
    }
    if let Some(port) = r.port
        && port > 0
    {
        rep.check(&at.k("port"), validate_port(i64::from(port)));
    }
}

/// `validateHTTPDirectResponse`.
fn validate_direct_response(d: &HttpDirectResponse, at: &FieldPath, rep: &mut Report<'_>) {
    if let Some(body) = &d.body {
        let bp = at.k("body");
        if common::oneof(
            &[
                ("string", body.string.is_some()),
                ("bytes", body.bytes.is_some()),
            ],
            &bp,
            rep,
        ) {
            let size = body
                .string
                .as_ref()
                .or(body.bytes.as_ref())
                .map_or(0, |s| s.len());
            if size > MB {
                rep.error(
                    &bp,
                    "large direct_responses may impact control plane performance, must be less than 1MB",
                );
            } else if size > 100 * KB {
                rep.warn(
                    &bp,
                    "large direct_responses may impact control plane performance",
                );
            }
        }
    }
    rep.check(&at.k("status"), validate_http_status(i64::from(d.status)));
}

/// `retriable-headers` retries on the answer's headers that the route's `retriable_headers`
/// or a trusted request's `x-envoy-retriable-header-names` name: Istio's VirtualService
/// sets no such headers, and the retry layer does not read the request header.
const RETRIABLE_HEADERS: &str = "retriable-headers has no effect: no retriable header names are configured (Istio sets none; x-envoy-retriable-header-names is not honoured)";

/// `agent.ValidateHTTPRetry`.
fn validate_retry(r: &HttpRetry, at: &FieldPath, rep: &mut Report<'_>) {
    if r.attempts < 0 {
        rep.error(&at.k("attempts"), "attempts cannot be negative");
    }
    let retry_on = r.retry_on.as_deref().unwrap_or("");
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || !retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        rep.error(
            at,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(t) = r.per_try_timeout {
        rep.check(&at.k("perTryTimeout"), validate_duration(t));
    }
    if !retry_on.is_empty() {
        // Istio splits on "," without trimming: " 5xx" is not a policy
        for policy in retry_on.split(',') {
            if !is_retry_on_policy(policy) {
                rep.error(
                    &at.k("retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            } else if policy == "retriable-headers" {
                rep.warn(&at.k("retryOn"), RETRIABLE_HEADERS);
            }
        }
    }
    if let Some(b) = r.backoff {
        rep.check(&at.k("backoff"), validate_duration(b));
    }
}

/// A `retryOn` token Istio accepts: an Envoy condition or a known HTTP status code
/// (Go's `http.StatusText(code) != ""`).
pub(crate) fn is_retry_on_policy(token: &str) -> bool {
    if RETRY_ON_NAMES.iter().any(|(n, _)| *n == token) {
        return true;
    }
    // Go's strconv.Atoi: optional sign, digits
    let digits = token.strip_prefix('+').unwrap_or(token);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    digits
        .parse::<u16>()
        .ok()
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .and_then(|c| c.canonical_reason())
        .is_some()
}

/// `validateHTTPRewrite`.
fn validate_rewrite(r: &HttpRewrite, at: &FieldPath, rep: &mut Report<'_>) {
    let uri = r.uri.as_deref().unwrap_or("");
    let authority = r.authority.as_deref().unwrap_or("");
    if !uri.is_empty() && r.uri_regex_rewrite.is_some() {
        rep.error(at, "rewrite may only contain one of URI or UriRegexRewrite");
        return;
    }
    if uri.is_empty() && r.uri_regex_rewrite.is_none() && authority.is_empty() {
        rep.error(
            at,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
        return;
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        let p = at.k("uriRegexRewrite");
        let err = if rr.pattern.is_empty() || rr.rewrite.is_empty() {
            Some(
                "UriRegexRewrite requires both Rewrite and Match fields to be specified"
                    .to_string(),
            )
        } else {
            common::validate_search_regex(&rr.pattern, "HTTPRewrite.UriRegexRewrite.Match", rep)
                .err()
        };
        if let Some(e) = err {
            rep.error(&p, format!("UriRegexRewrite has errors: {e}"));
        }
    }
}

/// `validateHTTPRouteDestinations`.
fn validate_http_route_destinations(
    dests: &[HttpRouteDestination],
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let mut total: i64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let p = at.i(i);
        match &d.destination {
            None => rep.error(&p, "destination is required"),
            Some(dest) => validate_destination(dest, &p.k("destination"), rep),
        }
        validate_headers(d.headers.as_ref(), &p.k("headers"), rep);
        if d.weight < 0 {
            rep.error(&p.k("weight"), format!("weight {} < 0", d.weight));
        }
        total += i64::from(d.weight);
    }
    if dests.len() > 1 && total == 0 {
        rep.error(at, "total destination weight = 0");
    }
}

/// `validateRouteDestinations` (TLS and TCP routes).
fn validate_route_destinations(dests: &[RouteDestination], at: &FieldPath, rep: &mut Report<'_>) {
    let mut total: i64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let p = at.i(i);
        match &d.destination {
            None => rep.error(&p, "destination is required"),
            Some(dest) => validate_destination(dest, &p.k("destination"), rep),
        }
        if d.weight < 0 {
            rep.error(&p.k("weight"), format!("weight {} < 0", d.weight));
        }
        total += i64::from(d.weight);
    }
    if dests.len() > 1 && total == 0 {
        rep.error(at, "total destination weight = 0");
    }
}

// ============================================================================================
// TLS and TCP routes
// ============================================================================================

/// `validateTLSRoute`.
fn validate_tls_route(tls: &TlsRoute, vs: &VirtualService, at: &FieldPath, rep: &mut Report<'_>) {
    if tls.matches.is_empty() {
        rep.error(at, "TLS route must have at least one match condition");
    }
    for (i, m) in tls.matches.iter().enumerate() {
        validate_tls_match(m, vs, &at.ki("match", i), rep);
    }
    if tls.route.is_empty() {
        rep.error(at, "TLS route is required");
    }
    validate_route_destinations(&tls.route, &at.k("route"), rep);
}

/// `validateTLSMatch`.
fn validate_tls_match(
    m: &TlsMatchAttributes,
    vs: &VirtualService,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    if m.sni_hosts.is_empty() {
        rep.error(at, "TLS match must have at least one SNI host");
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        validate_sni_host(sni, vs, &at.ki("sniHosts", i), rep);
    }
    l4_match_common(
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
        at,
        rep,
    );
}

/// `validateSniHost`: a valid name, and a subset of one of the VirtualService's hosts.
fn validate_sni_host(sni: &str, vs: &VirtualService, at: &FieldPath, rep: &mut Report<'_>) {
    let res = if is_gateway(vs) {
        validate_wildcard_domain_for_gateway_vs(true, sni)
    } else {
        validate_wildcard_domain(sni)
    };
    if let Err(e) = res {
        if is_ip(sni) {
            rep.warn(
                at,
                format!(
                    "using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"
                ),
            );
        } else {
            rep.error(at, e);
        }
        return;
    }
    if vs.hosts.iter().any(|h| host_subset_of(sni, h)) {
        return;
    }
    rep.error(
        at,
        format!(
            "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
            vs.hosts.join(", ")
        ),
    );
}

/// `validateTCPRoute`.
fn validate_tcp_route(tcp: &TcpRoute, at: &FieldPath, rep: &mut Report<'_>) {
    for (i, m) in tcp.matches.iter().enumerate() {
        validate_tcp_match(m, &at.ki("match", i), rep);
    }
    if tcp.route.is_empty() {
        rep.error(at, "TCP route is required");
    }
    validate_route_destinations(&tcp.route, &at.k("route"), rep);
}

/// `validateTCPMatch`.
fn validate_tcp_match(m: &L4MatchAttributes, at: &FieldPath, rep: &mut Report<'_>) {
    l4_match_common(
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
        at,
        rep,
    );
}

fn l4_match_common(
    subnets: &[String],
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    for (i, s) in subnets.iter().enumerate() {
        rep.check(
            &at.ki("destinationSubnets", i),
            common::validate_ip_subnet(s),
        );
    }
    if let Some(p) = port
        && p != 0
    {
        rep.check(&at.k("port"), validate_port(i64::from(p)));
    }
    validate_labels(source_labels, &at.k("sourceLabels"), rep);
    validate_gateway_names(gateways, &at.k("gateways"), rep);
}

// ============================================================================================
// Unreachable rules (warnings)
// ============================================================================================

fn route_name(route: &HttpRoute, n: usize) -> String {
    match route.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("#{n}"),
    }
}

fn match_name(m: &HttpMatchRequest, n: usize) -> String {
    match m.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("#{n}"),
    }
}

fn unused(rep: &mut Report<'_>, at: &FieldPath, ruleno: &str, reason: &str) {
    rep.warn(
        at,
        format!("virtualService rule {ruleno} not used ({reason})"),
    );
}

fn ineffective(rep: &mut Report<'_>, at: &FieldPath, ruleno: &str, matchno: &str, dupno: &str) {
    rep.warn(
        at,
        format!(
            "virtualService rule {ruleno} match {matchno} is not used (duplicate/overlapping match in rule {dupno})"
        ),
    );
}

/// A comparable form of a match, without its name (`asJSON`).
fn match_key<T: serde::Serialize>(m: &T) -> String {
    let mut v = serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
    }
    v.to_string()
}

/// What `genMatchHTTPRoutes` keeps of a prefix match, for the overlap check.
struct PrefixMatch {
    route: String,
    matchn: String,
    at: FieldPath,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: HashMap<String, String>,
    query_params: HashMap<String, String>,
    without_headers: HashMap<String, String>,
}

fn exact_or_prefix(sm: Option<&StringMatch>) -> String {
    let Some(sm) = sm else { return String::new() };
    match (sm.exact.as_deref(), sm.prefix.as_deref()) {
        (Some(e), _) if !e.is_empty() => format!("exact:{e}"),
        (_, Some(p)) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn map_of(m: &BTreeMap<String, StringMatch>) -> HashMap<String, String> {
    m.iter()
        .map(|(k, v)| (k.clone(), exact_or_prefix(Some(v))))
        .collect()
}

/// `genMatchHTTPRoutes`.
fn prefix_match(
    route: &HttpRoute,
    m: &HttpMatchRequest,
    rulen: usize,
    matchn: usize,
    at: FieldPath,
) -> Option<PrefixMatch> {
    let prefix = m.uri.as_ref()?.prefix.clone().filter(|p| !p.is_empty())?;
    let mut method = exact_or_prefix(m.method.as_ref());
    if method.is_empty() {
        method = "exact:GET".into();
    }
    Some(PrefixMatch {
        route: route_name(route, rulen),
        matchn: match_name(m, matchn),
        at,
        prefix,
        port: m.port.unwrap_or(0),
        method,
        authority: exact_or_prefix(m.authority.as_ref()),
        headers: map_of(&m.headers),
        query_params: map_of(&m.query_params),
        without_headers: map_of(&m.without_headers),
    })
}

/// `coveredValidation`: whether `a` (earlier) covers `b` (later).
fn covered(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    fn sub(a: &str, b: &str) -> bool {
        a == b || a.starts_with(b)
    }
    fn maps(a: &HashMap<String, String>, b: &HashMap<String, String>) -> bool {
        a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|bv| sub(v, bv)))
    }
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && sub(&a.method, &b.method)
        && sub(&a.authority, &b.authority)
        && maps(&a.headers, &b.headers)
        && maps(&a.query_params, &b.query_params)
        && maps(&a.without_headers, &b.without_headers)
}

/// `analyzeUnreachableHTTPRules`.
fn analyze_unreachable_http_rules(routes: &[HttpRoute], at: &FieldPath, rep: &mut Report<'_>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut empty_match: Option<usize> = None;
    let mut prefixes: Vec<PrefixMatch> = Vec::new();
    for (rulen, route) in routes.iter().enumerate() {
        let rp = at.i(rulen);
        if route.matches.is_empty() {
            if empty_match.is_some() {
                unused(
                    rep,
                    &rp,
                    &route_name(route, rulen),
                    "only the last rule can have no matches",
                );
            }
            empty_match = Some(rulen);
            continue;
        }
        let mut duplicates = 0;
        for (matchn, m) in route.matches.iter().enumerate() {
            let mp = rp.ki("match", matchn);
            if empty_match.is_some() {
                unused(
                    rep,
                    &rp,
                    &route_name(route, rulen),
                    "route without matches defined before",
                );
                continue;
            }
            let key = match_key(m);
            if let Some(&dupn) = seen.get(&key) {
                ineffective(
                    rep,
                    &mp,
                    &route_name(route, rulen),
                    &match_name(m, matchn),
                    &route_name(&routes[dupn], dupn),
                );
                duplicates += 1;
                continue;
            }
            seen.insert(key, rulen);
            if let Some(pm) = prefix_match(route, m, rulen, matchn, mp) {
                prefixes.push(pm);
            }
        }
        if duplicates == route.matches.len() {
            unused(
                rep,
                &rp,
                &route_name(route, rulen),
                "all matches used by prior rules",
            );
        }
    }
    for (i, a) in prefixes.iter().enumerate() {
        for b in &prefixes[i + 1..] {
            if b.prefix == a.prefix {
                continue;
            }
            if covered(a, b) {
                ineffective(
                    rep,
                    &b.at,
                    &b.route,
                    &format!("{} of prefix {}", b.matchn, b.prefix),
                    &format!("{} of prefix {} on {}", a.matchn, a.prefix, a.route),
                );
            }
        }
    }
}

/// `analyzeUnreachableTCPRules` / `analyzeUnreachableTLSRules` (these routes have no names).
fn analyze_unreachable_rules<R, M: serde::Serialize>(
    routes: &[R],
    matches: impl Fn(&R) -> &Vec<M>,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut empty_match = false;
    for (rulen, route) in routes.iter().enumerate() {
        let rp = at.i(rulen);
        let ms = matches(route);
        let name = format!("#{rulen}");
        if ms.is_empty() {
            if empty_match {
                unused(rep, &rp, &name, "only the last rule can have no matches");
            }
            empty_match = true;
            continue;
        }
        let mut duplicates = 0;
        for (matchn, m) in ms.iter().enumerate() {
            if empty_match {
                unused(rep, &rp, &name, "route without matches defined before");
                continue;
            }
            let key = match_key(m);
            if let Some(&dupn) = seen.get(&key) {
                ineffective(
                    rep,
                    &rp.ki("match", matchn),
                    &name,
                    &format!("#{matchn}"),
                    &format!("#{dupn}"),
                );
                duplicates += 1;
            } else {
                seen.insert(key, rulen);
            }
        }
        if duplicates == ms.len() {
            unused(rep, &rp, &name, "all matches used by prior rules");
        }
    }
}

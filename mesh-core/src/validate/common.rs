//! Checks shared by several kinds, each a transcription of the Istio function named in its
//! docs (`pkg/config/validation/agent/validation.go`, `pkg/config/labels`,
//! `pkg/config/validation/validation.go`). Each returns Istio's message as the error.

use std::net::IpAddr;

use crate::duration::GoDuration;
use crate::error::FieldPath;
use crate::model::Resource;
use crate::model::networking::StringMatch;
use crate::percent::Percent;
use crate::selector::{LabelSelector, Labels, WorkloadSelector};

use super::{PathExt, Report};
use crate::pattern::PatternError;

/// Longest regex Istio accepts (`validateStringRegexp`: Envoy's RE2 program-size limit,
/// approximated by length).
pub const MAX_REGEX_LEN: usize = 1024;

// ============================================================================================
// Names and hosts
// ============================================================================================

/// `labels.IsDNS1123Label`: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `labels.IsWildcardDNS1123Label`: a DNS-1123 label, `*`, or a label prefixed by `*` or `*-`.
pub fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

/// `agent.CheckDNS1123Preconditions`.
fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// `agent.ValidateDNS1123Labels`.
fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or("");
    if !tld.is_empty() && tld.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // the last label may be empty: `istio.io.`
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// `agent.ValidateFQDN`: a DNS name (short names such as `reviews` included), no wildcard.
pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    dns1123_preconditions(fqdn)?;
    dns1123_labels(fqdn)
}

/// `agent.ValidateWildcardDomain`: a DNS name whose first label may be a wildcard
/// (`*`, `*.example.com`, `*-foo.example.com`).
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(r) => dns1123_labels(r),
        None => Ok(()),
    }
}

/// `agent.ValidatePartialWildCard`: `*` only as the whole host or as a `*.` prefix.
pub fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

/// `host.Name.IsWildCarded`.
pub fn is_wildcarded(host: &str) -> bool {
    host.starts_with('*')
}

/// `host.Name.Matches`: whether two hosts (either possibly wildcarded) overlap.
pub fn hosts_match(a: &str, b: &str) -> bool {
    match (is_wildcarded(a), is_wildcarded(b)) {
        (true, true) => {
            if a.len() < b.len() {
                b[1..].ends_with(&a[1..])
            } else {
                a[1..].ends_with(&b[1..])
            }
        }
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// `host.Name.SubsetOf`: whether every name `a` matches is matched by `b`.
pub fn host_subset_of(a: &str, b: &str) -> bool {
    match (is_wildcarded(a), is_wildcarded(b)) {
        (true, true) => a.len() >= b.len() && a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// `agent.ValidateTrustDomain`.
pub fn validate_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    let parts: Vec<&str> = domain.split('.').collect();
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("trust domain name {domain:?} invalid"));
        }
    }
    Ok(())
}

/// `agent.ValidateNamespaceSlashWildcardHostname`: Gateway server hosts and Sidecar egress
/// hosts (`ns/host`, `*/host`, `./host`; gateways also accept a bare host).
pub fn validate_namespace_slash_host(hostname: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let Some((ns, host)) = hostname.split_once('/') else {
        if is_gateway {
            return host_part(hostname, true);
        }
        errs.push("host must be of form namespace/dnsName".to_string());
        return errs;
    };
    if ns.is_empty() || host.is_empty() {
        errs.push("config namespace and dnsName in host entry cannot be empty".into());
    }
    if !is_gateway {
        let n = ns.strip_prefix('~').unwrap_or(ns);
        if !n.is_empty() && n != "*" && n != "." && !is_dns1123_label(n) {
            errs.push(format!("invalid namespace value {ns:?} in sidecar"));
        }
    } else if ns != "*" && ns != "." && !is_dns1123_label(ns) {
        errs.push(format!("invalid namespace value {ns:?} in gateway"));
    }
    errs.extend(host_part(host, is_gateway));
    errs
}

/// `agent.validateSidecarOrGatewayHostnamePart`.
fn host_part(hostname: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if hostname != "*" && !hostname.contains('.') {
        errs.push("short names (non FQDN) are not allowed".to_string());
    }
    if let Err(e) = validate_wildcard_domain(hostname) {
        // gateways accept an IP as the host too
        if !is_gateway || hostname.parse::<IpAddr>().is_err() {
            errs.push(e);
        }
    }
    if let Err(e) = validate_partial_wildcard(hostname) {
        errs.push(e);
    }
    errs
}

// ============================================================================================
// Ports, addresses
// ============================================================================================

/// `agent.ValidatePort`.
pub fn validate_port(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// `ValidatePortName`: a DNS-1123 label.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

/// `agent.ValidateIPAddress`.
pub fn validate_ip(addr: &str) -> Result<(), String> {
    parse_go_addr(addr)
        .map(|_| ())
        .ok_or_else(|| format!("{addr} is not a valid IP"))
}

/// `netutil.IsValidIPAddress`.
pub fn is_ip(addr: &str) -> bool {
    parse_go_addr(addr).is_some()
}

/// `agent.ValidateIPSubnet`: an address or a CIDR block.
pub fn validate_ip_subnet(subnet: &str) -> Result<(), String> {
    if subnet.matches('/').count() == 1 {
        return parse_prefix(subnet)
            .map(|_| ())
            .ok_or_else(|| format!("{subnet} is not a valid CIDR block"));
    }
    validate_ip(subnet)
}

/// Go's `netip.ParseAddr` (accepts an IPv6 zone, which `std` does not).
fn parse_go_addr(s: &str) -> Option<IpAddr> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a);
    }
    let (a, zone) = s.split_once('%')?;
    if zone.is_empty() {
        return None;
    }
    a.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Go's `netip.ParsePrefix`: `addr/bits`, bits in range, no leading zeros or sign.
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, bits) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    if bits.is_empty() || !bits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if bits.len() > 1 && bits.starts_with('0') {
        return None;
    }
    let n: u8 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (n <= max).then_some((addr, n))
}

/// `ValidateUnixAddress` (the part after `unix://`).
pub fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

/// The protocols of `protocol.Parse` (case-insensitive), with their families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
    /// `GRPC`.
    Grpc,
    /// `GRPC-Web`.
    GrpcWeb,
    /// `HTTP`.
    Http,
    /// `HTTP_PROXY`.
    HttpProxy,
    /// `HTTP2`.
    Http2,
    /// `HTTPS`.
    Https,
    /// `TLS`.
    Tls,
    /// `Mongo`.
    Mongo,
    /// `Redis`.
    Redis,
    /// `MySQL`.
    MySql,
    /// Anything else (including the empty string: sniffed).
    Unsupported,
}

const PROTOCOLS: &[(&str, Protocol)] = &[
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("grpc", Protocol::Grpc),
    ("grpc-web", Protocol::GrpcWeb),
    ("http", Protocol::Http),
    ("http_proxy", Protocol::HttpProxy),
    ("http2", Protocol::Http2),
    ("https", Protocol::Https),
    ("tls", Protocol::Tls),
    ("mongo", Protocol::Mongo),
    ("redis", Protocol::Redis),
    ("mysql", Protocol::MySql),
];

// === impl Protocol ===

impl Protocol {
    /// `protocol.Parse`.
    pub fn parse(s: &str) -> Protocol {
        let lower = s.to_ascii_lowercase();
        PROTOCOLS
            .iter()
            .find(|(n, _)| *n == lower)
            .map_or(Protocol::Unsupported, |(_, p)| *p)
    }

    /// `IsHTTP`.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::HttpProxy
                | Protocol::Grpc
                | Protocol::GrpcWeb
        )
    }

    /// `IsTLS`.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// `IsTCP`.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::MySql
        )
    }
}

/// `ValidateProtocol`: empty (sniffed) or a known protocol.
pub fn validate_protocol(p: &str) -> Result<(), String> {
    if !p.is_empty() && Protocol::parse(p) == Protocol::Unsupported {
        return Err(format!("unsupported protocol: {p}"));
    }
    Ok(())
}

// ============================================================================================
// Durations and percentages
// ============================================================================================

/// `agent.ValidateDuration`: at least 1ms, whole milliseconds.
pub fn validate_duration(d: GoDuration) -> Result<(), String> {
    let d = d.get();
    if d < std::time::Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

/// `ValidatePercent`: an integer percentage in 0..=100.
pub fn validate_percent(v: i64) -> Result<(), String> {
    if !(0..=100).contains(&v) {
        return Err(format!("percentage {v} is not in range 0..100"));
    }
    Ok(())
}

/// `validatePercentage`: 0, or 0.0001 ..= 100.
pub fn validate_percentage(p: Percent) -> Result<(), String> {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(format!(
            "percentage {} is neither 0.0, nor in range [0.0001, 100.0]",
            go_float(v)
        ));
    }
    Ok(())
}

/// Go's `%v` of a float64 (shortest representation, no trailing `.0`).
pub(crate) fn go_float(v: f64) -> String {
    let s = format!("{v}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

// ============================================================================================
// Labels and selectors
// ============================================================================================

/// Kubernetes qualified name (`(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`).
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `labels.validateTagKey`: `[dns-prefix/]name`, as Kubernetes label keys.
pub fn validate_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && p.split('.').all(is_dns1123_label));
    if !prefix_ok || !is_qualified_name(name) {
        return Err(format!("invalid tag key: {k:?}"));
    }
    if prefix.is_some_and(|p| p.len() > 253) {
        return Err(format!("invalid tag key: {k:?} (DNS prefix is too long)"));
    }
    if name.len() > 63 {
        return Err(format!("invalid tag key: {k:?} (name is too long)"));
    }
    Ok(())
}

/// `labels.Instance.Validate`'s value rule: empty or a qualified name.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_qualified_name(v) {
        Ok(())
    } else {
        Err(format!("invalid tag value: {v:?}"))
    }
}

/// `labels.Instance.Validate`, reporting each bad key or value at its own path.
pub(crate) fn validate_labels(labels: &Labels, at: &FieldPath, rep: &mut Report<'_>) {
    for (k, v) in labels {
        let p = at.k(k);
        rep.check(&p, validate_label_key(k));
        rep.check(&p, validate_label_value(v));
    }
}

/// `validateWorkloadSelector` (security kinds' `selector.matchLabels`).
pub(crate) fn validate_workload_selector(
    sel: Option<&WorkloadSelector>,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let Some(sel) = sel else { return };
    let ml = at.k("matchLabels");
    selector_entries(&sel.match_labels, &ml, rep);
    if sel.match_labels.is_empty() {
        rep.warn(at, "workload selector specified without labels");
    }
}

/// `ValidateAlphaWorkloadSelector` (networking kinds' `workloadSelector.labels`); `what`
/// prefixes the warning as Istio does (`sidecar`, `service entry`).
pub(crate) fn validate_alpha_workload_selector(
    sel: Option<&LabelSelector>,
    what: &str,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let Some(sel) = sel else { return };
    selector_entries(&sel.labels, &at.k("labels"), rep);
    if sel.labels.is_empty() {
        rep.warn(
            at,
            format!(
                "{what}: workload selector specified without labels, will be applied to all services in namespace"
            ),
        );
    }
}

fn selector_entries(labels: &Labels, at: &FieldPath, rep: &mut Report<'_>) {
    for (k, v) in labels {
        let p = at.k(k);
        if k.is_empty() {
            rep.error(
                &p,
                format!(
                    "empty key is not supported in selector: {:?}",
                    format!("{k}={v}")
                ),
            );
        }
        if k.contains('*') || v.contains('*') {
            rep.error(
                &p,
                format!(
                    "wildcard is not supported in selector: {:?}",
                    format!("{k}={v}")
                ),
            );
        }
    }
}

// ============================================================================================
// exportTo
// ============================================================================================

/// `validateExportTo`.
pub(crate) fn validate_export_to(
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    is_dr_with_selector: bool,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    if export_to.is_empty() {
        return;
    }
    let mut set: Vec<String> = Vec::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = at.i(i);
        let key = if e == "." { namespace } else { e.as_str() };
        if set.iter().any(|s| s == key) {
            if key != e {
                rep.error(
                    &p,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                rep.error(&p, format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if is_service_entry && e == "~" {
            set.push(key.to_string());
        } else {
            match e.as_str() {
                "." | "*" => set.push(key.to_string()),
                "~" => rep.error(
                    &p,
                    "exportTo ~ (none) is not allowed for Istio configuration objects",
                ),
                _ if is_dns1123_label(key) => set.push(key.to_string()),
                _ => rep.error(
                    &p,
                    "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
                ),
            }
        }
    }
    if is_dr_with_selector && !set.is_empty() {
        if set.iter().any(|s| s == namespace) {
            if set.len() > 1 {
                rep.error(
                    at,
                    "destination rule with workload selector cannot have multiple entries in exportTo",
                );
            }
        } else {
            rep.error(
                at,
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        }
    }
    if set.iter().any(|s| s == "*") && export_to.len() > 1 {
        rep.error(
            at,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if set.iter().any(|s| s == "~") && export_to.len() > 1 {
        rep.error(at, "cannot export service entry to no one (~) and someone");
    }
}

// ============================================================================================
// String matches and regexes
// ============================================================================================

/// Reports a `oneof` group with more than one member set.
pub(crate) fn oneof(names: &[(&str, bool)], at: &FieldPath, rep: &mut Report<'_>) -> bool {
    let set: Vec<&str> = names.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    if set.len() > 1 {
        let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        rep.error(at, format!("only one of {} may be set", all.join(", ")));
        return false;
    }
    true
}

/// Checks the `oneof` of a `StringMatch`; false when several kinds are set.
pub(crate) fn string_match_oneof(sm: &StringMatch, at: &FieldPath, rep: &mut Report<'_>) -> bool {
    oneof(
        &[
            ("exact", sm.exact.is_some()),
            ("prefix", sm.prefix.is_some()),
            ("regex", sm.regex.is_some()),
        ],
        at,
        rep,
    )
}

/// `validateStringMatch`: a prefix may not be empty; a regex must compile.
pub(crate) fn validate_string_match(
    sm: &StringMatch,
    where_: &str,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    if !string_match_oneof(sm, at, rep) {
        return;
    }
    if sm.prefix.as_deref() == Some("") {
        rep.error(
            &at.k("prefix"),
            format!("{where_:?}: prefix string match should not be empty"),
        );
    }
    validate_string_match_regexp(sm, where_, at, rep);
}

/// `validateStringMatchRegexp`: only the regex member is checked.
pub(crate) fn validate_string_match_regexp(
    sm: &StringMatch,
    where_: &str,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    if let Some(re) = &sm.regex {
        let p = at.k("regex");
        if re.is_empty() {
            rep.error(
                &p,
                format!("{where_:?}: regex string match should not be empty"),
            );
        } else {
            let checked = check_length(re, where_).and_then(|()| {
                // compiled as the route table uses it, once (crate::pattern)
                rep.pre
                    .full(re)
                    .as_ref()
                    .map(drop)
                    .map_err(|e| regex_message(e, where_))
            });
            rep.check(&p, checked.or_else(ignore_size));
        }
    }
}

/// A regex over the proxy's size limit is not an error of Istio's rules: the route table
/// build reports it (in `validate` and `run` alike).
fn ignore_size(m: Option<String>) -> Result<(), String> {
    m.map_or(Ok(()), Err)
}

fn check_length(re: &str, where_: &str) -> Result<(), Option<String>> {
    if re.len() > MAX_REGEX_LEN {
        return Err(Some(format!(
            "{where_:?}: regex is too large, max length allowed is {MAX_REGEX_LEN}"
        )));
    }
    Ok(())
}

/// Istio's message for a regex that does not compile (`None`: over the proxy's size limit,
/// which Istio's rules do not know).
fn regex_message(e: &PatternError, where_: &str) -> Option<String> {
    match e {
        PatternError::Syntax(s) => Some(format!(
            "{where_:?}: {s}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"
        )),
        PatternError::TooBig(_) => None,
    }
}

/// `validateStringRegexp`: at most 1024 characters, and valid RE2 syntax. The `regex` crate
/// implements RE2's syntax and guarantees (no backreferences, no look-around).
pub fn validate_regex(re: &str, where_: &str) -> Result<(), String> {
    check_length(re, where_)
        .and_then(|()| {
            crate::pattern::FullMatch::compile(re, crate::pattern::SIZE_LIMIT)
                .map(drop)
                .map_err(|e| regex_message(&e, where_))
        })
        .or_else(ignore_size)
}

/// [`validate_regex`] for a search regex (`uriRegexRewrite`), compiled once for the route
/// table.
pub(crate) fn validate_search_regex(
    re: &str,
    where_: &str,
    rep: &mut Report<'_>,
) -> Result<(), String> {
    check_length(re, where_)
        .and_then(|()| {
            rep.pre
                .search(re)
                .as_ref()
                .map(drop)
                .map_err(|e| regex_message(e, where_))
        })
        .or_else(ignore_size)
}

// ============================================================================================
// Headers
// ============================================================================================

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// HTTP/2 pseudo-headers a match may name.
const PSEUDO_HEADERS: &[&str] = &[":method", ":scheme", ":authority", ":path", ":status"];

/// The prefix of JWT-claim route headers (`@request.auth.claims.groups`).
pub const JWT_CLAIM_HEADER: &str = "@request.auth.claims";

/// `jwt.ToRoutingClaim(name).Match`.
pub fn is_jwt_claim_route(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if !lower.starts_with(JWT_CLAIM_HEADER) {
        return false;
    }
    let rest = &name[JWT_CLAIM_HEADER.len()..];
    (rest.starts_with('.') && rest.len() > 1)
        || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// `ValidateHTTPHeaderNameOrJwtClaimRoute`: header match keys.
pub fn validate_header_match_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim_route(name) || PSEUDO_HEADERS.contains(&name) {
        return Ok(());
    }
    if !name.bytes().all(is_tchar) {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

/// `ValidateCORSHTTPHeaderName`.
pub fn validate_cors_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name == "*" {
        return Ok(());
    }
    if !name.bytes().all(is_tchar) {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

/// `ValidateStrictHTTPHeaderName`: `[-_A-Za-z0-9]+`.
pub fn validate_strict_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// Whether a header names the authority (`:authority` or `Host`).
pub fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// `ValidateHTTPHeaderWithAuthorityOperationName`: request `set`/`add` (the authority may be
/// set, other pseudo-headers not).
pub fn validate_header_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// `ValidateHTTPHeaderOperationName`: request `remove` and every response operation.
pub fn validate_header_op_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if is_internal_header(name) {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// `ValidateHTTPHeaderValue`: no control characters but tab, and Envoy's `%VAR%` syntax
/// (`validateHeaderValue`, a port of Envoy's `header_parser.cc`; [`crate::format`]).
pub fn validate_header_value(value: &str) -> Result<(), String> {
    header_value_chars(value)?;
    crate::format::parse(value)
        .map(drop)
        .map_err(|e| format!("header value configuration: {e}"))
}

/// [`validate_header_value`], keeping the parsed format for the route table.
pub(crate) fn validate_header_value_kept(value: &str, rep: &mut Report<'_>) -> Result<(), String> {
    header_value_chars(value)?;
    if !value.contains('%') {
        return Ok(()); // a fixed value: nothing to parse
    }
    rep.pre
        .format(value)
        .as_ref()
        .map(drop)
        .map_err(|e| format!("header value configuration: {e}"))
}

fn header_value_chars(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| (c <= '\u{8}') || ('\u{a}'..='\u{1f}').contains(&c) || c == '\u{7f}')
    {
        return Err(format!("header value configuration {value} is invalid"));
    }
    Ok(())
}

// ============================================================================================
// Metadata
// ============================================================================================

/// Istio's annotation for dry-run AuthorizationPolicies.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// `validateMetadata`: the `istio.io/dry-run` annotation, AuthorizationPolicy only.
pub(crate) fn validate_metadata(r: &Resource, rep: &mut Report<'_>) {
    use crate::model::Spec;
    use crate::model::security::AuthorizationAction;
    let Some(val) = r.metadata.annotations.get(DRY_RUN_ANNOTATION) else {
        return;
    };
    let at = FieldPath::root()
        .key("metadata")
        .key("annotations")
        .key(DRY_RUN_ANNOTATION);
    let (ns, name) = (r.namespace(), r.name());
    match &r.spec {
        Spec::AuthorizationPolicy(ap) => {
            let action = ap.action.unwrap_or_default();
            match action {
                AuthorizationAction::Allow | AuthorizationAction::Deny => {
                    if parse_go_bool(val).is_none() {
                        rep.error(
                            &at,
                            format!(
                                "{ns}/{name} has annotation {DRY_RUN_ANNOTATION} with invalid value ({val}): strconv.ParseBool: parsing {val:?}: invalid syntax"
                            ),
                        );
                    }
                }
                other => rep.error(
                    &at,
                    format!(
                        "the annotation {DRY_RUN_ANNOTATION} currently only supports action ALLOW/DENY, found action {} in {ns}/{name}",
                        action_name(other)
                    ),
                ),
            }
        }
        _ => rep.error(
            &at,
            format!(
                "{ns}/{name} has unsupported annotation {DRY_RUN_ANNOTATION}, please remove the annotation"
            ),
        ),
    }
}

fn action_name(a: crate::model::security::AuthorizationAction) -> &'static str {
    use crate::model::security::AuthorizationAction as A;
    match a {
        A::Allow => "ALLOW",
        A::Deny => "DENY",
        A::Audit => "AUDIT",
        A::Custom => "CUSTOM",
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

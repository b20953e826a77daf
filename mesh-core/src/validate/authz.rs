//! The `security.istio.io` kinds: `ValidatePeerAuthentication`,
//! `ValidateAuthorizationPolicy` (with `pkg/config/security`'s attribute rules) and
//! `ValidateRequestAuthentication`.

use crate::authority::{self, AuthorityError};
use crate::error::FieldPath;
use crate::model::security::{
    AuthorizationAction, AuthorizationPolicy, JwtRule, PeerAuthentication, PolicyTargetReference,
    RequestAuthentication, Source,
};
use crate::selector::WorkloadSelector;

use super::common::{self, validate_duration, validate_strict_header_name};
use super::{PathExt, Report};

// ============================================================================================
// PeerAuthentication
// ============================================================================================

/// `ValidatePeerAuthentication`.
pub(crate) fn validate_peer_authentication(
    pa: &PeerAuthentication,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let empty_selector = pa
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    let plp = at.k("portLevelMtls");
    if empty_selector && !pa.port_level_mtls.is_empty() {
        rep.error(
            &plp,
            "mesh/namespace peer authentication cannot have port level mTLS",
        );
    }
    for port in pa.port_level_mtls.keys() {
        if *port == 0 || *port > 65535 {
            rep.error(&plp.k(&port.to_string()), "port must be in range 1..65535");
        }
    }
    common::validate_workload_selector(pa.selector.as_ref(), &at.k("selector"), rep);
}

// ============================================================================================
// Target references
// ============================================================================================

/// `validateOneOfSelectorType`.
fn validate_selector_type(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let n = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if n > 1 {
        rep.error(at, "only one of targetRefs or workloadSelector can be set");
    }
}

/// Kinds a policy may target (`allowedTargetRefs`): (canonical group, kind).
const ALLOWED_TARGET_REFS: &[(&str, &str)] = &[
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// `validatePolicyTargetReference`.
fn validate_target_ref(r: &PolicyTargetReference, at: &FieldPath, rep: &mut Report<'_>) {
    if r.name.is_empty() {
        rep.error(&at.k("name"), "targetRef name must be set");
    }
    if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        rep.error(
            &at.k("namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = r.group.as_deref().unwrap_or("");
    let canonical = if group.is_empty() { "core" } else { group };
    if !ALLOWED_TARGET_REFS
        .iter()
        .any(|(g, k)| *g == canonical && *k == r.kind)
    {
        rep.error(
            at,
            format!(
                "targetRef must be to one of [/v1/Service networking.istio.io/v1/ServiceEntry gateway.networking.k8s.io/v1/Gateway gateway.networking.k8s.io/v1/GatewayClass] but was {group}/{}",
                r.kind
            ),
        );
    }
}

pub(crate) fn validate_targets(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    validate_selector_type(selector, target_ref, target_refs, at, rep);
    common::validate_workload_selector(selector, &at.k("selector"), rep);
    if let Some(r) = target_ref {
        validate_target_ref(r, &at.k("targetRef"), rep);
    }
    for (i, r) in target_refs.iter().enumerate() {
        validate_target_ref(r, &at.ki("targetRefs", i), rep);
    }
}

// ============================================================================================
// AuthorizationPolicy
// ============================================================================================

/// How the values of a `when` condition key are checked (`security.ValidateAttribute`).
#[derive(Clone, Copy)]
enum KeyRule {
    /// Any non-empty values.
    Any,
    /// IPs or CIDRs.
    Ips,
    /// `namespace/serviceAccount` or `serviceAccount`.
    ServiceAccount,
    /// Values with at most one `*`, at the start or end.
    Wildcard,
    /// Port numbers.
    Ports,
    /// A map key `name[key]` (values unchecked).
    MapKey,
    /// Not allowed, with this reason.
    Rejected(&'static str),
}

/// Condition keys, exact or prefix (`request.headers[...]`), and their value rules.
const CONDITION_KEYS: &[(&str, bool, KeyRule)] = &[
    ("request.headers", true, KeyRule::MapKey),
    ("source.ip", false, KeyRule::Ips),
    ("remote.ip", false, KeyRule::Ips),
    ("source.namespace", false, KeyRule::Any),
    ("source.serviceAccount", false, KeyRule::ServiceAccount),
    ("source.principal", false, KeyRule::Any),
    ("source.trustDomain", false, KeyRule::Wildcard),
    ("request.auth.principal", false, KeyRule::Any),
    ("request.auth.audiences", false, KeyRule::Any),
    ("request.auth.presenter", false, KeyRule::Any),
    ("request.auth.claims", true, KeyRule::MapKey),
    ("destination.ip", false, KeyRule::Ips),
    ("destination.port", false, KeyRule::Ports),
    ("connection.sni", false, KeyRule::Any),
    ("experimental.envoy.filters.", true, KeyRule::MapKey),
    (
        "destination.namespace",
        false,
        KeyRule::Rejected("attribute {} is replaced by the metadata.namespace"),
    ),
    (
        "destination.labels",
        true,
        KeyRule::Rejected("attribute {} is replaced by the workload selector"),
    ),
    (
        "destination.name",
        false,
        KeyRule::Rejected("deprecated attribute {}: only supported in v1alpha1"),
    ),
    (
        "destination.user",
        false,
        KeyRule::Rejected("deprecated attribute {}: only supported in v1alpha1"),
    ),
];

/// Condition keys the CUSTOM action cannot use.
fn custom_unsupported_key(key: &str) -> bool {
    matches!(
        key,
        "source.namespace" | "source.serviceAccount" | "source.trustDomain" | "source.principal"
    ) || key.starts_with("request.auth.")
}

/// `security.ValidateAttribute`.
pub(crate) fn validate_attribute(key: &str, values: &[String]) -> Result<(), String> {
    check_empty_values(key, values)?;
    let rule = CONDITION_KEYS
        .iter()
        .find(|(k, prefix, _)| {
            if *prefix {
                key.starts_with(k)
            } else {
                key == *k
            }
        })
        .map(|(_, _, r)| *r);
    match rule {
        None => Err(format!("unknown attribute: {key}")),
        Some(KeyRule::Any) => Ok(()),
        Some(KeyRule::Ips) => validate_ips(values),
        Some(KeyRule::ServiceAccount) => check_service_accounts(key, values),
        Some(KeyRule::Wildcard) => check_wildcard_values(key, values),
        Some(KeyRule::Ports) => validate_ports(values),
        Some(KeyRule::MapKey) => validate_map_key(key),
        Some(KeyRule::Rejected(msg)) => Err(msg.replace("{}", key)),
    }
}

/// `security.CheckEmptyValues`.
fn check_empty_values(key: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    Ok(())
}

/// `security.CheckWildcardValues`.
fn check_wildcard_values(key: &str, values: &[String]) -> Result<(), String> {
    check_empty_values(key, values)?;
    for v in values {
        let n = v.matches('*').count();
        if n > 1 {
            return Err(format!(
                "at most one wildcard is allowed, found in {key}: {v:?}"
            ));
        }
        if n == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
            return Err(format!(
                "wildcard is only allowed at the start or end, found in {key}: {v:?}"
            ));
        }
    }
    Ok(())
}

/// `security.CheckTrustDomainValues`.
fn check_trust_domain_values(key: &str, values: &[String]) -> Result<(), String> {
    check_wildcard_values(key, values)?;
    if let Some(v) = values.iter().find(|v| v.contains('/')) {
        return Err(format!(
            "trust domain must not contain '/', found in {key}: {v:?}"
        ));
    }
    Ok(())
}

/// `security.CheckServiceAccount`.
fn check_service_accounts(key: &str, values: &[String]) -> Result<(), String> {
    if values.len() > 16 {
        return Err("may not have more than 16 values".into());
    }
    let fmt_err = |v: &str, what: &str| {
        format!(
            "expected format 'serviceAccount' or 'namespace/serviceAccount', found {what}{v:?} in {key}"
        )
    };
    for v in values {
        if v.is_empty() {
            return Err(format!("empty value not allowed, found in {key}"));
        }
        if v.contains('*') {
            return Err(format!("wildcard not allowed, found in {key}"));
        }
        if v.matches('/').count() > 1 {
            return Err(fmt_err(v, ""));
        }
        if v.len() > 320 {
            return Err(format!(
                "value cannot exceed 320 characters, found {v:?} in {key}"
            ));
        }
        if let Some((ns, sa)) = v.split_once('/') {
            if ns.is_empty() {
                return Err(fmt_err(v, "empty namespace "));
            }
            if sa.is_empty() {
                return Err(fmt_err(v, "empty serviceAccount "));
            }
        }
    }
    Ok(())
}

/// `security.ValidateIPs`: addresses or CIDR ranges.
fn validate_ips(values: &[String]) -> Result<(), String> {
    let errs: Vec<String> = values
        .iter()
        .filter_map(|v| {
            if v.contains('/') {
                common::validate_ip_subnet(v).err().map(|_| {
                    format!("bad CIDR range ({v}): netip.ParsePrefix({v:?}): invalid prefix")
                })
            } else {
                (!common::is_ip(v)).then(|| format!("bad IP address ({v})"))
            }
        })
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// `security.ValidatePorts`: 0..=65535 as decimal strings.
fn validate_ports(values: &[String]) -> Result<(), String> {
    let errs: Vec<String> = values
        .iter()
        .filter(|v| {
            !v.bytes().all(|c| c.is_ascii_digit())
                || v.is_empty()
                || v.parse::<u32>().map_or(true, |p| p > 65535)
        })
        .map(|v| format!("bad port ({v})"))
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// `validateMapKey`: `a[b]`.
fn validate_map_key(key: &str) -> Result<(), String> {
    if let Some(open) = key.find('[')
        && key.ends_with(']')
        && open > 0
        && open + 2 < key.len()
    {
        return Ok(());
    }
    Err(format!("bad key ({key}): should have format a[b]"))
}

/// `security.CheckValidPathTemplate`: `{*}` and `{**}` segments (`{**}` last).
fn check_path_templates(key: &str, paths: &[String]) -> Result<(), String> {
    for path in paths {
        let has_template = path.contains("{*}") || path.contains("{**}");
        let trimmed = path.trim_matches('/');
        let mut any_seen = false;
        for glob in trimmed.split('/') {
            if glob == "{*}" && !any_seen {
                continue;
            }
            if glob == "{**}" && !any_seen {
                any_seen = true;
                continue;
            }
            if (glob == "{**}" || glob == "{*}") && any_seen {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. {{**}} is not the last operator"
                ));
            }
            if glob.contains(['{', '}']) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. Contains '{{' or '}}' beyond a supported path template"
                ));
            }
            if has_template && !is_valid_literal(glob) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. Contains segment {glob} with invalid string literal"
                ));
            }
        }
    }
    Ok(())
}

/// RFC 3986 `pchar`s (`validLiteral`).
fn is_valid_literal(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&c))
}

/// `ValidateAuthorizationPolicy`.
pub(crate) fn validate_authorization_policy(
    ap: &AuthorizationPolicy,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    validate_targets(
        ap.selector.as_ref(),
        ap.target_ref.as_ref(),
        &ap.target_refs,
        at,
        rep,
    );
    let action = ap.action.unwrap_or_default();
    let rules_at = at.k("rules");
    if action == AuthorizationAction::Custom {
        if ap.rules.is_empty() {
            rep.error(
                &rules_at,
                "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
            );
        } else if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
            rep.error(&at.k("provider"), "`provider.name` must not be empty");
        }
        for (i, rule) in ap.rules.iter().enumerate() {
            let rp = rules_at.i(i);
            for (j, from) in rule.from.iter().enumerate() {
                let Some(src) = &from.source else { continue };
                let sp = rp.ki("from", j).k("source");
                for (name, field, set) in custom_unsupported_sources(src) {
                    if set {
                        rep.error(
                            &sp.k(field),
                            format!("{name} is currently not supported with CUSTOM action"),
                        );
                    }
                }
            }
            for (j, when) in rule.when.iter().enumerate() {
                if custom_unsupported_key(&when.key) {
                    rep.error(
                        &rp.ki("when", j).k("key"),
                        format!("{} is currently not supported with CUSTOM action", when.key),
                    );
                }
            }
        }
    }
    if ap.provider.is_some() && action != AuthorizationAction::Custom {
        rep.error(
            &at.k("provider"),
            format!(
                "`provider` must not be with non CUSTOM action, found {}",
                action_name(action)
            ),
        );
    }
    if action == AuthorizationAction::Deny && ap.rules.is_empty() {
        rep.error(
            &rules_at,
            "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
        );
    }

    for (i, rule) in ap.rules.iter().enumerate() {
        let rp = rules_at.i(i);
        let (mut tcp_in_from, mut tcp_in_to, mut from_exists, mut to_exists) =
            (false, false, false, false);
        for (j, from) in rule.from.iter().enumerate() {
            let fp = rp.ki("from", j);
            let Some(src) = &from.source else {
                rep.error(
                    &fp,
                    format!("`from.source` must not be nil, found at rule {i}"),
                );
                continue;
            };
            from_exists = true;
            let sp = fp.k("source");
            validate_source(src, i, &sp, rep);
            if !src.principals.is_empty()
                || !src.not_principals.is_empty()
                || !src.ip_blocks.is_empty()
                || !src.not_ip_blocks.is_empty()
                || !src.namespaces.is_empty()
                || !src.not_namespaces.is_empty()
                || !src.remote_ip_blocks.is_empty()
                || !src.not_remote_ip_blocks.is_empty()
                || !src.service_accounts.is_empty()
                || !src.not_service_accounts.is_empty()
            {
                tcp_in_from = true;
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tp = rp.ki("to", j);
            let Some(op) = &to.operation else {
                rep.error(
                    &tp,
                    format!("`to.operation` must not be nil, found at rule {i}"),
                );
                continue;
            };
            to_exists = true;
            let op_p = tp.k("operation");
            let lists: [(&str, &str, &Vec<String>); 8] = [
                ("Ports", "ports", &op.ports),
                ("Methods", "methods", &op.methods),
                ("Paths", "paths", &op.paths),
                ("Hosts", "hosts", &op.hosts),
                ("NotPorts", "notPorts", &op.not_ports),
                ("NotMethods", "notMethods", &op.not_methods),
                ("NotPaths", "notPaths", &op.not_paths),
                ("NotHosts", "notHosts", &op.not_hosts),
            ];
            if lists.iter().all(|(_, _, l)| l.is_empty()) {
                rep.error(
                    &op_p,
                    format!("`to.operation` must not be empty, found at rule {i}"),
                );
            }
            rep.check(&op_p.k("ports"), validate_ports(&op.ports));
            rep.check(&op_p.k("notPorts"), validate_ports(&op.not_ports));
            for (name, field, list) in lists {
                rep.check(&op_p.k(field), check_empty_values(name, list));
            }
            rep.check(&op_p.k("paths"), check_path_templates("Paths", &op.paths));
            rep.check(
                &op_p.k("notPaths"),
                check_path_templates("NotPaths", &op.not_paths),
            );
            if !op.ports.is_empty() || !op.not_ports.is_empty() {
                tcp_in_to = true;
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let cp = rp.ki("when", j);
            if c.key.is_empty() {
                rep.error(&cp.k("key"), "`key` must not be empty");
            } else if c.values.is_empty() && c.not_values.is_empty() {
                rep.error(
                    &cp,
                    format!(
                        "at least one of `values` or `notValues` must be set for key {}",
                        c.key
                    ),
                );
            } else {
                if let Err(e) = validate_attribute(&c.key, &c.values) {
                    rep.error(
                        &cp.k("values"),
                        format!("invalid `value` for `key` {}: {e}", c.key),
                    );
                }
                if let Err(e) = validate_attribute(&c.key, &c.not_values) {
                    rep.error(
                        &cp.k("notValues"),
                        format!("invalid `notValue` for `key` {}: {e}", c.key),
                    );
                }
            }
        }
        if ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
            && action == AuthorizationAction::Deny
        {
            rep.warn(
                &rp,
                "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port",
            );
        }
    }
}

fn action_name(a: AuthorizationAction) -> &'static str {
    match a {
        AuthorizationAction::Allow => "ALLOW",
        AuthorizationAction::Deny => "DENY",
        AuthorizationAction::Audit => "AUDIT",
        AuthorizationAction::Custom => "CUSTOM",
    }
}

fn custom_unsupported_sources(s: &Source) -> [(&'static str, &'static str, bool); 10] {
    [
        ("From.Namespaces", "namespaces", !s.namespaces.is_empty()),
        (
            "From.NotNamespaces",
            "notNamespaces",
            !s.not_namespaces.is_empty(),
        ),
        (
            "From.ServiceAccounts",
            "serviceAccounts",
            !s.service_accounts.is_empty(),
        ),
        (
            "From.NotServiceAccounts",
            "notServiceAccounts",
            !s.not_service_accounts.is_empty(),
        ),
        (
            "From.TrustDomains",
            "trustDomains",
            !s.trust_domains.is_empty(),
        ),
        (
            "From.NotTrustDomains",
            "notTrustDomains",
            !s.not_trust_domains.is_empty(),
        ),
        ("From.Principals", "principals", !s.principals.is_empty()),
        (
            "From.NotPrincipals",
            "notPrincipals",
            !s.not_principals.is_empty(),
        ),
        (
            "From.RequestPrincipals",
            "requestPrincipals",
            !s.request_principals.is_empty(),
        ),
        (
            "From.NotRequestPrincipals",
            "notRequestPrincipals",
            !s.not_request_principals.is_empty(),
        ),
    ]
}

/// The `from.source` checks of `ValidateAuthorizationPolicy`.
fn validate_source(src: &Source, rule: usize, at: &FieldPath, rep: &mut Report<'_>) {
    if (!src.principals.is_empty()
        || !src.not_principals.is_empty()
        || !src.namespaces.is_empty()
        || !src.not_namespaces.is_empty())
        && (!src.service_accounts.is_empty() || !src.not_service_accounts.is_empty())
    {
        rep.error(
            at,
            format!(
                "cannot set serviceAccounts with namespaces or principals, found at rule {rule}"
            ),
        );
    }
    // (name in Istio's messages, field, values, rule)
    #[derive(Clone, Copy)]
    enum R {
        Empty,
        Sa,
        Td,
        Ip,
    }
    let fields: [(&str, &str, &Vec<String>, R); 14] = [
        ("Principals", "principals", &src.principals, R::Empty),
        (
            "RequestPrincipals",
            "requestPrincipals",
            &src.request_principals,
            R::Empty,
        ),
        ("Namespaces", "namespaces", &src.namespaces, R::Empty),
        (
            "ServiceAccounts",
            "serviceAccounts",
            &src.service_accounts,
            R::Sa,
        ),
        ("TrustDomains", "trustDomains", &src.trust_domains, R::Td),
        ("IpBlocks", "ipBlocks", &src.ip_blocks, R::Ip),
        (
            "RemoteIpBlocks",
            "remoteIpBlocks",
            &src.remote_ip_blocks,
            R::Ip,
        ),
        (
            "NotPrincipals",
            "notPrincipals",
            &src.not_principals,
            R::Empty,
        ),
        (
            "NotRequestPrincipals",
            "notRequestPrincipals",
            &src.not_request_principals,
            R::Empty,
        ),
        (
            "NotNamespaces",
            "notNamespaces",
            &src.not_namespaces,
            R::Empty,
        ),
        (
            "NotServiceAccounts",
            "notServiceAccounts",
            &src.not_service_accounts,
            R::Sa,
        ),
        (
            "NotTrustDomains",
            "notTrustDomains",
            &src.not_trust_domains,
            R::Td,
        ),
        ("NotIpBlocks", "notIpBlocks", &src.not_ip_blocks, R::Ip),
        (
            "NotRemoteIpBlocks",
            "notRemoteIpBlocks",
            &src.not_remote_ip_blocks,
            R::Ip,
        ),
    ];
    if fields.iter().all(|(_, _, v, _)| v.is_empty()) {
        rep.error(
            at,
            format!("`from.source` must not be empty, found at rule {rule}"),
        );
    }
    for (name, field, values, r) in fields {
        let p = at.k(field);
        let res = match r {
            R::Empty => check_empty_values(name, values),
            R::Sa => check_service_accounts(name, values),
            R::Td => check_trust_domain_values(name, values),
            R::Ip => validate_ips(values).and_then(|()| check_empty_values(name, values)),
        };
        rep.check(&p, res);
    }
}

// ============================================================================================
// RequestAuthentication
// ============================================================================================

/// `ValidateRequestAuthentication`.
pub(crate) fn validate_request_authentication(
    ra: &RequestAuthentication,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    validate_targets(
        ra.selector.as_ref(),
        ra.target_ref.as_ref(),
        &ra.target_refs,
        at,
        rep,
    );
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        validate_jwt_rule(rule, &at.ki("jwtRules", i), rep);
    }
}

/// `validateJwtRule` and `warnPrivateJwksKeys`.
fn validate_jwt_rule(rule: &JwtRule, at: &FieldPath, rep: &mut Report<'_>) {
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            rep.error(&at.ki("audiences", i), "audience must be non-empty string");
        }
    }
    let jwks_uri = rule.jwks_uri.as_deref().unwrap_or("");
    if rule.issuer.is_empty() && jwks_uri.is_empty() {
        rep.error(
            &at.k("issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if jwks_uri
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("file://"))
    {
        // not Istio's: istiod refuses the scheme; a sidecar outside Kubernetes reads the
        // file (mesh-proxy's extension, told as a warning)
        rep.warn(
            &at.k("jwksUri"),
            "file:// is a mesh-proxy extension: istiod refuses it (URI scheme \"file\" is not supported); mesh-proxy reads the JWKS from the file at load and at every refresh",
        );
    } else if !jwks_uri.is_empty() {
        rep.check(&at.k("jwksUri"), parse_jwks_uri(jwks_uri));
    }
    if let Some(jwks) = rule.jwks.as_deref().filter(|j| !j.is_empty()) {
        let p = at.k("jwks");
        match parse_jwks(jwks) {
            Err(e) => rep.error(&p, format!("jwks parse error: {e}")),
            Ok(private) => {
                for i in private {
                    rep.warn(
                        &p,
                        format!(
                            "jwks key at index {i} contains private key material; only public keys are used for verification"
                        ),
                    );
                }
            }
        }
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            rep.error(
                &at.ki("fromHeaders", i).k("name"),
                "location header name must be non-empty string",
            );
        }
    }
    for (i, q) in rule.from_params.iter().enumerate() {
        if q.is_empty() {
            rep.error(
                &at.ki("fromParams", i),
                "location query must be non-empty string",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            rep.error(
                &at.ki("fromCookies", i),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let p = at.ki("outputClaimToHeaders", i);
        if c.claim.is_empty() || c.header.is_empty() {
            rep.error(
                &p,
                "outputClaimToHeaders header and claim value must be non-empty string",
            );
            continue;
        }
        rep.check(&p.k("header"), validate_strict_header_name(&c.header));
    }
    if let Some(t) = rule.timeout {
        rep.check(&at.k("timeout"), validate_duration(t));
    }
}

/// `security.ParseJwksURI`: an `http` or `https` URL, with a numeric port if any.
pub(crate) fn parse_jwks_uri(uri: &str) -> Result<(), String> {
    let scheme = match uri.split_once(':') {
        Some((s, _))
            if !s.is_empty()
                && s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            s.to_ascii_lowercase()
        }
        _ => String::new(),
    };
    if uri.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("parse {uri:?}: invalid character in URL"));
    }
    if scheme != "http" && scheme != "https" {
        return Err(format!("URI scheme {scheme:?} is not supported"));
    }
    let rest = &uri[scheme.len() + 1..];
    let Some(authority_and_path) = rest.strip_prefix("//") else {
        return Ok(());
    };
    let authority = authority_and_path
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    match authority::split_host_port(authority::strip_userinfo(authority)) {
        Ok((_, Some(p))) if !p.bytes().all(|c| c.is_ascii_digit()) => {
            Err(format!("parse {uri:?}: invalid port \":{p}\" after host"))
        }
        Ok(_) => Ok(()),
        Err(AuthorityError::UnclosedBracket) => Err(format!("parse {uri:?}: missing ']' in host")),
        Err(_) => Err(format!("parse {uri:?}: invalid port after host")),
    }
}

/// A light `jwk.Parse`: a JSON key set (`{"keys": [...]}`) or a single key, each key an
/// object with `kty`. Returns the indexes of keys carrying private material.
pub(crate) fn parse_jwks(jwks: &str) -> Result<Vec<usize>, String> {
    let v: serde_json::Value = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    let keys: Vec<&serde_json::Value> = match v.get("keys") {
        Some(serde_json::Value::Array(ks)) => ks.iter().collect(),
        Some(_) => return Err("failed to parse key set: \"keys\" must be an array".into()),
        None if v.is_object() => vec![&v],
        None => return Err("failed to unmarshal JSON into key set".into()),
    };
    let mut private = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(kty) = k.get("kty").and_then(|t| t.as_str()) else {
            return Err(format!(
                "failed to parse key #{i}: invalid key type: missing \"kty\""
            ));
        };
        match kty {
            "RSA" | "EC" | "OKP" => {
                if k.get("d").is_some() {
                    private.push(i);
                }
            }
            "oct" => private.push(i),
            other => {
                return Err(format!(
                    "failed to parse key #{i}: invalid key type {other:?}"
                ));
            }
        }
    }
    Ok(private)
}

//! Compiling the AuthorizationPolicies of a workload, and deciding on a request.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use mesh_core::ext::{ConnectionSni, DestinationAddr, PeerIdentity, client_addr};
use mesh_core::model::security::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, Rule, Source,
};
use mesh_core::selector::{Labels, WorkloadSelector};

use super::matcher::{HostPattern, PathPattern, Pattern, parse_cidr};
use crate::jwt::RequestAuth;

/// An AuthorizationPolicy with its place.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a AuthorizationPolicy,
}

/// The workload the policies are compiled for.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    /// The mesh's root namespace (`meshConfig.rootNamespace`, `istio-system`).
    pub root_namespace: &'a str,
    /// The workload's namespace.
    pub namespace: &'a str,
    /// The workload's labels.
    pub labels: &'a Labels,
}

/// A policy this version cannot enforce for the workload: the configuration is refused
/// (security fails closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AuthorizationPolicy {namespace}/{name}: {field}: {message}")]
pub struct AuthzError {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The field, from the document root (`spec.rules[0].from[0].source.requestPrincipals`).
    pub field: String,
    /// Why.
    pub message: String,
}

/// Decides whether an external authorizer (a `CUSTOM` policy's `provider`) allows a
/// request. Istio calls an `ext_authz` service; an implementation may answer from memory.
pub trait ExternalAuthorizer: fmt::Debug + Send + Sync + 'static {
    /// Whether the provider named `provider` allows the request described by `attrs`.
    fn check(&self, provider: &str, attrs: &Attributes<'_>) -> bool;
}

/// What a policy sees of a request: read from its head and extensions
/// ([`PeerIdentity`], [`ClientAddr`](mesh_core::ext::ClientAddr), [`DestinationAddr`],
/// [`ConnectionSni`]).
#[derive(Debug)]
pub struct Attributes<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, normalised, without the query.
    pub path: &'a str,
    /// The `Host` (or `:authority`), lowercased.
    pub host: Cow<'a, str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The mTLS peer's identity, if any.
    pub peer: Option<&'a PeerIdentity>,
    /// The direct peer's address (Envoy's `source.address`).
    pub source: Option<SocketAddr>,
    /// The original client's address (Envoy's `remote.address`): the direct peer's, as this
    /// proxy trusts no `x-forwarded-for` (Istio's default `numTrustedProxies: 0`).
    pub remote: Option<SocketAddr>,
    /// The address the request was sent to.
    pub destination: Option<SocketAddr>,
    /// The TLS server name the peer asked for.
    pub sni: Option<&'a str>,
    /// The request's validated JWT ([`crate::jwt`]), if any.
    pub auth: Option<&'a RequestAuth>,
}

/// The outcome of [`Authorizer::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The policy that decided (`<ns>/<name>`): the DENY or CUSTOM policy that matched, or
    /// the ALLOW policy that allowed; `None` when no policy decided (no ALLOW policy: allow;
    /// ALLOW policies but none matched: deny).
    pub policy: Option<Arc<str>>,
    /// Whether a `CUSTOM` policy's provider denied (Envoy's flag `UAEX`, not `RBAC`).
    pub external: bool,
    /// The first `AUDIT` policy that matched, if any (no effect on the decision).
    pub audit: Option<Arc<str>>,
    /// A denial's `%RESPONSE_CODE_DETAILS%` when a `DENY` rule matched, as Envoy's RBAC
    /// filter writes it (`rbac_access_denied_matched_policy[ns[foo]-policy[deny-get]-rule[0]]`);
    /// `None` otherwise (an ALLOW policy that matched nothing: `…[none]`).
    pub details: Option<Arc<str>>,
}

/// The AuthorizationPolicies that apply to one workload, compiled once per configuration
/// load. See the [module docs](super).
#[derive(Debug, Default)]
pub struct Authorizer {
    custom: Vec<Compiled>,
    deny: Vec<Compiled>,
    allow: Vec<Compiled>,
    audit: Vec<Compiled>,
    external: Option<Arc<dyn ExternalAuthorizer>>,
}

#[derive(Debug)]
struct Compiled {
    name: Arc<str>,
    provider: Box<str>,
    rules: Vec<CRule>,
}

#[derive(Debug)]
struct CRule {
    from: Vec<CSource>,
    to: Vec<COperation>,
    when: Vec<CCondition>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` when this rule denies: the RBAC policy Istio
    /// names after it, `rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]-rule[<i>]]`.
    denied: Arc<str>,
}

/// Values of a field (any matches) and of its `not` twin (none matches).
#[derive(Debug)]
struct Field<T> {
    yes: Vec<T>,
    no: Vec<T>,
}

#[derive(Debug)]
struct CSource {
    principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    trust_domains: Field<Pattern>,
    service_accounts: Field<(Box<str>, Box<str>)>,
    ip_blocks: Field<IpNet>,
    remote_ip_blocks: Field<IpNet>,
    request_principals: Field<Pattern>,
}

#[derive(Debug)]
struct COperation {
    hosts: Field<HostPattern>,
    ports: Field<u16>,
    methods: Field<Pattern>,
    paths: Field<PathPattern>,
}

#[derive(Debug)]
struct CCondition {
    key: Key,
    values: Field<Value>,
}

#[derive(Debug)]
enum Key {
    Header(HeaderName),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    DestinationIp,
    DestinationPort,
    Sni,
    /// `request.auth.principal`.
    AuthPrincipal,
    /// `request.auth.audiences`.
    AuthAudiences,
    /// `request.auth.presenter` (`azp`).
    AuthPresenter,
    /// `request.auth.claims[a][b]`: the path.
    AuthClaim(Box<[Box<str>]>),
}

#[derive(Debug)]
enum Value {
    Text(Pattern),
    Net(IpNet),
    Port(u16),
    ServiceAccount(Box<str>, Box<str>),
}

// === impl Authorizer ===

impl Authorizer {
    /// Allows every request (no policy).
    pub fn allow_all() -> Authorizer {
        Authorizer::default()
    }

    /// Compiles the policies of `policies` (in load order) that apply to `workload`, as
    /// Istio selects them for a sidecar: in the root namespace without selector, mesh-wide;
    /// in the workload's namespace without selector, namespace-wide; with
    /// `selector.matchLabels`, to the matching workloads of its namespace (of every
    /// namespace from the root namespace). Policies with `targetRef(s)` attach to gateways
    /// and waypoints, never to a sidecar: they are skipped. `CUSTOM` policies need
    /// `external`; without it they are refused.
    pub fn compile(
        policies: &[PolicyRef<'_>],
        workload: &Workload<'_>,
        external: Option<Arc<dyn ExternalAuthorizer>>,
    ) -> Result<Authorizer, Vec<AuthzError>> {
        let mut out = Authorizer {
            external,
            ..Authorizer::default()
        };
        let mut errors = Vec::new();
        for p in policies.iter().filter(|p| applies(p, workload)) {
            let mut err = |field: String, message: String| {
                errors.push(AuthzError {
                    namespace: p.namespace.to_string(),
                    name: p.name.to_string(),
                    field,
                    message,
                })
            };
            let action = p.spec.action.unwrap_or_default();
            if action == AuthorizationAction::Custom && out.external.is_none() {
                err(
                    "spec.action".into(),
                    "CUSTOM needs an external authorizer and this proxy has none configured: \
                     refused, because security fails closed"
                        .into(),
                );
                continue;
            }
            let mut rules = Vec::with_capacity(p.spec.rules.len());
            for (i, r) in p.spec.rules.iter().enumerate() {
                match compile_rule(r, p.namespace, &format!("spec.rules[{i}]")) {
                    Ok(mut r) => {
                        // Istio's RBAC policy name for the rule (its authz builder's)
                        r.denied = format!(
                            "rbac_access_denied_matched_policy[ns[{}]-policy[{}]-rule[{i}]]",
                            p.namespace, p.name
                        )
                        .into();
                        rules.push(r)
                    }
                    Err((field, message)) => err(field, message),
                }
            }
            let compiled = Compiled {
                name: format!("{}/{}", p.namespace, p.name).into(),
                provider: p
                    .spec
                    .provider
                    .as_ref()
                    .map(|x| x.name.as_str())
                    .unwrap_or_default()
                    .into(),
                rules,
            };
            match action {
                AuthorizationAction::Allow => out.allow.push(compiled),
                AuthorizationAction::Deny => out.deny.push(compiled),
                AuthorizationAction::Audit => out.audit.push(compiled),
                AuthorizationAction::Custom => out.custom.push(compiled),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Whether no policy applies (every request is allowed).
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
    }

    /// Istio's evaluation order: `CUSTOM` (a matching policy's provider may deny), then
    /// `DENY` (any match denies), then `ALLOW` (none: allow; some, but none matches: deny).
    /// `AUDIT` policies only mark the request.
    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        let audit = self
            .audit
            .iter()
            .find(|p| p.matches(a))
            .map(|p| p.name.clone());
        let decision = |allowed, policy: Option<&Compiled>, external| Decision {
            allowed,
            policy: policy.map(|p| p.name.clone()),
            external,
            audit: audit.clone(),
            details: None,
        };
        for p in &self.custom {
            if p.matches(a)
                && !self
                    .external
                    .as_ref()
                    .is_some_and(|x| x.check(&p.provider, a))
            {
                return decision(false, Some(p), true);
            }
        }
        if let Some(p) = self.deny.iter().find(|p| p.matches(a)) {
            // the rule Envoy's RBAC engine names: the first matching one in the order of its
            // policies' names (a `std::map` of Istio's `ns[…]-policy[…]-rule[…]`)
            let named = self
                .deny
                .iter()
                .flat_map(|p| p.rules.iter())
                .filter(|r| r.matches(a))
                .map(|r| &r.denied)
                .min();
            return Decision {
                details: named.cloned(),
                ..decision(false, Some(p), false)
            };
        }
        if self.allow.is_empty() {
            return decision(true, None, false);
        }
        match self.allow.iter().find(|p| p.matches(a)) {
            Some(p) => decision(true, Some(p), false),
            None => decision(false, None, false),
        }
    }
}

impl Authorizer {
    /// The decision on a TCP connection (Istio's RBAC network filter, `authz-tcp`): only
    /// the connection's fields are known (`source`, `remote`, `destination`, `peer`, `sni`;
    /// the HTTP fields of `a` are not read). A rule that names an HTTP-only field
    /// (`hosts`, `methods`, `paths`, `requestPrincipals`, `request.*` conditions) is
    /// dropped from an `ALLOW` policy (it can allow nothing: less is allowed), and in
    /// `DENY`, `AUDIT` and `CUSTOM` policies those fields are ignored (the rule denies more),
    /// as Istio's `rule.checkError` generates them for a TCP filter chain.
    pub fn decide_tcp(&self, a: &Attributes<'_>) -> Decision {
        let audit = self
            .audit
            .iter()
            .find(|p| p.matches_tcp(a, false))
            .map(|p| p.name.clone());
        let decision = |allowed, policy: Option<&Compiled>, external| Decision {
            allowed,
            policy: policy.map(|p| p.name.clone()),
            external,
            audit: audit.clone(),
            details: None,
        };
        for p in &self.custom {
            if p.matches_tcp(a, false)
                && !self
                    .external
                    .as_ref()
                    .is_some_and(|x| x.check(&p.provider, a))
            {
                return decision(false, Some(p), true);
            }
        }
        if let Some(p) = self.deny.iter().find(|p| p.matches_tcp(a, false)) {
            return decision(false, Some(p), false);
        }
        if self.allow.is_empty() {
            return decision(true, None, false);
        }
        match self.allow.iter().find(|p| p.matches_tcp(a, true)) {
            Some(p) => decision(true, Some(p), false),
            None => decision(false, None, false),
        }
    }
}

/// Whether Istio applies `p` to the sidecar of `w`.
fn applies(p: &PolicyRef<'_>, w: &Workload<'_>) -> bool {
    w.selects(
        p.namespace,
        p.spec.selector.as_ref(),
        p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty(),
    )
}

impl Workload<'_> {
    /// Whether Istio applies a policy (AuthorizationPolicy, RequestAuthentication) of
    /// `namespace` with `selector` to this workload's sidecar: one of the root namespace
    /// (mesh-wide) or of the workload's namespace, selecting its labels when it has a
    /// selector; a policy with `targetRef(s)` is for gateways and waypoints (`targeted`), and
    /// a sidecar skips it.
    pub fn selects(
        &self,
        namespace: &str,
        selector: Option<&WorkloadSelector>,
        targeted: bool,
    ) -> bool {
        !targeted
            && (namespace == self.namespace || namespace == self.root_namespace)
            && selector.is_none_or(|s| s.matches(self.labels))
    }
}

type Refusal = (String, String);

fn refused(field: String, what: &str) -> Refusal {
    (
        field,
        format!("{what}: refused, because security fails closed"),
    )
}

/// `ns`: the policy's namespace (a bare service account is of that namespace).
fn compile_rule(r: &Rule, ns: &str, at: &str) -> Result<CRule, Refusal> {
    let mut from = Vec::with_capacity(r.from.len());
    for (i, f) in r.from.iter().enumerate() {
        let src = f.source.clone().unwrap_or_default();
        from.push(compile_source(&src, ns, &format!("{at}.from[{i}].source"))?);
    }
    let mut to = Vec::with_capacity(r.to.len());
    for (i, t) in r.to.iter().enumerate() {
        let op = t.operation.clone().unwrap_or_default();
        to.push(compile_operation(&op, &format!("{at}.to[{i}].operation"))?);
    }
    let mut when = Vec::with_capacity(r.when.len());
    for (i, c) in r.when.iter().enumerate() {
        when.push(compile_condition(c, ns, &format!("{at}.when[{i}]"))?);
    }
    Ok(CRule {
        from,
        to,
        when,
        denied: Arc::from(""),
    })
}

fn field<T>(yes: &[String], no: &[String], f: impl Fn(&str) -> T) -> Field<T> {
    Field {
        yes: yes.iter().map(|v| f(v)).collect(),
        no: no.iter().map(|v| f(v)).collect(),
    }
}

fn try_field<T>(
    yes: &[String],
    no: &[String],
    at: &str,
    names: (&str, &str),
    f: impl Fn(&str) -> Option<T>,
) -> Result<Field<T>, Refusal> {
    let conv = |vals: &[String], name: &str| -> Result<Vec<T>, Refusal> {
        vals.iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| (format!("{at}.{name}[{i}]"), format!("invalid value {v:?}")))
            })
            .collect()
    };
    Ok(Field {
        yes: conv(yes, names.0)?,
        no: conv(no, names.1)?,
    })
}

/// `serviceAccounts` values: `<ns>/<sa>`, or `<sa>` of the policy's namespace `ns`.
fn service_account(v: &str, ns: &str) -> (Box<str>, Box<str>) {
    match v.split_once('/') {
        Some((n, sa)) => (n.into(), sa.into()),
        None => (ns.into(), v.into()),
    }
}

fn compile_source(s: &Source, ns: &str, at: &str) -> Result<CSource, Refusal> {
    let sa = |v: &str| Some(service_account(v, ns));
    Ok(CSource {
        principals: field(&s.principals, &s.not_principals, Pattern::new),
        namespaces: field(&s.namespaces, &s.not_namespaces, Pattern::new),
        trust_domains: field(&s.trust_domains, &s.not_trust_domains, Pattern::new),
        service_accounts: try_field(
            &s.service_accounts,
            &s.not_service_accounts,
            at,
            ("serviceAccounts", "notServiceAccounts"),
            sa,
        )?,
        ip_blocks: try_field(
            &s.ip_blocks,
            &s.not_ip_blocks,
            at,
            ("ipBlocks", "notIpBlocks"),
            parse_cidr,
        )?,
        remote_ip_blocks: try_field(
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            at,
            ("remoteIpBlocks", "notRemoteIpBlocks"),
            parse_cidr,
        )?,
        request_principals: field(
            &s.request_principals,
            &s.not_request_principals,
            Pattern::new,
        ),
    })
}

fn compile_operation(o: &Operation, at: &str) -> Result<COperation, Refusal> {
    Ok(COperation {
        hosts: field(&o.hosts, &o.not_hosts, HostPattern::new),
        ports: try_field(&o.ports, &o.not_ports, at, ("ports", "notPorts"), |v| {
            v.parse().ok()
        })?,
        methods: field(&o.methods, &o.not_methods, Pattern::new),
        paths: field(&o.paths, &o.not_paths, PathPattern::new),
    })
}

/// Istio's `when` keys for HTTP (`security/v1beta1` "Authorization Policy Conditions").
fn compile_condition(c: &Condition, ns: &str, at: &str) -> Result<CCondition, Refusal> {
    let key_at = format!("{at}.key");
    let key = match c.key.as_str() {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "source.serviceAccount" => Key::SourceServiceAccount,
        "source.trustDomain" => Key::SourceTrustDomain,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::Sni,
        "request.auth.principal" => Key::AuthPrincipal,
        "request.auth.audiences" => Key::AuthAudiences,
        "request.auth.presenter" => Key::AuthPresenter,
        k if k.starts_with("request.auth.claims") => match claim_path(k) {
            Some(path) => Key::AuthClaim(path),
            None => {
                return Err(refused(
                    key_at,
                    &format!(
                        "{k:?} is not of the form request.auth.claims[name] (or [a][b] for a nested claim)"
                    ),
                ));
            }
        },
        k => match k
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        {
            Some(h) => Key::Header(h),
            None => {
                return Err(refused(
                    key_at,
                    &format!("condition key {k:?} is not enforced by this version"),
                ));
            }
        },
    };
    let conv = |v: &str| -> Option<Value> {
        Some(match key {
            Key::SourceIp | Key::RemoteIp | Key::DestinationIp => Value::Net(parse_cidr(v)?),
            Key::DestinationPort => Value::Port(v.parse().ok()?),
            Key::SourceServiceAccount => {
                let (n, sa) = service_account(v, ns);
                Value::ServiceAccount(n, sa)
            }
            _ => Value::Text(Pattern::new(v)),
        })
    };
    let values = try_field(&c.values, &c.not_values, at, ("values", "notValues"), conv)?;
    Ok(CCondition { key, values })
}

/// Istio's `request.auth.claims[a][b]` (`extractNameInNestedBrackets`): the claim path.
fn claim_path(k: &str) -> Option<Box<[Box<str>]>> {
    let mut rest = k.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name.into());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then(|| path.into_boxed_slice())
}

// === matching ===

impl<T> Field<T> {
    #[inline]
    fn check(&self, m: impl Fn(&T) -> bool) -> bool {
        (self.yes.is_empty() || self.yes.iter().any(&m)) && !self.no.iter().any(&m)
    }
}

fn in_net(net: &IpNet, addr: Option<SocketAddr>) -> bool {
    addr.is_some_and(|a| net.contains(&a.ip()))
}

impl Compiled {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(a))
    }
}

impl Compiled {
    /// [`matches`](Self::matches) on a TCP connection: `allow` drops the rules with HTTP-only
    /// fields, otherwise those fields are ignored.
    fn matches_tcp(&self, a: &Attributes<'_>, allow: bool) -> bool {
        self.rules
            .iter()
            .filter(|r| !(allow && r.has_http_fields()))
            .any(|r| r.matches_tcp(a))
    }
}

impl CRule {
    /// Whether the rule names a field a TCP connection does not have.
    fn has_http_fields(&self) -> bool {
        fn set<T>(f: &Field<T>) -> bool {
            !f.yes.is_empty() || !f.no.is_empty()
        }
        self.from.iter().any(|s| set(&s.request_principals))
            || self
                .to
                .iter()
                .any(|o| set(&o.hosts) || set(&o.methods) || set(&o.paths))
            || self.when.iter().any(|c| c.key.is_http())
    }

    /// The rule on a TCP connection, its HTTP-only fields ignored.
    fn matches_tcp(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches_tcp(a)))
            && (self.to.is_empty()
                || self.to.iter().any(|o| {
                    o.ports
                        .check(|p| a.destination.is_some_and(|d| d.port() == *p))
                }))
            && self
                .when
                .iter()
                .filter(|c| !c.key.is_http())
                .all(|c| c.matches(a))
    }
}

impl Key {
    /// Whether only an HTTP request has it (`request.headers`, `request.auth.*`).
    fn is_http(&self) -> bool {
        matches!(
            self,
            Key::Header(_)
                | Key::AuthPrincipal
                | Key::AuthAudiences
                | Key::AuthPresenter
                | Key::AuthClaim(_)
        )
    }
}

impl CRule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }
}

impl CSource {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.matches_tcp(a)
            && self
                .request_principals
                .check(|p| a.auth.is_some_and(|t| p.matches(&t.principal)))
    }
}

impl CSource {
    /// [`matches`](Self::matches) without `requestPrincipals` (HTTP only).
    fn matches_tcp(&self, a: &Attributes<'_>) -> bool {
        let principal = a.peer.map(PeerIdentity::principal).unwrap_or_default();
        let namespace = a.peer.map(|p| p.id().namespace()).unwrap_or_default();
        let trust_domain = a.peer.map(|p| p.id().trust_domain()).unwrap_or_default();
        self.principals.check(|p| p.matches(principal))
            && self.namespaces.check(|p| p.matches(namespace))
            && self.trust_domains.check(|p| p.matches(trust_domain))
            && self.service_accounts.check(|(ns, sa)| {
                a.peer.is_some_and(|p| {
                    p.id().namespace() == &**ns && p.id().service_account() == &**sa
                })
            })
            && self.ip_blocks.check(|n| in_net(n, a.source))
            && self.remote_ip_blocks.check(|n| in_net(n, a.remote))
    }
}

impl COperation {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.hosts.check(|h| h.matches(&a.host))
            && self
                .ports
                .check(|p| a.destination.is_some_and(|d| d.port() == *p))
            && self.methods.check(|m| m.matches(a.method.as_str()))
            && self.paths.check(|p| p.matches(a.path))
    }
}

impl CCondition {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let text: Option<Cow<'_, str>> = match &self.key {
            Key::Header(h) => header_text(a.headers, h),
            Key::SourceNamespace => a.peer.map(|p| Cow::Borrowed(p.id().namespace())),
            Key::SourcePrincipal => a.peer.map(|p| Cow::Borrowed(p.principal())),
            Key::SourceTrustDomain => a.peer.map(|p| Cow::Borrowed(p.id().trust_domain())),
            Key::Sni => a.sni.map(Cow::Borrowed),
            Key::AuthPrincipal => a.auth.map(|t| Cow::Borrowed(&*t.principal)),
            Key::AuthPresenter => a
                .auth
                .and_then(|t| t.claims.get("azp")?.as_str())
                .map(Cow::Borrowed),
            _ => None,
        };
        // list-valued: any element matches (Istio's `ListMatcher` `oneOf`), as does a
        // string claim itself
        let list: Option<&serde_json::Value> = match &self.key {
            Key::AuthAudiences => a.auth.and_then(|t| t.claims.get("aud")),
            Key::AuthClaim(path) => a.auth.and_then(|t| t.claim(path)),
            _ => None,
        };
        if matches!(self.key, Key::AuthAudiences | Key::AuthClaim(_)) {
            return self.values.check(|v| match v {
                Value::Text(p) => claim_matches(list, p),
                _ => false,
            });
        }
        let addr = match self.key {
            Key::SourceIp => a.source,
            Key::RemoteIp => a.remote,
            Key::DestinationIp | Key::DestinationPort => a.destination,
            _ => None,
        };
        self.values.check(|v| match v {
            // Istio's HeaderMatcher: `*` is a presence match (even of an empty value)
            Value::Text(Pattern::Any) if matches!(self.key, Key::Header(_)) => text.is_some(),
            Value::Text(p) => text.as_deref().is_some_and(|t| p.matches(t)),
            Value::Net(n) => in_net(n, addr),
            Value::Port(port) => addr.is_some_and(|d| d.port() == *port),
            Value::ServiceAccount(n, sa) => a
                .peer
                .is_some_and(|p| p.id().namespace() == &**n && p.id().service_account() == &**sa),
        })
    }
}

/// Whether a claim (a string, or a list of strings) matches `p`.
fn claim_matches(v: Option<&serde_json::Value>, p: &Pattern) -> bool {
    match v {
        Some(serde_json::Value::String(s)) => p.matches(s),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| p.matches(s))),
        _ => false,
    }
}

/// A header's value as Envoy's header matcher sees it: several values joined by `,`.
fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?.to_str().ok()?;
    let mut out: Option<String> = None;
    for v in all {
        let s = out.get_or_insert_with(|| first.to_string());
        s.push(',');
        s.push_str(v.to_str().ok()?);
    }
    Some(out.map_or(Cow::Borrowed(first), Cow::Owned))
}

// === impl Attributes ===

impl<'a> Attributes<'a> {
    /// The attributes of `req` (its path taken as already normalised).
    pub fn of<B>(req: &'a http::Request<B>) -> Attributes<'a> {
        let ext = req.extensions();
        let host = mesh_core::authority::of_request(req).unwrap_or_default();
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let source = client_addr(ext).map(|c| c.0);
        Attributes {
            method: req.method(),
            path: req.uri().path(),
            host,
            headers: req.headers(),
            peer: ext.get::<PeerIdentity>(),
            source,
            remote: source,
            destination: ext.get::<DestinationAddr>().map(|d| d.0),
            sni: ext.get::<ConnectionSni>().map(|s| &*s.0),
            auth: ext.get::<RequestAuth>(),
        }
    }
}

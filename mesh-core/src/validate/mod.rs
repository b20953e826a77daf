//! Validation: Istio's own rules (`pkg/config/validation`), with Istio's messages.
//!
//! [`validate`] checks loaded resources as `istioctl validate` and istiod's admission webhook
//! do, and returns [`Finding`]s: errors (the configuration is rejected) and warnings (accepted,
//! but probably not what was meant), each naming the resource by its index and the field by
//! its path from the document root (`spec.http[2].route[0].weight`). [`load::resolve`](crate::load::resolve) turns
//! them into [`Diagnostic`](crate::Diagnostic)s with file, line and column.
//!
//! ```
//! use mesh_core::{load, validate, Severity};
//!
//! let mut loader = load::Loader::new();
//! loader.add_str("vs.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews, subset: v1}
//!       weight: -10
//!     - destination: {host: reviews, subset: v2}
//!       weight: 10
//! "#);
//! let loaded = loader.finish();
//! let findings = validate::validate(&loaded.resources);
//! assert_eq!(findings[0].severity, Severity::Error);
//! assert_eq!(findings[0].message, "weight -10 < 0");
//! assert_eq!(findings[0].field.to_string(), "spec.http[0].route[0].weight");
//!
//! let diagnostics = load::resolve(&loaded.resources, findings);
//! assert_eq!(diagnostics[0].line, Some(10));
//! ```
//!
//! # How the rules are organised
//!
//! One module per kind, each a transcription of the matching Istio function
//! (`ValidateVirtualService`, `ValidateDestinationRule`, ...), and [`common`] for the checks
//! that several kinds share (hosts, ports, durations, percentages, string matches, regexes,
//! label keys, IPs and CIDRs, header names and values, `exportTo`). Fixed vocabularies
//! (protocols, `retryOn` names, gRPC statuses, AuthorizationPolicy condition keys, CORS
//! methods) are tables, written once.
//!
//! # Differences from Istio
//!
//! - Istio stops at the first error of some groups (`validateHTTPRedirect`, locality
//!   settings); so does this module, so a fixed file may show a further error on the next run,
//!   exactly as with `istioctl`.
//! - Protobuf `oneof` groups are separate optional fields in the model; setting two members of
//!   one group (which Kubernetes rejects while decoding) is reported here as
//!   `only one of a, b may be set`.
//! - AuthorizationPolicy errors are not prefixed with `invalid policy <name>.<ns>:` as Istio
//!   does: the diagnostic already names the resource.
//! - `ProxyBootstrap` and `LocalRateLimit` are this project's own kinds; their rules are
//!   this project's (for `LocalRateLimit`, Envoy's rules for its local rate limit filter).

mod authz;
mod bootstrap;
pub mod common;
mod destination_rule;
mod gateway;
pub mod ratelimit;
mod service_entry;
mod sidecar;
mod telemetry;
mod virtual_service;

use crate::error::{FieldPath, Severity};
use crate::load::Finding;
use crate::model::{Resource, Spec};
use crate::pattern::Precompiled;

/// Validates resources with Istio's rules; the findings name resources by their index in
/// `resources`. Errors and warnings are mixed, in resource order; use
/// [`Finding::severity`] to tell them apart.
///
/// Resources are checked independently, so large configurations are checked on several
/// threads (the findings come out in the same order either way).
pub fn validate(resources: &[Resource]) -> Vec<Finding> {
    validate_precompiled(resources).0
}

/// [`validate`], also returning the regexes and header formats it compiled to check them,
/// for the route table to use (see [`pattern`](crate::pattern)).
pub fn validate_precompiled(resources: &[Resource]) -> (Vec<Finding>, Precompiled) {
    const PARALLEL_MIN: usize = 64;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    if resources.len() < PARALLEL_MIN || threads == 1 {
        return validate_range(resources, 0);
    }
    let per = resources.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = resources
            .chunks(per)
            .enumerate()
            .map(|(i, group)| (i, scope.spawn(move || validate_range(group, i * per))))
            .collect();
        let mut out = Vec::new();
        let mut pre = Precompiled::default();
        for (i, h) in handles {
            let (found, p) = match h.join() {
                Ok(v) => v,
                // a panic in a validator thread: redo the group here so it surfaces normally
                Err(_) => validate_range(resources.chunks(per).nth(i).unwrap_or(&[]), i * per),
            };
            out.extend(found);
            pre.merge(p);
        }
        (out, pre)
    })
}

/// Validates `resources`, numbering them from `first`.
fn validate_range(resources: &[Resource], first: usize) -> (Vec<Finding>, Precompiled) {
    let mut out = Vec::new();
    let mut pre = Precompiled::default();
    for (index, r) in resources.iter().enumerate() {
        let mut rep = Report {
            resource: first + index,
            out: &mut out,
            pre: &mut pre,
        };
        validate_resource(r, &mut rep);
    }
    (out, pre)
}

/// Whether any finding is an error.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

fn validate_resource(r: &Resource, rep: &mut Report<'_>) {
    common::validate_metadata(r, rep);
    let spec = FieldPath::root().key("spec");
    let ns = r.namespace();
    match &r.spec {
        Spec::VirtualService(vs) => virtual_service::validate(vs, ns, &spec, rep),
        Spec::DestinationRule(dr) => destination_rule::validate(dr, ns, &spec, rep),
        Spec::ServiceEntry(se) => service_entry::validate(r, se, &spec, rep),
        Spec::WorkloadEntry(we) => service_entry::validate_workload_entry_kind(we, &spec, rep),
        Spec::Gateway(gw) => gateway::validate(r.name(), gw, &spec, rep),
        Spec::Sidecar(sc) => sidecar::validate(sc, ns, &spec, rep),
        Spec::PeerAuthentication(pa) => authz::validate_peer_authentication(pa, &spec, rep),
        Spec::AuthorizationPolicy(ap) => authz::validate_authorization_policy(ap, &spec, rep),
        Spec::RequestAuthentication(ra) => authz::validate_request_authentication(ra, &spec, rep),
        Spec::ProxyBootstrap(pb) => bootstrap::validate(pb, &spec, rep),
        Spec::LocalRateLimit(rl) => ratelimit::validate(rl, &spec, rep),
        Spec::Telemetry(t) => telemetry::validate(t, &spec, rep),
    }
}

/// Collects the findings of one resource (and what was compiled to find them).
pub(crate) struct Report<'a> {
    resource: usize,
    out: &'a mut Vec<Finding>,
    pub(crate) pre: &'a mut Precompiled,
}

// === impl Report ===

impl Report<'_> {
    /// Records an error at `field`.
    pub(crate) fn error(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.push(Severity::Error, field, message.into());
    }

    /// Records a warning at `field`.
    pub(crate) fn warn(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.push(Severity::Warning, field, message.into());
    }

    /// Records the error of `result`, if any.
    pub(crate) fn check(&mut self, field: &FieldPath, result: Result<(), String>) {
        if let Err(m) = result {
            self.error(field, m);
        }
    }

    fn push(&mut self, severity: Severity, field: &FieldPath, message: String) {
        self.out.push(Finding {
            resource: self.resource,
            severity,
            field: field.clone(),
            message,
        });
    }
}

/// Builds child paths without consuming the parent.
pub(crate) trait PathExt {
    /// `self.k`.
    fn k(&self, key: &str) -> FieldPath;
    /// `self[i]`.
    fn i(&self, index: usize) -> FieldPath;
    /// `self.k[i]`.
    fn ki(&self, key: &str, index: usize) -> FieldPath {
        self.k(key).index(index)
    }
}

impl PathExt for FieldPath {
    fn k(&self, key: &str) -> FieldPath {
        self.clone().key(key)
    }

    fn i(&self, index: usize) -> FieldPath {
        self.clone().index(index)
    }
}

#[cfg(test)]
mod tests;

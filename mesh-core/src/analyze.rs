//! Analysis of a compiled snapshot, as `istioctl analyze` does: problems that Istio's
//! validation lets through but that make traffic fail.
//!
//! - **IST0101 ReferencedResourceNotFound**: a VirtualService route (or mirror) names a host
//!   that is not in the registry, or a subset that the host's DestinationRule does not
//!   declare. Requests routed there get `503 NR`. Istio's analyzers `destinationhost` and
//!   `destinationrule` report these with the messages used here.
//!
//! Findings are warnings: the configuration is still applied (Istio applies it too), and
//! the proxy logs the first `NR` of each destination at run time.
//!
//! ```
//! use mesh_core::{analyze::analyze, compile::compile, load::Loader};
//!
//! let mut l = Loader::new();
//! l.add_str("vs.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route: [{destination: {host: reviews, subset: v3}}]
//! "#);
//! let issues = analyze(&compile(l.finish().resources));
//! assert_eq!(issues[0].field.to_string(), "spec.http[0].route[0].destination.host");
//! assert!(issues[0].message.starts_with("Referenced host not found: \"reviews.default.svc.cluster.local\""));
//! ```

use std::collections::HashMap;

use crate::compile::{Snapshot, VirtualServiceEntry};
use crate::error::{FieldPath, ResourceRef, Severity};
use crate::load::Issue;
use crate::model::Kind;
use crate::model::networking::Destination;

/// What IST0101 tells the user requests will get.
const CONSEQUENCE: &str = "requests routed to it get 503 NR";

/// Analyzes a snapshot as the proxy it configures sees it (the bootstrap workload's
/// namespace): the issues name their resource and field; [`Origins::locate`] gives them
/// positions.
///
/// [`Origins::locate`]: crate::load::Origins::locate
pub fn analyze(snapshot: &Snapshot) -> Vec<Issue> {
    let ns = snapshot.bootstrap.workload.namespace.as_str();
    let mut out = Vec::new();
    // routes name the same few destinations many times: look each up once
    let mut known = Known::default();
    for vs in &snapshot.virtual_services {
        if vs.namespace != ns && !vs.export_to.visible_to(ns) {
            continue;
        }
        // paths are only built for what is reported
        let at = |i: usize| FieldPath::root().key("spec").key("http").index(i);
        for (i, r) in vs.spec.http.iter().enumerate() {
            for (j, rd) in r.route.iter().enumerate() {
                if let Some(d) = &rd.destination {
                    let p = || at(i).key("route").index(j).key("destination");
                    check(snapshot, &mut known, vs, d, p, ns, &mut out);
                }
            }
            if let Some(m) = &r.mirror {
                let p = || at(i).key("mirror");
                check(snapshot, &mut known, vs, m, p, ns, &mut out);
            }
            for (j, m) in r.mirrors.iter().enumerate() {
                if let Some(d) = &m.destination {
                    let p = || at(i).key("mirrors").index(j).key("destination");
                    check(snapshot, &mut known, vs, d, p, ns, &mut out);
                }
            }
        }
    }
    out
}

/// Lookups already made: whether a host is a service, whether a host has a subset.
#[derive(Default)]
struct Known<'s> {
    hosts: HashMap<&'s str, bool>,
    subsets: HashMap<(&'s str, &'s str), bool>,
}

fn check<'s>(
    snapshot: &Snapshot,
    known: &mut Known<'s>,
    vs: &'s VirtualServiceEntry,
    d: &'s Destination,
    at: impl FnOnce() -> FieldPath,
    ns: &str,
    out: &mut Vec<Issue>,
) {
    let issue = |field: FieldPath, message: String| Issue {
        severity: Severity::Warning,
        resource: ResourceRef {
            kind: Kind::VirtualService,
            namespace: vs.namespace.clone(),
            name: vs.name.clone(),
        },
        field,
        message,
    };
    if d.host.is_empty() {
        return; // Istio's validation reports it
    }
    let host_known = *known
        .hosts
        .entry(d.host.as_str())
        .or_insert_with(|| snapshot.service(&d.host, ns).is_some());
    if !host_known {
        out.push(issue(
            at().key("host"),
            format!(
                "Referenced host not found: {:?} (IST0101 ReferencedResourceNotFound: no ServiceEntry declares it; {CONSEQUENCE})",
                d.host
            ),
        ));
        return;
    }
    if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty())
        && !*known
            .subsets
            .entry((d.host.as_str(), subset))
            .or_insert_with(|| snapshot.subset(&d.host, subset, ns).is_some())
    {
        out.push(issue(
            at().key("subset"),
            format!(
                "Referenced host+subset in destinationrule not found: \"{}+{subset}\" (IST0101 ReferencedResourceNotFound; {CONSEQUENCE})",
                d.host
            ),
        ));
    }
}

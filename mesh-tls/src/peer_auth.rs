//! The mTLS mode a workload's inbound listener enforces: Istio's PeerAuthentication
//! precedence.
//!
//! As istiod composes them (`pilot/pkg/security/authn`, `ComposePeerAuthentication`; the
//! selector semantics of `security/v1beta1/peer_authentication.proto`):
//!
//! - a policy **without selector** in the mesh's root namespace is mesh-wide; one without
//!   selector in the workload's namespace is namespace-wide;
//! - a policy **with a selector** applies to the workloads of its namespace whose labels
//!   match; in the root namespace it matches workloads of every namespace;
//! - of several candidates at one level the oldest wins (Istio compares creation times, then
//!   names; a file has none, so here: the first in load order);
//! - the workload-level mode, else the namespace's, else the mesh's, else `PERMISSIVE`;
//!   `UNSET` (or no `mtls`) inherits from the level above.
//!
//! ```
//! use mesh_core::model::security::{MtlsMode, MutualTls, PeerAuthentication};
//! use mesh_core::selector::Labels;
//! use mesh_tls::peer_auth::{Policy, effective_mode};
//!
//! let strict = PeerAuthentication {
//!     mtls: Some(MutualTls { mode: Some(MtlsMode::Strict) }),
//!     ..PeerAuthentication::default()
//! };
//! let mesh_wide = Policy { namespace: "istio-system", name: "default", spec: &strict };
//! let labels = Labels::default();
//! let m = effective_mode(&[mesh_wide], "istio-system", "default", &labels);
//! assert_eq!(m.mode, MtlsMode::Strict);
//! assert_eq!(m.from.as_deref(), Some("PeerAuthentication/istio-system/default"));
//! ```

use mesh_core::model::security::{MtlsMode, PeerAuthentication};
use mesh_core::selector::Labels;

/// A PeerAuthentication with its place.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a PeerAuthentication,
}

/// The mode that applies, and which policy decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// `STRICT`, `PERMISSIVE` or `DISABLE` (never `UNSET`).
    pub mode: MtlsMode,
    /// `PeerAuthentication/<ns>/<name>` of the deciding policy; `None`: Istio's default.
    pub from: Option<String>,
}

/// The mTLS mode for the workload in `namespace` with `labels`, under `policies` (in load
/// order) with the mesh's `root_namespace`. See the [module docs](self).
pub fn effective_mode(
    policies: &[Policy<'_>],
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Effective {
    let first = |pred: &dyn Fn(&Policy<'_>) -> bool| policies.iter().find(|p| pred(p)).copied();
    let mesh = first(&|p| p.namespace == root_namespace && p.spec.selector.is_none());
    let ns = first(&|p| p.namespace == namespace && p.spec.selector.is_none());
    let workload = first(&|p| {
        p.spec.selector.as_ref().is_some_and(|s| {
            (p.namespace == namespace || p.namespace == root_namespace) && s.matches(labels)
        })
    });
    // the most specific level with a mode decides; UNSET passes to the level above
    for p in [workload, ns, mesh].into_iter().flatten() {
        let mode = p
            .spec
            .mtls
            .as_ref()
            .and_then(|m| m.mode)
            .unwrap_or(MtlsMode::Unset);
        if mode != MtlsMode::Unset {
            return Effective {
                mode,
                from: Some(format!("PeerAuthentication/{}/{}", p.namespace, p.name)),
            };
        }
    }
    Effective {
        mode: MtlsMode::Permissive,
        from: None,
    }
}

/// The modes of the workload's ports under `portLevelMtls` (keyed by workload port, the
/// target port of the service, as Istio's `portLevelMtls` keys are): only the workload-level
/// policy (the one with a selector that [`effective_mode`] considers) has them (Istio's
/// validation refuses them without a selector); a port-level `UNSET` takes the workload's
/// `effective` mode. Ports not listed have the workload's mode.
pub fn port_modes(
    policies: &[Policy<'_>],
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
    effective: &Effective,
) -> std::collections::BTreeMap<u32, Effective> {
    let workload = policies.iter().find(|p| {
        p.spec.selector.as_ref().is_some_and(|s| {
            (p.namespace == namespace || p.namespace == root_namespace) && s.matches(labels)
        })
    });
    let Some(p) = workload else {
        return Default::default();
    };
    let from = format!("PeerAuthentication/{}/{}", p.namespace, p.name);
    p.spec
        .port_level_mtls
        .iter()
        .map(|(port, m)| {
            let e = match m.mode.unwrap_or(MtlsMode::Unset) {
                MtlsMode::Unset => effective.clone(),
                mode => Effective {
                    mode,
                    from: Some(from.clone()),
                },
            };
            (*port, e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::security::MutualTls;
    use mesh_core::selector::WorkloadSelector;

    fn pa(mode: Option<MtlsMode>, selector: &[(&str, &str)]) -> PeerAuthentication {
        PeerAuthentication {
            selector: (!selector.is_empty()).then(|| WorkloadSelector {
                match_labels: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            mtls: mode.map(|m| MutualTls { mode: Some(m) }),
            ..PeerAuthentication::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ROOT: &str = "istio-system";

    #[test]
    fn workload_over_namespace_over_mesh_over_the_permissive_default() {
        let mesh = pa(Some(MtlsMode::Strict), &[]);
        let ns = pa(Some(MtlsMode::Disable), &[]);
        let wl = pa(Some(MtlsMode::Permissive), &[("app", "reviews")]);
        let p = |ns_, name, spec| Policy {
            namespace: ns_,
            name,
            spec,
        };
        let all = [
            p(ROOT, "mesh", &mesh),
            p("bookinfo", "ns", &ns),
            p("bookinfo", "wl", &wl),
        ];
        let reviews = labels(&[("app", "reviews")]);
        let ratings = labels(&[("app", "ratings")]);
        assert_eq!(
            effective_mode(&all, ROOT, "bookinfo", &reviews).mode,
            MtlsMode::Permissive
        );
        assert_eq!(
            effective_mode(&all, ROOT, "bookinfo", &ratings).mode,
            MtlsMode::Disable
        );
        let other = effective_mode(&all, ROOT, "shop", &reviews);
        assert_eq!(other.mode, MtlsMode::Strict, "the selector is bookinfo's");
        assert_eq!(
            other.from.as_deref(),
            Some("PeerAuthentication/istio-system/mesh")
        );
        let none = effective_mode(&[], ROOT, "shop", &reviews);
        assert_eq!((none.mode, none.from), (MtlsMode::Permissive, None));
    }

    #[test]
    fn unset_inherits_from_the_level_above() {
        // istio.io "Migrate to mTLS": a workload policy with only portLevelMtls keeps the
        // namespace's mode for the other ports
        let ns = pa(Some(MtlsMode::Strict), &[]);
        let wl_unset = pa(None, &[("app", "reviews")]);
        let wl_unset_explicit = pa(Some(MtlsMode::Unset), &[("app", "reviews")]);
        for wl in [&wl_unset, &wl_unset_explicit] {
            let all = [
                Policy {
                    namespace: "bookinfo",
                    name: "ns",
                    spec: &ns,
                },
                Policy {
                    namespace: "bookinfo",
                    name: "wl",
                    spec: wl,
                },
            ];
            let e = effective_mode(&all, ROOT, "bookinfo", &labels(&[("app", "reviews")]));
            assert_eq!(e.mode, MtlsMode::Strict);
            assert_eq!(e.from.as_deref(), Some("PeerAuthentication/bookinfo/ns"));
        }
    }

    #[test]
    fn a_root_namespace_selector_matches_every_namespace_and_the_first_policy_wins() {
        let root_sel = pa(Some(MtlsMode::Strict), &[("app", "db")]);
        let a = pa(Some(MtlsMode::Disable), &[]);
        let b = pa(Some(MtlsMode::Strict), &[]);
        let all = [
            Policy {
                namespace: ROOT,
                name: "db-strict",
                spec: &root_sel,
            },
            Policy {
                namespace: "shop",
                name: "a",
                spec: &a,
            },
            Policy {
                namespace: "shop",
                name: "b",
                spec: &b,
            },
        ];
        assert_eq!(
            effective_mode(&all, ROOT, "shop", &labels(&[("app", "db")])).mode,
            MtlsMode::Strict
        );
        let e = effective_mode(&all, ROOT, "shop", &labels(&[("app", "web")]));
        assert_eq!(e.mode, MtlsMode::Disable, "the first namespace-wide policy");
        assert_eq!(e.from.as_deref(), Some("PeerAuthentication/shop/a"));
    }

    #[test]
    fn port_level_modes_override_the_workload_s_and_unset_inherits_it() {
        // istio.io task "Enable mutual TLS per port": STRICT for the namespace, the
        // workload's port 8080 DISABLE
        let ns = pa(Some(MtlsMode::Strict), &[]);
        let mut wl = pa(None, &[("app", "httpbin")]);
        wl.port_level_mtls.insert(
            8080,
            MutualTls {
                mode: Some(MtlsMode::Disable),
            },
        );
        wl.port_level_mtls.insert(9090, MutualTls { mode: None });
        let all = [
            Policy {
                namespace: "bar",
                name: "ns",
                spec: &ns,
            },
            Policy {
                namespace: "bar",
                name: "httpbin",
                spec: &wl,
            },
        ];
        let httpbin = labels(&[("app", "httpbin")]);
        let e = effective_mode(&all, ROOT, "bar", &httpbin);
        let ports = port_modes(&all, ROOT, "bar", &httpbin, &e);
        assert_eq!(e.mode, MtlsMode::Strict);
        assert_eq!(ports[&8080].mode, MtlsMode::Disable);
        assert_eq!(
            ports[&8080].from.as_deref(),
            Some("PeerAuthentication/bar/httpbin")
        );
        assert_eq!(ports[&9090], e, "UNSET inherits the workload's mode");
        let other = labels(&[("app", "other")]);
        assert!(port_modes(&all, ROOT, "bar", &other, &e).is_empty());
    }
}

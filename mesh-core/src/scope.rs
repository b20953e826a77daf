//! The `Sidecar` kind's scoping: which Sidecar applies to the bootstrap's workload, and what
//! it lets the workload see and reach (Istio's `SidecarScope`, `pilot/pkg/model/sidecar.go`).
//!
//! - **Selection** (Istio's `PushContext.getSidecarScope`): the Sidecar of the workload's
//!   namespace whose `workloadSelector` matches the workload's labels, else the namespace's
//!   Sidecar without a selector, else the selector-less Sidecar of the mesh's
//!   `rootNamespace`. Several candidates at one step: the first in source order applies (Istio
//!   takes the oldest) and the others are warned about, as Istio's analyzers do
//!   (`ConflictingSidecarWorkloadSelectors`, `MultipleSidecarsWithoutWorkloadSelectors`).
//! - **`egress[].hosts`** (`namespace/dnsName`; `.` is the workload's namespace, `*` any
//!   namespace, a `~` prefix excludes, `~/*` excludes everything; the name may be `*` or
//!   `*.suffix`): the services the workload sees are those some entry imports (an entry of
//!   the service's own namespace, or of `*`) and none excludes, plus the destinations of the
//!   VirtualServices it sees (`collectImportedServices`). VirtualServices are selected by
//!   their hosts the same way (`SelectVirtualServices`, with `host.Name.Matches`, which
//!   works both ways); DestinationRules are kept for the services seen. Everything else is
//!   dropped from the snapshot: the route table, the balancer and `/clusters` only hold what
//!   the workload sees, and a request for a service it does not see is a request for a host
//!   outside the registry (`REGISTRY_ONLY`: `502 NR`; `ALLOW_ANY`: passed through to the
//!   address the host names, as Istio's passthrough cluster does).
//! - **`outboundTrafficPolicy`**: when the Sidecar sets it, its `mode` (omitted: the
//!   proto's zero value, `REGISTRY_ONLY`) replaces the bootstrap's
//!   `mesh.outboundTrafficPolicy` in the snapshot (`SidecarScope.OutboundTrafficPolicy`).
//!   With `ALLOW_ANY`, its `egressProxy` (host resolved in the Sidecar's namespace) becomes
//!   [`Snapshot::egress_proxy`]: the route table sends unknown hosts there, their authority
//!   kept, instead of passing them through; the proxy's service is always imported.
//! - A Sidecar without `egress` imports everything (Istio's default egress listener `*/*`).
//!
//! - **`egress[].port`**: a listener with a port imports its hosts' services on that port
//!   only (the service keeps that port, and is dropped when it has not got it), and a port
//!   some listener names is served by that listener's hosts only, not the catch-all's (Istio
//!   builds one outbound listener per port, the port-bound one first). A request for another
//!   port of such a service is a request for a host outside the registry. The destinations
//!   of the VirtualServices seen keep the port their route names (every port when it names
//!   none: the route's cluster, as Istio's).
//!
//! `ingress` is not applied here: `mesh-proxy` builds an inbound listener per entry of the
//! Sidecar [`select`] picks (its `ingress` module).
//!
//! ```
//! use mesh_core::scope::EgressHosts;
//!
//! let hosts = EgressHosts::parse(["./*", "istio-system/*"], "shop");
//! assert!(hosts.imports("cart.shop.svc.cluster.local", "shop"));
//! assert!(hosts.imports("istiod.istio-system.svc.cluster.local", "istio-system"));
//! assert!(!hosts.imports("ledger.bank.svc.cluster.local", "bank"));
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use crate::compile::{Named, Snapshot, resolve_host};
use crate::error::{FieldPath, ResourceRef, Severity};
use crate::load::Issue;
use crate::model::Kind;
use crate::model::bootstrap::ProxyBootstrap;
use crate::model::networking::{OutboundTrafficMode, Sidecar};

/// The parsed `egress[].hosts` of a Sidecar: Istio's `hostsByNamespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressHosts {
    /// Per namespace (`*` for any), the names imported and the names excluded.
    by_namespace: Vec<(Box<str>, NamespaceHosts)>,
}

/// Istio's `hostClassification`: the names of one namespace entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NamespaceHosts {
    imported: Vec<Box<str>>,
    excluded: Vec<Box<str>>,
}

/// What [`apply`] found: the Sidecar that applies (if any) and the warnings about the ones
/// that lost to it.
#[derive(Debug, Clone, Default)]
pub struct Scoped {
    /// The Sidecar applied, as `namespace/name`.
    pub sidecar: Option<ResourceRef>,
    /// Warnings (conflicting Sidecars).
    pub issues: Vec<Issue>,
}

const WILDCARD_NS: &str = "*";

// === impl EgressHosts ===

impl EgressHosts {
    /// Parses `namespace/dnsName` entries as Istio's `convertIstioListenerToWrapper`: `.` is
    /// `config_ns` (the workload's namespace), a `~` prefix on the namespace excludes (`~/…`:
    /// from any namespace). Entries without exactly one `/` are skipped (validation refuses
    /// them).
    pub fn parse<I, S>(hosts: I, config_ns: &str) -> EgressHosts
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = EgressHosts::default();
        for h in hosts {
            let h = h.as_ref();
            if h.matches('/').count() != 1 {
                continue;
            }
            let Some((ns, name)) = h.split_once('/') else {
                continue;
            };
            let (excluded, ns) = match ns.strip_prefix('~') {
                Some("") => (true, WILDCARD_NS),
                Some(rest) => (true, rest),
                None => (false, ns),
            };
            let ns = if ns == "." { config_ns } else { ns };
            let name: Box<str> = name.to_ascii_lowercase().into();
            let entry = match out.by_namespace.iter_mut().find(|(n, _)| &**n == ns) {
                Some((_, e)) => e,
                None => {
                    out.by_namespace
                        .push((ns.into(), NamespaceHosts::default()));
                    &mut out.by_namespace.last_mut().expect("just pushed").1
                }
            };
            if excluded {
                entry.excluded.push(name);
            } else {
                entry.imported.push(name);
            }
        }
        out
    }

    fn namespace(&self, ns: &str) -> Option<&NamespaceHosts> {
        self.by_namespace
            .iter()
            .find(|(n, _)| &**n == ns)
            .map(|(_, h)| h)
    }

    /// Whether a service `hostname` of namespace `ns` is imported (Istio's `selectServices`:
    /// not excluded by the namespace's or the wildcard's `~` entries, and matched by one of
    /// the namespace's entries or of the wildcard's).
    pub fn imports(&self, hostname: &str, ns: &str) -> bool {
        let own = self.namespace(ns);
        let any = self.namespace(WILDCARD_NS);
        if [own, any]
            .into_iter()
            .flatten()
            .any(|h| h.excluded.iter().any(|x| subset_of(hostname, x)))
        {
            return false;
        }
        [own, any]
            .into_iter()
            .flatten()
            .any(|h| h.imported.iter().any(|x| subset_of(hostname, x)))
    }

    /// Whether a VirtualService host of namespace `ns` is imported (Istio's
    /// `SelectVirtualServices` for `mesh` VirtualServices: `host.Name.Matches`, either way).
    pub fn imports_vs_host(&self, vs_host: &str, ns: &str) -> bool {
        let own = self.namespace(ns);
        let any = self.namespace(WILDCARD_NS);
        [own, any].into_iter().flatten().any(|h| {
            !h.excluded.iter().any(|x| subset_of(vs_host, x))
                && h.imported.iter().any(|x| names_match(vs_host, x))
        })
    }
}

/// Istio's `host.Name.SubsetOf`: every name `name` covers is covered by `pattern` (`*`,
/// `*.suffix` or an exact name; case-insensitive).
pub fn subset_of(name: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match (pattern.strip_prefix('*'), name.strip_prefix('*')) {
        (Some(p), Some(n)) => n.len() >= p.len() && ends_with_ignore_case(n, p),
        (Some(p), None) => name.len() > p.len() && ends_with_ignore_case(name, p),
        (None, Some(_)) => false,
        (None, None) => name.eq_ignore_ascii_case(pattern),
    }
}

/// Istio's `host.Name.Matches`: `a` and `b` have a name in common.
pub fn names_match(a: &str, b: &str) -> bool {
    subset_of(a, b) || subset_of(b, a)
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn sidecar_ref(s: &Named<Sidecar>) -> ResourceRef {
    ResourceRef {
        kind: Kind::Sidecar,
        namespace: s.namespace.clone(),
        name: s.name.clone(),
    }
}

/// The Sidecar that applies to the bootstrap's workload (see the [module docs](self)), and
/// warnings about the ones that conflict with it.
pub fn select<'a>(
    sidecars: &'a [Arc<Named<Sidecar>>],
    boot: &ProxyBootstrap,
) -> (Option<&'a Arc<Named<Sidecar>>>, Vec<Issue>) {
    let ns = boot.workload.namespace.as_str();
    let root = boot.mesh.root_namespace.as_str();
    let mut issues = Vec::new();
    let pick = |found: Vec<&'a Arc<Named<Sidecar>>>, issues: &mut Vec<Issue>, what: &str| {
        let first = *found.first()?;
        for other in &found[1..] {
            issues.push(Issue {
                severity: Severity::Warning,
                resource: sidecar_ref(other),
                field: FieldPath::parse("spec.workloadSelector"),
                message: format!(
                    "{what}: Sidecar {}/{} applies to workload {} (the first in source order), this one does not",
                    first.namespace, first.name, boot.workload.name
                ),
            });
        }
        Some(first)
    };
    let selecting: Vec<_> = sidecars
        .iter()
        .filter(|s| s.namespace == ns)
        .filter(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| sel.matches(&boot.workload.labels))
        })
        .collect();
    if let Some(s) = pick(
        selecting,
        &mut issues,
        "ConflictingSidecarWorkloadSelectors: several Sidecars select the workload",
    ) {
        return (Some(s), issues);
    }
    let in_namespace = |n: &str| -> Vec<_> {
        sidecars
            .iter()
            .filter(|s| s.namespace == n && s.spec.workload_selector.is_none())
            .collect()
    };
    if let Some(s) = pick(
        in_namespace(ns),
        &mut issues,
        "MultipleSidecarsWithoutWorkloadSelectors: several Sidecars without workloadSelector in the namespace",
    ) {
        return (Some(s), issues);
    }
    let s = pick(
        in_namespace(root),
        &mut issues,
        "MultipleSidecarsWithoutWorkloadSelectors: several Sidecars without workloadSelector in the root namespace",
    );
    (s, issues)
}

/// Applies the Sidecar of the bootstrap's workload to `snap`: drops the services,
/// VirtualServices and DestinationRules the workload does not see and sets the effective
/// `outboundTrafficPolicy`. Call [`Snapshot::reindex`] afterwards.
pub fn apply(snap: &mut Snapshot) -> Scoped {
    let (chosen, issues) = select(&snap.sidecars, &snap.bootstrap);
    let Some(sidecar) = chosen.cloned() else {
        return Scoped {
            sidecar: None,
            issues,
        };
    };
    let ns = snap.bootstrap.workload.namespace.clone();
    if let Some(otp) = &sidecar.spec.outbound_traffic_policy {
        let mode = otp.mode.unwrap_or(OutboundTrafficMode::RegistryOnly);
        snap.bootstrap.mesh.outbound_traffic_policy = mode;
        // egressProxy: validation allows it with ALLOW_ANY only
        if mode == OutboundTrafficMode::AllowAny
            && let Some(proxy) = &otp.egress_proxy
        {
            let mut d = proxy.clone();
            d.host = resolve_host(
                &d.host,
                &sidecar.namespace,
                &snap.bootstrap.mesh.cluster_domain,
            );
            snap.egress_proxy = Some(d);
        }
    }
    if !sidecar.spec.egress.is_empty() {
        let listeners: Vec<Listener> = sidecar
            .spec
            .egress
            .iter()
            .map(|e| Listener {
                hosts: EgressHosts::parse(&e.hosts, &ns),
                port: e.port.as_ref().map(|p| p.number),
            })
            .collect();
        restrict(snap, &listeners, &ns);
    }
    Scoped {
        sidecar: Some(sidecar_ref(&sidecar)),
        issues,
    }
}

/// One egress listener: its hosts, and its port (`None`: the catch-all listener).
struct Listener {
    hosts: EgressHosts,
    port: Option<u32>,
}

/// The ports of a service the workload may call.
#[derive(Default)]
struct Grant {
    /// Every port of the service.
    all: bool,
    /// Every port no port-bound listener claims (imported by the catch-all listener).
    unclaimed: bool,
    /// These ports (imported by port-bound listeners, or named by a route destination).
    ports: HashSet<u32>,
}

impl Grant {
    fn allows(&self, port: u32, claimed: &HashSet<u32>) -> bool {
        self.all || self.ports.contains(&port) || (self.unclaimed && !claimed.contains(&port))
    }
}

/// Keeps what the egress `listeners` import for a workload of namespace `ns`. A listener with
/// a port imports its services on that port only, and a port a listener names is served by
/// that listener's hosts only (Istio builds one outbound listener per port, the port-bound
/// listener's first); a service left with no port is dropped.
fn restrict(snap: &mut Snapshot, listeners: &[Listener], ns: &str) {
    let claimed: HashSet<u32> = listeners.iter().filter_map(|l| l.port).collect();
    let vs_imported_by = |vs: &crate::compile::VirtualServiceEntry, l: &Listener| {
        vs.hosts.is_empty()
            || vs
                .hosts
                .iter()
                .any(|h| l.hosts.imports_vs_host(h, &vs.namespace))
    };
    // VirtualServices: delegates (no hosts) stay, their roots decide; others by their hosts
    snap.virtual_services
        .retain(|vs| listeners.iter().any(|l| vs_imported_by(vs, l)));
    let mut grants: std::collections::HashMap<Arc<str>, Grant> = Default::default();
    // services imported by the hosts
    for s in snap.services.iter().filter(|s| s.export_to.visible_to(ns)) {
        for l in listeners {
            if l.hosts.imports(&s.hostname, &s.namespace) {
                let g = grants.entry(s.hostname.clone()).or_default();
                match l.port {
                    Some(p) => {
                        g.ports.insert(p);
                    }
                    None => g.unclaimed = true,
                }
            }
        }
    }
    // then the destinations of the VirtualServices seen, with the port they name (every
    // port when they name none: the route's cluster, as Istio's); the egress proxy is
    // reachable whatever the hosts say (Istio sends to it directly)
    let mut destinations: Vec<(&str, Option<u32>)> = Vec::new();
    fn named(d: &crate::model::networking::Destination) -> (&str, Option<u32>) {
        (&d.host, d.port.map(|p| p.number))
    }
    if let Some(d) = &snap.egress_proxy {
        destinations.push((&d.host, None));
    }
    for vs in &snap.virtual_services {
        let mut push = |d| destinations.push(named(d));
        for r in &vs.spec.http {
            r.route
                .iter()
                .filter_map(|r| r.destination.as_ref())
                .for_each(&mut push);
            if let Some(m) = &r.mirror {
                push(m);
            }
            r.mirrors
                .iter()
                .filter_map(|m| m.destination.as_ref())
                .for_each(&mut push);
        }
        for r in &vs.spec.tcp {
            r.route
                .iter()
                .filter_map(|r| r.destination.as_ref())
                .for_each(&mut push);
        }
        for r in &vs.spec.tls {
            r.route
                .iter()
                .filter_map(|r| r.destination.as_ref())
                .for_each(&mut push);
        }
    }
    for (host, port) in destinations {
        for s in snap
            .services
            .iter()
            .filter(|s| &*s.hostname == host && s.export_to.visible_to(ns))
        {
            let g = grants.entry(s.hostname.clone()).or_default();
            match port {
                Some(p) => {
                    g.ports.insert(p);
                }
                None => g.all = true,
            }
        }
    }
    // each service keeps the ports granted; none: dropped
    snap.services.retain_mut(|s| {
        let Some(g) = grants.get(&s.hostname) else {
            return false;
        };
        if g.all || s.ports.is_empty() {
            return true;
        }
        let mut svc = (**s).clone();
        svc.ports.retain(|p| g.allows(p.number, &claimed));
        if svc.ports.is_empty() {
            return false;
        }
        if svc.ports.len() != s.ports.len() {
            *s = Arc::new(svc);
        }
        true
    });
    let seen: HashSet<Arc<str>> = snap.services.iter().map(|s| s.hostname.clone()).collect();
    // DestinationRules of the services seen
    let wildcard_services: Vec<Arc<str>> = seen
        .iter()
        .filter(|h| h.starts_with('*'))
        .cloned()
        .collect();
    snap.destination_rules.retain(|d| {
        if d.host.starts_with('*') {
            seen.iter().any(|h| subset_of(h, &d.host))
        } else {
            seen.contains(&d.host)
                || wildcard_services.iter().any(|w| subset_of(&d.host, w))
                || seen.iter().any(|h| h.eq_ignore_ascii_case(&d.host))
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    // Istio's pilot/pkg/model/sidecar_test.go `TestContainsEgressDependencies` and
    // `TestCreateSidecarScope` cases, as host-form checks.
    #[test]
    fn istio_host_forms() {
        // "./*": the workload's namespace only
        let h = EgressHosts::parse(["./*"], "default");
        assert!(h.imports("foo.default.svc.cluster.local", "default"));
        assert!(!h.imports("foo.ns1.svc.cluster.local", "ns1"));
        // "*/*": everything
        let h = EgressHosts::parse(["*/*"], "default");
        assert!(h.imports("foo.ns1.svc.cluster.local", "ns1"));
        assert!(h.imports("*.example.com", "ns2"));
        // "ns1/*": that namespace
        let h = EgressHosts::parse(["ns1/*"], "default");
        assert!(h.imports("foo.ns1.svc.cluster.local", "ns1"));
        assert!(!h.imports("foo.default.svc.cluster.local", "default"));
        // "*/foo.com": that name in any namespace
        let h = EgressHosts::parse(["*/foo.com"], "default");
        assert!(h.imports("foo.com", "ns3"));
        assert!(!h.imports("bar.com", "ns3"));
        // "ns1/foo.com": that name in that namespace only
        let h = EgressHosts::parse(["ns1/foo.com"], "default");
        assert!(h.imports("foo.com", "ns1"));
        assert!(!h.imports("foo.com", "ns2"));
        // "~/*": nothing ("~" names no namespace; newer Istio: exclude everything)
        let h = EgressHosts::parse(["~/*"], "default");
        assert!(!h.imports("foo.default.svc.cluster.local", "default"));
        assert!(!h.imports("foo.com", "ns1"));
        // wildcards in the name: "*/*.foo.com" covers a.foo.com and *.b.foo.com, not foo.com
        let h = EgressHosts::parse(["*/*.foo.com"], "default");
        assert!(h.imports("a.foo.com", "x"));
        assert!(h.imports("*.b.foo.com", "x"));
        assert!(!h.imports("foo.com", "x"));
        // an exact import does not cover a wildcard service (SubsetOf, not Matches)
        let h = EgressHosts::parse(["*/a.foo.com"], "default");
        assert!(!h.imports("*.foo.com", "x"));
    }

    // sidecar.go `selectServices`: an explicit namespace entry and the wildcard's both apply
    // (UnifiedSidecarScoping); a `~` entry excludes from what the others import.
    #[test]
    fn explicit_namespace_wildcard_and_exclusions() {
        let h = EgressHosts::parse(["ns1/a.com", "*/b.com"], "default");
        assert!(h.imports("a.com", "ns1"));
        assert!(h.imports("b.com", "ns1"));
        assert!(!h.imports("a.com", "ns2"));
        let h = EgressHosts::parse(["*/*", "~ns1/secret.ns1.svc.cluster.local"], "default");
        assert!(!h.imports("secret.ns1.svc.cluster.local", "ns1"));
        assert!(h.imports("public.ns1.svc.cluster.local", "ns1"));
        assert!(h.imports("secret.ns1.svc.cluster.local", "ns2"));
        // malformed entries (no slash, two slashes) import nothing
        let h = EgressHosts::parse(["foo.com", "a/b/c"], "default");
        assert!(!h.imports("foo.com", "default"));
    }

    // SelectVirtualServices: `Matches` works both ways for mesh VirtualServices.
    #[test]
    fn virtual_service_hosts_match_both_ways() {
        let h = EgressHosts::parse(["*/a.foo.com"], "default");
        assert!(h.imports_vs_host("*.foo.com", "x"));
        assert!(h.imports_vs_host("a.foo.com", "x"));
        assert!(!h.imports_vs_host("b.foo.com", "x"));
        let h = EgressHosts::parse(["./*"], "default");
        assert!(!h.imports_vs_host("a.foo.com", "other"));
    }

    #[test]
    fn subset_of_is_istio_host_name_subset_of() {
        assert!(subset_of("a.foo.com", "*.foo.com"));
        assert!(subset_of("*.a.foo.com", "*.foo.com"));
        assert!(subset_of("*.foo.com", "*.foo.com"));
        assert!(!subset_of("foo.com", "*.foo.com"));
        assert!(!subset_of("*.foo.com", "a.foo.com"));
        assert!(subset_of("A.foo.com", "a.FOO.com"));
        assert!(subset_of("anything", "*"));
    }

    fn load(extra: &str) -> crate::config::Compiled {
        let text = format!(
            "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: p}}
spec:
  workload: {{name: web, namespace: shop, labels: {{app: web}}}}
  mesh: {{outboundTrafficPolicy: ALLOW_ANY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cart, namespace: shop}}
spec:
  hosts: [cart.shop.svc.cluster.local]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ledger, namespace: bank}}
spec:
  hosts: [ledger.bank.svc.cluster.local]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ledger, namespace: bank}}
spec:
  host: ledger
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cart, namespace: shop}}
spec:
  hosts: [cart]
  http:
  - route: [{{destination: {{host: ledger.bank.svc.cluster.local}}}}]
{extra}"
        );
        crate::config::load_str("scope.yaml", &text).expect("valid")
    }

    fn sidecar(ns: &str, name: &str, selector: &str, hosts: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  egress:\n  - hosts: [{hosts}]\n"
        )
    }

    // pilot/pkg/model/push_context.go getSidecarScope: the workload's own Sidecar, then the
    // namespace's default, then the root namespace's; conflicts warn (Istio's analyzers).
    #[test]
    fn selection_precedence_and_conflicts() {
        let root = sidecar("istio-system", "root", "", "\"~/*\"");
        let ns = sidecar("shop", "ns", "", "\"./*\"");
        let ns2 = sidecar("shop", "ns2", "", "\"*/*\"");
        let mine = sidecar(
            "shop",
            "mine",
            "  workloadSelector: {labels: {app: web}}\n",
            "\"bank/*\"",
        );
        let theirs = sidecar(
            "shop",
            "theirs",
            "  workloadSelector: {labels: {app: other}}\n",
            "\"~/*\"",
        );
        let names = |c: &crate::config::Compiled| -> Vec<String> {
            c.snapshot
                .services
                .iter()
                .map(|s| s.hostname.to_string())
                .collect()
        };
        let c = load(&format!("{root}{ns}{mine}{theirs}"));
        assert_eq!(names(&c), ["ledger.bank.svc.cluster.local"]);
        let c = load(&format!("{root}{ns}{theirs}"));
        // ./* imports cart; the VirtualService on cart imports its destination, ledger
        assert_eq!(
            names(&c),
            [
                "cart.shop.svc.cluster.local",
                "ledger.bank.svc.cluster.local"
            ]
        );
        let c = load(&format!("{root}{theirs}"));
        assert!(names(&c).is_empty());
        assert!(c.snapshot.virtual_services.is_empty());
        assert!(c.snapshot.destination_rules.is_empty());
        // two selector-less Sidecars in the namespace: the first applies, the second warns
        let c = load(&format!("{ns}{ns2}"));
        assert_eq!(names(&c).len(), 2);
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.iter()
                .any(|w| w.contains("Sidecar/shop/ns2") && w.contains("MultipleSidecars")),
            "{w:?}"
        );
    }

    // SidecarScope.OutboundTrafficPolicy: the Sidecar's replaces the mesh's; an empty one is
    // the proto's zero value, REGISTRY_ONLY; without one, the mesh's stays.
    #[test]
    fn outbound_traffic_policy_overrides_the_mesh() {
        let mode = |spec: &str| {
            let doc = format!(
                "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s, namespace: shop}}\nspec:\n{spec}"
            );
            load(&doc).snapshot.bootstrap.mesh.outbound_traffic_policy
        };
        assert_eq!(
            mode("  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"),
            OutboundTrafficMode::RegistryOnly
        );
        assert_eq!(
            mode("  outboundTrafficPolicy: {}\n"),
            OutboundTrafficMode::RegistryOnly
        );
        assert_eq!(
            mode("  egress: [{hosts: [\"*/*\"]}]\n"),
            OutboundTrafficMode::AllowAny
        );
    }

    // A Sidecar egress listener with a port imports its hosts on that port only, and that
    // port is served by its hosts only (Istio's per-port outbound listeners).
    #[test]
    fn egress_port_restricts_hosts_to_that_port() {
        let extra = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi, namespace: shop}
spec:
  hosts: [multi.shop.svc.cluster.local]
  ports: [{number: 80, name: http}, {number: 9080, name: http-alt}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.3}]
";
        let ports = |c: &crate::config::Compiled| -> Vec<(String, Vec<u32>)> {
            c.snapshot
                .services
                .iter()
                .map(|s| {
                    (
                        s.hostname.split('.').next().unwrap_or_default().to_string(),
                        s.ports.iter().map(|p| p.number).collect(),
                    )
                })
                .collect()
        };
        let doc = |egress: &str| {
            format!(
                "{extra}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s, namespace: shop}}\nspec:\n  egress:\n{egress}"
            )
        };
        // port 9080 only: multi keeps 9080; cart (port 80 only) is not imported; the
        // VirtualService on cart is (Istio selects VirtualServices by host), so its
        // destination ledger is too
        let c = load(&doc(
            "  - port: {number: 9080, name: alt}\n    hosts: [\"./*\"]\n",
        ));
        assert_eq!(
            ports(&c),
            [
                ("ledger".to_string(), vec![80]),
                ("multi".to_string(), vec![9080])
            ]
        );
        // port 80 only: cart and multi on 80, the VirtualService's destination ledger (no
        // port named) whole
        let c = load(&doc(
            "  - port: {number: 80, name: http}\n    hosts: [\"./*\"]\n",
        ));
        assert_eq!(
            ports(&c),
            [
                ("cart".to_string(), vec![80]),
                ("ledger".to_string(), vec![80]),
                ("multi".to_string(), vec![80])
            ]
        );
        // 9080 claimed by a listener for bank only: the catch-all's ./* gives shop's
        // services every other port
        let c = load(&doc(
            "  - port: {number: 9080, name: alt}\n    hosts: [\"bank/*\"]\n  - hosts: [\"./*\"]\n",
        ));
        let p = ports(&c);
        assert!(p.contains(&("multi".to_string(), vec![80])), "{p:?}");
        assert!(p.contains(&("cart".to_string(), vec![80])), "{p:?}");
        // without a port: every port
        let c = load(&doc("  - hosts: [\"./*\"]\n"));
        assert!(ports(&c).contains(&("multi".to_string(), vec![80, 9080])));
    }
}

//! The compile step: validated resources → one immutable, cheaply shareable [`Snapshot`].
//!
//! Compiling resolves short hosts against namespaces as Istio does (`reviews` in namespace
//! `default` is `reviews.default.svc.cluster.local`; names with a dot are already fully
//! qualified), qualifies gateway names (`my-gw` → `<ns>/my-gw`), builds the service registry
//! from ServiceEntry and WorkloadEntry documents, and answers the questions the layers ask:
//! which service is this host, which DestinationRule applies, and what is the effective
//! traffic policy of a subset on a port (Istio's `MergeTrafficPolicy`).
//!
//! A snapshot is shared as `Arc<Snapshot>` and swapped whole on reload (`arc-swap`); nothing
//! in it changes after it is built.
//!
//! ```
//! use mesh_core::compile::compile;
//! use mesh_core::load::Loader;
//!
//! let mut l = Loader::new();
//! l.add_str("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   hosts: [reviews.default.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   resolution: STATIC
//!   ports: [{number: 9080, name: http, protocol: HTTP}]
//!   endpoints:
//!   - {address: 10.0.0.1, labels: {version: v1}}
//!   - {address: 10.0.0.2, labels: {version: v2}}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   host: reviews
//!   subsets:
//!   - {name: v1, labels: {version: v1}}
//! "#);
//! let snap = compile(l.finish().resources);
//! let svc = snap.service("reviews.default.svc.cluster.local", "default").unwrap();
//! assert_eq!(svc.endpoints.len(), 2);
//! let subset = snap.subset("reviews.default.svc.cluster.local", "v1", "default").unwrap();
//! assert_eq!(svc.subset_endpoints(&subset.labels).count(), 1);
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::ResourceRef;
use crate::locality::Locality;
use crate::model::bootstrap::ProxyBootstrap;
use crate::model::networking::{
    Destination, DestinationRule, Gateway, IstioIngressListener, Location, PortTrafficPolicy,
    Resolution, ServiceEntry, ServicePort, Sidecar, Subset, TrafficPolicy, VirtualService,
    WorkloadEntry,
};
use crate::model::ratelimit::LocalRateLimit;
use crate::model::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::model::telemetry::Telemetry;
use crate::model::{Kind, Resource, Spec};
use crate::pattern::Precompiled;
use crate::selector::{Labels, labels_match};

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The label Istio puts on endpoints that have a sidecar (`istio`) and so accept mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// A resource's name and namespace with its (resolved) spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named<T> {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The spec (hosts resolved where the kind has them).
    pub spec: T,
}

/// A compiled VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualServiceEntry {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Hosts, resolved to FQDNs (wildcards kept). Empty for delegate VirtualServices.
    pub hosts: Vec<Arc<str>>,
    /// Gateways, qualified (`<ns>/<name>`) or `mesh`. Default: `[mesh]`.
    pub gateways: Vec<String>,
    /// The spec, with every destination host resolved to an FQDN, match-level gateways
    /// qualified and delegate namespaces filled in.
    pub spec: VirtualService,
    /// Namespaces it is exported to.
    pub export_to: ExportTo,
}

/// A compiled DestinationRule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationRuleEntry {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Host, resolved to an FQDN (wildcards kept).
    pub host: Arc<str>,
    /// The spec as written.
    pub spec: DestinationRule,
    /// Namespaces it is exported to.
    pub export_to: ExportTo,
}

/// Visibility of a resource across namespaces (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ExportTo {
    /// Every namespace (`*`, or omitted).
    All,
    /// Only the listed namespaces (`.` is resolved to the resource's own).
    Namespaces(Vec<String>),
}

/// A service in the registry, from a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The host (FQDN, or a wildcard such as `*.example.com`).
    pub hostname: Arc<str>,
    /// Namespace of the ServiceEntry.
    pub namespace: String,
    /// The ServiceEntry it came from.
    pub source: ResourceRef,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh.
    pub location: Location,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Virtual addresses.
    pub addresses: Vec<String>,
    /// Endpoints (inline and selected WorkloadEntries). For DNS resolution, addresses are
    /// hostnames to resolve; with no endpoints, the host itself is resolved.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Namespaces it is exported to.
    pub export_to: ExportTo,
    /// Identities accepted for the service's endpoints.
    pub subject_alt_names: Vec<String>,
    /// The ServiceEntry's `workloadSelector` labels: the workloads (in its namespace) it
    /// selects as its endpoints, the proxy's own workload among them maybe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<Labels>,
}

/// An endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// IP address, or hostname (DNS resolution).
    pub address: String,
    /// Service port name → endpoint port.
    pub ports: std::collections::BTreeMap<String, u32>,
    /// Labels.
    pub labels: Labels,
    /// Locality.
    pub locality: Locality,
    /// Load-balancing weight (default 1).
    pub weight: u32,
    /// Service account (SPIFFE identity's `sa`).
    pub service_account: Option<String>,
    /// Network.
    pub network: Option<String>,
    /// The WorkloadEntry it came from, if not inline.
    pub workload_entry: Option<ResourceRef>,
}

// === impl Endpoint ===

impl Endpoint {
    /// An endpoint at `address` (an IP, or a hostname for DNS resolution) with weight 1 and
    /// nothing else known: no port overrides, labels, locality, service account or network, not
    /// from a WorkloadEntry. Set the rest through the public fields.
    ///
    /// ```
    /// use mesh_core::compile::Endpoint;
    ///
    /// let ep = Endpoint::new("10.0.0.7");
    /// assert_eq!((ep.address.as_str(), ep.weight), ("10.0.0.7", 1));
    /// ```
    pub fn new(address: impl Into<String>) -> Self {
        Endpoint {
            address: address.into(),
            ports: Default::default(),
            labels: Labels::default(),
            locality: Locality::default(),
            weight: 1,
            service_account: None,
            network: None,
            workload_entry: None,
        }
    }
}

/// Application protocol of a service port (Istio's protocol selection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// HTTP/1.1 (and upgrade).
    Http,
    /// HTTP/2 (cleartext towards the upstream unless TLS applies).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// TLS (opaque, routed by SNI).
    Https,
    /// TLS (opaque, routed by SNI).
    Tls,
    /// Opaque TCP.
    Tcp,
    /// Other protocols Istio names (Mongo, Redis, MySQL...), treated as TCP.
    Other,
}

/// The compiled configuration: immutable, shared as `Arc<Snapshot>`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Increases with every compile in this process.
    pub generation: u64,
    /// The ProxyBootstrap (defaults when absent).
    pub bootstrap: ProxyBootstrap,
    /// Services, in source order.
    pub services: Vec<Arc<Service>>,
    /// VirtualServices, in source order (delegates included).
    pub virtual_services: Vec<Arc<VirtualServiceEntry>>,
    /// DestinationRules, in source order.
    pub destination_rules: Vec<Arc<DestinationRuleEntry>>,
    /// Gateways.
    pub gateways: Vec<Arc<Named<Gateway>>>,
    /// Sidecars.
    pub sidecars: Vec<Arc<Named<Sidecar>>>,
    /// WorkloadEntries.
    pub workload_entries: Vec<Arc<Named<WorkloadEntry>>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Arc<Named<PeerAuthentication>>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Arc<Named<AuthorizationPolicy>>>,
    /// RequestAuthentications.
    pub request_authentications: Vec<Arc<Named<RequestAuthentication>>>,
    /// LocalRateLimits, in source order, hosts resolved (all of them: which apply to this
    /// workload is [`crate::ratelimit::applies`]'s to say).
    pub local_rate_limits: Vec<Arc<Named<LocalRateLimit>>>,
    /// Telemetries, in source order (all of them: what applies to this workload is
    /// [`crate::telemetry::resolve`]'s to say).
    pub telemetries: Vec<Arc<Named<Telemetry>>>,
    /// Where unknown hosts go under `ALLOW_ANY`: the workload's Sidecar's
    /// `outboundTrafficPolicy.egressProxy`, host resolved ([`crate::scope`]). None: they pass
    /// through to the address they name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
    /// The regexes and header formats validation compiled, for the route table
    /// ([`crate::pattern`]); empty for a snapshot compiled without validation.
    #[serde(skip)]
    pub precompiled: Arc<Precompiled>,
    #[serde(skip)]
    service_index: HashMap<Arc<str>, Vec<usize>>,
    /// The services whose hostname is a wildcard (`*.example.com`), in source order: the
    /// only ones a host missing from `service_index` can match.
    #[serde(skip)]
    wildcard_services: Vec<usize>,
    /// The DestinationRules of each exact host (lower-cased), in source order.
    #[serde(skip)]
    dr_index: HashMap<Arc<str>, Vec<usize>>,
    /// The DestinationRules whose host is a wildcard, in source order.
    #[serde(skip)]
    wildcard_drs: Vec<usize>,
    /// The services that select the proxy's own workload, whatever its Sidecar's `egress`
    /// imports (Istio's service targets of the proxy: the inbound side's services are the
    /// workload's, not what it may call); see [`Snapshot::workload_services`]. Found once,
    /// when the configuration is compiled: [`Snapshot::reindex`] does not recompute them
    /// (the scoping and the run-time endpoint updates change no service's selector).
    #[serde(skip)]
    own_services: Vec<Arc<Service>>,
}

// === impl ExportTo ===

impl ExportTo {
    fn from_list(list: &[String], own_ns: &str) -> Self {
        if list.is_empty() || list.iter().any(|n| n == "*") {
            return ExportTo::All;
        }
        ExportTo::Namespaces(
            list.iter()
                .filter(|n| n.as_str() != "~")
                .map(|n| {
                    if n == "." {
                        own_ns.to_string()
                    } else {
                        n.clone()
                    }
                })
                .collect(),
        )
    }

    /// Whether a client in `ns` may see the resource.
    pub fn visible_to(&self, ns: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(list) => list.iter().any(|n| n == ns),
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// Istio's protocol from a port's `protocol` (case-insensitive), falling back to the
    /// port name's prefix (`http-web`, `grpc`), then TCP.
    pub fn of(port: &ServicePort) -> Self {
        let p = port.protocol.as_deref().unwrap_or("");
        if !p.is_empty() {
            return Protocol::parse(p);
        }
        let name = port.name.split('-').next().unwrap_or("");
        Protocol::parse(name)
    }

    /// The protocol a port declares (its `protocol`, else its name's prefix), as
    /// [`of`](Self::of) reads it; `None` when neither names one Istio knows (Istio's
    /// `Unsupported`: the protocol is detected from the traffic).
    pub fn declared(port: &ServicePort) -> Option<Self> {
        match port.protocol.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Protocol::known(p),
            None => Protocol::known(port.name.split('-').next().unwrap_or("")),
        }
    }

    /// `p` parsed, if Istio knows it (`None`: `Unsupported`).
    pub fn known(p: &str) -> Option<Self> {
        use crate::validate::common::Protocol as Istio;
        (Istio::parse(p) != Istio::Unsupported).then(|| Protocol::parse(p))
    }

    /// Parses a protocol name (case-insensitive); unknown names are TCP.
    pub fn parse(p: &str) -> Self {
        // one table of Istio's protocol names: validation's `protocol.Parse`
        use crate::validate::common::Protocol as Istio;
        if p.is_empty() {
            return Protocol::Tcp;
        }
        match Istio::parse(p) {
            Istio::Http | Istio::HttpProxy => Protocol::Http,
            Istio::Http2 => Protocol::Http2,
            Istio::Grpc | Istio::GrpcWeb => Protocol::Grpc,
            Istio::Https => Protocol::Https,
            Istio::Tls => Protocol::Tls,
            Istio::Tcp => Protocol::Tcp,
            _ => Protocol::Other,
        }
    }

    /// Whether traffic on the port is HTTP (routed by `http` rules).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

// === impl Service ===

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == u32::from(number))
    }

    /// The port a request without an explicit port means: the only port, else port 80.
    pub fn default_port(&self) -> Option<&ServicePort> {
        match self.ports.as_slice() {
            [only] => Some(only),
            ports => ports.iter().find(|p| p.number == 80),
        }
    }

    /// The port on `ep` for service port `port`: the endpoint's `ports[name]`, else the
    /// port's `targetPort`, else its number.
    pub fn endpoint_port(&self, ep: &Endpoint, port: &ServicePort) -> u16 {
        let p = ep
            .ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number);
        u16::try_from(p).unwrap_or(0)
    }

    /// Endpoints whose labels contain all of `labels` (a subset's selector).
    pub fn subset_endpoints<'a>(
        &'a self,
        labels: &'a Labels,
    ) -> impl Iterator<Item = &'a Arc<Endpoint>> + 'a {
        self.endpoints
            .iter()
            .filter(move |e| labels_match(labels, &e.labels))
    }

    /// Whether `host` (an FQDN) is this service's host (exactly, or under its wildcard).
    pub fn matches_host(&self, host: &str) -> bool {
        host_matches(&self.hostname, host)
    }
}

/// Whether `pattern` (an FQDN or `*.suffix` / `*`) matches `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Istio's `ResolveShortnameToFQDN`: a host without a dot is short and gets
/// `.<namespace>.svc.<domain>`; `*`, IP addresses and names with a dot are kept.
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() {
        return host.to_string();
    }
    if host.contains(':') {
        return host.to_string(); // an IPv6 literal that did not parse: leave it to validation
    }
    format!("{host}.{namespace}.svc.{cluster_domain}")
}

/// Qualifies a gateway reference: `mesh` stays, `ns/name` stays, `name` → `<ns>/name`
/// (Istio also accepts `name.ns.svc.domain`-style; the first label is the name).
pub fn qualify_gateway(gw: &str, namespace: &str) -> String {
    if gw == "mesh" || gw.contains('/') {
        return gw.to_string();
    }
    match gw.split_once('.') {
        Some((name, rest)) => {
            let ns = rest.split('.').next().unwrap_or(namespace);
            format!("{ns}/{name}")
        }
        None => format!("{namespace}/{gw}"),
    }
}

fn named<T>(name: String, namespace: String, spec: T) -> Arc<Named<T>> {
    Arc::new(Named {
        name,
        namespace,
        spec,
    })
}

/// Compiles resources (already validated) into a snapshot.
pub fn compile(resources: Vec<Resource>) -> Snapshot {
    compile_with(resources, Precompiled::default())
}

/// [`compile`], keeping what validation compiled ([`crate::validate::validate_precompiled`])
/// for the route table.
pub fn compile_with(resources: Vec<Resource>, precompiled: Precompiled) -> Snapshot {
    let bootstrap = resources
        .iter()
        .find_map(|r| match &r.spec {
            Spec::ProxyBootstrap(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let domain = bootstrap.mesh.cluster_domain.clone();
    let mut snap = Snapshot {
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        bootstrap,
        precompiled: Arc::new(precompiled),
        ..Snapshot::default()
    };

    let mut workload_entries: Vec<(String, WorkloadEntry, ResourceRef, Labels)> = Vec::new();
    for r in &resources {
        if let Spec::WorkloadEntry(we) = &r.spec {
            workload_entries.push((
                r.namespace().to_string(),
                we.clone(),
                r.reference(),
                we.labels.clone(),
            ));
        }
    }

    for r in resources {
        let ns = r.namespace().to_string();
        let name = r.name().to_string();
        let rref = r.reference();
        // Istio never enforces a dry-run AuthorizationPolicy (it only logs its decisions);
        // the support table warns about it
        let dry_run = r
            .metadata
            .annotations
            .get(crate::validate::common::DRY_RUN_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match r.spec {
            Spec::VirtualService(vs) => snap
                .virtual_services
                .push(Arc::new(compile_vs(name, ns, vs, &domain))),
            Spec::DestinationRule(dr) => {
                let host: Arc<str> = resolve_host(&dr.host, &ns, &domain).into();
                let export_to = ExportTo::from_list(&dr.export_to, &ns);
                snap.destination_rules.push(Arc::new(DestinationRuleEntry {
                    name,
                    namespace: ns,
                    host,
                    spec: dr,
                    export_to,
                }));
            }
            Spec::ServiceEntry(se) => {
                for svc in compile_se(&ns, rref, &se, &workload_entries, &domain) {
                    snap.services.push(Arc::new(svc));
                }
            }
            Spec::WorkloadEntry(we) => {
                snap.workload_entries.push(named(name, ns, we));
            }
            Spec::Gateway(g) => snap.gateways.push(named(name, ns, g)),
            Spec::Sidecar(s) => snap.sidecars.push(named(name, ns, s)),
            Spec::PeerAuthentication(p) => snap.peer_authentications.push(named(name, ns, p)),
            Spec::AuthorizationPolicy(p) => {
                if !dry_run {
                    snap.authorization_policies.push(named(name, ns, p));
                }
            }
            Spec::RequestAuthentication(p) => snap.request_authentications.push(named(name, ns, p)),
            Spec::ProxyBootstrap(_) => {}
            Spec::LocalRateLimit(mut rl) => {
                for h in &mut rl.hosts {
                    *h = resolve_host(h, &ns, &domain);
                }
                snap.local_rate_limits.push(named(name, ns, rl));
            }
            Spec::Telemetry(t) => snap.telemetries.push(named(name, ns, t)),
        }
    }
    snap.reindex();
    snap.own_services = snap.selecting_services();
    snap
}

fn compile_vs(
    name: String,
    ns: String,
    mut vs: VirtualService,
    domain: &str,
) -> VirtualServiceEntry {
    let hosts: Vec<Arc<str>> = vs
        .hosts
        .iter()
        .map(|h| resolve_host(h, &ns, domain).into())
        .collect();
    let gateways: Vec<String> = if vs.gateways.is_empty() {
        vec!["mesh".to_string()]
    } else {
        vs.gateways
            .iter()
            .map(|g| qualify_gateway(g, &ns))
            .collect()
    };
    let fix = |d: &mut Destination| d.host = resolve_host(&d.host, &ns, domain);
    for route in &mut vs.http {
        for d in route
            .route
            .iter_mut()
            .filter_map(|r| r.destination.as_mut())
        {
            fix(d);
        }
        if let Some(m) = route.mirror.as_mut() {
            fix(m);
        }
        for d in route
            .mirrors
            .iter_mut()
            .filter_map(|m| m.destination.as_mut())
        {
            fix(d);
        }
        for m in &mut route.matches {
            m.gateways = m.gateways.iter().map(|g| qualify_gateway(g, &ns)).collect();
        }
        if let Some(del) = route.delegate.as_mut()
            && del.namespace.as_deref().is_none_or(str::is_empty)
        {
            del.namespace = Some(ns.clone());
        }
    }
    for route in &mut vs.tcp {
        for d in route
            .route
            .iter_mut()
            .filter_map(|r| r.destination.as_mut())
        {
            fix(d);
        }
        for m in &mut route.matches {
            m.gateways = m.gateways.iter().map(|g| qualify_gateway(g, &ns)).collect();
        }
    }
    for route in &mut vs.tls {
        for d in route
            .route
            .iter_mut()
            .filter_map(|r| r.destination.as_mut())
        {
            fix(d);
        }
        for m in &mut route.matches {
            m.gateways = m.gateways.iter().map(|g| qualify_gateway(g, &ns)).collect();
        }
    }
    let export_to = ExportTo::from_list(&vs.export_to, &ns);
    VirtualServiceEntry {
        name,
        namespace: ns,
        hosts,
        gateways,
        spec: vs,
        export_to,
    }
}

fn endpoint_from(we: &WorkloadEntry, source: Option<ResourceRef>) -> Endpoint {
    Endpoint {
        address: we.address.clone(),
        ports: we.ports.clone(),
        labels: we.labels.clone(),
        locality: we
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default(),
        weight: we.weight.filter(|w| *w > 0).unwrap_or(1),
        service_account: we.service_account.clone(),
        network: we.network.clone(),
        workload_entry: source,
    }
}

fn compile_se(
    ns: &str,
    source: ResourceRef,
    se: &ServiceEntry,
    workload_entries: &[(String, WorkloadEntry, ResourceRef, Labels)],
    domain: &str,
) -> Vec<Service> {
    let mut endpoints: Vec<Arc<Endpoint>> = se
        .endpoints
        .iter()
        .map(|e| Arc::new(endpoint_from(e, None)))
        .collect();
    if let Some(sel) = &se.workload_selector {
        for (we_ns, we, rref, labels) in workload_entries {
            if we_ns == ns && labels_match(&sel.labels, labels) {
                endpoints.push(Arc::new(endpoint_from(we, Some(rref.clone()))));
            }
        }
    }
    let export_to = ExportTo::from_list(&se.export_to, ns);
    se.hosts
        .iter()
        .map(|h| Service {
            hostname: resolve_host(h, ns, domain).into(),
            namespace: ns.to_string(),
            source: source.clone(),
            ports: se.ports.clone(),
            location: se.location.unwrap_or_default(),
            resolution: se.resolution.unwrap_or_default(),
            addresses: se.addresses.clone(),
            endpoints: endpoints.clone(),
            export_to: export_to.clone(),
            subject_alt_names: se.subject_alt_names.clone(),
            workload_selector: se.workload_selector.as_ref().map(|s| s.labels.clone()),
        })
        .collect()
}

// === impl Snapshot ===

impl Snapshot {
    /// An empty snapshot with a default bootstrap.
    pub fn empty() -> Self {
        Snapshot {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            ..Snapshot::default()
        }
    }

    /// Builds the look-up indexes (services by host, DestinationRules by host): every
    /// look-up of a host is then proportional to the entries of that host, not to the size
    /// of the mesh (start-up at 10,000 services was quadratic in it; issue 15).
    ///
    /// [`compile`] builds them; call it again after changing `services` or
    /// `destination_rules` (as [`crate::scope::apply`] does).
    pub fn reindex(&mut self) {
        self.service_index.clear();
        self.wildcard_services.clear();
        self.dr_index.clear();
        self.wildcard_drs.clear();
        for (i, s) in self.services.iter().enumerate() {
            self.service_index
                .entry(s.hostname.clone())
                .or_default()
                .push(i);
            if s.hostname.starts_with('*') {
                self.wildcard_services.push(i);
            }
        }
        for (i, d) in self.destination_rules.iter().enumerate() {
            if d.host.starts_with('*') {
                self.wildcard_drs.push(i);
            } else {
                let key: Arc<str> = if d.host.bytes().any(|b| b.is_ascii_uppercase()) {
                    d.host.to_ascii_lowercase().into()
                } else {
                    d.host.clone()
                };
                self.dr_index.entry(key).or_default().push(i);
            }
        }
    }

    /// The indexes of the DestinationRules whose host covers `host` (Istio's
    /// `host.Name.Matches`, [`host_matches`]), in source order.
    fn drs_matching<'a>(&'a self, host: &'a str) -> impl Iterator<Item = usize> + 'a {
        let exact: &[usize] = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.dr_index
                .get(host.to_ascii_lowercase().as_str())
                .map_or(&[], Vec::as_slice)
        } else {
            self.dr_index.get(host).map_or(&[], Vec::as_slice)
        };
        let wild = self
            .wildcard_drs
            .iter()
            .copied()
            .filter(move |&i| host_matches(&self.destination_rules[i].host, host));
        merge_sorted(exact.iter().copied(), wild)
    }

    /// The service for an FQDN host as seen from namespace `from_ns`: an exact host first
    /// (the client's namespace's own entry preferred), then the most specific wildcard.
    pub fn service(&self, host: &str, from_ns: &str) -> Option<&Arc<Service>> {
        if let Some(idxs) = self.service_index.get(host) {
            let visible = idxs
                .iter()
                .map(|&i| &self.services[i])
                .filter(|s| s.export_to.visible_to(from_ns));
            let mut first = None;
            for s in visible {
                if s.namespace == from_ns {
                    return Some(s);
                }
                first.get_or_insert(s);
            }
            if first.is_some() {
                return first;
            }
        }
        self.wildcard_services
            .iter()
            .map(|&i| &self.services[i])
            .filter(|s| s.matches_host(host) && s.export_to.visible_to(from_ns))
            .max_by_key(|s| s.hostname.len())
    }

    /// The DestinationRule for `host` as Istio picks it for a client in `from_ns`: among
    /// visible rules whose host matches (exactly or by wildcard), the client's namespace
    /// first, then the service's namespace, then the root namespace, then any; within a
    /// tier the most specific host wins.
    pub fn destination_rule(
        &self,
        host: &str,
        from_ns: &str,
    ) -> Option<&Arc<DestinationRuleEntry>> {
        self.pick_destination_rule(host, from_ns, true)
    }

    /// [`destination_rule`](Self::destination_rule) with `selected`: whether rules with a
    /// `workloadSelector` are candidates (when it selects the workload). Istio honours a
    /// selector only for outbound configuration (`SidecarScope.DestinationRule`): an inbound
    /// cluster takes the catch-all rule of its service.
    fn pick_destination_rule(
        &self,
        host: &str,
        from_ns: &str,
        selected: bool,
    ) -> Option<&Arc<DestinationRuleEntry>> {
        let service_ns = self.service(host, from_ns).map(|s| s.namespace.as_str());
        let root = self.bootstrap.mesh.root_namespace.as_str();
        let candidates = || {
            self.drs_matching(host)
                .map(|i| &self.destination_rules[i])
                .filter(|d| d.namespace == from_ns || d.export_to.visible_to(from_ns))
                .filter(|d| match &d.spec.workload_selector {
                    // a selector applies only to the workloads of the rule's namespace
                    Some(sel) => {
                        selected
                            && d.namespace == from_ns
                            && sel.matches(&self.bootstrap.workload.labels)
                    }
                    None => true,
                })
        };
        let most_specific = |ns: Option<&str>| {
            candidates()
                .filter(|d| ns.is_none_or(|n| d.namespace == n))
                .max_by_key(|d| {
                    (
                        !d.host.starts_with('*'),
                        d.host.len(),
                        d.spec.workload_selector.is_some(),
                    )
                })
        };
        most_specific(Some(from_ns))
            .or_else(|| service_ns.and_then(|n| most_specific(Some(n))))
            .or_else(|| most_specific(Some(root)))
            .or_else(|| most_specific(None))
    }

    /// The services that select the proxy's own workload (`ProxyBootstrap.workload`): the
    /// mesh-internal services of its namespace whose `workloadSelector` matches its labels,
    /// and, with `port`, that have a port sending to it ([`ServicePort::sends_to`]), as
    /// Istio lists an inbound cluster's services. Sorted by hostname, one entry per host.
    ///
    /// They are found when the configuration is compiled, before the workload's Sidecar
    /// narrows what it sees ([`crate::scope::apply`]): a Sidecar whose `egress` leaves out
    /// the workload's own service still serves it inbound.
    pub fn workload_services(&self, port: Option<u32>) -> Vec<&Arc<Service>> {
        self.own_services
            .iter()
            .filter(|s| port.is_none_or(|port| s.ports.iter().any(|p| p.sends_to(port))))
            .collect()
    }

    /// The services of `services` that select the workload, sorted by hostname, one per
    /// host.
    fn selecting_services(&self) -> Vec<Arc<Service>> {
        let w = &self.bootstrap.workload;
        let mut services: Vec<Arc<Service>> = self
            .services
            .iter()
            .filter(|s| {
                s.namespace == w.namespace
                    && s.location == Location::MeshInternal
                    && s.workload_selector
                        .as_ref()
                        .is_some_and(|sel| labels_match(sel, &w.labels))
            })
            .cloned()
            .collect();
        services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        services.dedup_by(|a, b| a.hostname == b.hostname);
        services
    }

    /// The service of the inbound cluster of workload port `port` (Istio's
    /// `inboundServices[0]`: the first of [`workload_services`](Self::workload_services)
    /// on the port) and its port that sends to `port`.
    fn workload_service_port(&self, port: u16) -> Option<(&Arc<Service>, &ServicePort)> {
        // `own_services` is sorted and one per host: its first with such a port is the
        // first of `workload_services`
        self.own_services.iter().find_map(|s| {
            let sp = s.ports.iter().find(|p| p.sends_to(u32::from(port)))?;
            Some((s, sp))
        })
    }

    /// The `ingress` entry for `port` (its `port.number`) of the workload's Sidecar.
    fn sidecar_ingress(&self, port: u16) -> Option<&IstioIngressListener> {
        let (sidecar, _) = crate::scope::select(&self.sidecars, &self.bootstrap);
        ingress_entry(&sidecar?.spec, port)
    }

    /// The traffic policy of the inbound cluster of workload port `port` (Istio's
    /// `buildInboundCluster`): the `connectionPool` (and `retryBudget`) of the catch-all
    /// DestinationRule of the cluster's service (the first service selecting the workload
    /// on the port, Istio's `inboundServices[0]`), port-level
    /// settings by that service port, or by `port` itself for a Sidecar ingress listener's
    /// cluster ("when users specify circuit breakers, they need to be set on the receiver
    /// end as well"); a pool the workload's Sidecar sets for the port
    /// (`ingress[].connectionPool` of the entry whose `port.number` is `port`, else
    /// `inboundConnectionPool`) replaces it whole (`InboundConnectionPoolForPort`). Only the
    /// pool applies inbound (`applyTrafficPolicy`: balancing, outlier detection and TLS are
    /// outbound settings), so the other fields are left unset.
    ///
    /// The DestinationRule is looked up among those the workload's Sidecar lets it see, as
    /// Istio's `SidecarScope` holds the rules of the services its `egress` imports only: a
    /// Sidecar that leaves the workload's own service out leaves its rule out here too.
    pub fn inbound_traffic_policy(&self, port: u16) -> TrafficPolicy {
        let mut tp = TrafficPolicy::default();
        let ns = self.bootstrap.workload.namespace.as_str();
        let (sidecar, _) = crate::scope::select(&self.sidecars, &self.bootstrap);
        let ingress = sidecar.and_then(|sc| ingress_entry(&sc.spec, port));
        if let Some((svc, sp)) = self.workload_service_port(port)
            && let Some(dr) = self.pick_destination_rule(&svc.hostname, ns, false)
        {
            // the cluster's service port: a Sidecar ingress listener's own port (Istio's
            // `buildInboundClusters` makes it the instance's `ServicePort`), else the
            // service's port that sends to `port`
            let service_port = match ingress {
                Some(_) => Some(port),
                None => u16::try_from(sp.number).ok(),
            };
            let merged = merge_traffic_policy(dr.spec.traffic_policy.as_ref(), None, service_port);
            tp.connection_pool = merged.connection_pool;
            tp.retry_budget = merged.retry_budget;
        }
        if let Some(sc) = sidecar {
            let for_port = ingress.and_then(|i| i.connection_pool.as_ref());
            if let Some(cp) = for_port.or(sc.spec.inbound_connection_pool.as_ref()) {
                tp.connection_pool = Some(cp.clone());
            }
        }
        tp
    }

    /// The protocol of workload port `port` as Istio's inbound cluster takes it: the
    /// `port.protocol` of the workload's Sidecar `ingress` entry for the port, else the
    /// declared protocol of the cluster's service port ([`Protocol::declared`]); `None` when
    /// neither declares one (Istio's protocol detection: the cluster then speaks the
    /// client's protocol, `setUseDownstreamProtocol`).
    pub fn inbound_protocol(&self, port: u16) -> Option<Protocol> {
        match self.sidecar_ingress(port).and_then(|i| i.port.as_ref()) {
            Some(p) => p.protocol.as_deref().and_then(Protocol::known),
            None => Protocol::declared(self.workload_service_port(port)?.1),
        }
    }

    /// A subset of `host`'s DestinationRule, by name.
    pub fn subset(&self, host: &str, subset: &str, from_ns: &str) -> Option<&Subset> {
        self.destination_rule(host, from_ns)?
            .spec
            .subsets
            .iter()
            .find(|s| s.name == subset)
    }

    /// The effective traffic policy for `host`, `subset` and `port`, merged as Istio's
    /// `MergeTrafficPolicy`: the top-level policy (with its port-level settings for
    /// `port` applied), overridden field by field by the subset's (and then by the
    /// subset's port-level settings, which do not inherit).
    pub fn traffic_policy(
        &self,
        host: &str,
        subset: Option<&str>,
        port: Option<u16>,
        from_ns: &str,
    ) -> TrafficPolicy {
        let Some(dr) = self.destination_rule(host, from_ns) else {
            return TrafficPolicy::default();
        };
        let top = dr.spec.traffic_policy.as_ref();
        let sub = subset
            .and_then(|n| dr.spec.subsets.iter().find(|s| s.name == n))
            .and_then(|s| s.traffic_policy.as_ref());
        merge_traffic_policy(top, sub, port)
    }
}

/// The entry of `sidecar`'s `ingress` whose `port.number` is `port`.
fn ingress_entry(sidecar: &Sidecar, port: u16) -> Option<&IstioIngressListener> {
    sidecar
        .ingress
        .iter()
        .find(|i| i.port.as_ref().is_some_and(|p| p.number == u32::from(port)))
}

/// Merges two ascending sequences of indexes into one ascending sequence.
fn merge_sorted(
    a: impl Iterator<Item = usize>,
    b: impl Iterator<Item = usize>,
) -> impl Iterator<Item = usize> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x <= y => a.next(),
        (Some(_), Some(_)) | (None, Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, None) => None,
    })
}

/// Replaces the four port-level fields of `p` with those of the entry of `settings` for
/// `port`, if there is one (port-level settings do not inherit: absent fields become unset).
fn apply_port_level(p: &mut TrafficPolicy, settings: &[PortTrafficPolicy], port: Option<u16>) {
    let Some(port) = port else { return };
    if let Some(pl) = settings
        .iter()
        .find(|s| s.port.is_some_and(|x| x.number == u32::from(port)))
    {
        p.connection_pool = pl.connection_pool.clone();
        p.load_balancer = pl.load_balancer.clone();
        p.outlier_detection = pl.outlier_detection.clone();
        p.tls = pl.tls.clone();
    }
}

/// Istio's `MergeTrafficPolicy(original, subsetPolicy, port)`.
pub fn merge_traffic_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: Option<u16>,
) -> TrafficPolicy {
    let mut merged = top.cloned().unwrap_or_default();
    let top_levels = std::mem::take(&mut merged.port_level_settings);
    apply_port_level(&mut merged, &top_levels, port);
    let Some(sub) = subset else { return merged };
    // field by field: a field the subset sets replaces the top level's
    fn over<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    over(&mut merged.connection_pool, &sub.connection_pool);
    over(&mut merged.load_balancer, &sub.load_balancer);
    over(&mut merged.outlier_detection, &sub.outlier_detection);
    over(&mut merged.tls, &sub.tls);
    over(&mut merged.tunnel, &sub.tunnel);
    over(&mut merged.proxy_protocol, &sub.proxy_protocol);
    over(&mut merged.retry_budget, &sub.retry_budget);
    apply_port_level(&mut merged, &sub.port_level_settings, port);
    merged
}

/// Kinds whose documents the compile step reads (all of them).
pub const COMPILED_KINDS: &[Kind] = &Kind::ALL;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Loader;
    use crate::model::networking::{LoadBalancerSettings, SimpleLb};

    fn snap(text: &str) -> Snapshot {
        let mut l = Loader::new();
        l.add_str("t.yaml", text);
        let loaded = l.finish();
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        compile(loaded.resources)
    }

    #[test]
    fn short_hosts_resolve_like_istio() {
        // pkg/config/model.go ResolveShortnameToFQDN
        assert_eq!(
            resolve_host("reviews", "prod", "cluster.local"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod", "x", "cluster.local"),
            "reviews.prod"
        );
        assert_eq!(resolve_host("*", "x", "cluster.local"), "*");
        assert_eq!(
            resolve_host("*.example.com", "x", "cluster.local"),
            "*.example.com"
        );
        assert_eq!(resolve_host("10.0.0.1", "x", "cluster.local"), "10.0.0.1");
        assert_eq!(qualify_gateway("gw", "prod"), "prod/gw");
        assert_eq!(
            qualify_gateway("istio-system/gw", "prod"),
            "istio-system/gw"
        );
        assert_eq!(qualify_gateway("mesh", "prod"), "mesh");
    }

    #[test]
    fn virtual_service_destinations_are_resolved() {
        let s = snap(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [reviews]\n  gateways: [gw, mesh]\n  http:\n  - mirror: {host: shadow}\n    route:\n    - destination: {host: reviews, subset: v2}\n",
        );
        let vs = &s.virtual_services[0];
        assert_eq!(&*vs.hosts[0], "reviews.shop.svc.cluster.local");
        assert_eq!(vs.gateways, vec!["shop/gw".to_string(), "mesh".to_string()]);
        let d = vs.spec.http[0].route[0].destination.as_ref().unwrap();
        assert_eq!(d.host, "reviews.shop.svc.cluster.local");
        assert_eq!(
            vs.spec.http[0].mirror.as_ref().unwrap().host,
            "shadow.shop.svc.cluster.local"
        );
    }

    /// The workload `reviews-v1` (inbound to 127.0.0.1:9080) and a service selecting it on
    /// port 80 → 9080 and on port 9000.
    const INBOUND_WORLD: &str = "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: b}
spec:
  workload: {name: reviews-v1, namespace: default, labels: {app: reviews}}
  inbound: {address: 127.0.0.1, port: 15006, localApp: '127.0.0.1:9080'}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 9080}
  - {number: 9000, name: tcp, protocol: TCP}
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
";

    /// [`INBOUND_WORLD`] and `extra` documents, compiled.
    fn inbound_world(extra: &str) -> Snapshot {
        snap(&format!("{INBOUND_WORLD}{extra}"))
    }

    fn max_connections(tp: &TrafficPolicy) -> Option<i32> {
        tp.connection_pool.as_ref()?.tcp.as_ref()?.max_connections
    }

    /// Istio's `buildInboundCluster`: the catch-all DestinationRule of the service on the
    /// port (port-level settings by the service port), replaced whole by the Sidecar's
    /// `ingress[].connectionPool` for the port, else its `inboundConnectionPool`
    /// (`SidecarScope.InboundConnectionPoolForPort`); a rule with a `workloadSelector` is
    /// an outbound rule only; nothing but the pool applies.
    #[test]
    fn an_inbound_cluster_takes_the_sidecar_pool_else_the_service_destination_rule() {
        assert_eq!(
            inbound_world("").inbound_traffic_policy(9080),
            TrafficPolicy::default()
        );
        let dr = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 10}}
    portLevelSettings:
    - port: {number: 80}
      connectionPool: {tcp: {maxConnections: 20}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-selected, namespace: default}
spec:
  host: reviews
  workloadSelector: {matchLabels: {app: reviews}}
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 99}}
";
        let s = inbound_world(dr);
        // the service port 80 sends to 9080: its port-level pool; only the pool is taken
        let app = s.inbound_traffic_policy(9080);
        assert_eq!(max_connections(&app), Some(20));
        assert_eq!(app.load_balancer, None);
        // port 9000: the top-level pool
        assert_eq!(max_connections(&s.inbound_traffic_policy(9000)), Some(10));
        // no service on the port: no rule
        assert_eq!(s.inbound_traffic_policy(7000), TrafficPolicy::default());
        // the selector rule is the outbound one for the workload
        let out = s.traffic_policy(
            "reviews.default.svc.cluster.local",
            None,
            Some(80),
            "default",
        );
        assert_eq!(max_connections(&out), Some(99));

        let sidecar = "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  inboundConnectionPool:
    http: {http2MaxRequests: 5}
  ingress:
  - port: {number: 9000, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:9000
    connectionPool: {tcp: {maxConnections: 3}}
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:9080
";
        let s = inbound_world(&format!("{dr}{sidecar}"));
        // the ingress entry's pool for its port, whole
        let tcp = s.inbound_traffic_policy(9000);
        assert_eq!(max_connections(&tcp), Some(3));
        assert_eq!(tcp.connection_pool.as_ref().unwrap().http, None);
        // the entry without a pool: the Sidecar's inboundConnectionPool, not the rule's
        let app = s.inbound_traffic_policy(9080);
        assert_eq!(max_connections(&app), None);
        let http = app.connection_pool.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.http2_max_requests, Some(5));

        // a Sidecar ingress listener's cluster takes port-level settings by its own port
        // (9080), not the service's (80): the rule's top-level pool
        let ingress_only = "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:9080
";
        let s = inbound_world(&format!("{dr}{ingress_only}"));
        assert_eq!(max_connections(&s.inbound_traffic_policy(9080)), Some(10));
    }

    /// The inbound cluster's protocol: the Sidecar ingress entry's, else the selecting
    /// service's port's, else none (Istio's protocol detection).
    #[test]
    fn an_inbound_cluster_s_protocol_is_the_sidecar_s_else_the_service_s() {
        let s = inbound_world("");
        assert_eq!(s.inbound_protocol(9080), Some(Protocol::Http));
        assert_eq!(s.inbound_protocol(9000), Some(Protocol::Tcp));
        assert_eq!(s.inbound_protocol(7000), None);
        let s = inbound_world(
            "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9080, protocol: GRPC, name: grpc}
    defaultEndpoint: 127.0.0.1:9080
",
        );
        assert_eq!(s.inbound_protocol(9080), Some(Protocol::Grpc));
        assert_eq!(
            s.inbound_protocol(9000),
            Some(Protocol::Tcp),
            "the service's"
        );
    }

    /// The workload's own services are its inbound side's whatever its Sidecar's `egress`
    /// imports (Istio's service targets): a Sidecar importing only `istio-system/*` leaves
    /// the workload's service out of what it calls, not out of what it serves.
    #[test]
    fn the_workload_s_services_survive_a_sidecar_egress_that_leaves_them_out() {
        let mut loader = Loader::new();
        loader.add_str(
            "t.yaml",
            &format!(
                "{INBOUND_WORLD}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  egress: [{{hosts: [istio-system/*]}}]
"
            ),
        );
        let compiled = crate::config::build(loader, crate::config::CheckMode::Proxy).unwrap();
        let s = &compiled.snapshot;
        assert!(
            s.service("reviews.default.svc.cluster.local", "default")
                .is_none()
        );
        // (a DestinationRule of the service would be out of the scope too, as in Istio:
        // see `inbound_traffic_policy`)
        let own: Vec<&str> = s
            .workload_services(Some(9080))
            .iter()
            .map(|s| &*s.hostname)
            .collect();
        assert_eq!(own, ["reviews.default.svc.cluster.local"]);
        assert_eq!(s.inbound_protocol(9080), Some(Protocol::Http));
    }

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    connectionPool: {tcp: {maxConnections: 10}}\n    portLevelSettings:\n    - port: {number: 9090}\n      loadBalancer: {simple: ROUND_ROBIN}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      loadBalancer: {simple: LEAST_REQUEST}\n  - name: v2\n    labels: {version: v2}\n";

    #[test]
    fn subset_policy_overrides_top_level_field_by_field() {
        // pilot/pkg/networking/core/cluster_traffic_policy.go MergeTrafficPolicy
        let s = snap(DR);
        let host = "reviews.default.svc.cluster.local";
        let lb = |p: TrafficPolicy| p.load_balancer.and_then(|l: LoadBalancerSettings| l.simple);
        let v1 = s.traffic_policy(host, Some("v1"), Some(9080), "default");
        assert_eq!(lb(v1.clone()), Some(SimpleLb::LeastRequest));
        // connectionPool is inherited from the top level
        assert_eq!(
            v1.connection_pool
                .and_then(|c| c.tcp)
                .and_then(|t| t.max_connections),
            Some(10)
        );
        assert_eq!(
            lb(s.traffic_policy(host, Some("v2"), Some(9080), "default")),
            Some(SimpleLb::Random)
        );
        // top-level port-level settings replace the top-level fields for that port
        let p = s.traffic_policy(host, Some("v2"), Some(9090), "default");
        assert_eq!(lb(p.clone()), Some(SimpleLb::RoundRobin));
        assert!(
            p.connection_pool.is_none(),
            "port-level settings do not inherit"
        );
        assert!(s.subset(host, "v3", "default").is_none());
    }

    #[test]
    fn destination_rule_lookup_prefers_client_namespace_then_service_then_root() {
        let dr = |name: &str, ns: &str, host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: '{host}'\n---\n"
            )
        };
        let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se, namespace: svc}\nspec:\n  hosts: [api.svc.svc.cluster.local]\n  ports: [{number: 80, name: http}]\n---\n";
        let text = format!(
            "{se}{}{}{}",
            dr("root", "istio-system", "api.svc.svc.cluster.local"),
            dr("owner", "svc", "api.svc.svc.cluster.local"),
            dr("client", "client", "*.svc.cluster.local"),
        );
        let s = snap(&text);
        let host = "api.svc.svc.cluster.local";
        assert_eq!(s.destination_rule(host, "client").unwrap().name, "client");
        assert_eq!(s.destination_rule(host, "other").unwrap().name, "owner");
        assert_eq!(
            s.destination_rule("x.y.svc.cluster.local", "other")
                .unwrap()
                .name,
            "client"
        );
    }

    #[test]
    fn service_entry_endpoints_include_selected_workload_entries() {
        let s = snap(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm}\nspec:\n  hosts: [vm.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 8080, name: http, targetPort: 9000}]\n  workloadSelector: {labels: {app: vm}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1}\nspec:\n  address: 10.1.1.1\n  labels: {app: vm}\n  locality: r1/z1\n  weight: 3\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: other}\nspec:\n  address: 10.1.1.2\n  labels: {app: other}\n",
        );
        let svc = s
            .service("vm.default.svc.cluster.local", "default")
            .unwrap();
        assert_eq!(svc.endpoints.len(), 1);
        let ep = &svc.endpoints[0];
        assert_eq!((ep.weight, ep.locality.zone.as_str()), (3, "z1"));
        assert_eq!(svc.endpoint_port(ep, &svc.ports[0]), 9000);
        assert_eq!(svc.default_port().map(|p| p.number), Some(8080));
    }

    #[test]
    fn wildcard_service_entries_match_hosts() {
        let s = snap(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: w}\nspec:\n  hosts: ['*.example.com']\n  ports: [{number: 443, name: tls, protocol: TLS}]\n",
        );
        assert!(s.service("api.example.com", "default").is_some());
        assert!(s.service("example.com", "default").is_none());
    }
}

//! The workload's mTLS: its identity (`ProxyBootstrap.spec.identity`) and what its inbound
//! listener accepts (PeerAuthentication).
//!
//! Part of the one configuration pipeline ([`crate::pipeline`]): `validate` and `run` read the
//! identity files, check them (a chain with one SPIFFE identity, the same as `spiffeId`, a
//! key that matches, a trust bundle) and work out the inbound mode the same way. Security
//! fails closed: a `STRICT` PeerAuthentication that applies to this workload while the proxy
//! has no identity refuses the configuration (it could only serve plaintext).
//!
//! The outbound listener's connector originates Istio's mTLS ("auto mTLS") to endpoints with
//! a sidecar when the proxy has an identity ([`WorkloadTls`] as the engine's `UpstreamTls`),
//! checking the server against the endpoint's service account, and TLS as DestinationRules'
//! `tls` say (`SIMPLE`, `MUTUAL` from files; `sni`, `subjectAltNames`; see [`outbound`]).
//!
//! The inbound listener ([`WorkloadTls`]; one per workload port with `inboundPorts`,
//! [`PortTls`]) accepts, per connection:
//!
//! | mode (effective for the workload, or its port's `portLevelMtls`) | with an identity | without |
//! |---|---|---|
//! | `STRICT` | mTLS only | refused at load |
//! | `PERMISSIVE` (Istio's default) | mTLS or plaintext, by the first byte | plaintext |
//! | `DISABLE` | plaintext | plaintext |
//!
//! Every request on the inbound listener then passes the RequestAuthentications
//! ([`mesh_tls::jwt`]: JWT validation) and the AuthorizationPolicies
//! ([`mesh_tls::authz`]) that apply to the workload, compiled here with the rest of the
//! security and swapped with it on reload; a policy that cannot be enforced refuses the
//! configuration.
//!
//! mTLS means a client certificate chaining to the trust bundle with one SPIFFE identity of
//! the workload's trust domain ([`mesh_tls::verify`]); the application behind the listener
//! gets it in `x-forwarded-client-cert` ([`xfcc`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use mesh_core::Severity;
use mesh_core::config::Compiled;
use mesh_core::error::{FieldPath, ResourceRef};
use mesh_core::ext::{SelectedEndpoint, upstream_cluster};
use mesh_core::identity::SpiffeId;
use mesh_core::load::Issue;
use mesh_core::model::Kind;
use mesh_core::model::networking::{ClientTlsMode, DestinationRule, TrafficPolicy};
use mesh_core::model::security::MtlsMode;
use mesh_tls::authz::{Authorizer, PolicyRef, Workload};
use mesh_tls::config::{TlsFiles, WorkloadIdentity};
use mesh_tls::jwt::{Authenticator, RequestAuthRef};
use mesh_tls::peer_auth::{Effective, Policy, effective_mode, port_modes};
use mesh_tls::verify::Accept;
use mesh_transport::tls::{Accepts, ClientTls, DownstreamTls, UpstreamTls};
use rustls::pki_types::ServerName;

pub mod outbound;

pub use outbound::OutboundTls;

/// What an outbound client configuration is built for.
type ClientKey = (Arc<str>, Option<Arc<SpiffeId>>, bool);

/// The workload's mTLS, as the pipeline prepared it.
#[derive(Debug, Clone)]
pub struct Security {
    /// The identity, when the bootstrap has one.
    pub identity: Option<Arc<WorkloadIdentity>>,
    /// The inbound listener's mode and the policy that decided it.
    pub inbound: Effective,
    /// The modes of single workload ports (`portLevelMtls`), by workload port: the inbound
    /// listener for that port (`inboundPorts`, or the main one for `localApp`'s port)
    /// enforces it instead of [`inbound`](Self::inbound).
    pub inbound_ports: std::collections::BTreeMap<u32, Effective>,
    /// The AuthorizationPolicies that apply to this workload, compiled
    /// ([`mesh_tls::authz`]); the inbound listener applies them to every request.
    pub authz: Arc<Authorizer>,
    /// The DestinationRules' `tls` for the outbound connector ([`outbound`]).
    pub outbound: Arc<OutboundTls>,
    /// Warnings of this step (`insecureSkipVerify`), for the pipeline's diagnostics.
    pub warnings: Vec<Issue>,
    /// The RequestAuthentications that apply to this workload, compiled
    /// ([`mesh_tls::jwt`]); the inbound listener validates JWTs with them before
    /// authorization.
    pub jwt: Arc<Authenticator>,
}

impl Security {
    /// What the inbound listener accepts.
    pub fn accepts(&self) -> Accepts {
        self.accepts_port(None)
    }

    /// What the inbound listener for workload port `port` accepts (its `portLevelMtls`
    /// mode, else the workload's).
    pub fn accepts_port(&self, port: Option<u32>) -> Accepts {
        let mode = port
            .and_then(|p| self.inbound_ports.get(&p))
            .unwrap_or(&self.inbound)
            .mode;
        match (&self.identity, mode) {
            (None, _) | (_, MtlsMode::Disable) => Accepts::PlaintextOnly,
            (Some(_), MtlsMode::Strict) => Accepts::TlsOnly,
            (Some(_), _) => Accepts::TlsOrPlaintext,
        }
    }
}

/// Reads the identity files and works out the inbound mode; the problems are issues of the
/// resources they concern (the bootstrap's `spec.identity.*`, a PeerAuthentication's
/// `spec.mtls.mode`).
pub fn prepare(compiled: &Compiled) -> Result<Security, Vec<Issue>> {
    let snap = &compiled.snapshot;
    let boot = &snap.bootstrap;
    let policies: Vec<Policy<'_>> = snap
        .peer_authentications
        .iter()
        .map(|p| Policy {
            namespace: &p.namespace,
            name: &p.name,
            spec: &p.spec,
        })
        .collect();
    let inbound = effective_mode(
        &policies,
        &boot.mesh.root_namespace,
        &boot.workload.namespace,
        &boot.workload.labels,
    );
    let inbound_ports = port_modes(
        &policies,
        &boot.mesh.root_namespace,
        &boot.workload.namespace,
        &boot.workload.labels,
        &inbound,
    );
    let bootstrap = compiled.origins.any_of(Kind::ProxyBootstrap);
    let issue = |resource: ResourceRef, field: &str, message: String| Issue {
        severity: Severity::Error,
        resource,
        field: FieldPath::parse(field),
        message,
    };
    let identity = match (&boot.identity, bootstrap) {
        (Some(id), Some(at)) => {
            let files = TlsFiles {
                chain: id.certificate_chain.clone().into(),
                key: id.private_key.clone().into(),
                bundle: id.trust_bundle.clone().into(),
            };
            let w = WorkloadIdentity::load(files).map_err(|e| {
                let field = match &e {
                    mesh_tls::config::TlsError::Io { path, .. }
                        if path.as_os_str() == id.private_key.as_str() =>
                    {
                        "spec.identity.privateKey"
                    }
                    mesh_tls::config::TlsError::Io { path, .. }
                        if path.as_os_str() == id.trust_bundle.as_str() =>
                    {
                        "spec.identity.trustBundle"
                    }
                    mesh_tls::config::TlsError::Pem { what, .. } if *what == "private key" => {
                        "spec.identity.privateKey"
                    }
                    mesh_tls::config::TlsError::Pem { what, .. } if *what == "trust bundle" => {
                        "spec.identity.trustBundle"
                    }
                    _ => "spec.identity.certificateChain",
                };
                vec![issue(at.clone(), field, e.to_string())]
            })?;
            let has = w.current().identity().clone();
            if has != id.spiffe_id {
                return Err(vec![issue(
                    at,
                    "spec.identity.spiffeId",
                    format!(
                        "spiffeId {} differs from the identity of {}: {has}",
                        id.spiffe_id, id.certificate_chain
                    ),
                )]);
            }
            Some(Arc::new(w))
        }
        _ => None,
    };
    if identity.is_none() {
        // ISTIO_MUTUAL asks for the workload's certificate: without one, fail closed
        for dr in &snap.destination_rules {
            if let Some(field) = istio_mutual_field(&dr.spec) {
                let resource = ResourceRef {
                    kind: Kind::DestinationRule,
                    namespace: dr.namespace.clone(),
                    name: dr.name.clone(),
                };
                return Err(vec![issue(
                    resource,
                    &field,
                    "ISTIO_MUTUAL needs the workload's certificate, but ProxyBootstrap \
                     spec.identity is not set: refused, because security fails closed"
                        .into(),
                )]);
            }
        }
    }
    if identity.is_none() && inbound.mode == MtlsMode::Strict {
        let from = inbound.from.as_deref().unwrap_or_default();
        let resource = snap.peer_authentications.iter().find_map(|p| {
            (format!("PeerAuthentication/{}/{}", p.namespace, p.name) == from).then(|| {
                ResourceRef {
                    kind: Kind::PeerAuthentication,
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                }
            })
        });
        if let Some(resource) = resource {
            return Err(vec![issue(
                resource,
                "spec.mtls.mode",
                format!(
                    "STRICT mTLS applies to this workload ({}/{}) but ProxyBootstrap \
                     spec.identity is not set: refused, because security fails closed",
                    boot.workload.namespace, boot.workload.name
                ),
            )]);
        }
    }
    if identity.is_none()
        && let Some((port, e)) = inbound_ports
            .iter()
            .find(|(_, e)| e.mode == MtlsMode::Strict)
        && let Some(p) = snap.peer_authentications.iter().find(|p| {
            e.from.as_deref() == Some(&format!("PeerAuthentication/{}/{}", p.namespace, p.name))
        })
    {
        let resource = ResourceRef {
            kind: Kind::PeerAuthentication,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        let field = if p.spec.port_level_mtls.contains_key(port) {
            format!("spec.portLevelMtls.{port}.mode")
        } else {
            "spec.mtls.mode".into()
        };
        return Err(vec![issue(
            resource,
            &field,
            format!(
                "STRICT mTLS applies to port {port} of this workload ({}/{}) but ProxyBootstrap \
                 spec.identity is not set: refused, because security fails closed",
                boot.workload.namespace, boot.workload.name
            ),
        )]);
    }
    let authz = Arc::new(authorization(compiled)?);
    let (outbound, mut issues) = OutboundTls::prepare(&compiled.snapshot);
    // a port-level mode for a port no inbound listener of this proxy serves: tell the user
    let served: Vec<u32> = boot
        .inbound
        .iter()
        .filter_map(|i| i.local_app_port().map(u32::from))
        .chain(boot.inbound_ports.keys().filter_map(|k| k.parse().ok()))
        .collect();
    for (port, e) in &inbound_ports {
        if served.contains(port) {
            continue;
        }
        let from = e.from.as_deref().unwrap_or_default();
        if let Some(p) = snap.peer_authentications.iter().find(|p| {
            p.spec.port_level_mtls.contains_key(port)
                && format!("PeerAuthentication/{}/{}", p.namespace, p.name) == from
        }) {
            issues.push(Issue {
                severity: Severity::Warning,
                resource: ResourceRef {
                    kind: Kind::PeerAuthentication,
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                },
                field: FieldPath::parse(&format!("spec.portLevelMtls.{port}")),
                message: format!(
                    "no inbound listener of this proxy serves workload port {port} \
                     (ProxyBootstrap spec.inboundPorts, or inbound.localApp's port): this \
                     mode has no effect here"
                ),
            });
        }
    }
    if issues.iter().any(|i| i.severity == Severity::Error) {
        issues.retain(|i| i.severity == Severity::Error);
        return Err(issues);
    }
    let jwt = Arc::new(authentication(compiled)?);
    Ok(Security {
        identity,
        inbound,
        inbound_ports,
        authz,
        outbound: Arc::new(outbound),
        warnings: issues,
        jwt,
    })
}

/// Compiles the AuthorizationPolicies that apply to the workload; a policy this version
/// cannot enforce (JWT keys, `CUSTOM`: the proxy has no external authorizer) is an error of
/// its field (security fails closed).
fn authorization(compiled: &Compiled) -> Result<Authorizer, Vec<Issue>> {
    let snap = &compiled.snapshot;
    let boot = &snap.bootstrap;
    let policies: Vec<PolicyRef<'_>> = snap
        .authorization_policies
        .iter()
        .map(|p| PolicyRef {
            namespace: &p.namespace,
            name: &p.name,
            spec: &p.spec,
        })
        .collect();
    Authorizer::compile(&policies, &policy_workload(boot), None).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                refusal(
                    Kind::AuthorizationPolicy,
                    e.namespace,
                    e.name,
                    &e.field,
                    e.message,
                )
            })
            .collect()
    })
}

/// The workload that AuthorizationPolicies and RequestAuthentications select.
fn policy_workload(boot: &mesh_core::model::bootstrap::ProxyBootstrap) -> Workload<'_> {
    Workload {
        root_namespace: &boot.mesh.root_namespace,
        namespace: &boot.workload.namespace,
        labels: &boot.workload.labels,
    }
}

/// A policy this version cannot enforce, as an error of its field.
fn refusal(kind: Kind, namespace: String, name: String, field: &str, message: String) -> Issue {
    Issue {
        severity: Severity::Error,
        resource: ResourceRef {
            kind,
            namespace,
            name,
        },
        field: FieldPath::parse(field),
        message,
    }
}

/// Compiles the RequestAuthentications that apply to the workload (inline and `file://`
/// JWKS read now, so `validate` judges them as `run` does); a rule this version cannot
/// enforce is an error of its field (security fails closed).
fn authentication(compiled: &Compiled) -> Result<Authenticator, Vec<Issue>> {
    let snap = &compiled.snapshot;
    let boot = &snap.bootstrap;
    let policies: Vec<RequestAuthRef<'_>> = snap
        .request_authentications
        .iter()
        .map(|p| RequestAuthRef {
            namespace: &p.namespace,
            name: &p.name,
            spec: &p.spec,
        })
        .collect();
    Authenticator::compile(&policies, &policy_workload(boot)).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                refusal(
                    Kind::RequestAuthentication,
                    e.namespace,
                    e.name,
                    &e.field,
                    e.message,
                )
            })
            .collect()
    })
}

/// The field path of the first `tls.mode: ISTIO_MUTUAL` of a DestinationRule, if any.
fn istio_mutual_field(dr: &DestinationRule) -> Option<String> {
    let of = |tp: &Option<TrafficPolicy>, at: &str| -> Option<String> {
        let tp = tp.as_ref()?;
        if tp
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == ClientTlsMode::IstioMutual)
        {
            return Some(format!("{at}.tls.mode"));
        }
        tp.port_level_settings
            .iter()
            .enumerate()
            .find_map(|(i, p)| {
                p.tls
                    .as_ref()
                    .is_some_and(|t| t.mode == ClientTlsMode::IstioMutual)
                    .then(|| format!("{at}.portLevelSettings[{i}].tls.mode"))
            })
    };
    of(&dr.traffic_policy, "spec.trafficPolicy").or_else(|| {
        dr.subsets.iter().enumerate().find_map(|(i, sub)| {
            of(
                &sub.traffic_policy,
                &format!("spec.subsets[{i}].trafficPolicy"),
            )
        })
    })
}

/// The inbound listener's TLS: what [`Security`] says, swapped on reload.
#[derive(Debug)]
pub struct WorkloadTls {
    security: ArcSwap<Security>,
    /// Counts the configurations stored, for the cache.
    generation: AtomicU64,
    /// Whether the configuration in force originates TLS anywhere (a DestinationRule `tls`,
    /// ServiceEntry `subjectAltNames`): without it, a request to an endpoint without Istio
    /// mTLS goes in plaintext without loading the configuration.
    originates: AtomicBool,
    /// Outbound client configurations, for the material and configuration they were made
    /// under.
    clients: RwLock<Clients>,
    /// Serves no certificate: what a handshake gets if one starts while the listener
    /// accepts plaintext only (never, as `accepts` says so first).
    refuse: Arc<rustls::ServerConfig>,
}

impl WorkloadTls {
    /// The listener's TLS under `security`.
    pub fn new(security: Security) -> Result<Self, rustls::Error> {
        let refuse = rustls::ServerConfig::builder_with_provider(mesh_tls::verify::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCert));
        Ok(WorkloadTls {
            originates: AtomicBool::new(security.outbound.any()),
            security: ArcSwap::from_pointee(security),
            generation: AtomicU64::new(0),
            clients: RwLock::new(Clients::default()),
            refuse: Arc::new(refuse),
        })
    }

    /// Applies a reloaded configuration's security to new connections.
    pub fn store(&self, security: Security) {
        // set before a configuration that originates TLS is seen, cleared after one that
        // does not: no request skips the look-up the configuration it reads needs
        let originates = security.outbound.any();
        if originates {
            self.originates.store(true, Ordering::Release);
        }
        self.security.store(Arc::new(security));
        self.generation.fetch_add(1, Ordering::Release);
        if !originates {
            self.originates.store(false, Ordering::Release);
        }
    }

    /// The security in force.
    pub fn current(&self) -> Arc<Security> {
        self.security.load_full()
    }

    /// Re-reads the identity files, and the DestinationRules' `tls` files, if one changed (a
    /// rotation); new handshakes use the new chain. Returns whether some material changed.
    pub fn rotate(&self) -> bool {
        // DestinationRule tls files (TLS origination): a new generation drops the
        // configurations made from the old ones
        let outbound = self.security.load().outbound.reload_if_changed();
        if outbound {
            self.generation.fetch_add(1, Ordering::Release);
        }
        let Some(id) = self.security.load().identity.clone() else {
            return outbound;
        };
        match id.reload_if_changed() {
            Ok(changed) => {
                if changed {
                    tracing::info!(identity = %id.current().identity(), "workload certificate rotated");
                }
                changed || outbound
            }
            Err(e) => {
                tracing::warn!(error = %e, "workload certificate files changed but cannot be used; keeping the current ones");
                outbound
            }
        }
    }
}

impl DownstreamTls for WorkloadTls {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        match &self.security.load().identity {
            Some(id) => id.server_config(),
            None => self.refuse.clone(),
        }
    }

    fn accepts(&self) -> Accepts {
        self.security.load().accepts()
    }
}

/// The TLS of the inbound listener for one workload port: [`WorkloadTls`]'s certificate,
/// under the port's `portLevelMtls` mode (else the workload's).
#[derive(Debug)]
pub struct PortTls {
    tls: Arc<WorkloadTls>,
    port: u32,
}

impl PortTls {
    /// The listener for workload port `port`.
    pub fn new(tls: Arc<WorkloadTls>, port: u32) -> Self {
        PortTls { tls, port }
    }
}

impl DownstreamTls for PortTls {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.server_config()
    }

    fn accepts(&self) -> Accepts {
        self.tls.security.load().accepts_port(Some(self.port))
    }
}

impl UpstreamTls for WorkloadTls {
    /// DestinationRule `tls` `SIMPLE`/`MUTUAL` for the cluster: TLS origination
    /// ([`outbound`]), pooled per settings (and per SNI when it comes from the request).
    ///
    /// Otherwise Istio's auto mTLS: to an endpoint whose `istio_tls` the balancer set (a
    /// sidecar, or `ISTIO_MUTUAL`), when this proxy has an identity: this workload's chain,
    /// the server checked against the bundle and the endpoint's expected identity (any of
    /// the trust domain when unknown; the DestinationRule's or ServiceEntry's
    /// `subjectAltNames` when set), SNI `outbound_.<port>_.<subset>_.<host>` as Istio's
    /// sidecars send it (or the DestinationRule's `sni`). Configurations are built once per
    /// (cluster, expected identity, protocol) and certificate, then shared.
    fn client_tls(
        &self,
        req: &http::Extensions,
        host: Option<&str>,
        endpoint: &SelectedEndpoint,
    ) -> Option<ClientTls> {
        if !endpoint.istio_tls && !self.originates.load(Ordering::Acquire) {
            return None; // plaintext: the common case of a proxy without TLS
        }
        let generation = self.generation.load(Ordering::Acquire);
        let security = self.security.load();
        let cluster: Option<&Arc<str>> = upstream_cluster(req).map(|c| &c.name);
        let per_cluster = match cluster {
            Some(name) if security.outbound.any() => {
                Some(self.cluster_tls(name, &security, generation))
            }
            _ => None,
        };
        if let Some(o) = per_cluster.as_ref().and_then(|c| c.originate.as_ref()) {
            let server_name = o.server_name(host, endpoint.addr.ip());
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (o.id(), o.auto_sni().then(|| server_name.to_str())).hash(&mut h);
            return Some(ClientTls {
                config: o.config(endpoint.http2).clone(),
                server_name,
                key: h.finish() | 1,
            });
        }
        if !endpoint.istio_tls {
            return None;
        }
        let id = security.identity.as_ref()?;
        let material = id.current();
        let cluster: Arc<str> = cluster.cloned().unwrap_or_else(|| Arc::from(""));
        let key = (cluster, endpoint.identity.clone(), endpoint.http2);
        let stamp = Arc::as_ptr(&material) as usize;
        {
            let cache = self.clients.read().unwrap_or_else(|e| e.into_inner());
            if cache.material == stamp
                && cache.generation == generation
                && let Some(c) = cache.mtls.get(&key)
            {
                return Some(c.clone());
            }
        }
        let trust_domain = material.identity().trust_domain().to_string();
        let expected: Vec<SpiffeId> = match per_cluster.as_ref().and_then(|c| c.identities.as_ref())
        {
            // the DestinationRule's subjectAltNames replace the service account; a
            // ServiceEntry's join the endpoint's own
            Some((names, with_own)) => names
                .iter()
                .cloned()
                .chain(endpoint.identity.as_deref().cloned().filter(|_| *with_own))
                .collect(),
            None => endpoint.identity.as_deref().cloned().into_iter().collect(),
        };
        let accept = Accept::trust_domain(&trust_domain).identities(expected);
        let config = match material.client_config(accept, endpoint.http2) {
            Ok(c) => c,
            Err(e) => {
                // fail closed: a handshake that cannot succeed, a 503 UF
                tracing::warn!(error = %e, "cannot build the mTLS client configuration");
                mesh_tls::origination::Origination::refusing()
                    .config(endpoint.http2)
                    .clone()
            }
        };
        let sni = match per_cluster.as_ref().and_then(|c| c.sni.as_deref()) {
            Some(sni) => sni.to_string(),
            None => key.0.replace('|', "_."),
        };
        let server_name = ServerName::try_from(sni)
            .unwrap_or_else(|_| ServerName::IpAddress(endpoint.addr.ip().into()));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&key, stamp, generation).hash(&mut h);
        let tls = ClientTls {
            config,
            server_name,
            key: h.finish() | 1,
        };
        let mut cache = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if cache.material != stamp || cache.generation != generation {
            // a rotated certificate or a new configuration: the old configurations go
            cache.mtls.clear();
            cache.material = stamp;
        }
        cache.set_generation(generation);
        cache.mtls.insert(key, tls.clone());
        Some(tls)
    }
}

impl WorkloadTls {
    /// What the cluster's DestinationRule `tls` asks for, worked out once per
    /// configuration.
    fn cluster_tls(
        &self,
        name: &Arc<str>,
        security: &Security,
        generation: u64,
    ) -> Arc<outbound::ClusterTls> {
        {
            let cache = self.clients.read().unwrap_or_else(|e| e.into_inner());
            if cache.generation == generation
                && let Some(c) = cache.clusters.get(name)
            {
                return c.clone();
            }
        }
        let found = Arc::new(security.outbound.cluster(name));
        let mut cache = self.clients.write().unwrap_or_else(|e| e.into_inner());
        cache.set_generation(generation);
        cache.clusters.insert(name.clone(), found.clone());
        found
    }
}

/// The outbound configurations [`WorkloadTls`] made.
#[derive(Debug, Default)]
struct Clients {
    /// The configuration they were made under ([`WorkloadTls::store`] counts them).
    generation: u64,
    /// The address of the workload material the mTLS ones were made with.
    material: usize,
    /// Istio mTLS configurations by (cluster, expected identity, HTTP/2).
    mtls: HashMap<ClientKey, ClientTls>,
    /// What each cluster's DestinationRule `tls` asks for.
    clusters: HashMap<Arc<str>, Arc<outbound::ClusterTls>>,
}

impl Clients {
    /// Drops what an older configuration made.
    fn set_generation(&mut self, generation: u64) {
        if self.generation != generation {
            self.generation = generation;
            self.mtls.clear();
            self.clusters.clear();
        }
    }
}

#[derive(Debug)]
struct NoCert;

impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// Istio's `x-forwarded-client-cert` for a request that came over mTLS: `By` (this
/// workload), `Hash` (SHA-256 of the client's certificate, hex), `Subject` (empty, as Istio's
/// certificates have none) and `URI` (the client's SPIFFE identity), as Envoy writes it with
/// Istio's `set_current_client_cert_details {subject, uri, dns}`.
pub fn xfcc(by: &str, client_cert_der: &[u8], client_uri: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = ring::digest::digest(&ring::digest::SHA256, client_cert_der);
    let mut out = String::with_capacity(by.len() + client_uri.len() + 96);
    out.push_str("By=");
    out.push_str(by);
    out.push_str(";Hash=");
    for b in hash.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out.push_str(";Subject=\"\";URI=");
    out.push_str(client_uri);
    out
}

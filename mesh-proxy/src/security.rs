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
//! checking the server against the endpoint's service account.
//!
//! The inbound listener ([`WorkloadTls`]) accepts, per connection:
//!
//! | mode (effective for the workload) | with an identity | without |
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
use mesh_tls::jwt::{Authenticator, JwtWorkload, RequestAuthRef};
use mesh_tls::peer_auth::{Effective, Policy, effective_mode};
use mesh_tls::verify::Accept;
use mesh_transport::tls::{Accepts, ClientTls, DownstreamTls, UpstreamTls};
use rustls::pki_types::ServerName;

/// What an outbound client configuration is built for.
type ClientKey = (Arc<str>, Option<Arc<SpiffeId>>, bool);

/// The workload's mTLS, as the pipeline prepared it.
#[derive(Debug, Clone)]
pub struct Security {
    /// The identity, when the bootstrap has one.
    pub identity: Option<Arc<WorkloadIdentity>>,
    /// The inbound listener's mode and the policy that decided it.
    pub inbound: Effective,
    /// The AuthorizationPolicies that apply to this workload, compiled
    /// ([`mesh_tls::authz`]); the inbound listener applies them to every request.
    pub authz: Arc<Authorizer>,
    /// The RequestAuthentications that apply to this workload, compiled
    /// ([`mesh_tls::jwt`]); the inbound listener validates JWTs with them before
    /// authorization.
    pub jwt: Arc<Authenticator>,
}

impl Security {
    /// What the inbound listener accepts.
    pub fn accepts(&self) -> Accepts {
        match (&self.identity, self.inbound.mode) {
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
    let authz = Arc::new(authorization(compiled)?);
    let jwt = Arc::new(authentication(compiled)?);
    Ok(Security {
        identity,
        inbound,
        authz,
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
    let workload = Workload {
        root_namespace: &boot.mesh.root_namespace,
        namespace: &boot.workload.namespace,
        labels: &boot.workload.labels,
    };
    Authorizer::compile(&policies, &workload, None).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| Issue {
                severity: Severity::Error,
                resource: ResourceRef {
                    kind: Kind::AuthorizationPolicy,
                    namespace: e.namespace,
                    name: e.name,
                },
                field: FieldPath::parse(&e.field),
                message: e.message,
            })
            .collect()
    })
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
    let workload = JwtWorkload {
        root_namespace: &boot.mesh.root_namespace,
        namespace: &boot.workload.namespace,
        labels: &boot.workload.labels,
    };
    Authenticator::compile(&policies, &workload).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| Issue {
                severity: Severity::Error,
                resource: ResourceRef {
                    kind: Kind::RequestAuthentication,
                    namespace: e.namespace,
                    name: e.name,
                },
                field: FieldPath::parse(&e.field),
                message: e.message,
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
    /// Outbound client configurations by (cluster, expected identity, HTTP/2), for the
    /// material whose address is the first field.
    #[allow(clippy::type_complexity)]
    clients: RwLock<(usize, HashMap<ClientKey, ClientTls>)>,
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
            security: ArcSwap::from_pointee(security),
            clients: RwLock::new((0, HashMap::new())),
            refuse: Arc::new(refuse),
        })
    }

    /// Applies a reloaded configuration's security to new connections.
    pub fn store(&self, security: Security) {
        self.security.store(Arc::new(security));
    }

    /// The security in force.
    pub fn current(&self) -> Arc<Security> {
        self.security.load_full()
    }

    /// Re-reads the identity files if one changed (a rotation); new handshakes use the new
    /// chain. Returns whether the material changed.
    pub fn rotate(&self) -> bool {
        let Some(id) = self.security.load().identity.clone() else {
            return false;
        };
        match id.reload_if_changed() {
            Ok(changed) => {
                if changed {
                    tracing::info!(identity = %id.current().identity(), "workload certificate rotated");
                }
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "workload certificate files changed but cannot be used; keeping the current ones");
                false
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

impl UpstreamTls for WorkloadTls {
    /// Istio's auto mTLS: to an endpoint whose `istio_tls` the balancer set (a sidecar, or
    /// `ISTIO_MUTUAL`), when this proxy has an identity: this workload's chain, the server
    /// checked against the bundle and the endpoint's expected identity (any of the trust
    /// domain when unknown), SNI `outbound_.<port>_.<subset>_.<host>` as Istio's sidecars
    /// send it. Configurations are built once per (cluster, expected identity, protocol)
    /// and certificate, then shared.
    fn client_tls(&self, req: &http::Extensions, endpoint: &SelectedEndpoint) -> Option<ClientTls> {
        if !endpoint.istio_tls {
            return None;
        }
        let security = self.security.load();
        let id = security.identity.as_ref()?;
        let material = id.current();
        let cluster: Arc<str> = upstream_cluster(req)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| Arc::from(""));
        let key = (cluster, endpoint.identity.clone(), endpoint.http2);
        let stamp = Arc::as_ptr(&material) as usize;
        {
            let cache = self.clients.read().unwrap_or_else(|e| e.into_inner());
            if cache.0 == stamp
                && let Some(c) = cache.1.get(&key)
            {
                return Some(c.clone());
            }
        }
        let trust_domain = material.identity().trust_domain().to_string();
        let accept =
            Accept::trust_domain(&trust_domain).identities(endpoint.identity.as_deref().cloned());
        let config = match material.client_config(accept, endpoint.http2) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the mTLS client configuration");
                return None;
            }
        };
        let sni = key.0.replace('|', "_.");
        let server_name = ServerName::try_from(sni)
            .unwrap_or_else(|_| ServerName::IpAddress(endpoint.addr.ip().into()));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&key, stamp).hash(&mut h);
        let tls = ClientTls {
            config,
            server_name,
            key: h.finish() | 1,
        };
        let mut cache = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if cache.0 != stamp {
            // a rotated certificate: the old configurations go
            *cache = (stamp, HashMap::new());
        }
        cache.1.insert(key, tls.clone());
        Some(tls)
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

//! TLS origination to an upstream as a DestinationRule's `tls` says (`SIMPLE`, `MUTUAL`).
//!
//! Istio's "Egress TLS Origination" task: the application sends plain HTTP, the sidecar
//! speaks TLS to the upstream. [`Origination`] is one `ClientTLSSettings` made ready to use:
//! the files read once (`caCertificates`, `clientCertificate`, `privateKey`), the rustls
//! client configurations built (ALPN `h2` for an HTTP/2 upstream, `http/1.1` otherwise), and
//! the server checked as Istio's `constructUpstreamTLS` (`pilot/pkg/networking/core/
//! cluster_tls.go`) has Envoy check it:
//!
//! | settings | trust roots | server certificate must carry |
//! |---|---|---|
//! | `insecureSkipVerify: true` | none: not verified | anything |
//! | `subjectAltNames` | `caCertificates`, else the system's | one of them (DNS, URI, IP; exact, `*.` DNS wildcards in the certificate) |
//! | no `sni`, no `subjectAltNames` | same | the request's host (Envoy's `auto_sni` and `auto_san_validation`) |
//! | `sni`, no `subjectAltNames` | same | nothing more than a trusted chain (no auto SAN validation) |
//!
//! The SNI sent is `sni`, else the request's host without its port (`auto_sni`), else none
//! (an endpoint reached by address). A ServiceEntry's `subjectAltNames` stand in for the
//! DestinationRule's when it sets none ([`Origination::with_subject_alt_names`]), as Istio
//! does for services of its external registry.
//!
//! Every [`Origination`] has its own [`id`](Origination::id), so that pooled connections made
//! for one set of settings never serve another (the connector keys its pool by it).
//!
//! ```
//! use mesh_core::model::networking::{ClientTlsMode, ClientTlsSettings};
//! use mesh_tls::origination::Origination;
//!
//! let tls = ClientTlsSettings {
//!     mode: ClientTlsMode::Simple,
//!     insecure_skip_verify: Some(true),
//!     ..Default::default()
//! };
//! let o = Origination::new(&tls).unwrap();
//! assert_eq!(o.config(true).alpn_protocols, [b"h2".to_vec()]);
//! let name = o.server_name(Some("api.example.com:443"), "10.0.0.1".parse().unwrap());
//! assert_eq!(name.to_str(), "api.example.com");
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mesh_core::model::networking::{ClientTlsMode, ClientTlsSettings};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use crate::config::{ALPN, certs};
use crate::verify::provider;

/// Why a DestinationRule's `tls` cannot be used: the field (relative to the `tls` object)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OriginationError {
    /// The field of `ClientTLSSettings` at fault (`caCertificates`, `clientCertificate`,
    /// `privateKey`, `mode`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// One DestinationRule `tls` (`SIMPLE` or `MUTUAL`) ready to originate TLS (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct Origination {
    id: u64,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
    material: Arc<Material>,
}

/// What the files gave; kept to rebuild the configurations with other names to check.
struct Material {
    /// `None`: `insecureSkipVerify`.
    roots: Option<Arc<RootCertStore>>,
    client: Option<Arc<CertifiedKey>>,
    subject_alt_names: Vec<String>,
    /// The request's host is checked when no `sni` and no `subjectAltNames` are set.
    auto_san: bool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A string field that is set and not empty.
fn set(o: &Option<String>) -> Option<&str> {
    o.as_deref().filter(|s| !s.is_empty())
}

// === impl Origination ===

impl Origination {
    /// Reads the files `tls` names and builds the configurations. `mode` must be `SIMPLE` or
    /// `MUTUAL`; `credentialName` (a Kubernetes secret, which only gateways read) is refused.
    pub fn new(tls: &ClientTlsSettings) -> Result<Self, OriginationError> {
        let err = |field: &'static str, message: String| OriginationError { field, message };
        let mutual = match tls.mode {
            ClientTlsMode::Simple => false,
            ClientTlsMode::Mutual => true,
            other => {
                return Err(err(
                    "mode",
                    format!("{other:?} does not originate TLS from files"),
                ));
            }
        };
        if set(&tls.credential_name).is_some() {
            return Err(err(
                "credentialName",
                "credentialName (a Kubernetes secret) is read by gateways only; a sidecar \
                 takes clientCertificate, privateKey and caCertificates files"
                    .into(),
            ));
        }
        let insecure = tls.insecure_skip_verify == Some(true);
        let roots = if insecure {
            None
        } else {
            Some(match set(&tls.ca_certificates) {
                Some(path) => {
                    let pem = read(path).map_err(|m| err("caCertificates", m))?;
                    let mut roots = RootCertStore::empty();
                    for c in
                        certs(&pem).map_err(|e| err("caCertificates", format!("{path}: {e}")))?
                    {
                        roots
                            .add(c)
                            .map_err(|e| err("caCertificates", format!("{path}: {e}")))?;
                    }
                    Arc::new(roots)
                }
                None => system_roots(),
            })
        };
        let client = if mutual {
            let cert_path = set(&tls.client_certificate).ok_or_else(|| {
                err(
                    "clientCertificate",
                    "client certificate required for mutual tls".into(),
                )
            })?;
            let key_path = set(&tls.private_key)
                .ok_or_else(|| err("privateKey", "private key required for mutual tls".into()))?;
            let chain = certs(&read(cert_path).map_err(|m| err("clientCertificate", m))?)
                .map_err(|e| err("clientCertificate", format!("{cert_path}: {e}")))?;
            let key_pem = read(key_path).map_err(|m| err("privateKey", m))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| err("privateKey", format!("{key_path}: {e}")))?;
            let signing = provider()
                .key_provider
                .load_private_key(key)
                .map_err(|e| err("privateKey", format!("{key_path}: {e}")))?;
            let ck = CertifiedKey::new(chain, signing);
            ck.keys_match().map_err(|e| {
                err(
                    "privateKey",
                    format!("{key_path} does not match the certificate {cert_path}: {e}"),
                )
            })?;
            Some(Arc::new(ck))
        } else {
            None
        };
        let sni = set(&tls.sni)
            .map(|s| {
                ServerName::try_from(s.to_string())
                    .map_err(|e| err("sni", format!("{s:?} is not a server name: {e}")))
            })
            .transpose()?;
        let material = Material {
            roots,
            client,
            subject_alt_names: tls.subject_alt_names.clone(),
            auto_san: sni.is_none() && tls.subject_alt_names.is_empty(),
        };
        Self::build(material, sni)
    }

    fn build(
        material: Material,
        sni: Option<ServerName<'static>>,
    ) -> Result<Self, OriginationError> {
        let material = Arc::new(material);
        let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, OriginationError> {
            let verifier = Arc::new(OriginVerifier {
                material: material.clone(),
                algorithms: provider().signature_verification_algorithms,
            });
            let builder = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| OriginationError {
                    field: "mode",
                    message: e.to_string(),
                })?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let mut cfg = match &material.client {
                Some(ck) => builder.with_client_cert_resolver(Arc::new(
                    rustls::sign::SingleCertAndKey::from(ck.clone()),
                )),
                None => builder.with_no_client_auth(),
            };
            cfg.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(cfg))
        };
        Ok(Origination {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            h1: config(ALPN[1])?,
            h2: config(ALPN[0])?,
            sni,
            material,
        })
    }

    /// The same settings, checking the server against `names` when the DestinationRule sets
    /// no `subjectAltNames` (a ServiceEntry's `subjectAltNames`, as Istio's
    /// `constructUpstreamTLS` uses for external services). A new [`id`](Self::id).
    pub fn with_subject_alt_names(&self, names: &[String]) -> Self {
        if names.is_empty() || !self.material.subject_alt_names.is_empty() {
            return self.clone();
        }
        let m = &self.material;
        let material = Material {
            roots: m.roots.clone(),
            client: m.client.clone(),
            subject_alt_names: names.to_vec(),
            auto_san: false,
        };
        // the same provider and versions as `new` built with: cannot fail now (and would
        // fail closed)
        Self::build(material, self.sni.clone()).unwrap_or_else(|_| Self::refusing())
    }

    /// A configuration that refuses every server: what a connection gets when its TLS
    /// settings cannot be used (security fails closed, as a `503 UF`).
    pub fn refusing() -> Self {
        let material = Material {
            roots: Some(Arc::new(RootCertStore::empty())),
            client: None,
            subject_alt_names: Vec::new(),
            auto_san: false,
        };
        Self::build(material, None).unwrap_or_else(|_| unreachable!("safe defaults are valid"))
    }

    /// Names these settings for connection pooling: distinct per `Origination`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the server is not verified at all (`insecureSkipVerify`).
    pub fn insecure(&self) -> bool {
        self.material.roots.is_none()
    }

    /// Whether the SNI comes from the request (no `sni` set): then connections are pooled
    /// per host too.
    pub fn auto_sni(&self) -> bool {
        self.sni.is_none()
    }

    /// The client configuration for an HTTP/2 (`http2`) or HTTP/1.1 upstream.
    pub fn config(&self, http2: bool) -> &Arc<ClientConfig> {
        if http2 { &self.h2 } else { &self.h1 }
    }

    /// The server name to send: `sni`, else `host` (a request's `Host`/`:authority`, its
    /// port dropped), else the endpoint's address (no SNI is sent for an address).
    pub fn server_name(&self, host: Option<&str>, addr: IpAddr) -> ServerName<'static> {
        if let Some(s) = &self.sni {
            return s.clone();
        }
        host.map(strip_port)
            .filter(|h| !h.is_empty())
            .and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or(ServerName::IpAddress(addr.into()))
    }
}

impl fmt::Debug for Origination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origination")
            .field("id", &self.id)
            .field("sni", &self.sni)
            .field("insecure", &self.insecure())
            .field("mutual", &self.material.client.is_some())
            .field("subject_alt_names", &self.material.subject_alt_names)
            .finish()
    }
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets off).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(Path::new(path)).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The system's trust roots (Istio's `caCertificates` default, "system"), read once. None
/// found: an empty store (every server refused, a `503 UF`) and a log line, rather than a
/// configuration that validates differently from one machine to another.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    errors = found.errors.len(),
                    "no system trust roots found: TLS origination without caCertificates will refuse every server"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

// === impl OriginVerifier ===

/// Checks the upstream's certificate as the [module docs](self) say.
struct OriginVerifier {
    material: Arc<Material>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for OriginVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginVerifier")
            .field("subject_alt_names", &self.material.subject_alt_names)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for OriginVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(roots) = &self.material.roots else {
            // insecureSkipVerify (warned about at load)
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let m = &self.material;
        if !m.subject_alt_names.is_empty() {
            if !carries_one_of(end_entity, &m.subject_alt_names) {
                // a certificate error (the connector's `CERTIFICATE_VERIFY_FAILED`)
                return Err(crate::verify::rejected(format_args!(
                    "the server certificate carries none of the subjectAltNames {:?}",
                    m.subject_alt_names
                )));
            }
        } else if m.auto_san && matches!(server_name, ServerName::DnsName(_)) {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the certificate's SAN extension holds one of `names` (Envoy's
/// `match_typed_subject_alt_names` with exact matchers, as Istio fills it: a DNS SAN
/// `*.example.com` in the certificate matches `a.example.com`).
pub(crate) fn carries_one_of(cert: &CertificateDer<'_>, names: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|g| match g {
        GeneralName::DNSName(d) => names.iter().any(|n| dns_matches(d, n)),
        GeneralName::URI(u) => names.iter().any(|n| n == u),
        GeneralName::RFC822Name(e) => names.iter().any(|n| n == e),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            };
            ip.is_some_and(|ip| names.iter().any(|n| n.parse::<IpAddr>() == Ok(ip)))
        }
        _ => false,
    })
}

/// A certificate's DNS SAN `pattern` against an expected name (case-insensitive; a leading
/// `*.` label matches one label).
fn dns_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((first, rest))) => {
            !first.is_empty() && !first.contains('*') && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_dropped_from_the_host() {
        assert_eq!(strip_port("a.example.com:8443"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn dns_wildcards_match_one_label() {
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(dns_matches("A.Example.com", "a.example.COM"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("a.example.com", "b.example.com"));
    }

    #[test]
    fn mutual_without_a_client_certificate_names_the_field() {
        // Istio's validateTLSSettings: "client certificate required for mutual tls"
        let tls = ClientTlsSettings {
            mode: ClientTlsMode::Mutual,
            insecure_skip_verify: Some(true),
            ..Default::default()
        };
        let e = Origination::new(&tls).unwrap_err();
        assert_eq!(e.field, "clientCertificate");
    }

    #[test]
    fn each_origination_has_its_own_id() {
        let tls = ClientTlsSettings {
            mode: ClientTlsMode::Simple,
            insecure_skip_verify: Some(true),
            ..Default::default()
        };
        let a = Origination::new(&tls).unwrap();
        let b = Origination::new(&tls).unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.with_subject_alt_names(&["x".into()]).id(), a.id());
        // the DestinationRule's own subjectAltNames win over a ServiceEntry's
        let named = Origination::new(&ClientTlsSettings {
            subject_alt_names: vec!["a.example.com".into()],
            insecure_skip_verify: None,
            ca_certificates: None,
            ..tls
        });
        // no caCertificates: the system roots (possibly none on this machine: still built)
        let named = named.unwrap();
        assert_eq!(named.with_subject_alt_names(&["x".into()]).id(), named.id());
    }
}

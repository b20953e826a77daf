//! TLS termination as a `Gateway` server's `tls` says (`SIMPLE`, `MUTUAL`,
//! `OPTIONAL_MUTUAL`).
//!
//! Istio's "Secure Gateways" task: the gateway presents the server's certificate and, with
//! `MUTUAL`, requires a client certificate signed by `caCertificates`. [`ServerTermination`]
//! is one server's `tls` made ready (files read and checked, [`TerminationError`] naming the
//! field otherwise); [`PortTermination`] is the rustls server configuration of one gateway
//! port, whose servers it picks by SNI as Envoy's filter chains match `server_names`:
//!
//! | the client's SNI | certificate presented |
//! |---|---|
//! | a host of a server (exact, ASCII case-insensitively) | that server's |
//! | under a wildcard host (`*.example.com`) | the longest such wildcard's server's |
//! | anything, or none, with a server whose host is `*` | that server's |
//! | otherwise | none: the handshake fails (Envoy finds no filter chain) |
//!
//! What rustls can do, and Envoy's options mapped onto it (security fails closed: what it
//! cannot do is an error, never a silent weakening):
//!
//! - `minProtocolVersion`/`maxProtocolVersion`: TLS 1.2 and 1.3 (Istio's gateway default is
//!   1.2 to 1.3). A minimum of 1.0 or 1.1 serves from 1.2 (stricter); a maximum below 1.2 is
//!   refused.
//! - `cipherSuites` (TLS 1.2 only, as in Envoy): the ECDHE AES-GCM and ChaCha20-Poly1305
//!   suites; any other (CBC, static RSA key exchange, 3DES) is refused.
//! - `subjectAltNames` (`MUTUAL`): the client certificate must carry one (DNS, URI, IP,
//!   email; Envoy's `match_typed_subject_alt_names` with exact matchers), checked during the
//!   handshake.
//! - The servers of one port share one client verification (mode, CA, names), protocol
//!   versions and cipher suites: rustls chooses them before it reads the SNI. Servers that
//!   differ there are refused ([`PortTermination::new`]).
//!
//! ALPN offers `h2` and `http/1.1`, as Envoy's gateway listeners do.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_core::model::networking::{ServerTlsMode, ServerTlsSettings, TlsProtocol};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};

use crate::config::{ALPN, certs};
use crate::verify::provider;

/// Why a server's `tls` cannot be served: the field (relative to the `tls` object) and the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TerminationError {
    /// The field of `ServerTLSSettings` at fault (`serverCertificate`, `caCertificates`,
    /// `cipherSuites[1]`, …).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The files one server's certificate comes from: its `serverCertificate`, `privateKey`
/// and `caCertificates`, or what its `credentialName` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain (PEM, leaf first).
    pub certificate: PathBuf,
    /// The private key (PEM).
    pub private_key: PathBuf,
    /// The CA certificates that client certificates must chain to (`MUTUAL`).
    pub ca_certificates: Option<PathBuf>,
    /// The field each file was named by, for errors (`serverCertificate`, or
    /// `credentialName` when it came from a credential).
    pub fields: [&'static str; 3],
}

/// One server's `tls`, ready to serve (see the [module docs](self)).
#[derive(Clone)]
pub struct ServerTermination {
    /// The SNI names this server answers (its hosts without their namespace part).
    hosts: Vec<String>,
    key: Arc<CertifiedKey>,
    policy: Policy,
}

/// What the servers of one port must share.
#[derive(Clone)]
struct Policy {
    /// `None`: no client certificate asked for.
    client: Option<ClientAuth>,
    versions: Vec<&'static SupportedProtocolVersion>,
    /// Empty: rustls's defaults.
    tls12_suites: Vec<SupportedCipherSuite>,
}

#[derive(Clone)]
struct ClientAuth {
    roots: Arc<RootCertStore>,
    /// The CA file's bytes (compared between servers of one port).
    ca_pem: Arc<str>,
    required: bool,
    subject_alt_names: Vec<String>,
}

/// The rustls configuration of one gateway port: its servers' certificates by SNI.
#[derive(Debug, Clone)]
pub struct PortTermination {
    config: Arc<ServerConfig>,
}

/// The rustls suite of an Envoy (BoringSSL) TLS 1.2 cipher suite name, if rustls has it.
fn cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::*;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

fn err(field: impl Into<String>, message: impl Into<String>) -> TerminationError {
    TerminationError {
        field: field.into(),
        message: message.into(),
    }
}

fn read(path: &Path, field: &str) -> Result<String, TerminationError> {
    std::fs::read_to_string(path)
        .map_err(|e| err(field, format!("cannot read {}: {e}", path.display())))
}

// === impl ServerTermination ===

impl ServerTermination {
    /// Reads `files` and checks `tls` for a server answering `hosts` (as written: `ns/host`
    /// forms are accepted and their namespace part dropped). `tls.mode` must be `SIMPLE`,
    /// `MUTUAL` or `OPTIONAL_MUTUAL`.
    pub fn new(
        tls: &ServerTlsSettings,
        files: &ServerFiles,
        hosts: &[String],
    ) -> Result<Self, TerminationError> {
        let mode = tls.mode.unwrap_or_default();
        let mutual = match mode {
            ServerTlsMode::Simple => None,
            ServerTlsMode::Mutual => Some(true),
            ServerTlsMode::OptionalMutual => Some(false),
            other => return Err(err("mode", format!("{other:?} does not terminate TLS"))),
        };
        if tls.ca_crl.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(err(
                "caCrl",
                "certificate revocation lists are not checked by this version (security fails closed)",
            ));
        }
        if !tls.verify_certificate_spki.is_empty() {
            return Err(err(
                "verifyCertificateSpki",
                "client certificate SPKI pins are not checked by this version (security fails closed)",
            ));
        }
        if !tls.verify_certificate_hash.is_empty() {
            return Err(err(
                "verifyCertificateHash",
                "client certificate hash pins are not checked by this version (security fails closed)",
            ));
        }
        let [cert_field, key_field, ca_field] = files.fields;
        let chain = certs(&read(&files.certificate, cert_field)?)
            .map_err(|e| err(cert_field, format!("{}: {e}", files.certificate.display())))?;
        let key_pem = read(&files.private_key, key_field)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| err(key_field, format!("{}: {e}", files.private_key.display())))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| err(key_field, format!("{}: {e}", files.private_key.display())))?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| {
            err(
                key_field,
                format!(
                    "{} does not match the certificate {}: {e}",
                    files.private_key.display(),
                    files.certificate.display()
                ),
            )
        })?;
        let client = match mutual {
            None => None,
            Some(required) => {
                let path = files.ca_certificates.as_ref().ok_or_else(|| {
                    err(
                        ca_field,
                        "MUTUAL needs the CA certificates that client certificates chain to",
                    )
                })?;
                let pem = read(path, ca_field)?;
                let mut roots = RootCertStore::empty();
                for c in
                    certs(&pem).map_err(|e| err(ca_field, format!("{}: {e}", path.display())))?
                {
                    roots
                        .add(c)
                        .map_err(|e| err(ca_field, format!("{}: {e}", path.display())))?;
                }
                Some(ClientAuth {
                    roots: Arc::new(roots),
                    ca_pem: pem.into(),
                    required,
                    subject_alt_names: tls.subject_alt_names.clone(),
                })
            }
        };
        let versions = versions(tls)?;
        let mut tls12_suites = Vec::new();
        for (i, name) in tls.cipher_suites.iter().enumerate() {
            match cipher_suite(name) {
                Some(s) => tls12_suites.push(s),
                None => {
                    return Err(err(
                        format!("cipherSuites[{i}]"),
                        format!(
                            "{name} is not a cipher suite this version offers (the ECDHE AES-GCM and CHACHA20-POLY1305 suites are); security fails closed"
                        ),
                    ));
                }
            }
        }
        let hosts = hosts
            .iter()
            .map(|h| {
                h.split_once('/')
                    .map_or(h.as_str(), |(_, h)| h)
                    .to_ascii_lowercase()
            })
            .collect();
        Ok(ServerTermination {
            hosts,
            key: Arc::new(key),
            policy: Policy {
                client,
                versions,
                tls12_suites,
            },
        })
    }
}

impl fmt::Debug for ServerTermination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTermination")
            .field("hosts", &self.hosts)
            .field("mutual", &self.policy.client.as_ref().map(|c| c.required))
            .finish_non_exhaustive()
    }
}

/// `minProtocolVersion`/`maxProtocolVersion` as rustls versions.
fn versions(
    tls: &ServerTlsSettings,
) -> Result<Vec<&'static SupportedProtocolVersion>, TerminationError> {
    use TlsProtocol::*;
    let min = tls.min_protocol_version.unwrap_or_default();
    let max = tls.max_protocol_version.unwrap_or_default();
    if matches!(max, TlsV1_0 | TlsV1_1) {
        return Err(err(
            "maxProtocolVersion",
            "TLS 1.0 and 1.1 are not offered by this version (TLS 1.2 and 1.3 are)",
        ));
    }
    let tls12 = !matches!(min, TlsV1_3);
    let tls13 = !matches!(max, TlsV1_2);
    if !tls12 && !tls13 {
        return Err(err(
            "maxProtocolVersion",
            "maxProtocolVersion is below minProtocolVersion",
        ));
    }
    let mut v = Vec::new();
    if tls13 {
        v.push(&rustls::version::TLS13);
    }
    if tls12 {
        v.push(&rustls::version::TLS12);
    }
    Ok(v)
}

// === impl PortTermination ===

impl PortTermination {
    /// The configuration of a port whose servers are `servers` (in order: an SNI several
    /// servers answer is the first's). Fails when the servers differ in client verification,
    /// protocol versions or cipher suites (rustls fixes them before it reads the SNI).
    pub fn new(servers: Vec<ServerTermination>) -> Result<Self, String> {
        let Some(first) = servers.first() else {
            return Err("a TLS port without a server".into());
        };
        let policy = first.policy.clone();
        for s in &servers[1..] {
            let same_client = match (&policy.client, &s.policy.client) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.required == b.required
                        && a.ca_pem == b.ca_pem
                        && a.subject_alt_names == b.subject_alt_names
                }
                _ => false,
            };
            let same_suites = policy.tls12_suites.len() == s.policy.tls12_suites.len()
                && policy
                    .tls12_suites
                    .iter()
                    .zip(&s.policy.tls12_suites)
                    .all(|(a, b)| a.suite() == b.suite());
            let same_versions = policy.versions.len() == s.policy.versions.len()
                && policy
                    .versions
                    .iter()
                    .zip(&s.policy.versions)
                    .all(|(a, b)| a.version == b.version);
            if !same_client || !same_suites || !same_versions {
                return Err("the TLS servers of one port must share their mode, caCertificates, subjectAltNames, protocol versions and cipher suites in this version (one rustls configuration per port); put the others on a port of their own".into());
            }
        }
        let mut prov: CryptoProvider = (*provider()).clone();
        if !policy.tls12_suites.is_empty() {
            prov.cipher_suites.retain(|s| match s {
                SupportedCipherSuite::Tls13(_) => true,
                SupportedCipherSuite::Tls12(_) => {
                    policy.tls12_suites.iter().any(|p| p.suite() == s.suite())
                }
            });
        }
        let builder = ServerConfig::builder_with_provider(Arc::new(prov))
            .with_protocol_versions(&policy.versions)
            .map_err(|e| e.to_string())?;
        let resolver = Arc::new(SniResolver::new(&servers));
        let mut cfg = match &policy.client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let b = WebPkiClientVerifier::builder_with_provider(c.roots.clone(), provider());
                let b = if c.required {
                    b
                } else {
                    b.allow_unauthenticated()
                };
                let inner = b.build().map_err(|e| e.to_string())?;
                builder.with_client_cert_verifier(Arc::new(SanVerifier {
                    inner,
                    names: c.subject_alt_names.clone(),
                }))
            }
        }
        .with_cert_resolver(resolver);
        cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(PortTermination {
            config: Arc::new(cfg),
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

/// Picks a server's certificate by SNI (exact, longest wildcard, `*`).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Suffixes (`.example.com`) longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    any: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(servers: &[ServerTermination]) -> Self {
        let mut r = SniResolver {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: None,
        };
        for s in servers {
            for h in &s.hosts {
                if h == "*" {
                    r.any.get_or_insert_with(|| s.key.clone());
                } else if let Some(suffix) = h.strip_prefix('*') {
                    if !r.wildcard.iter().any(|(x, _)| x == suffix) {
                        r.wildcard.push((suffix.to_string(), s.key.clone()));
                    }
                } else {
                    r.exact.entry(h.clone()).or_insert_with(|| s.key.clone());
                }
            }
        }
        r.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        r
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            let sni = sni.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&sni) {
                return Some(k.clone());
            }
            if let Some((_, k)) = self
                .wildcard
                .iter()
                .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(suffix.as_str()))
            {
                return Some(k.clone());
            }
        }
        self.any.clone()
    }
}

/// WebPKI client verification, then the client's SANs against `subjectAltNames`.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.names.is_empty() && !crate::origination::carries_one_of(end_entity, &self.names) {
            return Err(Error::General(format!(
                "the client certificate carries none of the subjectAltNames {:?}",
                self.names
            )));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tls(min: Option<TlsProtocol>, max: Option<TlsProtocol>) -> ServerTlsSettings {
        ServerTlsSettings {
            min_protocol_version: min,
            max_protocol_version: max,
            ..Default::default()
        }
    }

    fn names(v: &[&'static SupportedProtocolVersion]) -> Vec<rustls::ProtocolVersion> {
        v.iter().map(|v| v.version).collect()
    }

    #[test]
    fn protocol_versions_map_onto_tls12_and_tls13() {
        use TlsProtocol::*;
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(
            names(&versions(&tls(None, None)).unwrap()),
            [TLSv1_3, TLSv1_2]
        );
        // a minimum below 1.2 serves from 1.2 (stricter, never weaker)
        assert_eq!(
            names(&versions(&tls(Some(TlsV1_0), None)).unwrap()),
            [TLSv1_3, TLSv1_2]
        );
        assert_eq!(
            names(&versions(&tls(Some(TlsV1_3), None)).unwrap()),
            [TLSv1_3]
        );
        assert_eq!(
            names(&versions(&tls(None, Some(TlsV1_2))).unwrap()),
            [TLSv1_2]
        );
        let e = versions(&tls(None, Some(TlsV1_1))).unwrap_err();
        assert_eq!(e.field, "maxProtocolVersion");
        let e = versions(&tls(Some(TlsV1_3), Some(TlsV1_2))).unwrap_err();
        assert_eq!(e.field, "maxProtocolVersion");
    }

    #[test]
    fn only_the_suites_rustls_has_are_mapped() {
        assert!(cipher_suite("ECDHE-RSA-AES128-GCM-SHA256").is_some());
        assert!(cipher_suite("ECDHE-ECDSA-CHACHA20-POLY1305").is_some());
        for weak in [
            "AES128-SHA",
            "DES-CBC3-SHA",
            "ECDHE-RSA-AES128-SHA",
            "AES256-GCM-SHA384",
        ] {
            assert!(cipher_suite(weak).is_none(), "{weak}");
        }
    }

    #[test]
    fn pins_and_revocation_lists_are_refused_before_any_file_is_read() {
        let files = ServerFiles {
            certificate: "/nonexistent.pem".into(),
            private_key: "/nonexistent.key".into(),
            ca_certificates: None,
            fields: ["serverCertificate", "privateKey", "caCertificates"],
        };
        let base = ServerTlsSettings {
            mode: Some(ServerTlsMode::Mutual),
            ..Default::default()
        };
        for (t, field) in [
            (
                ServerTlsSettings {
                    ca_crl: Some("/crl.pem".into()),
                    ..base.clone()
                },
                "caCrl",
            ),
            (
                ServerTlsSettings {
                    verify_certificate_spki: vec!["x".into()],
                    ..base.clone()
                },
                "verifyCertificateSpki",
            ),
            (
                ServerTlsSettings {
                    verify_certificate_hash: vec!["x".into()],
                    ..base.clone()
                },
                "verifyCertificateHash",
            ),
        ] {
            let e = ServerTermination::new(&t, &files, &[]).unwrap_err();
            assert_eq!(e.field, field);
        }
        let e = ServerTermination::new(&base, &files, &[]).unwrap_err();
        assert_eq!(e.field, "serverCertificate", "then the files");
    }
}

//! rustls certificate verifiers for SPIFFE identities, as Istio's sidecars check peers.
//!
//! A workload certificate names no host: its identity is its SPIFFE URI SAN. So the usual
//! web PKI check (the server's name in its certificate) does not apply; instead:
//!
//! - [`SpiffeServerVerifier`] (a client checking a server): the chain leads to the trust
//!   bundle (signatures, validity dates, key usage `serverAuth`), the leaf carries one SPIFFE
//!   identity in a trusted trust domain, and, when the endpoint's identities are known (its
//!   service account, ServiceEntry `subjectAltNames`), it is one of them (Envoy's
//!   `match_typed_subject_alt_names`, which Istio fills the same way). The name rustls is given
//!   (SNI) is not compared with the certificate.
//! - [`SpiffeClientVerifier`] (a server checking a client, mTLS): the chain leads to the trust
//!   bundle (key usage `clientAuth`) and the leaf carries one SPIFFE identity in a trusted
//!   trust domain. Whether that identity may call is authorization's business
//!   (AuthorizationPolicy), after the handshake.
//!
//! Signatures are checked with the one crypto provider of the tree (ring).

use std::fmt;
use std::sync::Arc;

use mesh_core::identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use crate::peer::{PeerError, spiffe_id};

/// The crypto provider of the tree: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which SPIFFE identities a verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// Trusted trust domains (the workload's own, and its aliases).
    pub trust_domains: Vec<String>,
    /// The identities expected of the peer; empty: any identity of a trusted domain.
    pub identities: Vec<SpiffeId>,
}

impl Accept {
    /// Any identity of `trust_domain`.
    pub fn trust_domain(trust_domain: &str) -> Self {
        Accept {
            trust_domains: vec![trust_domain.to_string()],
            identities: Vec::new(),
        }
    }

    /// Only `identities` (which must be in trusted domains too).
    pub fn identities(mut self, identities: impl IntoIterator<Item = SpiffeId>) -> Self {
        self.identities = identities.into_iter().collect();
        self
    }

    /// Checks the leaf certificate's identity; returns it.
    pub fn check(&self, leaf: &CertificateDer<'_>) -> Result<SpiffeId, PeerError> {
        let id = spiffe_id(leaf)?;
        if !self.trust_domains.iter().any(|t| t == id.trust_domain()) {
            return Err(PeerError::ForeignTrustDomain {
                id: id.to_string(),
                trusted: self.trust_domains.join(","),
            });
        }
        if !self.identities.is_empty() && !self.identities.contains(&id) {
            return Err(PeerError::Unexpected {
                id: id.to_string(),
                expected: self
                    .identities
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        Ok(id)
    }
}

fn peer_error(e: PeerError) -> Error {
    // rustls sends the peer a bad_certificate alert for General errors
    Error::General(e.to_string())
}

/// A server's identity not accepted: a certificate error (what the connector reports as
/// Envoy's `CERTIFICATE_VERIFY_FAILED`), not a `General` one.
fn server_identity_error(e: PeerError) -> Error {
    rejected(e)
}

/// A server certificate not accepted by a check of this crate, as rustls's
/// `CertificateError::Other` (a certificate error, which the connector names as Envoy's
/// `CERTIFICATE_VERIFY_FAILED`; rustls sends the peer a `bad_certificate` alert for it).
pub(crate) fn rejected(why: impl fmt::Display) -> Error {
    Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        std::sync::Arc::new(Rejected(why.to_string())),
    )))
}

/// Why a certificate was not accepted; its `Debug` is its message, which rustls shows an
/// `Other` certificate error by.
struct Rejected(String);

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

/// Checks a server's certificate as a sidecar does (see the [module docs](self)).
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    accept: Accept,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("roots", &self.roots.len())
            .field("accept", &self.accept)
            .finish()
    }
}

impl SpiffeServerVerifier {
    /// A verifier trusting `roots` and accepting what `accept` says.
    pub fn new(roots: Arc<RootCertStore>, accept: Accept) -> Self {
        SpiffeServerVerifier {
            roots,
            accept,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        self.accept
            .check(end_entity)
            .map_err(server_identity_error)?;
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

/// Checks a client's certificate as a sidecar's inbound listener does in mTLS (see the
/// [module docs](self)).
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    accept: Accept,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("accept", &self.accept)
            .finish_non_exhaustive()
    }
}

impl SpiffeClientVerifier {
    /// A verifier trusting `roots`; `mandatory`: a client without a certificate is refused
    /// (STRICT); otherwise it may connect without one.
    pub fn new(
        roots: Arc<RootCertStore>,
        accept: Accept,
        mandatory: bool,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
        let inner = if mandatory {
            builder.build()?
        } else {
            builder.allow_unauthenticated().build()?
        };
        Ok(SpiffeClientVerifier { inner, accept })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // no hints: the bundle's subjects tell a client nothing it needs (Envoy sends none
        // for Istio's inbound listeners either)
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.accept.check(end_entity).map_err(peer_error)?;
        Ok(ClientCertVerified::assertion())
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

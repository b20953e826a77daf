//! A peer's SPIFFE identity, read from its certificate.
//!
//! Istio's workload certificates carry their identity in exactly one URI SAN,
//! `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`; nothing else in them (subject, DNS names) is an
//! identity. [`spiffe_id`] reads it from a DER certificate.
//!
//! ```
//! use mesh_core::identity::SpiffeId;
//! use mesh_tls::ca::MeshCa;
//! use mesh_tls::peer::spiffe_id;
//!
//! let ca = MeshCa::generate("cluster.local").unwrap();
//! let id = SpiffeId::new("cluster.local", "default", "reviews");
//! let cert = ca.issue(&id, std::time::Duration::from_secs(3600)).unwrap();
//! let der = mesh_tls::config::certs(&cert.chain_pem).unwrap();
//! assert_eq!(spiffe_id(&der[0]).unwrap(), id);
//! ```

use mesh_core::identity::SpiffeId;
use rustls::pki_types::CertificateDer;

/// Why a certificate has no usable SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The certificate cannot be parsed.
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    /// The certificate has no `spiffe://` URI SAN.
    #[error("the certificate carries no SPIFFE identity (no spiffe:// URI SAN)")]
    NoSpiffeId,
    /// The certificate has more than one `spiffe://` URI SAN (SPIFFE X.509-SVID §2: exactly
    /// one).
    #[error("the certificate carries several SPIFFE identities")]
    SeveralSpiffeIds,
    /// The URI SAN is not an Istio identity (`spiffe://td/ns/<ns>/sa/<sa>`).
    #[error("{0}")]
    Malformed(String),
    /// The identity's trust domain is not one this workload trusts.
    #[error("SPIFFE identity {id} is not in a trusted trust domain ({trusted})")]
    ForeignTrustDomain {
        /// The peer's identity.
        id: String,
        /// The trust domains accepted, comma-separated.
        trusted: String,
    },
    /// The identity is not one of those expected for the endpoint.
    #[error("SPIFFE identity {id} is not among the expected ones ({expected})")]
    Unexpected {
        /// The peer's identity.
        id: String,
        /// The identities expected, comma-separated.
        expected: String,
    },
}

/// The SPIFFE identity in `cert`'s URI SAN (exactly one `spiffe://` URI, SPIFFE X.509-SVID
/// §2), as an Istio identity.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerError::Unparsable(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| PeerError::Unparsable(e.to_string()))?
        .ok_or(PeerError::NoSpiffeId)?;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && uri.starts_with("spiffe://")
        {
            if found.is_some() {
                return Err(PeerError::SeveralSpiffeIds);
            }
            found = Some(*uri);
        }
    }
    let uri = found.ok_or(PeerError::NoSpiffeId)?;
    uri.parse::<SpiffeId>()
        .map_err(|e| PeerError::Malformed(e.to_string()))
}

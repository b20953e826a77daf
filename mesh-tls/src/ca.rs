//! A mesh certificate authority: a self-signed root (or an intermediate under it) that issues
//! SPIFFE workload certificates.
//!
//! What istiod's CA does for a mesh, small enough for tests, demos and a single-cluster mesh
//! without istiod: a root key and certificate, optionally intermediate CAs signed by it (as
//! Istio's "plug-in CA" setups use, one per cluster), and leaf certificates whose only
//! identity is a URI SAN `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` (Istio's format), usable
//! for both TLS client and server authentication. Keys are ECDSA P-256 (rcgen's default with
//! ring). The CA's trust domain is its certificate's organisation (`O=`), as in Istio's
//! self-signed CA.
//!
//! ```
//! use mesh_core::identity::SpiffeId;
//! use mesh_tls::ca::MeshCa;
//!
//! let ca = MeshCa::generate("cluster.local").unwrap();
//! let id = SpiffeId::new("cluster.local", "default", "reviews");
//! let cert = ca.issue(&id, std::time::Duration::from_secs(24 * 3600)).unwrap();
//! assert!(cert.chain_pem.contains("BEGIN CERTIFICATE"));
//! // the CA can be saved and loaded again
//! let again = MeshCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
//! assert!(again.issue(&id, std::time::Duration::from_secs(60)).is_ok());
//! ```

use std::time::{Duration, SystemTime};

use mesh_core::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Key or certificate generation, parsing or signing failed.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The SPIFFE identity cannot be a URI SAN.
    #[error("invalid identity: {0}")]
    Identity(String),
}

/// A mesh CA: its certificate (a root, or an intermediate) and key.
pub struct MeshCa {
    cert_pem: String,
    /// This CA's certificate followed by its issuers' up to the root (a root: its own).
    chain_pem: String,
    trust_domain: Option<String>,
    issuer: Issuer<'static, KeyPair>,
}

/// A workload certificate issued by a [`MeshCa`].
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    /// PEM: the leaf certificate followed by the CA's chain (intermediates, then the root).
    pub chain_pem: String,
    /// PEM: the leaf's PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

// === impl MeshCa ===

impl MeshCa {
    /// Generates a new root for `trust_domain` (valid for 10 years).
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let params = ca_params(trust_domain, "mesh root CA")?;
        let cert = params.self_signed(&key)?;
        Ok(MeshCa {
            cert_pem: cert.pem(),
            chain_pem: cert.pem(),
            trust_domain: Some(trust_domain.to_string()),
            issuer: Issuer::new(params, key),
        })
    }

    /// Generates an intermediate CA signed by this one, for the same trust domain (valid for
    /// 10 years, and no longer than this CA): it issues workload certificates whose chains
    /// end with this CA's.
    pub fn intermediate(&self, name: &str) -> Result<Self, CaError> {
        let td = self.trust_domain.clone().unwrap_or_default();
        let key = KeyPair::generate()?;
        let params = ca_params(&td, &format!("mesh intermediate CA {name}"))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(MeshCa {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            trust_domain: self.trust_domain.clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The trust domain this CA issues for (its certificate's organisation), when it names
    /// one.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// PEM: this CA's certificate and its issuers' (the chain its leaves append).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }
}

/// The parameters of a CA certificate for `trust_domain` (valid from an hour ago for 10
/// years).
fn ca_params(trust_domain: &str, what: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, format!("{what} ({trust_domain})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = SystemTime::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or(SystemTime::now())
        .into();
    params.not_after = (SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    Ok(params)
}

impl MeshCa {
    /// Loads a CA from its PEM certificate (followed by its issuers', for an intermediate)
    /// and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        const END: &str = "-----END CERTIFICATE-----";
        let first = match cert_pem.find(END) {
            Some(i) => {
                let j = i + END.len();
                let eol =
                    cert_pem[j..].len() - cert_pem[j..].trim_start_matches(['\r', '\n']).len();
                &cert_pem[..j + eol.min(2)]
            }
            None => cert_pem,
        };
        Ok(MeshCa {
            cert_pem: first.to_string(),
            chain_pem: cert_pem.to_string(),
            trust_domain: organisation(cert_pem),
            issuer,
        })
    }

    /// The root certificate (PEM): the trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root private key (PEM). Keep it secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a workload certificate for `id`, valid for `validity` from now (backdated five
    /// minutes for clock skew).
    pub fn issue(&self, id: &SpiffeId, validity: Duration) -> Result<WorkloadCert, CaError> {
        let now = SystemTime::now();
        let from = now.checked_sub(Duration::from_secs(300)).unwrap_or(now);
        self.issue_between(id, from, now + validity)
    }

    /// Issues a workload certificate for `id` valid from `not_before` to `not_after` (tests
    /// make expired and not-yet-valid certificates with it).
    pub fn issue_between(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| CaError::Identity(id.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(WorkloadCert {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The organisation (`O=`) of the first certificate of `pem`.
fn organisation(pem: &str) -> Option<String> {
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    cert.subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_carries_the_spiffe_uri_and_chains_to_the_root() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "cart");
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        // two certificates: leaf, then the root
        assert_eq!(cert.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(cert.chain_pem.ends_with(ca.cert_pem()));
        let leaf = &cert.chain_pem[..cert.chain_pem.find("-----END CERTIFICATE-----").unwrap()];
        let der = pem_body(leaf);
        let uri = b"spiffe://cluster.local/ns/shop/sa/cart";
        assert!(
            der.windows(uri.len()).any(|w| w == uri),
            "URI SAN missing from the leaf"
        );
        assert!(cert.key_pem.contains("PRIVATE KEY"));
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        // minimal base64 decoder for the test (no extra dependency)
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in b64.bytes().filter(|c| *c != b'=') {
            let v = table.iter().position(|t| *t == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}

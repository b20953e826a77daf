//! A small test PKI made at test time (rcgen): a CA and DNS-named server or client
//! certificates, written to files for configurations that name them.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key (PEM).
pub struct Leaf {
    pub chain: String,
    pub key: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Pki {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server (or, `client`, a client) certificate for `names` (DNS SANs).
    pub fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/name`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p.display().to_string()
    }

    /// A TLS client trusting this CA, with `client` as its certificate if given.
    pub fn connector(&self, client: Option<&Leaf>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        let b = rustls::ClientConfig::builder().with_root_certificates(roots);
        let cfg = match client {
            None => b.with_no_client_auth(),
            Some(l) => b
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(l.chain.as_bytes())
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

impl Leaf {
    /// Writes the chain and key to `dir/name.pem` and `dir/name.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (String, String) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.chain).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

//! A workload's TLS material and the rustls configurations made from it, with rotation.
//!
//! [`TlsMaterial`] is what `ProxyBootstrap.spec.identity` names: the certificate chain (leaf
//! first, carrying the workload's SPIFFE identity), its private key, and the trust bundle.
//! From it come the rustls configurations of both directions, with safe defaults: TLS 1.3
//! and 1.2 (for interoperability), the ring provider, ALPN `h2` and `http/1.1`, peers checked
//! by SPIFFE identity ([`crate::verify`]).
//!
//! [`WorkloadIdentity`] keeps the material of a set of files current: [`reload_if_changed`]
//! re-reads them when one changed and swaps the configurations atomically, so new handshakes
//! use the new chain while established connections live on; a file caught half-written (a
//! key that does not match, a chain without identity) is refused and the previous material
//! keeps serving.
//!
//! ```
//! use mesh_core::identity::SpiffeId;
//! use mesh_tls::ca::MeshCa;
//! use mesh_tls::config::TlsMaterial;
//! use mesh_tls::verify::Accept;
//!
//! let ca = MeshCa::generate("cluster.local").unwrap();
//! let id = SpiffeId::new("cluster.local", "default", "reviews");
//! let cert = ca.issue(&id, std::time::Duration::from_secs(3600)).unwrap();
//! let tls = TlsMaterial::from_pem(&cert.chain_pem, &cert.key_pem, ca.cert_pem()).unwrap();
//! assert_eq!(tls.identity(), &id);
//! let server = tls.server_config(true).unwrap(); // STRICT: a client certificate is required
//! assert_eq!(server.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
//! let ratings = SpiffeId::new("cluster.local", "default", "ratings");
//! let client = tls.client_config(Accept::trust_domain("cluster.local").identities([ratings]), false);
//! assert!(client.is_ok());
//! ```
//!
//! [`reload_if_changed`]: WorkloadIdentity::reload_if_changed

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use mesh_core::identity::SpiffeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::peer::{PeerError, spiffe_id};
use crate::verify::{Accept, SpiffeClientVerifier, SpiffeServerVerifier, provider};

/// ALPN protocols offered and accepted: HTTP/2 first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// PEM text holds no item of the kind needed, or is malformed.
    #[error("{what}: {error}")]
    Pem {
        /// What was being read (`certificate chain`, `private key`, `trust bundle`).
        what: &'static str,
        /// The error.
        error: String,
    },
    /// The workload's own certificate carries no usable identity.
    #[error("the workload certificate: {0}")]
    Identity(#[from] PeerError),
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The trust bundle cannot make a client verifier.
    #[error("trust bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Reads every certificate of a PEM text.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificates",
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "certificates",
            error: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A workload's certificate chain, key and trust bundle (see the [module docs](self)).
#[derive(Clone)]
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
    identity: SpiffeId,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity.to_string())
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Material from PEM texts: the chain (leaf first), its key (PKCS#8, SEC1 or PKCS#1), the
    /// trust bundle (one or more CA certificates). Checks that the leaf carries one SPIFFE
    /// identity and that the key matches it.
    pub fn from_pem(chain_pem: &str, key_pem: &str, bundle_pem: &str) -> Result<Self, TlsError> {
        let chain = certs(chain_pem).map_err(|e| rename(e, "certificate chain"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            error: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for c in certs(bundle_pem).map_err(|e| rename(e, "trust bundle"))? {
            roots.add(c).map_err(TlsError::Rustls)?;
        }
        let identity = spiffe_id(&chain[0])?;
        let m = TlsMaterial {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            identity,
        };
        // builds a server config once: rustls checks that the key matches the leaf
        m.server_config(false)?;
        Ok(m)
    }

    /// The workload's SPIFFE identity (from its certificate).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The trust bundle.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The listener's configuration: this workload's chain, clients verified against the
    /// bundle and required to carry an identity of the workload's trust domain when they
    /// send a certificate; `mandatory`: a client certificate is required (PeerAuthentication
    /// `STRICT`).
    pub fn server_config(&self, mandatory: bool) -> Result<Arc<ServerConfig>, TlsError> {
        let accept = Accept::trust_domain(self.identity.trust_domain());
        let verifier = SpiffeClientVerifier::new(self.roots.clone(), accept, mandatory)?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A client configuration presenting this workload's chain (mTLS) and accepting servers
    /// as `accept` says; ALPN `h2` only when `http2`, else `http/1.1` (the connector speaks
    /// what the endpoint's port protocol says).
    pub fn client_config(
        &self,
        accept: Accept,
        http2: bool,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = SpiffeServerVerifier::new(self.roots.clone(), accept);
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![if http2 { ALPN[0] } else { ALPN[1] }.to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn rename(e: TlsError, what: &'static str) -> TlsError {
    match e {
        TlsError::Pem { error, .. } => TlsError::Pem { what, error },
        other => other,
    }
}

/// The files of a workload's identity (`ProxyBootstrap.spec.identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`certificateChain`).
    pub chain: PathBuf,
    /// Private key (`privateKey`).
    pub key: PathBuf,
    /// Trust bundle (`trustBundle`).
    pub bundle: PathBuf,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// What a file looked like when last read: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A workload identity kept current from its files (see the [module docs](self)).
#[derive(Debug)]
pub struct WorkloadIdentity {
    files: TlsFiles,
    current: ArcSwap<Loaded>,
    stamps: Mutex<[Stamp; 3]>,
}

/// The material in force and the listener configuration made from it.
#[derive(Debug)]
struct Loaded {
    material: Arc<TlsMaterial>,
    /// Client certificates required (mTLS).
    server: Arc<ServerConfig>,
}

impl Loaded {
    fn new(material: TlsMaterial) -> Result<Self, TlsError> {
        let server = material.server_config(true)?;
        Ok(Loaded {
            material: Arc::new(material),
            server,
        })
    }
}

impl WorkloadIdentity {
    /// Reads the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamps = [stamp(&files.chain), stamp(&files.key), stamp(&files.bundle)];
        let loaded = Loaded::new(Self::read_files(&files)?)?;
        Ok(WorkloadIdentity {
            files,
            current: ArcSwap::from_pointee(loaded),
            stamps: Mutex::new(stamps),
        })
    }

    fn read_files(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        TlsMaterial::from_pem(
            &read(&files.chain)?,
            &read(&files.key)?,
            &read(&files.bundle)?,
        )
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The material in force.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load().material.clone()
    }

    /// The listener configuration of the material in force: this workload's chain, client
    /// certificates of the trust domain required (mTLS). Built once per (re)load.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load().server.clone()
    }

    /// Re-reads the files if one changed since the last read (modification time or length),
    /// and swaps in the new material. `Ok(true)`: swapped; `Ok(false)`: nothing changed; an
    /// error: the new files are unusable and the previous material stays (the next call
    /// tries again).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = [
            stamp(&self.files.chain),
            stamp(&self.files.key),
            stamp(&self.files.bundle),
        ];
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if *stamps == now {
            return Ok(false);
        }
        let loaded = Loaded::new(Self::read_files(&self.files)?)?;
        self.current.store(Arc::new(loaded));
        *stamps = now;
        Ok(true)
    }
}

//! `mesh-tls`: the mesh CA, SPIFFE identities, rustls configuration; PeerAuthentication and
//! AuthorizationPolicy; RequestAuthentication (JWT).
//!
//! ```
//! use mesh_core::identity::SpiffeId;
//! use mesh_tls::ca::MeshCa;
//!
//! // a mesh CA issuing a SPIFFE workload certificate
//! let ca = MeshCa::generate("cluster.local").unwrap();
//! let id = SpiffeId::new("cluster.local", "default", "reviews");
//! let cert = ca.issue(&id, std::time::Duration::from_secs(24 * 3600)).unwrap();
//! assert!(cert.chain_pem.contains("BEGIN CERTIFICATE"));
//! // the CA can be saved and loaded again
//! let again = MeshCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
//! assert!(again.issue(&id, std::time::Duration::from_secs(60)).is_ok());
//! ```
//!
//! Landed: [`ca`] (a root or intermediate mesh CA issuing SPIFFE workload certificates, behind
//! `mesh-proxy ca`), [`peer`] (a peer's SPIFFE identity from its certificate), [`verify`]
//! (rustls verifiers that check peers by SPIFFE identity against the trust bundle) and
//! [`config`] (a workload's TLS material, the rustls client and server configurations made
//! from it, and rotation from files), [`peer_auth`] (PeerAuthentication precedence),
//! [`authz`] (AuthorizationPolicy as a tower layer), [`jwt`] (RequestAuthentication as a
//! tower layer, feeding `authz` its request principals and claims) and [`origination`]
//! (DestinationRule `tls` `SIMPLE`/`MUTUAL`: TLS origination from files) and [`termination`]
//! (a Gateway server's `tls`: TLS termination, certificates by SNI). `mesh-proxy`'s inbound listener and
//! connector use them for mTLS both ways and authorization.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authz;
pub mod ca;
pub mod config;
pub mod jwt;
pub mod origination;
pub mod peer;
pub mod peer_auth;
pub mod termination;
pub mod verify;

//! `mesh-tls`: the mesh CA, SPIFFE identities, rustls configuration; PeerAuthentication and
//! AuthorizationPolicy; RequestAuthentication (JWT).
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

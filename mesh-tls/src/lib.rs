//! `mesh-tls`: the mesh CA, SPIFFE identities, rustls configuration; PeerAuthentication and
//! AuthorizationPolicy with their issue.
//!
//! Landed: [`ca`] (a root or intermediate mesh CA issuing SPIFFE workload certificates, behind
//! `mesh-proxy ca`), [`peer`] (a peer's SPIFFE identity from its certificate), [`verify`]
//! (rustls verifiers that check peers by SPIFFE identity against the trust bundle) and
//! [`config`] (a workload's TLS material, the rustls client and server configurations made
//! from it, and rotation from files). The listener and connector use them with the inbound
//! side and auto mTLS of the TLS issue; until then `ProxyBootstrap.identity` is refused (see
//! `docs/istio-support.md`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authz;
pub mod ca;
pub mod config;
pub mod peer;
pub mod peer_auth;
pub mod verify;

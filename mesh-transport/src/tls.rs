//! Where TLS plugs into the transport: rustls configurations handed in from outside.
//!
//! The transport does the handshakes (rustls through `tokio-rustls`, one crypto provider:
//! ring) but decides nothing about identities: whoever knows them (`mesh-tls`, with the
//! workload's SPIFFE certificate, DestinationRule `tls` and Istio's auto mTLS; or your own
//! code) implements [`UpstreamTls`] and hands it to the connector
//! ([`Connector::with_tls`](crate::Connector::with_tls), or
//! [`EngineConfig::upstream_tls`](crate::EngineConfig::upstream_tls) for every worker's
//! connector).
//!
//! - Per request, [`UpstreamTls::client_tls`] says whether (and how) to originate TLS to the
//!   endpoint the balancer chose: a `rustls::ClientConfig` (trust roots, client certificate,
//!   ALPN), the server name to send and verify, and a [`ClientTls::key`] naming the identity.
//! - Pooled connections are keyed by endpoint *and* that key ([`PoolKey`]): a connection
//!   made for one identity never carries a request that wants another, nor a plaintext one.
//! - A handshake that fails (untrusted peer, wrong name, timeout within `connectTimeout`) is
//!   a connect failure: `503` with flag `UF`, as Envoy reports TLS errors to upstreams.
//!
//! On the listener side, [`DownstreamTls`] (given in
//! [`EngineConfig::downstream_tls`](crate::EngineConfig::downstream_tls)) makes the engine
//! terminate TLS: every accepted connection is handshaken within `tlsHandshakeTimeout` with
//! the `rustls::ServerConfig` it returns at that moment (so that a rotated certificate serves
//! new connections while established ones live on). [`DownstreamTls::accepts`] may also let
//! plaintext in: on every connection (`DISABLE`), or on those whose first byte is not a TLS
//! handshake (`PERMISSIVE`, as Envoy's TLS inspector tells them apart). ALPN `h2` selects HTTP/2, anything else
//! HTTP/1.1; each request carries a [`PeerTls`] extension (ALPN, SNI, the client's
//! certificate chain) for the layers after the listener (authorization, `x-forwarded-client-cert`).
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::ext::SelectedEndpoint;
//! use mesh_transport::tls::{ClientTls, UpstreamTls};
//!
//! /// TLS to every endpoint on port 443, verified against `roots`.
//! #[derive(Debug)]
//! struct Https(Arc<rustls::ClientConfig>);
//!
//! impl UpstreamTls for Https {
//!     fn client_tls(
//!         &self,
//!         _req: &http::Extensions,
//!         _host: Option<&str>,
//!         ep: &SelectedEndpoint,
//!     ) -> Option<ClientTls> {
//!         (ep.addr.port() == 443).then(|| ClientTls {
//!             config: self.0.clone(),
//!             server_name: rustls::pki_types::ServerName::IpAddress(ep.addr.ip().into()),
//!             key: 1,
//!         })
//!     }
//! }
//! ```
//!
//! [`PoolKey`]: crate::PoolKey

use std::fmt;
use std::sync::Arc;

use mesh_core::ext::SelectedEndpoint;
use rustls::pki_types::ServerName;

/// Decides, per request, whether the connector originates TLS to the chosen endpoint.
pub trait UpstreamTls: Send + Sync + fmt::Debug + 'static {
    /// The TLS to originate for this request to `endpoint` (its extensions hold what the
    /// layers decided: the route, the balancer's `SelectedUpstream`; `host` is its
    /// `:authority` or `Host`, for an SNI taken from the request as Envoy's `auto_sni`), or
    /// `None` for plaintext. Called once per request: return clones of shared `Arc`s.
    fn client_tls(
        &self,
        req: &http::Extensions,
        host: Option<&str>,
        endpoint: &SelectedEndpoint,
    ) -> Option<ClientTls>;
}

/// Makes a listener terminate TLS (see the [module docs](self)).
pub trait DownstreamTls: Send + Sync + fmt::Debug + 'static {
    /// The server configuration for a connection accepted now (certificates, client
    /// verification for mTLS, ALPN: offer `h2` and `http/1.1`).
    fn server_config(&self) -> Arc<rustls::ServerConfig>;

    /// What a connection accepted now may speak (asked once per connection, before
    /// [`server_config`](Self::server_config)): TLS only (PeerAuthentication `STRICT`, the
    /// default), TLS or plaintext told apart by the first byte as Envoy's TLS inspector does
    /// (`PERMISSIVE`), or plaintext only (`DISABLE`, or no certificate to serve).
    fn accepts(&self) -> Accepts {
        Accepts::TlsOnly
    }
}

/// What a listener with [`DownstreamTls`] accepts on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accepts {
    /// Every connection must handshake.
    TlsOnly,
    /// A connection opening with a TLS handshake record is handshaken, any other is served
    /// as plaintext.
    TlsOrPlaintext,
    /// Plaintext only: the connection is served without looking for TLS.
    PlaintextOnly,
}

/// What a TLS connection told about its client: in every request's extensions when the
/// listener terminates TLS.
#[derive(Debug, Clone)]
pub struct PeerTls(pub Arc<PeerTlsInfo>);

/// The details of [`PeerTls`].
#[derive(Debug)]
pub struct PeerTlsInfo {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The client's certificate chain (end entity first), when it sent one.
    pub peer_certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// How to originate TLS to one endpoint.
#[derive(Clone)]
pub struct ClientTls {
    /// The rustls client configuration: trust roots, client certificate (mTLS), ALPN
    /// (offer `h2` for an HTTP/2 endpoint).
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent in SNI and checked against the peer's certificate.
    pub server_name: ServerName<'static>,
    /// Names the identity (configuration and expected peer) for connection pooling:
    /// connections made with one key serve only requests with that key. Not 0 (0 is
    /// plaintext).
    pub key: u64,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

//! The server stack: what `mesh-proxy`'s inbound listener does before the application,
//! as one layer an axum `Router`, a tonic server or any tower service adds with
//! `.layer(...)`.
//!
//! ```text
//! connection ─► MeshAcceptor (mTLS as PeerAuthentication says: STRICT, PERMISSIVE, DISABLE)
//! request ─► MeshServer (the peer's SPIFFE identity from the connection → PeerIdentity;
//!            STRICT: no mTLS, no entry) ─► Trace ─► Record (reporter="destination")
//!         ─► GrpcLocalReply (the mesh's own answers to a gRPC caller as gRPC statuses)
//!         ─► JwtAuthn (RequestAuthentication) ─► Authz (AuthorizationPolicy)
//!         ─► RateLimit (LocalRateLimit, SIDECAR_INBOUND) ─► Fault (the layer's own policy)
//!         ─► CurrentTrace (outbound calls continue this trace) ─► your service
//! ```
//!
//! The order is the proxy's inbound stack's
//! (`Trace<Record<GrpcLocalReply<JwtAuthn<Authz<RateLimit<…>>>>>>`,
//! Istio's filter chain: `jwt_authn`, RBAC, local rate limit, then the router), with the
//! same compiled policies, swapped together on [`Mesh::reload`](crate::Mesh::reload).
//!
//! # mTLS and the peer's identity
//!
//! [`MeshAcceptor::accept`] terminates TLS on an accepted TCP connection with the
//! workload's certificate (ProxyBootstrap `spec.identity`) and the client verification of
//! `mesh_tls::verify` (a chain to the trust bundle with one SPIFFE identity of the trust
//! domain), as the proxy's inbound listener: `STRICT` handshakes every connection,
//! `PERMISSIVE` tells TLS from plaintext by the first byte (Envoy's TLS inspector),
//! `DISABLE` serves plaintext. It hands back the connection's
//! [`PeerTls`]; [`serve`] puts it, with
//! [`ClientAddr`] and
//! [`DestinationAddr`], in every request's extensions,
//! and [`MeshServer`] turns it into the [`PeerIdentity`] AuthorizationPolicy's
//! `principals` read (the application can read it too). A request without `PeerTls` while
//! `STRICT` applies is refused with `403 mTLS required`: a server handed plaintext
//! requests under `STRICT` fails closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ResponseFlags;
use mesh_core::body::{IntoMeshBody, MeshBodyLayer, ReplyBody};
use mesh_core::ext::{ClientAddr, DestinationAddr, PeerIdentity, local_reply, slots_mut};
use mesh_core::grpc::{GrpcLocalReply, GrpcLocalReplyLayer};
use mesh_core::policy::FaultPolicy;
use mesh_resilience::{Fault, FaultLayer, RateLimit};
use mesh_telemetry::current::{CurrentTrace, CurrentTraceLayer};
use mesh_telemetry::record::Record;
use mesh_telemetry::trace::Trace;
use mesh_tls::authz::{Authz, AuthzLayer};
use mesh_tls::jwt::{JwtAuthn, JwtAuthnLayer};
use mesh_transport::tls::{Accepts, DownstreamTls, PeerTls, PeerTlsInfo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower_layer::Layer;
use tower_service::Service;

use crate::Mesh;

/// The layers inside [`MeshServer`], around the application `S`.
pub type ServerInner<S> = Trace<
    Record<
        GrpcLocalReply<
            RequirePeer<JwtAuthn<Authz<RateLimit<Fault<CurrentTrace<IntoMeshBody<S>>>>>>>,
        >,
    >,
>;

/// Makes [`MeshServer`]s; see the [module docs](self). Made by
/// [`Mesh::server_layer`](crate::Mesh::server_layer).
#[derive(Debug, Clone)]
pub struct ServerLayer {
    mesh: Mesh,
    fault: FaultLayer,
}

/// The server stack around the application `S` (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct MeshServer<S> {
    inner: ServerInner<S>,
    /// The last connection's peer and its identity (requests of one connection share them).
    last: Option<(Arc<PeerTlsInfo>, Option<PeerIdentity>)>,
}

/// Refuses a request that came without mTLS while `STRICT` applies (see the
/// [module docs](self)).
#[derive(Debug, Clone)]
pub struct RequirePeer<S> {
    inner: S,
    mesh: Mesh,
}

/// The future of [`RequirePeer`]: the refusal, or the inner service's.
#[pin_project::pin_project(project = RequirePeerProj)]
pub enum RequirePeerFuture<F, R> {
    /// Refused.
    Refused(Option<Response<R>>),
    /// Let through.
    Inner(#[pin] F),
}

/// Terminates the workload's mTLS on accepted connections (see the [module docs](self)).
#[derive(Clone)]
pub struct MeshAcceptor {
    tls: Arc<dyn DownstreamTls>,
    handshake_timeout: std::time::Duration,
}

/// An accepted connection: TLS or, where the mode allows it, plaintext.
#[derive(Debug)]
pub enum MeshStream {
    /// A plaintext connection.
    Plain(TcpStream),
    /// A TLS connection.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

// === impl ServerLayer ===

impl ServerLayer {
    /// The server layer of `mesh`.
    pub fn new(mesh: Mesh) -> Self {
        ServerLayer {
            mesh,
            fault: FaultLayer::new(),
        }
    }

    /// Injects `policy`'s faults (delay, abort) into the requests that pass the policies
    /// (Istio's `HTTPRoute.fault` has no inbound form; this is the layer's own policy).
    pub fn with_fault(mut self, policy: FaultPolicy) -> Self {
        self.fault = self.fault.with_policy(Arc::new(policy));
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = MeshServer<S>;

    fn layer(&self, app: S) -> MeshServer<S> {
        let layers = self.mesh.layers();
        let inner = MeshBodyLayer::new().layer(app);
        let inner = self.fault.layer(CurrentTraceLayer::new().layer(inner));
        let inner = layers.inbound_rate_limit().layer(inner);
        let inner = JwtAuthnLayer::shared(self.mesh.jwt().clone())
            .layer(AuthzLayer::shared(self.mesh.authz().clone()).layer(inner));
        let inner = RequirePeer {
            inner,
            mesh: self.mesh.clone(),
        };
        MeshServer {
            // the mesh's own answers to a gRPC caller in gRPC's form (an authorization's
            // 403 is `grpc-status: 7`), before the record reads them
            inner: layers.inbound_trace().layer(
                layers
                    .telemetry()
                    .inbound()
                    .layer(GrpcLocalReplyLayer.layer(inner)),
            ),
            last: None,
        }
    }
}

// === impl MeshServer ===

impl<S> MeshServer<S> {
    /// The peer identity of the connection `peer` (computed once per connection).
    fn identity(&mut self, peer: &Arc<PeerTlsInfo>) -> Option<PeerIdentity> {
        if let Some((p, id)) = &self.last
            && Arc::ptr_eq(p, peer)
        {
            return id.clone();
        }
        let id = peer
            .peer_certificates
            .first()
            .and_then(|cert| mesh_tls::peer::spiffe_id(cert).ok())
            .map(PeerIdentity::new);
        self.last = Some((peer.clone(), id.clone()));
        id
    }
}

impl<S, B> Service<Request<B>> for MeshServer<S>
where
    ServerInner<S>: Service<Request<B>>,
{
    type Response = <ServerInner<S> as Service<Request<B>>>::Response;
    type Error = <ServerInner<S> as Service<Request<B>>>::Error;
    type Future = <ServerInner<S> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // a client never chooses its own identity: only the connection's counts
        req.extensions_mut().remove::<PeerIdentity>();
        let peer = req.extensions().get::<PeerTls>().map(|p| p.0.clone());
        if let Some(id) = peer.and_then(|p| self.identity(&p)) {
            req.extensions_mut().insert(id);
        }
        self.inner.call(req)
    }
}

// === impl RequirePeer ===

impl<S, B, R> Service<Request<B>> for RequirePeer<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequirePeerFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let strict = self.mesh.security().accepts() == Accepts::TlsOnly;
        if strict && req.extensions().get::<PeerTls>().is_none() {
            return RequirePeerFuture::Refused(Some(local_reply(
                StatusCode::FORBIDDEN,
                ResponseFlags::empty(),
                "mTLS required",
            )));
        }
        RequirePeerFuture::Inner(self.inner.call(req))
    }
}

impl<F, R, E> Future for RequirePeerFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RequirePeerProj::Refused(r) => match r.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            RequirePeerProj::Inner(f) => f.poll(cx),
        }
    }
}

// === impl MeshAcceptor ===

impl MeshAcceptor {
    /// The acceptor of `mesh`'s workload; `None` without an identity.
    pub fn new(mesh: &Mesh) -> Option<MeshAcceptor> {
        mesh.security().identity.as_ref()?;
        Some(MeshAcceptor {
            tls: mesh.tls(),
            handshake_timeout: mesh.snapshot().bootstrap.limits.tls_handshake_timeout.get(),
        })
    }

    /// Terminates TLS on `tcp` as the mode in force says (see the [module docs](self)).
    /// The handshake must end within the bootstrap's `limits.tlsHandshakeTimeout`.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<(MeshStream, Option<PeerTls>)> {
        let tls = match self.tls.accepts() {
            Accepts::PlaintextOnly => false,
            Accepts::TlsOnly => true,
            Accepts::TlsOrPlaintext => {
                let mut first = [0u8; 1];
                let n = tokio::time::timeout(self.handshake_timeout, tcp.peek(&mut first))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first byte"))??;
                // a TLS handshake record (content type 22)
                n == 1 && first[0] == 0x16
            }
        };
        if !tls {
            return Ok((MeshStream::Plain(tcp), None));
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server_config());
        let stream = tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
        let (_, conn) = stream.get_ref();
        let info = PeerTlsInfo {
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: conn.server_name().map(str::to_owned),
            peer_certificates: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        };
        Ok((
            MeshStream::Tls(Box::new(stream)),
            Some(PeerTls(Arc::new(info))),
        ))
    }
}

impl std::fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("accepts", &self.tls.accepts())
            .finish_non_exhaustive()
    }
}

// === impl MeshStream ===

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// === serve ===

/// Serves `service` on `listener` (HTTP/1.1 and HTTP/2, over the `acceptor`'s TLS when
/// given, plaintext otherwise) until the listener fails, with each request's
/// [`PeerTls`], [`ClientAddr`] and [`DestinationAddr`] in its extensions (what the server
/// layer and AuthorizationPolicy's `source.ip`, `destination.port` read). A connection that
/// fails its handshake or its protocol is closed; the others go on.
///
/// An axum `Router` is served with `serve(listener, acceptor, router.layer(mesh.server_layer()))`.
pub async fn serve<S, B>(
    listener: TcpListener,
    acceptor: Option<MeshAcceptor>,
    service: S,
) -> io::Result<()>
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (tcp, client) = listener.accept().await?;
        let local = tcp.local_addr()?;
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let (stream, peer) = match acceptor {
                Some(a) => match a.accept(tcp).await {
                    Ok(accepted) => accepted,
                    Err(_) => return,
                },
                None => (MeshStream::Plain(tcp), None),
            };
            let svc = ConnInfo {
                inner: service,
                peer,
                client,
                local,
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(
                    TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .await;
        });
    }
}

/// Puts what the connection knows into each request's extensions.
#[derive(Clone)]
struct ConnInfo<S> {
    inner: S,
    peer: Option<PeerTls>,
    client: SocketAddr,
    local: SocketAddr,
}

impl<S, B> Service<Request<B>> for ConnInfo<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let ext = req.extensions_mut();
        if let Some(p) = &self.peer {
            ext.insert(p.clone());
        }
        slots_mut(ext).client = Some(ClientAddr(self.client));
        ext.insert(DestinationAddr(self.local));
        self.inner.call(req)
    }
}

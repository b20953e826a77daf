//! The client stack: a service's outbound calls routed, balanced, retried, timed out,
//! ejected, faulted, rate limited, mirrored and recorded as `mesh-proxy`'s outbound listener
//! does it, inside the service.
//!
//! ```text
//! request ─► Trace ─► Record ─► GrpcLocalReply ─► Route ─► RateLimit ─► Fault ─► Timeout
//!         ─► Retry ─► Mirror ─► Lb ─► CircuitBreaker ─► Outlier ─► PlainBody ─► your client
//!            (or the Connector)
//! ```
//!
//! This is the proxy's own assembly ([`Layers::wrap`](mesh_proxy::stack::Layers::wrap)):
//! the same layers in the same order, built from the same pipeline. The innermost service
//! gets a `Request<`[`RequestBody`]`>` with the balancer's
//! [`SelectedUpstream`](mesh_core::ext::SelectedUpstream) in its extensions, and must answer
//! with a [`ReplyBody`](mesh_core::body::ReplyBody) (so the layers can answer locally in the
//! same type):
//!
//! - the project's [`Connector`](mesh_transport::Connector) reads the endpoint itself
//!   ([`Mesh::client`](crate::Mesh::client));
//! - a client that sends where the URI says (hyper_util's legacy client) goes under
//!   [`EndpointUriLayer`] (URI → the chosen endpoint, `Host` kept) and [`MeshBodyLayer`]
//!   (its body into a [`MeshBody`](mesh_core::MeshBody)):
//!   [`ClientLayer::wrap_uri_client`] does both. A tonic `Channel` connects to the one
//!   endpoint it was built for: under `wrap_uri_client`, a service that keeps one `Channel`
//!   per endpoint and picks it by the URI's authority (`examples/tonic-grpc`).
//!
//! The trace layer continues the trace of the request the service is serving when the
//! server side runs [`CurrentTraceLayer`](mesh_telemetry::current::CurrentTraceLayer)
//! ([`crate::ServerLayer`] does): no header copied by hand.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::body::{IntoMeshBody, MeshBodyLayer};
use mesh_core::ext::{ReturnHead, take_return_head};
use mesh_core::uri::{EndpointUri, EndpointUriLayer};
use mesh_proxy::stack::MeshStack;
use tower_layer::Layer;
use tower_service::Service;

use crate::Mesh;

/// The body the innermost client gets: the caller's own when nothing copied or recorded it,
/// otherwise the layers' (boxed once).
pub use mesh_transport::RequestBody;

/// The client stack around the project's connector ([`Mesh::client`](crate::Mesh::client)).
pub type ConnectorClient = MeshStack<mesh_transport::Connector>;

/// The client stack around any client `S` (see the [module docs](self)).
pub type MeshClient<S> = MeshStack<HandBackHead<S>>;

/// The client stack around a client that sends where the URI says.
pub type MeshUriClient<C> = MeshClient<IntoMeshBody<EndpointUri<C>>>;

/// A request body made `Sync` (a `Mutex` only ever reached through `&mut`: no locking),
/// for clients whose body is `Send` but not `Sync`, as tonic's `tonic::body::Body`: the
/// stack's innermost body must be `Sync` (the connector's futures borrow the request across
/// awaits).
///
/// ```
/// use mesh_stack::client::SyncBody;
/// fn sync<T: Sync>(_: &T) {}
/// let body = SyncBody::new(http_body_util::Empty::<bytes::Bytes>::new());
/// sync(&body);
/// ```
#[derive(Debug)]
pub struct SyncBody<B>(std::sync::Mutex<B>);

/// Hands the retry layer the head of each request it may retry with the answer (puts it in
/// the request's [`ReturnHead`]), as the project's connector does itself: one copy of the
/// head, for those requests only, so that any client can sit under the proxy's retry
/// layer when it copies no head up front. [`ClientLayer`] builds its stacks with a retry
/// layer that copies the head itself (cheaper: [`Layers::with_heads_copied`]), so there no
/// request asks and this passes each request on after one extension look-up; it is the
/// guard for stacks assembled from [`Mesh::layers`](crate::Mesh::layers) as they are.
///
/// [`Layers::with_heads_copied`]: mesh_proxy::stack::Layers::with_heads_copied
#[derive(Debug, Clone)]
pub struct HandBackHead<S> {
    inner: S,
}

/// The future of [`HandBackHead`].
#[pin_project::pin_project]
#[derive(Debug)]
pub struct HandBackFuture<F> {
    #[pin]
    inner: F,
    head: Option<(http::request::Parts, ReturnHead)>,
}

/// Builds [`MeshClient`]s over any innermost client; made by
/// [`Mesh::client_layer`](crate::Mesh::client_layer).
#[derive(Debug, Clone)]
pub struct ClientLayer {
    mesh: Mesh,
}

// === impl ClientLayer ===

impl ClientLayer {
    /// The client layer of `mesh`.
    pub fn new(mesh: Mesh) -> Self {
        ClientLayer { mesh }
    }

    /// The stack around an innermost service that reads the chosen endpoint from the
    /// request's extensions (the balancer's `SelectedUpstream`).
    pub fn wrap<S>(&self, inner: S) -> MeshClient<S> {
        // the retry layer copies the head itself: a client that is not the connector would
        // have to copy it to hand it back, and the copy made up there holds fewer
        // extensions (no ReturnHead round trip either)
        self.mesh
            .layers()
            .with_heads_copied()
            .wrap(HandBackHead { inner })
    }

    /// The stack around a client that sends where the URI says (hyper_util's legacy client,
    /// or one tonic `Channel` per endpoint picked by the URI's authority): the URI is rewritten to the chosen endpoint and the client's
    /// response body becomes a [`MeshBody`](mesh_core::MeshBody).
    pub fn wrap_uri_client<C>(&self, client: C) -> MeshUriClient<C> {
        self.wrap(MeshBodyLayer::new().layer(EndpointUriLayer::new().layer(client)))
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = MeshClient<S>;

    fn layer(&self, inner: S) -> MeshClient<S> {
        self.wrap(inner)
    }
}

// === impl HandBackHead ===

impl<S, B, R> Service<Request<B>> for HandBackHead<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = HandBackFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let head = match take_return_head(req.extensions_mut()) {
            Some(back) => {
                let (head, body) = req.into_parts();
                let copy = head.clone();
                return HandBackFuture {
                    inner: self.inner.call(Request::from_parts(head, body)),
                    head: Some((copy, back)),
                };
            }
            None => None,
        };
        HandBackFuture {
            inner: self.inner.call(req),
            head,
        }
    }
}

impl<F, R, E> Future for HandBackFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        if let Some((head, back)) = this.head.take() {
            back.put(head);
        }
        Poll::Ready(Ok(res))
    }
}

// === impl SyncBody ===

impl<B> SyncBody<B> {
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        SyncBody(std::sync::Mutex::new(body))
    }
}

impl<B> http_body::Body for SyncBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        // `&self` only: a lock, uncontended (the owner polls through `&mut`)
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or(false)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}

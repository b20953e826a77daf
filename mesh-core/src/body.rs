//! Response bodies the layers can answer with by themselves.
//!
//! Layers that answer by themselves (no route, direct response, injected abort, timeout)
//! need to make a body of their inner service's body type, as tower-http's layers do with
//! `ResBody: Default`. The bound is [`ReplyBody`]: a body that can also hold a complete
//! local answer, and (for the balancer's in-flight accounting) say when it ends.
//!
//! - [`MeshBody<B>`] is the body of the mesh's own stacks: the inner service's `B`, or a
//!   local answer (a [`Bytes`], free for static text; no allocation). The connector of
//!   `mesh-transport` answers with it.
//! - `http_body_util::Full<Bytes>` and the boxed bodies (`BoxBody`, `UnsyncBoxBody`) are
//!   `ReplyBody`s too: an axum or hyper service answering with them takes the layers as it is.
//! - Any other body (hyper's `Incoming` from a `hyper_util` client, say) goes through
//!   [`MeshBodyLayer`], which wraps it in a `MeshBody`:
//!
//! ```
//! use std::convert::Infallible;
//! use mesh_core::body::{MeshBodyLayer, ReplyBody};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // an inner service whose body type cannot hold a local answer
//! #[derive(Default)]
//! struct Opaque;
//! impl http_body::Body for Opaque {
//!     type Data = bytes::Bytes;
//!     type Error = Infallible;
//!     fn poll_frame(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>)
//!         -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
//!         std::task::Poll::Ready(None)
//!     }
//! }
//! let svc = ServiceBuilder::new()
//!     .layer(MeshBodyLayer::new())
//!     .service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(Opaque)) });
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert!(!res.body().is_local()); // the inner body, now a `MeshBody<Opaque>`
//! # });
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use pin_project::pin_project;

/// A response body: the inner service's own body, or a complete body made by the mesh.
#[pin_project(project = MeshBodyProj)]
#[derive(Debug)]
pub enum MeshBody<B> {
    /// The body produced by the inner service (usually the upstream's).
    Inner(#[pin] B),
    /// A complete body made by the mesh; `None` once it has been yielded.
    Local(Option<Bytes>),
    /// The inner service's body, with what to tell when it ends ([`MeshBody::on_end`]).
    Guarded(#[pin] B, EndGuard),
    /// A body whose first frame was read ahead and given back ([`ReplyBody::resume`]): the
    /// retry layer reads a gRPC answer's first frame to find a status in its trailers.
    Resumed(Box<Resumed<MeshBody<B>>>),
}

/// A body whose first frame was read ahead, given back: that frame first, then the rest
/// ([`ReplyBody::resume`]).
pub struct Resumed<B> {
    first: Option<Frame<Bytes>>,
    rest: Pin<Box<B>>,
    /// What to tell when it ends (`MeshBody::on_end` on a resumed `MeshBody`).
    end: EndGuard,
}

/// Told when a response body ends: its last frame was read, it failed, or it was dropped.
/// A balancer counts a request in flight until then (Envoy's `rq_active` covers the whole
/// stream, not only the wait for the response head).
pub trait OnBodyEnd: Send + Sync + 'static {
    /// The body ended. Called once per [`MeshBody::on_end`].
    fn body_ended(&self);
}

/// Up to two [`OnBodyEnd`]s held by a body; each is told once, at the end or on drop.
#[derive(Default)]
pub struct EndGuard([Option<Arc<dyn OnBodyEnd>>; 2]);

impl EndGuard {
    /// Holds `end` in a free slot, else tells it at once.
    fn hold(&mut self, end: Arc<dyn OnBodyEnd>) {
        match self.0.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(end),
            None => end.body_ended(),
        }
    }

    fn fire(&mut self) {
        for g in &mut self.0 {
            if let Some(g) = g.take() {
                g.body_ended();
            }
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.fire();
    }
}

impl std::fmt::Debug for EndGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.iter().filter(|g| g.is_some()).count();
        f.debug_tuple("EndGuard").field(&held).finish()
    }
}

// === impl MeshBody ===

impl<B> MeshBody<B> {
    /// An empty local body.
    pub const fn empty() -> Self {
        MeshBody::Local(None)
    }

    /// A complete local body; empty bytes yield no frame at all.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            MeshBody::Local(None)
        } else {
            MeshBody::Local(Some(b))
        }
    }

    /// Wraps the inner service's body.
    pub const fn inner(body: B) -> Self {
        MeshBody::Inner(body)
    }

    /// Whether this body was made by the mesh.
    pub fn is_local(&self) -> bool {
        matches!(self, MeshBody::Local(_))
    }

    /// Tells `end` when this body ends (its last frame read, an error, or a drop). A body
    /// made by the mesh is already complete: `end` is told at once. A body holds up to two;
    /// a third is told at once too.
    pub fn on_end(&mut self, end: Arc<dyn OnBodyEnd>) {
        match self {
            MeshBody::Local(_) => end.body_ended(),
            MeshBody::Guarded(_, g) => g.hold(end),
            MeshBody::Resumed(r) => r.end.hold(end),
            MeshBody::Inner(_) => {
                let MeshBody::Inner(b) = std::mem::replace(self, MeshBody::Local(None)) else {
                    return;
                };
                *self = MeshBody::Guarded(b, EndGuard([Some(end), None]));
            }
        }
    }
}

impl<B> Default for MeshBody<B> {
    fn default() -> Self {
        MeshBody::empty()
    }
}

impl<B> Body for MeshBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            MeshBodyProj::Inner(b) => b.poll_frame(cx),
            MeshBodyProj::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            MeshBodyProj::Guarded(b, g) => {
                let frame = std::task::ready!(b.poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    g.fire();
                }
                Poll::Ready(frame)
            }
            MeshBodyProj::Resumed(r) => {
                let frame = std::task::ready!(Pin::new(&mut **r).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    r.end.fire();
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MeshBody::Inner(b) | MeshBody::Guarded(b, _) => b.is_end_stream(),
            MeshBody::Local(d) => d.is_none(),
            MeshBody::Resumed(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MeshBody::Inner(b) | MeshBody::Guarded(b, _) => b.size_hint(),
            MeshBody::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            MeshBody::Resumed(r) => r.size_hint(),
        }
    }
}

// === impl Resumed ===

impl<B> Resumed<B> {
    /// `rest` with `first` (`None`: the body had ended) given back in front of it.
    pub fn new(rest: Pin<Box<B>>, first: Option<Frame<Bytes>>) -> Self {
        Resumed {
            first,
            rest,
            end: EndGuard::default(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Resumed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        self.rest.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    // out of line: keeps `MeshBody::size_hint` small enough to inline (a resumed body is
    // rare: a gRPC answer read ahead by the retry layer)
    #[inline(never)]
    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(first));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint
    }
}

impl<B> std::fmt::Debug for Resumed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumed")
            .field("first", &self.first.as_ref().map(|_| "frame"))
            .finish_non_exhaustive()
    }
}

/// A response body the layers can answer with by themselves: the bound they put on their
/// inner service's response body (see the [module docs](self)).
pub trait ReplyBody: Body<Data = Bytes> + Sized {
    /// A complete body of `bytes` (empty bytes: no frame at all).
    fn local(bytes: Bytes) -> Self;

    /// Tells `end` when the body ends (its last frame read, an error, or a drop): the
    /// balancer counts a request in flight until then. The default tells it at once: for
    /// bodies that cannot hold the guard, a request ends with its response head.
    fn on_end(&mut self, end: Arc<dyn OnBodyEnd>) {
        end.body_ended();
    }

    /// Whether [`resume`](Self::resume) can give a body its first frame back: the retry
    /// layer reads the first frame of a gRPC answer ahead (for a `grpc-status` in its
    /// trailers) only for such bodies.
    const RESUMABLE: bool = false;

    /// `rest`, a body of this type whose first frame was read ahead, with `first` (that
    /// frame; `None`: the body had ended) given back in front of it. `None` when the type
    /// cannot ([`RESUMABLE`](Self::RESUMABLE) is false).
    fn resume(rest: Pin<Box<Self>>, first: Option<Frame<Bytes>>) -> Option<Self> {
        let _ = (rest, first);
        None
    }
}

impl<B: Body<Data = Bytes>> ReplyBody for MeshBody<B> {
    fn local(bytes: Bytes) -> Self {
        MeshBody::local(bytes)
    }

    fn on_end(&mut self, end: Arc<dyn OnBodyEnd>) {
        MeshBody::on_end(self, end);
    }

    const RESUMABLE: bool = true;

    fn resume(rest: Pin<Box<Self>>, first: Option<Frame<Bytes>>) -> Option<Self> {
        Some(MeshBody::Resumed(Box::new(Resumed::new(rest, first))))
    }
}

impl ReplyBody for Full<Bytes> {
    fn local(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl<E: 'static> ReplyBody for http_body_util::combinators::BoxBody<Bytes, E> {
    fn local(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }

    const RESUMABLE: bool = true;

    fn resume(rest: Pin<Box<Self>>, first: Option<Frame<Bytes>>) -> Option<Self> {
        Some(Resumed::new(rest, first).boxed())
    }
}

impl<E: 'static> ReplyBody for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    fn local(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    const RESUMABLE: bool = true;

    fn resume(rest: Pin<Box<Self>>, first: Option<Frame<Bytes>>) -> Option<Self> {
        Some(Resumed::new(rest, first).boxed_unsync())
    }
}

/// Wraps the inner service's response body in a [`MeshBody`], so that the layers above can
/// answer locally whatever the inner body type (hyper's `Incoming`, a tonic body, …).
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshBodyLayer {
    _priv: (),
}

/// The service of [`MeshBodyLayer`].
#[derive(Debug, Clone)]
pub struct IntoMeshBody<S> {
    inner: S,
}

impl MeshBodyLayer {
    /// The layer.
    pub const fn new() -> Self {
        MeshBodyLayer { _priv: () }
    }
}

impl<S> tower_layer::Layer<S> for MeshBodyLayer {
    type Service = IntoMeshBody<S>;

    fn layer(&self, inner: S) -> IntoMeshBody<S> {
        IntoMeshBody { inner }
    }
}

crate::accessors!(IntoMeshBody);

impl<S, Req, B> tower_service::Service<Request<Req>> for IntoMeshBody<S>
where
    S: tower_service::Service<Request<Req>, Response = Response<B>>,
{
    type Response = Response<MeshBody<B>>;
    type Error = S::Error;
    type Future = IntoMeshBodyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        IntoMeshBodyFuture(self.inner.call(req))
    }
}

/// The future of [`IntoMeshBody`].
#[pin_project]
#[derive(Debug)]
pub struct IntoMeshBodyFuture<F>(#[pin] F);

impl<F, B, E> std::future::Future for IntoMeshBodyFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MeshBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .0
            .poll(cx)
            .map(|r| r.map(|res| res.map(MeshBody::inner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Count(AtomicU32);

    impl OnBodyEnd for Count {
        fn body_ended(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(b: Pin<&mut MeshBody<String>>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        b.poll_frame(&mut Context::from_waker(std::task::Waker::noop()))
    }

    use std::convert::Infallible;

    #[test]
    fn on_end_is_told_once_when_the_body_ends_or_is_dropped() {
        let (a, b, c) = (
            Arc::new(Count::default()),
            Arc::new(Count::default()),
            Arc::new(Count::default()),
        );
        let mut body = MeshBody::inner(String::from("data"));
        body.on_end(a.clone());
        body.on_end(b.clone());
        body.on_end(c.clone()); // a third: told at once
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        let mut body = Box::pin(body);
        assert!(matches!(poll(body.as_mut()), Poll::Ready(Some(Ok(_)))));
        assert_eq!(a.0.load(Ordering::SeqCst), 0, "not at a data frame");
        assert!(matches!(poll(body.as_mut()), Poll::Ready(None)));
        assert_eq!(
            (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
            (1, 1)
        );
        drop(body);
        assert_eq!(
            (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
            (1, 1),
            "once"
        );

        let d = Arc::new(Count::default());
        let mut body = MeshBody::inner(String::from("data"));
        body.on_end(d.clone());
        drop(body);
        assert_eq!(d.0.load(Ordering::SeqCst), 1, "dropped unread");

        let l = Arc::new(Count::default());
        let mut body = MeshBody::<String>::local("made here");
        body.on_end(l.clone());
        assert_eq!(
            l.0.load(Ordering::SeqCst),
            1,
            "a local body is complete at once"
        );
    }
    #[test]
    fn a_resumed_body_gives_its_first_frame_back_then_the_rest() {
        let mut rest = Box::pin(MeshBody::inner(String::from("data")));
        let first = match poll(rest.as_mut()) {
            Poll::Ready(Some(Ok(f))) => f,
            other => panic!("{other:?}"),
        };
        // `String` yields its whole text in one frame: the rest has ended
        assert!(matches!(poll(rest.as_mut()), Poll::Ready(None)));
        let mut rest = Box::pin(MeshBody::inner(String::from("data")));
        let Poll::Ready(Some(Ok(first_again))) = poll(rest.as_mut()) else {
            panic!("a frame");
        };
        assert_eq!(first.data_ref(), first_again.data_ref());
        let end = Arc::new(Count::default());
        let mut body = MeshBody::resume(rest, Some(first_again)).expect("resumable");
        const { assert!(MeshBody::<String>::RESUMABLE) };
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(4));
        body.on_end(end.clone());
        let mut body = Box::pin(body);
        match poll(body.as_mut()) {
            Poll::Ready(Some(Ok(f))) => {
                assert_eq!(f.data_ref().map(|d| &d[..]), Some(&b"data"[..]))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(end.0.load(Ordering::SeqCst), 0, "not at a data frame");
        assert!(matches!(poll(body.as_mut()), Poll::Ready(None)));
        assert_eq!(end.0.load(Ordering::SeqCst), 1, "told at the end");
        drop(body);
        assert_eq!(end.0.load(Ordering::SeqCst), 1, "once");

        // a boxed body: its frame given back too; a `Full` cannot be
        let mut boxed = Box::pin(
            Full::new(Bytes::from_static(b"boxed"))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(f))) = boxed.as_mut().poll_frame(&mut cx) else {
            panic!("a frame");
        };
        let mut again = Box::pin(ReplyBody::resume(boxed, Some(f)).expect("resumable"));
        let Poll::Ready(Some(Ok(f))) = again.as_mut().poll_frame(&mut cx) else {
            panic!("the frame given back");
        };
        assert_eq!(f.into_data().ok().as_deref(), Some(&b"boxed"[..]));
        assert!(matches!(
            again.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        const { assert!(!<Full<Bytes> as ReplyBody>::RESUMABLE) };
    }
}

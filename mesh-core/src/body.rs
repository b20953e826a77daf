//! The response body type shared by every layer: the upstream's body, or one the mesh made.
//!
//! Layers that answer by themselves (no route, direct response, injected abort, timeout)
//! need to produce a body without knowing the transport's body type. Every layer's response
//! is therefore `http::Response<MeshBody<B>>`, where `B` is whatever the innermost service
//! (the connector, or an in-process `service_fn`) returns. No allocation: the local variant
//! holds a [`Bytes`], which is free for static text.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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
            MeshBody::Guarded(_, g) => match g.0.iter_mut().find(|s| s.is_none()) {
                Some(slot) => *slot = Some(end),
                None => end.body_ended(),
            },
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MeshBody::Inner(b) | MeshBody::Guarded(b, _) => b.is_end_stream(),
            MeshBody::Local(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MeshBody::Inner(b) | MeshBody::Guarded(b, _) => b.size_hint(),
            MeshBody::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
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
}

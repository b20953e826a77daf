//! The response body type shared by every layer: the upstream's body, or one the mesh made.
//!
//! Layers that answer by themselves (no route, direct response, injected abort, timeout)
//! need to produce a body without knowing the transport's body type. Every layer's response
//! is therefore `http::Response<MeshBody<B>>`, where `B` is whatever the innermost service
//! (the connector, or an in-process `service_fn`) returns. No allocation: the local variant
//! holds a [`Bytes`], which is free for static text.

use std::pin::Pin;
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MeshBody::Inner(b) => b.is_end_stream(),
            MeshBody::Local(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MeshBody::Inner(b) => b.size_hint(),
            MeshBody::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

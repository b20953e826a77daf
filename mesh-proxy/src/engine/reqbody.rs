//! The request body the connector sends: the client's own, or a mirrored copy of it.
//!
//! A mirrored request (VirtualService `mirror` / `mirrors`) needs the body too, but the
//! client's body streams and can be read once. [`RequestBody::tee`] turns the original into
//! a tee: each frame the main request's upstream reads is also handed (a reference-counted
//! `Bytes`, no copy) to every copy. A copy never slows the main request down: it may fall
//! up to [`SHADOW_BUFFER_BYTES`] behind (Envoy's default per-connection buffer limit), and a
//! copy that falls further behind is abandoned (its body ends in an error, so its upstream
//! sees an aborted request, never a truncated one passed off as complete). If the main request stops reading its body before the end (its
//! upstream answered early), the copies are abandoned too.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

/// Bytes a mirrored copy may lag behind the main request before it is abandoned (1 MiB,
/// Envoy's default `per_connection_buffer_limit_bytes`).
pub const SHADOW_BUFFER_BYTES: usize = 1024 * 1024;

/// What each queued frame counts against a copy's budget beyond its data, so that a stream
/// of empty frames cannot queue without bound either.
const FRAME_COST: usize = 64;

/// What a frame handed to a copy counts against its budget.
fn queued_cost(frame: &Frame<Bytes>) -> usize {
    FRAME_COST + frame.data_ref().map_or(0, Bytes::len)
}

/// The error type of [`RequestBody`].
pub type RequestBodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body for the [`Connector`](super::Connector): the client's (`Incoming`), an
/// empty one, or a mirrored copy fed by the original.
pub struct RequestBody(Kind);

enum Kind {
    Empty,
    Incoming(Incoming),
    Tee(Tee),
    Shadow(Shadow),
}

/// The original body, handing its frames to the copies as it is read.
struct Tee {
    inner: Incoming,
    copies: Vec<Copy>,
    finished: bool,
}

struct Copy {
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, ()>>,
    state: Arc<CopyState>,
}

/// What the original and one copy share.
#[derive(Default)]
struct CopyState {
    abandoned: AtomicBool,
    /// Data bytes handed over and not yet read by the copy.
    queued: AtomicUsize,
}

/// A mirrored copy's body.
struct Shadow {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, ()>>,
    state: Arc<CopyState>,
    hint: SizeHint,
    done: bool,
}

/// Why a mirrored copy's body failed.
#[derive(Debug)]
struct Abandoned;

// === impl RequestBody ===

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        RequestBody(Kind::Empty)
    }

    /// A copy of this body for a mirrored request, or `None` when this body is itself a
    /// copy. An empty body is copied as empty; a streaming one becomes a tee (see the
    /// docs of `RequestBody`'s module).
    pub fn tee(&mut self) -> Option<RequestBody> {
        if self.is_end_stream() {
            return Some(RequestBody::empty());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(CopyState::default());
        let copy = Copy {
            tx,
            state: state.clone(),
        };
        let hint = self.size_hint();
        match &mut self.0 {
            Kind::Incoming(_) => {
                let Kind::Incoming(inner) = std::mem::replace(&mut self.0, Kind::Empty) else {
                    return None;
                };
                self.0 = Kind::Tee(Tee {
                    inner,
                    copies: vec![copy],
                    finished: false,
                });
            }
            Kind::Tee(tee) => tee.copies.push(copy),
            Kind::Empty | Kind::Shadow(_) => return None,
        }
        Some(RequestBody(Kind::Shadow(Shadow {
            rx,
            state,
            hint,
            done: false,
        })))
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody(Kind::Incoming(body))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Tee(t) => t.poll_frame(cx),
            Kind::Shadow(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Tee(t) => t.inner.is_end_stream(),
            Kind::Shadow(s) => s.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Tee(t) => t.inner.size_hint(),
            Kind::Shadow(s) => s.hint,
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            Kind::Empty => "RequestBody::Empty",
            Kind::Incoming(_) => "RequestBody::Incoming",
            Kind::Tee(_) => "RequestBody::Tee",
            Kind::Shadow(_) => "RequestBody::Shadow",
        })
    }
}

impl mesh_routing::ShadowBody for RequestBody {
    /// Only an empty body can be copied from a shared reference; [`tee`](Self::tee) is
    /// what the mirror layer uses.
    fn shadow(&self) -> Option<Self> {
        self.is_end_stream().then(RequestBody::empty)
    }

    fn tee(&mut self) -> Option<Self> {
        RequestBody::tee(self)
    }
}

// === impl Tee ===

impl Tee {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                let copy = |f: &Frame<Bytes>| match (f.data_ref(), f.trailers_ref()) {
                    (Some(d), _) => Some(Frame::data(d.clone())),
                    (None, Some(t)) => Some(Frame::trailers(t.clone())),
                    (None, None) => None,
                };
                self.copies
                    .retain(|c| copy(f).is_none_or(|f| c.offer(Ok(f))));
            }
            Some(Err(_)) => {
                for c in self.copies.drain(..) {
                    c.abandon();
                }
            }
            None => {
                // dropping the senders ends the copies' bodies cleanly
                self.finished = true;
                self.copies.clear();
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if !self.finished {
            for c in self.copies.drain(..) {
                c.abandon();
            }
        }
    }
}

impl Copy {
    /// Hands a frame to the copy; `false` (and the copy abandoned) when it lags too far
    /// behind or is gone.
    fn offer(&self, frame: Result<Frame<Bytes>, ()>) -> bool {
        let len = frame.as_ref().map_or(0, queued_cost);
        let queued = self.state.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued <= SHADOW_BUFFER_BYTES && self.tx.send(frame).is_ok() {
            return true;
        }
        self.state.abandoned.store(true, Ordering::Release);
        false
    }

    fn abandon(self) {
        self.state.abandoned.store(true, Ordering::Release);
        let _ = self.tx.send(Err(()));
    }
}

// === impl Shadow ===

impl Shadow {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(frame)) => {
                let len = queued_cost(&frame);
                self.state.queued.fetch_sub(len, Ordering::AcqRel);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(())) => self.fail(),
            None if self.state.abandoned.load(Ordering::Acquire) => self.fail(),
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        self.done = true;
        Poll::Ready(Some(Err(Box::new(Abandoned))))
    }
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "mirrored request abandoned: the original body failed, stopped, or ran too far ahead",
        )
    }
}

impl std::error::Error for Abandoned {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bodies_copy_as_empty_and_copies_are_not_copied() {
        let mut b = RequestBody::empty();
        let mut copy = b.tee().unwrap();
        assert!(copy.is_end_stream());
        // an empty copy is still empty; a streaming copy refuses
        assert!(copy.tee().is_some());
    }
}

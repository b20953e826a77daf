//! A streaming request body that mirrored requests can copy: [`TeeBody`].
//!
//! A mirrored request (VirtualService `mirror` / `mirrors`) needs the body too, but a
//! client's body streams and can be read once. [`TeeBody::tee`] (what [`MirrorLayer`] calls,
//! through [`ShadowBody`]) turns the original into a tee: each frame the main request's
//! upstream reads is also handed (a reference-counted `Bytes`, no copy) to every copy. A
//! copy never slows the main request down: it may fall up to [`SHADOW_BUFFER_BYTES`] behind
//! (Envoy's default per-connection buffer limit), and a copy that falls further behind is
//! abandoned (its body ends in an error, so its upstream sees an aborted request, never a
//! truncated one passed off as complete). If the main request stops reading its body before
//! the end (its upstream answered early), or its body fails, the copies are abandoned too.
//!
//! `TeeBody` works over any body (`http_body::Body<Data = Bytes>`): wrap the request body in
//! it below the router (`req.map(TeeBody::new)`) and every mirror gets the client's body.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use mesh_routing::{ShadowBody, TeeBody};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut original = TeeBody::new(Full::new(Bytes::from_static(b"hello")));
//! let copy = original.tee().unwrap();
//! assert_eq!(original.collect().await.unwrap().to_bytes(), "hello");
//! assert_eq!(copy.collect().await.unwrap().to_bytes(), "hello");
//! # });
//! ```
//!
//! [`MirrorLayer`]: crate::MirrorLayer
//! [`ShadowBody`]: crate::ShadowBody

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use crate::mirror::ShadowBody;

/// Bytes a mirrored copy may lag behind the main request before it is abandoned (1 MiB,
/// Envoy's default `per_connection_buffer_limit_bytes`).
pub const SHADOW_BUFFER_BYTES: usize = 1024 * 1024;

/// What each queued frame counts against a copy's budget beyond its data, so that a stream
/// of empty frames cannot queue without bound either.
const FRAME_COST: usize = 64;

/// The error of a [`TeeBody`]: the inner body's, or a copy's abandonment.
pub type TeeError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that mirrored copies can share; see the [module docs](self).
#[pin_project(project = TeeProj)]
pub struct TeeBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
enum Kind<B> {
    /// Not copied (yet).
    Plain(#[pin] B),
    /// Copied: hands its frames to the copies as it is read.
    Tee {
        #[pin]
        inner: B,
        copies: Copies,
    },
    /// A copy, fed by a tee.
    Copy(Shadow),
}

struct Copy {
    chan: Arc<Channel>,
}

/// A tee's copies; dropped before the original's end, it abandons them (they would wait
/// for frames that never come).
struct Copies {
    list: Vec<Copy>,
    finished: bool,
}

/// What a tee and one copy share: the queue of frames, and the copy's waker.
struct Channel {
    queue: Mutex<Queue>,
    abandoned: AtomicBool,
    /// Bytes (and frame costs) handed over and not yet read by the copy.
    queued: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame<Bytes>>,
    /// No more frames will come (the original ended, or the copy was abandoned).
    closed: bool,
    waker: Option<Waker>,
}

struct Shadow {
    chan: Arc<Channel>,
    hint: SizeHint,
    done: bool,
}

/// Why a mirrored copy's body failed.
#[derive(Debug)]
struct Abandoned;

// === impl TeeBody ===

impl<B> TeeBody<B> {
    /// Wraps a body; nothing changes until a copy is asked for.
    pub fn new(body: B) -> Self {
        TeeBody {
            kind: Kind::Plain(body),
        }
    }

    /// The wrapped body when it was never copied, else `self` (a tee, or a copy).
    pub fn into_plain(self) -> Result<B, Self> {
        match self.kind {
            Kind::Plain(b) => Ok(b),
            kind => Err(TeeBody { kind }),
        }
    }
}

impl<B: Body<Data = Bytes>> TeeBody<B> {
    fn ended(&self) -> bool {
        match &self.kind {
            Kind::Plain(b) => b.is_end_stream(),
            Kind::Tee { inner, .. } => inner.is_end_stream(),
            Kind::Copy(s) => s.done,
        }
    }

    fn hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain(b) => b.size_hint(),
            Kind::Tee { inner, .. } => inner.size_hint(),
            Kind::Copy(s) => s.hint,
        }
    }

    /// A copy of this body for a mirrored request, or `None` when this body is itself a
    /// copy. An empty body is copied as empty; a streaming one becomes a tee.
    pub fn tee(&mut self) -> Option<Self> {
        let hint = self.hint();
        let chan = Arc::new(Channel {
            queue: Mutex::new(Queue::default()),
            abandoned: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        });
        let copy = Copy { chan: chan.clone() };
        if self.ended() {
            lock(&copy.chan).closed = true;
        } else {
            match &mut self.kind {
                Kind::Plain(_) => {
                    let Kind::Plain(inner) = std::mem::replace(
                        &mut self.kind,
                        Kind::Copy(Shadow {
                            chan: chan.clone(),
                            hint,
                            done: true,
                        }),
                    ) else {
                        return None;
                    };
                    self.kind = Kind::Tee {
                        inner,
                        copies: Copies {
                            list: vec![copy],
                            finished: false,
                        },
                    };
                }
                Kind::Tee { copies, .. } => copies.list.push(copy),
                Kind::Copy(_) => return None,
            }
        }
        Some(TeeBody {
            kind: Kind::Copy(Shadow {
                chan,
                hint,
                done: false,
            }),
        })
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<TeeError>,
{
    type Data = Bytes;
    type Error = TeeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TeeError>>> {
        match self.project().kind.project() {
            KindProj::Plain(b) => b.poll_frame(cx).map_err(Into::into),
            KindProj::Tee { inner, copies } => {
                let frame = std::task::ready!(inner.poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        let copy = match (f.data_ref(), f.trailers_ref()) {
                            (Some(d), _) => Some(Frame::data(d.clone())),
                            (None, Some(t)) => Some(Frame::trailers(t.clone())),
                            (None, None) => None,
                        };
                        if let Some(copy) = copy {
                            copies.list.retain(|c| c.offer(&copy));
                        }
                    }
                    Some(Err(_)) => {
                        for c in copies.list.drain(..) {
                            c.abandon();
                        }
                    }
                    None => {
                        // the copies end cleanly once they have read what is queued
                        copies.finished = true;
                        for c in copies.list.drain(..) {
                            c.close();
                        }
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            KindProj::Copy(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint()
    }
}

impl<B: Body<Data = Bytes>> ShadowBody for TeeBody<B> {
    /// Only an empty body can be copied from a shared reference; [`tee`](Self::tee) is
    /// what the mirror layer uses.
    fn shadow(&self) -> Option<Self> {
        self.ended().then(|| {
            let chan = Arc::new(Channel {
                queue: Mutex::new(Queue {
                    closed: true,
                    ..Queue::default()
                }),
                abandoned: AtomicBool::new(false),
                queued: AtomicUsize::new(0),
            });
            TeeBody {
                kind: Kind::Copy(Shadow {
                    chan,
                    hint: SizeHint::with_exact(0),
                    done: false,
                }),
            }
        })
    }

    fn tee(&mut self) -> Option<Self> {
        TeeBody::tee(self)
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        if !self.finished {
            for c in self.list.drain(..) {
                c.abandon();
            }
        }
    }
}

impl<B> std::fmt::Debug for TeeBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.kind {
            Kind::Plain(_) => "TeeBody::Plain",
            Kind::Tee { .. } => "TeeBody::Tee",
            Kind::Copy(_) => "TeeBody::Copy",
        })
    }
}

fn lock(chan: &Channel) -> std::sync::MutexGuard<'_, Queue> {
    chan.queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a frame handed to a copy counts against its budget.
fn queued_cost(frame: &Frame<Bytes>) -> usize {
    FRAME_COST + frame.data_ref().map_or(0, Bytes::len)
}

// === impl Copy ===

impl Copy {
    /// Hands a frame to the copy; `false` (and the copy abandoned) when it lags too far
    /// behind or is gone.
    fn offer(&self, frame: &Frame<Bytes>) -> bool {
        let len = queued_cost(frame);
        let queued = self.chan.queued.fetch_add(len, Ordering::AcqRel) + len;
        // a copy whose reader is gone (the mirrored request was dropped) holds only us
        if queued > SHADOW_BUFFER_BYTES || Arc::strong_count(&self.chan) < 2 {
            self.chan.abandoned.store(true, Ordering::Release);
            self.wake(true);
            return false;
        }
        let mut q = lock(&self.chan);
        q.frames
            .push_back(match (frame.data_ref(), frame.trailers_ref()) {
                (Some(d), _) => Frame::data(d.clone()),
                (None, Some(t)) => Frame::trailers(t.clone()),
                (None, None) => Frame::data(Bytes::new()),
            });
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        true
    }

    fn close(self) {
        self.wake(true);
    }

    fn abandon(self) {
        self.chan.abandoned.store(true, Ordering::Release);
        self.wake(true);
    }

    fn wake(&self, close: bool) {
        let mut q = lock(&self.chan);
        q.closed |= close;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

// === impl Shadow ===

impl Shadow {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, TeeError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.chan.abandoned.load(Ordering::Acquire) {
            self.done = true;
            return Poll::Ready(Some(Err(Box::new(Abandoned))));
        }
        let mut q = lock(&self.chan);
        if let Some(frame) = q.frames.pop_front() {
            drop(q);
            self.chan
                .queued
                .fetch_sub(queued_cost(&frame), Ordering::AcqRel);
            return Poll::Ready(Some(Ok(frame)));
        }
        if q.closed {
            drop(q);
            self.done = true;
            if self.chan.abandoned.load(Ordering::Acquire) {
                return Poll::Ready(Some(Err(Box::new(Abandoned))));
            }
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
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
    use http_body_util::{BodyExt, Empty, Full};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // a tiny executor: the bodies here never wait on I/O
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn empty_bodies_copy_as_empty_and_copies_are_not_copied() {
        let mut b = TeeBody::new(Empty::<Bytes>::new());
        let mut copy = b.tee().unwrap();
        assert!(copy.is_end_stream() || block_on(copy.frame()).is_none());
        // a copy of a copy: refused for a streaming copy, empty for an empty one
        let mut s = TeeBody::new(Full::new(Bytes::from_static(b"x")));
        let mut c = s.tee().unwrap();
        assert!(c.tee().is_none());
    }

    #[test]
    fn every_copy_gets_every_frame_and_the_end() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ];
        let mut original = TeeBody::new(Frames(frames.into()));
        let c1 = original.tee().unwrap();
        let c2 = original.tee().unwrap();
        assert_eq!(block_on(original.collect()).unwrap().to_bytes(), "abcd");
        assert_eq!(block_on(c1.collect()).unwrap().to_bytes(), "abcd");
        assert_eq!(block_on(c2.collect()).unwrap().to_bytes(), "abcd");
    }

    #[test]
    fn a_copy_too_far_behind_is_abandoned_never_truncated() {
        let big = Bytes::from(vec![0u8; SHADOW_BUFFER_BYTES / 2]);
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            (0..3).map(|_| Ok(Frame::data(big.clone()))).collect();
        let mut original = TeeBody::new(Frames(frames.into()));
        let copy = original.tee().unwrap();
        // the original is read to the end before the copy reads anything
        assert_eq!(
            block_on(original.collect()).unwrap().to_bytes().len(),
            3 * big.len()
        );
        assert!(block_on(copy.collect()).is_err());
    }

    #[test]
    fn a_tee_dropped_early_abandons_its_copies() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"ab")))];
        let mut original = TeeBody::new(Frames(frames.into()));
        let copy = original.tee().unwrap();
        drop(original);
        assert!(block_on(copy.collect()).is_err());
    }

    /// A body of the given frames, always ready.
    struct Frames(VecDeque<Result<Frame<Bytes>, std::convert::Infallible>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }
}

//! Request bodies that tell when the client has finished sending: Envoy starts a route's
//! timeout then (`Router::Filter::onRequestComplete`), not when the request head arrives.
//!
//! The timeout layer (`mesh-resilience`) wraps the body of a request that has a route
//! timeout and a body in an [`EndBody`] sharing a [`RequestEnd`]; the body marks it when
//! its last frame has been read (or it is dropped unread), whoever reads it (the connector's
//! task, or hyper's HTTP/2 body task), and wakes the task waiting for it. Other requests
//! carry their body in an [`EndBody::plain`], which costs nothing: [`EndBody::into_plain`]
//! hands the body back to a connector that wants the original.
//!
//! ```
//! use std::task::{Context, Poll, Waker};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use mesh_core::request_end::{EndBody, RequestEnd};
//!
//! let end = RequestEnd::new();
//! let mut body = EndBody::new(Full::new(Bytes::from_static(b"upload")), end.clone());
//! let mut cx = Context::from_waker(Waker::noop());
//! assert!(end.poll_ended(&mut cx).is_pending());
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let frame = body.frame().await.unwrap().unwrap();
//! assert_eq!(frame.into_data().unwrap(), "upload");
//! # });
//! assert!(end.poll_ended(&mut cx).is_ready(), "the last frame was read");
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// Whether a request's body has ended, shared by its [`EndBody`] and the task waiting for
/// it (one waiter at a time: the timeout layer's response future, then its response body).
#[derive(Debug, Default)]
pub struct RequestEnd(Mutex<EndState>);

#[derive(Debug, Default)]
struct EndState {
    ended: bool,
    waker: Option<Waker>,
}

/// A request body that marks its [`RequestEnd`] when it ends; see the [module docs](self).
#[pin_project]
#[derive(Debug)]
pub struct EndBody<B> {
    #[pin]
    inner: B,
    end: Option<EndGuard>,
}

/// Marks the end when dropped: when the body ends, or is dropped unread (an upstream that
/// answered without reading it all; a request given up).
#[derive(Debug)]
struct EndGuard(Arc<RequestEnd>);

// === impl RequestEnd ===

impl RequestEnd {
    /// A body that has not ended yet.
    pub fn new() -> Arc<RequestEnd> {
        Arc::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EndState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready once the body has ended; until then `cx`'s task is woken when it does.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state();
        if s.ended {
            return Poll::Ready(());
        }
        match &mut s.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Marks the body ended and wakes the waiting task.
    pub fn end(&self) {
        let waker = {
            let mut s = self.state();
            s.ended = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

// === impl EndBody ===

impl<B> EndBody<B> {
    /// `inner`, marking `end` when it ends.
    pub fn new(inner: B, end: Arc<RequestEnd>) -> Self {
        EndBody {
            inner,
            end: Some(EndGuard(end)),
        }
    }

    /// `inner`, telling no one.
    pub fn plain(inner: B) -> Self {
        EndBody { inner, end: None }
    }

    /// The inner body, when no one waits for its end.
    #[allow(clippy::result_large_err)] // `self` comes back unboxed, as `ReplayBody`'s
    pub fn into_plain(self) -> Result<B, Self> {
        match self.end {
            None => Ok(self.inner),
            Some(_) => Err(self),
        }
    }

    /// Whether someone waits for this body's end.
    pub fn is_watched(&self) -> bool {
        self.end.is_some()
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably (a mirror's tee starts from it).
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Body<Data = Bytes>> Body for EndBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(f)) => f.is_trailers() || this.inner.is_end_stream(),
        };
        if ended {
            // the guard's drop marks the end
            this.end.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn ended(end: &RequestEnd) -> bool {
        end.poll_ended(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn the_end_is_the_last_frame_or_a_drop() {
        let run = |f| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(f)
        };
        // a body of two chunks that tells its end only by its `None`
        let end = RequestEnd::new();
        let chunks = Frames(
            [b"a", b"b"]
                .iter()
                .map(|c| Frame::data(Bytes::from_static(*c)))
                .collect(),
        );
        let mut body = EndBody::new(chunks, end.clone());
        run(async {
            body.frame().await.unwrap().unwrap();
            assert!(!ended(&end));
            body.frame().await.unwrap().unwrap();
            assert!(!ended(&end), "a stream's end is told by its None");
            assert!(body.frame().await.is_none());
        });
        assert!(ended(&end));
        // dropped unread: ended too (no one waits forever)
        let end = RequestEnd::new();
        drop(EndBody::new(
            http_body_util::Empty::<Bytes>::new(),
            end.clone(),
        ));
        assert!(ended(&end));
        // a plain body comes back as it was
        assert!(EndBody::plain(()).into_plain().is_ok());
        let end = RequestEnd::new();
        let watched = EndBody::new((), end.clone());
        assert!(watched.is_watched());
        assert!(watched.into_plain().is_err());
    }

    /// Frames, then the end (not told by `is_end_stream`).
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[test]
    fn a_waiter_is_woken_at_the_end() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let end = RequestEnd::new();
        assert!(
            end.poll_ended(&mut Context::from_waker(&waker))
                .is_pending()
        );
        end.end();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(ended(&end));
    }
}

//! A request body that can be sent again: [`ReplayBody`], what the retry layer hands the
//! layers below it.
//!
//! A client's body streams and can be read once, but a retried request needs it again. The
//! retry layer (`mesh-resilience`) wraps it with [`ReplayBody::replayable`]: the first
//! attempt streams the client's body as it arrives and records each frame (a
//! reference-counted `Bytes`, no copy) up to a limit; a retry ([`Replayer::replay`]) sends the
//! recorded frames again, then goes on reading the client's body where the previous attempt
//! stopped. A body larger than the limit is sent once: the recording is dropped as soon as
//! it passes the limit, and no retry can have it. (A body never read — a connect failure
//! before any byte was sent — can be retried whatever its size.)
//!
//! Only one attempt reads the body at a time: the attempt that reads it holds the recording
//! until it is dropped, and a retry is possible only once it has been
//! ([`Replayer::replay`] says `None` before).
//!
//! Bodies that need no recording cost nothing: [`ReplayBody::plain`] (a request sent once)
//! and [`ReplayBody::empty`] (a retry of a request without a body) allocate nothing, and
//! [`ReplayBody::into_plain`] gives the wrapped body back to a connector that prefers it.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use mesh_core::replay::ReplayBody;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (first, replayer) = ReplayBody::replayable(Full::new(Bytes::from_static(b"order 66")), 64 * 1024);
//! assert_eq!(first.collect().await.unwrap().to_bytes(), "order 66"); // the first attempt
//! let again = replayer.replay().expect("recorded whole");
//! assert_eq!(again.collect().await.unwrap().to_bytes(), "order 66"); // a retry
//! # });
//! ```

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A boxed error, as tower's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of a request body kept for retries by default: 64 KiB (linkerd's limit; Envoy
/// buffers up to its 1 MiB connection buffer limit).
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// A request body that a retry can send again; see the [module docs](self).
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

/// Makes the retries' copies of a [`ReplayBody::replayable`] body.
pub struct Replayer<B> {
    shared: Arc<Shared<B>>,
}

enum Kind<B> {
    /// Sent once, as it is.
    Plain(B),
    /// No body.
    Empty,
    /// One attempt's copy of a recorded body.
    Copy(Copy<B>),
}

struct Copy<B> {
    /// The recording, while this copy reads it (taken from `shared` at creation). Boxed:
    /// held inline it made every request (a `ReplayBody` of any kind) 170 bytes larger,
    /// moved through each layer below the retry layer.
    state: Option<Box<State<B>>>,
    shared: Arc<Shared<B>>,
    /// Recorded data frames this copy has sent.
    sent: usize,
    /// Whether this copy has sent the recorded trailers.
    sent_trailers: bool,
}

struct Shared<B> {
    /// The recording, when no copy holds it.
    state: Mutex<Option<Box<State<B>>>>,
    /// The client body's size hint (every copy has the same size).
    hint: SizeHint,
    /// [`ENDED`] once an attempt has read the client's body to its end, [`CAPPED`] once
    /// the recording was dropped: readable while an attempt holds the recording.
    progress: AtomicU8,
}

/// The client's body was read to its end (`Shared::progress`).
const ENDED: u8 = 1;
/// The recording was dropped: the body passed the limit or failed (`Shared::progress`).
const CAPPED: u8 = 2;

struct State<B> {
    /// The client's body, until it ended.
    rest: Option<B>,
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    /// Bytes read from the client's body.
    read: usize,
    limit: usize,
    /// The recording was dropped (the body passed the limit, or failed): no retry.
    capped: bool,
}

/// The error of a retry's copy polled while another attempt still reads the body (the
/// retry layer never does that), or of a body that can no longer be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReplayable;

// === impl ReplayBody ===

impl<B> ReplayBody<B> {
    /// `body`, sent once.
    pub const fn plain(body: B) -> Self {
        ReplayBody {
            kind: Kind::Plain(body),
        }
    }

    /// An empty body (what a retry of a request without a body sends).
    pub const fn empty() -> Self {
        ReplayBody { kind: Kind::Empty }
    }

    /// The wrapped body of a [`plain`](Self::plain) one, else `self`.
    // `self` comes back unboxed: it is moved once, on the path that records, where boxing it
    // would cost an allocation per request
    #[allow(clippy::result_large_err)]
    pub fn into_plain(self) -> Result<B, Self> {
        match self.kind {
            Kind::Plain(b) => Ok(b),
            kind => Err(ReplayBody { kind }),
        }
    }

    /// The client's body, when nothing has been read from it yet (for a mirror's copy,
    /// which must start at its beginning); `None` for an empty body or a retry's copy.
    pub fn original_mut(&mut self) -> Option<&mut B> {
        match &mut self.kind {
            Kind::Plain(b) => Some(b),
            Kind::Empty => None,
            Kind::Copy(c) => {
                let s = c.state.as_mut()?;
                if s.read > 0 || c.sent > 0 || s.capped {
                    return None;
                }
                s.rest.as_mut()
            }
        }
    }

    /// Whether this is an [`empty`](Self::empty) body.
    pub fn is_empty_body(&self) -> bool {
        matches!(self.kind, Kind::Empty)
    }
}

impl<B: Body<Data = Bytes>> ReplayBody<B> {
    /// `body` for a first attempt, recorded up to `max_bytes` for retries, and what makes
    /// the retries' copies.
    pub fn replayable(body: B, max_bytes: usize) -> (Self, Replayer<B>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(None),
            hint: body.size_hint(),
            progress: AtomicU8::new(0),
        });
        let first = ReplayBody {
            kind: Kind::Copy(Copy {
                state: Some(Box::new(State {
                    rest: Some(body),
                    data: Vec::new(),
                    trailers: None,
                    read: 0,
                    limit: max_bytes,
                    capped: false,
                })),
                shared: shared.clone(),
                sent: 0,
                sent_trailers: false,
            }),
        };
        (first, Replayer { shared })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Plain(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Empty => Poll::Ready(None),
            Kind::Copy(c) => c.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain(b) => b.is_end_stream(),
            Kind::Empty => true,
            Kind::Copy(c) => c.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain(b) => b.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Copy(c) => c.shared.hint,
        }
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.kind {
            Kind::Plain(_) => "ReplayBody::Plain",
            Kind::Empty => "ReplayBody::Empty",
            Kind::Copy(_) => "ReplayBody::Copy",
        })
    }
}

// === impl Replayer ===

impl<B> Replayer<B> {
    /// A copy of the body for a retry: the recorded frames, then the rest of the client's
    /// body. `None` when the body cannot be sent again: it passed the limit or failed, or
    /// the previous attempt still holds it (its request not dropped yet).
    pub fn replay(&self) -> Option<ReplayBody<B>> {
        let state = lock(&self.shared).take()?;
        let copy = ReplayBody {
            kind: Kind::Copy(Copy {
                state: Some(state),
                shared: self.shared.clone(),
                sent: 0,
                sent_trailers: false,
            }),
        };
        let capped = match &copy.kind {
            Kind::Copy(c) => c.state.as_ref().is_some_and(|s| s.capped),
            _ => false,
        };
        // a capped recording goes back to the shared slot when `copy` drops
        (!capped).then_some(copy)
    }

    /// Whether the whole body is recorded: an attempt read the client's body to its end,
    /// within the limit. Then the client has nothing more to send, and a retry can have
    /// the body once the attempt holding it lets go.
    pub fn is_whole(&self) -> bool {
        self.shared.progress.load(Ordering::Acquire) == ENDED
    }
}

impl<B> std::fmt::Debug for Replayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer").finish_non_exhaustive()
    }
}

fn lock<B>(shared: &Shared<B>) -> MutexGuard<'_, Option<Box<State<B>>>> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Copy ===

impl<B> Copy<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(state) = self.state.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(NotReplayable))));
        };
        if self.sent < state.data.len() {
            let d = state.data[self.sent].clone();
            self.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if state.capped && self.sent > 0 {
            // this copy was replaying when the recording was dropped: it cannot go on
            return Poll::Ready(Some(Err(Box::new(NotReplayable))));
        }
        if !self.sent_trailers
            && let Some(t) = &state.trailers
        {
            self.sent_trailers = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
        }
        let Some(rest) = state.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(&mut *rest).poll_frame(cx));
        let mut ended = false;
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    state.read += d.len();
                    if !state.capped {
                        if state.read > state.limit {
                            state.capped = true;
                            state.data = Vec::new();
                            self.shared.progress.fetch_or(CAPPED, Ordering::AcqRel);
                        } else {
                            state.data.push(d.clone());
                        }
                    }
                    self.sent = state.data.len();
                    ended = rest.is_end_stream();
                } else if let Some(t) = f.trailers_ref() {
                    state.trailers = Some(t.clone());
                    self.sent_trailers = true;
                    ended = true;
                }
            }
            Some(Err(_)) => {
                // the client's body broke: no attempt can have it whole
                state.capped = true;
                state.data = Vec::new();
                state.rest = None;
                self.shared.progress.fetch_or(CAPPED, Ordering::AcqRel);
            }
            None => {
                state.rest = None;
                ended = true;
            }
        }
        if ended {
            self.shared.progress.fetch_or(ENDED, Ordering::AcqRel);
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Some(s) => {
                self.sent >= s.data.len()
                    && (self.sent_trailers || s.trailers.is_none())
                    && s.rest.as_ref().is_none_or(Body::is_end_stream)
            }
            None => false,
        }
    }
}

impl<B> Drop for Copy<B> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            *lock(&self.shared) = Some(state);
        }
    }
}

impl std::fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body cannot be sent again")
    }
}

impl std::error::Error for NotReplayable {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    /// A body of the given frames, always ready.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(chunks: &[&'static str], trailers: bool) -> Frames {
        let mut v: std::collections::VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            v.push_back(Frame::trailers(t));
        }
        Frames(v)
    }

    #[test]
    fn the_recording_is_whole_once_the_client_s_body_ended_within_the_limit() {
        // read to its end (trailers, or a data frame after which the body says it ended)
        for trailers in [true, false] {
            let (mut first, replayer) =
                ReplayBody::replayable(frames(&["ab", "cd"], trailers), 1024);
            assert!(!replayer.is_whole(), "nothing read yet");
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = Pin::new(&mut first).poll_frame(&mut cx);
            assert!(!replayer.is_whole(), "one frame of two read");
            let _ = block_on(first.collect()).unwrap();
            assert!(replayer.is_whole(), "trailers: {trailers}");
        }
        let (first, replayer) = ReplayBody::replayable(Full::new(Bytes::from("abcd")), 1024);
        let _ = block_on(first.collect()).unwrap();
        assert!(replayer.is_whole(), "a `Full` ends with its one frame");
        // over the limit: never whole
        let (first, replayer) = ReplayBody::replayable(frames(&["ab", "cd"], false), 3);
        let _ = block_on(first.collect()).unwrap();
        assert!(!replayer.is_whole());
    }

    #[test]
    fn a_retry_gets_the_same_frames_and_trailers() {
        let (first, replayer) = ReplayBody::replayable(frames(&["ab", "cd"], true), 1024);
        let got = block_on(first.collect()).unwrap();
        assert_eq!(
            got.trailers().map(|t| t["grpc-status"].clone()).unwrap(),
            "0"
        );
        assert_eq!(got.to_bytes(), "abcd");
        for _ in 0..2 {
            let again = block_on(replayer.replay().unwrap().collect()).unwrap();
            assert!(again.trailers().is_some());
            assert_eq!(again.to_bytes(), "abcd");
        }
    }

    #[test]
    fn a_retry_after_a_partial_read_replays_then_continues() {
        let (mut first, replayer) =
            ReplayBody::replayable(frames(&["ab", "cd", "ef"], false), 1024);
        let f = block_on(first.frame()).unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        assert!(
            replayer.replay().is_none(),
            "the first attempt still holds it"
        );
        drop(first);
        let again = block_on(replayer.replay().unwrap().collect()).unwrap();
        assert_eq!(again.to_bytes(), "abcdef");
    }

    #[test]
    fn a_body_over_the_limit_is_sent_whole_once_and_never_replayed() {
        let (first, replayer) = ReplayBody::replayable(frames(&["abc", "def"], false), 4);
        assert_eq!(block_on(first.collect()).unwrap().to_bytes(), "abcdef");
        assert!(replayer.replay().is_none());
        assert!(replayer.replay().is_none(), "still not");
    }

    #[test]
    fn a_body_never_read_is_replayable_whatever_its_size() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let (first, replayer) = ReplayBody::replayable(Full::new(big.clone()), 16);
        assert_eq!(first.size_hint().exact(), Some(10_000));
        drop(first); // e.g. a connect failure: nothing was sent
        let again = replayer.replay().unwrap();
        assert_eq!(again.size_hint().exact(), Some(10_000));
        assert_eq!(block_on(again.collect()).unwrap().to_bytes(), big);
    }

    #[test]
    fn plain_and_empty_bodies_allocate_no_recording() {
        let b = ReplayBody::plain(Full::new(Bytes::from_static(b"x")));
        assert_eq!(
            b.into_plain()
                .ok()
                .map(|f| block_on(f.collect()).unwrap().to_bytes())
                .unwrap(),
            "x"
        );
        let e = ReplayBody::<Full<Bytes>>::empty();
        assert!(e.is_end_stream() && e.is_empty_body());
        assert_eq!(e.size_hint().exact(), Some(0));
    }
}

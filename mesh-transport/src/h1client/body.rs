//! The body of a response that did not arrive whole with its head: it owns the connection,
//! keeps sending the request body, decodes the response body as it streams, and returns
//! the connection to the pool once both are done.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::MIN_READ;
use super::conn::{H1Conn, SendError};
use super::decode::{BodyError, BodyState, Step, decode};
use super::request::ReqBody;
use crate::pool::{Pool, PoolKey};

/// The body of an upstream HTTP/1.1 response that did not arrive whole with its head. It
/// owns the connection until the body ends, then returns it to the pool.
pub(crate) struct H1Body {
    pub(super) conn: Option<Box<H1Conn>>,
    pub(super) req: Option<ReqBody>,
    pub(super) state: BodyState,
    pub(super) reusable: bool,
    pub(super) release: Release,
}

/// Where a connection goes back when its exchange is over.
pub(crate) struct Release {
    pub(crate) pool: Pool,
    pub(crate) key: PoolKey,
    pub(crate) max_idle: usize,
}

// === impl H1Body ===

impl H1Body {
    /// Ends the body: the connection goes back to the pool when it can be reused.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(mut conn) = self.conn.take()
            && self.reusable
            && self.req.is_none()
            && conn.buf.is_empty()
            && conn.output_empty()
        {
            conn.read_size = MIN_READ;
            self.release
                .pool
                .release_h1(self.release.key, conn, self.release.max_idle);
        }
        self.req = None;
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Keep sending the request body while the response streams.
        if self.req.is_some()
            && let Some(conn) = self.conn.as_mut()
        {
            match conn.poll_send(&mut self.req, cx) {
                Poll::Ready(Err(SendError::Write)) => {
                    self.req = None;
                    self.reusable = false;
                }
                Poll::Ready(Err(SendError::Body)) => {
                    return self.fail(cx, BodyError::RequestBody);
                }
                _ => {}
            }
        }
        loop {
            match self.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failing(e) => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                _ => {}
            }
            let Some(conn) = self.conn.as_mut() else {
                return self.fail(cx, BodyError::ConnectionGone);
            };
            match decode(&mut self.state, &mut conn.buf) {
                Err(e) => return self.fail(cx, e),
                Ok(Step::Data(data)) => {
                    if self.state == BodyState::Done {
                        // the last bytes: the connection can serve the next request now
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) if self.state == BodyState::Eof => {
                        self.reusable = false;
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(0) => {
                        return self.fail(cx, BodyError::ClosedMidBody);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return self.fail(cx, BodyError::ReadFailed);
                    }
                },
            }
        }
    }

    /// Drops the connection and fails the body, one poll later: hyper's server writes the
    /// response head (and the data so far) when a body poll is pending, and would drop them
    /// if the error came in the same turn. The client then sees the status and a truncated
    /// body, as with Envoy, rather than a connection closed before any response.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        e: BodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.reusable = false;
        self.conn = None;
        self.req = None;
        self.state = BodyState::Failing(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(rem) => SizeHint::with_exact(rem),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        H1Body::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        H1Body::size_hint(self)
    }
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("state", &self.state)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

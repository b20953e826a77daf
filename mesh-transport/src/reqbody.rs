//! The request body the connector sends: the client's own (hyper's `Incoming`), or any other
//! body (`http_body::Body<Data = Bytes>`), boxed.
//!
//! [`RequestBody::new`] takes any body; a hyper `Incoming` (what the engine's listener
//! hands the stack) and a `RequestBody` are kept as they are, without an allocation; other
//! bodies are boxed once. (Mirrored copies of a streaming body are `mesh_routing::TeeBody`.)

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use mesh_core::stream_info::StreamInfo;

/// The error type of [`RequestBody`].
pub type RequestBodyError = Box<dyn std::error::Error + Send + Sync>;

type Boxed = Pin<Box<dyn Body<Data = Bytes, Error = RequestBodyError> + Send + Sync>>;

/// A request body for the [`Connector`](crate::Connector): empty, the client's (`Incoming`),
/// or any other body, boxed.
pub struct RequestBody(Kind);

enum Kind {
    Empty,
    Incoming(Incoming),
    Boxed(Boxed),
    /// A body of unknown length whose bytes are counted into the request's record.
    Counted(Box<Counted>),
}

/// A body and the record its bytes (when its length is not known in advance) and its gRPC
/// messages (a gRPC request's) are counted into.
struct Counted {
    inner: RequestBody,
    /// Data bytes this attempt has read (`None`: not counted, the length is in the head).
    read: Option<u64>,
    /// A gRPC request's messages this attempt has sent.
    messages: Option<mesh_core::grpc::MessageCounter>,
    info: StreamInfo,
}

// === impl RequestBody ===

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        RequestBody(Kind::Empty)
    }

    /// Any body: an `Incoming` or a `RequestBody` as it is, anything else boxed. (`Sync`:
    /// the connector's futures are `Send` and borrow the request across awaits.)
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<RequestBodyError>,
    {
        let mut slot = Some(body);
        let any: &mut dyn Any = &mut slot;
        if let Some(b) = any.downcast_mut::<Option<RequestBody>>()
            && let Some(b) = b.take()
        {
            return b;
        }
        let any: &mut dyn Any = &mut slot;
        if let Some(b) = any.downcast_mut::<Option<Incoming>>()
            && let Some(b) = b.take()
        {
            return RequestBody(Kind::Incoming(b));
        }
        match slot {
            Some(b) => RequestBody(Kind::Boxed(Box::pin(MapErr(b)))),
            None => RequestBody::empty(),
        }
    }
}

impl RequestBody {
    /// This body, its bytes counted into `info` as it is read
    /// ([`StreamInfo::note_request_body`]), when its length is not known in advance (chunked,
    /// an HTTP/2 stream without `content-length`): the telemetry layer knows the others' from
    /// their head. An attempt's count: a retry reads the body again, and the record keeps
    /// the longest count.
    ///
    /// For a gRPC request (`grpc`), its messages too ([`StreamInfo::note_request_messages`]:
    /// Istio's `istio_request_messages_total`), whatever its length.
    pub(crate) fn counted(self, info: Option<&StreamInfo>, grpc: bool) -> Self {
        let bytes = self.size_hint().exact().is_none();
        let Some(info) = info.filter(|_| !self.is_end_stream() && (bytes || grpc)) else {
            return self;
        };
        RequestBody(Kind::Counted(Box::new(Counted {
            inner: self,
            read: bytes.then_some(0),
            messages: grpc.then(mesh_core::grpc::MessageCounter::default),
            info: info.clone(),
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
            Kind::Boxed(b) => b.as_mut().poll_frame(cx),
            Kind::Counted(c) => {
                let frame = std::task::ready!(Pin::new(&mut c.inner).poll_frame(cx));
                if let Some(Ok(d)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                    && let Some(d) = d
                {
                    if let Some(read) = &mut c.read {
                        *read += d.len() as u64;
                        c.info.note_request_body(*read);
                    }
                    if let Some(m) = &mut c.messages {
                        m.feed(d);
                        c.info.note_request_messages(m.count());
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
            Kind::Counted(c) => c.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
            Kind::Counted(c) => c.inner.size_hint(),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            Kind::Empty => "RequestBody::Empty",
            Kind::Incoming(_) => "RequestBody::Incoming",
            Kind::Boxed(_) => "RequestBody::Boxed",
            Kind::Counted(_) => "RequestBody::Counted",
        })
    }
}

/// A body whose errors become [`RequestBodyError`]s.
#[pin_project::pin_project]
struct MapErr<B>(#[pin] B);

impl<B> Body for MapErr<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<RequestBodyError>,
{
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        self.project().0.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_and_an_empty_body_stay_as_they_are() {
        let b = RequestBody::new(RequestBody::empty());
        assert!(matches!(b.0, Kind::Empty));
        let b = RequestBody::new(http_body_util::Full::new(Bytes::from_static(b"x")));
        assert!(matches!(b.0, Kind::Boxed(_)));
        assert_eq!(b.size_hint().exact(), Some(1));
    }

    #[test]
    fn a_body_of_unknown_length_is_counted_into_the_record_the_longest_attempt_wins() {
        use http_body_util::BodyExt;
        let info = StreamInfo::new();
        let chunks = || {
            http_body_util::StreamBody::new(futures_util::stream::iter(
                ["abc", "de"]
                    .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c)))),
            ))
        };
        let block_on = |b: RequestBody| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(b.collect())
                .unwrap()
                .to_bytes()
        };
        let b = RequestBody::new(chunks()).counted(Some(&info), false);
        assert!(matches!(b.0, Kind::Counted(_)));
        assert_eq!(block_on(b), "abcde");
        assert_eq!(info.request_body_bytes(), 5);
        // a shorter attempt (cut off) leaves the longest count
        let mut b = RequestBody::new(chunks()).counted(Some(&info), false);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(&mut b).poll_frame(&mut cx);
        assert_eq!(info.request_body_bytes(), 5);
        // a known length, an empty body, no record: not wrapped
        let known = RequestBody::new(http_body_util::Full::new(Bytes::from_static(b"x")));
        assert!(matches!(
            known.counted(Some(&info), false).0,
            Kind::Boxed(_)
        ));
        assert!(matches!(
            RequestBody::empty().counted(Some(&info), false).0,
            Kind::Empty
        ));
        assert!(matches!(
            RequestBody::new(chunks()).counted(None, false).0,
            Kind::Boxed(_)
        ));
    }

    #[test]
    fn a_grpc_request_s_messages_are_counted_whatever_its_length() {
        use http_body_util::BodyExt;
        // two messages in a body of known length: its bytes are in its head (not counted
        // here), its messages are
        let info = StreamInfo::new();
        let body = Bytes::from_static(b"\0\0\0\0\x02hi\0\0\0\0\x01x");
        let b = RequestBody::new(http_body_util::Full::new(body)).counted(Some(&info), true);
        assert!(matches!(b.0, Kind::Counted(_)));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(b.collect())
            .unwrap();
        assert_eq!(info.request_messages(), 2);
        assert_eq!(info.request_body_bytes(), 0);
        // not gRPC: a body of known length is not wrapped
        let b = RequestBody::new(http_body_util::Full::new(Bytes::from_static(b"x")));
        assert!(matches!(b.counted(Some(&info), false).0, Kind::Boxed(_)));
    }
}

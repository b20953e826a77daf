//! A `grpc-status` in an answer's trailers, under paused time against scripted gRPC
//! upstreams: the answer's first body frame is read ahead, and trailers that come before
//! any message decide the retry.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use mesh_core::MeshBody;
use mesh_core::ext::flags_of;
use mesh_core::policy::{RetryOn, RetryPolicy};
use mesh_core::replay::ReplayBody;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::*;

/// A response body: its frames (an `Err` is a reset), then the end, or nothing ever more.
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
    then_hang: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        match self.frames.pop_front() {
            Some(f) => Poll::Ready(Some(f)),
            None if self.then_hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.then_hang
    }
}

/// What the scripted upstream answers: `200 application/grpc` with these body frames.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// The status in trailers right after the head, no message (a server that sent its
    /// head before it failed).
    TrailersOnly(u32),
    /// One message, then the status in trailers.
    Message(u32),
    /// A reset before any frame.
    Reset,
    /// A head, then nothing.
    Hang,
}

type GrpcRes = Response<MeshBody<Frames>>;

fn answer(a: Answer) -> GrpcRes {
    let trailers = |code: u32| {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from(code));
        Ok(Frame::trailers(t))
    };
    let (frames, then_hang) = match a {
        Answer::TrailersOnly(code) => (vec![trailers(code)], false),
        Answer::Message(code) => (
            vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
                trailers(code),
            ],
            false,
        ),
        Answer::Reset => (vec![Err("reset")], false),
        Answer::Hang => (Vec::new(), true),
    };
    let mut res = Response::new(MeshBody::Inner(Frames {
        frames: frames.into(),
        then_hang,
    }));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    res
}

/// A gRPC upstream answering the n-th request with `script[n]` (then `Message(0)`), after
/// reading the request's body to its end when `reads_body` (as a connector sends it).
#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Answer>>>,
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    reads_body: bool,
}

impl Upstream {
    fn new(script: &[Answer]) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            calls: Arc::default(),
            bodies: Arc::default(),
            reads_body: true,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<B> Service<Request<ReplayBody<B>>> for Upstream
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<mesh_core::replay::BoxError>,
{
    type Response = GrpcRes;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcRes, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.script.lock().unwrap().pop_front();
        let (reads, bodies) = (self.reads_body, self.bodies.clone());
        Box::pin(async move {
            if reads {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                bodies.lock().unwrap().push(body);
            }
            Ok(answer(next.unwrap_or(Answer::Message(0))))
        })
    }
}

/// A gRPC call (a `POST` with one message).
fn call() -> Request<Full<Bytes>> {
    Request::post("http://svc/pkg.Svc/Method")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap()
}

/// A route that writes `retryOn` (a `POST` is retried on what it names).
fn policy(retry_on: RetryOn, attempts: u32) -> Arc<RetryPolicy> {
    Arc::new(RetryPolicy {
        attempts,
        retry_on,
        explicit_retry_on: true,
        ..RetryPolicy::default()
    })
}

async fn send(up: &Upstream, policy: Arc<RetryPolicy>, req: Request<Full<Bytes>>) -> GrpcRes {
    RetryLayer::new()
        .with_policy(policy)
        .with_seed(7)
        .layer(up.clone())
        .oneshot(req)
        .await
        .unwrap()
}

/// The body's frames as the client reads them: the data, and the trailers' `grpc-status`.
async fn read(res: GrpcRes) -> (Bytes, Option<String>) {
    let collected = res.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string());
    (collected.to_bytes(), status)
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_in_trailers_before_any_message_is_retried() {
    // `unavailable` after the head, no message: the answer waits for its first frame, and
    // the trailers in it retry the call, its message sent again
    let up = Upstream::new(&[Answer::TrailersOnly(14)]);
    let res = send(&up, policy(RetryOn::GRPC_UNAVAILABLE, 2), call()).await;
    assert_eq!(up.calls(), 2);
    assert!(flags_of(&res).is_empty());
    assert_eq!(
        read(res).await,
        (Bytes::from_static(b"\0\0\0\0\x01x"), Some("0".into()))
    );
    let bodies = up.bodies.lock().unwrap().clone();
    assert_eq!(bodies, [&b"\0\0\0\0\x02hi"[..], &b"\0\0\0\0\x02hi"[..]]);
}

#[tokio::test(start_paused = true)]
async fn each_grpc_condition_retries_its_status_from_trailers() {
    for (code, condition) in [
        (1, RetryOn::GRPC_CANCELLED),
        (4, RetryOn::GRPC_DEADLINE_EXCEEDED),
        (8, RetryOn::GRPC_RESOURCE_EXHAUSTED),
        (13, RetryOn::GRPC_INTERNAL),
        (14, RetryOn::GRPC_UNAVAILABLE),
    ] {
        let up = Upstream::new(&[Answer::TrailersOnly(code)]);
        let res = send(&up, policy(condition, 1), call()).await;
        assert_eq!((code, up.calls()), (code, 2), "retried");
        assert_eq!(read(res).await.1.as_deref(), Some("0"));
        // another condition: passed on, its trailers whole
        let other = if code == 14 {
            RetryOn::GRPC_CANCELLED
        } else {
            RetryOn::GRPC_UNAVAILABLE
        };
        let up = Upstream::new(&[Answer::TrailersOnly(code)]);
        let res = send(&up, policy(other, 1), call()).await;
        assert_eq!((code, up.calls()), (code, 1), "not retried");
        assert_eq!(read(res).await, (Bytes::new(), Some(code.to_string())));
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_s_answer_is_not_held_and_goes_on_whole() {
    // no retry left: nothing to wait for, the answer goes on at once (without `URX`, which
    // only its trailers would have earned)
    let up = Upstream::new(&[Answer::TrailersOnly(14), Answer::TrailersOnly(14)]);
    let res = send(&up, policy(RetryOn::GRPC_UNAVAILABLE, 1), call()).await;
    assert_eq!(up.calls(), 2);
    assert!(flags_of(&res).is_empty());
    assert_eq!(read(res).await, (Bytes::new(), Some("14".into())));
    let up = Upstream::new(&[Answer::TrailersOnly(14), Answer::Hang]);
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        send(&up, policy(RetryOn::GRPC_UNAVAILABLE, 1), call()),
    )
    .await;
    assert!(answered.is_ok(), "the last answer's head was held");
}

#[tokio::test(start_paused = true)]
async fn a_status_after_a_message_is_the_client_s() {
    // the message came first: the answer goes on as it is, the message and then the
    // trailers, not retried (its first frame was read ahead and given back)
    let up = Upstream::new(&[Answer::Message(14)]);
    let res = send(&up, policy(RetryOn::GRPC_UNAVAILABLE, 2), call()).await;
    assert_eq!(up.calls(), 1);
    assert!(flags_of(&res).is_empty());
    assert_eq!(
        read(res).await,
        (Bytes::from_static(b"\0\0\0\0\x01x"), Some("14".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_before_the_first_frame_is_retried_as_a_reset() {
    let up = Upstream::new(&[Answer::Reset]);
    let res = send(
        &up,
        policy(RetryOn::GRPC_UNAVAILABLE | RetryOn::RESET, 2),
        call(),
    )
    .await;
    assert_eq!(up.calls(), 2);
    assert_eq!(read(res).await.1.as_deref(), Some("0"));
    // without `reset` in retryOn: not retried, and the client is told of the reset (the
    // connector's reply to one), not given a `200` whose body ends cleanly
    let up = Upstream::new(&[Answer::Reset]);
    let res = send(&up, policy(RetryOn::GRPC_UNAVAILABLE, 2), call()).await;
    assert_eq!(up.calls(), 1);
    assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(flags_of(&res).contains(mesh_core::flags::ResponseFlags::UPSTREAM_REMOTE_RESET));
}

#[tokio::test(start_paused = true)]
async fn at_the_per_try_timeout_a_held_answer_goes_on_as_it_is() {
    // the head came in time: the per-try timeout ends the wait for the first frame, not the
    // call (a server-streaming call whose first message is slow is not cut nor sent again)
    let up = Upstream::new(&[Answer::Hang]);
    let mut p = (*policy(RetryOn::GRPC_UNAVAILABLE | RetryOn::RESET, 2)).clone();
    p.per_try_timeout = Some(Duration::from_millis(100));
    let start = Instant::now();
    let res = send(&up, Arc::new(p), call()).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "held until the timeout"
    );
    assert_eq!(up.calls(), 1, "not retried");
    assert!(flags_of(&res).is_empty());
    assert_eq!(res.status(), http::StatusCode::OK);
    let mut body = res.into_body();
    let next = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
    assert!(next.is_err(), "the body is the upstream's, still waiting");
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_not_held_while_the_request_body_streams() {
    // a call whose request body has not ended (a bidirectional stream): its client may wait
    // for the answer's head before it sends more, so the head goes on at once
    let mut up = Upstream::new(&[Answer::Hang]);
    up.reads_body = false;
    let req = call().map(|_| Frames {
        frames: VecDeque::new(),
        then_hang: true,
    });
    let layer = RetryLayer::new()
        .with_policy(policy(RetryOn::GRPC_UNAVAILABLE, 2))
        .with_seed(7);
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        layer.layer(up.clone()).oneshot(req),
    )
    .await;
    assert!(answered.is_ok(), "the head was held");
    assert_eq!(up.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_post_under_istio_s_default_policy_is_not_held() {
    // Istio's default policy names `unavailable` and `cancelled`, but a POST that reached the
    // application is not retried unless the route writes `retryOn`: nothing to wait for
    let up = Upstream::new(&[Answer::Hang]);
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        RetryLayer::new()
            .with_policy(Arc::new(RetryPolicy::default()))
            .layer(up.clone())
            .oneshot(call()),
    )
    .await;
    assert!(answered.is_ok(), "the head was held");
    // and a GET (idempotent) under the same policy is read ahead, then retried
    let up = Upstream::new(&[Answer::TrailersOnly(14)]);
    let get = Request::get("http://svc/")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = RetryLayer::new()
        .with_policy(Arc::new(RetryPolicy::default()))
        .with_seed(7)
        .layer(up.clone())
        .oneshot(get)
        .await
        .unwrap();
    assert_eq!(up.calls(), 2);
    assert_eq!(read(res).await.1.as_deref(), Some("0"));
}

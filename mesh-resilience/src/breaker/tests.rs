//! The circuit breaker under paused time, against a scripted mock upstream that counts the
//! requests it is handling at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use mesh_core::MeshBody;
use mesh_core::ext::{SelectedEndpoint, flags_of};
use mesh_core::flags::{RESPONSE_FLAGS_HEADER, ResponseFlags};
use mesh_core::limits::{ClusterLimits, RetryBudget, Thresholds};
use mesh_core::policy::RetryPolicy;
use mesh_core::replay::ReplayBody;
use tower::{Service, ServiceExt};

use super::*;
use crate::retry::RetryLayer;
use crate::timeout::TimeoutLayer;

type Res = Response<MeshBody<Full<Bytes>>>;

/// The mock upstream: answers each request after a delay, with the next scripted status
/// (200 when the script is over), and records how many it handled at once.
#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<VecDeque<u16>>>,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Mock {
    fn new(delay: Duration, script: &[u16]) -> Self {
        Mock {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            delay,
            ..Mock::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn most_at_once(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl<B: Send + 'static> Service<Request<B>> for Mock {
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let status = self.script.lock().unwrap().pop_front().unwrap_or(200);
        let m = self.clone();
        m.calls.fetch_add(1, Ordering::SeqCst);
        let now = m.now.fetch_add(1, Ordering::SeqCst) + 1;
        m.most.fetch_max(now, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(m.delay).await;
            m.now.fetch_sub(1, Ordering::SeqCst);
            let mut res = Response::new(MeshBody::inner(Full::new(Bytes::from_static(b"ok"))));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok(res)
        })
    }
}

fn limits(t: Thresholds) -> Arc<ClusterLimits> {
    Arc::new(ClusterLimits::detached(t))
}

fn breaker(mock: &Mock, l: &Arc<ClusterLimits>) -> CircuitBreaker<Mock> {
    CircuitBreakerLayer::new()
        .with_limits(l.clone())
        .layer(mock.clone())
}

fn h2_request() -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(SelectedEndpoint::new("10.0.0.1:80".parse().unwrap()).with_http2(true));
    req
}

fn assert_overflow(res: &Res) {
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flags_of(res), ResponseFlags::UPSTREAM_OVERFLOW);
    assert_eq!(res.headers()[RESPONSE_FLAGS_HEADER], "UO");
    assert_eq!(res.headers()["x-envoy-overloaded"], "true");
}

/// `http2MaxRequests` (Envoy's `max_requests`): a request over the limit gets Envoy's
/// overflow answer and never reaches the upstream; the count is held until the response
/// body ends.
#[tokio::test(start_paused = true)]
async fn max_requests_overflow_answers_503_uo_and_sends_nothing() {
    let mock = Mock::new(Duration::from_millis(100), &[]);
    let l = limits(Thresholds {
        max_requests: 2,
        ..Thresholds::default()
    });
    let svc = breaker(&mock, &l);
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(h2_request()),
        svc.clone().oneshot(h2_request()),
        svc.clone().oneshot(h2_request()),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert_overflow(&c);
    let body = http_body_util::BodyExt::collect(c.into_body()).await;
    assert_eq!(body.unwrap().to_bytes(), OVERFLOW_BODY.as_bytes());
    assert_eq!(mock.calls(), 2, "the overflow never reached the upstream");
    // a and b hold their bodies: still over
    let d = svc.clone().oneshot(h2_request()).await.unwrap();
    assert_overflow(&d);
    drop(a);
    let e = svc.clone().oneshot(h2_request()).await.unwrap();
    assert_eq!(e.status(), StatusCode::OK);
    assert_eq!(l.pending_overflows(), 2);
}

/// Istio's circuit-breaking task (`maxConnections: 1`, `http1MaxPendingRequests: 1`):
/// with three requests at once to an HTTP/1.1 upstream, one is sent, one waits for the
/// connection, one overflows; the upstream never handles two at once.
#[tokio::test(start_paused = true)]
async fn pending_overflow_with_one_connection_and_one_pending() {
    let mock = Mock::new(Duration::from_millis(100), &[]);
    let l = limits(Thresholds {
        max_connections: 1,
        max_pending_requests: 1,
        ..Thresholds::default()
    });
    let svc = breaker(&mock, &l);
    let start = tokio::time::Instant::now();
    let send = |svc: CircuitBreaker<Mock>| async move {
        // the client reads each answer whole, as a load generator does
        let res = svc.oneshot(Request::new(())).await.unwrap();
        let (parts, body) = res.into_parts();
        drop(body);
        (parts, tokio::time::Instant::now())
    };
    let (a, b, c) = tokio::join!(send(svc.clone()), send(svc.clone()), send(svc.clone()));
    let mut ok = [&a, &b, &c]
        .iter()
        .filter(|(p, _)| p.status == StatusCode::OK)
        .map(|(_, at)| *at - start)
        .collect::<Vec<_>>();
    ok.sort();
    assert_eq!(
        ok,
        [Duration::from_millis(100), Duration::from_millis(200)],
        "the pending request went when the connection was free"
    );
    let over: Vec<_> = [a, b, c]
        .into_iter()
        .filter(|(p, _)| p.status != StatusCode::OK)
        .collect();
    assert_eq!(over.len(), 1);
    assert_eq!(over[0].0.headers["x-envoy-overloaded"], "true");
    assert_eq!(mock.calls(), 2);
    assert_eq!(mock.most_at_once(), 1);
    assert_eq!((l.counters().connections(), l.counters().pending()), (0, 0));
}

/// A pending request dropped by the route timeout above leaves the pending requests and
/// never reaches the upstream.
#[tokio::test(start_paused = true)]
async fn a_pending_request_timed_out_leaves_the_queue() {
    let mock = Mock::new(Duration::from_secs(10), &[]);
    let l = limits(Thresholds {
        max_connections: 1,
        max_pending_requests: 5,
        ..Thresholds::default()
    });
    let svc = breaker(&mock, &l);
    let slow = tokio::spawn(svc.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    let timed = TimeoutLayer::new()
        .with_timeout(Duration::from_secs(1))
        .layer(svc.clone());
    let res = timed
        .oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(l.counters().pending(), 0);
    assert_eq!(mock.calls(), 1);
    drop(slow.await.unwrap().unwrap());
    assert_eq!(l.counters().connections(), 0);
}

/// HTTP/2 endpoints take no connection slot (`maxConnections` is about HTTP/1.1
/// connections here): both go at once.
#[tokio::test(start_paused = true)]
async fn http2_requests_take_no_connection_slot() {
    let mock = Mock::new(Duration::from_millis(100), &[]);
    let l = limits(Thresholds {
        max_connections: 1,
        max_pending_requests: 1,
        ..Thresholds::default()
    });
    let svc = breaker(&mock, &l);
    let (a, b) = tokio::join!(
        svc.clone().oneshot(h2_request()),
        svc.clone().oneshot(h2_request())
    );
    assert_eq!(a.unwrap().status(), StatusCode::OK);
    assert_eq!(b.unwrap().status(), StatusCode::OK);
    assert_eq!(mock.most_at_once(), 2);
}

/// Retry budget exhaustion: with a budget of one retry in flight, of two requests failing
/// at once only one is retried; the other gets its last answer with `UO` (Envoy's router on
/// `RetryStatus::NoOverflow`), and the upstream sees three requests, not four.
#[tokio::test(start_paused = true)]
async fn retry_budget_exhaustion_returns_the_last_answer_with_uo() {
    let mock = Mock::new(Duration::from_millis(10), &[503, 503, 503]);
    let l = limits(Thresholds {
        retry_budget: Some(RetryBudget {
            percent: 0.0,
            min_retry_concurrency: 1,
            interval: None,
        }),
        ..Thresholds::default()
    });
    let policy = RetryPolicy {
        attempts: 1,
        ..RetryPolicy::default()
    };
    let svc = RetryLayer::new()
        .with_policy(Arc::new(policy))
        .with_seed(7)
        .layer(breaker(&mock, &l));
    let send = |svc: crate::retry::Retry<CircuitBreaker<Mock>>| async move {
        svc.oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(send(svc.clone()), send(svc.clone()));
    let mut flags = [flags_of(&a), flags_of(&b)];
    flags.sort_by_key(|f| f.bits());
    assert_eq!(a.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        flags,
        [
            ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
            ResponseFlags::UPSTREAM_OVERFLOW
        ],
        "one retried and ran out of attempts, one refused a retry"
    );
    assert_eq!(mock.calls(), 3);
    assert_eq!(l.retry_overflows(), 1);
    assert_eq!(
        l.counters().retries(),
        0,
        "the permit ended with the request"
    );
    // the budget is free again: a lone failing request is retried
    let mock2 = Mock::new(Duration::from_millis(10), &[503]);
    let svc = RetryLayer::new()
        .with_policy(Arc::new(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }))
        .layer(breaker(&mock2, &l));
    let res: Res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(mock2.calls(), 2);
}

/// Without a `retryBudget` the default one (20 %, at least 3) still bounds retries: of
/// five requests failing at once, three are retried.
#[tokio::test(start_paused = true)]
async fn default_budget_bounds_retries_when_none_is_set() {
    let mock = Mock::new(Duration::from_millis(10), &[503; 5]);
    let l = limits(Thresholds::default());
    let svc = RetryLayer::new()
        .with_policy(Arc::new(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }))
        .with_seed(3)
        .layer(breaker(&mock, &l));
    let mut all = Vec::new();
    for _ in 0..5 {
        let svc = svc.clone();
        all.push(tokio::spawn(async move {
            let res: Res = svc
                .oneshot(Request::new(Full::new(Bytes::new())))
                .await
                .unwrap();
            res
        }));
    }
    let mut refused = 0;
    for h in all {
        let res = h.await.unwrap();
        if flags_of(&res).contains(ResponseFlags::UPSTREAM_OVERFLOW) {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            refused += 1;
        } else {
            assert_eq!(res.status(), StatusCode::OK, "retried once, then 200");
        }
    }
    assert_eq!(refused, 2);
    assert_eq!(mock.calls(), 8);
}

/// A request body type other than `()`: the layer is generic over it (the stack's
/// `ReplayBody`).
#[tokio::test(start_paused = true)]
async fn works_over_replay_bodies() {
    let mock = Mock::new(Duration::ZERO, &[]);
    let l = limits(Thresholds::default());
    let res = breaker(&mock, &l)
        .oneshot(Request::new(ReplayBody::plain(Full::new(Bytes::new()))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(l.counters().requests(), 1, "until the body ends");
    drop(res);
    assert_eq!(l.counters().requests(), 0);
}

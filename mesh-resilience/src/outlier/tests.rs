//! Outlier detection under paused time, against a scripted mock upstream that answers per
//! endpoint (Envoy's `test/common/upstream/outlier_detection_impl_test.cc` covers the same
//! ground).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use mesh_core::ext::{SelectedEndpoint, SelectedUpstream, UpstreamCluster, UpstreamPool, mark};
use mesh_core::flags::ResponseFlags;
use mesh_core::health::{HealthCell, HealthFlags, HealthKey, HealthSource, HealthTable};
use mesh_core::policy::OutlierPolicy;
use tower::{Service, ServiceExt};

use super::*;

/// What the mock upstream answers on an endpoint.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// A local reply of the layers below (the connector).
    Local(u16, ResponseFlags),
    /// Never answers.
    Hang,
}

/// The mock upstream: each endpoint answers as scripted (200 when not scripted).
#[derive(Clone, Default)]
struct Mock(Arc<Mutex<HashMap<SocketAddr, Answer>>>);

impl Mock {
    fn set(&self, addr: SocketAddr, a: Answer) {
        self.0.lock().unwrap().insert(addr, a);
    }

    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
    {
        let script = self.0.clone();
        tower::service_fn(move |req: Request<()>| {
            let addr = mesh_core::ext::selected_endpoint(req.extensions())
                .map(|e| e.addr)
                .expect("the balancer picked an endpoint");
            let answer = script
                .lock()
                .unwrap()
                .get(&addr)
                .copied()
                .unwrap_or(Answer::Status(200));
            async move {
                let mut res = Response::new(String::new());
                match answer {
                    Answer::Status(s) => *res.status_mut() = StatusCode::from_u16(s).unwrap(),
                    Answer::Local(s, flags) => {
                        *res.status_mut() = StatusCode::from_u16(s).unwrap();
                        mark(&mut res, flags);
                    }
                    Answer::Hang => std::future::pending::<()>().await,
                }
                Ok(res)
            }
        })
    }
}

/// A cluster of endpoints `10.0.0.1:80`, `10.0.0.2:80`, … sharing `table`, under `policy`.
struct Cluster {
    _table: Arc<HealthTable>,
    upstreams: Vec<SelectedUpstream>,
}

impl Cluster {
    fn new(n: u8, policy: OutlierPolicy) -> Cluster {
        let table = Arc::new(HealthTable::new());
        let policy = Arc::new(policy);
        let upstreams = (1..=n)
            .map(|i| {
                let addr: SocketAddr = format!("10.0.0.{i}:80").parse().unwrap();
                let name: Arc<str> = "outbound|80||svc.default.svc.cluster.local".into();
                let health = table.cell(&HealthKey {
                    cluster: name.clone(),
                    addr,
                });
                SelectedUpstream::new(
                    SelectedEndpoint::new(addr),
                    UpstreamCluster {
                        name,
                        health,
                        pool: UpstreamPool::default(),
                        outlier: Some(policy.clone()),
                        limits: None,
                    },
                )
            })
            .collect();
        Cluster {
            _table: table,
            upstreams,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.upstreams[i].endpoint().addr
    }

    fn cell(&self, i: usize) -> &Arc<HealthCell> {
        &self.upstreams[i].cluster().health
    }

    fn ejected(&self, i: usize) -> bool {
        self.cell(i).flags().contains(HealthFlags::EJECTED)
    }

    fn request(&self, i: usize) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(self.upstreams[i].clone());
        req
    }
}

/// Sends `n` requests to endpoint `i` through the layer over the mock.
async fn send(c: &Cluster, mock: &Mock, i: usize, n: usize) {
    let mut svc = OutlierLayer::new().layer(mock.service());
    for _ in 0..n {
        svc.ready().await.unwrap().call(c.request(i)).await.unwrap();
    }
}

/// Sends one request through `svc`.
async fn once<S>(svc: &mut S, req: Request<()>)
where
    S: Service<Request<()>, Error = Infallible>,
{
    let _ = svc.ready().await.unwrap().call(req).await;
}

fn policy(f: impl FnOnce(&mut OutlierPolicy)) -> OutlierPolicy {
    let mut p = OutlierPolicy {
        max_ejection_percent: 100,
        ..OutlierPolicy::default()
    };
    f(&mut p);
    p
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn five_5xx_in_a_row_eject_and_the_endpoint_returns_after_base_ejection_time() {
    let c = Cluster::new(1, policy(|_| {}));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 4).await;
    assert!(!c.ejected(0), "4 errors are under Envoy's default of 5");
    send(&c, &mock, 0, 1).await;
    assert!(c.ejected(0), "the 5th ejects");
    assert_eq!(c.cell(0).cluster().ejected(), 1);
    assert_eq!(c.cell(0).outlier().ejections.load(Ordering::Relaxed), 1);
    tokio::time::sleep(29 * SECOND).await;
    assert!(c.ejected(0), "ejected for baseEjectionTime × 1 = 30s");
    tokio::time::sleep(2 * SECOND).await;
    assert!(c.cell(0).is_healthy(), "back after 30s");
    assert_eq!(c.cell(0).cluster().ejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_ejection_lasts_base_ejection_time_times_n_and_n_decays_while_healthy() {
    let c = Cluster::new(1, policy(|p| p.consecutive_5xx = Some(1)));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(503));
    send(&c, &mock, 0, 1).await;
    assert!(c.ejected(0));
    tokio::time::sleep(31 * SECOND).await;
    assert!(c.cell(0).is_healthy(), "first ejection: 30s");
    // fails again at once: the second ejection lasts 60s
    send(&c, &mock, 0, 1).await;
    assert!(c.ejected(0));
    let second = tokio::time::Instant::now();
    tokio::time::sleep_until(second + 59 * SECOND).await;
    assert!(c.ejected(0), "second ejection: 30s × 2");
    // reviewed every 10s since the first ejection: back at the first review after 60s
    tokio::time::sleep_until(second + 70 * SECOND).await;
    assert!(c.cell(0).is_healthy(), "within one interval of 60s");
    assert_eq!(c.cell(0).outlier().backoff.load(Ordering::Relaxed), 2);
    // healthy for two intervals (10s each): the multiplier is back to 0, so the next
    // ejection lasts 30s again
    mock.set(c.addr(0), Answer::Status(200));
    tokio::time::sleep(25 * SECOND).await;
    assert_eq!(c.cell(0).outlier().backoff.load(Ordering::Relaxed), 0);
    mock.set(c.addr(0), Answer::Status(503));
    send(&c, &mock, 0, 1).await;
    assert!(c.ejected(0));
    tokio::time::sleep(31 * SECOND).await;
    assert!(c.cell(0).is_healthy(), "the multiplier decayed: 30s again");
    assert_eq!(c.cell(0).outlier().ejections.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn the_ejection_time_is_capped_by_the_max_ejection_time() {
    let c = Cluster::new(
        1,
        policy(|p| {
            p.consecutive_5xx = Some(1);
            p.base_ejection_time = 20 * SECOND;
            p.max_ejection_time = 30 * SECOND;
        }),
    );
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    for round in 0..3 {
        send(&c, &mock, 0, 1).await;
        assert!(c.ejected(0), "round {round}");
        let at = tokio::time::Instant::now();
        // 20s, then min(40s, 30s), then 30s: back by the first review after
        tokio::time::sleep_until(at + 41 * SECOND).await;
        assert!(
            c.cell(0).is_healthy(),
            "round {round}: never over 30s (+ one interval)"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_count() {
    let c = Cluster::new(1, policy(|_| {}));
    let mock = Mock::default();
    for _ in 0..3 {
        mock.set(c.addr(0), Answer::Status(500));
        send(&c, &mock, 0, 4).await;
        mock.set(c.addr(0), Answer::Status(404));
        send(&c, &mock, 0, 1).await;
    }
    assert!(c.cell(0).is_healthy(), "never 5 errors in a row");
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 5).await;
    assert!(c.ejected(0));
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_bounds_the_ejected_share_of_the_cluster() {
    let c = Cluster::new(
        4,
        policy(|p| {
            p.consecutive_5xx = Some(1);
            p.max_ejection_percent = 50;
        }),
    );
    let mock = Mock::default();
    for i in 0..4 {
        mock.set(c.addr(i), Answer::Status(500));
        send(&c, &mock, i, 1).await;
    }
    let ejected: Vec<bool> = (0..4).map(|i| c.ejected(i)).collect();
    assert_eq!(ejected, [true, true, false, false], "50% of 4");
    assert_eq!(c.cell(0).cluster().ejected(), 2);
    // when the first two return, the others may go
    tokio::time::sleep(31 * SECOND).await;
    assert_eq!(c.cell(0).cluster().ejected(), 0);
    send(&c, &mock, 2, 1).await;
    send(&c, &mock, 3, 1).await;
    assert!(c.ejected(2) && c.ejected(3));
}

#[tokio::test(start_paused = true)]
async fn the_default_max_ejection_percent_ejects_nothing_in_a_small_cluster() {
    // Envoy: 100 × (0 + 1) / 4 = 25% > 10%, and Istio leaves always_eject_one_host off
    let c = Cluster::new(
        4,
        OutlierPolicy {
            consecutive_5xx: Some(1),
            ..OutlierPolicy::default()
        },
    );
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 10).await;
    assert!(c.cell(0).is_healthy());
    let big = Cluster::new(
        10,
        OutlierPolicy {
            consecutive_5xx: Some(1),
            ..OutlierPolicy::default()
        },
    );
    mock.set(big.addr(0), Answer::Status(500));
    mock.set(big.addr(1), Answer::Status(500));
    send(&big, &mock, 0, 1).await;
    send(&big, &mock, 1, 1).await;
    assert!(big.ejected(0), "10% of 10: one");
    assert!(!big.ejected(1), "but not two");
}

#[tokio::test(start_paused = true)]
async fn gateway_errors_eject_only_when_their_detector_is_set() {
    let c = Cluster::new(
        2,
        policy(|p| {
            p.consecutive_5xx = None;
            p.consecutive_gateway = Some(3);
        }),
    );
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 10).await;
    assert!(c.cell(0).is_healthy(), "500 is not a gateway error");
    mock.set(c.addr(1), Answer::Status(502));
    send(&c, &mock, 1, 2).await;
    mock.set(c.addr(1), Answer::Status(500));
    send(&c, &mock, 1, 1).await;
    mock.set(c.addr(1), Answer::Status(504));
    send(&c, &mock, 1, 2).await;
    assert!(
        c.cell(1).is_healthy(),
        "a 500 between them resets the gateway count"
    );
    send(&c, &mock, 1, 1).await;
    assert!(c.ejected(1));
}

#[tokio::test(start_paused = true)]
async fn connection_failures_count_as_503_without_the_split() {
    let c = Cluster::new(
        3,
        policy(|p| {
            p.consecutive_5xx = Some(3);
        }),
    );
    let mock = Mock::default();
    // connect failure, reset, protocol error: Envoy's LocalOriginConnectFailed, a 503
    mock.set(
        c.addr(0),
        Answer::Local(503, ResponseFlags::UPSTREAM_CONNECTION_FAILURE),
    );
    mock.set(
        c.addr(1),
        Answer::Local(503, ResponseFlags::UPSTREAM_REMOTE_RESET),
    );
    mock.set(
        c.addr(2),
        Answer::Local(502, ResponseFlags::UPSTREAM_PROTOCOL_ERROR),
    );
    for i in 0..3 {
        send(&c, &mock, i, 2).await;
        assert!(c.cell(i).is_healthy());
        send(&c, &mock, i, 1).await;
        assert!(c.ejected(i), "endpoint {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_split_local_origin_failures_have_their_own_count() {
    let c = Cluster::new(
        2,
        policy(|p| {
            p.consecutive_5xx = Some(2);
            p.split_local_origin = true;
            p.consecutive_local_origin = Some(3);
        }),
    );
    let mock = Mock::default();
    mock.set(
        c.addr(0),
        Answer::Local(503, ResponseFlags::UPSTREAM_CONNECTION_FAILURE),
    );
    send(&c, &mock, 0, 2).await;
    assert!(c.cell(0).is_healthy(), "not counted as 5xx under the split");
    // an answer of the endpoint (even a 5xx) shows the connection works
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 1).await;
    mock.set(
        c.addr(0),
        Answer::Local(503, ResponseFlags::UPSTREAM_CONNECTION_FAILURE),
    );
    send(&c, &mock, 0, 2).await;
    assert!(
        c.cell(0).is_healthy(),
        "the answer reset the local-origin count"
    );
    send(&c, &mock, 0, 1).await;
    assert!(c.ejected(0), "3 local-origin failures in a row");
    // and the endpoint's own 5xx still count as 5xx
    mock.set(c.addr(1), Answer::Status(500));
    send(&c, &mock, 1, 2).await;
    assert!(c.ejected(1));
}

#[tokio::test(start_paused = true)]
async fn replies_that_are_not_the_endpoint_s_fault_do_not_count() {
    let c = Cluster::new(1, policy(|p| p.consecutive_5xx = Some(2)));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 1).await;
    for flags in [
        ResponseFlags::UPSTREAM_OVERFLOW,
        ResponseFlags::NO_HEALTHY_UPSTREAM,
        ResponseFlags::NO_ROUTE,
        ResponseFlags::RATE_LIMITED,
        ResponseFlags::FAULT_INJECTED,
    ] {
        mock.set(c.addr(0), Answer::Local(503, flags));
        send(&c, &mock, 0, 3).await;
        assert!(c.cell(0).is_healthy(), "{flags:?} does not count");
    }
    assert_eq!(
        c.cell(0).outlier().consecutive_5xx.load(Ordering::Relaxed),
        1,
        "nor does it reset the count"
    );
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 1).await;
    assert!(c.ejected(0));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_dropped_by_a_timeout_counts_and_one_the_client_dropped_does_not() {
    use mesh_core::ext::TimeoutMark;
    let c = Cluster::new(1, policy(|p| p.consecutive_gateway = Some(2)));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Hang);
    let svc = OutlierLayer::new().layer(mock.service());
    // the client goes away (no timeout fired): not the endpoint's fault, as in Envoy
    for _ in 0..3 {
        let gone = tokio::time::timeout(SECOND, svc.clone().oneshot(c.request(0))).await;
        assert!(gone.is_err());
    }
    assert!(c.cell(0).is_healthy(), "client disconnects never eject");
    // a per-try or route timeout above fires its mark, then drops the attempt: Envoy's
    // LocalOriginTimeout, a 504 (the attempt's own mark chained to the route's, as the
    // retry layer writes it; the route's has fired)
    let route = TimeoutMark::new();
    route.fire();
    for _ in 0..2 {
        let mut req = c.request(0);
        req.extensions_mut()
            .insert(TimeoutMark::child_of(Some(&route)));
        let late = tokio::time::timeout(SECOND, svc.clone().oneshot(req)).await;
        assert!(late.is_err());
    }
    assert!(c.ejected(0), "two gateway errors");
}

#[tokio::test(start_paused = true)]
async fn a_grpc_answer_is_judged_by_its_grpc_status() {
    let c = Cluster::new(1, policy(|p| p.consecutive_5xx = Some(2)));
    let grpc = |status: &'static str, content_type: &'static str| {
        tower::service_fn(move |_req: Request<()>| async move {
            let res = Response::builder()
                .header("content-type", content_type)
                .header("grpc-status", status)
                .body(String::new())
                .unwrap();
            Ok::<_, Infallible>(res)
        })
    };
    // UNAVAILABLE (14) is Envoy's 503; NOT_FOUND (5) a 404; not gRPC: its HTTP 200
    let mut not_grpc = OutlierLayer::new().layer(grpc("14", "text/plain"));
    let mut not_found = OutlierLayer::new().layer(grpc("5", "application/grpc"));
    let mut unavailable = OutlierLayer::new().layer(grpc("14", "application/grpc+proto"));
    for _ in 0..3 {
        once(&mut not_grpc, c.request(0)).await;
    }
    assert!(
        c.cell(0).is_healthy(),
        "grpc-status is read on gRPC answers only"
    );
    once(&mut unavailable, c.request(0)).await;
    once(&mut not_found, c.request(0)).await;
    once(&mut unavailable, c.request(0)).await;
    assert!(
        c.cell(0).is_healthy(),
        "NOT_FOUND is a 404: a success between"
    );
    once(&mut unavailable, c.request(0)).await;
    assert!(c.ejected(0), "two UNAVAILABLE in a row");
}

#[tokio::test(start_paused = true)]
async fn http_error_codes_replace_5xx() {
    let c = Cluster::new(
        1,
        policy(|p| {
            p.consecutive_5xx = Some(2);
            p.error_codes = vec![429].into();
        }),
    );
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 5).await;
    assert!(c.cell(0).is_healthy(), "500 is not listed");
    mock.set(c.addr(0), Answer::Status(429));
    send(&c, &mock, 0, 2).await;
    assert!(c.ejected(0));
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_cluster_or_a_policy_pass_untouched() {
    let mock = Mock::default();
    let addr: SocketAddr = "10.0.0.9:80".parse().unwrap();
    mock.set(addr, Answer::Status(500));
    let cell = Arc::new(HealthCell::detached());
    let cluster = UpstreamCluster {
        name: "c".into(),
        health: cell.clone(),
        pool: UpstreamPool::default(),
        outlier: None,
        limits: None,
    };
    let mut svc = OutlierLayer::new().layer(mock.service());
    for _ in 0..10 {
        let mut req = Request::new(());
        req.extensions_mut().insert(SelectedEndpoint::new(addr));
        req.extensions_mut().insert(cluster.clone());
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    assert!(cell.is_healthy(), "no policy: nothing judged");
    // the layer's own policy applies to clusters without one
    let mut svc = OutlierLayer::new()
        .with_policy(Arc::new(policy(|p| p.consecutive_5xx = Some(3))))
        .layer(mock.service());
    for _ in 0..3 {
        let mut req = Request::new(());
        req.extensions_mut().insert(SelectedEndpoint::new(addr));
        req.extensions_mut().insert(cluster.clone());
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    assert!(cell.flags().contains(HealthFlags::EJECTED));
}

#[tokio::test(start_paused = true)]
async fn the_review_ends_when_nothing_is_left_and_when_the_cluster_is_gone() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let c = Cluster::new(1, policy(|p| p.consecutive_5xx = Some(1)));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    send(&c, &mock, 0, 1).await;
    assert_eq!(metrics.num_alive_tasks(), 1, "one review for the cluster");
    // back at 30s; the multiplier decays at 40s: nothing left to review
    tokio::time::sleep(45 * SECOND).await;
    assert!(c.cell(0).is_healthy());
    assert_eq!(metrics.num_alive_tasks(), 0, "the review ended");
    // ejected again, then the cluster goes away (a reload removed it)
    send(&c, &mock, 0, 1).await;
    assert_eq!(metrics.num_alive_tasks(), 1);
    drop(c);
    tokio::time::sleep(11 * SECOND).await;
    assert_eq!(metrics.num_alive_tasks(), 0, "no task outlives its cluster");
}

#[test]
fn without_a_runtime_nothing_is_ejected() {
    let c = Cluster::new(1, policy(|p| p.consecutive_5xx = Some(1)));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Status(500));
    let svc = OutlierLayer::new().layer(mock.service());
    let fut = svc.oneshot(c.request(0));
    // polled outside any runtime: nothing could bring the endpoint back
    let res = futures_lite_block_on(fut).unwrap();
    assert_eq!(res.status(), 500);
    assert!(c.cell(0).is_healthy());
}

/// Polls a future that never waits to completion without a runtime.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the answers and the waits: the cluster's ejected count is the number of
    /// ejected cells, never over `maxEjectionPercent` of the cluster (Envoy's rule), and
    /// every endpoint is back once the longest ejection is over.
    #[test]
    fn the_ejected_count_matches_the_cells_and_respects_max_ejection_percent(
        max_percent in 1u32..=100,
        steps in proptest::collection::vec((0usize..5, 0u8..4, 0u64..40), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Cluster::new(5, policy(|p| {
                p.consecutive_5xx = Some(2);
                p.consecutive_gateway = Some(1);
                p.max_ejection_percent = max_percent;
            }));
            let mock = Mock::default();
            for (i, kind, wait) in steps {
                let answer = match kind {
                    0 => Answer::Status(200),
                    1 => Answer::Status(500),
                    2 => Answer::Status(503),
                    _ => Answer::Local(503, ResponseFlags::UPSTREAM_CONNECTION_FAILURE),
                };
                mock.set(c.addr(i), answer);
                send(&c, &mock, i, 1).await;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let ejected = (0..5).filter(|&k| c.ejected(k)).count() as u32;
                proptest::prop_assert_eq!(c.cell(0).cluster().ejected(), ejected);
                proptest::prop_assert!(100 * ejected <= max_percent * 5);
            }
            // the longest ejection: max_ejection_time (300s), plus one interval
            tokio::time::sleep(Duration::from_secs(311)).await;
            proptest::prop_assert!((0..5).all(|k| c.cell(k).is_healthy()));
            proptest::prop_assert_eq!(c.cell(0).cluster().ejected(), 0);
            Ok(())
        })?;
    }
}

/// The route timeout of the timeout layer above marks the attempts it drops: a hanging
/// endpoint is ejected by its timeouts (Envoy's LocalOriginTimeout), end to end in the crate.
#[tokio::test(start_paused = true)]
async fn the_route_timeout_above_counts_as_the_endpoint_s_timeout() {
    use crate::timeout::TimeoutLayer;
    use http_body_util::Empty;
    let c = Cluster::new(1, policy(|p| p.consecutive_gateway = Some(2)));
    let mock = Mock::default();
    mock.set(c.addr(0), Answer::Hang);
    let svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new().with_timeout(Duration::from_millis(100)))
        .map_response(|r: Response<String>| {
            r.map(|s| http_body_util::Full::new(bytes::Bytes::from(s)))
        })
        .map_request(|r: Request<_>| r.map(|_| ()))
        .layer(OutlierLayer::new())
        .service(mock.service());
    for _ in 0..2 {
        let mut req = Request::new(Empty::<bytes::Bytes>::new());
        *req.extensions_mut() = c.request(0).extensions().clone();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert!(c.ejected(0), "two route timeouts are two gateway errors");
}

/// Envoy's TCP proxy reports connect failures as local-origin failures: with the default
/// (no split) they count as 503s; a connection resets the count.
#[tokio::test(start_paused = true)]
async fn tcp_connect_failures_eject_and_a_connection_resets_the_count() {
    let cell = Arc::new(HealthCell::detached());
    let cluster = UpstreamCluster {
        name: "outbound|9000||tcp-echo.default.svc.cluster.local".into(),
        health: cell.clone(),
        pool: UpstreamPool::default(),
        outlier: Some(Arc::new(OutlierPolicy {
            consecutive_5xx: Some(3),
            max_ejection_percent: 100,
            ..OutlierPolicy::default()
        })),
        limits: None,
    };
    record_connect(&cluster, ConnectOutcome::Failed);
    record_connect(&cluster, ConnectOutcome::TimedOut);
    record_connect(&cluster, ConnectOutcome::Connected);
    record_connect(&cluster, ConnectOutcome::Failed);
    record_connect(&cluster, ConnectOutcome::Failed);
    assert!(
        cell.is_healthy(),
        "the connection in between reset the count"
    );
    record_connect(&cluster, ConnectOutcome::Failed);
    assert_eq!(cell.flags(), HealthFlags::EJECTED);
    // without outlierDetection nothing is judged
    let plain = UpstreamCluster {
        outlier: None,
        health: Arc::new(HealthCell::detached()),
        ..cluster
    };
    for _ in 0..10 {
        record_connect(&plain, ConnectOutcome::Failed);
    }
    assert!(plain.health.is_healthy());
}

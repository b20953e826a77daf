use super::*;
use crate::model::networking::{
    ConnectionPoolSettings, HttpSettings, RetryBudget as IstioBudget, TcpSettings,
};

fn limits(t: Thresholds) -> Arc<ClusterLimits> {
    Arc::new(ClusterLimits::detached(t))
}

fn admitted(a: Admission) -> Permit {
    match a {
        Admission::Admitted(p) => p,
        other => panic!("expected admission, got {other:?}"),
    }
}

/// Istio's `applyConnectionPool`: unset or non-positive fields stay at `math.MaxUint32`;
/// the circuit-breaking task's values land in Envoy's thresholds.
#[test]
fn thresholds_follow_istio_apply_connection_pool() {
    assert_eq!(
        Thresholds::from_traffic_policy(&TrafficPolicy::default()),
        Thresholds::default()
    );
    let tp = TrafficPolicy {
        connection_pool: Some(ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: Some(1),
                ..TcpSettings::default()
            }),
            http: Some(HttpSettings {
                http1_max_pending_requests: Some(1),
                http2_max_requests: Some(0),
                max_retries: Some(-3),
                ..HttpSettings::default()
            }),
        }),
        ..TrafficPolicy::default()
    };
    let t = Thresholds::from_traffic_policy(&tp);
    assert_eq!(t.max_connections, 1);
    assert_eq!(t.max_pending_requests, 1);
    assert_eq!(t.max_requests, UNLIMITED, "0 is Istio's unset");
    assert_eq!(t.max_retries, UNLIMITED);
    assert_eq!(t.retry_budget, None);
}

/// Istio's `applyRetryBudget`: percent 20 and minRetryConcurrency 3 when unset.
#[test]
fn retry_budget_defaults_follow_istio_apply_retry_budget() {
    let tp = TrafficPolicy {
        retry_budget: Some(IstioBudget::default()),
        ..TrafficPolicy::default()
    };
    assert_eq!(
        Thresholds::from_traffic_policy(&tp).retry_budget,
        Some(DEFAULT_RETRY_BUDGET)
    );
    let tp = TrafficPolicy {
        retry_budget: Some(IstioBudget {
            percent: Some(50.0),
            min_retry_concurrency: 1,
            budget_interval: None,
        }),
        ..TrafficPolicy::default()
    };
    let b = Thresholds::from_traffic_policy(&tp).retry_budget.unwrap();
    assert_eq!((b.percent, b.min_retry_concurrency), (50.0, 1));
    // Envoy's RetryBudgetImpl::max: max(percent × active, min)
    assert_eq!(b.limit(0), 1);
    assert_eq!(b.limit(10), 5);
    assert_eq!(DEFAULT_RETRY_BUDGET.limit(10), 3);
    assert_eq!(DEFAULT_RETRY_BUDGET.limit(100), 20);
}

#[test]
fn max_requests_overflows_and_frees_on_release() {
    let l = limits(Thresholds {
        max_requests: 2,
        ..Thresholds::default()
    });
    let a = admitted(l.admit(false));
    let b = admitted(l.admit(true)); // no connection limit: HTTP/1.1 counts as a request only
    assert!(matches!(l.admit(false), Admission::Overflow));
    assert_eq!(l.pending_overflows(), 1);
    assert_eq!(l.counters().requests(), 2);
    assert_eq!(l.counters().connections(), 0);
    drop(a);
    let end = b.into_body_end();
    assert_eq!(l.counters().requests(), 1, "held by the body until it ends");
    end.body_ended();
    assert_eq!(l.counters().requests(), 0);
    let _c = admitted(l.admit(false));
}

/// `maxConnections: 1`, `http1MaxPendingRequests: 1` (Istio's circuit-breaking task): one
/// request on the connection, one waiting for it, the third overflows.
#[tokio::test]
async fn one_connection_one_pending_then_overflow() {
    let l = limits(Thresholds {
        max_connections: 1,
        max_pending_requests: 1,
        ..Thresholds::default()
    });
    let first = admitted(l.admit(true));
    assert_eq!(l.counters().connections(), 1);
    assert!(matches!(l.admit(true), Admission::Pending));
    let mut waiting = Box::pin(l.clone().wait());
    assert!(
        futures_poll(&mut waiting).is_none(),
        "no connection is free"
    );
    assert_eq!(l.counters().pending(), 1);
    assert!(matches!(l.admit(true), Admission::Overflow));
    assert!(l.clone().wait().await.is_err(), "the pending room is taken");
    assert_eq!(l.pending_overflows(), 2);
    // HTTP/2 requests need no HTTP/1.1 connection
    drop(admitted(l.admit(false)));
    drop(first);
    let second = waiting.await.expect("the freed connection");
    assert_eq!(l.counters().pending(), 0);
    assert_eq!(l.counters().connections(), 1);
    drop(second);
    assert_eq!(l.counters().connections(), 0);
    assert_eq!(l.counters().requests(), 0);
}

/// A waiter that goes away (its request timed out) leaves the pending requests, and the
/// connection it was woken for goes to the next waiter.
#[tokio::test]
async fn a_dropped_waiter_leaves_the_pending() {
    let l = limits(Thresholds {
        max_connections: 1,
        max_pending_requests: 2,
        ..Thresholds::default()
    });
    let first = admitted(l.admit(true));
    let mut a = Box::pin(l.clone().wait());
    let mut b = Box::pin(l.clone().wait());
    assert!(futures_poll(&mut a).is_none() && futures_poll(&mut b).is_none());
    assert_eq!(l.counters().pending(), 2);
    drop(first); // wakes `a`
    drop(a);
    assert_eq!(l.counters().pending(), 1);
    let got = b.await.expect("the wake-up passed on");
    drop(got);
    assert_eq!(l.counters().connections(), 0);
}

/// The default budget (20 %, at least 3) applies beside `maxRetries`, whichever is lower;
/// a DestinationRule's `retryBudget` replaces `maxRetries` (Envoy's `RetryBudgetImpl`).
#[test]
fn retry_permits_follow_budget_and_max_retries() {
    let l = limits(Thresholds::default());
    let permits: Vec<_> = (0..3).map(|_| l.try_retry().expect("min 3")).collect();
    assert!(l.try_retry().is_none());
    assert_eq!(l.retry_overflows(), 1);
    // 20 active requests: 20 % is 4
    let active: Vec<_> = (0..20).map(|_| admitted(l.admit(false))).collect();
    let fourth = l.try_retry().expect("20 % of 20");
    assert!(l.try_retry().is_none());
    drop((permits, fourth, active));
    assert_eq!(l.counters().retries(), 0);

    let l = limits(Thresholds {
        max_retries: 1,
        ..Thresholds::default()
    });
    let one = l.try_retry().expect("maxRetries 1");
    assert!(l.try_retry().is_none());
    drop(one);

    let l = limits(Thresholds {
        max_retries: 1,
        retry_budget: Some(RetryBudget {
            percent: 0.0,
            min_retry_concurrency: 2,
        }),
        ..Thresholds::default()
    });
    let _two = [l.try_retry().unwrap(), l.try_retry().unwrap()];
    assert!(l.try_retry().is_none(), "the budget replaces maxRetries");
}

/// Polls a future once.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

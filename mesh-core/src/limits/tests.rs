use super::*;
use crate::model::networking::{
    ConnectionPoolSettings, HttpSettings, RetryBudget as IstioBudget, TcpSettings,
};
use std::time::Duration;

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
            interval: None,
        }),
        ..Thresholds::default()
    });
    let _two = [l.try_retry().unwrap(), l.try_retry().unwrap()];
    assert!(l.try_retry().is_none(), "the budget replaces maxRetries");
}

/// A refused retry is counted under the limit that refused it: the budget (the
/// DestinationRule's, or the default one when it is below `maxRetries`) or `maxRetries`;
/// `retry_overflows` is their sum (Envoy's `upstream_rq_retry_overflow`).
#[test]
fn retry_overflows_tell_the_budget_from_max_retries() {
    let c = |l: &ClusterLimits, by| l.counters().retry_overflows_by(by);
    // the default budget (at least 3) below unlimited `maxRetries`
    let l = limits(Thresholds::default());
    let _three: Vec<_> = (0..3).map(|_| l.try_retry().unwrap()).collect();
    assert!(l.try_retry().is_none());
    assert_eq!(c(&l, RetryLimit::RetryBudget), 1);
    assert_eq!(c(&l, RetryLimit::MaxRetries), 0);
    // `maxRetries: 1`, below the default budget's 3
    let l = limits(Thresholds {
        max_retries: 1,
        ..Thresholds::default()
    });
    let _one = l.try_retry().unwrap();
    assert!(l.try_retry().is_none() && l.try_retry().is_none());
    assert_eq!(c(&l, RetryLimit::MaxRetries), 2);
    assert_eq!(c(&l, RetryLimit::RetryBudget), 0);
    assert_eq!(l.retry_overflows(), 2);
    // `maxRetries` equal to the default budget's minimum: `maxRetries` refused it
    let l = limits(Thresholds {
        max_retries: 3,
        ..Thresholds::default()
    });
    let _three: Vec<_> = (0..3).map(|_| l.try_retry().unwrap()).collect();
    assert!(l.try_retry().is_none());
    assert_eq!(c(&l, RetryLimit::MaxRetries), 1);
    // the DestinationRule's budget, whatever `maxRetries`
    let l = limits(Thresholds {
        max_retries: 1,
        retry_budget: Some(RetryBudget {
            percent: 0.0,
            min_retry_concurrency: 1,
            interval: None,
        }),
        ..Thresholds::default()
    });
    let _one = l.try_retry().unwrap();
    assert!(l.try_retry().is_none());
    assert_eq!(c(&l, RetryLimit::RetryBudget), 1);
    assert_eq!(c(&l, RetryLimit::MaxRetries), 0);
    assert_eq!(l.retry_overflows(), 1);
}

/// The pool's connections, counted in their cluster: open until the gauge goes (or is
/// closed first), idle while marked, marks idempotent, nothing counted after the close.
#[test]
fn connection_gauges_count_open_and_idle_connections() {
    let c = Arc::new(ClusterCounters::default());
    let a = c.connection_gauge();
    let mut b = c.connection_gauge();
    assert_eq!(
        (c.pool_connections_open(), c.pool_connections_idle()),
        (2, 0)
    );
    a.set_idle(true);
    a.set_idle(true);
    assert_eq!(c.pool_connections_idle(), 1, "marked once");
    b.set_idle_mut(true);
    b.set_idle_mut(true);
    assert_eq!(c.pool_connections_idle(), 2);
    b.set_idle_mut(false);
    assert_eq!(c.pool_connections_idle(), 1);
    drop(a);
    assert_eq!(
        (c.pool_connections_open(), c.pool_connections_idle()),
        (1, 0)
    );
    b.set_idle(true);
    b.close();
    b.set_idle(false);
    b.set_idle(true);
    assert_eq!(
        (c.pool_connections_open(), c.pool_connections_idle()),
        (0, 0)
    );
    drop(b);
    assert_eq!(c.pool_connections_open(), 0, "closed once");
    assert_eq!(c.pool_connections_opened(), 2);
}

/// Istio's `retryBudget.budgetInterval`: the budget is a share of the requests begun within
/// the interval (a sliding window in tenths of it), not only those still active: after ten
/// short requests, five retries may run at once (50 %); once the interval has passed
/// without requests, only `minRetryConcurrency`. Without the interval the same ten ended
/// requests leave only the minimum. A zero interval is Istio's default (unset).
#[tokio::test(start_paused = true)]
async fn budget_interval_counts_the_requests_begun_within_it() {
    let budget = |interval: Option<Duration>| Thresholds {
        retry_budget: Some(RetryBudget {
            percent: 50.0,
            min_retry_concurrency: 1,
            interval,
        }),
        ..Thresholds::default()
    };
    let held = |l: &ClusterLimits| {
        let mut permits = Vec::new();
        while let Some(p) = l.try_retry() {
            permits.push(p);
        }
        permits.len()
    };
    let l = limits(budget(Some(Duration::from_secs(10))));
    for _ in 0..10 {
        drop(admitted(l.admit(false))); // short requests: ended at once
    }
    assert_eq!(l.counters().requests(), 0);
    assert_eq!(held(&l), 5, "50 % of the 10 begun within 10s");
    tokio::time::advance(Duration::from_secs(6)).await;
    for _ in 0..4 {
        drop(admitted(l.admit(false)));
    }
    assert_eq!(held(&l), 7, "14 within the window");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(held(&l), 2, "the first 10 left the window 10s after them");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(held(&l), 1, "an empty window: minRetryConcurrency");

    let l = limits(budget(None));
    for _ in 0..10 {
        drop(admitted(l.admit(false)));
    }
    assert_eq!(held(&l), 1, "no interval: the active requests only");

    let tp = TrafficPolicy {
        retry_budget: Some(IstioBudget {
            budget_interval: Some("0ms".parse().unwrap()),
            ..IstioBudget::default()
        }),
        ..TrafficPolicy::default()
    };
    let b = Thresholds::from_traffic_policy(&tp).retry_budget.unwrap();
    assert_eq!(b.interval, None, "0ms: Istio's default");
    let tp = TrafficPolicy {
        retry_budget: Some(IstioBudget {
            budget_interval: Some("30s".parse().unwrap()),
            ..IstioBudget::default()
        }),
        ..TrafficPolicy::default()
    };
    let b = Thresholds::from_traffic_policy(&tp).retry_budget.unwrap();
    assert_eq!(b.interval, Some(Duration::from_secs(30)));
}

/// Polls a future once.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Envoy's `max_connections` and `max_pending_requests` on HTTP/2
/// (`intro/arch_overview/upstream/circuit_breaking`): a connection permit past the limit
/// only for a pool's first connection (counted all the same); pending HTTP/2 requests share
/// `http1MaxPendingRequests` with HTTP/1.1 ones, an overflow is counted, and a stream's end
/// wakes them.
#[tokio::test(start_paused = true)]
async fn h2_connection_permits_and_pending_requests() {
    let l = limits(Thresholds {
        max_connections: 1,
        max_pending_requests: 2,
        ..Thresholds::default()
    });
    let first = l.h2_connection(false).unwrap();
    assert!(l.h2_connection(false).is_none());
    assert_eq!(l.counters().connection_overflows(), 1);
    let over = l
        .h2_connection(true)
        .expect("a pool's first, whatever the limit");
    assert_eq!(l.counters().connections(), 2);
    drop((first, over));
    assert_eq!(l.counters().connections(), 0);
    // pending: HTTP/1.1 and HTTP/2 requests count against the same limit
    let _conn = admitted(l.admit(true));
    assert!(matches!(l.admit(true), Admission::Pending));
    let h1 = tokio::spawn(l.clone().wait());
    tokio::task::yield_now().await;
    let h2 = l.enter_pending().unwrap();
    assert_eq!(l.counters().pending(), 2);
    assert!(l.enter_pending().is_none(), "over http1MaxPendingRequests");
    assert_eq!(l.pending_overflows(), 1);
    // a stream's end wakes an HTTP/2 waiter
    let released = l.h2_released();
    tokio::pin!(released);
    released.as_mut().enable();
    l.counters().stream_ended();
    tokio::time::timeout(std::time::Duration::from_secs(60), released)
        .await
        .expect("woken");
    drop(h2);
    assert_eq!(l.counters().pending(), 1);
    h1.abort();
}

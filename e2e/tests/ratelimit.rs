//! Local rate limiting through the whole proxy (istio.io/latest/docs/tasks/policy-enforcement/
//! rate-limit, "Local rate limit", as this project's `LocalRateLimit` kind), against real
//! upstreams on port 0. The bucket's timing is tested under paused time in `mesh-core` and
//! `mesh-resilience`; here the buckets refill once an hour, so a burst meets an empty bucket
//! whatever the machine's speed, and the proxy must answer as Envoy's filter does.

use crate::support;

use support::*;

fn limit(name: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: mesh.proxy/v1alpha1
kind: LocalRateLimit
metadata: {{name: {name}}}
spec:
{spec}"
    )
}

fn vs_named_routes() -> String {
    "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - name: slow-lane
    match: [{uri: {prefix: /slow}}]
    route: [{destination: {host: ratings}}]
  - name: rest
    route: [{destination: {host: ratings}}]
"
    .into()
}

#[tokio::test]
async fn the_burst_beyond_a_hosts_bucket_gets_429_rl_and_never_reaches_the_upstream() {
    let ratings = backend("ratings-v1").await;
    let reviews = backend("reviews-v1").await;
    // two workers: the bucket is shared by both, as Envoy's is shared by its workers
    let yaml = bootstrap(2, "")
        + &service_entry("ratings", 9080, "HTTP", &[&ratings])
        + &service_entry("reviews", 9080, "HTTP", &[&reviews])
        + &limit(
            "ratings",
            "  hosts: [ratings]
  tokenBucket: {maxTokens: 3, tokensPerFill: 3, fillInterval: 3600s}
  enableXRateLimitHeaders: DRAFT_VERSION_03
  responseHeadersToAdd: {x-local-rate-limit: \"true\"}
",
        );
    let p = start(&yaml).await;
    // each request on a new connection, spread over the workers
    for remaining in ["2", "1", "0"] {
        let ok = get_once(p.out, "ratings:9080", &[]).await;
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.backend(), "ratings-v1");
        assert_eq!(ok.headers["x-ratelimit-limit"], "3");
        assert_eq!(ok.headers["x-ratelimit-remaining"], remaining);
        assert!(!ok.headers.contains_key("x-local-rate-limit"));
    }
    let limited = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.flags(), "RL");
    assert_eq!(limited.body, "local_rate_limited");
    assert!(
        !limited.headers.contains_key("x-envoy-ratelimited"),
        "as envoy 1.40's"
    );
    assert_eq!(limited.headers["x-local-rate-limit"], "true");
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert_eq!(
        ratings.hits(),
        3,
        "the limited request never reached the upstream"
    );
    // another host has no limit
    let mut c = H1::connect(p.out).await;
    for _ in 0..10 {
        assert_eq!(c.get("reviews:9080", &[]).await.backend(), "reviews-v1");
    }
    assert_eq!(reviews.hits(), 10);
    // and the limited host stays limited, on a kept-alive connection too
    assert_eq!(c.get("ratings:9080", &[]).await.status, 429);
    assert_eq!(ratings.hits(), 3);
}

#[tokio::test]
async fn the_istio_tasks_workload_limit_covers_every_route_and_a_named_route_has_its_own() {
    let ratings = backend("ratings-v1").await;
    let reviews = backend("reviews-v1").await;
    // the Istio task's EnvoyFilter (4 tokens, 4 per 60s, x-local-rate-limit), as the e2e
    // bootstrap is the productpage workload; 60s: no fill in the test's lifetime
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&ratings])
        + &service_entry("reviews", 9080, "HTTP", &[&reviews])
        + &vs_named_routes()
        + &limit(
            "filter-local-ratelimit-svc",
            "  workloadSelector: {labels: {app: productpage}}
  tokenBucket: {maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}
  responseHeadersToAdd: {x-local-rate-limit: \"true\"}
",
        )
        + &limit(
            "slow-lane",
            "  routes: [slow-lane]
  tokenBucket: {maxTokens: 1, fillInterval: 3600s}
  statusCode: 503
",
        );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    // the named route: its own bucket of one, answered 503 RL when empty
    let slow = || {
        http::Request::builder()
            .uri("/slow")
            .header("host", "ratings:9080")
            .body(full(""))
            .unwrap()
    };
    assert_eq!(c.send(slow()).await.status, 200);
    let limited = c.send(slow()).await;
    assert_eq!(limited.status, 503, "{limited:?}");
    assert_eq!(limited.flags(), "RL");
    // every other route, of every host, shares the workload's bucket of four
    let mut served = 0;
    for host in [
        "ratings:9080",
        "reviews:9080",
        "ratings:9080",
        "reviews:9080",
        "reviews:9080",
    ] {
        let r = c.get(host, &[]).await;
        if r.status == 200 {
            served += 1;
        } else {
            assert_eq!(r.status, 429, "{r:?}");
            assert_eq!(r.headers["x-local-rate-limit"], "true");
            assert_eq!(r.flags(), "RL");
        }
    }
    assert_eq!(served, 4);
    assert_eq!(ratings.hits() + reviews.hits(), 5, "1 slow-lane + 4 others");
}

#[tokio::test]
async fn a_limit_for_another_workload_limits_nothing() {
    let ratings = backend("ratings-v1").await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&ratings])
        + &limit(
            "reviews-only",
            "  workloadSelector: {labels: {app: reviews}}
  tokenBucket: {maxTokens: 1, fillInterval: 3600s}
",
        );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    for _ in 0..5 {
        assert_eq!(c.get("ratings:9080", &[]).await.status, 200);
    }
    assert_eq!(ratings.hits(), 5);
}

#[tokio::test]
async fn a_reload_builds_new_full_buckets_and_a_removed_limit_limits_nothing() {
    let ratings = backend("ratings-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let base = bootstrap(1, "") + &service_entry("ratings", 9080, "HTTP", &[&ratings]);
    let one = "  tokenBucket: {maxTokens: 1, fillInterval: 3600s}\n";
    let listener = limit("listener", one);
    let host = limit("ratings", &format!("  hosts: [ratings]\n{one}"));
    write(&file, &format!("{base}{listener}"));
    let p = start_files(vec![file.clone()]).await;
    let mut c = H1::connect(p.out).await;
    let statuses = async |c: &mut H1| {
        let first = c.get("ratings:9080", &[]).await.status;
        let second = c.get("ratings:9080", &[]).await;
        (
            first.as_u16(),
            second.status.as_u16(),
            second.flags().to_string(),
        )
    };
    assert_eq!(statuses(&mut c).await, (200, 429, "RL".into()));
    // the same configuration again: new, full buckets (as Envoy on a filter config change)
    p.proxy.reload().unwrap();
    assert_eq!(statuses(&mut c).await, (200, 429, "RL".into()));
    // a host's bucket comes with the route table, renewed the same way
    write(&file, &format!("{base}{host}"));
    p.proxy.reload().unwrap();
    assert_eq!(statuses(&mut c).await, (200, 429, "RL".into()));
    p.proxy.reload().unwrap();
    assert_eq!(statuses(&mut c).await, (200, 429, "RL".into()));
    // no limit any more
    write(&file, &base);
    p.proxy.reload().unwrap();
    assert_eq!(statuses(&mut c).await, (200, 200, String::new()));
    assert_eq!(ratings.hits(), 6);
}

/// The Istio task's limit as the task writes it: on productpage's inbound listener
/// (`SIDECAR_INBOUND`), so the requests peers send productpage are limited, and what
/// productpage sends out is not.
#[tokio::test]
async fn a_sidecar_inbound_limit_limits_what_peers_send_the_workload_not_what_it_sends() {
    let app = backend("productpage-v1").await;
    let ratings = backend("ratings-v1").await;
    let yaml = bootstrap(
        2,
        &format!(
            "  inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{}'}}\n",
            app.port()
        ),
    ) + &service_entry("ratings", 9080, "HTTP", &[&ratings])
        + &limit(
            "filter-local-ratelimit-svc",
            "  workloadSelector: {labels: {app: productpage}}
  context: SIDECAR_INBOUND
  tokenBucket: {maxTokens: 4, tokensPerFill: 4, fillInterval: 3600s}
  responseHeadersToAdd: {x-local-rate-limit: \"true\"}
",
        );
    let p = start(&yaml).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    for _ in 0..4 {
        let ok = get_once(inbound, "productpage:9080", &[]).await;
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.backend(), "productpage-v1");
    }
    let limited = get_once(inbound, "productpage:9080", &[]).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.flags(), "RL");
    assert_eq!(limited.body, "local_rate_limited");
    assert_eq!(limited.headers["x-local-rate-limit"], "true");
    assert_eq!(
        app.hits(),
        4,
        "the limited request never reached the application"
    );
    // the outbound listener has no limit
    let mut c = H1::connect(p.out).await;
    for _ in 0..10 {
        assert_eq!(c.get("ratings:9080", &[]).await.status, 200);
    }
}

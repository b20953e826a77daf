use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::*;
use crate::config::load_str;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn the_bucket_starts_full_and_refills_continuously_up_to_max() {
    // Envoy 1.40's AtomicTokenBucketImpl: full at start; tokens_per_fill per fill_interval
    // come back continuously (here one every 500 ms), capped at max_tokens
    let b = TokenBucket::new(4, 2, SECOND);
    for left in [3, 2, 1, 0] {
        assert_eq!(b.try_acquire(), Some(left));
    }
    assert_eq!(b.try_acquire(), None);
    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(b.try_acquire(), None, "not a whole token yet");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.try_acquire(), Some(0), "one token after 500 ms");
    assert_eq!(b.try_acquire(), None);
    tokio::time::advance(SECOND).await;
    assert_eq!(b.remaining_at(Instant::now()), 2);
    // ten idle intervals fill the bucket, not beyond max_tokens
    tokio::time::advance(SECOND * 10).await;
    assert_eq!(b.remaining_at(Instant::now()), 4);
    assert_eq!(b.try_acquire(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn a_token_comes_back_one_tokens_time_after_it_was_due_not_on_a_grid() {
    // the Istio task's limit, 4 tokens a minute: a drained bucket admits one request every
    // 15 s (Envoy >= 1.31), not four at the minute's mark (the older timer's grid)
    let b = TokenBucket::new(4, 4, Duration::from_secs(60));
    for _ in 0..4 {
        assert!(b.try_acquire().is_some());
    }
    tokio::time::advance(Duration::from_millis(14_999)).await;
    assert_eq!(b.try_acquire(), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.try_acquire(), Some(0));
    // a fraction of a token left over is kept: taken at 37.5 s, the next is due at 45 s
    tokio::time::advance(Duration::from_millis(22_500)).await;
    assert_eq!(b.try_acquire(), Some(0));
    tokio::time::advance(Duration::from_millis(7_499)).await;
    assert_eq!(b.try_acquire(), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.try_acquire(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn reset_is_the_whole_seconds_to_the_next_token_as_envoy_1_40_writes_it() {
    // measured against envoy 1.40 (max_tokens 2, tokens_per_fill 1, fill_interval 2s):
    // remaining 1 / reset 0, then 0 / 2; 0.6 s later 0 / 2; 1.1 s and 1.6 s later 0 / 1; a
    // token 2 s after the last one was taken
    let b = TokenBucket::new(2, 1, Duration::from_secs(2));
    assert_eq!(b.remaining_and_reset_at(Instant::now()), (2, 0));
    assert_eq!(b.try_acquire(), Some(1));
    assert_eq!(b.remaining_and_reset_at(Instant::now()), (1, 0));
    assert_eq!(b.try_acquire(), Some(0));
    assert_eq!(b.remaining_and_reset_at(Instant::now()), (0, 2));
    for (after_ms, reset) in [(600, 2), (1_000, 1), (1_600, 1), (1_999, 1)] {
        let at = Instant::now() + Duration::from_millis(after_ms);
        assert_eq!(b.remaining_and_reset_at(at), (0, reset), "{after_ms} ms");
        assert_eq!(b.reset_seconds_at(at), reset);
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(b.remaining_at(Instant::now()), 1);
    assert_eq!(b.try_acquire(), Some(0));
    assert_eq!(b.remaining_and_reset_at(Instant::now()), (0, 2));
    // under a second per token: 1 while none is there
    let short = TokenBucket::new(1, 1, Duration::from_millis(500));
    assert_eq!(short.try_acquire(), Some(0));
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(short.remaining_and_reset_at(Instant::now()), (0, 1));
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(short.remaining_and_reset_at(Instant::now()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn buckets_too_slow_to_count_in_nanoseconds_still_start_full_and_refill() {
    // a token a year, a thousand of them: filling takes longer than the clock's cap
    let year = Duration::from_secs(365 * 24 * 3600);
    let b = TokenBucket::new(1000, 1, year);
    assert_eq!(b.remaining_at(Instant::now()), 1000);
    for _ in 0..1000 {
        assert!(b.try_acquire().is_some());
    }
    assert_eq!(b.try_acquire(), None);
    tokio::time::advance(year).await;
    assert_eq!(b.try_acquire(), Some(0));
    // and a rate above a token per nanosecond is no limit
    let fast = TokenBucket::new(u32::MAX, u32::MAX, Duration::from_secs(1));
    for _ in 0..1000 {
        assert!(fast.try_acquire().is_some());
    }
}

#[test]
fn threads_sharing_a_bucket_never_take_more_than_it_holds() {
    // an hour's interval: no fill during the test, so exactly max_tokens are admitted
    let b = Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600)));
    let admitted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (b, admitted) = (b.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if b.try_acquire().is_some() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    assert_eq!(b.try_acquire(), None);
}

fn yaml(specs: &[&str]) -> String {
    let mut s = String::from(
        "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {name: p}\nspec:\n  workload: {name: productpage, namespace: default, labels: {app: productpage}}\n",
    );
    for (i, spec) in specs.iter().enumerate() {
        s.push_str(&format!(
            "---\napiVersion: mesh.proxy/v1alpha1\nkind: LocalRateLimit\nmetadata: {{name: l{i}}}\nspec:\n{spec}"
        ));
    }
    s
}

const BUCKET: &str = "  tokenBucket: {maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}\n";

#[test]
fn the_istio_tasks_limit_compiles_to_a_listener_policy() {
    let c = load_str(
        "rl.yaml",
        &yaml(&[&format!(
            "  workloadSelector: {{labels: {{app: productpage}}}}\n{BUCKET}  responseHeadersToAdd: {{x-local-rate-limit: \"true\"}}\n"
        )]),
    )
    .unwrap();
    let p = listener_policy(&c.snapshot).expect("applies to productpage");
    assert_eq!(p.bucket.max_tokens(), 4);
    assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!p.x_ratelimit_headers, "off by default, as Envoy's");
    assert_eq!(p.response_headers[0].0, "x-local-rate-limit");
}

#[test]
fn a_selector_that_does_not_select_the_workload_applies_nowhere() {
    let c = load_str(
        "rl.yaml",
        &yaml(&[&format!(
            "  workloadSelector: {{labels: {{app: reviews}}}}\n{BUCKET}"
        )]),
    )
    .unwrap();
    assert_eq!(c.snapshot.local_rate_limits.len(), 1);
    assert!(listener_policy(&c.snapshot).is_none());
}

#[test]
fn short_hosts_resolve_in_the_resources_namespace() {
    let c = load_str(
        "rl.yaml",
        &yaml(&[&format!("  hosts: [reviews]\n{BUCKET}")]),
    )
    .unwrap();
    assert_eq!(
        c.snapshot.local_rate_limits[0].spec.hosts,
        ["reviews.default.svc.cluster.local"]
    );
    assert!(
        listener_policy(&c.snapshot).is_none(),
        "a host limit is not listener-wide"
    );
}

#[test]
fn two_limits_on_the_same_requests_are_refused_with_file_line_and_field() {
    let err = load_str(
        "rl.yaml",
        &yaml(&[
            &format!("  hosts: [reviews]\n{BUCKET}"),
            &format!("  hosts: [ratings, reviews.default.svc.cluster.local]\n{BUCKET}"),
        ]),
    )
    .unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(
        d.resource.as_ref().unwrap().to_string(),
        "LocalRateLimit/default/l1"
    );
    assert_eq!(d.field.as_ref().unwrap().to_string(), "spec.hosts[1]");
    assert_eq!(d.line, Some(18));
    assert!(
        d.message.starts_with(
            "LocalRateLimit/default/l0 already limits host reviews.default.svc.cluster.local"
        ),
        "{}",
        d.message
    );
    // two listener-wide limits, two limits of one route name
    assert!(load_str("rl.yaml", &yaml(&[BUCKET, BUCKET])).is_err());
    let routes = format!("  routes: [r1]\n{BUCKET}");
    assert!(load_str("rl.yaml", &yaml(&[&routes, &routes])).is_err());
}

#[test]
fn limits_at_different_scopes_or_on_different_routes_do_not_conflict() {
    let ok = [
        // listener + host + route: the narrowest applies
        vec![
            BUCKET.to_string(),
            format!("  hosts: [reviews]\n{BUCKET}"),
            format!("  routes: [r1]\n{BUCKET}"),
        ],
        // different hosts
        vec![
            format!("  hosts: [reviews]\n{BUCKET}"),
            format!("  hosts: [ratings]\n{BUCKET}"),
        ],
        // one route name, in different hosts
        vec![
            format!("  hosts: [reviews]\n  routes: [r1]\n{BUCKET}"),
            format!("  hosts: [ratings]\n  routes: [r1]\n{BUCKET}"),
        ],
        // one of them does not apply to this workload
        vec![
            BUCKET.to_string(),
            format!("  workloadSelector: {{labels: {{app: reviews}}}}\n{BUCKET}"),
        ],
    ];
    for specs in ok {
        let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
        if let Err(e) = load_str("rl.yaml", &yaml(&refs)) {
            panic!("{specs:?}: {e}");
        }
    }
}

/// The Istio task's EnvoyFilter patches productpage's `SIDECAR_INBOUND` listener: with
/// `context: SIDECAR_INBOUND` the limit is on the inbound listener, not the outbound one.
#[test]
fn a_sidecar_inbound_limit_is_the_inbound_listeners_only() {
    let inbound = format!(
        "  workloadSelector: {{labels: {{app: productpage}}}}\n  context: SIDECAR_INBOUND\n{BUCKET}"
    );
    let c = load_str("rl.yaml", &yaml(&[&inbound])).unwrap();
    let p = inbound_policy(&c.snapshot).expect("on the inbound listener");
    assert_eq!(p.bucket.max_tokens(), 4);
    assert!(
        listener_policy(&c.snapshot).is_none(),
        "not on the outbound one"
    );
    assert_eq!(applicable(&c.snapshot).count(), 0);
    // an outbound listener limit beside it is another scope: no conflict
    let both = load_str("rl.yaml", &yaml(&[&inbound, BUCKET])).unwrap();
    assert!(inbound_policy(&both.snapshot).is_some());
    assert!(listener_policy(&both.snapshot).is_some());
    // the default context is the outbound listener
    let out = load_str("rl.yaml", &yaml(&[BUCKET])).unwrap();
    assert!(inbound_policy(&out.snapshot).is_none());
}

#[test]
fn two_inbound_limits_or_an_inbound_limit_with_hosts_are_refused_naming_the_field() {
    let inbound = format!("  context: SIDECAR_INBOUND\n{BUCKET}");
    let err = load_str("rl.yaml", &yaml(&[&inbound, &inbound])).unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(
        d.resource.as_ref().unwrap().to_string(),
        "LocalRateLimit/default/l1"
    );
    assert_eq!(d.field.as_ref().unwrap().to_string(), "spec.context");
    assert!(
        d.message
            .starts_with("LocalRateLimit/default/l0 already limits the inbound listener"),
        "{}",
        d.message
    );
    let hosts = format!("  context: SIDECAR_INBOUND\n  hosts: [reviews]\n{BUCKET}");
    let err = load_str("rl.yaml", &yaml(&[&hosts])).unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(d.field.as_ref().unwrap().to_string(), "spec.hosts");
    assert!(d.message.contains("SIDECAR_INBOUND"), "{}", d.message);
}

/// Every number reads the same from the table as formatted, on both sides of its end.
#[test]
fn header_numbers_from_the_table_read_as_formatted() {
    for n in (0..u64::from(SMALL_NUMBERS) + 100).chain([u64::from(u32::MAX), u64::MAX]) {
        assert_eq!(header_number(n).to_str().expect("digits"), n.to_string());
    }
    let p = RateLimitPolicy::new(250, 1, Duration::from_secs(1));
    assert_eq!(p.limit_value(), "250");
    assert_eq!(p.with_x_ratelimit_headers(true).limit_value(), "250");
}

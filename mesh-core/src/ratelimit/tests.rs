use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::*;
use crate::config::load_str;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn the_bucket_starts_full_and_refills_tokens_per_fill_each_interval_up_to_max() {
    // Envoy's LocalRateLimiterImpl: tokens_ = max_tokens at start; each fill adds
    // tokens_per_fill, capped at max_tokens
    let b = TokenBucket::new(4, 2, SECOND);
    for left in [3, 2, 1, 0] {
        assert_eq!(b.try_acquire(), Some(left));
    }
    assert_eq!(b.try_acquire(), None);
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(b.try_acquire(), None, "no fill before the interval");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.try_acquire(), Some(1));
    assert_eq!(b.try_acquire(), Some(0));
    assert_eq!(b.try_acquire(), None);
    // ten idle intervals fill the bucket, not beyond max_tokens
    tokio::time::advance(SECOND * 10).await;
    assert_eq!(b.remaining_at(Instant::now()), 4);
    assert_eq!(b.try_acquire(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn fills_follow_the_grid_of_the_interval_as_envoys_timer() {
    let b = TokenBucket::new(1, 1, SECOND);
    assert_eq!(b.try_acquire(), Some(0));
    // taken at 1.5s: the fill of t=1s; the next one comes at t=2s, not at 2.5s
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(b.try_acquire(), Some(0));
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(b.try_acquire(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn reset_is_the_whole_seconds_to_the_next_fill() {
    let b = TokenBucket::new(4, 4, Duration::from_secs(60));
    assert_eq!(b.reset_seconds_at(Instant::now()), 60);
    tokio::time::advance(Duration::from_millis(10_500)).await;
    assert_eq!(b.reset_seconds_at(Instant::now()), 50);
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(
        b.reset_seconds_at(Instant::now()),
        60,
        "a fill happened at 60s"
    );
    // both headers' values from one reading: a token taken, 12.5 s into the interval
    assert_eq!(b.try_acquire(), Some(3));
    tokio::time::advance(Duration::from_millis(12_000)).await;
    assert_eq!(b.remaining_and_reset_at(Instant::now()), (3, 48));
    let short = TokenBucket::new(1, 1, Duration::from_millis(500));
    assert_eq!(short.reset_seconds_at(Instant::now()), 0);
    assert_eq!(short.try_acquire(), Some(0));
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(short.remaining_and_reset_at(Instant::now()), (0, 0));
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(
        short.remaining_and_reset_at(Instant::now()),
        (1, 0),
        "a fill at 500 ms"
    );
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

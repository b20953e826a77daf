//! Local rate limiting's shared pieces: the token bucket, the compiled policy the router
//! hands to the rate limit layer (`mesh_resilience::ratelimit`), and which `LocalRateLimit`
//! resources apply to this workload.
//!
//! # The bucket
//!
//! [`TokenBucket`] is Envoy 1.40's (`RateLimitTokenBucket` over `AtomicTokenBucketImpl`,
//! the local rate limiter's bucket since Envoy 1.31, which left the fill timer behind): it
//! starts full (`maxTokens`) and refills **continuously** at `tokensPerFill` per
//! `fillInterval`, never beyond `maxTokens`; a request takes one whole token or is refused.
//! So with 4 tokens a minute, a drained bucket admits one request every 15 seconds, not
//! four at the next minute's mark (the older timer's grid). As Envoy's, the bucket is one
//! atomic word: the time at which it would have been empty (folly's `TokenBucket`), moved
//! forward by one token's time for each token taken: one load and one compare-and-swap per
//! request, no timer task, no lock, shared by every worker thread (the limit is per
//! process, as Envoy's: "the token bucket is shared across all workers"). Time is
//! [`tokio::time::Instant`], so paused-time tests drive it.
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::ratelimit::TokenBucket;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let bucket = TokenBucket::new(2, 1, Duration::from_secs(1));
//! assert_eq!(bucket.try_acquire(), Some(1));
//! assert_eq!(bucket.try_acquire(), Some(0));
//! assert_eq!(bucket.try_acquire(), None); // empty: 429
//! tokio::time::advance(Duration::from_secs(1)).await;
//! assert_eq!(bucket.try_acquire(), Some(0)); // one token per second
//! # });
//! ```
//!
//! # Reloads
//!
//! Buckets are built with the route table, once per configuration load: a reload starts
//! every limit with a full bucket, as Envoy does when a changed filter configuration
//! arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::compile::{Named, Snapshot};
use crate::error::{FieldPath, ResourceRef, Severity};
use crate::load::Issue;
use crate::model::Kind;
use crate::model::ratelimit::{LocalRateLimit, RateLimitContext, XRateLimitHeaders};

/// The body of a limited answer, as Envoy's.
pub const RATE_LIMITED_BODY: &str = "local_rate_limited";

/// A token bucket shared by every thread; see the [module docs](self).
#[derive(Debug)]
pub struct TokenBucket {
    /// When the bucket would have been empty, on the bucket's clock
    /// ([`clock`](Self::clock)): it holds `(clock - empty) / per_token` tokens, at most
    /// `max_tokens`.
    empty: AtomicU64,
    /// The bucket's clock reads `full` when it is made (full then: `empty` is 0).
    start: Instant,
    /// The clock's tick: `2^shift` nanoseconds, 1 unless filling the bucket takes more
    /// than 2⁶² ns (146 years), so that the clock never overflows.
    shift: u32,
    /// The time one token takes to come back (`fillInterval / tokensPerFill`), in ticks,
    /// at least 1.
    per_token: u64,
    /// The time an empty bucket takes to fill (`per_token × max_tokens`), in ticks.
    full: u64,
    max_tokens: u32,
}

/// A compiled `LocalRateLimit`: its bucket and how a limited request is answered.
///
/// Built once per configuration load (by the router's table for route and host limits, by
/// the proxy for the listener-wide one): every request it applies to takes from the same
/// bucket.
#[derive(Debug)]
pub struct RateLimitPolicy {
    /// The bucket.
    pub bucket: TokenBucket,
    /// The status of a limited answer. Default: 429.
    pub status: StatusCode,
    /// Whether answers carry `x-ratelimit-limit`, `x-ratelimit-remaining` and
    /// `x-ratelimit-reset` (Envoy's `DRAFT_VERSION_03`). Default: false.
    pub x_ratelimit_headers: bool,
    /// Headers added to limited answers.
    pub response_headers: Box<[(HeaderName, HeaderValue)]>,
    /// `x-ratelimit-limit`'s value (the bucket's size), made once.
    limit_value: HeaderValue,
}

/// What a `LocalRateLimit` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The whole listener (neither `hosts` nor `routes`).
    Listener,
    /// The routes of some hosts (`hosts` only): a bucket per host.
    Hosts,
    /// Routes by name (`routes`, maybe within `hosts`): a bucket per route.
    Routes,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket of `max_tokens` that gets `tokens_per_fill` tokens every
    /// `fill_interval`, continuously. Zero values are raised to the smallest valid ones (1
    /// token, 1ns): validation refuses them in configurations.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let max_tokens = max_tokens.max(1);
        // (a rate above a token per nanosecond is rounded to one: no limit in practice)
        let per_token_ns = (nanos(fill_interval) / u64::from(tokens_per_fill.max(1))).max(1);
        let full_ns = u128::from(per_token_ns) * u128::from(max_tokens);
        // coarser ticks for buckets that take centuries to fill (a tick is then still under
        // a billionth of a token's time)
        let shift = (u128::BITS - full_ns.leading_zeros()).saturating_sub(62);
        let per_token = (per_token_ns >> shift).max(1);
        TokenBucket {
            empty: AtomicU64::new(0),
            start: Instant::now(),
            shift,
            per_token,
            full: per_token.saturating_mul(u64::from(max_tokens)),
            max_tokens,
        }
    }

    /// The bucket's size.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Takes a token now: the tokens left after it, or `None` when the bucket is empty.
    #[inline]
    pub fn try_acquire(&self) -> Option<u32> {
        self.try_acquire_at(Instant::now())
    }

    /// Takes a token at `now`.
    pub fn try_acquire_at(&self, now: Instant) -> Option<u32> {
        let clock = self.clock(now);
        let mut cur = self.empty.load(Ordering::Relaxed);
        loop {
            let (tokens, empty) = self.held(cur, clock);
            if tokens == 0 {
                // nothing to take, nothing to store
                return None;
            }
            match self.empty.compare_exchange_weak(
                cur,
                empty.saturating_add(self.per_token),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(tokens - 1),
                Err(actual) => cur = actual,
            }
        }
    }

    /// The whole tokens in the bucket at `now` (Envoy's `remainingTokens`).
    pub fn remaining_at(&self, now: Instant) -> u32 {
        self.remaining_and_reset_at(now).0
    }

    /// Whole seconds until the next token at `now`, rounded up, and `0` while a whole token
    /// is in the bucket: `x-ratelimit-reset` as Envoy 1.40 writes it (checked against it:
    /// with a token every 2 s, `2` just after the last was taken, `1` from 1.0 s later on).
    pub fn reset_seconds_at(&self, now: Instant) -> u64 {
        self.remaining_and_reset_at(now).1
    }

    /// [`remaining_at`](Self::remaining_at) and
    /// [`reset_seconds_at`](Self::reset_seconds_at) together (`x-ratelimit-remaining` and
    /// `x-ratelimit-reset`), from one reading of the bucket.
    pub fn remaining_and_reset_at(&self, now: Instant) -> (u32, u64) {
        let clock = self.clock(now);
        let (tokens, empty) = self.held(self.empty.load(Ordering::Relaxed), clock);
        if tokens > 0 {
            return (tokens, 0);
        }
        let wait = empty.saturating_add(self.per_token).saturating_sub(clock);
        let wait_ns = u128::from(wait) << self.shift;
        (
            0,
            u64::try_from(wait_ns.div_ceil(1_000_000_000)).unwrap_or(u64::MAX),
        )
    }

    /// The bucket's clock at `now`, in ticks: `full` when the bucket was made.
    #[inline]
    fn clock(&self, now: Instant) -> u64 {
        (nanos(now.saturating_duration_since(self.start)) >> self.shift).saturating_add(self.full)
    }

    /// The whole tokens held at `clock` by a bucket whose state is `cur`, and the time it
    /// would have been empty, moved up to hold no more than `max_tokens`.
    #[inline]
    fn held(&self, cur: u64, clock: u64) -> (u32, u64) {
        let empty = cur.max(clock - self.full);
        // (another thread may have stored a later time than this thread's clock: none)
        let tokens = clock.saturating_sub(empty) / self.per_token;
        (tokens.min(u64::from(self.max_tokens)) as u32, empty)
    }
}

/// A number as a header value (`x-ratelimit-*`): under [`SMALL_NUMBERS`], a slice of a
/// static table, which neither allocates nor counts references when cloned or dropped;
/// above, cut from the thread's buffer of generated values.
pub use crate::header_values::{SMALL_NUMBERS, number as header_number};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === impl RateLimitPolicy ===

impl RateLimitPolicy {
    /// A policy with a full bucket of `max_tokens`, refilled at `tokens_per_fill` per
    /// `fill_interval`; limited requests get 429, without `x-ratelimit-*` headers.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let bucket = TokenBucket::new(max_tokens, tokens_per_fill, fill_interval);
        RateLimitPolicy {
            limit_value: header_number(u64::from(bucket.max_tokens())),
            bucket,
            status: StatusCode::TOO_MANY_REQUESTS,
            x_ratelimit_headers: false,
            response_headers: Box::new([]),
        }
    }

    /// The value of `x-ratelimit-limit`: the bucket's size, made when the policy was.
    pub fn limit_value(&self) -> &HeaderValue {
        &self.limit_value
    }

    /// Answers limited requests with `status`.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds (or not) the `x-ratelimit-*` headers to answers.
    pub fn with_x_ratelimit_headers(mut self, on: bool) -> Self {
        self.x_ratelimit_headers = on;
        self
    }

    /// A policy (with a new, full bucket) from a validated `LocalRateLimit`.
    pub fn from_spec(spec: &LocalRateLimit) -> Self {
        let b = spec.token_bucket.clone().unwrap_or_default();
        let interval = b
            .fill_interval
            .map_or(crate::validate::ratelimit::MIN_FILL_INTERVAL, |d| d.0);
        let status = spec
            .status_code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        let response_headers = spec
            .response_headers_to_add
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        let bucket = TokenBucket::new(b.max_tokens, b.tokens_per_fill.unwrap_or(1), interval);
        RateLimitPolicy {
            limit_value: header_number(u64::from(bucket.max_tokens())),
            bucket,
            status,
            x_ratelimit_headers: spec.enable_x_rate_limit_headers
                == XRateLimitHeaders::DraftVersion03,
            response_headers,
        }
    }
}

// === which limits apply ===

/// What `rl` limits.
pub fn scope(rl: &LocalRateLimit) -> Scope {
    match (rl.hosts.is_empty(), rl.routes.is_empty()) {
        (true, true) => Scope::Listener,
        (false, true) => Scope::Hosts,
        _ => Scope::Routes,
    }
}

/// Whether `rl` applies to the snapshot's bootstrap workload, as an EnvoyFilter would: in
/// the workload's namespace or the root namespace, and selecting its labels when it has a
/// `workloadSelector`.
pub fn applies(snapshot: &Snapshot, rl: &Named<LocalRateLimit>) -> bool {
    let w = &snapshot.bootstrap.workload;
    (rl.namespace == w.namespace || rl.namespace == snapshot.bootstrap.mesh.root_namespace)
        && rl
            .spec
            .workload_selector
            .as_ref()
            .is_none_or(|s| s.matches(&w.labels))
}

/// The limits on the outbound listener that apply to the bootstrap workload, in source
/// order.
pub fn applicable(snapshot: &Snapshot) -> impl Iterator<Item = &Arc<Named<LocalRateLimit>>> {
    snapshot
        .local_rate_limits
        .iter()
        .filter(|rl| rl.spec.context == RateLimitContext::SidecarOutbound && applies(snapshot, rl))
}

/// The limits on the inbound listeners (`context: SIDECAR_INBOUND`) that apply to the
/// bootstrap workload, in source order.
pub fn applicable_inbound(
    snapshot: &Snapshot,
) -> impl Iterator<Item = &Arc<Named<LocalRateLimit>>> {
    snapshot
        .local_rate_limits
        .iter()
        .filter(|rl| rl.spec.context == RateLimitContext::SidecarInbound && applies(snapshot, rl))
}

/// The inbound listeners' limit of the workload (`context: SIDECAR_INBOUND`), compiled with
/// a new bucket: one bucket for every inbound listener of the proxy (Envoy's per listener
/// filter; the sidecar's inbound traffic is one listener there).
pub fn inbound_policy(snapshot: &Snapshot) -> Option<Arc<RateLimitPolicy>> {
    applicable_inbound(snapshot)
        .next()
        .map(|rl| Arc::new(RateLimitPolicy::from_spec(&rl.spec)))
}

/// The listener-wide limit of the workload (neither `hosts` nor `routes`), compiled with a
/// new bucket.
pub fn listener_policy(snapshot: &Snapshot) -> Option<Arc<RateLimitPolicy>> {
    applicable(snapshot)
        .find(|rl| scope(&rl.spec) == Scope::Listener)
        .map(|rl| Arc::new(RateLimitPolicy::from_spec(&rl.spec)))
}

/// Whether limit host `pattern` (an FQDN or a wildcard) covers virtual host `host`.
pub fn host_covers(pattern: &str, host: &str) -> bool {
    match (pattern.strip_prefix('*'), host.strip_prefix('*')) {
        (Some(_), None) => crate::compile::host_matches(pattern, host),
        (Some(p), Some(h)) => h.ends_with(p),
        (None, None) => pattern.eq_ignore_ascii_case(host),
        (None, Some(_)) => false,
    }
}

fn hosts_overlap(a: &[String], b: &[String]) -> Option<usize> {
    b.iter().position(|hb| {
        a.iter()
            .any(|ha| host_covers(ha, hb) || host_covers(hb, ha))
    })
}

/// Two limits that apply to the workload at the same scope and could apply to the same
/// request (both listener-wide; hosts in common; a route name in common, within hosts in
/// common): an error on the later one. Which one a route would get is ambiguous (Envoy's
/// EnvoyFilter patches merge in an order the user does not see), so the configuration is
/// refused. Limits at different scopes do not conflict: the narrowest applies.
pub fn conflicts(snapshot: &Snapshot) -> Vec<Issue> {
    let limits: Vec<&Arc<Named<LocalRateLimit>>> = applicable(snapshot).collect();
    let mut out = Vec::new();
    // the inbound listener has one scope: a second limit on it is ambiguous
    let inbound: Vec<_> = applicable_inbound(snapshot).collect();
    for (first, last) in inbound
        .first()
        .into_iter()
        .flat_map(|f| inbound[1..].iter().map(move |l| (f, l)))
    {
        out.push(Issue {
            severity: Severity::Error,
            resource: ResourceRef {
                kind: Kind::LocalRateLimit,
                namespace: last.namespace.clone(),
                name: last.name.clone(),
            },
            field: FieldPath::root().key("spec").key("context"),
            message: format!(
                "LocalRateLimit/{}/{} already limits the inbound listener: two LocalRateLimits on the same requests are refused (merge them)",
                first.namespace, first.name
            ),
        });
    }
    for (j, b) in limits.iter().enumerate() {
        for a in &limits[..j] {
            let (sa, sb) = (scope(&a.spec), scope(&b.spec));
            if sa != sb {
                continue;
            }
            let other = format!("LocalRateLimit/{}/{}", a.namespace, a.name);
            let found = match sb {
                Scope::Listener => Some((
                    FieldPath::root().key("spec"),
                    format!("{other} already limits the whole outbound listener"),
                )),
                Scope::Hosts => hosts_overlap(&a.spec.hosts, &b.spec.hosts).map(|i| {
                    (
                        FieldPath::root().key("spec").key("hosts").index(i),
                        format!("{other} already limits host {}", b.spec.hosts[i]),
                    )
                }),
                Scope::Routes => {
                    let hosts_meet = a.spec.hosts.is_empty()
                        || b.spec.hosts.is_empty()
                        || hosts_overlap(&a.spec.hosts, &b.spec.hosts).is_some();
                    b.spec
                        .routes
                        .iter()
                        .position(|r| hosts_meet && a.spec.routes.contains(r))
                        .map(|i| {
                            (
                                FieldPath::root().key("spec").key("routes").index(i),
                                format!("{other} already limits route {:?}", b.spec.routes[i]),
                            )
                        })
                }
            };
            if let Some((field, message)) = found {
                out.push(Issue {
                    severity: Severity::Error,
                    resource: ResourceRef {
                        kind: Kind::LocalRateLimit,
                        namespace: b.namespace.clone(),
                        name: b.name.clone(),
                    },
                    field,
                    message: format!(
                        "{message}: two LocalRateLimits on the same requests are refused (merge them, or narrow one with hosts or routes)"
                    ),
                });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! Local rate limiting's shared pieces: the token bucket, the compiled policy the router
//! hands to the rate limit layer (`mesh_resilience::ratelimit`), and which `LocalRateLimit`
//! resources apply to this workload.
//!
//! # The bucket
//!
//! [`TokenBucket`] is Envoy's (`LocalRateLimiterImpl`): it starts full (`maxTokens`), gets
//! `tokensPerFill` tokens every `fillInterval` (never more than `maxTokens`), and a request
//! takes one token or is refused. Envoy refills from a timer on its main thread; here the
//! bucket refills **lazily**: one atomic word holds the tokens and the number of intervals
//! that had passed at its last update, and whoever takes a token first adds the fills of the
//! intervals passed since. The result is the same (fills happen on the grid `start + k ×
//! fillInterval`, as Envoy's timer would), with no timer task and no lock: one load and one
//! compare-and-swap per request, shared by every worker thread (the limit is per process, as
//! Envoy's: "the token bucket is shared across all workers"). Time is
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
    /// Tokens (low 32 bits) and, in the high 32 bits, the number of fill intervals since
    /// `start` at the last update (wrapping).
    state: AtomicU64,
    start: Instant,
    interval_ns: u64,
    max_tokens: u32,
    tokens_per_fill: u32,
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
    /// `fill_interval`. Zero values are raised to the smallest valid ones (1 token, 1ns):
    /// validation refuses them in configurations.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let max_tokens = max_tokens.max(1);
        TokenBucket {
            state: AtomicU64::new(u64::from(max_tokens)),
            start: Instant::now(),
            interval_ns: u64::try_from(fill_interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            max_tokens,
            tokens_per_fill: tokens_per_fill.max(1),
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
        let epoch = self.epoch(now);
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (tokens, seen) = self.refilled(cur, epoch);
            if tokens == 0 {
                // a refill adds at least one token: nothing changed, nothing to store
                return None;
            }
            let next = pack(tokens - 1, seen);
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(tokens - 1),
                Err(actual) => cur = actual,
            }
        }
    }

    /// The tokens in the bucket at `now` (Envoy's `remainingTokens`).
    pub fn remaining_at(&self, now: Instant) -> u32 {
        self.refilled(self.state.load(Ordering::Relaxed), self.epoch(now))
            .0
    }

    /// Whole seconds until the next fill at `now`, as Envoy's `remainingFillInterval`
    /// computes `x-ratelimit-reset`: the interval minus the whole seconds since the last
    /// fill (so `0` for an interval under a second).
    pub fn reset_seconds_at(&self, now: Instant) -> u64 {
        self.reset_seconds(self.position(now).1)
    }

    /// [`remaining_at`](Self::remaining_at) and
    /// [`reset_seconds_at`](Self::reset_seconds_at) together (`x-ratelimit-remaining` and
    /// `x-ratelimit-reset`), from one division of the time since the bucket was made.
    pub fn remaining_and_reset_at(&self, now: Instant) -> (u32, u64) {
        let (epoch, since_fill) = self.position(now);
        let remaining = self.refilled(self.state.load(Ordering::Relaxed), epoch).0;
        (remaining, self.reset_seconds(since_fill))
    }

    /// `x-ratelimit-reset` from the nanoseconds since the last fill: the interval's whole
    /// seconds minus those passed.
    #[inline]
    fn reset_seconds(&self, since_fill: u64) -> u64 {
        (self.interval_ns / 1_000_000_000).saturating_sub(since_fill / 1_000_000_000)
    }

    /// Fill intervals passed since the bucket was made (wrapping at 32 bits: only the
    /// difference between two of them is used).
    #[inline]
    fn epoch(&self, now: Instant) -> u32 {
        self.position(now).0
    }

    /// The bucket's [`epoch`](Self::epoch) at `now` and the nanoseconds since its last fill:
    /// one division (a 64-bit division by a value known only at run time is tens of cycles).
    #[inline]
    fn position(&self, now: Instant) -> (u32, u64) {
        let since_start = nanos(now.saturating_duration_since(self.start));
        let fills = since_start / self.interval_ns;
        (fills as u32, since_start - fills * self.interval_ns)
    }

    /// The tokens and epoch of state `cur` once the fills up to `epoch` are added.
    #[inline]
    fn refilled(&self, cur: u64, epoch: u32) -> (u32, u32) {
        let (tokens, seen) = unpack(cur);
        let passed = epoch.wrapping_sub(seen);
        // 0: same interval; above half the range: another thread stored a later epoch
        if passed == 0 || passed > u32::MAX / 2 {
            return (tokens, seen);
        }
        let added = u64::from(passed) * u64::from(self.tokens_per_fill);
        let tokens = (u64::from(tokens) + added).min(u64::from(self.max_tokens)) as u32;
        (tokens, epoch)
    }
}

/// A number as a header value (`x-ratelimit-*`): under [`SMALL_NUMBERS`], a slice of a
/// static table, which neither allocates nor counts references when cloned or dropped;
/// above, cut from the thread's buffer of generated values.
pub use crate::header_values::{SMALL_NUMBERS, number as header_number};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn pack(tokens: u32, epoch: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(tokens)
}

fn unpack(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

// === impl RateLimitPolicy ===

impl RateLimitPolicy {
    /// A policy with a full bucket of `max_tokens`, refilled by `tokens_per_fill` every
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

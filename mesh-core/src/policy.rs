//! Compiled route policies handed from the router to the resilience layers.
//!
//! These are the normalised forms of `HTTPRoute.retries` and `HTTPRoute.fault`: durations
//! parsed, `retryOn` split into flags and status codes, percentages as fractions. The router
//! puts them in [`RoutePolicy`](crate::ext::RoutePolicy); the retry and fault layers read them.
//!
//! [`OutlierPolicy`] is a DestinationRule's `outlierDetection`, compiled per cluster: the
//! balancer puts it in [`UpstreamCluster`](crate::ext::UpstreamCluster) and outlier detection
//! reads it.

use std::time::Duration;

use http::StatusCode;

bitflags::bitflags! {
    /// Envoy `retry_on` conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct RetryOn: u32 {
        /// `5xx`: any 5xx answer, reset, or connect failure.
        const FIVE_XX = 1 << 0;
        /// `gateway-error`: 502, 503 or 504.
        const GATEWAY_ERROR = 1 << 1;
        /// `reset`: the upstream did not answer (disconnect, reset, read timeout).
        const RESET = 1 << 2;
        /// `connect-failure`: connection to the upstream failed.
        const CONNECT_FAILURE = 1 << 3;
        /// `envoy-ratelimited`: the upstream answered with `x-envoy-ratelimited`.
        const ENVOY_RATELIMITED = 1 << 4;
        /// `retriable-4xx`: 409.
        const RETRIABLE_4XX = 1 << 5;
        /// `refused-stream`: REFUSED_STREAM on HTTP/2.
        const REFUSED_STREAM = 1 << 6;
        /// `retriable-status-codes`: statuses listed in the policy.
        const RETRIABLE_STATUS_CODES = 1 << 7;
        /// `retriable-headers`: by response headers.
        const RETRIABLE_HEADERS = 1 << 8;
        /// `reset-before-request`: reset before any byte of the request was sent.
        const RESET_BEFORE_REQUEST = 1 << 9;
        /// `http3-post-connect-failure`.
        const HTTP3_POST_CONNECT_FAILURE = 1 << 10;
        /// gRPC `cancelled`.
        const GRPC_CANCELLED = 1 << 16;
        /// gRPC `deadline-exceeded`.
        const GRPC_DEADLINE_EXCEEDED = 1 << 17;
        /// gRPC `internal`.
        const GRPC_INTERNAL = 1 << 18;
        /// gRPC `resource-exhausted`.
        const GRPC_RESOURCE_EXHAUSTED = 1 << 19;
        /// gRPC `unavailable`.
        const GRPC_UNAVAILABLE = 1 << 20;
    }
}

/// The names Envoy accepts in `retry_on`, with their flags (Istio passes `retryOn` through).
pub const RETRY_ON_NAMES: &[(&str, RetryOn)] = &[
    ("5xx", RetryOn::FIVE_XX),
    ("gateway-error", RetryOn::GATEWAY_ERROR),
    ("reset", RetryOn::RESET),
    ("connect-failure", RetryOn::CONNECT_FAILURE),
    ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
    ("retriable-4xx", RetryOn::RETRIABLE_4XX),
    ("refused-stream", RetryOn::REFUSED_STREAM),
    ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
    ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
    ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
    (
        "http3-post-connect-failure",
        RetryOn::HTTP3_POST_CONNECT_FAILURE,
    ),
    ("cancelled", RetryOn::GRPC_CANCELLED),
    ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
    ("internal", RetryOn::GRPC_INTERNAL),
    ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
    ("unavailable", RetryOn::GRPC_UNAVAILABLE),
];

impl RetryOn {
    /// The conditions of an `x-envoy-retry-on` value (`grpc` false: the HTTP conditions) or
    /// an `x-envoy-retry-grpc-on` one (`grpc`: the gRPC statuses), comma-separated; other
    /// tokens are ignored, as Envoy's `RetryStateImpl::parseRetryOn` and `parseRetryGrpcOn`
    /// do.
    ///
    /// ```
    /// use mesh_core::policy::RetryOn;
    /// assert_eq!(RetryOn::from_header("5xx, bogus,unavailable", false), RetryOn::FIVE_XX);
    /// assert_eq!(RetryOn::from_header("unavailable,5xx", true), RetryOn::GRPC_UNAVAILABLE);
    /// ```
    pub fn from_header(value: &str, grpc: bool) -> RetryOn {
        let mut on = RetryOn::empty();
        for tok in value.split(',').map(str::trim) {
            if let Some((_, f)) = RETRY_ON_NAMES.iter().find(|(n, _)| *n == tok)
                && (f.bits() >= RetryOn::GRPC_CANCELLED.bits()) == grpc
            {
                on |= *f;
            }
        }
        on
    }
}

/// A compiled `HTTPRetry`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Number of retries (not counting the first attempt). Istio's default when `retries`
    /// is omitted: 2.
    pub attempts: u32,
    /// Timeout of each attempt. `None`: the route timeout bounds all attempts together.
    pub per_try_timeout: Option<Duration>,
    /// Conditions that trigger a retry.
    pub retry_on: RetryOn,
    /// Status codes retried under `retriable-status-codes` (numbers in `retryOn`).
    pub retriable_status_codes: Vec<StatusCode>,
    /// `retryRemoteLocalities`. Default: false.
    pub retry_remote_localities: bool,
    /// `retryIgnorePreviousHosts`: avoid the hosts already tried. Istio's default: true.
    pub retry_ignore_previous_hosts: bool,
    /// Base back-off interval between retries. Default: Envoy's 25ms.
    pub backoff: Duration,
    /// Whether the route wrote `retryOn` itself. Then every request is retried on what it
    /// names, as Envoy does; otherwise (Istio's default conditions) a non-idempotent request
    /// (`POST`, `PATCH`, …) is retried only where the upstream cannot have seen it (a
    /// connect failure, a refused stream). Default: false.
    pub explicit_retry_on: bool,
}

impl Default for RetryPolicy {
    /// Istio's default retry policy for HTTP routes without `retries`:
    /// 2 attempts on `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
    /// with status 503, avoiding previous hosts.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::CONNECT_FAILURE
                | RetryOn::REFUSED_STREAM
                | RetryOn::GRPC_UNAVAILABLE
                | RetryOn::GRPC_CANCELLED
                | RetryOn::RETRIABLE_STATUS_CODES,
            retriable_status_codes: vec![StatusCode::SERVICE_UNAVAILABLE],
            retry_remote_localities: false,
            retry_ignore_previous_hosts: true,
            backoff: Duration::from_millis(25),
            explicit_retry_on: false,
        }
    }
}

impl RetryPolicy {
    /// Parses Istio's `retryOn` string (comma-separated Envoy conditions and HTTP status
    /// codes) into flags and status codes. Returns the first unknown token as the error.
    pub fn parse_retry_on(s: &str) -> Result<(RetryOn, Vec<StatusCode>), String> {
        let mut flags = RetryOn::empty();
        let mut codes = Vec::new();
        for tok in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some((_, f)) = RETRY_ON_NAMES.iter().find(|(n, _)| *n == tok) {
                flags |= *f;
            } else if let Some(code) = tok
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                codes.push(code);
                flags |= RetryOn::RETRIABLE_STATUS_CODES;
            } else {
                return Err(tok.to_string());
            }
        }
        Ok((flags, codes))
    }
}

/// A compiled `HTTPFaultInjection`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultPolicy {
    /// Injected delay, if any.
    pub delay: Option<DelayFault>,
    /// Injected abort, if any.
    pub abort: Option<AbortFault>,
}

/// A compiled `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayFault {
    /// `fixedDelay`.
    pub fixed_delay: Duration,
    /// Fraction of requests delayed, 0.0 ..= 1.0 (`percentage.value / 100`, else the
    /// deprecated `percent`; neither set: 0, as Istio).
    pub fraction: f64,
}

/// A compiled `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortFault {
    /// What the aborted request gets.
    pub error: AbortError,
    /// Fraction of requests aborted, 0.0 ..= 1.0 (`percentage.value / 100`; unset: 0, as
    /// Istio).
    pub fraction: f64,
}

/// The error an aborted request gets.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AbortError {
    /// `httpStatus`.
    Http(StatusCode),
    /// `grpcStatus`, as the numeric gRPC status code.
    Grpc(u32),
    /// `http2Error` (e.g. `REFUSED_STREAM`).
    Http2(String),
}

/// A compiled `OutlierDetection` (a DestinationRule's, merged per subset and port), with the
/// values istiod hands Envoy (`applyOutlierDetection` in
/// `pilot/pkg/networking/core/cluster_traffic_policy.go`) and Envoy's defaults for the rest.
///
/// A threshold of `None` is a detector turned off (Envoy's `enforcing_*: 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// `consecutive5xxErrors`: 5xx answers in a row that eject. Default: 5; 0 turns it off.
    pub consecutive_5xx: Option<u32>,
    /// `consecutiveGatewayErrors`: 502, 503, 504 in a row that eject. Default: off (Envoy
    /// counts them but does not enforce: `enforcing_consecutive_gateway_failure` is 0).
    pub consecutive_gateway: Option<u32>,
    /// `splitExternalLocalOriginErrors`: connect failures, resets and timeouts count as
    /// local-origin failures instead of 503/504 answers. Default: false.
    pub split_local_origin: bool,
    /// `consecutiveLocalOriginFailures` (only with the split): local-origin failures in a row
    /// that eject. Default: Envoy's 5.
    pub consecutive_local_origin: Option<u32>,
    /// `interval`: how often ejections are reviewed. Default: 10s.
    pub interval: Duration,
    /// `baseEjectionTime`: an ejection lasts this times the endpoint's ejection count.
    /// Default: 30s.
    pub base_ejection_time: Duration,
    /// Envoy's `max_ejection_time`, the cap on an ejection (Istio does not set it): 300s, or
    /// `baseEjectionTime` when longer.
    pub max_ejection_time: Duration,
    /// `maxEjectionPercent`: the share of the cluster's endpoints that may be ejected at
    /// once, in percent. Default: 10.
    pub max_ejection_percent: u32,
    /// `outlierDetectionHttpErrorCodes`: when not empty, exactly these statuses are errors
    /// (instead of every 5xx). Default: empty.
    pub error_codes: Box<[u16]>,
}

/// Envoy's default `interval`.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's default `base_ejection_time`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time`.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Envoy's default `max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's default `consecutive_5xx` (and `consecutive_local_origin_failure`).
pub const DEFAULT_CONSECUTIVE_ERRORS: u32 = 5;

impl Default for OutlierPolicy {
    /// What istiod sends for an empty `outlierDetection: {}`: Envoy's defaults, consecutive
    /// 5xx enforced, gateway errors and local-origin failures not.
    fn default() -> Self {
        OutlierPolicy {
            consecutive_5xx: Some(DEFAULT_CONSECUTIVE_ERRORS),
            consecutive_gateway: None,
            split_local_origin: false,
            consecutive_local_origin: None,
            interval: DEFAULT_OUTLIER_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            error_codes: Box::default(),
        }
    }
}

impl OutlierPolicy {
    /// Compiles `OutlierDetection` as istiod does: a threshold written as 0 turns its
    /// detector off; the deprecated `consecutiveErrors` is ignored (istiod no longer reads
    /// it; validation warns); `minHealthPercent` is the balancer's panic threshold (see
    /// `mesh-lb`), not part of this policy.
    pub fn from_istio(od: &crate::model::networking::OutlierDetection) -> Self {
        let enforced = |v: u32| (v > 0).then_some(v);
        let d = OutlierPolicy::default();
        let base = od.base_ejection_time.map_or(d.base_ejection_time, |b| b.0);
        OutlierPolicy {
            consecutive_5xx: od
                .consecutive_5xx_errors
                .map_or(d.consecutive_5xx, enforced),
            consecutive_gateway: od.consecutive_gateway_errors.and_then(enforced),
            split_local_origin: od.split_external_local_origin_errors,
            // istiod writes the threshold only when positive; Envoy's own default (5, enforced)
            // applies otherwise
            consecutive_local_origin: od.split_external_local_origin_errors.then(|| {
                od.consecutive_local_origin_failures
                    .filter(|v| *v > 0)
                    .unwrap_or(DEFAULT_CONSECUTIVE_ERRORS)
            }),
            interval: od.interval.map_or(d.interval, |i| i.0),
            base_ejection_time: base,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME.max(base),
            max_ejection_percent: od
                .max_ejection_percent
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0)
                .map_or(d.max_ejection_percent, |p| p.min(100)),
            error_codes: od
                .outlier_detection_http_error_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
        }
    }

    /// How long the `n`-th ejection lasts: `baseEjectionTime × n`, at most the maximum
    /// ejection time (Envoy's `checkHostForUneject`, without jitter).
    pub fn ejection_time(&self, n: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(n)
            .min(self.max_ejection_time)
    }
}

// === conversions from the Istio model ===

impl RetryPolicy {
    /// Compiles `HTTPRetry` as istiod does (`pilot/pkg/networking/core/route/retry`):
    /// unset fields take Istio's defaults; `attempts: 0` disables retries; an unknown
    /// `retryOn` token is ignored here (validation rejects it first).
    pub fn from_istio(r: &crate::model::networking::HttpRetry) -> Self {
        let mut p = RetryPolicy {
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            ..RetryPolicy::default()
        };
        p.per_try_timeout = r.per_try_timeout.map(|d| d.0);
        if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
            let (flags, codes) = RetryPolicy::parse_retry_on(on).unwrap_or_default();
            p.retry_on = flags;
            p.retriable_status_codes = codes;
            p.explicit_retry_on = true;
        }
        if let Some(b) = r.retry_remote_localities {
            p.retry_remote_localities = b;
        }
        if let Some(b) = r.retry_ignore_previous_hosts {
            p.retry_ignore_previous_hosts = b;
        }
        if let Some(b) = r.backoff {
            p.backoff = b.0;
        }
        p
    }
}

/// gRPC status names (as `grpcStatus` writes them) and their codes.
pub const GRPC_STATUS_CODES: &[(&str, u32)] = &[
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The HTTP status Envoy maps a gRPC status to (`Grpc::Utility::grpcToHttpStatus`, after
/// grpc-gateway's mapping), as outlier detection judges a gRPC answer.
pub fn grpc_to_http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        // UNKNOWN, INTERNAL, DATA_LOSS and anything else
        _ => 500,
    }
}

/// A fault's share of requests, as istiod translates it (`route.TranslateFault`): the
/// `percentage`, else (delays only) the deprecated integer `percent`, else **none**: Envoy
/// reads an unset `FractionalPercent` as 0 (istio/istio#36303 and #39969: Istio's
/// documentation promised 100% and was corrected to match). Validation warns about it.
fn fraction(p: Option<crate::percent::Percent>, legacy: Option<i32>) -> f64 {
    match (p, legacy) {
        (Some(p), _) => p.fraction(),
        (None, Some(l)) => (f64::from(l) / 100.0).clamp(0.0, 1.0),
        (None, None) => 0.0,
    }
}

impl FaultPolicy {
    /// Compiles `HTTPFaultInjection` (an unset percentage injects nothing, as Istio).
    pub fn from_istio(f: &crate::model::networking::HttpFaultInjection) -> Self {
        let delay = f.delay.as_ref().and_then(|d| {
            Some(DelayFault {
                fixed_delay: d.fixed_delay?.0,
                fraction: fraction(d.percentage, d.percent),
            })
        });
        let abort = f.abort.as_ref().and_then(|a| {
            let error = if let Some(s) = a.http_status {
                AbortError::Http(StatusCode::from_u16(u16::try_from(s).ok()?).ok()?)
            } else if let Some(g) = &a.grpc_status {
                let code = g.parse::<u32>().ok().or_else(|| {
                    GRPC_STATUS_CODES
                        .iter()
                        .find(|(n, _)| n == g)
                        .map(|(_, c)| *c)
                })?;
                AbortError::Grpc(code)
            } else {
                AbortError::Http2(a.http2_error.clone()?)
            };
            Some(AbortFault {
                error,
                fraction: fraction(a.percentage, None),
            })
        });
        FaultPolicy { delay, abort }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_parses_names_and_codes() {
        let (f, c) = RetryPolicy::parse_retry_on("gateway-error,connect-failure,503").unwrap();
        assert!(f.contains(
            RetryOn::GATEWAY_ERROR | RetryOn::CONNECT_FAILURE | RetryOn::RETRIABLE_STATUS_CODES
        ));
        assert_eq!(c, vec![StatusCode::SERVICE_UNAVAILABLE]);
        assert_eq!(
            RetryPolicy::parse_retry_on("5xx,bogus"),
            Err("bogus".to_string())
        );
    }

    #[test]
    fn from_istio_keeps_istio_s_defaults_and_says_whether_retry_on_was_written() {
        use crate::model::networking::HttpRetry;
        let unset = RetryPolicy::from_istio(&HttpRetry {
            attempts: 3,
            ..HttpRetry::default()
        });
        assert_eq!(unset.attempts, 3);
        assert_eq!(unset.retry_on, RetryPolicy::default().retry_on);
        assert_eq!(
            unset.retriable_status_codes,
            [StatusCode::SERVICE_UNAVAILABLE]
        );
        assert!(!unset.explicit_retry_on && unset.retry_ignore_previous_hosts);
        let written = RetryPolicy::from_istio(&HttpRetry {
            attempts: 1,
            retry_on: Some("5xx".into()),
            retry_ignore_previous_hosts: Some(false),
            ..HttpRetry::default()
        });
        assert_eq!(written.retry_on, RetryOn::FIVE_XX);
        assert!(written.retriable_status_codes.is_empty());
        assert!(written.explicit_retry_on && !written.retry_ignore_previous_hosts);
    }

    #[test]
    fn outlier_policy_compiles_as_istiod_does() {
        use crate::duration::GoDuration;
        use crate::model::networking::OutlierDetection;
        let empty = OutlierPolicy::from_istio(&OutlierDetection::default());
        assert_eq!(empty, OutlierPolicy::default());
        assert_eq!(empty.consecutive_5xx, Some(5));
        assert_eq!(
            empty.consecutive_gateway, None,
            "Envoy does not enforce it by default"
        );
        assert_eq!(empty.consecutive_local_origin, None);
        let od = OutlierDetection {
            consecutive_errors: Some(7),
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(3),
            split_external_local_origin_errors: true,
            interval: Some(GoDuration(Duration::from_secs(1))),
            base_ejection_time: Some(GoDuration(Duration::from_secs(400))),
            max_ejection_percent: Some(250),
            outlier_detection_http_error_codes: vec![500, 429],
            ..OutlierDetection::default()
        };
        let p = OutlierPolicy::from_istio(&od);
        assert_eq!(p.consecutive_5xx, None, "0 turns the 5xx detector off");
        assert_eq!(p.consecutive_gateway, Some(3));
        assert_eq!(
            p.consecutive_local_origin,
            Some(5),
            "Envoy's default under the split"
        );
        assert_eq!(p.interval, Duration::from_secs(1));
        assert_eq!(
            p.max_ejection_time,
            Duration::from_secs(400),
            "never under the base"
        );
        assert_eq!(p.max_ejection_percent, 100);
        assert_eq!(&*p.error_codes, &[500, 429]);
        assert_eq!(p.ejection_time(1), Duration::from_secs(400));
        assert_eq!(
            OutlierPolicy::default().ejection_time(3),
            Duration::from_secs(90)
        );
        assert_eq!(
            OutlierPolicy::default().ejection_time(20),
            Duration::from_secs(300)
        );
    }
}

//! `LocalRateLimit`, this project's own kind. Istio has no rules for it (it configures
//! Envoy's filter through an EnvoyFilter, checked by nobody); these are Envoy's own checks of
//! `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` (its proto validation
//! rules and `LocalRateLimiterImpl`'s constructor), with Istio's checks for the selector and
//! the hosts. Conflicts between resources (two limits on the same routes) are found after
//! compiling, by `crate::ratelimit::conflicts`.

use std::time::Duration;

use crate::error::FieldPath;
use crate::model::ratelimit::{LocalRateLimit, RateLimitContext};

use super::common::{
    validate_alpha_workload_selector, validate_duration, validate_header_op_name,
    validate_partial_wildcard, validate_wildcard_domain,
};
use super::{PathExt, Report};

/// Envoy's smallest `fill_interval` (`LocalRateLimiterImpl`: "local rate limit token bucket
/// fill timer must be >= 50ms").
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// `LocalRateLimit` checks.
pub(crate) fn validate(rl: &LocalRateLimit, at: &FieldPath, rep: &mut Report<'_>) {
    validate_alpha_workload_selector(
        rl.workload_selector.as_ref(),
        "local rate limit",
        &at.k("workloadSelector"),
        rep,
    );
    if rl.context == RateLimitContext::SidecarInbound {
        if !rl.hosts.is_empty() {
            rep.error(
                &at.k("hosts"),
                "a SIDECAR_INBOUND limit covers the whole inbound listener: hosts name outbound routes",
            );
        }
        if !rl.routes.is_empty() {
            rep.error(
                &at.k("routes"),
                "a SIDECAR_INBOUND limit covers the whole inbound listener: routes name outbound routes",
            );
        }
    }
    for (i, h) in rl.hosts.iter().enumerate() {
        let p = at.ki("hosts", i);
        if h.is_empty() {
            rep.error(&p, "host cannot be empty");
            continue;
        }
        if h == "*" {
            continue;
        }
        // one error per host, as Istio's validateHost stops at the first
        if let Err(e) = validate_partial_wildcard(h).and_then(|()| validate_wildcard_domain(h)) {
            rep.error(&p, e);
        }
    }
    for (i, r) in rl.routes.iter().enumerate() {
        if r.is_empty() {
            rep.error(&at.ki("routes", i), "route name cannot be empty");
        }
    }
    let bp = at.k("tokenBucket");
    match &rl.token_bucket {
        None => rep.error(&bp, "tokenBucket is required"),
        Some(b) => {
            // proto: max_tokens {gt: 0}; tokens_per_fill {gt: 0}; fill_interval {required, gt: 0}
            if b.max_tokens == 0 {
                rep.error(
                    &bp.k("maxTokens"),
                    "maxTokens is required and must be greater than 0",
                );
            }
            if b.tokens_per_fill == Some(0) {
                rep.error(
                    &bp.k("tokensPerFill"),
                    "tokensPerFill must be greater than 0",
                );
            }
            let fp = bp.k("fillInterval");
            match b.fill_interval {
                None => rep.error(&fp, "fillInterval is required"),
                Some(d) => {
                    if let Err(e) = validate_duration(d) {
                        rep.error(&fp, e);
                    } else if d.0 < MIN_FILL_INTERVAL {
                        rep.error(
                            &fp,
                            format!(
                                "fillInterval {d} is shorter than 50ms (Envoy: local rate limit token bucket fill timer must be >= 50ms)"
                            ),
                        );
                    }
                }
            }
        }
    }
    if let Some(code) = rl.status_code
        && !(400..=599).contains(&code)
    {
        // Envoy answers 429 instead of a status under 400 (`toErrorCode`); refused here
        rep.error(
            &at.k("statusCode"),
            format!("statusCode {code} must be an error status, 400 to 599"),
        );
    }
    for (name, value) in &rl.response_headers_to_add {
        let p = at.k("responseHeadersToAdd").k(name);
        if let Err(e) = validate_header_op_name(name) {
            rep.error(&p, e);
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            rep.error(&p, format!("invalid header name {name:?}"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            rep.error(&p, format!("invalid header value {value:?}"));
        } else if value.contains('%') {
            rep.error(
                &p,
                format!(
                    "header value {value:?}: only literal values are supported (no %VARIABLE%)"
                ),
            );
        }
    }
}

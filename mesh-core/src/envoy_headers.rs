//! The `x-envoy-*` request headers Envoy's router consumes (per-request retry and timeout
//! overrides), which of them a request carries, and whether a layer honours them.
//!
//! Envoy's router honours `x-envoy-retry-on`, `x-envoy-retry-grpc-on`,
//! `x-envoy-max-retries`, `x-envoy-retriable-status-codes`,
//! `x-envoy-upstream-rq-timeout-ms` and `x-envoy-upstream-rq-per-try-timeout-ms`
//! (`configuration/http/http_filters/router_filter`, "HTTP headers consumed") **on internal
//! requests only**: its connection manager removes them from every external request before
//! any filter sees them (`ConnectionManagerUtility::mutateRequestHeaders`, then
//! `cleanInternalHeaders`). A request is internal when, after `x-forwarded-for` handling,
//! its one address is in `internal_address_config`, which is empty by default since Envoy
//! 1.33. Istio's sidecar outbound listener does not use the remote address
//! (`PILOT_SIDECAR_USE_REMOTE_ADDRESS`, default false; `pilot/pkg/networking/core/
//! listener.go`), so an application's request arrives without `x-forwarded-for`, is
//! external, and its `x-envoy-*` overrides are stripped; gateways use the remote address and
//! strip them from clients outside the mesh. So the layers **strip them by default**
//! ([`EnvoyHeaderPolicy::Strip`]): a client cannot raise the retries or timeouts the
//! operator configured. A user whose callers are trusted (Istio with
//! `PILOT_SIDECAR_USE_REMOTE_ADDRESS=true` and the application's address internal, or an
//! in-process client calling through the layers itself) chooses
//! [`EnvoyHeaderPolicy::Honour`] (in `mesh-proxy`: `outbound.trustEnvoyHeaders: true`). Either way the headers are not forwarded upstream, as
//! Envoy's router removes those it consumed.
//!
//! ```
//! use http::HeaderMap;
//! use mesh_core::envoy_headers::EnvoyHeaders;
//!
//! let mut h = HeaderMap::new();
//! h.insert("x-envoy-max-retries", "3".parse().unwrap());
//! h.insert("x-envoy-upstream-rq-timeout-ms", "250".parse().unwrap());
//! h.insert("x-envoy-attempt-count", "1".parse().unwrap()); // not one of the router's inputs
//! let present = EnvoyHeaders::present(&h);
//! assert_eq!(present, EnvoyHeaders::MAX_RETRIES | EnvoyHeaders::UPSTREAM_RQ_TIMEOUT_MS);
//! EnvoyHeaders::strip(&mut h, present & EnvoyHeaders::TIMEOUT);
//! assert!(!h.contains_key("x-envoy-upstream-rq-timeout-ms") && h.contains_key("x-envoy-max-retries"));
//! ```

use http::HeaderMap;

bitflags::bitflags! {
    /// A set of the `x-envoy-*` request headers Envoy's router consumes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct EnvoyHeaders: u16 {
        /// `x-envoy-retry-on`: retry conditions added to the route's.
        const RETRY_ON = 1 << 0;
        /// `x-envoy-retry-grpc-on`: gRPC retry conditions added to the route's.
        const RETRY_GRPC_ON = 1 << 1;
        /// `x-envoy-max-retries`: the number of retries, instead of the route's.
        const MAX_RETRIES = 1 << 2;
        /// `x-envoy-retriable-status-codes`: status codes added to the route's.
        const RETRIABLE_STATUS_CODES = 1 << 3;
        /// `x-envoy-retriable-header-names` (stripped, not honoured).
        const RETRIABLE_HEADER_NAMES = 1 << 4;
        /// `x-envoy-upstream-rq-timeout-ms`: the route timeout, instead of the route's.
        const UPSTREAM_RQ_TIMEOUT_MS = 1 << 5;
        /// `x-envoy-upstream-rq-per-try-timeout-ms`: the per-try timeout.
        const UPSTREAM_RQ_PER_TRY_TIMEOUT_MS = 1 << 6;
        /// `x-envoy-expected-rq-timeout-ms` (stripped, not honoured: Istio does not set
        /// `respect_expected_rq_timeout`).
        const EXPECTED_RQ_TIMEOUT_MS = 1 << 7;
        /// `x-envoy-upstream-rq-timeout-alt-response` (stripped, not honoured).
        const UPSTREAM_RQ_TIMEOUT_ALT_RESPONSE = 1 << 8;
        /// `x-envoy-hedge-on-per-try-timeout` (stripped, not honoured: no hedging).
        const HEDGE_ON_PER_TRY_TIMEOUT = 1 << 9;
    }
}

/// Whether a layer honours the `x-envoy-*` overrides of the requests it sees (it strips them
/// either way); see the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnvoyHeaderPolicy {
    /// Remove them and apply the route's configuration (Envoy's handling of an external
    /// request; what an Istio sidecar or gateway does with its clients' requests). Default.
    #[default]
    Strip,
    /// Apply them, as Envoy's router does on an internal request, then remove them.
    Honour,
}

/// The headers and their names, in one table.
const NAMES: &[(&str, EnvoyHeaders)] = &[
    ("x-envoy-retry-on", EnvoyHeaders::RETRY_ON),
    ("x-envoy-retry-grpc-on", EnvoyHeaders::RETRY_GRPC_ON),
    ("x-envoy-max-retries", EnvoyHeaders::MAX_RETRIES),
    (
        "x-envoy-retriable-status-codes",
        EnvoyHeaders::RETRIABLE_STATUS_CODES,
    ),
    (
        "x-envoy-retriable-header-names",
        EnvoyHeaders::RETRIABLE_HEADER_NAMES,
    ),
    (
        "x-envoy-upstream-rq-timeout-ms",
        EnvoyHeaders::UPSTREAM_RQ_TIMEOUT_MS,
    ),
    (
        "x-envoy-upstream-rq-per-try-timeout-ms",
        EnvoyHeaders::UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    ),
    (
        "x-envoy-expected-rq-timeout-ms",
        EnvoyHeaders::EXPECTED_RQ_TIMEOUT_MS,
    ),
    (
        "x-envoy-upstream-rq-timeout-alt-response",
        EnvoyHeaders::UPSTREAM_RQ_TIMEOUT_ALT_RESPONSE,
    ),
    (
        "x-envoy-hedge-on-per-try-timeout",
        EnvoyHeaders::HEDGE_ON_PER_TRY_TIMEOUT,
    ),
];

const PREFIX: &str = "x-envoy-";

impl EnvoyHeaders {
    /// The headers the timeout layer consumes: the route timeout's.
    pub const TIMEOUT: EnvoyHeaders = EnvoyHeaders::UPSTREAM_RQ_TIMEOUT_MS
        .union(EnvoyHeaders::EXPECTED_RQ_TIMEOUT_MS)
        .union(EnvoyHeaders::UPSTREAM_RQ_TIMEOUT_ALT_RESPONSE);

    /// The headers the retry layer consumes.
    pub const RETRY: EnvoyHeaders = EnvoyHeaders::RETRY_ON
        .union(EnvoyHeaders::RETRY_GRPC_ON)
        .union(EnvoyHeaders::MAX_RETRIES)
        .union(EnvoyHeaders::RETRIABLE_STATUS_CODES)
        .union(EnvoyHeaders::RETRIABLE_HEADER_NAMES)
        .union(EnvoyHeaders::UPSTREAM_RQ_PER_TRY_TIMEOUT_MS)
        .union(EnvoyHeaders::HEDGE_ON_PER_TRY_TIMEOUT);

    /// Which of the router's headers `h` holds: one pass over the names, comparing a prefix
    /// (cheaper than a hashed lookup per header; a request without any costs no more).
    #[inline]
    pub fn present(h: &HeaderMap) -> EnvoyHeaders {
        let mut present = EnvoyHeaders::empty();
        for name in h.keys() {
            if let Some(rest) = name.as_str().strip_prefix(PREFIX) {
                present |= Self::by_suffix(rest);
            }
        }
        present
    }

    #[cold]
    fn by_suffix(rest: &str) -> EnvoyHeaders {
        NAMES
            .iter()
            .find(|(n, _)| n.strip_prefix(PREFIX) == Some(rest))
            .map_or(EnvoyHeaders::empty(), |(_, f)| *f)
    }

    /// The header name of a single flag (`None` for a set of several or none).
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(_, f)| *f == self).map(|(n, _)| *n)
    }

    /// The value of a single flag's header in `h`, as text.
    pub fn value(self, h: &HeaderMap) -> Option<&str> {
        h.get(self.name()?)?.to_str().ok()
    }

    /// Removes the headers of `which` from `h`.
    pub fn strip(h: &mut HeaderMap, which: EnvoyHeaders) {
        for (n, f) in NAMES {
            if which.contains(*f) {
                h.remove(*n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_found_and_removed() {
        let mut h = HeaderMap::new();
        for (n, _) in NAMES {
            h.insert(http::HeaderName::from_static(n), "1".parse().unwrap());
        }
        h.insert("x-envoy-internal", "true".parse().unwrap());
        h.insert("x-envoy", "x".parse().unwrap());
        h.insert("content-type", "x".parse().unwrap());
        let present = EnvoyHeaders::present(&h);
        assert_eq!(present, EnvoyHeaders::all());
        assert_eq!(present, EnvoyHeaders::TIMEOUT | EnvoyHeaders::RETRY);
        assert_eq!(
            EnvoyHeaders::MAX_RETRIES.value(&h),
            Some("1"),
            "a single flag's value"
        );
        EnvoyHeaders::strip(&mut h, present);
        assert_eq!(h.len(), 3, "only the others are left: {h:?}");
        assert!(EnvoyHeaders::present(&h).is_empty());
    }
}

//! Envoy's response flags, for answers the mesh decides itself.
//!
//! A failure the mesh decides (no route, timeout, open circuit, ejected host, denied,
//! injected fault) is an ordinary HTTP response that carries [`ResponseFlags`] in its
//! extensions and in the [`RESPONSE_FLAGS_HEADER`] header, so that retries, the access log
//! and the metrics can tell it from an answer the upstream gave. The short names are Envoy's
//! (`%RESPONSE_FLAGS%` in its access log), so dashboards written for Istio read them as is.

use std::fmt;

use http::HeaderValue;

/// The response header that carries the flags of a proxy-made answer, e.g. `NR` or `URX,UF`.
pub const RESPONSE_FLAGS_HEADER: &str = "x-mesh-response-flags";

bitflags::bitflags! {
    /// Why the mesh answered (or altered) a response, as Envoy's response flags.
    ///
    /// Inserted as a response extension by the layer that decided; several may be set.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ResponseFlags: u32 {
        /// `NR`: no route configured for the request (404), or no cluster (503).
        const NO_ROUTE = 1 << 0;
        /// `UH`: no healthy upstream host in the chosen cluster/subset (503).
        const NO_HEALTHY_UPSTREAM = 1 << 1;
        /// `UF`: upstream connection failure (503).
        const UPSTREAM_CONNECTION_FAILURE = 1 << 2;
        /// `URX`: the request was rejected because the retry limit was reached.
        const UPSTREAM_RETRY_LIMIT_EXCEEDED = 1 << 3;
        /// `UT`: upstream request timeout (504).
        const UPSTREAM_REQUEST_TIMEOUT = 1 << 4;
        /// `UO`: upstream overflow (circuit breaking) (503).
        const UPSTREAM_OVERFLOW = 1 << 5;
        /// `FI`: the request was aborted by fault injection.
        const FAULT_INJECTED = 1 << 6;
        /// `DI`: the request was delayed by fault injection.
        const DELAY_INJECTED = 1 << 7;
        /// `RBAC`: denied by an authorization policy (403).
        const RBAC_DENIED = 1 << 8;
        /// `UC`: upstream connection terminated.
        const UPSTREAM_CONNECTION_TERMINATION = 1 << 9;
        /// `UR`: upstream remote reset.
        const UPSTREAM_REMOTE_RESET = 1 << 10;
        /// `LR`: connection local reset.
        const LOCAL_RESET = 1 << 11;
        /// `DC`: downstream connection termination.
        const DOWNSTREAM_CONNECTION_TERMINATION = 1 << 12;
        /// `SI`: stream idle timeout.
        const STREAM_IDLE_TIMEOUT = 1 << 13;
        /// `DPE`: downstream protocol error (malformed request).
        const DOWNSTREAM_PROTOCOL_ERROR = 1 << 14;
        /// `UPE`: upstream protocol error.
        const UPSTREAM_PROTOCOL_ERROR = 1 << 15;
        /// `UAEX`: denied by an external authorization service.
        const UNAUTHORIZED_EXTERNAL_SERVICE = 1 << 16;
        /// `RL`: rate limited locally (429).
        const RATE_LIMITED = 1 << 17;
        /// `DF`: DNS resolution failed.
        const DNS_RESOLUTION_FAILURE = 1 << 18;
        /// `OM`: overload manager.
        const OVERLOAD_MANAGER = 1 << 19;
        /// `DT`: request or connection exceeded a duration limit.
        const DURATION_TIMEOUT = 1 << 20;
    }
}

/// Envoy's short names, in the order Envoy sets them.
///
/// Envoy (since 1.30) prints a request's flags in the order they were set
/// (`ResponseFlagUtils::toString` walks `StreamInfo::responseFlags()`, a vector appended to by
/// `setResponseFlag`). The mesh keeps a set, so it prints in the order Envoy's code sets them
/// for every combination the mesh makes: the HTTP filters before the router set theirs first
/// (fault `DI` then `FI`, rate limit, authorization); then the router's retry verdict (`URX`
/// when the attempts ran out, `UO` when the retry budget or the pool refused the retry:
/// `Filter::maybeRetryReset` sets it before `onUpstreamAbort` sets the reset's flag); then the
/// last attempt's own failure (`UF`, `UC`, `UR`, `UPE`, `UT`, …); the downstream's flags last.
/// So a retried refused connection is `URX,UF` and a per-try timeout's `URX,UT`, as Envoy 1.40
/// writes them (`benches/conformance/envoy_diff.py` compares them in order).
const NAMES: &[(ResponseFlags, &str)] = &[
    (ResponseFlags::DELAY_INJECTED, "DI"),
    (ResponseFlags::FAULT_INJECTED, "FI"),
    (ResponseFlags::RATE_LIMITED, "RL"),
    (ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE, "UAEX"),
    (ResponseFlags::RBAC_DENIED, "RBAC"),
    (ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
    (ResponseFlags::UPSTREAM_OVERFLOW, "UO"),
    (ResponseFlags::NO_ROUTE, "NR"),
    (ResponseFlags::NO_HEALTHY_UPSTREAM, "UH"),
    (ResponseFlags::DNS_RESOLUTION_FAILURE, "DF"),
    (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, "UF"),
    (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, "UT"),
    (ResponseFlags::LOCAL_RESET, "LR"),
    (ResponseFlags::UPSTREAM_REMOTE_RESET, "UR"),
    (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, "UC"),
    (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "UPE"),
    (ResponseFlags::STREAM_IDLE_TIMEOUT, "SI"),
    (ResponseFlags::DURATION_TIMEOUT, "DT"),
    (ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
    (ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
    (ResponseFlags::OVERLOAD_MANAGER, "OM"),
];

// === impl ResponseFlags ===

impl ResponseFlags {
    /// Parses Envoy's comma-separated short form (`"URX,UF"`); `-` or empty is no flag.
    /// Returns `None` when a name is unknown.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = ResponseFlags::empty();
        if s.is_empty() || s == "-" {
            return Some(out);
        }
        for part in s.split(',') {
            let (flag, _) = NAMES.iter().find(|(_, n)| *n == part.trim())?;
            out |= *flag;
        }
        Some(out)
    }

    /// The flags as a header value (`"NR"`, `"URX,UF"`); `-` when empty, as Envoy logs it.
    pub fn to_header_value(self) -> HeaderValue {
        // Common single flags need no formatting.
        for (flag, name) in NAMES {
            if self == *flag {
                return HeaderValue::from_static(name);
            }
        }
        // The short names are ASCII, so this cannot fail; fall back to "-" regardless.
        HeaderValue::from_str(&self.to_string()).unwrap_or(HeaderValue::from_static("-"))
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_uses_envoy_short_names_in_envoy_order() {
        // the orders Envoy 1.40 logs (envoy_diff.py): the retry verdict before the reset's flag
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(f.to_string(), "URX,UF");
        let f =
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        assert_eq!(f.to_string(), "URX,UT");
        // the fault filter runs before the router: its flags come first
        let f = ResponseFlags::UPSTREAM_CONNECTION_TERMINATION | ResponseFlags::DELAY_INJECTED;
        assert_eq!(f.to_string(), "DI,UC");
        // a retry refused by the budget: `maybeRetryReset` sets UO, then the reset's flag
        let f = ResponseFlags::UPSTREAM_REMOTE_RESET | ResponseFlags::UPSTREAM_OVERFLOW;
        assert_eq!(f.to_string(), "UO,UR");
        assert_eq!(ResponseFlags::empty().to_string(), "-");
        assert_eq!(ResponseFlags::NO_ROUTE.to_header_value(), "NR");
    }

    #[test]
    fn parse_round_trips_every_flag() {
        for (flag, name) in NAMES {
            assert_eq!(ResponseFlags::parse(name), Some(*flag));
            assert_eq!(ResponseFlags::parse(&flag.to_string()), Some(*flag));
        }
        assert_eq!(ResponseFlags::parse("NR,XX"), None);
        assert_eq!(ResponseFlags::parse("-"), Some(ResponseFlags::empty()));
    }
}

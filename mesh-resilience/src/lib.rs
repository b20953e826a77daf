//! `mesh-resilience`: rate limiting, timeouts, retries, outlier detection, circuit breaking
//! and fault injection layers.
//!
//! Each layer reads the policy of the route the router chose (`mesh_core::ext::RoutePolicy`,
//! written by `mesh-routing`) and falls back to its own configuration, so it works alone over
//! any `tower::Service<http::Request<B>>` and in `mesh-proxy`, in this order (DESIGN's; the
//! rate limit and fault filters before the router's timeout, as in Envoy):
//!
//! ```text
//! Route ─► RateLimit ─► Fault (delay, abort) ─► Timeout (route timeout) ─► Retry ─► Mirror ─► Lb
//!       ─► CircuitBreaker (connectionPool) ─► Outlier ─► connector
//! ```
//!
//! Landed: [`ratelimit`] (the `LocalRateLimit` kind), [`fault`] (`HTTPRoute.fault`),
//! [`timeout`] (`HTTPRoute.timeout`), [`retry`] (`HTTPRoute.retries`), [`breaker`]
//! (DestinationRule `connectionPool` limits, `retryBudget`; below the balancer, which picks
//! the cluster whose limits apply) and [`outlier`] (a DestinationRule's `outlierDetection`,
//! below the breaker: it reads the cluster's policy from `mesh_core::ext::UpstreamCluster`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod fault;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod timeout;

pub use breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use fault::{Fault, FaultLayer};
pub use outlier::{Outlier, OutlierLayer};
pub use ratelimit::{RateLimit, RateLimitLayer};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutBody, TimeoutLayer};

//! `mesh-resilience`: timeouts, retries, outlier detection, circuit breaking and fault
//! injection layers.
//!
//! Each layer reads the policy of the route the router chose (`mesh_core::ext::RoutePolicy`,
//! written by `mesh-routing`) and falls back to its own configuration, so it works alone over
//! any `tower::Service<http::Request<B>>` and in `mesh-proxy`, in this order (DESIGN's; the
//! fault filter before the router's timeout, as in Envoy):
//!
//! ```text
//! Route ─► Fault (delay, abort) ─► Timeout (route timeout) ─► Retry ─► Mirror ─► Lb
//!       ─► CircuitBreaker (connectionPool) ─► connector
//! ```
//!
//! Landed: [`fault`] (`HTTPRoute.fault`), [`timeout`] (`HTTPRoute.timeout`), [`retry`]
//! (`HTTPRoute.retries`) and [`breaker`] (DestinationRule `connectionPool` limits,
//! `retryBudget`; below the balancer, which picks the cluster whose limits apply). Outlier
//! detection and rate limits come with their issue; until then their fields are warned
//! about (see `docs/istio-support.md`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod fault;
pub mod retry;
pub mod timeout;

pub use breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use fault::{Fault, FaultLayer};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutBody, TimeoutLayer};

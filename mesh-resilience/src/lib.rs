//! `mesh-resilience`: rate limiting, timeouts, retries, outlier detection, circuit breaking
//! and fault injection layers.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use http::{Request, Response, StatusCode};
//! use mesh_core::MeshBody;
//! use mesh_core::policy::{RetryOn, RetryPolicy};
//! use mesh_core::replay::ReplayBody;
//! use mesh_resilience::RetryLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // a layer alone, over any service: retries (Istio's `retries: {attempts: 2, retryOn: 5xx}`)
//! let calls = Arc::new(AtomicUsize::new(0));
//! let seen = calls.clone();
//! let policy = RetryPolicy { attempts: 2, retry_on: RetryOn::FIVE_XX, ..RetryPolicy::default() };
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new().with_policy(Arc::new(policy)).with_seed(1))
//!     .service_fn(move |_req: Request<ReplayBody<String>>| {
//!         // fails twice, then answers
//!         let n = seen.fetch_add(1, Ordering::SeqCst);
//!         let mut res = Response::new(MeshBody::<String>::empty());
//!         if n < 2 {
//!             *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!         }
//!         async move { Ok::<_, Infallible>(res) }
//!     });
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # });
//! ```
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

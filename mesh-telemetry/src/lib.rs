//! `mesh-telemetry`: Istio-standard metrics, trace propagation, spans and access logs.
//!
//! ```
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mesh_telemetry::metrics::{IstioMetrics, LocalWorkload, Reporter};
//! use mesh_telemetry::RecordLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // Istio's standard metrics of a client's calls (`reporter="source"`)
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let metrics = Arc::new(IstioMetrics::new(LocalWorkload::named("productpage-v1", "default")));
//! let svc = ServiceBuilder::new()
//!     .layer(RecordLayer::new(vec![metrics.sink(Reporter::Source)]))
//!     .service_fn(|_req: Request<Full<bytes::Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("ok"))))
//!     });
//! let req = Request::builder().header("host", "reviews:9080").body(Full::default()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! res.into_body().collect().await.unwrap();
//! let text = metrics.encode_to_string();
//! assert!(text.contains(r#"source_workload="productpage-v1""#));
//! assert!(text.contains(r#"destination_service="reviews:9080""#));
//! assert!(text.contains(r#"response_code="200""#));
//! # });
//! ```
//!
//! - [`trace`]: the propagation of W3C Trace Context, B3 and `x-request-id` through a
//!   [`TraceLayer`], first on the request path (see `docs/architecture.md` in the
//!   repository);
//! - [`current`]: in-process forwarding of an inbound request's trace to the calls made
//!   while serving it;
//! - [`record`]: the per-request record ([`mesh_core::stream_info::StreamInfo`]) and the
//!   completion hook: a [`RecordLayer`], just inside the trace layer, hands one [`Completed`]
//!   view of every exchange to its [`Sink`]s when the response ends;
//! - [`metrics`]: Istio's standard metrics, a [`Sink`], exposed in Prometheus' text format;
//! - [`sinks`]: the span and access log sinks: [`span`], one OpenTelemetry span per sampled
//!   request, exported off the request path ([`otlp`], feature `otlp`: over OTLP/HTTP);
//!   [`access_log`], Istio's access log formats (text and JSON), written by a thread of
//!   their own.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod current;
pub mod log_filter;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod record;
pub mod sinks;
pub mod span;
pub mod trace;

pub use record::{Completed, RecordLayer, Sink};
pub use trace::{TraceConfig, TraceContext, TraceLayer};

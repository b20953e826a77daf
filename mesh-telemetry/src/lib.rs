//! `mesh-telemetry`: Istio-standard metrics, trace propagation, spans and access logs.
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
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod record;
pub mod sinks;
pub mod span;
pub mod trace;

pub use record::{Completed, RecordLayer, Sink};
pub use trace::{TraceConfig, TraceContext, TraceLayer};

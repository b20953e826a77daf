//! `mesh-telemetry`: Istio-standard metrics, trace propagation and access logs.
//!
//! Landed:
//!
//! - [`trace`]: the propagation of W3C Trace Context, B3 and `x-request-id` through a
//!   [`TraceLayer`], first on the request path (see `docs/architecture.md` in the
//!   repository);
//! - [`record`]: the per-request record ([`mesh_core::stream_info::StreamInfo`]) and the
//!   completion hook: a [`RecordLayer`], just inside the trace layer, hands one [`Completed`]
//!   view of every exchange to its [`Sink`]s when the response ends;
//! - [`metrics`]: Istio's standard metrics, a [`Sink`], exposed in Prometheus' text format.
//!
//! Span export and access logs come with the rest of their issue, as more sinks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod metrics;
pub mod record;
pub mod trace;

pub use record::{Completed, RecordLayer, Sink};
pub use trace::{TraceConfig, TraceContext, TraceLayer};

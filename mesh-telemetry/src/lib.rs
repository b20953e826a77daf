//! `mesh-telemetry`: Istio-standard metrics, trace propagation and access logs.
//!
//! Landed: [`trace`], the propagation of W3C Trace Context, B3 and `x-request-id` through a
//! [`TraceLayer`], first on the request path (see `docs/architecture.md` in the repository).
//! Metrics, span export and access logs come with the rest of their issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod metrics;
pub mod record;
pub mod trace;

pub use record::{Completed, RecordLayer, Sink};
pub use trace::{TraceConfig, TraceContext, TraceLayer};

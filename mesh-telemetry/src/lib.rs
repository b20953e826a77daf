//! `mesh-telemetry`: Istio-standard metrics, trace propagation and access logs.
//!
//! This crate is a documented skeleton: its layers land with their own issues. See
//! `docs/architecture.md` in the repository for where it will sit on the request path.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

//! `mesh-proxy`: the reference sidecar. All assembly lives in this library so tests can start
//! a proxy in-process; the binary only parses the command line.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod ca;
pub mod cli;
pub mod demo;
pub mod exporters;
pub mod gateway;
pub mod jwks;
pub mod l4;
/// The data-plane engine, now the `mesh-transport` crate (kept here under its old name).
pub use mesh_transport as engine;
pub mod pipeline;
pub mod proxy;
pub mod run;
pub mod security;
pub mod stack;
pub mod telemetry;

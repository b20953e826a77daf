//! `mesh-routing`: VirtualService routing: compiled route tables and tower layers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

//! The end-to-end tests of mesh-proxy, one test binary: real sockets on port 0, Istio YAML,
//! certificates made at test time, the proxy in-process or as its CLI (`mesh-proxy-e2e`).
//!
//! Each module is one subject (`cargo test -p mesh-e2e -- metrics::` runs one). They are
//! modules of one binary rather than a binary each because every binary links the whole
//! proxy: 34 of them took 34 links and, with debug information, filled a CI machine's disk.
#![allow(clippy::unwrap_used)]

mod support;

mod abuse;
mod access_log;
mod authority;
mod authz;
mod balancing;
mod breaker;
mod cli;
mod docs;
mod egress_gateway;
mod gateway;
mod gateway_l4;
mod gateway_tls;
mod honest_config;
mod in_process;
mod jwt;
mod lifecycle;
mod loops;
mod metrics;
mod mirroring;
mod mtls;
mod outlier;
mod prometheus;
mod protocols;
mod proxy_headers;
mod ratelimit;
mod resilience;
mod routing;
mod scale;
mod sidecar_ingress;
mod sidecar_scope;
mod spans;
mod tcp;
mod telemetry_api;
mod tls_origination;
mod tracing;
mod websocket;

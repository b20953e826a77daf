//! Public-API tests of the router, one module per area. Each test names the Istio or Envoy
//! rule it checks.
#![allow(clippy::unwrap_used)]

mod actions;
mod corpus;
mod hosts;
mod matching;
mod props;
mod support;
mod swap;

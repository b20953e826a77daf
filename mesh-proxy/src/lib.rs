//! `mesh-proxy`: the reference sidecar. All assembly lives in this library so tests can start
//! a proxy in-process; the binary only parses the command line.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mesh_core::ext::selected_upstream;
//! use mesh_core::load::Loader;
//! use mesh_proxy::stack::Layers;
//! use mesh_transport::RequestBody;
//! use tower::ServiceExt;
//!
//! // `mesh-proxy validate`'s pipeline, then the outbound stack the workers run, here around
//! // a stand-in connector that answers with the endpoint the balancer picked
//! let mut loader = Loader::new();
//! loader.add_str("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews.default.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   ports: [{number: 9080, name: http, protocol: HTTP}]
//!   resolution: STATIC
//!   endpoints: [{address: 10.0.0.7}]
//! "#);
//! let built = mesh_proxy::pipeline::build(loader).unwrap();
//! let layers = Layers::new(&built.compiled.snapshot, built.routes);
//! let stack = layers.wrap(tower::service_fn(|req: Request<RequestBody>| async move {
//!     let to = selected_upstream(req.extensions()).unwrap().endpoint().addr;
//!     Ok::<_, Infallible>(Response::new(mesh_core::MeshBody::<Full<Bytes>>::local(to.to_string())))
//! }));
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let req = Request::get("http://reviews:9080/").body(Full::new(Bytes::new())).unwrap();
//! let body = stack.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "10.0.0.7:9080");
//! # });
//! ```
//!
//! The binary's subcommands (`run`, `validate`, `ca`, `demo`) are [`cli`]; a whole proxy
//! started in-process is [`proxy::Proxy`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod ca;
pub mod cli;
pub mod demo;
pub mod exporters;
pub mod gateway;
pub mod inbound;
pub mod ingress;
pub mod jwks;
pub mod l4;
/// The data-plane engine, now the `mesh-transport` crate (kept here under its old name).
pub use mesh_transport as engine;
pub mod pipeline;
pub mod proxy;
pub mod run;
pub mod security;
pub mod stack;
pub mod stats;
pub mod telemetry;

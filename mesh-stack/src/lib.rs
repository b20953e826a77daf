//! `mesh-stack`: the mesh inside your service, in one call. The same Istio YAML as the
//! sidecar, the same pipeline, the same layers, with no sidecar and no extra hop.
//!
//! - [`Mesh`]: a configuration (YAML files or strings, or a [`Loader`](mesh_core::load::Loader))
//!   judged by `mesh-proxy validate`'s pipeline, and the live handles every stack made from it
//!   reads: [`Mesh::reload`], [`Mesh::routes`], [`Mesh::endpoints`] (your own discovery),
//!   [`Mesh::metrics`].
//! - The **client stack** ([`Mesh::client`], [`Mesh::client_layer`], [`client`]): routes by
//!   Host/authority, balances, retries, times out, ejects, injects faults, rate limits,
//!   mirrors, originates Istio's mTLS when the bootstrap has an identity, and records
//!   Istio's metrics (`reporter="source"`), over the project's connector or any client.
//! - The **server stack** ([`Mesh::server_layer`], [`server`]): PeerAuthentication (through
//!   [`MeshAcceptor`]), RequestAuthentication, AuthorizationPolicy, the inbound
//!   `LocalRateLimit`, fault injection and telemetry (`reporter="destination"`), as one
//!   layer for an axum `Router`, a tonic server or any tower service.
//! - [`ServiceBuilderExt`]: `ServiceBuilder::new().mesh_client(&mesh)` and
//!   `.mesh_server(&mesh)`.
//!
//! # Example
//!
//! A client stack over a stand-in client (a `service_fn` answering with the endpoint the
//! balancer picked), so that it runs without a network:
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mesh_core::ext::selected_upstream;
//! use mesh_stack::{Mesh, RequestBody};
//! use tower::ServiceExt;
//!
//! let mesh = Mesh::from_yaml("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews.default.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   ports: [{number: 9080, name: http, protocol: HTTP}]
//!   resolution: STATIC
//!   endpoints: [{address: 10.0.0.7}]
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route: [{destination: {host: reviews}}]
//!     retries: {attempts: 2, retryOn: 5xx}
//!     timeout: 1s
//! "#).unwrap();
//!
//! // your client innermost: here, one that answers with where it was sent
//! let client = mesh.client_layer().wrap(tower::service_fn(|req: Request<RequestBody>| async move {
//!     let to = selected_upstream(req.extensions()).unwrap().endpoint().addr;
//!     Ok::<_, Infallible>(Response::new(mesh_core::MeshBody::<Full<Bytes>>::local(Bytes::from(to.to_string()))))
//! }));
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let req = Request::get("http://reviews:9080/reviews/1").body(Full::new(Bytes::new())).unwrap();
//! let res = client.oneshot(req).await.unwrap();
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "10.0.0.7:9080");
//! # });
//!
//! // a configuration `mesh-proxy validate` refuses is refused here, with file, line and field
//! let err = Mesh::from_yaml("bad.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route: [{destination: {host: reviews}, weight: -10}]
//! "#).unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("bad.yaml:8:") && text.contains("spec.http[0].route[0].weight"), "{text}");
//! ```
//!
//! # One code path
//!
//! The client stack is the proxy's outbound stack
//! ([`mesh_proxy::stack::Layers::wrap`]: the proxy's workers call it around their
//! connector), and a [`Mesh`] is built by [`mesh_proxy::pipeline`]: what `mesh-proxy
//! validate` refuses, [`Mesh::from_yaml`] refuses with the same diagnostics. That is why
//! this crate depends on `mesh-proxy`'s library rather than on the layer crates alone.
//!
//! The order of the layers, on both sides, is drawn in `docs/layer-ordering.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod builder;
pub mod client;
mod mesh;
pub mod server;

pub use builder::ServiceBuilderExt;
pub use client::{ClientLayer, ConnectorClient, MeshClient, MeshUriClient, RequestBody};
pub use mesh::{Mesh, MeshError};
pub use server::{MeshAcceptor, MeshServer, MeshStream, ServerLayer, serve};

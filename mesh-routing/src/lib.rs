//! `mesh-routing`: Istio VirtualService routing as a compiled route table and tower layers.
//!
//! - [`RouteTable`]: built once from a `mesh_core` [`Snapshot`](mesh_core::compile::Snapshot)
//!   for a [`RouterContext`] (a sidecar's `mesh` gateway, or named gateways; the proxy's
//!   namespace and labels). Hosts are indexed (hash map of every domain form Istio generates,
//!   plus wildcard suffixes), regexes compiled with a size limit, `retries`/`timeout`/`fault`
//!   compiled into [`RoutePolicy`](mesh_core::ext::RoutePolicy) values; matching a request
//!   allocates nothing.
//! - [`RouteTableHandle`]: the table behind an `ArcSwap`; [`store`](RouteTableHandle::store)
//!   a new one while requests are in flight.
//! - [`RouteLayer`] / [`Route`]: match the request (host, then `HTTPMatchRequest`s in order,
//!   first match wins) and apply the route: weighted destination (sticky cookie first),
//!   redirect, direct response, rewrite, header operations, CORS; requests that match nothing
//!   get 404 `NR`. A virtual host with more than 8 routes is matched through a candidate
//!   index on the literal path prefixes of its routes (a radix trie), which tries only the
//!   routes that can match the path, still in order: a host of hundreds of path prefixes
//!   costs about what a host of ten does.
//! - [`MirrorLayer`] / [`Mirror`]: send the mirrored copies the router chose.
//!
//! ```
//! use std::convert::Infallible;
//! use mesh_core::compile::compile;
//! use mesh_core::load::Loader;
//! use mesh_core::{MeshBody, ResponseFlags};
//! use mesh_routing::{RouteLayer, RouteTable};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut l = Loader::new();
//! l.add_str("vs.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: web}
//! spec:
//!   hosts: [web.example.com]
//!   http:
//!   - match: [{uri: {prefix: /old}}]
//!     redirect: {uri: /new}
//!   - match: [{uri: {prefix: /api}}]
//!     route: [{destination: {host: api.example.com}}]
//! "#);
//! let table = RouteTable::sidecar(&compile(l.finish().resources)).unwrap();
//! let svc = ServiceBuilder::new().layer(RouteLayer::from_table(table)).service_fn(
//!     |_req: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(MeshBody::<String>::empty())) },
//! );
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let get = |path: &str| http::Request::builder().uri(path).header("host", "web.example.com").body(()).unwrap();
//! let res = svc.clone().oneshot(get("/old/x")).await.unwrap();
//! assert_eq!(res.status(), 301);
//! assert_eq!(res.headers()["location"], "http://web.example.com/new");
//! let res = svc.clone().oneshot(get("/api/v1")).await.unwrap();
//! assert_eq!(res.status(), 200);
//! let res = svc.oneshot(get("/other")).await.unwrap();
//! assert_eq!(res.status(), 404);
//! assert_eq!(mesh_core::ext::flags_of(&res), ResponseFlags::NO_ROUTE);
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod action;
mod delegate;
mod error;
mod format;
mod index;
pub mod l4;
mod matcher;
pub mod mirror;
pub mod route;
mod table;
pub mod tee;

pub use error::BuildError;
pub use l4::{L4RouteTable, L4RouteTableHandle};
pub use mirror::{Mirror, MirrorLayer, Mirrors, ShadowBody, Spawn};
pub use route::{Route, RouteLayer};
pub use table::{GatewayContext, RouteTable, RouteTableHandle, RouterContext, ServerHosts};
pub use tee::{SHADOW_BUFFER_BYTES, TeeBody};

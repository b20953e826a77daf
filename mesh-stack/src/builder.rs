//! [`ServiceBuilderExt`]: the mesh's stacks as one line of a `tower::ServiceBuilder`, as
//! tower-http's `ServiceBuilderExt` does for its layers.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::{ClientLayer, Mesh, ServerLayer};

/// Adds the mesh's stacks to a [`ServiceBuilder`].
///
/// ```
/// use mesh_stack::{Mesh, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let mesh = Mesh::from_yaml("mesh.yaml", "").unwrap();
/// // a server: the mesh's inbound policies and telemetry, then the application
/// let _server = ServiceBuilder::new()
///     .mesh_server(&mesh)
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
///     });
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// The client stack ([`Mesh::client_layer`]): routing, balancing, retries, timeouts,
    /// outlier detection, faults, rate limits, mirrors and telemetry, around the client
    /// given to `.service(…)`, which must read the chosen endpoint from the request
    /// extensions (the project's `Connector`; wrap a URI client in
    /// `mesh_core::uri::EndpointUriLayer` and `mesh_core::body::MeshBodyLayer`).
    fn mesh_client(self, mesh: &Mesh) -> ServiceBuilder<Stack<ClientLayer, L>>;

    /// The server stack ([`Mesh::server_layer`]): the peer's identity, JWT,
    /// AuthorizationPolicy, the inbound rate limit and telemetry
    /// (`reporter="destination"`), around the application.
    fn mesh_server(self, mesh: &Mesh) -> ServiceBuilder<Stack<ServerLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn mesh_client(self, mesh: &Mesh) -> ServiceBuilder<Stack<ClientLayer, L>> {
        self.layer(mesh.client_layer())
    }

    fn mesh_server(self, mesh: &Mesh) -> ServiceBuilder<Stack<ServerLayer, L>> {
        self.layer(mesh.server_layer())
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

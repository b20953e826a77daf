//! `mesh-core`: Istio's resource model, the loader and validator, the compiled snapshot, and
//! the shared vocabulary (typed extensions, response flags, policies) of the mesh SDK.
//!
//! ```
//! // Istio YAML in, a compiled snapshot out, or diagnostics with file, line and field
//! let compiled = mesh_core::config::load_str("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews}
//! "#).unwrap();
//! assert_eq!(compiled.snapshot.virtual_services.len(), 1);
//! // no ServiceEntry for `reviews`: requests would get 503 NR, and the loader says so
//! assert!(compiled.warnings[0].message.contains("IST0101"));
//!
//! let err = mesh_core::config::load_str("bad.yaml", "kind: Nope\napiVersion: x/v1\nmetadata: {name: a}\n")
//!     .unwrap_err();
//! assert!(err.to_string().contains("bad.yaml:1"));
//! ```
//!
//! The loader and validator are [`load`] and [`config`]; the compiled model is [`compile`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Writes the accessors every layer's service has, `get_ref`, `get_mut` and `into_inner`,
/// for a `Foo<S>` whose inner service is its field `inner` (as tower-http's
/// `define_inner_service_accessors!`): once, not by hand per layer.
#[macro_export]
macro_rules! accessors {
    ($ty:ident) => {
        impl<S> $ty<S> {
            /// The inner service.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The inner service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// The inner service, consuming this one.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}

pub mod analyze;
pub mod authority;
pub mod body;
pub mod compile;
pub mod config;
pub mod envoy_headers;
pub mod ext;
pub mod flags;
pub mod format;
pub mod grpc;
pub mod hash;
pub mod hcm;
pub mod header_values;
pub mod health;
pub mod limits;
pub mod pattern;
pub mod policy;
pub mod ratelimit;
pub mod replay;
pub mod request_end;
pub mod rng;
pub mod scope;
pub mod selector;
pub mod sticky;
pub mod stream_info;
pub mod support;
pub mod telemetry;
pub mod trace;

pub use body::MeshBody;
pub use flags::ResponseFlags;
pub mod duration;
pub mod error;
pub mod identity;
pub mod load;
pub mod locality;
pub mod model;
pub mod percent;
pub mod uri;
pub mod validate;
mod yamlde;

pub use duration::GoDuration;
pub use error::{ConfigError, Diagnostic, FieldPath, Severity};
pub use percent::Percent;

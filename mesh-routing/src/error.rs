//! Why a route table could not be built (and what it dropped while building).

use std::fmt;

use mesh_core::error::{FieldPath, ResourceRef};

/// A route table could not be built from a snapshot: a regex that does not compile (or is
/// over the size limit), a header name or value that is not valid HTTP, a header format
/// Envoy would refuse. Also the form of the table's non-fatal findings
/// ([`RouteTable::warnings`](crate::RouteTable::warnings): routes Istio would drop).
///
/// The proxy keeps serving the previous table when a build fails (a bad reload keeps the
/// last good state), and reports the error as a configuration diagnostic with the file and
/// line of the field (`mesh_core::load::Origins::locate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The resource, e.g. `VirtualService/default/reviews`.
    pub resource: Option<ResourceRef>,
    /// The field from the document root, e.g. `spec.http[0].match[1].uri.regex`.
    pub field: FieldPath,
    /// What is wrong with it.
    pub message: String,
}

// === impl BuildError ===

impl BuildError {
    /// An error at `field` (its display form, `spec.http[0].match[1]`) of a resource set
    /// later with [`within`](Self::within).
    pub(crate) fn new(field: impl AsRef<str>, message: impl Into<String>) -> Self {
        BuildError {
            resource: None,
            field: FieldPath::parse(field.as_ref()),
            message: message.into(),
        }
    }

    pub(crate) fn within(mut self, resource: &ResourceRef) -> Self {
        self.resource = Some(resource.clone());
        self
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for BuildError {}

//! Why a route table could not be built.

use std::fmt;

/// A route table could not be built from a snapshot: a regex that does not compile (or is
/// over the size limit), a header name or value that is not valid HTTP.
///
/// The proxy keeps serving the previous table when this happens (a bad reload keeps the last
/// good state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The resource and field, e.g. `VirtualService/default/reviews: spec.http[0].match[1].uri.regex`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

// === impl BuildError ===

impl BuildError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn within(mut self, resource: &str) -> Self {
        self.field = format!("{resource}: {}", self.field);
        self
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for BuildError {}

//! Diagnostics: errors and warnings that name the file, line, resource and field.
//!
//! Every problem found while loading or validating configuration is a [`Diagnostic`]:
//!
//! ```text
//! error: routes.yaml:14:17: VirtualService/default/reviews: spec.http[0].route[1].weight: weight -10 < 0
//! ```
//!
//! Messages quote Istio's own wording (`pkg/config/validation`) wherever Istio has one, so
//! people can search for them.

use std::fmt;
use std::sync::Arc;

use crate::model::Kind;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// Accepted, but probably not what was meant (Istio's validation warnings).
    Warning,
}

/// One segment of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key (a field name, or a map key such as a header name).
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path to a field in a document, e.g. `spec.http[2].route[0].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<Segment>);

/// The identity of a resource: `kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ResourceRef {
    /// Kind.
    pub kind: Kind,
    /// Namespace (after defaulting).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A configuration error or warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file (or the name given to an in-memory source).
    pub file: Arc<str>,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// The resource, when the problem is inside one.
    pub resource: Option<ResourceRef>,
    /// The field, when the problem is about one.
    pub field: Option<FieldPath>,
    /// What is wrong, in Istio's words where Istio has them.
    pub message: String,
}

/// Diagnostics of a failed load: at least one is an error. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// All diagnostics, errors first, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

// === impl FieldPath ===

impl FieldPath {
    /// The empty path (the document root).
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// Parses the display form (`spec.http[2].route[0].weight`, `a["x.y"]`).
    pub fn parse(s: &str) -> Self {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        let mut cur = String::new();
        while i < b.len() {
            match b[i] {
                b'.' => {
                    if !cur.is_empty() {
                        out.push(Segment::Key(std::mem::take(&mut cur)));
                    }
                    i += 1;
                }
                b'[' => {
                    if !cur.is_empty() {
                        out.push(Segment::Key(std::mem::take(&mut cur)));
                    }
                    let end = s[i..].find(']').map_or(s.len(), |e| i + e);
                    let inner = &s[i + 1..end];
                    if let Some(q) = inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                        out.push(Segment::Key(q.replace("\\\"", "\"")));
                    } else if let Ok(n) = inner.parse() {
                        out.push(Segment::Index(n));
                    } else {
                        out.push(Segment::Key(inner.to_string()));
                    }
                    i = end + 1;
                }
                _ => {
                    let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                    cur.push_str(&s[i..i + ch_len]);
                    i += ch_len;
                }
            }
        }
        if !cur.is_empty() {
            out.push(Segment::Key(cur));
        }
        FieldPath(out)
    }

    /// This path with a key appended.
    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.0.push(Segment::Key(k.into()));
        self
    }

    /// This path with an index appended.
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Segment::Index(i));
        self
    }
}

fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[\"{}\"]", k.replace('"', "\\\""))?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// === impl ResourceRef ===

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

// === impl Diagnostic ===

impl Diagnostic {
    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.severity {
            Severity::Error => "error: ",
            Severity::Warning => "warning: ",
        })?;
        f.write_str(&self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(p) = &self.field
            && !p.0.is_empty()
        {
            write!(f, "{p}: ")?;
        }
        f.write_str(&self.message)
    }
}

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The errors only (not warnings).
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn path_display_and_parse() {
        let p = FieldPath::root()
            .key("spec")
            .key("http")
            .index(2)
            .key("route")
            .index(0)
            .key("weight");
        assert_eq!(p.to_string(), "spec.http[2].route[0].weight");
        assert_eq!(FieldPath::parse(&p.to_string()), p);
        let q = FieldPath::root()
            .key("spec")
            .key("labels")
            .key("app.kubernetes.io/name");
        assert_eq!(q.to_string(), "spec.labels[\"app.kubernetes.io/name\"]");
        assert_eq!(FieldPath::parse(&q.to_string()), q);
    }

    proptest! {
        #[test]
        fn path_round_trips(segs in proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z][a-zA-Z0-9_-]{0,8}".prop_map(Segment::Key),
                "[a-z./:]{1,8}".prop_map(Segment::Key),
                (0usize..100).prop_map(Segment::Index),
            ], 1..6)) {
            let mut segs = segs;
            // a path starts with a key, as every document path does
            if let Segment::Index(_) = segs[0] { segs.insert(0, Segment::Key("spec".into())); }
            let p = FieldPath(segs);
            prop_assert_eq!(FieldPath::parse(&p.to_string()), p);
        }
    }
}

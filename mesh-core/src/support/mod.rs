//! What this version enforces: the support table, field by field, for every kind.
//!
//! A mesh must never accept a field and then do nothing with it without a word: operators
//! would believe they are protected. So every field of every kind the loader parses has a
//! row here ([`kinds`]): it is **enforced**, or **not yet** enforced (with the area of work
//! that will bring it), and a security field that is not enforced yet is **refused**:
//! security fails closed. Some rows depend on the value written (`tls.mode: DISABLE` is
//! enforced, `SIMPLE` is refused).
//!
//! The loader scans every document against the table as it parses it (the positions are
//! at hand then, and only subtrees that were written are visited), and the configuration
//! pipeline ([`config::check`](crate::config::check) in
//! [`CheckMode::Proxy`](crate::config::CheckMode::Proxy)) turns what it found into
//! diagnostics: a warning per field that is accepted but not enforced, an error per field
//! that is refused. `mesh-proxy validate --istio` (Istio's rules only) ignores them.
//!
//! The table renders as `docs/istio-support.md` ([`render_markdown`]); a test keeps the
//! file in step, and another checks that the table lists exactly the fields the model
//! parses. As features land, their rows flip to enforced and their warnings disappear.
//!
//! ```
//! use mesh_core::config::{CheckMode, load_str_with};
//!
//! let vs = r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - match: [{uri: {prefix: /}, statPrefix: hot}]
//!     route: [{destination: {host: reviews}}]
//! "#;
//! let compiled = load_str_with("vs.yaml", vs, CheckMode::Proxy).unwrap();
//! let w = &compiled.unenforced[0];
//! assert_eq!(w.field.as_ref().unwrap().to_string(), "spec.http[0].match[0].statPrefix");
//! assert!(w.message.starts_with("not enforced by this version (telemetry)"));
//!
//! let ra = r#"
//! apiVersion: security.istio.io/v1
//! kind: RequestAuthentication
//! metadata: {name: jwt}
//! spec: {jwtRules: [{issuer: a, jwksUri: "ftp://example.com/jwks.json"}]}
//! "#;
//! // a JWKS this version cannot fetch: security fails closed
//! let err = load_str_with("ra.yaml", ra, CheckMode::Proxy).unwrap_err();
//! assert!(err.to_string().contains("refused, because security fails closed"));
//! ```

mod render;
mod table;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use saphyr::{MarkedYaml, Scalar, YamlData};

use crate::error::{FieldPath, Segment};
use crate::model::Kind;
use crate::yamlde::{key_text, resolve};

pub use render::render_markdown;

/// The area of work (an issue of the project) that will bring a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Area {
    /// Timeouts, retries, outlier detection, circuit breaking, fault injection, rate limits.
    Resilience,
    /// mTLS, workload identity, PeerAuthentication, AuthorizationPolicy, JWT.
    Security,
    /// Istio's metrics, tracing, access logs.
    Telemetry,
    /// Gateways, TCP and TLS routes, Sidecar scoping.
    GatewaysL4,
    /// Not planned by any open piece of work yet.
    Later,
}

/// What this version does with a field (or a value of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Acted on.
    Enforced,
    /// Accepted with no effect: a warning.
    NotYet(Area),
    /// Not enforced, and relying on it would be unsafe: the configuration is refused.
    Refused(Area),
}

/// A row's status: fixed, or depending on the value written.
#[derive(Debug, Clone, Copy)]
pub enum Status {
    /// Acted on.
    Enforced,
    /// Accepted with no effect (a warning).
    NotYet(Area),
    /// Refused (an error): security fails closed.
    Refused(Area),
    /// Depends on the (scalar) value; for a list of scalars, on each item.
    Values(&'static Values),
    /// Depends on the value in a way a list of values cannot say.
    Custom(&'static Custom),
}

/// A status by value: `cases` first (exact match), then `otherwise`.
#[derive(Debug)]
pub struct Values {
    /// Values and what this version does with each.
    pub cases: &'static [(&'static str, Verdict)],
    /// Any other value.
    pub otherwise: Verdict,
}

/// A status computed from the written value by a function of this crate.
pub struct Custom {
    /// What the check does, for the support table.
    pub doc: &'static str,
    /// The verdict on a node (for a list, on each item), and the subject of the message
    /// (`port 5432 (TCP) is `), or `None` when enforced.
    pub(crate) check: fn(&MarkedYaml<'_>) -> Option<(Verdict, String)>,
}

/// The shape of a field's value.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A scalar, or a list or map of scalars.
    Leaf,
    /// An object.
    Struct(&'static TypeDef),
    /// A list of objects.
    Seq(&'static TypeDef),
    /// A map whose keys are data (header names, ports) and whose values are objects.
    Map(&'static TypeDef),
}

/// An object type of the model (a protobuf message in Istio's API).
#[derive(Debug)]
pub struct TypeDef {
    /// The model's type name.
    pub name: &'static str,
    /// Its fields, in the model's order.
    pub fields: &'static [FieldDef],
}

/// One field of an object type.
#[derive(Debug)]
pub struct FieldDef {
    /// The field's name as written in YAML.
    pub name: &'static str,
    /// Its shape.
    pub shape: Shape,
    /// What this version does with it.
    pub status: Status,
    /// More about the status (may be empty).
    pub note: &'static str,
}

/// A kind: its own status (a kind may be refused or ignored as a whole) and its spec.
#[derive(Debug)]
pub struct KindDef {
    /// The kind.
    pub kind: Kind,
    /// What this version does with a resource of the kind.
    pub status: Status,
    /// More about the status (may be empty).
    pub note: &'static str,
    /// The spec's type.
    pub spec: &'static TypeDef,
}

/// Something written in a resource that this version does not enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unenforced {
    /// The field, from the document root (`None`: the resource as a whole).
    pub field: Option<FieldPath>,
    /// 1-based line (of the field's key, or of the document's `kind`).
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// [`Verdict::NotYet`] (a warning) or [`Verdict::Refused`] (an error).
    pub verdict: Verdict,
    /// What to tell the user.
    pub message: String,
}

/// Every kind's support, in [`Kind::ALL`] order.
pub fn kinds() -> &'static [KindDef] {
    table::KINDS
}

/// The support of one kind.
pub fn kind(kind: Kind) -> &'static KindDef {
    // every kind has a row (a test checks the table against Kind::ALL)
    table::KINDS
        .iter()
        .find(|k| k.kind == kind)
        .unwrap_or(&table::KINDS[0])
}

// === impl Area ===

impl Area {
    /// The area's name as the messages and the table say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Resilience => "resilience",
            Area::Security => "security",
            Area::Telemetry => "telemetry",
            Area::GatewaysL4 => "gateways and L4",
            Area::Later => "not planned yet",
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Verdict ===

impl Verdict {
    /// The message for something that is not enforced; `subject` names it when the
    /// diagnostic's field path does not (`STRICT is `, `AuthorizationPolicy is `).
    pub fn message(self, subject: &str, note: &str) -> String {
        let (area, tail) = match self {
            Verdict::Enforced => return format!("{subject}enforced"),
            Verdict::NotYet(a) => (a, "accepted, but it has no effect"),
            Verdict::Refused(a) => (a, "refused, because security fails closed"),
        };
        let mut m = format!("{subject}not enforced by this version ({area}): {tail}");
        if !note.is_empty() {
            m.push_str(" (");
            m.push_str(note);
            m.push(')');
        }
        m
    }

    /// Whether this verdict refuses the configuration.
    pub fn is_refused(self) -> bool {
        matches!(self, Verdict::Refused(_))
    }
}

// === impl Status ===

impl Status {
    /// The verdict when it does not depend on the value.
    pub fn fixed(self) -> Option<Verdict> {
        match self {
            Status::Enforced => Some(Verdict::Enforced),
            Status::NotYet(a) => Some(Verdict::NotYet(a)),
            Status::Refused(a) => Some(Verdict::Refused(a)),
            Status::Values(_) | Status::Custom(_) => None,
        }
    }

    /// The verdict on one value node, with the subject of its message.
    fn judge(self, node: &MarkedYaml<'_>) -> (Verdict, String) {
        match self {
            Status::Values(v) => {
                let text = scalar_text(node).unwrap_or_default();
                let verdict = v
                    .cases
                    .iter()
                    .find(|(value, _)| *value == text)
                    .map_or(v.otherwise, |(_, verdict)| *verdict);
                (verdict, format!("{text} is "))
            }
            Status::Custom(c) => (c.check)(node).unwrap_or((Verdict::Enforced, String::new())),
            fixed => (fixed.fixed().unwrap_or(Verdict::Enforced), String::new()),
        }
    }
}

impl fmt::Debug for Custom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Custom").field("doc", &self.doc).finish()
    }
}

// === impl TypeDef ===

impl TypeDef {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&'static FieldDef> {
        let fields: &'static [FieldDef] = self.fields;
        fields.iter().find(|f| f.name == name)
    }

    /// Whether anything under this type (at any depth) is not always enforced: the
    /// scanner skips the subtrees where everything is.
    fn needs_scan(&'static self) -> bool {
        static NEEDED: OnceLock<HashSet<&'static str>> = OnceLock::new();
        NEEDED
            .get_or_init(|| {
                let mut set = HashSet::new();
                for k in table::KINDS {
                    k.spec.collect_needed(&mut set);
                }
                set
            })
            .contains(self.name)
    }

    fn collect_needed(&'static self, set: &mut HashSet<&'static str>) -> bool {
        let mut needed = false;
        for f in self.fields {
            let below = match f.shape {
                Shape::Leaf => false,
                Shape::Struct(t) | Shape::Seq(t) | Shape::Map(t) => t.collect_needed(set),
            };
            needed |= below || !matches!(f.status, Status::Enforced);
        }
        if needed {
            set.insert(self.name);
        }
        needed
    }
}

/// The text of a scalar node.
fn scalar_text(n: &MarkedYaml<'_>) -> Option<String> {
    key_text(n)
}

/// A mapping key's text, borrowed when it is a plain string.
fn key_str<'a>(n: &'a MarkedYaml<'_>) -> Option<Cow<'a, str>> {
    match &resolve(n).data {
        YamlData::Value(Scalar::String(s)) => Some(Cow::Borrowed(s.as_ref())),
        _ => key_text(n).map(Cow::Owned),
    }
}

// === scanning ===

/// Scans a document (its top-level mapping) for what this version does not enforce.
/// `line_offset` is added to the node lines (documents parsed from a chunk of a file).
pub(crate) fn scan(kind: Kind, doc: &MarkedYaml<'_>, line_offset: u32) -> Vec<Unenforced> {
    let mut s = Scan {
        out: Vec::new(),
        path: Vec::new(),
        line_offset,
    };
    let def = self::kind(kind);
    let doc = resolve(doc);
    let (kind_pos, spec) = match &doc.data {
        YamlData::Mapping(m) => {
            let mut kind_pos = doc;
            let mut spec = None;
            for (k, v) in m.iter() {
                match key_text(k).as_deref() {
                    Some("kind") => kind_pos = k,
                    Some("spec") => spec = Some((k, v)),
                    _ => {}
                }
            }
            (kind_pos, spec)
        }
        _ => return Vec::new(),
    };
    let (verdict, subject) = def.status.judge(doc);
    if verdict != Verdict::Enforced {
        let subject = if subject.is_empty() {
            format!("{kind} is ")
        } else {
            subject
        };
        s.report(kind_pos, None, verdict, verdict.message(&subject, def.note));
        return s.out;
    }
    if let Some((_, spec)) = spec {
        s.path.push(Seg::Key("spec".into()));
        s.object(spec, def.spec);
    }
    s.out
}

/// A segment of the path being scanned (keys borrowed from the document: the path is
/// only made a [`FieldPath`] when something is reported).
enum Seg<'a> {
    Key(Cow<'a, str>),
    Index(usize),
}

struct Scan<'a> {
    out: Vec<Unenforced>,
    path: Vec<Seg<'a>>,
    line_offset: u32,
}

impl<'a> Scan<'a> {
    fn field_path(&self) -> FieldPath {
        FieldPath(
            self.path
                .iter()
                .map(|s| match s {
                    Seg::Key(k) => Segment::Key(k.to_string()),
                    Seg::Index(i) => Segment::Index(*i),
                })
                .collect(),
        )
    }

    fn report(&mut self, at: &MarkedYaml<'_>, field: Option<FieldPath>, v: Verdict, msg: String) {
        self.out.push(Unenforced {
            field,
            line: at.span.start.line() as u32 + self.line_offset,
            column: at.span.start.col() as u32 + 1,
            verdict: v,
            message: msg,
        });
    }

    /// The fields of an object node.
    fn object(&mut self, node: &'a MarkedYaml<'_>, ty: &'static TypeDef) {
        if !ty.needs_scan() {
            return;
        }
        let YamlData::Mapping(m) = &resolve(node).data else {
            return;
        };
        for (k, v) in m.iter() {
            let Some(name) = key_str(k) else { continue };
            // the deserializer refused unknown fields already
            let Some(f) = ty.field(&name) else {
                continue;
            };
            self.path.push(Seg::Key(name));
            self.field(k, v, f);
            self.path.pop();
        }
    }

    /// One field: its verdict, then (when enforced) what it holds.
    fn field(&mut self, key: &'a MarkedYaml<'_>, value: &'a MarkedYaml<'_>, f: &'static FieldDef) {
        let value = resolve(value);
        if matches!(value.data, YamlData::Value(Scalar::Null)) {
            return; // `field:` with nothing: the default, as if not written
        }
        if let Some(v) = f.status.fixed() {
            if v == Verdict::Enforced {
                self.descend(value, f.shape);
            } else {
                let p = self.field_path();
                self.report(key, Some(p), v, v.message("", f.note));
            }
            return;
        }
        // a status by value: on each item of a list, else on the value
        if let YamlData::Sequence(items) = &value.data {
            for (i, item) in items.iter().enumerate() {
                self.path.push(Seg::Index(i));
                self.judged(item, item, f);
                self.path.pop();
            }
        } else {
            self.judged(key, value, f);
        }
    }

    fn judged(&mut self, at: &'a MarkedYaml<'_>, value: &'a MarkedYaml<'_>, f: &'static FieldDef) {
        let (v, subject) = f.status.judge(value);
        if v == Verdict::Enforced {
            match f.shape {
                Shape::Seq(t) | Shape::Struct(t) => self.object(value, t),
                Shape::Map(t) => self.map(value, t),
                Shape::Leaf => {}
            }
        } else {
            let p = self.field_path();
            self.report(at, Some(p), v, v.message(&subject, f.note));
        }
    }

    fn descend(&mut self, value: &'a MarkedYaml<'_>, shape: Shape) {
        match shape {
            Shape::Leaf => {}
            Shape::Struct(t) => self.object(value, t),
            Shape::Seq(t) => {
                if let YamlData::Sequence(items) = &value.data {
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(Seg::Index(i));
                        self.object(item, t);
                        self.path.pop();
                    }
                }
            }
            Shape::Map(t) => self.map(value, t),
        }
    }

    fn map(&mut self, value: &'a MarkedYaml<'_>, t: &'static TypeDef) {
        if let YamlData::Mapping(m) = &resolve(value).data {
            for (k, v) in m.iter() {
                self.path.push(Seg::Key(key_str(k).unwrap_or_default()));
                self.object(v, t);
                self.path.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests;

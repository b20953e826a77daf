//! The loader: multi-document YAML → typed [`Resource`]s, with source positions.
//!
//! Parsing uses [`saphyr`] (YAML 1.2, keeps a span on every node); each document becomes a
//! `serde_json::Value` and then the typed spec through `serde_path_to_error`, so every error
//! carries the field path (`spec.http[0].route[0].weight`), which is mapped back to the line
//! and column of that field in the source. Unknown fields, unknown kinds and wrong types are
//! errors. The source text is kept (shared, not copied) so later stages (validation) can
//! point at lines too, by re-reading the tree only when there is something to report.
//!
//! ```
//! use mesh_core::load::Loader;
//!
//! let mut loader = Loader::new();
//! loader.add_str("vs.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews, subset: v1}
//! "#);
//! let loaded = loader.finish();
//! assert!(loaded.diagnostics.is_empty());
//! assert_eq!(loaded.resources[0].namespace(), "default");
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Value};

use crate::error::{Diagnostic, FieldPath, ResourceRef, Segment, Severity};
use crate::model::{Kind, ObjectMeta, Origin, Resource, Spec};

/// Accumulates sources and turns them into resources.
#[derive(Debug, Default)]
pub struct Loader {
    default_namespace: Option<String>,
    resources: Vec<Resource>,
    diagnostics: Vec<Diagnostic>,
}

/// The outcome of loading: the resources that parsed, and every diagnostic found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Resources in source order, namespaces filled in.
    pub resources: Vec<Resource>,
    /// Parse and envelope errors (and any warnings), with positions.
    pub diagnostics: Vec<Diagnostic>,
}

// === impl Loader ===

impl Loader {
    /// A loader whose default namespace comes from the ProxyBootstrap (or `default`).
    pub fn new() -> Self {
        Loader::default()
    }

    /// Overrides the namespace given to documents without `metadata.namespace`.
    pub fn with_default_namespace(mut self, ns: impl Into<String>) -> Self {
        self.default_namespace = Some(ns.into());
        self
    }

    /// Reads and adds a file. A read error becomes a diagnostic.
    pub fn add_file(&mut self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let name: Arc<str> = path.display().to_string().into();
        match std::fs::read_to_string(path) {
            Ok(text) => self.add_source(name, text.into()),
            Err(e) => self.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: name,
                line: None,
                column: None,
                resource: None,
                field: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }

    /// Adds YAML text under a name used in diagnostics.
    pub fn add_str(&mut self, name: &str, text: &str) {
        self.add_source(name.into(), text.into());
    }

    fn add_source(&mut self, file: Arc<str>, text: Arc<str>) {
        let docs = match MarkedYaml::load_from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                self.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file,
                    line: Some(e.marker().line() as u32),
                    column: Some(e.marker().col() as u32 + 1),
                    resource: None,
                    field: None,
                    message: format!("invalid YAML: {}", e.info()),
                });
                return;
            }
        };
        for (idx, doc) in docs.iter().enumerate() {
            self.add_document(&file, &text, idx, doc);
        }
    }

    fn add_document(&mut self, file: &Arc<str>, text: &Arc<str>, idx: usize, doc: &MarkedYaml<'_>) {
        let line = doc.span.start.line() as u32;
        let origin = Origin {
            file: file.clone(),
            text: text.clone(),
            document: idx,
            line,
        };
        let diag = |path: Option<FieldPath>, resource: Option<ResourceRef>, message: String| {
            let (l, c) = match &path {
                Some(p) => locate_in(doc, p),
                None => (line, doc.span.start.col() as u32 + 1),
            };
            Diagnostic {
                severity: Severity::Error,
                file: file.clone(),
                line: Some(l),
                column: Some(c),
                resource,
                field: path,
                message,
            }
        };
        if matches!(doc.data, YamlData::Value(Scalar::Null)) {
            return; // empty document (`---` at the end, comments only)
        }
        let value = match to_json(doc) {
            Ok(v) => v,
            Err((path, msg)) => {
                self.diagnostics.push(diag(Some(path), None, msg));
                return;
            }
        };
        let Value::Object(mut obj) = value else {
            self.diagnostics.push(diag(
                None,
                None,
                "a document must be a mapping with apiVersion and kind".into(),
            ));
            return;
        };
        let api_version = obj.remove("apiVersion");
        let kind_v = obj.remove("kind");
        let (Some(Value::String(api_version)), Some(Value::String(kind_s))) = (api_version, kind_v)
        else {
            self.diagnostics.push(diag(
                None,
                None,
                "apiVersion and kind are required strings".into(),
            ));
            return;
        };
        let kind = match Kind::from_type(&api_version, &kind_s) {
            Ok(k) => k,
            Err(msg) => {
                let p = FieldPath::root().key("kind");
                self.diagnostics.push(diag(Some(p), None, msg));
                return;
            }
        };
        let metadata_v = obj.remove("metadata").unwrap_or(Value::Object(Map::new()));
        let metadata: ObjectMeta = match serde_path_to_error::deserialize(metadata_v) {
            Ok(m) => m,
            Err(e) => {
                let p = FieldPath::root().key("metadata");
                let p = append_serde_path(p, e.path());
                let msg = serde_message(&e.inner().to_string());
                self.diagnostics.push(diag(Some(p), None, msg));
                return;
            }
        };
        let partial_ref = ResourceRef {
            kind,
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone(),
        };
        if metadata.name.is_empty() {
            let p = FieldPath::root().key("metadata").key("name");
            self.diagnostics.push(diag(
                Some(p),
                Some(partial_ref),
                "metadata.name is required".into(),
            ));
            return;
        }
        obj.remove("status"); // as `kubectl get -o yaml` prints it; not configuration
        if let Some(k) = obj.keys().find(|k| *k != "spec") {
            let p = FieldPath::root().key(k.clone());
            let msg =
                format!("unknown field {k:?} (a document has apiVersion, kind, metadata and spec)");
            self.diagnostics.push(diag(Some(p), Some(partial_ref), msg));
            return;
        }
        let spec_v = obj.remove("spec").unwrap_or(Value::Object(Map::new()));
        let spec_v = if spec_v.is_null() {
            Value::Object(Map::new())
        } else {
            spec_v
        };
        match parse_spec(kind, spec_v) {
            Ok(spec) => {
                self.resources.push(Resource {
                    api_version,
                    kind,
                    metadata,
                    spec,
                    origin,
                });
            }
            Err((p, msg)) => {
                let p = append_serde_path(FieldPath::root().key("spec"), &p);
                self.diagnostics.push(diag(Some(p), Some(partial_ref), msg));
            }
        }
    }

    /// Fills in namespaces, checks for duplicates, and returns what was loaded.
    pub fn finish(mut self) -> Loaded {
        let boot_ns = self.resources.iter().find_map(|r| match &r.spec {
            Spec::ProxyBootstrap(b) => Some(b.workload.namespace.clone()),
            _ => None,
        });
        let ns = self
            .default_namespace
            .clone()
            .or(boot_ns)
            .unwrap_or_else(|| "default".to_string());
        for r in &mut self.resources {
            if r.metadata.namespace.as_deref().is_none_or(str::is_empty) {
                r.metadata.namespace = Some(ns.clone());
            }
        }
        let mut seen: HashMap<ResourceRef, (Arc<str>, u32)> = HashMap::new();
        let mut keep = Vec::with_capacity(self.resources.len());
        let mut bootstraps = 0;
        for r in self.resources.drain(..) {
            let rref = r.reference();
            if r.kind == Kind::ProxyBootstrap {
                bootstraps += 1;
                if bootstraps > 1 {
                    self.diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: r.origin.file.clone(),
                        line: Some(r.origin.line),
                        column: Some(1),
                        resource: Some(rref),
                        field: None,
                        message: "only one ProxyBootstrap document is allowed".into(),
                    });
                    continue;
                }
            }
            if let Some((f, l)) = seen.get(&rref) {
                self.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: r.origin.file.clone(),
                    line: Some(r.origin.line),
                    column: Some(1),
                    resource: Some(rref),
                    field: None,
                    message: format!("duplicate resource: already defined at {f}:{l}"),
                });
                continue;
            }
            seen.insert(rref, (r.origin.file.clone(), r.origin.line));
            keep.push(r);
        }
        Loaded {
            resources: keep,
            diagnostics: self.diagnostics,
        }
    }
}

fn parse_spec(kind: Kind, v: Value) -> Result<Spec, (serde_path_to_error::Path, String)> {
    fn de<T: serde::de::DeserializeOwned>(
        v: Value,
    ) -> Result<T, (serde_path_to_error::Path, String)> {
        serde_path_to_error::deserialize(v)
            .map_err(|e| (e.path().clone(), serde_message(&e.inner().to_string())))
    }
    Ok(match kind {
        Kind::VirtualService => Spec::VirtualService(de(v)?),
        Kind::DestinationRule => Spec::DestinationRule(de(v)?),
        Kind::ServiceEntry => Spec::ServiceEntry(de(v)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(de(v)?),
        Kind::Gateway => Spec::Gateway(de(v)?),
        Kind::Sidecar => Spec::Sidecar(de(v)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(de(v)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(de(v)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(de(v)?),
        Kind::ProxyBootstrap => Spec::ProxyBootstrap(de(v)?),
    })
}

/// Rewrites serde's messages into the shape users know from `kubectl`/`istioctl`:
/// `unknown field "foo"` (with the accepted names), type errors as they are.
fn serde_message(m: &str) -> String {
    if let Some(rest) = m.strip_prefix("unknown field `") {
        if let Some((name, tail)) = rest.split_once('`') {
            let expected = tail.trim_start_matches(", ").replace('`', "");
            return format!("unknown field {name:?}, {expected}");
        }
    }
    if let Some(rest) = m.strip_prefix("unknown variant `") {
        if let Some((name, tail)) = rest.split_once('`') {
            let expected = tail.trim_start_matches(", ").replace('`', "");
            return format!("unknown value {name:?}, {expected}");
        }
    }
    m.to_string()
}

fn append_serde_path(mut base: FieldPath, p: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment as S;
    for seg in p.iter() {
        match seg {
            S::Seq { index } => base.0.push(Segment::Index(*index)),
            S::Map { key } => base.0.push(Segment::Key(key.clone())),
            S::Enum { variant } => base.0.push(Segment::Key(variant.clone())),
            S::Unknown => {}
        }
    }
    base
}

/// Converts a YAML node to JSON, as Kubernetes does before protobuf unmarshalling.
fn to_json(node: &MarkedYaml<'_>) -> Result<Value, (FieldPath, String)> {
    fn go(node: &MarkedYaml<'_>, path: &mut Vec<Segment>) -> Result<Value, (FieldPath, String)> {
        let err = |path: &Vec<Segment>, m: &str| (FieldPath(path.clone()), m.to_string());
        Ok(match &node.data {
            YamlData::Value(s) => {
                scalar_to_json(s).ok_or_else(|| err(path, "numbers must be finite"))?
            }
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, it) in items.iter().enumerate() {
                    path.push(Segment::Index(i));
                    out.push(go(it, path)?);
                    path.pop();
                }
                Value::Array(out)
            }
            YamlData::Mapping(m) => {
                let mut out = Map::new();
                for (k, v) in m.iter() {
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                        YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                        YamlData::Value(Scalar::FloatingPoint(f)) => f.to_string(),
                        YamlData::Value(Scalar::Null) => "null".to_string(),
                        _ => return Err(err(path, "mapping keys must be scalars")),
                    };
                    path.push(Segment::Key(key.clone()));
                    let val = go(v, path)?;
                    if out.insert(key, val).is_some() {
                        return Err(err(path, "duplicate key"));
                    }
                    path.pop();
                }
                Value::Object(out)
            }
            YamlData::Tagged(_, inner) => go(inner, path)?,
            YamlData::Alias(_) => return Err(err(path, "YAML aliases are not supported")),
            YamlData::Representation(s, _, _) => Value::String(s.to_string()),
            YamlData::BadValue => return Err(err(path, "invalid YAML value")),
        })
    }
    go(node, &mut Vec::new())
}

fn scalar_to_json(s: &Scalar<'_>) -> Option<Value> {
    Some(match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::from(*i),
        Scalar::FloatingPoint(f) => Value::Number(serde_json::Number::from_f64(f.into_inner())?),
        Scalar::String(s) => Value::String(s.to_string()),
    })
}

/// The 1-based line and column of `path` in a document (the deepest existing node on the
/// path; for a mapping key, the key itself).
fn locate_in(doc: &MarkedYaml<'_>, path: &FieldPath) -> (u32, u32) {
    let pos = |n: &MarkedYaml<'_>| (n.span.start.line() as u32, n.span.start.col() as u32 + 1);
    let mut node = doc;
    let mut best = pos(doc);
    for seg in &path.0 {
        let next = match (&node.data, seg) {
            (YamlData::Mapping(m), Segment::Key(k)) => m.iter().find(|(key, _)| match &key.data {
                YamlData::Value(Scalar::String(s)) => s == k,
                YamlData::Value(Scalar::Integer(i)) => i.to_string() == *k,
                YamlData::Value(Scalar::Boolean(b)) => b.to_string() == *k,
                _ => false,
            }),
            (YamlData::Sequence(items), Segment::Index(i)) => items.get(*i).map(|n| (n, n)),
            (YamlData::Tagged(_, inner), _) => Some((inner.as_ref(), inner.as_ref())),
            _ => None,
        };
        match next {
            Some((key, val)) => {
                best = pos(key);
                node = val;
            }
            None => break,
        }
    }
    best
}

/// A finding about a field of a loaded resource, before its position is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Index of the resource in the slice given to [`resolve`].
    pub resource: usize,
    /// Error or warning.
    pub severity: Severity,
    /// The field, from the document root (`spec.http[0]...`).
    pub field: FieldPath,
    /// What is wrong.
    pub message: String,
}

/// Turns findings into diagnostics with file, line and column, parsing each source text
/// at most once (findings are rare; positions are not kept for every node up front).
pub fn resolve(resources: &[Resource], findings: Vec<Finding>) -> Vec<Diagnostic> {
    let mut by_text: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, f) in findings.iter().enumerate() {
        if let Some(r) = resources.get(f.resource) {
            by_text
                .entry(Arc::as_ptr(&r.origin.text) as *const u8 as usize)
                .or_default()
                .push(i);
        }
    }
    let mut pos: Vec<(u32, u32)> = vec![(0, 0); findings.len()];
    for idxs in by_text.values() {
        let Some(first) = idxs.first() else { continue };
        let origin = &resources[findings[*first].resource].origin;
        let docs = MarkedYaml::load_from_str(&origin.text).unwrap_or_default();
        for &i in idxs {
            let o = &resources[findings[i].resource].origin;
            pos[i] = match docs.get(o.document) {
                Some(doc) => locate_in(doc, &findings[i].field),
                None => (o.line, 1),
            };
        }
    }
    findings
        .into_iter()
        .zip(pos)
        .filter_map(|(f, (line, column))| {
            let r = resources.get(f.resource)?;
            Some(Diagnostic {
                severity: f.severity,
                file: r.origin.file.clone(),
                line: Some(line),
                column: Some(column),
                resource: Some(r.reference()),
                field: Some(f.field),
                message: f.message,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Loaded {
        let mut l = Loader::new();
        l.add_str("t.yaml", text);
        l.finish()
    }

    #[test]
    fn wrong_type_names_file_line_resource_and_field() {
        let out = load(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n      weight: ten\n",
        );
        assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
        let d = &out.diagnostics[0];
        assert_eq!(d.line, Some(11));
        assert_eq!(
            d.field.as_ref().unwrap().to_string(),
            "spec.http[0].route[0].weight"
        );
        assert_eq!(
            d.resource.as_ref().unwrap().to_string(),
            "VirtualService//reviews"
        );
        assert!(d.message.contains("invalid type"), "{}", d.message);
        assert!(
            d.to_string().starts_with(
                "error: t.yaml:11:7: VirtualService//reviews: spec.http[0].route[0].weight: "
            ),
            "{d}"
        );
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let out = load(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r, namespace: prod}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simpel: ROUND_ROBIN\n",
        );
        let d = &out.diagnostics[0];
        assert!(
            d.message.starts_with("unknown field \"simpel\""),
            "{}",
            d.message
        );
        assert_eq!(d.line, Some(8));
        assert_eq!(
            d.field.as_ref().unwrap().to_string(),
            "spec.trafficPolicy.loadBalancer.simpel"
        );
    }

    #[test]
    fn unknown_kind_and_version_are_errors() {
        let out =
            load("apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: x}\n");
        assert!(
            out.diagnostics[0]
                .message
                .contains("unknown kind \"EnvoyFilter\"")
        );
        let out = load(
            "apiVersion: security.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: x}\n",
        );
        assert!(
            out.diagnostics[0]
                .message
                .contains("does not serve kind PeerAuthentication")
        );
    }

    #[test]
    fn namespace_defaults_to_bootstrap_workload_namespace() {
        let out = load(
            "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {name: p}\nspec:\n  workload: {name: w, namespace: shop}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [a.example.com]\n---\n",
        );
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert!(out.resources.iter().all(|r| r.namespace() == "shop"));
        assert_eq!(out.resources[1].origin.line, 7);
    }

    #[test]
    fn duplicates_and_syntax_errors_are_reported() {
        let doc =
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n";
        let out = load(&format!("{doc}---\n{doc}"));
        assert_eq!(out.resources.len(), 1);
        assert!(out.diagnostics[0].message.starts_with("duplicate resource"));
        let out = load("a: [1, 2\n");
        assert!(out.diagnostics[0].message.starts_with("invalid YAML"));
        assert!(out.diagnostics[0].line.is_some());
    }

    #[test]
    fn resolve_points_findings_at_lines() {
        let out = load(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts:\n  - a\n  - b\n",
        );
        let f = Finding {
            resource: 0,
            severity: Severity::Warning,
            field: FieldPath::parse("spec.hosts[1]"),
            message: "m".into(),
        };
        let d = resolve(&out.resources, vec![f]);
        assert_eq!((d[0].line, d[0].column), (Some(7), Some(5)));
    }
}

//! The loader: multi-document YAML → typed [`Resource`]s, with source positions.
//!
//! Parsing uses [`saphyr`] (YAML 1.2, keeps a span on every node); each document becomes a
//! typed spec (read from the nodes in place, see `yamlde`, whose errors collect the path
//! they travel up through), so every error
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

use crate::error::{Diagnostic, FieldPath, ResourceRef, Segment, Severity};
use crate::model::{Kind, ObjectMeta, Origin, Resource, Spec};

/// Accumulates sources and turns them into resources.
#[derive(Debug, Default)]
pub struct Loader {
    default_namespace: Option<String>,
    resources: Vec<Resource>,
    diagnostics: Vec<Diagnostic>,
    sources: Vec<Arc<str>>,
}

/// The outcome of loading: the resources that parsed, and every diagnostic found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Resources in source order, namespaces filled in.
    pub resources: Vec<Resource>,
    /// Parse and envelope errors (and any warnings), with positions.
    pub diagnostics: Vec<Diagnostic>,
    /// The names of the sources read (files, or names given to text), in order.
    pub sources: Vec<Arc<str>>,
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
        self.sources.push(name.clone());
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
        let name: Arc<str> = name.into();
        self.sources.push(name.clone());
        self.add_source(name, text.into());
    }

    fn add_source(&mut self, file: Arc<str>, text: Arc<str>) {
        // Split at `---` lines and parse the chunks in parallel: YAML parsing dominates
        // loading, and documents are independent. Should a chunk fail to parse (a `---`
        // that was not a document marker), the whole text is parsed as one instead, so an
        // error points where a serial parse would.
        let chunks = split_documents(&text);
        let outcomes = if chunks.len() > 1 && text.len() >= PARALLEL_MIN_BYTES {
            parse_chunks_parallel(&file, &text, &chunks)
        } else {
            chunks
                .iter()
                .map(|c| parse_chunk(&file, &text, c.clone()))
                .collect()
        };
        let outcomes = if chunks.len() > 1
            && outcomes
                .iter()
                .any(|o| matches!(o, ChunkOutcome::Syntax(_)))
        {
            vec![parse_chunk(
                &file,
                &text,
                Chunk {
                    range: 0..text.len(),
                    line_offset: 0,
                },
            )]
        } else {
            outcomes
        };
        for o in outcomes {
            match o {
                ChunkOutcome::Syntax(d) => self.diagnostics.push(d),
                ChunkOutcome::Docs(docs) => {
                    for d in docs {
                        match d {
                            Ok(r) => self.resources.push(r),
                            Err(d) => self.diagnostics.push(*d),
                        }
                    }
                }
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
        // errors found while parsing name their resource before namespaces are known
        for d in &mut self.diagnostics {
            if let Some(r) = &mut d.resource
                && r.namespace.is_empty()
            {
                r.namespace = ns.clone();
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
            sources: self.sources,
        }
    }
}

/// Below this size a source is parsed on the calling thread.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// A slice of a source holding whole documents.
#[derive(Debug, Clone)]
struct Chunk {
    range: std::ops::Range<usize>,
    line_offset: u32,
}

enum ChunkOutcome {
    Syntax(Diagnostic),
    Docs(Vec<Result<Resource, Box<Diagnostic>>>),
}

/// Splits a source before every line that starts a document (`---` alone, or followed by a
/// space or a comment). Each chunk is valid YAML on its own whenever the whole is.
fn split_documents(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut line, mut pos) = (0usize, 0u32, 0u32, 0usize);
    for l in text.split_inclusive('\n') {
        let t = l.trim_end_matches(['\n', '\r']);
        let marker =
            t == "---" || t.starts_with("--- ") || t.starts_with("---\t") || t.starts_with("---#");
        if marker && pos > start {
            chunks.push(Chunk {
                range: start..pos,
                line_offset: start_line,
            });
            start = pos;
            start_line = line;
        }
        pos += l.len();
        line += 1;
    }
    chunks.push(Chunk {
        range: start..text.len(),
        line_offset: start_line,
    });
    chunks
}

fn parse_chunks_parallel(file: &Arc<str>, text: &Arc<str>, chunks: &[Chunk]) -> Vec<ChunkOutcome> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let per = chunks.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .chunks(per)
            .map(|group| {
                scope.spawn(move || {
                    group
                        .iter()
                        .map(|c| parse_chunk(file, text, c.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(chunks.len());
        for (h, group) in handles.into_iter().zip(chunks.chunks(per)) {
            match h.join() {
                Ok(v) => out.extend(v),
                // a panic in a parser thread: redo that group here, so it surfaces normally
                Err(_) => out.extend(group.iter().map(|c| parse_chunk(file, text, c.clone()))),
            }
        }
        out
    })
}

fn parse_chunk(file: &Arc<str>, text: &Arc<str>, chunk: Chunk) -> ChunkOutcome {
    let src = &text[chunk.range.clone()];
    let docs = match MarkedYaml::load_from_str(src) {
        Ok(d) => d,
        Err(e) => {
            return ChunkOutcome::Syntax(Diagnostic {
                severity: Severity::Error,
                file: file.clone(),
                line: Some(e.marker().line() as u32 + chunk.line_offset),
                column: Some(e.marker().col() as u32 + 1),
                resource: None,
                field: None,
                message: format!("invalid YAML: {}", e.info()),
            });
        }
    };
    let mut out = Vec::with_capacity(docs.len());
    for (idx, doc) in docs.iter().enumerate() {
        if let Some(r) = parse_document(file, text, &chunk, idx, doc) {
            out.push(r);
        }
    }
    ChunkOutcome::Docs(out)
}

fn parse_document(
    file: &Arc<str>,
    text: &Arc<str>,
    chunk: &Chunk,
    idx: usize,
    doc: &MarkedYaml<'_>,
) -> Option<Result<Resource, Box<Diagnostic>>> {
    let off = chunk.line_offset;
    let line = doc.span.start.line() as u32 + off;
    let diag = |path: Option<FieldPath>, resource: Option<ResourceRef>, message: String| {
        let (l, c) = match &path {
            Some(p) => {
                let (l, c) = locate_in(doc, p);
                (l + off, c)
            }
            None => (line, doc.span.start.col() as u32 + 1),
        };
        Err(Box::new(Diagnostic {
            severity: Severity::Error,
            file: file.clone(),
            line: Some(l),
            column: Some(c),
            resource,
            field: path,
            message,
        }))
    };
    if matches!(doc.data, YamlData::Value(Scalar::Null)) {
        return None; // empty document (`---` at the end, comments only)
    }
    let doc_node = match &doc.data {
        YamlData::Tagged(_, inner) => inner.as_ref(),
        _ => doc,
    };
    let YamlData::Mapping(top) = &doc_node.data else {
        return Some(diag(
            None,
            None,
            "a document must be a mapping with apiVersion and kind".into(),
        ));
    };
    let (mut api_version, mut kind_s, mut metadata_n, mut spec_n) = (None, None, None, None);
    for (k, v) in top.iter() {
        match crate::yamlde::key_text(k).as_deref() {
            Some("apiVersion") => api_version = scalar_str(v),
            Some("kind") => kind_s = scalar_str(v),
            Some("metadata") => metadata_n = Some(v),
            Some("spec") => spec_n = Some(v),
            Some("status") => {} // as `kubectl get -o yaml` prints it; not configuration
            Some(other) => {
                let msg = format!(
                    "unknown field {other:?} (a document has apiVersion, kind, metadata and spec)"
                );
                return Some(diag(Some(FieldPath::root().key(other)), None, msg));
            }
            None => return Some(diag(None, None, "mapping keys must be scalars".into())),
        }
    }
    let (Some(api_version), Some(kind_s)) = (api_version, kind_s) else {
        return Some(diag(
            None,
            None,
            "apiVersion and kind are required strings".into(),
        ));
    };
    let kind = match Kind::from_type(&api_version, &kind_s) {
        Ok(k) => k,
        Err(msg) => return Some(diag(Some(FieldPath::root().key("kind")), None, msg)),
    };
    let metadata: ObjectMeta = match metadata_n
        .map(deserialize_tracked)
        .unwrap_or_else(|| Ok(ObjectMeta::default()))
    {
        Ok(m) => m,
        Err((p, msg)) => {
            return Some(diag(
                Some(append_serde_path(FieldPath::root().key("metadata"), &p)),
                None,
                msg,
            ));
        }
    };
    let partial_ref = ResourceRef {
        kind,
        namespace: metadata.namespace.clone().unwrap_or_default(),
        name: metadata.name.clone(),
    };
    if metadata.name.is_empty() {
        let p = FieldPath::root().key("metadata").key("name");
        return Some(diag(
            Some(p),
            Some(partial_ref),
            "metadata.name is required".into(),
        ));
    }
    let origin = Origin {
        file: file.clone(),
        text: text.clone(),
        chunk: chunk.range.clone(),
        line_offset: off,
        document: idx,
        line,
    };
    Some(match parse_spec(kind, spec_n) {
        Ok(spec) => Ok(Resource {
            api_version,
            kind,
            metadata,
            spec,
            origin,
            unenforced: crate::support::scan(kind, doc_node, off),
        }),
        Err((p, msg)) => diag(
            Some(append_serde_path(FieldPath::root().key("spec"), &p)),
            Some(partial_ref),
            msg,
        ),
    })
}

/// The string value of a scalar node.
fn scalar_str(n: &MarkedYaml<'_>) -> Option<String> {
    match &n.data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Tagged(_, inner) => scalar_str(inner),
        _ => None,
    }
}

/// Deserialises a node; an error comes with its path below the node.
fn deserialize_tracked<T: serde::de::DeserializeOwned>(
    n: &MarkedYaml<'_>,
) -> Result<T, (Vec<Segment>, String)> {
    use crate::yamlde::Node;
    T::deserialize(Node(n)).map_err(|e| (e.path().cloned().collect(), serde_message(&e.msg)))
}

fn parse_spec(kind: Kind, node: Option<&MarkedYaml<'_>>) -> Result<Spec, (Vec<Segment>, String)> {
    let empty = MarkedYaml {
        span: Default::default(),
        data: YamlData::Mapping(Default::default()),
    };
    let v = match node {
        Some(n) if !matches!(n.data, YamlData::Value(Scalar::Null)) => n,
        _ => &empty,
    };
    fn de<T: serde::de::DeserializeOwned>(v: &MarkedYaml<'_>) -> Result<T, (Vec<Segment>, String)> {
        deserialize_tracked(v)
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
        Kind::LocalRateLimit => Spec::LocalRateLimit(de(v)?),
        Kind::Telemetry => Spec::Telemetry(de(v)?),
    })
}

/// Rewrites serde's messages into the shape users know from `kubectl`/`istioctl`:
/// `unknown field "foo"` (with the accepted names), type errors as they are.
fn serde_message(m: &str) -> String {
    if let Some(rest) = m.strip_prefix("unknown field `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let expected = tail.trim_start_matches(", ").replace('`', "");
        return format!("unknown field {name:?}, {expected}");
    }
    if let Some(rest) = m.strip_prefix("unknown variant `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let expected = tail.trim_start_matches(", ").replace('`', "");
        return format!("unknown value {name:?}, {expected}");
    }
    m.to_string()
}

fn append_serde_path(mut base: FieldPath, p: &[Segment]) -> FieldPath {
    base.0.extend(p.iter().cloned());
    base
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
    let wanted: Vec<Option<(&Origin, &FieldPath)>> = findings
        .iter()
        .map(|f| resources.get(f.resource).map(|r| (&r.origin, &f.field)))
        .collect();
    let pos = positions(&wanted);
    findings
        .into_iter()
        .zip(pos)
        .filter_map(|(f, p)| {
            let r = resources.get(f.resource)?;
            let (line, column) = p?;
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

/// The positions of fields (each in the document of its origin), parsing each chunk of
/// source once; `None` where nothing was asked.
fn positions(wanted: &[Option<(&Origin, &FieldPath)>]) -> Vec<Option<(u32, u32)>> {
    let mut by_chunk: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (i, w) in wanted.iter().enumerate() {
        if let Some((o, _)) = w {
            let key = (Arc::as_ptr(&o.text) as *const u8 as usize, o.chunk.start);
            by_chunk.entry(key).or_default().push(i);
        }
    }
    let mut pos = vec![None; wanted.len()];
    for idxs in by_chunk.values() {
        let Some(Some((origin, _))) = idxs.first().map(|i| wanted[*i]) else {
            continue;
        };
        let src = origin.text.get(origin.chunk.clone()).unwrap_or("");
        let docs = MarkedYaml::load_from_str(src).unwrap_or_default();
        for &i in idxs {
            let Some((o, field)) = wanted[i] else {
                continue;
            };
            pos[i] = Some(match docs.get(o.document) {
                Some(doc) => {
                    let (l, c) = locate_in(doc, field);
                    (l + o.line_offset, c)
                }
                None => (o.line, 1),
            });
        }
    }
    pos
}

/// A problem found in a resource by a step after loading (compiling route tables,
/// analysis), named by reference: [`Origins::locate`] gives it a file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// The resource.
    pub resource: ResourceRef,
    /// The field, from the document root (`spec.http[0]...`).
    pub field: FieldPath,
    /// What is wrong.
    pub message: String,
}

/// Where each resource of a configuration came from: lets the steps after loading (which
/// work on the compiled snapshot) report problems with file, line, resource and field.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    index: HashMap<ResourceRef, Origin>,
}

// === impl Origins ===

impl Origins {
    /// The origins of `resources`.
    pub fn of(resources: &[Resource]) -> Self {
        Origins {
            index: resources
                .iter()
                .map(|r| (r.reference(), r.origin.clone()))
                .collect(),
        }
    }

    /// The first resource of `kind` these origins know (in no particular order when there are
    /// several): e.g. the one `ProxyBootstrap`.
    pub fn any_of(&self, kind: Kind) -> Option<ResourceRef> {
        self.index.keys().find(|r| r.kind == kind).cloned()
    }

    /// Turns issues into diagnostics with file, line and column (an issue about a resource
    /// these origins do not know names no file).
    pub fn locate(&self, issues: Vec<Issue>) -> Vec<Diagnostic> {
        let wanted: Vec<Option<(&Origin, &FieldPath)>> = issues
            .iter()
            .map(|i| self.index.get(&i.resource).map(|o| (o, &i.field)))
            .collect();
        let pos = positions(&wanted);
        issues
            .into_iter()
            .zip(pos)
            .map(|(i, p)| {
                let file = self
                    .index
                    .get(&i.resource)
                    .map_or_else(|| Arc::from("<configuration>"), |o| o.file.clone());
                Diagnostic {
                    severity: i.severity,
                    file,
                    line: p.map(|p| p.0),
                    column: p.map(|p| p.1),
                    resource: Some(i.resource),
                    field: Some(i.field),
                    message: i.message,
                }
            })
            .collect()
    }
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
            "VirtualService/default/reviews"
        );
        assert!(d.message.contains("invalid type"), "{}", d.message);
        assert!(
            d.to_string().starts_with(
                "error: t.yaml:11:7: VirtualService/default/reviews: spec.http[0].route[0].weight: "
            ),
            "{d}"
        );
    }

    /// kubectl converts YAML with go-yaml v2 (YAML 1.1): `yes`/`on`/`off`… are booleans in
    /// boolean fields; in string fields they stay text.
    #[test]
    fn yaml11_booleans_in_boolean_fields_only() {
        let dr = |v: &str| {
            let out = load(&format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: {{enabled: {v}}}\n"
            ));
            assert!(out.diagnostics.is_empty(), "{v}: {:?}", out.diagnostics);
            match &out.resources[0].spec {
                crate::model::Spec::DestinationRule(d) => d
                    .traffic_policy
                    .as_ref()
                    .and_then(|t| t.load_balancer.as_ref())
                    .and_then(|l| l.locality_lb_setting.as_ref())
                    .and_then(|l| l.enabled),
                _ => None,
            }
        };
        for (v, want) in [
            ("yes", true),
            ("On", true),
            ("y", true),
            ("true", true),
            ("off", false),
            ("NO", false),
            ("false", false),
        ] {
            assert_eq!(dr(v), Some(want), "{v}");
        }
        let out = load(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - headers: {request: {set: {x-flag: on}}}\n    route: [{destination: {host: r}}]\n",
        );
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        let crate::model::Spec::VirtualService(vs) = &out.resources[0].spec else {
            panic!("not a VirtualService")
        };
        let set = &vs.http[0]
            .headers
            .as_ref()
            .unwrap()
            .request
            .as_ref()
            .unwrap()
            .set;
        assert_eq!(set["x-flag"], "on");
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

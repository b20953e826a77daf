//! The support table (`mesh_core::support`) against the model and against
//! `docs/istio-support.md`.
//!
//! The table must list exactly the fields the loader accepts: this test asks the loader
//! itself, by writing an unknown field `zzz_probe` at each object of each kind and reading
//! the field list of the "unknown field" error (serde's `expected one of …`). A field added
//! to the model without a row, or a row for a field the model does not have, fails here.
//!
//! The rendered table must match `docs/istio-support.md`; `MESH_BLESS=1 cargo test -p
//! mesh-core --test support_table` rewrites the file.

// Test helpers: a loader that does not behave as the probe expects is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mesh_core::load::Loader;
use mesh_core::model::Kind;
use mesh_core::support::{Shape, TypeDef, kind, kinds, render_markdown};

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Seq,
    Map,
}

/// The YAML of `leaf` placed at `path` (below `spec`).
fn render(path: &[Seg], leaf: &str) -> String {
    let mut v = leaf.to_string();
    for s in path.iter().rev() {
        v = match s {
            Seg::Key(k) => format!("{{{k}: {v}}}"),
            Seg::Seq => format!("[{v}]"),
            Seg::Map => format!("{{80: {v}}}"),
        };
    }
    v
}

/// The concrete field path the loader reports for `path`.
fn concrete(path: &[Seg]) -> String {
    let mut s = String::from("spec");
    for seg in path {
        match seg {
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Seq => s.push_str("[0]"),
            Seg::Map => s.push_str(".80"),
        }
    }
    s
}

fn first_error(kind: Kind, path: &[Seg], leaf: &str) -> Option<(String, String)> {
    let doc = format!(
        "apiVersion: {}/{}\nkind: {}\nmetadata: {{name: probe}}\nspec: {}\n",
        kind.group(),
        kind.versions()[0],
        kind.as_str(),
        render(path, leaf)
    );
    let mut l = Loader::new();
    l.add_str("probe.yaml", &doc);
    let d = l.finish().diagnostics.into_iter().next()?;
    Some((
        d.field.map(|f| f.to_string()).unwrap_or_default(),
        d.message,
    ))
}

/// The fields of the object at `path`, if it is one (from the unknown-field error).
fn object_fields(kind: Kind, path: &[Seg]) -> Option<Vec<String>> {
    let (field, msg) = first_error(kind, path, "{zzz_probe: 1}")?;
    if field != format!("{}.zzz_probe", concrete(path)) {
        return None;
    }
    let rest = msg.strip_prefix("unknown field \"zzz_probe\", ")?;
    if rest.contains("there are no fields") {
        return Some(Vec::new());
    }
    let list = rest
        .trim_start_matches("expected one of ")
        .trim_start_matches("expected ");
    Some(
        list.split(", ")
            .flat_map(|s| s.split(" or "))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// The model's name for the object type at `path` ("expected struct TrafficPolicy").
fn type_name(kind: Kind, path: &[Seg]) -> String {
    first_error(kind, path, "1")
        .and_then(|(_, m)| m.split("expected struct ").nth(1).map(str::to_string))
        .unwrap_or_default()
}

/// Compares the table's type at `path` with the loader's, recursively.
fn compare(kind: Kind, path: Vec<Seg>, ty: &TypeDef, failures: &mut Vec<String>) {
    let at = concrete(&path);
    let Some(mut fields) = object_fields(kind, &path) else {
        failures.push(format!(
            "{kind} {at}: the loader does not read an object here"
        ));
        return;
    };
    let name = type_name(kind, &path);
    if name != ty.name {
        failures.push(format!(
            "{kind} {at}: the model's type is {name:?}, the table says {:?}",
            ty.name
        ));
    }
    let mut listed: Vec<String> = ty.fields.iter().map(|f| f.name.to_string()).collect();
    fields.sort();
    listed.sort();
    if fields != listed {
        failures.push(format!(
            "{kind} {at}: the loader accepts {fields:?}, the table lists {listed:?}"
        ));
        return;
    }
    for f in ty.fields {
        let mut p = path.clone();
        p.push(Seg::Key(f.name.to_string()));
        let fat = concrete(&p);
        let mut seq = p.clone();
        seq.push(Seg::Seq);
        let mut map = p.clone();
        map.push(Seg::Map);
        let actual = if object_fields(kind, &p).is_some() {
            "object"
        } else if object_fields(kind, &seq).is_some() {
            "list of objects"
        } else if object_fields(kind, &map).is_some() {
            "map of objects"
        } else {
            "scalar"
        };
        match f.shape {
            Shape::Struct(t) if actual == "object" => compare(kind, p, t, failures),
            Shape::Seq(t) if actual == "list of objects" => compare(kind, seq, t, failures),
            Shape::Map(t) if actual == "map of objects" => compare(kind, map, t, failures),
            Shape::Leaf if actual == "scalar" => {}
            other => failures.push(format!(
                "{kind} {fat}: the loader reads a {actual}, the table says {other:?}"
            )),
        }
    }
}

#[test]
fn the_table_lists_exactly_the_fields_the_loader_accepts() {
    assert_eq!(kinds().len(), Kind::ALL.len());
    let mut failures = Vec::new();
    for k in Kind::ALL {
        compare(k, Vec::new(), kind(k).spec, &mut failures);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn docs_istio_support_md_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/istio-support.md");
    let rendered = render_markdown();
    if std::env::var_os("MESH_BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/istio-support.md is stale: run `MESH_BLESS=1 cargo test -p mesh-core --test support_table`"
    );
}

//! `docs/bootstrap.md` documents every `ProxyBootstrap` field, and only real ones.
//!
//! The fields are not listed by hand: they come from the support table
//! (`mesh_core::support`), which `tests/support_table.rs` checks against the fields the loader
//! accepts, so a field added tomorrow needs a row here too. A field whose value the loader
//! refuses with "unknown value …, expected …" is an enumeration, whose values its row must
//! name.
//!
//! Each field must have a table row starting with its path below `spec`, in backticks
//! (`` | `limits.connectTimeout` | ``); every such row must name a field.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use mesh_core::model::Kind;
use mesh_core::support::{Shape, TypeDef, kind};

const NOT_A_VALUE: &str = "zzzNotAValue";

fn docs() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bootstrap.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads a ProxyBootstrap whose `spec` has `value` at `path` (nested mappings); returns the
/// first error's field path and message, if the configuration is refused.
fn probe(path: &[&str], value: &str) -> Option<(String, String)> {
    let mut yaml = String::from(
        "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {name: probe}\nspec:\n",
    );
    for (depth, key) in path.iter().enumerate() {
        let indent = "  ".repeat(depth + 1);
        if depth + 1 == path.len() {
            yaml.push_str(&format!("{indent}{key}: {value}\n"));
        } else {
            yaml.push_str(&format!("{indent}{key}:\n"));
        }
    }
    let err = mesh_core::config::load_str("probe.yaml", &yaml).err()?;
    let d = err.errors().next()?;
    Some((
        d.field
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        d.message.clone(),
    ))
}

/// The names serde lists after "expected" ("one of a, b, c", "a or b", "a").
fn expected_list(message: &str) -> Vec<String> {
    let (_, list) = message
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no list in {message:?}"));
    let list = list.strip_prefix("one of ").unwrap_or(list);
    list.split(", ")
        .flat_map(|s| s.split(" or "))
        .map(|s| s.trim().trim_matches('`').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn spec_path(path: &[&str]) -> String {
    std::iter::once("spec")
        .chain(path.iter().copied())
        .collect::<Vec<_>>()
        .join(".")
}

/// The values of the enumeration at `path`, if it is one.
fn values_of(path: &[&str]) -> Option<Vec<String>> {
    let (field, message) = probe(path, NOT_A_VALUE)?;
    (field == spec_path(path) && message.contains("unknown value")).then(|| expected_list(&message))
}

/// Every field below `ty` (paths relative to `spec`, joined with dots), with the values of
/// the enumerations.
fn walk(ty: &TypeDef, path: &[&str], out: &mut Vec<(String, Vec<String>)>) {
    for f in ty.fields {
        let mut p = path.to_vec();
        p.push(f.name);
        let values = values_of(&p).unwrap_or_default();
        out.push((p.join("."), values));
        if let Shape::Struct(t) = f.shape {
            walk(t, &p, out);
        }
    }
}

/// The table rows of the documentation: first cell (a backticked field path) → the row.
fn documented_rows(docs: &str) -> Vec<(String, String)> {
    docs.lines()
        .filter_map(|l| {
            let cell = l.strip_prefix("| `")?;
            let (name, _) = cell.split_once("` |")?;
            let is_path = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                && name.starts_with(|c: char| c.is_ascii_lowercase());
            is_path.then(|| (name.to_string(), l.to_string()))
        })
        .collect()
}

#[test]
fn the_probe_finds_the_values_it_should() {
    // the mechanism itself: an enumeration, a map and a scalar
    assert_eq!(
        values_of(&["outbound", "protocol"]).unwrap(),
        ["auto", "http1", "http2"]
    );
    assert_eq!(values_of(&["gatewayPorts"]), None);
    assert_eq!(values_of(&["concurrency"]), None);
}

#[test]
fn every_bootstrap_field_is_documented_and_every_documented_field_exists() {
    let mut fields = Vec::new();
    walk(kind(Kind::ProxyBootstrap).spec, &[], &mut fields);
    assert!(
        fields.len() >= 30,
        "only {} fields found: {fields:?}",
        fields.len()
    );
    let docs = docs();
    let rows = documented_rows(&docs);

    let mut problems = Vec::new();
    for (path, values) in &fields {
        match rows.iter().find(|(name, _)| name == path) {
            None => problems.push(format!("no row for the field `{path}`")),
            Some((_, row)) => {
                for v in values.iter().filter(|v| !row.contains(&format!("`{v}`"))) {
                    problems.push(format!("the row of `{path}` does not name its value `{v}`"));
                }
            }
        }
    }
    let real: BTreeSet<&str> = fields.iter().map(|(p, _)| p.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (name, _) in &rows {
        if !real.contains(name.as_str()) {
            problems.push(format!(
                "a row for `{name}`, which is not a ProxyBootstrap field"
            ));
        }
        if !seen.insert(name) {
            problems.push(format!("two rows for `{name}`"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/bootstrap.md:\n  {}",
        problems.join("\n  ")
    );
}

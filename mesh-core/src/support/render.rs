//! The support table as Markdown (`docs/istio-support.md`).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::{KindDef, Shape, Status, TypeDef, Verdict, kinds};

/// Renders the support table as Markdown: a summary per kind, then every field of every
/// kind with its status. Types that appear at several paths (a DestinationRule's traffic
/// policy at the top, per port and per subset) are listed once, then referred to.
pub fn render_markdown() -> String {
    let mut out = String::new();
    out.push_str(HEADER);
    let mut counts = String::new();
    let mut sections = String::new();
    for k in kinds() {
        let mut rows = Vec::new();
        let mut seen = HashMap::new();
        let kind_verdict = k.status.fixed();
        let inherited = kind_verdict.filter(|v| *v != Verdict::Enforced);
        walk(k.spec, "spec", inherited, &mut seen, &mut rows);
        let (mut e, mut n, mut r, mut d) = (0, 0, 0, 0);
        for row in &rows {
            match row.class {
                Class::Enforced => e += 1,
                Class::NotYet => n += 1,
                Class::Refused => r += 1,
                Class::Depends => d += 1,
                Class::Same => {}
            }
        }
        let _ = writeln!(
            counts,
            "| [{kind}](#{anchor}) | {status} | {e} | {d} | {n} | {r} |",
            kind = k.kind,
            anchor = k.kind.as_str().to_ascii_lowercase(),
            status = kind_status(k),
        );
        let _ = writeln!(sections, "\n## {}\n", k.kind);
        if !k.note.is_empty() {
            let _ = writeln!(sections, "{}\n", capitalise(k.note));
        }
        sections.push_str("| field | status | note |\n|---|---|---|\n");
        for row in rows {
            let _ = writeln!(
                sections,
                "| `{}` | {} | {} |",
                row.path,
                row.status,
                row.note.replace('|', "\\|")
            );
        }
    }
    out.push_str(
        "| kind | the kind | fields enforced | depend on the value | not yet | refused |\n|---|---|---|---|---|---|\n",
    );
    out.push_str(&counts);
    out.push_str(&sections);
    out
}

const HEADER: &str = "# Istio support in this version

<!-- Generated from mesh-core/src/support/table.rs by `mesh_core::support::render_markdown`;
     do not edit. `MESH_BLESS=1 cargo test -p mesh-core --test support_table` rewrites it. -->

Every field of every kind `mesh-proxy` reads, and what this version does with it:

- **enforced**: it acts as Istio and Envoy would.
- **not yet** (with the area of work that will bring it): accepted with no effect.
  `mesh-proxy validate`, start-up and every reload print one warning per field written,
  with its file, line and resource; `/config_dump` lists them under `unenforced` and the
  gauge `mesh_proxy_unenforced_fields` counts them.
- **refused**: a security feature this version does not enforce yet. Relying on it would
  let through traffic the configuration means to stop, so the configuration is refused by
  `validate` and by `run` (security fails closed).
- Some fields depend on the value written (`tls.mode: DISABLE` is enforced, `SIMPLE` is
  refused).

`mesh-proxy validate --istio` checks YAML meant for a real Istio cluster with Istio's rules
only, and ignores this table. A field under one that is not enforced has that field's status
(`spec.http[].retries.attempts` is no more enforced than `spec.http[].retries`).

";

#[derive(Clone, Copy)]
enum Class {
    Enforced,
    NotYet,
    Refused,
    Depends,
    Same,
}

struct Row {
    path: String,
    status: String,
    note: String,
    class: Class,
}

fn kind_status(k: &KindDef) -> String {
    status_text(k.status)
}

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Enforced => "enforced".into(),
        Verdict::NotYet(a) => format!("not yet ({a})"),
        Verdict::Refused(a) => format!("**refused** ({a})"),
    }
}

fn status_text(s: Status) -> String {
    match s {
        Status::Values(v) => {
            let mut parts: Vec<String> = v
                .cases
                .iter()
                .map(|(value, verdict)| format!("`{value}`: {}", verdict_text(*verdict)))
                .collect();
            parts.push(format!("other values: {}", verdict_text(v.otherwise)));
            format!("by value: {}", parts.join("; "))
        }
        Status::Custom(c) => format!("by value: {}", c.doc),
        fixed => verdict_text(fixed.fixed().unwrap_or(Verdict::Enforced)),
    }
}

fn class_of(s: Status) -> Class {
    match s {
        Status::Enforced => Class::Enforced,
        Status::NotYet(_) => Class::NotYet,
        Status::Refused(_) => Class::Refused,
        Status::Values(_) | Status::Custom(_) => Class::Depends,
    }
}

fn walk(
    ty: &'static TypeDef,
    prefix: &str,
    inherited: Option<Verdict>,
    seen: &mut HashMap<(*const TypeDef, Option<Verdict>), String>,
    rows: &mut Vec<Row>,
) {
    for f in ty.fields {
        let path = format!("{prefix}.{}", f.name);
        let own = f.status.fixed().filter(|v| *v != Verdict::Enforced);
        let (status, class) = match inherited {
            Some(v) => (
                format!("{}, as its parent", verdict_text(v)),
                class_of(match v {
                    Verdict::NotYet(a) => Status::NotYet(a),
                    Verdict::Refused(a) => Status::Refused(a),
                    Verdict::Enforced => Status::Enforced,
                }),
            ),
            None => (status_text(f.status), class_of(f.status)),
        };
        rows.push(Row {
            path: path.clone(),
            status,
            note: capitalise(f.note),
            class,
        });
        let below = inherited.or(own);
        let (child, suffix) = match f.shape {
            Shape::Leaf => continue,
            Shape::Struct(t) => (t, ""),
            Shape::Seq(t) => (t, "[]"),
            Shape::Map(t) => (t, "{}"),
        };
        let child_prefix = format!("{path}{suffix}");
        // by the type itself: two types of one model name (a provider reference whose
        // names mean different things in tracing, metrics and logging) are listed apart
        let key = (std::ptr::from_ref(child), below);
        if let Some(first) = seen.get(&key) {
            rows.push(Row {
                path: format!("{child_prefix}.*"),
                status: format!("as `{first}.*`"),
                note: String::new(),
                class: Class::Same,
            });
            continue;
        }
        seen.insert(key, child_prefix.clone());
        walk(child, &child_prefix, below, seen, rows);
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

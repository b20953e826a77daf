//! The acceptance corpus: real-world Istio configurations run through the public API
//! (`load::Loader` → `validate::validate` → `load::resolve`).
//!
//! - `tests/corpus/valid/*.yaml` must load and validate without errors; every warning must be
//!   announced by a `# expect-warning: <substring>` header line, and every announced warning
//!   must appear.
//! - `tests/corpus/invalid/*.yaml` must produce, for each `# expect-error: <substring>` line,
//!   an error containing it. `# expect-field: <path>` and `# expect-line: <n>` pin the field
//!   path and line of the error matching the first `expect-error`. A file marked
//!   `# stage: build` is valid under Istio's rules (this test checks that it has no error
//!   here); only the proxy's build refuses it (`mesh-proxy/tests/corpus.rs`).
//! - Valid files announce with `# run-error:` and `# run-warning:` what the proxy's pipeline
//!   adds to Istio's rules (unenforced fields, refusals, IST0101); `mesh-proxy/tests/corpus.rs`
//!   checks those.
//!
//! Every file opens with a `# source:` line saying where the configuration comes from.

// Test helpers: a missing or unreadable corpus file is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mesh_core::load::{self, Loader};
use mesh_core::{Diagnostic, Severity, validate};

/// The least number of files each half of the corpus must hold.
const MIN_FILES: usize = 45;

#[derive(Debug, Default)]
struct Expect {
    source: Option<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
    field: Option<String>,
    line: Option<u32>,
    build_stage: bool,
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

fn files(kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("reading corpus/{kind}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn parse_header(text: &str) -> Expect {
    let mut ex = Expect::default();
    for line in text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
    {
        let l = line.trim_start_matches('#').trim();
        if let Some(v) = l.strip_prefix("source:") {
            ex.source = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("expect-error:") {
            ex.errors.push(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("expect-warning:") {
            ex.warnings.push(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("expect-field:") {
            ex.field = Some(v.trim().to_string());
        } else if l
            .strip_prefix("stage:")
            .is_some_and(|v| v.trim() == "build")
        {
            ex.build_stage = true;
        } else if let Some(v) = l.strip_prefix("expect-line:") {
            ex.line = Some(v.trim().parse().expect("expect-line is a number"));
        }
    }
    ex
}

/// Everything the public API reports about one file: loader diagnostics, then validation.
fn run(path: &Path) -> Vec<Diagnostic> {
    let mut loader = Loader::new();
    loader.add_file(path);
    let loaded = loader.finish();
    let findings = validate::validate(&loaded.resources);
    let mut all = loaded.diagnostics;
    all.extend(load::resolve(&loaded.resources, findings));
    all
}

fn show(ds: &[Diagnostic]) -> String {
    ds.iter().map(|d| format!("\n  {d}")).collect()
}

#[test]
fn valid_corpus_has_no_errors_and_only_expected_warnings() {
    let files = files("valid");
    assert!(files.len() >= MIN_FILES, "only {} valid files", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let ex = parse_header(&text);
        let ds = run(path);
        let name = path.file_name().unwrap().to_string_lossy();
        let errors: Vec<_> = ds.iter().filter(|d| d.is_error()).cloned().collect();
        if !errors.is_empty() {
            failures.push(format!("{name}: unexpected errors:{}", show(&errors)));
        }
        let warnings: Vec<_> = ds
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .cloned()
            .collect();
        for w in &warnings {
            if !ex.warnings.iter().any(|e| w.message.contains(e.as_str())) {
                failures.push(format!(
                    "{name}: unannounced warning:{}",
                    show(std::slice::from_ref(w))
                ));
            }
        }
        for e in &ex.warnings {
            if !warnings.iter().any(|w| w.message.contains(e.as_str())) {
                failures.push(format!(
                    "{name}: expected warning {e:?} not reported{}",
                    show(&ds)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_corpus_reports_each_expected_error() {
    let files = files("invalid");
    assert!(
        files.len() >= MIN_FILES,
        "only {} invalid files",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let ex = parse_header(&text);
        let name = path.file_name().unwrap().to_string_lossy();
        if ex.errors.is_empty() {
            failures.push(format!("{name}: no `# expect-error:` line"));
            continue;
        }
        let ds = run(path);
        let errors: Vec<&Diagnostic> = ds.iter().filter(|d| d.is_error()).collect();
        if ex.build_stage {
            if !errors.is_empty() {
                failures.push(format!(
                    "{name}: `stage: build`, but Istio's rules refuse it:{}",
                    show(&ds)
                ));
            }
            continue;
        }
        for e in &ex.errors {
            if !errors.iter().any(|d| d.message.contains(e.as_str())) {
                failures.push(format!(
                    "{name}: expected error {e:?} not reported{}",
                    show(&ds)
                ));
            }
        }
        let first = &ex.errors[0];
        let pinned = errors.iter().any(|d| {
            d.message.contains(first.as_str())
                && ex
                    .field
                    .as_ref()
                    .is_none_or(|f| d.field.as_ref().is_some_and(|p| p.to_string() == *f))
                && ex.line.is_none_or(|l| d.line == Some(l))
        });
        if !pinned {
            failures.push(format!(
                "{name}: no error {first:?} at field {:?} line {:?}{}",
                ex.field,
                ex.line,
                show(&ds)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_corpus_file_names_its_source() {
    for kind in ["valid", "invalid"] {
        for path in files(kind) {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# source:")
                    && parse_header(&text).source.is_some_and(|s| !s.is_empty()),
                "{} does not start with `# source:`",
                path.display()
            );
        }
    }
}

#[test]
fn diagnostics_of_invalid_files_name_file_and_resource() {
    // a validation error (not a parse error) carries the file, line, resource and field
    let path = corpus_dir("invalid").join("vs-negative-weight.yaml");
    let ds = run(&path);
    let d = ds.iter().find(|d| d.is_error()).expect("an error");
    assert!(d.file.ends_with("vs-negative-weight.yaml"));
    assert!(d.line.is_some() && d.column.is_some());
    assert_eq!(
        d.resource.as_ref().map(ToString::to_string).as_deref(),
        Some("VirtualService/default/reviews-route")
    );
    assert!(
        d.to_string()
            .contains("spec.http[0].route[0].weight: weight -10 < 0"),
        "{d}"
    );
}

//! The acceptance corpus (`mesh-core/tests/corpus`) through the proxy's whole configuration
//! pipeline: what `validate` says and what `run` does, file by file.
//!
//! - A valid file (valid Istio YAML) announces, in its leading comment lines, every
//!   diagnostic the pipeline adds to Istio's rules: `# run-error: <substring>` (a refusal:
//!   a security feature this version does not enforce) and `# run-warning: <substring>`
//!   (a field accepted but not enforced; IST0101). The substrings are matched against the
//!   diagnostic without its `severity: file:line:column: ` prefix. Nothing else may appear,
//!   and every announced diagnostic must.
//! - For every invalid file, and every valid file with a `run-error`, `validate` and a
//!   `run` start fail with the same diagnostics.
//! - An invalid file marked `# stage: build` is valid Istio YAML that only the build (the
//!   route table, as Envoy would) refuses.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mesh_core::Diagnostic;
use mesh_core::config::{CheckMode, load_files_with};
use mesh_proxy::proxy::Proxy;

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-core/tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn header(path: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .filter_map(|l| l.trim_start_matches('#').trim().strip_prefix(key))
        .map(|v| v.trim().to_string())
        .collect()
}

/// A diagnostic without its severity, file and position.
fn body(d: &Diagnostic) -> String {
    let mut s = String::new();
    if let Some(r) = &d.resource {
        s.push_str(&format!("{r}: "));
    }
    if let Some(f) = d.field.as_ref().filter(|f| !f.0.is_empty()) {
        s.push_str(&format!("{f}: "));
    }
    s.push_str(&d.message);
    s
}

/// All diagnostics of the proxy's pipeline, and whether it accepted the file.
fn run_mode(path: &Path) -> (bool, Vec<Diagnostic>) {
    match mesh_proxy::pipeline::build_files(&[path]) {
        Ok(b) => (true, b.compiled.warnings),
        Err(e) => (false, e.diagnostics),
    }
}

fn istio_mode(path: &Path) -> Vec<Diagnostic> {
    match load_files_with(&[path], CheckMode::Istio) {
        Ok(c) => c.warnings,
        Err(e) => e.diagnostics,
    }
}

#[test]
fn valid_files_announce_every_refusal_and_warning_of_run_mode() {
    let mut failures = Vec::new();
    for f in corpus("valid") {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let errors = header(&f, "run-error:");
        let warnings = header(&f, "run-warning:");
        let istio = istio_mode(&f);
        let (ok, all) = run_mode(&f);
        if ok != errors.is_empty() {
            failures.push(format!(
                "{name}: accepted = {ok}, but announces {} run-error(s)",
                errors.len()
            ));
        }
        let added: Vec<&Diagnostic> = all.iter().filter(|d| !istio.contains(d)).collect();
        for d in &added {
            let (want, sev) = if d.is_error() {
                (&errors, "run-error")
            } else {
                (&warnings, "run-warning")
            };
            if !want.iter().any(|w| body(d).contains(w.as_str())) {
                failures.push(format!("{name}: unannounced {sev}: {d}"));
            }
        }
        for (want, is_error) in [(&errors, true), (&warnings, false)] {
            for w in want {
                if !added
                    .iter()
                    .any(|d| d.is_error() == is_error && body(d).contains(w.as_str()))
                {
                    failures.push(format!("{name}: announced {w:?} not reported"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// What `mesh-proxy validate FILE` prints on standard error, line by line (without its
/// summary line).
fn validate_lines(path: &Path) -> (ExitCode, Vec<String>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = mesh_proxy::cli::validate(
        &[path.to_path_buf()],
        CheckMode::Proxy,
        &mut std::io::empty(),
        &mut out,
        &mut err,
    );
    let lines = String::from_utf8(err)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("validation failed"))
        .map(str::to_string)
        .collect();
    (code, lines)
}

#[test]
fn validate_and_run_fail_with_the_same_message() {
    let mut refused: Vec<PathBuf> = corpus("invalid");
    refused.extend(
        corpus("valid")
            .into_iter()
            .filter(|f| !header(f, "run-error:").is_empty()),
    );
    assert!(refused.len() > 150, "{} files", refused.len());
    let mut failures = Vec::new();
    for f in refused {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let (code, lines) = validate_lines(&f);
        if code != ExitCode::from(1) {
            failures.push(format!("{name}: validate exited {code:?}"));
            continue;
        }
        // `run` fails before binding anything: the configuration never gets that far
        match Proxy::start(vec![f.clone()]) {
            Ok(p) => {
                p.drain_blocking();
                failures.push(format!("{name}: run started"));
            }
            Err(e) => {
                let run: Vec<String> = e.to_string().lines().map(str::to_string).collect();
                if run != lines {
                    failures.push(format!("{name}:\n validate: {lines:#?}\n run: {run:#?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn build_stage_files_are_valid_istio_yaml_that_run_refuses() {
    let staged: Vec<PathBuf> = corpus("invalid")
        .into_iter()
        .filter(|f| header(f, "stage:").iter().any(|s| s == "build"))
        .collect();
    assert!(staged.len() >= 3, "only {} build-stage files", staged.len());
    for f in staged {
        assert!(
            !istio_mode(&f).iter().any(Diagnostic::is_error),
            "{}: Istio's rules refuse it",
            f.display()
        );
        let (ok, ds) = run_mode(&f);
        assert!(!ok, "{}: accepted", f.display());
        for e in header(&f, "expect-error:") {
            assert!(
                ds.iter().any(|d| d.is_error() && d.message.contains(&e)),
                "{}: no error {e:?} in {ds:#?}",
                f.display()
            );
        }
    }
}

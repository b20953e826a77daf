//! The `fuzz/` target `load_yaml`, runnable on stable: arbitrary and mutated documents through
//! the loader (and its support-table scan), the validator, `resolve` and the rest of
//! mesh-core's pipeline (compile, IST0101 analysis) must never panic, and every finding must
//! name a loaded resource. The seeds are the acceptance corpus (`tests/corpus/`).

// Test helpers: a missing or unreadable corpus file is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;

use mesh_core::load::{self, Loader};
use mesh_core::validate;
use proptest::prelude::*;

/// Values that have found bugs in parsers of this kind: signs, overflows, wildcards, empty
/// strings, YAML specials, bad durations, control characters, unbalanced regexes.
const INTERESTING: &[&str] = &[
    "-1",
    "0",
    "4294967296",
    "99999999999999999999",
    "1e309",
    "-0",
    "0.00001",
    "\"*\"",
    "\"\"",
    "~",
    "null",
    "[]",
    "{}",
    "[{}]",
    "0s",
    "-1s",
    "1.5us",
    "9999999999h",
    "\"(\"",
    "\"%\"",
    "\"%A(\"",
    "\"\\u0000\"",
    "\"unix://\"",
    "\"::1/129\"",
    "\"a/b/c/d\"",
    "\"@request.auth.claims[\"",
    "\"outbound_.80_._.\"",
    "\"*.*\"",
    "true",
    "\"é\"",
];

fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(read_corpus)
}

fn read_corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out = Vec::new();
    for kind in ["valid", "invalid"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(kind))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            out.push(std::fs::read_to_string(p).unwrap());
        }
    }
    out
}

/// What the fuzz target does; panics only on a broken invariant.
fn check(text: &str) {
    let mut loader = Loader::new();
    loader.add_str("fuzz.yaml", text);
    let loaded = loader.finish();
    let findings = validate::validate(&loaded.resources);
    assert!(
        findings.iter().all(|f| f.resource < loaded.resources.len()),
        "a finding names no resource"
    );
    let n = findings.len();
    let diagnostics = load::resolve(&loaded.resources, findings);
    assert_eq!(diagnostics.len(), n, "resolve lost findings");
    for d in &diagnostics {
        let _ = d.to_string();
    }
    // every unenforced field the loader's support scan found points into its document
    for r in &loaded.resources {
        for u in &r.unenforced {
            assert!(u.line >= r.origin.line, "{u:?} above its document");
        }
    }
    // the whole pipeline of mesh-core (support table, compile, IST0101 analysis)
    match mesh_core::config::load_str("fuzz.yaml", text) {
        Ok(c) => {
            assert!(c.unenforced.iter().all(|d| d.line.is_some()));
            let _ = c.warnings.iter().map(ToString::to_string).count();
        }
        Err(e) => assert!(e.errors().next().is_some(), "an error without errors"),
    }
}

/// Replaces the value after the first `: ` (or the `- ` of a sequence item) on line `line`.
fn replace_value(text: &str, line: usize, value: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return text.to_string();
    }
    let i = line % lines.len();
    let l = &lines[i];
    if let Some(pos) = l.find(": ") {
        lines[i] = format!("{}: {value}", &l[..pos]);
    } else if let Some(pos) = l.find("- ") {
        lines[i] = format!("{}- {value}", &l[..pos]);
    }
    lines.join("\n")
}

#[test]
fn every_value_of_every_corpus_file_can_be_replaced() {
    // deterministic sweep: each line of each seed gets one interesting value (rotating)
    let mut k = 0;
    for doc in corpus() {
        for line in 0..doc.lines().count() {
            check(&replace_value(
                doc,
                line,
                INTERESTING[k % INTERESTING.len()],
            ));
            k += 1;
        }
    }
    assert!(k > 1000, "the sweep ran only {k} cases");
}

#[derive(Debug, Clone)]
enum Mutation {
    Value { line: usize, value: usize },
    Delete { at: usize, len: usize },
    Insert { at: usize, bytes: String },
    DuplicateLine { line: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0..INTERESTING.len()).prop_map(|(line, value)| Mutation::Value { line, value }),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<usize>(), "[ -~\n\t]{1,12}").prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// The nearest char boundary at or below `at % (len + 1)`.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    match m {
        Mutation::Value { line, value } => replace_value(text, *line, INTERESTING[*value]),
        Mutation::Delete { at, len } => {
            let a = boundary(text, *at);
            let b = boundary(text, (a + len).min(text.len()));
            let b = b.max(a);
            format!("{}{}", &text[..a], &text[b..])
        }
        Mutation::Insert { at, bytes } => {
            let a = boundary(text, *at);
            format!("{}{bytes}{}", &text[..a], &text[a..])
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let i = line % lines.len();
                lines.insert(i, lines[i]);
            }
            lines.join("\n")
        }
        Mutation::Truncate { at } => text[..boundary(text, *at)].to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_corpus_documents_never_panic(
        seed in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let docs = corpus();
        let mut text = seed.get(docs).clone();
        for m in &muts {
            text = apply(&text, m);
        }
        check(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes));
    }
}

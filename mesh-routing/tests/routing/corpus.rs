//! Every valid file of mesh-core's acceptance corpus of real Istio YAML builds a sidecar
//! route table: what Istio accepts (and Envoy would take from it: header formats, regexes,
//! delegation) the router compiles.

use std::path::Path;

use mesh_core::compile::compile;
use mesh_core::load::Loader;
use mesh_routing::RouteTable;

#[test]
fn every_valid_corpus_file_builds_a_route_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-core/tests/corpus/valid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() > 100, "corpus at {}", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let mut l = Loader::new();
        l.add_file(f);
        let loaded = l.finish();
        let snapshot = compile(loaded.resources);
        if let Err(e) = RouteTable::sidecar(&snapshot) {
            failed.push(format!("{}: {e}", f.display()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

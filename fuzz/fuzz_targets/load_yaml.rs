//! Arbitrary bytes (as lossy UTF-8) through the loader (and its support-table scan), the
//! validator, `resolve`, and mesh-core's whole pipeline (compile, IST0101 analysis): none of
//! them may panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::load::{self, Loader};
use mesh_core::validate;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut loader = Loader::new();
    loader.add_str("fuzz.yaml", &text);
    let loaded = loader.finish();
    let findings = validate::validate(&loaded.resources);
    // every finding names a loaded resource
    assert!(findings.iter().all(|f| f.resource < loaded.resources.len()));
    let _ = load::resolve(&loaded.resources, findings);
    // the header formats, parsed by validation and the route table alike
    let _ = mesh_core::format::parse(&text);
    if let Ok(c) = mesh_core::config::load_str("fuzz.yaml", &text) {
        assert!(c.unenforced.iter().all(|d| d.line.is_some()));
    }
});

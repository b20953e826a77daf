//! Arbitrary bytes (as lossy UTF-8) through the loader, the validator and `resolve`: none of
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
});

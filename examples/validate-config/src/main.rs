//! Loads and validates an Istio YAML file with `mesh-core` (filled in with the loader).
fn main() {}

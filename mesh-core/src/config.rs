//! From files to a snapshot in one call: load → validate → compile.
//!
//! This is what `mesh-proxy run` and `mesh-proxy validate` do, and what an in-process user
//! calls at start-up and on reload. Any error rejects the whole configuration (a reload
//! never replaces a good snapshot with a partial one); warnings are returned alongside.
//!
//! ```
//! let compiled = mesh_core::config::load_str("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews}
//! "#).unwrap();
//! assert_eq!(compiled.snapshot.virtual_services.len(), 1);
//!
//! let err = mesh_core::config::load_str("bad.yaml", "kind: Nope\napiVersion: x/v1\nmetadata: {name: a}\n")
//!     .unwrap_err();
//! assert!(err.to_string().contains("bad.yaml:1"));
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::compile::{Snapshot, compile};
use crate::error::{ConfigError, Diagnostic};
use crate::load::{Loaded, Loader, resolve};
use crate::model::Resource;

/// A configuration that passed validation, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The snapshot the layers consume.
    pub snapshot: Arc<Snapshot>,
    /// Validation warnings (the configuration is accepted).
    pub warnings: Vec<Diagnostic>,
    /// Number of resources loaded.
    pub resources: usize,
}

/// Validates loaded resources: on success the resources and the warnings.
pub fn check(loaded: Loaded) -> Result<(Vec<Resource>, Vec<Diagnostic>), ConfigError> {
    let Loaded {
        resources,
        mut diagnostics,
    } = loaded;
    let findings = crate::validate::validate(&resources);
    diagnostics.extend(resolve(&resources, findings));
    diagnostics.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(ConfigError { diagnostics });
    }
    Ok((resources, diagnostics))
}

/// Loads, validates and compiles a loader's sources.
pub fn build(loader: Loader) -> Result<Compiled, ConfigError> {
    let (resources, warnings) = check(loader.finish())?;
    let n = resources.len();
    Ok(Compiled {
        snapshot: Arc::new(compile(resources)),
        warnings,
        resources: n,
    })
}

/// Loads, validates and compiles files (documents from all files merged).
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Compiled, ConfigError> {
    let mut loader = Loader::new();
    for p in paths {
        loader.add_file(p);
    }
    build(loader)
}

/// Loads, validates and compiles YAML text named `name` in diagnostics.
pub fn load_str(name: &str, text: &str) -> Result<Compiled, ConfigError> {
    let mut loader = Loader::new();
    loader.add_str(name, text);
    build(loader)
}

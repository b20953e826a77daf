//! From files to a snapshot in one call: load → validate → compile → scope → analyze.
//!
//! The scope step applies the bootstrap workload's `Sidecar` ([`crate::scope`]): the
//! snapshot keeps only what that workload sees.
//!
//! This is what `mesh-proxy run` and `mesh-proxy validate` do (the proxy then builds its
//! route tables and balancers from the snapshot, see `mesh_proxy::pipeline`), and what an
//! in-process user calls at start-up and on reload. Any error rejects the whole
//! configuration (a reload never replaces a good snapshot with a partial one); warnings are
//! returned alongside.
//!
//! Two modes ([`CheckMode`]):
//!
//! - [`CheckMode::Proxy`] (the default): Istio's rules, then what this version does with
//!   the configuration. A field this version accepts but does not enforce is a warning; a
//!   security feature it does not enforce yet is an error (see [`support`](crate::support));
//!   a route to a host or subset that does not exist is a warning (`istioctl analyze`'s
//!   IST0101).
//! - [`CheckMode::Istio`]: Istio's rules only, for YAML meant for a real Istio cluster
//!   (`mesh-proxy validate --istio`).
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
//! // no ServiceEntry for `reviews`: requests would get 503 NR
//! assert!(compiled.warnings[0].message.contains("IST0101"));
//!
//! let err = mesh_core::config::load_str("bad.yaml", "kind: Nope\napiVersion: x/v1\nmetadata: {name: a}\n")
//!     .unwrap_err();
//! assert!(err.to_string().contains("bad.yaml:1"));
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::compile::{Snapshot, compile_with};
use crate::error::{ConfigError, Diagnostic, Severity};
use crate::load::{Loaded, Loader, Origins, resolve};
use crate::model::{Kind, Resource};
use crate::pattern::Precompiled;
use crate::support::Verdict;

/// Which rules a configuration is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckMode {
    /// Istio's rules, then this version's support: unenforced fields are warnings,
    /// unenforced security features errors; references to missing hosts and subsets are
    /// warnings. What `mesh-proxy run` does.
    #[default]
    Proxy,
    /// Istio's rules only (`istioctl validate`).
    Istio,
}

/// A configuration that passed validation, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The snapshot the layers consume.
    pub snapshot: Arc<Snapshot>,
    /// Warnings (the configuration is accepted), in source order; includes
    /// [`unenforced`](Self::unenforced).
    pub warnings: Vec<Diagnostic>,
    /// The warnings about fields accepted but not enforced by this version (what
    /// `/config_dump` lists and a gauge counts). Empty in [`CheckMode::Istio`].
    pub unenforced: Vec<Diagnostic>,
    /// Number of resources loaded.
    pub resources: usize,
    /// Whether a `ProxyBootstrap` document was written (otherwise the defaults apply).
    pub has_bootstrap: bool,
    /// Where each resource came from, for the diagnostics of later build steps.
    pub origins: Arc<Origins>,
}

/// The outcome of [`check`]: the resources and what to warn about.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The resources, in source order.
    pub resources: Vec<Resource>,
    /// Warnings, in source order (includes `unenforced`).
    pub warnings: Vec<Diagnostic>,
    /// Warnings about fields accepted but not enforced by this version.
    pub unenforced: Vec<Diagnostic>,
    /// The regexes and header formats validation compiled (for the route table).
    pub precompiled: Precompiled,
}

/// Validates loaded resources (and, in [`CheckMode::Proxy`], checks them against this
/// version's support table): on success the resources and the warnings.
pub fn check(loaded: Loaded, mode: CheckMode) -> Result<Checked, ConfigError> {
    let Loaded {
        resources,
        mut diagnostics,
        sources,
    } = loaded;
    let (findings, precompiled) = crate::validate::validate_precompiled(&resources);
    diagnostics.extend(resolve(&resources, findings));
    let mut unenforced = Vec::new();
    if mode == CheckMode::Proxy {
        for r in resources.iter().filter(|r| !r.unenforced.is_empty()) {
            let resource = r.reference();
            for u in &r.unenforced {
                let d = Diagnostic {
                    severity: if u.verdict.is_refused() {
                        Severity::Error
                    } else {
                        Severity::Warning
                    },
                    file: r.origin.file.clone(),
                    line: Some(u.line),
                    column: Some(u.column),
                    resource: Some(resource.clone()),
                    field: u.field.clone(),
                    message: u.message.clone(),
                };
                if matches!(u.verdict, Verdict::NotYet(_)) {
                    unenforced.push(d.clone());
                }
                diagnostics.push(d);
            }
        }
        if resources.is_empty() && !diagnostics.iter().any(Diagnostic::is_error) {
            for file in sources {
                diagnostics.push(Diagnostic {
                    severity: Severity::Warning,
                    file,
                    line: None,
                    column: None,
                    resource: None,
                    field: None,
                    message: "empty configuration: no resources (an empty or truncated file?)"
                        .into(),
                });
            }
        }
    }
    sort(&mut diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(ConfigError { diagnostics });
    }
    sort(&mut unenforced);
    Ok(Checked {
        resources,
        warnings: diagnostics,
        unenforced,
        precompiled,
    })
}

/// Diagnostics in the order they are printed: errors first, then by file and position.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
}

/// Loads, validates, compiles and (in [`CheckMode::Proxy`]) analyzes a loader's sources.
pub fn build(loader: Loader, mode: CheckMode) -> Result<Compiled, ConfigError> {
    let Checked {
        resources,
        mut warnings,
        unenforced,
        precompiled,
    } = check(loader.finish(), mode)?;
    let n = resources.len();
    let has_bootstrap = resources.iter().any(|r| r.kind == Kind::ProxyBootstrap);
    let origins = Arc::new(Origins::of(&resources));
    let mut snapshot = compile_with(resources, precompiled);
    // the workload's Sidecar: what it sees and reaches (crate::scope)
    let scoped = crate::scope::apply(&mut snapshot);
    snapshot.reindex();
    if !scoped.issues.is_empty() {
        warnings.extend(origins.locate(scoped.issues));
        sort(&mut warnings);
    }
    let snapshot = Arc::new(snapshot);
    // two LocalRateLimits on the same requests: refused, by the proxy (this project's kind,
    // not Istio's rules; see crate::ratelimit::conflicts)
    // and two Telemetries at one level for the workload (Istio's analyzers' errors; see
    // crate::telemetry::check, whose warnings wait for the analyzers' below)
    let (conflicts, telemetry_warnings) = match mode {
        CheckMode::Proxy => {
            let mut c = crate::ratelimit::conflicts(&snapshot);
            let (errors, warns): (Vec<_>, Vec<_>) = crate::telemetry::check(&snapshot)
                .into_iter()
                .partition(|i| i.severity == Severity::Error);
            c.extend(errors);
            (c, warns)
        }
        CheckMode::Istio => (Vec::new(), Vec::new()),
    };
    if !conflicts.is_empty() {
        let mut diagnostics = origins.locate(conflicts);
        diagnostics.append(&mut warnings);
        sort(&mut diagnostics);
        return Err(ConfigError { diagnostics });
    }
    if mode == CheckMode::Proxy {
        let mut found = crate::analyze::analyze(&snapshot);
        found.extend(telemetry_warnings);
        if !found.is_empty() {
            warnings.extend(origins.locate(found));
            sort(&mut warnings);
        }
    }
    Ok(Compiled {
        snapshot,
        warnings,
        unenforced,
        resources: n,
        has_bootstrap,
        origins,
    })
}

/// Loads, validates and compiles files (documents from all files merged), in
/// [`CheckMode::Proxy`].
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Compiled, ConfigError> {
    load_files_with(paths, CheckMode::Proxy)
}

/// [`load_files`] in a given mode.
pub fn load_files_with<P: AsRef<Path>>(
    paths: &[P],
    mode: CheckMode,
) -> Result<Compiled, ConfigError> {
    let mut loader = Loader::new();
    for p in paths {
        loader.add_file(p);
    }
    build(loader, mode)
}

/// Loads, validates and compiles YAML text named `name` in diagnostics, in
/// [`CheckMode::Proxy`].
pub fn load_str(name: &str, text: &str) -> Result<Compiled, ConfigError> {
    load_str_with(name, text, CheckMode::Proxy)
}

/// [`load_str`] in a given mode.
pub fn load_str_with(name: &str, text: &str, mode: CheckMode) -> Result<Compiled, ConfigError> {
    let mut loader = Loader::new();
    loader.add_str(name, text);
    build(loader, mode)
}

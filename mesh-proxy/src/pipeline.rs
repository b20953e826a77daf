//! The configuration pipeline: the one function `mesh-proxy validate` and `mesh-proxy run`
//! (at start-up and at every reload) both call, so `validate` judges exactly what `run`
//! builds.
//!
//! ```text
//! files ─► load (YAML, positions) ─► validate (Istio's rules) ─► support (what this version
//!          enforces: warnings, refusals) ─► compile (snapshot) ─► analyze (IST0101)
//!          ─► build: the sidecar's route table (regexes, header formats, actions)
//!          ─► security: the identity files read and checked, the inbound mTLS mode
//!          ─► gateways: the Gateways selecting this workload, a route table per gateway
//!             port (HTTP, or L4: tcp/tls routes), its servers' certificate files read and
//!             checked
//!          ─► ingress: the Sidecar's ingress listeners, their addresses checked against
//!             every other listener's, their endpoints
//! ```
//!
//! The first four steps are `mesh_core::config`; this module adds the build. Every failure,
//! whichever step finds it, is a [`Diagnostic`] naming the file, line, resource and field,
//! and the route table's own warnings (routes it drops) are diagnostics too. The balancer's
//! policies are derived per destination when first used and cannot fail.
//!
//! ```
//! use mesh_core::load::Loader;
//!
//! let mut loader = Loader::new();
//! loader.add_str("vs.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: web}
//! spec:
//!   hosts: [web.example.com]
//!   http:
//!   - headers: {request: {set: {x-who: "%NOPE%"}}}
//!     route: [{destination: {host: web.example.com}}]
//! "#);
//! // Istio's validation accepts the value; the route table (as Envoy would) refuses it
//! let err = mesh_proxy::pipeline::build(loader).unwrap_err();
//! let e = err.errors().next().unwrap();
//! assert_eq!(e.line, Some(8));
//! assert_eq!(e.field.as_ref().unwrap().to_string(), "spec.http[0].headers.request.set.x-who");
//! ```

use std::path::Path;

use mesh_core::config::{self, CheckMode, Compiled};
use mesh_core::load::{Issue, Loader};
use mesh_core::{ConfigError, Diagnostic, Severity};
use mesh_routing::{BuildError, RouteTable};

/// A configuration that went through the whole pipeline: ready to serve.
#[derive(Debug)]
pub struct Built {
    /// The compiled configuration; its warnings include the route table's.
    pub compiled: Compiled,
    /// The sidecar's route table.
    pub routes: RouteTable,
    /// The route tables of the `outboundPorts` listeners, in
    /// [`captured_ports`](crate::l4::captured_ports) order.
    pub l4: Vec<mesh_routing::L4RouteTable>,
    /// The workload's identity and inbound mTLS mode ([`crate::security`]).
    pub security: crate::security::Security,
    /// The gateway listeners ([`crate::gateway`]).
    pub gateways: Gateways,
    /// The Sidecar ingress listeners ([`crate::ingress`]).
    pub ingress: crate::ingress::Plan,
}

/// The gateway listeners of a configuration, ready to serve.
#[derive(Debug, Default)]
pub struct Gateways {
    /// Which listeners, with what servers.
    pub plan: crate::gateway::Plan,
    /// Each port's route table (same order as `plan.ports`).
    pub routes: Vec<RouteTable>,
    /// Each port's TLS from files (`ports` in `plan.ports` order, `l4` in `plan.l4` order;
    /// `None`: plaintext, `ISTIO_MUTUAL` or an L4 port that does not terminate TLS).
    pub tls: crate::gateway::PreparedTls,
    /// Each L4 port's route table (same order as `plan.l4`).
    pub l4: Vec<mesh_routing::L4RouteTable>,
}

/// Runs the whole pipeline on a loader's sources.
pub fn build(loader: Loader) -> Result<Built, ConfigError> {
    build_compiled(config::build(loader, CheckMode::Proxy)?)
}

/// Runs the whole pipeline on files (documents from all files merged).
pub fn build_files<P: AsRef<Path>>(files: &[P]) -> Result<Built, ConfigError> {
    let mut loader = Loader::new();
    for f in files {
        loader.add_file(f);
    }
    build(loader)
}

/// The build step alone, on a configuration already compiled (by
/// `mesh_core::config`): builds the route table and turns its errors and warnings into
/// diagnostics.
pub fn build_compiled(mut compiled: Compiled) -> Result<Built, ConfigError> {
    let tables = RouteTable::sidecar(&compiled.snapshot)
        .and_then(|r| Ok((r, crate::l4::build_tables(&compiled.snapshot)?)));
    match tables {
        Ok((routes, l4)) => {
            if !routes.warnings().is_empty() {
                let found = diagnostics(&compiled, Severity::Warning, routes.warnings());
                compiled.warnings.extend(found);
                config::sort(&mut compiled.warnings);
            }
            match crate::security::prepare(&compiled) {
                Ok(mut security) => {
                    if !security.warnings.is_empty() {
                        let found = compiled
                            .origins
                            .locate(std::mem::take(&mut security.warnings));
                        compiled.warnings.extend(found);
                        config::sort(&mut compiled.warnings);
                    }
                    let gateways = gateways(&mut compiled, security.identity.is_some())?;
                    let ingress = ingress(&mut compiled, &gateways.plan)?;
                    Ok(Built {
                        compiled,
                        routes,
                        l4,
                        security,
                        gateways,
                        ingress,
                    })
                }
                Err(issues) => {
                    let mut diagnostics = compiled.origins.locate(issues);
                    diagnostics.append(&mut compiled.warnings);
                    config::sort(&mut diagnostics);
                    Err(ConfigError { diagnostics })
                }
            }
        }
        Err(e) => {
            let mut diagnostics = diagnostics(&compiled, Severity::Error, &[e]);
            diagnostics.append(&mut compiled.warnings);
            config::sort(&mut diagnostics);
            Err(ConfigError { diagnostics })
        }
    }
}

/// The gateway step: the plan, each port's route table and TLS; warnings join the
/// configuration's, errors refuse it (with its warnings).
fn gateways(compiled: &mut Compiled, has_identity: bool) -> Result<Gateways, ConfigError> {
    let snap = compiled.snapshot.clone();
    let (plan, issues) = crate::gateway::plan(&snap, has_identity);
    let (errors, warnings): (Vec<Issue>, Vec<Issue>) = issues
        .into_iter()
        .partition(|i| i.severity == Severity::Error);
    let refuse = |compiled: &mut Compiled, mut diagnostics: Vec<Diagnostic>| {
        diagnostics.append(&mut compiled.warnings);
        config::sort(&mut diagnostics);
        ConfigError { diagnostics }
    };
    if !warnings.is_empty() {
        let found = compiled.origins.locate(warnings);
        compiled.warnings.extend(found);
        config::sort(&mut compiled.warnings);
    }
    if !errors.is_empty() {
        let found = compiled.origins.locate(errors);
        return Err(refuse(compiled, found));
    }
    let mut routes = Vec::with_capacity(plan.ports.len());
    for p in &plan.ports {
        match RouteTable::new(&snap, &p.router_context(&snap)) {
            Ok(t) => {
                // the sidecar table reported the findings of VirtualServices it shares
                let found: Vec<Diagnostic> = diagnostics(compiled, Severity::Warning, t.warnings())
                    .into_iter()
                    .filter(|d| !compiled.warnings.contains(d))
                    .collect();
                compiled.warnings.extend(found);
                routes.push(t);
            }
            Err(e) => {
                let found = diagnostics(compiled, Severity::Error, &[e]);
                return Err(refuse(compiled, found));
            }
        }
    }
    let mut l4 = Vec::with_capacity(plan.l4.len());
    for p in &plan.l4 {
        match p.table(&snap) {
            Ok(t) => l4.push(t),
            Err(e) => {
                let found = diagnostics(compiled, Severity::Error, &[e]);
                return Err(refuse(compiled, found));
            }
        }
    }
    config::sort(&mut compiled.warnings);
    compiled.warnings.dedup();
    let tls = match crate::gateway::prepare_tls(&snap, &plan) {
        Ok(t) => t,
        Err(issues) => {
            let found = compiled.origins.locate(issues);
            return Err(refuse(compiled, found));
        }
    };
    Ok(Gateways {
        plan,
        routes,
        tls,
        l4,
    })
}

/// The Sidecar ingress step: the listeners, their addresses checked against every other
/// listener's; warnings join the configuration's, errors refuse it (with its warnings).
fn ingress(
    compiled: &mut Compiled,
    gateways: &crate::gateway::Plan,
) -> Result<crate::ingress::Plan, ConfigError> {
    let (plan, issues) = crate::ingress::plan_with(&compiled.snapshot, gateways);
    let (errors, warnings): (Vec<Issue>, Vec<Issue>) = issues
        .into_iter()
        .partition(|i| i.severity == Severity::Error);
    if !warnings.is_empty() {
        let found = compiled.origins.locate(warnings);
        compiled.warnings.extend(found);
        config::sort(&mut compiled.warnings);
    }
    if !errors.is_empty() {
        let mut diagnostics = compiled.origins.locate(errors);
        diagnostics.append(&mut compiled.warnings);
        config::sort(&mut diagnostics);
        return Err(ConfigError { diagnostics });
    }
    Ok(plan)
}

/// Route table findings as diagnostics: with file and line when they name a resource (the
/// table names one for every finding), without otherwise.
fn diagnostics(compiled: &Compiled, severity: Severity, found: &[BuildError]) -> Vec<Diagnostic> {
    let issues = found
        .iter()
        .filter_map(|e| {
            Some(Issue {
                severity,
                resource: e.resource.clone()?,
                field: e.field.clone(),
                message: e.message.clone(),
            })
        })
        .collect();
    let mut out = compiled.origins.locate(issues);
    out.extend(
        found
            .iter()
            .filter(|e| e.resource.is_none())
            .map(|e| Diagnostic {
                severity,
                file: "<configuration>".into(),
                line: None,
                column: None,
                resource: None,
                field: Some(e.field.clone()),
                message: e.message.clone(),
            }),
    );
    out
}

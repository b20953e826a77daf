//! The command line: `run`, `validate`, `demo` and `ca`, as docs/architecture.md describes.
//!
//! ```text
//! mesh-proxy run --config FILE [--config FILE …]   serve; SIGHUP reloads, SIGUSR1 reopens the access log, SIGTERM drains then exits 0
//! mesh-proxy validate FILE …                       like `istioctl validate`: exit 0 valid, 1 invalid
//! mesh-proxy demo                                  the embedded default: a runnable canary mesh
//! mesh-proxy ca …                                  create a mesh CA, issue SPIFFE workload certs
//! ```
//!
//! Exit codes: 0 success, 1 invalid configuration or runtime failure, 2 usage error.
//!
//! `validate` runs the configuration pipeline `run` runs ([`crate::pipeline`]): an error
//! `validate` reports is the error `run` would stop with, and a configuration `validate`
//! accepts starts. Fields this version accepts but does not enforce are warnings; security
//! features it does not enforce yet are errors. `validate --istio` checks YAML meant for a
//! real Istio cluster with Istio's rules only, as `istioctl validate` does. Like `kubectl`
//! and `istioctl`, it takes directories (their `.yaml`, `.yml` and `.json` files) and `-`
//! (standard input).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_core::config::CheckMode;
use mesh_core::load::Loader;

/// The `mesh-proxy` command line.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "The mesh reference sidecar: Istio's YAML, Envoy's semantics"
)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: SIGHUP (or a changed file) reloads, SIGUSR1 reopens the access log, SIGTERM
    /// drains then exits 0.
    #[command(override_usage = "mesh-proxy run --config FILE [--config FILE …]")]
    Run {
        /// Configuration file, multi-document YAML (repeatable: documents from all files are
        /// merged).
        #[arg(long = "config", short = 'c', required = true, value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// Validate configuration as `run` would load it: exit 0 valid (warnings printed),
    /// 1 invalid.
    Validate {
        /// Files, directories (their .yaml, .yml and .json files) or `-` (standard input);
        /// their documents are checked together, as `run` would load them.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Istio's rules only, as `istioctl validate` (for YAML meant for an Istio cluster):
        /// fields this version does not enforce are not reported.
        #[arg(long)]
        istio: bool,
    },
    /// Run the embedded demo: two versions of a service behind the proxy, a 90/10 canary
    /// split and a header rule.
    Demo(crate::demo::DemoArgs),
    /// Create a mesh CA and issue SPIFFE workload certificates.
    #[command(subcommand)]
    Ca(crate::ca::CaCommand),
}

/// Parses `std::env::args` and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    run(cli)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { files, istio } => {
            let mode = if istio {
                CheckMode::Istio
            } else {
                CheckMode::Proxy
            };
            validate(
                &files,
                mode,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
        }
        Command::Run { config } => crate::run::run_cli(&config),
        Command::Demo(args) => crate::demo::run_cli(args),
        Command::Ca(cmd) => crate::ca::run_cli(cmd),
    }
}

/// `mesh-proxy validate`: prints errors and warnings, returns 0 when valid, 1 when not.
/// `files` may hold directories and `-` (read from `stdin`).
pub fn validate(
    files: &[PathBuf],
    mode: CheckMode,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let mut loader = Loader::new();
    let mut count = 0;
    for f in files {
        if f.as_os_str() == "-" {
            let mut text = String::new();
            if let Err(e) = stdin.read_to_string(&mut text) {
                let _ = writeln!(err, "error: <stdin>: cannot read: {e}");
                return ExitCode::from(1);
            }
            loader.add_str("<stdin>", &text);
            count += 1;
        } else if f.is_dir() {
            match config_files_in(f) {
                Ok(found) => {
                    count += found.len();
                    for p in found {
                        loader.add_file(p);
                    }
                }
                Err(e) => {
                    let _ = writeln!(err, "error: {}: cannot read directory: {e}", f.display());
                    return ExitCode::from(1);
                }
            }
        } else {
            loader.add_file(f);
            count += 1;
        }
    }
    let result = match mode {
        CheckMode::Proxy => crate::pipeline::build(loader).map(|b| b.compiled),
        CheckMode::Istio => mesh_core::config::build(loader, mode),
    };
    match result {
        Ok(compiled) => {
            for w in &compiled.warnings {
                let _ = writeln!(err, "{w}");
            }
            let mut summary = format!(
                "validation succeeded: {} resource(s) in {count} file(s)",
                compiled.resources
            );
            if !compiled.warnings.is_empty() {
                summary.push_str(&format!(", {} warning(s)", compiled.warnings.len()));
            }
            if !compiled.unenforced.is_empty() {
                summary.push_str(&format!(
                    " ({} about fields this version does not enforce; see docs/istio-support.md)",
                    compiled.unenforced.len()
                ));
            }
            let _ = writeln!(out, "{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let errors = e.errors().count();
            for d in &e.diagnostics {
                let _ = writeln!(err, "{d}");
            }
            let _ = writeln!(err, "validation failed: {errors} error(s)");
            ExitCode::from(1)
        }
    }
}

/// The configuration files of a directory (not its subdirectories), as `kubectl apply -f
/// DIR` reads them: `.yaml`, `.yml` and `.json`, in name order.
fn config_files_in(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let wanted = p.is_file()
            && p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted {
            found.push(p);
        }
    }
    found.sort();
    Ok(found)
}

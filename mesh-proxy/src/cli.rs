//! The command line: `run`, `validate`, `demo` and `ca`, as docs/architecture.md describes.
//!
//! ```text
//! mesh-proxy run --config FILE [--config FILE …]   serve; SIGHUP reloads, SIGTERM drains then exits 0
//! mesh-proxy validate FILE …                       like `istioctl validate`: exit 0 valid, 1 invalid
//! mesh-proxy demo                                  the embedded default: a runnable canary mesh
//! mesh-proxy ca …                                  create a mesh CA, issue SPIFFE workload certs
//! ```
//!
//! Exit codes: 0 success, 1 invalid configuration or runtime failure, 2 usage error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Serve: SIGHUP (or a changed file) reloads, SIGTERM drains then exits 0.
    #[command(override_usage = "mesh-proxy run --config FILE [--config FILE …]")]
    Run {
        /// Configuration file, multi-document YAML (repeatable: documents from all files are
        /// merged).
        #[arg(long = "config", short = 'c', required = true, value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// Validate configuration like `istioctl validate`: exit 0 valid (warnings printed),
    /// 1 invalid.
    Validate {
        /// Files to validate; their documents are checked together, as `run` would load them.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
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
        Command::Validate { files } => {
            validate(&files, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Run { config } => crate::run::run_cli(&config),
        Command::Demo(args) => crate::demo::run_cli(args),
        Command::Ca(cmd) => crate::ca::run_cli(cmd),
    }
}

/// `mesh-proxy validate`: prints errors and warnings, returns 0 when valid, 1 when not.
pub fn validate(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match mesh_core::config::load_files(files) {
        Ok(compiled) => {
            for w in &compiled.warnings {
                let _ = writeln!(err, "{w}");
            }
            let _ = writeln!(
                out,
                "validation succeeded: {} resource(s) in {} file(s){}",
                compiled.resources,
                files.len(),
                if compiled.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", compiled.warnings.len())
                }
            );
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

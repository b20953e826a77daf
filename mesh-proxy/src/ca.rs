//! `mesh-proxy ca`: a mesh CA and SPIFFE workload certificates.

use std::process::ExitCode;

/// `mesh-proxy ca` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCommand {
    /// Create a mesh CA (a self-signed root) in a directory.
    Init {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: std::path::PathBuf,
    },
}

/// Runs a `ca` subcommand.
pub fn run_cli(_cmd: CaCommand) -> ExitCode {
    eprintln!("mesh-proxy ca: not wired yet");
    ExitCode::from(1)
}

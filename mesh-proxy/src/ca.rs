//! `mesh-proxy ca`: a mesh CA and SPIFFE workload certificates (see [`mesh_tls::ca`]).
//!
//! ```text
//! mesh-proxy ca init --out certs [--trust-domain cluster.local]
//!     → certs/ca.pem (the trust bundle), certs/ca.key
//! mesh-proxy ca issue --ca certs --namespace default --service-account reviews --out certs
//!     → certs/reviews.pem (leaf + root), certs/reviews.key
//! ```
//!
//! The files are what `ProxyBootstrap.spec.identity` names (`certificateChain`, `privateKey`,
//! `trustBundle`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use mesh_core::identity::SpiffeId;
use mesh_tls::ca::MeshCa;

/// `mesh-proxy ca` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCommand {
    /// Create a mesh CA (a self-signed root): `<out>/ca.pem` and `<out>/ca.key`.
    Init {
        /// Output directory (created if missing).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Trust domain of the mesh.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue a workload certificate for `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`:
    /// `<out>/<sa>.pem` (leaf and root) and `<out>/<sa>.key`.
    Issue {
        /// Directory holding `ca.pem` and `ca.key`.
        #[arg(long, default_value = "certs")]
        ca: PathBuf,
        /// Namespace of the workload.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Service account of the workload.
        #[arg(long)]
        service_account: String,
        /// Trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Validity in hours (Istio's workload certificates last 24h).
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// Output directory (created if missing). Default: the CA directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Runs a `ca` subcommand.
pub fn run_cli(cmd: CaCommand) -> ExitCode {
    match run(cmd) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-proxy ca: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs a `ca` subcommand; returns what to print.
pub fn run(cmd: CaCommand) -> Result<String, String> {
    match cmd {
        CaCommand::Init { out, trust_domain } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let ca = MeshCa::generate(&trust_domain).map_err(|e| e.to_string())?;
            write(&out.join("ca.pem"), ca.cert_pem())?;
            write(&out.join("ca.key"), &ca.key_pem())?;
            Ok(format!(
                "created a mesh CA for {trust_domain}: {0}/ca.pem, {0}/ca.key",
                out.display()
            ))
        }
        CaCommand::Issue {
            ca,
            namespace,
            service_account,
            trust_domain,
            hours,
            out,
        } => {
            let mesh_ca = MeshCa::from_pem(&read(&ca.join("ca.pem"))?, &read(&ca.join("ca.key"))?)
                .map_err(|e| e.to_string())?;
            let id: SpiffeId =
                format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
                    .parse()
                    .map_err(|e: mesh_core::identity::SpiffeIdError| e.to_string())?;
            let cert = mesh_ca
                .issue(&id, Duration::from_secs(hours * 3600))
                .map_err(|e| e.to_string())?;
            let out = out.unwrap_or(ca);
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let (c, k) = (
                out.join(format!("{service_account}.pem")),
                out.join(format!("{service_account}.key")),
            );
            write(&c, &cert.chain_pem)?;
            write(&k, &cert.key_pem)?;
            Ok(format!("issued {id}: {}, {}", c.display(), k.display()))
        }
    }
}

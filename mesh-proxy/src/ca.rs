//! `mesh-proxy ca`: a mesh CA and SPIFFE workload certificates (see [`mesh_tls::ca`]).
//!
//! ```text
//! mesh-proxy ca init --out certs [--trust-domain cluster.local] [--force]
//!     → certs/ca.pem (the trust bundle), certs/ca.key
//! mesh-proxy ca intermediate --ca certs --name east --out certs/east [--force]
//!     → certs/east/ca.pem (intermediate, then root), certs/east/ca.key, certs/east/root.pem
//! mesh-proxy ca issue --ca certs --namespace default --service-account reviews --out certs
//!     → certs/reviews.pem (leaf, then the CA chain), certs/reviews.key
//! mesh-proxy ca rotate --ca certs --cert certs/reviews.pem [--key certs/reviews.key]
//!     → a new certificate and key for the same identity, in place
//! ```
//!
//! The files are what `ProxyBootstrap.spec.identity` names (`certificateChain`, `privateKey`,
//! `trustBundle`). Private keys are written readable by their owner only (mode 0600), and
//! every file is written whole under a temporary name and renamed into place, so that a proxy
//! watching them never reads half a file. `init` and `intermediate` refuse to replace an
//! existing CA (its certificates would be orphaned) unless `--force` is given. A CA's trust
//! domain is read from its certificate; `issue --trust-domain` must agree with it.

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
        /// Replace an existing CA in `out` (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Create an intermediate CA signed by the CA in `--ca`: `<out>/ca.pem` (its certificate,
    /// then the root's), `<out>/ca.key`, `<out>/root.pem` (the trust bundle).
    Intermediate {
        /// Directory holding the signing CA's `ca.pem` and `ca.key`.
        #[arg(long, default_value = "certs")]
        ca: PathBuf,
        /// A name for the intermediate (its certificate's common name), e.g. a cluster.
        #[arg(long)]
        name: String,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing CA in `out`.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate for `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`:
    /// `<out>/<sa>.pem` (leaf and CA chain) and `<out>/<sa>.key`.
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
        /// Trust domain. Default: the CA's; a different one is refused.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Validity in hours (Istio's workload certificates last 24h).
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// Output directory (created if missing). Default: the CA directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-issue a workload certificate (new key, same identity) in place, as a rotation.
    Rotate {
        /// Directory holding `ca.pem` and `ca.key`.
        #[arg(long, default_value = "certs")]
        ca: PathBuf,
        /// The workload's certificate chain (its identity is kept).
        #[arg(long)]
        cert: PathBuf,
        /// The workload's private key. Default: `cert` with the extension `.key`.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

/// Writes `contents` to `path` whole: a temporary file beside it (mode `mode` on Unix), then a
/// rename over `path`.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(err)?;
    // a stale temporary file keeps its old mode: set it
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Certificates: readable by all.
const PUBLIC: u32 = 0o644;
/// Private keys: readable by their owner only.
const SECRET: u32 = 0o600;

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn load_ca(dir: &Path) -> Result<MeshCa, String> {
    MeshCa::from_pem(&read(&dir.join("ca.pem"))?, &read(&dir.join("ca.key"))?)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Refuses to replace the CA in `dir` unless `force`.
fn refuse_existing(dir: &Path, force: bool) -> Result<(), String> {
    let existing: Vec<_> = ["ca.pem", "ca.key"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if !force && !existing.is_empty() {
        return Err(format!(
            "{} already exists: replacing a CA orphans every certificate it issued \
             (use --force to replace it)",
            existing[0].display()
        ));
    }
    Ok(())
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
        CaCommand::Init {
            out,
            trust_domain,
            force,
        } => {
            refuse_existing(&out, force)?;
            create_dir(&out)?;
            let ca = MeshCa::generate(&trust_domain).map_err(|e| e.to_string())?;
            write(&out.join("ca.key"), &ca.key_pem(), SECRET)?;
            write(&out.join("ca.pem"), ca.cert_pem(), PUBLIC)?;
            Ok(format!(
                "created a mesh CA for {trust_domain}: {0}/ca.pem, {0}/ca.key",
                out.display()
            ))
        }
        CaCommand::Intermediate {
            ca,
            name,
            out,
            force,
        } => {
            let parent = load_ca(&ca)?;
            refuse_existing(&out, force)?;
            create_dir(&out)?;
            let inter = parent.intermediate(&name).map_err(|e| e.to_string())?;
            // the trust bundle: the last certificate of the parent's chain (its root)
            let chain = parent.chain_pem();
            let root = chain
                .rfind("-----BEGIN CERTIFICATE-----")
                .map_or(chain, |i| &chain[i..]);
            write(&out.join("ca.key"), &inter.key_pem(), SECRET)?;
            write(&out.join("ca.pem"), inter.chain_pem(), PUBLIC)?;
            write(&out.join("root.pem"), root, PUBLIC)?;
            Ok(format!(
                "created intermediate CA {name}: {0}/ca.pem, {0}/ca.key, {0}/root.pem",
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
            let mesh_ca = load_ca(&ca)?;
            let td = match (trust_domain, mesh_ca.trust_domain()) {
                (Some(asked), Some(own)) if asked != own => {
                    return Err(format!(
                        "the CA in {} issues for trust domain {own}, not {asked}",
                        ca.display()
                    ));
                }
                (Some(asked), _) => asked,
                (None, Some(own)) => own.to_string(),
                (None, None) => {
                    return Err(format!(
                        "the CA in {} names no trust domain (no O= in its certificate): \
                         give --trust-domain",
                        ca.display()
                    ));
                }
            };
            let id: SpiffeId = format!("spiffe://{td}/ns/{namespace}/sa/{service_account}")
                .parse()
                .map_err(|e: mesh_core::identity::SpiffeIdError| e.to_string())?;
            let cert = mesh_ca
                .issue(&id, Duration::from_secs(hours * 3600))
                .map_err(|e| e.to_string())?;
            let out = out.unwrap_or(ca);
            create_dir(&out)?;
            let (c, k) = (
                out.join(format!("{service_account}.pem")),
                out.join(format!("{service_account}.key")),
            );
            write(&k, &cert.key_pem, SECRET)?;
            write(&c, &cert.chain_pem, PUBLIC)?;
            Ok(format!("issued {id}: {}, {}", c.display(), k.display()))
        }
        CaCommand::Rotate {
            ca,
            cert,
            key,
            hours,
        } => {
            let mesh_ca = load_ca(&ca)?;
            let chain = mesh_tls::config::certs(&read(&cert)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let id = mesh_tls::peer::spiffe_id(&chain[0])
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            if mesh_ca
                .trust_domain()
                .is_some_and(|td| td != id.trust_domain())
            {
                return Err(format!(
                    "{} is for trust domain {}, the CA in {} is not",
                    cert.display(),
                    id.trust_domain(),
                    ca.display()
                ));
            }
            let new = mesh_ca
                .issue(&id, Duration::from_secs(hours * 3600))
                .map_err(|e| e.to_string())?;
            let key = key.unwrap_or_else(|| cert.with_extension("key"));
            // the key first: a proxy that reads the pair between the two renames sees a
            // mismatch and keeps its current certificate until the chain lands
            write(&key, &new.key_pem, SECRET)?;
            write(&cert, &new.chain_pem, PUBLIC)?;
            Ok(format!(
                "rotated {id}: {}, {}",
                cert.display(),
                key.display()
            ))
        }
    }
}

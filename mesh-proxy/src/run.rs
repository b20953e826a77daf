//! `mesh-proxy run`: load the configuration, start the listeners and the admin endpoint,
//! reload on SIGHUP and when a configuration file changes, drain on SIGTERM (or Ctrl-C) and
//! exit 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use tokio::signal::unix::{SignalKind, signal};

use crate::proxy::{Proxy, WATCH_INTERVAL};

/// Installs the stderr logger (`RUST_LOG` filters; default `info`). Idempotent.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A cheap fingerprint of the configuration files (modification time and length), to
/// notice edits without a file-system watcher.
pub fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| stat(f)).collect()
}

fn stat(f: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(f).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs the proxy from the command line until SIGTERM; returns the process exit code.
pub fn run_cli(config: &[PathBuf]) -> ExitCode {
    init_logging();
    let proxy = match Proxy::start(config.to_vec()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the control runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(serve_until_terminated(proxy));
    ExitCode::SUCCESS
}

/// Reloads on SIGHUP or file change; reopens the access log on SIGUSR1 (Envoy's signal for
/// log rotation); drains on SIGTERM/SIGINT.
pub async fn serve_until_terminated(proxy: Proxy) {
    let (Ok(mut hup), Ok(mut usr1), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; draining");
        proxy.drain().await;
        return;
    };
    let files = proxy.state().files().to_vec();
    let mut last = fingerprint(&files);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                last = fingerprint(&files);
                let _ = proxy.reload();
            }
            _ = tick.tick() => {
                // a rotated workload certificate or DestinationRule tls file (their files,
                // not the configuration's)
                proxy.state().rotate_certificates();
                let now = fingerprint(&files);
                if now != last {
                    tracing::info!("configuration files changed: reloading");
                    last = now;
                    let _ = proxy.reload();
                }
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                proxy.state().reopen_access_log();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
        }
    }
    proxy.drain().await;
    tracing::info!("drained; exiting");
}

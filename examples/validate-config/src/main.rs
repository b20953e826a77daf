//! Loads and validates Istio YAML with `mesh-core`, as `istioctl validate` does, and prints
//! what the compiled snapshot holds.
//!
//! ```sh
//! cargo run -p example-validate-config -- examples/config/canary.yaml
//! ```
use std::process::ExitCode;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: example-validate-config FILE...");
        return ExitCode::from(2);
    }
    match mesh_core::config::load_files(&files) {
        Ok(compiled) => {
            for w in &compiled.warnings {
                eprintln!("{w}");
            }
            let snap = &compiled.snapshot;
            println!(
                "{} resources: {} services, {} virtual services, {} destination rules",
                compiled.resources,
                snap.services.len(),
                snap.virtual_services.len(),
                snap.destination_rules.len()
            );
            for vs in &snap.virtual_services {
                println!(
                    "  VirtualService {}/{} hosts {:?}",
                    vs.namespace, vs.name, vs.hosts
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

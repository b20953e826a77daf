//! `mesh-proxy`, as `cargo run -p mesh-proxy` builds it (the walkthrough uses either).
fn main() -> std::process::ExitCode {
    mesh_proxy::cli::main()
}

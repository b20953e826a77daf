//! The `mesh-proxy` binary: parses the command line and calls the library.
fn main() -> std::process::ExitCode {
    mesh_proxy::cli::main()
}

//! The `mesh-proxy` command line, built inside `mesh-e2e` so that its integration tests can
//! run the real CLI as a child process (`env!("CARGO_BIN_EXE_mesh-proxy-e2e")`). It is
//! exactly `mesh-proxy`'s own `main`: parse the command line and call the library.
fn main() -> std::process::ExitCode {
    mesh_proxy::cli::main()
}

//! The `mesh-proxy` binary: parses the command line and calls the library.
//!
//! The binary (not the library) picks the global allocator: mimalloc (its v2 line: v3 asks
//! for transparent huge pages and doubled idle RSS), through [`alloc::MeshAlloc`].
//! glibc's malloc cost about 10% of the instructions of a proxied request (hyper's 8 KiB read
//! buffers miss its thread cache); mimalloc saves about 2k instructions per request
//! (callgrind). See docs/performance.md.

#[global_allocator]
static GLOBAL: alloc::MeshAlloc = alloc::MeshAlloc;

fn main() -> std::process::ExitCode {
    mesh_proxy::cli::main()
}

#[allow(unsafe_code)] // a global allocator: see the module's docs
mod alloc;

//! The `scp-pep` binary: parse the command line, run it.
#![forbid(unsafe_code)]

/// mimalloc: the decision path allocates many small strings on several threads at once; glibc
/// malloc's arena locks showed up in profiles under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scp_pep::cli::main()
}

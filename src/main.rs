//! The `scp-pep` binary: parse the command line, run it.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    scp_pep::cli::main()
}

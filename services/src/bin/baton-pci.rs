//! The `baton-pci` binary: parses flags and runs Baton's pci service until SIGTERM.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    baton_services::cli::main(baton_services::ServiceKind::Pci)
}

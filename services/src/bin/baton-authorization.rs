//! The `baton-authorization` binary: parses flags and runs Baton's authorization service until SIGTERM.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    baton_services::cli::main(baton_services::ServiceKind::Authorization)
}

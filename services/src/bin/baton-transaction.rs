//! The `baton-transaction` binary: parses flags and runs Baton's transaction service until
//! SIGTERM; `baton-transaction audit [--json]` checks the ledger instead.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    baton_services::cli::main(baton_services::ServiceKind::Transaction)
}

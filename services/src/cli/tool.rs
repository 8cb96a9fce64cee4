//! The one runner of `baton-transaction`'s tools on a ledger: runtime, open, run,
//! close, report, exit code.

use crate::ledger::{Ledger, LedgerError};
use std::future::Future;
use std::process::ExitCode;

/// Runs a tool (`audit`, `prune`) on the ledger at `ledger_url`: opens it, runs `tool`,
/// closes it, and lets `print` report the result and pick the exit code. Exit code 2
/// when the runtime cannot start or the ledger cannot be opened or used (one `error:`
/// line naming the URL without its password). No logging is set up: the report is the
/// output.
pub(super) fn run_on_ledger<T, F, Fut>(
    ledger_url: &str,
    tool: F,
    print: impl FnOnce(T) -> ExitCode,
) -> ExitCode
where
    F: FnOnce(Ledger) -> Fut,
    Fut: Future<Output = Result<T, LedgerError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let ledger = Ledger::open_existing(ledger_url).await?;
        let result = tool(ledger.clone()).await;
        ledger.close().await;
        result
    });
    match result {
        Ok(value) => print(value),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

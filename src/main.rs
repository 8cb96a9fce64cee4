//! The `baton` binary: parse the command line, set up logging, run, map errors to exit
//! codes (2: RabbitMQ unreachable). Everything else lives in the library.

use baton::cli::{self, Cli};
use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // The demo prints its own progress and summary; its components' logs would bury them.
    let default_filter = match cli.command {
        cli::Command::Demo(_) => "warn,sqlx=error",
        _ => "info",
    };
    baton::telemetry::init(cli.common.log_format, default_filter);
    let code = match cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            cli::exit_code_for(&error)
        }
    };
    std::process::exit(code);
}

//! The `baton` binary: parse the command line, set up logging, run, map errors to exit
//! codes (2: RabbitMQ unreachable). Everything else lives in the library.

use baton::cli::{self, Cli};
use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // The demo prints its own progress and summary; its components' logs would bury them.
    let default_filter = match cli.command {
        cli::Command::Demo(_) | cli::Command::Doctor(_) => "warn,sqlx=error",
        _ => "info",
    };
    // The operator tools wait for a queue's lock by asking again while the broker refuses
    // (RESOURCE_LOCKED closes the channel, which lapin logs as an error): expected, and
    // said in the tool's own words.
    let caps: &[(&str, &str)] = match cli.command {
        cli::Command::Dead(_) | cli::Command::Attention(_) => &[("lapin::channel", "off")],
        // Doctor probes queues with passive declares (a missing one closes the channel)
        // and may be refused a login: it says so in its own lines.
        cli::Command::Doctor(_) => &[("lapin", "off"), ("lapin::channels", "off")],
        _ => &[],
    };
    baton_ops::logging::init_with_caps(cli.common.log_format, default_filter, caps);
    let code = match cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            cli::exit_code_for(&error)
        }
    };
    std::process::exit(code);
}

//! The `baton` binary: parse the command line, set up logging, run, map errors to exit
//! codes (2: RabbitMQ unreachable). Everything else lives in the library.

use baton::cli::{self, Cli};
use clap::Parser;

/// Exit code of a process whose reader went away (`baton … | head`): what a shell
/// reports for a tool killed by SIGPIPE (128 + 13).
const EXIT_BROKEN_PIPE: i32 = 141;

/// `println!` panics when stdout is a pipe whose reader is gone (`baton attention show 1
/// | head -3`): Rust ignores SIGPIPE, so the write fails instead of ending the process.
/// A tool whose output nobody reads any more stops quietly, as one killed by SIGPIPE
/// would, whichever subcommand was printing.
fn exit_quietly_on_broken_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("(os error 32)") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default_hook(info);
    }));
}

#[tokio::main]
async fn main() {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    // The demo prints its own progress and summary; its components' logs would bury them.
    let default_filter = match cli.command {
        #[cfg(feature = "dev-tools")]
        cli::Command::Demo(_) => "warn,sqlx=error",
        cli::Command::Doctor(_) => "warn,sqlx=error",
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
    // The tools report every broker failure in their own words (a refused login, an
    // unreachable broker: one line with what to do); lapin's lines about the same
    // failure would bury it. `baton run` keeps them once it runs.
    if !matches!(cli.command, cli::Command::Run(_)) {
        baton_ops::logging::quiet_lapin(true);
    }
    let code = match cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            cli::exit_code_for(&error)
        }
    };
    std::process::exit(code);
}

//! Logging set-up, done once per process by every Baton binary: text or JSON lines on
//! stderr, filtered by `RUST_LOG` (default `info`). Card numbers never reach it: their
//! types print masked, and the lapin targets that print whole message bodies stay capped
//! whatever `RUST_LOG` says, unless it names them ([`baton_contract::mask::log_filter`]).

use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// While set, lapin's own log lines are dropped (see [`quiet_lapin`]).
static LAPIN_QUIET: AtomicBool = AtomicBool::new(false);

/// Set when `RUST_LOG` names lapin: whoever asked for its lines gets them.
static LAPIN_ASKED: AtomicBool = AtomicBool::new(false);

/// Drops (`true`) or lets through again (`false`) lapin's own log lines. A refused login
/// or an unreachable broker at start is reported by the caller in one line with what to
/// do; lapin's ERROR lines about the same failure (the connection closed, its recovery
/// "aborting") would only bury it. Set around a start-up; a running process keeps them.
/// A `RUST_LOG` that names lapin overrides it.
pub fn quiet_lapin(quiet: bool) {
    LAPIN_QUIET.store(quiet, Ordering::Relaxed);
}

/// Log output format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is not set.
/// Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat, default_filter: &str) {
    init_with_caps(format, default_filter, &[]);
}

/// [`init`], with more `(target, level)` caps that hold unless `RUST_LOG` names the
/// target: a command for which a target's messages are expected noise (the operator
/// tools wait for a lock by retrying a declare the broker refuses, which lapin logs as
/// an error on `lapin::channel`).
pub fn init_with_caps(format: LogFormat, default_filter: &str, caps: &[(&str, &str)]) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    if rust_log.as_deref().unwrap_or("").contains("lapin") {
        LAPIN_ASKED.store(true, Ordering::Relaxed);
    }
    let with_caps = |mut directives: String| {
        for (target, level) in caps {
            if !rust_log.as_deref().unwrap_or("").contains(target) {
                directives.push_str(&format!(",{target}={level}"));
            }
        }
        directives
    };
    let filter = EnvFilter::try_new(with_caps(baton_contract::mask::log_filter(
        rust_log.as_deref(),
        default_filter,
    )))
    // An unparsable RUST_LOG falls back to the default.
    .unwrap_or_else(|_| {
        EnvFilter::new(with_caps(baton_contract::mask::log_filter(
            None,
            default_filter,
        )))
    });
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal, never in a log file or a collector.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let quiet = tracing_subscriber::filter::filter_fn(|meta| {
        !(LAPIN_QUIET.load(Ordering::Relaxed)
            && !LAPIN_ASKED.load(Ordering::Relaxed)
            && meta.target().starts_with("lapin"))
    });
    let _ = match format {
        LogFormat::Text => builder.finish().with(quiet).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(quiet)
            .try_init(),
    };
}

//! `baton doctor`'s options.

use clap::Args;
use std::path::PathBuf;

/// Options of `baton doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The workflow file the orchestrators run [default: the built-in workflow]
    #[arg(long, env = "BATON_WORKFLOW", hide_env_values = true)]
    pub workflow: Option<PathBuf>,
    /// Also check this journal is writable and is the orchestrators' (an SQLite file is
    /// never created) [default: not checked]
    #[arg(long, env = "BATON_JOURNAL_URL", hide_env_values = true)]
    pub journal_url: Option<String>,
    /// A service that scales to zero (KEDA): its queue passes with no consumer, as a
    /// waiting command starts one, and is pinged only when it has one (repeat, or
    /// comma-separate in the variable) [default: none]
    #[arg(
        long = "scaled-to-zero",
        env = "BATON_SCALED_TO_ZERO",
        value_name = "SERVICE",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub scaled_to_zero: Vec<String>,
    /// Print the checks as one JSON document
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: crate::broker::AdminArgs,
}

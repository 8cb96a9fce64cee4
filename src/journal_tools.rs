//! Operators' tools on the journal: `baton sagas stuck|finish` and `baton journal prune`.

use crate::journal::Journal;
use baton_contract::mask_card_numbers as masked;
use clap::Args;
use clap::Subcommand;
use std::time::Duration;
use uuid::Uuid;

/// The journal option, shared by `run` and `status`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Saga journal: sqlite://<file> (one machine) or postgres://… (shared by replicas)
    #[arg(long, env = "BATON_JOURNAL_URL", default_value = crate::config::DEFAULT_JOURNAL_URL, hide_env_values = true)]
    pub journal_url: String,
}

/// `baton sagas …`
#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List running sagas whose lease ran out: nobody is driving them. A running
    /// orchestrator's sweeper finishes each within a fifth of its --saga-lease; a saga
    /// listed here for longer means no orchestrator is running on this journal, or it
    /// cannot finish them (see its log)
    Stuck {
        /// Print JSON lines
        #[arg(long)]
        json: bool,
        /// At most this many, oldest lease first
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        #[allow(missing_docs)]
        journal: JournalArgs,
    },
    /// Settle one running saga by hand: its lease is ended now, and the sweeper of a
    /// running orchestrator finishes it (compensations, then `failed`, reason
    /// `abandoned`, its result published). Waits for the result and prints it; exit 0
    /// when the saga has its result, 1 otherwise
    Finish {
        /// The payment id
        payment_id: Uuid,
        /// How long to wait for an orchestrator to finish it
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[command(flatten)]
        #[allow(missing_docs)]
        journal: JournalArgs,
    },
}

/// `baton journal …`
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Delete finished sagas (and their entries) last changed more than --older-than ago.
    /// Running sagas are never deleted, however old
    Prune {
        /// Age of the finished sagas to delete (e.g. 30d, 12h)
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        older_than: Duration,
        #[command(flatten)]
        #[allow(missing_docs)]
        journal: JournalArgs,
    },
}

/// Runs `baton sagas …`; returns the exit code.
pub async fn sagas(command: SagasCommand) -> anyhow::Result<i32> {
    match command {
        SagasCommand::Stuck {
            json,
            limit,
            journal,
        } => {
            let journal = Journal::open_existing(&journal.journal_url).await?;
            let stuck = journal.stuck(limit).await?;
            let running = journal.running().await?;
            journal.close().await;
            if json {
                for saga in &stuck {
                    println!("{}", serde_json::to_string(saga)?);
                }
                return Ok(0);
            }
            println!(
                "{} running, {} whose lease ran out{}",
                running.count,
                stuck.len(),
                if stuck.len() as u32 == limit {
                    " (or more)"
                } else {
                    ""
                }
            );
            if !stuck.is_empty() {
                println!(
                    "{:<36}  {:<24}  {:<24}  {:>6}",
                    "payment", "begun", "lease ran out", "parked"
                );
            }
            for saga in &stuck {
                println!(
                    "{:<36}  {:<24}  {:<24}  {:>6}",
                    saga.payment_id, saga.started_at, saga.lease_until, saga.parked
                );
            }
            Ok(0)
        }
        SagasCommand::Finish {
            payment_id,
            wait,
            journal,
        } => {
            let journal = Journal::open_existing(&journal.journal_url).await?;
            let code = finish(&journal, payment_id, wait).await;
            journal.close().await;
            code
        }
    }
}

async fn finish(journal: &Journal, payment_id: Uuid, wait: Duration) -> anyhow::Result<i32> {
    let Some(record) = journal.load(payment_id).await? else {
        eprintln!("payment {payment_id} is not in the journal");
        return Ok(1);
    };
    if record.result.is_none() {
        if !journal.expire(payment_id).await? {
            eprintln!("payment {payment_id} finished meanwhile");
        } else {
            eprintln!(
                "payment {payment_id}: lease ended; waiting up to {} for an orchestrator's sweeper to finish it",
                humantime::format_duration(wait)
            );
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(record) = journal.load(payment_id).await? {
            if let Some(result) = record.result {
                println!("{}", masked(&serde_json::to_string_pretty(&result)?));
                return Ok(0);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "payment {payment_id} is still running after {}: is an orchestrator running on this \
                 journal (baton run), and can it reach the services? Its log says why it could not \
                 finish the saga",
                humantime::format_duration(wait)
            );
            return Ok(1);
        }
        // A command-line tool watching the journal: nothing to be woken by.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `baton journal …`; returns the exit code.
pub async fn journal(command: JournalCommand) -> anyhow::Result<i32> {
    match command {
        JournalCommand::Prune {
            older_than,
            journal,
        } => {
            let journal = Journal::open_existing(&journal.journal_url).await?;
            let pruned = journal.prune(older_than).await?;
            journal.close().await;
            println!(
                "pruned {} finished sagas ({} entries) last changed more than {} ago; running sagas are kept",
                pruned.sagas,
                pruned.entries,
                humantime::format_duration(older_than)
            );
            Ok(0)
        }
    }
}

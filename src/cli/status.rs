//! `baton status`: the journal's record of one payment.

use super::*;
use clap::Args;
use uuid::Uuid;

/// Options of `baton status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The payment id
    pub payment_id: Uuid,
    /// Print JSON (the same document as GET /payments/<id>)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub journal: JournalArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub no_broker: NoBroker,
    /// Shadows the global --prefix (hidden, refused when given).
    #[arg(long, hide = true, value_parser = refuse_status_prefix)]
    pub prefix: Option<String>,
}

pub(super) fn refuse_status_prefix(_: &str) -> Result<String, String> {
    Err(
        "baton status reads the journal, which holds the payments of every prefix: it \
         takes no --prefix"
            .into(),
    )
}

pub(super) async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let journal = crate::journal::Journal::open_existing(&args.journal.journal_url).await?;
    let record = journal.load(args.payment_id).await?;
    journal.close().await;
    let Some(record) = record else {
        eprintln!(
            "payment {} is not in the journal at {}",
            args.payment_id,
            journal.location()
        );
        return Ok(1);
    };
    // Everything printed is masked: the journal never stores a card number, but a record
    // written before ids were checked for them could hold one in a merchant or customer
    // id, a reason or a detail.
    use baton_contract::mask_card_numbers as masked;
    if args.json {
        println!("{}", masked(&serde_json::to_string_pretty(&record)?));
        return Ok(0);
    }
    println!("payment   {}", record.payment_id);
    println!("status    {}", record.status());
    println!(
        "amount    {} {} (merchant {} settles in {}), card ****{}",
        record.summary.amount.minor,
        record.summary.amount.currency,
        masked(&record.summary.merchant_id),
        record.summary.merchant_currency,
        record.summary.card_last4
    );
    println!(
        "started   {}   updated {}   parked {} times",
        record.started_at, record.updated_at, record.parked
    );
    println!();
    println!(
        "{:<16} {:<11} {:<20} {:>8} {:>9}  recorded at / reason",
        "step", "action", "outcome", "attempts", "ms"
    );
    for entry in &record.entries {
        let outcome = serde_json::to_value(entry.record.outcome)?;
        let mut note = entry.recorded_at.clone();
        if let Some(reason) = &entry.record.reason {
            note.push_str(&format!("  {reason}"));
        }
        if entry.record.degraded {
            note.push_str("  (degraded)");
        }
        if let Some(via) = &entry.record.via {
            note.push_str(&format!("  via {via}"));
        }
        println!(
            "{:<16} {:<11} {:<20} {:>8} {:>9}  {}",
            entry.step,
            serde_json::to_value(entry.action)?.as_str().unwrap_or("?"),
            outcome.as_str().unwrap_or("?"),
            entry.record.attempts,
            entry.record.duration_ms,
            masked(&note)
        );
    }
    if let Some(result) = &record.result {
        println!();
        println!(
            "result    {} {} {}",
            result.status.as_str(),
            masked(result.reason.as_deref().unwrap_or("")),
            result.finished_at
        );
        if let Some(detail) = &result.detail {
            println!("detail    {}", masked(detail));
        }
        if let Some(settlement) = &result.settlement {
            println!("settled   {} {}", settlement.minor, settlement.currency);
        }
    }
    Ok(0)
}

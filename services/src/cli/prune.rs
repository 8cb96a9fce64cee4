//! `baton-transaction prune`: deletes the ledger's old, finished records so it does not
//! grow forever — processed-command records, voided holds, captured holds with their
//! transfer and its ledger lines — and prints what it deleted (or, with `--dry-run`,
//! what it would delete). Exit code 0 on success, 2 when the ledger cannot be opened or
//! written, or the age is below the minimum.
//!
//! It never deletes an open (`held`) hold or the records of its payment's commands, nor
//! anything `audit` reports (a transfer unlike its hold, a payment paid twice, unbalanced
//! lines): the audit of what remains says what it said before. See [`Ledger::prune`].

use crate::ledger::{Pruned, MIN_PRUNE_AGE};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// Prunes the ledger at `ledger_url` of what is older than `older_than` and prints it.
/// Batches already committed when an error stops it stay deleted; the ledger is
/// consistent after each.
pub(super) fn run(
    ledger_url: &str,
    older_than: Duration,
    dry_run: bool,
    as_json: bool,
) -> ExitCode {
    if let Err(problem) = check_age(older_than) {
        eprintln!("error: {problem}");
        return ExitCode::from(2);
    }
    super::tool::run_on_ledger(
        ledger_url,
        |ledger| async move { ledger.prune(older_than, dry_run).await },
        |pruned| {
            if as_json {
                println!("{}", to_json(&pruned, older_than, dry_run));
            } else {
                print!("{}", to_text(&pruned, older_than, dry_run));
            }
            ExitCode::SUCCESS
        },
    )
}

/// `--older-than` must be at least [`MIN_PRUNE_AGE`].
pub(super) fn check_age(older_than: Duration) -> Result<(), String> {
    if older_than < MIN_PRUNE_AGE {
        return Err(format!(
            "--older-than {} is below the minimum of {}: a processed command's record is \
             what keeps a repeated command from acting twice",
            humantime::format_duration(older_than),
            humantime::format_duration(MIN_PRUNE_AGE)
        ));
    }
    Ok(())
}

/// The report for people.
pub(super) fn to_text(pruned: &Pruned, older_than: Duration, dry_run: bool) -> String {
    let verb = if dry_run { "would delete" } else { "deleted" };
    format!(
        "ledger prune, records older than {age}: {verb}\n\
         \x20 processed commands  {}\n\
         \x20 voided holds        {}\n\
         \x20 captured holds      {} (with their transfers: {}, ledger lines: {})\n\
         never deleted: open holds and their payments' command records; transfers the \
         audit reports, and their holds\n",
        pruned.processed_commands,
        pruned.voided_holds,
        pruned.captured_holds,
        pruned.transfers,
        pruned.ledger_entries,
        age = humantime::format_duration(older_than),
    )
}

/// The report for scripts: `{"older_than_seconds", "dry_run", "processed_commands",
/// "voided_holds", "captured_holds", "transfers", "ledger_entries"}`.
pub(super) fn to_json(pruned: &Pruned, older_than: Duration, dry_run: bool) -> Value {
    json!({
        "older_than_seconds": older_than.as_secs(),
        "dry_run": dry_run,
        "processed_commands": pruned.processed_commands,
        "voided_holds": pruned.voided_holds,
        "captured_holds": pruned.captured_holds,
        "transfers": pruned.transfers,
        "ledger_entries": pruned.ledger_entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_below_a_day_are_refused() {
        assert!(check_age(Duration::from_secs(24 * 3600)).is_ok());
        assert!(check_age(crate::ledger::DEFAULT_PRUNE_AGE).is_ok());
        let e = check_age(Duration::from_secs(3600)).unwrap_err();
        assert!(e.contains("below the minimum of 1day"), "{e}");
    }

    #[test]
    fn the_report_says_what_was_deleted_and_what_never_is() {
        let pruned = Pruned {
            processed_commands: 8,
            voided_holds: 1,
            captured_holds: 2,
            transfers: 2,
            ledger_entries: 6,
        };
        let age = crate::ledger::DEFAULT_PRUNE_AGE;
        let text = to_text(&pruned, age, false);
        assert!(text.contains("older than 30days: deleted"), "{text}");
        assert!(text.contains("processed commands  8"), "{text}");
        assert!(text.contains("captured holds      2 (with their transfers: 2, ledger lines: 6)"));
        assert!(text.contains("never deleted: open holds"), "{text}");
        assert!(to_text(&pruned, age, true).contains("would delete"));
        let value = to_json(&pruned, age, true);
        assert_eq!(value["older_than_seconds"], 30 * 24 * 3600);
        assert_eq!(value["dry_run"], true);
        assert_eq!(value["ledger_entries"], 6);
    }
}

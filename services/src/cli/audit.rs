//! `baton-transaction audit`: reads the ledger and says whether the books are sound — no
//! payment paid twice, debits equal to credits in every currency, every transfer exactly
//! what its hold authorized (amount, currency, customer, merchant), no hold open longer
//! than `--max-hold-age` — as text for people or one JSON object for scripts. Exit code
//! 0 when sound, 1 on any of those problems, 2 when the ledger cannot be opened or read.
//!
//! It never changes the books (opening a ledger of an older version upgrades its schema,
//! as any service would) and never creates a ledger: a missing SQLite file, or a database
//! without the ledger's tables, is an error (exit 2) naming what it looked at. The ledger
//! holds no card data to leak. Mismatches name the
//! fields that differ, never their values.

use crate::ledger::Audit;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// Runs the audit of the ledger at `ledger_url` and prints it to stdout; open holds older
/// than `max_hold_age` are stale.
pub(super) fn run(ledger_url: &str, as_json: bool, max_hold_age: Duration) -> ExitCode {
    super::tool::run_on_ledger(
        ledger_url,
        |ledger| async move { ledger.audit_with(max_hold_age).await },
        |audit| {
            if as_json {
                println!("{}", to_json(&audit));
            } else {
                print!("{}", to_text(&audit));
            }
            exit_code(&audit)
        },
    )
}

/// 0 when the books are sound, 1 otherwise. Open holds younger than the maximum hold age
/// are normal (payments in flight) and do not fail the audit; older ones do.
pub(super) fn exit_code(audit: &Audit) -> ExitCode {
    if audit.is_sound() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The JSON report: `{"transfers", "duplicate_transfers": [{"payment_id", "transfers"}],
/// "totals": [{"currency", "debit_minor", "credit_minor"}], "open_holds", "balanced",
/// "hold_mismatches": [{"transfer_id", "payment_id", "hold_id", "fields"}],
/// "max_hold_age_seconds", "stale_holds": [{"hold_id", "payment_id", "age_seconds"}],
/// "sound"}`.
pub(super) fn to_json(audit: &Audit) -> Value {
    json!({
        "transfers": audit.transfers,
        "duplicate_transfers": audit
            .duplicate_transfers
            .iter()
            .map(|(payment_id, transfers)| json!({"payment_id": payment_id, "transfers": transfers}))
            .collect::<Vec<_>>(),
        "totals": audit
            .totals
            .iter()
            .map(|t| json!({
                "currency": t.currency,
                "debit_minor": t.debit_minor,
                "credit_minor": t.credit_minor,
            }))
            .collect::<Vec<_>>(),
        "open_holds": audit.open_holds,
        "balanced": audit.balanced,
        "hold_mismatches": audit
            .hold_mismatches
            .iter()
            .map(|m| json!({
                "transfer_id": m.transfer_id,
                "payment_id": m.payment_id,
                "hold_id": m.hold_id,
                "fields": m.fields,
            }))
            .collect::<Vec<_>>(),
        "max_hold_age_seconds": audit.max_hold_age.as_secs(),
        "stale_holds": audit
            .stale_holds
            .iter()
            .map(|h| json!({
                "hold_id": h.hold_id,
                "payment_id": h.payment_id,
                "age_seconds": h.age.as_secs(),
            }))
            .collect::<Vec<_>>(),
        "sound": audit.is_sound(),
    })
}

/// The report for people, one fact per line.
pub(super) fn to_text(audit: &Audit) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "transfers: {}", audit.transfers);
    let _ = writeln!(out, "open holds: {}", audit.open_holds);
    let max_age = humantime::format_duration(audit.max_hold_age);
    if audit.stale_holds.is_empty() {
        let _ = writeln!(out, "holds open longer than {max_age}: none");
    } else {
        let _ = writeln!(out, "holds open longer than {max_age}:");
        for h in &audit.stale_holds {
            let _ = writeln!(
                out,
                "  hold {} of payment {}: open {}",
                h.hold_id,
                h.payment_id,
                humantime::format_duration(h.age)
            );
        }
    }
    if audit.totals.is_empty() {
        let _ = writeln!(out, "totals: none");
    } else {
        let _ = writeln!(out, "totals (minor units):");
        for t in &audit.totals {
            let mark = if t.debit_minor == t.credit_minor {
                ""
            } else {
                "  UNBALANCED"
            };
            let _ = writeln!(
                out,
                "  {}  debits {}  credits {}{mark}",
                t.currency, t.debit_minor, t.credit_minor
            );
        }
    }
    if audit.duplicate_transfers.is_empty() {
        let _ = writeln!(out, "duplicate transfers: none");
    } else {
        let _ = writeln!(out, "duplicate transfers:");
        for (payment_id, transfers) in &audit.duplicate_transfers {
            let _ = writeln!(out, "  payment {payment_id}: {transfers} transfers");
        }
    }
    if audit.hold_mismatches.is_empty() {
        let _ = writeln!(out, "transfers differing from their hold: none");
    } else {
        let _ = writeln!(out, "transfers differing from their hold:");
        for m in &audit.hold_mismatches {
            let _ = writeln!(
                out,
                "  transfer {} of payment {} (hold {}): {}",
                m.transfer_id,
                m.payment_id,
                m.hold_id,
                m.fields.join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "debits equal credits: {}",
        if audit.balanced { "yes" } else { "NO" }
    );
    let verdict = if audit.is_sound() {
        "OK"
    } else {
        "PROBLEMS FOUND"
    };
    let _ = writeln!(out, "audit: {verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CurrencyTotal, StaleHold, TransferMismatch, DEFAULT_MAX_HOLD_AGE};

    fn audit(duplicates: Vec<(String, u64)>, credit: i64) -> Audit {
        Audit {
            transfers: 3,
            duplicate_transfers: duplicates,
            totals: vec![CurrencyTotal {
                currency: "EUR".into(),
                debit_minor: 1999,
                credit_minor: credit,
            }],
            balanced: credit == 1999,
            open_holds: 1,
            hold_mismatches: vec![],
            max_hold_age: DEFAULT_MAX_HOLD_AGE,
            stale_holds: vec![],
        }
    }

    #[test]
    fn sound_books_exit_0_and_report_every_field() {
        let sound = audit(vec![], 1999);
        assert_eq!(exit_code(&sound), ExitCode::SUCCESS);
        assert_eq!(
            to_json(&sound),
            json!({"transfers": 3, "duplicate_transfers": [],
                   "totals": [{"currency": "EUR", "debit_minor": 1999, "credit_minor": 1999}],
                   "open_holds": 1, "balanced": true, "hold_mismatches": [],
                   "max_hold_age_seconds": 3600, "stale_holds": [], "sound": true})
        );
        let text = to_text(&sound);
        assert!(text.contains("EUR  debits 1999  credits 1999\n"), "{text}");
        assert!(text.contains("holds open longer than 1h: none\n"), "{text}");
        assert!(
            text.contains("transfers differing from their hold: none\n"),
            "{text}"
        );
        assert!(text.ends_with("audit: OK\n"), "{text}");
    }

    #[test]
    fn duplicates_and_imbalances_exit_1() {
        let duplicated = audit(vec![("p1".into(), 2)], 1999);
        assert_eq!(exit_code(&duplicated), ExitCode::from(1));
        assert_eq!(
            to_json(&duplicated)["duplicate_transfers"],
            json!([{"payment_id": "p1", "transfers": 2}])
        );
        assert!(to_text(&duplicated).contains("payment p1: 2 transfers"));
        let unbalanced = audit(vec![], 5);
        assert_eq!(exit_code(&unbalanced), ExitCode::from(1));
        let text = to_text(&unbalanced);
        assert!(text.contains("UNBALANCED") && text.contains("debits equal credits: NO"));
    }

    #[test]
    fn transfers_differing_from_their_hold_and_stale_holds_exit_1() {
        let mut forged = audit(vec![], 1999);
        forged.hold_mismatches = vec![TransferMismatch {
            transfer_id: "t1".into(),
            payment_id: "p1".into(),
            hold_id: "h1".into(),
            fields: vec!["amount".into(), "customer_id".into()],
        }];
        assert_eq!(exit_code(&forged), ExitCode::from(1));
        let report = to_json(&forged);
        assert_eq!(
            report["hold_mismatches"],
            json!([{"transfer_id": "t1", "payment_id": "p1", "hold_id": "h1",
                    "fields": ["amount", "customer_id"]}])
        );
        assert_eq!(report["sound"], false);
        let text = to_text(&forged);
        assert!(
            text.contains("  transfer t1 of payment p1 (hold h1): amount, customer_id\n"),
            "{text}"
        );
        assert!(text.ends_with("audit: PROBLEMS FOUND\n"), "{text}");

        let mut stale = audit(vec![], 1999);
        stale.max_hold_age = Duration::from_secs(1800);
        stale.stale_holds = vec![StaleHold {
            hold_id: "h2".into(),
            payment_id: "p2".into(),
            age: Duration::from_secs(7260),
        }];
        assert_eq!(exit_code(&stale), ExitCode::from(1));
        let report = to_json(&stale);
        assert_eq!(report["max_hold_age_seconds"], 1800);
        assert_eq!(
            report["stale_holds"],
            json!([{"hold_id": "h2", "payment_id": "p2", "age_seconds": 7260}])
        );
        let text = to_text(&stale);
        assert!(text.contains("holds open longer than 30m:\n"), "{text}");
        assert!(
            text.contains("  hold h2 of payment p2: open 2h 1m\n"),
            "{text}"
        );
        assert!(text.ends_with("audit: PROBLEMS FOUND\n"), "{text}");
    }
}

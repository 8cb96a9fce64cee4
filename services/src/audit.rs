//! `baton-transaction audit`: reads the ledger and says whether the books are sound — no
//! payment paid twice, debits equal to credits in every currency — as text for people or
//! one JSON object for scripts. Exit code 0 when sound, 1 on a duplicate transfer or an
//! imbalance, 2 when the ledger cannot be opened or read.
//!
//! Read-only: it never changes the ledger, and the ledger holds no card data to leak.

use crate::ledger::{Audit, Ledger};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::process::ExitCode;

/// Runs the audit of the ledger at `ledger_url` and prints it to stdout.
pub fn run(ledger_url: &str, as_json: bool) -> ExitCode {
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
    let audit = runtime.block_on(async {
        let ledger = Ledger::open(ledger_url).await?;
        let audit = ledger.audit().await;
        ledger.close().await;
        audit
    });
    match audit {
        Ok(audit) => {
            if as_json {
                println!("{}", to_json(&audit));
            } else {
                print!("{}", to_text(&audit));
            }
            exit_code(&audit)
        }
        Err(e) => {
            // The error names the URL without its password.
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// 0 when the books are sound, 1 otherwise. Open holds are normal (payments in flight,
/// abandoned authorizations) and do not fail the audit.
pub fn exit_code(audit: &Audit) -> ExitCode {
    if audit.is_sound() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The JSON report: `{"transfers", "duplicate_transfers": [{"payment_id", "transfers"}],
/// "totals": [{"currency", "debit_minor", "credit_minor"}], "open_holds", "balanced"}`.
pub fn to_json(audit: &Audit) -> Value {
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
    })
}

/// The report for people, one fact per line.
pub fn to_text(audit: &Audit) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "transfers: {}", audit.transfers);
    let _ = writeln!(out, "open holds: {}", audit.open_holds);
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
    use crate::ledger::CurrencyTotal;

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
                   "open_holds": 1, "balanced": true})
        );
        let text = to_text(&sound);
        assert!(text.contains("EUR  debits 1999  credits 1999\n"), "{text}");
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
}

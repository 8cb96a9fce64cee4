//! The transaction service: captures authorization's hold and moves the money — one
//! transfer, balanced double-entry lines, converted with a fixed FX table.
//!
//! | service | input | outcome |
//! |---|---|---|
//! | transaction | no `context.authorization.hold_id` | declined `hold_missing` |
//! | transaction | amount or merchant currency not in the FX table | declined `currency_not_supported` |
//! | transaction | hold unknown (or of another payment) | declined `hold_not_found` |
//! | transaction | hold voided | declined `hold_voided` |
//! | transaction | hold already captured by another command | declined `hold_captured` |
//! | transaction | amount, currency, `customer_id` or `merchant_id` differs from the hold's | declined `hold_mismatch` (fields named; nothing moved, hold stays held) |
//! | transaction | otherwise | approved: hold captured, one transfer, balanced entries; data `{"transfer_id", "settlement": {"minor", "currency"}, "fx_rate_micro"}` |
//! | transaction (compensate) | — | declined `not_compensable` |
//!
//! FX: rates are units of a currency per 1 EUR in millionths, with the currency's
//! minor-unit exponent; `converted = round_half_up(amount_minor * per_eur[dst] *
//! 10^exp_dst / (per_eur[src] * 10^exp_src))`, in `u128`, never floats.

use crate::ledger::{Answer, Capture, Conversion, Entry, Ledger, Settlement};
use crate::ledgered::Ledgered;
use crate::reply::Decline;
use baton_contract::{Action, Command, Currency, Money, Reply};
use baton_worker::Handler;
use serde_json::{Map, Value};

/// One FX table row: units of the currency per 1 EUR in millionths, and the number of
/// decimals of its minor unit.
struct Rate {
    code: &'static str,
    per_eur_micro: u128,
    exponent: u32,
}

/// Fixed reference rates: deterministic, so tests and demos give the same settlements.
const FX_TABLE: &[Rate] = &[
    Rate {
        code: "EUR",
        per_eur_micro: 1_000_000,
        exponent: 2,
    },
    Rate {
        code: "USD",
        per_eur_micro: 1_075_500,
        exponent: 2,
    },
    Rate {
        code: "GBP",
        per_eur_micro: 857_000,
        exponent: 2,
    },
    Rate {
        code: "CHF",
        per_eur_micro: 940_000,
        exponent: 2,
    },
    Rate {
        code: "JPY",
        per_eur_micro: 161_500_000,
        exponent: 0,
    },
    Rate {
        code: "SEK",
        per_eur_micro: 11_250_000,
        exponent: 2,
    },
    Rate {
        code: "DKK",
        per_eur_micro: 7_460_000,
        exponent: 2,
    },
    Rate {
        code: "NOK",
        per_eur_micro: 11_500_000,
        exponent: 2,
    },
    Rate {
        code: "PLN",
        per_eur_micro: 4_320_000,
        exponent: 2,
    },
    Rate {
        code: "CAD",
        per_eur_micro: 1_470_000,
        exponent: 2,
    },
    Rate {
        code: "AUD",
        per_eur_micro: 1_630_000,
        exponent: 2,
    },
];

fn rate(currency: Currency) -> Option<&'static Rate> {
    FX_TABLE.iter().find(|r| r.code == currency.as_str())
}

/// `round_half_up(numerator / denominator)` for non-negative integers.
fn div_round_half_up(numerator: u128, denominator: u128) -> u128 {
    (2 * numerator + denominator) / (2 * denominator)
}

/// Converts `amount` into `to` with the fixed FX table.
pub fn convert(amount: Money, to: Currency) -> Result<Conversion, Decline> {
    let unsupported = |c: Currency| {
        Decline::new(
            "currency_not_supported",
            format!("currency {c} is not in the FX table"),
        )
    };
    let src = rate(amount.currency).ok_or_else(|| unsupported(amount.currency))?;
    let dst = rate(to).ok_or_else(|| unsupported(to))?;
    let numerator = u128::from(amount.minor) * dst.per_eur_micro * 10u128.pow(dst.exponent);
    let denominator = src.per_eur_micro * 10u128.pow(src.exponent);
    let minor = u64::try_from(div_round_half_up(numerator, denominator))
        .map_err(|_| Decline::new("amount_too_large", "the converted amount does not fit"))?;
    let fx_rate_micro = u64::try_from(div_round_half_up(
        dst.per_eur_micro * 1_000_000,
        src.per_eur_micro,
    ))
    .unwrap_or(u64::MAX);
    Ok(Conversion {
        settlement: Money {
            minor,
            currency: to,
        },
        fx_rate_micro,
    })
}

/// The double-entry lines of a transfer: balanced per currency. Across currencies the
/// money passes through the `fx:<currency>` accounts.
pub fn transfer_entries(
    customer_id: &str,
    merchant_id: &str,
    amount: Money,
    settlement: Money,
) -> Vec<Entry> {
    let line = |account: String, currency, debit_minor, credit_minor| Entry {
        account,
        currency,
        debit_minor,
        credit_minor,
    };
    let customer = format!("customer:{customer_id}");
    let merchant = format!("merchant:{merchant_id}");
    if amount.currency == settlement.currency {
        return vec![
            line(customer, amount.currency, amount.minor, 0),
            line(merchant, amount.currency, 0, amount.minor),
        ];
    }
    vec![
        line(customer, amount.currency, amount.minor, 0),
        line(
            format!("fx:{}", amount.currency),
            amount.currency,
            0,
            amount.minor,
        ),
        line(
            format!("fx:{}", settlement.currency),
            settlement.currency,
            settlement.minor,
            0,
        ),
        line(merchant, settlement.currency, 0, settlement.minor),
    ]
}

/// What a capture moves, by the rules: the conversion into the merchant's currency and
/// the balanced lines of the transfer; or why not (the ledger stores the decline).
pub fn settle(capture: &Capture) -> Result<Settlement, Decline> {
    let conversion = convert(capture.amount, capture.settlement_currency)?;
    let entries = transfer_entries(
        &capture.customer_id,
        &capture.merchant_id,
        capture.amount,
        conversion.settlement,
    );
    Ok(Settlement {
        conversion,
        entries,
    })
}

/// The hold id authorization gave: `context.authorization.hold_id`, or else the
/// `hold_id` of any earlier step (a workflow may name the authorization step otherwise).
fn hold_id(context: &Map<String, Value>) -> Option<String> {
    let of = |step: &Value| step.get("hold_id")?.as_str().map(str::to_owned);
    context
        .get("authorization")
        .and_then(of)
        .or_else(|| context.values().find_map(of))
}

/// The transaction service's handler: captures in its ledger.
#[derive(Clone, Debug)]
pub struct Transaction {
    ledger: Ledgered,
}

impl Transaction {
    /// Transaction on `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self {
            ledger: Ledgered::new(ledger, "transaction"),
        }
    }
}

impl Handler for Transaction {
    async fn answer(&self, command: &Command) -> Answer {
        if let Some(reply) = self.ledger.mismatch(command) {
            return Answer::fresh(reply);
        }
        match command.action {
            Action::Ping => Answer::fresh(self.ping(&command.command_id)),
            Action::Execute => {
                let Some(hold_id) = hold_id(&command.context) else {
                    return Answer::fresh(Reply::declined(
                        &command.command_id,
                        "hold_missing",
                        "the command's context has no authorization.hold_id: the \
                         authorization step must run (and approve) before transaction",
                    ));
                };
                let payment = &command.payment;
                let capture = Capture {
                    payment_id: command.payment_id,
                    hold_id,
                    customer_id: payment.customer_id.clone(),
                    merchant_id: payment.merchant_id.clone(),
                    amount: payment.amount,
                    settlement_currency: payment.merchant_currency,
                };
                let settlement = settle(&capture);
                let stored = self
                    .ledger
                    .ledger
                    .capture(&command.command_id, &capture, settlement)
                    .await;
                Ledgered::or_unavailable(command, stored)
            }
            Action::Compensate => Answer::fresh(Reply::declined(
                &command.command_id,
                "not_compensable",
                "a transfer cannot be compensated: refund it instead",
            )),
        }
    }

    fn ping(&self, command_id: &str) -> Reply {
        self.ledger.ping(command_id)
    }

    fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        self.ledger.register_metrics(registry)
    }

    async fn close(&self) {
        self.ledger.ledger.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn money(minor: u64, code: &str) -> Money {
        Money {
            minor,
            currency: Currency::parse(code).unwrap(),
        }
    }

    #[test]
    fn fx_rounds_half_up_in_integers() {
        let c = convert(money(1999, "EUR"), Currency::parse("USD").unwrap()).unwrap();
        assert_eq!(c.settlement, money(2150, "USD"));
        assert_eq!(c.fx_rate_micro, 1_075_500);
        // JPY has no minor unit: 10.00 EUR = 1615 JPY.
        let c = convert(money(1000, "EUR"), Currency::parse("JPY").unwrap()).unwrap();
        assert_eq!(c.settlement, money(1615, "JPY"));
        // And back: 1615 JPY = 10.00 EUR exactly.
        let c = convert(money(1615, "JPY"), Currency::parse("EUR").unwrap()).unwrap();
        assert_eq!(c.settlement, money(1000, "EUR"));
        // 1 JPY = 0.619… EUR cents → 1 cent (half-up); 0.5 exactly rounds up.
        let c = convert(money(1, "JPY"), Currency::parse("EUR").unwrap()).unwrap();
        assert_eq!(c.settlement.minor, 1);
        assert_eq!(div_round_half_up(5, 10), 1);
        assert_eq!(div_round_half_up(4, 10), 0);
        assert_eq!(div_round_half_up(15, 10), 2);
        // Same currency: unchanged.
        let c = convert(money(1999, "GBP"), Currency::parse("GBP").unwrap()).unwrap();
        assert_eq!(
            (c.settlement, c.fx_rate_micro),
            (money(1999, "GBP"), 1_000_000)
        );
    }

    #[test]
    fn unknown_currencies_are_declined() {
        let usd = Currency::parse("USD").unwrap();
        let xxx = Currency::parse("XXX").unwrap();
        assert_eq!(
            convert(money(1, "XXX"), usd).unwrap_err().reason,
            "currency_not_supported"
        );
        assert_eq!(
            convert(money(1, "EUR"), xxx).unwrap_err().reason,
            "currency_not_supported"
        );
    }

    #[test]
    fn transfer_entries_balance_per_currency() {
        let cases = [
            (money(1999, "EUR"), money(1999, "EUR"), 2),
            (money(1999, "EUR"), money(2150, "USD"), 4),
        ];
        for (amount, settlement, lines) in cases {
            let entries = transfer_entries("c-42", "m-1001", amount, settlement);
            assert_eq!(entries.len(), lines);
            let mut totals: BTreeMap<Currency, (u64, u64)> = BTreeMap::new();
            for e in &entries {
                let t = totals.entry(e.currency).or_default();
                t.0 += e.debit_minor;
                t.1 += e.credit_minor;
            }
            for (currency, (debit, credit)) in totals {
                assert_eq!(debit, credit, "{currency} unbalanced");
            }
            assert_eq!(entries[0].account, "customer:c-42");
            assert_eq!(entries[0].debit_minor, amount.minor);
            let last = entries.last().unwrap();
            assert_eq!(last.account, "merchant:m-1001");
            assert_eq!(
                (last.credit_minor, last.currency),
                (settlement.minor, settlement.currency)
            );
        }
    }
}

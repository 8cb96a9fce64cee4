//! The business rules of the four reference services, as pure functions: no broker, no
//! database, no clock (the current month is passed in), so every rule is unit-tested.
//!
//! These services are *reference* implementations that make the orchestrator observable
//! end to end with well-known test cards; they are not a real card processor.
//!
//! | service | input | outcome |
//! |---|---|---|
//! | authorization | `payment.card.number` absent (step lacks `card = "number"`) | declined `card_number_missing` |
//! | authorization | card number fails the Luhn check (or is not 12–19 digits) | declined `invalid_card` |
//! | authorization | `4000000000000002` | declined `card_declined` |
//! | authorization | `4000000000009995` | declined `insufficient_funds` |
//! | authorization | expiry `MM/YY` before the current UTC month (or unreadable) | declined `expired_card` |
//! | authorization | anything else | approved, hold placed, data `{"hold_id": "<uuid>"}` |
//! | authorization (compensate) | hold held | approved `{"voided": true}` (hold → voided) |
//! | authorization (compensate) | execute never processed | approved `{"voided": false}`; a later execute is declined `voided_before_authorization` |
//! | authorization (compensate) | execute was declined (no hold) | approved `{"voided": false}` |
//! | authorization (compensate) | hold already captured | declined `hold_captured` |
//! | risk | `payment.card.fingerprint` absent (step lacks `card = "fingerprint"`) | declined `card_fingerprint_missing` |
//! | risk | fingerprint not `<key_id>:<64 hex>` | declined `card_fingerprint_invalid` |
//! | risk | fingerprint made with a key this service's key file lacks | declined `card_key_unknown` |
//! | risk | fingerprint of `4100000000000019` under any of its keys | declined `high_risk` |
//! | risk | fingerprint of `4000000000003220` | approved `{"score": 85}` (elevated: a workflow may ask for 3-D Secure) |
//! | risk | anything else | approved `{"score": 10}` |
//! | pci | `merchant_id` starts with `noncompliant-` | declined `merchant_not_compliant` |
//! | pci | anything else | approved |
//! | risk, pci (compensate) | — | approved (nothing to undo) |
//! | transaction | no `context.authorization.hold_id` | declined `hold_missing` |
//! | transaction | amount or merchant currency not in the FX table | declined `currency_not_supported` |
//! | transaction | hold unknown (or of another payment) | declined `hold_not_found` |
//! | transaction | hold voided | declined `hold_voided` |
//! | transaction | hold already captured by another command | declined `hold_captured` |
//! | transaction | amount, currency, `customer_id` or `merchant_id` differs from the hold's | declined `hold_mismatch` (fields named; nothing moved, hold stays held) |
//! | transaction | otherwise | approved: hold captured, one transfer, balanced entries; data `{"transfer_id", "settlement": {"minor", "currency"}, "fx_rate_micro"}` |
//! | transaction (compensate) | — | declined `not_compensable` |
//!
//! Risk never sees a card number: it knows its high-risk cards by their fingerprints
//! ([`RiskRules`]), computed at start under every key of its card key file.
//!
//! Good cards never run out of funds. Every approved or declined answer of authorization
//! and transaction is stored with its `command_id`: a repeated command gets the same reply.
//!
//! FX: rates are units of a currency per 1 EUR in millionths, with the currency's
//! minor-unit exponent; `converted = round_half_up(amount_minor * per_eur[dst] *
//! 10^exp_dst / (per_eur[src] * 10^exp_src))`, in `u128`, never floats.

use baton_contract::card_key::fingerprint_key_id;
use baton_contract::{CardKeys, CardView, Currency, Money};
use std::collections::HashSet;
use std::fmt;
use std::time::SystemTime;

/// Why a rule declined: a machine-readable reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decline {
    /// Reason code (`card_declined`).
    pub reason: &'static str,
    /// Human-readable detail; never contains a card number.
    pub detail: String,
}

impl Decline {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Test card that the issuer declines.
pub const CARD_DECLINED: &str = "4000000000000002";
/// Test card without enough funds.
pub const CARD_INSUFFICIENT_FUNDS: &str = "4000000000009995";
/// Test card the risk service declines.
pub const CARD_HIGH_RISK: &str = "4100000000000019";
/// Test card the risk service approves with an elevated score (85; others get 10).
pub const CARD_ELEVATED_RISK: &str = "4000000000003220";
/// The score risk gives a card it approves, in its reply's `data.score`.
pub const SCORE_ELEVATED: u32 = 85;
/// The score of any other card it approves.
pub const SCORE_LOW: u32 = 10;
/// Merchant ids with this prefix fail the PCI check.
pub const NONCOMPLIANT_MERCHANT_PREFIX: &str = "noncompliant-";

/// A calendar month, `(year, month 1–12)`, ordered chronologically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct YearMonth {
    /// Full year (2026).
    pub year: u32,
    /// Month, 1–12.
    pub month: u32,
}

impl YearMonth {
    /// The current month in UTC, from the system clock.
    pub fn now_utc() -> Self {
        // humantime formats `2026-11-26T04:00:00Z`: always UTC, fixed positions.
        let text = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let year = text.get(0..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
        let month = text.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
        Self { year, month }
    }
}

/// `MM/YY` → the month the card expires at the end of; `None` if unreadable. The
/// contract's parser ([`baton_contract::parse_expiry`]), the one request validation uses.
pub fn parse_expiry(expiry: &str) -> Option<YearMonth> {
    baton_contract::parse_expiry(expiry).map(|(month, year)| YearMonth { year, month })
}

/// The Luhn (mod 10) check over 12–19 ASCII digits (the contract's one Luhn check, with
/// the card number's length rule).
pub fn luhn_valid(number: &str) -> bool {
    (12..=19).contains(&number.len()) && baton_contract::mask::luhn_valid(number)
}

fn missing_number(step: &str) -> Decline {
    Decline::new(
        "card_number_missing",
        format!(
            "the command carries no card number: set `card = \"number\"` for step \
             `{step}` in the workflow"
        ),
    )
}

/// Authorization: whether the card may be charged this month (`now`).
pub fn authorize(step: &str, card: &CardView, now: YearMonth) -> Result<(), Decline> {
    let Some(number) = card.number.as_ref() else {
        return Err(missing_number(step));
    };
    // The full number is compared, never logged or copied into a detail.
    let digits = number.reveal();
    if !luhn_valid(digits) {
        return Err(Decline::new(
            "invalid_card",
            format!("card {} fails the Luhn check", number.masked()),
        ));
    }
    if digits == CARD_DECLINED {
        return Err(Decline::new(
            "card_declined",
            "the issuer declined the card",
        ));
    }
    if digits == CARD_INSUFFICIENT_FUNDS {
        return Err(Decline::new(
            "insufficient_funds",
            "the card has insufficient funds",
        ));
    }
    match parse_expiry(&card.expiry) {
        Some(expires) if expires >= now => Ok(()),
        Some(_) => Err(Decline::new(
            "expired_card",
            format!("the card expired at the end of {}", card.expiry),
        )),
        None => Err(Decline::new(
            "expired_card",
            "the card expiry is not MM/YY, so it cannot be valid",
        )),
    }
}

/// The risk rules: the high-risk cards known by their fingerprints under every card key
/// the service holds, so a command's fingerprint made with any of them (the old key
/// during a rotation included) is recognised. Built once at start; the numbers
/// themselves are not kept.
#[derive(Clone)]
pub struct RiskRules {
    keys: CardKeys,
    high_risk: HashSet<String>,
    /// Approved with [`SCORE_ELEVATED`].
    elevated: HashSet<String>,
}

impl fmt::Debug for RiskRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RiskRules")
            .field("keys", &self.keys)
            .field("high_risk_cards", &self.high_risk.len())
            .finish()
    }
}

impl RiskRules {
    /// The rules with the high-risk test card, fingerprinted under each of `keys`.
    pub fn new(keys: CardKeys) -> Self {
        let high_risk = [CARD_HIGH_RISK]
            .iter()
            .flat_map(|number| keys.fingerprints(number))
            .collect();
        let elevated = keys.fingerprints(CARD_ELEVATED_RISK).into_iter().collect();
        Self {
            keys,
            high_risk,
            elevated,
        }
    }

    /// The score of a card [`RiskRules::assess`] approved: [`SCORE_ELEVATED`] for the
    /// elevated-risk test card, else [`SCORE_LOW`].
    pub fn score(&self, card: &CardView) -> u32 {
        match card.fingerprint.as_deref() {
            Some(f) if self.elevated.contains(f) => SCORE_ELEVATED,
            _ => SCORE_LOW,
        }
    }

    /// Risk: declines the high-risk test card, by the command's fingerprint.
    pub fn assess(&self, step: &str, card: &CardView) -> Result<(), Decline> {
        let Some(fingerprint) = card.fingerprint.as_deref() else {
            return Err(Decline::new(
                "card_fingerprint_missing",
                format!(
                    "the command carries no card fingerprint: set `card = \"fingerprint\"` \
                     for step `{step}` in the workflow"
                ),
            ));
        };
        let Some(key_id) = fingerprint_key_id(fingerprint) else {
            return Err(Decline::new(
                "card_fingerprint_invalid",
                "the card fingerprint is not `<key_id>:<64 hex digits>`",
            ));
        };
        if !self.keys.knows(key_id) {
            return Err(Decline::new(
                "card_key_unknown",
                format!(
                    "the card fingerprint was made with card key {key_id:?}, which this risk \
                     service does not hold: give it the orchestrator's card key file \
                     (--card-key-file); during a rotation add the new key to risk first"
                ),
            ));
        }
        if self.high_risk.contains(fingerprint) {
            return Err(Decline::new("high_risk", "the risk score is too high"));
        }
        Ok(())
    }
}

/// PCI compliance: declines merchants flagged non-compliant.
pub fn check_pci(merchant_id: &str) -> Result<(), Decline> {
    if merchant_id.starts_with(NONCOMPLIANT_MERCHANT_PREFIX) {
        return Err(Decline::new(
            "merchant_not_compliant",
            "the merchant is not PCI DSS compliant",
        ));
    }
    Ok(())
}

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

/// The result of converting an amount for settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// What the merchant receives.
    pub settlement: Money,
    /// Units of the settlement currency per unit of the amount's, in millionths.
    pub fx_rate_micro: u64,
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

/// One double-entry line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `customer:<id>`, `merchant:<id>` or `fx:<currency>`.
    pub account: String,
    /// Currency of the line.
    pub currency: Currency,
    /// Debit, minor units.
    pub debit_minor: u64,
    /// Credit, minor units.
    pub credit_minor: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_contract::CardNumber;
    use std::collections::BTreeMap;

    const NOW: YearMonth = YearMonth {
        year: 2026,
        month: 11,
    };

    fn card(number: Option<&str>, expiry: &str) -> CardView {
        CardView {
            number: number.map(CardNumber::new),
            fingerprint: None,
            last4: number
                .map(|n| n[n.len() - 4..].to_owned())
                .unwrap_or_default(),
            expiry: expiry.into(),
        }
    }

    fn money(minor: u64, code: &str) -> Money {
        Money {
            minor,
            currency: Currency::parse(code).unwrap(),
        }
    }

    fn reason(result: Result<(), Decline>) -> &'static str {
        result.err().map(|d| d.reason).unwrap_or("approved")
    }

    #[test]
    fn luhn_accepts_valid_and_refuses_invalid_numbers() {
        for good in [
            "4242424242424242",
            CARD_DECLINED,
            CARD_INSUFFICIENT_FUNDS,
            CARD_HIGH_RISK,
            "5555555555554444",
            "378282246310005",
        ] {
            assert!(luhn_valid(good), "{good} should pass Luhn");
        }
        for bad in [
            "4242424242424241",
            "1234567890123",
            "42424242424a4242",
            "4242",
            "",
        ] {
            assert!(!luhn_valid(bad), "{bad} should fail Luhn");
        }
    }

    #[test]
    fn each_test_card_gets_its_documented_answer() {
        let cases = [
            (Some("4242424242424242"), "12/30", "approved"),
            (Some("4242424242424241"), "12/30", "invalid_card"),
            (Some(CARD_DECLINED), "12/30", "card_declined"),
            (Some(CARD_INSUFFICIENT_FUNDS), "12/30", "insufficient_funds"),
            (Some(CARD_HIGH_RISK), "12/30", "approved"),
            (None, "12/30", "card_number_missing"),
        ];
        for (number, expiry, expected) in cases {
            assert_eq!(
                reason(authorize("authorization", &card(number, expiry), NOW)),
                expected,
                "{number:?}"
            );
        }
    }

    #[test]
    fn expiry_is_read_by_the_contracts_one_parser() {
        for text in ["12/30", "01/00", "+1/+9", "+1/30", "1/30", "13/30", "12/3x"] {
            assert_eq!(
                parse_expiry(text).map(|ym| (ym.month, ym.year)),
                baton_contract::parse_expiry(text),
                "{text}"
            );
        }
        assert_eq!(parse_expiry("+1/30"), None);
    }

    #[test]
    fn a_card_is_valid_through_its_expiry_month() {
        let good = Some("4242424242424242");
        assert_eq!(
            reason(authorize("a", &card(good, "11/26"), NOW)),
            "approved"
        );
        assert_eq!(
            reason(authorize("a", &card(good, "10/26"), NOW)),
            "expired_card"
        );
        assert_eq!(
            reason(authorize("a", &card(good, "12/25"), NOW)),
            "expired_card"
        );
        assert_eq!(
            reason(authorize("a", &card(good, "01/27"), NOW)),
            "approved"
        );
        assert_eq!(
            reason(authorize("a", &card(good, "13/30"), NOW)),
            "expired_card"
        );
        // The real clock: a card expiring in 2099 is good today.
        assert!(authorize("a", &card(good, "12/99"), YearMonth::now_utc()).is_ok());
        assert!(YearMonth::now_utc().year >= 2025);
    }

    #[test]
    fn the_missing_number_detail_tells_the_operator_what_to_set() {
        let d = authorize("auth-eu", &card(None, "12/30"), NOW).unwrap_err();
        assert!(d.detail.contains("card = \"number\""), "{}", d.detail);
        assert!(d.detail.contains("auth-eu"));
    }

    #[test]
    fn declines_never_carry_the_card_number() {
        let d = authorize("a", &card(Some("4242424242424241"), "12/30"), NOW).unwrap_err();
        assert!(!d.detail.contains("4242424242424241"), "{}", d.detail);
    }

    #[test]
    fn risk_and_pci_rules() {
        let keys = CardKeys::generate("k1");
        let rules = RiskRules::new(keys.clone());
        let by_fingerprint = |fingerprint: Option<String>| CardView {
            number: None,
            fingerprint,
            last4: "0019".into(),
            expiry: "12/30".into(),
        };
        let assess = |card: CardView| reason(rules.assess("risk", &card));
        assert_eq!(
            assess(by_fingerprint(Some(keys.fingerprint(CARD_HIGH_RISK)))),
            "high_risk"
        );
        assert_eq!(
            assess(by_fingerprint(Some(keys.fingerprint("4242424242424242")))),
            "approved"
        );
        let elevated = by_fingerprint(Some(keys.fingerprint(CARD_ELEVATED_RISK)));
        assert_eq!(assess(elevated.clone()), "approved");
        assert_eq!(rules.score(&elevated), SCORE_ELEVATED);
        assert_eq!(
            rules.score(&by_fingerprint(Some(keys.fingerprint("4242424242424242")))),
            SCORE_LOW
        );
        // The number alone is not looked at: risk works on fingerprints only.
        assert_eq!(
            assess(card(Some(CARD_HIGH_RISK), "12/30")),
            "card_fingerprint_missing"
        );
        let other = CardKeys::generate("k9");
        assert_eq!(
            assess(by_fingerprint(Some(other.fingerprint(CARD_HIGH_RISK)))),
            "card_key_unknown"
        );
        assert_eq!(
            assess(by_fingerprint(Some("k1:not-hex".into()))),
            "card_fingerprint_invalid"
        );
        let missing = rules.assess("risk-eu", &card(None, "12/30")).unwrap_err();
        assert!(
            missing.detail.contains("card = \"fingerprint\"") && missing.detail.contains("risk-eu"),
            "{}",
            missing.detail
        );
        assert!(!format!("{rules:?}").contains(&keys.fingerprint(CARD_HIGH_RISK)));
        assert_eq!(
            reason(check_pci("noncompliant-7")),
            "merchant_not_compliant"
        );
        assert_eq!(reason(check_pci("m-1001")), "approved");
        assert_eq!(reason(check_pci("compliant-noncompliant-")), "approved");
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

    #[test]
    fn a_rotated_risk_service_still_declines_a_fingerprint_made_with_the_old_key() {
        let old_line = CardKeys::new_key_line("k1");
        let old = CardKeys::parse(&old_line, "old").unwrap();
        // Rotation: the new key on top, the old one second.
        let rotated_text = format!("{}{old_line}", CardKeys::new_key_line("k2"));
        let rotated = RiskRules::new(CardKeys::parse(&rotated_text, "rotated").unwrap());
        let new = CardKeys::parse(&rotated_text, "orchestrator").unwrap();
        for keys in [&old, &new] {
            let card = CardView {
                number: None,
                fingerprint: Some(keys.fingerprint(CARD_HIGH_RISK)),
                last4: "0019".into(),
                expiry: "12/30".into(),
            };
            assert_eq!(reason(rotated.assess("risk", &card)), "high_risk");
        }
        // Once the old key is dropped, its fingerprints are refused, not approved.
        let new_only =
            RiskRules::new(CardKeys::parse(rotated_text.lines().next().unwrap(), "n").unwrap());
        let stale = CardView {
            number: None,
            fingerprint: Some(old.fingerprint(CARD_HIGH_RISK)),
            last4: "0019".into(),
            expiry: "12/30".into(),
        };
        assert_eq!(reason(new_only.assess("risk", &stale)), "card_key_unknown");
    }
}

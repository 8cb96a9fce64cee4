//! The authorization service: checks the card and places a hold in the ledger (exactly
//! what a capture must then match); its compensation voids the hold. The rules are pure
//! functions (the current month is passed in), so each is unit-tested:
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
//!
//! Good cards never run out of funds. Every approved or declined answer is stored with
//! its `command_id`: a repeated command gets the same reply.

use crate::ledger::{Answer, Ledger};
use crate::ledgered::Ledgered;
use crate::reply::Decline;
use baton_contract::{Action, CardView, Command, Reply};
use baton_worker::Handler;
use std::time::SystemTime;

/// Test card that the issuer declines.
pub const CARD_DECLINED: &str = "4000000000000002";

/// Test card without enough funds.
pub const CARD_INSUFFICIENT_FUNDS: &str = "4000000000009995";

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

/// The authorization service's handler: its rules and its ledger.
#[derive(Clone, Debug)]
pub struct Authorization {
    ledger: Ledgered,
}

impl Authorization {
    /// Authorization on `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self {
            ledger: Ledgered::new(ledger, "authorization"),
        }
    }
}

impl Handler for Authorization {
    async fn answer(&self, command: &Command) -> Answer {
        if let Some(reply) = self.ledger.mismatch(command) {
            return Answer::fresh(reply);
        }
        let ledger = &self.ledger.ledger;
        let payment = &command.payment;
        let stored = match command.action {
            Action::Ping => return Answer::fresh(self.ping(&command.command_id)),
            Action::Execute => {
                let decision = authorize(&command.step, &payment.card, YearMonth::now_utc());
                ledger
                    .place_hold(
                        &command.command_id,
                        command.payment_id,
                        &payment.customer_id,
                        &payment.merchant_id,
                        payment.amount,
                        decision,
                    )
                    .await
            }
            Action::Compensate => {
                let execute_id =
                    Command::id_for(command.payment_id, &command.step, Action::Execute);
                ledger
                    .void_hold(&command.command_id, &execute_id, command.payment_id)
                    .await
            }
        };
        Ledgered::or_unavailable(command, stored)
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
    use crate::risk::CARD_HIGH_RISK;
    use baton_contract::CardNumber;

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
}

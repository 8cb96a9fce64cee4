//! The reference services' test cards, as request builders with the outcome each one
//! must produce. The demo, the load generator and the tests all draw from this one table,
//! which the README reproduces.

use baton_contract::Status;
use serde_json::{json, Value};
use uuid::Uuid;

/// One row of the test-card table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestCard {
    /// `4242424242424242`: approved by every step.
    Good,
    /// A number failing the Luhn check: authorization declines `invalid_card`.
    InvalidLuhn,
    /// `4000000000000002`: authorization declines `card_declined`.
    Declined,
    /// `4000000000009995`: authorization declines `insufficient_funds`.
    InsufficientFunds,
    /// Expiry in the past: authorization declines `expired_card`.
    Expired,
    /// `4100000000000019`: risk declines `high_risk`.
    HighRisk,
    /// Merchant `noncompliant-…`: PCI declines `merchant_not_compliant`.
    NoncompliantMerchant,
    /// A well-formed currency outside the FX table: transaction declines
    /// `currency_not_supported`.
    UnsupportedCurrency,
}

/// What a test card must produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Final status.
    pub status: Status,
    /// Final reason code.
    pub reason: Option<&'static str>,
    /// `(step, outcome)` of each line of the result's `steps`, in order.
    pub steps: &'static [(&'static str, &'static str)],
}

const AUTH_DECLINED: &[(&str, &str)] = &[("authorization", "declined")];

impl TestCard {
    /// Every row, in table order.
    pub const ALL: [TestCard; 8] = [
        TestCard::Good,
        TestCard::InvalidLuhn,
        TestCard::Declined,
        TestCard::InsufficientFunds,
        TestCard::Expired,
        TestCard::HighRisk,
        TestCard::NoncompliantMerchant,
        TestCard::UnsupportedCurrency,
    ];

    /// A request JSON for this row with a fresh payment id.
    pub fn request(self) -> Value {
        self.request_with_id(Uuid::new_v4())
    }

    /// A request JSON for this row with the given payment id.
    pub fn request_with_id(self, payment_id: Uuid) -> Value {
        let mut number = "4242424242424242";
        let mut expiry = "12/30";
        let mut merchant = "m-1001";
        let mut currency = "EUR";
        match self {
            TestCard::Good => {}
            TestCard::InvalidLuhn => number = "4242424242424241",
            TestCard::Declined => number = "4000000000000002",
            TestCard::InsufficientFunds => number = "4000000000009995",
            TestCard::Expired => expiry = "01/20",
            TestCard::HighRisk => number = "4100000000000019",
            TestCard::NoncompliantMerchant => merchant = "noncompliant-7",
            TestCard::UnsupportedCurrency => currency = "BRL",
        }
        json!({
            "payment_id": payment_id.to_string(),
            "merchant_id": merchant,
            "customer_id": "c-42",
            "amount": {"minor": 1999, "currency": currency},
            "merchant_currency": "USD",
            "card": {"number": number, "expiry": expiry},
        })
    }

    /// The outcome the reference services give this row.
    pub fn expected(self) -> Expected {
        let declined = |reason, steps| Expected {
            status: Status::Declined,
            reason: Some(reason),
            steps,
        };
        match self {
            TestCard::Good => Expected {
                status: Status::Completed,
                reason: None,
                steps: &[
                    ("authorization", "approved"),
                    ("risk", "approved"),
                    ("pci", "approved"),
                    ("transaction", "approved"),
                ],
            },
            TestCard::InvalidLuhn => declined("invalid_card", AUTH_DECLINED),
            TestCard::Declined => declined("card_declined", AUTH_DECLINED),
            TestCard::InsufficientFunds => declined("insufficient_funds", AUTH_DECLINED),
            TestCard::Expired => declined("expired_card", AUTH_DECLINED),
            TestCard::HighRisk => declined(
                "high_risk",
                &[
                    ("authorization", "approved"),
                    ("risk", "declined"),
                    ("authorization", "compensated"),
                ],
            ),
            TestCard::NoncompliantMerchant => declined(
                "merchant_not_compliant",
                &[
                    ("authorization", "approved"),
                    ("risk", "approved"),
                    ("pci", "declined"),
                    ("authorization", "compensated"),
                ],
            ),
            TestCard::UnsupportedCurrency => declined(
                "currency_not_supported",
                &[
                    ("authorization", "approved"),
                    ("risk", "approved"),
                    ("pci", "approved"),
                    ("transaction", "declined"),
                    ("authorization", "compensated"),
                ],
            ),
        }
    }

    /// Whether a hold was placed (and so must have been voided or captured).
    pub fn places_hold(self) -> bool {
        self.expected().steps.first() == Some(&("authorization", "approved"))
    }
}

/// A deterministic mixed batch of `n` rows: four in five good, the rest cycling through
/// every other row of the table.
pub fn mixed_batch(n: usize) -> Vec<TestCard> {
    let others = &TestCard::ALL[1..];
    (0..n)
        .map(|i| {
            if i % 5 == 4 {
                others[(i / 5) % others.len()]
            } else {
                TestCard::Good
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_contract::{Limits, PaymentRequest};

    #[test]
    fn every_test_card_is_a_valid_request() {
        for card in TestCard::ALL {
            let body = serde_json::to_vec(&card.request()).unwrap();
            PaymentRequest::parse(&body, &Limits::default())
                .unwrap_or_else(|e| panic!("{card:?}: {e}"));
        }
    }

    #[test]
    fn a_mixed_batch_holds_every_row() {
        let batch = mixed_batch(1000);
        assert_eq!(batch.len(), 1000);
        for card in TestCard::ALL {
            assert!(batch.contains(&card), "{card:?} missing");
        }
        let good = batch.iter().filter(|c| **c == TestCard::Good).count();
        assert_eq!(good, 800);
    }
}

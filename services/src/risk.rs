//! The risk service: scores the payment by its card's fingerprint, never its number. It
//! knows its high-risk cards by their fingerprints ([`RiskRules`]), computed at start
//! under every key of its card key file.
//!
//! | service | input | outcome |
//! |---|---|---|
//! | risk | `payment.card.fingerprint` absent (step lacks `card = "fingerprint"`) | declined `card_fingerprint_missing` |
//! | risk | fingerprint not `<key_id>:<64 hex>` | declined `card_fingerprint_invalid` |
//! | risk | fingerprint made with a key this service's key file lacks | declined `card_key_unknown` |
//! | risk | fingerprint of `4100000000000019` under any of its keys | declined `high_risk` |
//! | risk | fingerprint of `4000000000003220` | approved `{"score": 85}` (elevated: a workflow may ask for 3-D Secure) |
//! | risk | anything else | approved `{"score": 10}` |
//! | risk, pci (compensate) | — | approved (nothing to undo) |

use crate::reply::Decline;
use baton_contract::card_key::fingerprint_key_id;
use baton_contract::{Action, CardKeys, CardView, Command, Reply};
use baton_worker::Answer;
use baton_worker::Handler;
use serde_json::Map;
use std::collections::HashSet;
use std::fmt;

/// Test card the risk service declines.
pub const CARD_HIGH_RISK: &str = "4100000000000019";

/// Test card the risk service approves with an elevated score (85; others get 10).
pub const CARD_ELEVATED_RISK: &str = "4000000000003220";

/// The score risk gives a card it approves, in its reply's `data.score`.
pub const SCORE_ELEVATED: u32 = 85;

/// The score of any other card it approves.
pub const SCORE_LOW: u32 = 10;

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

/// The risk service's handler: pure rules on card fingerprints.
#[derive(Clone, Debug)]
pub struct Risk {
    rules: RiskRules,
}

impl Risk {
    /// Risk recognising fingerprints made with any of `keys`.
    pub fn new(keys: CardKeys) -> Self {
        Self {
            rules: RiskRules::new(keys),
        }
    }
}

impl Handler for Risk {
    async fn answer(&self, command: &Command) -> Answer {
        let card = &command.payment.card;
        Answer::fresh(match command.action {
            Action::Ping => self.ping(&command.command_id),
            Action::Execute => match self.rules.assess(&command.step, card) {
                // The score, for later steps' conditions (`steps.risk.score > 70`).
                Ok(()) => {
                    let mut data = Map::new();
                    data.insert("score".into(), self.rules.score(card).into());
                    Reply::approved(&command.command_id, data)
                }
                Err(d) => crate::reply::declined(&command.command_id, d),
            },
            // No effect to undo.
            Action::Compensate => Reply::approved(&command.command_id, Map::new()),
        })
    }

    fn ping(&self, command_id: &str) -> Reply {
        crate::reply::ping(command_id, "risk", Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_contract::CardNumber;

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
    fn risk_rules_work_on_fingerprints_only() {
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

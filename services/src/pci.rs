//! The PCI compliance service: checks the merchant's PCI DSS compliance. Pure rules.
//!
//! | service | input | outcome |
//! |---|---|---|
//! | pci | `merchant_id` starts with `noncompliant-` | declined `merchant_not_compliant` |
//! | pci | anything else | approved |
//! | risk, pci (compensate) | — | approved (nothing to undo) |

use crate::reply::{decided, Decline};
use baton_contract::{Action, Command, Reply};
use baton_worker::Answer;
use baton_worker::Handler;
use serde_json::Map;

/// Merchant ids with this prefix fail the PCI check.
pub const NONCOMPLIANT_MERCHANT_PREFIX: &str = "noncompliant-";

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

/// The PCI service's handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pci;

impl Handler for Pci {
    async fn answer(&self, command: &Command) -> Answer {
        Answer::fresh(match command.action {
            Action::Ping => self.ping(&command.command_id),
            Action::Execute => {
                decided(&command.command_id, check_pci(&command.payment.merchant_id))
            }
            // No effect to undo.
            Action::Compensate => Reply::approved(&command.command_id, Map::new()),
        })
    }

    fn ping(&self, command_id: &str) -> Reply {
        crate::reply::ping(command_id, "pci", Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<(), Decline>) -> &'static str {
        result.err().map(|d| d.reason).unwrap_or("approved")
    }

    #[test]
    fn pci_declines_merchants_flagged_noncompliant() {
        assert_eq!(
            reason(check_pci("noncompliant-7")),
            "merchant_not_compliant"
        );
        assert_eq!(reason(check_pci("m-1001")), "approved");
        assert_eq!(reason(check_pci("compliant-noncompliant-")), "approved");
    }
}

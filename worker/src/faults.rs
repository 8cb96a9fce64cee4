//! Fault injection, to test how the orchestrator handles failing services: a share of
//! commands answered with a transient `error`, added latency, a black hole that takes
//! commands and never answers, or compensations that always fail. Off by default; set per
//! process by flags (`--fail-rate`, `--latency-ms`, `--blackhole`,
//! `--fail-compensations`) and per in-process service by
//! [`crate::RunningService::set_faults`], which applies from the next command on.
//!
//! Not for production: an injected fault is indistinguishable, to the orchestrator, from a
//! real one. The random draw is a small xorshift, good enough to spread faults, not for
//! anything secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `reason` of an injected `error` reply.
pub const INJECTED_FAULT: &str = "injected_fault";

/// Which faults a service injects. The default injects none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of commands (0 to 1) answered with a transient `error` reply, reason
    /// [`INJECTED_FAULT`], without touching the handler or its store.
    pub fail_rate: f64,
    /// Waited before handling each command (and before an injected error).
    pub latency: Duration,
    /// Ack every command and never answer: the orchestrator sees only timeouts.
    pub blackhole: bool,
    /// Answer every `compensate` command with a transient `error` reply, reason
    /// [`INJECTED_FAULT`], without touching the handler or its store; `execute` commands
    /// are handled normally. Tests a compensation that keeps failing (it ends in the
    /// attention queue) and its replay once the fault is off.
    pub fail_compensations: bool,
}

/// A fault setting that makes no sense.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("fail rate {0} is not a number from 0 to 1")]
pub struct InvalidFailRate(pub f64);

impl Faults {
    /// Whether the settings make sense (the fail rate is a number from 0 to 1).
    pub fn validate(&self) -> Result<(), InvalidFailRate> {
        if (0.0..=1.0).contains(&self.fail_rate) {
            Ok(())
        } else {
            Err(InvalidFailRate(self.fail_rate))
        }
    }

    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        self.fail_rate > 0.0 || !self.latency.is_zero() || self.blackhole || self.fail_compensations
    }

    /// Whether a command with `action` gets an injected `error` instead of being handled:
    /// always for a compensation under [`Faults::fail_compensations`], otherwise when
    /// `roll` (the dice at the fail rate) says so. `roll` is only called when needed.
    pub(crate) fn injects_error(
        &self,
        action: baton_contract::Action,
        roll: impl FnOnce(f64) -> bool,
    ) -> bool {
        (self.fail_compensations && action == baton_contract::Action::Compensate)
            || roll(self.fail_rate)
    }
}

/// The dice that decide which commands fail: xorshift64* over an atomic state, so the
/// delivery tasks share it without a lock.
#[derive(Debug)]
pub(crate) struct Dice {
    /// Never zero (xorshift's only fixed point).
    state: AtomicU64,
}

impl Dice {
    /// Seeded from a v4 uuid (the OS's randomness), so two processes fail differently.
    pub(crate) fn new() -> Self {
        let bits = uuid::Uuid::new_v4().as_u128();
        Self::seeded((bits >> 64) as u64 ^ bits as u64)
    }

    pub(crate) fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed.max(1)),
        }
    }

    fn next(&self) -> u64 {
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        // `fetch_update` retries on contention; the closure always returns Some.
        let previous = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or(1);
        step(previous).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `rate` (0 never, 1 always).
    pub(crate) fn roll(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        // The top 53 bits as a uniform number in [0, 1).
        let uniform = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        uniform < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rates_are_validated() {
        for good in [0.0, 0.25, 1.0] {
            let faults = Faults {
                fail_rate: good,
                ..Faults::default()
            };
            assert!(faults.validate().is_ok(), "{good}");
        }
        for bad in [-0.1, 1.01, f64::NAN] {
            let faults = Faults {
                fail_rate: bad,
                ..Faults::default()
            };
            assert!(faults.validate().is_err(), "{bad}");
        }
        assert!(!Faults::default().any());
        assert_eq!(Faults::default().latency, Duration::ZERO);
    }

    #[test]
    fn fail_compensations_fails_every_compensation_and_no_execute() {
        use baton_contract::Action;
        let faults = Faults {
            fail_compensations: true,
            ..Faults::default()
        };
        assert!(faults.any());
        assert!(faults.validate().is_ok());
        let dice = Dice::seeded(7);
        // Every compensation fails, whatever the dice say; executes follow the fail rate
        // (0 here: never).
        assert!((0..1000).all(|_| faults.injects_error(Action::Compensate, |r| dice.roll(r))));
        assert!((0..1000).all(|_| !faults.injects_error(Action::Execute, |r| dice.roll(r))));
        // Off by default: a compensation is handled.
        let none = Faults::default();
        assert!(!none.injects_error(Action::Compensate, |r| dice.roll(r)));
        // With a fail rate too, executes still fail at that rate only.
        let both = Faults {
            fail_rate: 1.0,
            ..faults
        };
        assert!(both.injects_error(Action::Execute, |r| dice.roll(r)));
    }

    #[test]
    fn the_dice_follow_the_rate() {
        let dice = Dice::seeded(42);
        assert!((0..1000).all(|_| !dice.roll(0.0)));
        assert!((0..1000).all(|_| dice.roll(1.0)));
        let hits = (0..10_000).filter(|_| dice.roll(0.3)).count();
        assert!((2_700..3_300).contains(&hits), "{hits} of 10000 at 0.3");
        // A zero seed would stick at zero forever.
        let zero = Dice::seeded(0);
        assert!((0..100).any(|_| zero.roll(0.5)) && (0..100).any(|_| !zero.roll(0.5)));
    }
}

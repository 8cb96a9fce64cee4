//! Crash points: a test-only switch that makes the orchestrator abort at a named point,
//! so tests can prove that a crash at any moment loses no payment and charges none twice.
//!
//! Set `BATON_CRASH_AT=<point>` (abort the first time the point is reached) or
//! `BATON_CRASH_AT=<point>:<n>` (the n-th time, so other payments are in flight). Points:
//!
//! | point | where |
//! |---|---|
//! | `after_command_published` | a step's command is confirmed by the broker, before its reply |
//! | `after_step_recorded` | a step outcome is in the journal, before the next step |
//! | `after_result_published` | the result is confirmed by the broker, before the request is acked |
//! | `mid_compensation` | a compensate command is confirmed by the broker, before its reply |
//!
//! Unset (the default), every point is a no-op costing one relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every crash point's name.
pub const POINTS: [&str; 4] = [
    "after_command_published",
    "after_step_recorded",
    "after_result_published",
    "mid_compensation",
];

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn target() -> &'static Option<(String, u64)> {
    TARGET.get_or_init(|| {
        let spec = std::env::var("BATON_CRASH_AT").ok()?;
        let (name, nth) = match spec.split_once(':') {
            Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1).max(1)),
            None => (spec.clone(), 1),
        };
        if !POINTS.contains(&name.as_str()) {
            eprintln!("BATON_CRASH_AT={spec}: unknown crash point; known: {POINTS:?}");
            return None;
        }
        Some((name, nth))
    })
}

/// Aborts the process if `BATON_CRASH_AT` names this point (and this is the n-th hit).
pub fn point(name: &str) {
    if let Some((wanted, nth)) = target() {
        if wanted == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
            eprintln!("BATON_CRASH_AT: aborting at {name}");
            std::process::abort();
        }
    }
}

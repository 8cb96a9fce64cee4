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
//! Unset, every point is a no-op costing one relaxed atomic load. And only a build with the
//! `crash-points` cargo feature has them at all: the chaos tests turn it on (the package's
//! dev-dependency on itself), a release build of `baton` ignores `BATON_CRASH_AT`.

#[cfg(feature = "crash-points")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "crash-points")]
use std::sync::OnceLock;

/// Every crash point's name.
pub const POINTS: [&str; 4] = [
    "after_command_published",
    "after_step_recorded",
    "after_result_published",
    "mid_compensation",
];

#[cfg(feature = "crash-points")]
static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
#[cfg(feature = "crash-points")]
static HITS: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "crash-points")]
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
#[cfg(feature = "crash-points")]
pub fn point(name: &str) {
    if let Some((wanted, nth)) = target() {
        if wanted == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
            eprintln!("BATON_CRASH_AT: aborting at {name}");
            std::process::abort();
        }
    }
}

/// Without the `crash-points` feature a crash point is nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &str) {}

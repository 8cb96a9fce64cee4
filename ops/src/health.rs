//! Readiness shared between the application and the HTTP port.
//!
//! Liveness (`/healthz`) needs no state: if the port answers, the process runs.
//! Readiness (`/readyz`) is what the application says it is, with a reason when it is
//! not, so a failing probe tells the operator why.

use std::sync::{Arc, Mutex, PoisonError};

/// Readiness of the process, cheap to clone and shared by every task that can change it
/// (the broker connection loop, start-up, shutdown).
///
/// Starts **not ready**, with the reason `starting`.
#[derive(Clone, Debug)]
pub struct Health {
    /// `None` when ready, otherwise why not. One lock, because readiness and its reason
    /// must change together.
    not_ready: Arc<Mutex<Option<String>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            not_ready: Arc::new(Mutex::new(Some("starting".to_owned()))),
        }
    }
}

impl Health {
    /// A new handle, not ready ("starting"). Same as [`Health::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready to take work.
    pub fn set_ready(&self) {
        *self.lock() = None;
    }

    /// Marks the process not ready. `reason` is shown by `/readyz` after `not ready: `;
    /// line breaks are replaced by spaces so the answer stays one line.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let reason: String = reason.into();
        let reason = reason.replace(['\r', '\n'], " ");
        *self.lock() = Some(reason);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.lock().is_none()
    }

    /// Why the process is not ready, or `None` when it is.
    pub fn reason(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // The guarded value is always valid, so a panic elsewhere while holding the lock
        // does not make it unusable.
        self.not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_then_follows_the_application() {
        let health = Health::default();
        assert!(!health.is_ready());
        assert_eq!(health.reason().as_deref(), Some("starting"));

        let shared = health.clone();
        shared.set_ready();
        assert!(health.is_ready());
        assert_eq!(health.reason(), None);

        shared.set_not_ready("broker disconnected\nretrying");
        assert!(!health.is_ready());
        assert_eq!(
            health.reason().as_deref(),
            Some("broker disconnected retrying")
        );
    }
}

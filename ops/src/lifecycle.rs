//! A process's life around its work: the shutdown signal, and the pace of reconnects.

use std::time::Duration;

/// Resolves on SIGTERM or Ctrl-C (SIGINT), whichever comes first, and logs it.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutdown signal received");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown signal received");
}

/// Exit code of every Baton binary when RabbitMQ cannot be reached (or its URL or
/// certificate is wrong): 2, also clap's code for a usage error.
pub const EXIT_BROKER_UNREACHABLE: i32 = 2;

/// Longest wait between two reconnect attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// The waits between reconnect attempts after a lost broker connection: exponential from
/// 100 ms (×2 each time), capped at [`RECONNECT_MAX_DELAY`], each with full jitter so that
/// many processes that lost one broker do not come back in step. Endless.
pub fn reconnect_delays() -> impl Iterator<Item = Duration> {
    tokio_retry::strategy::ExponentialBackoff::from_millis(2)
        .factor(50)
        .max_delay(RECONNECT_MAX_DELAY)
        .map(tokio_retry::strategy::jitter)
        .chain(std::iter::repeat(RECONNECT_MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_stay_within_their_step_and_the_cap() {
        let delays: Vec<Duration> = reconnect_delays().take(40).collect();
        assert_eq!(delays.len(), 40, "endless");
        // Full jitter: each wait is at most its step (100 ms, 200 ms, …, 5 s).
        for (i, delay) in delays.iter().enumerate() {
            let step = Duration::from_millis(100 * (1u64 << i.min(20))).min(RECONNECT_MAX_DELAY);
            assert!(*delay <= step, "wait {i}: {delay:?} > {step:?}");
        }
        assert!(delays.iter().all(|d| *d <= RECONNECT_MAX_DELAY));
    }
}

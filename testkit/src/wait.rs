//! Bounded waits for states that announce themselves by no event a test can await: a
//! metric, a queue's depth, another process's HTTP port. Each polls with a bound and
//! says whether the state came; none is a fixed sleep standing in for an event.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How often [`eventually`] and [`poll`] callers that have no reason to choose look.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Waits until `condition` holds, checking every 20 ms, for at most `within`; returns
/// whether it held. For states that announce themselves by no event (a metric, a queue
/// depth): never a fixed sleep in place of an event.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    poll(within, POLL_EVERY, || {
        std::future::ready(condition().then_some(()))
    })
    .await
    .is_some()
}

/// Asks `probe` every `every` until it gives a value, for at most `within` (the last
/// answer counts if it comes in time); `None` if it never did. `probe` is always asked
/// at least once.
pub async fn poll<T, F, Fut>(within: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn poll_gives_the_first_value_or_none_past_the_bound() {
        let mut asked = 0;
        let got = poll(Duration::from_secs(1), POLL_EVERY, || {
            asked += 1;
            std::future::ready((asked == 3).then_some(asked))
        })
        .await;
        assert_eq!(got, Some(3));
        let started = Instant::now();
        assert!(!eventually(Duration::from_millis(100), || false).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(eventually(Duration::ZERO, || true).await);
    }
}

//! Observability end to end, by topic: `/metrics` of the orchestrator and the services
//! (checked by `promtool` and against what a batch did: `metrics`), `/readyz` following the
//! broker connection (`readiness`), a real Prometheus scraping the orchestrator
//! (`scraping`), one `traceparent` followed through the logs of five processes
//! (`traces`), and the saga events of one payment in order (`events`).

mod events;
mod metrics;
mod readiness;
mod scraping;
mod traces;

use std::path::PathBuf;

/// A tool from Debian's `prometheus` package (`promtool`, `prometheus`), on `PATH` or in
/// `/usr/bin`; fails the test with how to install it.
fn prometheus_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: install Debian's `prometheus` package \
             (apt-get install -y --no-install-recommends prometheus), which ships \
             /usr/bin/prometheus and /usr/bin/promtool"
        )
    })
}

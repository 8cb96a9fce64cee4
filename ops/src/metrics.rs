//! Conventions every Baton binary shares for its metrics.

/// Histogram buckets, in seconds, for payment and step latencies: 1 ms to 30 s.
///
/// Every binary uses these so histograms aggregate across services. The bounds include
/// 2 s exactly because the `BatonPaymentLatencyHigh` alert compares the p99 with 2 s, and
/// `histogram_quantile` is only exact at bucket bounds. Keep them sorted and few (each
/// bucket is one time series per label set).
pub fn histogram_buckets_seconds() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sorted_and_span_1ms_to_30s() {
        let b = histogram_buckets_seconds();
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b.first(), Some(&0.001));
        assert_eq!(b.last(), Some(&30.0));
        assert!(b.contains(&2.0));
        // prometheus accepts them as they are.
        let opts = prometheus::HistogramOpts::new("t", "t").buckets(b);
        assert!(prometheus::Histogram::with_opts(opts).is_ok());
    }
}

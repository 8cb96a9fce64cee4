//! The Prometheus text exposition, parsed just enough to look samples up by name and
//! labels: what `/metrics` serves, or an in-process registry encoded the same way, so a
//! test reads a metric as Prometheus would scrape it.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Every sample of an exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition(pub Vec<Sample>);

impl Exposition {
    /// Parses the text format; fails the test on a line that is not a sample, a comment
    /// or empty.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("a sample line: {line}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("a sample value: {line}"));
                let (name, labels) = match series.split_once('{') {
                    None => (series.to_owned(), BTreeMap::new()),
                    Some((name, rest)) => {
                        let rest = rest
                            .strip_suffix('}')
                            .unwrap_or_else(|| panic!("labels end with }}: {line}"));
                        (name.to_owned(), parse_labels(rest, line))
                    }
                };
                Sample {
                    name,
                    labels,
                    value,
                }
            })
            .collect();
        Self(samples)
    }

    /// What `registry` exposes now.
    pub fn of(registry: &prometheus::Registry) -> Self {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("metrics encode");
        Self::parse(&text)
    }

    /// The value of the sample with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Exposition::get`], failing the test when the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// Every sample of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.name == name)
    }

    /// The sum over every sample of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.all(name).map(|s| s.value).sum()
    }

    /// The sum over the samples of `name` whose labels include every `(name, value)` of
    /// `labels` (0 when there is none).
    pub fn sum_matching(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.all(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// The value of a metric in `registry`: the sum over the series whose labels include
/// every `(name, value)` of `labels` (0 when there is none). Read from the text
/// exposition, as Prometheus would scrape it.
pub fn metric_value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    Exposition::of(registry).sum_matching(name, labels)
}

fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label=\"value\": {line}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("unfinished escape: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total x\n# TYPE x_total counter\n\
        x_total{a=\"1\",b=\"q\\\"uote, comma\"} 2\nx_total{a=\"1\",b=\"2\"} 3\n\
        x_total{a=\"2\"} 5\ny 1.5\nh_bucket{le=\"+Inf\"} 4\n";

    #[test]
    fn samples_are_found_by_exact_or_included_labels() {
        let metrics = Exposition::parse(TEXT);
        assert_eq!(metrics.get("x_total", &[("a", "1"), ("b", "2")]), Some(3.0));
        assert_eq!(metrics.get("x_total", &[("a", "1")]), None);
        assert_eq!(
            metrics.get("x_total", &[("a", "1"), ("b", "q\"uote, comma")]),
            Some(2.0)
        );
        assert_eq!(metrics.sum_matching("x_total", &[("a", "1")]), 5.0);
        assert_eq!(metrics.sum_matching("x_total", &[]), 10.0);
        assert_eq!(metrics.sum("x_total"), 10.0);
        assert_eq!(metrics.value("y", &[]), 1.5);
        assert_eq!(metrics.value("h_bucket", &[("le", "+Inf")]), 4.0);
        assert_eq!(metrics.sum_matching("nothing", &[]), 0.0);
    }
}

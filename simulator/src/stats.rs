//! Statistics for runs and benches: percentiles of samples, and quantiles of a Prometheus histogram
//! computed as Prometheus's `histogram_quantile` does.

use std::time::Duration;

/// The nearest-rank percentile of sorted samples (`q` in 0..=1).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One metric sample of a Prometheus text exposition: `name{labels} value`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The cumulative buckets `(le, count)` of histogram `name`, in exposition order.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// `histogram_quantile(q, after - before)`: linear interpolation inside the bucket holding the rank.
pub fn histogram_quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let old = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - old)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, count) in delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                0.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_a_known_distribution() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let cases = [(0.50, 50), (0.90, 90), (0.99, 99), (1.0, 100), (0.0, 1)];
        for (q, expected) in cases {
            assert_eq!(
                percentile(&samples, q),
                Duration::from_millis(expected),
                "q = {q}"
            );
        }
        assert_eq!(percentile(&[], 0.5), Duration::ZERO, "no samples");
    }

    const BEFORE: &str =
        "x_bucket{le=\"0.1\"} 5\nx_bucket{le=\"0.2\"} 5\nx_bucket{le=\"+Inf\"} 5\nx_count 5\n";
    const AFTER: &str = "x_bucket{le=\"0.1\"} 55\nx_bucket{le=\"0.2\"} 105\nx_bucket{le=\"+Inf\"} 105\nx_count 105\n";

    #[test]
    fn histogram_quantiles_interpolate_like_prometheus() {
        let (before, after) = (buckets(BEFORE, "x"), buckets(AFTER, "x"));
        assert_eq!(after.len(), 3);
        // 100 new observations: 50 in (0, 0.1], 50 in (0.1, 0.2].
        let p50 = histogram_quantile(0.5, &before, &after).expect("p50");
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = histogram_quantile(0.75, &before, &after).expect("p75");
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        let p25 = histogram_quantile(0.25, &before, &after).expect("p25");
        assert!((p25 - 0.05).abs() < 1e-9, "{p25}");
        assert_eq!(
            histogram_quantile(0.5, &after, &after),
            None,
            "no new observations"
        );
        assert_eq!(sample(AFTER, "x_count"), Some(105.0));
    }
}

//! What a simulator run counts and how it reports it: requests by outcome (allowed, denied by reason,
//! errors by kind), latency in an HDR histogram, scenario measurements; the summary table, `--json`,
//! and the exit code.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How one request through Envoy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// A policy deny (403 from ext-authz), with its first reason.
    Denied(String),
    /// Anything else: the kind, for the errors table.
    Error(String),
}

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn stats(&self) -> LatencyStats {
        LatencyStats {
            count: self.len(),
            p50_ms: self.quantile_ms(0.5),
            p90_ms: self.quantile_ms(0.9),
            p99_ms: self.quantile_ms(0.99),
            max_ms: self.max_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyStats {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The running counts, shared by the traffic tasks.
#[derive(Default)]
pub struct Tally {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    allowed: u64,
    denied: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    latency: Latency,
}

/// A moment's view, for the progress line.
pub struct Snapshot {
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, outcome: Outcome, took: Duration) {
        let mut counts = self.lock();
        counts.requests += 1;
        counts.latency.record(took);
        match outcome {
            Outcome::Allowed => counts.allowed += 1,
            Outcome::Denied(reason) => *counts.denied.entry(reason).or_default() += 1,
            Outcome::Error(kind) => *counts.errors.entry(kind).or_default() += 1,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let counts = self.lock();
        Snapshot {
            requests: counts.requests,
            allowed: counts.allowed,
            denied: counts.denied.values().sum(),
            errors: counts.errors.values().sum(),
            p99_ms: counts.latency.quantile_ms(0.99),
        }
    }

    pub fn traffic(&self, elapsed: Duration) -> Traffic {
        let counts = self.lock();
        Traffic {
            requests: counts.requests,
            rate_per_s: counts.requests as f64 / elapsed.as_secs_f64().max(1e-9),
            allowed: counts.allowed,
            denied: counts.denied.values().sum(),
            denied_by_reason: counts.denied.clone(),
            errors: counts.errors.values().sum(),
            errors_by_kind: counts.errors.clone(),
            latency: counts.latency.stats(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    pub requests: u64,
    pub rate_per_s: f64,
    pub allowed: u64,
    pub denied: u64,
    pub denied_by_reason: BTreeMap<String, u64>,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub latency: LatencyStats,
}

/// A scenario's measured delays (a revocation to its first 403, a health change to its changed
/// decision) and how many were not seen within the bound.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Propagation {
    pub what: String,
    pub measured: u64,
    pub not_enforced: u64,
    pub latency: Option<LatencyStats>,
}

/// One attack and whether it was refused.
#[derive(Debug, Clone, Serialize)]
pub struct Attack {
    pub name: String,
    pub refused: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub devices: u32,
    pub duration_s: f64,
    pub health_reports: BTreeMap<String, u64>,
    pub traffic: Traffic,
    pub propagation: Vec<Propagation>,
    pub attacks: Vec<Attack>,
    pub failures: Vec<String>,
}

/// Exit codes: 0 all good; 1 a request failed for a reason other than a policy deny (or a scenario
/// could not measure what it had to); 3 an attack succeeded (it wins over 1).
pub const EXIT_OK: u8 = 0;
pub const EXIT_ERRORS: u8 = 1;
pub const EXIT_ATTACK_SUCCEEDED: u8 = 3;

impl Summary {
    pub fn exit_code(&self) -> u8 {
        if self.attacks.iter().any(|a| !a.refused) {
            EXIT_ATTACK_SUCCEEDED
        } else if self.traffic.errors > 0
            || !self.failures.is_empty()
            || self.propagation.iter().any(|p| p.not_enforced > 0)
        {
            EXIT_ERRORS
        } else {
            EXIT_OK
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let t = &self.traffic;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nEdgeMesh simulator: scenario {}, {} devices, {:.0} s, seed {}",
            self.scenario, self.devices, self.duration_s, self.seed
        );
        let _ = writeln!(
            out,
            "  requests through Envoy   {:>8}   ({:.1}/s)",
            t.requests, t.rate_per_s
        );
        let _ = writeln!(out, "  allowed                  {:>8}", t.allowed);
        let _ = writeln!(out, "  denied                   {:>8}", t.denied);
        let mut reasons: Vec<_> = t.denied_by_reason.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in reasons.iter().take(12) {
            let _ = writeln!(out, "    {n:>8}  {reason}");
        }
        if reasons.len() > 12 {
            let _ = writeln!(
                out,
                "    … {} more reasons (--json has all)",
                reasons.len() - 12
            );
        }
        let _ = writeln!(out, "  errors                   {:>8}", t.errors);
        for (kind, n) in &t.errors_by_kind {
            let _ = writeln!(out, "    {n:>8}  {kind}");
        }
        let l = &t.latency;
        let _ = writeln!(
            out,
            "  latency (ms)             p50 {:.2}   p90 {:.2}   p99 {:.2}   max {:.2}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
        let reports: Vec<String> = self
            .health_reports
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let _ = writeln!(out, "  health reports           {}", reports.join(", "));
        for p in &self.propagation {
            match &p.latency {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "  {}: {} measured, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
                        p.what,
                        p.measured,
                        l.p50_ms,
                        l.p99_ms,
                        l.max_ms,
                        if p.not_enforced > 0 {
                            format!(", {} NOT ENFORCED within the bound", p.not_enforced)
                        } else {
                            String::new()
                        }
                    );
                }
                None => {
                    let _ = writeln!(out, "  {}: nothing measured", p.what);
                }
            }
        }
        if !self.attacks.is_empty() {
            let refused = self.attacks.iter().filter(|a| a.refused).count();
            let _ = writeln!(
                out,
                "  attacks: {} tried, {} refused",
                self.attacks.len(),
                refused
            );
            for a in &self.attacks {
                let _ = writeln!(
                    out,
                    "    {}  {:<38} {}",
                    if a.refused { "refused  " } else { "SUCCEEDED" },
                    a.name,
                    a.detail
                );
            }
        }
        for f in &self.failures {
            let _ = writeln!(out, "  FAILED: {f}");
        }
        let _ = writeln!(
            out,
            "  result: {}",
            match self.exit_code() {
                EXIT_OK => "ok",
                EXIT_ATTACK_SUCCEEDED => "AN ATTACK SUCCEEDED (exit 3)",
                _ => "errors (exit 1)",
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_match_a_known_distribution() {
        // 1..=10,000 µs, once each: the q quantile is q * 10 ms, within HDR's 3 significant digits.
        let mut latency = Latency::default();
        for us in 1..=10_000u64 {
            latency.record(Duration::from_micros(us));
        }
        let stats = latency.stats();
        assert_eq!(stats.count, 10_000);
        for (got, want) in [
            (stats.p50_ms, 5.0),
            (stats.p90_ms, 9.0),
            (stats.p99_ms, 9.9),
            (stats.max_ms, 10.0),
        ] {
            assert!((got - want).abs() <= want * 0.002, "{got} vs {want}");
        }
    }

    fn summary() -> Summary {
        let tally = Tally::default();
        tally.record(Outcome::Allowed, Duration::from_millis(2));
        tally.record(
            Outcome::Denied("antivirus is not enabled".into()),
            Duration::from_millis(3),
        );
        Summary {
            scenario: "steady".into(),
            seed: 1,
            devices: 2,
            duration_s: 1.0,
            health_reports: BTreeMap::new(),
            traffic: tally.traffic(Duration::from_secs(1)),
            propagation: Vec::new(),
            attacks: Vec::new(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn denies_are_not_failures_but_errors_and_successful_attacks_are() {
        let ok = summary();
        assert_eq!(ok.exit_code(), EXIT_OK);
        assert!(ok.table().contains("result: ok"));

        let mut errors = summary();
        errors.traffic.errors = 1;
        assert_eq!(errors.exit_code(), EXIT_ERRORS);

        let mut slow = summary();
        slow.propagation.push(Propagation {
            what: "revocation".into(),
            measured: 4,
            not_enforced: 1,
            latency: None,
        });
        assert_eq!(slow.exit_code(), EXIT_ERRORS);

        let mut breached = summary();
        breached.traffic.errors = 1;
        breached.attacks.push(Attack {
            name: "spoofed identity headers".into(),
            refused: false,
            detail: "the upstream saw pi-2".into(),
        });
        assert_eq!(breached.exit_code(), EXIT_ATTACK_SUCCEEDED);
        assert!(breached.table().contains("SUCCEEDED"));
    }
}

//! Token-bucket rate limits, per key: health reports per device, refused enrolments per address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Beyond this many keys, those whose bucket is full again are forgotten.
const MAX_KEYS: usize = 100_000;

/// A token bucket per key: `burst` at once, then `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, rate: f64) -> Self {
        Self {
            burst: f64::from(burst),
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at `now`; refused with the whole seconds to wait for the next one.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // Keys whose bucket has refilled carry no state worth keeping.
            let (burst, rate) = (self.burst, self.rate);
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < burst
            });
        }
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Whether `key` has no token left at `now` (and if so, the seconds to wait), without taking one.
    pub fn exhausted(&self, key: &str, now: Instant) -> Option<u64> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.get(key)?;
        let tokens = (tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate)
            .min(self.burst);
        (tokens < 1.0).then(|| ((1.0 - tokens) / self.rate).ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_limiter_allows_a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(10, 1.0);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.take("a", start).is_ok());
        }
        assert_eq!(limiter.take("a", start), Err(1));
        assert!(limiter.take("b", start).is_ok(), "buckets are per device");
        assert!(
            limiter
                .take("a", start + Duration::from_millis(1000))
                .is_ok()
        );
        assert!(
            limiter
                .take("a", start + Duration::from_millis(1500))
                .is_err()
        );
        let slow = RateLimiter::new(1, 0.1);
        assert!(slow.take("a", start).is_ok());
        assert_eq!(
            slow.take("a", start),
            Err(10),
            "Retry-After in whole seconds"
        );
    }

    #[test]
    fn exhausted_says_so_without_taking() {
        let limiter = RateLimiter::new(2, 0.5);
        let start = Instant::now();
        assert_eq!(limiter.exhausted("ip", start), None, "unknown key");
        assert!(limiter.take("ip", start).is_ok());
        assert_eq!(limiter.exhausted("ip", start), None, "one left");
        assert!(limiter.take("ip", start).is_ok());
        assert_eq!(limiter.exhausted("ip", start), Some(2));
        assert_eq!(
            limiter.exhausted("ip", start + Duration::from_secs(2)),
            None
        );
    }
}

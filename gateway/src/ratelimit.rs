//! Token buckets per (Resource rule, caller): `burst` tokens, refilled at
//! `requestsPerSecond`; a request takes one token or is refused with 429.
//!
//! Buckets live outside the compiled snapshot, keyed by the rule and its limit, so a reload
//! that does not change a rule's limit does not hand every caller a fresh burst. The time
//! is an argument, so the arithmetic is tested without sleeping.

use rustronaut_contract::snapshot::RateLimit;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets above this count trigger a sweep of full (idle) buckets, bounding memory under
/// a flood of distinct client addresses.
const SWEEP_ABOVE: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    burst: f64,
}

/// All buckets of the gateway.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimiter {
    /// Takes a token for `key` under `scope` (the rule and its limit) at `now`; `false`
    /// means the caller is over the limit.
    pub fn allow(&self, scope: &str, key: &str, limit: &RateLimit, now: Instant) -> bool {
        let rate = f64::from(limit.requests_per_second);
        let burst = f64::from(limit.burst.max(1));
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, b| {
                let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate;
                b.tokens + refill < b.burst
            });
        }
        let b = map
            .entry((scope.to_string(), key.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
                burst,
            });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustronaut_contract::snapshot::HashKey;
    use std::time::Duration;

    fn limit(rps: u32, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
            key: HashKey::ClientIp,
        }
    }

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let l = limit(2, 3);
        let allowed = (0..10).filter(|_| rl.allow("r", "k", &l, t0)).count();
        assert_eq!(allowed, 3);
        // Half a second at 2/s refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(rl.allow("r", "k", &l, t1));
        assert!(!rl.allow("r", "k", &l, t1));
        // A long pause refills at most `burst`.
        let t2 = t1 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| rl.allow("r", "k", &l, t2)).count(), 3);
    }

    #[test]
    fn keys_and_scopes_have_separate_buckets() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let l = limit(1, 1);
        assert!(rl.allow("r", "a", &l, t0));
        assert!(!rl.allow("r", "a", &l, t0));
        assert!(rl.allow("r", "b", &l, t0));
        assert!(rl.allow("other", "a", &l, t0));
    }
}

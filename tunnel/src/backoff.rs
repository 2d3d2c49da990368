//! Exponential backoff with jitter for reconnecting to a hub. Pure: the caller supplies the
//! randomness, so tests are deterministic.
//!
//! Delays double from `base` up to `max`; each delay is drawn uniformly from its upper half
//! ("equal jitter"), so replicas of many connectors restarting together spread out while a
//! single retry still waits at least half the nominal delay.

use std::time::Duration;

/// Backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Reconnect backoff: 1 s doubling to 30 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// A backoff from `base` doubling to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The next delay; `random` is any `u64` (e.g. from the OS RNG) used for jitter.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let nominal = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1).min(31);
        let half = nominal / 2;
        let span = (nominal - half).as_millis() as u64;
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        half + Duration::from_millis(jitter)
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A random `u64` for jitter (not for secrets).
pub fn jitter_seed() -> u64 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    // Jitter only spreads retries; if the RNG failed, no jitter is a safe fallback.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_within_jitter_bounds() {
        let mut b = Backoff::reconnect();
        let nominal = [1, 2, 4, 8, 16, 30, 30, 30];
        for (i, n) in nominal.iter().enumerate() {
            let n = Duration::from_secs(*n);
            let lo = b.clone().next_delay(0);
            let hi = b.clone().next_delay(u64::MAX - 1);
            assert_eq!(lo, n / 2, "attempt {i}");
            assert!(hi <= n && hi >= n / 2, "attempt {i}: {hi:?}");
            b.next_delay(12345);
        }
    }

    #[test]
    fn reset_starts_over_and_many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..100 {
            assert!(b.next_delay(7) <= Duration::from_secs(5));
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay(u64::MAX) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_seed_varies() {
        let seeds: std::collections::HashSet<u64> = (0..8).map(|_| jitter_seed()).collect();
        assert!(seeds.len() > 1);
    }
}

//! Token buckets per (Resource rule, caller): `burst` tokens, refilled at
//! `requestsPerSecond`; a request takes one token or is refused with 429.
//!
//! Buckets live outside the compiled snapshot, keyed by the rule and its limit, so a reload
//! that does not change a rule's limit does not hand every caller a fresh burst. The time
//! is an argument, so the arithmetic is tested without sleeping.
//!
//! ```text
//!  (scope, key) --SipHash, random key per process--> h: u64
//!     shard = (h >> 32) % SHARDS  (64 maps, each behind its own mutex)
//!     bucket = shard[h]   new key in a full shard: drop the full (idle) buckets of that
//!                         shard; if that frees less than an eighth: its least recently
//!                         used eighth too
//! ```
//!
//! No global lock: a request locks one of [`SHARDS`] shards and does a constant amount of
//! work there, amortised: a new key in a full shard scans that shard (at most
//! [`MAX_BUCKETS`] / [`SHARDS`] buckets) and frees at least an eighth of it, so the next
//! keys find room. Memory is bounded by [`MAX_BUCKETS`]. A bucket dropped while not full
//! hands its caller a fresh burst when it comes back, which is what any new caller gets
//! anyway: an attacker with many addresses gains nothing from eviction it did not already
//! have. Buckets are keyed by a 64-bit keyed hash rather than the strings (no allocation
//! per request); two callers share a bucket only on a collision nobody can aim for without
//! the process's random key.
//!
//! Why not `governor`: it is not in the project's dependency set, its keyed limiter needs a
//! periodic `retain_recent` to bound memory and its own clock for tests, while this keeps
//! the bucket arithmetic the docs describe (fractional rates, burst then refill) as it was.

use rustronaut_contract::snapshot::RateLimit;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

/// Shards of the bucket table (each with its own lock).
pub const SHARDS: usize = 64;
/// Most buckets kept at once, over all shards.
pub const MAX_BUCKETS: usize = 100_032;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    burst: f64,
    rate: f64,
}

impl Bucket {
    /// Whether the bucket has refilled to `burst` by `now` (forgetting it changes nothing).
    fn full_at(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate >= self.burst
    }
}

type Shard = HashMap<u64, Bucket, BuildU64>;

/// All buckets of the gateway.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::with_capacity(MAX_BUCKETS)
    }
}

impl RateLimiter {
    /// A limiter keeping at most about `max_buckets` buckets (at least one per shard).
    pub fn with_capacity(max_buckets: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_buckets.div_ceil(SHARDS).max(1),
        }
    }

    /// Takes a token for `key` under `scope` (the rule and its limit) at `now`; `false`
    /// means the caller is over the limit.
    pub fn allow(&self, scope: &str, key: &str, limit: &RateLimit, now: Instant) -> bool {
        let rate = f64::from(limit.requests_per_second);
        let burst = f64::from(limit.burst.max(1));
        let h = self.hasher.hash_one((scope, key));
        // Bits 32.. choose the shard: the shard's table places a key by its low bits and
        // tags it with its top 7, so a shard index taken from either would crowd its table.
        let shard = &self.shards[((h >> 32) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&h) && map.len() >= self.per_shard {
            make_room(&mut map, now);
        }
        let b = map.entry(h).or_insert(Bucket {
            tokens: burst,
            at: now,
            burst,
            rate,
        });
        // A reload that changes the limit changes the scope, so these are the bucket's own;
        // kept current anyway in case a collision joined two rules.
        b.burst = burst;
        b.rate = rate;
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

    /// Buckets kept now (all shards).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees places in a full shard: the buckets that have refilled (forgetting them changes no
/// answer); if that frees less than an eighth of the shard, also its least recently used
/// eighth (at least one). Freeing an eighth at a time keeps a flood of new keys at a
/// constant amortised cost: one scan of the shard per `len / 8` new keys.
fn make_room(map: &mut Shard, now: Instant) {
    let before = map.len();
    map.retain(|_, b| !b.full_at(now));
    if map.len() < before && (before - map.len()) * 8 >= before {
        return;
    }
    let k = (map.len() / 8).max(1);
    let mut ats: Vec<Instant> = map.values().map(|b| b.at).collect();
    if ats.is_empty() {
        return;
    }
    let (_, &mut cutoff, _) = ats.select_nth_unstable(k - 1);
    let mut left = k;
    map.retain(|_, b| {
        if left > 0 && b.at <= cutoff {
            left -= 1;
            false
        } else {
            true
        }
    });
}

/// The shard maps' keys are already SipHash outputs: hashing them again buys nothing.
#[derive(Debug, Clone, Copy, Default)]
struct BuildU64;

impl BuildHasher for BuildU64 {
    type Hasher = U64Hasher;
    fn build_hasher(&self) -> U64Hasher {
        U64Hasher(0)
    }
}

#[derive(Debug, Clone, Copy)]
struct U64Hasher(u64);

impl std::hash::Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
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
        // ("r", "a") is not ("ra", "") nor ("", "ra").
        assert!(rl.allow("ra", "", &l, t0));
        assert!(rl.allow("", "ra", &l, t0));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let rl = RateLimiter::with_capacity(SHARDS * 4);
        let t0 = Instant::now();
        let slow = limit(1, 2);
        for i in 0..10_000 {
            assert!(rl.allow("r", &format!("flood-{i}"), &slow, t0));
        }
        assert!(rl.len() <= SHARDS * 4, "{} buckets kept", rl.len());
        // Buckets kept still limit: a caller just seen has one token left, then none.
        assert!(rl.allow("r", "flood-9999", &slow, t0));
        assert!(!rl.allow("r", "flood-9999", &slow, t0));
    }

    #[test]
    fn a_full_shard_forgets_refilled_buckets_first_then_the_least_recently_used_eighth() {
        let t0 = Instant::now();
        let bucket = |tokens: f64, at: Instant| Bucket {
            tokens,
            at,
            burst: 2.0,
            rate: 1.0,
        };
        let t1 = t0 + Duration::from_secs(1);
        let mut shard = Shard::default();
        shard.insert(1, bucket(0.0, t0)); // refilled 1 of 2 by t1: busy
        shard.insert(2, bucket(2.0, t0)); // full: forgotten
        shard.insert(3, bucket(1.5, t0)); // 2.5 by t1: full, forgotten
        shard.insert(4, bucket(0.0, t1)); // busy
        make_room(&mut shard, t1);
        let mut left: Vec<u64> = shard.keys().copied().collect();
        left.sort();
        assert_eq!(left, vec![1, 4]);
        // Nothing refilled: the least recently used goes (an eighth, at least one).
        make_room(&mut shard, t1);
        assert_eq!(shard.keys().copied().collect::<Vec<_>>(), vec![4]);
        let mut shard = Shard::default();
        for i in 0..64u64 {
            shard.insert(i, bucket(0.0, t0 + Duration::from_millis(i)));
        }
        make_room(&mut shard, t0 + Duration::from_millis(100));
        let mut left: Vec<u64> = shard.keys().copied().collect();
        left.sort();
        assert_eq!(left, (8..64).collect::<Vec<_>>());
    }
}

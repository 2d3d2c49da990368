//! A cache of verified tokens, so a client sending the same bearer token on every request pays
//! for the signature check (RS256 ~17 us, ES256 ~40 us per BENCHMARKS.md) once.
//!
//! - Keyed by SHA-256 (of the verifier's fingerprint and the token), never by the token
//!   itself: a memory dump holds no usable credential.
//! - An entry is valid until the token's `exp` plus the clock skew (exactly as long as
//!   verification would succeed), then it is a miss.
//! - Only successful verifications are cached: caching failures would let anyone fill the
//!   cache with garbage.
//! - Bounded: when a shard is full, expired entries go first, then the entry that expires
//!   soonest (it had the least value left).
//! - Thread-safe without an async runtime: 16 shards, each a `std::sync::Mutex` held for a
//!   map lookup, so contention between gateway worker threads stays low.

use super::jwt::VerifiedToken;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// A cache key: SHA-256 of the verifier fingerprint and the token.
pub type CacheKey = [u8; 32];

/// Errors of this module. The cache itself cannot fail; building one with a zero capacity is
/// refused so that a misconfiguration is not silently a cache that never hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Capacity 0.
    #[error("token cache capacity must be at least 1")]
    ZeroCapacity,
}

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    /// foldhash, not std's SipHash: looked up on every request, keyed by a digest only a
    /// verified token gets into (see the module docs: failures are not cached), so there
    /// is no key an attacker chooses to flood it with (issue 19).
    map: foldhash::HashMap<CacheKey, (Arc<VerifiedToken>, u64)>,
    by_expiry: BTreeSet<(u64, CacheKey)>,
}

impl Shard {
    fn remove(&mut self, key: &CacheKey) {
        if let Some((_, until)) = self.map.remove(key) {
            self.by_expiry.remove(&(until, *key));
        }
    }

    fn evict_expired(&mut self, now: u64) {
        while let Some(&(until, key)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            self.by_expiry.pop_first();
            self.map.remove(&key);
        }
    }
}

/// A bounded, sharded cache of verified tokens.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("len", &self.len())
            .field("capacity", &(self.per_shard * self.shards.len()))
            .finish()
    }
}

impl TokenCache {
    /// Default capacity: 100,000 tokens (a few hundred bytes each).
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A cache holding at most about `capacity` tokens (rounded up to a multiple of the
    /// shard count).
    pub fn new(capacity: usize) -> Result<Self, CacheError> {
        if capacity == 0 {
            return Err(CacheError::ZeroCapacity);
        }
        let shards = SHARDS.min(capacity);
        Ok(Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(shards),
        })
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, Shard> {
        let i = usize::from(key[0]) % self.shards.len();
        // A panic while holding the lock cannot leave a shard inconsistent in a way that
        // matters (worst case an index entry without its map entry, evicted later), so a
        // poisoned lock is recovered rather than propagated.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached token for `key`, if still valid at `now`.
    pub fn get(&self, key: &CacheKey, now: u64) -> Option<Arc<VerifiedToken>> {
        let mut shard = self.shard(key);
        match shard.map.get(key) {
            Some((v, until)) if *until > now => Some(v.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `value` under `key` until `valid_until` (unix seconds, exclusive).
    pub fn insert(&self, key: CacheKey, value: Arc<VerifiedToken>, valid_until: u64, now: u64) {
        if valid_until <= now {
            return;
        }
        let mut shard = self.shard(&key);
        shard.remove(&key);
        if shard.map.len() >= self.per_shard {
            shard.evict_expired(now);
        }
        while shard.map.len() >= self.per_shard {
            let Some((_, victim)) = shard.by_expiry.pop_first() else {
                break;
            };
            shard.map.remove(&victim);
        }
        shard.by_expiry.insert((valid_until, key));
        shard.map.insert(key, (value, valid_until));
    }

    /// Number of entries (including expired ones not yet evicted).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry (e.g. when a provider is removed).
    pub fn clear(&self) {
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.map.clear();
            s.by_expiry.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::UserIdentity;

    fn tok(sub: &str, exp: u64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            identity: Arc::new(UserIdentity {
                idp: "i".into(),
                subject: sub.into(),
                ..UserIdentity::default()
            }),
            expires_at: exp,
        })
    }

    fn key(b: u8, c: u8) -> CacheKey {
        let mut k = [0u8; 32];
        k[0] = b;
        k[1] = c;
        k
    }

    #[test]
    fn hit_until_expiry_then_miss() {
        let c = TokenCache::new(100).unwrap();
        c.insert(key(1, 0), tok("a", 100), 100, 10);
        assert_eq!(c.get(&key(1, 0), 99).unwrap().identity.subject, "a");
        assert!(c.get(&key(1, 0), 100).is_none());
        assert!(c.is_empty(), "expired entry removed on access");
        c.insert(key(2, 0), tok("b", 5), 5, 10);
        assert!(
            c.get(&key(2, 0), 1).is_none(),
            "already expired entries are not stored"
        );
    }

    #[test]
    fn bounded_and_evicts_soonest_expiring() {
        // 16 shards of 2; keys whose first byte is 0, 16, 32 share shard 0.
        let c = TokenCache::new(32).unwrap();
        c.insert(key(0, 1), tok("long", 1000), 1000, 0);
        c.insert(key(16, 1), tok("short", 50), 50, 0);
        c.insert(key(32, 1), tok("medium", 500), 500, 0);
        assert!(
            c.get(&key(16, 1), 1).is_none(),
            "the soonest-expiring entry was evicted"
        );
        assert!(c.get(&key(0, 1), 1).is_some());
        assert!(c.get(&key(32, 1), 1).is_some());
        let c = TokenCache::new(16).unwrap();
        for i in 0..100u8 {
            c.insert(
                key(i, i),
                tok("x", 1000 + u64::from(i)),
                1000 + u64::from(i),
                0,
            );
        }
        assert_eq!(c.len(), 16, "one per shard");
        c.clear();
        assert!(c.is_empty());
        assert_eq!(TokenCache::new(0).unwrap_err(), CacheError::ZeroCapacity);
    }

    #[test]
    fn expired_entries_are_all_dropped_when_full() {
        let c = TokenCache::new(32).unwrap();
        c.insert(key(0, 1), tok("a", 20), 20, 0);
        c.insert(key(16, 1), tok("b", 25), 25, 0);
        // At t=30 both are expired: a full shard drops every expired entry, not just one.
        c.insert(key(32, 1), tok("c", 100), 100, 30);
        assert!(c.get(&key(32, 1), 31).is_some());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn concurrent_use() {
        let c = Arc::new(TokenCache::new(1000).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..200u8 {
                        c.insert(key(i, t), tok("x", 500), 500, 0);
                        assert!(c.get(&key(i, t), 1).is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(c.len() <= 1008);
    }
}

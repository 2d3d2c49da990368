//! A cache of verified tokens, so a client sending the same bearer token on every request pays
//! for the signature check (RS256 ~17 us, ES256 ~40 us per BENCHMARKS.md) once.
//!
//! - Keyed by SHA-256 of the verifier's fingerprint and the token's *signature*, with the
//!   rest of the token (its signed part, `header.payload.`) kept in the entry and compared
//!   byte for byte on a hit: a hit is the same token, exactly. The signature is the part
//!   of a JWT no one can guess (the signed part is the claims, which the entry holds
//!   decoded anyway), so a memory dump still holds no usable credential. Why not a digest
//!   of the whole token, as before: the signed part is a large share of a token's bytes
//!   (294 of the benchmark's 637-byte RS256 token, all but 86 of an ES256 one's), and
//!   hashing the whole token on every request was about 1.5 % of the gateway's CPU per
//!   request; comparing the signed part costs a `memcmp` (issue 19, docs/benchmarks.md).
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

/// A cache key: SHA-256 of the verifier fingerprint and the token's signature. The entry
/// under it also holds the token's signed part, compared on every hit (see the module docs).
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
    map: foldhash::HashMap<CacheKey, Entry>,
    by_expiry: BTreeSet<(u64, CacheKey)>,
}

/// One cached token.
struct Entry {
    token: Arc<VerifiedToken>,
    /// Unix seconds, exclusive.
    valid_until: u64,
    /// The token's signed part, compared on a hit: only the signature is in the key.
    signed: Box<[u8]>,
}

impl Shard {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.map.remove(key) {
            self.by_expiry.remove(&(e.valid_until, *key));
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
    /// Default capacity: 100,000 tokens. An entry holds the verified identity (the claims,
    /// decoded) and the token's signed part (the same claims, base64).
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

    /// The cached token for `key` whose signed part is `signed`, if still valid at `now`.
    /// An entry under `key` with another signed part (a token made of someone's signature
    /// and other claims) is a miss and stays: a forged token cannot evict a real one.
    pub fn get(&self, key: &CacheKey, signed: &[u8], now: u64) -> Option<Arc<VerifiedToken>> {
        let mut shard = self.shard(key);
        match shard.map.get(key) {
            Some(e) if *e.signed != *signed => None,
            Some(e) if e.valid_until > now => Some(e.token.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `value`, the token whose signed part is `signed`, under `key` until
    /// `valid_until` (unix seconds, exclusive).
    pub fn insert(
        &self,
        key: CacheKey,
        signed: &[u8],
        value: Arc<VerifiedToken>,
        valid_until: u64,
        now: u64,
    ) {
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
        shard.map.insert(
            key,
            Entry {
                token: value,
                valid_until,
                signed: signed.into(),
            },
        );
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
        c.insert(key(1, 0), b"s", tok("a", 100), 100, 10);
        assert_eq!(c.get(&key(1, 0), b"s", 99).unwrap().identity.subject, "a");
        assert!(c.get(&key(1, 0), b"s", 100).is_none());
        assert!(c.is_empty(), "expired entry removed on access");
        c.insert(key(2, 0), b"s", tok("b", 5), 5, 10);
        assert!(
            c.get(&key(2, 0), b"s", 1).is_none(),
            "already expired entries are not stored"
        );
    }

    /// Only the signature is in the key: an entry answers only the token whose signed part
    /// it holds, and a token with the same signature and other claims neither hits nor
    /// evicts it.
    #[test]
    fn a_hit_needs_the_same_signed_part() {
        let c = TokenCache::new(100).unwrap();
        c.insert(key(1, 0), b"h.alice.", tok("alice", 100), 100, 10);
        assert!(c.get(&key(1, 0), b"h.mallory.", 20).is_none());
        assert!(
            c.get(&key(1, 0), b"h.alice", 20).is_none(),
            "a prefix is not it"
        );
        assert!(c.get(&key(1, 0), b"", 20).is_none());
        assert_eq!(c.len(), 1, "the real entry stays");
        let hit = c.get(&key(1, 0), b"h.alice.", 20).unwrap();
        assert_eq!(hit.identity.subject, "alice");
        // Expiry still applies to the real token, and only the real token removes it.
        assert!(c.get(&key(1, 0), b"h.mallory.", 200).is_none());
        assert_eq!(c.len(), 1);
        assert!(c.get(&key(1, 0), b"h.alice.", 200).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_and_evicts_soonest_expiring() {
        // 16 shards of 2; keys whose first byte is 0, 16, 32 share shard 0.
        let c = TokenCache::new(32).unwrap();
        c.insert(key(0, 1), b"s", tok("long", 1000), 1000, 0);
        c.insert(key(16, 1), b"s", tok("short", 50), 50, 0);
        c.insert(key(32, 1), b"s", tok("medium", 500), 500, 0);
        assert!(
            c.get(&key(16, 1), b"s", 1).is_none(),
            "the soonest-expiring entry was evicted"
        );
        assert!(c.get(&key(0, 1), b"s", 1).is_some());
        assert!(c.get(&key(32, 1), b"s", 1).is_some());
        let c = TokenCache::new(16).unwrap();
        for i in 0..100u8 {
            c.insert(
                key(i, i),
                b"s",
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
        c.insert(key(0, 1), b"s", tok("a", 20), 20, 0);
        c.insert(key(16, 1), b"s", tok("b", 25), 25, 0);
        // At t=30 both are expired: a full shard drops every expired entry, not just one.
        c.insert(key(32, 1), b"s", tok("c", 100), 100, 30);
        assert!(c.get(&key(32, 1), b"s", 31).is_some());
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
                        c.insert(key(i, t), b"s", tok("x", 500), 500, 0);
                        assert!(c.get(&key(i, t), b"s", 1).is_some());
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

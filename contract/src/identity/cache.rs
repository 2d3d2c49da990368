//! A cache of verified tokens, so a client sending the same bearer token on every request pays
//! for the signature check (RS256 ~17 us, ES256 ~40 us per BENCHMARKS.md) once.
//!
//! - Keyed by SHA-256 of the verifier's fingerprint and the head of the token's
//!   *signature* (its first [`KEY_HEAD`] characters); the rest of the token is checked on a
//!   hit: the signed part (`header.payload.`) kept in the entry and compared byte for byte,
//!   the signature's tail by a 64-bit tag. So a hit is the same token: the signed part and
//!   the signature's head exactly, the tail up to a 2^-64 chance for a token whose tail
//!   was guessed blind by someone who knows the rest (and so has seen the token's
//!   signature); a wrong guess is a miss, which verification then refuses.
//! - The signature is the part of a JWT no one can guess (the signed part is the claims,
//!   which the entry holds decoded anyway). The cache keeps it only as the digest of its
//!   head and the tag of its tail (about 1,800 bits of an RS256 signature behind 64), so a
//!   memory dump still holds no usable credential.
//! - Why not a digest of the whole token, or of the whole signature: the key is computed on
//!   every request, and SHA-256 was the largest part of a cached check. The fingerprint and
//!   23 characters fill one SHA-256 block; the whole benchmark token took eleven, its whole
//!   RS256 signature six (issue 19, docs/benchmarks.md).
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

/// Characters of a signature's head in the key: with the verifier's 32-byte fingerprint,
/// 55 bytes, the most one SHA-256 block holds (its padding takes the other 9). 23 base64
/// characters are 138 bits of the signature.
pub const KEY_HEAD: usize = 23;

/// A token's place in the cache ([`TokenCache::key`]): the digest the entries are found by,
/// and the tag of the rest of the signature, checked on a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey {
    /// SHA-256 of the verifier's fingerprint and the signature's head.
    digest: [u8; 32],
    /// The rest of the signature under the cache's seed.
    tail: u64,
}

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
    map: foldhash::HashMap<[u8; 32], Entry>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
}

/// One cached token.
struct Entry {
    token: Arc<VerifiedToken>,
    /// Unix seconds, exclusive.
    valid_until: u64,
    /// The token's signed part, compared on a hit: only the signature is in the key.
    signed: Box<[u8]>,
    /// The tag of the signature's tail ([`CacheKey::tail`]), compared on a hit.
    tail: u64,
}

impl Shard {
    fn remove(&mut self, key: &[u8; 32]) {
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
    /// The hasher of the signature tails' tags, seeded per cache. foldhash: a 64-bit hash
    /// of an RS256 tail (319 characters) in a few dozen cycles, where SipHash would cost
    /// most of what the shorter digest saves. Its strength is not what the tag rests on:
    /// matching a tag takes the tail it was made from, which only a holder of the token
    /// has.
    tails: foldhash::fast::RandomState,
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
            tails: foldhash::fast::RandomState::default(),
        })
    }

    /// The key of a token whose signature (the part after its last dot) is `signature`,
    /// for a verifier with `fingerprint` (see the module docs).
    pub fn key(&self, fingerprint: &[u8; 32], signature: &[u8]) -> CacheKey {
        use sha2::{Digest, Sha256};
        use std::hash::BuildHasher;
        let (head, tail) = signature.split_at(signature.len().min(KEY_HEAD));
        let mut h = Sha256::new();
        h.update(fingerprint);
        h.update(head);
        CacheKey {
            digest: h.finalize().into(),
            tail: self.tails.hash_one(tail),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> MutexGuard<'_, Shard> {
        let i = usize::from(key[0]) % self.shards.len();
        // A panic while holding the lock cannot leave a shard inconsistent in a way that
        // matters (worst case an index entry without its map entry, evicted later), so a
        // poisoned lock is recovered rather than propagated.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached token for `key` whose signed part is `signed`, if still valid at `now`.
    /// An entry under `key` with another signed part or signature tail (a token made of
    /// someone's signature and other claims, or of another signature with the same head) is
    /// a miss and stays: a forged token cannot evict a real one.
    pub fn get(&self, key: &CacheKey, signed: &[u8], now: u64) -> Option<Arc<VerifiedToken>> {
        let mut shard = self.shard(&key.digest);
        match shard.map.get(&key.digest) {
            Some(e) if e.tail != key.tail || *e.signed != *signed => None,
            Some(e) if e.valid_until > now => Some(e.token.clone()),
            Some(_) => {
                shard.remove(&key.digest);
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
        let mut shard = self.shard(&key.digest);
        shard.remove(&key.digest);
        if shard.map.len() >= self.per_shard {
            shard.evict_expired(now);
        }
        while shard.map.len() >= self.per_shard {
            let Some((_, victim)) = shard.by_expiry.pop_first() else {
                break;
            };
            shard.map.remove(&victim);
        }
        shard.by_expiry.insert((valid_until, key.digest));
        shard.map.insert(
            key.digest,
            Entry {
                token: value,
                valid_until,
                signed: signed.into(),
                tail: key.tail,
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
        let mut digest = [0u8; 32];
        digest[0] = b;
        digest[1] = c;
        CacheKey { digest, tail: 0 }
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

    /// The key digests the fingerprint and the signature's first [`KEY_HEAD`] characters;
    /// every other character of the signature is in the tail's tag.
    #[test]
    fn the_key_digests_the_head_and_tags_the_tail() {
        let c = TokenCache::new(100).unwrap();
        let sig = [b'a'; 342];
        let k = c.key(&[1; 32], &sig);
        assert_eq!(k, c.key(&[1; 32], &sig));
        let mut other_tail = sig;
        other_tail[341] = b'b';
        let t = c.key(&[1; 32], &other_tail);
        assert_eq!(t.digest, k.digest);
        assert_ne!(t.tail, k.tail);
        let mut other_head = sig;
        other_head[KEY_HEAD - 1] = b'b';
        let h = c.key(&[1; 32], &other_head);
        assert_ne!(h.digest, k.digest);
        assert_eq!(h.tail, k.tail);
        assert_ne!(c.key(&[2; 32], &sig).digest, k.digest, "another verifier");
        assert_ne!(c.key(&[1; 32], &sig[..341]).tail, k.tail, "a shorter tail");
        // A signature no longer than the head (an HS256 one is 43 characters, an ES256 one
        // 86) is all in the digest.
        let short = c.key(&[1; 32], &sig[..KEY_HEAD]);
        assert_eq!(short.tail, c.key(&[1; 32], b"").tail);
        assert_ne!(short.digest, c.key(&[1; 32], &sig[..KEY_HEAD - 1]).digest);
    }

    /// An entry answers only the token whose signature tail it was made from: a token with
    /// the same signature head and another tail neither hits nor evicts it.
    #[test]
    fn a_hit_needs_the_same_signature_tail() {
        let c = TokenCache::new(100).unwrap();
        let sig = [b'a'; 86];
        let mut forged = sig;
        forged[85] = b'b';
        let real = c.key(&[1; 32], &sig);
        c.insert(real, b"h.alice.", tok("alice", 100), 100, 10);
        let other = c.key(&[1; 32], &forged);
        assert!(c.get(&other, b"h.alice.", 20).is_none());
        assert!(
            c.get(&other, b"h.alice.", 200).is_none(),
            "not even once expired"
        );
        assert_eq!(c.len(), 1, "the real entry stays");
        assert_eq!(
            c.get(&real, b"h.alice.", 20).unwrap().identity.subject,
            "alice"
        );
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

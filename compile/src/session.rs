//! Session signing keys of a tenant at one Gateway: from the entries of the operator's
//! `<gateway>-session-<tenant>` Secret to the snapshot's `session.signingKeys`.
//!
//! ```text
//!  Secret data   key-20261201022800: <base64 of 32 random bytes>   (generated once)
//!                key-20270301000000: <base64 of >= 32 bytes>       (added by a person: rotation)
//!      | session_keys (pure): each entry checked alone; a bad one is skipped with a message
//!      v
//!  signingKeys   [{id: 20270301000000, ..}, {id: 20261201022800, ..}]   newest first:
//!                the first seals new cookies, every one opens existing ones
//! ```
//!
//! Why the newest id signs rather than the order of entries: a Secret's data is a map, so the
//! only order a person controls is the key names. Ids compare as numbers when both are all
//! digits (so a counter `key-9`, `key-10` works) and as text otherwise (a UTC timestamp
//! `YYYYMMDDhhmmss`, what the operator writes, sorts either way).
//!
//! Why each entry is checked alone: one mistyped entry added during a rotation must not take
//! every tenant's login down with it, so it is left out and reported, and the others keep
//! working. The value is never part of a message.

use base64::Engine;
use rustronaut_contract::snapshot::{Sensitive, SessionKey};
use rustronaut_crds::Tenant;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Prefix of every entry of a session key Secret; the rest of the entry's name is the key id.
pub const KEY_PREFIX: &str = "key-";
/// Fewest random bytes a key must decode to (the contract's and the gateway's minimum).
pub const MIN_KEY_BYTES: usize = 32;
/// Longest key id: it travels in every cookie (`v1.<id>.<sealed>`), which browsers cap.
pub const MAX_ID_LEN: usize = 64;

/// Whether a tenant needs session keys: it has an OIDC identity provider (browser login is
/// the only thing that issues session cookies; other tenants get no key Secret at all).
pub fn wants_session_keys(t: &Tenant) -> bool {
    t.spec.identity_providers.iter().any(|i| i.oidc.is_some())
}

/// Name of the Secret holding `tenant`'s session keys at Gateway `gateway` (in the
/// Gateway's namespace): one per Gateway and tenant, so Gateways never share a key and
/// deleting one Gateway's Secret logs nobody out elsewhere.
pub fn secret_name(gateway: &str, tenant: &str) -> String {
    format!("{gateway}-session-{tenant}")
}

/// The Secret entry name of key `id`.
pub fn entry_name(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Order of key ids, oldest first: numerically when both are all digits, else as text.
pub fn compare_ids(a: &str, b: &str) -> Ordering {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if digits(a) && digits(b) {
        let (x, y) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        // Equal numbers ("10", "010") are still different ids: the text breaks the tie, so
        // the order never depends on the Secret's.
        x.len()
            .cmp(&y.len())
            .then_with(|| x.cmp(y))
            .then_with(|| a.cmp(b))
    } else {
        a.cmp(b)
    }
}

/// Why a key id is unusable, if it is: the id is the cookie's key id, between two dots, so
/// it must be short and cookie-safe.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("the key id after \"key-\" is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!("the key id is longer than {MAX_ID_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Some("the key id may hold only letters, digits, '-' and '_'".into());
    }
    None
}

/// The signing keys in a session key Secret's `data`, newest id first, and a message for each
/// entry that was skipped (never quoting its value).
pub fn session_keys(data: &BTreeMap<String, Vec<u8>>) -> (Vec<SessionKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (entry, value) in data {
        let Some(id) = entry.strip_prefix(KEY_PREFIX) else {
            skipped.push(format!(
                "entry {entry}: not a key (entries are named {KEY_PREFIX}<id>)"
            ));
            continue;
        };
        if let Some(why) = id_problem(id) {
            skipped.push(format!("entry {entry}: {why}"));
            continue;
        }
        let text = std::str::from_utf8(value).map(str::trim).ok();
        let ok = text.is_some_and(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .is_ok_and(|b| b.len() >= MIN_KEY_BYTES)
        });
        match text {
            Some(t) if ok => keys.push(SessionKey {
                id: id.to_string(),
                secret: Sensitive::new(t),
            }),
            _ => skipped.push(format!(
                "entry {entry}: not base64 of at least {MIN_KEY_BYTES} bytes"
            )),
        }
    }
    keys.sort_by(|a, b| compare_ids(&b.id, &a.id));
    (keys, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 of `n` bytes of `fill`.
    fn key(fill: u8, n: usize) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(vec![fill; n])
            .into_bytes()
    }

    fn data(entries: &[(&str, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn ids(keys: &[SessionKey]) -> Vec<&str> {
        keys.iter().map(|k| k.id.as_str()).collect()
    }

    #[test]
    fn newest_id_first() {
        let (keys, skipped) = session_keys(&data(&[
            ("key-20261201022800", key(1, 32)),
            ("key-20270301000000", key(2, 32)),
            ("key-20261115000000", key(3, 48)),
        ]));
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            ids(&keys),
            ["20270301000000", "20261201022800", "20261115000000"]
        );
        assert_eq!(
            keys[0].secret.expose().as_bytes(),
            key(2, 32),
            "each id keeps its own value"
        );
    }

    #[test]
    fn counters_compare_as_numbers_and_text_as_text() {
        let (keys, _) = session_keys(&data(&[
            ("key-9", key(1, 32)),
            ("key-10", key(2, 32)),
            ("key-010", key(3, 32)),
            ("key-2", key(4, 32)),
        ]));
        // 10 and 010 are the same number; the text then decides, stably.
        assert_eq!(ids(&keys), ["10", "010", "9", "2"]);
        assert_eq!(compare_ids("b", "a"), Ordering::Greater);
        assert_eq!(compare_ids("a-9", "a-10"), Ordering::Greater, "text");
        assert_eq!(compare_ids("9", "10"), Ordering::Less, "numbers");
    }

    #[test]
    fn bad_entries_are_skipped_with_a_message_and_the_rest_kept() {
        let secret_value = key(7, 16);
        let (keys, skipped) = session_keys(&data(&[
            ("key-20261201022800", key(1, 32)),
            ("key-short", secret_value.clone()),
            ("key-notbase64", b"this is not base64!".to_vec()),
            ("key-binary", vec![0xff; 40]),
            ("key-", key(1, 32)),
            ("key-a.b", key(1, 32)),
            (&format!("key-{}", "x".repeat(65)), key(1, 32)),
            ("signing", key(1, 32)),
        ]));
        assert_eq!(ids(&keys), ["20261201022800"]);
        assert_eq!(skipped.len(), 7, "{skipped:?}");
        for m in &skipped {
            assert!(m.starts_with("entry "), "{m}");
            assert!(
                !m.contains(std::str::from_utf8(&secret_value).unwrap()),
                "never the value: {m}"
            );
        }
        assert!(
            skipped
                .iter()
                .any(|m| m.contains("key-a.b") && m.contains("'-'"))
        );
        assert!(
            skipped
                .iter()
                .any(|m| m.contains("signing") && m.contains("not a key"))
        );
    }

    #[test]
    fn whitespace_around_a_value_is_ignored() {
        // `echo $(openssl rand -base64 32) | kubectl create secret ... --from-file` adds a
        // newline; the contract wants the bare base64.
        let mut v = key(5, 32);
        v.push(b'\n');
        let (keys, skipped) = session_keys(&data(&[("key-1", v)]));
        assert!(skipped.is_empty());
        assert_eq!(keys[0].secret.expose().as_bytes(), key(5, 32));
    }

    #[test]
    fn an_empty_secret_has_no_keys() {
        assert_eq!(session_keys(&BTreeMap::new()), (Vec::new(), Vec::new()));
    }
}

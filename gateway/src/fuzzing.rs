//! Fuzz entry points for the parsing of untrusted input the gateway owns (the snapshot,
//! path, JWT and PROXY-header parsers are the contract crate's and fuzzed there), shared by
//! the cargo-fuzz targets in `gateway/fuzz/` (libFuzzer, nightly) and by a plain test
//! (`gateway/tests/fuzz_smoke.rs`) that feeds them deterministic pseudo-random inputs on
//! stable, so CI exercises them on every run.
//!
//! Each function must never panic, whatever the bytes; beyond that it asserts the parser's
//! invariants (a panic is how the fuzzer reports a finding).

use crate::downstream::{HeadScan, check_head, head_end};
use crate::framing::{Limits, Refusal, check};
use crate::session::{Purpose, TenantKeys};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use std::sync::OnceLock;

/// Small limits, so the fuzzer reaches the size refusals with short inputs.
const LIMITS: Limits = Limits {
    max_headers: 8,
    max_header_bytes: 256,
    max_body_bytes: 1000,
};

/// The header fields of a raw head as a parser would hand them on: `name: value` lines after
/// the first, split at CRLF or LF, kept only where `http` accepts the name and value (as
/// Pingora's parser would refuse the rest before the gateway sees them).
fn parse_fields(head: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// A request head as it arrives on a socket: the raw line checks of
/// [`crate::downstream`] (head end, bare LF, obs-fold; the one-pass [`HeadScan`] the
/// gateway runs agrees with them), then [`crate::framing::check`] on the
/// fields for each HTTP version, then the path and host checks of [`crate::pipeline`] on the
/// request line. Invariants: a head the raw check passes has only CRLF line ends and no
/// folded line; a framing refusal is 400, 413 or 431 and a pass respects every rule the
/// module promises; the host a request is routed by is lower-case and non-empty, and the
/// host an OIDC redirect names starts with it.
pub fn request_head(data: &[u8]) {
    let end = head_end(data);
    if let Some(e) = end {
        assert!(e <= data.len() && e >= 2, "head end {e} of {}", data.len());
        assert_eq!(data[e - 1], b'\n');
    }
    let head = &data[..end.unwrap_or(data.len())];
    // The one-pass scan the gateway runs agrees with the two, fed in two reads cut at a
    // point the input picks.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut scan = HeadScan::default();
    let scanned = scan.feed(&data[..cut]).or_else(|| scan.feed(data));
    assert_eq!(scanned, end, "one-pass end, cut at {cut}");
    if end.is_some() {
        assert_eq!(
            scan.verdict(),
            check_head(head),
            "one-pass verdict, cut at {cut}"
        );
    }
    if check_head(head).is_ok() {
        for (i, b) in head.iter().enumerate() {
            if *b == b'\n' {
                assert!(i > 0 && head[i - 1] == b'\r', "bare LF passed at {i}");
                assert!(
                    !matches!(head.get(i + 1), Some(b' ' | b'\t')),
                    "obs-fold passed at {i}"
                );
            }
        }
    }

    let fields = parse_fields(head);
    for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
        let result = check(version, &fields, &LIMITS);
        assert_eq!(result, check(version, &fields, &LIMITS), "deterministic");
        match result {
            Err(r) => {
                assert!(matches!(r.status(), 400 | 413 | 431), "{r:?}");
                assert!(!r.reason().is_empty());
                if let Refusal::BodyTooLarge(n) = r {
                    assert_eq!(n, LIMITS.max_body_bytes);
                }
            }
            Ok(()) => {
                assert!(fields.len() <= LIMITS.max_headers);
                assert!(fields.get_all(http::header::HOST).iter().count() <= 1);
                let cl: Vec<_> = fields
                    .get_all(http::header::CONTENT_LENGTH)
                    .iter()
                    .collect();
                let te = fields
                    .get_all(http::header::TRANSFER_ENCODING)
                    .iter()
                    .count();
                if version != Version::HTTP_2 {
                    assert!(cl.len() <= 1, "repeated Content-Length passed");
                    assert!(cl.is_empty() || te == 0, "CL with TE passed");
                    assert!(te <= 1, "repeated Transfer-Encoding passed");
                    if let Some(v) = cl.first() {
                        let n: u64 = v.to_str().unwrap().parse().unwrap();
                        assert!(n <= LIMITS.max_body_bytes);
                    }
                }
            }
        }
    }

    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(first);
    let target = text.split(' ').nth(1).unwrap_or("");
    let _ = crate::pipeline::ambiguous_path(target);
    if let Some(raw) = fields.get(http::header::HOST).and_then(|h| h.to_str().ok())
        && let Some(host) = crate::pipeline::host_only(raw)
    {
        assert!(!host.is_empty());
        assert_eq!(host, host.to_ascii_lowercase());
        if let Some(public) = crate::oidc::public_host(raw) {
            assert!(public.starts_with(&*host), "{public} for {host}");
        }
    }
}

/// The fixed session keys of the cookie target.
fn keys() -> &'static TenantKeys {
    static KEYS: OnceLock<TenantKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use base64::Engine;
        use rustronaut_contract::snapshot::{Sensitive, SessionConfig, SessionKey};
        let config = SessionConfig {
            duration_seconds: 3600,
            signing_keys: vec![SessionKey {
                id: "k1".into(),
                secret: Sensitive::new(base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
            }],
        };
        match TenantKeys::new("fuzz", &config) {
            Ok(Some(k)) => k,
            other => panic!("the fuzzing session keys must load: {other:?}"),
        }
    })
}

/// `Cookie` headers (one per line of `data`) as the gateway reads them for JWT cookies and
/// the session cookie, and strips them before forwarding. Invariants: every value found is
/// part of the input; stripping removes exactly the named cookies, is idempotent and never
/// leaves an empty header; no input opens as a session or login cookie (they are AES-GCM
/// sealed with a key the input cannot know), and the callback's query parsing never
/// panics.
pub fn cookies(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let headers: Vec<&str> = text.lines().collect();
    let names = [
        "rtn_token".to_string(),
        crate::session::SESSION_COOKIE.to_string(),
        crate::session::LOGIN_COOKIE.to_string(),
    ];
    for name in &names {
        for v in crate::authn::cookie_values(&headers, name) {
            assert!(text.contains(v), "{v:?} is not in the input");
        }
    }
    for h in &headers {
        match crate::authn::strip_cookies(h, &names) {
            Some(kept) => {
                assert!(!kept.is_empty());
                for name in &names {
                    assert!(
                        crate::authn::cookie_values(&[kept.as_str()], name).is_empty(),
                        "{name} survived in {kept:?}"
                    );
                }
                assert_eq!(
                    crate::authn::strip_cookies(&kept, &names).as_deref(),
                    Some(kept.as_str()),
                    "stripping twice changed {kept:?}"
                );
            }
            None => {
                for pair in h.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    let n = pair.split_once('=').map_or(pair, |(n, _)| n);
                    assert!(names.iter().any(|x| x == n), "{pair:?} was dropped");
                }
            }
        }
        let _ = crate::authn::bearer(h);
        let _ = crate::oidc::query_param(h, "state");
        let _ = crate::oidc::query_param(h, "code");
    }
    let k = keys();
    for purpose in [Purpose::Session, Purpose::Login] {
        assert!(
            k.open(purpose, &text).is_none(),
            "forged {purpose:?} cookie"
        );
    }
    assert!(crate::oidc::session_from_cookies(k, &headers, 1).is_none());
}

//! Request-path normalisation, used for BOTH policy/route matching and forwarding.
//!
//! If the gateway matched one spelling of a path and forwarded another, a rule for `/admin`
//! could be bypassed with `/api/../admin` or `/%61dmin`. So the gateway normalises the
//! request target once, matches on the result and forwards the same result:
//!
//! ```text
//!   "/api/%2e%2e//%61dmin/?x=1"
//!        | split off the query (kept byte for byte)
//!        | per segment: percent-decode, classify, resolve "." and "..", drop empty segments
//!        v
//!   NormalizedPath { decoded: "/admin/", forward: "/admin/" } + query "x=1"
//! ```
//!
//! Choices, each deliberate:
//! - **Unreserved characters** (`A-Z a-z 0-9 - . _ ~`) are decoded in both forms (RFC 3986
//!   §6.2.2.2): `%61dmin` is `admin`.
//! - **Other percent-encoded bytes** stay encoded (hex upper-cased) in the forwarded form, since
//!   RFC 3986 says `%3B` and `;` are different URIs, and are decoded in the matching form, so
//!   a rule for `/café` sees `/caf%C3%A9` as `/café`. Raw non-ASCII bytes and characters not
//!   allowed in a path (`"`, `<`, `|`...) are percent-encoded in the forwarded form.
//! - **Dot segments** (`.`, `..`, and their encoded spellings `%2e`, `%2E%2e`...) are resolved
//!   (RFC 3986 §5.2.4); `..` at the root stays at the root.
//! - **Repeated slashes** collapse (`//admin` is `/admin`). An upstream that distinguishes
//!   `//a` from `/a` sees only the collapsed form, so matching and serving agree.
//! - **Rejected** (the gateway answers 400): an encoded slash `%2F` (it would make one segment
//!   look like two to some upstreams and not to others), an encoded or raw backslash (Windows
//!   and IIS treat it as a separator), an encoded NUL, control characters and spaces, a `%`
//!   not followed by two hex digits, decoded bytes that are not UTF-8, a fragment (`#`), a
//!   target that does not start with `/`, and targets longer than [`MAX_TARGET_LEN`].
//! - **Case is preserved** and matching is case-sensitive, as RFC 3986 paths are. An upstream
//!   that serves `/Admin` and `/admin` alike (IIS, some Windows file servers) needs rules for
//!   both spellings; we do not lower-case because that would change what case-sensitive
//!   upstreams receive.
//! - **Not handled**: path parameters (`/admin;x=1`). Some Java servers strip them before
//!   routing; rules do not see `/admin;x=1` as `/admin`. Deny such paths with an explicit rule
//!   where an upstream strips them. Upstreams that decode twice (`%252e` -> `%2e` -> `.`) are
//!   out of scope: they are broken regardless of the proxy in front of them.

use crate::snapshot::PathMatchType;

/// Longest request target accepted (path and query), in bytes.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// Why a request target was rejected. Every variant means "answer 400".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target does not start with `/` (absolute-form is converted by the HTTP layer).
    #[error("request path must start with '/'")]
    NotAbsolute,
    /// Longer than [`MAX_TARGET_LEN`].
    #[error("request target longer than {MAX_TARGET_LEN} bytes")]
    TooLong,
    /// `%2F`: an encoded slash.
    #[error("encoded slash (%2F) in request path")]
    EncodedSlash,
    /// `%5C` or a raw backslash.
    #[error("backslash in request path")]
    Backslash,
    /// `%00`.
    #[error("encoded NUL (%00) in request path")]
    EncodedNul,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {0}")]
    InvalidPercentEncoding(usize),
    /// A raw control character, space or DEL.
    #[error("invalid character 0x{0:02x} in request target")]
    InvalidCharacter(u8),
    /// The decoded path is not UTF-8.
    #[error("request path does not decode to UTF-8")]
    InvalidUtf8,
    /// A `#` fragment: never part of a request target.
    #[error("fragment ('#') in request target")]
    Fragment,
}

/// A normalised path: the decoded form for matching, and the canonical encoded form to
/// forward. Only [`normalize`] and [`normalize_path`] create one, so holding one proves the
/// path went through normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedPath {
    decoded: String,
    /// `None` when the forwarded form is the decoded one (the common case: a path already in
    /// normal form, one allocation instead of two). Never `Some` of a copy of `decoded`, so
    /// the derived equality and hash hold.
    forward: Option<String>,
}

impl NormalizedPath {
    /// The fully decoded path, what rules and routes are matched against.
    pub fn as_str(&self) -> &str {
        &self.decoded
    }

    /// The canonical encoded path to send upstream (same segments as [`Self::as_str`]).
    pub fn forward(&self) -> &str {
        self.forward.as_deref().unwrap_or(&self.decoded)
    }
}

/// A normalised request target: path plus the query string, which is kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestTarget {
    /// The normalised path.
    pub path: NormalizedPath,
    /// The query string without the `?`, unchanged; `None` when the target had no `?`.
    pub query: Option<String>,
}

impl RequestTarget {
    /// The target to forward: the normalised path and the original query.
    pub fn forward(&self) -> String {
        match &self.query {
            Some(q) => {
                let path = self.path.forward();
                let mut t = String::with_capacity(path.len() + 1 + q.len());
                t.push_str(path);
                t.push('?');
                t.push_str(q);
                t
            }
            None => self.path.forward().to_owned(),
        }
    }

    /// Whether [`Self::forward`] is `original` byte for byte: the usual case, a target with
    /// nothing to normalise, which a proxy can then send on as it came without building a
    /// copy of it.
    pub fn forwards_as(&self, original: &str) -> bool {
        let path = self.path.forward();
        match &self.query {
            None => original == path,
            Some(q) => original
                .strip_prefix(path)
                .and_then(|rest| rest.strip_prefix('?'))
                .is_some_and(|rest| rest == q),
        }
    }
}

/// Normalises an origin-form request target (`/path?query`).
pub fn normalize(target: &str) -> Result<RequestTarget, PathError> {
    if target.len() > MAX_TARGET_LEN {
        return Err(PathError::TooLong);
    }
    for &b in target.as_bytes() {
        check_raw_byte(b)?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    Ok(RequestTarget {
        path: normalize_segments(path)?,
        query,
    })
}

/// Normalises a path that has no query string; a `?` is treated as the start of one and
/// dropped. Convenience for tests and tools; the gateway uses [`normalize`].
pub fn normalize_path(path: &str) -> Result<NormalizedPath, PathError> {
    normalize(path).map(|t| t.path)
}

fn check_raw_byte(b: u8) -> Result<(), PathError> {
    match b {
        b'#' => Err(PathError::Fragment),
        0x00..=0x20 | 0x7f => Err(PathError::InvalidCharacter(b)),
        _ => Ok(()),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a path segment (RFC 3986 `pchar` minus percent-encodings).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    out.push(b'%');
    out.push(HEX_UPPER[usize::from(b >> 4)]);
    out.push(HEX_UPPER[usize::from(b & 0x0f)]);
}

struct Segment {
    decoded: String,
    forward: String,
}

/// Decodes one raw segment (no `/` inside). `offset` is the segment's position in the path,
/// for error messages.
fn decode_segment(raw: &[u8], offset: usize) -> Result<Segment, PathError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut forward = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_val);
            let lo = raw.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::InvalidPercentEncoding(offset + i));
            };
            let d = hi << 4 | lo;
            match d {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0 => return Err(PathError::EncodedNul),
                _ => {}
            }
            decoded.push(d);
            if is_unreserved(d) {
                forward.push(d);
            } else {
                push_encoded(&mut forward, d);
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        decoded.push(b);
        if is_pchar(b) {
            forward.push(b);
        } else {
            push_encoded(&mut forward, b);
        }
        i += 1;
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    // The forwarded form is ASCII by construction: every byte >= 0x80 was percent-encoded.
    let forward = String::from_utf8(forward).map_err(|_| PathError::InvalidUtf8)?;
    Ok(Segment { decoded, forward })
}

/// Whether `path` is already in normal form, so normalising it would return it unchanged:
/// starts with `/`, every byte a raw `pchar` (no `%`, no `\`, ASCII only), no empty segment
/// but a trailing one, no `.` or `..` segment. Most requests take this path: one pass, one
/// allocation. A test checks it against the general path on generated targets.
fn already_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
        if !seg.bytes().all(is_pchar) {
            return false;
        }
    }
    true
}

fn normalize_segments(path: &str) -> Result<NormalizedPath, PathError> {
    if already_normal(path) {
        return Ok(NormalizedPath {
            decoded: path.to_owned(),
            forward: None,
        });
    }
    normalize_segments_general(path)
}

fn normalize_segments_general(path: &str) -> Result<NormalizedPath, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut stack: Vec<Segment> = Vec::new();
    let mut trailing_slash = false;
    let mut offset = 1;
    let parts: Vec<&[u8]> = bytes[1..].split(|&b| b == b'/').collect();
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        let is_last = i == last;
        let start = offset;
        offset += part.len() + 1;
        if part.is_empty() {
            // An empty segment: a repeated slash (dropped) or a trailing slash (kept).
            if is_last {
                trailing_slash = true;
            }
            continue;
        }
        let seg = decode_segment(part, start)?;
        match seg.decoded.as_str() {
            "." => {
                if is_last {
                    trailing_slash = true;
                }
            }
            ".." => {
                stack.pop();
                if is_last {
                    trailing_slash = true;
                }
            }
            _ => {
                stack.push(seg);
                if is_last {
                    trailing_slash = false;
                }
            }
        }
    }
    let mut decoded = String::with_capacity(path.len());
    let mut forward = String::with_capacity(path.len());
    for seg in &stack {
        decoded.push('/');
        decoded.push_str(&seg.decoded);
        forward.push('/');
        forward.push_str(&seg.forward);
    }
    if stack.is_empty() || trailing_slash {
        decoded.push('/');
        forward.push('/');
    }
    let forward = (forward != decoded).then_some(forward);
    Ok(NormalizedPath { decoded, forward })
}

/// Whether a rule or route path value is already in normal form: starts with `/`, has no
/// empty, `.` or `..` segments (a trailing `/` is allowed), and no `%`, `?`, `#`, `\` or
/// control characters. Values that are not would never match a normalised request, so the
/// snapshot validation and the policy compiler refuse them.
pub fn is_normalized_rule_path(value: &str) -> bool {
    let Some(rest) = value.strip_prefix('/') else {
        return false;
    };
    if value
        .bytes()
        .any(|b| matches!(b, b'%' | b'?' | b'#' | b'\\') || b <= 0x20 || b == 0x7f)
    {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .all(|(i, s)| !matches!(*s, "." | "..") && (!s.is_empty() || i == last))
}

/// Gateway API path matching on a normalised path. `Exact`: the whole path equals `value`.
/// `PathPrefix`: the path starts with `value` on a segment boundary, so `/api` matches `/api`,
/// `/api/` and `/api/x` but not `/apix`; `/` matches everything; a trailing slash in the value
/// (`/api/`) requires it in the path.
pub fn path_matches(kind: PathMatchType, value: &str, path: &NormalizedPath) -> bool {
    let p = path.as_str();
    match kind {
        PathMatchType::Exact => p == value,
        PathMatchType::PathPrefix => {
            if value.ends_with('/') {
                return p.starts_with(value);
            }
            match p.strip_prefix(value) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path for targets already in normal form gives exactly what the general one
    /// gives, on every target of up to five characters over an alphabet of the characters
    /// that matter (separators, dots, escapes, a backslash, a non-ASCII letter).
    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let alphabet = ["/", ".", "a", "%", "2", "e", ";", "\\", "é"];
        let mut targets = vec![String::new()];
        let mut fast = 0;
        for _ in 0..5 {
            let mut next = Vec::new();
            for t in &targets {
                for c in alphabet {
                    next.push(format!("{t}{c}"));
                }
            }
            for t in &next {
                let general = normalize_segments_general(t);
                if already_normal(t) {
                    fast += 1;
                    let got = normalize_segments(t).unwrap();
                    assert_eq!(Ok(got.clone()), general, "{t:?}");
                    assert_eq!(got.as_str(), t);
                    assert_eq!(got.forward(), t);
                } else {
                    assert_eq!(normalize_segments(t), general, "{t:?}");
                }
            }
            targets = next;
        }
        assert!(fast > 1000, "the fast path was taken {fast} times");
    }

    fn n(s: &str) -> String {
        normalize(s).unwrap().path.as_str().to_string()
    }
    fn fwd(s: &str) -> String {
        normalize(s).unwrap().forward()
    }

    #[test]
    fn traversal_spellings_all_become_admin() {
        for t in [
            "/admin",
            "/api/../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "//admin",
            "/api/%2e%2e/admin",
            "/api/.%2e/admin",
            "/./admin",
            "/api/x/../../admin",
            "/../../../admin",
            "///admin",
            "/%61dmin",
        ] {
            assert_eq!(n(t), "/admin", "{t}");
            assert_eq!(fwd(t), "/admin", "{t}");
            let p = normalize(t).unwrap().path;
            assert!(path_matches(PathMatchType::Exact, "/admin", &p), "{t}");
            assert!(path_matches(PathMatchType::PathPrefix, "/admin", &p), "{t}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc3986() {
        assert_eq!(n("/a/b/c/./../../g"), "/a/g");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/"), "/a/");
        assert_eq!(n("/a//"), "/a/");
        assert_eq!(n("/a/..."), "/a/...", "three dots is a name");
        assert_eq!(n("/a/.b"), "/a/.b");
    }

    #[test]
    fn query_is_split_off_and_preserved() {
        let t = normalize("/api/../x?a=%2F&b=..#").unwrap_err();
        assert_eq!(t, PathError::Fragment);
        let t = normalize("/api/../x?a=%2F&b=../c").unwrap();
        assert_eq!(t.path.as_str(), "/x");
        assert_eq!(t.query.as_deref(), Some("a=%2F&b=../c"));
        assert_eq!(t.forward(), "/x?a=%2F&b=../c");
        let t = normalize("/x?").unwrap();
        assert_eq!(t.query.as_deref(), Some(""));
        assert_eq!(normalize("/x").unwrap().query, None);
    }

    #[test]
    fn rejections() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%00b"), Err(PathError::EncodedNul));
        assert_eq!(
            normalize("/a%zz"),
            Err(PathError::InvalidPercentEncoding(2))
        );
        assert_eq!(normalize("/a%4"), Err(PathError::InvalidPercentEncoding(2)));
        assert_eq!(normalize("/a%"), Err(PathError::InvalidPercentEncoding(2)));
        assert_eq!(normalize("/%C3%28"), Err(PathError::InvalidUtf8));
        assert_eq!(normalize("/%FF"), Err(PathError::InvalidUtf8));
        assert_eq!(normalize("/a b"), Err(PathError::InvalidCharacter(b' ')));
        assert_eq!(normalize("/a\tb"), Err(PathError::InvalidCharacter(b'\t')));
        assert_eq!(
            normalize("/a\u{7f}"),
            Err(PathError::InvalidCharacter(0x7f))
        );
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a#b"), Err(PathError::Fragment));
        let long = format!("/{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(normalize(&long), Err(PathError::TooLong));
    }

    #[test]
    fn reserved_encodings_stay_encoded_for_forwarding() {
        let t = normalize("/a%3bb/c%3f/%7e%41").unwrap();
        assert_eq!(t.path.as_str(), "/a;b/c?/~A");
        assert_eq!(t.path.forward(), "/a%3Bb/c%3F/~A");
        // Percent itself stays encoded: no double decoding.
        let t = normalize("/%252e%252e/admin").unwrap();
        assert_eq!(t.path.as_str(), "/%2e%2e/admin");
        assert_eq!(t.path.forward(), "/%252e%252e/admin");
    }

    #[test]
    fn a_target_forwards_as_itself_only_when_its_forwarded_form_is_the_same_bytes() {
        for same in ["/", "/a/b", "/a?", "/a?x=1&y=%2F", "/a%3Bb?q", "/caf%C3%A9"] {
            let t = normalize(same).unwrap();
            assert!(t.forwards_as(same), "{same}");
            assert_eq!(t.forward(), same);
        }
        for changed in [
            "/a/../b", "//a", "/a/./b?x", "/%7e", "/a%3bb", "/café", "/a?x",
        ] {
            let t = normalize(changed).unwrap();
            let other = if changed == "/a?x" { "/a?y" } else { changed };
            assert!(!t.forwards_as(other), "{changed}");
            assert_ne!(t.forward(), other);
        }
        let t = normalize("/a?x").unwrap();
        assert!(!t.forwards_as("/a"));
        assert!(!t.forwards_as("/a?x?"));
        assert!(!normalize("/a").unwrap().forwards_as("/a?"));
    }

    #[test]
    fn non_ascii_is_encoded_for_forwarding_and_decoded_for_matching() {
        let raw = normalize("/café").unwrap();
        let enc = normalize("/caf%c3%a9").unwrap();
        assert_eq!(raw.path.as_str(), "/café");
        assert_eq!(enc.path.as_str(), "/café");
        assert_eq!(raw.path.forward(), "/caf%C3%A9");
        assert_eq!(enc.path.forward(), "/caf%C3%A9");
        let t = normalize("/a|b\"c").unwrap();
        assert_eq!(t.path.forward(), "/a%7Cb%22c");
    }

    #[test]
    fn case_is_preserved() {
        assert_eq!(n("/Admin"), "/Admin");
        let p = normalize_path("/Admin").unwrap();
        assert!(!path_matches(PathMatchType::Exact, "/admin", &p));
    }

    #[test]
    fn normalisation_is_idempotent() {
        for t in [
            "/a/%2e/b/%2E%2E/c%3B/d%20e/caf%C3%A9/",
            "/x//y/./z/..",
            "/%7Euser/%41%42",
        ] {
            let once = normalize(t).unwrap();
            let twice = normalize(once.path.forward()).unwrap();
            assert_eq!(once.path, twice.path, "{t}");
        }
    }

    #[test]
    fn prefix_matching_is_segment_aware() {
        let m = |v: &str, p: &str| {
            path_matches(PathMatchType::PathPrefix, v, &normalize_path(p).unwrap())
        };
        assert!(m("/api", "/api"));
        assert!(m("/api", "/api/"));
        assert!(m("/api", "/api/x"));
        assert!(!m("/api", "/apix"));
        assert!(!m("/api", "/ap"));
        assert!(m("/", "/anything/at/all"));
        assert!(m("/api/", "/api/x"));
        assert!(!m("/api/", "/api"));
        let e =
            |v: &str, p: &str| path_matches(PathMatchType::Exact, v, &normalize_path(p).unwrap());
        assert!(e("/api", "/api"));
        assert!(!e("/api", "/api/"));
    }

    #[test]
    fn rule_paths_must_be_normalised() {
        for ok in ["/", "/api", "/api/", "/a/b.c", "/café"] {
            assert!(is_normalized_rule_path(ok), "{ok}");
        }
        for bad in [
            "", "api", "//api", "/a//b", "/a/./b", "/a/../b", "/a/..", "/a/.", "/a%2e", "/a?x",
            "/a#", "/a\\b", "/a b",
        ] {
            assert!(!is_normalized_rule_path(bad), "{bad}");
        }
    }
}

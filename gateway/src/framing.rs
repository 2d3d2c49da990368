//! Message framing and size checks the proxy makes before anything else, on the header as
//! Pingora parsed it: the requests a proxy and an upstream could read differently (request
//! smuggling, RFC 9112 §6.1 and §11.2) are refused, not repaired.
//!
//! Why refuse rather than normalise: when a request carries both `Content-Length` and
//! `Transfer-Encoding`, RFC 9112 lets a server pick TE and close the connection, but an
//! upstream (or a second proxy) that picks CL would read the rest of the body as a new
//! request the policy never saw. No legitimate client sends these, so a 400 costs nothing.
//!
//! Checked, each a 400 unless said otherwise:
//! - `Transfer-Encoding` together with `Content-Length`;
//! - `Transfer-Encoding` other than exactly `chunked` (`xchunked`, `chunked, gzip`,
//!   `identity`, a repeated header), or any `Transfer-Encoding` on HTTP/1.0;
//! - more than one `Content-Length` header, or a value that is not one decimal number;
//! - more than one `Host` header (RFC 9112 §3.2 requires a 400);
//! - more header fields than [`Limits::max_headers`], or more header bytes (names and
//!   values) than [`Limits::max_header_bytes`]: 431;
//! - a `Content-Length` above [`Limits::max_body_bytes`]: 413, before anything is
//!   forwarded (a chunked body has no length up front: the proxy counts it as it streams
//!   and cuts it off there, see `request_body_filter` in [`crate::proxy`]).
//!
//! Pingora's HTTP/1 parser already drops `Content-Length` when `Transfer-Encoding: chunked`
//! is present and closes the connection after the response (the other RFC-compliant
//! answer); the check here is defence in depth and covers what the parser accepts as is
//! (`xchunked`, repeated or malformed `Content-Length`, two `Host` headers, sizes).
//! `gateway/tests/hostile.rs` sends each case on a raw socket and checks the upstream never
//! received a smuggled request.
//!
//! HTTP/2 frames bodies itself; there only the size limits and the Host rule apply (the h2
//! codec already refuses connection-specific headers).

use http::{HeaderMap, Version};

/// Header and body size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Most bytes of header names and values together.
    pub max_header_bytes: usize,
    /// Most bytes of one request body.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    /// 100 fields and 64 KiB: above what browsers send with large cookies (nginx refuses at
    /// 32 KiB by default), far below what would let one request pin much memory. Bodies:
    /// 64 MiB, room for uploads an API gateway usually fronts while bounding what one client
    /// can make an upstream read (nginx's default is 1 MiB, too small for uploads).
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Ambiguous or invalid framing: 400.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Too many or too large header fields: 431.
    #[error("request header fields too large: {0}")]
    TooLarge(&'static str),
    /// A body larger than [`Limits::max_body_bytes`]: 413.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
}

impl Refusal {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::TooLarge(_) => 431,
            Self::BodyTooLarge(_) => 413,
        }
    }

    /// Reason code for the decision log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "MalformedRequest",
            Self::TooLarge(_) => "HeadersTooLarge",
            Self::BodyTooLarge(_) => "BodyTooLarge",
        }
    }
}

/// Checks the framing and size of a request header.
pub fn check(version: Version, headers: &HeaderMap, limits: &Limits) -> Result<(), Refusal> {
    if headers.len() > limits.max_headers {
        return Err(Refusal::TooLarge("too many header fields"));
    }
    // One pass over the fields for the size and the three framing headers, rather than a
    // hashed lookup per header (issue 19).
    let (mut bytes, mut hosts) = (0usize, 0usize);
    let mut te: smallvec::SmallVec<[&http::HeaderValue; 1]> = smallvec::SmallVec::new();
    let mut cl: smallvec::SmallVec<[&http::HeaderValue; 1]> = smallvec::SmallVec::new();
    for (k, v) in headers {
        bytes += k.as_str().len() + v.len();
        if *k == http::header::HOST {
            hosts += 1;
        } else if *k == http::header::CONTENT_LENGTH {
            cl.push(v);
        } else if *k == http::header::TRANSFER_ENCODING {
            te.push(v);
        }
    }
    if bytes > limits.max_header_bytes {
        return Err(Refusal::TooLarge("header fields exceed the size limit"));
    }
    if hosts > 1 {
        return Err(Refusal::Malformed("more than one Host header"));
    }
    let h1 = matches!(
        version,
        Version::HTTP_10 | Version::HTTP_11 | Version::HTTP_09
    );
    if !h1 {
        // HTTP/2 frames the body itself; a declared length is still held to the limit
        // (the body is counted as it streams either way).
        let declared = cl
            .iter()
            .filter_map(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .max();
        if declared.is_some_and(|n| n > limits.max_body_bytes) {
            return Err(Refusal::BodyTooLarge(limits.max_body_bytes));
        }
        return Ok(());
    }
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(Refusal::Malformed(
                "Content-Length together with Transfer-Encoding",
            ));
        }
        if version != Version::HTTP_11 {
            return Err(Refusal::Malformed("Transfer-Encoding before HTTP/1.1"));
        }
        let only_chunked = te.len() == 1
            && te[0]
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !only_chunked {
            return Err(Refusal::Malformed("Transfer-Encoding other than chunked"));
        }
    }
    match cl.as_slice() {
        [] => Ok(()),
        [one] => {
            let v = one.as_bytes();
            if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) {
                // At most 19 digits: fits in a u64.
                let n: u64 =
                    std::str::from_utf8(v).map_or(u64::MAX, |s| s.parse().unwrap_or(u64::MAX));
                if n > limits.max_body_bytes {
                    return Err(Refusal::BodyTooLarge(limits.max_body_bytes));
                }
                Ok(())
            } else {
                Err(Refusal::Malformed("Content-Length is not one number"))
            }
        }
        _ => Err(Refusal::Malformed("more than one Content-Length header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn check11(pairs: &[(&str, &str)]) -> Result<(), Refusal> {
        check(Version::HTTP_11, &headers(pairs), &Limits::default())
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(check11(&[("host", "a"), ("content-length", "12")]), Ok(()));
        assert_eq!(
            check11(&[("host", "a"), ("transfer-encoding", "Chunked")]),
            Ok(())
        );
        assert_eq!(check11(&[("host", "a")]), Ok(()));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for bad in [
            vec![("content-length", "4"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "xchunked")],
            vec![("transfer-encoding", "chunked, gzip")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("content-length", "0"), ("content-length", "44")],
            vec![("content-length", "4"), ("content-length", "4")],
            vec![("content-length", "4, 4")],
            vec![("content-length", "-1")],
            vec![("content-length", "+4")],
            vec![("host", "a"), ("host", "b")],
        ] {
            let r = check11(&bad);
            assert!(
                matches!(r, Err(Refusal::Malformed(_))),
                "{bad:?} passed: {r:?}"
            );
            assert_eq!(r.unwrap_err().status(), 400);
        }
        let r = check(
            Version::HTTP_10,
            &headers(&[("transfer-encoding", "chunked")]),
            &Limits::default(),
        );
        assert!(matches!(r, Err(Refusal::Malformed(_))));
    }

    #[test]
    fn http2_bodies_are_framed_by_the_protocol() {
        let h = headers(&[("content-length", "4"), ("transfer-encoding", "chunked")]);
        assert_eq!(check(Version::HTTP_2, &h, &Limits::default()), Ok(()));
    }

    #[test]
    fn a_declared_body_over_the_limit_gets_413() {
        let limits = Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        };
        for v in [Version::HTTP_11, Version::HTTP_2] {
            let at = headers(&[("content-length", "1024")]);
            assert_eq!(check(v, &at, &limits), Ok(()));
            let over = headers(&[("content-length", "1025")]);
            let r = check(v, &over, &limits);
            assert_eq!(r, Err(Refusal::BodyTooLarge(1024)), "{v:?}");
            assert_eq!(r.unwrap_err().status(), 413);
        }
        // The largest 19-digit number is over any limit, not a parse error.
        let huge = headers(&[("content-length", "9999999999999999999")]);
        assert_eq!(
            check(Version::HTTP_11, &huge, &limits).map_err(|r| r.status()),
            Err(413)
        );
    }

    #[test]
    fn oversized_headers_get_431() {
        let limits = Limits {
            max_headers: 3,
            max_header_bytes: 32,
            ..Limits::default()
        };
        let many = headers(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        let r = check(Version::HTTP_11, &many, &limits);
        assert_eq!(r.as_ref().map_err(Refusal::status), Err(431));
        let big = headers(&[("a", &"x".repeat(40))]);
        let r = check(Version::HTTP_2, &big, &limits);
        assert_eq!(r.as_ref().map_err(Refusal::reason), Err("HeadersTooLarge"));
    }
}

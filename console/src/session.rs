//! The person's session and the login in progress, both kept in sealed `__Host-` cookies.
//!
//! `__Host-` makes the browser refuse the cookie unless it is `Secure`, has `Path=/` and no
//! `Domain`, so no sibling subdomain can plant or overwrite it. The session cookie is
//! `SameSite=Lax` (the IdP's redirect back is a top-level GET and must carry the login
//! cookie; no state-changing request is a GET), and every state-changing request must
//! also carry the session's CSRF token ([`Session::csrf_ok`]).

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "__Host-rtn_console";
/// Name of the short-lived cookie holding a login in progress.
pub const LOGIN_COOKIE: &str = "__Host-rtn_console_login";
/// How long a login in progress may take at the IdP, in seconds.
pub const LOGIN_SECONDS: u64 = 600;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Who is signed in: the Kubernetes user and groups the console impersonates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Kubernetes user name (the username claim, prefixed).
    pub user: String,
    /// Kubernetes groups (the groups claim, prefixed).
    pub groups: Vec<String>,
    /// The synchronizer token every state-changing request must echo.
    pub csrf: String,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
}

impl Session {
    /// Whether the session is still valid at `now`.
    pub fn live(&self, now: u64) -> bool {
        now < self.expires
    }

    /// Constant-time comparison of a submitted CSRF token with the session's.
    pub fn csrf_ok(&self, submitted: Option<&str>) -> bool {
        match submitted {
            Some(s) => same(s, &self.csrf),
            None => false,
        }
    }
}

/// A login in progress: what the callback must check (RFC 6749 state, OIDC nonce) and the
/// PKCE verifier whose challenge went to the IdP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` parameter sent to the IdP.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// Where to send the person after login (a local path).
    pub return_to: String,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
}

/// Whether `a` and `b` are equal, in time that depends on their length only (tokens are
/// compared without telling an attacker how many leading bytes were right).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A `Set-Cookie` value for a `__Host-` cookie holding `value` for `max_age` seconds.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// A `Set-Cookie` value that removes cookie `name`.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The value of cookie `name` in a `Cookie` request header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .map(str::trim)
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `return_to` if it is a local absolute path (not `//host`, no backslash tricks), else `/`:
/// the login must never become an open redirect.
pub fn safe_return_to(return_to: Option<&str>) -> String {
    match return_to {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_carry_the_host_prefix_attributes() {
        let c = set_cookie(SESSION_COOKIE, "v", 60);
        assert!(c.starts_with("__Host-rtn_console=v;"));
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=60"] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!c.contains("Domain"));
        assert!(clear_cookie(LOGIN_COOKIE).contains("Max-Age=0"));
    }

    #[test]
    fn the_cookie_header_is_parsed_by_exact_name() {
        let h = "theme=dark; __Host-rtn_console_login=L; __Host-rtn_console=S";
        assert_eq!(cookie(h, SESSION_COOKIE), Some("S"));
        assert_eq!(cookie(h, LOGIN_COOKIE), Some("L"));
        assert_eq!(cookie(h, "missing"), None);
    }

    #[test]
    fn csrf_needs_the_exact_token() {
        let s = Session {
            user: "u".into(),
            groups: vec![],
            csrf: "abc".into(),
            expires: 10,
        };
        assert!(s.csrf_ok(Some("abc")));
        assert!(!s.csrf_ok(Some("abd")));
        assert!(!s.csrf_ok(Some("")));
        assert!(!s.csrf_ok(None));
        assert!(s.live(9) && !s.live(10));
    }

    #[test]
    fn return_to_is_never_an_open_redirect() {
        for (input, want) in [
            (Some("/k/policies?q=a"), "/k/policies?q=a"),
            (Some("//evil.example/"), "/"),
            (Some("https://evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("/a\nb"), "/"),
            (None, "/"),
        ] {
            assert_eq!(safe_return_to(input), want, "{input:?}");
        }
    }
}

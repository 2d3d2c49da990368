//! The request decision pipeline, as one function of facts the proxy phase gathered:
//!
//! ```text
//!  facts --host--> Resource (404) --normalize--> path (400) --route--> rule (404)
//!        --client IP (400)--> authenticate (401; + session cookie on HTTPS)
//!        --evaluate--> Deny (401/403; 302 Login for a browser that could log in) | Allow
//!        --rate limit (429)--> Forward { upstream rule, normalised target, identity, id }
//! ```
//!
//! No I/O, no clock reads (time comes in [`Env`]), no Pingora types: the proxy phase only
//! gathers facts, calls [`decide`], and carries out the verdict, so everything that makes a
//! security decision is testable without sockets.

use crate::authn::{self, Credentials, RemoteVerifiers};
use crate::jwks::RemoteJwks;
use crate::ratelimit::RateLimiter;
use crate::state::Compiled;
use rustls::pki_types::CertificateDer;
use rustronaut_contract::Identity;
use rustronaut_contract::eval::{Decision, DecisionIds, Effect, Reason, Request, evaluate};
use rustronaut_contract::identity::cache::TokenCache;
use rustronaut_contract::identity::client_ip::client_ip_from_forwarded_for;
use rustronaut_contract::identity::jwt::JwtVerifier;
use rustronaut_contract::identity::serviceaccount::ServiceAccountVerifier;
use rustronaut_contract::path::normalize;
use rustronaut_contract::policy::PolicyRef;
use rustronaut_contract::snapshot::{HashKey, LoadBalancing, TlsVersion};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What the proxy phase saw.
pub struct RequestFacts<'a, 'h> {
    /// Listener name (from the snapshot).
    pub listener: &'a str,
    /// Listener port.
    pub port: u16,
    /// Negotiated TLS version as rustls names it (`TLSv1_2`, `TLSv1_3`); `None` on plain HTTP.
    pub tls_version: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Request target as received (origin form: path and query).
    pub target: &'a str,
    /// `:authority` or `Host`, as received (may carry a port).
    pub host: Option<&'a str>,
    /// Values of a request header (lower-case name), in order.
    pub header: &'a dyn Fn(&str) -> crate::authn::HeaderValues<'h>,
    /// TCP peer address.
    pub peer: IpAddr,
    /// Verified TLS client certificate chain, leaf first.
    pub client_chain: Option<&'a [CertificateDer<'static>]>,
    /// The server name the TLS client asked for (SNI); `None` on plain HTTP or without one.
    pub sni: Option<&'a str>,
    /// Why the header's framing or size is refused ([`crate::framing::check`]), if it is.
    pub framing: Option<&'a crate::framing::Refusal>,
}

/// The process-wide pieces the pipeline uses.
pub struct Env<'a> {
    /// Wall-clock time (JWT expiry, schedules).
    pub now: SystemTime,
    /// Monotonic time (rate limits).
    pub instant: Instant,
    /// Verified-token cache.
    pub cache: &'a TokenCache,
    /// Decision id source.
    pub ids: &'a DecisionIds,
    /// Rate-limit buckets.
    pub limiter: &'a RateLimiter,
    /// Keys fetched for remote-JWKS providers.
    pub remote: &'a RemoteJwks,
}

/// The remote verifiers of one tenant.
struct TenantRemote<'a> {
    remote: &'a RemoteJwks,
    tenant: &'a str,
}

impl RemoteVerifiers for TenantRemote<'_> {
    fn verifier(&self, idp: &str) -> Option<Arc<JwtVerifier>> {
        self.remote.get(self.tenant, idp)
    }
    fn unknown_kid(&self, idp: &str) {
        self.remote.request_refresh(self.tenant, idp);
    }
    fn service_accounts(&self) -> Option<Arc<ServiceAccountVerifier>> {
        self.remote.service_accounts()
    }
    fn unknown_service_account_kid(&self) {
        self.remote.request_service_account_refresh();
    }
}

/// Where an allowed request goes.
#[derive(Debug)]
pub struct Forward {
    /// Index of the Resource in the snapshot.
    pub resource: usize,
    /// Index of the rule in the Resource.
    pub rule: usize,
    /// The normalised target to send upstream (path and original query); `None` when that
    /// is the request's own target byte for byte (the usual case), which then goes as it
    /// came instead of as a copy.
    pub target: Option<String>,
    /// Host without port, lower-case: the snapshot's own string when the request named
    /// one of the Resource's exact hostnames (no copy per request), else a copy.
    pub host: Arc<str>,
    /// Verified identity.
    pub identity: Identity,
    /// The key a ConsistentHash rule balances on.
    pub hash_key: Option<String>,
}

/// What to do with the request.
#[derive(Debug)]
pub enum Action {
    /// Proxy it.
    Forward(Box<Forward>),
    /// Answer it here with this status.
    Respond {
        /// HTTP status.
        status: u16,
        /// Ask for credentials (`WWW-Authenticate: Bearer`).
        challenge: bool,
    },
    /// Send the browser to log in with the tenant's OIDC provider `idp` ([`crate::oidc`]).
    Login {
        /// Tenant of the routed Resource.
        tenant: String,
        /// The OIDC provider.
        idp: String,
    },
}

/// What happened, for the decision log and metrics.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// `namespace/name` of the Resource, when one was routed.
    pub resource: Option<Arc<str>>,
    /// Resource rule (section).
    pub section: Option<Arc<str>>,
    /// Caller summary (`anonymous`, `user:okta/alice`, ...).
    pub identity: IdentitySummary,
    /// Client address after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
    /// `Allow`, `Deny`, or `-` for requests refused before a decision (400, 404).
    pub effect: &'static str,
    /// Why: an evaluator reason or a gateway one (`NoRoute`, `InvalidPath`,
    /// `InvalidCredentials`, `RateLimited`...).
    pub reason: &'static str,
    /// Deciding policy (shared with the compiled policy set, not copied per request).
    pub policy: Option<PolicyRef>,
    /// Deciding policy rule.
    pub policy_rule: Option<Arc<str>>,
    /// Decision id, on every decision (allow and deny) and on every refusal.
    pub decision_id: String,
    /// Human detail (error message), never a secret.
    pub detail: Option<String>,
    /// What the DryRun policies would have decided (`Deny DeniedBy ns/policy rule`), when any
    /// targets the request; logged, never enforced.
    pub dry_run: Option<String>,
}

impl Record {
    /// Takes what the evaluator decided: the deciding policy and rule, the reason, and what the
    /// DryRun policies would have done (the effect is set by the caller, which also decides
    /// what a Deny turns into: 401, 403 or a closed connection).
    ///
    /// The policy and rule are taken out of `decision`, not cloned: a clone and its drop
    /// were two atomic operations per name on every request (issue 19).
    pub fn note(&mut self, decision: &mut Decision) {
        self.policy = decision.policy.take();
        self.policy_rule = decision.rule.take();
        self.reason = decision.reason.as_str();
        self.dry_run = decision.shadow.as_ref().map(|o| {
            format!(
                "{:?} {} {} {}",
                o.effect,
                o.reason.as_str(),
                o.policy
                    .as_ref()
                    .map_or_else(|| "-".into(), ToString::to_string),
                o.rule.as_deref().unwrap_or("-")
            )
        });
    }
}

/// The pipeline's answer.
#[derive(Debug)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// What to log.
    pub record: Record,
}

fn refuse(
    mut record: Record,
    status: u16,
    reason: &'static str,
    detail: Option<String>,
) -> Verdict {
    record.reason = reason;
    record.detail = detail;
    if record.effect.is_empty() {
        record.effect = "-";
    }
    Verdict {
        action: Action::Respond {
            status,
            challenge: status == 401,
        },
        record,
    }
}

/// `host` without port and trailing dot, lower-case; `None` when it is not a plausible
/// host. Borrowed from `host` when it is already lower-case (the usual Host header).
pub fn host_only(host: &str) -> Option<Cow<'_, str>> {
    let h = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal.
        &host[..rest.find(']')? + 2]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() {
        return None;
    }
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(h.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(h))
    }
}

/// Path spellings that `normalize` (RFC 3986) reads as ordinary names but common upstream
/// servers read otherwise, so a rule allowing `/public` would let them reach `/admin`, or a
/// Deny on `/admin` would miss what the upstream serves as `/admin`:
/// - a `;` anywhere in the path: servlet containers (Tomcat, Jetty, Spring) drop `;`
///   parameters before routing, so `/admin;x=1` is `/admin` to them, and `..;` is a dot
///   segment (`/public/..;/admin`). Data that contains a `;` is sent encoded (`%3B`), which
///   they do not split on. A dot segment whose parameters are encoded (`..%3B`) is refused
///   too, for upstreams that decode before they split;
/// - a percent-encoding that is still a percent-encoding after one decoding (`%252e`,
///   `%25%32%65`, `%252f`, `%255c`, `%2541`), which an upstream that decodes twice turns into
///   a dot segment, a separator or another name than the policy saw.
///
/// No legitimate client needs either, so they are refused (400) rather than guessed at.
pub fn ambiguous_path(target: &str) -> Option<&'static str> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path.contains(';') {
        return Some("path parameters (';') in the path");
    }
    let once = percent_decode_once(path.as_bytes());
    if has_percent_escape(&once) {
        return Some("double percent-encoding in the path");
    }
    for segment in once.split(|&b| b == b'/' || b == b'\\') {
        if let Some(i) = segment.iter().position(|&b| b == b';') {
            let name = &segment[..i];
            if name == b"." || name == b".." {
                return Some("dot segment with parameters in the path");
            }
        }
    }
    None
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `raw` with every valid `%XX` decoded once; anything else is kept as it is (and not
/// copied when there is no `%`, the usual path).
fn percent_decode_once(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

fn has_percent_escape(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
}

/// Why a request method is refused: a method with a lower-case letter (`delete`). Methods
/// are case-sensitive (RFC 9110 §9.1) and every standard one is upper case, but many
/// frameworks upper-case what they receive, so `delete /x` would be evaluated as a method no
/// rule names and served as `DELETE`.
pub fn ambiguous_method(method: &str) -> Option<&'static str> {
    method
        .bytes()
        .any(|b| b.is_ascii_lowercase())
        .then_some("method with lower-case letters")
}

/// Why a query string is refused: a `_method` parameter (any case, also percent-encoded),
/// which Laravel, Symfony and others read as the method to act on, so `POST /x?_method=DELETE`
/// would be served as a DELETE past a Deny on `DELETE`. The same override in a form body is
/// not inspected (the body is not read before the decision): upstreams that honour it need
/// their Deny rules to cover POST too, or the override turned off (docs/security.md).
pub fn ambiguous_query(target: &str) -> Option<&'static str> {
    let query = target.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    query
        .split(['&', ';'])
        .map(|pair| pair.split('=').next().unwrap_or(""))
        // A `+` (a space in form encoding) cannot be part of `_method` either way, so keys
        // are decoded as they are, without a copy per key.
        .any(|key| percent_decode_once(key.as_bytes()).eq_ignore_ascii_case(b"_method"))
        .then_some("method override (_method) in the query")
}

/// The path prefix the gateway keeps for itself on every host (`/.rustronaut/oidc/...`).
/// Requests whose normalised path falls under it are never forwarded.
pub const RESERVED_PREFIX: &str = "/.rustronaut/";

/// Whether a normalised, decoded path is under [`RESERVED_PREFIX`] (compared without case,
/// for upstreams that fold case) or is the prefix without its slash.
pub fn is_reserved_path(decoded: &str) -> bool {
    let p = decoded.as_bytes();
    let r = RESERVED_PREFIX.as_bytes();
    (p.len() >= r.len() && p[..r.len()].eq_ignore_ascii_case(r))
        || decoded.eq_ignore_ascii_case(&RESERVED_PREFIX[..RESERVED_PREFIX.len() - 1])
}

/// Client request headers that never reach an upstream, by name (any case):
/// - every name that, read the way CGI/WSGI/PHP servers read it (case folded, `_` as `-`),
///   is one of the gateway's own `x-rustronaut-*` headers: `X_Rustronaut_User` would be
///   `HTTP_X_RUSTRONAUT_USER` to them, the same as the header the gateway sets;
/// - unless `allow_underscores`, every name with an `_` (nginx drops them by default too):
///   the gateway reads `x-api-key` and `x-env`, an upstream may read `x_api_key` and
///   `x_env` as the same header, so policy and upstream would see different requests;
/// - headers that ask the upstream to act on another method or target than the one the
///   policy evaluated: `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`,
///   `X-Original-URL`, `X-Rewrite-URL`, `X-Original-URI`, `X-Forwarded-Uri`,
///   `X-Forwarded-Prefix`;
/// - client-address and forwarding headers the gateway does not set itself (it sets
///   `X-Forwarded-For`, `-Proto` and `-Host`): `Forwarded`, `X-Real-IP`, `X-Client-IP`,
///   `True-Client-IP`, `CF-Connecting-IP`, `Fastly-Client-IP`, `X-Cluster-Client-IP`,
///   `X-Forwarded-Port`, `X-Forwarded-Server`, `X-Forwarded-Scheme`, `X-Forwarded-Ssl`,
///   `X-Original-Host`, `X-Host`: an upstream reading them would take the client's word for
///   its address, scheme or host.
pub fn dropped_header(name: &str, allow_underscores: bool) -> bool {
    // This runs for every header of every forwarded request, whose names the `http` crate
    // has already lower-cased: one pass over the name tells whether it is canonical as it
    // is (no `_`, no upper case), and then the lists are compared byte for byte, as plain
    // strings (issue 19: a `str::contains` search and a byte-wise canonical comparison with
    // each listed name cost ~250 instructions per forwarded request, callgrind).
    let (underscore, upper) = name.bytes().fold((false, false), |(u, p), b| {
        (u | (b == b'_'), p | b.is_ascii_uppercase())
    });
    if underscore && !allow_underscores {
        return true;
    }
    let prefix = "x-rustronaut-";
    if !underscore && !upper {
        // Most names (host, accept, authorization, ...) start with a letter no listed name
        // starts with: one table lookup instead of the list (issue 19).
        return name
            .as_bytes()
            .first()
            .is_some_and(|&b| DROPPED_FIRST_BYTES[usize::from(b)])
            && (name.starts_with(prefix) || DROPPED_HEADERS.contains(&name));
    }
    // Compared byte by byte as canonical names, without building one.
    (name.len() >= prefix.len() && same_canonical_header(&name[..prefix.len()], prefix))
        || DROPPED_HEADERS
            .iter()
            .any(|d| same_canonical_header(name, d))
}

/// A header name as CGI-style servers see it: lower case, `_` read as `-`.
pub fn canonical_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| char::from(canonical_byte(b)))
        .collect()
}

fn canonical_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether two header names are the same once both are read as
/// [`canonical_header_name`] reads them.
pub fn same_canonical_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| canonical_byte(x) == canonical_byte(y))
}

/// The first bytes of the names [`dropped_header`] drops as they are (the `x-rustronaut-`
/// prefix and [`DROPPED_HEADERS`]), built from them at compile time.
const DROPPED_FIRST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    table[b'x' as usize] = true;
    let mut i = 0;
    while i < DROPPED_HEADERS.len() {
        table[DROPPED_HEADERS[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    table
};

/// See [`dropped_header`]. Lower case, as the `http` crate holds names.
const DROPPED_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-original-host",
    "x-host",
];

/// A short, log-friendly summary of who is calling ([`identity_summary`]): a constant
/// (`anonymous`), shared with the token cache's user when the user is the whole identity
/// (the usual bearer-token request: nothing built), or built for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySummary {
    /// A constant; empty by default (a request refused before any decision).
    Static(&'static str),
    /// Built once, shared.
    Shared(Arc<str>),
    /// Built for this request.
    Owned(String),
}

impl Default for IdentitySummary {
    fn default() -> Self {
        Self::Static("")
    }
}

impl std::ops::Deref for IdentitySummary {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
            Self::Owned(s) => s,
        }
    }
}

impl std::fmt::Display for IdentitySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl PartialEq<&str> for IdentitySummary {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

/// A short, log-friendly summary of who is calling.
pub fn identity_summary(id: &Identity) -> IdentitySummary {
    if id.api_key.is_none()
        && id.client_certificate.is_none()
        && let Some(u) = &id.user
    {
        return crate::proxy::with_user_values(u, |v| IdentitySummary::Shared(v.summary.clone()));
    }
    // Otherwise one String for the whole summary, allocated once at its final size.
    let cert = id.client_certificate.as_ref().map(|c| {
        let name = c
            .san_uris
            .first()
            .or(c.san_dns_names.first())
            .or(c.san_emails.first())
            .unwrap_or(&c.spki_sha256);
        ("cert", c.idp.as_str(), name.as_str())
    });
    let parts = [
        id.user
            .as_ref()
            .map(|u| ("user", u.idp.as_str(), u.subject.as_str())),
        id.api_key
            .as_ref()
            .map(|k| ("apiKey", k.idp.as_str(), k.client_id.as_str())),
        cert,
    ];
    let parts: smallvec::SmallVec<[(&str, &str, &str); 3]> = parts.into_iter().flatten().collect();
    if parts.is_empty() {
        return IdentitySummary::Static("anonymous");
    }
    IdentitySummary::Owned(summary_of(&parts))
}

/// `kind:idp/name` for each part, comma-separated, in one String allocated at its final
/// size: the one place the summary's format is written (a cached user's summary is made
/// here too, [`crate::proxy::UserValues`]).
pub(crate) fn summary_of(parts: &[(&str, &str, &str)]) -> String {
    let len: usize = parts
        .iter()
        .map(|(kind, idp, name)| kind.len() + idp.len() + name.len() + 3)
        .sum();
    let mut out = String::with_capacity(len);
    for (kind, idp, name) in parts {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(kind);
        out.push(':');
        out.push_str(idp);
        out.push('/');
        out.push_str(name);
    }
    out
}

/// The rate-limit or hash key of a caller: its strongest credential, else its address.
pub(crate) fn limit_key(id: &Identity, ip: IpAddr, key: HashKey) -> String {
    if key == HashKey::ClientIdentity {
        if let Some(u) = &id.user {
            return format!("user:{}/{}", u.idp, u.subject);
        }
        if let Some(k) = &id.api_key {
            return format!("apiKey:{}/{}", k.idp, k.client_id);
        }
        if let Some(c) = &id.client_certificate {
            return format!("cert:{}/{}", c.idp, c.spki_sha256);
        }
    }
    format!("ip:{ip}")
}

/// Decides what to do with one request.
pub fn decide(c: &Compiled, facts: &RequestFacts<'_, '_>, env: &Env<'_>) -> Verdict {
    let mut record = Record {
        identity: IdentitySummary::Static("anonymous"),
        decision_id: env.ids.next_id(),
        ..Record::default()
    };

    // Ambiguous framing or oversized headers: refused before anything reads them.
    if let Some(r) = facts.framing {
        return refuse(record, r.status(), r.reason(), Some(r.to_string()));
    }

    // A listener that requires TLS 1.3 refuses requests on older connections (the TLS
    // backend negotiates 1.2 and 1.3 on every listener).
    if let (Some(certs), Some(v)) = (c.certs.get(facts.listener), facts.tls_version)
        && certs.min_version == TlsVersion::V1_3
        && v != "TLSv1_3"
    {
        return refuse(
            record,
            403,
            "TlsVersionTooLow",
            Some(format!("{v} below 1.3")),
        );
    }

    let Some(host) = facts.host.and_then(host_only) else {
        return refuse(record, 400, "MissingHost", None);
    };
    // On a listener that asks for client certificates, the connection was set up (and the
    // certificate chosen) for the SNI name; a request for another host on it (HTTP/2
    // connection reuse, or a client naming one host and asking for another) is sent back
    // to open its own connection (RFC 9110 §15.5.20), so no identity proven on one host's
    // connection is spent on another's.
    if c.client_verifiers.contains_key(facts.listener)
        && let Some(sni) = facts.sni
        && host_only(sni).is_some_and(|s| *s != *host)
    {
        return refuse(
            record,
            421,
            "MisdirectedRequest",
            Some(format!("host {host} on a connection for {sni}")),
        );
    }
    let Some((ri, resource, host_name)) = c.route_for_host(facts.listener, &host) else {
        return refuse(
            record,
            404,
            "NoRoute",
            Some(format!("no resource for host {host}")),
        );
    };
    let labels = c.labels(ri);
    record.resource = Some(labels.qualified.clone());

    if let Some(why) = ambiguous_method(facts.method) {
        return refuse(record, 400, "InvalidMethod", Some(why.into()));
    }
    if let Some(why) = ambiguous_path(facts.target) {
        return refuse(record, 400, "InvalidPath", Some(why.into()));
    }
    if let Some(why) = ambiguous_query(facts.target) {
        return refuse(record, 400, "InvalidMethod", Some(why.into()));
    }
    let target = match normalize(facts.target) {
        Ok(t) => t,
        Err(e) => return refuse(record, 400, "InvalidPath", Some(e.to_string())),
    };
    // The gateway's own paths: answered by the proxy phase when the normalised path is one
    // of them ([`crate::oidc`]); any other spelling or path under the prefix stops here, so
    // an upstream never sees a request the gateway keeps for itself.
    if is_reserved_path(target.path.as_str()) {
        return refuse(
            record,
            404,
            "ReservedPath",
            Some(format!("{RESERVED_PREFIX} belongs to the gateway")),
        );
    }
    let headers = facts.header;
    // Rules match a header's first value; an upstream may read another one. A header some
    // rule of this Resource matches on must come once, or the rule (and the Policies of its
    // section) would be chosen on a value the upstream does not act on.
    if let Some(name) = resource
        .rules
        .iter()
        .flat_map(|r| &r.matches)
        .flat_map(|m| &m.headers)
        .map(|h| h.name.to_ascii_lowercase())
        .find(|n| headers(n).len() > 1)
    {
        return refuse(
            record,
            400,
            "RepeatedHeader",
            Some(format!("header {name} sent more than once")),
        );
    }
    let Some(rule) = resource.route(facts.method, &target.path, |name| {
        headers(&name.to_ascii_lowercase()).into_iter().next()
    }) else {
        return refuse(record, 404, "NoRoute", Some("no rule matches".into()));
    };
    let ui = resource
        .rules
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .unwrap_or_default();
    record.section = Some(
        labels
            .rules
            .get(ui)
            .cloned()
            .unwrap_or_else(|| rule.name.as_str().into()),
    );

    // X-Forwarded-For counts only from a trusted peer (the address after a PROXY header, when
    // one was accepted: the hop that appended the last entry); from anyone else the header is
    // ignored and the peer is the client.
    let hops = c
        .trusted_peers
        .hops_from(facts.peer, c.snapshot.client_ip_detection.trusted_hops);
    // Not even looked up when no hop is trusted (the usual case): the answer is the peer.
    let xff = if hops > 0 {
        (facts.header)("x-forwarded-for")
    } else {
        Default::default()
    };
    let client_ip = match client_ip_from_forwarded_for(facts.peer, &xff, hops) {
        Ok(ip) => ip,
        Err(e) => return refuse(record, 400, "InvalidForwardedFor", Some(e.to_string())),
    };
    record.client_ip = Some(client_ip);

    let now_secs = env
        .now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = c
        .tenants
        .get(&resource.tenant)
        .unwrap_or(&crate::state::NO_AUTH);
    let creds = Credentials {
        header: facts.header,
        client_chain: facts.client_chain,
    };
    let remote = TenantRemote {
        remote: env.remote,
        tenant: &resource.tenant,
    };
    let mut identity =
        match authn::authenticate(auth, &creds, client_ip, now_secs, env.cache, &remote) {
            Ok(id) => id,
            Err(e) => {
                record.effect = "Deny";
                return refuse(record, 401, "InvalidCredentials", Some(e.to_string()));
            }
        };
    // A browser session, on HTTPS only (a Secure cookie never comes over plain HTTP from a
    // browser; one that does was copied and is ignored). A presented token wins over it.
    let https = facts.tls_version.is_some();
    let mut session = None;
    if identity.user.is_none()
        && https
        && let Some(keys) = &auth.session
        && let Some(s) = crate::oidc::session_from_cookies(keys, &headers("cookie"), now_secs)
    {
        identity.user = Some(Arc::new(s.user()));
        session = Some(s);
    }
    record.identity = identity_summary(&identity);
    let navigation = crate::oidc::is_navigation(facts.method, &headers("accept"));
    let login = |mut record: Record, idp: &str, detail: String| {
        record.reason = "LoginRequired";
        record.detail = Some(detail);
        Verdict {
            action: Action::Login {
                tenant: resource.tenant.clone(),
                idp: idp.to_string(),
            },
            record,
        }
    };

    let request = Request::new(&resource.namespace, &resource.name, &identity)
        .section(&rule.name)
        .http(facts.method, &target.path)
        .host(&host)
        .port(facts.port);
    // The id goes into the decision and comes back out: one id, not a copy per request.
    let decision_id = std::mem::take(&mut record.decision_id);
    let mut decision = evaluate(&c.policies, &request, env.now, decision_id);
    record.note(&mut decision);
    record.decision_id = std::mem::take(&mut decision.decision_id);
    if decision.effect == Effect::Deny {
        record.effect = "Deny";
        // Credentials could change the outcome unless a Deny rule matched this caller.
        let status = if !identity.authenticated() && decision.reason != Reason::DeniedBy {
            401
        } else {
            403
        };
        let reason = record.reason;
        if let Some(idp) = decision.login_providers.first()
            && status == 401
        {
            if navigation && https && auth.session.is_some() {
                return login(record, idp, format!("login with {idp}"));
            }
            let why = if !https {
                "OIDC login needs an HTTPS listener; answering 401"
            } else if auth.session.is_none() {
                "OIDC login is off: the tenant has no session keys"
            } else {
                "not a browser navigation; answering 401"
            };
            return refuse(record, status, reason, Some(why.into()));
        }
        return refuse(record, status, reason, None);
    }
    record.effect = "Allow";
    // A policy that wants a fresher login than the session's: log in again.
    if let (Some(s), Some(max)) = (&session, decision.session_max_age_seconds)
        && now_secs.saturating_sub(s.issued_at) > max
    {
        record.effect = "Deny";
        if navigation {
            return login(record, &s.idp, format!("session older than {max}s"));
        }
        return refuse(record, 401, "SessionTooOld", None);
    }

    if let Some(limit) = &rule.rate_limit {
        let scope = format!(
            "{}/{}#{}:{}/{}/{:?}",
            resource.namespace,
            resource.name,
            rule.name,
            limit.requests_per_second,
            limit.burst,
            limit.key
        );
        let key = limit_key(&identity, client_ip, limit.key);
        if !env.limiter.allow(&scope, &key, limit, env.instant) {
            record.effect = "Deny";
            return refuse(record, 429, "RateLimited", None);
        }
    }

    Verdict {
        action: Action::Forward(Box::new(Forward {
            resource: ri,
            rule: ui,
            target: (!target.forwards_as(facts.target)).then(|| target.forward()),
            host: host_name.shared(&host),
            hash_key: match rule.load_balancing {
                LoadBalancing::ConsistentHash { hash_key } => {
                    Some(limit_key(&identity, client_ip, hash_key))
                }
                _ => None,
            },
            identity,
        })),
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_summaries_name_every_credential_in_one_string() {
        use rustronaut_contract::identity::{ApiKeyIdentity, CertificateIdentity, UserIdentity};
        let mut id = Identity::default();
        assert_eq!(identity_summary(&id), "anonymous");
        id.client_certificate = Some(CertificateIdentity {
            idp: "mtls".into(),
            spki_sha256: "ab12".into(),
            ..CertificateIdentity::default()
        });
        assert_eq!(identity_summary(&id), "cert:mtls/ab12");
        id.user = Some(Arc::new(UserIdentity {
            idp: "okta".into(),
            subject: "alice".into(),
            ..UserIdentity::default()
        }));
        id.api_key = Some(ApiKeyIdentity {
            idp: "keys".into(),
            client_id: "ci".into(),
        });
        if let Some(c) = id.client_certificate.as_mut() {
            c.san_dns_names = vec!["svc.example".into()];
            c.san_emails = vec!["a@example.com".into()];
        }
        assert_eq!(
            identity_summary(&id),
            "user:okta/alice,apiKey:keys/ci,cert:mtls/svc.example"
        );
    }

    #[test]
    fn traversal_spellings_of_upstream_servers_are_caught() {
        for bad in [
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/public/.;/x",
            "/public/%2e%2e;/admin",
            "/public/%2E.;x/admin?q",
            "/public/%252e%252e/admin",
            "/public/%252F",
            "/public/%255c",
            "/public/%25252e",
            // Issue 14, item 5: each character of `%2e` encoded again.
            "/public/%25%32%65%25%32%65/admin",
            "/public/%25%32%45",
            "/public/%25%32%66admin",
            "/public/%25%35%63admin",
            "/public/%2561dmin",
            // Issue 14, item 6: servlet path parameters.
            "/admin;x=1",
            "/admin/;x",
            "/public/a;b/c",
            "/public/...;x",
            "/public/..%3B/admin",
            "/public/%2e%2e%3bx/admin",
        ] {
            assert!(ambiguous_path(bad).is_some(), "{bad}");
        }
        for good in [
            "/public/%25/x",
            "/public/50%25",
            "/public/a%3Bb",
            "/public/x?next=..;/admin",
            "/public/%2e%2e/admin",
        ] {
            assert_eq!(ambiguous_path(good), None, "{good}");
        }
    }

    #[test]
    fn lower_case_methods_are_refused_and_standard_ones_pass() {
        for bad in ["delete", "Delete", "get", "pOST"] {
            assert!(ambiguous_method(bad).is_some(), "{bad}");
        }
        for good in ["GET", "DELETE", "PROPFIND", "M-SEARCH"] {
            assert_eq!(ambiguous_method(good), None, "{good}");
        }
    }

    #[test]
    fn method_overrides_in_the_query_are_refused() {
        for bad in [
            "/x?_method=DELETE",
            "/x?a=1&_method=delete",
            "/x?a=1;_METHOD=PUT",
            "/x?%5Fmethod=DELETE",
            "/x?_method",
        ] {
            assert!(ambiguous_query(bad).is_some(), "{bad}");
        }
        for good in [
            "/x",
            "/x?",
            "/x?method=DELETE",
            "/x?a=_method",
            "/x?my_method=1",
        ] {
            assert_eq!(ambiguous_query(good), None, "{good}");
        }
    }

    #[test]
    fn the_reserved_prefix_is_found_in_any_case_and_only_as_a_prefix() {
        for p in [
            "/.rustronaut/oidc/callback",
            "/.rustronaut/",
            "/.rustronaut",
            "/.RUSTRONAUT/oidc/logout",
            "/.rustronaut/other",
        ] {
            assert!(is_reserved_path(p), "{p}");
        }
        for p in [
            "/",
            "/.rustronautx",
            "/a/.rustronaut/oidc/callback",
            "/rustronaut/",
        ] {
            assert!(!is_reserved_path(p), "{p}");
        }
    }

    #[test]
    fn headers_that_read_as_reserved_or_redirect_the_upstream_are_dropped() {
        for name in [
            "x-rustronaut-user",
            "X-Rustronaut-User",
            "X_Rustronaut_User",
            "x_rustronaut-groups",
            "X-HTTP-Method-Override",
            "x-original-url",
            "X-Rewrite-URL",
            "Forwarded",
            "X-Real-IP",
            "true-client-ip",
        ] {
            assert!(dropped_header(name, false), "{name}");
            assert!(dropped_header(name, true), "{name}, underscores allowed");
        }
        assert!(dropped_header("x_api_key", false));
        assert!(!dropped_header("x_api_key", true));
        for name in [
            "accept",
            "x-api-key",
            "authorization",
            "x-forwarded-for",
            "cookie",
        ] {
            assert!(!dropped_header(name, false), "{name}");
        }
    }

    /// The lower-case fast path of [`dropped_header`] drops exactly what reading every
    /// name as its canonical form drops: every listed name and others in every case, with
    /// `_` for `-`, one byte longer or shorter, with underscores allowed or not.
    #[test]
    fn dropped_header_reads_every_spelling_as_its_canonical_name() {
        let reference = |name: &str, allow: bool| {
            let c = canonical_header_name(name);
            (!allow && name.contains('_'))
                || c.starts_with("x-rustronaut-")
                || DROPPED_HEADERS.contains(&c.as_str())
        };
        let mut names: Vec<String> = Vec::new();
        for base in DROPPED_HEADERS.iter().chain(&[
            "x-rustronaut-user",
            "x-rustronaut-",
            "x-rustronaut",
            "accept",
            "x-api-key",
            "x-forwarded-for",
            "host",
        ]) {
            let title: String = base
                .split('-')
                .map(|w| {
                    w.get(..1).unwrap_or_default().to_uppercase() + w.get(1..).unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("-");
            for v in [base.to_string(), base.to_uppercase(), title] {
                names.push(format!("{v}x"));
                names.push(v[..v.len() - 1].to_string());
                names.push(v.replace('-', "_"));
                for (i, _) in v.match_indices('-') {
                    let mut one = v.clone();
                    one.replace_range(i..=i, "_");
                    names.push(one);
                }
                names.push(v);
            }
        }
        // Every first byte, alone and before a listed name's rest (the first-byte table).
        names.push(String::new());
        for b in 0x21..0x7fu8 {
            names.push(char::from(b).to_string());
            names.push(format!("{}orwarded", char::from(b)));
            names.push(format!("{}-rustronaut-user", char::from(b)));
        }
        let mut dropped = 0;
        for name in &names {
            for allow in [false, true] {
                assert_eq!(
                    dropped_header(name, allow),
                    reference(name, allow),
                    "{name:?}, underscores allowed: {allow}"
                );
                dropped += usize::from(dropped_header(name, allow));
            }
        }
        assert!(dropped > names.len() / 3, "{dropped} of {}", names.len());
    }

    #[test]
    fn host_only_strips_port_dot_and_case() {
        assert_eq!(
            host_only("App.Example:8443").as_deref(),
            Some("app.example")
        );
        assert_eq!(host_only("app.example.").as_deref(), Some("app.example"));
        assert_eq!(
            host_only("[2001:db8::1]:443").as_deref(),
            Some("[2001:db8::1]")
        );
        assert_eq!(host_only(":80"), None);
        assert_eq!(host_only("[::1"), None);
        // No copy when there is nothing to lower-case.
        for (raw, borrowed) in [
            ("app.example", true),
            ("app.example:8080", true),
            ("app.example.", true),
            ("App.example", false),
        ] {
            let got = host_only(raw).unwrap();
            assert_eq!(matches!(got, Cow::Borrowed(_)), borrowed, "{raw}");
            assert_eq!(
                got,
                raw.to_ascii_lowercase()
                    .trim_end_matches([':', '8', '0', '.'])
            );
        }
    }

    /// With `trusted_hops` > 0 the harness's peer (192.0.2.1) is trusted.
    fn compiled(trusted_hops: u32) -> Compiled {
        let peers: &[&str] = if trusted_hops > 0 {
            &["192.0.2.0/24"]
        } else {
            &[]
        };
        compiled_trusting(trusted_hops, peers)
    }

    fn compiled_trusting(trusted_hops: u32, peers: &[&str]) -> Compiled {
        let up =
            json!([{"kind": {"service": {"name": "s", "port": 80, "addresses": ["127.0.0.1:9"]}}}]);
        let target = json!([{"resource": {"namespace": "ns", "name": "app"}}]);
        let snap = json!({
            "schemaVersion": 1,
            "gateway": {"namespace": "rtn-system", "name": "edge"},
            "clientIPDetection": {"trustedHops": trusted_hops, "trustedPeerCIDRs": peers},
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
            "tenants": [{"name": "t", "domains": ["*.example.test"]}],
            "resources": [{
                "namespace": "ns", "name": "app", "tenant": "t", "protocol": "HTTP",
                "listeners": ["http"], "hostnames": ["app.example.test", "*.wild.example.test"],
                "rules": [
                    {"name": "all", "upstreams": up},
                    {"name": "post-only", "matches": [{"path": {"type": "Exact", "value": "/form"}, "method": "POST"}],
                     "upstreams": up,
                     "rateLimit": {"requestsPerSecond": 1, "burst": 1, "key": "ClientIP"}}
                ]
            }],
            "policies": [
                {"namespace": "ns", "name": "open", "tenant": "t", "action": "Allow", "targets": target,
                 "rules": [{"name": "anyone", "from": ["anonymous"],
                            "to": [{"paths": [{"type": "PathPrefix", "value": "/public"}, {"type": "Exact", "value": "/form"}]}]}]},
                {"namespace": "ns", "name": "office", "tenant": "t", "action": "Allow", "targets": target,
                 "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["198.51.100.0/24"]}}],
                            "to": [{"paths": [{"type": "PathPrefix", "value": "/office"}]}]}]},
                {"namespace": "ns", "name": "shadow", "tenant": "t", "action": "Deny", "mode": "DryRun",
                 "targets": target,
                 "rules": [{"name": "would-deny", "from": ["anonymous"],
                            "to": [{"paths": [{"type": "PathPrefix", "value": "/public/shadow"}]}]}]},
                {"namespace": "ns", "name": "no-admin", "tenant": "t", "action": "Deny", "targets": target,
                 "rules": [{"name": "nobody", "from": ["anonymous"],
                            "to": [{"paths": [{"type": "PathPrefix", "value": "/admin"}]}]}]}
            ]
        });
        Compiled::load(&serde_json::to_vec(&snap).unwrap()).unwrap()
    }

    struct Harness {
        cache: TokenCache,
        ids: DecisionIds,
        limiter: RateLimiter,
        remote: RemoteJwks,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                cache: TokenCache::new(16).unwrap(),
                ids: DecisionIds::new(7),
                limiter: RateLimiter::default(),
                remote: RemoteJwks::default(),
                now: Instant::now(),
            }
        }

        fn run(
            &self,
            c: &Compiled,
            method: &str,
            host: &str,
            target: &str,
            xff: &[&'static str],
        ) -> Verdict {
            let xff = xff.to_vec();
            let header = move |name: &str| -> crate::authn::HeaderValues<'static> {
                if name == "x-forwarded-for" {
                    xff.iter().copied().collect()
                } else {
                    crate::authn::HeaderValues::new()
                }
            };
            let facts = RequestFacts {
                listener: "http",
                port: 80,
                tls_version: None,
                method,
                target,
                host: Some(host),
                header: &header,
                peer: "192.0.2.1".parse().unwrap(),
                client_chain: None,
                sni: None,
                framing: None,
            };
            let env = Env {
                now: SystemTime::now(),
                instant: self.now,
                cache: &self.cache,
                ids: &self.ids,
                limiter: &self.limiter,
                remote: &self.remote,
            };
            decide(c, &facts, &env)
        }
    }

    fn status(v: &Verdict) -> u16 {
        match v.action {
            Action::Forward(_) => 200,
            Action::Respond { status, .. } => status,
            Action::Login { .. } => 302,
        }
    }

    #[test]
    fn routes_normalises_and_decides() {
        let c = compiled(0);
        let h = Harness::new();
        let cases: &[(&str, &str, &str, u16)] = &[
            ("GET", "app.example.test", "/public/a", 200),
            ("GET", "APP.example.test:8080", "/public/a", 200),
            ("GET", "x.y.wild.example.test", "/public", 200),
            ("GET", "other.example.test", "/public", 404),
            ("GET", "app.example.test", "/private", 401),
            ("GET", "app.example.test", "/admin", 403),
            ("GET", "app.example.test", "/public/../admin", 403),
            ("GET", "app.example.test", "//admin", 403),
            ("GET", "app.example.test", "/%2e%2E/admin", 403),
            ("GET", "app.example.test", "/public/%2Fadmin", 400),
            ("GET", "app.example.test", "", 400),
            ("GET", "app.example.test", "*", 400),
        ];
        for (method, host, target, want) in cases {
            let v = h.run(&c, method, host, target, &[]);
            assert_eq!(status(&v), *want, "{method} {host} {target}: {v:?}");
            assert!(!v.record.decision_id.is_empty());
        }
    }

    #[test]
    fn forwards_the_normalised_target_with_the_query_untouched() {
        let c = compiled(0);
        let v = Harness::new().run(
            &c,
            "GET",
            "app.example.test",
            "/x/../public//%7Ea?q=%2F",
            &[],
        );
        let Action::Forward(f) = v.action else {
            panic!("{v:?}")
        };
        assert_eq!(f.target.as_deref(), Some("/public/~a?q=%2F"));
        assert_eq!(&*f.host, "app.example.test");
        assert_eq!(v.record.effect, "Allow");
        // A target already in normal form goes as it came: no copy of it in the Forward.
        let v = Harness::new().run(&c, "GET", "app.example.test", "/public/a?q=%2F", &[]);
        let Action::Forward(f) = v.action else {
            panic!("{v:?}")
        };
        assert_eq!(f.target, None);
        assert_eq!(
            v.record.policy.as_ref().map(ToString::to_string).as_deref(),
            Some("ns/open")
        );
    }

    #[test]
    fn forwarded_for_is_trusted_only_with_trusted_hops() {
        let office = ["198.51.100.7"];
        // Not trusted: the header is ignored, the peer (192.0.2.1) is not in the office.
        let v = Harness::new().run(&compiled(0), "GET", "app.example.test", "/office", &office);
        assert_eq!(status(&v), 401);
        let v = Harness::new().run(&compiled(1), "GET", "app.example.test", "/office", &office);
        assert_eq!(status(&v), 200, "{v:?}");
        assert_eq!(v.record.client_ip, Some("198.51.100.7".parse().unwrap()));
        // One trusted hop but no header: the request did not come through the proxy.
        let v = Harness::new().run(&compiled(1), "GET", "app.example.test", "/office", &[]);
        assert_eq!(status(&v), 400);
        // A hop count, but the peer is not one of the trusted proxies (issue 14, item 9): the
        // header is ignored (no 400 for a missing one either) and the peer is the client.
        let elsewhere = compiled_trusting(1, &["10.0.0.0/8"]);
        let v = Harness::new().run(&elsewhere, "GET", "app.example.test", "/office", &office);
        assert_eq!(status(&v), 401, "{v:?}");
        assert_eq!(v.record.client_ip, Some("192.0.2.1".parse().unwrap()));
        let v = Harness::new().run(&elsewhere, "GET", "app.example.test", "/office", &[]);
        assert_eq!(status(&v), 401, "{v:?}");
    }

    #[test]
    fn dry_run_outcomes_are_recorded_never_enforced() {
        let c = compiled(0);
        let v = Harness::new().run(&c, "GET", "app.example.test", "/public/shadow", &[]);
        assert_eq!(status(&v), 200, "{v:?}");
        assert_eq!(
            v.record.dry_run.as_deref(),
            Some("Deny DeniedBy ns/shadow would-deny")
        );
        let v = Harness::new().run(&c, "GET", "app.example.test", "/public/other", &[]);
        assert_eq!(status(&v), 200);
        assert!(
            v.record
                .dry_run
                .as_deref()
                .is_none_or(|d| d.starts_with("Allow")),
            "{v:?}"
        );
    }

    #[test]
    fn method_routing_and_rate_limit() {
        let c = compiled(0);
        let h = Harness::new();
        // GET /form routes to "all", which has no limit.
        for _ in 0..3 {
            assert_eq!(
                status(&h.run(&c, "GET", "app.example.test", "/form", &[])),
                200
            );
        }
        let first = h.run(&c, "POST", "app.example.test", "/form", &[]);
        assert_eq!(first.record.section.as_deref(), Some("post-only"));
        assert_eq!(status(&first), 200);
        let second = h.run(&c, "POST", "app.example.test", "/form", &[]);
        assert_eq!(status(&second), 429);
        assert_eq!(second.record.reason, "RateLimited");
    }

    /// A tenant with an OIDC provider and session keys, on an HTTPS listener: who is sent to
    /// log in, who gets 401, and what a session cookie does.
    mod login {
        use super::*;
        use crate::session::{SESSION_COOKIE, Session};
        use ring::rand::SystemRandom;

        fn compiled(keys: bool) -> Compiled {
            use base64::Engine;
            let up = json!([{"kind": {"service": {"name": "s", "port": 80, "addresses": ["127.0.0.1:9"]}}}]);
            let target = json!([{"resource": {"namespace": "ns", "name": "app"}}]);
            let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
            let session = if keys {
                json!({"durationSeconds": 3600, "signingKeys": [{"id": "k", "secret": key}]})
            } else {
                json!({"durationSeconds": 3600})
            };
            let snap = json!({
                "schemaVersion": 1,
                "gateway": {"namespace": "rtn-system", "name": "edge"},
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                "tenants": [{"name": "t", "session": session, "identityProviders": [
                    {"name": "corp", "kind": {"oidc": {"issuer": "https://idp.test",
                        "clientID": "c", "clientSecret": "s"}}}]}],
                "resources": [{
                    "namespace": "ns", "name": "app", "tenant": "t", "protocol": "HTTP",
                    "listeners": ["http"], "hostnames": ["app.test"],
                    "rules": [{"name": "all", "upstreams": up}]
                }],
                "policies": [
                    {"namespace": "ns", "name": "staff", "tenant": "t", "action": "Allow",
                     "targets": target,
                     "rules": [{"name": "staff", "from": [{"user": {"idp": "corp", "emailDomains": ["acme.test"]}}],
                                "to": [{"paths": [{"type": "PathPrefix", "value": "/app"}]}]}]},
                    {"namespace": "ns", "name": "fresh", "tenant": "t", "action": "Allow",
                     "targets": target, "session": {"durationSeconds": 60},
                     "rules": [{"name": "fresh", "from": ["authenticated"],
                                "to": [{"paths": [{"type": "PathPrefix", "value": "/fresh"}]}]}]}
                ]
            });
            Compiled::load(&serde_json::to_vec(&snap).unwrap()).unwrap()
        }

        fn run(
            c: &Compiled,
            tls: bool,
            method: &str,
            path: &str,
            headers: &[(&str, String)],
        ) -> Verdict {
            let h = Harness::new();
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let header = |name: &str| -> crate::authn::HeaderValues<'_> {
                headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .collect()
            };
            let facts = RequestFacts {
                listener: "http",
                port: 443,
                tls_version: tls.then_some("TLSv1_3"),
                method,
                target: path,
                host: Some("app.test"),
                header: &header,
                peer: "192.0.2.1".parse().unwrap(),
                client_chain: None,
                sni: None,
                framing: None,
            };
            let env = Env {
                now: SystemTime::now(),
                instant: h.now,
                cache: &h.cache,
                ids: &h.ids,
                limiter: &h.limiter,
                remote: &h.remote,
            };
            decide(c, &facts, &env)
        }

        fn html() -> (&'static str, String) {
            ("accept", "text/html,*/*;q=0.8".into())
        }

        fn cookie(c: &Compiled, email: &str, age: u64) -> (&'static str, String) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let s = Session {
                idp: "corp".into(),
                subject: "u1".into(),
                email: Some(email.into()),
                groups: Vec::new(),
                known_claims: Vec::new(),
                claims: Default::default(),
                issued_at: now - age,
                expires_at: now - age + 3600,
            };
            let keys = c.tenants["t"].session.as_ref().unwrap();
            let v = s.seal(keys, &SystemRandom::new()).unwrap();
            ("cookie", format!("a=1; {SESSION_COOKIE}={v}"))
        }

        #[test]
        fn browsers_on_https_are_sent_to_log_in_others_get_401() {
            let c = compiled(true);
            let v = run(&c, true, "GET", "/app", &[html()]);
            assert!(
                matches!(&v.action, Action::Login { tenant, idp } if tenant == "t" && idp == "corp"),
                "{v:?}"
            );
            assert_eq!(v.record.reason, "LoginRequired");
            // API client, POST, plain HTTP: 401, with the reason in the log detail.
            let v = run(
                &c,
                true,
                "GET",
                "/app",
                &[("accept", "application/json".into())],
            );
            assert_eq!(status(&v), 401);
            let v = run(&c, true, "POST", "/app", &[html()]);
            assert_eq!(status(&v), 401);
            let v = run(&c, false, "GET", "/app", &[html()]);
            assert_eq!(status(&v), 401);
            assert!(v.record.detail.unwrap().contains("HTTPS"));
            // No session keys: fails closed.
            let v = run(&compiled(false), true, "GET", "/app", &[html()]);
            assert_eq!(status(&v), 401);
            assert!(v.record.detail.unwrap().contains("no session keys"));
        }

        #[test]
        fn a_session_cookie_is_the_user_on_https_only() {
            let c = compiled(true);
            let v = run(
                &c,
                true,
                "GET",
                "/app",
                &[html(), cookie(&c, "ann@acme.test", 0)],
            );
            let Action::Forward(f) = &v.action else {
                panic!("{v:?}")
            };
            assert_eq!(
                f.identity.user.as_ref().unwrap().email.as_deref(),
                Some("ann@acme.test")
            );
            assert_eq!(v.record.identity, "user:corp/u1");
            // Logged in but not allowed: 403, no redirect loop.
            let v = run(
                &c,
                true,
                "GET",
                "/app",
                &[html(), cookie(&c, "bob@other.test", 0)],
            );
            assert_eq!(status(&v), 403, "{v:?}");
            // Over plain HTTP the cookie is ignored.
            let v = run(
                &c,
                false,
                "GET",
                "/app",
                &[html(), cookie(&c, "ann@acme.test", 0)],
            );
            assert_eq!(status(&v), 401);
            // A cookie that does not open is no session (not an error): log in again.
            let junk = ("cookie", format!("{SESSION_COOKIE}=v1.k.AAAA"));
            let v = run(&c, true, "GET", "/app", &[html(), junk]);
            assert!(matches!(v.action, Action::Login { .. }), "{v:?}");
        }

        #[test]
        fn a_policy_wanting_a_fresher_login_sends_the_browser_back_to_the_idp() {
            let c = compiled(true);
            let v = run(
                &c,
                true,
                "GET",
                "/fresh",
                &[html(), cookie(&c, "ann@acme.test", 10)],
            );
            assert_eq!(status(&v), 200, "{v:?}");
            let v = run(
                &c,
                true,
                "GET",
                "/fresh",
                &[html(), cookie(&c, "ann@acme.test", 120)],
            );
            assert!(
                matches!(&v.action, Action::Login { idp, .. } if idp == "corp"),
                "{v:?}"
            );
            let v = run(
                &c,
                true,
                "GET",
                "/fresh",
                &[cookie(&c, "ann@acme.test", 120)],
            );
            assert_eq!(status(&v), 401);
            assert_eq!(v.record.reason, "SessionTooOld");
        }
    }
}

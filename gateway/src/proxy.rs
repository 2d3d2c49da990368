//! The Pingora HTTP proxy: one [`GatewayProxy`] per HTTP(S) listener. Its phases gather
//! facts and carry out what [`crate::pipeline::decide`] says; they decide nothing
//! themselves.
//!
//! ```text
//!  request_filter          facts -> decide -> Respond (write 4xx, stop) | Forward (to ctx)
//!  upstream_peer           balancer pick (healthy, not yet tried) -> HttpPeer; a site
//!                          upstream -> HttpPeer whose custom L4 connector opens a stream
//!                          through the tunnel hub (crate::tunnel::SiteConnect)
//!  fail_to_connect         eject the address, retry another (connect failures only)
//!  upstream_request_filter normalised target, identity + forwarding headers, strip spoofs
//!  request_body_filter     count the body; past --max-body-bytes: 413, upstream cut off
//!  logging                 one JSON decision line, metrics, the request span ends
//! ```
//!
//! With tracing on ([`crate::telemetry`]), a span starts in `request_filter` (continuing the
//! client's W3C trace context) and the upstream gets a `traceparent` naming it.

use crate::balance::{Health, InFlight, Pick};
use crate::metrics::Metrics;
use crate::pipeline::{self, Action, Env, Forward, IdentitySummary, Record, RequestFacts};
use crate::ratelimit::RateLimiter;
use crate::reload::Store;
use crate::state::Compiled;
use crate::tls::HandshakeFacts;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use rustronaut_contract::Identity;
use rustronaut_contract::eval::DecisionIds;
use rustronaut_contract::identity::UserIdentity;
use rustronaut_contract::identity::cache::TokenCache;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Headers the gateway sets for upstreams; any client-supplied `x-rustronaut-*` header is
/// removed first, so an upstream can trust them.
pub const HEADER_USER: &str = "x-rustronaut-user";
/// Verified email.
pub const HEADER_EMAIL: &str = "x-rustronaut-email";
/// Groups, comma-separated, each percent-encoded by [`encode_group`] (a group named
/// `dev,admin` is `dev%2Cadmin`, never two groups).
pub const HEADER_GROUPS: &str = "x-rustronaut-groups";
/// The provider that verified the caller.
pub const HEADER_IDP: &str = "x-rustronaut-identity-provider";
/// The decision id (to upstreams on allow, to clients on every refusal).
pub const HEADER_DECISION_ID: &str = "x-rustronaut-decision-id";

/// The forwarding headers set for upstreams ([`GatewayProxy::upstream_headers`]), as names
/// built at compile time.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The identity headers' names, built at compile time.
mod names {
    use http::header::HeaderName;
    pub const USER: HeaderName = HeaderName::from_static(super::HEADER_USER);
    pub const EMAIL: HeaderName = HeaderName::from_static(super::HEADER_EMAIL);
    pub const GROUPS: HeaderName = HeaderName::from_static(super::HEADER_GROUPS);
    pub const IDP: HeaderName = HeaderName::from_static(super::HEADER_IDP);
    pub const DECISION_ID: HeaderName = HeaderName::from_static(super::HEADER_DECISION_ID);
}

/// An address as a header value, formatted on the stack: the value's copy is the one
/// allocation.
fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    if let IpAddr::V4(v4) = ip {
        let mut text = String::new();
        crate::logs::push_ipv4(&mut text, v4);
        return HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""));
    }
    // The longest text of an address: an IPv6 address with an embedded IPv4 one.
    let mut buf = [0u8; 45];
    let mut rest = &mut buf[..];
    let _ = write!(rest, "{ip}");
    let len = 45 - rest.len();
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
}

/// The address a decision names for a TCP peer: an IPv4-mapped IPv6 address (a dual-stack
/// listener's IPv4 client) as the IPv4 address it maps, so policies and logs see one form.
pub fn decision_peer(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A client connection's peer as [`decision_peer`] names it, with its text as a header
/// value, made once per plain-HTTP connection ([`crate::listener::Connection`]): each
/// request's `X-Forwarded-For` (when no proxy in front is trusted, the usual case) takes a
/// reference-counted copy and its log line the text, where each formatted the address
/// again: one allocation and ~470 instructions per request (issue 19, callgrind).
#[derive(Debug, Clone)]
pub struct PeerValue {
    /// The address.
    pub ip: IpAddr,
    /// Its text.
    pub value: HeaderValue,
}

impl PeerValue {
    /// The value of a connection from `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let ip = decision_peer(ip);
        Self {
            ip,
            value: ip_value(ip),
        }
    }
}

/// A header value the gateway built that turned out not to be one (it checked the parts
/// before: an internal error, not the client's).
fn invalid() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "built header value is not valid")
}

/// Process-wide state shared by every listener.
#[derive(Debug)]
pub struct Shared {
    /// The serving state.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Rate-limit buckets.
    pub limiter: RateLimiter,
    /// Upstream health.
    pub health: Arc<Health>,
    /// Requests in flight per upstream address.
    pub inflight: InFlight,
    /// Verified-token cache.
    pub cache: TokenCache,
    /// Decision ids.
    pub ids: DecisionIds,
    /// Keys fetched for remote-JWKS providers.
    pub remote: Arc<crate::jwks::RemoteJwks>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// How long an address stays ejected after a connect failure.
    pub eject_for: Duration,
    /// Most upstream addresses tried per request (connect failures only).
    pub max_attempts: usize,
    /// Request spans, when an OTLP endpoint is configured.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Header size limits ([`crate::framing`]).
    pub header_limits: crate::framing::Limits,
    /// Whether client headers with `_` in their name reach upstreams
    /// (`--allow-underscore-headers`; default: dropped, see [`pipeline::dropped_header`]).
    pub allow_underscore_headers: bool,
    /// The tunnel hub's stream endpoint, for site upstreams (`--tunnel-stream`).
    pub tunnel: Option<Arc<crate::tunnel::TunnelClient>>,
    /// OIDC browser login (discovery cache, token exchange).
    pub oidc: Arc<crate::oidc::Oidc>,
    /// Set at SIGTERM while the listeners still accept (`server::DrainThenStop`): every
    /// HTTP/1 answer from then on closes its connection, so clients reconnect, through
    /// load balancers that have taken this gateway out by then.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// One listener as bound.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Name in the snapshot.
    pub name: String,
    /// Port.
    pub port: u16,
    /// TLS-terminating.
    pub https: bool,
}

/// The proxy of one listener.
#[derive(Debug)]
pub struct GatewayProxy {
    listener: ListenerInfo,
    shared: Arc<Shared>,
}

impl GatewayProxy {
    /// A proxy for `listener`.
    pub fn new(listener: ListenerInfo, shared: Arc<Shared>) -> Self {
        Self { listener, shared }
    }
}

/// Per-request state, boxed as Pingora's `CTX` ([`GatewayProxy::new_ctx`] says why).
#[derive(Debug)]
pub struct Ctx {
    started: Instant,
    /// The wall-clock time at `started`. The request's clock, read once: token expiry and
    /// schedules see it, and the log line's timestamp is it plus the request's elapsed time,
    /// which the latency metric measures anyway (issue 19: three clock reads per request
    /// where there were five).
    wall: SystemTime,
    state: Option<Arc<Compiled>>,
    forward: Option<Box<Forward>>,
    record: Option<Record>,
    peer_ip: Option<IpAddr>,
    /// `peer_ip` as text, when the connection made it ([`PeerValue`]).
    peer_value: Option<HeaderValue>,
    tried: smallvec::SmallVec<[SocketAddr; 2]>,
    /// The site upstream of the current attempt (`site:<site>/<host>:<port>`).
    site: Option<String>,
    /// Whether a site upstream was tried for this request.
    site_tried: bool,
    /// The address counted in [`Shared::inflight`] for this request.
    counted: Option<SocketAddr>,
    /// The request span, when tracing is on.
    trace: Option<opentelemetry::Context>,
    /// Request body bytes seen so far.
    body_bytes: u64,
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// One group name as it appears in [`HEADER_GROUPS`]: `%`, `,`, space, control and non-ASCII
/// bytes percent-encoded (UTF-8, upper-case hex), everything else as it is. Split the header
/// on `,` and percent-decode each item to get the names back; a name without those bytes
/// (the usual case) reads the same either way.
pub fn encode_group(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    push_encoded_group(&mut out, name);
    out
}

/// [`encode_group`], appended to `out`.
fn push_encoded_group(out: &mut String, name: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in name.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b',' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// What the gateway sends upstream and logs for a verified user, made once per user and
/// kept with it ([`rustronaut_contract::identity::Derived`]): every request of a cached
/// token shares them (a header value's clone is a reference count), where building them
/// per request cost six allocator calls (issue 19). A browser session's user is made per
/// request, and so are its values, as before.
pub struct UserValues {
    user: Option<HeaderValue>,
    idp: Option<HeaderValue>,
    email: Option<HeaderValue>,
    groups: Option<HeaderValue>,
    /// The decision log's summary of this user alone (`user:idp/subject`).
    pub summary: Arc<str>,
}

impl UserValues {
    fn of(u: &UserIdentity) -> Self {
        let groups = (!u.groups.is_empty()).then(|| {
            let mut groups = String::new();
            for (i, g) in u.groups.iter().enumerate() {
                if i > 0 {
                    groups.push(',');
                }
                push_encoded_group(&mut groups, g);
            }
            groups
        });
        Self {
            user: header_value(&u.subject),
            idp: header_value(&u.idp),
            email: u.email.as_deref().and_then(header_value),
            groups: groups.as_deref().and_then(header_value),
            summary: pipeline::summary_of(&[("user", &u.idp, &u.subject)]).into(),
        }
    }
}

/// `f` of `u`'s [`UserValues`], made on first use.
pub fn with_user_values<R>(u: &UserIdentity, f: impl FnOnce(&UserValues) -> R) -> R {
    match u.derived.get_or_init(|| UserValues::of(u)) {
        Some(v) => f(v),
        // Another type kept there first: nothing in the gateway does that, but the values
        // are still right when made afresh.
        None => f(&UserValues::of(u)),
    }
}

/// The identity headers for an upstream, each handed to `set` as `(name, value)`; values
/// that are not valid header values are left out rather than mangled. The user, when there
/// is one, names the caller; else an API key, else a client certificate. The email is the
/// user's, or a certificate's when the user has none.
pub fn identity_headers(
    id: &Identity,
    decision_id: &str,
    mut set: impl FnMut(HeaderName, HeaderValue),
) {
    let cert_email = || {
        id.client_certificate
            .as_ref()
            .and_then(|c| c.san_emails.first())
            .and_then(|e| header_value(e))
    };
    if let Some(u) = &id.user {
        with_user_values(u, |v| {
            let email = if u.email.is_some() {
                v.email.clone()
            } else {
                cert_email()
            };
            for (name, value) in [
                (names::USER, v.user.clone()),
                (names::IDP, v.idp.clone()),
                (names::EMAIL, email),
                (names::GROUPS, v.groups.clone()),
            ] {
                if let Some(value) = value {
                    set(name, value);
                }
            }
        });
    } else {
        let caller = id
            .api_key
            .as_ref()
            .map(|k| (&k.client_id, &k.idp))
            .or_else(|| {
                id.client_certificate.as_ref().and_then(|c| {
                    c.san_uris
                        .first()
                        .or(c.san_dns_names.first())
                        .or(c.san_emails.first())
                        .map(|n| (n, &c.idp))
                })
            });
        if let Some((name, idp)) = caller {
            if let Some(v) = header_value(name) {
                set(names::USER, v);
            }
            if let Some(v) = header_value(idp) {
                set(names::IDP, v);
            }
        }
        if let Some(v) = cert_email() {
            set(names::EMAIL, v);
        }
    }
    if let Some(v) = header_value(decision_id) {
        set(names::DECISION_ID, v);
    }
}

/// The values of header `name`. A value that is not visible ASCII is kept as a value that
/// verifies as nothing, so a mangled credential is refused rather than ignored.
///
/// The names read on every request are looked up by the `http` crate's constants: a `&str`
/// name is parsed on every lookup, and one the crate does not know (`x-forwarded-for`)
/// checked byte by byte (issue 19: a few hundred instructions per request, callgrind).
fn header_values<'a>(req: &'a RequestHeader, name: &str) -> crate::authn::HeaderValues<'a> {
    let all = match name {
        "authorization" => req.headers.get_all(http::header::AUTHORIZATION),
        "x-forwarded-for" => req.headers.get_all(X_FORWARDED_FOR),
        "cookie" => req.headers.get_all(http::header::COOKIE),
        _ => req.headers.get_all(name),
    };
    all.iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect()
}

fn body_for(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "authentication required",
        403 => "forbidden",
        404 => "no route",
        413 => "request body too large",
        421 => "misdirected request",
        429 => "too many requests",
        431 => "request header fields too large",
        502 => "upstream unreachable",
        503 => "no upstream available",
        504 => "upstream timed out",
        _ => "refused",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The host the browser used (lower-case, with its port when it sent one) and the request
/// target as received, for OIDC redirects.
fn request_host_and_target(req: &RequestHeader) -> (Option<String>, String) {
    let raw = req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let host = raw.and_then(crate::oidc::public_host);
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    (host, target)
}

/// Whether the request is for one of the gateway's OIDC paths: `Some(true)` for the
/// callback, `Some(false)` for logout. Decided on the normalised path, as policies are, so
/// `/.rustronaut/oidc/%63allback` and `//.rustronaut/oidc/callback` are the callback too; a
/// target the pipeline refuses as ambiguous is none (it is refused there).
fn oidc_path(req: &RequestHeader) -> Option<bool> {
    use crate::oidc::{CALLBACK_PATH, LOGOUT_PATH};
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // Normalising changes letters only by percent-decoding them, so a target that neither
    // spells `rustronaut` nor holds a `%` cannot be one of these paths: most requests skip
    // a normalisation (and its allocations) that the pipeline makes anyway.
    if !target.contains("rustronaut") && !target.contains('%') {
        return None;
    }
    if !req.raw_path_is_utf8() || pipeline::ambiguous_path(target).is_some() {
        return None;
    }
    let normalized = rustronaut_contract::path::normalize(target).ok()?;
    match normalized.path.as_str() {
        CALLBACK_PATH => Some(true),
        LOGOUT_PATH => Some(false),
        _ => None,
    }
}

impl GatewayProxy {
    /// Writes an OIDC reply (redirect or short page, with its cookies); never cached.
    async fn reply(
        &self,
        session: &mut Session,
        reply: &crate::oidc::Reply,
        decision_id: &str,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(reply.status, Some(6))?;
        if let Some(l) = &reply.location {
            resp.insert_header("location", l.as_str())?;
        }
        for c in &reply.cookies {
            resp.append_header("set-cookie", c.as_str())?;
        }
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", reply.body.len().to_string())?;
        resp.insert_header(HEADER_DECISION_ID, decision_id)?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(reply.body.as_bytes())), true)
            .await
    }

    /// The upstream's headers from the client's: spoofable and secret headers dropped, the
    /// identity, trace and forwarding headers set ([`ProxyHttp::upstream_request_filter`]
    /// says why on a bare `HeaderMap`).
    fn upstream_headers(
        &self,
        h: &mut http::HeaderMap,
        state: &Compiled,
        f: &Forward,
        record: &Record,
        ctx: &Ctx,
    ) -> Result<()> {
        // Room for what is set below in one step, not a rehash per header.
        h.reserve(10);
        // Spoofed identity headers in any spelling an upstream may read as ours, and headers
        // that would make the upstream act on something the policy did not see
        // (pipeline::dropped_header); API keys are secrets between the client and the
        // gateway, in every spelling too.
        let resource = &state.snapshot.resources[f.resource];
        let auth = state.tenants.get(&resource.tenant);
        let api_keys = auth.map_or(&[][..], |a| &a.api_keys[..]);
        let allow_underscores = self.shared.allow_underscore_headers;
        // Names are copied only for the headers that go (usually none).
        let dropped: Vec<HeaderName> = h
            .keys()
            .filter(|k| {
                pipeline::dropped_header(k.as_str(), allow_underscores)
                    || api_keys
                        .iter()
                        .any(|p| pipeline::same_canonical_header(k.as_str(), &p.header))
            })
            .cloned()
            .collect();
        for k in dropped {
            h.remove(k);
        }
        if let Some(auth) = auth {
            // So are JWTs carried in cookies and, for tenants with session keys, the
            // gateway's session and login cookies: the other cookies pass.
            if (!auth.jwt_cookies.is_empty() || auth.session.is_some())
                && h.contains_key(http::header::COOKIE)
            {
                let mut names = auth.jwt_cookies.clone();
                names.extend(
                    [crate::session::SESSION_COOKIE, crate::session::LOGIN_COOKIE]
                        .map(String::from),
                );
                let kept: Vec<String> = h
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| crate::authn::strip_cookies(v, &names))
                    .collect();
                h.remove(http::header::COOKIE);
                for v in kept {
                    h.append(http::header::COOKIE, header_value(&v).ok_or_else(invalid)?);
                }
            }
        }
        identity_headers(&f.identity, &record.decision_id, |name, value| {
            h.insert(name, value);
        });
        // The upstream's parent span is the gateway's, not the client's.
        if let (Some(t), Some(cx)) = (&self.shared.telemetry, &ctx.trace) {
            for name in crate::telemetry::CONTEXT_HEADERS {
                h.remove(name);
            }
            for (name, value) in t.inject(cx) {
                let name = HeaderName::try_from(name).map_err(|_| invalid())?;
                h.insert(name, header_value(&value).ok_or_else(invalid)?);
            }
        }

        let trusted = ctx.peer_ip.is_some_and(|p| {
            state
                .trusted_peers
                .hops_from(p, state.snapshot.client_ip_detection.trusted_hops)
                > 0
        });
        let prior = trusted.then(|| h.get_all(X_FORWARDED_FOR));
        let xff = if let Some(prior) = prior.filter(|p| p.iter().next().is_some()) {
            // Behind trusted proxies, the chain so far, then this peer.
            let mut xff = String::new();
            for v in prior.iter().filter_map(|v| v.to_str().ok()) {
                xff.push_str(v);
                xff.push_str(", ");
            }
            if let Some(p) = ctx.peer_ip {
                use std::fmt::Write as _;
                let _ = write!(xff, "{p}");
            }
            header_value(&xff).ok_or_else(invalid)?
        } else {
            // Nothing in front of the gateway is trusted, or this peer is not one of the
            // trusted proxies: what the client wrote is dropped.
            match (&ctx.peer_value, ctx.peer_ip) {
                (Some(v), _) => v.clone(),
                (None, Some(ip)) => ip_value(ip),
                (None, None) => HeaderValue::from_static(""),
            }
        };
        h.insert(X_FORWARDED_FOR, xff);
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.listener.https { "https" } else { "http" }),
        );
        // The upstream sees the host the request was routed by, whatever form the client
        // used (absolute-form target, HTTP/2 :authority); the client's own Host header is
        // kept when it is byte for byte that host (the usual HTTP/1.1 case), and its value
        // shared with X-Forwarded-Host rather than copied.
        let mut hosts = h.get_all(http::header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(v), None) if v.as_bytes() == f.host.as_bytes() => v.clone(),
            _ => {
                let host = header_value(&f.host).ok_or_else(invalid)?;
                h.insert(http::header::HOST, host.clone());
                host
            }
        };
        h.insert(X_FORWARDED_HOST, host);
        Ok(())
    }

    /// Answers the gateway's OIDC paths (callback, logout) on hosts of tenants with an OIDC
    /// provider; `false` when the request is not one of them (it then goes on to
    /// [`pipeline::decide`] like any other).
    async fn oidc_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        state: &Arc<Compiled>,
    ) -> Result<bool> {
        let req = session.req_header();
        let Some(is_callback) = oidc_path(req) else {
            return Ok(false);
        };
        // Refusals that come before anything else in the pipeline stay there: ambiguous
        // framing, a TLS version below the listener's minimum.
        let framing = crate::framing::check(req.version, &req.headers, &self.shared.header_limits);
        let tls = session.digest().and_then(|d| d.ssl_digest.clone());
        let too_old = state.certs.get(&self.listener.name).is_some_and(|c| {
            c.min_version == rustronaut_contract::snapshot::TlsVersion::V1_3
                && tls
                    .as_ref()
                    .is_some_and(|d| d.version.as_ref() != "TLSv1_3")
        });
        if framing.is_err() || too_old {
            return Ok(false);
        }
        let (Some(host), _) = request_host_and_target(req) else {
            return Ok(false);
        };
        let Some(name) = pipeline::host_only(&host) else {
            return Ok(false);
        };
        let Some((_, resource)) = state.resource_for_host(&self.listener.name, &name) else {
            return Ok(false);
        };
        let Some(tenant) = state
            .snapshot
            .tenants
            .iter()
            .find(|t| t.name == resource.tenant)
        else {
            return Ok(false);
        };
        if !crate::oidc::has_oidc(tenant) {
            return Ok(false);
        }
        let keys = state
            .tenants
            .get(&tenant.name)
            .and_then(|a| a.session.as_ref());
        let query = req.uri.query().unwrap_or("").to_string();
        let cookies: Vec<String> = header_values(req, "cookie")
            .into_iter()
            .map(str::to_string)
            .collect();
        let cookies: Vec<&str> = cookies.iter().map(String::as_str).collect();
        let now = unix_now();
        let mut record = Record {
            resource: Some(format!("{}/{}", resource.namespace, resource.name).into()),
            identity: IdentitySummary::Static("anonymous"),
            client_ip: ctx.peer_ip,
            effect: "-",
            decision_id: self.shared.ids.next_id(),
            ..Record::default()
        };
        let oidc = &self.shared.oidc;
        let at = crate::oidc::At {
            tenant,
            keys,
            host: &host,
            https: self.listener.https,
            now,
            session_claims: state.policies.session_claims(&tenant.name),
        };
        let reply = if is_callback {
            let reply = match oidc.callback(&at, &query, &cookies).await {
                Ok((reply, s)) => {
                    record.identity =
                        IdentitySummary::Owned(format!("user:{}/{}", s.idp, s.subject));
                    record.reason = "LoggedIn";
                    Ok(reply)
                }
                Err(e) => {
                    record.reason = e.reason();
                    record.detail = Some(e.to_string());
                    Err(e.status())
                }
            };
            let result = if reply.is_ok() { "ok" } else { record.reason };
            self.shared
                .metrics
                .oidc_logins
                .get_or_create(&crate::metrics::ResultLabel { result })
                .inc();
            reply
        } else {
            record.reason = "LoggedOut";
            Ok(oidc.logout(&at, &cookies).await)
        };
        let id = record.decision_id.clone();
        ctx.record = Some(record);
        ctx.state = Some(state.clone());
        match reply {
            Ok(reply) => self.reply(session, &reply, &id).await?,
            Err(status) => self.respond(session, status, false, &id).await?,
        }
        Ok(true)
    }

    async fn respond(
        &self,
        session: &mut Session,
        status: u16,
        challenge: bool,
        decision_id: &str,
    ) -> Result<()> {
        let body = serde_json::json!({
            "status": status,
            "error": body_for(status),
            "decisionId": decision_id,
        })
        .to_string();
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header(HEADER_DECISION_ID, decision_id)?;
        if challenge {
            resp.insert_header("www-authenticate", "Bearer realm=\"rustronaut\"")?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    /// Boxed: Pingora keeps the `CTX` inline in its per-request future (several times over,
    /// across the states of its nested `async fn`s), and that future, about 13 KiB for bare
    /// Pingora, is copied into a fresh `Box` on every request (`process_new_http` is an
    /// `async_trait` method). The `Ctx` inline made it 14,912 bytes; boxed, 13,400, next to
    /// bare Pingora's 13,376, for one small allocation (issue 19, docs/benchmarks.md).
    type CTX = Box<Ctx>;

    /// No downstream modules: Pingora's default registers its response compression module
    /// disabled (level 0), which still made and dropped a context and ran four filters on
    /// every request. The gateway never compresses responses, so nothing changes for a
    /// client (issue 19: about 700 instructions and an allocation per request).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            started: Instant::now(),
            wall: SystemTime::now(),
            state: None,
            forward: None,
            record: None,
            peer_ip: None,
            peer_value: None,
            tried: smallvec::SmallVec::new(),
            site: None,
            site_tried: false,
            counted: None,
            trace: None,
            body_bytes: 0,
        })
    }

    /// Decides the request ([`pipeline::decide`]) and answers it when it is not forwarded.
    ///
    /// Every answer path awaits a boxed future. Pingora boxes this method's future per
    /// request (`async_trait`), and an async fn's future is as large as the largest future
    /// it awaits in place: with the OIDC and refusal answers inline it was 3,712 bytes, so
    /// every forwarded request paid mimalloc's slow path for blocks over 1 KiB for answers it
    /// never gave (issue 19, docs/benchmarks.md). Boxed, only the request that answers pays,
    /// one small allocation.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        // After Pingora read the head: its parser sets keep-alive from the request.
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            session.set_keepalive(None);
        }
        if let Some(t) = &self.shared.telemetry {
            let req = session.req_header();
            ctx.trace = Some(t.start(req.method.as_str(), |h| {
                req.headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            }));
        }
        let Some(state) = self.shared.store.current() else {
            Box::pin(session.respond_error(503)).await?;
            return Ok(true);
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no peer address"))?;
        let peer = decision_peer(peer);
        ctx.peer_ip = Some(peer);
        // The connection's own text of the address (plain HTTP/1); a TLS stream is another
        // type, and formats it per request.
        ctx.peer_value = session
            .stream()
            .and_then(|s| (**s).as_any().downcast_ref::<crate::listener::Connection>())
            .and_then(crate::listener::Connection::peer)
            .filter(|p| p.ip == peer)
            .map(|p| p.value.clone());
        if oidc_path(session.req_header()).is_some()
            && Box::pin(self.oidc_endpoint(session, ctx, &state)).await?
        {
            return Ok(true);
        }
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        let verdict = {
            let req = session.req_header();
            let header = |name: &str| header_values(req, name);
            let host = req.uri.authority().map(|a| a.as_str()).or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            // A target pingora had to decode lossily, or no target at all, is refused by
            // normalize (an empty target is not absolute).
            let target = if req.raw_path_is_utf8() {
                req.uri.path_and_query().map_or("", |pq| pq.as_str())
            } else {
                ""
            };
            let framing =
                crate::framing::check(req.version, &req.headers, &self.shared.header_limits).err();
            let handshake = ssl
                .as_ref()
                .and_then(|d| d.extension.get::<HandshakeFacts>());
            let chain = handshake.and_then(|h| h.chain.as_deref());
            let facts = RequestFacts {
                listener: &self.listener.name,
                port: self.listener.port,
                tls_version: ssl.as_ref().map(|d| d.version.as_ref()),
                method: req.method.as_str(),
                target,
                host,
                header: &header,
                peer,
                client_chain: chain,
                sni: handshake.and_then(|h| h.sni.as_deref()),
                framing: framing.as_ref(),
            };
            let env = Env {
                now: ctx.wall,
                instant: ctx.started,
                cache: &self.shared.cache,
                ids: &self.shared.ids,
                limiter: &self.shared.limiter,
                remote: &self.shared.remote,
            };
            pipeline::decide(&state, &facts, &env)
        };
        // Copied only for a refusal's answer: an allowed request's id goes upstream from
        // the record.
        let decision_id = |ctx: &Ctx| ctx.record.as_ref().map(|r| r.decision_id.clone());
        ctx.record = Some(verdict.record);
        ctx.state = Some(state.clone());
        match verdict.action {
            Action::Respond { status, challenge } => {
                let decision_id = decision_id(ctx).unwrap_or_default();
                // A refused request's body is never read: close the connection after the
                // answer, so unread bytes cannot be taken for a next request.
                if matches!(status, 400 | 413 | 431) {
                    session.set_keepalive(None);
                }
                Box::pin(self.respond(session, status, challenge, &decision_id)).await?;
                Ok(true)
            }
            Action::Forward(f) => {
                ctx.forward = Some(f);
                Ok(false)
            }
            Action::Login { tenant, idp } => {
                let decision_id = decision_id(ctx).unwrap_or_default();
                let (host, target) = request_host_and_target(session.req_header());
                let t = state.snapshot.tenants.iter().find(|t| t.name == tenant);
                let keys = state.tenants.get(&tenant).and_then(|a| a.session.as_ref());
                let begun = match (t, host) {
                    (Some(t), Some(host)) => {
                        let at = crate::oidc::At {
                            tenant: t,
                            keys,
                            host: &host,
                            https: self.listener.https,
                            now: unix_now(),
                            session_claims: state.policies.session_claims(&t.name),
                        };
                        Box::pin(self.shared.oidc.begin(&at, &idp, &target)).await
                    }
                    _ => Err(crate::oidc::OidcError::UnknownProvider(idp)),
                };
                match begun {
                    Ok(reply) => Box::pin(self.reply(session, &reply, &decision_id)).await?,
                    Err(e) => {
                        if let Some(r) = ctx.record.as_mut() {
                            r.detail = Some(e.to_string());
                        }
                        Box::pin(self.respond(session, e.status(), false, &decision_id)).await?;
                    }
                }
                Ok(true)
            }
        }
    }

    /// Counts the body as it streams (a chunked or HTTP/2 body has no length up front; a
    /// declared one over the limit never got here, see [`crate::framing`]). Past the limit
    /// the request fails with 413: the upstream connection is dropped before the body's end,
    /// so the upstream never sees a complete oversized request.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
        }
        let limit = self.shared.header_limits.max_body_bytes;
        if ctx.body_bytes > limit {
            *body = None;
            session.set_keepalive(None);
            if let Some(r) = ctx.record.as_mut() {
                r.reason = "BodyTooLarge";
                r.detail = Some(format!("request body larger than {limit} bytes"));
            }
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over --max-body-bytes",
            ));
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        let (Some(state), Some(f)) = (&ctx.state, &ctx.forward) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no routed request",
            ));
        };
        let rule = &state.snapshot.resources[f.resource].rules[f.rule];
        let pick = state
            .balancer(f.resource, f.rule, self.listener.port)
            .and_then(|b| {
                b.pick_target(
                    &self.shared.health,
                    &ctx.tried,
                    &self.shared.inflight,
                    f.hash_key.as_deref(),
                    ctx.site_tried,
                )
            })
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no upstream address"))?;
        let timeout = Duration::from_millis(rule.timeout_ms);
        let addr = match pick {
            Pick::Addr(addr) => addr,
            Pick::Site(site) => {
                let label = format!("site:{}/{}:{}", site.site, site.host, site.port);
                let Some(client) = &self.shared.tunnel else {
                    tracing::warn!(upstream = %label, "site upstream without --tunnel-stream");
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        "site upstream without a tunnel hub",
                    ));
                };
                ctx.site = Some(label);
                ctx.site_tried = true;
                // The address is never dialled (the custom connector opens a hub stream);
                // the group key keeps the pooled connections of each site target apart.
                let unused = SocketAddr::from(([0, 0, 0, 0], site.port));
                let mut peer = HttpPeer::new(unused, false, String::new());
                peer.group_key = crate::tunnel::site_group_key(&site.site, &site.host, site.port);
                peer.options.custom_l4 = Some(Arc::new(crate::tunnel::SiteConnect {
                    client: client.clone(),
                    site: site.site.clone(),
                    host: site.host.clone(),
                    port: site.port,
                }));
                peer.options.read_timeout = Some(timeout);
                peer.options.write_timeout = Some(timeout);
                return Ok(Box::new(peer));
            }
        };
        ctx.site = None;
        ctx.tried.push(addr);
        // Counted only when a least-connections balancer will read the count
        // (`Compiled::counts_in_flight`).
        let counted = if state.counts_in_flight {
            self.shared.inflight.start(addr);
            Some(addr)
        } else {
            None
        };
        if let Some(prev) = std::mem::replace(&mut ctx.counted, counted) {
            self.shared.inflight.end(prev);
        }
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.shared.connect_timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(site) = &ctx.site {
            // The hub refused or is unreachable: it already knows whether the site is up,
            // so the site is not ejected; another upstream of the rule may be tried.
            tracing::warn!(upstream = %site, error = %e, "site upstream not opened");
        } else if let Some(addr) = peer._address.as_inet() {
            self.shared.health.eject(*addr, self.shared.eject_for);
            self.shared.metrics.ejections.inc();
            tracing::warn!(upstream = %addr, error = %e, "upstream connect failed; ejected");
        }
        // Only a failed connect is retried: nothing reached the upstream, so even a
        // non-idempotent request is safe to send elsewhere.
        if ctx.tried.len() + usize::from(ctx.site_tried) < self.shared.max_attempts {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let (Some(state), Some(f), Some(record)) = (&ctx.state, &ctx.forward, &ctx.record) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no routed request",
            ));
        };
        // Edited as an `http::HeaderMap`, not through Pingora's header API: that parses and
        // copies every name it is given, twice while the client's header case is kept (one
        // map per case), and grew both maps header by header, about 40 allocator calls per
        // request for the nine headers set here (issue 19). Taken apart, the request takes
        // names built at compile time and one reservation. What it costs: the client's
        // spelling of header names is not kept for the upstream (Pingora writes the
        // standard ones Title-Cased, others in lower case), as HAProxy and Envoy do; HTTP
        // field names are case-insensitive (RFC 9110, section 5.1).
        let end_stream = upstream.send_end_stream();
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts = http::request::Parts::from(std::mem::replace(upstream, placeholder));
        // Origin-form upstream: the normalised target, or the client's own when that is
        // what normalising gave (kept as it is, not parsed again from a copy).
        match &f.target {
            Some(t) => {
                let pq: http::uri::PathAndQuery = t.parse().map_err(|_| {
                    Error::explain(ErrorType::InternalError, "normalised target is not a URI")
                })?;
                parts.uri = http::Uri::from(pq);
            }
            None if parts.uri.scheme().is_some() || parts.uri.authority().is_some() => {
                let pq = parts.uri.path_and_query().cloned().ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "routed request without a path")
                })?;
                parts.uri = http::Uri::from(pq);
            }
            None => {}
        }
        let edited = self.upstream_headers(&mut parts.headers, state, f, record, ctx);
        *upstream = RequestHeader::from(parts);
        if let Some(end) = end_stream {
            upstream.set_send_end_stream(end);
        }
        edited
    }

    /// Pingora's default error answer, plus the decision id and the JSON body of every other
    /// refusal when the request got that far (a 502/503 after an Allow).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // A timeout towards the upstream ran out (the rule's `timeoutMs` on a read or a
            // write, `--connect-timeout-ms` on the last connect attempt): a gateway timeout,
            // as nginx and Envoy answer, not a 502 that reads as a broken upstream.
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let written = match &ctx.record {
                Some(r) => {
                    let id = r.decision_id.clone();
                    self.respond(session, code, false, &id).await
                }
                None => session.respond_error(code).await,
            };
            if let Err(err) = written {
                tracing::debug!(error = %err, "failed to send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        if let Some(addr) = ctx.counted.take() {
            self.shared.inflight.end(addr);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let m = &self.shared.metrics;
        let elapsed = ctx.started.elapsed();
        m.latency.observe(elapsed.as_secs_f64());
        // Read in place: the record is a few hundred bytes, and moving it out was a copy
        // per request (issue 19); it is dropped with the context.
        let no_record;
        let record = match &ctx.record {
            Some(r) => r,
            None => {
                no_record = Record::default();
                &no_record
            }
        };
        if record.effect == "Allow" || record.effect == "Deny" {
            m.count_decision(record.effect, record.reason);
        }
        // Written without a String made per field, nor a tracing event (crate::logs).
        let addr = ctx.tried.last().filter(|_| ctx.site.is_none());
        let upstream = ctx
            .site
            .as_deref()
            .map(crate::logs::Upstream::Site)
            .or(addr.map(|a| crate::logs::Upstream::Addr(*a)));
        let line = crate::logs::RequestLine {
            listener: self.listener.name.as_str(),
            resource: record.resource.as_deref().unwrap_or("-"),
            section: record.section.as_deref().unwrap_or("-"),
            identity: &record.identity,
            client_ip: record.client_ip,
            client_ip_text: ctx
                .peer_value
                .as_ref()
                .filter(|_| record.client_ip.is_some() && record.client_ip == ctx.peer_ip)
                .and_then(|v| v.to_str().ok()),
            decision: record.effect,
            reason: record.reason,
            policy: record.policy.as_ref(),
            rule: record.policy_rule.as_deref().unwrap_or("-"),
            decision_id: record.decision_id.as_str(),
            status,
            upstream,
            detail: record.detail.as_deref().unwrap_or(""),
            dry_run: record.dry_run.as_deref().unwrap_or("-"),
            error: e.map(|e| e as &dyn std::fmt::Display),
            plain_names: ctx.state.as_ref().is_some_and(|s| s.plain_names),
        };
        crate::logs::request(&line, ctx.wall + elapsed);
        if let Some(cx) = ctx.trace.take() {
            let upstream = ctx
                .site
                .clone()
                .or_else(|| ctx.tried.last().map(ToString::to_string));
            let policy = record.policy.as_ref().map(ToString::to_string);
            crate::telemetry::Telemetry::finish(
                &cx,
                &crate::telemetry::SpanFacts {
                    resource: record.resource.as_deref(),
                    decision: record.effect,
                    reason: record.reason,
                    policy: policy.as_deref(),
                    rule: record.policy_rule.as_deref(),
                    decision_id: &record.decision_id,
                    status,
                    upstream: upstream.as_deref(),
                    listener: &self.listener.name,
                },
            );
        }
        m.count_request(record.resource.as_deref().unwrap_or("-"), status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_header_values_whole() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "2001:db8:1234:5678:9abc:def0:1234:5678",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(addr), addr.to_string(), "{ip}");
        }
    }

    /// A dual-stack listener's IPv4 client is named by its IPv4 address, in the decision and
    /// in the connection's text alike.
    #[test]
    fn a_connections_peer_value_is_the_decisions_address() {
        for (peer, want) in [
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("10.0.0.1", "10.0.0.1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let v = PeerValue::new(peer.parse().unwrap());
            assert_eq!(v.ip, decision_peer(peer.parse().unwrap()));
            assert_eq!(
                (v.ip.to_string().as_str(), v.value.to_str().unwrap()),
                (want, want)
            );
        }
    }

    fn headers_of(id: &Identity) -> Vec<(String, String)> {
        let mut out = Vec::new();
        identity_headers(id, "id-1", |n, v| {
            out.push((n.to_string(), v.to_str().unwrap().to_string()));
        });
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The names looked up by constant give what the generic lookup gives, whatever the
    /// client's spelling, every value in order.
    #[test]
    fn header_values_by_constant_match_the_generic_lookup() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in [
            ("Authorization", "Bearer a"),
            ("X-Forwarded-For", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("Cookie", "a=b"),
            ("X-Api-Key", "k"),
        ] {
            req.append_header(name, value).unwrap();
        }
        for name in [
            "authorization",
            "x-forwarded-for",
            "cookie",
            "x-api-key",
            "host",
        ] {
            let generic: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(header_values(&req, name).to_vec(), generic, "{name}");
        }
        assert_eq!(
            header_values(&req, "x-forwarded-for").to_vec(),
            ["192.0.2.1", "192.0.2.2"]
        );
    }

    /// The user's values are made once and kept with the user (the token cache's entry);
    /// every later request gets the same headers from them, and a caller without a user
    /// is named by its API key or certificate as before.
    #[test]
    fn identity_headers_name_the_caller_from_values_kept_with_the_user() {
        use rustronaut_contract::identity::{ApiKeyIdentity, CertificateIdentity};
        let cert = CertificateIdentity {
            idp: "mtls".into(),
            san_dns_names: vec!["svc.example".into()],
            san_emails: vec!["svc@example.com".into()],
            ..CertificateIdentity::default()
        };
        let mut id = Identity {
            user: Some(Arc::new(UserIdentity {
                idp: "okta".into(),
                subject: "alice".into(),
                email: Some("alice@example.com".into()),
                groups: vec!["sre".into(), "a,b %".into()],
                ..UserIdentity::default()
            })),
            client_certificate: Some(cert.clone()),
            ..Identity::default()
        };
        let want = pairs(&[
            (HEADER_USER, "alice"),
            (HEADER_IDP, "okta"),
            (HEADER_EMAIL, "alice@example.com"),
            (HEADER_GROUPS, "sre,a%2Cb%20%25"),
            (HEADER_DECISION_ID, "id-1"),
        ]);
        let user = id.user.clone().unwrap();
        assert_eq!(format!("{:?}", user.derived), "Derived(empty)");
        assert_eq!(headers_of(&id), want);
        assert_eq!(format!("{:?}", user.derived), "Derived(kept)");
        assert_eq!(headers_of(&id), want, "from the kept values");
        with_user_values(&user, |v| assert_eq!(&*v.summary, "user:okta/alice"));

        // A user without an email: the certificate's. With one that is no header value:
        // none (not the certificate's in its place).
        for (email, want_email) in [(None, Some("svc@example.com")), (Some("a\nb"), None)] {
            id.user = Some(Arc::new(UserIdentity {
                idp: "okta".into(),
                subject: "alice".into(),
                email: email.map(String::from),
                ..UserIdentity::default()
            }));
            let got = headers_of(&id);
            let got_email = got.iter().find(|(n, _)| n == HEADER_EMAIL);
            assert_eq!(got_email.map(|(_, v)| v.as_str()), want_email, "{email:?}");
            assert!(!got.iter().any(|(n, _)| n == HEADER_GROUPS));
        }

        // No user: an API key names the caller, else the certificate.
        id.user = None;
        assert_eq!(
            headers_of(&id),
            pairs(&[
                (HEADER_USER, "svc.example"),
                (HEADER_IDP, "mtls"),
                (HEADER_EMAIL, "svc@example.com"),
                (HEADER_DECISION_ID, "id-1"),
            ])
        );
        id.api_key = Some(ApiKeyIdentity {
            idp: "keys".into(),
            client_id: "ci".into(),
        });
        assert_eq!(
            headers_of(&id),
            pairs(&[
                (HEADER_USER, "ci"),
                (HEADER_IDP, "keys"),
                (HEADER_EMAIL, "svc@example.com"),
                (HEADER_DECISION_ID, "id-1"),
            ])
        );
        assert_eq!(
            headers_of(&Identity::default()),
            pairs(&[(HEADER_DECISION_ID, "id-1")])
        );
    }

    fn oidc(target: &str) -> Option<bool> {
        oidc_path(&RequestHeader::build("GET", target.as_bytes(), None).unwrap())
    }

    /// The shortcut for targets that cannot be the login paths keeps every spelling that
    /// normalises to one of them.
    #[test]
    fn login_paths_are_found_in_every_spelling_and_nothing_else_is() {
        for (target, want) in [
            ("/.rustronaut/oidc/callback?code=x&state=y", Some(true)),
            ("/.rustronaut/oidc/logout", Some(false)),
            ("/a/../.rustronaut/oidc/callback", Some(true)),
            ("//.rustronaut//oidc/./callback", Some(true)),
            ("/.%72ustronaut/oidc/callback", Some(true)),
            ("/%2Erustronaut/oidc/logout", Some(false)),
            ("/.rustronaut/oidc/%63allback", Some(true)),
            ("/.rustronaut/oidc/callbackx", None),
            ("/small", None),
            ("/", None),
            ("/app/rustronaut", None),
            ("/100%25", None),
        ] {
            assert_eq!(oidc(target), want, "{target}");
        }
    }
}

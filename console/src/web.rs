//! The HTTP application: login, pages, edits. Handlers gather facts (session, form, what
//! the API server says as the person) and call the pure modules; they keep no state.
//!
//! ```text
//! GET  /login, /oidc/callback, POST /logout      OIDC code + PKCE, sealed session cookie
//! GET  /                                          overview: counts and broken objects
//! GET  /k/{kind}?namespace=&q=                    list (as the person), filter, search
//! GET  /k/{kind}/watch?namespace=                 server-sent events from a watch (as the person)
//! GET  /k/{kind}/{ns}/{name}                      detail: conditions, events, YAML
//! GET  /k/{kind}/new, POST                        create: generated form or YAML, dry run first
//! GET  /k/{kind}/{ns}/{name}/edit, POST           edit: same, refused for GitOps-owned objects
//! GET  /k/{kind}/{ns}/{name}/delete, POST         delete with confirmation
//! GET  /explain?resource=ns/name&...              policy explain over what the person can read
//! GET  /healthz, /readyz                          probes
//! ```
//!
//! Cluster-scoped objects (Tenants) use `-` as their namespace in URLs.

// Helpers return the error page as `Err(Response)` so handlers stay linear; a Response is
// large but built once per failed request, never on a hot path.
#![allow(clippy::result_large_err)]

use crate::forms;
use crate::gitops;
use crate::html::{enc, esc, form, notice, page};
use crate::impersonate::Impersonator;
use crate::kinds::Kind;
use crate::listing::{self, Listed};
use crate::metrics::Metrics;
use crate::oidc::{Identity, OidcClient, authorize_url};
use crate::problems::{Problem, Refusal, refusal};
use crate::seal::Sealer;
use crate::session::{
    LOGIN_COOKIE, LOGIN_SECONDS, LoginState, SESSION_COOKIE, Session, clear_cookie, cookie, now,
    safe_return_to, same, set_cookie,
};
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, WatchParams};
use kube::core::WatchEvent;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

/// Field manager of the console's writes (what GitOps drift reports will name).
pub const FIELD_MANAGER: &str = "rustronaut-console";

/// The Content-Security-Policy of every response: only the console's own script and style,
/// no inline code, no framing, forms only to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Everything the handlers share.
pub struct App {
    /// Seals and opens cookies.
    pub sealer: Sealer,
    /// The IdP.
    pub oidc: OidcClient,
    /// Builds clients acting as the person.
    pub kube: Impersonator,
    /// The console's public origin (`https://console.example`), for Origin checks.
    pub origin: String,
    /// How long a session lasts, in seconds.
    pub session_seconds: u64,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Set at SIGTERM: `/readyz` fails while the console still serves through its drain
    /// delay, so the Service stops sending it new connections before it closes (main.rs).
    pub draining: std::sync::atomic::AtomicBool,
}

type Shared = Arc<App>;

/// `ok`, or 503 `draining` from SIGTERM on.
async fn readyz(State(app): State<Shared>) -> (StatusCode, &'static str) {
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// The router of the console's public port.
pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login))
        .route("/oidc/callback", get(callback))
        .route("/logout", axum::routing::post(logout))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .route("/explain", get(explain_page))
        .route("/k/{kind}", get(list))
        .route("/k/{kind}/watch", get(watch))
        .route("/k/{kind}/new", get(new_page).post(new_submit))
        .route("/k/{kind}/{ns}/{name}", get(detail))
        .route(
            "/k/{kind}/{ns}/{name}/edit",
            get(edit_page).post(edit_submit),
        )
        .route(
            "/k/{kind}/{ns}/{name}/delete",
            get(delete_page).post(delete_submit),
        )
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Security headers on every response, request metrics, and the server time of each
/// response as a `Server-Timing` header (`app;dur=<ms>`): browsers' developer tools show it
/// next to the network time, and `make bench-console` reads it. It says how long the
/// console and its API calls took, which a client can time anyway, so it hides nothing.
async fn observe(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let mut resp = next.run(req).await;
    let took = started.elapsed();
    app.metrics.request(&method, &route, resp.status().as_u16());
    app.metrics.duration(&method, &route, took.as_secs_f64());
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={:.3}", took.as_secs_f64() * 1e3)) {
        h.insert("server-timing", v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null` on
    // the console's own form POSTs, which the CSRF check refuses (tests/browser.rs found it;
    // curl sends no Origin). Other sites still get no referrer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !route.starts_with("/static") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/console.js"),
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_page(session: Option<&Session>, status: StatusCode, text: &str) -> Response {
    html(status, page("Error", session, &notice("error", text)))
}

/// The session of this request, if its cookie opens and has not expired.
fn session(app: &App, headers: &HeaderMap) -> Option<Session> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let s: Session = app
        .sealer
        .open(SESSION_COOKIE, cookie(cookies, SESSION_COOKIE)?)?;
    s.live(now()).then_some(s)
}

/// The session, or the response that sends the person to log in first.
fn signed_in(app: &App, headers: &HeaderMap, uri: &str) -> Result<Session, Response> {
    session(app, headers)
        .ok_or_else(|| Redirect::to(&format!("/login?return_to={}", enc(uri))).into_response())
}

/// The session of a state-changing request, which must also come from the console's own
/// origin (when the browser says) and carry the session's CSRF token.
fn checked(app: &App, headers: &HeaderMap, form: &[(String, String)]) -> Result<Session, Response> {
    let s = session(app, headers).ok_or_else(|| {
        error_page(
            None,
            StatusCode::UNAUTHORIZED,
            "Your session has ended. Sign in again.",
        )
    })?;
    let origin_ok = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().ok() == Some(app.origin.as_str()))
        .unwrap_or(true);
    let token = form
        .iter()
        .find(|(k, _)| k == "_csrf")
        .map(|(_, v)| v.as_str());
    if !origin_ok || !s.csrf_ok(token) {
        app.metrics.csrf_refused();
        return Err(error_page(
            Some(&s),
            StatusCode::FORBIDDEN,
            "This request did not come from a console page (CSRF check failed). Reload the page and try again.",
        ));
    }
    Ok(s)
}

fn identity(s: &Session) -> Identity {
    Identity {
        user: s.user.clone(),
        groups: s.groups.clone(),
    }
}

fn client(app: &App, s: &Session) -> Result<kube::Client, Response> {
    app.kube
        .client(&identity(s))
        .map_err(|e| error_page(Some(s), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

fn api(client: kube::Client, kind: Kind, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.api_resource();
    match ns {
        Some(ns) if kind.namespaced() => Api::namespaced_with(client, ns, &ar),
        _ => Api::all_with(client, &ar),
    }
}

fn kind_of(s: Option<&Session>, plural: &str) -> Result<Kind, Response> {
    Kind::from_plural(plural).ok_or_else(|| {
        error_page(
            s,
            StatusCode::NOT_FOUND,
            &format!("There is no kind {plural:?} here."),
        )
    })
}

fn refused(s: &Session, err: &kube::Error) -> Response {
    let r = refusal(err);
    let status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::BAD_GATEWAY);
    error_page(Some(s), status, &r.summary)
}

// ---------------------------------------------------------------------------------------
// Login

#[derive(Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
}

async fn login(State(app): State<Shared>, Query(q): Query<LoginQuery>) -> Response {
    let d = match app.oidc.discovery().await {
        Ok(d) => d.clone(),
        Err(e) => {
            tracing::warn!(error = %e, "OIDC discovery failed");
            return error_page(
                None,
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached; try again later.",
            );
        }
    };
    let token = || app.sealer.random_token(32);
    let (Ok(state), Ok(nonce), Ok(verifier)) = (token(), token(), token()) else {
        return error_page(None, StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let login = LoginState {
        state: state.clone(),
        nonce: nonce.clone(),
        verifier: verifier.clone(),
        return_to: safe_return_to(q.return_to.as_deref()),
        expires: now() + LOGIN_SECONDS,
    };
    let Ok(sealed) = app.sealer.seal(LOGIN_COOKIE, &login) else {
        return error_page(
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not seal the login state",
        );
    };
    let url = authorize_url(&d, &app.oidc.settings, &state, &nonce, &verifier);
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, &sealed, LOGIN_SECONDS),
            ),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let bad = |text: &str| {
        app.metrics.login("refused");
        let mut r = error_page(None, StatusCode::BAD_REQUEST, text);
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&clear_cookie(LOGIN_COOKIE)).expect("cookie"),
        );
        r
    };
    if let Some(e) = q.error {
        return bad(&format!("The identity provider refused the login: {e}."));
    }
    let login: Option<LoginState> = headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| cookie(c, LOGIN_COOKIE))
        .and_then(|v| app.sealer.open(LOGIN_COOKIE, v));
    let Some(login) = login.filter(|l| l.expires > now()) else {
        return bad("This login was not started in this browser or took too long. Start again.");
    };
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return bad("The identity provider sent no code.");
    };
    if !same(&state, &login.state) {
        return bad("This login does not match the one this browser started. Start again.");
    }
    let id = match app
        .oidc
        .finish(&code, &login.verifier, &login.nonce, now())
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "OIDC login failed");
            return bad(&format!("The login could not be completed: {e}."));
        }
    };
    let Ok(csrf) = app.sealer.random_token(32) else {
        return bad("no randomness");
    };
    let session = Session {
        user: id.user,
        groups: id.groups,
        csrf,
        expires: now() + app.session_seconds,
    };
    let Ok(sealed) = app.sealer.seal(SESSION_COOKIE, &session) else {
        return bad("could not seal the session");
    };
    tracing::info!(user = %session.user, groups = ?session.groups, "signed in");
    app.metrics.login("ok");
    let mut r = Redirect::to(&login.return_to).into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_str(&set_cookie(SESSION_COOKIE, &sealed, app.session_seconds))
            .expect("cookie"),
    );
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear_cookie(LOGIN_COOKIE)).expect("cookie"),
    );
    r
}

async fn logout(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = checked(&app, &headers, &form) {
        return r;
    }
    let mut r = html(
        StatusCode::OK,
        page(
            "Signed out",
            None,
            r#"<p>You are signed out of the console.</p><p><a href="/login">Sign in again</a></p>"#,
        ),
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear_cookie(SESSION_COOKIE)).expect("cookie"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// Reading

/// The Ready condition of an object: (status, reason, message).
pub fn ready(obj: &Value) -> (String, String, String) {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
        .unwrap_or_else(|| {
            (
                "Unknown".into(),
                "NotReported".into(),
                "No Ready condition yet.".into(),
            )
        })
}

fn obj_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

fn ns_segment(o: &DynamicObject) -> String {
    o.metadata.namespace.clone().unwrap_or_else(|| "-".into())
}

fn detail_url(kind: Kind, o: &DynamicObject) -> String {
    detail_path(
        kind,
        &ns_segment(o),
        o.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn detail_path(kind: Kind, ns_segment: &str, name: &str) -> String {
    format!("/k/{}/{}/{}", kind.plural(), enc(ns_segment), enc(name))
}

fn ready_cell(obj: &Value) -> String {
    let (status, reason, message) = ready(obj);
    let class = match status.as_str() {
        "True" => "ok",
        "False" => "bad",
        _ => "unknown",
    };
    format!(
        r#"<span class="ready {class}" title="{}">{} <small>{}</small></span>"#,
        esc(&message),
        esc(&status),
        esc(&reason)
    )
}

async fn overview(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let s = match signed_in(&app, &headers, "/") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let c = match client(&app, &s) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = &c;
    let mut body = String::from(r#"<div class="cards">"#);
    let mut broken = String::new();
    // The four lists at once: the page takes as long as the longest, not their sum.
    let lists = futures::future::join_all(
        Kind::ALL.map(|kind| async move { (kind, listing::list::<Listed>(c, kind, None).await) }),
    )
    .await;
    for (kind, list) in lists {
        match list {
            Ok(list) => {
                let total = list.len();
                let bad: Vec<(Value, &Listed)> = list
                    .iter()
                    .map(|o| (o.to_value(), o))
                    .filter(|(v, _)| ready(v).0 != "True")
                    .collect();
                let _ = write!(
                    body,
                    r#"<section class="card"><h2><a href="/k/{p}">{k}</a></h2><p><span class="count">{total}</span> total, <span class="count {cls}">{n}</span> not Ready</p></section>"#,
                    p = kind.plural(),
                    k = kind.title_plural(),
                    n = bad.len(),
                    cls = if bad.is_empty() { "ok" } else { "bad" }
                );
                for (v, o) in bad {
                    let _ = write!(
                        broken,
                        r#"<tr><td>{}</td><td>{}</td><td><a href="{}">{}</a></td><td>{}</td><td>{}</td></tr>"#,
                        kind.name(),
                        esc(o.metadata.namespace.as_deref().unwrap_or("")),
                        detail_path(kind, o.ns_segment(), &o.metadata.name),
                        esc(&o.metadata.name),
                        ready_cell(&v),
                        esc(&ready(&v).2)
                    );
                }
            }
            Err(e) => {
                let _ = write!(
                    body,
                    r#"<section class="card"><h2><a href="/k/{}">{}</a></h2>{}</section>"#,
                    kind.plural(),
                    kind.title_plural(),
                    notice("warn", &refusal(&e).summary)
                );
            }
        }
    }
    body.push_str("</div>");
    if broken.is_empty() {
        body.push_str("<p>Everything you can see is Ready.</p>");
    } else {
        let _ = write!(
            body,
            r#"<h2>Not Ready</h2><div class="scroll"><table><thead><tr><th scope="col">Kind</th><th scope="col">Namespace</th><th scope="col">Name</th><th scope="col">Ready</th><th scope="col">Message</th></tr></thead><tbody>{broken}</tbody></table></div>"#
        );
    }
    html(StatusCode::OK, page("Overview", Some(&s), &body))
}

#[derive(Deserialize, Default)]
struct ListQuery {
    namespace: Option<String>,
    q: Option<String>,
    state: Option<String>,
}

async fn list(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let here = format!("/k/{plural}");
    let s = match signed_in(&app, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let c = match client(&app, &s) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ns = q.namespace.as_deref().filter(|n| !n.is_empty());
    let search = q.q.clone().unwrap_or_default();
    let only_broken = q.state.as_deref() == Some("broken");
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<form method="get" class="filters" role="search">{ns_input}<label for="q">Search</label><input id="q" name="q" value="{q}"><label><input type="checkbox" name="state" value="broken"{chk}> only not Ready</label><button type="submit">Filter</button></form>
<p><a class="button" href="/k/{p}/new">New {k}</a></p>"#,
        ns_input = if kind.namespaced() {
            format!(
                r#"<label for="namespace">Namespace</label><input id="namespace" name="namespace" value="{}" placeholder="all you can see">"#,
                esc(ns.unwrap_or(""))
            )
        } else {
            String::new()
        },
        q = esc(&search),
        chk = if only_broken { " checked" } else { "" },
        p = kind.plural(),
        k = kind.name()
    );
    match listing::list::<Listed>(&c, kind, ns).await {
        Ok(list) => {
            let mut rows = String::new();
            let mut shown = 0;
            for o in &list {
                let (name, namespace) = (
                    &o.metadata.name,
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                );
                if !search.is_empty() && !name.contains(&search) && !namespace.contains(&search) {
                    continue;
                }
                let v = o.to_value();
                if only_broken && ready(&v).0 == "True" {
                    continue;
                }
                shown += 1;
                let gitops = gitops::owner(&v)
                    .map(|_| r#" <span class="tag">GitOps</span>"#)
                    .unwrap_or("");
                let _ = write!(
                    rows,
                    r#"<tr data-key="{key}"><td>{ns}</td><td><a href="{url}">{name}</a>{gitops}</td><td class="ready-cell">{ready}</td></tr>"#,
                    key = esc(&format!("{namespace}/{name}")),
                    ns = esc(namespace),
                    url = detail_path(kind, o.ns_segment(), name),
                    name = esc(name),
                    ready = ready_cell(&v)
                );
            }
            let watch = format!(
                "/k/{}/watch{}",
                kind.plural(),
                ns.map(|n| format!("?namespace={}", enc(n)))
                    .unwrap_or_default()
            );
            let _ = write!(
                body,
                r#"<p class="live" data-watch="{watch}" aria-live="polite">{shown} of {} shown</p><div class="scroll"><table><thead><tr><th scope="col">Namespace</th><th scope="col">Name</th><th scope="col">Ready</th></tr></thead><tbody>{rows}</tbody></table></div>"#,
                list.len(),
                watch = esc(&watch)
            );
        }
        Err(e) => {
            let r = refusal(&e);
            let hint = if r.code == 403 && ns.is_none() && kind.namespaced() {
                " Enter a namespace you work in above to list it there."
            } else {
                ""
            };
            body.push_str(&notice("error", &format!("{}{hint}", r.summary)));
        }
    }
    html(StatusCode::OK, page(kind.title_plural(), Some(&s), &body))
}

#[derive(Deserialize)]
struct WatchQuery {
    namespace: Option<String>,
}

/// Server-sent events: each change of an object of `kind` the person can watch, as
/// `{"key": "ns/name", "ready": "<cell html>", "conditions": "<rows html>"}`. The watch itself runs as the person.
async fn watch(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(plural): Path<String>,
    Query(q): Query<WatchQuery>,
) -> Response {
    let Some(s) = session(&app, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Some(kind) = Kind::from_plural(&plural) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(c) = app.kube.client(&identity(&s)) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let api = api(c, kind, q.namespace.as_deref().filter(|n| !n.is_empty()));
    let stream = match api.watch(&WatchParams::default().timeout(290), "0").await {
        Ok(st) => st,
        Err(e) => {
            return StatusCode::from_u16(refusal(&e).code)
                .unwrap_or(StatusCode::BAD_GATEWAY)
                .into_response();
        }
    };
    let events = stream
        .map_ok(move |ev| match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let v = obj_value(&o);
                let key = format!(
                    "{}/{}",
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default()
                );
                Some(
                    Event::default().event("change").data(
                        json!({"key": key, "ready": ready_cell(&v), "conditions": condition_rows(&v), "url": detail_url(kind, &o)})
                            .to_string(),
                    ),
                )
            }
            WatchEvent::Deleted(o) => {
                let key = format!(
                    "{}/{}",
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default()
                );
                Some(
                    Event::default()
                        .event("delete")
                        .data(json!({"key": key}).to_string()),
                )
            }
            _ => None,
        })
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| futures::future::ready(r.ok().flatten()))
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The rows of a detail page's conditions table (escaped): rendered with the page and sent
/// again with every change, so the table follows the object live as the Ready cell does.
fn condition_rows(v: &Value) -> String {
    let mut rows = String::new();
    for c in v["status"]["conditions"].as_array().into_iter().flatten() {
        let f = |k: &str| esc(c[k].as_str().unwrap_or_default());
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f("type"),
            f("status"),
            f("reason"),
            f("message"),
            f("lastTransitionTime")
        );
    }
    rows
}

fn yaml_of(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    serde_saphyr::to_string(&v).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

async fn get_obj(
    app: &App,
    s: &Session,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Result<DynamicObject, Response> {
    let c = client(app, s)?;
    api(c, kind, Some(ns))
        .get(name)
        .await
        .map_err(|e| refused(s, &e))
}

async fn detail(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((plural, ns, name)): Path<(String, String, String)>,
) -> Response {
    let here = format!("/k/{plural}/{ns}/{name}");
    let s = match signed_in(&app, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let o = match get_obj(&app, &s, kind, &ns, &name).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let v = obj_value(&o);
    let mut body = String::new();
    let owner = gitops::owner(&v);
    if let Some(owner) = &owner {
        body.push_str(&notice(
            "warn",
            &format!("Managed by GitOps: {owner}. Read-only here; change it in its repository."),
        ));
    }
    let _ = write!(
        body,
        r#"<p class="live" data-watch="/k/{p}/watch{q}" aria-live="polite">Ready: <span data-key="{key}"><span class="ready-cell">{ready}</span></span></p>"#,
        p = kind.plural(),
        q = if kind.namespaced() {
            format!("?namespace={}", enc(&ns))
        } else {
            String::new()
        },
        key = esc(&format!(
            "{}/{}",
            o.metadata.namespace.clone().unwrap_or_default(),
            name
        )),
        ready = ready_cell(&v)
    );
    if owner.is_none() {
        let _ = write!(
            body,
            r#"<p><a class="button" href="{here}/edit">Edit</a> <a class="button danger" href="{here}/delete">Delete</a></p>"#,
            here = esc(&here)
        );
    }
    let _ = write!(
        body,
        r#"<h2>Conditions</h2><div class="scroll"><table><thead><tr><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Reason</th><th scope="col">Message</th><th scope="col">Since</th></tr></thead><tbody data-conditions="{key}">{rows}</tbody></table></div><h2>Events</h2>"#,
        key = esc(&format!(
            "{}/{}",
            o.metadata.namespace.clone().unwrap_or_default(),
            name
        )),
        rows = condition_rows(&v)
    );
    if let Ok(c) = client(&app, &s) {
        let events: Api<KubeEvent> = match o.metadata.namespace.as_deref() {
            Some(n) => Api::namespaced(c, n),
            None => Api::namespaced(c, "default"),
        };
        let lp = ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind={}",
            kind.name()
        ));
        match events.list(&lp).await {
            Ok(l) if l.items.is_empty() => body.push_str("<p>No events.</p>"),
            Ok(l) => {
                body.push_str(r#"<ul class="events">"#);
                for e in l.items {
                    let _ = write!(
                        body,
                        "<li><strong>{}</strong> {}: {}</li>",
                        esc(e.type_.as_deref().unwrap_or("")),
                        esc(e.reason.as_deref().unwrap_or("")),
                        esc(e.message.as_deref().unwrap_or(""))
                    );
                }
                body.push_str("</ul>");
            }
            Err(e) => body.push_str(&notice("warn", &refusal(&e).summary)),
        }
    }
    let _ = write!(
        body,
        "<h2>YAML</h2><pre><code>{}</code></pre>",
        esc(&yaml_of(&v))
    );
    html(
        StatusCode::OK,
        page(&format!("{} {}", kind.name(), name), Some(&s), &body),
    )
}

// ---------------------------------------------------------------------------------------
// Writing

/// What the edit page shows: the generated form, the YAML editor, the problems.
fn editor(
    s: &Session,
    kind: Kind,
    action: &str,
    object: &Value,
    yaml: Option<&str>,
    refusal: Option<&Refusal>,
) -> String {
    let schema = kind.schema();
    let fields = forms::fields(&schema, object, kind.namespaced());
    let problems: &[Problem] = refusal.map(|r| r.problems.as_slice()).unwrap_or_default();
    let mut body = String::new();
    if let Some(r) = refusal {
        body.push_str(&notice("error", &r.summary));
    }
    let yaml = yaml.map(String::from).unwrap_or_else(|| yaml_of(object));
    let _ = write!(
        body,
        r#"<div class="editors"><section aria-labelledby="form-h"><h2 id="form-h">Form</h2>{}</section>
<section aria-labelledby="yaml-h"><h2 id="yaml-h">YAML</h2><form method="post" action="{a}"><input type="hidden" name="_csrf" value="{c}"><input type="hidden" name="_mode" value="yaml"><label for="yaml">Whole object</label><textarea id="yaml" name="_yaml" rows="24" spellcheck="false">{y}</textarea><button type="submit">Save YAML</button></form></section></div>"#,
        form(action, &s.csrf, &fields, problems, "Save"),
        a = esc(action),
        c = esc(&s.csrf),
        y = esc(&yaml)
    );
    body
}

/// The object a submission describes: the YAML editor's text, or the form applied onto
/// `base`. Identity fields are forced to what the URL names.
fn submitted(kind: Kind, base: &Value, form: &[(String, String)]) -> Result<Value, Refusal> {
    let mode = form
        .iter()
        .find(|(k, _)| k == "_mode")
        .map(|(_, v)| v.as_str());
    let mut obj = if mode == Some("yaml") {
        let text = form
            .iter()
            .find(|(k, _)| k == "_yaml")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        serde_saphyr::from_str::<Value>(text).map_err(|e| Refusal {
            code: 400,
            summary: format!("The YAML does not parse: {e}"),
            problems: vec![],
        })?
    } else {
        let fields: Vec<(String, String)> = form
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .cloned()
            .collect();
        let mut obj = base.clone();
        forms::apply(&kind.schema(), &mut obj, &fields).map_err(|errs| Refusal {
            code: 400,
            summary: "Some values do not fit their fields.".into(),
            problems: errs
                .into_iter()
                .map(|e| Problem {
                    field: Some(e.path),
                    message: e.message,
                })
                .collect(),
        })?;
        obj
    };
    if !obj.is_object() {
        return Err(Refusal {
            code: 400,
            summary: "The YAML must be one object.".into(),
            problems: vec![],
        });
    }
    let ar = kind.api_resource();
    obj["apiVersion"] = json!(ar.api_version);
    obj["kind"] = json!(ar.kind);
    Ok(obj)
}

/// Dry run first; if the API server accepts, the real write. Returns the saved object.
async fn save(
    c: kube::Client,
    kind: Kind,
    obj: &Value,
    existing: Option<&str>,
) -> Result<DynamicObject, kube::Error> {
    let mut o: DynamicObject =
        serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
    // Managed fields sent back would overwrite the server's record of who owns what.
    o.metadata.managed_fields = None;
    let ns = o.metadata.namespace.clone();
    let api = api(c, kind, ns.as_deref());
    let pp = |dry_run| PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match existing {
        None => {
            api.create(&pp(true), &o).await?;
            api.create(&pp(false), &o).await
        }
        Some(name) => {
            api.replace(name, &pp(true), &o).await?;
            api.replace(name, &pp(false), &o).await
        }
    }
}

async fn new_page(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = match signed_in(&app, &headers, &format!("/k/{plural}/new")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let ar = kind.api_resource();
    let mut obj = json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": ""}, "spec": {}});
    if let Some(ns) = q.namespace.filter(|_| kind.namespaced()) {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let body = editor(&s, kind, &format!("/k/{plural}/new"), &obj, None, None);
    html(
        StatusCode::OK,
        page(&format!("New {}", kind.name()), Some(&s), &body),
    )
}

async fn new_submit(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(plural): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match checked(&app, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let ar = kind.api_resource();
    let base = json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {}, "spec": {}});
    let action = format!("/k/{plural}/new");
    let yaml = form
        .iter()
        .find(|(k, _)| k == "_yaml")
        .map(|(_, v)| v.as_str());
    let obj = match submitted(kind, &base, &form) {
        Ok(o) => o,
        Err(r) => {
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                page(
                    &format!("New {}", kind.name()),
                    Some(&s),
                    &editor(&s, kind, &action, &base, yaml, Some(&r)),
                ),
            );
        }
    };
    let c = match client(&app, &s) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match save(c, kind, &obj, None).await {
        Ok(o) => {
            app.metrics.write("create", "ok");
            Redirect::to(&detail_url(kind, &o)).into_response()
        }
        Err(e) => {
            let r = refusal(&e);
            app.metrics.write("create", &r.code.to_string());
            let status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::BAD_GATEWAY);
            html(
                status,
                page(
                    &format!("New {}", kind.name()),
                    Some(&s),
                    &editor(&s, kind, &action, &obj, yaml, Some(&r)),
                ),
            )
        }
    }
}

async fn edit_page(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((plural, ns, name)): Path<(String, String, String)>,
) -> Response {
    let here = format!("/k/{plural}/{ns}/{name}/edit");
    let s = match signed_in(&app, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let o = match get_obj(&app, &s, kind, &ns, &name).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let v = obj_value(&o);
    if let Some(owner) = gitops::owner(&v) {
        return error_page(
            Some(&s),
            StatusCode::CONFLICT,
            &format!("Managed by GitOps: {owner}. Read-only here; change it in its repository."),
        );
    }
    let body = editor(&s, kind, &here, &v, None, None);
    html(
        StatusCode::OK,
        page(&format!("Edit {} {}", kind.name(), name), Some(&s), &body),
    )
}

async fn edit_submit(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((plural, ns, name)): Path<(String, String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let here = format!("/k/{plural}/{ns}/{name}/edit");
    let s = match checked(&app, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let current = match get_obj(&app, &s, kind, &ns, &name).await {
        Ok(o) => obj_value(&o),
        Err(r) => return r,
    };
    if let Some(owner) = gitops::owner(&current) {
        return error_page(
            Some(&s),
            StatusCode::CONFLICT,
            &format!("Managed by GitOps: {owner}. Read-only here; change it in its repository."),
        );
    }
    let title = format!("Edit {} {}", kind.name(), name);
    let yaml = form
        .iter()
        .find(|(k, _)| k == "_yaml")
        .map(|(_, v)| v.as_str());
    let mut obj = match submitted(kind, &current, &form) {
        Ok(o) => o,
        Err(r) => {
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                page(
                    &title,
                    Some(&s),
                    &editor(&s, kind, &here, &current, yaml, Some(&r)),
                ),
            );
        }
    };
    // The URL names the object: a submission cannot rename or move it. Without a
    // resourceVersion the replace would overwrite a concurrent change; keep the one read.
    obj["metadata"]["name"] = json!(name);
    if kind.namespaced() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if obj["metadata"]["resourceVersion"].is_null() {
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    }
    let c = match client(&app, &s) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match save(c, kind, &obj, Some(&name)).await {
        Ok(o) => {
            app.metrics.write("update", "ok");
            Redirect::to(&detail_url(kind, &o)).into_response()
        }
        Err(e) => {
            let r = refusal(&e);
            app.metrics.write("update", &r.code.to_string());
            let status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::BAD_GATEWAY);
            html(
                status,
                page(
                    &title,
                    Some(&s),
                    &editor(&s, kind, &here, &obj, yaml, Some(&r)),
                ),
            )
        }
    }
}

async fn delete_page(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((plural, ns, name)): Path<(String, String, String)>,
) -> Response {
    let here = format!("/k/{plural}/{ns}/{name}/delete");
    let s = match signed_in(&app, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let body = format!(
        r#"<p>Delete {k} <strong>{n}</strong>{inns}? This cannot be undone.</p><form method="post" action="{a}"><input type="hidden" name="_csrf" value="{c}"><button type="submit" class="danger">Delete</button> <a href="/k/{p}/{nsq}/{nq}">Cancel</a></form>"#,
        k = kind.name(),
        n = esc(&name),
        inns = if kind.namespaced() {
            format!(" in {}", esc(&ns))
        } else {
            String::new()
        },
        a = esc(&here),
        c = esc(&s.csrf),
        p = kind.plural(),
        nsq = enc(&ns),
        nq = enc(&name)
    );
    html(
        StatusCode::OK,
        page(&format!("Delete {} {}", kind.name(), name), Some(&s), &body),
    )
}

async fn delete_submit(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((plural, ns, name)): Path<(String, String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match checked(&app, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let kind = match kind_of(Some(&s), &plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let current = match get_obj(&app, &s, kind, &ns, &name).await {
        Ok(o) => obj_value(&o),
        Err(r) => return r,
    };
    if let Some(owner) = gitops::owner(&current) {
        return error_page(
            Some(&s),
            StatusCode::CONFLICT,
            &format!("Managed by GitOps: {owner}. Read-only here; change it in its repository."),
        );
    }
    let c = match client(&app, &s) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let api = api(c, kind, Some(&ns));
    let dp = |dry: bool| DeleteParams {
        dry_run: dry,
        ..DeleteParams::default()
    };
    let result = match api.delete(&name, &dp(true)).await {
        Ok(_) => api.delete(&name, &dp(false)).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            app.metrics.write("delete", "ok");
            Redirect::to(&format!("/k/{plural}")).into_response()
        }
        Err(e) => {
            app.metrics.write("delete", &refusal(&e).code.to_string());
            refused(&s, &e)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Explain

/// Every object of `kind` the person can list in `ns` (or across namespaces with `None`), as
/// JSON with its apiVersion and kind (list items may lack them).
async fn readable(
    c: &kube::Client,
    kind: Kind,
    ns: Option<&str>,
) -> Result<Vec<Value>, kube::Error> {
    let mut list = listing::list::<Value>(c, kind, ns).await?;
    let ar = kind.api_resource();
    for v in &mut list {
        v["apiVersion"] = json!(ar.api_version);
        v["kind"] = json!(ar.kind);
    }
    Ok(list)
}

/// What the explanation of a request to a Resource in `ns` needs, as the person reads it:
/// every Tenant, then the Resources and Policies of the claiming Tenants' namespaces
/// ([`crate::explain::namespaces_to_read`]), those lists at once.
async fn explain_inputs(c: &kube::Client, ns: &str) -> Result<Vec<Value>, kube::Error> {
    let mut objects = readable(c, Kind::Tenant, None).await?;
    let scope = crate::explain::namespaces_to_read(&objects, ns);
    let lists = futures::future::join_all(scope.iter().flat_map(|n| {
        [Kind::Resource, Kind::Policy].map(|kind| readable(c, kind, Some(n.as_str())))
    }))
    .await;
    for list in lists {
        objects.extend(list?);
    }
    Ok(objects)
}

async fn explain_page(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<crate::explain::Question>,
) -> Response {
    let s = match signed_in(&app, &headers, "/explain") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or_default());
    let mut body = format!(
        r#"<p>Which Policies decide a request, as <code>rustronaut policy explain</code> computes it from the Tenants, Resources and Policies you can read.</p>
<form method="get" class="explain"><div class="field"><label for="resource">Resource (namespace/name)</label><input id="resource" name="resource" value="{r}" required></div>
<div class="field"><label for="method">Method</label><input id="method" name="method" value="{m}" placeholder="GET"></div>
<div class="field"><label for="path">Path</label><input id="path" name="path" value="{p}" placeholder="/"></div>
<div class="field"><label for="source_ip">Client address</label><input id="source_ip" name="source_ip" value="{ip}"></div>
<div class="field"><label for="time">Time (RFC 3339)</label><input id="time" name="time" value="{t}" placeholder="now"></div>
<div class="field"><label for="identity">Identity (YAML)</label><textarea id="identity" name="identity" rows="4" placeholder="user: {{idp: okta, email: alice@acme.example, groups: [sre]}}">{i}</textarea></div>
<button type="submit">Explain</button></form>"#,
        r = v(&q.resource),
        m = v(&q.method),
        p = v(&q.path),
        ip = v(&q.source_ip),
        t = v(&q.time),
        i = v(&q.identity)
    );
    if let Some(resource) = q.resource.as_deref().filter(|r| !r.trim().is_empty()) {
        let c = match client(&app, &s) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let ns = resource.split_once('/').map(|(n, _)| n).unwrap_or_default();
        let (objects, refused) = match explain_inputs(&c, ns).await {
            Ok(objects) => (objects, None),
            Err(e) => (Vec::new(), Some(refusal(&e).summary)),
        };
        match (refused, crate::explain::explain(objects, &q)) {
            (Some(r), _) => body.push_str(&notice(
                "error",
                &format!("Cannot read what the explanation needs: {r}"),
            )),
            (None, Ok(text)) => {
                let _ = write!(
                    body,
                    r#"<h2>Explanation</h2><pre class="explanation"><code>{}</code></pre>"#,
                    esc(&text)
                );
            }
            (None, Err(e)) => body.push_str(&notice("error", &e)),
        }
    }
    html(StatusCode::OK, page("Policy explain", Some(&s), &body))
}

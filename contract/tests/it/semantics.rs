//! Table-driven policy semantics: every precedence and fail-closed rule of ARCHITECTURE.md
//! "Policy semantics", one case per behaviour. Each case builds its own policy set over the
//! shared world (tenants acme and globex), evaluates one request and checks the effect, the
//! reason, which policy/rule decided, the shadow (dry-run) outcome and the login hint.

use crate::common::*;
use rustronaut_contract::eval::{OwnedRequest, parse_time};
use rustronaut_contract::identity::Identity;
use rustronaut_contract::policy::PolicySet;
use rustronaut_contract::snapshot::{
    CertificatePrincipal, CompiledPolicy, PathMatchType, UserPrincipal,
};
use rustronaut_contract::{Effect, Reason, evaluate};

const WED_NOON: &str = "2025-01-08T12:00:00Z";

struct Case {
    name: &'static str,
    policies: Vec<CompiledPolicy>,
    req: OwnedRequest,
    at: &'static str,
    want: Effect,
    reason: Reason,
    by: Option<(&'static str, Option<&'static str>)>,
    shadow: Option<Option<Effect>>,
    login: Option<&'static [&'static str]>,
    session: Option<Option<u64>>,
}

fn case(name: &'static str, policies: Vec<P>, req: OwnedRequest) -> Case {
    Case {
        name,
        policies: policies.into_iter().map(P::build).collect(),
        req,
        at: WED_NOON,
        want: Effect::Deny,
        reason: Reason::NoPolicy,
        by: None,
        shadow: None,
        login: None,
        session: None,
    }
}

impl Case {
    fn allowed_by(mut self, policy: &'static str, rule: &'static str) -> Self {
        self.want = Effect::Allow;
        self.reason = Reason::AllowedBy;
        self.by = Some((policy, Some(rule)));
        self
    }
    fn denied_by(mut self, policy: &'static str, rule: &'static str) -> Self {
        self.want = Effect::Deny;
        self.reason = Reason::DeniedBy;
        self.by = Some((policy, Some(rule)));
        self
    }
    fn unresolved_deny(mut self, policy: &'static str) -> Self {
        self.want = Effect::Deny;
        self.reason = Reason::Unresolved;
        self.by = Some((policy, None));
        self
    }
    fn denied(mut self, reason: Reason) -> Self {
        self.want = Effect::Deny;
        self.reason = reason;
        self
    }
    fn at(mut self, t: &'static str) -> Self {
        self.at = t;
        self
    }
    fn shadow(mut self, s: Option<Effect>) -> Self {
        self.shadow = Some(s);
        self
    }
    fn login(mut self, providers: &'static [&'static str]) -> Self {
        self.login = Some(providers);
        self
    }
    fn session(mut self, s: Option<u64>) -> Self {
        self.session = Some(s);
        self
    }
}

/// GET `target` on acme-apps/grafana, routed to its section, host grafana.acme.example:443.
fn get(target: &str, id: Identity) -> OwnedRequest {
    http("GET", target, id)
}

fn http(method: &str, target: &str, id: Identity) -> OwnedRequest {
    let world = resources();
    let mut r = OwnedRequest::new("acme-apps", "grafana", id)
        .with_http(method, target)
        .unwrap()
        .with_routed_section(&world[0]);
    r.host = Some("grafana.acme.example".into());
    r.port = Some(443);
    r
}

fn tcp(port: u16, id: Identity) -> OwnedRequest {
    let mut r = OwnedRequest::new("acme-apps", "db", id);
    r.port = Some(port);
    r
}

fn sre(name: &str) -> P {
    allow(name)
        .target("grafana")
        .rule(rule("sre").from(group(Some("okta"), "sre")))
}

fn alice() -> Identity {
    user("okta", "alice", &["sre"])
}

fn cases() -> Vec<Case> {
    use PathMatchType::{Exact, PathPrefix};
    vec![
        // ----- defaults -----
        case("no policy: default deny", vec![], get("/", alice())).denied(Reason::NoPolicy),
        case(
            "unknown resource: deny",
            vec![sre("a")],
            OwnedRequest::new("acme-apps", "nope", alice()),
        )
        .denied(Reason::UnknownResource),
        case(
            "allow anonymous admits anyone",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
            ],
            get("/", nobody()),
        )
        .allowed_by("open", "all"),
        case("allow by group", vec![sre("sre")], get("/", alice())).allowed_by("sre", "sre"),
        case(
            "group mismatch: default deny",
            vec![sre("sre")],
            get("/", user("okta", "bob", &["dev"])),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "policies exist but none matches: NoAllowMatched, not NoPolicy",
            vec![
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(group(None, "contractors"))),
            ],
            get("/", alice()),
        )
        .denied(Reason::NoAllowMatched),
        // ----- precedence -----
        case(
            "deny beats allow",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("no-contractors")
                    .target("grafana")
                    .rule(rule("c").from(group(None, "contractors"))),
            ],
            get("/", user("okta", "carl", &["contractors"])),
        )
        .denied_by("no-contractors", "c"),
        case(
            "deny beats allow whatever the names sort to (deny sorts first)",
            vec![
                allow("z-allow")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("a-deny")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
            ],
            get("/", alice()),
        )
        .denied_by("a-deny", "all"),
        case(
            "deny beats allow whatever the names sort to (allow sorts first)",
            vec![
                allow("a-allow")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("z-deny")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
            ],
            get("/", alice()),
        )
        .denied_by("z-deny", "all"),
        case(
            "allows are a union: the second policy admits",
            vec![
                sre("a-sre"),
                allow("b-dev")
                    .target("grafana")
                    .rule(rule("dev").from(group(None, "dev"))),
            ],
            get("/", user("okta", "dora", &["dev"])),
        )
        .allowed_by("b-dev", "dev"),
        case(
            "several allows match: the first in namespace/name order is named",
            vec![
                allow("z")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                sre("m"),
            ],
            get("/", alice()),
        )
        .allowed_by("m", "sre"),
        case(
            "a non-matching deny does not block an allow",
            vec![
                sre("sre"),
                deny("d")
                    .target("grafana")
                    .rule(rule("c").from(group(None, "contractors"))),
            ],
            get("/", alice()),
        )
        .allowed_by("sre", "sre"),
        case(
            "rules of one policy are ORed",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("one").from(group(None, "x")))
                    .rule(rule("two").from(group(None, "sre"))),
            ],
            get("/", alice()),
        )
        .allowed_by("p", "two"),
        // ----- from / require / exclude -----
        case(
            "from is any: the certificate principal matches",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(
                        rule("r")
                            .from(group(None, "sre"))
                            .from(cert_p(CertificatePrincipal {
                                san_uris: vec!["spiffe://acme/deployer".into()],
                                ..Default::default()
                            })),
                    ),
            ],
            get(
                "/",
                cert_id(&["spiffe://acme/deployer"], &[], &"ab".repeat(32)),
            ),
        )
        .allowed_by("p", "r"),
        case(
            "from: no principal matches",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(group(None, "sre")).from(site_p(&["dc1"]))),
            ],
            get("/", user("okta", "x", &["dev"])),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "require satisfied",
            vec![
                sre("p").rule(
                    rule("mfa")
                        .from(group(None, "ops"))
                        .require(claim("amr", "mfa")),
                ),
            ],
            get(
                "/",
                with_claim(user("okta", "o", &["ops"]), "amr", &["pwd", "mfa"]),
            ),
        )
        .allowed_by("p", "mfa"),
        case(
            "require missing claim denies",
            vec![
                allow("p").target("grafana").rule(
                    rule("mfa")
                        .from(group(None, "ops"))
                        .require(claim("amr", "mfa")),
                ),
            ],
            get(
                "/",
                with_claim(user("okta", "o", &["ops"]), "amr", &["pwd"]),
            ),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "require is all: one of two fails",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .require(claim("amr", "mfa"))
                        .require(cidrs(&["10.0.0.0/8"], &[])),
                ),
            ],
            get(
                "/",
                with_ip(with_claim(alice(), "amr", &["mfa"]), "192.0.2.1"),
            ),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "require is all: both pass",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .require(claim("amr", "mfa"))
                        .require(cidrs(&["10.0.0.0/8"], &[])),
                ),
            ],
            get(
                "/",
                with_ip(with_claim(alice(), "amr", &["mfa"]), "10.9.8.7"),
            ),
        )
        .allowed_by("p", "r"),
        case(
            "exclude matches: rule fails",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(group(None, "sre"))
                        .exclude(email("alice@acme.example")),
                ),
            ],
            get("/", alice()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "exclude does not match: allowed",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(group(None, "sre"))
                        .exclude(email("carl@acme.example")),
                ),
            ],
            get("/", alice()),
        )
        .allowed_by("p", "r"),
        case(
            "exclude is any: the second exclude matches",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .exclude(email("x@acme.example"))
                        .exclude(group(None, "sre")),
                ),
            ],
            get("/", alice()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "emails compare case-insensitively",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .exclude(email("contractor@acme.example")),
                ),
            ],
            get("/", with_email(alice(), "Contractor@ACME.example")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "exclude in a deny narrows the deny",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).exclude(group(None, "sre"))),
            ],
            get("/", alice()),
        )
        .allowed_by("open", "all"),
        // ----- to -----
        case(
            "method mismatch",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&["GET"], &[]))),
            ],
            http("POST", "/", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "method match",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&["GET", "HEAD"], &[]))),
            ],
            get("/", nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "path prefix matches below it",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .to(op(&[], &[("/api", PathPrefix)])),
                ),
            ],
            get("/api/dashboards?x=1", nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "path prefix is segment-aware",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .to(op(&[], &[("/api", PathPrefix)])),
                ),
            ],
            get("/apix", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "dot segments cannot escape an allowed prefix",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .to(op(&[], &[("/api", PathPrefix)])),
                ),
            ],
            get("/api/../admin", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "encoded dot segments reach a deny on /admin",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("d").target("grafana").rule(
                    rule("admin")
                        .from(anyone())
                        .to(op(&[], &[("/admin", PathPrefix)])),
                ),
            ],
            get("/api/%2e%2e/admin", alice()),
        )
        .denied_by("d", "admin"),
        case(
            "repeated slashes reach a deny on /admin",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("d").target("grafana").rule(
                    rule("admin")
                        .from(anyone())
                        .to(op(&[], &[("/admin", Exact)])),
                ),
            ],
            get("//admin", alice()),
        )
        .denied_by("d", "admin"),
        case(
            "exact path does not match a longer one",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&[], &[("/api", Exact)]))),
            ],
            get("/api/x", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        // Same class as issue 14, item 6: frameworks serve HEAD with the GET handler.
        case(
            "a Deny on GET also denies HEAD",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&["GET"], &[]))),
            ],
            http("HEAD", "/", nobody()),
        )
        .denied_by("d", "r"),
        case(
            "a Deny on an Exact path also denies it with a trailing slash",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&[], &[("/admin", Exact)]))),
            ],
            get("/admin/", nobody()),
        )
        .denied_by("d", "r"),
        case(
            "a Deny on an Exact path with a slash also denies it without",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&[], &[("/admin/", Exact)]))),
            ],
            get("/admin", nobody()),
        )
        .denied_by("d", "r"),
        case(
            "an Allow of an Exact path does not allow it with a trailing slash",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&[], &[("/status", Exact)]))),
            ],
            get("/status/", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "an Allow of GET does not allow HEAD",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).to(op(&["GET"], &[]))),
            ],
            http("HEAD", "/", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "operation fields are ANDed",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .to(op(&["GET"], &[("/api", PathPrefix)])),
                ),
            ],
            get("/web", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "operations are ORed",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .to(op(&["POST"], &[]))
                        .to(op(&[], &[("/", PathPrefix)])),
                ),
            ],
            get("/anything", nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "host wildcard matches",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(
                        rule("r")
                            .from(anyone())
                            .to(rustronaut_contract::snapshot::Operation {
                                hosts: vec!["*.acme.example".into()],
                                ..Default::default()
                            }),
                    ),
            ],
            get("/", nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "host mismatch",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(
                        rule("r")
                            .from(anyone())
                            .to(rustronaut_contract::snapshot::Operation {
                                hosts: vec!["other.acme.example".into()],
                                ..Default::default()
                            }),
                    ),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "TCP port matches",
            vec![
                allow("p").target("db").rule(rule("r").from(anyone()).to(
                    rustronaut_contract::snapshot::Operation {
                        ports: vec![5432],
                        ..Default::default()
                    },
                )),
            ],
            tcp(5432, nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "TCP port mismatch",
            vec![
                allow("p").target("db").rule(rule("r").from(anyone()).to(
                    rustronaut_contract::snapshot::Operation {
                        ports: vec![5433],
                        ..Default::default()
                    },
                )),
            ],
            tcp(5432, nobody()),
        )
        .denied(Reason::NoAllowMatched),
        // ----- when -----
        case(
            "inside a Berlin office-hours window",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "07:00",
                        "20:00",
                        "Europe/Berlin",
                    )),
            ],
            get("/", nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "Saturday is outside Mon-Fri",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "07:00",
                        "20:00",
                        "Europe/Berlin",
                    )),
            ],
            get("/", nobody()),
        )
        .at("2025-01-11T12:00:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "19:30 UTC is 20:30 in Berlin: outside",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "07:00",
                        "20:00",
                        "Europe/Berlin",
                    )),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T19:30:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "the end of a window is exclusive",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Mon-Fri", "07:00", "20:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T20:00:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "the start of a window is inclusive",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Mon-Fri", "07:00", "20:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T07:00:00Z")
        .allowed_by("p", "r"),
        case(
            "New York: 15:00 UTC is 10:00 local, inside",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "09:00",
                        "17:00",
                        "America/New_York",
                    )),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T15:00:00Z")
        .allowed_by("p", "r"),
        case(
            "New York: 23:00 UTC is 18:00 local, outside",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "09:00",
                        "17:00",
                        "America/New_York",
                    )),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T23:00:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "Friday evening UTC is already Saturday in Tokyo",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(
                        rule("r")
                            .from(anyone())
                            .when("Mon-Fri", "00:00", "23:59", "Asia/Tokyo"),
                    ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-10T20:00:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "summer time: 05:30 UTC is 07:30 CEST, inside",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "07:00",
                        "20:00",
                        "Europe/Berlin",
                    )),
            ],
            get("/", nobody()),
        )
        .at("2025-07-09T05:30:00Z")
        .allowed_by("p", "r"),
        case(
            "winter time: 05:30 UTC is 06:30 CET, outside",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "07:00",
                        "20:00",
                        "Europe/Berlin",
                    )),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T05:30:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "a window across midnight covers the next morning",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Fri", "22:00", "06:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-11T03:00:00Z")
        .allowed_by("p", "r"),
        case(
            "a window across midnight belongs to the day it starts",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Fri", "22:00", "06:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-10T03:00:00Z")
        .denied(Reason::NoAllowMatched),
        case(
            "a window across midnight covers the evening",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Fri", "22:00", "06:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-10T23:00:00Z")
        .allowed_by("p", "r"),
        case(
            "day lists work",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Mon,Wed", "00:00", "23:59", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .allowed_by("p", "r"),
        case(
            "a deny outside its window does not apply",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("night").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Mon-Sun", "22:00", "06:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .allowed_by("open", "all"),
        case(
            "a deny inside its window applies",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("night").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .when("Mon-Sun", "22:00", "06:00", "UTC"),
                ),
            ],
            get("/", nobody()),
        )
        .at("2025-01-08T23:30:00Z")
        .denied_by("night", "r"),
        // ----- dry run -----
        case(
            "dry-run deny is reported, never enforced",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("trial")
                    .dry_run()
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", nobody()),
        )
        .allowed_by("open", "all")
        .shadow(Some(Effect::Deny)),
        case(
            "dry-run allow alone does not allow",
            vec![
                allow("trial")
                    .dry_run()
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoPolicy)
        .shadow(Some(Effect::Allow)),
        case(
            "dry-run allow next to a non-matching enforced allow",
            vec![
                sre("sre"),
                allow("trial")
                    .dry_run()
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .shadow(Some(Effect::Allow)),
        case(
            "no dry-run policy: no shadow outcome",
            vec![sre("sre")],
            get("/", alice()),
        )
        .allowed_by("sre", "sre")
        .shadow(None),
        case(
            "unresolved dry-run deny only shows in the shadow",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("trial")
                    .dry_run()
                    .unresolved("broken")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", nobody()),
        )
        .allowed_by("open", "all")
        .shadow(Some(Effect::Deny)),
        // ----- unresolved: fail closed -----
        case(
            "unresolved deny denies everything it targets",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("broken")
                    .unresolved("identity provider okta-typo not found")
                    .target("grafana")
                    .rule(rule("r").from(group(Some("okta"), "x"))),
            ],
            get("/", alice()),
        )
        .unresolved_deny("broken"),
        case(
            "unresolved allow never allows",
            vec![
                allow("broken")
                    .target("grafana")
                    .rule(rule("r").from(group(Some("no-such-idp"), "sre"))),
            ],
            get("/", alice()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "unresolved allow does not block other allows",
            vec![
                allow("broken")
                    .unresolved("x")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                sre("sre"),
            ],
            get("/", alice()),
        )
        .allowed_by("sre", "sre"),
        case(
            "deny naming a provider of the wrong type is unresolved",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("typed")
                    .target("grafana")
                    .rule(rule("r").from(group(Some("partners"), "x"))),
            ],
            get("/", nobody()),
        )
        .unresolved_deny("typed"),
        case(
            "deny with a bad CIDR is unresolved",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("cidr")
                    .target("grafana")
                    .rule(rule("r").from(cidrs(&["10.0.0.0/33"], &[]))),
            ],
            get("/", nobody()),
        )
        .unresolved_deny("cidr"),
        case(
            "allow with an unknown time zone never allows",
            vec![
                allow("tz")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).when(
                        "Mon-Fri",
                        "07:00",
                        "20:00",
                        "Mars/Olympus",
                    )),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "deny with an empty from is unresolved",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("empty").target("grafana").rule(rule("r")),
            ],
            get("/", nobody()),
        )
        .unresolved_deny("empty"),
        case(
            "allow with HTTP fields on a TCP target never allows",
            vec![
                allow("l4")
                    .target("db")
                    .rule(rule("r").from(anyone()).to(op(&["GET"], &[]))),
            ],
            tcp(5432, nobody()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "unresolved deny on one section leaves the others alone",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("admin-broken")
                    .unresolved("x")
                    .section("grafana", "admin")
                    .rule(rule("r").from(anyone())),
            ],
            get("/api/x", nobody()),
        )
        .allowed_by("open", "all"),
        case(
            "unresolved deny on a section denies that section",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("admin-broken")
                    .unresolved("x")
                    .section("grafana", "admin")
                    .rule(rule("r").from(anyone())),
            ],
            get("/admin/users", nobody()),
        )
        .unresolved_deny("admin-broken"),
        case(
            "a deny in an unknown tenant is unresolved and cannot apply elsewhere",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("ghost")
                    .tenant("acme-apps", "acme-typo")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", nobody()),
        )
        .allowed_by("open", "all"),
        // ----- sections -----
        case(
            "section-targeted allow applies to its section",
            vec![
                allow("api")
                    .section("grafana", "api")
                    .rule(rule("r").from(anyone())),
            ],
            get("/api/x", nobody()),
        )
        .allowed_by("api", "r"),
        case(
            "section-targeted allow does not apply to another section",
            vec![
                allow("api")
                    .section("grafana", "api")
                    .rule(rule("r").from(anyone())),
            ],
            get("/admin", nobody()),
        )
        .denied(Reason::NoPolicy),
        case(
            "section-targeted allow does not apply without a section",
            vec![
                allow("api")
                    .section("grafana", "api")
                    .rule(rule("r").from(anyone())),
            ],
            OwnedRequest::new("acme-apps", "grafana", nobody()),
        )
        .denied(Reason::NoPolicy),
        case(
            "section deny beats whole-resource allow",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("no-admin")
                    .section("grafana", "admin")
                    .rule(rule("r").from(anyone())),
            ],
            get("/admin", nobody()),
        )
        .denied_by("no-admin", "r"),
        case(
            "section deny does not touch other sections",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("no-admin")
                    .section("grafana", "admin")
                    .rule(rule("r").from(anyone())),
            ],
            get("/api", nobody()),
        )
        .allowed_by("open", "all"),
        // ----- tenancy -----
        case(
            "another tenant's allow never applies",
            vec![
                allow("gx-open")
                    .tenant("globex", "globex")
                    .target("acme-apps/grafana")
                    .rule(rule("all").from(anyone())),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoPolicy),
        case(
            "another tenant's deny never applies",
            vec![
                sre("sre"),
                deny("gx-deny")
                    .tenant("globex", "globex")
                    .target("acme-apps/grafana")
                    .rule(rule("all").from(anyone())),
            ],
            get("/", alice()),
        )
        .allowed_by("sre", "sre"),
        case(
            "a site of the policy's tenant matches",
            vec![
                allow("sites")
                    .target("grafana")
                    .rule(rule("r").from(site_p(&["dc1"]))),
            ],
            get("/", site_id("dc1", "acme")),
        )
        .allowed_by("sites", "r"),
        case(
            "a site of another tenant with the same name does not",
            vec![
                allow("sites")
                    .target("grafana")
                    .rule(rule("r").from(site_p(&["dc1"]))),
            ],
            get("/", site_id("dc1", "globex")),
        )
        .denied(Reason::NoAllowMatched),
        // ----- ServiceAccounts -----
        case(
            "the named ServiceAccount is allowed",
            vec![
                allow("sa")
                    .target("grafana")
                    .rule(rule("r").from(sa_p("shop", &["checkout"]))),
            ],
            get("/", sa_id("shop", "checkout")),
        )
        .allowed_by("sa", "r"),
        case(
            "another ServiceAccount of the same namespace is not",
            vec![
                allow("sa")
                    .target("grafana")
                    .rule(rule("r").from(sa_p("shop", &["checkout"]))),
            ],
            get("/", sa_id("shop", "cart")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "no names: every ServiceAccount of the namespace, and of no other",
            vec![
                allow("sa")
                    .target("grafana")
                    .rule(rule("r").from(sa_p("shop", &[]))),
            ],
            get("/", sa_id("shop", "cart")),
        )
        .allowed_by("sa", "r"),
        case(
            "the same account name in another namespace is not",
            vec![
                allow("sa")
                    .target("grafana")
                    .rule(rule("r").from(sa_p("shop", &[]))),
            ],
            get("/", sa_id("shop-dev", "checkout")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "a user whose sub reads as a ServiceAccount is no ServiceAccount",
            vec![
                allow("sa")
                    .target("grafana")
                    .rule(rule("r").from(sa_p("shop", &["checkout"]))),
            ],
            get(
                "/",
                user("okta", "system:serviceaccount:shop:checkout", &[]),
            ),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        case(
            "a ServiceAccount is authenticated",
            vec![
                allow("authn")
                    .target("grafana")
                    .rule(rule("r").from(authenticated())),
            ],
            get("/", sa_id("shop", "cart")),
        )
        .allowed_by("authn", "r"),
        case(
            "a Deny naming a ServiceAccount beats an Allow for everyone",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("all").from(anyone())),
                deny("no-cart")
                    .target("grafana")
                    .rule(rule("r").from(sa_p("shop", &["cart"]))),
            ],
            get("/", sa_id("shop", "cart")),
        )
        .denied_by("no-cart", "r"),
        case(
            "another tenant's provider name is unknown here",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(group(Some("gx"), "sre"))),
            ],
            get("/", user("gx", "alice", &["sre"])),
        )
        .denied(Reason::NoAllowMatched),
        // ----- anonymous vs authenticated -----
        case(
            "authenticated refuses anonymous callers and offers login",
            vec![
                allow("authn")
                    .target("grafana")
                    .rule(rule("r").from(authenticated())),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&["okta", "okta2"]),
        case(
            "authenticated admits an API key client",
            vec![
                allow("authn")
                    .target("grafana")
                    .rule(rule("r").from(authenticated())),
            ],
            get("/", apikey_id("ci")),
        )
        .allowed_by("authn", "r"),
        case(
            "authenticated admits a site",
            vec![
                allow("authn")
                    .target("grafana")
                    .rule(rule("r").from(authenticated())),
            ],
            get("/", site_id("dc1", "acme")),
        )
        .allowed_by("authn", "r"),
        case(
            "a source address alone is not authenticated",
            vec![
                allow("authn")
                    .target("grafana")
                    .rule(rule("r").from(authenticated())),
            ],
            get("/", with_ip(nobody(), "10.0.0.1")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "anonymous admits authenticated callers too",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", alice()),
        )
        .allowed_by("open", "r"),
        case(
            "deny anonymous denies everyone",
            vec![
                sre("sre"),
                deny("closed")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
            ],
            get("/", alice()),
        )
        .denied_by("closed", "r"),
        case(
            "exclude authenticated: logged-in users are refused",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).exclude(authenticated())),
            ],
            get("/", alice()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "exclude authenticated: anonymous callers pass",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).exclude(authenticated())),
            ],
            get("/", nobody()),
        )
        .allowed_by("p", "r"),
        // ----- principal details -----
        case(
            "email domain matches exactly",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        email_domains: vec!["acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", alice()),
        )
        .allowed_by("p", "r"),
        case(
            "email domain is not a suffix match",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        email_domains: vec!["acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", with_email(alice(), "alice@evil-acme.example")),
        )
        .denied(Reason::NoAllowMatched),
        // Issue 14, item 15: an unverified email may not grant, and may not dodge a Deny
        // or an exclude either.
        case(
            "an unverified email does not match emailDomains of an Allow",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        email_domains: vec!["acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", with_unverified_email(alice(), "alice@acme.example")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "an unverified email still matches a Deny",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        emails: vec!["mallory@acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", with_unverified_email(alice(), "Mallory@acme.example")),
        )
        .denied_by("d", "r"),
        case(
            "an unverified email still matches an exclude of an Allow",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).exclude(user_p(UserPrincipal {
                        email_domains: vec!["contractors.example".into()],
                        ..Default::default()
                    }))),
            ],
            get(
                "/",
                with_unverified_email(alice(), "bob@contractors.example"),
            ),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "an unverified email does not match an exclude of a Deny",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).exclude(user_p(UserPrincipal {
                        email_domains: vec!["acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", with_unverified_email(alice(), "eve@acme.example")),
        )
        .denied_by("d", "r"),
        // Issue 14, item 7: a browser session carries only the claims the tenant's policies
        // named at login. What it does not carry is unknown and fails closed.
        case(
            "a Deny on a claim a session does not carry denies it",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(claim("contractor", "true"))),
            ],
            get("/", as_session(alice(), &[])),
        )
        .denied_by("d", "r"),
        case(
            "a Deny on a claim a session carries decides by its value",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(claim("contractor", "true"))),
            ],
            get(
                "/",
                as_session(
                    with_claim(alice(), "contractor", &["false"]),
                    &["contractor"],
                ),
            ),
        )
        .allowed_by("open", "r"),
        case(
            "a claim a session knows to be absent does not match a Deny",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(claim("contractor", "true"))),
            ],
            get("/", as_session(alice(), &["contractor"])),
        )
        .allowed_by("open", "r"),
        case(
            "a Deny on a claim a session carries matches it",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(claim("contractor", "true"))),
            ],
            get(
                "/",
                as_session(
                    with_claim(alice(), "contractor", &["true"]),
                    &["contractor"],
                ),
            ),
        )
        .denied_by("d", "r"),
        case(
            "an Allow requiring a claim a session does not carry does not allow",
            vec![
                allow("p").target("grafana").rule(
                    rule("mfa")
                        .from(group(None, "ops"))
                        .require(claim("amr", "mfa")),
                ),
            ],
            get(
                "/",
                as_session(
                    with_claim(user("okta", "o", &["ops"]), "amr", &["mfa"]),
                    &[],
                ),
            ),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "an Allow exclude on a claim a session does not carry excludes it",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(anyone())
                        .exclude(claim("contractor", "true")),
                ),
            ],
            get("/", as_session(alice(), &[])),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "a Deny exclude on a claim a session does not carry spares no one",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(anyone()).exclude(claim("amr", "mfa"))),
            ],
            get("/", as_session(with_claim(alice(), "amr", &["mfa"]), &[])),
        )
        .denied_by("d", "r"),
        case(
            "a Deny on a scope denies a session (sessions carry no scopes)",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        scopes: vec!["guest".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", as_session(alice(), &[])),
        )
        .denied_by("d", "r"),
        case(
            "a Deny on emails denies a session that carries neither an email nor the claim",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        emails: vec!["mallory@acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", as_session(without_email(alice()), &[])),
        )
        .denied_by("d", "r"),
        case(
            "a Deny on emails spares a session whose email is known to be another",
            vec![
                allow("open")
                    .target("grafana")
                    .rule(rule("r").from(anyone())),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        emails: vec!["mallory@acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get(
                "/",
                as_session(with_email(alice(), "alice@acme.example"), &[]),
            ),
        )
        .allowed_by("open", "r"),
        case(
            "scopes are all required: one missing",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        scopes: vec!["read".into(), "write".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", with_scopes(alice(), &["read"])),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "scopes are all required: all present",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        scopes: vec!["read".into(), "write".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", with_scopes(alice(), &["write", "read", "admin"])),
        )
        .allowed_by("p", "r"),
        case(
            "user fields are ANDed: subject and group",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(user_p(UserPrincipal {
                        subjects: vec!["alice".into()],
                        groups: vec!["dev".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", alice()),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "user idp must match",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(group(Some("okta"), "sre"))),
            ],
            get("/", user("ci", "alice", &["sre"])),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "SPKI pin compares case-insensitively",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(cert_p(CertificatePrincipal {
                        spki_sha256: vec!["AB".repeat(32)],
                        ..Default::default()
                    }))),
            ],
            get("/", cert_id(&[], &[], &"ab".repeat(32))),
        )
        .allowed_by("p", "r"),
        case(
            "DNS SANs compare case-insensitively",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(cert_p(CertificatePrincipal {
                        idp: Some("corp-ca".into()),
                        san_dns_names: vec!["Deployer.acme.example".into()],
                        ..Default::default()
                    }))),
            ],
            get("/", cert_id(&[], &["deployer.acme.example"], "00")),
        )
        .allowed_by("p", "r"),
        case(
            "API key client not listed",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(apikey_p(Some("partners"), &["ci"]))),
            ],
            get("/", apikey_id("bot")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "API key with no client list admits any client",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(apikey_p(None, &[]))),
            ],
            get("/", apikey_id("bot")),
        )
        .allowed_by("p", "r"),
        case(
            "source CIDR matches",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(cidrs(&["10.0.0.0/8"], &["10.1.0.0/16"]))),
            ],
            get("/", with_ip(nobody(), "10.2.3.4")),
        )
        .allowed_by("p", "r"),
        case(
            "source CIDR except carves out",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(cidrs(&["10.0.0.0/8"], &["10.1.0.0/16"]))),
            ],
            get("/", with_ip(nobody(), "10.1.2.3")),
        )
        .denied(Reason::NoAllowMatched),
        case(
            "IPv4-mapped IPv6 matches an IPv4 range",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(cidrs(&["10.0.0.0/8"], &[]))),
            ],
            get("/", with_ip(nobody(), "::ffff:10.2.3.4")),
        )
        .allowed_by("p", "r"),
        case(
            "no source address never matches a CIDR",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(cidrs(&["0.0.0.0/0"], &[]))),
            ],
            get("/", Identity::default()),
        )
        .denied(Reason::NoAllowMatched),
        // ----- needs_login -----
        case(
            "login offered only for the named provider",
            vec![sre("sre")],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&["okta"]),
        case(
            "no login when a non-user require cannot be met",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(group(Some("okta"), "sre"))
                        .require(cidrs(&["10.0.0.0/8"], &[])),
                ),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        case(
            "no login when an exclude would refuse any logged-in user",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(group(None, "sre")).exclude(authenticated())),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        case(
            "no login when the operation does not match",
            vec![
                allow("p").target("grafana").rule(
                    rule("r")
                        .from(group(None, "sre"))
                        .to(op(&[], &[("/api", PathPrefix)])),
                ),
            ],
            get("/web", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        case(
            "no login when a deny decided",
            vec![
                sre("sre"),
                deny("d")
                    .target("grafana")
                    .rule(rule("r").from(cidrs(&["192.0.2.0/24"], &[]))),
            ],
            get("/", nobody()),
        )
        .denied_by("d", "r")
        .login(&[]),
        case(
            "no login offer to a user who is already logged in",
            vec![sre("sre")],
            get("/", user("okta", "bob", &["dev"])),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        case(
            "JWT providers are not offered for login",
            vec![
                allow("p")
                    .target("grafana")
                    .rule(rule("r").from(group(Some("ci"), "bots"))),
            ],
            get("/", nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        case(
            "no login offer on TCP: the flow is closed",
            vec![
                allow("authn")
                    .target("db")
                    .rule(rule("r").from(authenticated())),
            ],
            tcp(5432, nobody()),
        )
        .denied(Reason::NoAllowMatched)
        .login(&[]),
        // ----- session -----
        case(
            "the allowing policy's session limit is reported",
            vec![sre("sre").session(14_400)],
            get("/", alice()),
        )
        .allowed_by("sre", "sre")
        .session(Some(14_400)),
        case(
            "no session limit without an override",
            vec![sre("sre")],
            get("/", alice()),
        )
        .allowed_by("sre", "sre")
        .session(None),
    ]
}

#[test]
fn policy_semantics_table() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let world_tenants = tenants();
    let world_resources = resources();
    let mut failures = Vec::new();
    for c in &cases {
        let set = PolicySet::compile(&world_tenants, &world_resources, &c.policies);
        let now = parse_time(c.at).unwrap();
        let d = evaluate(&set, &c.req.as_request(), now, "test");
        let mut problems = Vec::new();
        if d.effect != c.want {
            problems.push(format!("effect {:?}, want {:?}", d.effect, c.want));
        }
        if d.reason != c.reason {
            problems.push(format!("reason {:?}, want {:?}", d.reason, c.reason));
        }
        if let Some((policy, rule)) = c.by {
            let got_policy = d.policy.as_ref().map(|p| p.name.to_string());
            if got_policy.as_deref() != Some(policy) || d.rule.as_deref() != rule {
                problems.push(format!(
                    "decided by {got_policy:?}/{:?}, want {policy}/{rule:?}",
                    d.rule
                ));
            }
        }
        if let Some(shadow) = c.shadow
            && d.shadow.as_ref().map(|s| s.effect) != shadow
        {
            problems.push(format!("shadow {:?}, want {shadow:?}", d.shadow));
        }
        if let Some(login) = c.login {
            let got: Vec<&str> = d.login_providers.iter().map(|s| &**s).collect();
            if got != login || d.needs_login == login.is_empty() {
                problems.push(format!("login {got:?} ({}), want {login:?}", d.needs_login));
            }
        }
        if let Some(session) = c.session
            && d.session_max_age_seconds != session
        {
            problems.push(format!(
                "session {:?}, want {session:?}",
                d.session_max_age_seconds
            ));
        }
        if d.decision_id != "test" {
            problems.push("decision id not carried".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn unresolved_policies_are_reported_as_problems() {
    let policies = vec![
        allow("broken")
            .target("grafana")
            .rule(rule("r").from(group(Some("no-such-idp"), "x")))
            .build(),
        deny("cross")
            .tenant("globex", "globex")
            .target("acme-apps/grafana")
            .rule(rule("r").from(anyone()))
            .build(),
        allow("ghost")
            .target("nope")
            .rule(rule("r").from(anyone()))
            .build(),
        allow("sect")
            .section("grafana", "nope")
            .rule(rule("r").from(anyone()))
            .build(),
    ];
    let set = PolicySet::compile(&tenants(), &resources(), &policies);
    let text: Vec<String> = set.problems().iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    assert!(all.contains("acme-apps/broken: fails closed: rule \"r\": identity provider \"no-such-idp\" not found in tenant \"acme\""), "{all}");
    assert!(
        all.contains("globex/cross: target Resource acme-apps/grafana belongs to another tenant"),
        "{all}"
    );
    assert!(
        all.contains("acme-apps/ghost: target Resource acme-apps/nope not found"),
        "{all}"
    );
    assert!(
        all.contains("acme-apps/sect: Resource acme-apps/grafana has no rule \"nope\""),
        "{all}"
    );
    assert_eq!(set.len(), 4);
}

#[test]
fn reachable_reports_default_deny() {
    let set = PolicySet::compile(&tenants(), &resources(), &[sre("sre").build()]);
    assert!(set.reachable("acme-apps", "grafana"));
    assert!(!set.reachable("acme-apps", "db"));
    let set = PolicySet::compile(&tenants(), &resources(), &[sre("sre").dry_run().build()]);
    assert!(
        !set.reachable("acme-apps", "grafana"),
        "dry-run allows do not make a Resource reachable"
    );
}

/// Issue 14, item 7: what a browser session must carry is every claim the tenant's
/// policies name (any action, mode and clause), plus the raw `email` claim when a policy
/// names emails (a restricting clause reads it); another tenant's policies add nothing.
#[test]
fn session_claims_are_the_claims_a_tenants_policies_name() {
    let policies = vec![
        deny("d")
            .target("grafana")
            .rule(rule("r").from(claim("contractor", "true")))
            .build(),
        allow("a")
            .target("grafana")
            .rule(
                rule("r")
                    .from(group(None, "ops"))
                    .require(claim("amr", "mfa"))
                    .exclude(email("mallory@acme.example")),
            )
            .dry_run()
            .build(),
        allow("g")
            .tenant("globex-apps", "globex")
            .rule(rule("r").from(claim("department", "sales")))
            .build(),
    ];
    let set = PolicySet::compile(&tenants(), &resources(), &policies);
    assert_eq!(set.session_claims("acme"), ["amr", "contractor", "email"]);
    assert_eq!(set.session_claims("globex"), ["department"]);
    assert!(set.session_claims("nobody").is_empty());
    let none = PolicySet::compile(&tenants(), &resources(), &[]);
    assert!(none.session_claims("acme").is_empty());
}

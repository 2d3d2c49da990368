//! Validation that CEL cannot do on one object, or not cheaply: hostname ownership against
//! a tenant's domains, overlapping domain claims, durations, identity-provider references,
//! HTTP-only fields on L4 targets. Pure functions: the operator turns their errors into
//! conditions (the reason is [`Problem::reason`]), the console shows them before saving, and
//! the CLI reports them in CI.

use crate::conditions::reasons;
use crate::policy::{PolicySpec, Principal};
use crate::resource::{Protocol, ResourceSpec};
use crate::tenant::TenantSpec;
use std::time::Duration;

/// One problem: where, why (a condition reason), and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Problem {
    /// JSON path of the offending field, e.g. `spec.hostnames[1]`.
    pub field: String,
    /// Condition reason (from [`crate::conditions::reasons`]).
    pub reason: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    fn new(field: impl Into<String>, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Errors parsing a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty input.
    #[error("empty duration")]
    Empty,
    /// Not `<number><unit>` pairs.
    #[error("invalid duration {0:?}: use numbers with units ms, s, m, h, e.g. 90s or 1h30m")]
    Invalid(String),
    /// Too large to represent.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `1h30m`, `90s`, `250ms` (the CRDs' duration pattern).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(s.to_string());
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(invalid());
        };
        rest = &rest[len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
    }
    let ms = u64::try_from(total).map_err(|_| DurationError::Overflow(s.to_string()))?;
    Ok(Duration::from_millis(ms))
}

/// Whether `host` (exact, or a `*.` wildcard) lies within `domain` (exact, or a `*.`
/// wildcard covering one or more labels). `*.acme.example` covers `a.acme.example`,
/// `a.b.acme.example` and `*.acme.example`, but not `acme.example` itself.
pub fn hostname_within(host: &str, domain: &str) -> bool {
    // Case-insensitive without lowercased copies: claims are resolved over every pair of
    // domains, and two Strings per comparison were most of that cost (issue 17).
    match domain.strip_prefix("*.") {
        None => host.eq_ignore_ascii_case(domain),
        Some(suffix) => match host.strip_prefix("*.") {
            Some(host_suffix) => {
                host_suffix.eq_ignore_ascii_case(suffix) || is_subdomain(host_suffix, suffix)
            }
            None => is_subdomain(host, suffix),
        },
    }
}

/// `host` ends with `.suffix` (ASCII case-insensitive) and has at least one label before it.
fn is_subdomain(host: &str, suffix: &str) -> bool {
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    host.len() > suffix.len() + 1
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && host[host.len() - suffix.len() - 1] == b'.'
}

/// Whether two domain claims overlap (some hostname lies within both), so both cannot be
/// granted exclusively.
pub fn domains_overlap(a: &str, b: &str) -> bool {
    hostname_within(a, b) || hostname_within(b, a) || a.eq_ignore_ascii_case(b)
}

/// Checks a Resource's hostnames against its tenant's domains.
pub fn resource_hostnames(spec: &ResourceSpec, tenant: &TenantSpec) -> Vec<Problem> {
    spec.hostnames
        .iter()
        .enumerate()
        .filter(|(_, h)| !tenant.domains.iter().any(|d| hostname_within(h, d)))
        .map(|(i, h)| {
            Problem::new(
                format!("spec.hostnames[{i}]"),
                reasons::HOSTNAME_OUTSIDE_TENANT,
                format!(
                    "{h} is outside the tenant's domains ({})",
                    if tenant.domains.is_empty() {
                        "none claimed".to_string()
                    } else {
                        tenant.domains.join(", ")
                    }
                ),
            )
        })
        .collect()
}

/// Checks a Tenant's own fields beyond CEL: durations parse, provider names unique.
pub fn tenant(spec: &TenantSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(s) = &spec.session
        && let Err(e) = parse_duration(&s.duration)
    {
        out.push(Problem::new(
            "spec.session.duration",
            reasons::INVALID,
            e.to_string(),
        ));
    }
    for (i, d) in spec.domains.iter().enumerate() {
        for (j, other) in spec.domains.iter().enumerate().skip(i + 1) {
            if domains_overlap(d, other) {
                out.push(Problem::new(
                    format!("spec.domains[{j}]"),
                    reasons::INVALID,
                    format!("{other} overlaps {d}; list the wider one only"),
                ));
            }
        }
    }
    out
}

/// Identity-provider names a principal refers to, with the provider type it needs.
fn principal_idps(p: &Principal) -> Vec<(&str, &'static str)> {
    let mut v = Vec::new();
    if let Some(idp) = p.user.as_ref().and_then(|u| u.idp.as_deref()) {
        v.push((idp, "oidc or jwt"));
    }
    if let Some(idp) = p.client_certificate.as_ref().and_then(|c| c.idp.as_deref()) {
        v.push((idp, "clientCertificate"));
    }
    if let Some(idp) = p.api_key.as_ref().and_then(|c| c.idp.as_deref()) {
        v.push((idp, "apiKey"));
    }
    v
}

/// Checks a Policy against its tenant: every named identity provider exists and has the type
/// the principal needs; durations parse. (Targets are checked by the operator, which sees the
/// Resources.)
pub fn policy(spec: &PolicySpec, tenant: &TenantSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    for (ri, rule) in spec.rules.iter().enumerate() {
        let clauses = [
            ("from", &rule.from),
            ("require", &rule.require),
            ("exclude", &rule.exclude),
        ];
        for (clause, principals) in clauses {
            for (pi, p) in principals.iter().enumerate() {
                for (idp, need) in principal_idps(p) {
                    let field = format!("spec.rules[{ri}].{clause}[{pi}]");
                    match tenant.identity_providers.iter().find(|x| x.name == idp) {
                        None => out.push(Problem::new(
                            field,
                            reasons::IDENTITY_PROVIDER_NOT_FOUND,
                            format!("identity provider {idp:?} is not defined in the tenant"),
                        )),
                        Some(x) => {
                            let ok = match need {
                                "clientCertificate" => x.client_certificate.is_some(),
                                "apiKey" => x.api_key.is_some(),
                                _ => x.oidc.is_some() || x.jwt.is_some(),
                            };
                            if !ok {
                                out.push(Problem::new(
                                    field,
                                    reasons::INVALID,
                                    format!("identity provider {idp:?} is not of type {need}"),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if let Some(s) = rule.when.as_ref().and_then(|w| w.schedule.as_ref())
            && !valid_days(&s.days)
        {
            out.push(Problem::new(
                format!("spec.rules[{ri}].when.schedule.days"),
                reasons::INVALID,
                format!("{:?} is not a day range or list", s.days),
            ));
        }
    }
    if let Some(s) = &spec.session
        && let Err(e) = parse_duration(&s.duration)
    {
        out.push(Problem::new(
            "spec.session.duration",
            reasons::INVALID,
            e.to_string(),
        ));
    }
    out
}

/// Checks that a Policy's HTTP-only fields (methods, paths) are not used on a TCP/UDP target.
pub fn policy_for_target(spec: &PolicySpec, target_protocol: Protocol) -> Vec<Problem> {
    if matches!(target_protocol, Protocol::Http) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (ri, rule) in spec.rules.iter().enumerate() {
        for (oi, op) in rule.to.iter().enumerate() {
            if !op.methods.is_empty() || !op.paths.is_empty() {
                out.push(Problem::new(
                    format!("spec.rules[{ri}].to[{oi}]"),
                    reasons::HTTP_FIELDS_ON_L4_TARGET,
                    "methods and paths only apply to HTTP resources; a TCP/UDP target would never match",
                ));
            }
        }
    }
    out
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Days of a schedule (`Mon-Fri`, `Sat,Sun`, `Wed`), Monday = 0. None when malformed.
pub fn parse_days(s: &str) -> Option<Vec<usize>> {
    let idx = |d: &str| DAYS.iter().position(|x| *x == d);
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (idx(a)?, idx(b)?);
        // A range may wrap the week: Fri-Mon is Fri, Sat, Sun, Mon.
        let mut v = Vec::new();
        let mut d = a;
        loop {
            v.push(d);
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
        Some(v)
    } else {
        s.split(',').map(idx).collect()
    }
}

fn valid_days(s: &str) -> bool {
    parse_days(s).is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in ["h", "10", "10d", "1.5h", "-1s", "1h 2m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_duration("99999999999999999999999h"),
            Err(DurationError::Invalid(_) | DurationError::Overflow(_))
        ));
    }

    #[test]
    fn hostnames_within_domains() {
        let cases = [
            ("app.acme.example", "app.acme.example", true),
            ("App.Acme.Example", "app.acme.example", true),
            ("APP.acme.Example", "*.ACME.example", true),
            ("*.X.Acme.Example", "*.acme.EXAMPLE", true),
            ("app.acme.example", "*.acme.example", true),
            ("a.b.acme.example", "*.acme.example", true),
            ("*.acme.example", "*.acme.example", true),
            ("*.x.acme.example", "*.acme.example", true),
            ("acme.example", "*.acme.example", false),
            ("evilacme.example", "*.acme.example", false),
            ("app.acme.example.evil", "*.acme.example", false),
            ("app.other.example", "*.acme.example", false),
            ("*.acme.example", "app.acme.example", false),
            ("other.acme.example", "app.acme.example", false),
        ];
        for (host, domain, want) in cases {
            assert_eq!(
                hostname_within(host, domain),
                want,
                "{host} within {domain}"
            );
        }
    }

    #[test]
    fn hostname_within_matches_a_lowercasing_reference_on_every_combination() {
        // The definition before it stopped allocating: lowercase both, then compare.
        fn reference(host: &str, domain: &str) -> bool {
            let (host, domain) = (host.to_ascii_lowercase(), domain.to_ascii_lowercase());
            let sub = |h: &str, s: &str| {
                h.len() > s.len() + 1
                    && h.ends_with(s)
                    && h.as_bytes()[h.len() - s.len() - 1] == b'.'
            };
            match domain.strip_prefix("*.") {
                None => host == domain,
                Some(suffix) => match host.strip_prefix("*.") {
                    Some(h) => h == suffix || sub(h, suffix),
                    None => sub(&host, suffix),
                },
            }
        }
        let parts = ["", "*.", "a.", "A.", "x.b.", "*.B."];
        let bases = [
            "acme.example",
            "ACME.Example",
            "cme.example",
            "example",
            "acme.example.",
            "é.acme.example",
        ];
        let names: Vec<String> = parts
            .iter()
            .flat_map(|p| bases.iter().map(move |b| format!("{p}{b}")))
            .collect();
        for host in &names {
            for domain in &names {
                assert_eq!(
                    hostname_within(host, domain),
                    reference(host, domain),
                    "{host} within {domain}"
                );
            }
        }
    }

    #[test]
    fn overlapping_domains() {
        assert!(domains_overlap("*.acme.example", "app.acme.example"));
        assert!(domains_overlap("app.acme.example", "*.acme.example"));
        assert!(domains_overlap("*.acme.example", "*.eu.acme.example"));
        assert!(domains_overlap("acme.example", "ACME.example"));
        assert!(!domains_overlap("*.acme.example", "acme.example"));
        assert!(!domains_overlap("*.acme.example", "*.beta.example"));
    }

    #[test]
    fn days() {
        assert_eq!(parse_days("Mon-Fri"), Some(vec![0, 1, 2, 3, 4]));
        assert_eq!(parse_days("Fri-Mon"), Some(vec![4, 5, 6, 0]));
        assert_eq!(parse_days("Sat,Sun"), Some(vec![5, 6]));
        assert_eq!(parse_days("Wed"), Some(vec![2]));
        assert_eq!(parse_days("Mon-Funday"), None);
        assert_eq!(parse_days("mon"), None);
    }
}

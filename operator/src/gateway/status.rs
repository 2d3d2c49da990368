//! The `status` step of the Gateway reconciler: a pure function from what the reconcile saw
//! to the Gateway's status. Conditions keep their `lastTransitionTime` while their status does
//! not change, so an unchanged world yields an identical status and no write.
//!
//! - `Accepted`: the snapshot could be built (False: the reason of the build error).
//! - `Programmed`: the snapshot Secret holds the snapshot of the current spec (False: the last
//!   good snapshot, if any, keeps serving).
//! - `Ready`: Programmed, the Deployment has its replicas ready, and as many pods report the
//!   served version as loaded (from the `<gw>-status` ConfigMap). False with
//!   `PodTemplateRefused` when `spec.podTemplate` asks for something not on the allow-list.
//! - per listener: attached Resources, `ResolvedRefs` (False for the listener a failed build
//!   blames, e.g. its certificate Secret is missing) and `Programmed`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use rustronaut_crds::conditions::{reasons, types};
use rustronaut_crds::gateway::{GatewayAddress, GatewayStatus, ListenerStatus, TunnelStatus};
use std::collections::BTreeMap;

/// What became of the build.
#[derive(Debug, Clone)]
pub enum Built {
    /// Built and written; listener name -> attached Resources; problems of other objects.
    Ok {
        /// Attached Resources per listener.
        attached: BTreeMap<String, usize>,
        /// How many objects were left out or fail closed.
        problems: usize,
        /// Listeners left out while cert-manager issues their certificate, with why.
        pending: BTreeMap<String, String>,
    },
    /// Not built: condition reason and message.
    Failed {
        /// Condition reason.
        reason: &'static str,
        /// For people.
        message: String,
        /// The listener at fault, when one is.
        listener: Option<String>,
    },
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// metadata.generation of the Gateway.
    pub generation: Option<i64>,
    /// The current status (for transition times and the last configVersion).
    pub previous: Option<&'a GatewayStatus>,
    /// The build.
    pub built: Built,
    /// Content hash of the snapshot in the Secret (current or last good), if any.
    pub served: Option<String>,
    /// The gateway Deployment as applied.
    pub deployment: Option<&'a Deployment>,
    /// The gateway Service as applied.
    pub service: Option<&'a Service>,
    /// Names of the Gateway's listeners, in spec order.
    pub listeners: Vec<String>,
    /// `<gw>-status` data: pod name -> version it loaded.
    pub reports: BTreeMap<String, String>,
    /// The tunnel hub's state (None without `spec.tunnel`).
    pub tunnel: Option<TunnelStatus>,
    /// Why `spec.podTemplate` was refused (the Deployment was left as it was), if it was.
    pub pod_template_refused: Option<String>,
    /// Now.
    pub now: Time,
}

fn condition(o: &Observed<'_>, type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    let previous = o.previous.map_or(&[][..], |p| &p.conditions[..]);
    condition_in(o, previous, type_, ok, reason, message)
}

/// A condition whose transition time is kept from `previous` while its status holds (the
/// one rule every kind's conditions follow: [`crate::conditions::condition`]).
fn condition_in(
    o: &Observed<'_>,
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    crate::conditions::condition(previous, &o.now, o.generation, type_, ok, reason, message)
}

/// The addresses of the Service: load-balancer ingress when there is one, else the
/// cluster IP.
pub fn addresses(svc: Option<&Service>) -> Vec<GatewayAddress> {
    let Some(svc) = svc else { return Vec::new() };
    let mut out: Vec<GatewayAddress> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i.ip.as_ref()
                .map(|ip| ("IPAddress", ip))
                .or(i.hostname.as_ref().map(|h| ("Hostname", h)))
        })
        .map(|(t, v)| GatewayAddress {
            type_: t.into(),
            value: v.clone(),
        })
        .collect();
    if out.is_empty()
        && let Some(ip) = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_ref())
        && ip != "None"
        && !ip.is_empty()
    {
        out.push(GatewayAddress {
            type_: "IPAddress".into(),
            value: ip.clone(),
        });
    }
    out
}

/// One listener: attached Resources, ResolvedRefs (False for the listener a failed build
/// blames) and Programmed.
fn listener_status(o: &Observed<'_>, name: &str, programmed: bool) -> ListenerStatus {
    let previous = o
        .previous
        .and_then(|p| p.listeners.iter().find(|l| l.name == name));
    let before = previous.map_or(&[][..], |l| &l.conditions[..]);
    let pending = match &o.built {
        Built::Ok { pending, .. } => pending.get(name),
        Built::Failed { .. } => None,
    };
    let (attached, resolved) = match &o.built {
        Built::Ok { attached, .. } => (
            attached.get(name).copied().unwrap_or(0),
            match pending {
                Some(why) => condition_in(
                    o,
                    before,
                    types::RESOLVED_REFS,
                    false,
                    reasons::CERTIFICATE_PENDING,
                    why.clone(),
                ),
                None => condition_in(
                    o,
                    before,
                    types::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED,
                    "every reference resolves".into(),
                ),
            },
        ),
        Built::Failed {
            reason,
            message,
            listener,
        } => {
            let n = previous.map_or(0, |l| usize::try_from(l.attached_resources).unwrap_or(0));
            let at_fault = listener.as_deref() == Some(name);
            let resolved = if at_fault {
                condition_in(
                    o,
                    before,
                    types::RESOLVED_REFS,
                    false,
                    reason,
                    message.clone(),
                )
            } else {
                condition_in(
                    o,
                    before,
                    types::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED,
                    "every reference resolves".into(),
                )
            };
            (n, resolved)
        }
    };
    let programmed = if let Some(why) = pending {
        condition_in(
            o,
            before,
            types::PROGRAMMED,
            false,
            reasons::CERTIFICATE_PENDING,
            format!("bound, but no TLS handshake succeeds yet: {why}"),
        )
    } else if programmed {
        condition_in(
            o,
            before,
            types::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            "in the served snapshot".into(),
        )
    } else {
        condition_in(
            o,
            before,
            types::PROGRAMMED,
            false,
            reasons::PENDING,
            "the current spec is not in the served snapshot".into(),
        )
    };
    ListenerStatus {
        name: name.to_string(),
        attached_resources: i32::try_from(attached).unwrap_or(i32::MAX),
        conditions: vec![resolved, programmed],
    }
}

/// Computes the status.
pub fn status(o: &Observed<'_>) -> GatewayStatus {
    let mut conditions = Vec::new();
    let (accepted, programmed_ok) = match &o.built {
        Built::Ok { problems, .. } => {
            let msg = if *problems == 0 {
                "the gateway configuration is valid".to_string()
            } else {
                format!(
                    "the gateway configuration is valid; {problems} problem(s) with attached objects are reported on them"
                )
            };
            conditions.push(condition(o, types::ACCEPTED, true, reasons::ACCEPTED, msg));
            (true, o.served.is_some())
        }
        Built::Failed {
            reason, message, ..
        } => {
            conditions.push(condition(
                o,
                types::ACCEPTED,
                false,
                reason,
                message.clone(),
            ));
            (false, false)
        }
    };
    let served = o.served.as_deref().unwrap_or("none");
    let programmed = match (&o.built, programmed_ok) {
        (_, true) => condition(
            o,
            types::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            format!("snapshot {served} written"),
        ),
        (
            Built::Failed {
                reason, message, ..
            },
            _,
        ) => condition(
            o,
            types::PROGRAMMED,
            false,
            reason,
            if o.served.is_some() {
                format!("{message}; the last good snapshot {served} keeps serving")
            } else {
                format!("{message}; no snapshot has been written yet")
            },
        ),
        (Built::Ok { .. }, false) => condition(
            o,
            types::PROGRAMMED,
            false,
            reasons::PENDING,
            "the snapshot is being written".into(),
        ),
    };
    conditions.push(programmed);

    let dep_status = o.deployment.and_then(|d| d.status.as_ref());
    let want = o
        .deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(1);
    let ready = dep_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let loaded = o
        .served
        .as_ref()
        .map_or(0, |v| o.reports.values().filter(|r| *r == v).count());
    let loaded = i32::try_from(loaded).unwrap_or(i32::MAX);
    let all_loaded = accepted && programmed_ok && ready >= want && loaded >= want;
    let pending = match &o.built {
        Built::Ok { pending, .. } => pending.iter().next(),
        Built::Failed { .. } => None,
    };
    if let Some(why) = &o.pod_template_refused {
        conditions.push(condition(
            o,
            types::READY,
            false,
            super::objects::POD_TEMPLATE_REFUSED,
            format!("{why}; the gateway Deployment is left unchanged"),
        ));
    } else if let (Some((listener, why)), true) = (pending, accepted) {
        // The other listeners serve, but not everything the spec asks for does yet:
        // Reconciling (kstatus InProgress) until cert-manager has issued.
        conditions.push(condition(
            o,
            types::READY,
            false,
            reasons::CERTIFICATE_PENDING,
            format!("listener {listener}: {why}"),
        ));
    } else {
        conditions.push(condition(
            o,
            types::READY,
            all_loaded,
            if all_loaded {
                reasons::READY
            } else if !accepted {
                match &o.built {
                    Built::Failed { reason, .. } => reason,
                    Built::Ok { .. } => reasons::PENDING,
                }
            } else {
                reasons::PENDING
            },
            match &o.built {
                // Not accepted: what is wrong with the spec, not the pods that never come.
                Built::Failed { message, .. } if !accepted => message.clone(),
                _ => format!("{ready}/{want} pods ready, {loaded} report snapshot {served} loaded"),
            },
        ));
    }

    // kstatus: Reconciling or Stalled beside a False Ready.
    if let Some(ready) = conditions.iter().find(|c| c.type_ == types::READY).cloned() {
        let previous = o.previous.map_or(&[][..], |p| &p.conditions[..]);
        conditions.extend(crate::conditions::progress(
            previous,
            &o.now,
            o.generation,
            &ready,
        ));
    }

    let config_version = if loaded >= want && o.served.is_some() {
        o.served.clone()
    } else {
        o.previous.and_then(|p| p.config_version.clone())
    };
    let listeners = o
        .listeners
        .iter()
        .map(|name| listener_status(o, name, programmed_ok))
        .collect();
    GatewayStatus {
        conditions,
        observed_generation: o.generation,
        addresses: addresses(o.service),
        listeners,
        tunnel: o.tunnel.clone(),
        config_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn observed<'a>(built: Built, served: Option<&str>) -> Observed<'a> {
        Observed {
            generation: Some(3),
            previous: None,
            built,
            served: served.map(str::to_string),
            deployment: None,
            service: None,
            listeners: vec!["https".into(), "tcp".into()],
            reports: BTreeMap::new(),
            tunnel: None,
            pod_template_refused: None,
            now: time(1000),
        }
    }

    fn ok() -> Built {
        Built::Ok {
            attached: BTreeMap::from([("https".to_string(), 2)]),
            problems: 0,
            pending: BTreeMap::new(),
        }
    }

    fn cond<'a>(s: &'a GatewayStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_every_wanted_pod_loaded_the_served_snapshot() {
        let dep: Deployment = serde_json::from_value(json!({
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": 2}
        }))
        .unwrap();
        let svc: Service = serde_json::from_value(json!({
            "spec": {"clusterIP": "10.96.0.10"}
        }))
        .unwrap();
        let mut o = observed(ok(), Some("sha256:b"));
        o.deployment = Some(&dep);
        o.service = Some(&svc);
        o.reports = BTreeMap::from([
            ("p1".to_string(), "sha256:b".to_string()),
            ("p2".to_string(), "sha256:a".to_string()),
        ]);
        let s = status(&o);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, "Accepted").status, "True");
        assert_eq!(cond(&s, "Programmed").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Pending")
        );
        assert_eq!(
            ready.message,
            "2/2 pods ready, 1 report snapshot sha256:b loaded"
        );
        assert_eq!(s.config_version, None);
        assert_eq!(s.addresses[0].value, "10.96.0.10");
        assert_eq!(s.listeners[0].attached_resources, 2);
        assert_eq!(s.listeners[1].attached_resources, 0);
        assert!(s.listeners[0].conditions.iter().all(|c| c.status == "True"));

        o.reports.insert("p2".into(), "sha256:b".into());
        let prev = s.clone();
        o.previous = Some(&prev);
        o.now = time(2000);
        let s = status(&o);
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(s.config_version.as_deref(), Some("sha256:b"));
        assert_eq!(
            cond(&s, "Accepted").last_transition_time,
            time(1000),
            "unchanged status keeps its transition time"
        );
        assert_eq!(cond(&s, "Ready").last_transition_time, time(2000));
    }

    /// A listener waiting for cert-manager: its ResolvedRefs and Programmed say so, the
    /// other listeners are fine, and the Gateway is Ready=False (kstatus InProgress) with the
    /// same reason even with every pod loaded.
    #[test]
    fn a_listener_waiting_for_its_certificate_keeps_the_gateway_reconciling() {
        let dep: Deployment = serde_json::from_value(json!({
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"readyReplicas": 1}
        }))
        .unwrap();
        let why = "waiting for cert-manager to issue its certificate into Secret ns/x".to_string();
        let mut o = observed(
            Built::Ok {
                attached: BTreeMap::from([("http".to_string(), 1)]),
                problems: 0,
                pending: BTreeMap::from([("https".to_string(), why.clone())]),
            },
            Some("sha256:b"),
        );
        o.deployment = Some(&dep);
        o.listeners = vec!["https".into(), "http".into()];
        o.reports = BTreeMap::from([("p1".to_string(), "sha256:b".to_string())]);
        let s = status(&o);
        assert_eq!(cond(&s, "Accepted").status, "True");
        assert_eq!(cond(&s, "Programmed").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::CERTIFICATE_PENDING)
        );
        assert_eq!(ready.message, format!("listener https: {why}"));
        assert_eq!(cond(&s, "Reconciling").status, "True");
        let https = s.listeners.iter().find(|l| l.name == "https").unwrap();
        let by_type = |t: &str| https.conditions.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(
            (
                by_type("ResolvedRefs").status.as_str(),
                by_type("ResolvedRefs").reason.as_str()
            ),
            ("False", reasons::CERTIFICATE_PENDING)
        );
        assert_eq!(by_type("ResolvedRefs").message, why);
        assert_eq!(by_type("Programmed").status, "False");
        let http = s.listeners.iter().find(|l| l.name == "http").unwrap();
        assert!(
            http.conditions.iter().all(|c| c.status == "True"),
            "{http:?}"
        );
    }

    #[test]
    fn a_failed_build_says_why_and_that_the_last_good_snapshot_serves() {
        let o = observed(
            Built::Failed {
                reason: reasons::INVALID_CERTIFICATE_REF,
                message: "listener https: TLS Secret ns/x not found".into(),
                listener: Some("https".into()),
            },
            Some("sha256:a"),
        );
        let s = status(&o);
        let a = cond(&s, "Accepted");
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", "InvalidCertificateRef")
        );
        let p = cond(&s, "Programmed");
        assert_eq!(p.status, "False");
        assert_eq!(
            p.message,
            "listener https: TLS Secret ns/x not found; the last good snapshot sha256:a keeps serving"
        );
        assert_eq!(cond(&s, "Ready").reason, "InvalidCertificateRef");
        let l = |name: &str, t: &str| {
            let c = s
                .listeners
                .iter()
                .find(|l| l.name == name)
                .unwrap()
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap();
            (c.status.clone(), c.reason.clone())
        };
        assert_eq!(
            l("https", "ResolvedRefs"),
            ("False".into(), "InvalidCertificateRef".into())
        );
        assert_eq!(
            l("tcp", "ResolvedRefs"),
            ("True".into(), "ResolvedRefs".into())
        );
        assert_eq!(l("https", "Programmed").0, "False");
    }
}

//! Leader failover under load (issue 17), against the real control plane, as the operator's
//! own ServiceAccount: two operator replicas with different identities contend for the one
//! Lease; 5 Tenants with 5 Resources and 5 Policies each on one Gateway; then a burst of 500
//! Policy edits from 5 concurrent writers, and the leader is SIGKILLed after 150 of them; the
//! rest are paced to go on through the Lease's expiry and the takeover.
//!
//! Why: leader election only promises that at most one replica writes. What operators of the
//! operator care about is that no edit is lost across a crash: the edits the dying leader had
//! seen but not yet compiled, and those that arrived while nobody led, must all reach the
//! Gateway's snapshot once the other replica takes over. SIGKILL (the OOM killer, a lost node)
//! is the hard case: the Lease is not released, no in-flight work is finished, the standby
//! must wait for the Lease to expire (15 s after the last renewal) and then rebuild everything
//! from the API server with empty caches.
//!
//! Checked: the other replica ends up holding the Lease, and the snapshot Secret carries the
//! last value written to every Policy (each edit puts a CIDR unique to that edit in the
//! Policy's rule) and still exactly the Gateway's Resources and Policies. Otherwise the test
//! fails after 120 s, naming each Policy whose final edit is missing and what the snapshot
//! holds instead, with both operators' logs.
//!
//! Measured and printed (never asserted against a time): edits/s of the burst, SIGKILL -> the
//! other replica holds the Lease, the edits written while nobody led and after the takeover,
//! SIGKILL -> every final edit in the snapshot.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rustronaut_crds::Policy;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{MANAGER, OPERATOR_NAMESPACE, Proc, World};

/// Edits in the burst.
const EDITS: usize = 500;
/// Edits written before the leader is killed.
const KILL_AFTER: usize = 150;
/// Concurrent writers; each owns a fifth of the Policies, so the last value written to a
/// Policy is well defined (one writer, in order).
const WRITERS: usize = 5;
/// The operator's Lease (its default `--lease-name`).
const LEASE: &str = "rustronaut-operator";
/// After the kill each writer waits this long between its edits, so the burst lasts through
/// the Lease's expiry (15 s) and the takeover: edits also arrive while the new leader fills
/// its caches, not only while nobody leads.
const PACE_AFTER_KILL: Duration = Duration::from_millis(300);
/// How long the snapshot may take to carry every final edit after the kill.
const DEADLINE: Duration = Duration::from_secs(120);

/// The Lease's holder, if any.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// The Policies (`(t, i)`) whose value in `snapshot` is not the final one of `last`
/// (Policy -> the marker of the last edit written to it), with what the snapshot holds.
fn missing(
    world: &World,
    snapshot: Option<&rustronaut_contract::snapshot::Snapshot>,
    last: &BTreeMap<(usize, usize), usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (&(t, i), &marker) in last {
        let want = format!("\"{}\"", World::marker_cidr(marker));
        let found = snapshot.and_then(|s| {
            s.policies
                .iter()
                .find(|p| p.namespace == world.ns(t) && p.name == format!("p{i}"))
        });
        let rules = found.map(|p| serde_json::to_string(&p.rules).unwrap());
        if !rules.as_ref().is_some_and(|r| r.contains(&want)) {
            out.push(format!(
                "{}/p{i}: final edit {marker} ({want}) missing; snapshot has {}",
                world.ns(t),
                rules.as_deref().unwrap_or("no such Policy")
            ));
        }
    }
    out
}

#[test]
fn a_killed_leader_loses_no_edit_and_the_other_replica_takes_over() {
    // Namespaces failover-platform and failover-t<t>; one Gateway, edge-0, admits all five.
    let world = World::new("failover", 5, 5, 5);
    let cluster = rustronaut_e2e::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(cluster.client());
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(support::install_operator_rbac(&admin));
    support::install_crds(cluster);

    // Two replicas: same ServiceAccount and Lease, their own identity, log and metrics port.
    let ids = [
        "rustronaut-operator-failover-a",
        "rustronaut-operator-failover-b",
    ];
    let mut replicas: Vec<Proc> = ids
        .iter()
        .map(|id| {
            let d = dir.path().join(id);
            std::fs::create_dir(&d).unwrap();
            support::start_operator_with(cluster, &d, &["--instance", id]).0
        })
        .collect();
    rt.block_on(world.create_all(&admin));

    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &world.platform());
    let mut leader = None;
    support::wait_for(
        "one replica to hold the Lease",
        &replicas.iter().collect::<Vec<_>>(),
        || {
            leader = rt
                .block_on(holder(&leases))
                .and_then(|h| ids.iter().position(|id| *id == h));
            leader.is_some()
        },
    );
    let leader = leader.unwrap();
    let standby = 1 - leader;
    support::wait_for(
        "the first snapshot to hold every Resource and Policy",
        &replicas.iter().collect::<Vec<_>>(),
        || {
            rt.block_on(World::snapshot(&secrets, 0))
                .is_some_and(|s| world.complete(&s, 0))
        },
    );

    // The burst: edit k goes to Policy k % 25, written by writer k % WRITERS, in order.
    let policies = world.tenants * world.per_tenant;
    let done = Arc::new(AtomicUsize::new(0));
    let leader_killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last: Arc<Mutex<BTreeMap<(usize, usize), usize>>> = Arc::default();
    let burst_started = Instant::now();
    let mut burst = {
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let client = admin.clone();
            let done = done.clone();
            let last = last.clone();
            let leader_killed = leader_killed.clone();
            let edits: Vec<(usize, usize, usize, serde_json::Value)> = (0..EDITS)
                .filter(|k| k % WRITERS == w)
                .map(|k| {
                    let (t, i) = ((k % policies) / world.per_tenant, k % world.per_tenant);
                    (k, t, i, world.policy(t, i, Some(k)))
                })
                .collect();
            let namespaces: Vec<String> = (0..world.tenants).map(|t| world.ns(t)).collect();
            let write = async move {
                let ssa = PatchParams::apply(MANAGER).force();
                for (k, t, i, obj) in edits {
                    Api::<Policy>::namespaced(client.clone(), &namespaces[t])
                        .patch(&format!("p{i}"), &ssa, &Patch::Apply(&obj))
                        .await
                        .unwrap_or_else(|e| panic!("edit {k} of {}/p{i}: {e}", namespaces[t]));
                    last.lock().unwrap().insert((t, i), k);
                    done.fetch_add(1, Ordering::SeqCst);
                    if leader_killed.load(Ordering::SeqCst) {
                        tokio::time::sleep(PACE_AFTER_KILL).await;
                    }
                }
            };
            writers.spawn_on(write, rt.handle());
        }
        rt.spawn(async move {
            while let Some(w) = writers.join_next().await {
                w.unwrap();
            }
            burst_started.elapsed()
        })
    };
    while done.load(Ordering::SeqCst) < KILL_AFTER && !burst.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = Instant::now();
    let status = replicas[leader].kill();
    leader_killed.store(true, Ordering::SeqCst);
    let before_kill = done.load(Ordering::SeqCst);
    assert_eq!(status.signal(), Some(9), "the leader died of SIGKILL");

    // Until the other replica holds the Lease and the snapshot carries every final edit.
    let mut took_over = None;
    let mut before_takeover = 0;
    let mut burst_took = None;
    let mut converged = None;
    let mut last_missing = Vec::new();
    while took_over.is_none() || converged.is_none() {
        if took_over.is_none() && rt.block_on(holder(&leases)).as_deref() == Some(ids[standby]) {
            took_over = Some(killed.elapsed());
            before_takeover = done.load(Ordering::SeqCst);
        }
        if burst_took.is_none() && burst.is_finished() {
            burst_took = Some(rt.block_on(&mut burst).expect("every edit was written"));
        }
        if burst_took.is_some() && converged.is_none() {
            let s = rt.block_on(World::snapshot(&secrets, 0));
            last_missing = missing(&world, s.as_ref(), &last.lock().unwrap());
            if last_missing.is_empty() {
                converged = Some(killed.elapsed());
                assert!(
                    world.complete(s.as_ref().unwrap(), 0),
                    "after the failover the snapshot holds exactly the Gateway's objects"
                );
            }
        }
        if killed.elapsed() > DEADLINE {
            let logs: Vec<String> = ids
                .iter()
                .zip(&replicas)
                .map(|(id, p)| format!("=== {id} ===\n{}", p.log()))
                .collect();
            panic!(
                "{DEADLINE:?} after SIGKILL of {}: Lease held by {:?} (want {}), burst {}, \
                 {} Policies without their final edit:\n{}\nlogs:\n{}",
                ids[leader],
                rt.block_on(holder(&leases)),
                ids[standby],
                if burst_took.is_some() {
                    "done"
                } else {
                    "still running"
                },
                last_missing.len(),
                last_missing.join("\n"),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (took_over, converged, burst_took) =
        (took_over.unwrap(), converged.unwrap(), burst_took.unwrap());
    assert_eq!(
        rt.block_on(holder(&leases)).as_deref(),
        Some(ids[standby]),
        "the other replica holds the Lease"
    );
    assert_eq!(last.lock().unwrap().len(), policies, "every Policy edited");
    let transitions = rt
        .block_on(leases.get(LEASE))
        .unwrap()
        .spec
        .and_then(|s| s.lease_transitions);

    println!(
        "failover: {} Tenants, {policies} Resources, {policies} Policies on 1 Gateway; {} \
         led, {} took over (Lease transitions: {transitions:?})",
        world.tenants, ids[leader], ids[standby]
    );
    println!(
        "  burst: {EDITS} edits from {WRITERS} writers in {burst_took:.2?}; the leader \
         SIGKILLed after {before_kill} ({:.0} edits/s until then), then {PACE_AFTER_KILL:?} \
         between a writer's edits",
        before_kill as f64 / (killed - burst_started).as_secs_f64()
    );
    println!(
        "  SIGKILL -> the other replica holds the Lease: {took_over:.2?}; edits written \
         while nobody led: {}, after the takeover: {}",
        before_takeover - before_kill,
        EDITS - before_takeover
    );
    println!(
        "  SIGKILL -> the snapshot carries the final edit of all {policies} Policies: \
         {converged:.2?} ({:.2?} after the takeover)",
        converged.saturating_sub(took_over)
    );
    drop(replicas);
}

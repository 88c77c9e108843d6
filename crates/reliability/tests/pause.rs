//! A hang that recovers: a sandbox-runtime is paused (SIGSTOP) longer than
//! `CLAIM_IDLE_SECS` while it holds tasks, the other runtime re-claims and
//! completes them, then the paused one resumes (SIGCONT) and finishes its
//! now stale runs. The stale results must not be written over the new
//! holder's trajectories: every task keeps one write, from its second
//! delivery (`metadata.attempt` = 2, `metadata.worker` = the new holder).
//!
//! Sizes: `REL_PAUSE_TASKS` (6 tasks of 4 s each).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use adp_core::{names, Trajectory};
use reliability::cluster::Cluster;
use reliability::ledger::{pending_entries, stream_state, Ledger};
use reliability::service::{message, poll, SIGCONT, SIGSTOP};
use reliability::tasks::{append_lines, sum_task};
use reliability::watch::WriteWatch;
use reliability::{env_or, report};
use serde_json::json;

#[test]
fn a_runtime_resumed_after_its_tasks_were_taken_over_does_not_overwrite_them() {
    let n: usize = env_or("REL_PAUSE_TASKS", 6);
    let cluster = Cluster::new("pause");
    let watch = WriteWatch::start(&cluster.trajectories_dir());
    let lines_ids: Vec<(String, String)> = (0..n).map(|i| sum_task("pause-", i, 4000)).collect();
    let ids: BTreeSet<String> = lines_ids.iter().map(|(id, _)| id.clone()).collect();
    let settings = [("CLAIM_IDLE_SECS", "2"), ("SANDBOX_CONCURRENCY", "2")];
    let mut a = cluster.sandbox("sandbox-a", &settings);
    let mut b = cluster.sandbox("sandbox-b", &settings);
    b.start();
    let b_consumer = b.consumer().expect("b runs");
    let mut dispatcher = cluster.dispatcher(false, &[]);
    append_lines(
        &cluster.task_file(),
        &lines_ids.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
    );
    dispatcher.start();
    assert_eq!(dispatcher.wait_exit(Duration::from_secs(60)), Some(0));

    // B takes what it can, then hangs while running it.
    let mut held: Vec<String> = Vec::new();
    assert!(poll(Duration::from_secs(30), || {
        held = pending_entries(&mut cluster.redis(), names::STREAM_CODE)
            .into_iter()
            .filter(|(_, (c, _))| *c == b_consumer)
            .map(|(id, _)| id)
            .collect();
        held.len() >= 2
    }));
    std::thread::sleep(Duration::from_millis(500));
    b.signal(SIGSTOP);
    a.start();
    let a_consumer = a.consumer().expect("a runs");

    // A re-claims B's entries once they are idle and completes everything.
    let done = poll(Duration::from_secs(90), || {
        cluster.trajectory_count() >= n && {
            let s = stream_state(&mut cluster.redis(), names::STREAM_CODE);
            s.pending == 0 && s.lag == 0
        }
    });
    assert!(done, "A did not complete the work");
    let before_resume = watch.snapshot();

    // B resumes: its runs finish (their jails kept going), stale.
    b.signal(SIGCONT);
    let b_events_settled = poll(Duration::from_secs(30), || {
        b.events()
            .iter()
            .filter(|e| {
                let m = message(e);
                m.starts_with("Task completed.") || m.contains("discarding this result")
            })
            .count()
            >= held.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    let ledger = Ledger::collect(&cluster, &ids, Some(&watch));
    let writes = watch.snapshot();
    let mut final_files = BTreeMap::new();
    for id in &ids {
        let t: Trajectory = serde_json::from_str(
            &std::fs::read_to_string(cluster.trajectories_dir().join(format!("{id}.json")))
                .expect("trajectory"),
        )
        .expect("json");
        final_files.insert(
            id.clone(),
            (
                t.metadata.get("attempt").cloned().unwrap_or_default(),
                t.metadata.get("worker").cloned().unwrap_or_default(),
            ),
        );
    }
    let exits = [
        a.terminate(Duration::from_secs(30)),
        b.terminate(Duration::from_secs(30)),
    ];
    let result = json!({
        "tasks": n,
        "held_by_paused_runtime": held.len(),
        "writes_before_resume": before_resume.total(),
        "writes_after_resume": writes.total(),
        "paused_runtime_settled": b_events_settled,
        "final_attempt_and_worker": final_files,
        "runtime_a": a_consumer,
        "exit_codes": exits,
        "ledger": ledger.to_json(),
    });
    report::save("pause", &result);

    ledger.assert_complete();
    assert!(b_events_settled, "{result:#}");
    assert_eq!(
        writes.total(),
        n as u64,
        "a stale run wrote over a newer one: {result:#}"
    );
    let taken_over = final_files
        .values()
        .filter(|(attempt, worker)| *attempt == json!(2) && *worker == json!(a_consumer))
        .count();
    assert!(taken_over >= held.len(), "{result:#}");
    assert_eq!(exits, [Some(0), Some(0)]);
}

//! Scenario 1, worker crash: scripted code tasks flow through the dispatcher
//! and two `sandbox-runtime` processes; one of them is killed with SIGKILL
//! at random moments and restarted. Afterwards every task has exactly one
//! well-formed trajectory file, no temp file is left, `tasks:dead` is empty,
//! every entry is acknowledged, and every task that was written twice says
//! so in `metadata.attempt`.
//!
//! Sizes: `REL_CRASH_TASKS` (500), `REL_CRASH_KILLS` (3),
//! `REL_CRASH_TASK_SLEEP_MS` (100: how long each task's code sleeps, so
//! every kill catches tasks in flight), `REL_SEED`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use adp_core::names;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reliability::cluster::Cluster;
use reliability::ledger::{pending_by_consumer, Ledger};
use reliability::service::{message, poll, processes_named};
use reliability::tasks::{append_lines, sum_task};
use reliability::watch::WriteWatch;
use reliability::{env_or, fault_points, report, seed};
use serde_json::json;

#[test]
fn kill_9_of_a_worker_loses_and_doubles_nothing() {
    let n: usize = env_or("REL_CRASH_TASKS", 500);
    let kills: usize = env_or("REL_CRASH_KILLS", 3);
    let sleep_ms: u64 = env_or("REL_CRASH_TASK_SLEEP_MS", 100);
    let mut rng = StdRng::seed_from_u64(seed());

    let cluster = Cluster::new("worker-crash");
    let watch = WriteWatch::start(&cluster.trajectories_dir());
    let mut ids = BTreeSet::new();
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let (id, line) = sum_task("crash-", i, sleep_ms);
        ids.insert(id);
        lines.push(line);
    }
    append_lines(&cluster.task_file(), &lines);

    let started = Instant::now();
    let mut dispatcher = cluster.dispatcher(false, &[]);
    dispatcher.start();
    let mut runtimes = cluster.start_sandbox_pair(&[]);
    assert_eq!(
        dispatcher.wait_exit(Duration::from_secs(60)),
        Some(0),
        "dispatcher (FOLLOW=false) exits 0:\n{}",
        dispatcher.log_tail(20)
    );

    // Kill points: random fractions of the work done, in order.
    let points = fault_points(&mut rng, kills, n / 10..=n * 8 / 10);
    let mut kill_log = Vec::new();
    for point in points {
        assert!(
            poll(Duration::from_secs(120), || cluster.trajectory_count()
                >= point),
            "stuck below {point} trajectories"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        let victim = rng.random_range(0..runtimes.len());
        let r = &mut runtimes[victim];
        let consumer = r.consumer().expect("running");
        let pid = r.pid().expect("running");
        let held = pending_by_consumer(&mut cluster.redis(), names::STREAM_CODE)
            .get(&consumer)
            .copied()
            .unwrap_or(0);
        let done = cluster.trajectory_count();
        r.kill();
        let orphans = processes_named("nsjail", Some(1)).len();
        let down_ms = rng.random_range(200..1500);
        std::thread::sleep(Duration::from_millis(down_ms));
        r.start();
        eprintln!("[reliability] killed {} (pid {pid}) at {done}/{n} holding {held}; restarted after {down_ms} ms", r.name);
        kill_log.push(json!({
            "at_trajectories": done,
            "victim": r.name,
            "entries_held": held,
            "orphaned_nsjail_right_after": orphans,
            "down_ms": down_ms,
        }));
    }

    let done = poll(Duration::from_secs(180), || {
        cluster.trajectory_count() >= n && {
            let s = reliability::ledger::stream_state(&mut cluster.redis(), names::STREAM_CODE);
            s.pending == 0 && s.lag == 0
        }
    });
    let elapsed = started.elapsed();
    let ledger = Ledger::collect(&cluster, &ids, Some(&watch));
    assert!(done, "work did not finish:\n{:#}", ledger.to_json());

    let mut exits = Vec::new();
    for r in &mut runtimes {
        exits.push(r.terminate(Duration::from_secs(30)));
    }
    let reclaimed: usize = runtimes
        .iter()
        .flat_map(|r| r.events())
        .filter(|e| message(e) == "Re-claimed an entry abandoned by another consumer.")
        .count();
    let leaked_jail_logs = std::fs::read_dir(cluster.nsjail_log_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    let result = json!({
        "tasks": n,
        "kills": kill_log,
        "elapsed_s": elapsed.as_secs_f64(),
        "tasks_per_s": n as f64 / elapsed.as_secs_f64(),
        "entries_reclaimed": reclaimed,
        "nsjail_log_files_leaked": leaked_jail_logs,
        "exit_codes_after_sigterm": exits,
        "ledger": ledger.to_json(),
    });
    report::save("worker_crash", &result);

    ledger.assert_complete();
    assert!(
        ledger.failed.is_empty(),
        "tasks failed: {:?}",
        ledger.failed
    );
    // Written twice only when a killed holder had written before its ack was
    // sent; the file that stayed then comes from a later delivery.
    let attempts_over_1: usize = ledger
        .attempts
        .iter()
        .filter(|(a, _)| **a > 1)
        .map(|(_, c)| *c)
        .sum();
    assert!(reclaimed >= attempts_over_1, "{result:#}");
    for (id, _) in ledger.written_twice() {
        let t: adp_core::Trajectory = serde_json::from_str(
            &std::fs::read_to_string(cluster.trajectories_dir().join(format!("{id}.json")))
                .expect("read"),
        )
        .expect("json");
        let attempt = t.metadata.get("attempt").and_then(|a| a.as_u64());
        assert!(
            attempt > Some(1),
            "{id} written twice but attempt is {attempt:?}"
        );
    }
    assert!(
        exits.iter().all(|c| *c == Some(0)),
        "runtimes exit 0 on SIGTERM: {exits:?}"
    );
}

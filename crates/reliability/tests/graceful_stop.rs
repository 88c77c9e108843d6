//! Scenario 4, graceful stop: during load, SIGTERM goes to every service at
//! once (dispatcher, both sandbox-runtimes), then to Redis once they have
//! exited; everything is started again. Each service exits 0 and finishes
//! (or hands back) what it holds, so after the restarts every task has
//! exactly one trajectory, written exactly once (counted with inotify), from
//! its first delivery (`metadata.attempt` = 1).
//!
//! Sizes: `REL_GRACEFUL_TASKS` (400), `REL_GRACEFUL_STOPS` (2),
//! `REL_GRACEFUL_TASK_SLEEP_MS` (300: tasks are in flight when SIGTERM
//! comes), `REL_SEED`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use adp_core::names;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reliability::cluster::Cluster;
use reliability::ledger::{pending_by_consumer, stream_state, Ledger};
use reliability::service::{poll, Service};
use reliability::tasks::{append_lines, sum_task};
use reliability::watch::WriteWatch;
use reliability::{env_or, fault_points, report, seed};
use serde_json::json;

#[test]
fn sigterm_to_everything_finishes_each_task_exactly_once() {
    let n: usize = env_or("REL_GRACEFUL_TASKS", 400);
    let stops: usize = env_or("REL_GRACEFUL_STOPS", 2);
    let sleep_ms: u64 = env_or("REL_GRACEFUL_TASK_SLEEP_MS", 300);
    let mut rng = StdRng::seed_from_u64(seed());

    let mut cluster = Cluster::new("graceful-stop");
    let watch = WriteWatch::start(&cluster.trajectories_dir());
    let ids: BTreeSet<String> = (0..n)
        .map(|i| {
            let (id, line) = sum_task("gs-", i, sleep_ms);
            append_lines(&cluster.task_file(), &[line]);
            id
        })
        .collect();
    let mut services: Vec<Service> = vec![
        cluster.dispatcher(true, &[("MAX_BACKLOG", "40")]),
        cluster.sandbox("sandbox-a", &[]),
        cluster.sandbox("sandbox-b", &[]),
    ];
    let started = Instant::now();
    for s in &mut services {
        s.start();
    }

    let points = fault_points(&mut rng, stops, n / 10..=n * 8 / 10);
    let mut stop_log = Vec::new();
    for point in points {
        assert!(
            poll(Duration::from_secs(120), || cluster.trajectory_count()
                >= point),
            "stuck below {point}"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        // A stop point reached right after a restart: the services are
        // stopped once they are up (a SIGTERM before a process has its
        // handlers is a kill, not the stop this scenario is about).
        assert!(
            poll(Duration::from_secs(60), || services
                .iter()
                .all(Service::started_up)),
            "a service did not start"
        );
        let held = pending_by_consumer(&mut cluster.redis(), names::STREAM_CODE);
        let in_flight: u64 = services
            .iter()
            .filter_map(Service::consumer)
            .map(|c| held.get(&c).copied().unwrap_or(0))
            .sum();
        let done_before = cluster.trajectory_count();
        let t = Instant::now();
        for s in &services {
            s.signal(reliability::service::SIGTERM);
        }
        let exits: Vec<Option<i32>> = services
            .iter_mut()
            .map(|s| s.wait_exit(Duration::from_secs(60)))
            .collect();
        let stop_s = t.elapsed().as_secs_f64();
        let finished_during_stop = cluster.trajectory_count() - done_before;
        let left = stream_state(&mut cluster.redis(), names::STREAM_CODE);
        cluster.redis.stop();
        cluster.redis.start_again();
        for s in &mut services {
            s.start();
        }
        eprintln!("[reliability] stop at {done_before}/{n}: {in_flight} in flight, {finished_during_stop} finished while stopping, exits {exits:?}");
        stop_log.push(json!({
            "at_trajectories": done_before,
            "entries_in_flight": in_flight,
            "finished_while_stopping": finished_during_stop,
            "pending_after_stop": left.pending,
            "seconds_to_stop": stop_s,
            "exit_codes": exits,
        }));
    }

    let done = poll(Duration::from_secs(180), || {
        cluster.trajectory_count() >= n && {
            let s = stream_state(&mut cluster.redis(), names::STREAM_CODE);
            s.pending == 0 && s.lag == 0
        }
    });
    let elapsed = started.elapsed();
    let ledger = Ledger::collect(&cluster, &ids, Some(&watch));
    assert!(done, "work did not finish:\n{:#}", ledger.to_json());
    let final_exits: Vec<Option<i32>> = services
        .iter_mut()
        .map(|s| s.terminate(Duration::from_secs(60)))
        .collect();
    let result = json!({
        "tasks": n,
        "stops": stop_log,
        "final_exit_codes": final_exits,
        "elapsed_s": elapsed.as_secs_f64(),
        "ledger": ledger.to_json(),
    });
    report::save("graceful_stop", &result);

    ledger.assert_complete();
    assert!(ledger.failed.is_empty(), "{result:#}");
    assert!(
        ledger.written_twice().is_empty(),
        "written twice: {:?}",
        ledger.written_twice()
    );
    assert_eq!(
        ledger.attempts.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{result:#}"
    );
    for s in &stop_log {
        assert_eq!(
            s["pending_after_stop"],
            json!(0),
            "a stopped runtime handed nothing back unfinished: {s}"
        );
        assert_eq!(s["exit_codes"], json!([0, 0, 0]), "{s}");
    }
    assert!(final_exits.iter().all(|c| *c == Some(0)), "{final_exits:?}");
}

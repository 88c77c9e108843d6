//! Scenario 5, poison task: a task that takes down the runtime that holds
//! it, every time, is delivered `MAX_DELIVERIES` times, then dead-lettered
//! with a failed (`system_error`) trajectory, while the other tasks keep
//! flowing.
//!
//! What kills a sandbox-runtime? Not the task's code: it runs in nsjail with
//! rlimits, a wall-time limit and capped output (an output flood is cut at
//! 64 KiB and ends the task normally, a fork or memory bomb hits its
//! rlimits), so no code task crashes or hangs the runtime process itself —
//! that is the sandbox's job, tested in sandbox-runtime's containment
//! tests. A real poison is therefore a defect outside the jail triggered by
//! one task (a crash in the runtime, the kernel OOM-killing it, a hang in a
//! syscall). This test injects exactly that, keyed to one task: a watcher
//! polls `XPENDING` for the poison entry and, each time a new delivery of it
//! is held by a runtime, brings that runtime down:
//!
//! * delivery 1: SIGKILL (a crash), the supervisor restarts it;
//! * delivery 2: SIGSTOP (a hang: heartbeats stop, `/health` stops
//!   answering); once another consumer has re-claimed the entry, a
//!   liveness check SIGKILLs the hung process and restarts it;
//! * delivery 3: SIGKILL again.
//!
//! The fourth claim finds more than `MAX_DELIVERIES` (3) deliveries and
//! dead-letters the entry without running it.
//!
//! Sizes: `REL_POISON_TASKS` (300 ordinary tasks).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use adp_core::{names, ErrorType, Trajectory};
use reliability::cluster::Cluster;
use reliability::ledger::{pending_entries, stream_entries, stream_state, Ledger};
use reliability::service::{poll, Service, SIGSTOP};
use reliability::tasks::{append_lines, code_line, sum_task};
use reliability::watch::WriteWatch;
use reliability::{env_or, report};
use serde_json::json;

const POISON: &str = "poison-1";

#[test]
fn a_task_that_downs_its_runtime_every_time_is_dead_lettered_while_others_flow() {
    let n: usize = env_or("REL_POISON_TASKS", 300);
    let cluster = Cluster::new("poison");
    let watch = WriteWatch::start(&cluster.trajectories_dir());
    let mut ids = BTreeSet::new();
    let mut lines = Vec::new();
    for i in 0..n {
        if i == n / 5 {
            // Harmless code that runs long enough to be caught in flight.
            lines.push(code_line(
                POISON,
                "import time\ntime.sleep(5)\nprint('done')",
                None,
                60,
            ));
            ids.insert(POISON.to_owned());
        }
        let (id, line) = sum_task("po-", i, 50);
        ids.insert(id);
        lines.push(line);
    }
    append_lines(&cluster.task_file(), &lines);

    let mut dispatcher = cluster.dispatcher(false, &[]);
    dispatcher.start();
    assert_eq!(dispatcher.wait_exit(Duration::from_secs(60)), Some(0));
    let poison_entry = stream_entries(&mut cluster.redis(), names::STREAM_CODE)
        .into_iter()
        .find(|(_, id)| id == POISON)
        .map(|(e, _)| e)
        .expect("poison entry in tasks:code");

    let settings = [("MAX_DELIVERIES", "3"), ("CLAIM_IDLE_SECS", "2")];
    let started = Instant::now();
    let mut runtimes = cluster.start_sandbox_pair(&settings);

    let mut punished = BTreeSet::new();
    let mut hung: Option<(usize, String)> = None;
    let mut events = Vec::new();
    let mut first_delivery: Option<(Instant, usize)> = None;
    let dead_lettered = poll(Duration::from_secs(120), || {
        let mut conn = cluster.redis();
        let owner = pending_entries(&mut conn, names::STREAM_CODE)
            .get(&poison_entry)
            .cloned();
        // Liveness: a hung runtime is killed and restarted once another
        // consumer has taken the entry over.
        if let Some((idx, consumer)) = hung.clone() {
            if owner.as_ref().is_none_or(|(c, _)| *c != consumer) {
                restart(&mut runtimes[idx]);
                events.push(json!({"event": "liveness kill of hung runtime", "runtime": runtimes[idx].name, "t_s": started.elapsed().as_secs_f64()}));
                hung = None;
            }
        }
        if let Some((consumer, deliveries)) = owner {
            if deliveries <= 3 && punished.insert(deliveries) {
                let idx = runtimes
                    .iter()
                    .position(|r| r.consumer().as_deref() == Some(consumer.as_str()))
                    .expect("the holder is one of our runtimes");
                first_delivery.get_or_insert((Instant::now(), cluster.trajectory_count()));
                let what = if deliveries == 2 {
                    runtimes[idx].signal(SIGSTOP);
                    hung = Some((idx, consumer.clone()));
                    "SIGSTOP (hang)"
                } else {
                    restart(&mut runtimes[idx]);
                    "SIGKILL (crash) + restart"
                };
                events.push(json!({"delivery": deliveries, "holder": runtimes[idx].name, "fault": what, "t_s": started.elapsed().as_secs_f64()}));
            }
        }
        let dead: u64 = redis::cmd("XLEN")
            .arg(names::STREAM_DEAD)
            .query(&mut conn)
            .unwrap_or(0);
        dead > 0
    });
    let dead_at = Instant::now();
    let (poison_started, done_then) = first_delivery.expect("the poison task was delivered");
    let flowed = cluster.trajectory_count().saturating_sub(done_then);
    let window = dead_at.duration_since(poison_started);
    assert!(dead_lettered, "no dead letter; events {events:?}");

    let done = poll(Duration::from_secs(180), || {
        cluster.trajectory_count() >= ids.len() && {
            let s = stream_state(&mut cluster.redis(), names::STREAM_CODE);
            s.pending == 0 && s.lag == 0
        }
    });
    let elapsed = started.elapsed();
    let ledger = Ledger::collect(&cluster, &ids, Some(&watch));
    assert!(done, "work did not finish:\n{:#}", ledger.to_json());
    let poison: Trajectory = serde_json::from_str(
        &std::fs::read_to_string(cluster.trajectories_dir().join(format!("{POISON}.json")))
            .expect("poison trajectory"),
    )
    .expect("poison trajectory json");
    let dead: Vec<redis::streams::StreamId> = redis::cmd("XRANGE")
        .arg(names::STREAM_DEAD)
        .arg("-")
        .arg("+")
        .query::<redis::streams::StreamRangeReply>(&mut cluster.redis())
        .expect("XRANGE tasks:dead")
        .ids;
    let dead_fields: Vec<(String, String)> = dead
        .first()
        .map(|d| {
            [
                names::FIELD_DELIVERIES,
                names::FIELD_REASON,
                names::FIELD_SOURCE_ID,
            ]
            .iter()
            .map(|f| ((*f).to_owned(), d.get::<String>(f).unwrap_or_default()))
            .collect()
        })
        .unwrap_or_default();
    let exits: Vec<Option<i32>> = runtimes
        .iter_mut()
        .map(|r| r.terminate(Duration::from_secs(30)))
        .collect();
    let result = json!({
        "ordinary_tasks": n,
        "faults": events,
        "seconds_from_first_poison_delivery_to_dead_letter": window.as_secs_f64(),
        "trajectories_written_meanwhile": flowed,
        "elapsed_s": elapsed.as_secs_f64(),
        "poison_trajectory": {
            "success": poison.success,
            "error_type": poison.error_type.map(ErrorType::as_str),
            "error_message": poison.error_message,
            "attempt": poison.metadata.get("attempt"),
            "dead_lettered": poison.metadata.get("dead_lettered"),
        },
        "dead_letter_fields": dead_fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "exit_codes_after_sigterm": exits,
        "ledger": ledger.to_json(),
    });
    report::save("poison", &result);

    assert_eq!(punished, BTreeSet::from([1, 2, 3]), "{result:#}");
    assert_eq!(ledger.dead, 1, "{result:#}");
    assert!(!poison.success);
    assert_eq!(poison.error_type, Some(ErrorType::SystemError));
    assert_eq!(poison.metadata.get("dead_lettered"), Some(&json!(true)));
    assert_eq!(
        poison.metadata.get("attempt"),
        Some(&json!(4)),
        "{result:#}"
    );
    assert_eq!(
        watch.snapshot().per_task.get(POISON).copied(),
        Some(1),
        "the poison's only trajectory is the dead-letter one"
    );
    // Everything else completed, each once.
    assert_eq!(ledger.missing, Vec::<String>::new());
    assert!(ledger.temp_files.is_empty() && ledger.malformed.is_empty());
    assert_eq!(ledger.failed, vec![POISON.to_owned()], "{result:#}");
    assert_eq!((ledger.code_stream.pending, ledger.code_stream.lag), (0, 0));
    assert!(flowed > 0, "other tasks kept flowing: {result:#}");
    assert!(exits.iter().all(|c| *c == Some(0)), "{exits:?}");
}

/// SIGKILL (works on a stopped process too) and start again.
fn restart(r: &mut Service) {
    r.kill();
    std::thread::sleep(Duration::from_millis(300));
    r.start();
}

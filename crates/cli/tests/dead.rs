//! `adp dead`: list / show / drop on a real tasks:dead stream, and the
//! requeue round trip through a real `adp_core::queue::Worker`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adp_core::metrics::Metrics;
use adp_core::queue::{Queue, TaskContext, TaskHandler, Worker, WorkerConfig};
use adp_core::writer::TrajectoryWriter;
use adp_core::{InfraError, TaskSpec, TaskType, Trajectory};
use common::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[test]
fn list_show_and_drop() {
    let f = Fixture::new();
    let mut c = f.conn();
    let a = task("dead_a", TaskType::Code);
    let b = task("dead_b", TaskType::Web);
    let id_a = xadd_dead(
        &mut c,
        &a,
        "1-0",
        "3 attempts failed on infrastructure; last: sandbox failure: nsjail missing",
    );
    let id_b = xadd_dead(&mut c, &b, "2-0", "delivered 4 times without completing");
    let mut t = code_traj("dead_a", false, Some(adp_core::ErrorType::SystemError), 0);
    t.meta("dead_lettered", true);
    t.meta(
        "infra_errors",
        serde_json::json!([{"attempt": 1, "component": "sandbox", "error": "nsjail missing"}]),
    );
    f.write_traj(&t);

    let o = f.adp(&["dead", "list"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains(&id_a) && text.contains("dead_a") && text.contains("tasks:code"),
        "{text}"
    );
    assert!(
        text.contains(&id_b) && text.contains("dead_b") && text.contains("tasks:web"),
        "{text}"
    );
    assert!(text.contains("2 shown, 2 in tasks:dead"), "{text}");

    let o = f.adp(&["dead", "list", "--json", "--stream", "tasks:web"]);
    assert_code(&o, 0);
    let list: Vec<Value> = serde_json::from_str(&stdout(&o)).expect("JSON list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id_b.as_str());
    assert_eq!(list[0]["task_id"], "dead_b");
    assert_eq!(list[0]["source_id"], "2-0");
    assert_eq!(list[0]["deliveries"], 3);
    assert_eq!(list[0]["task"]["description"], "Task dead_b");

    let o = f.adp(&["dead", "show", &id_a]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(text.contains("task_id:      dead_a"), "{text}");
    assert!(text.contains("nsjail missing"), "{text}");
    assert!(
        text.contains("attempt 1: sandbox: nsjail missing"),
        "infra errors from the trajectory: {text}"
    );
    assert!(text.contains("dead_lettered=true"), "{text}");

    let o = f.adp(&["dead", "show", "--json", &id_a]);
    assert_code(&o, 0);
    let v = stdout_json(&o);
    assert_eq!(v["entry"]["task_id"], "dead_a");
    assert_eq!(v["trajectory"]["exists"], true);
    assert_eq!(v["trajectory"]["dead_lettered"], true);

    let o = f.adp(&["dead", "show", "99-0"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("no such entry"), "{}", stderr(&o));

    let o = f.adp(&["dead", "drop", &id_a, "99-0"]);
    assert_code(&o, 1);
    assert!(stdout(&o).contains(&format!("dropped {id_a}")));
    assert!(stderr(&o).contains("99-0: no such entry"));
    assert_eq!(stream_ids(&mut c, "tasks:dead"), vec![id_b.clone()]);

    let o = f.adp(&["dead", "drop", "--all"]);
    assert_code(&o, 0);
    assert!(stream_ids(&mut c, "tasks:dead").is_empty());
}

/// Fails with an infrastructure error while `fail` is set, else succeeds.
struct Flaky {
    fail: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl TaskHandler for Flaky {
    async fn handle(&self, task: TaskSpec, ctx: TaskContext) -> Result<Trajectory, InfraError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(InfraError::new(
                "sandbox",
                format!("sandbox down (attempt {})", ctx.attempt),
            ));
        }
        let mut t = Trajectory::new(&task, "sandbox-runtime");
        t.success = true;
        t.final_result = "ok".into();
        t.meta("policy", "scripted");
        Ok(t)
    }
}

fn worker_config(redis_url: &str) -> WorkerConfig {
    WorkerConfig {
        runtime: "sandbox-runtime",
        streams: vec!["tasks:code"],
        consumer: "test-worker".into(),
        concurrency: 1,
        max_deliveries: 2,
        claim_idle: Duration::from_secs(30),
        retry_backoff: Duration::from_millis(20),
        retry_backoff_max: Duration::from_millis(200),
        infra_retry_window: Duration::ZERO,
        grace: Duration::from_secs(2),
        read_block: Duration::from_millis(100),
        write_gather: Duration::ZERO,
        redis_url: redis_url.to_owned(),
    }
}

fn counter(c: &mut redis::Connection, field: &str) -> Option<i64> {
    redis::cmd("HGET")
        .arg("adp:counters")
        .arg(field)
        .query(c)
        .expect("HGET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_round_trip_through_a_worker() {
    let f = Fixture::new();
    let fail = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let start_worker = || async {
        let conn = adp_core::config::connect(&f.redis.url())
            .await
            .expect("connect");
        let worker = Worker::new(
            worker_config(&f.redis.url()),
            Flaky {
                fail: fail.clone(),
                calls: calls.clone(),
            },
            Queue::new(conn),
            TrajectoryWriter::new(f.output_dir()),
            Metrics::new(),
        );
        let shutdown = CancellationToken::new();
        (shutdown.clone(), tokio::spawn(worker.run(shutdown.clone())))
    };
    let (shutdown, running) = start_worker().await;

    let mut c = f.conn();
    let t = task("flaky_1", TaskType::Code);
    let first_entry = xadd_task(&mut c, &t);

    // Two infrastructure failures with MAX_DELIVERIES=2: dead-lettered, with a
    // system_error trajectory.
    let traj_path = f.traj_dir().join("flaky_1.json");
    test_support::eventually(Duration::from_secs(20), || {
        let mut c = f.conn();
        let path = traj_path.clone();
        async move { path.exists() && stream_ids(&mut c, "tasks:dead").len() == 1 }
    })
    .await
    .expect("dead-lettered");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let dead = f.read_traj("flaky_1");
    assert_eq!(dead["error_type"], "system_error");
    assert_eq!(dead["metadata"]["dead_lettered"], true);
    let dead_id = stream_ids(&mut c, "tasks:dead").remove(0);

    let o = f.adp(&["dead", "show", "--json", &dead_id]);
    assert_code(&o, 0);
    let shown = stdout_json(&o);
    assert_eq!(shown["entry"]["source_id"], first_entry.as_str());
    assert_eq!(shown["entry"]["deliveries"], 2);

    // The infrastructure is back; requeue (with the worker stopped, so the
    // new entry can be looked at before it is run, acked and deleted).
    shutdown.cancel();
    running.await.expect("join").expect("worker ran");
    fail.store(false, Ordering::SeqCst);
    let o = f.adp(&["dead", "requeue", &dead_id]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains("requeued") && text.contains("flaky_1.attempt-1.json"),
        "{text}"
    );
    assert!(
        stream_ids(&mut c, "tasks:dead").is_empty(),
        "dead entry removed"
    );
    assert_eq!(counter(&mut c, "dead_requeued:tasks:code"), Some(1));

    // The new entry is a different entry carrying requeued_from.
    let entries = stream_tasks(&mut c, "tasks:code");
    assert_eq!(entries.len(), 1, "the dead-lettered entry left the stream");
    assert_ne!(entries[0].0, first_entry);
    let requeued_from: Option<String> = redis::cmd("XRANGE")
        .arg("tasks:code")
        .arg(&entries[0].0)
        .arg(&entries[0].0)
        .query::<redis::streams::StreamRangeReply>(&mut c)
        .expect("XRANGE")
        .ids[0]
        .get("requeued_from");
    assert_eq!(requeued_from.as_deref(), Some(dead_id.as_str()));

    // A worker processes the requeued entry to a fresh trajectory; its
    // delivery count started again at 1.
    let (shutdown, running) = start_worker().await;
    test_support::eventually(Duration::from_secs(20), || {
        let path = traj_path.clone();
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["success"] == true)
        }
    })
    .await
    .expect("fresh trajectory");
    let fresh = f.read_traj("flaky_1");
    assert_eq!(fresh["metadata"]["attempt"], 1, "delivery count reset");
    assert_eq!(fresh["final_result"], "ok");
    let archived: Value = serde_json::from_str(
        &std::fs::read_to_string(f.traj_dir().join("flaky_1.attempt-1.json")).expect("archive"),
    )
    .expect("JSON");
    assert_eq!(archived["metadata"]["dead_lettered"], true);

    // Everything is acked (just after the write), and acked entries are deleted.
    test_support::eventually(Duration::from_secs(20), || {
        let mut c = f.conn();
        async move { stream_tasks(&mut c, "tasks:code").is_empty() }
    })
    .await
    .expect("acked and deleted");
    let o = f.adp(&["status", "--json"]);
    let s = stdout_json(&o);
    assert_eq!(s["streams"][0]["acked"], 2);
    assert_eq!(s["streams"][0]["backlog"], 0);
    assert_eq!(s["streams"][0]["succeeded"], 1);

    shutdown.cancel();
    running.await.expect("join").expect("worker ran");
}

#[test]
fn requeue_refuses_without_force_when_a_real_trajectory_exists() {
    let f = Fixture::new();
    let mut c = f.conn();
    let t = task("done_1", TaskType::Code);
    let dead_id = xadd_dead(&mut c, &t, "5-0", "delivered 4 times without completing");
    // The task got a real result meanwhile (e.g. replayed by hand).
    f.write_traj(&code_traj("done_1", true, None, 1));

    let o = f.adp(&["dead", "requeue", &dead_id]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        stream_ids(&mut c, "tasks:dead"),
        vec![dead_id.clone()],
        "still dead"
    );
    assert!(
        stream_ids(&mut c, "tasks:code").is_empty(),
        "nothing queued"
    );
    assert!(!f.traj_dir().join("done_1.attempt-1.json").exists());

    // --dry-run with --force changes nothing either.
    let o = f.adp(&["dead", "requeue", "--force", "--dry-run", &dead_id]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("would requeue"));
    assert_eq!(stream_ids(&mut c, "tasks:dead").len(), 1);

    let o = f.adp(&["dead", "requeue", "--force", &dead_id]);
    assert_code(&o, 0);
    assert!(stream_ids(&mut c, "tasks:dead").is_empty());
    let queued = stream_tasks(&mut c, "tasks:code");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1, t, "the same task, unchanged");
    assert!(
        f.traj_dir().join("done_1.attempt-1.json").exists(),
        "old result kept"
    );
    assert!(!f.traj_dir().join("done_1.json").exists());
    assert_eq!(counter(&mut c, "dead_requeued:tasks:code"), Some(1));
}

#[test]
fn requeue_all_by_stream_and_unknown_ids() {
    let f = Fixture::new();
    let mut c = f.conn();
    let a = xadd_dead(&mut c, &task("a1", TaskType::Code), "1-0", "x");
    xadd_dead(&mut c, &task("w1", TaskType::Web), "2-0", "x");
    xadd_dead(&mut c, &task("w2", TaskType::Web), "3-0", "x");

    let o = f.adp(&["dead", "requeue", "--all", "--stream", "tasks:web"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("2 requeued"), "{}", stdout(&o));
    assert_eq!(stream_ids(&mut c, "tasks:dead"), vec![a.clone()]);
    assert_eq!(stream_ids(&mut c, "tasks:web").len(), 2);
    assert_eq!(counter(&mut c, "dead_requeued:tasks:web"), Some(2));

    let o = f.adp(&["dead", "requeue", "77-0", &a]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("77-0: no such entry"));
    assert_eq!(
        stream_ids(&mut c, "tasks:code").len(),
        1,
        "the known one was still requeued"
    );

    let o = f.adp(&["dead", "requeue"]);
    assert_code(&o, 2);
}

/// A dead letter of rollout 1 of task `t` in run `r1` is checked against
/// that rollout's file (`runs/r1/trajectories/t@1.json`), not `t.json` of the
/// default run: a real result there refuses the requeue without --force,
/// and --force keeps it as `t@1.attempt-1.json`.
#[test]
fn requeue_of_a_rollout_checks_and_keeps_its_own_file() {
    let f = Fixture::new();
    let mut c = f.conn();
    let mut t = task("t", TaskType::Code);
    t.run_id = Some("r1".into());
    t.rollout = Some(1);
    let dead_id = xadd_dead(&mut c, &t, "5-0", "delivered 4 times without completing");
    let dir = f.output_dir().join("runs/r1/trajectories");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut result = code_traj("t", true, None, 1);
    result.task = Some(t.clone());
    std::fs::write(
        dir.join("t@1.json"),
        serde_json::to_vec_pretty(&result).expect("json"),
    )
    .expect("write");

    let o = f.adp(&["dead", "requeue", &dead_id]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("t@1.json"), "{}", stderr(&o));
    assert!(
        stream_ids(&mut c, "tasks:code").is_empty(),
        "nothing queued"
    );

    let o = f.adp(&["dead", "requeue", "--force", &dead_id]);
    assert_code(&o, 0);
    assert!(dir.join("t@1.attempt-1.json").exists(), "old result kept");
    assert!(!dir.join("t@1.json").exists());
    let queued = stream_tasks(&mut c, "tasks:code");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1, t, "the same task: run r1, rollout 1");
}

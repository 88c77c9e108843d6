//! The stream worker against a real redis-server: ack after the trajectory is
//! on disk, re-claim of an entry whose consumer died, retries of
//! infrastructure failures, dead-lettering after MAX_DELIVERIES, and a Redis
//! restart under a running worker.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use adp_core::metrics::Metrics;
use adp_core::names;
use common::*;
use redis::Commands;
use test_support::{eventually, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_only_after_the_trajectory_is_written() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, calls) = handler(0);
    let worker = start_worker(&redis, "w1", h, out.path(), Metrics::new()).await;
    for i in 0..5 {
        enqueue(&redis, &task(&format!("t{i}")));
    }
    eventually(Duration::from_secs(10), || async {
        (0..5).all(|i| read_trajectory(out.path(), &format!("t{i}")).is_some())
            && pending_count(&redis, names::STREAM_CODE) == 0
    })
    .await
    .expect("all five written and acked");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let t = read_trajectory(out.path(), "t0").expect("t0");
    assert_eq!(t.metadata["attempt"], 1);
    assert_eq!(t.metadata["worker"], "w1");
    assert!(t.task.is_some(), "the task is recorded with its trajectory");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_of_a_dead_consumer_is_reclaimed_after_the_visibility_timeout() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    ensure_group(&redis).await;
    let id = enqueue(&redis, &task("orphan"));
    // A consumer takes the entry and dies without acking.
    deliver_to_dead_consumers(&redis, &id, &["dead-consumer"]).await;
    assert_eq!(pending_count(&redis, names::STREAM_CODE), 1);

    let metrics = Metrics::new();
    let (h, _) = handler(0);
    let worker = start_worker(&redis, "w2", h, out.path(), metrics.clone()).await;
    let t = wait_for_trajectory(
        out.path(),
        "orphan",
        Duration::from_secs(10),
        "re-claimed and completed",
    )
    .await;
    assert_eq!(t.metadata["attempt"], 2, "second delivery");
    assert_eq!(
        metrics
            .tasks_reclaimed_total
            .with_label_values(&["test-runtime"])
            .get(),
        1
    );
    eventually(Duration::from_secs(5), || async {
        pending_count(&redis, names::STREAM_CODE) == 0
    })
    .await
    .expect("acked");
    worker.stop().await;
}

/// A temp file as a writer killed mid-write leaves it, last modified `age` ago.
fn temp_file(dir: &std::path::Path, name: &str, age: Duration) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join(format!("{}{name}", adp_core::writer::TEMP_PREFIX));
    test_support::aged_file(&path, age);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_of_killed_writers_are_swept_at_start_and_after_a_reclaim() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let dir = out.path().join("trajectories");
    ensure_group(&redis).await;
    let old = temp_file(&dir, "before-start", Duration::from_secs(3600));
    let live = temp_file(&dir, "being-written", Duration::ZERO);

    let (h, _) = handler(0);
    let worker = start_worker(&redis, "sweeper", h, out.path(), Metrics::new()).await;
    eventually(Duration::from_secs(5), || async { !old.exists() })
        .await
        .expect("an old temp file is removed when the worker starts");
    assert!(live.exists(), "a fresh temp file may be a live write: kept");
    worker.stop().await;
    std::fs::remove_file(&live).expect("rm");

    // A consumer takes an entry, starts writing its trajectory and dies. The
    // next worker starts while that file is still fresh (kept), re-claims
    // the entry once it has been idle for CLAIM_IDLE, and sweeps then.
    let id = enqueue(&redis, &task("half-written"));
    deliver_to_dead_consumers(&redis, &id, &["killed-mid-write"]).await;
    let left = temp_file(&dir, "half-written", Duration::ZERO);
    let (h, _) = handler(0);
    let worker = start_worker(&redis, "sweeper-2", h, out.path(), Metrics::new()).await;
    wait_for_trajectory(
        out.path(),
        "half-written",
        Duration::from_secs(10),
        "re-claimed",
    )
    .await;
    eventually(Duration::from_secs(10), || async { !left.exists() })
        .await
        .expect("the dead writer's temp file is removed after its entry is re-claimed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_failure_is_retried_and_recorded() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, calls) = handler(1);
    let worker = start_worker(&redis, "w3", h, out.path(), Metrics::new()).await;
    enqueue(&redis, &task("flaky"));
    let t = wait_for_trajectory(
        out.path(),
        "flaky",
        Duration::from_secs(10),
        "completed on retry",
    )
    .await;
    assert!(
        t.success,
        "an infra failure is not recorded as the agent's failure"
    );
    assert_eq!(t.metadata["attempt"], 2);
    assert_eq!(t.metadata["infra_errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let mut c = redis.client();
    assert_eq!(c.xlen::<_, usize>(names::STREAM_DEAD).expect("xlen"), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_infra_failure_is_dead_lettered_after_max_deliveries() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, calls) = handler(u32::MAX);
    let metrics = Metrics::new();
    let worker = start_worker(&redis, "w4", h, out.path(), metrics.clone()).await;
    let id = enqueue(&redis, &task("poison"));
    wait_for_dead_letter(&redis, Duration::from_secs(15)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "exactly MAX_DELIVERIES attempts"
    );
    let t = read_trajectory(out.path(), "poison").expect("failed trajectory written");
    assert!(!t.success);
    assert_eq!(t.error_type, Some(adp_core::ErrorType::SystemError));
    assert_eq!(t.metadata["attempt"], 3);
    assert_eq!(t.metadata["infra_errors"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        pending_count(&redis, names::STREAM_CODE),
        0,
        "acked with the dead-letter"
    );
    let mut c = redis.client();
    let dead: redis::streams::StreamRangeReply = c.xrange_all(names::STREAM_DEAD).expect("range");
    let entry = &dead.ids[0];
    let field = |k: &str| -> String { entry.get(k).expect(k) };
    assert_eq!(field("source_stream"), names::STREAM_CODE);
    assert_eq!(field("source_id"), id);
    assert_eq!(field("deliveries"), "3");
    assert!(field("task").contains("poison"));
    assert_eq!(
        metrics
            .dead_lettered_total
            .with_label_values(&["test-runtime"])
            .get(),
        1
    );
    let infra_key_exists: bool = c
        .exists(names::infra_errors_key(names::STREAM_CODE, &id))
        .expect("exists");
    assert!(
        !infra_key_exists,
        "bookkeeping removed with the dead letter"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_that_crashed_every_consumer_is_dead_lettered_without_running() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    ensure_group(&redis).await;
    let id = enqueue(&redis, &task("crasher"));
    // Three consumers took it in turn and died (delivery count 3).
    deliver_to_dead_consumers(&redis, &id, &["dead-1", "dead-2", "dead-3"]).await;
    let (h, calls) = handler(0);
    let worker = start_worker(&redis, "w5", h, out.path(), Metrics::new()).await;
    wait_for_dead_letter(&redis, Duration::from_secs(10)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a poison entry is not run a fourth time"
    );
    let t = read_trajectory(out.path(), "crasher").expect("trajectory");
    assert_eq!(t.error_type, Some(adp_core::ErrorType::SystemError));
    assert!(t
        .error_message
        .unwrap_or_default()
        .contains("delivered 4 times"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, _) = handler(0);
    let worker = start_worker(&redis, "w6", h, out.path(), Metrics::new()).await;
    enqueue(&redis, &task("before"));
    wait_for_trajectory(
        out.path(),
        "before",
        Duration::from_secs(10),
        "before restart",
    )
    .await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.start_again();
    enqueue(&redis, &task("after"));
    wait_for_trajectory(
        out.path(),
        "after",
        Duration::from_secs(20),
        "worker reconnected without a restart",
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_unfinished_entries_pending() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (mut slow, calls) = handler(0);
    slow.delay = Duration::from_secs(60);
    let mut cfg = config(&redis, "w7");
    cfg.grace = Duration::from_millis(300);
    let worker = start_worker_with(cfg, slow, out.path(), Metrics::new()).await;
    enqueue(&redis, &task("long"));
    eventually(Duration::from_secs(5), || async {
        calls.load(Ordering::SeqCst) == 1
    })
    .await
    .expect("started");
    tokio::time::timeout(Duration::from_secs(5), worker.stop())
        .await
        .expect("stops within the grace period");
    assert_eq!(
        pending_count(&redis, names::STREAM_CODE),
        1,
        "left un-acked for another replica"
    );
    assert!(read_trajectory(out.path(), "long").is_none());
}

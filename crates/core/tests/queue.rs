//! The stream worker against a real redis-server: ack after the trajectory is
//! on disk, re-claim of an entry whose consumer died, retries of
//! infrastructure failures, dead-lettering after MAX_DELIVERIES, and a Redis
//! restart under a running worker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adp_core::metrics::Metrics;
use adp_core::names;
use adp_core::queue::{Queue, TaskContext, TaskHandler, Worker, WorkerConfig};
use adp_core::types::{TaskSpec, Trajectory};
use adp_core::writer::TrajectoryWriter;
use adp_core::InfraError;
use redis::Commands;
use test_support::{eventually, RedisServer};
use tokio_util::sync::CancellationToken;

/// A handler whose behaviour the test sets: fail with an infra error for the
/// first `infra_failures` attempts, then succeed.
#[derive(Clone)]
struct TestHandler {
    calls: Arc<AtomicU32>,
    infra_failures: u32,
    delay: Duration,
}

impl TaskHandler for TestHandler {
    async fn handle(&self, task: TaskSpec, ctx: TaskContext) -> Result<Trajectory, InfraError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        if n <= self.infra_failures {
            return Err(InfraError::new("sandbox", format!("simulated failure {n}")));
        }
        let mut t = Trajectory::new(&task, "test-runtime");
        t.success = true;
        t.final_result = format!("done on attempt {}", ctx.attempt);
        Ok(t)
    }
}

fn task(id: &str) -> TaskSpec {
    serde_json::from_value(
        serde_json::json!({"task_id": id, "task_type": "code", "description": "d"}),
    )
    .expect("task")
}

fn enqueue(redis: &RedisServer, t: &TaskSpec) -> String {
    let mut c = redis.client();
    c.xadd(
        names::STREAM_CODE,
        "*",
        &[
            ("task", serde_json::to_string(t).expect("json")),
            ("submitted_at", "1.0".to_owned()),
            ("priority", "1".to_owned()),
        ],
    )
    .expect("xadd")
}

fn config(redis: &RedisServer, consumer: &str) -> WorkerConfig {
    WorkerConfig {
        runtime: "test-runtime",
        streams: vec![names::STREAM_CODE],
        consumer: consumer.to_owned(),
        concurrency: 2,
        max_deliveries: 3,
        claim_idle: Duration::from_millis(1500),
        retry_backoff: Duration::from_millis(50),
        grace: Duration::from_secs(5),
        read_block: Duration::from_millis(300),
        redis_url: redis.url(),
    }
}

async fn start_worker(
    redis: &RedisServer,
    consumer: &str,
    handler: TestHandler,
    out: &std::path::Path,
    metrics: Metrics,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let worker = Worker::new(
        config(redis, consumer),
        handler,
        Queue::new(conn),
        TrajectoryWriter::new(out),
        metrics,
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move {
        worker.run(s).await.expect("worker run");
    });
    (stop, h)
}

fn pending_count(redis: &RedisServer, stream: &str) -> usize {
    let mut c = redis.client();
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(names::GROUP)
        .query(&mut c)
        .expect("xpending");
    match v {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as usize,
            _ => 0,
        },
        _ => 0,
    }
}

fn read_trajectory(out: &std::path::Path, id: &str) -> Option<Trajectory> {
    let text = std::fs::read_to_string(out.join("trajectories").join(format!("{id}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn handler(infra_failures: u32) -> (TestHandler, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    (
        TestHandler {
            calls: calls.clone(),
            infra_failures,
            delay: Duration::from_millis(10),
        },
        calls,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_only_after_the_trajectory_is_written() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, calls) = handler(0);
    let (stop, join) = start_worker(&redis, "w1", h, out.path(), Metrics::new()).await;
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
    stop.cancel();
    join.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_of_a_dead_consumer_is_reclaimed_after_the_visibility_timeout() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    Queue::new(conn)
        .ensure_groups(&[names::STREAM_CODE])
        .await
        .expect("group");
    enqueue(&redis, &task("orphan"));
    // A consumer takes the entry and dies without acking.
    let mut c = redis.client();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(names::GROUP)
        .arg("dead-consumer")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(names::STREAM_CODE)
        .arg(">")
        .query(&mut c)
        .expect("read");
    assert_eq!(pending_count(&redis, names::STREAM_CODE), 1);

    let metrics = Metrics::new();
    let (h, _) = handler(0);
    let (stop, join) = start_worker(&redis, "w2", h, out.path(), metrics.clone()).await;
    eventually(Duration::from_secs(10), || async {
        read_trajectory(out.path(), "orphan").is_some()
    })
    .await
    .expect("re-claimed and completed");
    let t = read_trajectory(out.path(), "orphan").expect("trajectory");
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
    stop.cancel();
    join.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_failure_is_retried_and_recorded() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, calls) = handler(1);
    let (stop, join) = start_worker(&redis, "w3", h, out.path(), Metrics::new()).await;
    enqueue(&redis, &task("flaky"));
    eventually(Duration::from_secs(10), || async {
        read_trajectory(out.path(), "flaky").is_some()
    })
    .await
    .expect("completed on retry");
    let t = read_trajectory(out.path(), "flaky").expect("trajectory");
    assert!(
        t.success,
        "an infra failure is not recorded as the agent's failure"
    );
    assert_eq!(t.metadata["attempt"], 2);
    assert_eq!(t.metadata["infra_errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let mut c = redis.client();
    assert_eq!(c.xlen::<_, usize>(names::STREAM_DEAD).expect("xlen"), 0);
    stop.cancel();
    join.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_infra_failure_is_dead_lettered_after_max_deliveries() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, calls) = handler(u32::MAX);
    let metrics = Metrics::new();
    let (stop, join) = start_worker(&redis, "w4", h, out.path(), metrics.clone()).await;
    let id = enqueue(&redis, &task("poison"));
    eventually(Duration::from_secs(15), || async {
        let mut c = redis.client();
        c.xlen::<_, usize>(names::STREAM_DEAD).unwrap_or(0) == 1
    })
    .await
    .expect("dead-lettered");
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
    stop.cancel();
    join.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_that_crashed_every_consumer_is_dead_lettered_without_running() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    Queue::new(conn)
        .ensure_groups(&[names::STREAM_CODE])
        .await
        .expect("group");
    let id = enqueue(&redis, &task("crasher"));
    let mut c = redis.client();
    // Three consumers took it in turn and died (delivery count 3).
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(names::GROUP)
        .arg("dead-1")
        .arg("STREAMS")
        .arg(names::STREAM_CODE)
        .arg(">")
        .query(&mut c)
        .expect("read");
    for who in ["dead-2", "dead-3"] {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(names::STREAM_CODE)
            .arg(names::GROUP)
            .arg(who)
            .arg(0)
            .arg(&id)
            .query(&mut c)
            .expect("claim");
    }
    let (h, calls) = handler(0);
    let (stop, join) = start_worker(&redis, "w5", h, out.path(), Metrics::new()).await;
    eventually(Duration::from_secs(10), || async {
        let mut c = redis.client();
        c.xlen::<_, usize>(names::STREAM_DEAD).unwrap_or(0) == 1
    })
    .await
    .expect("dead-lettered");
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
    stop.cancel();
    join.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, _) = handler(0);
    let (stop, join) = start_worker(&redis, "w6", h, out.path(), Metrics::new()).await;
    enqueue(&redis, &task("before"));
    eventually(Duration::from_secs(10), || async {
        read_trajectory(out.path(), "before").is_some()
    })
    .await
    .expect("before restart");
    redis.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.start_again();
    enqueue(&redis, &task("after"));
    eventually(Duration::from_secs(20), || async {
        read_trajectory(out.path(), "after").is_some()
    })
    .await
    .expect("worker reconnected without a restart");
    stop.cancel();
    join.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_unfinished_entries_pending() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let calls = Arc::new(AtomicU32::new(0));
    let slow = TestHandler {
        calls: calls.clone(),
        infra_failures: 0,
        delay: Duration::from_secs(60),
    };
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let mut cfg = config(&redis, "w7");
    cfg.grace = Duration::from_millis(300);
    let worker = Worker::new(
        cfg,
        slow,
        Queue::new(conn),
        TrajectoryWriter::new(out.path()),
        Metrics::new(),
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let join = tokio::spawn(async move { worker.run(s).await });
    enqueue(&redis, &task("long"));
    eventually(Duration::from_secs(5), || async {
        calls.load(Ordering::SeqCst) == 1
    })
    .await
    .expect("started");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("stops within the grace period")
        .expect("join")
        .expect("ok");
    assert_eq!(
        pending_count(&redis, names::STREAM_CODE),
        1,
        "left un-acked for another replica"
    );
    assert!(read_trajectory(out.path(), "long").is_none());
}

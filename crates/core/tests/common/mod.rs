//! Helpers of the worker tests: a scripted handler, entries put straight
//! into a stream, a worker running in a task, waits on Redis and files.
#![allow(dead_code)]

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
pub struct TestHandler {
    pub calls: Arc<AtomicU32>,
    pub infra_failures: u32,
    pub delay: Duration,
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

pub fn task(id: &str) -> TaskSpec {
    serde_json::from_value(
        serde_json::json!({"task_id": id, "task_type": "code", "description": "d"}),
    )
    .expect("task")
}

pub fn enqueue(redis: &RedisServer, t: &TaskSpec) -> String {
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

pub fn config(redis: &RedisServer, consumer: &str) -> WorkerConfig {
    WorkerConfig {
        runtime: "test-runtime",
        streams: vec![names::STREAM_CODE],
        consumer: consumer.to_owned(),
        concurrency: 2,
        max_deliveries: 3,
        claim_idle: Duration::from_millis(1500),
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(200),
        infra_retry_window: Duration::ZERO,
        grace: Duration::from_secs(5),
        read_block: Duration::from_millis(300),
        write_gather: Duration::ZERO,
        redis_url: redis.url(),
    }
}

/// A worker running in a task of its own.
pub struct RunningWorker {
    pub stop: CancellationToken,
    pub join: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Cancels the worker and waits until `run` returned.
    pub async fn stop(self) {
        self.stop.cancel();
        self.join.await.expect("join");
    }
}

pub async fn start_worker(
    redis: &RedisServer,
    consumer: &str,
    handler: TestHandler,
    out: &std::path::Path,
    metrics: Metrics,
) -> RunningWorker {
    start_worker_with(config(redis, consumer), handler, out, metrics).await
}

pub async fn start_worker_with<H: TaskHandler>(
    config: WorkerConfig,
    handler: H,
    out: &std::path::Path,
    metrics: Metrics,
) -> RunningWorker {
    let worker = Worker::new(
        config.clone(),
        handler,
        Queue::new(connect(&config.redis_url).await),
        TrajectoryWriter::new(out),
        metrics,
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let join = tokio::spawn(async move {
        worker.run(s).await.expect("worker run");
    });
    RunningWorker { stop, join }
}

pub async fn connect(redis_url: &str) -> redis::aio::ConnectionManager {
    adp_core::config::connect(redis_url).await.expect("connect")
}

/// Creates the consumer group, then lets `consumers` take the one entry of
/// the code stream in turn and die without acking (delivery count =
/// `consumers.len()`).
pub async fn deliver_to_dead_consumers(redis: &RedisServer, id: &str, consumers: &[&str]) {
    let mut c = redis.client();
    let (first, others) = consumers.split_first().expect("a consumer");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(names::GROUP)
        .arg(*first)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(names::STREAM_CODE)
        .arg(">")
        .query(&mut c)
        .expect("read");
    for who in others {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(names::STREAM_CODE)
            .arg(names::GROUP)
            .arg(*who)
            .arg(0)
            .arg(id)
            .query(&mut c)
            .expect("claim");
    }
}

pub async fn ensure_group(redis: &RedisServer) {
    Queue::new(connect(&redis.url()).await)
        .ensure_groups(&[names::STREAM_CODE])
        .await
        .expect("group");
}

/// Waits until the trajectory of `id` is on disk; `what` names the condition.
pub async fn wait_for_trajectory(
    out: &std::path::Path,
    id: &str,
    within: Duration,
    what: &str,
) -> Trajectory {
    eventually(within, || async { read_trajectory(out, id).is_some() })
        .await
        .expect(what);
    read_trajectory(out, id).expect("trajectory")
}

/// Waits until `tasks:dead` holds one entry.
pub async fn wait_for_dead_letter(redis: &RedisServer, within: Duration) {
    eventually(within, || async {
        let mut c = redis.client();
        c.xlen::<_, usize>(names::STREAM_DEAD).unwrap_or(0) == 1
    })
    .await
    .expect("dead-lettered");
}

pub fn pending_count(redis: &RedisServer, stream: &str) -> usize {
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

pub fn read_trajectory(out: &std::path::Path, id: &str) -> Option<Trajectory> {
    let text = std::fs::read_to_string(out.join("trajectories").join(format!("{id}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn handler(infra_failures: u32) -> (TestHandler, Arc<AtomicU32>) {
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

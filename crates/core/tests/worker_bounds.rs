//! The worker's bounds against a real redis-server: finished entries leave
//! the streams; entries deleted under it (XTRIM) are counted and lose no
//! result; Redis out of memory; a dependency outage dead-letters nothing
//! within INFRA_RETRY_WINDOW; no more entries held than slots over several
//! streams; an ack racing a re-claim; a trajectory that cannot be written;
//! task ids that look like temp files.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adp_core::metrics::Metrics;
use adp_core::names;
use adp_core::queue::{Queue, TaskContext, TaskHandler, WorkerConfig};
use adp_core::types::{TaskSpec, Trajectory};
use adp_core::writer::TrajectoryWriter;
use adp_core::InfraError;
use common::*;
use redis::Commands;
use test_support::{eventually, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};

/// Succeeds, but only once the test opens the gate.
#[derive(Clone)]
struct Gated {
    calls: Arc<AtomicU32>,
    gate: Arc<Semaphore>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            calls: Arc::new(AtomicU32::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

impl TaskHandler for Gated {
    async fn handle(&self, task: TaskSpec, _ctx: TaskContext) -> Result<Trajectory, InfraError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _pass = self.gate.acquire().await;
        let mut t = Trajectory::new(&task, "test-runtime");
        t.success = true;
        Ok(t)
    }
}

/// Fails with an `llm` infrastructure error while `down` is set.
#[derive(Clone)]
struct Outage {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl TaskHandler for Outage {
    async fn handle(&self, task: TaskSpec, _ctx: TaskContext) -> Result<Trajectory, InfraError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(InfraError::new("llm", "connection refused (endpoint down)"));
        }
        let mut t = Trajectory::new(&task, "test-runtime");
        t.success = true;
        Ok(t)
    }
}

fn enqueue_on(redis: &RedisServer, stream: &str, t: &TaskSpec) -> String {
    let mut c = redis.client();
    c.xadd(
        stream,
        "*",
        &[
            ("task", serde_json::to_string(t).expect("json")),
            ("submitted_at", "1.0".to_owned()),
            ("priority", "1".to_owned()),
        ],
    )
    .expect("xadd")
}

fn xlen(redis: &RedisServer, stream: &str) -> u64 {
    redis.client().xlen(stream).expect("xlen")
}

fn all_written(out: &std::path::Path, ids: &[String]) -> bool {
    ids.iter().all(|id| read_trajectory(out, id).is_some())
}

fn gone(metrics: &Metrics) -> u64 {
    metrics
        .entries_gone_total
        .with_label_values(&["test-runtime"])
        .get()
}

fn infra_failures(metrics: &Metrics, component: &str) -> u64 {
    metrics
        .infra_failures_total
        .with_label_values(&["test-runtime", component])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_entries_leave_the_stream() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let mut cfg = config(&redis, "bounded");
    cfg.concurrency = 4;
    let (h, _) = handler(0);
    let worker = start_worker_with(cfg, h, out.path(), Metrics::new()).await;
    let ids: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    for id in &ids {
        enqueue(&redis, &task(id));
    }
    eventually(Duration::from_secs(30), || async {
        all_written(out.path(), &ids) && pending_count(&redis, names::STREAM_CODE) == 0
    })
    .await
    .expect("all written and acked");
    assert_eq!(
        xlen(&redis, names::STREAM_CODE),
        0,
        "acked entries are deleted"
    );
    let state = Queue::new(connect(&redis.url()).await)
        .group_state(names::STREAM_CODE)
        .await
        .expect("state")
        .expect("group");
    assert_eq!(
        (state.length, state.added, state.backlog()),
        (0, 60, 0),
        "{state:?}"
    );
    let keys: Vec<String> = redis
        .client()
        .keys(format!("{}*", names::INFRA_ERRORS_PREFIX))
        .expect("keys");
    assert!(keys.is_empty(), "{keys:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_stays_right_when_the_last_delivered_entry_is_deleted() {
    let redis = RedisServer::start();
    ensure_group(&redis).await;
    let ids: Vec<String> = (0..5)
        .map(|i| enqueue(&redis, &task(&format!("b{i}"))))
        .collect();
    let mut c = redis.client();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(names::GROUP)
        .arg("reader")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(names::STREAM_CODE)
        .arg(">")
        .query(&mut c)
        .expect("read");
    let queue = Queue::new(connect(&redis.url()).await);
    // Redis stops reporting the lag once the last delivered entry is deleted.
    queue.ack(names::STREAM_CODE, &ids[1]).await.expect("ack");
    let state = queue
        .group_state(names::STREAM_CODE)
        .await
        .expect("state")
        .expect("group");
    assert_eq!(
        (state.length, state.added, state.pending, state.lag),
        (4, 5, 1, 3),
        "{state:?}"
    );
    assert_eq!(queue.backlog(names::STREAM_CODE).await.expect("backlog"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_starting_with_tmp_are_never_swept() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let (h, _) = handler(0);
    let worker = start_worker(&redis, "tmp-ids", h, out.path(), Metrics::new()).await;
    enqueue(&redis, &task(".tmp-abc123"));
    wait_for_trajectory(
        out.path(),
        ".tmp-abc123",
        Duration::from_secs(10),
        "written",
    )
    .await;
    worker.stop().await;

    let writer = TrajectoryWriter::new(out.path());
    let leftover = writer
        .dir()
        .join(format!("{}leftover", adp_core::writer::TEMP_PREFIX));
    test_support::aged_file(&leftover, Duration::from_secs(3600));
    assert_eq!(writer.remove_stale_temp_files(Duration::ZERO), 1);
    assert!(!leftover.exists(), "a writer's temp file is swept");
    assert!(
        read_trajectory(out.path(), ".tmp-abc123").is_some(),
        "the trajectory of task .tmp-abc123 is not a temp file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_two_streams_holds_no_more_entries_than_slots() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    let streams = [names::STREAM_CODE, names::STREAM_REASONING];
    Queue::new(connect(&redis.url()).await)
        .ensure_groups(&streams)
        .await
        .expect("groups");
    let mut ids = Vec::new();
    for i in 0..4 {
        for s in streams {
            let id = format!("{}-{i}", s.replace(':', "-"));
            enqueue_on(&redis, s, &task(&id));
            ids.push(id);
        }
    }
    let mut cfg = config(&redis, "two-streams");
    cfg.streams = streams.to_vec();
    cfg.concurrency = 2;
    let gated = Gated::new();
    let worker = start_worker_with(cfg, gated.clone(), out.path(), Metrics::new()).await;
    eventually(Duration::from_secs(10), || async {
        gated.calls.load(Ordering::SeqCst) == 2
    })
    .await
    .expect("two tasks running");
    let held: usize = streams.iter().map(|s| pending_count(&redis, s)).sum();
    assert_eq!(held, 2, "entries delivered to a worker with 2 slots");
    gated.open();
    eventually(Duration::from_secs(20), || async {
        all_written(out.path(), &ids)
    })
    .await
    .expect("all eight written");
    worker.stop().await;
}

/// A TCP proxy to Redis that holds the first `XPENDING <key> <group> <start>
/// <end> <count>` a client sends until the test releases it.
struct HoldingProxy {
    url: String,
    seen: Arc<Notify>,
    release: Arc<Notify>,
}

impl HoldingProxy {
    async fn start(redis_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let armed = Arc::new(AtomicBool::new(true));
        let (s, r) = (seen.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                });
                let (armed, seen, release) = (armed.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    let pattern = b"*6\r\n$8\r\nXPENDING\r\n";
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if chunk.windows(pattern.len()).any(|w| w == pattern)
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            seen.notify_one();
                            release.notified().await;
                        }
                        if server_tx.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HoldingProxy { url, seen, release }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_acked_while_being_reclaimed_keeps_its_trajectory() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    ensure_group(&redis).await;
    let id = enqueue(&redis, &task("raced"));
    deliver_to_dead_consumers(&redis, &id, &["slow-holder"]).await;
    let proxy = HoldingProxy::start(redis.port()).await;
    let mut cfg = config(&redis, "reclaimer");
    cfg.redis_url = proxy.url.clone();
    cfg.concurrency = 1;
    let (h, calls) = handler(0);
    let worker = start_worker_with(cfg, h, out.path(), Metrics::new()).await;
    // Once the entry is idle past CLAIM_IDLE the worker re-claims it and asks
    // for its delivery count: that question is held here...
    tokio::time::timeout(Duration::from_secs(30), proxy.seen.notified())
        .await
        .expect("XPENDING after XAUTOCLAIM");
    // ... while the slow holder finishes after all: trajectory, then ack.
    let mut good = Trajectory::new(&task("raced"), "test-runtime");
    good.success = true;
    good.final_result = "the slow holder's result".into();
    TrajectoryWriter::new(out.path())
        .write(&good)
        .await
        .expect("write");
    Queue::new(connect(&redis.url()).await)
        .ack(names::STREAM_CODE, &id)
        .await
        .expect("ack");
    proxy.release.notify_one();
    // One slot: a task queued now runs once the worker is past the re-claim.
    enqueue(&redis, &task("next"));
    wait_for_trajectory(out.path(), "next", Duration::from_secs(20), "next task").await;
    let t = read_trajectory(out.path(), "raced").expect("raced");
    assert!(
        t.success && t.final_result == "the slow holder's result",
        "the good trajectory was overwritten: {t:?}"
    );
    assert_eq!(xlen(&redis, names::STREAM_DEAD), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only `next` ran");
    worker.stop().await;
}

/// Makes the trajectory of `task_id` impossible to write: a non-empty
/// directory sits where its file goes (renaming onto it fails every time).
fn block_trajectory(out: &std::path::Path, task_id: &str) {
    let dir = out.join("trajectories").join(format!("{task_id}.json"));
    std::fs::create_dir_all(dir.join("occupied")).expect("mkdir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trajectory_that_cannot_be_written_is_dead_lettered_and_frees_its_slot() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    block_trajectory(out.path(), "unwritable");
    let mut cfg = config(&redis, "disk");
    cfg.concurrency = 1;
    cfg.max_deliveries = 2;
    cfg.retry_backoff = Duration::from_millis(20);
    let (h, _) = handler(0);
    let worker = start_worker_with(cfg, h, out.path(), Metrics::new()).await;
    enqueue(&redis, &task("unwritable"));
    enqueue(&redis, &task("after"));
    wait_for_dead_letter(&redis, Duration::from_secs(20)).await;
    wait_for_trajectory(
        out.path(),
        "after",
        Duration::from_secs(20),
        "the next task runs in the freed slot",
    )
    .await;
    let dead: redis::streams::StreamRangeReply = redis
        .client()
        .xrange_all(names::STREAM_DEAD)
        .expect("range");
    let task_json: String = dead.ids[0].get("task").expect("task");
    assert!(task_json.contains("unwritable"), "{task_json}");
    assert_eq!(xlen(&redis, names::STREAM_CODE), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_retrying_a_failed_write_does_not_hold_shutdown() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    block_trajectory(out.path(), "unwritable");
    let mut cfg = config(&redis, "disk-stop");
    cfg.concurrency = 1;
    cfg.infra_retry_window = Duration::from_secs(600);
    cfg.grace = Duration::from_secs(120);
    let metrics = Metrics::new();
    let (h, _) = handler(0);
    let worker = start_worker_with(cfg, h, out.path(), metrics.clone()).await;
    enqueue(&redis, &task("unwritable"));
    eventually(Duration::from_secs(20), || async {
        infra_failures(&metrics, "disk") >= 2
    })
    .await
    .expect("the write keeps failing");
    tokio::time::timeout(Duration::from_secs(30), worker.stop())
        .await
        .expect("stops without waiting out the 120 s grace period");
    assert_eq!(
        pending_count(&redis, names::STREAM_CODE),
        1,
        "handed back un-acked for another replica"
    );
    assert_eq!(xlen(&redis, names::STREAM_DEAD), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtrim_under_a_running_worker_loses_no_result_and_counts_what_is_gone() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    ensure_group(&redis).await;
    let ids: Vec<String> = (0..20).map(|i| format!("x{i:02}")).collect();
    for id in &ids {
        enqueue(&redis, &task(id));
    }
    // A consumer took x00 and x01 and died.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(names::GROUP)
        .arg("dead-consumer")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(names::STREAM_CODE)
        .arg(">")
        .query(&mut redis.client())
        .expect("read");
    let mut cfg = config(&redis, "trimmed");
    cfg.concurrency = 3;
    let metrics = Metrics::new();
    let gated = Gated::new();
    let worker = start_worker_with(cfg, gated.clone(), out.path(), metrics.clone()).await;
    eventually(Duration::from_secs(10), || async {
        gated.calls.load(Ordering::SeqCst) == 3
    })
    .await
    .expect("x02..x04 running");
    // An operator trims the stream: the 5 oldest entries go, 2 of a dead
    // consumer and the 3 being run.
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(names::STREAM_CODE)
        .arg("MAXLEN")
        .arg(15)
        .query(&mut redis.client())
        .expect("xtrim");
    assert_eq!(trimmed, 5);
    eventually(Duration::from_secs(10), || async { gone(&metrics) >= 3 })
        .await
        .expect("the heartbeats notice the running entries are gone");
    gated.open();
    let kept = &ids[2..];
    eventually(Duration::from_secs(30), || async {
        all_written(out.path(), kept) && gone(&metrics) == 5
    })
    .await
    .expect("every result written; the dead consumer's entries counted as gone");
    for lost in &ids[..2] {
        assert!(
            read_trajectory(out.path(), lost).is_none(),
            "no trajectory for {lost}, which never ran"
        );
    }
    assert!(kept
        .iter()
        .all(|id| read_trajectory(out.path(), id).is_some_and(|t| t.success)));
    assert_eq!(xlen(&redis, names::STREAM_CODE), 0);
    assert_eq!(pending_count(&redis, names::STREAM_CODE), 0);
    assert_eq!(xlen(&redis, names::STREAM_DEAD), 0);
    worker.stop().await;
}

/// `INFO commandstats` as command → (calls, rejected calls).
fn command_stats(redis: &RedisServer) -> HashMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.client())
        .expect("info");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                    .unwrap_or(0)
            };
            Some((name.to_owned(), (field("calls"), field("rejected_calls"))))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_finishing_tasks_while_redis_is_out_of_memory_and_recovers() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tmp");
    ensure_group(&redis).await;
    // The first attempt of the first task fails on infrastructure, so the
    // worker tries to record it — a write Redis refuses now.
    let mut ids = vec!["flaky".to_owned()];
    ids.extend((0..5).map(|i| format!("ok{i}")));
    for id in &ids {
        enqueue(&redis, &task(id));
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut redis.client())
        .expect("maxmemory");
    let conn = connect(&redis.url()).await;
    let health = adp_core::health::check_redis(&conn).await;
    assert!(
        health.as_ref().is_err_and(|e| e.contains("out of memory")),
        "{health:?}"
    );
    let mut cfg = config(&redis, "oom");
    cfg.concurrency = 1;
    let (h, _) = handler(1);
    let worker = start_worker_with(cfg, h, out.path(), Metrics::new()).await;
    eventually(Duration::from_secs(30), || async {
        all_written(out.path(), &ids) && pending_count(&redis, names::STREAM_CODE) == 0
    })
    .await
    .expect("every task finished, with one slot, while Redis refuses writes");
    let flaky = read_trajectory(out.path(), "flaky").expect("flaky");
    assert!(flaky.success);
    assert_eq!(flaky.metadata["attempt"], 2);
    assert_eq!(
        xlen(&redis, names::STREAM_CODE),
        0,
        "acks delete even now (freeing memory)"
    );
    let refused = command_stats(&redis)
        .get("rpush")
        .map_or(0, |(_, rejected)| *rejected);
    assert!(
        (1..=3).contains(&refused),
        "the infra-error record is tried, not retried in a loop: {refused} refused"
    );
    assert!(adp_core::health::check_redis(&conn).await.is_err());

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut redis.client())
        .expect("maxmemory");
    assert_eq!(adp_core::health::check_redis(&conn).await, Ok(()));
    enqueue(&redis, &task("after"));
    wait_for_trajectory(out.path(), "after", Duration::from_secs(10), "recovered").await;
    worker.stop().await;
}

/// The settings of an outage scenario and how long the outage lasts.
struct OutageRun {
    config: WorkerConfig,
    tasks: usize,
    /// The outage ends after this many failed attempts (at least)...
    failures: u64,
    /// ... and this long.
    lasting: Duration,
}

/// Runs `run`: the LLM endpoint is down from the start; afterwards every
/// task completes, none is dead-lettered, and while it was down the worker
/// took no more entries than it has slots (plus none for a probe).
async fn outage_dead_letters_nothing(redis: &RedisServer, run: OutageRun) {
    let out = tempfile::tempdir().expect("tmp");
    let slots = run.config.concurrency;
    let handler = Outage {
        down: Arc::new(AtomicBool::new(true)),
        calls: Arc::new(AtomicU32::new(0)),
    };
    let ids: Vec<String> = (0..run.tasks).map(|i| format!("o{i}")).collect();
    for id in &ids {
        enqueue(redis, &task(id));
    }
    let metrics = Metrics::new();
    let started = std::time::Instant::now();
    let worker = start_worker_with(run.config, handler.clone(), out.path(), metrics.clone()).await;
    eventually(run.lasting + Duration::from_secs(60), || async {
        infra_failures(&metrics, "llm") >= run.failures && started.elapsed() >= run.lasting
    })
    .await
    .expect("the outage goes on");
    let paused = metrics.reads_paused.with_label_values(&["test-runtime"]);
    assert_eq!(paused.get(), 1, "reads paused during the outage");
    let state = Queue::new(connect(&redis.url()).await)
        .group_state(names::STREAM_CODE)
        .await
        .expect("state")
        .expect("group");
    assert!(
        state.pending as usize <= slots,
        "no new entries taken while the endpoint is down: {state:?}"
    );
    assert_eq!(
        xlen(redis, names::STREAM_DEAD),
        0,
        "nothing dead-lettered yet"
    );
    handler.down.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(60), || async {
        all_written(out.path(), &ids)
    })
    .await
    .expect("every task completes once the endpoint is back");
    assert!(ids
        .iter()
        .all(|id| read_trajectory(out.path(), id).is_some_and(|t| t.success)));
    assert_eq!(xlen(redis, names::STREAM_DEAD), 0, "no dead letters");
    assert_eq!(paused.get(), 0, "reads resumed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_outage_shorter_than_the_retry_window_dead_letters_nothing() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis, "outage");
    cfg.concurrency = 2;
    cfg.max_deliveries = 3;
    cfg.retry_backoff = Duration::from_millis(20);
    cfg.retry_backoff_max = Duration::from_millis(200);
    // Scaled down from 600 s; the outage lasts several times MAX_DELIVERIES
    // attempts of each entry held.
    cfg.infra_retry_window = Duration::from_secs(60);
    let run = OutageRun {
        config: cfg,
        tasks: 10,
        failures: 12,
        lasting: Duration::ZERO,
    };
    outage_dead_letters_nothing(&redis, run).await;
}

/// The same with the default window and backoff, and a 2-minute outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes over two minutes; run with --ignored"]
async fn a_two_minute_llm_outage_dead_letters_nothing() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis, "outage-2min");
    cfg.concurrency = 4;
    cfg.max_deliveries = 3;
    cfg.retry_backoff = Duration::from_secs(1);
    cfg.retry_backoff_max = adp_core::queue::RETRY_BACKOFF_MAX;
    cfg.infra_retry_window = Duration::from_secs(600);
    cfg.claim_idle = Duration::from_secs(60);
    let run = OutageRun {
        config: cfg,
        tasks: 20,
        failures: 4,
        lasting: Duration::from_secs(120),
    };
    outage_dead_letters_nothing(&redis, run).await;
}

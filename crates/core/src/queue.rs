//! Redis Streams work queue: consumer groups, at-least-once delivery,
//! heartbeats, re-claim of abandoned entries, retries of infrastructure
//! failures and dead-lettering (CONTRACT §2).
//!
//! A runtime supplies only a [`TaskHandler`] ("handle one task"); a
//! [`Worker`] does the rest:
//!
//! * reads with `XREADGROUP ... BLOCK/COUNT` on its own connection, never more
//!   entries at once than it has free slots (`concurrency`);
//! * heartbeats every entry it holds (an `XCLAIM ... JUSTID` to itself, which
//!   resets the idle time without counting a delivery), so only entries of a
//!   consumer that died or hung go idle;
//! * re-claims entries idle longer than `claim_idle` with `XAUTOCLAIM` (this
//!   counts a delivery);
//! * writes the trajectory durably, *then* acks;
//! * on an [`InfraError`] records it, backs off, re-claims the entry to itself
//!   (one more delivery) and tries again; once the delivery count reaches
//!   `max_deliveries` it writes a `system_error` trajectory listing every
//!   infrastructure error and moves the entry to `tasks:dead` (atomically with
//!   the ack);
//! * an entry found with more than `max_deliveries` deliveries (its holders
//!   crashed or hung every time) is dead-lettered without running it again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, FromRedisValue, Script};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, CommonArgs, WorkerArgs};
use crate::error::{Error, InfraError, Result};
use crate::metrics::Metrics;
use crate::names;
use crate::types::{unix_now, ErrorType, TaskSpec, Trajectory};
use crate::writer::TrajectoryWriter;

/// Heartbeat / self-re-claim of one entry, only while this consumer owns it.
/// KEYS: stream. ARGV: group, id, consumer, count_delivery ("1" or "0").
/// Returns the entry's delivery count, or -1 when it is no longer ours.
static CLAIM_OWN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return -1 end
if ARGV[4] == '1' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2])
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
end
local q = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #q == 0 then return -1 end
return q[1][4]
",
    )
});

/// Ack + move to the dead-letter stream + drop the infra-error list, atomically,
/// and only if the entry was still pending (no double dead letters).
/// KEYS: stream, dead stream, infra errors key.
/// ARGV: group, id, task, submitted_at, priority, deliveries, reason, dead_at.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 then
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[3], 'submitted_at', ARGV[4], 'priority', ARGV[5],
    'source_stream', KEYS[1], 'source_id', ARGV[2], 'deliveries', ARGV[6], 'reason', ARGV[7], 'dead_at', ARGV[8])
end
redis.call('DEL', KEYS[3])
return n
",
    )
});

/// One stream entry as read from Redis.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl Entry {
    fn from_stream_id(stream: &str, sid: redis::streams::StreamId) -> Self {
        let fields = sid
            .map
            .into_iter()
            .filter_map(|(k, v)| String::from_redis_value(v).ok().map(|s| (k, s)))
            .collect();
        Entry {
            stream: stream.to_owned(),
            id: sid.id,
            fields,
        }
    }

    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }

    /// Milliseconds part of the entry id: when it was added.
    pub fn added_at_ms(&self) -> Option<u64> {
        id_millis(&self.id)
    }
}

/// The milliseconds part of a stream id `"<ms>-<seq>"`.
pub fn id_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Stream operations on a shared (non-blocking) connection.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
}

impl Queue {
    pub fn new(conn: ConnectionManager) -> Self {
        Queue { conn }
    }

    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Creates group `workers` on each stream (MKSTREAM, from the first
    /// entry); an existing group is fine.
    pub async fn ensure_groups(&self, streams: &[&str]) -> Result<()> {
        let mut conn = self.conn.clone();
        for stream in streams {
            let r: redis::RedisResult<()> = conn
                .xgroup_create_mkstream(*stream, names::GROUP, "0")
                .await;
            match r {
                Ok(()) => {
                    tracing::info!(stream = %stream, group = names::GROUP, "Consumer group created.")
                }
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Acknowledges an entry and forgets its infra-error list.
    pub async fn ack(&self, stream: &str, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .xack(stream, names::GROUP, &[id])
            .ignore()
            .del(names::infra_errors_key(stream, id))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Heartbeat (`count_delivery = false`) or self-re-claim counting one more
    /// delivery. Returns the delivery count, or `None` if another consumer
    /// owns the entry now (or it was acked).
    pub async fn claim_own(
        &self,
        stream: &str,
        id: &str,
        consumer: &str,
        count_delivery: bool,
    ) -> Result<Option<u32>> {
        let mut conn = self.conn.clone();
        let n: i64 = CLAIM_OWN
            .key(stream)
            .arg(names::GROUP)
            .arg(id)
            .arg(consumer)
            .arg(if count_delivery { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(u32::try_from(n).ok())
    }

    /// Delivery count of a pending entry.
    pub async fn delivery_count(&self, stream: &str, id: &str) -> Result<Option<u32>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamPendingCountReply =
            conn.xpending_count(stream, names::GROUP, id, id, 1).await?;
        Ok(reply.ids.first().map(|p| p.times_delivered as u32))
    }

    /// Appends an infrastructure error to the entry's list (kept 7 days).
    pub async fn record_infra_error(&self, stream: &str, id: &str, record: &Value) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = names::infra_errors_key(stream, id);
        redis::pipe()
            .rpush(&key, record.to_string())
            .ignore()
            .expire(&key, 7 * 24 * 3600)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Every infrastructure error recorded for an entry.
    pub async fn infra_errors(&self, stream: &str, id: &str) -> Result<Vec<Value>> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = conn
            .lrange(names::infra_errors_key(stream, id), 0, -1)
            .await?;
        Ok(raw
            .into_iter()
            .map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s)))
            .collect())
    }

    /// Moves an entry to `tasks:dead` and acks it, atomically. Returns false
    /// when it was no longer pending (somebody else finished it).
    pub async fn dead_letter(&self, entry: &Entry, deliveries: u32, reason: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = DEAD_LETTER
            .key(&entry.stream)
            .key(names::STREAM_DEAD)
            .key(names::infra_errors_key(&entry.stream, &entry.id))
            .arg(names::GROUP)
            .arg(&entry.id)
            .arg(entry.field(names::FIELD_TASK))
            .arg(entry.field(names::FIELD_SUBMITTED_AT))
            .arg(entry.field(names::FIELD_PRIORITY))
            .arg(deliveries)
            .arg(reason)
            .arg(format!("{:.3}", unix_now()))
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Entries of `stream` not yet acknowledged: undelivered (group lag) +
    /// pending. The dispatcher's backpressure and `queue_size` read this.
    pub async fn backlog(&self, stream: &str) -> Result<u64> {
        Ok(self.group_state(stream).await?.map_or(0, |g| g.backlog()))
    }

    /// State of group `workers` on a stream (None: no such stream/group).
    pub async fn group_state(&self, stream: &str) -> Result<Option<GroupState>> {
        let mut conn = self.conn.clone();
        let groups: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await;
        let groups = match groups {
            Ok(g) => g,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(g) = groups.into_iter().find(|g| {
            g.get("name")
                .and_then(|v| String::from_redis_value(v.clone()).ok())
                .as_deref()
                == Some(names::GROUP)
        }) else {
            return Ok(None);
        };
        let int = |k: &str| g.get(k).and_then(|v| i64::from_redis_value(v.clone()).ok());
        let last_delivered_id = g
            .get("last-delivered-id")
            .and_then(|v| String::from_redis_value(v.clone()).ok())
            .unwrap_or_else(|| "0-0".to_owned());
        let len: u64 = conn.xlen(stream).await?;
        let pending = int("pending").unwrap_or(0).max(0) as u64;
        let lag = match int("lag") {
            Some(l) => l.max(0) as u64,
            // Redis cannot compute the lag (e.g. after deletions): count the
            // entries after the last delivered id.
            None => {
                let after: Vec<redis::streams::StreamId> = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(format!("({last_delivered_id}"))
                    .arg("+")
                    .query_async::<redis::streams::StreamRangeReply>(&mut conn)
                    .await
                    .map(|r| r.ids)
                    .unwrap_or_default();
                after.len() as u64
            }
        };
        Ok(Some(GroupState {
            length: len,
            pending,
            lag,
            last_delivered_id,
            consumers: int("consumers").unwrap_or(0).max(0) as u64,
        }))
    }

    /// Age in seconds of the oldest entry of `stream` not yet acknowledged
    /// (pending or undelivered); 0 when there is none.
    pub async fn oldest_unacked_age(&self, stream: &str) -> Result<f64> {
        let mut conn = self.conn.clone();
        let Some(state) = self.group_state(stream).await? else {
            return Ok(0.0);
        };
        let mut oldest: Option<u64> = None;
        if state.pending > 0 {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(names::GROUP)
                .query_async(&mut conn)
                .await?;
            if let redis::Value::Array(parts) = summary {
                if let Some(min_id) = parts
                    .get(1)
                    .and_then(|v| String::from_redis_value(v.clone()).ok())
                {
                    oldest = id_millis(&min_id);
                }
            }
        }
        if state.lag > 0 {
            let next: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream)
                .arg(format!("({}", state.last_delivered_id))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            if let Some(ms) = next.ids.first().and_then(|e| id_millis(&e.id)) {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        Ok(oldest.map_or(0.0, |ms| (unix_now() - ms as f64 / 1000.0).max(0.0)))
    }
}

/// What `XINFO GROUPS` says about group `workers` on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Entries in the stream (acked ones included: nothing is trimmed).
    pub length: u64,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    /// Not yet delivered.
    pub lag: u64,
    pub last_delivered_id: String,
    pub consumers: u64,
}

impl GroupState {
    /// Entries not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.pending + self.lag
    }
}

/// What a runtime knows about the attempt it is running.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// 1 for the first delivery.
    pub attempt: u32,
    pub max_deliveries: u32,
    pub stream: String,
    pub entry_id: String,
    /// Cancelled when the shutdown grace period runs out: stop now, the entry
    /// stays un-acked.
    pub cancel: CancellationToken,
}

/// "Handle one task": the only thing a runtime supplies.
///
/// Return `Ok(trajectory)` for every outcome that is the agent's (success or a
/// task failure); return `Err(InfraError)` when the infrastructure failed.
pub trait TaskHandler: Send + Sync + 'static {
    fn handle(
        &self,
        task: TaskSpec,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Trajectory, InfraError>> + Send;
}

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Runtime name (`sandbox-runtime`, `web-runtime`): metric label and `runtime_id`.
    pub runtime: &'static str,
    pub streams: Vec<&'static str>,
    pub consumer: String,
    pub concurrency: usize,
    pub max_deliveries: u32,
    pub claim_idle: Duration,
    pub retry_backoff: Duration,
    pub grace: Duration,
    pub read_block: Duration,
    /// How long the trajectory writer gathers a group (`WRITE_GATHER_MS`).
    pub write_gather: Duration,
    pub redis_url: String,
}

impl WorkerConfig {
    pub fn from_args(
        runtime: &'static str,
        streams: Vec<&'static str>,
        concurrency: usize,
        common: &CommonArgs,
        args: &WorkerArgs,
    ) -> Self {
        WorkerConfig {
            runtime,
            streams,
            consumer: config::consumer_name(),
            concurrency: concurrency.max(1),
            max_deliveries: args.max_deliveries,
            claim_idle: Duration::from_secs(args.claim_idle_secs),
            retry_backoff: Duration::from_millis(args.retry_backoff_ms),
            grace: Duration::from_secs(args.shutdown_grace_secs),
            read_block: Duration::from_millis(args.read_block_ms),
            write_gather: Duration::from_millis(args.write_gather_ms),
            redis_url: common.redis_url.clone(),
        }
    }

    /// The heartbeat period: a third of the claim idle time.
    fn heartbeat_every(&self) -> Duration {
        (self.claim_idle / 3).max(Duration::from_millis(200))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        (self.retry_backoff * factor).min(Duration::from_secs(60))
    }
}

/// Consumes streams with a [`TaskHandler`].
pub struct Worker<H> {
    inner: Arc<Inner<H>>,
}

struct Inner<H> {
    config: WorkerConfig,
    handler: H,
    /// Results waiting for the trajectory writer (bounded like the slots).
    commits: Arc<Semaphore>,
    queue: Queue,
    writer: TrajectoryWriter,
    metrics: Metrics,
    hard_cancel: CancellationToken,
}

impl<H: TaskHandler> Worker<H> {
    /// A worker writing through `writer`, which it gives the gather window
    /// of `config.write_gather`.
    pub fn new(
        config: WorkerConfig,
        handler: H,
        queue: Queue,
        writer: TrajectoryWriter,
        metrics: Metrics,
    ) -> Self {
        Worker {
            inner: Arc::new(Inner {
                commits: Arc::new(Semaphore::new(config.concurrency.max(1))),
                writer: writer.with_gather(config.write_gather),
                config,
                handler,
                queue,
                metrics,
                hard_cancel: CancellationToken::new(),
            }),
        }
    }

    /// Runs until `shutdown`; then stops reading, gives running tasks the
    /// grace period, abandons the rest un-acked and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let cfg = &self.inner.config;
        let streams: Vec<&str> = cfg.streams.clone();
        loop {
            match self.inner.queue.ensure_groups(&streams).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot create consumer groups yet; retrying.");
                    if sleep_or_cancel(Duration::from_secs(1), &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
        let Some(mut read_conn) = config::connect_retrying(
            &cfg.redis_url,
            Some(cfg.read_block + config::COMMAND_TIMEOUT),
            &shutdown,
        )
        .await
        else {
            return Ok(());
        };
        self.remove_abandoned_temp_files();
        tracing::info!(
            runtime = cfg.runtime,
            consumer = %cfg.consumer,
            streams = ?streams,
            concurrency = cfg.concurrency,
            max_deliveries = cfg.max_deliveries,
            claim_idle_secs = cfg.claim_idle.as_secs_f64(),
            "Worker started."
        );

        let slots = Arc::new(Semaphore::new(cfg.concurrency));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let claim_every = (cfg.claim_idle / 2).max(Duration::from_millis(500));
        let mut next_claim = Instant::now();
        // Temp files of a writer killed mid-write: swept at start (above) and
        // after re-claiming entries of a dead consumer — once right away and
        // once `claim_idle` later, for a file written shortly before its
        // writer died, which is younger than the idle time of its entry. Not
        // on every claim cycle: listing a directory of hundreds of thousands
        // of trajectories twice a minute costs for nothing.
        let mut sweep_again: Option<Instant> = None;
        let mut claim_cursors: HashMap<String, String> = HashMap::new();
        let mut error_delay = Duration::from_millis(100);

        loop {
            while tasks.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }

            let mut entries = Vec::new();
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + claim_every;
                match self.autoclaim(&mut claim_cursors, permits.len()).await {
                    Ok(claimed) => entries = claimed,
                    Err(e) => tracing::warn!(error = %e, "XAUTOCLAIM failed; will retry."),
                }
                if !entries.is_empty() {
                    self.remove_abandoned_temp_files();
                    sweep_again = Some(Instant::now() + cfg.claim_idle);
                } else if sweep_again.is_some_and(|at| Instant::now() >= at) {
                    self.remove_abandoned_temp_files();
                    sweep_again = None;
                }
            }
            if entries.is_empty() {
                let block = cfg.read_block.min(claim_every);
                // Not raced against shutdown: what XREADGROUP returns is
                // already delivered to this consumer in Redis, and a dropped
                // reply would leave those entries pending, un-run, until
                // another consumer re-claims them (costing them a delivery).
                // The read ends within `block`; its entries run within the grace.
                let read = read_new(
                    &mut read_conn,
                    &streams,
                    &cfg.consumer,
                    permits.len(),
                    block,
                )
                .await;
                match read {
                    Ok(found) => {
                        error_delay = Duration::from_millis(100);
                        entries = found.into_iter().map(|e| (e, 1)).collect();
                    }
                    Err(e) => {
                        if e.code() == Some("NOGROUP") {
                            tracing::warn!(
                                "Consumer group missing (Redis lost its data?); recreating it."
                            );
                            let _ = self.inner.queue.ensure_groups(&streams).await;
                        } else {
                            tracing::warn!(error = %e, retry_in_ms = error_delay.as_millis() as u64, "Reading the streams failed; retrying.");
                        }
                        drop(permits);
                        if sleep_or_cancel(error_delay, &shutdown).await {
                            break;
                        }
                        error_delay = (error_delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            for (entry, deliveries) in entries {
                let permit = permits.pop();
                let inner = self.inner.clone();
                let slots = slots.clone();
                tasks.spawn(async move { inner.process(entry, deliveries, permit, slots).await });
            }
        }

        let running = tasks.len();
        if running > 0 {
            tracing::info!(
                running,
                grace_secs = cfg.grace.as_secs_f64(),
                "Waiting for running tasks to finish."
            );
        }
        let drained = tokio::time::timeout(cfg.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "Grace period over; abandoning running tasks un-acked (another consumer will re-claim them)."
            );
            self.inner.hard_cancel.cancel();
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        tracing::info!(runtime = cfg.runtime, "Worker stopped.");
        Ok(())
    }

    /// Removes trajectory temp files older than `claim_idle`: a write takes
    /// milliseconds, so such a file belongs to a process killed mid-write
    /// (its entry is re-claimed after the same idle time). Runs off the
    /// async threads.
    fn remove_abandoned_temp_files(&self) {
        let writer = self.inner.writer.clone();
        let age = self.inner.config.claim_idle;
        tokio::task::spawn_blocking(move || {
            let removed = writer.remove_stale_temp_files(age);
            if removed > 0 {
                tracing::info!(
                    removed,
                    "Removed temp files of writes interrupted by a crash."
                );
            }
        });
    }

    /// Re-claims entries idle past `claim_idle` on every stream, at most `max`.
    async fn autoclaim(
        &self,
        cursors: &mut HashMap<String, String>,
        max: usize,
    ) -> Result<Vec<(Entry, u32)>> {
        let cfg = &self.inner.config;
        let mut conn = self.inner.queue.conn();
        let mut out = Vec::new();
        for stream in &cfg.streams {
            if out.len() >= max {
                break;
            }
            let cursor = cursors
                .get(*stream)
                .cloned()
                .unwrap_or_else(|| "0-0".to_owned());
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(*stream)
                .arg(names::GROUP)
                .arg(&cfg.consumer)
                .arg(cfg.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(max - out.len())
                .query_async(&mut conn)
                .await?;
            cursors.insert((*stream).to_owned(), reply.next_stream_id.clone());
            for sid in reply.claimed {
                let entry = Entry::from_stream_id(stream, sid);
                let deliveries = self
                    .inner
                    .queue
                    .delivery_count(stream, &entry.id)
                    .await?
                    .unwrap_or(cfg.max_deliveries + 1);
                self.inner
                    .metrics
                    .tasks_reclaimed_total
                    .with_label_values(&[cfg.runtime])
                    .inc();
                tracing::warn!(stream = %stream, entry_id = %entry.id, deliveries, "Re-claimed an entry abandoned by another consumer.");
                out.push((entry, deliveries));
            }
        }
        Ok(out)
    }
}

async fn read_new(
    conn: &mut ConnectionManager,
    streams: &[&str],
    consumer: &str,
    count: usize,
    block: Duration,
) -> redis::RedisResult<Vec<Entry>> {
    let opts = StreamReadOptions::default()
        .group(names::GROUP, consumer)
        .count(count)
        .block(block.as_millis() as usize);
    let ids: Vec<&str> = streams.iter().map(|_| ">").collect();
    let reply: Option<StreamReadReply> = conn.xread_options(streams, &ids, &opts).await?;
    Ok(reply
        .map(|r| {
            r.keys
                .into_iter()
                .flat_map(|k| {
                    let stream = k.key;
                    k.ids
                        .into_iter()
                        .map(move |sid| Entry::from_stream_id(&stream, sid))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Sleeps; returns true if `token` fired first.
async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = token.cancelled() => true,
    }
}

/// Aborts the wrapped task when dropped (heartbeats end with their entry).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decrements a gauge when dropped, however the task ends.
struct GaugeGuard(prometheus::IntGauge);
impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<H: TaskHandler> Inner<H> {
    fn spawn_heartbeat(&self, entry: &Entry) -> AbortOnDrop {
        let queue = self.queue.clone();
        let stream = entry.stream.clone();
        let id = entry.id.clone();
        let consumer = self.config.consumer.clone();
        let every = self.config.heartbeat_every();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match queue.claim_own(&stream, &id, &consumer, false).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(stream = %stream, entry_id = %id, "Entry is no longer ours (re-claimed by another consumer).");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(stream = %stream, entry_id = %id, error = %e, "Heartbeat failed; will retry.")
                    }
                }
            }
        }))
    }

    async fn process(
        self: Arc<Self>,
        entry: Entry,
        mut deliveries: u32,
        permit: Option<OwnedSemaphorePermit>,
        slots: Arc<Semaphore>,
    ) {
        // When the entry was last handed to this consumer (its Redis idle
        // time started a little earlier, at delivery).
        let received = Instant::now();
        let _heartbeat = self.spawn_heartbeat(&entry);
        let mut slot = match permit {
            Some(p) => Some(p),
            None => match slots.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
        };
        let runtime = self.config.runtime;

        let task: TaskSpec = match serde_json::from_str(entry.field(names::FIELD_TASK)) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(stream = %entry.stream, entry_id = %entry.id, error = %e, "Entry holds no valid task; dead-lettering it.");
                let reason = format!("undecodable task: {e}");
                self.retry_redis("dead-letter", || {
                    self.queue.dead_letter(&entry, deliveries, &reason)
                })
                .await;
                self.metrics
                    .dead_lettered_total
                    .with_label_values(&[runtime])
                    .inc();
                return;
            }
        };

        // active_tasks counts the tasks holding a slot: running, or waiting
        // for the handler's own limit (jails, pages) — not results waiting
        // for the trajectory writer.
        let active = self.metrics.active_tasks.with_label_values(&[runtime]);
        active.inc();
        let mut active_guard = Some(GaugeGuard(active.clone()));

        loop {
            if deliveries > self.config.max_deliveries {
                let reason = format!(
                    "delivered {deliveries} times without completing (the runtime holding it crashed, hung or was stopped each time)"
                );
                self.give_up(&entry, &task, deliveries, &reason, Vec::new())
                    .await;
                return;
            }
            let ctx = TaskContext {
                attempt: deliveries,
                max_deliveries: self.config.max_deliveries,
                stream: entry.stream.clone(),
                entry_id: entry.id.clone(),
                cancel: self.hard_cancel.clone(),
            };
            tracing::debug!(task_id = %task.task_id, attempt = deliveries, "Task started.");
            let started = Instant::now();
            let outcome = self.handler.handle(task.clone(), ctx).await;
            match outcome {
                Ok(mut trajectory) => {
                    trajectory.meta("attempt", deliveries);
                    trajectory.meta("worker", self.config.consumer.clone());
                    if deliveries > 1 {
                        if let Ok(errors) = self.queue.infra_errors(&entry.stream, &entry.id).await
                        {
                            if !errors.is_empty() {
                                trajectory.meta("infra_errors", Value::Array(errors));
                            }
                        }
                    }
                    if trajectory.task.is_none() {
                        trajectory.task = Some(task.clone());
                    }
                    // The result is computed: while it is made durable (the
                    // writer may gather a group for WRITE_GATHER_MS), its slot
                    // goes to the next task. At most `concurrency` results
                    // wait for the writer; past that the slot is kept, so a
                    // stalled disk stops the reading.
                    let committing = self.commits.clone().acquire_owned().await.ok();
                    drop(slot.take());
                    drop(active_guard.take());
                    let finished = self.finish(&entry, &trajectory, received, started).await;
                    drop(committing);
                    if finished {
                        return;
                    }
                    // Running it again needs a slot again.
                    match slots.clone().acquire_owned().await {
                        Ok(p) => slot = Some(p),
                        Err(_) => return,
                    }
                    active.inc();
                    active_guard = Some(GaugeGuard(active.clone()));
                    // Could not write the trajectory: an infrastructure failure.
                    let err = InfraError::new("disk", "could not write the trajectory file");
                    if !self
                        .after_infra_error(&entry, &task, &mut deliveries, err)
                        .await
                    {
                        return;
                    }
                }
                Err(err) => {
                    if !self
                        .after_infra_error(&entry, &task, &mut deliveries, err)
                        .await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Records an infra error; returns true when the task should run again
    /// (with `deliveries` bumped), false when it is finished or handed back.
    async fn after_infra_error(
        &self,
        entry: &Entry,
        task: &TaskSpec,
        deliveries: &mut u32,
        err: InfraError,
    ) -> bool {
        let runtime = self.config.runtime;
        self.metrics
            .infra_failures_total
            .with_label_values(&[runtime, err.component])
            .inc();
        let record = json!({
            "attempt": *deliveries,
            "component": err.component,
            "error": err.message,
            "worker": self.config.consumer,
            "at": unix_now(),
        });
        tracing::warn!(task_id = %task.task_id, attempt = *deliveries, component = err.component, error = %err.message, "Infrastructure failure; the task will be retried.");
        self.retry_redis("record infra error", || {
            self.queue
                .record_infra_error(&entry.stream, &entry.id, &record)
        })
        .await;
        if *deliveries >= self.config.max_deliveries {
            let errors = self
                .queue
                .infra_errors(&entry.stream, &entry.id)
                .await
                .unwrap_or_else(|_| vec![record.clone()]);
            let reason = format!(
                "{} attempts failed on infrastructure; last: {err}",
                *deliveries
            );
            self.give_up(entry, task, *deliveries, &reason, errors)
                .await;
            return false;
        }
        let backoff = self.config.backoff(*deliveries);
        if sleep_or_cancel(backoff, &self.hard_cancel).await {
            return false;
        }
        match self
            .queue
            .claim_own(&entry.stream, &entry.id, &self.config.consumer, true)
            .await
        {
            Ok(Some(n)) => {
                *deliveries = n;
                true
            }
            Ok(None) => {
                tracing::warn!(task_id = %task.task_id, "Entry was re-claimed by another consumer during backoff; leaving it to them.");
                false
            }
            Err(e) => {
                tracing::warn!(task_id = %task.task_id, error = %e, "Cannot re-claim the entry for a retry; it stays pending and will be re-claimed.");
                false
            }
        }
    }

    /// Writes the trajectory durably, then acks. False if the write failed.
    async fn finish(
        &self,
        entry: &Entry,
        trajectory: &Trajectory,
        received: Instant,
        started: Instant,
    ) -> bool {
        let runtime = self.config.runtime;
        // A consumer that was presumed dead (paused or starved past
        // CLAIM_IDLE_SECS) and whose entry another consumer re-claimed (or
        // already finished) does not write: the newer delivery's trajectory
        // is the one that stays. If Redis cannot answer, write anyway.
        // An entry received less than claim_idle/2 ago cannot have been
        // re-claimed (XAUTOCLAIM takes only entries idle past claim_idle),
        // so the check, a Redis round trip per task, is skipped for it.
        let surely_ours = received.elapsed() < self.config.claim_idle / 2;
        if !surely_ours
            && matches!(
                self.queue
                    .claim_own(&entry.stream, &entry.id, &self.config.consumer, false)
                    .await,
                Ok(None)
            )
        {
            tracing::warn!(task_id = %trajectory.task_id, entry_id = %entry.id, "Entry was re-claimed by another consumer while this run went on; discarding this result (the newer delivery writes the trajectory).");
            return true;
        }
        if let Err(e) = self.writer.write(trajectory).await {
            tracing::error!(task_id = %trajectory.task_id, error = %e, "Could not write the trajectory.");
            return false;
        }
        self.retry_redis("ack", || self.queue.ack(&entry.stream, &entry.id))
            .await;
        let status = if trajectory.success {
            "success"
        } else {
            "failure"
        };
        self.metrics
            .tasks_completed_total
            .with_label_values(&[runtime, status])
            .inc();
        if !trajectory.success {
            let error_type = trajectory
                .error_type
                .map_or("task_failed", ErrorType::as_str);
            self.metrics
                .tasks_failed_total
                .with_label_values(&[runtime, error_type])
                .inc();
        }
        self.metrics
            .task_duration_seconds
            .with_label_values(&[runtime])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            task_id = %trajectory.task_id,
            success = trajectory.success,
            error_type = ?trajectory.error_type,
            steps = trajectory.steps.len(),
            duration_s = started.elapsed().as_secs_f64(),
            "Task completed."
        );
        true
    }

    /// Writes a `system_error` trajectory and dead-letters the entry.
    async fn give_up(
        &self,
        entry: &Entry,
        task: &TaskSpec,
        deliveries: u32,
        reason: &str,
        infra_errors: Vec<Value>,
    ) {
        let runtime = self.config.runtime;
        let mut t = Trajectory::new(task, runtime);
        t.error_type = Some(ErrorType::SystemError);
        t.error_message = Some(format!(
            "dead-lettered after {deliveries} deliveries: {reason}"
        ));
        t.meta("attempt", deliveries);
        t.meta("infra_errors", Value::Array(infra_errors));
        t.meta("dead_lettered", true);
        t.meta("worker", self.config.consumer.clone());
        loop {
            match self.writer.write(&t).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(task_id = %task.task_id, error = %e, "Cannot write the failed trajectory; retrying in 5 s.");
                    if sleep_or_cancel(Duration::from_secs(5), &self.hard_cancel).await {
                        return;
                    }
                }
            }
        }
        self.retry_redis("dead-letter", || {
            self.queue.dead_letter(entry, deliveries, reason)
        })
        .await;
        self.metrics
            .dead_lettered_total
            .with_label_values(&[runtime])
            .inc();
        self.metrics
            .tasks_completed_total
            .with_label_values(&[runtime, "failure"])
            .inc();
        self.metrics
            .tasks_failed_total
            .with_label_values(&[runtime, ErrorType::SystemError.as_str()])
            .inc();
        tracing::error!(task_id = %task.task_id, deliveries, reason = %reason, "Task dead-lettered to tasks:dead.");
    }

    /// Retries a Redis step until it works or the hard cancel fires. A step
    /// that gives up leaves the entry pending: it is re-claimed later, never lost.
    async fn retry_redis<F, Fut, T>(&self, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match f().await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(step = what, error = %e, retry_in_ms = delay.as_millis() as u64, "Redis step failed; retrying.");
                }
            }
            if sleep_or_cancel(delay, &self.hard_cancel).await {
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

impl From<InfraError> for Error {
    fn from(e: InfraError) -> Self {
        Error::Other(e.to_string())
    }
}

//! Redis Streams work queue: consumer groups, at-least-once delivery,
//! heartbeats, re-claim of abandoned entries, retries of infrastructure
//! failures and dead-lettering (CONTRACT §2).
//!
//! A runtime supplies only a [`TaskHandler`] ("handle one task"); a
//! [`Worker`] does the rest:
//!
//! * reads new entries with non-blocking `XREADGROUP`s, one stream at a
//!   time, never more in all than it has free slots (`concurrency`; COUNT is
//!   per stream), and waits for new ones with a plain `XREAD BLOCK`, on its
//!   own connection;
//! * heartbeats every entry it holds (an `XCLAIM ... JUSTID` to itself, which
//!   resets the idle time without counting a delivery), so only entries of a
//!   consumer that died or hung go idle;
//! * re-claims entries idle longer than `claim_idle` with `XAUTOCLAIM` (this
//!   counts a delivery);
//! * writes the trajectory durably, *then* acks — and the ack deletes the
//!   entry from its stream in the same Lua call, so the streams hold only
//!   unfinished work and nothing grows with completed tasks;
//! * an entry deleted from its stream while pending (an operator's XTRIM or
//!   XDEL) is "gone": counted (`entries_gone_total`) and logged; a result
//!   already being computed is still written; XAUTOCLAIM's deleted ids (a
//!   dead consumer's entries) cannot be run any more and are logged as lost;
//! * on an [`InfraError`] records it, pauses reading new entries (the runtime's
//!   dependency fails: `reads_paused`), backs off (capped, jittered),
//!   re-claims the entry to itself (one more delivery) and tries again; an
//!   attempt that succeeds ends the pause. Only after `max_deliveries`
//!   attempts *and* `infra_retry_window` since the first failure does it
//!   write a `system_error` trajectory listing every infrastructure error and
//!   move the entry to `tasks:dead` (atomically with the ack);
//! * an entry found with more than `max_deliveries` deliveries not explained
//!   by recorded infrastructure failures (its holders crashed or hung every
//!   time) is dead-lettered without running it again;
//! * on shutdown, stops reading; running tasks get the grace period, tasks
//!   waiting to retry hand their entry back at once.
//!
//! Redis out of memory (`maxmemory`, `noeviction`) refuses writes that grow
//! memory but not XREADGROUP, XACK, XDEL or XCLAIM: the worker keeps
//! finishing (and so deleting) entries, treats the bookkeeping it cannot
//! write as optional, logs the state as an error and backs off; `/health`
//! reports it ([`crate::health::check_redis`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, FromRedisValue, Script};
use serde_json::{json, Value};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
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
/// Returns the entry's delivery count when it is ours; -1 when another
/// consumer owns it; -2 when it was deleted from the stream (XTRIM, XDEL)
/// while ours — it is then taken out of the pending list here, so nobody
/// else reports it lost; -3 when it is no longer pending (another consumer
/// finished it, or dropped it as deleted).
static CLAIM_OWN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return -3 end
if p[1][2] ~= ARGV[3] then return -1 end
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return -2
end
if ARGV[4] == '1' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2])
  return p[1][4] + 1
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return p[1][4]
",
    )
});

/// Ack + delete from the stream + drop the infra-error list, atomically: a
/// finished entry leaves the stream, so nothing grows with completed tasks.
/// KEYS: stream, infra errors key. ARGV: group, id. Returns XACK's count.
static ACK_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return n
",
    )
});

/// Ack + move to the dead-letter stream + delete from the source stream +
/// drop the infra-error list, atomically, and only if the entry was still
/// pending (no double dead letters) or `force` is "1" (an entry deleted from
/// its stream while its holder ran it: only the holder still has the task).
/// XACK comes first: under `maxmemory` Redis refuses a script's first
/// memory-growing command (XADD) but not one after a write.
/// KEYS: stream, dead stream, infra errors key.
/// ARGV: group, id, task, submitted_at, priority, deliveries, reason, dead_at, force.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 or ARGV[9] == '1' then
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[3], 'submitted_at', ARGV[4], 'priority', ARGV[5],
    'source_stream', KEYS[1], 'source_id', ARGV[2], 'deliveries', ARGV[6], 'reason', ARGV[7], 'dead_at', ARGV[8])
  n = 1
end
redis.call('XDEL', KEYS[1], ARGV[2])
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
    /// entry); an existing group is fine. Groups that exist are looked up
    /// first, so a worker (re)starting while Redis is out of memory (which
    /// refuses XGROUP CREATE even for an existing group) gets going.
    pub async fn ensure_groups(&self, streams: &[&str]) -> Result<()> {
        let mut conn = self.conn.clone();
        for stream in streams {
            if self.group_exists(stream).await? {
                continue;
            }
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

    async fn group_exists(&self, stream: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let groups: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await;
        match groups {
            Ok(groups) => Ok(groups.iter().any(|g| {
                g.get("name")
                    .and_then(|v| String::from_redis_value(v.clone()).ok())
                    .as_deref()
                    == Some(names::GROUP)
            })),
            Err(e) if e.to_string().contains("no such key") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Acknowledges an entry, deletes it from its stream and forgets its
    /// infra-error list, atomically. Works while Redis refuses writes for
    /// `maxmemory` (none of these commands grows memory).
    pub async fn ack(&self, stream: &str, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        ACK_DELETE
            .key(stream)
            .key(names::infra_errors_key(stream, id))
            .arg(names::GROUP)
            .arg(id)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// Heartbeat (`count_delivery = false`) or self-re-claim counting one more
    /// delivery; says who holds the entry now (see [`Claim`]).
    pub async fn claim_own(
        &self,
        stream: &str,
        id: &str,
        consumer: &str,
        count_delivery: bool,
    ) -> Result<Claim> {
        let mut conn = self.conn.clone();
        let n: i64 = CLAIM_OWN
            .key(stream)
            .arg(names::GROUP)
            .arg(id)
            .arg(consumer)
            .arg(if count_delivery { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match n {
            -1 => Claim::Taken,
            -2 => Claim::Gone,
            n if n < 0 => Claim::Released,
            n => Claim::Ours(u32::try_from(n).unwrap_or(u32::MAX)),
        })
    }

    /// Delivery count of a pending entry (None: not pending).
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

    /// How many infrastructure errors are recorded for an entry, and the
    /// Unix time of the first (None when there is none or it has no time).
    pub async fn infra_error_summary(&self, stream: &str, id: &str) -> Result<(u32, Option<f64>)> {
        let mut conn = self.conn.clone();
        let key = names::infra_errors_key(stream, id);
        let (n, first): (u32, Option<String>) = redis::pipe()
            .llen(&key)
            .lindex(&key, 0)
            .query_async(&mut conn)
            .await?;
        let at = first
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v.get("at").and_then(Value::as_f64));
        Ok((n, at))
    }

    /// Forgets the infra-error list of an entry that is gone.
    pub async fn forget(&self, stream: &str, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(names::infra_errors_key(stream, id))
            .await?;
        Ok(())
    }

    /// Moves an entry to `tasks:dead`, acks it and deletes it from its
    /// stream, atomically. Returns false when it was no longer pending
    /// (somebody else finished it) unless `force` (the entry was deleted from
    /// its stream while this consumer ran it: the dead letter is added anyway).
    pub async fn dead_letter(
        &self,
        entry: &Entry,
        deliveries: u32,
        reason: &str,
        force: bool,
    ) -> Result<bool> {
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
            .arg(if force { "1" } else { "0" })
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
        let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(stream)
            .query_async(&mut conn)
            .await?;
        let stream_int = |k: &str| {
            info.get(k)
                .and_then(|v| i64::from_redis_value(v.clone()).ok())
                .map_or(0, |n| n.max(0) as u64)
        };
        let len = stream_int("length");
        let added = stream_int("entries-added");
        let pending = int("pending").unwrap_or(0).max(0) as u64;
        let lag = match (int("lag"), int("entries-read")) {
            (Some(l), _) => l.max(0) as u64,
            // Redis does not report the lag once an entry at or after the
            // last delivered one was deleted (acked entries are deleted), but
            // the group's read counter stays exact: entries are only ever
            // deleted after they were read.
            (None, Some(read)) => added.saturating_sub(read.max(0) as u64).min(len),
            // No read counter either (a group created at an id): count the
            // entries after the last delivered id.
            (None, None) => {
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
            added,
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

    /// Whether anyone serves `stream`: its group's members, those active
    /// within [`ACTIVE_WITHIN`], its unacknowledged entries, and how long it
    /// has had such entries and no active member. All from Redis, so the
    /// dispatcher's metrics and `adp status` agree and survive restarts.
    pub async fn service(&self, stream: &str) -> Result<Service> {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(names::GROUP)
            .query_async(&mut conn)
            .await;
        let idles: Vec<u64> = match reply {
            Ok(rows) => rows
                .iter()
                .map(|c| {
                    c.get("idle")
                        .and_then(|v| u64::from_redis_value(v.clone()).ok())
                        .unwrap_or(u64::MAX)
                })
                .collect(),
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let within = u64::try_from(ACTIVE_WITHIN.as_millis()).unwrap_or(u64::MAX);
        let active = idles.iter().filter(|&&idle| idle < within).count() as u64;
        let (backlog, oldest_age) = match self.group_state(stream).await? {
            Some(g) if g.backlog() > 0 => (g.backlog(), self.oldest_unacked_age(stream).await?),
            Some(_) => (0, 0.0),
            // Entries but no group yet: nobody can read them.
            None => {
                let first: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                let len: u64 = conn.xlen(stream).await?;
                let age = first
                    .ids
                    .first()
                    .and_then(|e| id_millis(&e.id))
                    .map_or(0.0, |ms| (unix_now() - ms as f64 / 1000.0).max(0.0));
                (len, age)
            }
        };
        let unserved_secs = if active == 0 && backlog > 0 {
            // Since the oldest waiting entry came, or the last member last
            // read, whichever is later.
            let last_read = idles
                .iter()
                .min()
                .map_or(f64::INFINITY, |&ms| ms as f64 / 1000.0);
            oldest_age.min(last_read)
        } else {
            0.0
        };
        Ok(Service {
            consumers: idles.len() as u64,
            active,
            backlog,
            unserved_secs,
        })
    }
}

/// A consumer counts as active when it read from its stream, or heartbeat an
/// entry it holds, within this long. A worker with free slots reads at least
/// every `READ_BLOCK_MS`; a busy one heartbeats its entries every
/// `CLAIM_IDLE_SECS / 3` (20 s by default: with `CLAIM_IDLE_SECS` above 180 a
/// worker busy with long tasks can look inactive).
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(60);

/// Who serves one stream ([`Queue::service`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Service {
    /// Members of the group `workers`.
    pub consumers: u64,
    /// Members that were active within [`ACTIVE_WITHIN`].
    pub active: u64,
    /// Unacknowledged entries (waiting + pending).
    pub backlog: u64,
    /// Seconds the stream has had unacknowledged entries and no active
    /// member (0 while served or empty).
    pub unserved_secs: f64,
}

/// What `XINFO GROUPS` says about group `workers` on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Entries in the stream now: acknowledged entries are deleted, so these
    /// are the unacknowledged ones (and any left by an older version).
    pub length: u64,
    /// Entries ever added to the stream (`entries-added`, Redis 7).
    pub added: u64,
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

/// Who holds a pending entry, as [`Queue::claim_own`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This consumer; the entry's delivery count.
    Ours(u32),
    /// Another consumer re-claimed it.
    Taken,
    /// It was deleted from its stream (an operator's XTRIM or XDEL) while
    /// this consumer held it; it has been taken out of the pending list.
    Gone,
    /// Not pending any more: another consumer finished it, or dropped it
    /// from the pending list because it was deleted from the stream.
    Released,
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
    /// First retry delay after an infrastructure failure; doubles per attempt.
    pub retry_backoff: Duration,
    /// Longest retry delay (before jitter).
    pub retry_backoff_max: Duration,
    /// An entry whose attempts fail on infrastructure is dead-lettered only
    /// after `max_deliveries` attempts *and* this long since its first
    /// failure (`INFRA_RETRY_WINDOW_SECS`): an outage shorter than this
    /// dead-letters nothing.
    pub infra_retry_window: Duration,
    pub grace: Duration,
    pub read_block: Duration,
    /// How long the trajectory writer gathers a group (`WRITE_GATHER_MS`).
    pub write_gather: Duration,
    pub redis_url: String,
}

/// Longest retry delay after an infrastructure failure, before jitter.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

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
            retry_backoff_max: RETRY_BACKOFF_MAX,
            infra_retry_window: Duration::from_secs(args.infra_retry_window_secs),
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

    /// The delay before retry `attempt` (1 = after the first failure):
    /// `retry_backoff` doubled per attempt, capped at `retry_backoff_max`,
    /// then a random point of its upper half (jitter, so the replicas of a
    /// runtime that failed together do not retry together).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let full = self
            .retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max);
        full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
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
    outage: Outage,
    /// Cancelled when the worker stops reading: tasks waiting to retry hand
    /// their entry back instead.
    stopping: CancellationToken,
    hard_cancel: CancellationToken,
}

/// Reads are paused while a dependency of the runtime fails: the entries
/// already held keep retrying (with backoff) and tell when it works again.
struct Outage {
    /// Since when, and the component that failed first.
    since: std::sync::Mutex<Option<(Instant, &'static str)>>,
    /// Wakes the read loop when the outage ends.
    ended: Notify,
    /// `reads_paused{runtime}`.
    gauge: prometheus::IntGauge,
}

impl Outage {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.set(0);
        Outage {
            since: std::sync::Mutex::new(None),
            ended: Notify::new(),
            gauge,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<(Instant, &'static str)>> {
        self.since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn paused(&self) -> bool {
        self.state().is_some()
    }

    fn failed(&self, component: &'static str, error: &str) {
        let mut state = self.state();
        if state.is_none() {
            *state = Some((Instant::now(), component));
            self.gauge.set(1);
            tracing::warn!(component, error = %error, "Infrastructure failure: pausing reads of new entries; the entries held are retried with backoff until it works again.");
        }
    }

    fn recovered(&self) {
        let ended = self.state().take();
        if let Some((since, component)) = ended {
            self.gauge.set(0);
            tracing::info!(
                component,
                outage_s = since.elapsed().as_secs_f64(),
                "An attempt succeeded again: resuming reads."
            );
            self.ended.notify_one();
        }
    }
}

/// What one running entry knows about itself besides the entry.
#[derive(Default)]
struct Held {
    /// Deleted from its stream while held (and out of the pending list).
    gone: AtomicBool,
}

impl Held {
    fn gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

/// How [`Inner::finish`] ended.
enum Finished {
    /// Written and acked, or another consumer's delivery keeps the result.
    Done,
    /// The trajectory could not be written.
    WriteFailed(String),
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
        let outage = Outage::new(metrics.reads_paused.with_label_values(&[config.runtime]));
        Worker {
            inner: Arc::new(Inner {
                commits: Arc::new(Semaphore::new(config.concurrency.max(1))),
                writer: writer.with_gather(config.write_gather),
                config,
                handler,
                queue,
                metrics,
                outage,
                stopping: CancellationToken::new(),
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
            infra_retry_window_secs = cfg.infra_retry_window.as_secs_f64(),
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
        // Which stream is read first (rotates, so none always comes last).
        let mut first_stream = 0usize;

        loop {
            while tasks.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            let paused = self.inner.outage.paused();
            if paused && !tasks.is_empty() {
                // A dependency fails: take nothing new. The entries held
                // retry with backoff; one that succeeds ends the pause.
                tokio::select! {
                    _ = self.inner.outage.ended.notified() => {}
                    _ = tasks.join_next() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            // Paused with nothing held: one entry probes whether the
            // dependency is back (it retries with backoff if not).
            if !paused {
                while let Ok(p) = slots.clone().try_acquire_owned() {
                    permits.push(p);
                }
            }

            let mut entries = Vec::new();
            if !paused && Instant::now() >= next_claim {
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
                first_stream = (first_stream + 1) % streams.len().max(1);
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
                    first_stream,
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

        self.inner.stopping.cancel();
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
            for id in reply.deleted_ids {
                // Deleted from the stream (XTRIM, XDEL) while a consumer that
                // stopped answering held it: XAUTOCLAIM has dropped it from
                // the pending list. Its task is no longer in Redis.
                self.inner.count_gone();
                tracing::error!(stream = %stream, entry_id = %id, "A pending entry was deleted from its stream (XTRIM/XDEL) while its consumer was gone; its task is lost from the queue. Dispatch it again (a new run, or `adp replay`); never trim a task stream.");
                if let Err(e) = self.inner.queue.forget(stream, &id).await {
                    tracing::debug!(error = %e, "Could not delete the infra-error list of a gone entry.");
                }
            }
            for sid in reply.claimed {
                let entry = Entry::from_stream_id(stream, sid);
                let Some(deliveries) = self.inner.queue.delivery_count(stream, &entry.id).await?
                else {
                    // Acked between XAUTOCLAIM and XPENDING: its holder
                    // finished it after all. Nothing to do.
                    tracing::info!(stream = %stream, entry_id = %entry.id, "A re-claimed entry was acknowledged by its previous holder meanwhile; leaving it.");
                    continue;
                };
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

/// Reads up to `count` new entries in all from `streams`. `XREADGROUP`'s
/// COUNT is per stream (one call on two streams may return twice `count`),
/// so the streams are read one at a time without blocking, starting at
/// `streams[first]`. When none has anything, waits up to `block` for a new
/// entry on any of them with a plain `XREAD` (which delivers nothing) and
/// returns none: the caller comes back.
async fn read_new(
    conn: &mut ConnectionManager,
    streams: &[&str],
    consumer: &str,
    count: usize,
    block: Duration,
    first: usize,
) -> redis::RedisResult<Vec<Entry>> {
    let found = read_each(conn, streams, consumer, count, first).await?;
    if !found.is_empty() {
        return Ok(found);
    }
    // Note each stream's last id, look once more (an entry added before the
    // note and after the first look would otherwise wait for the next one),
    // then wait for any entry after the noted ids.
    let mut pipe = redis::pipe();
    for s in streams {
        pipe.cmd("XREVRANGE")
            .arg(*s)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let lasts: Vec<StreamRangeReply> = pipe.query_async(conn).await?;
    let after: Vec<String> = lasts
        .iter()
        .map(|r| {
            r.ids
                .first()
                .map_or_else(|| "0-0".to_owned(), |e| e.id.clone())
        })
        .collect();
    let found = read_each(conn, streams, consumer, count, first).await?;
    if !found.is_empty() {
        return Ok(found);
    }
    let opts = StreamReadOptions::default()
        .count(1)
        .block(block.as_millis() as usize);
    let _: Option<StreamReadReply> = conn.xread_options(streams, &after, &opts).await?;
    Ok(Vec::new())
}

/// Non-blocking `XREADGROUP` of each stream in turn until `count` entries.
async fn read_each(
    conn: &mut ConnectionManager,
    streams: &[&str],
    consumer: &str,
    count: usize,
    first: usize,
) -> redis::RedisResult<Vec<Entry>> {
    let mut out = Vec::new();
    for i in 0..streams.len() {
        let left = count.saturating_sub(out.len());
        if left == 0 {
            break;
        }
        let stream = streams[(first + i) % streams.len()];
        let opts = StreamReadOptions::default()
            .group(names::GROUP, consumer)
            .count(left);
        let reply: Option<StreamReadReply> = conn.xread_options(&[stream], &[">"], &opts).await?;
        for k in reply.map(|r| r.keys).unwrap_or_default() {
            let key = k.key;
            out.extend(
                k.ids
                    .into_iter()
                    .map(|sid| Entry::from_stream_id(&key, sid)),
            );
        }
    }
    Ok(out)
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

/// Attempts at writing the `system_error` trajectory of a dead letter before
/// the dead letter goes without it (the entry in `tasks:dead` keeps the task).
const FAILED_TRAJECTORY_WRITES: u32 = 3;

impl<H: TaskHandler> Inner<H> {
    fn count_gone(&self) {
        self.metrics
            .entries_gone_total
            .with_label_values(&[self.config.runtime])
            .inc();
    }

    /// Notes (once) that the held entry was deleted from its stream.
    fn held_entry_gone(&self, entry: &Entry, held: &Held) {
        if !held.gone.swap(true, Ordering::SeqCst) {
            self.count_gone();
            tracing::warn!(stream = %entry.stream, entry_id = %entry.id, "The entry being run was deleted from its stream (XTRIM/XDEL); its result will still be written. Never trim a task stream.");
        }
    }

    fn spawn_heartbeat(self: &Arc<Self>, entry: &Entry, held: Arc<Held>) -> AbortOnDrop {
        let inner = self.clone();
        let entry = entry.clone();
        let every = self.config.heartbeat_every();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let claim = inner
                    .queue
                    .claim_own(&entry.stream, &entry.id, &inner.config.consumer, false)
                    .await;
                match claim {
                    Ok(Claim::Ours(_)) => {}
                    Ok(Claim::Gone) => {
                        inner.held_entry_gone(&entry, &held);
                        return;
                    }
                    Ok(Claim::Taken | Claim::Released) => {
                        tracing::warn!(stream = %entry.stream, entry_id = %entry.id, "Entry is no longer ours (re-claimed by another consumer).");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(stream = %entry.stream, entry_id = %entry.id, error = %e, "Heartbeat failed; will retry.")
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
        let held = Arc::new(Held::default());
        let _heartbeat = self.spawn_heartbeat(&entry, held.clone());
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
                    self.queue.dead_letter(&entry, deliveries, &reason, false)
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

        // Delivered more often than allowed: its holders crashed, hung or
        // were stopped each time. Deliveries that were retries after an
        // infrastructure failure (one recorded error each) do not count.
        if deliveries > self.config.max_deliveries {
            let recorded = match self
                .queue
                .infra_error_summary(&entry.stream, &entry.id)
                .await
            {
                Ok((n, _)) => n,
                Err(_) => 0,
            };
            let unexplained = deliveries.saturating_sub(recorded);
            if unexplained > self.config.max_deliveries {
                let reason = format!(
                    "delivered {deliveries} times without completing (the runtime holding it crashed, hung or was stopped each time)"
                );
                self.give_up(&entry, &held, &task, deliveries, &reason, Vec::new())
                    .await;
                return;
            }
        }
        // Unix time of this consumer's first infrastructure failure of it.
        let mut first_failure: Option<f64> = None;

        loop {
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
            let err = match outcome {
                Ok(mut trajectory) => {
                    self.outage.recovered();
                    trajectory.meta("attempt", deliveries);
                    trajectory.meta("worker", self.config.consumer.clone());
                    if deliveries > 1 && !held.gone() {
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
                    let finished = self
                        .finish(&entry, &held, &trajectory, received, started)
                        .await;
                    drop(committing);
                    let Finished::WriteFailed(message) = finished else {
                        return;
                    };
                    // Running it again needs a slot again.
                    let p = tokio::select! {
                        p = slots.clone().acquire_owned() => p,
                        _ = self.stopping.cancelled() => {
                            tracing::info!(task_id = %task.task_id, "Stopping: handing the entry back un-acked.");
                            return;
                        }
                    };
                    match p {
                        Ok(p) => slot = Some(p),
                        Err(_) => return,
                    }
                    active.inc();
                    active_guard = Some(GaugeGuard(active.clone()));
                    InfraError::new(
                        "disk",
                        format!("could not write the trajectory file: {message}"),
                    )
                }
                Err(err) => err,
            };
            if !self
                .after_infra_error(
                    &entry,
                    &held,
                    &task,
                    &mut deliveries,
                    &mut first_failure,
                    err,
                )
                .await
            {
                return;
            }
        }
    }

    /// Records an infra error; returns true when the task should run again
    /// (with `deliveries` bumped), false when it is finished or handed back.
    async fn after_infra_error(
        &self,
        entry: &Entry,
        held: &Held,
        task: &TaskSpec,
        deliveries: &mut u32,
        first_failure: &mut Option<f64>,
        err: InfraError,
    ) -> bool {
        let runtime = self.config.runtime;
        self.metrics
            .infra_failures_total
            .with_label_values(&[runtime, err.component])
            .inc();
        self.outage.failed(err.component, &err.message);
        let now = unix_now();
        let first_here = *first_failure.get_or_insert(now);
        let record = json!({
            "attempt": *deliveries,
            "component": err.component,
            "error": err.message,
            "worker": self.config.consumer,
            "at": now,
        });
        // Bookkeeping only: a Redis that refuses it (down, or out of memory)
        // must not hold the slot.
        if !held.gone() {
            if let Err(e) = self
                .queue
                .record_infra_error(&entry.stream, &entry.id, &record)
                .await
            {
                log_redis_step_failed("record infra error", &e);
            }
        }
        if *deliveries >= self.config.max_deliveries {
            // The retry window counts from the first failure any consumer
            // recorded for this entry.
            let first_recorded = if held.gone() {
                None
            } else {
                self.queue
                    .infra_error_summary(&entry.stream, &entry.id)
                    .await
                    .ok()
                    .and_then(|(_, at)| at)
            };
            let first = first_recorded.map_or(first_here, |at| at.min(first_here));
            if now - first >= self.config.infra_retry_window.as_secs_f64() {
                let errors = if held.gone() {
                    vec![record.clone()]
                } else {
                    self.queue
                        .infra_errors(&entry.stream, &entry.id)
                        .await
                        .unwrap_or_else(|_| vec![record.clone()])
                };
                let reason = format!(
                    "{} attempts over {:.0} s failed on infrastructure; last: {err}",
                    *deliveries,
                    now - first
                );
                self.give_up(entry, held, task, *deliveries, &reason, errors)
                    .await;
                return false;
            }
        }
        let backoff = self.config.backoff(*deliveries);
        tracing::warn!(task_id = %task.task_id, attempt = *deliveries, component = err.component, error = %err.message, retry_in_ms = backoff.as_millis() as u64, "Infrastructure failure; the task will be retried.");
        if sleep_or_cancel(backoff, &self.stopping).await {
            tracing::info!(task_id = %task.task_id, "Stopping: handing the entry back un-acked (another consumer re-claims it).");
            return false;
        }
        if held.gone() {
            // Nothing left in Redis to re-claim: retry here.
            *deliveries += 1;
            return true;
        }
        match self
            .queue
            .claim_own(&entry.stream, &entry.id, &self.config.consumer, true)
            .await
        {
            Ok(Claim::Ours(n)) => {
                *deliveries = n;
                true
            }
            Ok(Claim::Gone) => {
                self.held_entry_gone(entry, held);
                *deliveries += 1;
                true
            }
            Ok(Claim::Taken | Claim::Released) => {
                tracing::warn!(task_id = %task.task_id, "Entry was re-claimed by another consumer during backoff; leaving it to them.");
                false
            }
            Err(e) => {
                tracing::warn!(task_id = %task.task_id, error = %e, "Cannot re-claim the entry for a retry; it stays pending and will be re-claimed.");
                false
            }
        }
    }

    /// Who holds the entry now, asked of Redis unless the answer is known:
    /// an entry received less than `claim_idle/2` ago cannot have been
    /// re-claimed (XAUTOCLAIM takes only entries idle past `claim_idle`).
    /// If Redis cannot answer: ours (write anyway).
    async fn holder(&self, entry: &Entry, held: &Held, received: Option<Instant>) -> Claim {
        if held.gone() {
            return Claim::Gone;
        }
        if received.is_some_and(|r| r.elapsed() < self.config.claim_idle / 2) {
            return Claim::Ours(0);
        }
        self.queue
            .claim_own(&entry.stream, &entry.id, &self.config.consumer, false)
            .await
            .unwrap_or(Claim::Ours(0))
    }

    /// Writes the trajectory durably, then acks (ack = delete).
    async fn finish(
        &self,
        entry: &Entry,
        held: &Held,
        trajectory: &Trajectory,
        received: Instant,
        started: Instant,
    ) -> Finished {
        let runtime = self.config.runtime;
        // A consumer that was presumed dead (paused or starved past
        // CLAIM_IDLE_SECS) and whose entry another consumer re-claimed (or
        // already finished) does not write: the newer delivery's trajectory
        // is the one that stays.
        match self.holder(entry, held, Some(received)).await {
            Claim::Ours(_) => {}
            Claim::Gone => self.held_entry_gone(entry, held),
            Claim::Taken => {
                tracing::warn!(task_id = %trajectory.task_id, entry_id = %entry.id, "Entry was re-claimed by another consumer while this run went on; discarding this result (the newer delivery writes the trajectory).");
                return Finished::Done;
            }
            Claim::Released => {
                // Finished by another consumer (its trajectory is on disk),
                // or dropped from the pending list as deleted by one that
                // found it idle: then this result is the only one.
                let exists = self
                    .writer
                    .target(trajectory)
                    .map(|p| p.exists())
                    .unwrap_or(false);
                if exists {
                    tracing::warn!(task_id = %trajectory.task_id, entry_id = %entry.id, "Entry was finished by another consumer while this run went on; discarding this result.");
                    return Finished::Done;
                }
                self.held_entry_gone(entry, held);
            }
        }
        if let Err(e) = self.writer.write(trajectory).await {
            tracing::error!(task_id = %trajectory.task_id, error = %e, "Could not write the trajectory.");
            return Finished::WriteFailed(e.to_string());
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
        Finished::Done
    }

    /// Writes a `system_error` trajectory and dead-letters the entry — only
    /// while the entry is still this consumer's, so a delivery that finished
    /// meanwhile keeps its trajectory.
    async fn give_up(
        &self,
        entry: &Entry,
        held: &Held,
        task: &TaskSpec,
        deliveries: u32,
        reason: &str,
        infra_errors: Vec<Value>,
    ) {
        let runtime = self.config.runtime;
        match self.holder(entry, held, None).await {
            Claim::Ours(_) => {}
            Claim::Gone => self.held_entry_gone(entry, held),
            Claim::Taken | Claim::Released => {
                tracing::warn!(task_id = %task.task_id, entry_id = %entry.id, "Entry was finished or re-claimed by another consumer; not dead-lettering it.");
                return;
            }
        }
        let mut t = Trajectory::new(task, runtime);
        t.error_type = Some(ErrorType::SystemError);
        t.error_message = Some(format!(
            "dead-lettered after {deliveries} deliveries: {reason}"
        ));
        t.meta("attempt", deliveries);
        t.meta("infra_errors", Value::Array(infra_errors));
        t.meta("dead_lettered", true);
        t.meta("worker", self.config.consumer.clone());
        let mut written = false;
        for attempt in 1..=FAILED_TRAJECTORY_WRITES {
            match self.writer.write(&t).await {
                Ok(_) => {
                    written = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(task_id = %task.task_id, attempt, error = %e, "Cannot write the failed trajectory.");
                }
            }
            if attempt < FAILED_TRAJECTORY_WRITES
                && sleep_or_cancel(self.config.backoff(attempt), &self.stopping).await
            {
                tracing::info!(task_id = %task.task_id, "Stopping: handing the entry back un-acked.");
                return;
            }
        }
        self.retry_redis("dead-letter", || {
            self.queue
                .dead_letter(entry, deliveries, reason, held.gone())
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
        if written {
            tracing::error!(task_id = %task.task_id, deliveries, reason = %reason, "Task dead-lettered to tasks:dead.");
        } else {
            tracing::error!(task_id = %task.task_id, deliveries, reason = %reason, "Task dead-lettered to tasks:dead without a trajectory: the trajectory file cannot be written (the dead letter keeps the task).");
        }
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
                Err(e) => log_redis_step_failed(what, &e),
            }
            if sleep_or_cancel(delay, &self.hard_cancel).await {
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// One log line for a failed Redis step; Redis out of memory says so.
fn log_redis_step_failed(what: &str, e: &Error) {
    if e.is_redis_oom() {
        tracing::error!(step = what, error = %e, "Redis is out of memory (maxmemory reached; it refuses writes). Raise maxmemory or free memory (prune finished runs, drop dead letters).");
    } else {
        tracing::warn!(step = what, error = %e, "Redis step failed.");
    }
}

impl From<InfraError> for Error {
    fn from(e: InfraError) -> Self {
        Error::Other(e.to_string())
    }
}

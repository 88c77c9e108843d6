//! Sending validated tasks to Redis: one atomic Lua call per batch records
//! each task in its run's id record and XADDs only the new ones (one entry
//! per rollout), and saves the file checkpoint in the same step. A crash at
//! any point leaves Redis either before or after the whole batch: nothing is
//! doubled or skipped.
//!
//! # The id record
//! Per run, `dispatcher:ids:<run_id>:<bucket>` (65,536 buckets) are hashes
//! from a 64-bit hash of the task id to a 32-bit hash of the task's content
//! ([`adp_core::runs::id_slot`], [`adp_core::runs::content_hash`]). Small
//! hashes are kept by Redis as listpacks: ≈ 16 bytes per task plus the
//! bucket's own overhead (measured: see docs/formats.md). A task id seen
//! again with the same content is a duplicate; with other content, a
//! conflicting duplicate (rejected, recorded). The default run also honours
//! the pre-run set `dispatcher:dispatched_ids` while it exists.
//!
//! The checkpoint is saved compare-and-set: the call fails with
//! [`CHECKPOINT_MOVED`] when Redis no longer holds the checkpoint this
//! dispatcher saved last. That happens when Redis lost its last writes (a
//! crash with `appendfsync everysec`, a restore from an older snapshot): the
//! lost entries, their ids and the checkpoint went back together, and the
//! dispatcher must read the file again from the checkpoint Redis has.

use std::sync::LazyLock;

use adp_core::types::{unix_now, TaskSpec, TaskType};
use adp_core::{names, runs};
use redis::aio::ConnectionManager;
use redis::Script;

/// Error code of a batch refused because the checkpoint in Redis is not the
/// one this dispatcher saved last.
pub const CHECKPOINT_MOVED: &str = "CHECKPOINT_MOVED";
/// Error code of a batch that reached Redis before the batch sent just
/// before it (Redis still holds that one's starting checkpoint): nothing
/// written; send it again once that one is in.
pub const CHECKPOINT_BEHIND: &str = "CHECKPOINT_BEHIND";
/// `previous` when there is no batch before this one in flight.
const NO_PREVIOUS: &str = "-";

/// KEYS: checkpoint, tasks:code, tasks:web, tasks:reasoning, run hash,
/// legacy id set, runs set, then one id-record bucket per task.
/// ARGV: checkpoint JSON (or ""), submitted_at, the checkpoint JSON this
/// batch starts from (the one saved last, or the one the batch sent before
/// it saves; "" = none), run id, "1" to consult the legacy set, the
/// checkpoint the batch sent before this one starts from ("-": none in
/// flight), then per task: stream index (1-3), id field, content hash, rollouts,
/// task JSON, priority (and, with the legacy set, the task_id).
/// Returns per task 1 (dispatched), 0 (duplicate) or 2 (same id, other
/// content), or the error CHECKPOINT_MOVED or CHECKPOINT_BEHIND (nothing
/// written). With a
/// conflict in the batch the checkpoint is not moved (the dispatcher moves
/// it once the conflict's rejection record is on disk).
///
/// A new id costs two Redis calls (HSETNX, XADD); only an id already in the
/// record is read back (HGET) to compare its content. With the legacy set
/// the old order stays: the set is consulted before the record is written.
static DISPATCH_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local saved = redis.call('GET', KEYS[1]) or ''
if saved ~= ARGV[3] then
  if ARGV[6] ~= '-' and saved == ARGV[6] then
    return redis.error_reply('CHECKPOINT_BEHIND the batch sent before this one is not in yet')
  end
  return redis.error_reply('CHECKPOINT_MOVED the checkpoint in Redis is not the one this dispatcher saved')
end
local legacy = ARGV[5] == '1' and redis.call('EXISTS', KEYS[6]) == 1
local stride = 6
if ARGV[5] == '1' then stride = 7 end
local out = {}
local tasks, entries, conflicts = 0, 0, 0
local now = ARGV[2]
local n = (#ARGV - 6) / stride
for j = 0, n - 1 do
  local a = 7 + j * stride
  local bucket = KEYS[8 + j]
  local new
  if legacy then
    local prev = redis.call('HGET', bucket, ARGV[a + 1])
    if prev then
      new = false
    elseif redis.call('SISMEMBER', KEYS[6], ARGV[a + 6]) == 1 then
      new = nil
    else
      redis.call('HSET', bucket, ARGV[a + 1], ARGV[a + 2])
      new = true
    end
  else
    new = redis.call('HSETNX', bucket, ARGV[a + 1], ARGV[a + 2]) == 1
  end
  if new then
    local stream = KEYS[1 + tonumber(ARGV[a])]
    local k = tonumber(ARGV[a + 3])
    local json = ARGV[a + 4]
    if k == 1 then
      redis.call('XADD', stream, '*', 'task', json, 'submitted_at', now, 'priority', ARGV[a + 5])
    else
      local head = string.sub(json, 1, -2)
      for r = 0, k - 1 do
        redis.call('XADD', stream, '*', 'task', head .. ',"rollout":' .. r .. '}', 'submitted_at', now, 'priority', ARGV[a + 5])
      end
    end
    tasks = tasks + 1
    entries = entries + k
    out[j + 1] = 1
  elseif new == nil then
    out[j + 1] = 0
  elseif redis.call('HGET', bucket, ARGV[a + 1]) == ARGV[a + 2] then
    out[j + 1] = 0
  else
    out[j + 1] = 2
    conflicts = conflicts + 1
  end
end
if n > 0 then
  if redis.call('SADD', KEYS[7], ARGV[4]) == 1 then
    redis.call('HSETNX', KEYS[5], 'created_at', now)
  end
  if tasks > 0 then
    redis.call('HINCRBY', KEYS[5], 'tasks', tasks)
    redis.call('HINCRBY', KEYS[5], 'entries', entries)
    redis.call('HSET', KEYS[5], 'updated_at', now)
  end
  if conflicts > 0 then redis.call('HINCRBY', KEYS[5], 'conflicts', conflicts) end
end
-- A conflict must be recorded before the checkpoint passes its line.
if ARGV[1] ~= '' and conflicts == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
return out
"#,
    )
});

fn stream_index(t: TaskType) -> u8 {
    match t {
        TaskType::Code => 1,
        TaskType::Web => 2,
        TaskType::Reasoning => 3,
    }
}

/// What the batch step did with one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New in its run: `rollouts` entries added.
    Dispatched,
    /// Already in the run's record with the same content: skipped.
    Duplicate,
    /// Already in the run's record with other content: rejected.
    Conflict,
}

/// A task ready to send, serialized once.
pub struct Prepared {
    pub task_type: TaskType,
    pub task_id: String,
    /// The task JSON (with `run_id` for a named run; without `rollout`).
    pub json: String,
    pub priority: i64,
    pub rollouts: u32,
    pub bucket: u32,
    pub field: i64,
    pub content: u32,
    /// Line number in the task file (for a conflict's rejection record).
    pub line: u64,
    /// The line as read (for a conflict's rejection record).
    pub raw: Vec<u8>,
    /// Byte offset and line count before the line (where to resume to read it again).
    pub start: (u64, u64),
}

impl Prepared {
    /// `task` as read from the file (no run, no rollout), for `run_id`,
    /// sampled `default_rollouts` times unless it says otherwise.
    pub fn new(
        task: &TaskSpec,
        run_id: &str,
        default_rollouts: u32,
        line: u64,
        raw: Vec<u8>,
        start: (u64, u64),
    ) -> Self {
        // The content is the task as the file gives it, whatever the run.
        let content =
            runs::content_hash(serde_json::to_string(task).unwrap_or_default().as_bytes());
        let mut task = task.clone();
        let rollouts = task.rollouts.unwrap_or(default_rollouts).max(1);
        if run_id != runs::DEFAULT_RUN {
            task.run_id = Some(run_id.to_owned());
        }
        task.rollout = None;
        let (bucket, field) = runs::id_slot(&task.task_id);
        Prepared {
            task_type: task.task_type,
            json: serde_json::to_string(&task).unwrap_or_default(),
            task_id: task.task_id,
            priority: task.priority,
            rollouts,
            bucket,
            field,
            content,
            line,
            raw,
            start,
        }
    }
}

/// The run's keys and settings the batch step needs.
#[derive(Debug, Clone)]
pub struct RunKeys {
    pub run_id: String,
    pub checkpoint: String,
    pub run: String,
    /// Consult `dispatcher:dispatched_ids` (the default run only).
    pub legacy: bool,
}

impl RunKeys {
    pub fn new(run_id: &str, checkpoint: String) -> Self {
        RunKeys {
            run_id: run_id.to_owned(),
            checkpoint,
            run: names::run_key(run_id),
            legacy: run_id == runs::DEFAULT_RUN,
        }
    }
}

/// Sends one batch atomically (an empty one just moves the checkpoint);
/// returns, per task, what happened to it. `expected` is the checkpoint
/// JSON the batch starts from (None: none yet); `previous`, when a batch
/// sent before this one is still in flight, is the one that batch starts
/// from (Some(None): it starts from no checkpoint); see
/// [`CHECKPOINT_MOVED`], [`CHECKPOINT_BEHIND`].
pub async fn send_batch(
    conn: &mut ConnectionManager,
    keys: &RunKeys,
    checkpoint: Option<&str>,
    expected: Option<&str>,
    previous: Option<Option<&str>>,
    batch: &[Prepared],
) -> redis::RedisResult<Vec<Outcome>> {
    let mut inv = DISPATCH_BATCH.prepare_invoke();
    inv.key(&keys.checkpoint)
        .key(names::STREAM_CODE)
        .key(names::STREAM_WEB)
        .key(names::STREAM_REASONING)
        .key(&keys.run)
        .key(names::DISPATCHED_IDS)
        .key(names::RUNS)
        .arg(checkpoint.unwrap_or(""))
        .arg(format!("{:.6}", unix_now()))
        .arg(expected.unwrap_or(""))
        .arg(&keys.run_id)
        .arg(if keys.legacy { "1" } else { "0" })
        .arg(previous.map_or(NO_PREVIOUS, |p| p.unwrap_or("")));
    for t in batch {
        inv.key(names::run_ids_key(&keys.run_id, t.bucket));
        inv.arg(stream_index(t.task_type))
            .arg(t.field)
            .arg(t.content)
            .arg(t.rollouts)
            .arg(&t.json)
            .arg(t.priority);
        if keys.legacy {
            inv.arg(&t.task_id);
        }
    }
    let flags: Vec<i64> = inv.invoke_async(conn).await?;
    Ok(flags
        .into_iter()
        .map(|f| match f {
            1 => Outcome::Dispatched,
            2 => Outcome::Conflict,
            _ => Outcome::Duplicate,
        })
        .collect())
}

/// Loads the batch step into Redis' script cache (so the first batches do
/// not meet NOSCRIPT and reach Redis out of order).
pub async fn load_script(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    DISPATCH_BATCH
        .prepare_invoke()
        .load_async(conn)
        .await
        .map(|_| ())
}

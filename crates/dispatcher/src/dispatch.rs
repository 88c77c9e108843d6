//! Sending validated tasks to Redis: one atomic Lua call per batch records
//! each `task_id` in the dispatched set and XADDs only the new ones, and
//! saves the file checkpoint in the same step. A crash at any point leaves
//! Redis either before or after the whole batch: nothing is doubled or skipped.
//!
//! The checkpoint is saved compare-and-set: the call fails with
//! [`CHECKPOINT_MOVED`] when Redis no longer holds the checkpoint this
//! dispatcher saved last. That happens when Redis lost its last writes (a
//! crash with `appendfsync everysec`, a restore from an older snapshot): the
//! lost entries, their ids and the checkpoint went back together, and the
//! dispatcher must read the file again from the checkpoint Redis has.

use std::sync::LazyLock;

use adp_core::names;
use adp_core::types::{unix_now, TaskSpec, TaskType};
use redis::aio::ConnectionManager;
use redis::Script;

/// Error code of a batch refused because the checkpoint in Redis is not the
/// one this dispatcher saved last.
pub const CHECKPOINT_MOVED: &str = "CHECKPOINT_MOVED";

/// KEYS: dispatched set, checkpoint key, tasks:code, tasks:web, tasks:reasoning.
/// ARGV: checkpoint JSON (or ""), submitted_at, the checkpoint JSON this
/// dispatcher saved last ("" = none), then per task: stream index (1-3),
/// task_id, task JSON, priority. Returns one 1 (dispatched) or 0 (duplicate)
/// per task, or the error CHECKPOINT_MOVED (nothing written).
static DISPATCH_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then
  return redis.error_reply('CHECKPOINT_MOVED the checkpoint in Redis is not the one this dispatcher saved')
end
local out = {}
local i = 4
while i <= #ARGV do
  local stream = KEYS[2 + tonumber(ARGV[i])]
  if redis.call('SADD', KEYS[1], ARGV[i + 1]) == 1 then
    redis.call('XADD', stream, '*', 'task', ARGV[i + 2], 'submitted_at', ARGV[2], 'priority', ARGV[i + 3])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 4
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
return out
",
    )
});

fn stream_index(t: TaskType) -> u8 {
    match t {
        TaskType::Code => 1,
        TaskType::Web => 2,
        TaskType::Reasoning => 3,
    }
}

/// A task ready to send, serialized once.
pub struct Prepared {
    pub task_type: TaskType,
    pub task_id: String,
    pub json: String,
    pub priority: i64,
}

impl Prepared {
    pub fn new(task: &TaskSpec) -> Self {
        Prepared {
            task_type: task.task_type,
            task_id: task.task_id.clone(),
            json: serde_json::to_string(task).unwrap_or_default(),
            priority: task.priority,
        }
    }
}

/// Sends one batch atomically (an empty one just moves the checkpoint);
/// returns, per task, whether it was new. `expected` is the checkpoint JSON
/// saved last (None: none yet); see [`CHECKPOINT_MOVED`].
pub async fn send_batch(
    conn: &mut ConnectionManager,
    checkpoint_key: &str,
    checkpoint: Option<&str>,
    expected: Option<&str>,
    batch: &[Prepared],
) -> redis::RedisResult<Vec<bool>> {
    let mut inv = DISPATCH_BATCH.prepare_invoke();
    inv.key(names::DISPATCHED_IDS)
        .key(checkpoint_key)
        .key(names::STREAM_CODE)
        .key(names::STREAM_WEB)
        .key(names::STREAM_REASONING)
        .arg(checkpoint.unwrap_or(""))
        .arg(format!("{:.6}", unix_now()))
        .arg(expected.unwrap_or(""));
    for t in batch {
        inv.arg(stream_index(t.task_type))
            .arg(&t.task_id)
            .arg(&t.json)
            .arg(t.priority);
    }
    let flags: Vec<i64> = inv.invoke_async(conn).await?;
    Ok(flags.into_iter().map(|f| f == 1).collect())
}

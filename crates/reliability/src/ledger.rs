//! Where every task ended: trajectory files (parsed, checked against their
//! name), temp files left behind, the state of the streams and the consumer
//! group, dead letters, rejection records and, from a [`WriteWatch`], how
//! often each file was written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use adp_core::names;
use adp_core::Trajectory;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::watch::{WriteWatch, Writes};

/// Group `workers` on one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub length: u64,
    /// Entries ever added (`entries-added`): acknowledged entries are
    /// deleted, so this is what tells an entry enqueued twice.
    pub added: u64,
    /// Delivered, not acknowledged.
    pub pending: u64,
    /// Not yet delivered.
    pub lag: u64,
}

/// `XLEN` + `XINFO GROUPS` of `stream` (zeros when it does not exist).
pub fn stream_state(conn: &mut redis::Connection, stream: &str) -> StreamState {
    let length: u64 = redis::cmd("XLEN").arg(stream).query(conn).unwrap_or(0);
    let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query(conn)
        .unwrap_or_default();
    let added = info
        .get("entries-added")
        .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
        .unwrap_or(0);
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .unwrap_or_default();
    let Some(g) = groups.into_iter().find(|g| {
        g.get("name")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .as_deref()
            == Some(names::GROUP)
    }) else {
        return StreamState {
            length,
            added,
            ..StreamState::default()
        };
    };
    let int = |k: &str| {
        g.get(k)
            .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
            .unwrap_or(0)
            .max(0) as u64
    };
    let field = |k: &str| {
        g.get(k)
            .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
    };
    // Redis reports no lag once an entry at or after the last delivered one
    // was deleted (acked entries are deleted); its read counter stays exact.
    let lag = match (field("lag"), field("entries-read")) {
        (Some(l), _) => l.max(0) as u64,
        (None, Some(read)) => added.saturating_sub(read.max(0) as u64).min(length),
        (None, None) => length.saturating_sub(int("pending")),
    };
    StreamState {
        length,
        added,
        pending: int("pending"),
        lag,
    }
}

/// Entries of `stream`: (entry id, task_id of its `task` field).
pub fn stream_entries(conn: &mut redis::Connection, stream: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query(conn)
            .unwrap_or_default();
        let n = reply.ids.len();
        for sid in reply.ids {
            let task: String = sid.get(names::FIELD_TASK).unwrap_or_default();
            let id = serde_json::from_str::<Value>(&task)
                .ok()
                .and_then(|v| v.get("task_id").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            start = format!("({}", sid.id);
            out.push((sid.id, id));
        }
        if n < 5000 {
            return out;
        }
    }
}

/// Consumers that own pending entries of `stream`, with their counts.
pub fn pending_by_consumer(conn: &mut redis::Connection, stream: &str) -> BTreeMap<String, u64> {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(names::GROUP)
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    let mut out = BTreeMap::new();
    if let redis::Value::Array(parts) = v {
        if let Some(redis::Value::Array(consumers)) = parts.get(3) {
            for c in consumers {
                if let Ok((name, count)) = redis::from_redis_value::<(String, String)>(c.clone()) {
                    out.insert(name, count.parse().unwrap_or(0));
                }
            }
        }
    }
    out
}

/// Owner and delivery count of every pending entry of `stream`:
/// entry id → (consumer, deliveries).
pub fn pending_entries(
    conn: &mut redis::Connection,
    stream: &str,
) -> BTreeMap<String, (String, u64)> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(names::GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(conn)
        .unwrap_or_default();
    rows.into_iter()
        .map(|(id, consumer, _idle, deliveries)| (id, (consumer, deliveries)))
        .collect()
}

/// What ended where, for the tasks of a scenario.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Task ids that should each have exactly one trajectory.
    pub tasks_in: usize,
    /// `*.json` files in `trajectories/`.
    pub files: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// Writer temp files left in `trajectories/`.
    pub temp_files: Vec<String>,
    /// Files that are not a well-formed trajectory of the task they are named after.
    pub malformed: Vec<String>,
    /// Trajectories with `success: false`.
    pub failed: Vec<String>,
    /// Histogram of `metadata.attempt`.
    pub attempts: BTreeMap<u64, usize>,
    /// Entries in `tasks:dead`.
    pub dead: u64,
    pub code_stream: StreamState,
    /// Task ids with more than one entry in `tasks:code` (of the entries
    /// still there: acknowledged ones are deleted; `code_stream.added`
    /// counts every entry ever added).
    pub enqueued_twice: Vec<String>,
    /// Records in `rejected.jsonl`, and line numbers recorded more than once.
    pub rejected: usize,
    pub rejected_twice: Vec<u64>,
    pub writes: Option<Writes>,
}

impl Ledger {
    /// Reads the output directory and Redis.
    pub fn collect(
        cluster: &Cluster,
        expected: &BTreeSet<String>,
        watch: Option<&WriteWatch>,
    ) -> Self {
        let mut l = Ledger {
            tasks_in: expected.len(),
            writes: watch.map(WriteWatch::snapshot),
            ..Ledger::default()
        };
        let mut seen = BTreeSet::new();
        if let Ok(dir) = std::fs::read_dir(cluster.trajectories_dir()) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if adp_core::writer::is_temp_file_name(&name) {
                    l.temp_files.push(name);
                    continue;
                }
                let Some(id) = name.strip_suffix(".json") else {
                    l.unexpected.push(name);
                    continue;
                };
                l.files += 1;
                seen.insert(id.to_owned());
                if !expected.contains(id) {
                    l.unexpected.push(name.clone());
                }
                match read_trajectory(&e.path()) {
                    Some(t) if t.task_id == id => {
                        if !t.success {
                            l.failed.push(id.to_owned());
                        }
                        let attempt = t
                            .metadata
                            .get("attempt")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        *l.attempts.entry(attempt).or_default() += 1;
                    }
                    _ => l.malformed.push(name),
                }
            }
        }
        l.missing = expected.difference(&seen).cloned().collect();
        let mut conn = cluster.redis();
        l.dead = redis::cmd("XLEN")
            .arg(names::STREAM_DEAD)
            .query(&mut conn)
            .unwrap_or(0);
        l.code_stream = stream_state(&mut conn, names::STREAM_CODE);
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for (_, id) in stream_entries(&mut conn, names::STREAM_CODE) {
            *counts.entry(id).or_default() += 1;
        }
        l.enqueued_twice = counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        let (rejected, twice) = rejections(&cluster.output_dir().join("rejected.jsonl"));
        l.rejected = rejected;
        l.rejected_twice = twice;
        l
    }

    /// Task ids written more than once (needs a [`WriteWatch`]).
    pub fn written_twice(&self) -> Vec<(String, u32)> {
        self.writes
            .as_ref()
            .map(Writes::rewritten)
            .unwrap_or_default()
    }

    /// Every expected task has exactly one well-formed file, nothing else is
    /// there, nothing is left in Redis (pending, undelivered, dead, or an
    /// acknowledged entry not deleted), nothing was enqueued twice (one
    /// entry ever added per task). Panics with the ledger otherwise.
    pub fn assert_complete(&self) {
        let ok = self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.temp_files.is_empty()
            && self.malformed.is_empty()
            && self.files == self.tasks_in
            && self.dead == 0
            && self.code_stream.pending == 0
            && self.code_stream.lag == 0
            && self.code_stream.length == 0
            && self.code_stream.added as usize == self.tasks_in
            && self.enqueued_twice.is_empty();
        assert!(ok, "ledger not clean:\n{:#}", self.to_json());
    }

    /// A summary for reports and failure messages.
    pub fn to_json(&self) -> Value {
        let first = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>();
        json!({
            "tasks_in": self.tasks_in,
            "trajectory_files": self.files,
            "missing": self.missing.len(),
            "missing_first": first(&self.missing),
            "unexpected": first(&self.unexpected),
            "temp_files_left": self.temp_files.len(),
            "malformed": first(&self.malformed),
            "failed_trajectories": self.failed.len(),
            "failed_first": first(&self.failed),
            "attempt_histogram": self.attempts.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "dead_letters": self.dead,
            "tasks_code": {"length": self.code_stream.length, "added": self.code_stream.added, "pending": self.code_stream.pending, "undelivered": self.code_stream.lag},
            "enqueued_twice": self.enqueued_twice.len(),
            "rejection_records": self.rejected,
            "rejected_lines_recorded_twice": self.rejected_twice.len(),
            "writes_total": self.writes.as_ref().map(Writes::total),
            "tasks_written_more_than_once": self.written_twice().len(),
            "write_watch_overflowed": self.writes.as_ref().map(|w| w.overflowed),
        })
    }
}

fn read_trajectory(path: &Path) -> Option<Trajectory> {
    let raw = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&raw).ok()
}

/// Records in a `rejected.jsonl` and the line numbers that appear twice.
pub fn rejections(path: &Path) -> (usize, Vec<u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: BTreeMap<u64, u32> = BTreeMap::new();
    let mut n = 0;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        n += 1;
        let line = serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v.get("line").and_then(Value::as_u64))
            .unwrap_or(0);
        *lines.entry(line).or_default() += 1;
    }
    let twice = lines
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(l, _)| l)
        .collect();
    (n, twice)
}

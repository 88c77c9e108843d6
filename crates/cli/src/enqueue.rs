//! Putting work back on a task stream, for `adp dead requeue` and `adp replay`.
//!
//! Both write the stream directly (`XADD`), bypassing the dispatcher's
//! `dispatcher:dispatched_ids` set on purpose: the task was dispatched once
//! and is now run again. A fresh entry has a fresh delivery count.
//!
//! Before a task is re-enqueued, its current trajectory `<task_id>.json` is
//! kept as `<task_id>.attempt-N.json` (the lowest free N, never overwriting),
//! so the new run writes a fresh file and the history stays on disk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use adp_core::names;
use adp_core::types::unix_now;
use adp_core::TaskSpec;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::error::{CliError, Result};
use crate::files::archive_path;

/// Moves one `tasks:dead` entry back onto a task stream, atomically: the new
/// entry is added, the dead one deleted and the counter bumped together, and
/// only if the dead entry still exists (two operators cannot requeue it twice).
/// KEYS: dead stream, target stream, counters hash.
/// ARGV: dead entry id, submitted_at, counter field.
/// Returns the new entry id, or nil when the dead entry is gone.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local task, prio
for i = 1, #f, 2 do
  if f[i] == 'task' then task = f[i + 1] elseif f[i] == 'priority' then prio = f[i + 1] end
end
if not task then return redis.error_reply('dead entry has no task field') end
local id = redis.call('XADD', KEYS[2], '*', 'task', task, 'submitted_at', ARGV[2],
  'priority', prio or '1', 'requeued_from', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return id
",
    )
});

/// Requeues dead entry `dead_id` onto `stream`; `None` if it no longer exists.
pub async fn requeue_dead(
    conn: &mut ConnectionManager,
    dead_id: &str,
    stream: &str,
) -> Result<Option<String>> {
    Ok(REQUEUE
        .key(names::STREAM_DEAD)
        .key(stream)
        .key(names::COUNTERS)
        .arg(dead_id)
        .arg(format!("{:.6}", unix_now()))
        .arg(names::dead_requeued_counter(stream))
        .invoke_async(conn)
        .await?)
}

/// Adds `task` to its stream (`XADD`) and counts it as a replay. Returns the entry id.
pub async fn enqueue_replay(conn: &mut ConnectionManager, task: &TaskSpec) -> Result<String> {
    let stream = task.task_type.stream();
    let body = serde_json::to_string(task)?;
    let (id,): (String,) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(names::FIELD_TASK)
        .arg(body)
        .arg(names::FIELD_SUBMITTED_AT)
        .arg(format!("{:.6}", unix_now()))
        .arg(names::FIELD_PRIORITY)
        .arg(task.priority)
        .hincr(names::COUNTERS, names::replayed_counter(stream), 1)
        .ignore()
        .query_async(conn)
        .await?;
    Ok(id)
}

/// `<dir>/<task_id>.json` (`<task_id>@<rollout>.json` for one rollout of a
/// task sampled several times), refusing ids that are not safe file names.
pub fn current_path(dir: &Path, task_id: &str, rollout: Option<u32>) -> Result<PathBuf> {
    if !adp_core::validate::is_safe_task_id(task_id) {
        return Err(CliError::failure(format!(
            "unsafe task_id {task_id:?}: refusing to touch the file system"
        )));
    }
    Ok(dir.join(adp_core::runs::trajectory_file_name(task_id, rollout)))
}

/// The name of a trajectory without `.json` (what its archives are named
/// after): `<task_id>` or `<task_id>@<rollout>`.
pub fn stem(task_id: &str, rollout: Option<u32>) -> String {
    let name = adp_core::runs::trajectory_file_name(task_id, rollout);
    name.strip_suffix(".json").unwrap_or(&name).to_owned()
}

/// Keeps the current trajectory of `task_id` (its `rollout`) as
/// `<task_id>[@<rollout>].attempt-N.json` (lowest free N; an existing
/// archive is never overwritten). Returns the archive's path, or `None`
/// when there was no current file.
pub fn archive_current(dir: &Path, task_id: &str, rollout: Option<u32>) -> Result<Option<PathBuf>> {
    let current = current_path(dir, task_id, rollout)?;
    let stem = stem(task_id, rollout);
    for n in 1..=u32::MAX {
        let target = archive_path(dir, &stem, n);
        // A hard link fails if the target exists: no-clobber without a race.
        match std::fs::hard_link(&current, &target) {
            Ok(()) => {
                std::fs::remove_file(&current)?;
                sync_dir(dir);
                return Ok(Some(target));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {
                // File systems without hard links: check, then rename.
                if !current.exists() {
                    return Ok(None);
                }
                if target.exists() {
                    continue;
                }
                std::fs::rename(&current, &target)?;
                sync_dir(dir);
                return Ok(Some(target));
            }
        }
    }
    Err(CliError::failure(format!(
        "no free archive name for {stem}"
    )))
}

/// Puts an archive back as the current file (undo after a failed enqueue),
/// unless a current file has appeared meanwhile. Nothing to do without an
/// archive.
pub fn restore_archive(dir: &Path, task_id: &str, rollout: Option<u32>, archive: Option<&Path>) {
    let Some(archive) = archive else {
        return;
    };
    if let Ok(current) = current_path(dir, task_id, rollout) {
        if !current.exists() {
            let _ = std::fs::rename(archive, &current);
            sync_dir(dir);
        }
    }
}

/// The `; old trajectory kept as <file>` note of a requeue or replay
/// message (empty without an archive).
pub fn kept_note(archive: Option<&Path>) -> String {
    archive
        .and_then(Path::file_name)
        .map(|n| format!("; old trajectory kept as {}", n.to_string_lossy()))
        .unwrap_or_default()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_take_the_next_free_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(archive_current(d, "t", None).expect("ok"), None);
        std::fs::write(d.join("t.json"), "one").expect("write");
        let a1 = archive_current(d, "t", None)
            .expect("ok")
            .expect("archived");
        assert_eq!(a1, d.join("t.attempt-1.json"));
        std::fs::write(d.join("t.json"), "two").expect("write");
        let a2 = archive_current(d, "t", None)
            .expect("ok")
            .expect("archived");
        assert_eq!(a2, d.join("t.attempt-2.json"));
        assert!(!d.join("t.json").exists());
        assert_eq!(std::fs::read_to_string(a1).expect("read"), "one");
        restore_archive(d, "t", None, Some(&a2));
        assert_eq!(
            std::fs::read_to_string(d.join("t.json")).expect("read"),
            "two"
        );
        assert!(archive_current(d, "../x", None).is_err());
    }
}

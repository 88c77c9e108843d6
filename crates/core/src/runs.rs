//! Runs and rollouts on disk: where a trajectory of a run lives.
//!
//! A *run* names one pass over a task file (`RUN_ID`). The run
//! [`DEFAULT_RUN`] keeps the original layout; a named run has its own
//! directory (CONTRACT §8):
//!
//! | run        | trajectories                          | rejections                          |
//! |------------|---------------------------------------|-------------------------------------|
//! | `default`  | `$OUTPUT_DIR/trajectories/`           | `$OUTPUT_DIR/rejected.jsonl`        |
//! | `<run_id>` | `$OUTPUT_DIR/runs/<run_id>/trajectories/` | `$OUTPUT_DIR/runs/<run_id>/rejected.jsonl` |
//!
//! A task sampled K > 1 times (`ROLLOUTS`, the task's `rollouts`) gets one
//! file per rollout: `<task_id>@<rollout>.json`, rollout 0..K-1. `@` is not a
//! task id character (`[A-Za-z0-9._-]`), so a rollout's file name can never
//! be the file of another task. A task with one rollout keeps `<task_id>.json`.
//!
//! A trajectory's side files (the web runtime's screenshots and
//! accessibility trees) go to a directory next to it named like the file
//! with `.files` for `.json`: `<task_id>[@<rollout>].files/`. Trajectory
//! files end in `.json`, these directories in `.files`, so no directory can
//! be named like any task's trajectory file (with the bare `<task_id>/` of
//! before, task `x.json` had the directory `x.json/`, the name of task `x`'s
//! file).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::validate::is_safe_task_id;

/// The run of a dispatcher without `RUN_ID`: today's layout and paths.
pub const DEFAULT_RUN: &str = "default";
/// Longest run id.
pub const MAX_RUN_ID_LEN: usize = 64;
/// Separates a task id from its rollout index in a file name.
pub const ROLLOUT_SEPARATOR: char = '@';
/// Most rollouts of one task.
pub const MAX_ROLLOUTS: u32 = 1000;

/// Whether `run_id` is a usable run name: 1–64 characters of
/// `[A-Za-z0-9._-]`, not `.` or `..` (it becomes a directory name).
pub fn is_valid_run_id(run_id: &str) -> bool {
    run_id.len() <= MAX_RUN_ID_LEN && is_safe_task_id(run_id)
}

/// Checks a run id, with an error that says what a run id may be.
pub fn check_run_id(run_id: &str) -> Result<()> {
    if is_valid_run_id(run_id) {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "invalid run id {run_id:?}: use 1-{MAX_RUN_ID_LEN} characters of [A-Za-z0-9._-], not \".\" or \"..\""
        )))
    }
}

/// The directory holding a run's outputs: `$OUTPUT_DIR` itself for the
/// default run, `$OUTPUT_DIR/runs/<run_id>` for a named one.
pub fn run_dir(output_dir: &Path, run_id: &str) -> PathBuf {
    if run_id == DEFAULT_RUN {
        output_dir.to_path_buf()
    } else {
        output_dir.join("runs").join(run_id)
    }
}

/// The directory of a run's trajectory files.
pub fn trajectories_dir(output_dir: &Path, run_id: &str) -> PathBuf {
    run_dir(output_dir, run_id).join("trajectories")
}

/// The run's `rejected.jsonl`.
pub fn rejected_path(output_dir: &Path, run_id: &str) -> PathBuf {
    run_dir(output_dir, run_id).join("rejected.jsonl")
}

/// File name of a trajectory: `<task_id>.json`, or `<task_id>@<rollout>.json`
/// for one rollout of a task sampled several times.
pub fn trajectory_file_name(task_id: &str, rollout: Option<u32>) -> String {
    match rollout {
        None => format!("{task_id}.json"),
        Some(r) => format!("{task_id}{ROLLOUT_SEPARATOR}{r}.json"),
    }
}

/// Where the trajectory of (`run_id`, `task_id`, `rollout`) is written.
/// Refuses a task id or run id that is not a safe file name.
pub fn trajectory_path(
    output_dir: &Path,
    run_id: &str,
    task_id: &str,
    rollout: Option<u32>,
) -> Result<PathBuf> {
    if !is_safe_task_id(task_id) {
        return Err(Error::UnsafeTaskId(task_id.to_owned()));
    }
    check_run_id(run_id)?;
    Ok(trajectories_dir(output_dir, run_id).join(trajectory_file_name(task_id, rollout)))
}

/// Extension of a trajectory's side-file directory (for `.json`).
pub const SIDE_FILES_EXTENSION: &str = "files";

/// The directory of a trajectory's side files (the web runtime's
/// screenshots and accessibility trees): next to its file, named like it
/// with `.files` for `.json` — `<run's trajectories>/<task_id>[@<rollout>].files/`.
/// Refuses unsafe ids.
pub fn artifacts_dir(
    output_dir: &Path,
    run_id: &str,
    task_id: &str,
    rollout: Option<u32>,
) -> Result<PathBuf> {
    Ok(trajectory_path(output_dir, run_id, task_id, rollout)?.with_extension(SIDE_FILES_EXTENSION))
}

/// Splits a file stem `<task_id>@<rollout>` into its parts; a stem without
/// the separator is a task id without rollout.
pub fn split_rollout(stem: &str) -> (&str, Option<u32>) {
    match stem.rsplit_once(ROLLOUT_SEPARATOR) {
        Some((id, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            match r.parse() {
                Ok(n) => (id, Some(n)),
                Err(_) => (stem, None),
            }
        }
        _ => (stem, None),
    }
}

/// Where a task id sits in its run's id record: the bucket (a Redis hash
/// `dispatcher:ids:<run_id>:<bucket>`) and the field in it (a 64-bit hash of
/// the id, as a decimal integer: Redis keeps it in 9 bytes). Bucket and field
/// come from different bits of one 128-bit xxh3, so two ids share a slot
/// with probability ≈ 2^-80 per pair.
pub fn id_slot(task_id: &str) -> (u32, i64) {
    let h = xxhash_rust::xxh3::xxh3_128(task_id.as_bytes());
    let bucket = (h as u32) % crate::names::RUN_ID_BUCKETS;
    let field = (h >> 64) as u64 as i64;
    (bucket, field)
}

/// The 32-bit hash of a task's content kept in the id record: a reused
/// `task_id` whose content hashes differently is a conflicting duplicate.
pub fn content_hash(task_json: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(task_json) as u32
}

/// The named runs that have a directory under `$OUTPUT_DIR/runs`, sorted.
pub fn runs_on_disk(output_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(output_dir.join("runs"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|name| is_valid_run_id(name))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_run_keeps_the_original_layout() {
        let out = Path::new("/o");
        assert_eq!(
            trajectory_path(out, DEFAULT_RUN, "t1", None).expect("path"),
            Path::new("/o/trajectories/t1.json")
        );
        assert_eq!(
            rejected_path(out, DEFAULT_RUN),
            Path::new("/o/rejected.jsonl")
        );
        assert_eq!(
            trajectory_path(out, "exp-2", "t1", Some(2)).expect("path"),
            Path::new("/o/runs/exp-2/trajectories/t1@2.json")
        );
        assert_eq!(
            rejected_path(out, "exp-2"),
            Path::new("/o/runs/exp-2/rejected.jsonl")
        );
    }

    #[test]
    fn rollout_names_never_collide_with_task_ids() {
        let name = trajectory_file_name("a", Some(1));
        let stem = name.strip_suffix(".json").expect("suffix");
        assert!(!is_safe_task_id(stem), "{stem} must not be a valid task id");
        assert_eq!(split_rollout(stem), ("a", Some(1)));
        assert_eq!(split_rollout("a.1"), ("a.1", None));
        assert_eq!(split_rollout("a@"), ("a@", None));
    }

    #[test]
    fn side_file_directories_never_take_a_trajectory_file_name() {
        let out = Path::new("/o");
        // Task "a.json"'s directory against task "a"'s file.
        let dir = artifacts_dir(out, DEFAULT_RUN, "a.json", None).expect("dir");
        let file = trajectory_path(out, DEFAULT_RUN, "a", None).expect("file");
        assert_eq!(dir, Path::new("/o/trajectories/a.json.files"));
        assert_ne!(dir, file);
        for (id, rollout) in [
            ("a", None),
            ("a.json", None),
            ("b.files", None),
            ("a", Some(2)),
        ] {
            let dir = artifacts_dir(out, "r", id, rollout).expect("dir");
            let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(
                name.ends_with(".files") && !name.ends_with(".json"),
                "{name}"
            );
            assert_eq!(
                dir.parent(),
                trajectory_path(out, "r", id, rollout)
                    .expect("file")
                    .parent()
            );
        }
        assert_eq!(
            artifacts_dir(out, "r", "a", Some(2)).expect("dir"),
            Path::new("/o/runs/r/trajectories/a@2.files")
        );
        // Task "b"'s directory is not task "b.files"'s file either.
        assert_ne!(
            artifacts_dir(out, DEFAULT_RUN, "b", None).expect("dir"),
            trajectory_path(out, DEFAULT_RUN, "b.files", None).expect("file")
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        let out = Path::new("/o");
        assert!(trajectory_path(out, "../x", "t", None).is_err());
        assert!(trajectory_path(out, "r", "../t", None).is_err());
        assert!(trajectory_path(out, "", "t", None).is_err());
        assert!(!is_valid_run_id(&"r".repeat(MAX_RUN_ID_LEN + 1)));
    }
}

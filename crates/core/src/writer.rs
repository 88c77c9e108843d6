//! Atomic trajectory files: `$OUTPUT_DIR/trajectories/<task_id>.json`.
//!
//! Written to a temp file in the same directory, fsynced, renamed over the
//! target, and the directory fsynced: a reader sees the old file or the new
//! one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::types::Trajectory;
use crate::validate::is_safe_task_id;

/// Prefix of temp files; they never end in `.json`.
const TEMP_PREFIX: &str = ".tmp-";

/// Writes trajectories into one directory.
#[derive(Debug, Clone)]
pub struct TrajectoryWriter {
    dir: PathBuf,
}

impl TrajectoryWriter {
    /// A writer for `<output_dir>/trajectories`.
    pub fn new(output_dir: &Path) -> Self {
        TrajectoryWriter {
            dir: output_dir.join("trajectories"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `task_id`; refuses ids that are not safe file names.
    pub fn path_for(&self, task_id: &str) -> Result<PathBuf> {
        if !is_safe_task_id(task_id) {
            return Err(Error::UnsafeTaskId(task_id.to_owned()));
        }
        Ok(self.dir.join(format!("{task_id}.json")))
    }

    /// Writes `trajectory` atomically; returns the final path.
    pub async fn write(&self, trajectory: &Trajectory) -> Result<PathBuf> {
        let path = self.path_for(&trajectory.task_id)?;
        let mut body = serde_json::to_vec_pretty(trajectory)?;
        body.push(b'\n');
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomic(&dir, &path, &body).map(|()| path))
            .await
            .map_err(|e| Error::Other(format!("writer task panicked: {e}")))?
    }

    /// Removes temp files older than `age` left by a process killed mid-write.
    pub fn remove_stale_temp_files(&self, age: Duration) -> usize {
        remove_old_files(&self.dir, TEMP_PREFIX, age)
    }
}

/// Removes the files in `dir` whose names start with `prefix` and that were
/// last modified at least `age` ago; returns how many. For leftovers of a
/// process killed mid-work: `age` must exceed how long a live writer keeps
/// such a file. A missing directory or a file that cannot be removed is
/// skipped.
pub fn remove_old_files(dir: &Path, prefix: &str, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d >= age);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Temp file in `dir`, write, fsync, rename onto `path`, fsync `dir`.
/// `dir` is created when missing (also when it was removed while running).
pub fn write_atomic(dir: &Path, path: &Path, body: &[u8]) -> Result<()> {
    // 0644 (less the umask) like any other output file, not tempfile's 0600:
    // trajectories written by a root container stay readable by the host user.
    let temp_in = |dir: &Path| {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
    };
    let mut tmp = match temp_in(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            temp_in(dir)?
        }
        other => other?,
    };
    tmp.write_all(body)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| Error::Io(e.error))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_files_with_the_prefix_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["x-old", "x-new", "other"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for name in ["x-old", "other"] {
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .and_then(|f| f.set_modified(hour_ago))
                .expect("set mtime");
        }
        assert_eq!(
            remove_old_files(dir.path(), "x-", Duration::from_secs(600)),
            1
        );
        assert!(!dir.path().join("x-old").exists());
        assert!(dir.path().join("x-new").exists());
        assert!(dir.path().join("other").exists());
        assert_eq!(
            remove_old_files(&dir.path().join("missing"), "x-", Duration::ZERO),
            0
        );
    }

    #[test]
    fn a_missing_or_removed_directory_is_created() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("out").join("trajectories");
        write_atomic(&dir, &dir.join("a.json"), b"{}\n").expect("first write");
        std::fs::remove_dir_all(&dir).expect("remove");
        write_atomic(&dir, &dir.join("b.json"), b"{}\n").expect("after removal");
        assert_eq!(std::fs::read(dir.join("b.json")).expect("read"), b"{}\n");
        assert!(!dir.join("a.json").exists());
    }
}

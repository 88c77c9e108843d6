//! The trajectory directory, read one file at a time.
//!
//! [`walk`] streams directory entries (never a list of all names), so the
//! commands that read every trajectory use memory that does not grow with
//! the number of files. Names:
//!
//! * `<task_id>.json`: the current trajectory of a task;
//! * `<task_id>.attempt-N.json`: an earlier one, kept by `adp replay` /
//!   `adp dead requeue` (an *archive*);
//! * a writer's temp file (`.tmp~*`, [`adp_core::writer::is_temp_file_name`]):
//!   a write in progress (never read). A task id may start with `.` or
//!   `.tmp-`: `.tmp-x.json` is the trajectory of task `.tmp-x`.
//!
//! A file that cannot be used is a [`Corrupt`] with a stable reason code.

use std::collections::BTreeMap;
use std::fs::ReadDir;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::view::TrajView;

/// Files larger than this are not read (a trajectory is KiBs to a few MiBs).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What a file name says about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileName {
    /// `<task_id>.json`
    Current { task_id: String },
    /// `<task_id>.attempt-N.json`
    Archive { task_id: String, attempt: u32 },
}

impl FileName {
    pub fn task_id(&self) -> &str {
        match self {
            FileName::Current { task_id } | FileName::Archive { task_id, .. } => task_id,
        }
    }

    pub fn is_archive(&self) -> bool {
        matches!(self, FileName::Archive { .. })
    }
}

/// Classifies a directory entry name; `None` for temp files, hidden files and
/// anything not ending in `.json`.
///
/// A task id that itself ends in `.attempt-<digits>` reads as an archive:
/// avoid such ids.
pub fn classify(name: &str) -> Option<FileName> {
    if adp_core::writer::is_temp_file_name(name) {
        return None;
    }
    let stem = name.strip_suffix(".json")?;
    if stem.is_empty() {
        return None;
    }
    if let Some((base, n)) = stem.rsplit_once(".attempt-") {
        if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(attempt) = n.parse() {
                return Some(FileName::Archive {
                    task_id: base.to_owned(),
                    attempt,
                });
            }
        }
    }
    Some(FileName::Current {
        task_id: stem.to_owned(),
    })
}

/// Path of the archive `<task_id>.attempt-<n>.json`.
pub fn archive_path(dir: &Path, task_id: &str, n: u32) -> PathBuf {
    dir.join(format!("{task_id}.attempt-{n}.json"))
}

/// One trajectory file found by [`walk`].
#[derive(Debug, Clone)]
pub struct TrajFile {
    pub path: PathBuf,
    pub name: FileName,
}

impl TrajFile {
    /// The file name for reports.
    pub fn display_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Streaming iterator over trajectory files (directory order).
pub struct Walk {
    entries: Option<ReadDir>,
    include_archives: bool,
}

/// Walks `dir`; a missing directory has no files.
pub fn walk(dir: &Path, include_archives: bool) -> io::Result<Walk> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => Some(rd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(Walk {
        entries,
        include_archives,
    })
}

impl Iterator for Walk {
    type Item = io::Result<TrajFile>;

    fn next(&mut self) -> Option<Self::Item> {
        let entries = self.entries.as_mut()?;
        loop {
            let entry = match entries.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str().and_then(classify) else {
                continue;
            };
            if name.is_archive() && !self.include_archives {
                continue;
            }
            return Some(Ok(TrajFile {
                path: entry.path(),
                name,
            }));
        }
    }
}

/// Number of files [`walk`] would yield (a streaming count, for progress bars).
pub fn count(dir: &Path, include_archives: bool) -> io::Result<u64> {
    Ok(walk(dir, include_archives)?.filter(Result::is_ok).count() as u64)
}

/// Why a file was skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum Corrupt {
    /// Removed or renamed between listing and reading (a replay running).
    Vanished,
    Unreadable(String),
    TooLarge(u64),
    InvalidJson(String),
    NotATrajectory(String),
}

impl Corrupt {
    /// Stable reason code for summaries.
    pub fn reason(&self) -> &'static str {
        match self {
            Corrupt::Vanished => "vanished",
            Corrupt::Unreadable(_) => "unreadable",
            Corrupt::TooLarge(_) => "too_large",
            Corrupt::InvalidJson(_) => "invalid_json",
            Corrupt::NotATrajectory(_) => "not_a_trajectory",
        }
    }
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corrupt::Vanished => write!(f, "file disappeared while reading"),
            Corrupt::Unreadable(e) => write!(f, "cannot read: {e}"),
            Corrupt::TooLarge(n) => write!(f, "{n} bytes, larger than {MAX_FILE_BYTES}"),
            Corrupt::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            Corrupt::NotATrajectory(e) => write!(f, "not a trajectory: {e}"),
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, Corrupt> {
    let io_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            Corrupt::Vanished
        } else {
            Corrupt::Unreadable(e.to_string())
        }
    };
    let len = std::fs::metadata(path).map_err(io_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(Corrupt::TooLarge(len));
    }
    std::fs::read(path).map_err(io_err)
}

fn json_err(e: serde_json::Error) -> Corrupt {
    match e.classify() {
        serde_json::error::Category::Data => Corrupt::NotATrajectory(e.to_string()),
        serde_json::error::Category::Io => Corrupt::Unreadable(e.to_string()),
        _ => Corrupt::InvalidJson(e.to_string()),
    }
}

/// Reads a trajectory's fields the CLI uses.
pub fn load_view(path: &Path) -> Result<TrajView, Corrupt> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(json_err)
}

/// Reads a trajectory as raw JSON (every field, for export) and as a view.
pub fn load_full(path: &Path) -> Result<(Value, TrajView), Corrupt> {
    let bytes = read_bytes(path)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(json_err)?;
    let view = TrajView::deserialize(&value).map_err(json_err)?;
    Ok((value, view))
}

/// Skipped files by reason, with the first few names for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Skips {
    pub total: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Up to [`Skips::EXAMPLES`] `(file, why)` pairs.
    pub examples: Vec<SkipExample>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SkipExample {
    pub file: String,
    pub reason: &'static str,
    pub detail: String,
}

impl Skips {
    pub const EXAMPLES: usize = 20;

    pub fn add(&mut self, file: &TrajFile, why: &Corrupt) {
        self.total += 1;
        *self.by_reason.entry(why.reason()).or_default() += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(SkipExample {
                file: file.display_name(),
                reason: why.reason(),
                detail: crate::fmt::cut(&why.to_string(), 200),
            });
        }
    }

    /// Lines for a human report (empty when nothing was skipped).
    pub fn report(&self) -> String {
        if self.total == 0 {
            return String::new();
        }
        let mut out = format!(
            "Skipped {} unusable trajectory file{}:\n",
            self.total,
            if self.total == 1 { "" } else { "s" }
        );
        for (reason, n) in &self.by_reason {
            out.push_str(&format!("  {reason}: {n}\n"));
        }
        for ex in &self.examples {
            out.push_str(&format!("    {}: {}\n", ex.file, ex.detail));
        }
        if self.total as usize > self.examples.len() {
            out.push_str(&format!(
                "    ... and {} more\n",
                self.total as usize - self.examples.len()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            classify("t1.json"),
            Some(FileName::Current {
                task_id: "t1".into()
            })
        );
        assert_eq!(
            classify("t1.attempt-3.json"),
            Some(FileName::Archive {
                task_id: "t1".into(),
                attempt: 3
            })
        );
        assert_eq!(
            classify("t1.attempt-x.json"),
            Some(FileName::Current {
                task_id: "t1.attempt-x".into()
            })
        );
        assert_eq!(classify(".tmp-abc"), None);
        assert_eq!(classify(".tmp~abc"), None);
        assert_eq!(
            classify(".tmp-abc.json"),
            Some(FileName::Current {
                task_id: ".tmp-abc".into()
            })
        );
        assert_eq!(classify("notes.txt"), None);
        assert_eq!(classify(".json"), None);
    }
}

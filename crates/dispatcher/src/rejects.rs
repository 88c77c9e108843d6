//! The run's `rejected.jsonl`: one record per rejected line (CONTRACT §1),
//! naming the task file it came from.
//!
//! The file is only ever appended to (several task files, and several
//! dispatchers, may share it). A line read again after a crash (its record
//! written, the checkpoint covering it not yet saved) is not recorded twice:
//! at start the records of this task file written after the checkpoint are
//! read back ([`RejectLog::load_seen`]) and the same (line, reason, raw) is
//! not appended again.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

/// Longest `raw` kept in a record.
pub const RAW_LIMIT: usize = 4096;

/// Queued records are written out (with a checkpoint) once they reach this
/// size, even when no batch of tasks is ready.
pub const REJECTS_FLUSH_BYTES: usize = 1024 * 1024;

/// Appends rejection records.
pub struct RejectLog {
    path: PathBuf,
    /// The task file, as records name it.
    file: String,
    pending: Vec<u8>,
    /// Records of this task file already in the log past the checkpoint.
    seen: HashSet<u64>,
}

fn record_key(line: u64, reason: &str, raw: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&line.to_le_bytes());
    h.update(reason.as_bytes());
    h.update(&[0]);
    h.update(raw.as_bytes());
    h.digest()
}

impl RejectLog {
    /// Records of `task_file` appended to `path`.
    pub fn new(path: PathBuf, task_file: &str) -> Self {
        RejectLog {
            path,
            file: task_file.to_owned(),
            pending: Vec::new(),
            seen: HashSet::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads back the records of this task file from byte `from` on (the
    /// log's length when the checkpoint was saved): their lines are about to
    /// be read again and must not be recorded twice. Returns how many.
    pub fn load_seen(&mut self, from: u64) -> std::io::Result<usize> {
        self.seen.clear();
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut reader = std::io::BufReader::new(f);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) else {
                continue; // a torn or foreign line
            };
            if v["file"].as_str() != Some(self.file.as_str()) {
                continue;
            }
            let (Some(line), Some(reason), Some(raw)) =
                (v["line"].as_u64(), v["reason"].as_str(), v["raw"].as_str())
            else {
                continue;
            };
            self.seen.insert(record_key(line, reason, raw));
        }
        Ok(self.seen.len())
    }

    /// Queues a record; [`Self::flush`] writes it. A record this file
    /// already has past the checkpoint is not queued again.
    pub fn push(&mut self, line: u64, reason: &str, detail: &str, raw: &[u8]) {
        let raw = cut_lossy(raw, RAW_LIMIT);
        if self.seen.remove(&record_key(line, reason, &raw)) {
            return;
        }
        let record = json!({"line": line, "reason": reason, "detail": detail, "raw": raw, "file": self.file});
        self.pending
            .extend_from_slice(record.to_string().as_bytes());
        self.pending.push(b'\n');
    }

    /// Length of the file on disk (0 when it does not exist).
    pub fn file_len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Bytes of records queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Takes the queued records out (to queue others before them).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Queues `records` (from [`Self::take_pending`]) after those queued now.
    pub fn restore_pending(&mut self, records: Vec<u8>) {
        self.pending.extend_from_slice(&records);
    }

    /// Drops the queued records (their lines are about to be read again).
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// Appends every queued record (one write) and syncs the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&self.pending)?;
        f.sync_data()?;
        self.pending.clear();
        Ok(())
    }
}

/// The first `limit` bytes of `raw` as text (invalid UTF-8 replaced), not
/// cutting a character in half.
fn cut_lossy(raw: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(limit)]).into_owned();
    if raw.len() <= limit {
        return text;
    }
    // A cut multi-byte character shows as a trailing U+FFFD; drop it.
    text.trim_end_matches('\u{FFFD}').to_owned()
}

//! `$OUTPUT_DIR/rejected.jsonl`: one record per rejected line (CONTRACT §1).

use std::io::Write;
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
    pending: Vec<u8>,
}

impl RejectLog {
    pub fn new(output_dir: &Path) -> Self {
        RejectLog {
            path: output_dir.join("rejected.jsonl"),
            pending: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; [`Self::flush`] writes it.
    pub fn push(&mut self, line: u64, reason: &str, detail: &str, raw: &[u8]) {
        let raw = cut_lossy(raw, RAW_LIMIT);
        let record = json!({"line": line, "reason": reason, "detail": detail, "raw": raw});
        self.pending
            .extend_from_slice(record.to_string().as_bytes());
        self.pending.push(b'\n');
    }

    /// Length of the file on disk (0 when it does not exist).
    pub fn file_len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Cuts the file back to `len` bytes: records past it were written by a
    /// run that stopped before saving the checkpoint that covers them, and
    /// their lines are about to be read (and rejected) again. Returns the
    /// bytes removed.
    pub fn rewind(&mut self, len: u64) -> std::io::Result<u64> {
        let current = self.file_len();
        if current <= len {
            return Ok(0);
        }
        let f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(len)?;
        f.sync_all()?;
        Ok(current - len)
    }

    /// Bytes of records queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Appends every queued record and syncs the file.
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

//! The task file as a source of lines: resumes at a checkpoint, follows
//! appended lines, and notices a file created late, truncated, replaced or
//! rewritten in place.
//!
//! A checkpoint carries a hash of every byte of the file before its offset.
//! At start the file is resumed at the checkpoint only when its first
//! `offset` bytes still hash the same (same inode or not); otherwise it is
//! read again from line 1 (ids already dispatched in the run are skipped).
//! While following, a file that changed since the end was reached is checked
//! again before any new byte is read: the bytes before the offset (all of
//! them up to [`FULL_VERIFY_BYTES`], else the last [`TAIL_VERIFY_BYTES`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use adp_core::lines::{Line, LineReader};
use adp_core::validate::MAX_LINE_BYTES;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// While following, a prefix up to this long is hashed whole to check it.
pub const FULL_VERIFY_BYTES: u64 = 64 * 1024 * 1024;
/// Past [`FULL_VERIFY_BYTES`], the bytes just before the offset are checked.
pub const TAIL_VERIFY_BYTES: u64 = 64 * 1024;

/// Where reading stopped: identity of the file and position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub line: u64,
    /// Length of the run's `rejected.jsonl` when the checkpoint was saved:
    /// records of this file past it may be of lines after the checkpoint
    /// (set by the dispatcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_bytes: Option<u64>,
    /// xxh3-128 (hex) of the file's bytes before `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_hash: Option<String>,
}

/// What the next poll of the file found.
#[derive(Debug)]
pub enum Poll {
    Line(Line),
    /// No complete line available now.
    Idle,
    /// The file was truncated, replaced or rewritten; reading restarts at line 1.
    Restarted(&'static str),
    /// The file does not exist (yet).
    Missing,
}

/// Counts of the lines without a task id seen so far, by content: the
/// occurrence that makes their deterministic id.
pub type Occurrences = HashMap<u64, u32>;

/// Content key of a line for [`Occurrences`].
pub fn line_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes.trim_ascii())
}

/// Whether a line would get an id from the dispatcher (an object with no
/// `task_id`, or a null or empty one).
fn lacks_task_id(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        task_id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => match p.task_id {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::String(s)) => s.is_empty(),
            Some(_) => false,
        },
        Err(_) => false,
    }
}

/// The state of the file when reading reached its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AtEnd {
    len: u64,
    mtime: Option<SystemTime>,
    offset: u64,
    /// xxh3-64 of the bytes just before `offset` (long prefixes only).
    tail: Option<u64>,
}

/// A task file being read.
pub struct TaskFile {
    path: PathBuf,
    reader: Option<LineReader<BufReader<File>>>,
    /// A second handle for hashing byte ranges.
    file: Option<File>,
    dev: u64,
    ino: u64,
    follow: bool,
    /// Hash of the bytes before `hashed_to`.
    hasher: Xxh3,
    hashed_to: u64,
    at_end: Option<AtEnd>,
    /// Lines without task_id read so far (from line 1), by content.
    pub occurrences: Occurrences,
}

impl TaskFile {
    pub fn new(path: &Path, follow: bool) -> Self {
        TaskFile {
            path: path.to_path_buf(),
            reader: None,
            file: None,
            dev: 0,
            ino: 0,
            follow,
            hasher: Xxh3::new(),
            hashed_to: 0,
            at_end: None,
            occurrences: Occurrences::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Position after the last line returned, with the hash of the bytes before it.
    pub fn checkpoint(&mut self) -> std::io::Result<Option<Checkpoint>> {
        let Some(r) = self.reader.as_ref() else {
            return Ok(None);
        };
        let (offset, line) = (r.offset(), r.line_number());
        self.hash_to(offset)?;
        Ok(Some(Checkpoint {
            dev: self.dev,
            ino: self.ino,
            offset,
            line,
            rejected_bytes: None,
            prefix_hash: Some(format!("{:032x}", self.hasher.digest128())),
        }))
    }

    /// Offset and line count after the last line returned ((0, 0) before opening).
    pub fn position(&self) -> (u64, u64) {
        self.reader
            .as_ref()
            .map_or((0, 0), |r| (r.offset(), r.line_number()))
    }

    /// The checkpoint at an earlier position `offset` (after `line` lines),
    /// e.g. before a line held back.
    pub fn checkpoint_at(&mut self, offset: u64, line: u64) -> std::io::Result<Option<Checkpoint>> {
        if self.reader.is_none() {
            return Ok(None);
        }
        let hash = if self.hashed_to <= offset {
            self.hash_to(offset)?;
            self.hasher.digest128()
        } else {
            self.prefix_hash_now(offset)?
        };
        Ok(Some(Checkpoint {
            dev: self.dev,
            ino: self.ino,
            offset,
            line,
            rejected_bytes: None,
            prefix_hash: Some(format!("{hash:032x}")),
        }))
    }

    /// Advances the running hash to `offset` (reading the bytes again from
    /// the page cache).
    fn hash_to(&mut self, offset: u64) -> std::io::Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let mut buf = vec![0u8; 256 * 1024];
        while self.hashed_to < offset {
            let want = usize::try_from(offset - self.hashed_to)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file.read_at(&mut buf[..want], self.hashed_to)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "task file shrank while hashing it",
                ));
            }
            self.hasher.update(&buf[..n]);
            self.hashed_to += n as u64;
        }
        Ok(())
    }

    /// Opens the file, resuming at `resume` when its bytes before the
    /// checkpoint are unchanged. Returns false when the file is missing;
    /// `Some(reason)` in the second place when a checkpoint was not used.
    pub fn open(
        &mut self,
        resume: Option<&Checkpoint>,
    ) -> std::io::Result<(bool, Option<&'static str>)> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((false, None)),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.dev = meta.dev();
        self.ino = meta.ino();
        self.file = Some(file.try_clone()?);
        self.hasher = Xxh3::new();
        self.hashed_to = 0;
        self.at_end = None;
        self.occurrences.clear();
        let mut skipped = None;
        let (offset, line) = match resume {
            Some(c) if c.offset > meta.len() => {
                skipped = Some("the file is shorter than the checkpoint");
                (0, 0)
            }
            Some(c) if c.offset > 0 => match &c.prefix_hash {
                Some(expected) => {
                    let lines = self.scan_prefix(c.offset)?;
                    if format!("{:032x}", self.hasher.digest128()) == *expected {
                        (c.offset, lines)
                    } else {
                        skipped = Some("the file's bytes before the checkpoint changed");
                        self.hasher = Xxh3::new();
                        self.hashed_to = 0;
                        self.occurrences.clear();
                        (0, 0)
                    }
                }
                // A checkpoint saved before prefix hashes: the old rule.
                None if c.dev == self.dev && c.ino == self.ino => {
                    let lines = self.scan_prefix(c.offset)?;
                    (c.offset, lines.max(c.line))
                }
                None => {
                    skipped = Some("the file was replaced");
                    (0, 0)
                }
            },
            _ => (0, 0),
        };
        file.seek(SeekFrom::Start(offset))?;
        self.reader = Some(LineReader::new(
            BufReader::with_capacity(256 * 1024, file),
            MAX_LINE_BYTES,
            line,
            offset,
        ));
        Ok((true, skipped))
    }

    /// Hashes the first `offset` bytes and counts the lines without task_id
    /// among them (for their deterministic ids); returns the number of lines.
    fn scan_prefix(&mut self, offset: u64) -> std::io::Result<u64> {
        let Some(file) = self.file.as_ref() else {
            return Ok(0);
        };
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        let mut reader = LineReader::new(
            BufReader::with_capacity(256 * 1024, f.take(offset)),
            MAX_LINE_BYTES,
            0,
            0,
        );
        while let Some(line) = reader.next_line(true)? {
            if let Line::Text { bytes, .. } = line {
                if !bytes.iter().all(u8::is_ascii_whitespace) && lacks_task_id(&bytes) {
                    *self.occurrences.entry(line_key(&bytes)).or_default() += 1;
                }
            }
        }
        self.hash_to(offset)?;
        Ok(reader.line_number())
    }

    /// The next line, or why there is none.
    pub fn poll(&mut self) -> std::io::Result<Poll> {
        if self.reader.is_none() && !self.open(None)?.0 {
            return Ok(Poll::Missing);
        }
        if let Some(end) = self.at_end {
            // Nothing is read after the end before the file is checked.
            match std::fs::metadata(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Poll::Idle),
                Err(e) => return Err(e),
                Ok(meta) => {
                    if let Some(why) = self.changed(&meta, end)? {
                        self.restart()?;
                        return Ok(Poll::Restarted(why));
                    }
                    if meta.len() == end.len && meta.modified().ok() == end.mtime {
                        return Ok(Poll::Idle);
                    }
                    self.at_end = None;
                }
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Poll::Missing);
        };
        if let Some(line) = reader.next_line(!self.follow)? {
            return Ok(Poll::Line(line));
        }
        if !self.follow {
            return Ok(Poll::Idle);
        }
        // At the end: remember the file as it is now.
        let offset = reader.offset();
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Poll::Idle),
            Err(e) => Err(e),
            Ok(meta) => {
                let end = AtEnd {
                    len: meta.len(),
                    mtime: meta.modified().ok(),
                    offset,
                    tail: None,
                };
                if let Some(why) = self.changed(&meta, end)? {
                    self.restart()?;
                    return Ok(Poll::Restarted(why));
                }
                let tail = if offset > FULL_VERIFY_BYTES {
                    Some(self.tail_hash(offset)?)
                } else {
                    None
                };
                self.hash_to(offset)?;
                self.at_end = Some(AtEnd { tail, ..end });
                Ok(Poll::Idle)
            }
        }
    }

    /// Why the file at `meta` is no longer the one read up to `end.offset`
    /// (None: it is, possibly with lines appended).
    fn changed(
        &mut self,
        meta: &std::fs::Metadata,
        end: AtEnd,
    ) -> std::io::Result<Option<&'static str>> {
        if meta.dev() != self.dev || meta.ino() != self.ino {
            return Ok(Some("replaced"));
        }
        if meta.len() < end.offset {
            return Ok(Some("truncated"));
        }
        if meta.len() == end.len && meta.modified().ok() == end.mtime {
            return Ok(None);
        }
        // Same file, changed: are the bytes already read still there?
        let same = if end.offset <= FULL_VERIFY_BYTES {
            self.hash_to(end.offset)?;
            self.prefix_hash_now(end.offset)? == self.hasher.digest128()
        } else {
            end.tail.is_none_or(|t| {
                self.tail_hash(end.offset)
                    .map(|now| now == t)
                    .unwrap_or(false)
            })
        };
        Ok((!same).then_some("rewritten"))
    }

    /// xxh3-128 of the file's first `offset` bytes as they are now.
    fn prefix_hash_now(&self, offset: u64) -> std::io::Result<u128> {
        let Some(file) = self.file.as_ref() else {
            return Ok(0);
        };
        let mut h = Xxh3::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0;
        while at < offset {
            let want = usize::try_from(offset - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Ok(0);
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(h.digest128())
    }

    /// xxh3-64 of the [`TAIL_VERIFY_BYTES`] before `offset`.
    fn tail_hash(&self, offset: u64) -> std::io::Result<u64> {
        let Some(file) = self.file.as_ref() else {
            return Ok(0);
        };
        let start = offset.saturating_sub(TAIL_VERIFY_BYTES);
        let mut buf = vec![0u8; usize::try_from(offset - start).unwrap_or(0)];
        file.read_exact_at(&mut buf, start)?;
        Ok(xxhash_rust::xxh3::xxh3_64(&buf))
    }

    /// Reads the file again from line 1.
    fn restart(&mut self) -> std::io::Result<()> {
        self.reader = None;
        self.file = None;
        self.open(None)?;
        Ok(())
    }
}

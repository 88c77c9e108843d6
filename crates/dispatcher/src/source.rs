//! The task file as a source of lines: resumes at a checkpoint, follows
//! appended lines, and notices a file created late, truncated or replaced.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use adp_core::lines::{Line, LineReader};
use adp_core::validate::MAX_LINE_BYTES;
use serde::{Deserialize, Serialize};

/// Where reading stopped: identity of the file and position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub line: u64,
    /// Length of `rejected.jsonl` when the checkpoint was saved: the records
    /// of the lines before it end there (set by the dispatcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_bytes: Option<u64>,
}

/// What the next poll of the file found.
#[derive(Debug)]
pub enum Poll {
    Line(Line),
    /// No complete line available now.
    Idle,
    /// The file was truncated or replaced; reading restarts at line 1.
    Restarted(&'static str),
    /// The file does not exist (yet).
    Missing,
}

/// A task file being read.
pub struct TaskFile {
    path: PathBuf,
    reader: Option<LineReader<BufReader<File>>>,
    dev: u64,
    ino: u64,
    follow: bool,
}

impl TaskFile {
    pub fn new(path: &Path, follow: bool) -> Self {
        TaskFile {
            path: path.to_path_buf(),
            reader: None,
            dev: 0,
            ino: 0,
            follow,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Position after the last line returned.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.reader.as_ref().map(|r| Checkpoint {
            dev: self.dev,
            ino: self.ino,
            offset: r.offset(),
            line: r.line_number(),
            rejected_bytes: None,
        })
    }

    /// Opens the file, resuming at `resume` when it is the same file and
    /// still at least that long. Returns false when the file is missing.
    pub fn open(&mut self, resume: Option<Checkpoint>) -> std::io::Result<bool> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.dev = meta.dev();
        self.ino = meta.ino();
        let (offset, line) = match resume {
            Some(c) if c.dev == self.dev && c.ino == self.ino && c.offset <= meta.len() => {
                (c.offset, c.line)
            }
            _ => (0, 0),
        };
        file.seek(SeekFrom::Start(offset))?;
        self.reader = Some(LineReader::new(
            BufReader::with_capacity(256 * 1024, file),
            MAX_LINE_BYTES,
            line,
            offset,
        ));
        Ok(true)
    }

    /// The next line, or why there is none.
    pub fn poll(&mut self) -> std::io::Result<Poll> {
        if self.reader.is_none() && !self.open(None)? {
            return Ok(Poll::Missing);
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
        // At the end: has the file been replaced or truncated under us?
        let offset = reader.offset();
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Poll::Idle),
            Err(e) => Err(e),
            Ok(meta) if meta.dev() != self.dev || meta.ino() != self.ino => {
                self.reader = None;
                self.open(None)?;
                Ok(Poll::Restarted("replaced"))
            }
            Ok(meta) if meta.len() < offset => {
                self.reader = None;
                self.open(None)?;
                Ok(Poll::Restarted("truncated"))
            }
            Ok(_) => Ok(Poll::Idle),
        }
    }
}

//! Bounded-memory line reading for task files.
//!
//! A line longer than the limit is skipped to its newline without being held
//! in memory, and reported as [`Line::TooLong`]; line numbers count from 1.
//! Shared by the dispatcher and `adp validate`.

use std::io::{self, BufRead};

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The line's bytes, without `\n` (a trailing `\r` is removed too).
    Text { number: u64, bytes: Vec<u8> },
    /// The line had `len` bytes, more than the limit; its content was dropped.
    TooLong { number: u64, len: usize },
}

impl Line {
    pub fn number(&self) -> u64 {
        match self {
            Line::Text { number, .. } | Line::TooLong { number, .. } => *number,
        }
    }
}

/// Reads lines of at most `max` bytes from a `BufRead`.
pub struct LineReader<R> {
    inner: R,
    max: usize,
    number: u64,
    /// Bytes consumed so far (offset of the next line).
    offset: u64,
    /// The line being read; kept across calls while its end has not arrived.
    buf: Vec<u8>,
    /// Bytes of the line being read so far (may exceed `buf` when too long).
    len: usize,
    too_long: bool,
}

impl<R: BufRead> LineReader<R> {
    /// `start_line` is the number of lines before the first one read (for
    /// resuming at an offset); `start_offset` the byte offset of the reader.
    pub fn new(inner: R, max: usize, start_line: u64, start_offset: u64) -> Self {
        LineReader {
            inner,
            max,
            number: start_line,
            offset: start_offset,
            buf: Vec::new(),
            len: 0,
            too_long: false,
        }
    }

    /// Byte offset just after the last complete line returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of the last line returned.
    pub fn line_number(&self) -> u64 {
        self.number
    }

    /// The next complete line. With `allow_partial_last = false` a final line
    /// without `\n` is not returned (it may still be being written: the
    /// caller retries later from [`Self::offset`]); `Ok(None)` at the end.
    pub fn next_line(&mut self, allow_partial_last: bool) -> io::Result<Option<Line>> {
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                // End of input.
                // End of input; a partial line stays buffered for the next call.
                if self.len == 0 || !allow_partial_last {
                    return Ok(None);
                }
                self.number += 1;
                self.offset += self.len as u64;
                return Ok(Some(self.finish()));
            }
            let (chunk, found_newline) = match memchr_newline(available) {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let chunk_len = chunk.len();
            self.len += chunk_len;
            if !self.too_long {
                if self.len > self.max {
                    self.too_long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            let consumed = chunk_len + usize::from(found_newline);
            self.inner.consume(consumed);
            if found_newline {
                self.number += 1;
                self.offset += (self.len + 1) as u64;
                return Ok(Some(self.finish()));
            }
        }
    }

    /// Returns the line read and resets the state for the next one.
    fn finish(&mut self) -> Line {
        let len = std::mem::take(&mut self.len);
        if std::mem::take(&mut self.too_long) {
            Line::TooLong {
                number: self.number,
                len,
            }
        } else {
            let mut bytes = std::mem::take(&mut self.buf);
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            Line::Text {
                number: self.number,
                bytes,
            }
        }
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize, partial: bool) -> Vec<Line> {
        let mut r = LineReader::new(io::BufReader::with_capacity(4, input), max, 0, 0);
        let mut out = Vec::new();
        while let Some(l) = r.next_line(partial).expect("read") {
            out.push(l);
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let lines = all(b"ab\r\ncd\n\nlast", 100, true);
        assert_eq!(
            lines,
            vec![
                Line::Text {
                    number: 1,
                    bytes: b"ab".to_vec()
                },
                Line::Text {
                    number: 2,
                    bytes: b"cd".to_vec()
                },
                Line::Text {
                    number: 3,
                    bytes: vec![]
                },
                Line::Text {
                    number: 4,
                    bytes: b"last".to_vec()
                },
            ]
        );
    }

    #[test]
    fn partial_last_line_waits_when_asked() {
        let input = b"one\ntwo";
        let mut r = LineReader::new(io::BufReader::new(&input[..]), 100, 0, 0);
        assert!(matches!(
            r.next_line(false).expect("read"),
            Some(Line::Text { number: 1, .. })
        ));
        assert_eq!(r.offset(), 4);
        assert_eq!(r.next_line(false).expect("read"), None);
        assert_eq!(r.offset(), 4, "a partial line does not move the offset");
    }

    #[test]
    fn partial_line_completes_on_a_later_call() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        std::fs::write(&path, b"par").expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let mut r = LineReader::new(io::BufReader::new(file), 100, 0, 0);
        assert_eq!(r.next_line(false).expect("read"), None);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        io::Write::write_all(&mut f, b"tial\nnext\n").expect("append");
        assert_eq!(
            r.next_line(false).expect("read"),
            Some(Line::Text {
                number: 1,
                bytes: b"partial".to_vec()
            })
        );
        assert_eq!(r.offset(), 8);
    }

    #[test]
    fn long_line_is_reported_not_kept() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        let lines = all(&input, 10, true);
        assert_eq!(
            lines,
            vec![
                Line::TooLong { number: 1, len: 50 },
                Line::Text {
                    number: 2,
                    bytes: b"ok".to_vec()
                },
            ]
        );
    }
}

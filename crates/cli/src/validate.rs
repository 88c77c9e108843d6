//! `adp validate FILE`: the dispatcher's validation of `tasks.jsonl`
//! (CONTRACT §1), without Redis.
//!
//! Lines are read with [`adp_core::lines::LineReader`] (a line over
//! [`MAX_LINE_BYTES`] is rejected as `line_too_long` without being held in
//! memory) and checked with [`adp_core::validate::parse_task_line`], exactly
//! as the dispatcher does; a `task_id` seen earlier in the file is reported as
//! `duplicate`. Blank lines are skipped.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;

use adp_core::lines::{Line, LineReader};
use adp_core::validate::{parse_task_line, RejectReason, MAX_LINE_BYTES};
use serde::Serialize;

use crate::error::{CliError, Outcome, Result};
use crate::fmt;

/// Reason code of a task_id seen earlier in the same file.
pub const DUPLICATE: &str = "duplicate";

/// Check a task file before submitting it.
#[derive(Debug, clap::Args)]
#[command(
    about = "Check a tasks.jsonl file the way the dispatcher does, without Redis",
    long_about = "Check a tasks.jsonl file the way the dispatcher does, without Redis.\n\n\
Every line is validated against the task rules (CONTRACT §1) with the dispatcher's own code; \
every bad line is listed with its number, a reason code and an explanation. A task_id that \
appears twice in the file is reported as `duplicate` on its second line (the dispatcher would \
skip it). Blank lines are ignored. Exits 1 if any line is bad.",
    after_help = "Examples:\n  \
adp validate tasks.jsonl\n  \
adp validate --json tasks.jsonl | jq '.rejected[] | .line'\n  \
generate_tasks | adp validate -"
)]
pub struct ValidateArgs {
    /// The task file (`-` reads standard input).
    pub file: PathBuf,
    /// Print one JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only print the summary, not every bad line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// One rejected line.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub line: u64,
    pub reason: &'static str,
    pub message: String,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub file: String,
    pub lines: u64,
    pub blank: u64,
    pub valid: u64,
    pub rejected_count: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    pub rejected: Vec<Rejected>,
}

/// Validates every line of `input`.
pub fn check(input: impl BufRead, file: &str) -> io::Result<Report> {
    let mut reader = LineReader::new(input, MAX_LINE_BYTES, 0, 0);
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut report = Report {
        file: file.to_owned(),
        ..Report::default()
    };
    while let Some(line) = reader.next_line(true)? {
        report.lines = line.number();
        let result = match line {
            Line::TooLong { number, len } => Err((
                number,
                RejectReason::LineTooLong {
                    len,
                    max: MAX_LINE_BYTES,
                }
                .code(),
                RejectReason::LineTooLong {
                    len,
                    max: MAX_LINE_BYTES,
                }
                .to_string(),
            )),
            Line::Text { number, bytes } => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    report.blank += 1;
                    continue;
                }
                match parse_task_line(&bytes) {
                    Err(reason) => Err((number, reason.code(), reason.to_string())),
                    Ok(task) => match seen.get(&task.task_id) {
                        Some(first) => Err((
                            number,
                            DUPLICATE,
                            format!("task_id {:?} already appears on line {first}", task.task_id),
                        )),
                        None => {
                            seen.insert(task.task_id, number);
                            Ok(())
                        }
                    },
                }
            }
        };
        match result {
            Ok(()) => report.valid += 1,
            Err((line, reason, message)) => {
                report.rejected_count += 1;
                *report.by_reason.entry(reason).or_default() += 1;
                report.rejected.push(Rejected {
                    line,
                    reason,
                    message,
                });
            }
        }
    }
    Ok(report)
}

pub fn run(args: ValidateArgs) -> Result<Outcome> {
    let name = args.file.display().to_string();
    let report = if name == "-" {
        check(io::stdin().lock(), "-")
    } else {
        let f = std::fs::File::open(&args.file)
            .map_err(|e| CliError::failure(format!("cannot open {name}: {e}")))?;
        check(BufReader::with_capacity(64 * 1024, f), &name)
    }
    .map_err(|e| CliError::failure(format!("cannot read {name}: {e}")))?;

    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        if !args.quiet {
            for r in &report.rejected {
                writeln!(
                    out,
                    "{}:{}: {}: {}",
                    report.file, r.line, r.reason, r.message
                )?;
            }
        }
        let reasons = fmt::tally(&report.by_reason);
        writeln!(
            out,
            "{}: {} lines, {} valid task{}, {} rejected{}, {} blank",
            report.file,
            report.lines,
            report.valid,
            if report.valid == 1 { "" } else { "s" },
            report.rejected_count,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({reasons})")
            },
            report.blank
        )?;
    }
    Ok(Outcome::from_problems(report.rejected_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_lines_and_duplicates() {
        let input = b"{\"task_id\":\"a\",\"task_type\":\"code\",\"description\":\"x\"}\n\n\
not json\n{\"task_id\":\"a\",\"task_type\":\"code\",\"description\":\"y\"}\n";
        let r = check(&input[..], "t").expect("read");
        assert_eq!((r.lines, r.valid, r.blank, r.rejected_count), (4, 1, 1, 2));
        assert_eq!(r.rejected[0].line, 3);
        assert_eq!(r.rejected[0].reason, "invalid_json");
        assert_eq!(r.rejected[1].line, 4);
        assert_eq!(r.rejected[1].reason, DUPLICATE);
    }
}

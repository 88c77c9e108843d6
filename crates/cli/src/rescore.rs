//! `adp rescore [TASKS.jsonl]`: evaluates the task checks again on existing
//! trajectories, without running any agent.
//!
//! Every check that needs no live state is evaluated again from what the
//! trajectory recorded (`final_result`, `metadata.final_state`); the live
//! checks (`completed`, `tests`, `selector`) keep their earlier result
//! ([`adp_core::reward::rescore`]). With a task file, each task's checks
//! come from its line there (so an edited `expected_answer` takes effect)
//! and the trajectory's `task` becomes that line's; without one, from the
//! task each trajectory holds.
//!
//! A trajectory whose result changed is rewritten atomically with its old
//! `reward`, `success` and `reward_breakdown` appended to `reward_history`;
//! every other field is kept as it was. Unchanged files are not touched, so
//! a second run changes nothing. Infrastructure failures (`system_error`)
//! are never scored.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use adp_core::lines::{Line, LineReader};
use adp_core::reward::{self, Checks};
use adp_core::types::unix_now;
use adp_core::validate::{parse_task_line, MAX_LINE_BYTES};
use adp_core::{ErrorType, TaskSpec, Trajectory};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{CliError, Outcome, Result};
use crate::files::{self, Corrupt};
use crate::{progress, Env};

/// Key of the list of earlier scores.
pub const HISTORY_KEY: &str = "reward_history";

/// Score existing trajectories again.
#[derive(Debug, clap::Args)]
#[command(
    about = "Evaluate task checks again on existing trajectories (no agent runs)",
    long_about = "Evaluate task checks again on existing trajectories, without running any agent.\n\n\
Answer checks (expected_answer, verify answer), URL and page-text checks and expected_output / \
expected_text are evaluated again from what each trajectory recorded (final_result and \
metadata.final_state). Checks that need a live run — completed, Python tests, CSS selectors — \
keep their earlier result.\n\n\
With TASKS, each task's checks come from its line in that file (edit an expected answer, then \
rescore), and the trajectory's recorded task becomes that line; tasks without a trajectory are \
counted and skipped. Without TASKS, every trajectory in $OUTPUT_DIR/trajectories is scored with \
the task it recorded.\n\n\
A changed trajectory is rewritten atomically; its old reward, success and reward_breakdown are \
appended to its reward_history list. Unchanged files are not touched. Run it when no runtime is \
writing the same trajectories. Exits 1 if a task line was invalid or a file could not be \
read or written.",
    after_help = "Examples:\n  \
adp rescore tasks.jsonl               re-check against the (edited) task file\n  \
adp rescore --dry-run tasks.jsonl     show what would change, write nothing\n  \
adp rescore                           re-check every trajectory with its own recorded task\n  \
adp rescore --json tasks.jsonl | jq '.changed[]'"
)]
pub struct RescoreArgs {
    /// Task file whose checks to apply (`-` reads standard input); default:
    /// the task recorded in each trajectory.
    pub tasks: Option<PathBuf>,
    /// Report what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only print the summary, not every changed trajectory.
    #[arg(long, short)]
    pub quiet: bool,
}

/// One trajectory whose score changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub task_id: String,
    pub reward_before: Option<f64>,
    pub reward_after: f64,
    pub success_before: bool,
    pub success_after: bool,
}

/// One problem: a bad task line, an unusable file, a write that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub what: String,
    pub why: String,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Trajectories evaluated.
    pub rescored: u64,
    pub unchanged: u64,
    pub changed: Vec<Change>,
    /// Tasks of the file with no trajectory.
    pub no_trajectory: u64,
    /// `system_error` trajectories (never scored).
    pub infra_failures: u64,
    /// Trajectories without a recorded task (without TASKS only).
    pub no_task: u64,
    pub problem_count: u64,
    /// The first [`MAX_PROBLEMS`] problems.
    pub problems: Vec<Problem>,
}

/// Most problems listed one by one.
const MAX_PROBLEMS: usize = 50;

impl Report {
    fn problem(&mut self, what: impl Into<String>, why: impl std::fmt::Display) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                what: what.into(),
                why: why.to_string(),
            });
        }
    }

    /// The text report.
    pub fn render(&self, quiet: bool) -> String {
        let mut out = String::new();
        if !quiet {
            for c in &self.changed {
                let before = c
                    .reward_before
                    .map_or_else(|| "none".to_owned(), |r| format!("{r:.2}"));
                out.push_str(&format!(
                    "changed {}: reward {before} -> {:.2}, success {} -> {}\n",
                    c.task_id, c.reward_after, c.success_before, c.success_after
                ));
            }
        }
        let now_ok = self
            .changed
            .iter()
            .filter(|c| c.success_after && !c.success_before)
            .count();
        let now_failed = self
            .changed
            .iter()
            .filter(|c| !c.success_after && c.success_before)
            .count();
        out.push_str(&format!(
            "Rescored {} trajectories: {} changed ({now_ok} now succeed, {now_failed} now fail), {} unchanged.\n",
            self.rescored,
            self.changed.len(),
            self.unchanged
        ));
        let mut skipped = Vec::new();
        if self.no_trajectory > 0 {
            skipped.push(format!(
                "{} task(s) without a trajectory",
                self.no_trajectory
            ));
        }
        if self.infra_failures > 0 {
            skipped.push(format!(
                "{} infrastructure failure(s) (not scored)",
                self.infra_failures
            ));
        }
        if self.no_task > 0 {
            skipped.push(format!(
                "{} trajectory file(s) without a recorded task",
                self.no_task
            ));
        }
        if !skipped.is_empty() {
            out.push_str(&format!("Skipped: {}.\n", skipped.join(", ")));
        }
        if self.problem_count > 0 {
            out.push_str(&format!("Problems ({}):\n", self.problem_count));
            for p in &self.problems {
                out.push_str(&format!("  {}: {}\n", p.what, p.why));
            }
            if self.problem_count as usize > self.problems.len() {
                out.push_str(&format!(
                    "  ... and {} more\n",
                    self.problem_count as usize - self.problems.len()
                ));
            }
        }
        if self.dry_run {
            out.push_str("Dry run: nothing was written.\n");
        }
        out
    }
}

/// Runs `adp rescore`.
pub fn run(env: &Env, args: RescoreArgs) -> Result<Outcome> {
    env.check_output_dir()?;
    let dir = env.trajectories_dir();
    let mut report = Report {
        dry_run: args.dry_run,
        ..Report::default()
    };
    match &args.tasks {
        Some(path) => from_task_file(&dir, path, args.dry_run, &mut report)?,
        None => from_recorded(&dir, args.dry_run, &mut report)?,
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        stdout.write_all(report.render(args.quiet).as_bytes())?;
    }
    Ok(Outcome::from_problems(report.problem_count))
}

/// Rescore the trajectory of every task of the file, with its checks.
fn from_task_file(dir: &Path, path: &Path, dry_run: bool, report: &mut Report) -> Result<()> {
    let stdin = path.as_os_str() == "-";
    let open = || {
        std::fs::File::open(path)
            .map(BufReader::new)
            .map_err(|e| CliError::failure(format!("cannot open {}: {e}", path.display())))
    };
    let bar = if stdin || !progress::stderr_is_terminal() {
        progress::bar(0, "tasks")
    } else {
        progress::bar(open()?.lines().count() as u64, "tasks")
    };
    let input: Box<dyn BufRead> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(open()?)
    };
    let mut reader = LineReader::new(input, MAX_LINE_BYTES, 0, 0);
    while let Some(line) = reader.next_line(true)? {
        bar.inc(1);
        let (number, bytes) = match line {
            Line::TooLong { number, len } => {
                report.problem(
                    format!("line {number}"),
                    format!("{len} bytes, longer than {MAX_LINE_BYTES}"),
                );
                continue;
            }
            Line::Text { number, bytes } => (number, bytes),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let task = match parse_task_line(&bytes) {
            Ok(t) => t,
            Err(e) => {
                report.problem(format!("line {number}"), e);
                continue;
            }
        };
        let file = dir.join(format!("{}.json", task.task_id));
        if !file.exists() {
            report.no_trajectory += 1;
            continue;
        }
        rescore_file(dir, &file, Some(task), dry_run, report);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Rescore every trajectory with the task it recorded.
fn from_recorded(dir: &Path, dry_run: bool, report: &mut Report) -> Result<()> {
    let total = if progress::stderr_is_terminal() {
        files::count(dir, false)?
    } else {
        0
    };
    let bar = progress::bar(total, "files");
    for file in files::walk(dir, false)? {
        let file = file?;
        bar.inc(1);
        rescore_file(dir, &file.path, None, dry_run, report);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Reads a trajectory file: the raw JSON (kept whole) and the typed view.
fn load(path: &Path) -> Result<(Value, Trajectory), Corrupt> {
    let (raw, _) = files::load_full(path)?;
    let t = Trajectory::deserialize(&raw).map_err(|e| Corrupt::NotATrajectory(e.to_string()))?;
    Ok((raw, t))
}

/// Evaluates one trajectory again; rewrites it when its score changed.
fn rescore_file(
    dir: &Path,
    path: &Path,
    task: Option<TaskSpec>,
    dry_run: bool,
    report: &mut Report,
) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut raw, old) = match load(path) {
        Ok(r) => r,
        Err(e) => return report.problem(name, e),
    };
    if old.error_type == Some(ErrorType::SystemError) {
        report.infra_failures += 1;
        return;
    }
    let from_file = task.is_some();
    let Some(task) = task.or_else(|| old.task.clone()) else {
        report.no_task += 1;
        return;
    };
    let checks = match Checks::from_task(&task) {
        Ok(c) => c,
        Err(e) => return report.problem(name, e),
    };
    report.rescored += 1;
    let mut new = old.clone();
    // A message written by a failing check is the checks' own: recomputed.
    if is_check_message(new.error_message.as_deref()) {
        new.error_message = None;
    }
    reward::rescore(&checks, &old).apply(&mut new);
    let same = new.reward == old.reward
        && new.success == old.success
        && new.reward_breakdown == old.reward_breakdown;
    if same {
        report.unchanged += 1;
        return;
    }
    report.changed.push(Change {
        task_id: old.task_id.clone(),
        reward_before: old.reward,
        reward_after: new.reward.unwrap_or(0.0),
        success_before: old.success,
        success_after: new.success,
    });
    if dry_run {
        return;
    }
    update(&mut raw, &old, &new, from_file.then_some(&task));
    let written = adp_core::pretty::to_vec(&raw)
        .map_err(adp_core::Error::from)
        .and_then(|mut body| {
            body.push(b'\n');
            adp_core::writer::write_atomic(dir, path, &body)
        });
    if let Err(e) = written {
        report.problem(name, format!("cannot write: {e}"));
    }
}

/// Whether `message` is one a failing check wrote (`check <name> failed: ...`).
fn is_check_message(message: Option<&str>) -> bool {
    message.is_some_and(|m| m.starts_with("check ") && m.contains(" failed: "))
}

/// Writes the new score into the raw trajectory, the old one onto its
/// history; every other field stays as it was.
fn update(raw: &mut Value, old: &Trajectory, new: &Trajectory, task: Option<&TaskSpec>) {
    let Some(obj) = raw.as_object_mut() else {
        return;
    };
    let entry = json!({
        "reward": old.reward,
        "success": old.success,
        "reward_breakdown": old.reward_breakdown,
        "replaced_at": unix_now(),
    });
    match obj.get_mut(HISTORY_KEY) {
        Some(Value::Array(list)) => list.push(entry),
        _ => {
            obj.insert(HISTORY_KEY.into(), json!([entry]));
        }
    }
    obj.insert("success".into(), json!(new.success));
    obj.insert("reward".into(), json!(new.reward));
    obj.insert("reward_breakdown".into(), json!(new.reward_breakdown));
    obj.insert("error_message".into(), json!(new.error_message));
    if let Some(task) = task {
        obj.insert("task".into(), json!(task));
    }
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        match new.metadata.get(reward::CHECKS_LOG_KEY) {
            Some(log) => {
                meta.insert(reward::CHECKS_LOG_KEY.into(), log.clone());
            }
            None => {
                meta.remove(reward::CHECKS_LOG_KEY);
            }
        }
    }
}

//! `adp replay`: run tasks again to get fresh trajectories.
//!
//! The task comes from the trajectory's `task` field (written by every
//! runtime), or else from `--task-file`. The current trajectory is kept as
//! `<task_id>.attempt-N.json` and the task is added to its stream directly
//! (counted in `adp:counters` field `replayed:<stream>`).

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::PathBuf;

use adp_core::lines::{Line, LineReader};
use adp_core::validate::{parse_task_line, MAX_LINE_BYTES};
use adp_core::{runs, TaskSpec};

use crate::enqueue;
use crate::error::{CliError, Outcome, Result};
use crate::files;
use crate::Env;

/// Re-enqueue tasks from their trajectories.
#[derive(Debug, clap::Args)]
#[command(
    about = "Run tasks again from their stored trajectories (old file kept as <task_id>.attempt-N.json)",
    long_about = "Run tasks again to produce fresh trajectories.\n\n\
Each task is read from its trajectory file ($OUTPUT_DIR/trajectories/<task_id>.json, field \
`task`) or, if that has none, from --task-file. The current trajectory is renamed to \
<task_id>.attempt-N.json (N = 1, 2, ...; never overwritten) and the task is added to its \
stream again; a runtime then writes a fresh <task_id>.json. Replays are counted in the \
adp:counters hash (field replayed:<stream>).\n\n\
A rollout of a task sampled K times is named <task_id>@<k> (file <task_id>@<k>.json, kept as \
<task_id>@<k>.attempt-N.json); --failed replays each failed rollout.\n\n\
For dead letters prefer `adp dead requeue`, which also removes the tasks:dead entry.",
    after_help = "Examples:\n  \
adp replay demo_fib demo_web\n  \
adp replay --failed\n  \
adp replay --failed --error-type timeout --dry-run\n  \
adp replay --task-file tasks.jsonl lost_task_7\n  \
adp --run exp-1 replay task_3@2"
)]
pub struct ReplayArgs {
    /// Task ids to replay.
    #[arg(required_unless_present = "failed")]
    pub task_ids: Vec<String>,
    /// Replay every task whose current trajectory failed.
    #[arg(long)]
    pub failed: bool,
    /// With --failed: only this error type (e.g. timeout, runtime_error,
    /// system_error; `task_failed` = failed without an error type).
    #[arg(long, requires = "failed", value_name = "T")]
    pub error_type: Option<String>,
    /// Look up tasks without a usable trajectory in this task file.
    #[arg(long, value_name = "FILE")]
    pub task_file: Option<PathBuf>,
    /// Say what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// One trajectory to replay: its task and rollout, and the task when the
/// trajectory holds it.
struct Target {
    task_id: String,
    rollout: Option<u32>,
    task: Option<TaskSpec>,
}

/// Finds the tasks of `ids` in a task file (one streaming pass).
fn tasks_from_file(path: &PathBuf, ids: &HashSet<String>) -> Result<HashMap<String, TaskSpec>> {
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::failure(format!("cannot open {}: {e}", path.display())))?;
    let mut reader = LineReader::new(BufReader::new(f), MAX_LINE_BYTES, 0, 0);
    let mut found = HashMap::new();
    while let Some(line) = reader
        .next_line(true)
        .map_err(|e| CliError::failure(format!("cannot read {}: {e}", path.display())))?
    {
        if let Line::Text { bytes, .. } = line {
            if let Ok(task) = parse_task_line(&bytes) {
                if ids.contains(&task.task_id) && !found.contains_key(&task.task_id) {
                    found.insert(task.task_id.clone(), task);
                }
            }
        }
    }
    Ok(found)
}

pub async fn run(env: &Env, args: ReplayArgs) -> Result<Outcome> {
    env.check_output_dir()?;
    let dir = env.trajectories_dir();
    let mut problems = 0u64;

    // (task_id, rollout, task if known from the trajectory): one per
    // trajectory file, so every failed rollout of a task is replayed.
    let mut targets: Vec<Target> = Vec::new();
    let mut seen = HashSet::new();
    if args.failed {
        let walk = files::walk(&dir, false)
            .map_err(|e| CliError::failure(format!("cannot list {}: {e}", dir.display())))?;
        for file in walk.flatten() {
            let Ok(v) = files::load_view(&file.path) else {
                continue;
            };
            let wanted = match (v.failure_label(), args.error_type.as_deref()) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(label), Some(want)) => label == want,
            };
            // `<task_id>@<rollout>.json`: that rollout's file.
            let stem = file
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rollout = match runs::split_rollout(&stem) {
                (id, Some(r)) if id == v.task_id => Some(r),
                _ => None,
            };
            if wanted && seen.insert((v.task_id.clone(), rollout)) {
                targets.push(Target {
                    task_id: v.task_id.clone(),
                    rollout,
                    task: v.task.clone(),
                });
            }
        }
        targets.sort_by(|a, b| (&a.task_id, a.rollout).cmp(&(&b.task_id, b.rollout)));
    }
    for arg in &args.task_ids {
        // `t@2` names rollout 2 of task `t` (an `@` is not part of a valid
        // task id).
        let (id, rollout) = match runs::split_rollout(arg) {
            (id, Some(r)) if adp_core::validate::is_safe_task_id(id) => (id, Some(r)),
            _ => (arg.as_str(), None),
        };
        if !seen.insert((id.to_owned(), rollout)) {
            continue;
        }
        let path = enqueue::current_path(&dir, id, rollout)?;
        let task = files::load_view(&path).ok().and_then(|v| v.task);
        targets.push(Target {
            task_id: id.to_owned(),
            rollout,
            task,
        });
    }

    let missing: HashSet<String> = targets
        .iter()
        .filter(|t| t.task.is_none())
        .map(|t| t.task_id.clone())
        .collect();
    let from_file = match (&args.task_file, missing.is_empty()) {
        (Some(path), false) => tasks_from_file(path, &missing)?,
        _ => HashMap::new(),
    };

    let mut conn = if args.dry_run {
        None
    } else {
        Some(env.redis().await?)
    };
    let mut done = 0u64;
    for Target {
        task_id,
        rollout,
        task,
    } in targets
    {
        let id = enqueue::stem(&task_id, rollout);
        let Some(mut task) = task.or_else(|| from_file.get(&task_id).cloned()) else {
            eprintln!(
                "adp: {id}: no task found (no trajectory with a `task` field{})",
                if args.task_file.is_some() {
                    ", not in the task file"
                } else {
                    "; try --task-file"
                }
            );
            problems += 1;
            continue;
        };
        // The runtime names the new file after the task's run and rollout:
        // the ones of the file replayed (a task from the task file has none).
        if rollout.is_some() {
            task.rollout = rollout;
        }
        if task.run_id.is_none() && env.run_id != runs::DEFAULT_RUN {
            task.run_id = Some(env.run_id.clone());
        }
        let stream = task.task_type.stream();
        let Some(conn) = conn.as_mut() else {
            println!("would replay {id} onto {stream}");
            done += 1;
            continue;
        };
        let archived = enqueue::archive_current(&dir, &task_id, rollout)?;
        match enqueue::enqueue_replay(conn, &task).await {
            Ok(entry) => {
                done += 1;
                let kept = enqueue::kept_note(archived.as_deref());
                println!("replayed {id} onto {stream} as {entry}{kept}");
            }
            Err(e) => {
                enqueue::restore_archive(&dir, &task_id, rollout, archived.as_deref());
                return Err(e);
            }
        }
    }
    if args.dry_run {
        println!("{done} would be replayed, {problems} not found (dry run: nothing changed).");
    } else {
        println!("{done} replayed, {problems} not found.");
    }
    Ok(Outcome::from_problems(problems))
}

//! `adp dead`: the `tasks:dead` stream — list, show, requeue, drop.
//!
//! Requeue moves an entry back onto its original stream in one Lua step
//! (new entry, so a fresh delivery count; the dead entry is deleted; the
//! field `dead_requeued:<stream>` of the `adp:counters` hash is incremented,
//! exported by the dispatcher as `dead_requeued_total{queue_name}`). The new
//! entry carries `requeued_from = <dead entry id>`.
//!
//! A dead-lettered task normally has a `system_error` trajectory marked
//! `metadata.dead_lettered`: that one is kept as `<task_id>.attempt-N.json`
//! and the task is requeued. Any other existing trajectory (the task got a
//! real result since) makes requeue refuse unless `--force`.

use std::collections::HashMap;
use std::io::Write;

use adp_core::names;
use adp_core::types::unix_now;
use adp_core::TaskSpec;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, FromRedisValue};
use serde::Serialize;
use serde_json::Value;

use crate::enqueue;
use crate::error::{CliError, Outcome, Result};
use crate::files;
use crate::fmt::{self, Align, Table};
use crate::Env;

#[derive(Debug, clap::Subcommand)]
#[command(
    about = "Inspect and act on dead letters (tasks:dead)",
    long_about = "Inspect and act on dead letters: tasks whose delivery failed MAX_DELIVERIES times \
and were moved to the tasks:dead stream.",
    after_help = "Examples:\n  \
adp dead list\n  \
adp dead show 1764000000000-0\n  \
adp dead requeue 1764000000000-0 1764000000123-0\n  \
adp dead requeue --all --stream tasks:web\n  \
adp dead drop 1764000000000-0"
)]
pub enum DeadCommand {
    /// List dead letters (oldest first).
    #[command(
        after_help = "Examples:\n  adp dead list\n  adp dead list --stream tasks:code --limit 20\n  adp dead list --json | jq '.[].task_id'"
    )]
    List {
        /// Only entries that came from this stream.
        #[arg(long, value_parser = names::TASK_STREAMS)]
        stream: Option<String>,
        /// Show at most N entries.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its task, why it died, its trajectory.
    #[command(
        after_help = "Examples:\n  adp dead show 1764000000000-0\n  adp dead show 1764000000000-0 --json"
    )]
    Show {
        /// Entry id in tasks:dead (from `adp dead list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their original stream (fresh delivery count).
    #[command(
        long_about = "Put dead letters back on their original stream.\n\n\
Each entry is added again to the stream it came from (a new entry: its delivery count starts \
from zero) and deleted from tasks:dead, atomically; the requeue is counted in the adp:counters \
hash (field dead_requeued:<stream>), exported as dead_requeued_total{queue_name}. The \
system_error trajectory written when the task died is kept as <task_id>.attempt-N.json. If the \
task has any other trajectory (it got a result since), the requeue is refused unless --force \
(which keeps that file as an attempt too).",
        after_help = "Examples:\n  adp dead requeue 1764000000000-0\n  adp dead requeue --all\n  adp dead requeue --all --stream tasks:code --dry-run\n  adp dead requeue --force 1764000000000-0"
    )]
    Requeue {
        /// Entry ids in tasks:dead.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter (of --stream, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only entries that came from this stream.
        #[arg(long, value_parser = names::TASK_STREAMS, requires = "all")]
        stream: Option<String>,
        /// Requeue even if the task already has a (non dead-letter) trajectory.
        #[arg(long)]
        force: bool,
        /// Say what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good.
    #[command(after_help = "Examples:\n  adp dead drop 1764000000000-0\n  adp dead drop --all")]
    Drop {
        /// Entry ids in tasks:dead.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// One entry of `tasks:dead`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadEntry {
    pub id: String,
    pub task_id: Option<String>,
    pub task_type: Option<String>,
    pub source_stream: String,
    pub source_id: String,
    pub deliveries: Option<u64>,
    pub reason: String,
    pub dead_at: Option<f64>,
    pub submitted_at: Option<f64>,
    pub priority: Option<i64>,
    /// The task as stored (parsed JSON, or the raw string if it is not JSON).
    pub task: Value,
}

impl DeadEntry {
    fn from_fields(id: String, fields: HashMap<String, String>) -> Self {
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let raw_task = get(names::FIELD_TASK);
        let task: Value =
            serde_json::from_str(&raw_task).unwrap_or_else(|_| Value::String(raw_task.clone()));
        let str_field = |k: &str| task.get(k).and_then(Value::as_str).map(str::to_owned);
        DeadEntry {
            task_id: str_field("task_id"),
            task_type: str_field("task_type"),
            source_stream: get(names::FIELD_SOURCE_STREAM),
            source_id: get(names::FIELD_SOURCE_ID),
            deliveries: get(names::FIELD_DELIVERIES).parse().ok(),
            reason: get(names::FIELD_REASON),
            dead_at: get(names::FIELD_DEAD_AT).parse().ok(),
            submitted_at: get(names::FIELD_SUBMITTED_AT).parse().ok(),
            priority: get(names::FIELD_PRIORITY).parse().ok(),
            task,
            id,
        }
    }

    /// The task, if the entry holds a valid one.
    pub fn task_spec(&self) -> Option<TaskSpec> {
        serde_json::from_value(self.task.clone()).ok()
    }

    /// The stream to requeue onto: the recorded source stream if it is a task
    /// stream, else the task type's stream.
    pub fn target_stream(&self) -> Option<&'static str> {
        names::TASK_STREAMS
            .iter()
            .copied()
            .find(|s| *s == self.source_stream)
            .or_else(|| self.task_spec().map(|t| t.task_type.stream()))
    }
}

fn fields_of(map: HashMap<String, redis::Value>) -> HashMap<String, String> {
    map.into_iter()
        .filter_map(|(k, v)| String::from_redis_value(v).ok().map(|s| (k, s)))
        .collect()
}

/// Every entry of `tasks:dead` (optionally of one source stream), oldest
/// first, at most `limit`; read in pages of 500.
pub async fn list(
    conn: &mut ConnectionManager,
    stream: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadEntry>> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = conn
            .xrange_count(names::STREAM_DEAD, &start, "+", 500)
            .await?;
        let n = page.ids.len();
        for sid in page.ids {
            start = format!("({}", sid.id);
            let e = DeadEntry::from_fields(sid.id, fields_of(sid.map));
            if stream.is_none_or(|s| s == e.source_stream) {
                out.push(e);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if n < 500 {
            return Ok(out);
        }
    }
}

/// One entry by id.
pub async fn get(conn: &mut ConnectionManager, id: &str) -> Result<Option<DeadEntry>> {
    let page: StreamRangeReply = conn.xrange(names::STREAM_DEAD, id, id).await?;
    Ok(page
        .ids
        .into_iter()
        .next()
        .map(|sid| DeadEntry::from_fields(sid.id, fields_of(sid.map))))
}

/// Dead letters per source stream (for `adp status`).
pub async fn count_by_stream(conn: &mut ConnectionManager) -> Result<HashMap<String, u64>> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for e in list(conn, None, usize::MAX).await? {
        *out.entry(e.source_stream).or_default() += 1;
    }
    Ok(out)
}

pub async fn run(env: &Env, cmd: DeadCommand) -> Result<Outcome> {
    env.check_output_dir()?;
    let mut conn = env.redis().await?;
    match cmd {
        DeadCommand::List {
            stream,
            limit,
            json,
        } => cmd_list(&mut conn, stream.as_deref(), limit, json).await,
        DeadCommand::Show { id, json } => cmd_show(env, &mut conn, &id, json).await,
        DeadCommand::Requeue {
            ids,
            all,
            stream,
            force,
            dry_run,
        } => {
            let entries = select(&mut conn, ids, all, stream.as_deref()).await?;
            cmd_requeue(env, &mut conn, entries, force, dry_run).await
        }
        DeadCommand::Drop { ids, all } => cmd_drop(&mut conn, ids, all).await,
    }
}

/// The entries named (an unknown id is an error listed and skipped).
async fn select(
    conn: &mut ConnectionManager,
    ids: Vec<String>,
    all: bool,
    stream: Option<&str>,
) -> Result<Vec<Result<DeadEntry, String>>> {
    if all {
        return Ok(list(conn, stream, usize::MAX)
            .await?
            .into_iter()
            .map(Ok)
            .collect());
    }
    let mut out = Vec::new();
    for id in ids {
        match get(conn, &id).await {
            Ok(Some(e)) => out.push(Ok(e)),
            Ok(None) => out.push(Err(format!(
                "{id}: no such entry in {}",
                names::STREAM_DEAD
            ))),
            Err(CliError::Redis(e)) if e.code() == Some("ERR") => {
                out.push(Err(format!("{id}: not a valid stream id ({e})")))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn cmd_list(
    conn: &mut ConnectionManager,
    stream: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<Outcome> {
    let entries = list(conn, stream, limit).await?;
    let total: u64 = conn.xlen(names::STREAM_DEAD).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(Outcome::Done);
    }
    if entries.is_empty() {
        writeln!(
            out,
            "No dead letters{}.",
            stream.map(|s| format!(" from {s}")).unwrap_or_default()
        )?;
        return Ok(Outcome::Done);
    }
    let now = unix_now();
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("TASK_ID", Align::Left),
        ("STREAM", Align::Left),
        ("DELIVERIES", Align::Right),
        ("DIED", Align::Right),
        ("REASON", Align::Left),
    ]);
    for e in &entries {
        t.row(vec![
            e.id.clone(),
            e.task_id.clone().unwrap_or_else(|| "?".into()),
            e.source_stream.clone(),
            e.deliveries.map_or("?".into(), |d| d.to_string()),
            e.dead_at
                .map_or("?".into(), |d| format!("{} ago", fmt::duration(now - d))),
            fmt::cut(&e.reason, 70),
        ]);
    }
    out.write_all(t.render().as_bytes())?;
    writeln!(
        out,
        "{} shown, {} in {} (adp dead show ID for details)",
        entries.len(),
        total,
        names::STREAM_DEAD
    )?;
    Ok(Outcome::Done)
}

/// What `dead show` knows about the task's trajectory file.
#[derive(Debug, Clone, Serialize)]
struct TrajectoryInfo {
    path: String,
    exists: bool,
    success: Option<bool>,
    error_type: Option<String>,
    error_message: Option<String>,
    dead_lettered: Option<bool>,
    infra_errors: Option<Value>,
    archived_attempts: Vec<String>,
}

fn trajectory_info(env: &Env, task_id: &str, rollout: Option<u32>) -> Option<TrajectoryInfo> {
    let dir = env.trajectories_dir();
    let path = enqueue::current_path(&dir, task_id, rollout).ok()?;
    let stem = enqueue::stem(task_id, rollout);
    let mut info = TrajectoryInfo {
        path: path.display().to_string(),
        exists: path.exists(),
        success: None,
        error_type: None,
        error_message: None,
        dead_lettered: None,
        infra_errors: None,
        archived_attempts: Vec::new(),
    };
    if let Ok((raw, view)) = files::load_full(&path) {
        info.success = Some(view.success);
        info.error_type = view.error_type.clone();
        info.error_message = view.error_message.clone();
        info.dead_lettered = Some(view.dead_lettered());
        info.infra_errors = raw.pointer("/metadata/infra_errors").cloned();
    }
    for n in 1..=1000 {
        let p = files::archive_path(&dir, &stem, n);
        if !p.exists() {
            break;
        }
        info.archived_attempts.push(p.display().to_string());
    }
    Some(info)
}

async fn cmd_show(
    env: &Env,
    conn: &mut ConnectionManager,
    id: &str,
    json: bool,
) -> Result<Outcome> {
    let entry = match get(conn, id).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            return Err(CliError::failure(format!(
                "{id}: no such entry in {}",
                names::STREAM_DEAD
            )))
        }
        Err(e) => return Err(e),
    };
    let rollout = entry.task_spec().and_then(|t| t.rollout);
    let traj = entry
        .task_id
        .as_deref()
        .and_then(|t| trajectory_info(env, t, rollout));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        let v = serde_json::json!({"entry": entry, "trajectory": traj});
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(Outcome::Done);
    }
    let now = unix_now();
    let when = |t: Option<f64>| {
        t.map_or("?".to_owned(), |t| {
            format!("{} ({} ago)", fmt::utc(t), fmt::duration(now - t))
        })
    };
    writeln!(out, "entry:        {}", entry.id)?;
    writeln!(
        out,
        "task_id:      {}",
        entry.task_id.as_deref().unwrap_or("?")
    )?;
    writeln!(
        out,
        "task_type:    {}",
        entry.task_type.as_deref().unwrap_or("?")
    )?;
    writeln!(
        out,
        "from:         {} entry {}",
        entry.source_stream, entry.source_id
    )?;
    writeln!(
        out,
        "deliveries:   {}",
        entry.deliveries.map_or("?".into(), |d| d.to_string())
    )?;
    writeln!(out, "submitted:    {}", when(entry.submitted_at))?;
    writeln!(out, "died:         {}", when(entry.dead_at))?;
    writeln!(out, "reason:       {}", entry.reason)?;
    if let Some(t) = &traj {
        if t.exists {
            writeln!(
                out,
                "trajectory:   {} (success={}, error_type={}, dead_lettered={})",
                t.path,
                t.success.map_or("?".into(), |s| s.to_string()),
                t.error_type.as_deref().unwrap_or("null"),
                t.dead_lettered.map_or("?".into(), |s| s.to_string()),
            )?;
            if let Some(Value::Array(errs)) = &t.infra_errors {
                writeln!(out, "infra errors:")?;
                for e in errs {
                    writeln!(
                        out,
                        "  attempt {}: {}: {}",
                        e.get("attempt").map_or("?".into(), Value::to_string),
                        e.get("component").and_then(Value::as_str).unwrap_or("?"),
                        e.get("error").and_then(Value::as_str).unwrap_or("?"),
                    )?;
                }
            }
        } else {
            writeln!(out, "trajectory:   none at {}", t.path)?;
        }
        for a in &t.archived_attempts {
            writeln!(out, "earlier:      {a}")?;
        }
    }
    writeln!(out, "task:")?;
    writeln!(out, "{}", serde_json::to_string_pretty(&entry.task)?)?;
    Ok(Outcome::Done)
}

/// What to do about the task's existing trajectory before a requeue.
enum Existing {
    None,
    /// The dead-letter record: archived without asking.
    DeadLetterRecord,
    /// A real result (or an unreadable file): needs `--force`.
    Result(String),
}

fn existing(dir: &std::path::Path, task_id: &str, rollout: Option<u32>) -> Result<Existing> {
    let path = enqueue::current_path(dir, task_id, rollout)?;
    if !path.exists() {
        return Ok(Existing::None);
    }
    Ok(match files::load_view(&path) {
        Ok(v) if v.dead_lettered() => Existing::DeadLetterRecord,
        Ok(v) => Existing::Result(format!(
            "it already has a trajectory ({}, success={})",
            path.display(),
            v.success
        )),
        Err(why) => Existing::Result(format!(
            "it has a trajectory file that cannot be read ({}: {why})",
            path.display()
        )),
    })
}

async fn cmd_requeue(
    env: &Env,
    conn: &mut ConnectionManager,
    entries: Vec<Result<DeadEntry, String>>,
    force: bool,
    dry_run: bool,
) -> Result<Outcome> {
    let dir = env.trajectories_dir();
    let mut problems = 0u64;
    let mut done = 0u64;
    if entries.is_empty() {
        println!("No dead letters to requeue.");
    }
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(msg) => {
                eprintln!("adp: {msg}");
                problems += 1;
                continue;
            }
        };
        let (Some(task), Some(stream)) = (entry.task_spec(), entry.target_stream()) else {
            eprintln!(
                "adp: {}: the entry holds no valid task; it cannot be requeued (adp dead drop {} removes it)",
                entry.id, entry.id
            );
            problems += 1;
            continue;
        };
        let task_id = task.task_id.as_str();
        let rollout = task.rollout;
        // The trajectory of the entry's own run (its task says which; `--run`
        // for entries from before tasks carried it).
        let dir = match task.run_id.as_deref() {
            Some(run) if adp_core::runs::is_valid_run_id(run) => {
                adp_core::runs::trajectories_dir(&env.output_dir, run)
            }
            _ => dir.clone(),
        };
        let archive = match existing(&dir, task_id, rollout)? {
            Existing::None => false,
            Existing::DeadLetterRecord => true,
            Existing::Result(why) if !force => {
                eprintln!(
                    "adp: {}: not requeued: task {task_id} {why}; use --force to requeue anyway \
                     (the file is kept as an attempt)",
                    entry.id
                );
                problems += 1;
                continue;
            }
            Existing::Result(_) => true,
        };
        if dry_run {
            println!(
                "would requeue {} (task {task_id}) onto {stream}{}",
                entry.id,
                if archive {
                    ", keeping its trajectory as an attempt"
                } else {
                    ""
                }
            );
            done += 1;
            continue;
        }
        let archived = if archive {
            enqueue::archive_current(&dir, task_id, rollout)?
        } else {
            None
        };
        match enqueue::requeue_dead(conn, &entry.id, stream).await {
            Ok(Some(new_id)) => {
                done += 1;
                let kept = enqueue::kept_note(archived.as_deref());
                println!(
                    "requeued {} (task {task_id}) onto {stream} as {new_id}{kept}",
                    entry.id
                );
                tracing::info!(dead_id = %entry.id, task_id, stream, new_id = %new_id, "Dead letter requeued.");
            }
            Ok(None) => {
                enqueue::restore_archive(&dir, task_id, rollout, archived.as_deref());
                eprintln!(
                    "adp: {}: gone from {} meanwhile (requeued or dropped by someone else)",
                    entry.id,
                    names::STREAM_DEAD
                );
                problems += 1;
            }
            Err(e) => {
                enqueue::restore_archive(&dir, task_id, rollout, archived.as_deref());
                return Err(e);
            }
        }
    }
    if dry_run {
        println!(
            "{done} would be requeued, {problems} refused or not found (dry run: nothing changed)."
        );
    } else {
        println!("{done} requeued, {problems} refused or not found.");
    }
    Ok(Outcome::from_problems(problems))
}

async fn cmd_drop(conn: &mut ConnectionManager, ids: Vec<String>, all: bool) -> Result<Outcome> {
    if all {
        let n: u64 = conn.xlen(names::STREAM_DEAD).await?;
        let _: u64 = redis::cmd("XTRIM")
            .arg(names::STREAM_DEAD)
            .arg("MAXLEN")
            .arg(0)
            .query_async(conn)
            .await?;
        println!("dropped {n} dead letters.");
        return Ok(Outcome::Done);
    }
    let mut problems = 0;
    for id in &ids {
        let r: redis::RedisResult<u64> = conn.xdel(names::STREAM_DEAD, &[id]).await;
        match r {
            Ok(1) => println!("dropped {id}"),
            Ok(_) => {
                eprintln!("adp: {id}: no such entry in {}", names::STREAM_DEAD);
                problems += 1;
            }
            Err(e) if e.code() == Some("ERR") => {
                eprintln!("adp: {id}: not a valid stream id ({e})");
                problems += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Outcome::from_problems(problems))
}

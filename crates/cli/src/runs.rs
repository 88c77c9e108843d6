//! `adp runs`: the runs the dispatcher knows, with their counts, and
//! `adp runs prune <run>` to drop a finished run's record from Redis.

use std::collections::BTreeSet;
use std::path::Path;

use adp_core::{names, runs};
use clap::{Args, Subcommand};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::Serialize;

use crate::{CliError, Env, Outcome, Result};

/// Runs: one pass of the dispatcher over a task file each (`RUN_ID`).
#[derive(Debug, Args)]
#[command(
    about = "List runs with their counts, or drop a finished run's Redis record",
    after_help = "Examples:\n  adp runs                 every run: tasks dispatched, stream entries, trajectories, rejections\n  adp runs list --json\n  adp runs prune exp-1     show what would be dropped\n  adp runs prune exp-1 --yes"
)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Every run (in Redis or under $OUTPUT_DIR/runs) with its counts.
    List {
        /// One JSON object per run instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop a run's id record, counters and checkpoints from Redis (its
    /// files stay). Dispatching the same file in that run afterwards runs
    /// every task again.
    Prune {
        /// The run to drop (`default` also drops the pre-run id set).
        run: String,
        /// Really drop it (without: only show what would go).
        #[arg(long)]
        yes: bool,
    },
}

/// One row of `adp runs`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    /// Tasks in the run's id record (new tasks dispatched).
    pub tasks: u64,
    /// Stream entries added (one per rollout).
    pub entries: u64,
    /// Lines rejected as conflicting duplicates.
    pub conflicts: u64,
    /// Trajectory files (`*.json`) in the run's directory.
    pub trajectories: u64,
    /// Lines of the run's `rejected.jsonl`.
    pub rejected: u64,
    pub created_at: Option<f64>,
    pub updated_at: Option<f64>,
}

pub async fn run(env: &Env, args: RunsArgs) -> Result<Outcome> {
    match args.command.unwrap_or(RunsCommand::List { json: false }) {
        RunsCommand::List { json } => {
            let mut conn = env.redis().await?;
            let list = list(&mut conn, &env.output_dir).await?;
            if json {
                for r in &list {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", table(&list));
            }
            Ok(Outcome::Done)
        }
        RunsCommand::Prune { run, yes } => {
            runs::check_run_id(&run).map_err(|e| CliError::Config(e.to_string()))?;
            let mut conn = env.redis().await?;
            let keys = run_keys(&mut conn, &run).await?;
            if !yes {
                println!(
                    "Would drop {} Redis keys of run {run:?} (id record, counters, checkpoints); its files stay. Run again with --yes.",
                    keys.len()
                );
                return Ok(Outcome::Done);
            }
            let dropped = prune(&mut conn, &run, &keys).await?;
            println!("Dropped {dropped} Redis keys of run {run:?}; its files stay.");
            Ok(Outcome::Done)
        }
    }
}

/// `tasks`, `entries`, `conflicts`, `created_at`, `updated_at` of a run's hash.
type RunCounters = (
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<f64>,
    Option<f64>,
);

/// Every run: those in `dispatcher:runs`, those with a directory, and the
/// default run when it has anything.
pub async fn list(conn: &mut ConnectionManager, output_dir: &Path) -> Result<Vec<RunInfo>> {
    let mut ids: BTreeSet<String> = conn.smembers(names::RUNS).await?;
    ids.extend(runs::runs_on_disk(output_dir));
    let legacy: bool = conn.exists(names::DISPATCHED_IDS).await?;
    if legacy || runs::trajectories_dir(output_dir, runs::DEFAULT_RUN).is_dir() {
        ids.insert(runs::DEFAULT_RUN.to_owned());
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let (tasks, entries, conflicts, created, updated): RunCounters = redis::cmd("HMGET")
            .arg(names::run_key(&id))
            .arg(&["tasks", "entries", "conflicts", "created_at", "updated_at"])
            .query_async(conn)
            .await?;
        let mut tasks = tasks.unwrap_or(0);
        if id == runs::DEFAULT_RUN && legacy {
            let old: u64 = conn.scard(names::DISPATCHED_IDS).await?;
            tasks += old;
        }
        out.push(RunInfo {
            trajectories: count_json(&runs::trajectories_dir(output_dir, &id)),
            rejected: count_lines(&runs::rejected_path(output_dir, &id)),
            run_id: id,
            tasks,
            entries: entries.unwrap_or(0),
            conflicts: conflicts.unwrap_or(0),
            created_at: created,
            updated_at: updated,
        });
    }
    Ok(out)
}

fn table(list: &[RunInfo]) -> String {
    if list.is_empty() {
        return "No runs yet.\n".to_owned();
    }
    let mut out = format!(
        "{:<24} {:>10} {:>10} {:>13} {:>9} {:>9}  {}\n",
        "RUN", "TASKS", "ENTRIES", "TRAJECTORIES", "REJECTED", "CONFLICTS", "LAST DISPATCH"
    );
    for r in list {
        out.push_str(&format!(
            "{:<24} {:>10} {:>10} {:>13} {:>9} {:>9}  {}\n",
            r.run_id,
            r.tasks,
            r.entries,
            r.trajectories,
            r.rejected,
            r.conflicts,
            r.updated_at.map_or("-".to_owned(), crate::fmt::utc)
        ));
    }
    out
}

/// Files ending in `.json` (not hidden: no temp files) in `dir`, streamed.
fn count_json(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .count() as u64
    })
}

fn count_lines(path: &Path) -> u64 {
    use std::io::BufRead;
    std::fs::File::open(path).map_or(0, |f| {
        std::io::BufReader::new(f)
            .split(b'\n')
            .filter(|l| l.as_ref().is_ok_and(|l| !l.is_empty()))
            .count() as u64
    })
}

/// The Redis keys of a run: its id record buckets, counters, checkpoints
/// (and for the default run, the pre-run id set).
async fn run_keys(conn: &mut ConnectionManager, run: &str) -> Result<Vec<String>> {
    let mut keys = scan(conn, &format!("{}{run}:*", names::RUN_IDS_PREFIX)).await?;
    if run == runs::DEFAULT_RUN {
        // The default run's checkpoints have no run segment: `<prefix><md5>`.
        let all = scan(conn, &format!("{}*", names::DISPATCHER_CHECKPOINT_PREFIX)).await?;
        keys.extend(all.into_iter().filter(|k| {
            k.strip_prefix(names::DISPATCHER_CHECKPOINT_PREFIX)
                .is_some_and(|rest| !rest.contains(':'))
        }));
        keys.push(names::DISPATCHED_IDS.to_owned());
    } else {
        keys.extend(
            scan(
                conn,
                &format!("{}{run}:*", names::DISPATCHER_CHECKPOINT_PREFIX),
            )
            .await?,
        );
    }
    keys.push(names::run_key(run));
    Ok(keys)
}

async fn scan(conn: &mut ConnectionManager, pattern: &str) -> Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        out.extend(batch);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Unlinks `keys` (in batches) and forgets the run; returns how many existed.
async fn prune(conn: &mut ConnectionManager, run: &str, keys: &[String]) -> Result<u64> {
    let mut dropped = 0;
    for chunk in keys.chunks(1000) {
        let n: u64 = redis::cmd("UNLINK").arg(chunk).query_async(conn).await?;
        dropped += n;
    }
    let _: u64 = conn.srem(names::RUNS, run).await?;
    Ok(dropped)
}

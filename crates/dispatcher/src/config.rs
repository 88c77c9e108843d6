//! Dispatcher settings (flag or environment variable, CONTRACT §6).

use std::path::PathBuf;

use adp_core::config::CommonArgs;
use adp_core::runs;
use clap::{ArgAction, Parser};

/// Reads tasks.jsonl, validates every line and routes each task to its Redis
/// stream (tasks:code, tasks:web, tasks:reasoning) exactly once per task_id
/// and run (RUN_ID), ROLLOUTS entries per task.
///
/// Rejected lines are logged, counted and appended to the run's rejected.jsonl
/// ($OUTPUT_DIR/rejected.jsonl for the default run,
/// $OUTPUT_DIR/runs/<run_id>/rejected.jsonl for a named run).
/// With FOLLOW=true it keeps watching the file for appended lines (and copes
/// with the file being created late, truncated or replaced); with FOLLOW=false
/// it dispatches the file once, prints a summary line and exits 0.
///
/// Examples:
///   dispatcher --task-file tasks.jsonl --follow false
///   RUN_ID=qwen-7b ROLLOUTS=4 dispatcher --task-file tasks.jsonl --follow false
///   REDIS_URL=redis://redis:6379 TASK_FILE=/data/tasks.jsonl dispatcher
#[derive(Debug, Clone, Parser)]
#[command(name = "dispatcher", version, verbatim_doc_comment)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The task file: one JSON task per line.
    #[arg(long, env = "TASK_FILE", default_value = "tasks.jsonl")]
    pub task_file: PathBuf,
    /// Keep watching the file for appended lines (true) or dispatch it once and exit (false).
    #[arg(long, env = "FOLLOW", default_value_t = true, action = ArgAction::Set)]
    pub follow: bool,
    /// The run: one pass over the task file with its own idempotency record,
    /// checkpoint, rejections and output directory. `default` keeps the
    /// original layout; any other name writes under $OUTPUT_DIR/runs/<run_id>/.
    #[arg(long, env = "RUN_ID", default_value = runs::DEFAULT_RUN, value_parser = parse_run_id)]
    pub run_id: String,
    /// Independent samples of each task (K stream entries, K trajectories);
    /// a task's own `rollouts` field wins.
    #[arg(long, env = "ROLLOUTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(runs::MAX_ROLLOUTS)))]
    pub rollouts: u32,
    /// Pause a task type while its stream has more entries than this not yet
    /// acknowledged (other types go on).
    #[arg(long, env = "MAX_BACKLOG", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: u64,
    /// Lines of paused task types held in memory (in order) while reading
    /// goes on for the other types; when full, reading waits.
    #[arg(long, env = "MAX_SPILL", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_spill: u64,
    /// While idle, how often the checkpoint in Redis is compared with the
    /// one saved last (a Redis that lost its latest writes), in milliseconds.
    #[arg(long, env = "VERIFY_INTERVAL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub verify_interval_ms: u64,
    /// With FOLLOW=false: the longest wait, before the final check that Redis
    /// still holds the checkpoint, for Redis to have the last batches on disk
    /// (WAITAOF on Redis >= 7.2, else the appendfsync everysec second by the
    /// server's clock), in milliseconds; 0 = no check.
    #[arg(long, env = "EXIT_VERIFY_MS", default_value_t = 1500)]
    pub exit_verify_ms: u64,
    /// Port of /metrics and /health.
    #[arg(long, env = "METRICS_PORT", default_value_t = 8000)]
    pub metrics_port: u16,
    /// Tasks sent to Redis in one atomic batch.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,
    /// How often to look for appended lines at the end of the file, in milliseconds.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,
    /// How often queue_size / pending_lag_seconds are refreshed, in seconds.
    #[arg(long, env = "STATS_INTERVAL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stats_interval_secs: u64,
}

fn parse_run_id(s: &str) -> Result<String, String> {
    runs::check_run_id(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

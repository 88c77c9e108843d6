//! Dispatcher settings (flag or environment variable, CONTRACT §6).

use std::path::PathBuf;

use adp_core::config::CommonArgs;
use clap::{ArgAction, Parser};

/// Reads tasks.jsonl, validates every line and routes each task to its Redis
/// stream (tasks:code, tasks:web, tasks:reasoning) exactly once per task_id.
///
/// Rejected lines are logged, counted and appended to $OUTPUT_DIR/rejected.jsonl.
/// With FOLLOW=true it keeps watching the file for appended lines (and copes
/// with the file being created late, truncated or replaced); with FOLLOW=false
/// it dispatches the file once, prints a summary line and exits 0.
///
/// Examples:
///   dispatcher --task-file tasks.jsonl --follow false
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
    /// Pause reading while a target stream has more entries than this not yet acknowledged.
    #[arg(long, env = "MAX_BACKLOG", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: u64,
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

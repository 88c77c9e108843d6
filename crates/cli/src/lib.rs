//! # adp — the operator CLI of the Agent Data Platform
//!
//! Talks to Redis (`REDIS_URL`) and the output directory (`OUTPUT_DIR`) only.
//!
//! # Layout
//! * [`status`]: per-stream progress, runtime health, consumers (`adp status [--watch]`).
//! * [`dead`]: the `tasks:dead` stream: list, show, requeue, drop.
//! * [`replay`]: re-enqueue tasks from their trajectories (old file kept as `<id>.attempt-N.json`).
//! * [`runs`]: the runs in Redis and on disk (`adp runs list|prune`).
//! * [`enqueue`]: putting a task back on its stream, archiving the old trajectory.
//! * [`export`]: trajectories → one JSONL dataset (`trajectory`, `messages`, `sharegpt`).
//! * [`rescore`]: task checks evaluated again on existing trajectories (old scores kept in `reward_history`).
//! * [`stats`]: success rates, error histogram, percentiles, cache hit rate.
//! * [`validate`]: the dispatcher's validation of `tasks.jsonl`, offline.
//! * [`files`]: streaming walk over the trajectory files, corrupt-file reasons.
//! * [`view`]: a lenient reading of a trajectory file.
//! * [`fmt`], [`progress`]: tables, durations, times; progress bars on a TTY.
//! * [`error`]: errors and exit codes.

pub mod dead;
pub mod enqueue;
pub mod error;
pub mod export;
pub mod files;
pub mod fmt;
pub mod progress;
pub mod replay;
pub mod rescore;
pub mod runs;
pub mod stats;
pub mod status;
pub mod validate;
pub mod view;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use redis::aio::ConnectionManager;

pub use error::{CliError, Outcome, Result};

const MAIN_EXAMPLES: &str = "\
Examples:
  adp status                      one snapshot of every stream
  adp status --watch              live table with a progress bar (Ctrl-C to stop)
  adp dead list                   what is in tasks:dead, and why
  adp dead requeue --all          put every dead letter back on its stream
  adp replay --failed --error-type timeout
  adp export --out data.jsonl --format messages --success-only
  adp rescore tasks.jsonl         score trajectories again after editing their checks
  adp stats
  adp --run qwen-7b stats         the same for the trajectories of run qwen-7b
  adp runs                        every run with its counts
  adp validate tasks.jsonl        check a task file before submitting it

Exit codes: 0 ok, 1 failure, 2 usage error, 64 bad configuration.";

/// Operator CLI of the Agent Data Platform.
#[derive(Debug, Parser)]
#[command(
    name = "adp",
    version,
    about = "Operator CLI of the Agent Data Platform: progress, dead letters, replay, dataset export.",
    long_about = "Operator CLI of the Agent Data Platform.\n\n\
It reads the Redis streams (tasks:code, tasks:web, tasks:reasoning, tasks:dead) and the \
trajectory files in $OUTPUT_DIR/trajectories; it never talks to the runtimes themselves.",
    after_help = MAIN_EXAMPLES
)]
pub struct Cli {
    /// Redis server holding the streams.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://localhost:6379",
        global = true
    )]
    pub redis_url: String,
    /// Output directory of the platform (holds trajectories/ and rejected.jsonl).
    #[arg(long, env = "OUTPUT_DIR", default_value = "output", global = true)]
    pub output_dir: PathBuf,
    /// The run whose trajectories and rejections the command reads
    /// (`default`: $OUTPUT_DIR/trajectories; else $OUTPUT_DIR/runs/<run>/).
    #[arg(long = "run", env = "RUN_ID", default_value = adp_core::runs::DEFAULT_RUN, global = true)]
    pub run_id: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Status(status::StatusArgs),
    #[command(subcommand)]
    Dead(dead::DeadCommand),
    Replay(replay::ReplayArgs),
    Rescore(rescore::RescoreArgs),
    Export(export::ExportArgs),
    Stats(stats::StatsArgs),
    Validate(validate::ValidateArgs),
    Runs(runs::RunsArgs),
}

/// Where the platform's state lives.
#[derive(Debug, Clone)]
pub struct Env {
    pub redis_url: String,
    pub output_dir: PathBuf,
    /// The run commands read (`--run`).
    pub run_id: String,
}

impl Env {
    /// The run's trajectory directory: `$OUTPUT_DIR/trajectories` for the
    /// default run, `$OUTPUT_DIR/runs/<run>/trajectories` for a named one.
    pub fn trajectories_dir(&self) -> PathBuf {
        adp_core::runs::trajectories_dir(&self.output_dir, &self.run_id)
    }

    /// The run's `rejected.jsonl`.
    pub fn rejected_path(&self) -> PathBuf {
        adp_core::runs::rejected_path(&self.output_dir, &self.run_id)
    }

    /// Checks the output directory is usable (missing is fine: nothing written yet).
    pub fn check_output_dir(&self) -> Result<()> {
        check_dir(&self.output_dir, "OUTPUT_DIR")?;
        check_dir(&self.trajectories_dir(), "OUTPUT_DIR/trajectories")
    }

    /// A Redis connection; an unparsable URL is a configuration error (64),
    /// an unreachable server a failure (1).
    pub async fn redis(&self) -> Result<ConnectionManager> {
        let shown = adp_core::config::redact_url(&self.redis_url);
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            return Err(CliError::Config(format!(
                "REDIS_URL {shown:?} is not a Redis URL: {e}"
            )));
        }
        adp_core::config::connect(&self.redis_url)
            .await
            .map_err(|e| CliError::failure(format!("cannot reach Redis at {shown}: {e}")))
    }
}

fn check_dir(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(CliError::Config(format!(
            "{what} {} is not a directory",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Runs one command. Only `status --watch` catches Ctrl-C (to stop cleanly);
/// every other command keeps the default signal behaviour.
pub async fn run(cli: Cli) -> ExitCode {
    if let Err(e) = adp_core::runs::check_run_id(&cli.run_id) {
        eprintln!("adp: error: --run: {e}");
        return ExitCode::from(64);
    }
    let env = Env {
        redis_url: cli.redis_url,
        output_dir: cli.output_dir,
        run_id: cli.run_id,
    };
    let result = match cli.command {
        Command::Status(args) => status::run(&env, args).await,
        Command::Dead(cmd) => dead::run(&env, cmd).await,
        Command::Replay(args) => replay::run(&env, args).await,
        Command::Rescore(args) => rescore::run(&env, args),
        Command::Export(args) => export::run(&env, args),
        Command::Stats(args) => stats::run(&env, args),
        Command::Validate(args) => validate::run(args),
        Command::Runs(args) => runs::run(&env, args).await,
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("adp: error: {e}");
            e.exit_code()
        }
    }
}

//! # dispatcher
//!
//! Reads the task file line by line, validates each line, and routes tasks to
//! their Redis stream exactly once per `task_id` (CONTRACT §1, §2).
//!
//! # Layout
//! * [`config`] — settings.
//! * [`source`] — the task file (checkpoint resume, follow, truncation/replacement).
//! * [`dispatch`] — the atomic batch step in Redis (idempotency + checkpoint).
//! * [`rejects`] — `rejected.jsonl`.
//! * [`stats`] — `queue_size` / `pending_lag_seconds` refresh and backpressure.

pub mod config;
pub mod dispatch;
pub mod rejects;
pub mod source;
pub mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adp_core::lines::Line;
use adp_core::metrics::{CheckResult, HealthFn, Metrics};
use adp_core::queue::Queue;
use adp_core::types::TaskType;
use adp_core::validate::{parse_task_line, RejectReason};
use adp_core::{config as core_config, health, names};
use anyhow::Context;
use md5::{Digest, Md5};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use dispatch::Prepared;
use rejects::RejectLog;
use source::{Checkpoint, Poll, TaskFile};

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub dispatched: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dispatched {}, duplicates {}, rejected {}",
            self.dispatched,
            self.duplicates,
            self.rejected_total()
        )?;
        if !self.rejected.is_empty() {
            let parts: Vec<String> = self
                .rejected
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        write!(f, " [{} lines read]", self.lines)
    }
}

/// Redis key of the checkpoint of one task file (by canonical path).
pub fn checkpoint_key(path: &std::path::Path) -> String {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = Md5::digest(canonical.to_string_lossy().as_bytes());
    format!(
        "{}{}",
        names::DISPATCHER_CHECKPOINT_PREFIX,
        hex::encode(digest)
    )
}

/// Runs the dispatcher until the file is done (FOLLOW=false) or `shutdown`.
/// Serves metrics on `metrics_port` (0 = any free port).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let metrics = Metrics::new();
    metrics.init_rejections();
    for t in TaskType::ALL {
        metrics
            .tasks_submitted_total
            .with_label_values(&[t.as_str(), t.runtime()]);
    }
    run_with_metrics(cfg, shutdown, metrics)
        .await
        .map(|(s, _)| s)
}

/// [`run`] with a given registry; also returns the bound metrics address.
pub async fn run_with_metrics(
    cfg: Config,
    shutdown: CancellationToken,
    metrics: Metrics,
) -> anyhow::Result<(Summary, SocketAddr)> {
    let Some(conn) = core_config::connect_retrying(
        &cfg.common.redis_url,
        Some(core_config::COMMAND_TIMEOUT),
        &shutdown,
    )
    .await
    else {
        return Ok((Summary::default(), SocketAddr::from(([0, 0, 0, 0], 0))));
    };
    let queue = Queue::new(conn.clone());

    let health_conn = conn.clone();
    let health_fn: HealthFn = Arc::new(move || {
        let c = health_conn.clone();
        Box::pin(async move {
            let mut m = BTreeMap::new();
            m.insert(
                "redis".to_owned(),
                CheckResult::from_result(health::check_redis(&c).await),
            );
            m
        })
    });
    let addr = SocketAddr::new(cfg.common.metrics_host, cfg.metrics_port);
    let bound = adp_core::metrics::serve(
        addr,
        "dispatcher",
        metrics.clone(),
        health_fn,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot serve metrics on {addr}"))?;
    tracing::info!(addr = %bound, "Metrics and health served.");

    // Groups exist before the first XADD so backlog (lag) is known from the start.
    loop {
        match queue.ensure_groups(&names::TASK_STREAMS).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot create consumer groups yet; retrying.");
                if sleep_or_cancel(Duration::from_secs(1), &shutdown).await {
                    return Ok((Summary::default(), bound));
                }
            }
        }
    }

    let stats_stop = CancellationToken::new();
    let stats_task = tokio::spawn(stats::stats_loop(
        queue.clone(),
        metrics.clone(),
        Duration::from_secs(cfg.stats_interval_secs),
        stats_stop.clone(),
    ));

    let result = Dispatcher::new(cfg, queue, metrics).run(&shutdown).await;
    stats_stop.cancel();
    let _ = stats_task.await;
    result.map(|s| (s, bound))
}

async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = token.cancelled() => true,
    }
}

struct Dispatcher {
    cfg: Config,
    queue: Queue,
    metrics: Metrics,
    rejects: RejectLog,
    summary: Summary,
    backpressure: stats::Backpressure,
    checkpoint_key: String,
    saved_checkpoint: Option<Checkpoint>,
    /// The checkpoint JSON Redis holds as far as we know (None: no key).
    saved_json: Option<String>,
    /// Redis no longer holds our checkpoint: read the file again from its.
    moved_back: bool,
}

impl Dispatcher {
    fn new(cfg: Config, queue: Queue, metrics: Metrics) -> Self {
        let checkpoint_key = checkpoint_key(&cfg.task_file);
        Dispatcher {
            rejects: RejectLog::new(&cfg.common.output_dir),
            backpressure: stats::Backpressure::new(cfg.max_backlog),
            cfg,
            queue,
            metrics,
            summary: Summary::default(),
            checkpoint_key,
            saved_checkpoint: None,
            saved_json: None,
            moved_back: false,
        }
    }

    async fn load_checkpoint(&mut self, shutdown: &CancellationToken) -> Option<Checkpoint> {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut conn = self.queue.conn();
            match conn.get::<_, Option<String>>(&self.checkpoint_key).await {
                Ok(raw) => {
                    self.saved_json = raw.clone();
                    self.saved_checkpoint = None;
                    return raw.and_then(|r| serde_json::from_str(&r).ok());
                }
                Err(e) => tracing::warn!(error = %e, "Cannot read the checkpoint yet; retrying."),
            }
            if sleep_or_cancel(delay, shutdown).await {
                return None;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn run(mut self, shutdown: &CancellationToken) -> anyhow::Result<Summary> {
        let mut file = TaskFile::new(&self.cfg.task_file, self.cfg.follow);
        let resume = self.load_checkpoint(shutdown).await;
        if !file.open(resume)? {
            if !self.cfg.follow {
                anyhow::bail!("task file {} not found", self.cfg.task_file.display());
            }
            tracing::warn!(task_file = %self.cfg.task_file.display(), "Task file does not exist yet; waiting for it.");
        } else if let (Some(r), Some(c)) = (resume, file.checkpoint()) {
            if c.offset > 0 {
                tracing::info!(
                    line = r.line,
                    offset = r.offset,
                    "Resuming the task file after its checkpoint."
                );
            }
            if (c.dev, c.ino, c.offset) == (r.dev, r.ino, r.offset) {
                self.rewind_rejects(r.rejected_bytes);
            }
        }
        // Save where we start (and how long rejected.jsonl is) before the
        // first line: a crash in the first batch then rewinds correctly too.
        let start = file.checkpoint();
        if !self.flush(&mut Vec::new(), start, shutdown).await? {
            return Ok(self.summary);
        }
        tracing::info!(task_file = %self.cfg.task_file.display(), follow = self.cfg.follow, max_backlog = self.cfg.max_backlog, "Dispatcher started.");

        let batch_limit = self.cfg.batch_size.min(self.cfg.max_backlog).max(1) as usize;
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let mut batch: Vec<Prepared> = Vec::with_capacity(batch_limit);
        let mut last_progress = Instant::now();
        let mut missing_logged = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let polled = file
                .poll()
                .with_context(|| format!("reading {}", self.cfg.task_file.display()))?;
            let at_end = match polled {
                Poll::Line(line) => {
                    missing_logged = false;
                    self.summary.lines += 1;
                    if let Some(task) = self.validate(line) {
                        batch.push(task);
                    }
                    // Rejection records are flushed (and the checkpoint
                    // moved) every REJECTS_FLUSH_BYTES too: a long run of bad
                    // lines must not pile up in memory.
                    if batch.len() < batch_limit
                        && self.rejects.pending_bytes() < rejects::REJECTS_FLUSH_BYTES
                    {
                        continue;
                    }
                    false
                }
                Poll::Restarted(why) => {
                    tracing::warn!(task_file = %self.cfg.task_file.display(), why, "Task file changed under us; reading it again from line 1 (already dispatched ids are skipped).");
                    false
                }
                Poll::Missing => {
                    if !missing_logged {
                        tracing::warn!(task_file = %self.cfg.task_file.display(), "Task file missing; waiting for it.");
                        missing_logged = true;
                    }
                    true
                }
                Poll::Idle => true,
            };
            // A full batch, or nothing more to read right now: send what we have.
            if !self.flush(&mut batch, file.checkpoint(), shutdown).await? {
                break;
            }
            if self.moved_back {
                self.moved_back = false;
                let resume = self.load_checkpoint(shutdown).await;
                file = TaskFile::new(&self.cfg.task_file, self.cfg.follow);
                file.open(resume)?;
                let at = file.checkpoint();
                if let (Some(r), Some(c)) = (resume, at) {
                    if (c.dev, c.ino, c.offset) == (r.dev, r.ino, r.offset) {
                        self.rewind_rejects(r.rejected_bytes);
                    }
                }
                tracing::warn!(
                    line = at.map_or(0, |c| c.line),
                    "The checkpoint in Redis moved back (Redis lost its latest writes, or another dispatcher reads this file); reading the file again from there. Tasks Redis still has are skipped as duplicates, the lost ones are dispatched again."
                );
                continue;
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                last_progress = Instant::now();
                tracing::info!(
                    lines = self.summary.lines,
                    dispatched = self.summary.dispatched,
                    duplicates = self.summary.duplicates,
                    rejected = self.summary.rejected_total(),
                    "Progress."
                );
            }
            if at_end && (!self.cfg.follow || sleep_or_cancel(poll, shutdown).await) {
                break;
            }
        }
        let checkpoint = file.checkpoint();
        if !shutdown.is_cancelled() {
            self.flush(&mut batch, checkpoint, shutdown).await?;
        }
        self.rejects.flush().context("writing rejected.jsonl")?;
        tracing::info!(summary = %self.summary, "Dispatcher finished.");
        Ok(self.summary)
    }

    /// Drops rejection records written after the checkpoint `rejected_bytes`
    /// belongs to (their lines are read again), so each rejected line keeps
    /// exactly one record across crashes.
    fn rewind_rejects(&mut self, rejected_bytes: Option<u64>) {
        let Some(len) = rejected_bytes else {
            return;
        };
        match self.rejects.rewind(len) {
            Ok(0) => {}
            Ok(dropped) => tracing::warn!(
                bytes = dropped,
                "rejected.jsonl held records past the checkpoint (a run stopped before saving it); dropped them, their lines are read again."
            ),
            Err(e) => tracing::warn!(error = %e, "Cannot cut rejected.jsonl back to the checkpoint; some rejections may be recorded twice."),
        }
    }

    /// Validates one line; rejected lines are recorded here.
    fn validate(&mut self, line: Line) -> Option<Prepared> {
        let (number, result, raw): (u64, Result<_, RejectReason>, Vec<u8>) = match line {
            Line::TooLong { number, len } => (
                number,
                Err(RejectReason::LineTooLong {
                    len,
                    max: adp_core::validate::MAX_LINE_BYTES,
                }),
                Vec::new(),
            ),
            Line::Text { number, bytes } => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return None; // blank lines are skipped
                }
                (number, parse_task_line(&bytes), bytes)
            }
        };
        match result {
            Ok(task) => Some(Prepared::new(&task)),
            Err(reason) => {
                let code = reason.code();
                tracing::warn!(line = number, reason = code, detail = %reason, "Rejected task line.");
                self.metrics
                    .tasks_rejected_total
                    .with_label_values(&[code])
                    .inc();
                *self.summary.rejected.entry(code).or_default() += 1;
                self.rejects.push(number, code, &reason.to_string(), &raw);
                None
            }
        }
    }

    /// One attempt to add the batch and move the checkpoint from the saved
    /// one to `checkpoint` (atomically); the flags say which tasks were new.
    async fn send(
        &self,
        checkpoint: Option<&str>,
        batch: &[Prepared],
    ) -> redis::RedisResult<Vec<bool>> {
        let mut conn = self.queue.conn();
        dispatch::send_batch(
            &mut conn,
            &self.checkpoint_key,
            checkpoint,
            self.saved_json.as_deref(),
            batch,
        )
        .await
    }

    /// Sends the batch (waiting out backpressure and Redis outages). Returns
    /// false when shutdown interrupted it (the batch is not sent; the
    /// checkpoint is not moved, so a restart reads those lines again).
    async fn flush(
        &mut self,
        batch: &mut Vec<Prepared>,
        checkpoint: Option<Checkpoint>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        self.rejects.flush().context("writing rejected.jsonl")?;
        let checkpoint = checkpoint.map(|c| Checkpoint {
            rejected_bytes: Some(self.rejects.file_len()),
            ..c
        });
        let checkpoint_json = checkpoint.map(|c| serde_json::to_string(&c).unwrap_or_default());
        if batch.is_empty() {
            // Nothing to send, but rejected/blank lines may have moved the checkpoint.
            if checkpoint.is_some() && checkpoint != self.saved_checkpoint {
                match self.send(checkpoint_json.as_deref(), batch).await {
                    Ok(_) => {
                        self.saved_checkpoint = checkpoint;
                        self.saved_json = checkpoint_json;
                    }
                    Err(e) if e.code() == Some(dispatch::CHECKPOINT_MOVED) => {
                        self.moved_back = true;
                    }
                    Err(_) => {} // saved with the next batch
                }
            }
            return Ok(true);
        }
        let mut streams: Vec<TaskType> = batch.iter().map(|t| t.task_type).collect();
        streams.sort_by_key(|t| t.as_str());
        streams.dedup();
        if !self
            .backpressure
            .wait(&self.queue, &streams, shutdown)
            .await
        {
            return Ok(false);
        }
        let mut delay = Duration::from_millis(100);
        let flags = loop {
            match self.send(checkpoint_json.as_deref(), batch).await {
                Ok(flags) => break flags,
                Err(e) if e.code() == Some(dispatch::CHECKPOINT_MOVED) => {
                    // Nothing was written; these lines are read again.
                    batch.clear();
                    self.moved_back = true;
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, batch = batch.len(), retry_in_ms = delay.as_millis() as u64, "Sending a batch to Redis failed; retrying (nothing is lost).");
                }
            }
            if sleep_or_cancel(delay, shutdown).await {
                return Ok(false);
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        for (task, new) in batch.iter().zip(flags) {
            if new {
                self.summary.dispatched += 1;
                self.backpressure.added(task.task_type);
                self.metrics
                    .tasks_submitted_total
                    .with_label_values(&[task.task_type.as_str(), task.task_type.runtime()])
                    .inc();
                tracing::debug!(task_id = %task.task_id, queue = task.task_type.stream(), "Task dispatched.");
            } else {
                self.summary.duplicates += 1;
                self.metrics
                    .tasks_rejected_total
                    .with_label_values(&["duplicate"])
                    .inc();
                tracing::debug!(task_id = %task.task_id, "Duplicate task_id skipped.");
            }
        }
        batch.clear();
        self.saved_checkpoint = checkpoint;
        if checkpoint_json.is_some() {
            self.saved_json = checkpoint_json;
        }
        Ok(true)
    }
}

//! # dispatcher
//!
//! Reads the task file line by line, validates each line, and routes tasks to
//! their Redis stream exactly once per `task_id` and run, one entry per
//! rollout (CONTRACT §1, §2, §8).
//!
//! # Layout
//! * [`config`] — settings.
//! * [`source`] — the task file (checkpoint with prefix hash, follow,
//!   truncation/replacement/rewrite).
//! * [`dispatch`] — the atomic batch step in Redis (id record + checkpoint).
//! * [`rejects`] — the run's `rejected.jsonl`.
//! * [`stats`] — queue gauges, consumers, per-type backpressure.

pub mod config;
pub mod dispatch;
pub mod rejects;
pub mod source;
pub mod stats;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adp_core::lines::Line;
use adp_core::metrics::{CheckResult, HealthFn, Metrics};
use adp_core::queue::Queue;
use adp_core::types::TaskType;
use adp_core::validate::{parse_task_line_with, RejectReason};
use adp_core::{config as core_config, health, names, runs};
use anyhow::Context;
use md5::{Digest, Md5};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use dispatch::{Outcome, Prepared, RunKeys};
use rejects::RejectLog;
use source::{Checkpoint, Occurrences, Poll, TaskFile};

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    /// Tasks new in the run.
    pub dispatched: u64,
    /// Stream entries added (one per rollout).
    pub entries: u64,
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
        if self.entries != self.dispatched {
            write!(f, " ({} stream entries with rollouts)", self.entries)?;
        }
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

/// Redis key of the checkpoint of one task file (by canonical path) in a run.
pub fn checkpoint_key(run_id: &str, path: &std::path::Path) -> String {
    let digest = Md5::digest(canonical(path).as_bytes());
    names::checkpoint_key(run_id, &hex::encode(digest))
}

/// The task file's canonical path (as given when it does not exist yet).
fn canonical(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The id of a line without `task_id`: the same line content at the same
/// occurrence in the same run always gets the same id.
pub fn generated_id(run_id: &str, line: &[u8], occurrence: u32) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(run_id.as_bytes());
    h.update(&[0]);
    h.update(line.trim_ascii());
    h.update(&[0]);
    h.update(&occurrence.to_le_bytes());
    format!("auto-{:032x}", h.digest128())
}

/// Whether a Redis error is the server refusing writes at `maxmemory`.
pub fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM")
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

    let oom = Arc::new(AtomicBool::new(false));
    let health_conn = conn.clone();
    let health_oom = oom.clone();
    let health_fn: HealthFn = Arc::new(move || {
        let c = health_conn.clone();
        let oom = health_oom.load(Ordering::Relaxed);
        Box::pin(async move {
            let mut m = BTreeMap::new();
            m.insert(
                "redis".to_owned(),
                CheckResult::from_result(health::check_redis(&c).await),
            );
            let writes: Result<(), &str> = if oom {
                Err("Redis refuses writes: out of memory (maxmemory); dispatching waits")
            } else {
                Ok(())
            };
            m.insert("redis_writes".to_owned(), CheckResult::from_result(writes));
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

    if let Err(e) = dispatch::load_script(&mut queue.conn()).await {
        tracing::debug!(error = %e, "Cannot load the batch script yet (it is sent with the first batch).");
    }

    let stats_stop = CancellationToken::new();
    let stats_task = tokio::spawn(stats::stats_loop(
        queue.clone(),
        metrics.clone(),
        Duration::from_secs(cfg.stats_interval_secs),
        stats_stop.clone(),
    ));

    let result = Dispatcher::new(cfg, queue, metrics, oom)
        .run(&shutdown)
        .await;
    stats_stop.cancel();
    let _ = stats_task.await;
    result.map(|s| (s, bound))
}

/// After the server's clock passes a whole second, how long until a write
/// of the second before is surely fsynced by `appendfsync everysec`.
const EVERYSEC_MARGIN: Duration = Duration::from_millis(250);

/// One field of a section of `INFO` (None: not there, or no answer).
async fn info_field(
    conn: &mut redis::aio::ConnectionManager,
    section: &str,
    field: &str,
) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .ok()?;
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|v| v.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    })
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
    keys: RunKeys,
    saved_checkpoint: Option<Checkpoint>,
    /// The checkpoint JSON Redis holds as far as we know (None: no key).
    saved_json: Option<String>,
    /// The `seq` of the last checkpoint written: every write carries the
    /// next one, so no two writes store the same JSON and a Redis that lost
    /// any batch (even one sent while the spill kept the position still) no
    /// longer holds the JSON saved last.
    seq: u64,
    /// Redis no longer holds our checkpoint: read the file again from its.
    moved_back: bool,
    /// Lines of paused task types, in file order per type.
    spill: HashMap<TaskType, VecDeque<Prepared>>,
    spilled: usize,
    /// The checkpoint before the earliest line still in the spill: saved
    /// instead of the reading position while anything is held.
    spill_from: Option<Checkpoint>,
    /// Redis answered OOM to the last write (shown by /health).
    oom: Arc<AtomicBool>,
    /// Batches on their way to Redis, oldest first (at most
    /// [`MAX_IN_FLIGHT`]), while the next one is read.
    in_flight: VecDeque<InFlight>,
}

/// Batches sent to Redis and not yet settled. Each is a compare-and-set
/// from the checkpoint of the one before, so Redis applies them only in
/// order: a batch whose predecessor did not apply fails as CHECKPOINT_MOVED
/// and its lines are read again.
const MAX_IN_FLIGHT: usize = 2;

/// A batch sent to Redis and not yet settled: its lines, the checkpoint its
/// Lua step saves, and the task that sends it (with retries).
struct InFlight {
    checkpoint: Option<Checkpoint>,
    checkpoint_json: Option<String>,
    /// The checkpoint JSON it starts from.
    expected: Option<String>,
    handle: tokio::task::JoinHandle<(Vec<Prepared>, Sent)>,
}

/// How sending a batch ended.
enum Sent {
    Done(Vec<Outcome>),
    /// CHECKPOINT_MOVED: nothing was written; the lines are read again.
    Moved,
    /// Shutdown while waiting to retry: nothing of it is saved.
    Cancelled,
}

impl Dispatcher {
    fn new(cfg: Config, queue: Queue, metrics: Metrics, oom: Arc<AtomicBool>) -> Self {
        let keys = RunKeys::new(&cfg.run_id, checkpoint_key(&cfg.run_id, &cfg.task_file));
        let rejects = RejectLog::new(
            runs::rejected_path(&cfg.common.output_dir, &cfg.run_id),
            &canonical(&cfg.task_file),
        );
        Dispatcher {
            rejects,
            backpressure: stats::Backpressure::new(cfg.max_backlog),
            cfg,
            queue,
            metrics,
            summary: Summary::default(),
            keys,
            saved_checkpoint: None,
            saved_json: None,
            seq: 0,
            moved_back: false,
            spill: HashMap::new(),
            spilled: 0,
            spill_from: None,
            oom,
            in_flight: VecDeque::new(),
        }
    }

    async fn load_checkpoint(&mut self, shutdown: &CancellationToken) -> Option<Checkpoint> {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut conn = self.queue.conn();
            match conn.get::<_, Option<String>>(&self.keys.checkpoint).await {
                Ok(raw) => {
                    let stored_seq = raw
                        .as_deref()
                        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                        .unwrap_or(0);
                    // Never below what we wrote: a value Redis went back to
                    // can never equal one we write later.
                    self.seq = self.seq.max(stored_seq);
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

    /// Opens the task file at the checkpoint Redis holds (or from line 1
    /// when the file before it changed); false when the file is missing.
    async fn open_at_checkpoint(
        &mut self,
        file: &mut TaskFile,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let resume = self.load_checkpoint(shutdown).await;
        // Records queued for lines past the checkpoint are made again when
        // those lines are read again.
        self.rejects.clear_pending();
        *file = TaskFile::new(&self.cfg.task_file, self.cfg.follow);
        self.spill.clear();
        self.spilled = 0;
        self.spill_from = None;
        let (found, skipped) = file
            .open(resume.as_ref())
            .with_context(|| format!("reading {}", self.cfg.task_file.display()))?;
        if let Some(why) = skipped {
            tracing::warn!(task_file = %self.cfg.task_file.display(), why, "Not resuming at the checkpoint: reading the file again from line 1 (tasks already dispatched in this run are skipped).");
        } else if let Some(r) = resume.as_ref().filter(|r| r.offset > 0 && found) {
            tracing::info!(
                line = r.line,
                offset = r.offset,
                run_id = %self.cfg.run_id,
                "Resuming the task file after its checkpoint."
            );
        }
        // Records of this file written after the checkpoint belong to lines
        // about to be read again: they are not written twice.
        let from = resume.as_ref().and_then(|r| r.rejected_bytes).unwrap_or(0);
        let from = if skipped.is_some() || resume.is_none() {
            self.rejects.file_len()
        } else {
            from
        };
        match self.rejects.load_seen(from) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                records = n,
                "Rejection records past the checkpoint found; their lines are not recorded twice."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the rejection records back; a line rejected just before a crash may be recorded twice.")
            }
        }
        Ok(found)
    }

    async fn run(mut self, shutdown: &CancellationToken) -> anyhow::Result<Summary> {
        let mut file = TaskFile::new(&self.cfg.task_file, self.cfg.follow);
        if !self.open_at_checkpoint(&mut file, shutdown).await? {
            if !self.cfg.follow {
                anyhow::bail!("task file {} not found", self.cfg.task_file.display());
            }
            tracing::warn!(task_file = %self.cfg.task_file.display(), "Task file does not exist yet; waiting for it.");
        }
        // Save where we start (and how long rejected.jsonl is) before the
        // first line.
        if !self.flush(&mut Vec::new(), &mut file, shutdown).await? {
            return Ok(self.summary);
        }
        tracing::info!(task_file = %self.cfg.task_file.display(), run_id = %self.cfg.run_id, rollouts = self.cfg.rollouts, follow = self.cfg.follow, max_backlog = self.cfg.max_backlog, "Dispatcher started.");

        let batch_limit = self.cfg.batch_size.min(self.cfg.max_backlog).max(1) as usize;
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let verify_every = Duration::from_millis(self.cfg.verify_interval_ms);
        let mut batch: Vec<Prepared> = Vec::with_capacity(batch_limit);
        let mut last_progress = Instant::now();
        let mut last_verify = Instant::now();
        let mut missing_logged = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let spill_full = self.spilled as u64 >= self.cfg.max_spill;
            let at_end = if spill_full {
                // Paused types hold MAX_SPILL lines: read on once they drain.
                true
            } else {
                let start = file.position();
                let polled = file
                    .poll()
                    .with_context(|| format!("reading {}", self.cfg.task_file.display()))?;
                match polled {
                    Poll::Line(line) => {
                        missing_logged = false;
                        self.summary.lines += 1;
                        if let Some(task) = self.validate(line, start, &mut file.occurrences) {
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
                        tracing::warn!(task_file = %self.cfg.task_file.display(), why, "Task file changed under us; reading it again from line 1 (tasks already dispatched in this run are skipped).");
                        // Lines of the old content not sent yet are dropped
                        // with it; the spill is kept (already read, in order).
                        batch.clear();
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
                }
            };
            // A full batch, or nothing more to read right now: send what we
            // have (the next batch is read while it is in Redis); at the end,
            // wait for it.
            if !self.flush(&mut batch, &mut file, shutdown).await? {
                break;
            }
            if at_end && !self.settle_all(shutdown).await? {
                break;
            }
            if at_end && !self.moved_back && last_verify.elapsed() >= verify_every {
                last_verify = Instant::now();
                self.verify_checkpoint().await;
            }
            if self.moved_back {
                self.moved_back = false;
                batch.clear();
                self.open_at_checkpoint(&mut file, shutdown).await?;
                tracing::warn!(
                    line = file.position().1,
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
                    held = self.spilled,
                    "Progress."
                );
            }
            if !at_end {
                continue;
            }
            if !self.cfg.follow && self.spilled == 0 && !spill_full {
                // Done: make sure Redis kept what we wrote before leaving.
                if self.cfg.exit_verify_ms > 0 {
                    let waited = Instant::now();
                    if self.wait_durable(shutdown).await {
                        break;
                    }
                    self.verify_checkpoint().await;
                    tracing::info!(
                        waited_ms = waited.elapsed().as_millis() as u64,
                        kept = !self.moved_back,
                        "Checked that Redis kept the checkpoint (on disk) before exiting."
                    );
                    if self.moved_back {
                        continue;
                    }
                }
                break;
            }
            if sleep_or_cancel(poll, shutdown).await {
                break;
            }
        }
        if !shutdown.is_cancelled() {
            self.flush(&mut batch, &mut file, shutdown).await?;
        }
        self.settle_all(shutdown).await?;
        self.rejects.flush().context("writing rejected.jsonl")?;
        tracing::info!(summary = %self.summary, run_id = %self.cfg.run_id, "Dispatcher finished.");
        Ok(self.summary)
    }

    /// The JSON a checkpoint is saved as: its fields plus the next `seq`.
    fn stamp(&mut self, checkpoint: Option<&Checkpoint>) -> Option<String> {
        let mut v = serde_json::to_value(checkpoint?).ok()?;
        self.seq += 1;
        v.as_object_mut()?.insert("seq".into(), self.seq.into());
        Some(v.to_string())
    }

    /// Waits (at most EXIT_VERIFY_MS) until Redis has written what this
    /// dispatcher sent to disk, so that a check of the checkpoint after it
    /// tells whether Redis kept it. Redis >= 7.2: `WAITAOF 1 0` on the
    /// connection the batches went through, one round trip that returns at
    /// the fsync. Older Redis: by its `appendfsync everysec` rule, a write
    /// is fsynced once the server's clock has passed the next whole second
    /// (checked every 100 ms): wait for that (from `TIME`) plus a margin,
    /// then until no background fsync is running. Without AOF there is
    /// nothing to wait for. Returns true on shutdown.
    async fn wait_durable(&self, shutdown: &CancellationToken) -> bool {
        let cap = Duration::from_millis(self.cfg.exit_verify_ms);
        let started = Instant::now();
        let mut conn = self.queue.conn();
        let mut waitaof = redis::cmd("WAITAOF");
        waitaof.arg(1).arg(0).arg(self.cfg.exit_verify_ms);
        let waited: redis::RedisResult<(i64, i64)> = tokio::select! {
            r = waitaof.query_async(&mut conn) => r,
            _ = shutdown.cancelled() => return true,
        };
        match waited {
            Ok((local, _)) => {
                if local < 1 {
                    tracing::warn!(waited_ms = self.cfg.exit_verify_ms, "Redis has not written the last batches to disk within EXIT_VERIFY_MS; checking the checkpoint anyway.");
                }
                return false;
            }
            Err(e) if e.to_string().contains("appendonly is disabled") => return false,
            Err(e) => {
                tracing::debug!(error = %e, "No WAITAOF (Redis < 7.2); waiting by the server's clock.")
            }
        }
        let aof: Option<String> = info_field(&mut conn, "persistence", "aof_enabled").await;
        if aof.as_deref() == Some("0") {
            return false;
        }
        let wait = match redis::cmd("TIME")
            .query_async::<(u64, u64)>(&mut conn)
            .await
        {
            // The rest of the server's current second, plus its cron tick
            // (100 ms) and the fsync itself.
            Ok((_, micros)) => {
                Duration::from_micros(1_000_000u64.saturating_sub(micros)) + EVERYSEC_MARGIN
            }
            Err(_) => cap,
        };
        if sleep_or_cancel(wait.min(cap), shutdown).await {
            return true;
        }
        // An fsync still running (a slow disk) is waited for, within the cap.
        while started.elapsed() < cap {
            let pending = info_field(&mut conn, "persistence", "aof_pending_bio_fsync").await;
            if pending.as_deref() != Some("1") {
                break;
            }
            if sleep_or_cancel(Duration::from_millis(20), shutdown).await {
                return true;
            }
        }
        false
    }

    /// Compares the checkpoint in Redis with the one saved last; sets
    /// `moved_back` when Redis holds another (it lost our latest writes).
    async fn verify_checkpoint(&mut self) {
        let mut conn = self.queue.conn();
        match conn.get::<_, Option<String>>(&self.keys.checkpoint).await {
            Ok(now) if now != self.saved_json => {
                tracing::warn!(
                    expected = ?self.saved_json,
                    found = ?now,
                    "Redis no longer holds the checkpoint saved last."
                );
                self.moved_back = true;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "Cannot check the checkpoint in Redis now."),
        }
    }

    /// Records a rejected line.
    fn reject(&mut self, number: u64, reason: &str, code: &'static str, raw: &[u8]) {
        tracing::warn!(line = number, reason = code, detail = %reason, "Rejected task line.");
        self.metrics
            .tasks_rejected_total
            .with_label_values(&[code])
            .inc();
        *self.summary.rejected.entry(code).or_default() += 1;
        self.rejects.push(number, code, reason, raw);
    }

    /// Validates one line (read from `start`); rejected lines are recorded here.
    fn validate(
        &mut self,
        line: Line,
        start: (u64, u64),
        occurrences: &mut Occurrences,
    ) -> Option<Prepared> {
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
                let run_id = &self.cfg.run_id;
                let parsed = parse_task_line_with(&bytes, || {
                    let seen = occurrences.entry(source::line_key(&bytes)).or_default();
                    let id = generated_id(run_id, &bytes, *seen);
                    *seen += 1;
                    id
                });
                (number, parsed, bytes)
            }
        };
        match result {
            Ok(task) => Some(Prepared::new(
                &task,
                &self.cfg.run_id,
                self.cfg.rollouts,
                number,
                raw,
                start,
            )),
            Err(reason) => {
                self.reject(number, &reason.to_string(), reason.code(), &raw);
                None
            }
        }
    }

    /// One attempt to move the checkpoint (no tasks) from the saved one.
    async fn send_checkpoint(&self, checkpoint: Option<&str>) -> redis::RedisResult<Vec<Outcome>> {
        let mut conn = self.queue.conn();
        dispatch::send_batch(
            &mut conn,
            &self.keys,
            checkpoint,
            self.saved_json.as_deref(),
            None,
            &[],
        )
        .await
    }

    /// Sends `batch` until it is in Redis (see [`send_retrying`]), in this task.
    async fn send_now(
        &mut self,
        checkpoint_json: Option<&str>,
        batch: Vec<Prepared>,
        shutdown: &CancellationToken,
    ) -> Sent {
        send_retrying(
            self.queue.conn(),
            self.keys.clone(),
            checkpoint_json.map(str::to_owned),
            (self.saved_json.clone(), None),
            batch,
            self.oom.clone(),
            shutdown.clone(),
        )
        .await
        .1
    }

    /// Sends what can go now: held lines of types with room first, then the
    /// batch's lines of those types; lines of paused types are held in
    /// order. The batch goes to Redis in a task of its own, so the next one
    /// is read meanwhile (up to [`MAX_IN_FLIGHT`] batches in flight;
    /// [`Self::settle_one`] takes their results in order). Everything in
    /// flight is settled first when rejection records are queued (their
    /// order in rejected.jsonl and the checkpoint's `rejected_bytes` stay
    /// exact) or a stream's backlog is measured again. Saves the checkpoint
    /// (the reading position, or the one before the earliest held line)
    /// with the batch. Returns false when shutdown interrupted it (nothing
    /// of it is saved: a restart reads those lines again).
    async fn flush(
        &mut self,
        batch: &mut Vec<Prepared>,
        file: &mut TaskFile,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let measure = TaskType::ALL.into_iter().any(|t| {
            (self.spill.get(&t).is_some_and(|q| !q.is_empty())
                || batch.iter().any(|p| p.task_type == t))
                && !self.backpressure.is_fresh(t)
        });
        let settled = if measure || self.rejects.pending_bytes() > 0 {
            self.settle_all(shutdown).await?
        } else {
            let mut ok = true;
            while ok && self.in_flight.len() >= MAX_IN_FLIGHT {
                ok = self.settle_one(shutdown).await?;
            }
            ok
        };
        if !settled {
            return Ok(false);
        }
        if self.moved_back {
            // The lines are read again from the checkpoint Redis holds,
            // once nothing is in flight.
            self.settle_all(shutdown).await?;
            return Ok(true);
        }
        self.rejects.flush().context("writing rejected.jsonl")?;
        let mut send: Vec<Prepared> = Vec::with_capacity(batch.len());
        let mut room: HashMap<TaskType, u64> = HashMap::new();
        for t in TaskType::ALL {
            let held = self.spill.get(&t).map_or(0, VecDeque::len);
            if held == 0 && !batch.iter().any(|p| p.task_type == t) {
                continue;
            }
            let mut r = self.backpressure.room(&self.queue, t).await;
            if let Some(q) = self.spill.get_mut(&t) {
                while r > 0 {
                    let Some(p) = q.pop_front() else { break };
                    r = r.saturating_sub(u64::from(p.rollouts));
                    self.spilled -= 1;
                    send.push(p);
                }
            }
            room.insert(t, r);
        }
        for p in batch.drain(..) {
            let r = room.entry(p.task_type).or_default();
            let held = self.spill.get(&p.task_type).is_some_and(|q| !q.is_empty());
            if !held && *r > 0 {
                *r = r.saturating_sub(u64::from(p.rollouts));
                send.push(p);
                continue;
            }
            if self.spilled == 0 && self.spill_from.is_none() {
                let (offset, line) = p.start;
                self.spill_from = file.checkpoint_at(offset, line)?;
                if let Some(c) = self.spill_from.as_mut() {
                    c.rejected_bytes = Some(self.rejects.file_len());
                }
            }
            self.spill.entry(p.task_type).or_default().push_back(p);
            self.spilled += 1;
        }
        if self.spilled == 0 {
            self.spill_from = None;
        }
        let checkpoint = match &self.spill_from {
            Some(c) => Some(c.clone()),
            None => file.checkpoint()?.map(|c| Checkpoint {
                rejected_bytes: Some(self.rejects.file_len()),
                ..c
            }),
        };
        if send.is_empty() {
            // Nothing to send, but rejected/blank lines may have moved the
            // checkpoint (saved compare-and-set on the last one saved).
            if !self.settle_all(shutdown).await? {
                return Ok(false);
            }
            if self.moved_back {
                return Ok(true);
            }
            if checkpoint.is_some() && checkpoint != self.saved_checkpoint {
                let checkpoint_json = self.stamp(checkpoint.as_ref());
                match self.send_checkpoint(checkpoint_json.as_deref()).await {
                    Ok(_) => {
                        self.saved_checkpoint = checkpoint;
                        self.saved_json = checkpoint_json;
                    }
                    Err(e) if e.code() == Some(dispatch::CHECKPOINT_MOVED) => {
                        self.moved_back = true;
                    }
                    Err(e) if is_oom(&e) => {
                        if !self.oom.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, "Redis is out of memory (maxmemory): the checkpoint waits (/health reports 503).");
                        }
                    }
                    Err(_) => {} // saved with the next batch
                }
            }
            return Ok(true);
        }
        let checkpoint_json = self.stamp(checkpoint.as_ref());
        // Counted against the backlog now (as if all new): a stream never
        // gets more than its room, whatever is still in flight.
        for p in &send {
            self.backpressure.added(p.task_type, u64::from(p.rollouts));
        }
        let starts = self.starting_point();
        let handle = tokio::spawn(send_retrying(
            self.queue.conn(),
            self.keys.clone(),
            checkpoint_json.clone(),
            starts.clone(),
            send,
            self.oom.clone(),
            shutdown.clone(),
        ));
        self.in_flight.push_back(InFlight {
            checkpoint,
            // A batch without a checkpoint leaves the one it starts from.
            checkpoint_json: checkpoint_json.or_else(|| starts.0.clone()),
            expected: starts.0,
            handle,
        });
        Ok(true)
    }

    /// What the next batch starts from: the checkpoint JSON Redis holds
    /// once every batch in flight is in, and, with a batch in flight, the
    /// one the latest of them starts from (a batch that arrives first is
    /// told CHECKPOINT_BEHIND and sent again).
    fn starting_point(&self) -> (Option<String>, Option<Option<String>>) {
        match self.in_flight.back() {
            Some(f) => (f.checkpoint_json.clone(), Some(f.expected.clone())),
            None => (self.saved_json.clone(), None),
        }
    }

    /// Settles every batch in flight, in order. After a batch that did not
    /// apply, the later ones are awaited and dropped (they cannot apply
    /// after it, or Redis already holds their checkpoint: the lines are
    /// read again from what Redis holds). Returns false on shutdown.
    async fn settle_all(&mut self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let mut ok = true;
        while !self.in_flight.is_empty() {
            if self.moved_back || !ok {
                if let Some(f) = self.in_flight.pop_front() {
                    let _ = f.handle.await;
                }
                continue;
            }
            ok = self.settle_one(shutdown).await?;
        }
        Ok(ok)
    }

    /// Waits for the oldest batch in flight (if any) and takes its result:
    /// counts, records conflicts (and then moves the checkpoint past them),
    /// notes the checkpoint saved. Returns false when shutdown interrupted it.
    async fn settle_one(&mut self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let Some(InFlight {
            checkpoint,
            checkpoint_json,
            handle,
            ..
        }) = self.in_flight.pop_front()
        else {
            return Ok(true);
        };
        let (send, sent) = handle.await.context("the batch sender failed")?;
        let flags = match sent {
            Sent::Done(flags) => flags,
            Sent::Moved => {
                // Nothing was written; these lines are read again.
                self.moved_back = true;
                return Ok(true);
            }
            Sent::Cancelled => return Ok(!shutdown.is_cancelled()),
        };
        // Records queued meanwhile are of lines after this batch: a
        // conflict's record goes before them.
        let later = self.rejects.take_pending();
        let mut conflicts = false;
        for (task, outcome) in send.iter().zip(flags) {
            match outcome {
                Outcome::Dispatched => {
                    self.summary.dispatched += 1;
                    self.summary.entries += u64::from(task.rollouts);
                    self.metrics
                        .tasks_submitted_total
                        .with_label_values(&[task.task_type.as_str(), task.task_type.runtime()])
                        .inc_by(u64::from(task.rollouts));
                    tracing::debug!(task_id = %task.task_id, queue = task.task_type.stream(), rollouts = task.rollouts, "Task dispatched.");
                }
                Outcome::Duplicate => {
                    self.summary.duplicates += 1;
                    self.metrics
                        .tasks_rejected_total
                        .with_label_values(&["duplicate"])
                        .inc();
                    tracing::debug!(task_id = %task.task_id, "Duplicate task_id skipped.");
                }
                Outcome::Conflict => {
                    conflicts = true;
                    let why = format!(
                        "task_id {:?} was already dispatched in run {:?} with different content",
                        task.task_id, self.cfg.run_id
                    );
                    self.reject(task.line, &why, "conflicting_duplicate", &task.raw);
                }
            }
        }
        if !conflicts {
            self.rejects.restore_pending(later);
            self.saved_checkpoint = checkpoint;
            if checkpoint_json.is_some() {
                self.saved_json = checkpoint_json;
            }
            return Ok(true);
        }
        // The batch step left the checkpoint where it was: it moves only
        // now that the conflicts' records are on disk.
        let written = self.rejects.flush().context("writing rejected.jsonl");
        self.rejects.restore_pending(later);
        written?;
        let checkpoint = checkpoint.map(|c| Checkpoint {
            rejected_bytes: Some(self.rejects.file_len()),
            ..c
        });
        let json = self.stamp(checkpoint.as_ref());
        match self.send_now(json.as_deref(), Vec::new(), shutdown).await {
            Sent::Done(_) => {}
            Sent::Moved => {
                self.moved_back = true;
                return Ok(true);
            }
            Sent::Cancelled => return Ok(!shutdown.is_cancelled()),
        }
        self.saved_checkpoint = checkpoint;
        if json.is_some() {
            self.saved_json = json;
        }
        Ok(true)
    }
}

/// Sends `batch` (moving the checkpoint from `starts.0` to `checkpoint`;
/// `starts.1`: where the batch in flight before it starts from) until it
/// is in Redis, waiting out Redis outages and OOM with backoff, and the
/// batch before it; hands the batch back with how it ended.
async fn send_retrying(
    mut conn: redis::aio::ConnectionManager,
    keys: RunKeys,
    checkpoint: Option<String>,
    starts: (Option<String>, Option<Option<String>>),
    batch: Vec<Prepared>,
    oom: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> (Vec<Prepared>, Sent) {
    let mut delay = Duration::from_millis(100);
    let (expected, previous) = starts;
    loop {
        match dispatch::send_batch(
            &mut conn,
            &keys,
            checkpoint.as_deref(),
            expected.as_deref(),
            previous.as_ref().map(Option::as_deref),
            &batch,
        )
        .await
        {
            Ok(flags) => {
                if oom.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis accepts writes again; dispatching resumed.");
                }
                return (batch, Sent::Done(flags));
            }
            Err(e) if e.code() == Some(dispatch::CHECKPOINT_MOVED) => {
                return (batch, Sent::Moved);
            }
            Err(e) if e.code() == Some(dispatch::CHECKPOINT_BEHIND) => {
                // It overtook the batch sent before it: again once that one is in.
                if sleep_or_cancel(Duration::from_millis(1), &shutdown).await {
                    return (batch, Sent::Cancelled);
                }
                continue;
            }
            Err(e) if is_oom(&e) => {
                if !oom.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, run_id = %keys.run_id, "Redis is out of memory (maxmemory) and refuses new tasks: dispatching waits (nothing is lost; /health reports 503). Free memory: let the runtimes drain the streams, `adp runs prune` finished runs, or raise maxmemory.");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), retry_in_ms = delay.as_millis() as u64, "Sending a batch to Redis failed; retrying (nothing is lost).");
            }
        }
        if sleep_or_cancel(delay, &shutdown).await {
            return (batch, Sent::Cancelled);
        }
        let cap = if oom.load(Ordering::Relaxed) { 10 } else { 5 };
        delay = (delay * 2).min(Duration::from_secs(cap));
    }
}

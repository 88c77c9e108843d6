//! `adp status [--watch] [--json]`: where every task is.
//!
//! Per task stream (numbers from Redis):
//! * `dispatched`: every entry ever added to the stream (`entries-added`;
//!   acknowledged entries are deleted), requeues and replays included;
//! * `waiting`: not yet delivered to any consumer (the group's lag);
//! * `pending`: delivered, not acknowledged (being worked on, or abandoned);
//! * `backlog` = waiting + pending; `acked` = dispatched − backlog;
//! * `dead_lettered`: entries in `tasks:dead` that came from this stream.
//!
//! From the trajectory files (current `<task_id>.json` files, by task type):
//! `trajectories`, `succeeded`, `failed` and `failed_by_error_type`;
//! `finished_last_min` = trajectories created in the last 60 s;
//! `throughput_per_min` = that count over the time it took: from the oldest
//! of them to now, at least 10 s, at most 60 s (so a run that started 5 s
//! ago is not rated as if it had been idle for the rest of the minute);
//! `eta_seconds` = backlog ÷ throughput (`null` when nothing finished lately);
//! the total ETA is the slowest stream's (each stream has its own runtime).
//!
//! Per stream also `active_consumers` (members of its group that read or
//! heartbeat within a minute) and `unserved_seconds`: how long it has had
//! unacknowledged entries and no active consumer (0 while served; such a
//! stream is named under the table: is its runtime running?).
//!
//! Plus runtime health (`runtime_health` / `runtime_heartbeat` hashes) and
//! the consumers of each stream (`XINFO CONSUMERS`) with the entries they hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use adp_core::health::RUNTIME_HEARTBEAT;
use adp_core::names;
use adp_core::queue::Queue;
use adp_core::types::unix_now;
use adp_core::TaskType;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, FromRedisValue};
use serde::Serialize;

use crate::error::{CliError, Outcome, Result};
use crate::files::{self, FileName};
use crate::fmt::{self, Align, Table};
use crate::progress;
use crate::Env;

/// Version of the `--json` schema; bumped only when a field changes meaning
/// or is removed (adding fields does not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// A heartbeat older than this marks a runtime `stale` (it probably died
/// without removing its `runtime_health` field).
pub const STALE_AFTER_SECS: f64 = 60.0;

/// How many held entries are shown per consumer.
const HOLDING_SHOWN: usize = 5;

/// Progress of every stream.
#[derive(Debug, clap::Args)]
#[command(
    about = "Progress of every stream, runtime health and consumers",
    long_about = "Progress of every stream, runtime health and consumers.\n\n\
Per stream: dispatched (entries ever added), waiting (not yet delivered), pending (delivered, \
not acked), acked, succeeded / failed (from the trajectory files, by task type), dead-lettered \
(in tasks:dead), throughput (trajectories written in the last minute) and ETA (backlog ÷ \
throughput). Then the runtimes registered in runtime_health with the age of their last \
heartbeat, and the consumers of each stream with what they hold and how long they have been idle.",
    after_help = "Examples:\n  \
adp status\n  \
adp status --watch                  redraw every 2 s with a progress bar until Ctrl-C\n  \
adp status --watch --interval 10\n  \
adp status --json | jq '.totals'\n  \
REDIS_URL=redis://redis:6379 OUTPUT_DIR=./output adp status"
)]
pub struct StatusArgs {
    /// Redraw until interrupted (Ctrl-C).
    #[arg(long, short)]
    pub watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value = "2", value_parser = parse_interval, value_name = "SECS")]
    pub interval: f64,
    /// With --watch: stop after N snapshots.
    #[arg(long, value_name = "N", requires = "watch")]
    pub iterations: Option<u64>,
    /// Print JSON (one object; with --watch one line per snapshot).
    #[arg(long)]
    pub json: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if (0.1..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0.1 and 3600 seconds".to_owned())
    }
}

/// One task stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamStatus {
    pub stream: String,
    pub task_type: String,
    pub dispatched: u64,
    pub waiting: u64,
    pub pending: u64,
    pub backlog: u64,
    pub acked: u64,
    pub consumers: u64,
    pub active_consumers: u64,
    pub unserved_seconds: f64,
    pub oldest_unacked_age_s: f64,
    #[serde(flatten)]
    pub finished: Finished,
}

/// Sums over the streams.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Totals {
    pub dispatched: u64,
    pub waiting: u64,
    pub pending: u64,
    pub backlog: u64,
    pub acked: u64,
    #[serde(flatten)]
    pub finished: Finished,
}

/// How the tasks of a stream (or of all streams) ended — dead-lettered, or
/// with a trajectory file — and the throughput and ETA that follow. Its
/// fields appear inline in the JSON of [`StreamStatus`] and [`Totals`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Finished {
    pub dead_lettered: u64,
    pub trajectories: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failed_by_error_type: BTreeMap<String, u64>,
    pub finished_last_min: u64,
    pub throughput_per_min: f64,
    pub eta_seconds: Option<f64>,
}

impl Finished {
    /// Adds the counts and rates of `other`; the ETA is left alone (a sum of
    /// ETAs means nothing).
    fn add(&mut self, other: &Finished) {
        self.dead_lettered += other.dead_lettered;
        self.trajectories += other.trajectories;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.finished_last_min += other.finished_last_min;
        self.throughput_per_min = round1(self.throughput_per_min + other.throughput_per_min);
        for (k, v) in &other.failed_by_error_type {
            *self.failed_by_error_type.entry(k.clone()).or_default() += v;
        }
    }
}

/// A runtime registered in `runtime_health`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuntimeStatus {
    pub id: String,
    pub runtime: String,
    pub status: String,
    pub last_heartbeat_age_s: Option<f64>,
    pub stale: bool,
}

/// An entry a consumer holds (pending on it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Held {
    pub entry_id: String,
    pub task_id: Option<String>,
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// A consumer of a stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConsumerStatus {
    pub stream: String,
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
    /// The first few entries it holds.
    pub holding: Vec<Held>,
}

/// What was read from the trajectory directory.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FileCounts {
    /// Current trajectory files read.
    pub read: u64,
    /// Files that could not be read or parsed.
    pub unreadable: u64,
    /// Readable files whose task type cannot be told (not counted per stream).
    pub unattributed: u64,
}

/// One `adp status` snapshot (the `--json` schema).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub schema_version: u32,
    pub generated_at: f64,
    pub redis_url: String,
    pub output_dir: String,
    pub streams: Vec<StreamStatus>,
    pub totals: Totals,
    /// Entries in `tasks:dead`.
    pub dead_letters: u64,
    /// Lines in `$OUTPUT_DIR/rejected.jsonl`.
    pub rejected_lines: u64,
    pub runtimes: Vec<RuntimeStatus>,
    pub consumers: Vec<ConsumerStatus>,
    pub trajectory_files: FileCounts,
}

/// What one trajectory file contributes to the status.
#[derive(Debug, Clone)]
struct FileSummary {
    task_type: Option<TaskType>,
    failure: Option<String>,
    created_at: f64,
}

/// The trajectory files seen so far: re-read only files that changed, so
/// `--watch` costs one `stat` per file per redraw.
#[derive(Debug, Default)]
pub struct TrajIndex {
    files: HashMap<OsString, (Option<SystemTime>, Option<FileSummary>)>,
}

/// Per-task-type sums of the trajectory files.
#[derive(Debug, Default, Clone)]
struct TypeSums {
    trajectories: u64,
    succeeded: u64,
    failed: u64,
    by_error: BTreeMap<String, u64>,
    last_minute: u64,
    /// `created_at` of the oldest file of the last minute.
    first_in_minute: Option<f64>,
}

/// Shortest window a rate is computed over (a burst of files created in
/// the last second is not a rate of thousands per minute).
const MIN_RATE_WINDOW_SECS: f64 = 10.0;

impl TypeSums {
    /// Trajectories per minute over the window the last minute's files span.
    fn per_min(&self, now: f64) -> f64 {
        let Some(first) = self.first_in_minute else {
            return 0.0;
        };
        let window = (now - first).clamp(MIN_RATE_WINDOW_SECS, 60.0);
        round1(self.last_minute as f64 * 60.0 / window)
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl TrajIndex {
    /// Brings the index up to date with `dir`.
    pub fn refresh(&mut self, dir: &Path) -> std::io::Result<()> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.files.clear();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut seen: HashSet<OsString> = HashSet::with_capacity(self.files.len());
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name();
            let Some(FileName::Current { .. }) = name.to_str().and_then(files::classify) else {
                continue;
            };
            let mtime = entry.metadata().ok().and_then(|m| m.modified().ok());
            seen.insert(name.clone());
            if let Some((known, _)) = self.files.get(&name) {
                if known.is_some() && *known == mtime {
                    continue;
                }
            }
            let summary = files::load_view(&entry.path()).ok().map(|v| FileSummary {
                task_type: v.task_type(),
                failure: v.failure_label().map(str::to_owned),
                created_at: v.created_at,
            });
            self.files.insert(name, (mtime, summary));
        }
        self.files.retain(|k, _| seen.contains(k));
        Ok(())
    }

    fn sums(&self, now: f64) -> (HashMap<TaskType, TypeSums>, FileCounts) {
        let mut out: HashMap<TaskType, TypeSums> = HashMap::new();
        let mut counts = FileCounts::default();
        for (_, summary) in self.files.values() {
            let Some(s) = summary else {
                counts.unreadable += 1;
                continue;
            };
            counts.read += 1;
            let Some(tt) = s.task_type else {
                counts.unattributed += 1;
                continue;
            };
            let e = out.entry(tt).or_default();
            e.trajectories += 1;
            match &s.failure {
                None => e.succeeded += 1,
                Some(label) => {
                    e.failed += 1;
                    *e.by_error.entry(label.clone()).or_default() += 1;
                }
            }
            if s.created_at >= now - 60.0 {
                e.last_minute += 1;
                e.first_in_minute = Some(
                    e.first_in_minute
                        .map_or(s.created_at, |f| f.min(s.created_at)),
                );
            }
        }
        (out, counts)
    }
}

fn task_type_of_stream(stream: &str) -> TaskType {
    TaskType::ALL
        .into_iter()
        .find(|t| t.stream() == stream)
        .unwrap_or(TaskType::Code)
}

fn eta(backlog: u64, per_min: f64) -> Option<f64> {
    if backlog == 0 {
        Some(0.0)
    } else if per_min <= 0.0 {
        None
    } else {
        Some(round1(backlog as f64 / (per_min / 60.0)))
    }
}

/// Lines of `rejected.jsonl` (streamed; 0 when it does not exist).
fn count_lines(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64,
        }
    }
}

fn value_u64(v: Option<&redis::Value>) -> u64 {
    v.and_then(|v| i64::from_redis_value(v.clone()).ok())
        .map_or(0, |i| i.max(0) as u64)
}

async fn consumers_of(conn: &mut ConnectionManager, stream: &str) -> Result<Vec<ConsumerStatus>> {
    let reply: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(names::GROUP)
        .query_async(conn)
        .await;
    let rows = match reply {
        Ok(r) => r,
        // No stream or no group yet: no consumers.
        Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in rows {
        let name = row
            .get("name")
            .and_then(|v| String::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        let pending = value_u64(row.get("pending"));
        let mut holding = Vec::new();
        if pending > 0 {
            let p: redis::streams::StreamPendingCountReply = conn
                .xpending_consumer_count(stream, names::GROUP, "-", "+", HOLDING_SHOWN, &name)
                .await?;
            for item in p.ids {
                let task_id = task_id_of(conn, stream, &item.id).await;
                holding.push(Held {
                    entry_id: item.id,
                    task_id,
                    idle_ms: item.last_delivered_ms as u64,
                    deliveries: item.times_delivered as u64,
                });
            }
        }
        out.push(ConsumerStatus {
            stream: stream.to_owned(),
            name,
            pending,
            idle_ms: value_u64(row.get("idle")),
            holding,
        });
    }
    Ok(out)
}

async fn task_id_of(conn: &mut ConnectionManager, stream: &str, id: &str) -> Option<String> {
    let r: redis::streams::StreamRangeReply = conn.xrange(stream, id, id).await.ok()?;
    let entry = r.ids.into_iter().next()?;
    let raw: String = entry.get(names::FIELD_TASK)?;
    let v: serde_json::Value = serde_json::from_str(&raw).ok()?;
    v.get("task_id")?.as_str().map(str::to_owned)
}

async fn runtimes(conn: &mut ConnectionManager, now: f64) -> Result<Vec<RuntimeStatus>> {
    let health: HashMap<String, String> = conn.hgetall(names::RUNTIME_HEALTH).await?;
    let beats: HashMap<String, String> = conn.hgetall(RUNTIME_HEARTBEAT).await?;
    let mut out: Vec<RuntimeStatus> = health
        .into_iter()
        .map(|(id, status)| {
            let age = beats
                .get(&id)
                .and_then(|b| b.parse::<f64>().ok())
                .map(|t| (now - t).max(0.0));
            RuntimeStatus {
                runtime: id.split('@').next().unwrap_or(&id).to_owned(),
                stale: age.is_none_or(|a| a > STALE_AFTER_SECS),
                last_heartbeat_age_s: age,
                status,
                id,
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Takes one snapshot. `index` keeps the trajectory files between calls.
pub async fn snapshot(
    env: &Env,
    conn: &mut ConnectionManager,
    index: &mut TrajIndex,
) -> Result<Snapshot> {
    let now = unix_now();
    let dir = env.trajectories_dir();
    index
        .refresh(&dir)
        .map_err(|e| CliError::failure(format!("cannot list {}: {e}", dir.display())))?;
    let (sums, file_counts) = index.sums(now);
    let queue = Queue::new(conn.clone());
    let dead_by_stream = crate::dead::count_by_stream(conn).await?;
    let dead_letters: u64 = conn.xlen(names::STREAM_DEAD).await?;

    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    for stream in names::TASK_STREAMS {
        let tt = task_type_of_stream(stream);
        let (dispatched, waiting, pending, n_consumers) = match queue.group_state(stream).await? {
            // Acknowledged entries are deleted: what was dispatched is what
            // was ever added to the stream.
            Some(g) => (g.added, g.lag, g.pending, g.consumers),
            None => {
                let len: u64 = conn.xlen(stream).await?;
                (len, len, 0, 0)
            }
        };
        let backlog = waiting + pending;
        let oldest = if backlog > 0 {
            queue.oldest_unacked_age(stream).await?
        } else {
            0.0
        };
        let service = queue.service(stream).await?;
        let s = sums.get(&tt).cloned().unwrap_or_default();
        let per_min = s.per_min(now);
        streams.push(StreamStatus {
            stream: stream.to_owned(),
            task_type: tt.as_str().to_owned(),
            dispatched,
            waiting,
            pending,
            backlog,
            acked: dispatched.saturating_sub(backlog),
            consumers: n_consumers,
            active_consumers: service.active,
            unserved_seconds: (service.unserved_secs * 1000.0).round() / 1000.0,
            oldest_unacked_age_s: (oldest * 1000.0).round() / 1000.0,
            finished: Finished {
                dead_lettered: dead_by_stream.get(stream).copied().unwrap_or(0),
                trajectories: s.trajectories,
                succeeded: s.succeeded,
                failed: s.failed,
                failed_by_error_type: s.by_error,
                finished_last_min: s.last_minute,
                throughput_per_min: per_min,
                eta_seconds: eta(backlog, per_min),
            },
        });
        consumers.extend(consumers_of(conn, stream).await?);
    }
    let mut totals = Totals::default();
    for s in &streams {
        totals.dispatched += s.dispatched;
        totals.waiting += s.waiting;
        totals.pending += s.pending;
        totals.backlog += s.backlog;
        totals.acked += s.acked;
        totals.finished.add(&s.finished);
    }
    // Streams are drained by different runtimes: everything is done when
    // the slowest stream is.
    totals.finished.eta_seconds = streams
        .iter()
        .try_fold(0.0_f64, |acc, s| s.finished.eta_seconds.map(|e| acc.max(e)));

    Ok(Snapshot {
        schema_version: SCHEMA_VERSION,
        generated_at: now,
        redis_url: adp_core::config::redact_url(&env.redis_url),
        output_dir: env.output_dir.display().to_string(),
        streams,
        totals,
        dead_letters,
        rejected_lines: count_lines(&env.rejected_path()),
        runtimes: runtimes(conn, now).await?,
        consumers,
        trajectory_files: file_counts,
    })
}

/// The text rendering of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = format!(
        "adp status  {}  redis {}  output {}\n\n",
        fmt::utc(s.generated_at),
        s.redis_url,
        s.output_dir
    );
    let mut t = Table::keyed(
        "STREAM",
        &[
            "DISPATCHED",
            "WAITING",
            "PENDING",
            "ACKED",
            "SUCCEEDED",
            "FAILED",
            "DEAD",
            "RATE/MIN",
            "ETA",
        ],
    );
    // One row per stream, then the totals: the same columns.
    let row = |name: &str, queue: [u64; 4], f: &Finished| {
        let [dispatched, waiting, pending, acked] = queue;
        vec![
            name.to_owned(),
            dispatched.to_string(),
            waiting.to_string(),
            pending.to_string(),
            acked.to_string(),
            f.succeeded.to_string(),
            f.failed.to_string(),
            f.dead_lettered.to_string(),
            format!("{:.1}", f.throughput_per_min),
            fmt::opt_duration(f.eta_seconds),
        ]
    };
    for x in &s.streams {
        let queue = [x.dispatched, x.waiting, x.pending, x.acked];
        t.row(row(&x.stream, queue, &x.finished));
    }
    let tt = &s.totals;
    let queue = [tt.dispatched, tt.waiting, tt.pending, tt.acked];
    t.row(row("total", queue, &tt.finished));
    out.push_str(&t.render());

    let failures: Vec<String> = s
        .streams
        .iter()
        .filter(|x| !x.finished.failed_by_error_type.is_empty())
        .map(|x| {
            let kinds = fmt::tally(&x.finished.failed_by_error_type);
            format!("{}: {kinds}", x.stream)
        })
        .collect();
    if !failures.is_empty() {
        out.push_str(&format!(
            "\nFailed by error type: {}\n",
            failures.join("; ")
        ));
    }
    for x in s.streams.iter().filter(|x| x.unserved_seconds > 0.0) {
        out.push_str(&format!(
            "\nUnserved: {} has {} unfinished entries and no consumer has read it for {} ({} in its group; is {} running?). Other streams are not held up.\n",
            x.stream,
            x.backlog,
            fmt::duration(x.unserved_seconds),
            x.consumers,
            TaskType::parse(&x.task_type).map_or("its runtime", |t| t.runtime()),
        ));
    }
    out.push_str(&format!(
        "\nDead letters: {} in {}{}.  Rejected task lines: {}.  Trajectory files: {} read, {} unreadable.\n",
        s.dead_letters,
        names::STREAM_DEAD,
        if s.dead_letters > 0 { " (adp dead list)" } else { "" },
        s.rejected_lines,
        s.trajectory_files.read,
        s.trajectory_files.unreadable,
    ));

    out.push('\n');
    if s.runtimes.is_empty() {
        out.push_str("No runtime registered in runtime_health.\n");
    } else {
        let mut t = Table::new(&[
            ("RUNTIME", Align::Left),
            ("STATUS", Align::Left),
            ("HEARTBEAT", Align::Right),
        ]);
        for r in &s.runtimes {
            let status = if r.stale {
                format!("{} (stale)", r.status)
            } else {
                r.status.clone()
            };
            t.row(vec![
                r.id.clone(),
                status,
                r.last_heartbeat_age_s
                    .map_or("never".into(), |a| format!("{} ago", fmt::duration(a))),
            ]);
        }
        out.push_str(&t.render());
    }

    out.push('\n');
    if s.consumers.is_empty() {
        out.push_str("No consumers yet.\n");
    } else {
        let mut t = Table::new(&[
            ("CONSUMER", Align::Left),
            ("STREAM", Align::Left),
            ("PENDING", Align::Right),
            ("IDLE", Align::Right),
            ("HOLDING", Align::Left),
        ]);
        for c in &s.consumers {
            let mut holding = c
                .holding
                .iter()
                .map(|h| {
                    format!(
                        "{} ({}x, {})",
                        h.task_id.as_deref().unwrap_or(&h.entry_id),
                        h.deliveries,
                        fmt::duration(h.idle_ms as f64 / 1000.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            if c.pending as usize > c.holding.len() {
                holding.push_str(&format!(", +{} more", c.pending as usize - c.holding.len()));
            }
            t.row(vec![
                c.name.clone(),
                c.stream.clone(),
                c.pending.to_string(),
                fmt::duration(c.idle_ms as f64 / 1000.0),
                if holding.is_empty() {
                    "-".into()
                } else {
                    holding
                },
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

pub async fn run(env: &Env, args: StatusArgs) -> Result<Outcome> {
    env.check_output_dir()?;
    let mut conn = env.redis().await?;
    let mut index = TrajIndex::default();
    if !args.watch {
        let s = snapshot(env, &mut conn, &mut index).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            print!("{}", render(&s));
        }
        return Ok(Outcome::Done);
    }
    watch(env, &args, &mut conn, &mut index).await
}

async fn watch(
    env: &Env,
    args: &StatusArgs,
    conn: &mut ConnectionManager,
    index: &mut TrajIndex,
) -> Result<Outcome> {
    let shutdown = adp_core::config::shutdown_token();
    let tty = !args.json && progress::stdout_is_terminal();
    let bar = tty.then(|| {
        // At most 4 draws a second; the steady tick draws the latest state
        // after a burst of updates was rate-limited.
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout_with_hz(4));
        bar.enable_steady_tick(Duration::from_millis(250));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg}\n[{wide_bar}] {pos}/{len} acked ({percent}%)  ETA {prefix}  (Ctrl-C to stop)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut n = 0u64;
    loop {
        n += 1;
        match snapshot(env, conn, index).await {
            Ok(s) => {
                if args.json {
                    println!("{}", serde_json::to_string(&s)?);
                } else if let Some(bar) = &bar {
                    bar.set_length(s.totals.dispatched);
                    bar.set_position(s.totals.acked);
                    bar.set_prefix(fmt::opt_duration(s.totals.finished.eta_seconds));
                    bar.set_message(render(&s).trim_end().to_owned());
                } else {
                    println!("{}", render(&s));
                }
            }
            // Keep watching through a Redis restart.
            Err(e) => match &bar {
                Some(bar) => bar.set_message(format!("adp: error: {e} (retrying)")),
                None => eprintln!("adp: error: {e} (retrying)"),
            },
        }
        let _ = std::io::stdout().flush();
        if args.iterations.is_some_and(|max| n >= max) {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs_f64(args.interval)) => {}
        }
    }
    if let Some(bar) = bar {
        bar.abandon();
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON keys come in the documented order (docs/cli.md), the
    /// `Finished` fields inline.
    #[test]
    fn json_key_order() {
        let stream = StreamStatus {
            stream: "tasks:code".into(),
            task_type: "code".into(),
            dispatched: 1,
            waiting: 2,
            pending: 3,
            backlog: 5,
            acked: 0,
            consumers: 1,
            active_consumers: 0,
            unserved_seconds: 61.5,
            oldest_unacked_age_s: 2.5,
            finished: Finished {
                failed_by_error_type: BTreeMap::from([("timeout".to_owned(), 1)]),
                ..Finished::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&stream).expect("json"),
            "{\"stream\":\"tasks:code\",\"task_type\":\"code\",\"dispatched\":1,\"waiting\":2,\
             \"pending\":3,\"backlog\":5,\"acked\":0,\"consumers\":1,\"active_consumers\":0,\
             \"unserved_seconds\":61.5,\"oldest_unacked_age_s\":2.5,\
             \"dead_lettered\":0,\"trajectories\":0,\"succeeded\":0,\"failed\":0,\
             \"failed_by_error_type\":{\"timeout\":1},\"finished_last_min\":0,\
             \"throughput_per_min\":0.0,\"eta_seconds\":null}"
        );
        assert_eq!(
            serde_json::to_string(&Totals::default()).expect("json"),
            "{\"dispatched\":0,\"waiting\":0,\"pending\":0,\"backlog\":0,\"acked\":0,\
             \"dead_lettered\":0,\"trajectories\":0,\"succeeded\":0,\"failed\":0,\
             \"failed_by_error_type\":{},\"finished_last_min\":0,\"throughput_per_min\":0.0,\
             \"eta_seconds\":null}"
        );
    }
}

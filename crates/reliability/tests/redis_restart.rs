//! Scenario 2, Redis restart, with the dispatcher (FOLLOW=true, small
//! MAX_BACKLOG so it is mid-file) and two sandbox-runtimes running the
//! whole time; none of them is restarted. Three phases, each a fresh block
//! of tasks appended to the task file:
//!
//! * **term**: Redis stopped with SIGTERM mid-run (it writes its AOF and
//!   exits), down for a moment, started again. Nothing may be lost.
//! * **kill**: Redis killed with SIGKILL mid-run and started again. Its
//!   `appendfsync everysec` AOF was written (not yet fsynced) up to the last
//!   command, and the page cache survives a process kill: measured loss.
//! * **power-loss**: SIGKILL, and the AOF cut back to its size one second
//!   before the kill: what a machine crash can lose with `everysec` (the
//!   writes of the last second were not fsynced). The dispatcher's
//!   idempotency set and file checkpoint live in Redis and roll back with
//!   the lost entries; the running dispatcher notices its checkpoint moved
//!   back, reads the file again from there, and dispatches exactly the tasks
//!   Redis lost.
//!
//! Afterwards: one trajectory per task, each task once in `tasks:code`,
//! nothing pending, no dead letters; the services kept their pids.
//!
//! Sizes: `REL_REDIS_TASKS` (400 per phase), `REL_REDIS_DOWN_MS` (1500).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adp_core::names;
use reliability::cluster::Cluster;
use reliability::ledger::{stream_state, Ledger};
use reliability::service::{field, message, poll, Service};
use reliability::tasks::{append_lines, sum_task};
use reliability::watch::WriteWatch;
use reliability::{env_or, report};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Term,
    Kill,
    PowerLoss,
}

#[test]
fn redis_restarts_lose_nothing_and_power_loss_is_re_dispatched() {
    let n: usize = env_or("REL_REDIS_TASKS", 400);
    let down = Duration::from_millis(env_or("REL_REDIS_DOWN_MS", 1500));
    let mut cluster = Cluster::new("redis-restart");
    let watch = WriteWatch::start(&cluster.trajectories_dir());
    let mut dispatcher = cluster.dispatcher(
        true,
        &[("MAX_BACKLOG", "40"), ("RUST_LOG", "info,dispatcher=debug")],
    );
    dispatcher.start();
    let mut runtimes = cluster.start_sandbox_pair(&[]);
    let pids: Vec<Option<u32>> = std::iter::once(&dispatcher)
        .chain(runtimes.iter())
        .map(Service::pid)
        .collect();

    let mut all_ids = BTreeSet::new();
    let mut phases = Vec::new();
    for (k, fault) in [Fault::Term, Fault::Kill, Fault::PowerLoss]
        .into_iter()
        .enumerate()
    {
        let prefix = format!("rr{k}-");
        let mut ids = BTreeSet::new();
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let (id, line) = sum_task(&prefix, i, 50);
                ids.insert(id);
                line
            })
            .collect();
        let before = cluster.trajectory_count();
        append_lines(&cluster.task_file(), &lines);
        all_ids.extend(ids.iter().cloned());

        let aof = AofSampler::start(cluster.redis.data_dir());
        let fault_at = before + n * 3 / 10;
        assert!(
            poll(Duration::from_secs(120), || cluster.trajectory_count()
                >= fault_at),
            "phase {fault:?} stuck before the fault"
        );
        let at_fault = cluster.trajectory_count() - before;
        let started = Instant::now();
        let mut cut_bytes = 0;
        match fault {
            Fault::Term => {
                cluster.redis.stop();
                std::thread::sleep(down);
            }
            Fault::Kill => {
                cluster.redis.kill();
                std::thread::sleep(down);
            }
            Fault::PowerLoss => {
                // Worst case: the crash comes right after a dispatcher batch,
                // so the lost second holds XADDs as well as acks.
                let added = entries_added(&cluster);
                poll(Duration::from_secs(30), || entries_added(&cluster) > added);
                std::thread::sleep(Duration::from_millis(100));
                let (path, size_1s_ago, size_now) = aof.size_before(Duration::from_secs(1));
                cluster.redis.kill();
                let size = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .unwrap_or(size_now);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open AOF");
                f.set_len(size_1s_ago).expect("truncate AOF");
                cut_bytes = size.saturating_sub(size_1s_ago);
                std::thread::sleep(down);
            }
        }
        drop(aof);
        cluster.redis.start_again();
        let back = Instant::now();
        let count_at_restart = cluster.trajectory_count();
        poll(Duration::from_secs(60), || {
            cluster.trajectory_count() > count_at_restart
        });
        let first_write_after_restart = back.elapsed();

        let done = poll(Duration::from_secs(180), || {
            cluster.trajectory_count() >= all_ids.len() && drained(&cluster)
        });
        let elapsed = started.elapsed();
        let ledger = Ledger::collect(&cluster, &all_ids, Some(&watch));
        assert!(
            done,
            "phase {fault:?}: work did not finish (services: {}):\n{:#}\ndispatcher:\n{}",
            alive(&mut dispatcher, &mut runtimes),
            ledger.to_json(),
            dispatcher.log_tail(15)
        );
        let phase_writes = watch.snapshot();
        let written_twice = ids
            .iter()
            .filter(|id| phase_writes.per_task.get(*id).copied().unwrap_or(0) > 1)
            .count();
        phases.push(json!({
            "fault": format!("{fault:?}"),
            "tasks": n,
            "done_at_fault": at_fault,
            "down_ms": down.as_millis() as u64,
            "aof_bytes_cut": cut_bytes,
            "first_trajectory_s_after_restart": first_write_after_restart.as_secs_f64(),
            "phase_s_from_fault": elapsed.as_secs_f64(),
            "tasks_written_twice": written_twice,
            "tasks_dispatched_again": dispatched_again(&dispatcher, &prefix),
            "dispatcher_rewinds": count(&dispatcher, "checkpoint"),
        }));
        eprintln!(
            "[reliability] phase {fault:?}: {}",
            phases.last().expect("phase")
        );
        ledger.assert_complete();
    }

    let after: Vec<Option<u32>> = std::iter::once(&dispatcher)
        .chain(runtimes.iter())
        .map(Service::pid)
        .collect();
    let running = alive(&mut dispatcher, &mut runtimes);
    let ledger = Ledger::collect(&cluster, &all_ids, Some(&watch));
    let set_size: usize = redis::cmd("HGET")
        .arg(names::run_key(adp_core::runs::DEFAULT_RUN))
        .arg("tasks")
        .query(&mut cluster.redis())
        .expect("run record count");
    let result = json!({
        "phases": phases,
        "services_restarted": pids != after,
        "services_running": running,
        "dispatched_ids_set": set_size,
        "ledger": ledger.to_json(),
    });
    report::save("redis_restart", &result);
    assert_eq!(pids, after, "no service was restarted");
    assert_eq!(running, "3/3", "{result:#}");
    ledger.assert_complete();
    assert_eq!(set_size, all_ids.len(), "{result:#}");
    let term = &phases[0];
    assert_eq!(
        term["tasks_dispatched_again"],
        json!(0),
        "SIGTERM loses nothing: {term}"
    );
    let power = &phases[2];
    assert!(
        power["aof_bytes_cut"].as_u64() > Some(0),
        "the power-loss phase cut nothing: {power}"
    );
    if power["tasks_dispatched_again"].as_u64() > Some(0) {
        assert!(
            power["dispatcher_rewinds"].as_u64() >= Some(1),
            "lost tasks re-dispatched only after a rewind: {power}"
        );
    }
    let mut exits = vec![dispatcher.terminate(Duration::from_secs(30))];
    for r in &mut runtimes {
        exits.push(r.terminate(Duration::from_secs(30)));
    }
    assert!(exits.iter().all(|c| *c == Some(0)), "exit codes {exits:?}");
}

/// Entries ever added to `tasks:code` (acked entries are deleted, so its
/// length says nothing about dispatching).
fn entries_added(cluster: &Cluster) -> u64 {
    stream_state(&mut cluster.redis(), names::STREAM_CODE).added
}

fn drained(cluster: &Cluster) -> bool {
    let s = stream_state(&mut cluster.redis(), names::STREAM_CODE);
    s.pending == 0 && s.lag == 0
}

fn alive(d: &mut Service, rs: &mut [Service]) -> String {
    let n = usize::from(d.is_running())
        + rs.iter_mut()
            .map(|r| usize::from(r.is_running()))
            .sum::<usize>();
    format!("{n}/{}", 1 + rs.len())
}

/// Tasks with this id prefix the dispatcher logged as dispatched more than once.
fn dispatched_again(d: &Service, prefix: &str) -> usize {
    let mut seen = BTreeSet::new();
    let mut again = BTreeSet::new();
    for e in d.events() {
        if message(&e) != "Task dispatched." {
            continue;
        }
        if let Some(id) = field(&e, "task_id").filter(|id| id.starts_with(prefix)) {
            if !seen.insert(id.to_owned()) {
                again.insert(id.to_owned());
            }
        }
    }
    again.len()
}

/// Log events of `s` whose message mentions `word`, at WARN.
fn count(s: &Service, word: &str) -> usize {
    s.events()
        .iter()
        .filter(|e| e.get("level").and_then(Value::as_str) == Some("WARN"))
        .filter(|e| message(e).contains(word))
        .count()
}

/// Records the size of Redis's current AOF increment file every 20 ms.
struct AofSampler {
    samples: Arc<Mutex<Vec<(Instant, PathBuf, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AofSampler {
    fn start(data_dir: &Path) -> Self {
        let dir = data_dir.join("appendonlydir");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if let Some(path) = newest_incr(&dir) {
                    if let Ok(m) = std::fs::metadata(&path) {
                        s.lock()
                            .expect("lock")
                            .push((Instant::now(), path, m.len()));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        AofSampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// (file, its size `ago` before now, its size now).
    fn size_before(&self, ago: Duration) -> (PathBuf, u64, u64) {
        let now = Instant::now();
        let samples = self.samples.lock().expect("lock");
        let (_, path, size_now) = samples.last().cloned().expect("AOF samples");
        let size_then = samples
            .iter()
            .rev()
            .find(|(t, p, _)| now.duration_since(*t) >= ago && *p == path)
            .map(|(_, _, s)| *s)
            .unwrap_or(0);
        (path, size_then, size_now)
    }
}

impl Drop for AofSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `appendonly.aof.<n>.incr.aof` with the highest n.
fn newest_incr(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').nth(2))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
}

//! `soak MINUTES`: a mixed load with periodic faults, then a ledger.
//!
//! Runs a private redis-server (AOF everysec), the dispatcher (FOLLOW=true)
//! and two sandbox-runtimes. A feeder appends task lines at `SOAK_RATE`
//! lines/s for MINUTES: ordinary code tasks, failing code, output floods,
//! tasks that time out, malformed lines and repeated task ids. Every
//! `SOAK_FAULT_EVERY` seconds one fault from a rotation hits: SIGKILL,
//! SIGTERM or a 4 s SIGSTOP of runtime B, SIGKILL of the dispatcher, SIGTERM
//! or SIGKILL of Redis (each restarted). Runtime A is never signalled, so its
//! RSS at start and end shows whether memory creeps. Then it waits for the
//! queue to drain and prints the ledger: every valid line must end as one
//! trajectory, every bad line as one rejection record.
//!
//! Exit 0 when the ledger balances, 1 otherwise. Normally started by
//! `scripts/soak.sh`, which builds release binaries and sets `ADP_BIN_DIR`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use adp_core::names;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reliability::cluster::Cluster;
use reliability::ledger::{stream_state, Ledger};
use reliability::service::{poll, rss_kib, Service, SIGCONT, SIGSTOP};
use reliability::tasks::{append_lines, bad_lines, code_line, sum_task};
use reliability::watch::WriteWatch;
use reliability::{env_or, report};
use serde_json::{json, Value};

const FAULTS: [&str; 6] = [
    "kill -9 sandbox-b",
    "redis SIGTERM",
    "SIGSTOP sandbox-b 4 s",
    "kill -9 dispatcher",
    "SIGTERM sandbox-b",
    "redis SIGKILL",
];

fn main() {
    let minutes: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!(
                "usage: soak MINUTES   (env: SOAK_RATE, SOAK_FAULT_EVERY, REL_SEED, REL_KEEP)"
            );
            std::process::exit(64);
        });
    let rate: f64 = env_or("SOAK_RATE", 12.0);
    let fault_every = Duration::from_secs(env_or("SOAK_FAULT_EVERY", 20));
    let seed = reliability::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let run_for = Duration::from_secs_f64(minutes * 60.0);

    let mut cluster = Cluster::new("soak");
    let watch = WriteWatch::start(&cluster.trajectories_dir());
    let mut dispatcher = cluster.dispatcher(true, &[("MAX_BACKLOG", "200")]);
    let mut a = cluster.sandbox("sandbox-a", &[("CLAIM_IDLE_SECS", "3")]);
    let mut b = cluster.sandbox("sandbox-b", &[("CLAIM_IDLE_SECS", "3")]);
    dispatcher.start();
    a.start();
    b.start();
    std::thread::sleep(Duration::from_secs(3));
    let rss_start = rss_all(&cluster, &dispatcher, &a, &b);

    let mut ledger_in = Inputs::default();
    let started = Instant::now();
    let mut next_fault = started + fault_every;
    let mut fault_log = Vec::new();
    let mut fed = 0.0f64;
    let mut k = 0usize;
    while started.elapsed() < run_for {
        let due = rate * started.elapsed().as_secs_f64();
        let mut lines = Vec::new();
        while fed < due {
            fed += 1.0;
            lines.push(ledger_in.next_line(&mut rng));
        }
        append_lines(&cluster.task_file(), &lines);
        if Instant::now() >= next_fault {
            let fault = FAULTS[k % FAULTS.len()];
            k += 1;
            let t = Instant::now();
            match fault {
                "kill -9 sandbox-b" => {
                    b.kill();
                    std::thread::sleep(Duration::from_millis(500));
                    b.start();
                }
                "SIGTERM sandbox-b" => {
                    let code = b.terminate(Duration::from_secs(60));
                    b.start();
                    fault_log.push(json!({"fault": fault, "exit_code": code}));
                }
                "SIGSTOP sandbox-b 4 s" => {
                    b.signal(SIGSTOP);
                    std::thread::sleep(Duration::from_secs(4));
                    b.signal(SIGCONT);
                }
                "kill -9 dispatcher" => {
                    dispatcher.kill();
                    std::thread::sleep(Duration::from_millis(500));
                    dispatcher.start();
                }
                "redis SIGTERM" => {
                    cluster.redis.stop();
                    std::thread::sleep(Duration::from_secs(1));
                    cluster.redis.start_again();
                }
                _ => {
                    cluster.redis.kill();
                    std::thread::sleep(Duration::from_secs(1));
                    cluster.redis.start_again();
                }
            }
            eprintln!(
                "[soak] {:>5.0} s: {fault} ({} trajectories so far)",
                started.elapsed().as_secs_f64(),
                cluster.trajectory_count()
            );
            if !fault.starts_with("SIGTERM") {
                fault_log.push(json!({"fault": fault, "took_s": t.elapsed().as_secs_f64()}));
            }
            next_fault = Instant::now() + fault_every;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let feeding_s = started.elapsed().as_secs_f64();
    eprintln!("[soak] feeding done after {feeding_s:.0} s; draining");
    let expected = ledger_in.valid.clone();
    let drained = poll(Duration::from_secs(900), || {
        cluster.trajectory_count() >= expected.len() && {
            let s = stream_state(&mut cluster.redis(), names::STREAM_CODE);
            s.pending == 0 && s.lag == 0
        }
    });
    let rss_end = rss_all(&cluster, &dispatcher, &a, &b);
    let ledger = Ledger::collect(&cluster, &expected, Some(&watch));
    let outcome = outcomes(&cluster);
    let restarts = json!({
        "dispatcher": dispatcher.starts() - 1,
        "sandbox-a": a.starts() - 1,
        "sandbox-b": b.starts() - 1,
    });
    let exits: Vec<Option<i32>> = [&mut dispatcher, &mut a, &mut b]
        .into_iter()
        .map(|s| s.terminate(Duration::from_secs(60)))
        .collect();

    let balanced = drained
        && ledger.missing.is_empty()
        && ledger.unexpected.is_empty()
        && ledger.malformed.is_empty()
        && ledger.temp_files.is_empty()
        && ledger.enqueued_twice.is_empty()
        && ledger.rejected == ledger_in.bad
        && ledger.rejected_twice.is_empty()
        && ledger.dead == 0;
    let result = json!({
        "minutes": minutes,
        "seed": seed,
        "rate_lines_per_s": rate,
        "feeding_s": feeding_s,
        "total_s": started.elapsed().as_secs_f64(),
        "lines_in": ledger_in.lines,
        "tasks_in": expected.len(),
        "bad_lines_in": ledger_in.bad,
        "repeated_ids_in": ledger_in.repeats,
        "trajectories_out": ledger.files,
        "outcomes": outcome,
        "rejection_records": ledger.rejected,
        "rejected_lines_recorded_twice": ledger.rejected_twice.len(),
        "dead_letters": ledger.dead,
        "duplicates_found": {
            "stream_entries_for_one_task_id": ledger.enqueued_twice.len(),
            "trajectory_files_not_matching_their_task": ledger.malformed.len() + ledger.unexpected.len(),
        },
        "tasks_run_more_than_once": ledger.written_twice().len(),
        "attempt_histogram": ledger.to_json()["attempt_histogram"],
        "missing": ledger.missing.len(),
        "temp_files_left": ledger.temp_files.len(),
        "faults": fault_log,
        "restarts": restarts,
        "rss_kib_start": rss_start,
        "rss_kib_end": rss_end,
        "exit_codes_at_end": exits,
        "balanced": balanced,
    });
    print_ledger(&result);
    report::save("soak", &result);
    std::process::exit(if balanced { 0 } else { 1 });
}

/// What the feeder wrote.
#[derive(Default)]
struct Inputs {
    lines: usize,
    valid: BTreeSet<String>,
    order: Vec<String>,
    bad: usize,
    repeats: usize,
}

impl Inputs {
    fn next_line(&mut self, rng: &mut StdRng) -> String {
        self.lines += 1;
        let i = self.lines;
        let roll: u32 = rng.random_range(0..100);
        let (id, line) = match roll {
            0..=4 => {
                self.bad += 1;
                let kinds = bad_lines(&format!("soak{i}"));
                return kinds[i % kinds.len()].clone();
            }
            5..=7 if !self.order.is_empty() => {
                // A task id seen before: skipped by the dispatcher.
                self.repeats += 1;
                let old = &self.order[rng.random_range(0..self.order.len())];
                return code_line(old, "print('repeat')", None, 60);
            }
            8..=15 => {
                let id = format!("soak-fail-{i}");
                (
                    id.clone(),
                    code_line(&id, "raise ValueError('boom')", None, 60),
                )
            }
            16..=18 => {
                let id = format!("soak-flood-{i}");
                (
                    id.clone(),
                    code_line(&id, "print('x' * 5_000_000)", None, 60),
                )
            }
            19 => {
                let id = format!("soak-timeout-{i}");
                (
                    id.clone(),
                    code_line(&id, "import time\ntime.sleep(30)", None, 2),
                )
            }
            _ => sum_task("soak-", i, rng.random_range(0..100)),
        };
        self.valid.insert(id.clone());
        self.order.push(id);
        line
    }
}

/// Outcomes of the trajectories: success, or the error type.
fn outcomes(cluster: &Cluster) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(cluster.trajectories_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let key = if v["success"] == json!(true) {
            "success".to_owned()
        } else {
            v["error_type"].as_str().unwrap_or("task_failed").to_owned()
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

fn rss_all(cluster: &Cluster, d: &Service, a: &Service, b: &Service) -> Value {
    json!({
        "redis-server": cluster.redis.pid().and_then(rss_kib),
        "dispatcher": d.rss_kib(),
        "sandbox-a (never signalled)": a.rss_kib(),
        "sandbox-b": b.rss_kib(),
    })
}

fn print_ledger(r: &Value) {
    let line = |k: &str, v: &Value| println!("  {k:<40} {v}");
    println!("soak ledger ({} min, seed {})", r["minutes"], r["seed"]);
    for k in [
        "lines_in",
        "tasks_in",
        "bad_lines_in",
        "repeated_ids_in",
        "trajectories_out",
        "outcomes",
        "rejection_records",
        "rejected_lines_recorded_twice",
        "dead_letters",
        "duplicates_found",
        "tasks_run_more_than_once",
        "attempt_histogram",
        "missing",
        "temp_files_left",
        "restarts",
        "rss_kib_start",
        "rss_kib_end",
        "exit_codes_at_end",
        "balanced",
    ] {
        line(k, &r[k]);
    }
    println!("  faults:");
    for f in r["faults"].as_array().into_iter().flatten() {
        println!("    {f}");
    }
}

//! Scenario 3, dispatcher crash: the dispatcher is killed with SIGKILL at
//! random moments while it is in the middle of a large task file (no
//! backpressure: MAX_BACKLOG above the file size), and restarted each time.
//! Afterwards every valid task is in its stream exactly once, the
//! idempotency set holds exactly those ids, and every bad line has exactly
//! one rejection record.
//!
//! Sizes: `REL_DISPATCH_LINES` (100000), `REL_DISPATCH_KILLS` (3),
//! `REL_DISPATCH_BAD_EVERY` (50: one block of bad lines per that many good
//! ones), `REL_SEED`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use adp_core::names;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reliability::cluster::Cluster;
use reliability::ledger::{rejections, stream_entries};
use reliability::service::poll;
use reliability::tasks::{append_lines, bad_lines, code_line};
use reliability::{env_or, fault_points, report, seed};
use serde_json::json;

#[test]
fn kill_9_of_the_dispatcher_mid_file_skips_and_doubles_nothing() {
    let n: usize = env_or("REL_DISPATCH_LINES", 100_000);
    let kills: usize = env_or("REL_DISPATCH_KILLS", 3);
    let bad_every: usize = env_or("REL_DISPATCH_BAD_EVERY", 50);
    let mut rng = StdRng::seed_from_u64(seed());

    let cluster = Cluster::new("dispatcher-crash");
    let mut ids = BTreeSet::new();
    let mut lines = Vec::with_capacity(n + n / bad_every * 5);
    let mut bad = 0;
    for i in 0..n {
        let id = format!("dc-{i}");
        lines.push(code_line(&id, "print(1)", None, 60));
        ids.insert(id);
        if i % bad_every == bad_every - 1 {
            let b = bad_lines(&format!("bad{i}"));
            bad += b.len();
            lines.extend(b);
        }
    }
    append_lines(&cluster.task_file(), &lines);
    let max_backlog = (n * 2).to_string();

    let started = Instant::now();
    let mut d = cluster.dispatcher(false, &[("MAX_BACKLOG", &max_backlog)]);
    let points = fault_points(&mut rng, kills, n / 20..=n * 9 / 10);
    let mut kill_log = Vec::new();
    d.start();
    let mut at_restart = 0;
    for point in points {
        // Kill mid-file, and only once this run has sent some batches itself.
        let point = (point as u64).max(at_restart + 2000);
        let reached = poll(Duration::from_secs(120), || {
            stream_len(&cluster) >= point || !d.is_running()
        });
        assert!(
            reached && d.is_running(),
            "the dispatcher finished before the kill at {point}; use a bigger REL_DISPATCH_LINES"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
        d.kill();
        let at = stream_len(&cluster);
        kill_log.push(json!({ "in_stream_at_kill": at }));
        eprintln!("[reliability] dispatcher killed with {at}/{n} tasks in the stream");
        d.start();
        at_restart = at;
    }
    let code = d.wait_exit(Duration::from_secs(300));
    let elapsed = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "last dispatcher run exits 0:\n{}",
        d.log_tail(20)
    );
    let summary = std::fs::read_to_string(d.log_files().pop().expect("log"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("dispatched "))
        .unwrap_or_default()
        .to_owned();

    let mut conn = cluster.redis();
    let entries = stream_entries(&mut conn, names::STREAM_CODE);
    let in_stream: BTreeSet<String> = entries.iter().map(|(_, id)| id.clone()).collect();
    let doubled = entries.len() - in_stream.len();
    let missing = ids.difference(&in_stream).count();
    let extra = in_stream.difference(&ids).count();
    let set_size: usize = redis::cmd("HGET")
        .arg(names::run_key(adp_core::runs::DEFAULT_RUN))
        .arg("tasks")
        .query(&mut conn)
        .expect("run record count");
    let (records, twice) = rejections(&cluster.output_dir().join("rejected.jsonl"));
    let result = json!({
        "valid_lines": n,
        "bad_lines": bad,
        "kills": kill_log,
        "elapsed_s": elapsed.as_secs_f64(),
        "last_run_summary": summary,
        "entries_in_stream": entries.len(),
        "enqueued_twice": doubled,
        "skipped": missing,
        "unexpected": extra,
        "dispatched_ids_set": set_size,
        "rejection_records": records,
        "rejected_lines_recorded_twice": twice.len(),
    });
    report::save("dispatcher_crash", &result);
    assert_eq!(doubled, 0, "{result:#}");
    assert_eq!(missing, 0, "{result:#}");
    assert_eq!(extra, 0, "{result:#}");
    assert_eq!(set_size, n, "{result:#}");
    assert!(
        twice.is_empty(),
        "bad lines recorded twice: {twice:?}\n{result:#}"
    );
    assert_eq!(records, bad, "{result:#}");
}

fn stream_len(cluster: &Cluster) -> u64 {
    redis::cmd("XLEN")
        .arg(names::STREAM_CODE)
        .query(&mut cluster.redis())
        .unwrap_or(0)
}

/// A file of nothing but rejected lines (4 KiB each): the rejection records
/// are written out as they come (memory stays bounded, the checkpoint moves),
/// and a dispatcher killed in the middle of it and restarted leaves exactly
/// one record per line. Sizes: `REL_BAD_ONLY_LINES` (20000),
/// `REL_BAD_ONLY_KILLS` (4).
#[test]
fn a_file_of_bad_lines_keeps_memory_bounded_and_records_each_line_once() {
    let n: usize = env_or("REL_BAD_ONLY_LINES", 20_000);
    let kills: usize = env_or("REL_BAD_ONLY_KILLS", 4);
    let mut rng = StdRng::seed_from_u64(seed());
    let cluster = Cluster::new("bad-only");
    let pad = "x".repeat(4000);
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"task_id": format!("bo-{i}"), "task_type": "video", "description": pad})
                .to_string()
        })
        .collect();
    append_lines(&cluster.task_file(), &lines);
    let rejected = cluster.output_dir().join("rejected.jsonl");
    // Progress by file size (cheap to poll): each record is a bit over 4 KiB.
    let records = || std::fs::metadata(&rejected).map_or(0, |m| m.len() as usize / 4200);

    let mut d = cluster.dispatcher(false, &[]);
    let mut peak_kib = 0u64;
    let mut sample = |d: &reliability::service::Service| {
        if let Some(hwm) = d.pid().and_then(reliability::service::peak_rss_kib) {
            peak_kib = peak_kib.max(hwm);
        }
    };
    let points = fault_points(&mut rng, kills, n / 10..=n * 8 / 10);
    let mut kill_log = Vec::new();
    d.start();
    for point in points {
        let reached = poll(Duration::from_secs(120), || {
            sample(&d);
            records() >= point || !d.is_running()
        });
        assert!(
            reached && d.is_running(),
            "finished before the kill at {point}"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..50)));
        sample(&d);
        d.kill();
        kill_log.push(records());
        d.start();
    }
    poll(Duration::from_secs(300), || {
        sample(&d);
        !d.is_running()
    });
    assert_eq!(
        d.exits.last().copied().flatten(),
        Some(0),
        "{}",
        d.log_tail(20)
    );
    let (total, twice) = rejections(&rejected);
    let result = json!({
        "bad_lines": n,
        "line_bytes": 4000,
        "approx_records_at_kills": kill_log,
        "rejection_records": total,
        "lines_recorded_twice": twice.len(),
        "dispatcher_peak_rss_kib": peak_kib,
    });
    report::save("dispatcher_bad_only", &result);
    assert!(twice.is_empty(), "{result:#}");
    assert_eq!(total, n, "{result:#}");
    assert!(
        peak_kib < 64 * 1024,
        "dispatcher RSS grew with the bad lines: {result:#}"
    );
}

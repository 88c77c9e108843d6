//! Redis memory after many completed tasks (issue #14: ≤ 40 MB above the
//! empty baseline after 1M one-step tasks; only the id record may grow).
//!
//! Ignored by default (1M tasks take minutes on 2 cores). Run:
//!   ADP_MEMORY_TASKS=1000000 cargo test --release -p dispatcher --test memory -- --ignored --nocapture
//!
//! The dispatcher is the real one; the runtimes are stood in for by a
//! consumer that does what a worker does with a finished entry once its
//! trajectory is written: XACK and XDEL (acknowledged entries leave the
//! stream). It prints used_memory before, after dispatch and after the drain.

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use adp_core::names;
use clap::Parser;
use dispatcher::Config;
use test_support::RedisServer;
use tokio_util::sync::CancellationToken;

fn used_memory(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Reads, acks and deletes every entry of `stream` (as a worker would).
fn drain(c: &mut redis::Connection, stream: &str) -> u64 {
    let mut n = 0;
    loop {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(names::GROUP)
            .arg("memory-test")
            .arg("COUNT")
            .arg(5000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query(c)
            .expect("xreadgroup");
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|e| e.id))
            .collect();
        if ids.is_empty() {
            return n;
        }
        n += ids.len() as u64;
        let mut p = redis::pipe();
        p.cmd("XACK")
            .arg(stream)
            .arg(names::GROUP)
            .arg(&ids)
            .ignore();
        p.cmd("XDEL").arg(stream).arg(&ids).ignore();
        let _: () = p.query(c).expect("ack+del");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1M tasks: minutes; run by hand (see the file's doc)"]
async fn redis_memory_after_a_million_completed_tasks() {
    let n: u64 = std::env::var("ADP_MEMORY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tasks.jsonl");
    {
        let mut w = BufWriter::new(std::fs::File::create(&file).expect("create"));
        for i in 0..n {
            writeln!(
                w,
                r#"{{"task_id":"mem-{i:08}","task_type":"code","description":"Compute the square of {i} and print it","constraints":{{"code":"print({i}*{i})"}},"max_steps":1}}"#
            )
            .expect("write");
        }
        w.flush().expect("flush");
    }
    let mut c = redis.client();
    let _: () = redis::cmd("MEMORY")
        .arg("PURGE")
        .query(&mut c)
        .unwrap_or(());
    let baseline = used_memory(&mut c);
    let cfg = Config::try_parse_from([
        "dispatcher",
        "--redis-url",
        &redis.url(),
        "--task-file",
        &file.display().to_string(),
        "--output-dir",
        &dir.path().join("out").display().to_string(),
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--follow",
        "false",
        "--max-backlog",
        &(n + 1).to_string(),
        "--max-spill",
        "1",
        "--run-id",
        "memory",
    ])
    .expect("config");
    let started = Instant::now();
    let summary = tokio::time::timeout(
        Duration::from_secs(3600),
        dispatcher::run(cfg, CancellationToken::new()),
    )
    .await
    .expect("finishes")
    .expect("runs");
    let dispatch_s = started.elapsed().as_secs_f64();
    assert_eq!(summary.dispatched, n);
    let dispatched = used_memory(&mut c);
    let drained = drain(&mut c, names::STREAM_CODE);
    assert_eq!(drained, n);
    let _: () = redis::cmd("MEMORY")
        .arg("PURGE")
        .query(&mut c)
        .unwrap_or(());
    let after = used_memory(&mut c);
    let above = after.saturating_sub(baseline);
    println!(
        "tasks {n}: dispatched in {dispatch_s:.1} s ({:.0}/s); used_memory baseline {baseline} B, after dispatch {dispatched} B, after ack+delete {after} B: {above} B above baseline = {:.1} B per completed task",
        n as f64 / dispatch_s,
        above as f64 / n as f64
    );
    assert!(
        above <= 40 * 1024 * 1024 * n / 1_000_000,
        "{above} B above the baseline for {n} tasks"
    );
}

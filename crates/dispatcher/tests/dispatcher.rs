//! The dispatcher against a real redis-server and real files: routing,
//! rejection records, idempotency across restarts and duplicates, follow
//! mode (appends, late creation, truncation, replacement), backpressure and a
//! Redis restart under load.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adp_core::names;
use clap::Parser;
use dispatcher::{Config, Summary};
use redis::Commands;
use test_support::{eventually, RedisServer};
use tokio_util::sync::CancellationToken;

fn config(redis: &RedisServer, file: &Path, out: &Path, extra: &[&str]) -> Config {
    let mut args: Vec<String> = vec![
        "dispatcher".into(),
        "--redis-url".into(),
        redis.url(),
        "--task-file".into(),
        file.display().to_string(),
        "--output-dir".into(),
        out.display().to_string(),
        "--metrics-port".into(),
        "0".into(),
        "--metrics-host".into(),
        "127.0.0.1".into(),
        "--poll-interval-ms".into(),
        "50".into(),
        "--exit-verify-ms".into(),
        "100".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Config::try_parse_from(args).expect("config")
}

async fn run_once(redis: &RedisServer, file: &Path, out: &Path) -> Summary {
    let cfg = config(redis, file, out, &["--follow", "false"]);
    tokio::time::timeout(
        Duration::from_secs(30),
        dispatcher::run(cfg, CancellationToken::new()),
    )
    .await
    .expect("finishes")
    .expect("runs")
}

fn task_line(id: &str, ty: &str) -> String {
    let mut v =
        serde_json::json!({"task_id": id, "task_type": ty, "description": format!("task {id}")});
    if ty == "web" {
        v["constraints"] = serde_json::json!({"start_url": "http://127.0.0.1:9/"});
    }
    v.to_string()
}

fn write_file(path: &Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).expect("create");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
}

fn xlen(redis: &RedisServer, stream: &str) -> usize {
    redis.client().xlen(stream).unwrap_or(0)
}

fn stream_ids(redis: &RedisServer, stream: &str) -> Vec<String> {
    let mut c = redis.client();
    let r: redis::streams::StreamRangeReply = c.xrange_all(stream).expect("xrange");
    r.ids
        .iter()
        .map(|e| {
            let task: String = e.get("task").expect("task field");
            let v: serde_json::Value = serde_json::from_str(&task).expect("task json");
            v["task_id"].as_str().expect("id").to_owned()
        })
        .collect()
}

fn rejected(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("rejected.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("record json"))
        .collect()
}

struct Env {
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            redis: RedisServer::start(),
            dir: tempfile::tempdir().expect("tmp"),
        }
    }
    fn file(&self) -> PathBuf {
        self.dir.path().join("tasks.jsonl")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("output")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_each_type_and_records_rejections_with_line_numbers() {
    let env = Env::new();
    let mut bad_utf8 = br#"{"task_id":"u","task_type":"code","description":"#.to_vec();
    bad_utf8.extend_from_slice(b"\"\xff\"}");
    let lines = vec![
        task_line("c1", "code"),
        task_line("w1", "web"),
        "".to_owned(),
        task_line("r1", "reasoning"),
        "{broken".to_owned(),
        r#"{"task_id":"../../etc/passwd","task_type":"code","description":"x"}"#.to_owned(),
        r#"{"task_id":"m","task_type":"code","description":"d","max_steps":0}"#.to_owned(),
        r#"{"task_id":"k","task_type":"video","description":"d"}"#.to_owned(),
    ];
    write_file(&env.file(), &lines);
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(env.file())
            .expect("open");
        f.write_all(&bad_utf8).expect("write");
        f.write_all(b"\n").expect("write");
        f.write_all(&vec![b'x'; 2 * 1024 * 1024]).expect("write");
        f.write_all(b"\n").expect("write");
        // The last line has no newline: dispatched anyway when not following.
        f.write_all(task_line("c2", "code").as_bytes())
            .expect("write");
    }
    let s = run_once(&env.redis, &env.file(), &env.out()).await;
    assert_eq!(s.dispatched, 4);
    assert_eq!(s.rejected_total(), 6);
    assert_eq!(stream_ids(&env.redis, names::STREAM_CODE), vec!["c1", "c2"]);
    assert_eq!(stream_ids(&env.redis, names::STREAM_WEB), vec!["w1"]);
    assert_eq!(stream_ids(&env.redis, names::STREAM_REASONING), vec!["r1"]);

    let recs = rejected(&env.out());
    let got: Vec<(u64, String)> = recs
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().expect("line"),
                r["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (5, "invalid_json".into()),
            (6, "unsafe_task_id".into()),
            (7, "out_of_range".into()),
            (8, "unknown_task_type".into()),
            (9, "invalid_utf8".into()),
            (10, "line_too_long".into()),
        ]
    );
    assert_eq!(recs[0]["raw"], "{broken");
    assert!(recs
        .iter()
        .all(|r| r["raw"].as_str().map_or(0, str::len) <= 4096));
    assert!(!env.dir.path().join("etc").exists());

    // Entries carry the contract's fields, with the task filled in.
    let mut c = env.redis.client();
    let r: redis::streams::StreamRangeReply = c.xrange_all(names::STREAM_CODE).expect("range");
    let e = &r.ids[0];
    let task: serde_json::Value =
        serde_json::from_str(&e.get::<String>("task").expect("task")).expect("json");
    assert_eq!(task["max_steps"], 10);
    assert_eq!(task["timeout"], 300);
    assert!(e
        .get::<String>("submitted_at")
        .expect("submitted_at")
        .parse::<f64>()
        .is_ok());
    assert_eq!(e.get::<String>("priority").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_across_duplicates_and_restarts() {
    let env = Env::new();
    let mut lines: Vec<String> = (0..50)
        .map(|i| task_line(&format!("t{i}"), "code"))
        .collect();
    lines.push(task_line("t3", "code"));
    lines.push(task_line("t7", "reasoning"));
    write_file(&env.file(), &lines);
    let s = run_once(&env.redis, &env.file(), &env.out()).await;
    // t3 again as it was: a duplicate; t7 again with other content: rejected.
    assert_eq!((s.dispatched, s.duplicates), (50, 1));
    assert_eq!(s.rejected.get("conflicting_duplicate"), Some(&1));

    // Restart on the same file: resumes after its checkpoint, nothing again.
    let s = run_once(&env.redis, &env.file(), &env.out()).await;
    assert_eq!((s.dispatched, s.lines), (0, 0));

    // Even without the checkpoint (file copied elsewhere), ids are not enqueued twice.
    let copy = env.dir.path().join("copy.jsonl");
    std::fs::copy(env.file(), &copy).expect("copy");
    let s = run_once(&env.redis, &copy, &env.out()).await;
    assert_eq!((s.dispatched, s.duplicates), (0, 51));
    assert_eq!(s.rejected.get("conflicting_duplicate"), Some(&1));
    assert_eq!(xlen(&env.redis, names::STREAM_CODE), 50);
    assert_eq!(xlen(&env.redis, names::STREAM_REASONING), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_picks_up_appends_late_files_truncation_and_replacement() {
    let env = Env::new();
    let cfg = config(&env.redis, &env.file(), &env.out(), &["--follow", "true"]);
    let stop = CancellationToken::new();
    let handle = tokio::spawn(dispatcher::run(cfg, stop.clone()));
    // The file does not exist yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    write_file(&env.file(), &[task_line("a1", "code")]);
    eventually(Duration::from_secs(5), || async {
        xlen(&env.redis, names::STREAM_CODE) == 1
    })
    .await
    .expect("late file picked up");

    // A partial line is not taken until its newline arrives.
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(env.file())
            .expect("open");
        let l = task_line("a2", "code");
        f.write_all(&l.as_bytes()[..10]).expect("write");
        f.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(xlen(&env.redis, names::STREAM_CODE), 1);
        f.write_all(&l.as_bytes()[10..]).expect("write");
        f.write_all(b"\n").expect("write");
    }
    append(&env.file(), &[task_line("a3", "web")]);
    eventually(Duration::from_secs(5), || async {
        xlen(&env.redis, names::STREAM_CODE) == 2 && xlen(&env.redis, names::STREAM_WEB) == 1
    })
    .await
    .expect("appended lines dispatched within seconds");

    // Truncated and rewritten: old ids skipped, new ones dispatched.
    write_file(
        &env.file(),
        &[task_line("a1", "code"), task_line("b1", "code")],
    );
    eventually(Duration::from_secs(5), || async {
        xlen(&env.redis, names::STREAM_CODE) == 3
    })
    .await
    .expect("truncated file read again");

    // Replaced by rename.
    let tmp = env.dir.path().join("new.jsonl");
    write_file(
        &tmp,
        &[task_line("b1", "code"), task_line("c1", "reasoning")],
    );
    std::fs::rename(&tmp, env.file()).expect("rename");
    eventually(Duration::from_secs(5), || async {
        xlen(&env.redis, names::STREAM_REASONING) == 1
    })
    .await
    .expect("replaced file read");
    assert_eq!(
        stream_ids(&env.redis, names::STREAM_CODE),
        vec!["a1", "a2", "b1"]
    );

    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("stops on shutdown")
        .expect("join")
        .expect("ok");
    assert_eq!(summary.dispatched, 5);
    assert_eq!(summary.duplicates, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_and_resumes_without_trimming() {
    let env = Env::new();
    let lines: Vec<String> = (0..20)
        .map(|i| task_line(&format!("p{i}"), "code"))
        .collect();
    write_file(&env.file(), &lines);
    let cfg = config(
        &env.redis,
        &env.file(),
        &env.out(),
        &["--follow", "false", "--max-backlog", "5"],
    );
    let handle = tokio::spawn(dispatcher::run(cfg, CancellationToken::new()));
    eventually(Duration::from_secs(5), || async {
        xlen(&env.redis, names::STREAM_CODE) == 5
    })
    .await
    .expect("first 5");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        xlen(&env.redis, names::STREAM_CODE),
        5,
        "paused at MAX_BACKLOG"
    );

    // A worker takes and acks 5: the dispatcher resumes.
    let mut c = env.redis.client();
    let mut consumed = 0;
    while consumed < 20 {
        let reply: redis::streams::StreamReadReply = c
            .xread_options(
                &[names::STREAM_CODE],
                &[">"],
                &redis::streams::StreamReadOptions::default()
                    .group(names::GROUP, "tester")
                    .count(5)
                    .block(2000),
            )
            .expect("read");
        for k in reply.keys {
            for id in k.ids {
                let _: i64 = c
                    .xack(names::STREAM_CODE, names::GROUP, &[&id.id])
                    .expect("ack");
                consumed += 1;
            }
        }
        let backlog = {
            let conn = adp_core::config::connect(&env.redis.url())
                .await
                .expect("connect");
            adp_core::queue::Queue::new(conn)
                .backlog(names::STREAM_CODE)
                .await
                .expect("backlog")
        };
        assert!(backlog <= 5, "backlog {backlog} never exceeds MAX_BACKLOG");
    }
    let summary = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("finishes")
        .expect("join")
        .expect("ok");
    assert_eq!(summary.dispatched, 20);
    assert_eq!(xlen(&env.redis, names::STREAM_CODE), 20, "nothing trimmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_running_through_a_redis_restart_without_loss_or_doubles() {
    let mut env = Env::new();
    let first: Vec<String> = (0..300)
        .map(|i| task_line(&format!("x{i}"), "code"))
        .collect();
    write_file(&env.file(), &first);
    let cfg = config(&env.redis, &env.file(), &env.out(), &["--follow", "true"]);
    let stop = CancellationToken::new();
    let handle = tokio::spawn(dispatcher::run(cfg, stop.clone()));
    eventually(Duration::from_secs(10), || async {
        xlen(&env.redis, names::STREAM_CODE) == 300
    })
    .await
    .expect("first part");

    env.redis.stop(); // SIGTERM: AOF flushed
    let second: Vec<String> = (300..600)
        .map(|i| task_line(&format!("x{i}"), "code"))
        .collect();
    append(&env.file(), &second);
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.redis.start_again();
    eventually(Duration::from_secs(20), || async {
        xlen(&env.redis, names::STREAM_CODE) == 600
    })
    .await
    .expect("dispatcher reconnected and finished");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = stream_ids(&env.redis, names::STREAM_CODE);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (600, 600),
        "nothing lost, nothing doubled"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
}

#[test]
fn binary_prints_a_summary_and_exits_64_on_bad_config() {
    let env = Env::new();
    write_file(&env.file(), &[task_line("s1", "code"), "nope".to_owned()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env("REDIS_URL", env.redis.url())
        .env("TASK_FILE", env.file())
        .env("OUTPUT_DIR", env.out())
        .env("FOLLOW", "false")
        .env("METRICS_PORT", "0")
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dispatched 1, duplicates 0, rejected 1 (invalid_json: 1)"),
        "{stdout}"
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env("MAX_BACKLOG", "lots")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(64));
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env("REDIS_URL", env.redis.url())
        .env("TASK_FILE", env.dir.path().join("nope.jsonl"))
        .env("FOLLOW", "false")
        .env("METRICS_PORT", "0")
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

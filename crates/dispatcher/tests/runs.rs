//! Runs, rollouts and "no line without a record" against a real
//! redis-server: two runs of one file, K rollouts, reused ids, id-less
//! lines, in-place rewrites (at start and while following), per-file
//! rejection records, per-stream backpressure, Redis OOM and an AOF tail
//! lost while the dispatcher is idle.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adp_core::names;
use clap::Parser;
use dispatcher::{Config, Summary};
use redis::Commands;
use serde_json::{json, Value};
use test_support::{eventually, RedisServer};
use tokio_util::sync::CancellationToken;

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
    fn config(&self, file: &Path, extra: &[&str]) -> Config {
        let mut args: Vec<String> = vec![
            "dispatcher".into(),
            "--redis-url".into(),
            self.redis.url(),
            "--task-file".into(),
            file.display().to_string(),
            "--output-dir".into(),
            self.out().display().to_string(),
            "--metrics-host".into(),
            "127.0.0.1".into(),
            "--poll-interval-ms".into(),
            "50".into(),
            "--exit-verify-ms".into(),
            "100".into(),
            "--stats-interval-secs".into(),
            "1".into(),
        ];
        if !extra.contains(&"--metrics-port") {
            args.extend(["--metrics-port".into(), "0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Config::try_parse_from(args).expect("config")
    }
    async fn run_once(&self, file: &Path, extra: &[&str]) -> Summary {
        let mut args = vec!["--follow", "false"];
        args.extend_from_slice(extra);
        let cfg = self.config(file, &args);
        tokio::time::timeout(
            Duration::from_secs(60),
            dispatcher::run(cfg, CancellationToken::new()),
        )
        .await
        .expect("finishes")
        .expect("runs")
    }
    /// A dispatcher following the task file until the token is cancelled.
    fn follow(&self, extra: &[&str]) -> (CancellationToken, tokio::task::JoinHandle<Summary>) {
        let mut args = vec!["--follow", "true", "--verify-interval-ms", "100"];
        args.extend_from_slice(extra);
        let cfg = self.config(&self.file(), &args);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move { dispatcher::run(cfg, token).await.expect("runs") });
        (stop, handle)
    }
    /// Every entry of a stream as its task JSON.
    fn entries(&self, stream: &str) -> Vec<Value> {
        let mut c = self.redis.client();
        let r: redis::streams::StreamRangeReply = c.xrange_all(stream).expect("xrange");
        r.ids
            .iter()
            .map(|e| {
                let task: String = e.get("task").expect("task field");
                serde_json::from_str(&task).expect("task json")
            })
            .collect()
    }
    fn ids(&self, stream: &str) -> Vec<String> {
        self.entries(stream)
            .iter()
            .map(|t| t["task_id"].as_str().expect("id").to_owned())
            .collect()
    }
    fn xlen(&self, stream: &str) -> usize {
        self.redis.client().xlen(stream).unwrap_or(0)
    }
    /// The stream entry ids (not task ids) of a stream, oldest first.
    fn entry_ids(&self, stream: &str) -> Vec<String> {
        let mut c = self.redis.client();
        let r: redis::streams::StreamRangeReply = c.xrange_all(stream).expect("xrange");
        r.ids.into_iter().map(|e| e.id).collect()
    }
}

fn task(id: &str, ty: &str, description: &str) -> String {
    let mut v = json!({"task_id": id, "task_type": ty, "description": description});
    if ty == "web" {
        v["constraints"] = json!({"start_url": "http://127.0.0.1:9/"});
    }
    v.to_string()
}

fn write_file(path: &Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).expect("create");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
    f.sync_all().expect("sync");
}

/// Truncates and rewrites the file in place (same inode), like `gen > file`.
fn rewrite_in_place(path: &Path, lines: &[String]) {
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("meta"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
    f.sync_all().expect("sync");
    let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("meta"));
    assert_eq!(ino, after, "same inode");
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("record json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_file_each_dispatch_every_task() {
    let env = Env::new();
    let lines = vec![
        task("a", "code", "first"),
        "{not json".to_owned(),
        task("b", "code", "second"),
        task("c", "reasoning", "third"),
    ];
    write_file(&env.file(), &lines);
    let first = env.run_once(&env.file(), &[]).await;
    assert_eq!(first.dispatched, 3);
    let second = env.run_once(&env.file(), &["--run-id", "exp-2"]).await;
    assert_eq!(second.dispatched, 3, "a new run runs every task again");
    assert_eq!(env.xlen(names::STREAM_CODE), 4);
    let runs: Vec<Option<String>> = env
        .entries(names::STREAM_CODE)
        .iter()
        .map(|t| t["run_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        runs,
        vec![None, None, Some("exp-2".into()), Some("exp-2".into())]
    );
    // Each run has its checkpoint: running either again does nothing.
    for run in ["default", "exp-2"] {
        let again = env.run_once(&env.file(), &["--run-id", run]).await;
        assert_eq!((again.dispatched, again.lines), (0, 0), "{run}");
    }
    // Rejections per run: the default run's file and the named run's.
    let default = records(&env.out().join("rejected.jsonl"));
    let named = records(&env.out().join("runs/exp-2/rejected.jsonl"));
    assert_eq!((default.len(), named.len()), (1, 1));
    assert_eq!(named[0]["line"], 2);
    assert_eq!(named[0]["reason"], "invalid_json");
    let mut c = env.redis.client();
    let tasks: u64 = c.hget(names::run_key("exp-2"), "tasks").expect("run hash");
    assert_eq!(tasks, 3);
    let known: Vec<String> = c.smembers(names::RUNS).expect("runs");
    assert_eq!(known.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_give_k_entries_each_with_its_index() {
    let env = Env::new();
    let mut one =
        json!({"task_id": "once", "task_type": "code", "description": "d", "rollouts": 1});
    let lines = vec![
        task("a", "code", "x"),
        task("b", "code", "y"),
        one.to_string(),
    ];
    write_file(&env.file(), &lines);
    let s = env.run_once(&env.file(), &["--rollouts", "3"]).await;
    assert_eq!((s.dispatched, s.entries), (3, 7));
    let entries = env.entries(names::STREAM_CODE);
    let got: Vec<(String, Option<u64>)> = entries
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().expect("id").to_owned(),
                t["rollout"].as_u64(),
            )
        })
        .collect();
    let want: Vec<(String, Option<u64>)> =
        [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
            .iter()
            .map(|(id, r)| ((*id).to_owned(), Some(*r)))
            .chain([("once".to_owned(), None)])
            .collect();
    assert_eq!(got, want);
    // Each entry is a whole task whose trajectory file has its own name.
    for t in &entries {
        let spec: adp_core::TaskSpec = serde_json::from_value(t.clone()).expect("task spec");
        let traj = adp_core::Trajectory::new(&spec, "sandbox-runtime");
        let path = adp_core::runs::trajectory_path(
            &env.out(),
            &traj.run_id,
            &traj.task_id,
            traj.rollout(),
        )
        .expect("path");
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        match spec.rollout {
            Some(r) => assert_eq!(name, format!("{}@{r}.json", spec.task_id)),
            None => assert_eq!(name, "once.json"),
        }
    }
    // Reading the file again in the same run adds nothing.
    let mut c = env.redis.client();
    let _: () = redis::cmd("DEL")
        .arg(dispatcher::checkpoint_key("default", &env.file()))
        .query(&mut c)
        .expect("del");
    let again = env.run_once(&env.file(), &["--rollouts", "3"]).await;
    assert_eq!((again.dispatched, again.duplicates), (0, 3));
    one["rollouts"] = json!(0);
    write_file(&env.file(), &[one.to_string()]);
    let bad = env.run_once(&env.file(), &["--run-id", "r0"]).await;
    assert_eq!(bad.rejected.get("out_of_range"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_task_id_with_other_content_is_rejected_and_recorded() {
    let env = Env::new();
    let lines = vec![
        task("t1", "code", "the first"),
        task("t1", "code", "the first"),
        task("t1", "code", "something else"),
    ];
    write_file(&env.file(), &lines);
    let s = env.run_once(&env.file(), &[]).await;
    assert_eq!((s.dispatched, s.duplicates), (1, 1));
    assert_eq!(s.rejected.get("conflicting_duplicate"), Some(&1));
    let recs = records(&env.out().join("rejected.jsonl"));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["line"], 3);
    assert_eq!(recs[0]["reason"], "conflicting_duplicate");
    assert!(recs[0]["raw"]
        .as_str()
        .expect("raw")
        .contains("something else"));
    assert_eq!(env.ids(names::STREAM_CODE), vec!["t1"]);
    // Read again from the start: still one record for that line.
    let mut c = env.redis.client();
    let _: () = redis::cmd("DEL")
        .arg(dispatcher::checkpoint_key("default", &env.file()))
        .query(&mut c)
        .expect("del");
    let again = env.run_once(&env.file(), &[]).await;
    assert_eq!(again.dispatched, 0);
    assert_eq!(env.xlen(names::STREAM_CODE), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_task_id_get_the_same_id_when_read_again() {
    let env = Env::new();
    let same = r#"{"task_type": "code", "description": "no id"}"#.to_owned();
    let other = r#"{"task_type": "code", "description": "no id either", "task_id": ""}"#.to_owned();
    write_file(&env.file(), &[same.clone(), same.clone(), other]);
    let s = env.run_once(&env.file(), &[]).await;
    assert_eq!(s.dispatched, 3, "two identical lines are two tasks");
    let ids = env.ids(names::STREAM_CODE);
    assert!(ids.iter().all(|id| id.starts_with("auto-")), "{ids:?}");
    assert_eq!(ids.len(), 3);
    // Without the checkpoint the file is read again: the same ids, nothing new.
    let mut c = env.redis.client();
    let _: () = redis::cmd("DEL")
        .arg(dispatcher::checkpoint_key("default", &env.file()))
        .query(&mut c)
        .expect("del");
    let again = env.run_once(&env.file(), &[]).await;
    assert_eq!((again.dispatched, again.duplicates), (0, 3));
    // Resuming after the checkpoint, a third identical line is a third task.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.file())
        .expect("open");
    writeln!(f, "{same}").expect("append");
    drop(f);
    let third = env.run_once(&env.file(), &[]).await;
    assert_eq!((third.lines, third.dispatched), (1, 1));
    let ids = env.ids(names::STREAM_CODE);
    assert_eq!(ids.len(), 4);
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 4, "{ids:?}");
    // Another run gives other ids.
    env.run_once(&env.file(), &["--run-id", "other"]).await;
    let all = env.ids(names::STREAM_CODE);
    let unique: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (8, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_is_read_again_from_the_start() {
    let env = Env::new();
    let old: Vec<String> = (0..3)
        .map(|i| task(&format!("old{i}"), "code", "old"))
        .collect();
    write_file(&env.file(), &old);
    assert_eq!(env.run_once(&env.file(), &[]).await.dispatched, 3);
    // gen > tasks.jsonl: same inode, longer, other lines.
    let new: Vec<String> = (0..5)
        .map(|i| {
            task(
                &format!("new{i}"),
                "code",
                "a longer description than before",
            )
        })
        .collect();
    rewrite_in_place(&env.file(), &new);
    let s = env.run_once(&env.file(), &[]).await;
    assert_eq!((s.dispatched, s.rejected_total()), (5, 0), "{s}");
    assert_eq!(env.xlen(names::STREAM_CODE), 8);
    assert!(records(&env.out().join("rejected.jsonl")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_while_followed_is_read_again() {
    let env = Env::new();
    let old: Vec<String> = (0..3)
        .map(|i| task(&format!("f{i}"), "code", "old"))
        .collect();
    write_file(&env.file(), &old);
    let (stop, handle) = env.follow(&[]);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 3
    })
    .await
    .expect("first lines");
    let mut new = old.clone();
    new[1] = task("g1", "code", "changed in the middle");
    new.push(task("g9", "code", "and one more line at the end"));
    rewrite_in_place(&env.file(), &new);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 5
    })
    .await
    .expect("the rewritten file is read again");
    stop.cancel();
    let s = handle.await.expect("join");
    assert_eq!(s.rejected_total(), 0, "no bogus rejection: {s}");
    assert_eq!(
        env.ids(names::STREAM_CODE),
        vec!["f0", "f1", "f2", "g1", "g9"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_records_of_one_file_survive_another_files_checkpoint() {
    let env = Env::new();
    let a = env.dir.path().join("a.jsonl");
    let b = env.dir.path().join("b.jsonl");
    write_file(&a, &["bad a".to_owned(), task("a1", "code", "x")]);
    write_file(&b, &["bad b".to_owned(), task("b1", "code", "y")]);
    env.run_once(&a, &[]).await;
    env.run_once(&b, &[]).await;
    // A again (resumes at its checkpoint), then from line 1 after losing it.
    env.run_once(&a, &[]).await;
    let mut c = env.redis.client();
    let _: () = redis::cmd("DEL")
        .arg(dispatcher::checkpoint_key("default", &a))
        .query(&mut c)
        .expect("del");
    env.run_once(&a, &[]).await;
    let recs = records(&env.out().join("rejected.jsonl"));
    let files: Vec<&str> = recs
        .iter()
        .map(|r| r["file"].as_str().expect("file"))
        .collect();
    assert!(files.iter().any(|f| f.ends_with("b.jsonl")), "{recs:?}");
    assert!(files.iter().any(|f| f.ends_with("a.jsonl")), "{recs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_pauses_only_its_own_type() {
    let env = Env::new();
    let mut lines: Vec<String> = (0..3)
        .map(|i| task(&format!("w{i}"), "web", "web"))
        .collect();
    lines.extend((0..3).map(|i| task(&format!("c{i}"), "code", "code")));
    write_file(&env.file(), &lines);
    let (stop, handle) = env.follow(&["--max-backlog", "2"]);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 2
    })
    .await
    .expect("code flows while web is full");
    assert_eq!(env.xlen(names::STREAM_WEB), 2);
    // A code consumer frees room: the third code task follows, web still waits.
    let mut c = env.redis.client();
    let consume = |c: &mut redis::Connection, stream: &str| {
        let r: redis::streams::StreamReadReply = c
            .xread_options(
                &[stream],
                &[">"],
                &redis::streams::StreamReadOptions::default()
                    .group(names::GROUP, "test-consumer")
                    .count(1),
            )
            .expect("xreadgroup");
        for k in r.keys {
            for e in k.ids {
                let _: () = redis::cmd("XACK")
                    .arg(stream)
                    .arg(names::GROUP)
                    .arg(&e.id)
                    .query(c)
                    .expect("xack");
                let _: () = redis::cmd("XDEL")
                    .arg(stream)
                    .arg(&e.id)
                    .query(c)
                    .expect("xdel");
            }
        }
    };
    consume(&mut c, names::STREAM_CODE);
    let code_ids = || async {
        let mut c = env.redis.client();
        let r: redis::streams::StreamRangeReply = c.xrange_all(names::STREAM_CODE).expect("xrange");
        r.ids.len()
    };
    eventually(Duration::from_secs(30), || async {
        code_ids().await == 2 && env.ids(names::STREAM_CODE).contains(&"c2".to_owned())
    })
    .await
    .expect("third code task");
    assert_eq!(env.ids(names::STREAM_WEB), vec!["w0", "w1"]);
    // Then web drains: w2 comes, in order.
    consume(&mut c, names::STREAM_WEB);
    eventually(Duration::from_secs(30), || async {
        env.ids(names::STREAM_WEB) == vec!["w1", "w2"]
    })
    .await
    .expect("web resumes in order");
    stop.cancel();
    let s = handle.await.expect("join");
    assert_eq!(s.dispatched, 6);
}

async fn health_status(port: u16) -> Option<u16> {
    reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_pauses_with_health_503_and_recovers() {
    let env = Env::new();
    let mut c = env.redis.client();
    write_file(&env.file(), &[task("m0", "code", "first")]);
    let port = test_support::free_port();
    let port_arg = port.to_string();
    let (stop, handle) = env.follow(&["--metrics-port", &port_arg]);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 1
    })
    .await
    .expect("first task");
    assert_eq!(health_status(port).await, Some(200));
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut c)
        .expect("maxmemory");
    let more: Vec<String> = (1..4)
        .map(|i| task(&format!("m{i}"), "code", "more"))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.file())
        .expect("open");
    for l in &more {
        writeln!(f, "{l}").expect("append");
    }
    drop(f);
    eventually(Duration::from_secs(30), || async {
        health_status(port).await == Some(503)
    })
    .await
    .expect("/health reports the OOM");
    assert_eq!(env.xlen(names::STREAM_CODE), 1, "nothing written at OOM");
    let calls_at_oom = script_calls(&mut c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls_later = script_calls(&mut c);
    assert!(
        calls_later - calls_at_oom <= 8,
        "backoff, not a tight loop: {} calls in 2 s",
        calls_later - calls_at_oom
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut c)
        .expect("maxmemory");
    eventually(Duration::from_secs(60), || async {
        env.xlen(names::STREAM_CODE) == 4
    })
    .await
    .expect("recovers");
    eventually(Duration::from_secs(30), || async {
        health_status(port).await == Some(200)
    })
    .await
    .expect("/health recovers");
    stop.cancel();
    let s = handle.await.expect("join");
    assert_eq!(s.dispatched, 4);
}

/// Lua calls the server has run (EVALSHA + EVAL).
fn script_calls(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(c)
        .expect("info");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// The AOF file Redis appends to now (multi-part AOF of Redis 7).
fn incr_aof(redis: &RedisServer) -> PathBuf {
    let dir = redis.data_dir().join("appendonlydir");
    std::fs::read_dir(&dir)
        .expect("appendonlydir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max()
        .expect("an incr AOF file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aof_tail_lost_while_idle_is_dispatched_again() {
    let mut env = Env::new();
    write_file(
        &env.file(),
        &(0..3)
            .map(|i| task(&format!("k{i}"), "code", "kept"))
            .collect::<Vec<_>>(),
    );
    let (stop, handle) = env.follow(&[]);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 3
    })
    .await
    .expect("first lines");
    // Let the dispatcher settle (checkpoint saved), then note the AOF size.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let aof = incr_aof(&env.redis);
    let kept = std::fs::metadata(&aof).expect("aof").len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.file())
        .expect("open");
    for i in 0..2 {
        writeln!(f, "{}", task(&format!("l{i}"), "code", "lost")).expect("append");
    }
    drop(f);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 5
    })
    .await
    .expect("tail dispatched");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = env.entry_ids(names::STREAM_CODE);
    // Power loss: the last writes never reached the disk.
    env.redis.kill();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&aof)
        .expect("aof");
    f.set_len(kept).expect("cut the AOF tail");
    drop(f);
    env.redis.start_again();
    // (The dispatcher may already be dispatching the tail again: the loss
    // is shown by the tail's entries being new ones, not by a count.)
    eventually(Duration::from_secs(60), || async {
        env.xlen(names::STREAM_CODE) == 5
    })
    .await
    .expect("the idle dispatcher dispatches the lost tail again");
    stop.cancel();
    handle.await.expect("join");
    assert_eq!(
        env.ids(names::STREAM_CODE),
        vec!["k0", "k1", "k2", "l0", "l1"]
    );
    let after = env.entry_ids(names::STREAM_CODE);
    assert_eq!(after[..3], before[..3], "the kept entries stay");
    assert!(
        after[3] != before[3] && after[4] != before[4],
        "the tail was lost and added again: {before:?} -> {after:?}"
    );
}

/// The value of one sample on a /metrics page.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_is_reported_unserved_and_holds_up_nothing() {
    let env = Env::new();
    let mut c = env.redis.client();
    // A web entry added ten minutes ago that no consumer ever read.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(names::STREAM_WEB)
        .arg(names::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut c)
        .expect("group");
    let ten_min_ago = ((adp_core::types::unix_now() - 600.0) * 1000.0) as u64;
    let _: String = redis::cmd("XADD")
        .arg(names::STREAM_WEB)
        .arg(format!("{ten_min_ago}-0"))
        .arg("task")
        .arg(task("w_old", "web", "old"))
        .query(&mut c)
        .expect("xadd");
    write_file(&env.file(), &[task("c0", "code", "code")]);
    let port = test_support::free_port();
    let port_arg = port.to_string();
    let (stop, handle) = env.follow(&["--metrics-port", &port_arg]);
    eventually(Duration::from_secs(30), || async {
        env.xlen(names::STREAM_CODE) == 1
    })
    .await
    .expect("code is dispatched while web is unserved");
    // A code consumer reads: code is served.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(names::GROUP)
        .arg("code-consumer")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(names::STREAM_CODE)
        .arg(">")
        .query(&mut c)
        .expect("xreadgroup");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let page = || async { reqwest::get(&url).await.ok()?.text().await.ok() };
    let last = std::sync::Mutex::new(String::new());
    let seen = eventually(Duration::from_secs(30), || async {
        let Some(text) = page().await else {
            return false;
        };
        let web = sample(&text, "queue_unserved_seconds{queue_name=\"tasks:web\"}");
        let code_active = sample(&text, "queue_active_consumers{queue_name=\"tasks:code\"}");
        let ok = web.is_some_and(|s| (590.0..900.0).contains(&s))
            && code_active == Some(1.0)
            && sample(&text, "queue_unserved_seconds{queue_name=\"tasks:code\"}") == Some(0.0)
            && sample(&text, "queue_active_consumers{queue_name=\"tasks:web\"}") == Some(0.0);
        *last.lock().expect("lock") = text;
        ok
    })
    .await;
    assert!(
        seen.is_ok(),
        "metrics: {}",
        last.lock()
            .expect("lock")
            .lines()
            .filter(|l| l.starts_with("queue_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop.cancel();
    let s = handle.await.expect("join");
    assert_eq!(s.dispatched, 1);
}

/// Many small batches, up to two in flight: every task once, in file order
/// per stream; a conflict mid-file (its batch does not move the checkpoint,
/// so the batch sent after it is refused and read again) and bad lines are
/// each recorded once, in line order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_keep_order_and_exactly_once() {
    let env = Env::new();
    let mut lines = Vec::new();
    for i in 0..3000 {
        let ty = if i % 3 == 0 { "reasoning" } else { "code" };
        lines.push(task(&format!("p{i}"), ty, "pipelined"));
        if i == 1500 {
            lines.push(task("p700", "code", "other content"));
        }
        if i == 2200 {
            lines.push("{broken".to_owned());
        }
    }
    write_file(&env.file(), &lines);
    let s = env
        .run_once(&env.file(), &["--batch-size", "7", "--run-id", "pipe"])
        .await;
    assert_eq!(s.dispatched, 3000);
    assert_eq!(s.rejected.get("conflicting_duplicate"), Some(&1));
    assert_eq!(s.rejected.get("invalid_json"), Some(&1));
    let code = env.ids(names::STREAM_CODE);
    let reasoning = env.ids(names::STREAM_REASONING);
    assert_eq!(code.len() + reasoning.len(), 3000, "each task once");
    let expect = |keep: fn(usize) -> bool| -> Vec<String> {
        (0..3000)
            .filter(|i| keep(*i))
            .map(|i| format!("p{i}"))
            .collect()
    };
    assert_eq!(code, expect(|i| i % 3 != 0), "file order");
    assert_eq!(reasoning, expect(|i| i % 3 == 0), "file order");
    let recs = records(&env.out().join("runs/pipe/rejected.jsonl"));
    let got: Vec<(u64, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().expect("line"),
                r["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(1502, "conflicting_duplicate"), (2203, "invalid_json")]
    );
}

/// The batch step's order rule, against Redis: a batch that arrives before
/// the batch sent just before it is refused as CHECKPOINT_BEHIND and writes
/// nothing; sent again after that one, it applies; a batch whose starting
/// checkpoint Redis does not hold (nor the one before) is CHECKPOINT_MOVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_overtakes_the_one_before_it_waits_for_it() {
    use dispatcher::dispatch::{self, Prepared, RunKeys};
    let env = Env::new();
    let mut conn = redis::Client::open(env.redis.url())
        .expect("client")
        .get_connection_manager()
        .await
        .expect("connect");
    let keys = RunKeys::new("order", "test:checkpoint".to_owned());
    let prepared = |id: &str| {
        let line = task(id, "code", "ordered");
        let spec = adp_core::validate::parse_task_line(line.as_bytes()).expect("task");
        Prepared::new(&spec, "order", 1, 1, line.into_bytes(), (0, 0))
    };
    let (a, b) = ([prepared("a")], [prepared("b")]);
    // B starts from A's checkpoint; A starts from none.
    let behind = dispatch::send_batch(&mut conn, &keys, Some("cp-b"), Some("cp-a"), Some(None), &b)
        .await
        .expect_err("B before A");
    assert_eq!(behind.code(), Some(dispatch::CHECKPOINT_BEHIND));
    assert_eq!(env.xlen(names::STREAM_CODE), 0, "nothing written");
    dispatch::send_batch(&mut conn, &keys, Some("cp-a"), None, None, &a)
        .await
        .expect("A");
    dispatch::send_batch(&mut conn, &keys, Some("cp-b"), Some("cp-a"), Some(None), &b)
        .await
        .expect("B after A");
    assert_eq!(env.ids(names::STREAM_CODE), vec!["a", "b"]);
    let moved = dispatch::send_batch(
        &mut conn,
        &keys,
        Some("cp-c"),
        Some("cp-x"),
        Some(Some("cp-a")),
        &[],
    )
    .await
    .expect_err("neither");
    assert_eq!(moved.code(), Some(dispatch::CHECKPOINT_MOVED));
    let mut c = env.redis.client();
    let held: String = c.get("test:checkpoint").expect("get");
    assert_eq!(held, "cp-b");
}

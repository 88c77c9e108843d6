//! Shared helpers of the `adp` integration tests: a private redis-server, an
//! output directory in a tempdir, the built `adp` binary, trajectory and
//! stream fixtures written the way the runtimes and the dispatcher write them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adp_core::types::unix_now;
use adp_core::{ActionType, ErrorType, ExecutionStep, TaskSpec, TaskType, Trajectory};
use serde_json::{json, Map, Value};
use test_support::RedisServer;

/// A Redis server and an output directory for one test.
pub struct Fixture {
    pub redis: RedisServer,
    pub out: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let out = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(out.path().join("trajectories")).expect("mkdir");
        Fixture {
            redis: RedisServer::start(),
            out,
        }
    }

    pub fn output_dir(&self) -> &Path {
        self.out.path()
    }

    pub fn traj_dir(&self) -> PathBuf {
        self.out.path().join("trajectories")
    }

    /// Runs `adp` with this fixture's REDIS_URL and OUTPUT_DIR.
    pub fn adp(&self, args: &[&str]) -> Output {
        adp_with_env(args, &self.redis.url(), self.out.path())
    }

    /// Runs `adp` and asserts it exited 0.
    pub fn adp_ok(&self, args: &[&str]) -> Output {
        let o = self.adp(args);
        assert_code(&o, 0);
        o
    }

    pub fn conn(&self) -> redis::Connection {
        self.redis.client()
    }

    /// Writes a trajectory file atomically, as the runtimes do.
    pub fn write_traj(&self, t: &Trajectory) -> PathBuf {
        write_traj(&self.traj_dir(), t)
    }

    pub fn read_traj(&self, task_id: &str) -> Value {
        let body = std::fs::read_to_string(self.traj_dir().join(format!("{task_id}.json")))
            .expect("trajectory file");
        serde_json::from_str(&body).expect("trajectory JSON")
    }
}

/// Runs the built `adp` binary.
pub fn adp_with_env(args: &[&str], redis_url: &str, output_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(args)
        .env("REDIS_URL", redis_url)
        .env("OUTPUT_DIR", output_dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run adp")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout parsed as one JSON value.
pub fn stdout_json(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).expect("JSON on stdout")
}

/// Stdout parsed as JSON lines, one value per line.
pub fn stdout_jsonl(o: &Output) -> Vec<Value> {
    jsonl(&stdout(o))
}

/// JSON lines, one value per line.
pub fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect()
}

/// Asserts the numeric fields of a JSON object, naming the field on failure.
pub fn assert_numbers(v: &Value, expected: &[(&str, u64)]) {
    for (field, n) in expected {
        assert_eq!(v[field], *n, "{field} in {v}");
    }
}

/// Asserts the exit code, showing both streams on failure.
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

pub fn write_traj(dir: &Path, t: &Trajectory) -> PathBuf {
    let path = dir.join(format!("{}.json", t.task_id));
    let mut body = serde_json::to_vec_pretty(t).expect("serialize");
    body.push(b'\n');
    adp_core::writer::write_atomic(dir, &path, &body).expect("write trajectory");
    path
}

/// A task as the dispatcher would queue it.
pub fn task(id: &str, tt: TaskType) -> TaskSpec {
    let mut constraints = Map::new();
    if tt == TaskType::Web {
        constraints.insert("start_url".into(), json!("http://127.0.0.1:9/start"));
    }
    TaskSpec {
        task_id: id.to_owned(),
        task_type: tt,
        description: format!("Task {id}"),
        expected_tools: Vec::new(),
        constraints,
        max_steps: 5,
        timeout: 60,
        priority: 1,
    }
}

fn step(i: u32, action: ActionType, params: Value, obs: &str, ok: bool) -> ExecutionStep {
    ExecutionStep {
        step_id: i,
        action_type: action,
        action_params: params.as_object().cloned().unwrap_or_default(),
        observation: obs.to_owned(),
        success: ok,
        error_type: (!ok).then_some(ErrorType::RuntimeError),
        error_message: (!ok).then(|| "boom".to_owned()),
        timestamp: unix_now(),
        duration: 0.01,
    }
}

/// A trajectory of a code task with `steps` code steps.
pub fn code_traj(id: &str, success: bool, error: Option<ErrorType>, steps: u32) -> Trajectory {
    let t = task(id, TaskType::Code);
    let mut tr = Trajectory::new(&t, "sandbox-runtime");
    for i in 0..steps {
        let last = i + 1 == steps;
        tr.steps.push(step(
            i,
            ActionType::CodeExecution,
            json!({"code": format!("print({i})")}),
            &format!("{i}\n"),
            success || !last,
        ));
    }
    tr.success = success;
    tr.error_type = if success { None } else { error };
    tr.error_message = (!success).then(|| "it failed".to_owned());
    tr.final_result = if success {
        format!("{}\n", steps.saturating_sub(1))
    } else {
        String::new()
    };
    tr.total_duration = 0.1 * f64::from(steps);
    tr.meta("policy", "heuristic");
    tr.meta("cache_hit", false);
    tr.meta("attempt", 1);
    tr
}

/// A trajectory of a web task: goto, click, finish.
pub fn web_traj(id: &str, success: bool) -> Trajectory {
    let t = task(id, TaskType::Web);
    let mut tr = Trajectory::new(&t, "web-runtime");
    tr.steps.push(step(
        0,
        ActionType::BrowserAction,
        json!({"type": "goto", "url": "http://127.0.0.1:9/start"}),
        "Title: Start\n[0] link Next",
        true,
    ));
    tr.steps.push(step(
        1,
        ActionType::BrowserAction,
        json!({"type": "click", "element": 0}),
        "Title: Next\nThe answer is 42",
        true,
    ));
    tr.steps.push(step(
        2,
        ActionType::BrowserAction,
        json!({"type": "finish", "answer": "42"}),
        "finished",
        success,
    ));
    tr.success = success;
    tr.error_type = (!success).then_some(ErrorType::BrowserError);
    tr.final_result = if success { "42".into() } else { String::new() };
    tr.total_duration = 1.5;
    tr.meta("policy", "scripted");
    tr.meta("attempt", 1);
    tr
}

/// XADD onto `stream` of the fields the dispatcher writes for a task; the
/// caller may add more fields before running it.
fn xadd_task_fields(stream: &str, t: &TaskSpec) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream)
        .arg("*")
        .arg("task")
        .arg(serde_json::to_string(t).expect("task json"))
        .arg("submitted_at")
        .arg(format!("{:.3}", unix_now()))
        .arg("priority")
        .arg(t.priority);
    cmd
}

/// XADD of a task entry, as the dispatcher writes it.
pub fn xadd_task(conn: &mut redis::Connection, t: &TaskSpec) -> String {
    xadd_task_fields(t.task_type.stream(), t)
        .query(conn)
        .expect("XADD")
}

/// XADD of a dead letter, with the fields the worker's DEAD_LETTER script writes.
pub fn xadd_dead(
    conn: &mut redis::Connection,
    t: &TaskSpec,
    source_id: &str,
    reason: &str,
) -> String {
    xadd_task_fields("tasks:dead", t)
        .arg("source_stream")
        .arg(t.task_type.stream())
        .arg("source_id")
        .arg(source_id)
        .arg("deliveries")
        .arg(3)
        .arg("reason")
        .arg(reason)
        .arg("dead_at")
        .arg(format!("{:.3}", unix_now()))
        .query(conn)
        .expect("XADD dead")
}

pub fn create_group(conn: &mut redis::Connection, stream: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query(conn)
        .expect("XGROUP CREATE");
}

/// Delivers up to `count` new entries of `stream` to `consumer` (XREADGROUP).
pub fn read_group(conn: &mut redis::Connection, stream: &str, consumer: &str, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(conn)
        .expect("XREADGROUP");
}

/// Acknowledges one entry of `stream`.
pub fn ack(conn: &mut redis::Connection, stream: &str, id: &str) {
    let _: u64 = redis::cmd("XACK")
        .arg(stream)
        .arg("workers")
        .arg(id)
        .query(conn)
        .expect("XACK");
}

/// Every entry of a stream (XRANGE - +).
fn entries(conn: &mut redis::Connection, stream: &str) -> Vec<redis::streams::StreamId> {
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    r.ids
}

/// Ids of the entries of a stream.
pub fn stream_ids(conn: &mut redis::Connection, stream: &str) -> Vec<String> {
    entries(conn, stream).into_iter().map(|e| e.id).collect()
}

/// The `task` field of every entry of a stream, parsed.
pub fn stream_tasks(conn: &mut redis::Connection, stream: &str) -> Vec<(String, TaskSpec)> {
    entries(conn, stream)
        .into_iter()
        .map(|e| {
            let raw: String = e.get("task").expect("task field");
            (e.id, serde_json::from_str(&raw).expect("task JSON"))
        })
        .collect()
}

/// Keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

pub fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

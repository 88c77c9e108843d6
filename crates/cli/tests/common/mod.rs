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
        rollouts: None,
        run_id: None,
        rollout: None,
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

/// Writes a trajectory given as JSON (fields the core type does not have yet).
pub fn write_traj_value(dir: &Path, t: &Value) -> PathBuf {
    let id = t["task_id"].as_str().expect("task_id");
    let path = dir.join(format!("{id}.json"));
    let mut body = serde_json::to_vec_pretty(t).expect("serialize");
    body.push(b'\n');
    adp_core::writer::write_atomic(dir, &path, &body).expect("write trajectory");
    path
}

/// A tool call as the chat-completions API writes it.
pub fn tool_call(id: &str, name: &str, args: Value) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}})
}

/// A model call record of `metadata.llm_calls` (docs/formats.md).
pub fn llm_call(n: usize, request: &Value, prefix: usize, added: Value, response: Value) -> Value {
    json!({"call": n, "step_id": n, "started_at": unix_now(), "latency": 0.2,
           "request": request, "messages_prefix": prefix, "messages_added": added,
           "response": response, "error": null})
}

/// A response with token ids and logprobs (`LLM_LOGPROBS=true`).
pub fn llm_response(content: Value, calls: Vec<Value>, finish: &str, tokens: &[u64]) -> Value {
    let lp: Vec<f64> = tokens.iter().map(|t| -0.01 * *t as f64).collect();
    json!({"id": "chatcmpl-1", "model": "fake-model", "content": content,
           "reasoning_content": null, "tool_calls": calls, "finish_reason": finish,
           "usage": {"prompt_tokens": 10, "completion_tokens": tokens.len(), "total_tokens": 10 + tokens.len()},
           "completion_token_ids": tokens, "logprobs": lp, "prompt_token_ids": [1, 2, 3]})
}

/// A code trajectory the `openai` policy produced in native tool mode: one
/// `python` call, then a final text answer; reward 1.0.
pub fn llm_code_traj(id: &str) -> Value {
    let mut tr = code_traj(id, true, None, 1);
    tr.steps[0].action_params = json!({"code": "print(6 * 7)"})
        .as_object()
        .cloned()
        .expect("object");
    tr.steps[0].observation = "42\n".into();
    tr.final_result = "The answer is 42.".into();
    tr.meta("policy", "openai");
    tr.meta("model", "fake-model");
    let tools = json!([{"type": "function", "function": {"name": "python", "description": "Run Python.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}]);
    let request = json!({"model": "fake-model", "tools": tools, "temperature": 0.2, "max_tokens": 512,
                         "seed": 7, "logprobs": true});
    let call = tool_call("call_a", "python", json!({"code": "print(6 * 7)"}));
    let mut reply0 = llm_response(
        json!("Let me compute."),
        vec![call.clone()],
        "tool_calls",
        &[11, 12, 13],
    );
    reply0["reasoning_content"] = json!("six times seven");
    let calls = json!([
        llm_call(
            0,
            &request,
            0,
            json!([
            {"role": "system", "content": "You solve tasks with Python (recorded prompt)."},
            {"role": "user", "content": format!("Task {id}")}]),
            reply0
        ),
        llm_call(
            1,
            &request,
            2,
            json!([
            {"role": "assistant", "content": "Let me compute.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_a", "content": "42\n"}]),
            llm_response(json!("The answer is 42."), vec![], "stop", &[21, 22])
        ),
    ]);
    tr.meta("llm_calls", calls);
    let mut v = serde_json::to_value(&tr).expect("json");
    v["reward"] = json!(1.0);
    v["reward_breakdown"] =
        json!([{"name": "answer", "weight": 1.0, "score": 1.0, "detail": "exact"}]);
    v
}

/// A web trajectory the `openai` policy produced in native tool mode: the
/// runtime's start-page navigation (with a screenshot path), a click, then
/// `finish`; no reward recorded.
pub fn llm_web_traj(id: &str) -> Value {
    let mut tr = web_traj(id, true);
    tr.steps[0].action_params =
        json!({"type": "goto", "url": "http://127.0.0.1:9/start", "auto": true,
                                       "screenshot": "/var/adp/output/trajectories/x/0.png"})
        .as_object()
        .cloned()
        .expect("object");
    tr.steps[1].action_params = json!({"type": "click", "element": 3})
        .as_object()
        .cloned()
        .expect("object");
    tr.meta("policy", "openai");
    let tools = json!([
        {"type": "function", "function": {"name": "click", "description": "Click.",
            "parameters": {"type": "object", "properties": {"element": {"type": "integer"}, "selector": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "finish", "description": "Answer.",
            "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}}]);
    let request =
        json!({"model": "fake-model", "tools": tools, "temperature": 0.0, "logprobs": true});
    let click = tool_call("call_c", "click", json!({"element": 3}));
    let finish = tool_call("call_f", "finish", json!({"answer": "42"}));
    let calls = json!([
        llm_call(
            0,
            &request,
            0,
            json!([
            {"role": "system", "content": "You control a browser (recorded prompt)."},
            {"role": "user", "content": format!("Task {id}\n\nTitle: Start\n[3] link Next")}]),
            llm_response(Value::Null, vec![click.clone()], "tool_calls", &[31, 32])
        ),
        llm_call(
            1,
            &request,
            2,
            json!([
            {"role": "assistant", "content": null, "tool_calls": [click]},
            {"role": "tool", "tool_call_id": "call_c", "content": "Title: Next\nThe answer is 42"}]),
            llm_response(Value::Null, vec![finish], "tool_calls", &[41, 42, 43])
        ),
    ]);
    tr.meta("llm_calls", calls);
    serde_json::to_value(&tr).expect("json")
}

/// A code trajectory that failed for an infrastructure reason.
pub fn infra_traj(id: &str) -> Trajectory {
    let mut tr = code_traj(id, false, Some(ErrorType::SystemError), 0);
    tr.error_message = Some("sandbox: Connection refused".into());
    tr
}

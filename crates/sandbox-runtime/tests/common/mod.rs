//! Test harness: a private redis-server, the runtime running in-process
//! (`sandbox_runtime::run`) or as the real binary, tasks XADDed the way the
//! dispatcher does (fields `task`, `submitted_at`, `priority`), and bounded
//! waits for trajectory files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use adp_core::types::unix_now;
use adp_core::{TaskSpec, TaskType, Trajectory};
use clap::Parser;
use sandbox_runtime::config::Config;
use serde_json::{json, Value};
use test_support::{eventually, free_port, ChildGuard, RedisServer};
use tokio_util::sync::CancellationToken;

/// A task with defaults filled in.
pub fn task(id: &str, task_type: TaskType, description: &str, constraints: Value) -> TaskSpec {
    TaskSpec {
        task_id: id.to_owned(),
        task_type,
        description: description.to_owned(),
        expected_tools: vec!["python_executor".to_owned()],
        constraints: constraints.as_object().cloned().unwrap_or_default(),
        max_steps: 5,
        timeout: 60,
        priority: 1,
        rollouts: None,
        run_id: None,
        rollout: None,
    }
}

/// A scripted code task.
pub fn code_task(id: &str, code: &str) -> TaskSpec {
    task(
        id,
        TaskType::Code,
        &format!("scripted {id}"),
        json!({ "code": code }),
    )
}

/// XADDs a task onto its stream as the dispatcher does.
pub fn enqueue(redis: &RedisServer, task: &TaskSpec) {
    let mut c = redis.client();
    let body = serde_json::to_string(task).expect("task json");
    let _: String = redis::cmd("XADD")
        .arg(task.task_type.stream())
        .arg("*")
        .arg("task")
        .arg(body)
        .arg("submitted_at")
        .arg(format!("{:.3}", unix_now()))
        .arg("priority")
        .arg(task.priority)
        .query(&mut c)
        .expect("XADD");
}

pub fn trajectory_path(out: &Path, id: &str) -> PathBuf {
    out.join("trajectories").join(format!("{id}.json"))
}

/// Waits for `<out>/trajectories/<id>.json` and parses it.
pub async fn wait_trajectory(out: &Path, id: &str, within: Duration) -> Trajectory {
    let path = trajectory_path(out, id);
    eventually(within, || {
        let p = path.clone();
        async move { p.exists() }
    })
    .await
    .unwrap_or_else(|e| panic!("no trajectory for {id}: {e}"));
    let raw = std::fs::read_to_string(&path).expect("read trajectory");
    serde_json::from_str(&raw).expect("trajectory json")
}

/// The base arguments of a runtime talking to `redis_url`, writing to `out`.
pub fn base_args(redis_url: &str, out: &Path, metrics_port: u16) -> Vec<String> {
    [
        "sandbox-runtime",
        "--redis-url",
        redis_url,
        "--output-dir",
        &out.to_string_lossy(),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        &metrics_port.to_string(),
        "--read-block-ms",
        "200",
        "--health-interval-secs",
        "1",
        "--sandbox-concurrency",
        "2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The runtime running in this process.
pub struct Harness {
    pub redis: RedisServer,
    pub out: tempfile::TempDir,
    pub metrics_port: u16,
    token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    /// Starts redis-server and the runtime with `extra` arguments; returns
    /// once `/health` says healthy.
    pub async fn start(extra: &[&str]) -> Self {
        let h = Self::spawn(extra);
        h.wait_health(200).await;
        h
    }

    /// Like [`Harness::start`] for a runtime expected to be unhealthy
    /// (returns once `/health` answers 503).
    pub async fn start_unhealthy(extra: &[&str]) -> Self {
        let h = Self::spawn(extra);
        h.wait_health(503).await;
        h
    }

    fn spawn(extra: &[&str]) -> Self {
        let redis = RedisServer::start();
        let out = tempfile::tempdir().expect("tempdir");
        let metrics_port = free_port();
        let mut args = base_args(&redis.url(), out.path(), metrics_port);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = Config::try_parse_from(&args).expect("config");
        let token = CancellationToken::new();
        let handle = tokio::spawn(sandbox_runtime::run(config, token.clone()));
        Harness {
            redis,
            out,
            metrics_port,
            token,
            handle: Some(handle),
        }
    }

    pub fn enqueue(&self, task: &TaskSpec) {
        enqueue(&self.redis, task);
    }

    pub async fn trajectory(&self, id: &str) -> Trajectory {
        wait_trajectory(self.out.path(), id, Duration::from_secs(60)).await
    }

    /// Runs a task and waits for its trajectory.
    pub async fn run(&self, task: &TaskSpec) -> Trajectory {
        self.enqueue(task);
        self.trajectory(&task.task_id).await
    }

    /// `GET /health`: (status code, body).
    pub async fn health(&self) -> (u16, Value) {
        get_json(&format!("http://127.0.0.1:{}/health", self.metrics_port)).await
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits until `/health` answers with `status`.
    pub async fn wait_health(&self, status: u16) {
        let url = format!("http://127.0.0.1:{}/health", self.metrics_port);
        eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                matches!(reqwest::get(&url).await, Ok(r) if r.status().as_u16() == status)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("/health never answered {status}: {e}"));
    }

    /// Cancels the runtime and waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Like [`Harness::stop`], keeping Redis and the output dir.
    pub async fn shutdown(&mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(40), h)
                .await
                .expect("runtime stops")
                .expect("join")
                .expect("run ok");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("GET");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// The real binary, started with `args` (after the program name) and `envs`
/// on top of an environment holding only PATH.
pub fn spawn_binary(args: &[String], envs: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox-runtime"));
    cmd.args(&args[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("spawn sandbox-runtime"))
}

/// Entries of `stream` delivered but not acknowledged (0 before the group exists).
pub fn pending_count(redis: &RedisServer, stream: &str) -> u64 {
    let mut c = redis.client();
    let v: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query(&mut c);
    match v {
        Ok(redis::Value::Array(parts)) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// Asserts that there is an error message and that it contains `needle`.
pub fn assert_message_contains(message: Option<&str>, needle: &str) {
    assert!(
        message.unwrap_or("").contains(needle),
        "{needle:?} not in {message:?}"
    );
}

/// The text of step `i`'s observation.
pub fn observation(t: &Trajectory, i: usize) -> &str {
    &t.steps.get(i).expect("step").observation
}

/// Waits until `tasks:dead` holds `n` entries.
pub fn wait_dead_letters(redis: &RedisServer, n: u64) {
    let mut c = redis.client();
    test_support::wait_until(Duration::from_secs(10), || {
        redis::cmd("XLEN")
            .arg("tasks:dead")
            .query::<u64>(&mut c)
            .ok()
            == Some(n)
    })
    .unwrap_or_else(|e| panic!("tasks:dead never held {n} entries: {e}"));
}

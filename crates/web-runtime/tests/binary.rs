//! The `web-runtime` binary as an operator runs it: configuration from the
//! environment, full `chromium` (not the headless shell) via `CHROME_PATH`,
//! a task through Redis, `/health` and `/metrics`, SIGTERM → exit 0 with
//! Chromium closed and reaped. Also: a bad setting exits 64.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{dispatch, process_exists, wait_for, Site};
use serde_json::json;
use test_support::{eventually, free_port, ChildGuard, RedisServer};

/// Pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// The binary with Redis, the output directory and the metrics port set.
fn runtime_command(redis: &RedisServer, out: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_web-runtime"));
    cmd.env("REDIS_URL", redis.url())
        .env("OUTPUT_DIR", out)
        .env("METRICS_HOST", "127.0.0.1")
        .env("METRICS_PORT", port.to_string())
        .stdout(Stdio::null());
    cmd
}

/// Waits until `/health` on `port` answers 200; returns its URL.
async fn wait_healthy(http: &reqwest::Client, port: u16) -> String {
    let health_url = format!("http://127.0.0.1:{port}/health");
    eventually(Duration::from_secs(30), || async {
        matches!(http.get(&health_url).send().await, Ok(r) if r.status().is_success())
    })
    .await
    .expect("/health answers 200");
    health_url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_with_full_chromium_and_stops_on_sigterm() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let site = Site::local().await;
    let port = free_port();
    let child = runtime_command(&redis, out.path(), port)
        .env("MAX_CONCURRENT", "2")
        .env("CHROME_PATH", "/usr/lib/chromium/chromium")
        .env("WEB_SCREENSHOTS", "true")
        .env("READ_BLOCK_MS", "200")
        .env("HEALTH_INTERVAL_SECS", "1")
        .env_remove("LLM_BASE_URL")
        .env_remove("VLLM_URL")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn web-runtime");
    let mut child = ChildGuard(child);
    let pid = child.pid();

    let http = reqwest::Client::new();
    let health_url = wait_healthy(&http, port).await;
    let body: serde_json::Value = http
        .get(&health_url)
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(body["checks"]["browser"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["redis"]["ok"], true, "{body}");
    let browsers: Vec<u32> = children(pid);
    assert!(
        !browsers.is_empty(),
        "Chromium runs as a child of the runtime"
    );

    dispatch(
        &redis,
        json!({"task_id": "bin_task", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/order.html")},
            {"type": "select", "selector": "#size", "value": "Large"},
        ]}}),
    );
    let done = wait_for(
        out.path(),
        &["bin_task".to_owned()],
        Duration::from_secs(60),
    )
    .await;
    let t = &done[0];
    assert!(t.success, "{t:#?}");
    assert!(t.steps[1].observation.contains("selected=\"Large\""));
    let t0_steps = t.steps.len();
    // Screenshots were asked for: one PNG per step, next to the trajectory.
    for (i, s) in t.steps.iter().enumerate() {
        let shot = s.action_params["screenshot"]
            .as_str()
            .expect("screenshot path");
        assert!(
            shot.ends_with(&format!("trajectories/bin_task.files/step_{i}.png")),
            "{shot}"
        );
        let png = std::fs::read(shot).expect("png");
        assert_eq!(&png[..4], b"\x89PNG");
    }
    // The counters move right after the file is written (then acked).
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let needles = [
        "tasks_completed_total{runtime=\"web-runtime\",status=\"success\"} 1",
        "active_tasks{runtime=\"web-runtime\"} 0",
        "runtime_health{runtime=\"web-runtime\"} 1",
        "web_pages_open 0",
    ];
    eventually(Duration::from_secs(10), || async {
        let text = match http.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        needles.iter().all(|n| text.contains(n))
    })
    .await
    .expect("metrics show the finished task");

    // The same task id in a named run, as its rollout 1: its trajectory and
    // its screenshots go under that run's directory, named with the
    // rollout; the default run's files are left alone.
    dispatch(
        &redis,
        json!({"task_id": "bin_task", "run_id": "r1", "rollout": 1, "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/order.html")},
        ]}}),
    );
    let run_dir = out.path().join("runs").join("r1").join("trajectories");
    let file = run_dir.join("bin_task@1.json");
    eventually(Duration::from_secs(60), || async { file.exists() })
        .await
        .expect("the named run's rollout trajectory");
    let t: adp_core::Trajectory =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("parse");
    assert_eq!((t.run_id.as_str(), t.rollout()), ("r1", Some(1)));
    let shot = t.steps[0].action_params["screenshot"]
        .as_str()
        .expect("screenshot path");
    assert_eq!(
        Path::new(shot),
        run_dir.join("bin_task@1.files").join("step_0.png"),
        "{shot}"
    );
    assert_eq!(&std::fs::read(shot).expect("png")[..4], b"\x89PNG");
    // Its accessibility trees sit in the same directory, recorded relative
    // to the run's trajectory directory.
    assert_eq!(
        t.metadata["axtree_files"][0]["path"],
        "bin_task@1.files/step_0.axtree.json",
        "{:?}",
        t.metadata.get("axtree_files")
    );
    assert!(run_dir
        .join("bin_task@1.files/step_0.axtree.json")
        .is_file());
    // (The default run's directory also holds each step's accessibility tree.)
    let default_shots = std::fs::read_dir(out.path().join("trajectories").join("bin_task.files"))
        .expect("default run's screenshots")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".png"))
        })
        .count();
    assert_eq!(
        default_shots, t0_steps,
        "the default run's screenshots are untouched"
    );

    child.signal(15);
    let code = child.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    for b in browsers {
        assert!(!process_exists(b), "Chromium {b} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_dies_with_a_killed_runtime() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Its temporary files (Chromium's profile) go under our temp dir: a
    // SIGKILLed runtime cannot remove them itself.
    let child = runtime_command(&redis, out.path(), port)
        .env("TMPDIR", out.path())
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn web-runtime");
    let mut child = ChildGuard(child);
    wait_healthy(&reqwest::Client::new(), port).await;
    let browsers = children(child.pid());
    assert!(!browsers.is_empty());
    // SIGKILL: the runtime cannot clean up; Chromium's parent-death signal does.
    child.signal(9);
    child.wait_exit(Duration::from_secs(10));
    eventually(Duration::from_secs(10), || async {
        browsers.iter().all(|b| {
            std::fs::read_to_string(format!("/proc/{b}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        })
    })
    .await
    .expect("Chromium went with the killed runtime");
}

#[test]
fn bad_setting_exits_64() {
    for (var, value) in [("WEB_BLOCK_EXTRA", "not-a-cidr"), ("MAX_CONCURRENT", "0")] {
        let status = Command::new(env!("CARGO_BIN_EXE_web-runtime"))
            .env(var, value)
            .stderr(Stdio::null())
            .status()
            .expect("run");
        assert_eq!(status.code(), Some(64), "{var}={value}");
    }
}

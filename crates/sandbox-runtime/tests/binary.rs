//! The real `sandbox-runtime` binary as a child process: the jail's
//! environment holds none of the runtime's variables; SIGTERM never loses a
//! task (finished and acked within the grace period, or left pending and
//! re-claimed by another consumer), and the process exits 0.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    code_task, enqueue, observation, pending_count, spawn_binary, trajectory_path, wait_trajectory,
};
use serde_json::Value;
use test_support::{free_port, wait_until, RedisServer};

fn env_config<'a>(redis: &'a str, out: &'a str, port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REDIS_URL", redis),
        ("OUTPUT_DIR", out),
        ("METRICS_HOST", "127.0.0.1"),
        ("METRICS_PORT", port),
        ("READ_BLOCK_MS", "200"),
        ("SANDBOX_CONCURRENCY", "2"),
    ]
}

#[test]
fn the_jail_sees_none_of_the_runtime_environment() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let url = redis.url();
    let out_s = out.path().to_string_lossy().into_owned();
    let port = free_port().to_string();
    let mut envs = env_config(&url, &out_s, &port);
    envs.extend([
        ("LLM_API_KEY", "secret-canary"),
        ("SANDBOX_CANARY", "canary-two"),
        ("AWS_SECRET_ACCESS_KEY", "canary-three"),
    ]);
    let mut child = spawn_binary(&["sandbox-runtime".to_owned()], &envs);
    let code = "import os, json\nprint(json.dumps(dict(os.environ), sort_keys=True))\n";
    enqueue(&redis, &code_task("env", code));
    let t = block_on_trajectory(out.path(), "env");
    assert!(t.success, "{t:?}");
    let obs = observation(&t, 0);
    for secret in [
        "secret-canary",
        "canary-two",
        "canary-three",
        "REDIS_URL",
        "LLM_API_KEY",
        "OUTPUT_DIR",
        &url,
    ] {
        assert!(
            !obs.contains(secret),
            "{secret} leaked into the jail: {obs}"
        );
    }
    let env: Value = serde_json::from_str(obs.trim()).expect("env json");
    let keys: BTreeSet<&str> = env
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let allowed: BTreeSet<&str> = ["PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE"].into();
    assert!(keys.is_subset(&allowed), "unexpected variables: {keys:?}");
    child.signal(15);
    assert_eq!(child.wait_exit(Duration::from_secs(20)), Some(0));
}

fn block_on_trajectory(out: &std::path::Path, id: &str) -> adp_core::Trajectory {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(wait_trajectory(out, id, Duration::from_secs(60)))
}

#[test]
fn sigterm_lets_a_running_task_finish_then_exits_0() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let url = redis.url();
    let out_s = out.path().to_string_lossy().into_owned();
    let port = free_port().to_string();
    let mut envs = env_config(&url, &out_s, &port);
    envs.push(("SHUTDOWN_GRACE_SECS", "30"));
    let mut child = spawn_binary(&["sandbox-runtime".to_owned()], &envs);
    let code = "import time\ntime.sleep(3)\nprint('finished')\n";
    enqueue(&redis, &code_task("graceful", code));
    wait_until(Duration::from_secs(20), || {
        pending_count(&redis, "tasks:code") == 1
    })
    .expect("task in flight");
    child.signal(15);
    assert_eq!(child.wait_exit(Duration::from_secs(30)), Some(0));
    let t = block_on_trajectory(out.path(), "graceful");
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "finished\n");
    assert_eq!(
        pending_count(&redis, "tasks:code"),
        0,
        "acked before exiting"
    );
}

#[test]
fn sigterm_past_the_grace_hands_the_task_to_another_consumer() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let url = redis.url();
    let out_s = out.path().to_string_lossy().into_owned();
    let port_a = free_port().to_string();
    let mut envs = env_config(&url, &out_s, &port_a);
    envs.extend([("SHUTDOWN_GRACE_SECS", "1"), ("CLAIM_IDLE_SECS", "2")]);
    let mut first = spawn_binary(&["sandbox-runtime".to_owned()], &envs);
    let first_pid = first.pid();
    let code = "import time\ntime.sleep(4)\nprint('finished')\n";
    enqueue(&redis, &code_task("handover", code));
    wait_until(Duration::from_secs(20), || {
        pending_count(&redis, "tasks:code") == 1
    })
    .expect("task in flight");
    first.signal(15);
    assert_eq!(first.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!trajectory_path(out.path(), "handover").exists());
    assert_eq!(
        pending_count(&redis, "tasks:code"),
        1,
        "left un-acked, not lost"
    );

    let port_b = free_port().to_string();
    let mut envs = env_config(&url, &out_s, &port_b);
    envs.push(("CLAIM_IDLE_SECS", "2"));
    let mut second = spawn_binary(&["sandbox-runtime".to_owned()], &envs);
    let t = block_on_trajectory(out.path(), "handover");
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "finished\n");
    assert_eq!(t.metadata["attempt"], 2, "second delivery");
    let worker = t.metadata["worker"].as_str().unwrap_or("");
    assert!(
        worker.ends_with(&format!("-{}", second.pid()))
            && !worker.ends_with(&format!("-{first_pid}")),
        "{worker}"
    );
    wait_until(Duration::from_secs(10), || {
        pending_count(&redis, "tasks:code") == 0
    })
    .expect("acked by the second consumer");
    second.signal(15);
    assert_eq!(second.wait_exit(Duration::from_secs(20)), Some(0));
}

/// Pids of the children of `pid` (all its threads').
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // The state follows the parenthesised command name.
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

#[test]
fn kill_9_of_the_runtime_takes_its_running_jails_with_it() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let url = redis.url();
    let out_s = out.path().to_string_lossy().into_owned();
    let port = free_port().to_string();
    let envs = env_config(&url, &out_s, &port);
    let mut child = spawn_binary(&["sandbox-runtime".to_owned()], &envs);
    let code = "import time\ntime.sleep(120)\n";
    let mut task = code_task("orphan", code);
    task.timeout = 300;
    enqueue(&redis, &task);
    wait_until(Duration::from_secs(20), || {
        pending_count(&redis, "tasks:code") == 1
    })
    .expect("task in flight");
    // The runtime's nsjail, and nsjail's jailed python.
    let mut jail = Vec::new();
    wait_until(Duration::from_secs(30), || {
        let nsjails = children_of(child.pid());
        let pythons: Vec<u32> = nsjails.iter().flat_map(|&p| children_of(p)).collect();
        jail = nsjails.into_iter().chain(pythons.iter().copied()).collect();
        !pythons.is_empty()
    })
    .expect("a running jail");
    child.signal(9);
    child.wait_exit(Duration::from_secs(10));
    wait_until(Duration::from_secs(10), || {
        jail.iter().all(|&p| !running(p))
    })
    .unwrap_or_else(|_| {
        let alive: Vec<u32> = jail.iter().copied().filter(|&p| running(p)).collect();
        panic!("jail processes {alive:?} outlived the killed runtime")
    });
    assert_eq!(
        pending_count(&redis, "tasks:code"),
        1,
        "the task stays pending for another consumer"
    );
}

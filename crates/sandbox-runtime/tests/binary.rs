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
use test_support::{free_port, process_running, wait_until, ChildGuard, RedisServer};

/// A private redis-server and output directory for runtimes started as
/// child processes.
struct Setup {
    redis: RedisServer,
    out: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            redis: RedisServer::start(),
            out: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Starts the binary on this Redis and output directory, a free metrics
    /// port, and `extra` settings.
    fn spawn(&self, extra: &[(&str, &str)]) -> ChildGuard {
        let url = self.redis.url();
        let out = self.out.path().to_string_lossy().into_owned();
        let port = free_port().to_string();
        let mut envs = vec![
            ("REDIS_URL", url.as_str()),
            ("OUTPUT_DIR", out.as_str()),
            ("METRICS_HOST", "127.0.0.1"),
            ("METRICS_PORT", port.as_str()),
            ("READ_BLOCK_MS", "200"),
            ("SANDBOX_CONCURRENCY", "2"),
        ];
        envs.extend_from_slice(extra);
        spawn_binary(&["sandbox-runtime".to_owned()], &envs)
    }

    /// Waits until a consumer holds the one task of `tasks:code`.
    fn wait_in_flight(&self) {
        wait_until(Duration::from_secs(20), || {
            pending_count(&self.redis, "tasks:code") == 1
        })
        .expect("task in flight");
    }

    fn trajectory(&self, id: &str) -> adp_core::Trajectory {
        block_on_trajectory(self.out.path(), id)
    }
}

#[test]
fn the_jail_sees_none_of_the_runtime_environment() {
    let s = Setup::new();
    let url = s.redis.url();
    let mut child = s.spawn(&[
        ("LLM_API_KEY", "secret-canary"),
        ("SANDBOX_CANARY", "canary-two"),
        ("AWS_SECRET_ACCESS_KEY", "canary-three"),
    ]);
    let code = "import os, json\nprint(json.dumps(dict(os.environ), sort_keys=True))\n";
    enqueue(&s.redis, &code_task("env", code));
    let t = s.trajectory("env");
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
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_CTYPE",
        "OPENBLAS_NUM_THREADS",
    ]
    .into();
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
    let s = Setup::new();
    let mut child = s.spawn(&[("SHUTDOWN_GRACE_SECS", "30")]);
    let code = "import time\ntime.sleep(3)\nprint('finished')\n";
    enqueue(&s.redis, &code_task("graceful", code));
    s.wait_in_flight();
    child.signal(15);
    assert_eq!(child.wait_exit(Duration::from_secs(30)), Some(0));
    let t = s.trajectory("graceful");
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "finished\n");
    assert_eq!(
        pending_count(&s.redis, "tasks:code"),
        0,
        "acked before exiting"
    );
}

#[test]
fn sigterm_past_the_grace_hands_the_task_to_another_consumer() {
    let s = Setup::new();
    let mut first = s.spawn(&[("SHUTDOWN_GRACE_SECS", "1"), ("CLAIM_IDLE_SECS", "2")]);
    let first_pid = first.pid();
    let code = "import time\ntime.sleep(4)\nprint('finished')\n";
    enqueue(&s.redis, &code_task("handover", code));
    s.wait_in_flight();
    first.signal(15);
    assert_eq!(first.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!trajectory_path(s.out.path(), "handover").exists());
    assert_eq!(
        pending_count(&s.redis, "tasks:code"),
        1,
        "left un-acked, not lost"
    );

    let mut second = s.spawn(&[("CLAIM_IDLE_SECS", "2")]);
    let t = s.trajectory("handover");
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
        pending_count(&s.redis, "tasks:code") == 0
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

#[test]
fn kill_9_of_the_runtime_takes_its_running_jails_with_it() {
    let s = Setup::new();
    let mut child = s.spawn(&[]);
    let code = "import time\ntime.sleep(120)\n";
    let mut task = code_task("orphan", code);
    task.timeout = 300;
    enqueue(&s.redis, &task);
    s.wait_in_flight();
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
        jail.iter().all(|&p| !process_running(p))
    })
    .unwrap_or_else(|_| {
        let alive: Vec<u32> = jail
            .iter()
            .copied()
            .filter(|&p| process_running(p))
            .collect();
        panic!("jail processes {alive:?} outlived the killed runtime")
    });
    assert_eq!(
        pending_count(&s.redis, "tasks:code"),
        1,
        "the task stays pending for another consumer"
    );
}

#[test]
fn kill_9_mid_session_leaves_no_jail_and_the_task_is_re_claimed() {
    let s = Setup::new();
    let mut first = s.spawn(&[("CLAIM_IDLE_SECS", "2")]);
    let cells = serde_json::json!([
        "x = 1\nprint('step 0')\n",
        "import time\ntime.sleep(120)\n",
        "print('done', x)\n"
    ]);
    let mut task = code_task("session_orphan", "");
    task.constraints.insert("code".to_owned(), cells);
    task.timeout = 300;
    enqueue(&s.redis, &task);
    s.wait_in_flight();
    let mut jail = Vec::new();
    wait_until(Duration::from_secs(30), || {
        let nsjails = children_of(first.pid());
        let pythons: Vec<u32> = nsjails.iter().flat_map(|&p| children_of(p)).collect();
        jail = nsjails.into_iter().chain(pythons.iter().copied()).collect();
        !pythons.is_empty()
    })
    .expect("a running session jail");
    first.signal(9);
    first.wait_exit(Duration::from_secs(10));
    wait_until(Duration::from_secs(10), || {
        jail.iter().all(|&p| !process_running(p))
    })
    .expect("the session's jail died with the runtime");
    // Another runtime re-claims the task and runs it from the start in a
    // fresh session (the sleep is cut by a short step limit).
    let _second = s.spawn(&[("CLAIM_IDLE_SECS", "2"), ("SANDBOX_STEP_TIMEOUT_SECS", "2")]);
    let t = s.trajectory("session_orphan");
    assert_eq!(t.metadata["attempt"], 2, "{t:?}");
    assert_eq!(t.steps.len(), 3, "{t:?}");
    assert_eq!(observation(&t, 2), "done 1\n", "{t:?}");
    assert!(t.success, "{t:?}");
}

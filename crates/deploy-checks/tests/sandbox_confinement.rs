//! The sandbox runtime works inside the container the compose files describe
//! — checked without Docker by emulating the parts of a container that decide
//! whether nsjail can run: Docker's default seccomp profile, its capability
//! bounding set plus the service's `cap_add`, and its masked `/proc` paths
//! (tests/support/docker_confine.sh). AppArmor is not emulated (the compose
//! files turn it off for the sandbox; the machine has none).
//!
//! It also shows each option is needed: without `SYS_ADMIN`, or without the
//! image's nsjail wrapper (`--no_pivotroot`), the jail does not start.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use deploy_checks::binaries::{self, http_get, service_binaries, Binary, Running};
use deploy_checks::compose::{self, strings};
use deploy_checks::root;
use deploy_checks::tools::require;
use test_support::{free_port, wait_until, RedisServer};

const PROFILE: &str = "/usr/local/share/adp/docker-default-seccomp.json";

fn support(file: &str) -> PathBuf {
    root().join("crates/deploy-checks/tests/support").join(file)
}

fn preconditions() {
    require("unshare");
    require("setpriv");
    assert!(
        std::path::Path::new(PROFILE).exists(),
        "{PROFILE} is missing: run scripts/setup.sh dev (it extracts Docker's default seccomp profile)"
    );
    let seccomp = Command::new("/usr/bin/python3")
        .args(["-c", "import seccomp"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        seccomp,
        "python3-seccomp is missing: run scripts/setup.sh dev"
    );
}

fn bin(name: &str) -> &'static Binary {
    service_binaries()
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("{name} is not built"))
}

/// Starts sandbox-runtime confined like the compose service, with `cap_add`
/// and the given environment changes.
fn start_confined(
    cap_add: &[String],
    nsjail_path: Option<&str>,
    redis: &RedisServer,
    dir: &std::path::Path,
    tag: &str,
) -> Running {
    let doc = compose::load("docker-compose.yml");
    let svc = &compose::services(&doc)["sandbox-runtime"];
    let port = free_port();
    let out = dir.join("output");
    let mut env = binaries::local_env(svc, &redis.url(), &out, &dir.join("unused.jsonl"), port);
    if let Some(p) = nsjail_path {
        env.retain(|(k, _)| k != "NSJAIL_PATH");
        env.push(("NSJAIL_PATH".to_owned(), p.to_owned()));
    }
    let caps = if cap_add.is_empty() {
        "-".to_owned()
    } else {
        cap_add.join(",")
    };
    let log = dir.join(format!("sandbox-{tag}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new("unshare");
    cmd.arg("-m")
        .arg(support("docker_confine.sh"))
        .arg(PROFILE)
        .arg(&caps)
        .arg("--")
        .arg(&bin("sandbox-runtime").path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("clone"))
        .stderr(file);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start confined sandbox-runtime");
    Running {
        name: "sandbox-runtime",
        port,
        log,
        child: test_support::ChildGuard(child),
    }
}

/// Polls /health until it answers; returns (status, body) of the first
/// answer after the nsjail probe ran.
fn health(r: &Running) -> (u16, String) {
    let mut last = (0, String::new());
    let _ = wait_until(Duration::from_secs(30), || {
        last = http_get(r.port, "/health").unwrap_or((0, String::new()));
        last.0 == 200 || (last.0 == 503 && last.1.contains("nsjail"))
    });
    last
}

#[test]
fn sandbox_runtime_runs_code_under_the_compose_confinement() {
    preconditions();
    let doc = compose::load("docker-compose.yml");
    let cap_add = strings(&compose::services(&doc)["sandbox-runtime"], "cap_add");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");

    let r = start_confined(&cap_add, None, &redis, dir.path(), "compose");
    let (status, body) = health(&r);
    assert_eq!(
        status,
        200,
        "confined like the compose service (cap_add {cap_add:?}, Docker seccomp, masked /proc), \
         sandbox-runtime is not healthy: {body}\n{}",
        r.log_tail()
    );

    // A real task through Redis: dispatcher -> confined runtime -> trajectory.
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        concat!(
            r#"{"task_id":"confined_fib","task_type":"code","description":"fib","constraints":{"code":"a, b = 0, 1\nfor _ in range(10):\n    a, b = b, a + b\nprint(a)","expected_output":"55"},"max_steps":2,"timeout":60}"#,
            "\n",
            r#"{"task_id":"confined_net","task_type":"code","description":"no network","constraints":{"code":"import socket\ntry:\n    socket.create_connection(('127.0.0.1', 1), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)"},"max_steps":1,"timeout":60}"#,
            "\n"
        ),
    )
    .expect("write tasks");
    let d = Command::new(&bin("dispatcher").path)
        .env_clear()
        .env("REDIS_URL", redis.url())
        .env("TASK_FILE", &tasks)
        .env("OUTPUT_DIR", dir.path().join("output"))
        .env("FOLLOW", "false")
        .env("METRICS_PORT", free_port().to_string())
        .env("METRICS_HOST", "127.0.0.1")
        .output()
        .expect("run dispatcher");
    assert!(
        d.status.success(),
        "dispatcher: {}",
        String::from_utf8_lossy(&d.stderr)
    );

    let traj = |id: &str| {
        dir.path()
            .join("output/trajectories")
            .join(format!("{id}.json"))
    };
    let done = wait_until(Duration::from_secs(60), || {
        traj("confined_fib").exists() && traj("confined_net").exists()
    });
    assert!(
        done.is_ok(),
        "no trajectories from the confined runtime:\n{}",
        r.log_tail()
    );
    let fib: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(traj("confined_fib")).expect("read"))
            .expect("json");
    assert_eq!(fib["success"], true, "{fib}");
    assert!(
        fib["final_result"].as_str().unwrap_or("").starts_with("55"),
        "{fib}"
    );
    let net: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(traj("confined_net")).expect("read"))
            .expect("json");
    let out = net["final_result"].as_str().unwrap_or("");
    assert!(
        !out.contains("connected"),
        "jailed code reached the network: {net}"
    );
}

#[test]
fn each_sandbox_option_is_needed() {
    preconditions();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");

    // Without CAP_SYS_ADMIN Docker's seccomp profile refuses clone() with
    // namespace flags: nsjail cannot create the jail.
    let r = start_confined(&[], None, &redis, dir.path(), "no-cap");
    let (status, body) = health(&r);
    assert_eq!(
        status, 503,
        "without SYS_ADMIN the sandbox should be unhealthy: {body}"
    );
    assert!(body.contains("nsjail"), "{body}");
    drop(r);

    // With SYS_ADMIN but plain nsjail: pivot_root is refused by the profile.
    let r = start_confined(
        &["SYS_ADMIN".to_owned()],
        Some("/usr/local/bin/nsjail"),
        &redis,
        dir.path(),
        "no-wrapper",
    );
    let (status, body) = health(&r);
    assert_eq!(
        status, 503,
        "without --no_pivotroot the sandbox should be unhealthy under Docker's seccomp profile: {body}"
    );
}

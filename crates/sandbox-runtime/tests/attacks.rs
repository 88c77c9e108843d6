//! The jail under attack, through the whole runtime (Redis stream → worker →
//! a real nsjail session → trajectory file): limits for the whole jail
//! (memory, processes, inodes), the seccomp policy, what the jail can see,
//! and nothing left behind or shared between tasks.

mod common;

use adp_core::{TaskSpec, TaskType};
use common::{observation, task, Harness};
use serde_json::json;

fn cells_task(id: &str, cells: &[&str]) -> TaskSpec {
    task(
        id,
        TaskType::Code,
        &format!("cells {id}"),
        json!({ "code": cells }),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_hits_the_jail_process_limit_and_the_session_goes_on() {
    let h = Harness::start(&["--sandbox-max-procs", "32"]).await;
    let bomb = "\
import os, time
made = 0
err = None
while made < 1000:
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    made += 1
print(made, err)
";
    let t = h
        .run(&cells_task(
            "forkbomb",
            &["x = 1\n", bomb, "print('x', x)\n"],
        ))
        .await;
    let obs = observation(&t, 1);
    let made: u32 = obs
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(9999);
    assert!(made < 32, "{obs}");
    assert!(obs.trim_end().ends_with(" 11"), "EAGAIN expected: {obs}");
    assert_eq!(observation(&t, 2), "x 1\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_tiny_files_hit_the_inode_limit() {
    let h = Harness::start(&[]).await;
    let flood = include_str!("programs/inode_flood.py");
    let t = h.run(&cells_task("inodes", &[flood])).await;
    let obs = observation(&t, 0);
    let n: u32 = obs
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n > 1000 && n <= 8192, "{obs}");
    assert!(obs.trim_end().ends_with(" 28"), "ENOSPC expected: {obs}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_system_calls_fail_inside_the_jail() {
    let h = Harness::start(&[]).await;
    let calls = include_str!("programs/syscalls.py");
    let t = h.run(&cells_task("syscalls", &[calls])).await;
    assert!(t.success, "{t:?}");
    let obs = observation(&t, 0);
    for name in [
        "io_uring_setup",
        "unshare_newuser",
        "mount",
        "add_key",
        "ptrace",
        "bpf",
    ] {
        assert!(obs.contains(&format!("{name} -1 EPERM")), "{name}: {obs}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_interpreter_is_visible_and_its_stdlib_works() {
    let h = Harness::start(&[]).await;
    let look = "\
import json, sqlite3, ssl, decimal, shutil, os
db = sqlite3.connect(':memory:')
print(db.execute('select 6 * 7').fetchone()[0], decimal.Decimal('0.1') + decimal.Decimal('0.2'), json.dumps([1]), ssl.OPENSSL_VERSION.split()[0])
for tool in ['gcc', 'cc', 'curl', 'strace', 'gdb', 'docker', 'apt-get', 'sh']:
    print(tool, shutil.which(tool, path='/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'))
print(sorted(os.listdir('/usr/bin')))
print(os.path.exists('/etc/apt'), os.path.exists('/usr/lib/gcc'), os.path.exists('/usr/share'))
";
    let t = h.run(&cells_task("visible", &[look])).await;
    assert!(t.success, "{t:?}");
    let obs = observation(&t, 0);
    assert!(obs.starts_with("42 0.3 [1] OpenSSL"), "{obs}");
    for tool in [
        "gcc", "cc", "curl", "strace", "gdb", "docker", "apt-get", "sh",
    ] {
        assert!(
            obs.contains(&format!("\n{tool} None\n")),
            "{tool} visible: {obs}"
        );
    }
    assert!(obs.contains("['python3', 'python3.11']"), "{obs}");
    assert!(obs.ends_with("False False False\n"), "{obs}");
    h.stop().await;
}

/// Without cgroups the runtime says so (health, metric) and sizes the
/// rlimits to the jail's budget: 4 processes × 128 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn the_degraded_mode_is_reported_and_still_bounds_the_jail() {
    let h = Harness::start(&["--sandbox-cgroups", "off"]).await;
    let (code, health) = h.health().await;
    assert_eq!(code, 200, "{health}");
    let detail = health["checks"]["jail_limits"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(detail.starts_with("degraded: rlimits only"), "{health}");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sandbox_limits_degraded{mode=\"rlimits\"} 1"),
        "{metrics}"
    );
    let t = h
        .run(&cells_task(
            "degraded",
            &["import os\ntry:\n    b = b'x' * (200 * 1024 * 1024)\nexcept MemoryError:\n    print('refused')\n"],
        ))
        .await;
    assert_eq!(observation(&t, 0), "refused\n", "{t:?}");
    h.stop().await;
}

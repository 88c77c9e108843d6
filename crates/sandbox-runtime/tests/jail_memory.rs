//! A memory bomb of many processes against the jail's memory limit, through the whole runtime.
//! Its own test binary: it looks at every uid-65534 process under this test
//! process, so no other test may run jails at the same time.

mod common;

use std::time::Duration;

use adp_core::{ErrorType, TaskSpec, TaskType};
use common::{assert_message_contains, observation, task, Harness};
use serde_json::json;
use test_support::{jailed_descendants, mem_available_kib, rss_kib};

fn cells_task(id: &str, cells: &[&str]) -> TaskSpec {
    task(
        id,
        TaskType::Code,
        &format!("cells {id}"),
        json!({ "code": cells }),
    )
}

/// 8 processes × 400 MiB each, held at once: the jail's 512 MiB cgroup
/// stops it (the kernel kills processes), and the jail never holds much
/// more than its limit (3.2 GB unconfined).
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_of_many_processes_stays_within_the_jail_limit() {
    let h = Harness::start(&[]).await;
    let (_, health) = h.health().await;
    let degraded = health["checks"]["jail_limits"]["detail"]
        .as_str()
        .unwrap_or("")
        .starts_with("degraded");
    let bomb = "\
import os, time
pids = []
for i in range(8):
    pid = os.fork()
    if pid == 0:
        try:
            block = b'x' * (400 * 1024 * 1024)
            time.sleep(3)
            os._exit(0)
        except MemoryError:
            os._exit(3)
    pids.append(pid)
codes = [os.waitpid(p, 0)[1] for p in pids]
print('children', codes)
";
    let before = mem_available_kib();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut low, mut jail_peak) = (u64::MAX, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                low = low.min(mem_available_kib());
                jail_peak = jail_peak.max(jailed_descendants().iter().map(|&p| rss_kib(p)).sum());
                std::thread::sleep(Duration::from_millis(20));
            }
            (low, jail_peak)
        })
    };
    let t = h
        .run(&cells_task("membomb", &[bomb, "print('after')\n"]))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (low, jail_peak) = sampler.join().expect("sampler");
    let host_drop_mib = before.saturating_sub(low) / 1024;
    let jail_peak_mib = jail_peak / 1024;
    eprintln!("memory bomb: jail peak RSS {jail_peak_mib} MiB, host MemAvailable drop {host_drop_mib} MiB");
    // What the jail's processes held at once (RSS of every uid-65534
    // process under this test) stays within the 512 MiB limit plus a small
    // margin (unconfined: 3.2 GB). The host's MemAvailable drop is printed
    // above but not asserted: other work on this shared machine moves it by
    // gigabytes.
    assert!(
        jail_peak_mib < 512 + 64,
        "the jail's processes held {jail_peak_mib} MiB at once"
    );
    assert!(
        jail_peak_mib > 300,
        "the bomb never ran: {jail_peak_mib} MiB"
    );
    let step = &t.steps[0];
    if degraded {
        // rlimits only: each process gets 128 MiB of address space.
        assert!(observation(&t, 0).contains("MemoryError"), "{t:?}");
    } else {
        assert_eq!(step.error_type, Some(ErrorType::RuntimeError), "{t:?}");
        assert_message_contains(step.error_message.as_deref(), "memory limit exceeded");
    }
    h.stop().await;
}

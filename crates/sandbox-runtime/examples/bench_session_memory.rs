//! Memory of idle stateful sessions (scripts/bench_session_memory.sh): starts
//! `N` sessions exactly as the runtime does (`Sandbox::start_session`, the
//! default `SandboxConfig`, limits detected at start), runs one small cell in
//! each (so each interpreter is initialised and holds a little state), waits
//! a moment, then reads the memory of every process of the sessions (the
//! nsjail supervisors and the jailed interpreters) from `/proc`.
//!
//! Usage: `bench_session_memory <sessions>`; prints one `key=value` line:
//! sessions, total and per-session PSS (`/proc/<pid>/smaps_rollup`: shared
//! pages divided among the processes sharing them, the fair share of each
//! session) and RSS (shared pages counted in full every time), split into
//! nsjail and the interpreter, and the host's `MemAvailable` drop (noisy on a
//! shared machine). The runtime's one jail-group guardian is not counted.

use std::time::Duration;

use sandbox_runtime::executor::{Sandbox, SandboxConfig};
use test_support::{descendants, mem_available_kib, process_uid, pss_kib, rss_kib};

/// The cell each session runs before it goes idle.
const CELL: &str =
    "import json, math\ndata = [math.sqrt(i) for i in range(1000)]\nprint(len(data))\n";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1);
    let mut config = SandboxConfig::default();
    if let Ok(p) = std::env::var("NSJAIL_PATH") {
        config.nsjail_path = p.into();
    }
    let sandbox = Sandbox::new(config);
    let wall = sandbox.config().step_timeout;
    let before = mem_available_kib();
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = sandbox
            .start_session(Duration::from_secs(600), 10)
            .expect("session starts");
        let run = s.run_cell(CELL, wall).await.expect("cell runs");
        assert!(
            run.alive && run.execution.success(),
            "the cell failed: {:?}",
            run.execution.verdict
        );
        sessions.push(s);
    }
    // Idle: nothing runs in the sessions now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut pss_jail, mut rss_jail, mut pss_nsjail, mut rss_nsjail) = (0, 0, 0, 0);
    let (mut jailed, mut supervisors, mut other) = (0, 0, 0);
    for pid in descendants(std::process::id()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if process_uid(pid) == Some(65534) {
            jailed += 1;
            pss_jail += pss_kib(pid);
            rss_jail += rss_kib(pid);
        } else if comm.trim() == "nsjail" {
            supervisors += 1;
            pss_nsjail += pss_kib(pid);
            rss_nsjail += rss_kib(pid);
        } else {
            // The jail group's guardian (one per runtime, not per session).
            other += 1;
        }
    }
    let after = mem_available_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let per = |kib: u64| kib as f64 / 1024.0 / n as f64;
    println!(
        "sessions={n} jailed_processes={jailed} nsjail_processes={supervisors} other_processes={other} \
         pss_total_mib={:.1} pss_per_session_mib={:.2} \
         pss_interpreter_per_session_mib={:.2} pss_nsjail_per_session_mib={:.2} \
         rss_total_mib={:.1} rss_per_session_mib={:.2} \
         memavailable_drop_per_session_mib={:.2}",
        mib(pss_jail + pss_nsjail),
        per(pss_jail + pss_nsjail),
        per(pss_jail),
        per(pss_nsjail),
        mib(rss_jail + rss_nsjail),
        per(rss_jail + rss_nsjail),
        before.saturating_sub(after) as f64 / 1024.0 / n as f64,
    );
    for s in sessions {
        s.close().await;
    }
}

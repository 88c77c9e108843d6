//! The baseline of scripts/bench_sandbox.sh: runs the same nsjail + python
//! commands the runtime runs (same `Sandbox::jail_args`, a `--log` file per
//! run, code on stdin, stdout/stderr read), launched directly from `P`
//! threads with no queue, no Redis, no trajectory files.
//!
//! Usage: `bench_raw <tasks> <parallelism>`; prints `raw_tasks_per_sec=<x> ok=<n>`.
//! Task `i` runs `print(sum(range(i)))`, like the benchmark's tasks file;
//! with `BENCH_STEPS=S`, its S cells (`print(sum(range(i + k)))`), each in
//! its own one-shot jail, one after another.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sandbox_runtime::executor::{Sandbox, SandboxConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let parallel: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut config = SandboxConfig::default();
    if let Ok(p) = std::env::var("NSJAIL_PATH") {
        config.nsjail_path = p.into();
    }
    let sandbox = Sandbox::new(config);
    let jail_args = sandbox.jail_args(sandbox.config().step_timeout.as_secs());
    let nsjail = sandbox.config().nsjail_path.clone();
    let log_dir = sandbox.config().log_dir.clone();

    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (next, ok, jail_args, nsjail, log_dir) = (
                next.clone(),
                ok.clone(),
                jail_args.clone(),
                nsjail.clone(),
                log_dir.clone(),
            );
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    return;
                }
                let mut all_ok = true;
                for k in 0..steps {
                    let log = tempfile::Builder::new()
                        .prefix(sandbox_runtime::executor::LOG_PREFIX)
                        .suffix(".log")
                        .tempfile_in(&log_dir)
                        .expect("log file");
                    let mut child = Command::new(&nsjail)
                        .arg("--log")
                        .arg(log.path())
                        .args(&jail_args)
                        .env_clear()
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("spawn nsjail");
                    let code = format!("print(sum(range({})))\n", i + k);
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(code.as_bytes());
                    }
                    let mut err = child.stderr.take().expect("stderr");
                    let err_reader = std::thread::spawn(move || {
                        let mut e = Vec::new();
                        let _ = err.read_to_end(&mut e);
                    });
                    let mut out = String::new();
                    let _ = child
                        .stdout
                        .take()
                        .expect("stdout")
                        .read_to_string(&mut out);
                    let _ = err_reader.join();
                    let status = child.wait().expect("wait");
                    let _ = std::fs::read_to_string(log.path());
                    all_ok &= status.success()
                        && out.trim() == (0..(i + k) as u64).sum::<u64>().to_string();
                }
                if all_ok {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw_tasks_per_sec={:.1} ok={} seconds={:.3} launcher_cpu_ms_per_task={:.2}",
        tasks as f64 / secs,
        ok.load(Ordering::Relaxed),
        secs,
        own_cpu_secs() * 1000.0 / tasks as f64
    );
}

/// CPU seconds (user + system) this process used itself, children excluded.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

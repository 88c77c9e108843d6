//! Where the time of a one-step task goes, one jail at a time (no
//! contention from the runtime's other work): `N` one-shot runs
//! (`Sandbox::run`) against `N` sessions that each run one cell and close
//! (`start_session`, `run_cell`, `close`), as the runtime does for a
//! one-step task. Prints, per mode, the wall time of each part (p50) and the
//! CPU time per task of the jails (nsjail + interpreter: the waited
//! children's `cutime + cstime`) and of this process.
//!
//! Usage: `bench_session_parts <n>` (default 100); the modes alternate in
//! blocks of 10 so background load hits both alike.

use std::time::{Duration, Instant};

use sandbox_runtime::executor::{Sandbox, SandboxConfig};

const CELL: &str = "print(sum(range(10)))\n";

/// (own user+system, waited children's user+system) CPU seconds so far.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    // Fields after the command name (which ends at the last ')').
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..17 (1-based): 11..14 here.
    let hz = 100.0;
    ((f[11] + f[12]) / hz, (f[13] + f[14]) / hz)
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0) * 1000.0
}

#[derive(Default)]
struct Parts {
    start: Vec<f64>,
    cell: Vec<f64>,
    close: Vec<f64>,
    total: Vec<f64>,
    own_cpu: f64,
    jail_cpu: f64,
    n: usize,
}

impl Parts {
    fn print(&self, name: &str) {
        let n = self.n.max(1) as f64;
        println!(
            "{name:9} n={} start p50 {:.2} ms, cell p50 {:.2} ms, close p50 {:.2} ms, total p50 {:.2} ms; CPU per task: jails {:.2} ms, runtime {:.2} ms",
            self.n,
            p50(self.start.clone()),
            p50(self.cell.clone()),
            p50(self.close.clone()),
            p50(self.total.clone()),
            self.jail_cpu / n * 1000.0,
            self.own_cpu / n * 1000.0,
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
        .max(10);
    let mut config = SandboxConfig::default();
    if let Ok(p) = std::env::var("NSJAIL_PATH") {
        config.nsjail_path = p.into();
    }
    let sandbox = Sandbox::new(config);
    let wall = Duration::from_secs(30);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let (mut oneshot, mut session) = (Parts::default(), Parts::default());
    for _ in 0..n / 10 {
        let (own0, jail0) = cpu();
        for _ in 0..if only == "stateful" { 0 } else { 10 } {
            let t = Instant::now();
            let e = sandbox.run(CELL, wall).await.expect("run");
            assert!(e.success(), "{:?}", e.verdict);
            oneshot.total.push(t.elapsed().as_secs_f64());
            oneshot.cell.push(e.duration.as_secs_f64());
        }
        let (own1, jail1) = cpu();
        oneshot.own_cpu += own1 - own0;
        oneshot.jail_cpu += jail1 - jail0;
        oneshot.n += 10;
        for _ in 0..if only == "oneshot" { 0 } else { 10 } {
            let t = Instant::now();
            let mut s = sandbox
                .start_session(Duration::from_secs(120), 2)
                .expect("session");
            let t1 = Instant::now();
            let run = s.run_cell(CELL, wall).await.expect("cell");
            assert!(run.execution.success(), "{:?}", run.execution.verdict);
            let t2 = Instant::now();
            s.close().await;
            let t3 = Instant::now();
            session.start.push((t1 - t).as_secs_f64());
            session.cell.push((t2 - t1).as_secs_f64());
            session.close.push((t3 - t2).as_secs_f64());
            session.total.push((t3 - t).as_secs_f64());
        }
        let (own2, jail2) = cpu();
        session.own_cpu += own2 - own1;
        session.jail_cpu += jail2 - jail1;
        session.n += 10;
    }
    oneshot.print("oneshot");
    session.print("stateful");
}

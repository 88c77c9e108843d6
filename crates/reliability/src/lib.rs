//! # reliability
//!
//! The harness of the reliability suite (issue 5): the platform's real
//! binaries run as child processes against a private `redis-server`, are
//! crashed, stopped and restarted, and a [`ledger::Ledger`] checks afterwards
//! that every task line ended as exactly one trajectory file (or one
//! rejection record).
//!
//! Tests live in `tests/*.rs`, one scenario per file (cargo runs test
//! binaries one after the other, so scenarios do not compete for the two
//! cores). `src/bin/soak.rs` is the long mixed-fault run behind
//! `scripts/soak.sh`.
//!
//! # Layout
//! * [`bins`]: builds `dispatcher` and `sandbox-runtime` once (same profile
//!   as the test) and finds them; `ADP_BIN_DIR` skips the build.
//! * [`service`]: one platform process: start, SIGTERM/SIGKILL/SIGSTOP,
//!   restart, its JSON log files, RSS.
//! * [`cluster`]: Redis + work dir + task file + the services of a scenario.
//! * [`tasks`]: task lines.
//! * [`ledger`]: what ended where (files, temp files, stream state, dead
//!   letters, writes per task from the logs, rejections).
//! * [`watch`]: counts trajectory writes with inotify (one rename = one write).
//! * [`report`]: scenario results as JSON under `target/reliability/`.

pub mod bins;
pub mod cluster;
pub mod ledger;
pub mod report;
pub mod service;
pub mod tasks;
pub mod watch;

use std::ops::RangeInclusive;
use std::time::Duration;

/// A size or count from the environment (`name`), or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Seconds from the environment, or `default`.
pub fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(env_or(name, default))
}

/// `count` fault points (e.g. trajectories done before a kill) drawn from
/// `range`, in increasing order.
pub fn fault_points(
    rng: &mut impl rand::Rng,
    count: usize,
    range: RangeInclusive<usize>,
) -> Vec<usize> {
    let mut points: Vec<usize> = (0..count)
        .map(|_| rng.random_range(range.clone()))
        .collect();
    points.sort_unstable();
    points
}

/// The seed of a scenario's random choices: `REL_SEED`, or fresh (printed so
/// a failing run can be repeated).
pub fn seed() -> u64 {
    let seed = env_or("REL_SEED", rand::random::<u64>());
    eprintln!("[reliability] REL_SEED={seed}");
    seed
}

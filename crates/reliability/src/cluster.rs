//! A scenario's world: a private `redis-server` (AOF `everysec`, free port),
//! a work directory with the task file, the output directory and the logs,
//! and constructors for the services with the scenario's settings.
//! `REL_KEEP=1` keeps the work directory (its path is printed).

use std::path::{Path, PathBuf};

use test_support::RedisServer;

use crate::bins;
use crate::service::Service;

pub struct Cluster {
    pub redis: RedisServer,
    work: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl Cluster {
    /// Builds the binaries (once), starts Redis, makes the directories.
    pub fn new(scenario: &str) -> Self {
        let _ = bins::bin_dir();
        let work = tempfile::Builder::new()
            .prefix(&format!("reliability-{scenario}-"))
            .tempdir()
            .expect("tempdir");
        let root = work.path().to_path_buf();
        for d in ["output", "logs", "nsjail-logs"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let redis = RedisServer::start();
        eprintln!(
            "[reliability] {scenario}: work dir {}, redis {}",
            root.display(),
            redis.url()
        );
        Cluster {
            redis,
            work: Some(work),
            root,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn output_dir(&self) -> PathBuf {
        self.root.join("output")
    }

    pub fn trajectories_dir(&self) -> PathBuf {
        self.output_dir().join("trajectories")
    }

    pub fn task_file(&self) -> PathBuf {
        self.root.join("tasks.jsonl")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where nsjail's per-run logs go (left-overs show a runtime killed mid-step).
    pub fn nsjail_log_dir(&self) -> PathBuf {
        self.root.join("nsjail-logs")
    }

    /// A synchronous Redis connection (a new one each call: the server may
    /// have been restarted since).
    pub fn redis(&self) -> redis::Connection {
        self.redis.client()
    }

    /// A dispatcher on the task file (`FOLLOW` as given), metrics on a free port.
    pub fn dispatcher(&self, follow: bool, extra: &[(&str, &str)]) -> Service {
        let mut env = vec![
            ("REDIS_URL", self.redis.url()),
            ("OUTPUT_DIR", path_str(&self.output_dir())),
            ("TASK_FILE", path_str(&self.task_file())),
            ("FOLLOW", follow.to_string()),
            ("METRICS_HOST", "127.0.0.1".to_owned()),
            ("METRICS_PORT", "0".to_owned()),
            ("STATS_INTERVAL_SECS", "1".to_owned()),
            ("POLL_INTERVAL_MS", "100".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Service::new(
            "dispatcher",
            bins::bin("dispatcher"),
            &self.log_dir(),
            owned(env),
        )
    }

    /// A sandbox-runtime named `name` (log files `<name>.<n>.log`).
    pub fn sandbox(&self, name: &str, extra: &[(&str, &str)]) -> Service {
        let mut env = vec![
            ("REDIS_URL", self.redis.url()),
            ("OUTPUT_DIR", path_str(&self.output_dir())),
            ("METRICS_HOST", "127.0.0.1".to_owned()),
            ("METRICS_PORT", "0".to_owned()),
            ("SANDBOX_CONCURRENCY", "2".to_owned()),
            ("CLAIM_IDLE_SECS", "2".to_owned()),
            ("READ_BLOCK_MS", "500".to_owned()),
            ("RETRY_BACKOFF_MS", "200".to_owned()),
            ("HEALTH_INTERVAL_SECS", "2".to_owned()),
            ("SHUTDOWN_GRACE_SECS", "20".to_owned()),
            ("SANDBOX_LOG_DIR", path_str(&self.nsjail_log_dir())),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Service::new(
            name,
            bins::bin("sandbox-runtime"),
            &self.log_dir(),
            owned(env),
        )
    }

    /// Two sandbox-runtimes, `sandbox-a` and `sandbox-b`, with `extra`
    /// settings, started.
    pub fn start_sandbox_pair(&self, extra: &[(&str, &str)]) -> [Service; 2] {
        let mut pair = [
            self.sandbox("sandbox-a", extra),
            self.sandbox("sandbox-b", extra),
        ];
        for s in &mut pair {
            s.start();
        }
        pair
    }

    /// Number of `*.json` files in `trajectories/`.
    pub fn trajectory_count(&self) -> usize {
        std::fs::read_dir(self.trajectories_dir())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("REL_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            if let Some(w) = self.work.take() {
                let kept = w.keep();
                eprintln!("[reliability] kept {}", kept.display());
            }
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn owned(env: Vec<(&str, String)>) -> Vec<(String, String)> {
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

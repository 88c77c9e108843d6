//! Settings of the `sandbox-runtime` binary: every one a flag and an
//! environment variable with a default; a bad value exits 64 before any work.

use std::path::PathBuf;
use std::time::Duration;

use adp_core::config::{CommonArgs, RuntimeArgs, WorkerArgs};
use adp_core::llm::LlmArgs;
use clap::{Parser, ValueEnum};

use crate::executor::SandboxConfig;
use crate::limits::CgroupChoice;

/// Template cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Cache the plan (the code a policy produced); re-execute it on a hit.
    Plan,
    /// No cache.
    Off,
}

/// How a task's steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SessionMode {
    /// One jail per task, running every step in one Python interpreter:
    /// variables, imports and `/tmp` persist between steps.
    Stateful,
    /// A fresh jail and interpreter for every step.
    Oneshot,
}

impl SessionMode {
    /// `metadata.session.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Stateful => "stateful",
            SessionMode::Oneshot => "oneshot",
        }
    }

    /// The plan cache's variant (`TemplateCache::with_variant`): a stateful
    /// plan may use what an earlier step left in the session, so a oneshot
    /// run must never replay it. Oneshot plans keep the plain key.
    pub fn cache_variant(self) -> &'static str {
        match self {
            SessionMode::Stateful => "session=stateful",
            SessionMode::Oneshot => "",
        }
    }
}

/// Code agent runtime: consumes `tasks:code` and `tasks:reasoning`, runs each
/// step of Python in a one-shot nsjail, writes one trajectory per task.
#[derive(Debug, Clone, Parser)]
#[command(name = "sandbox-runtime", version, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Tasks running code at once: jails at the same time (default: the number of CPUs).
    #[arg(long, env = "SANDBOX_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub sandbox_concurrency: Option<u16>,
    /// Tasks taken from the streams beyond SANDBOX_CONCURRENCY. They wait for
    /// a free jail, so writing a trajectory, acking or waiting for the LLM
    /// never leaves a jail idle. Default: 1 (2 x SANDBOX_CONCURRENCY when an
    /// LLM is configured, since its tasks mostly wait for the model).
    #[arg(long, env = "SANDBOX_PREFETCH", value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub sandbox_prefetch: Option<u16>,
    /// Port of `/metrics` and `/health` (0: any free port, logged).
    #[arg(long, env = "METRICS_PORT", default_value_t = 8001)]
    pub metrics_port: u16,
    /// `stateful`: one jail and interpreter per task, state kept between
    /// steps; `oneshot`: a fresh jail for every step.
    #[arg(long, env = "SANDBOX_SESSION", value_enum, default_value = "stateful")]
    pub sandbox_session: SessionMode,
    /// Template cache: `plan` (keep the code, re-execute on a hit) or `off`.
    #[arg(long, env = "CACHE_MODE", value_enum, default_value = "plan")]
    pub cache_mode: CacheMode,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Print the nsjail command line of one step (one argument a line, the
    /// code goes on stdin) and exit. Used by scripts/bench_sandbox.sh.
    #[arg(long, hide = true)]
    pub print_jail_command: bool,
}

impl Config {
    /// Jails at once (tasks running code at once).
    pub fn concurrency(&self) -> usize {
        self.sandbox_concurrency.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        )
    }

    /// Tasks held at once: the jails plus the prefetch.
    pub fn tasks_in_flight(&self) -> usize {
        let prefetch = match self.sandbox_prefetch {
            Some(p) => usize::from(p),
            None if self.llm.base_url().is_some() => 2 * self.concurrency(),
            None => 1,
        };
        self.concurrency() + prefetch
    }
}

/// The sandbox's limits and paths.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// The nsjail binary.
    #[arg(long, env = "NSJAIL_PATH", default_value = "/usr/local/bin/nsjail")]
    pub nsjail_path: PathBuf,
    /// Python interpreter inside the jail (must live under /usr).
    #[arg(long, env = "SANDBOX_PYTHON", default_value = "/usr/bin/python3")]
    pub sandbox_python: PathBuf,
    /// Wall time limit of one step in seconds (the task's remaining time may cut it shorter).
    #[arg(long, env = "SANDBOX_STEP_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sandbox_step_timeout_secs: u64,
    /// Memory of the whole jail, MiB: the cgroup limit of all its processes
    /// together, and each process's address space (RLIMIT_AS). Without
    /// cgroups, each of SANDBOX_FALLBACK_PROCS processes gets an equal share.
    #[arg(long, env = "SANDBOX_MEMORY_MB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(32..=65536))]
    pub sandbox_memory_mb: u64,
    /// CPU time limit of one step, seconds (RLIMIT_CPU).
    #[arg(long, env = "SANDBOX_CPU_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sandbox_cpu_secs: u64,
    /// Processes + threads in one jail (pids cgroup and RLIMIT_NPROC).
    #[arg(long, env = "SANDBOX_MAX_PROCS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub sandbox_max_procs: u64,
    /// Largest file the code may write, MiB (RLIMIT_FSIZE).
    #[arg(long, env = "SANDBOX_FILE_SIZE_MB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(0..=4096))]
    pub sandbox_file_size_mb: u64,
    /// Open files of the jailed process (RLIMIT_NOFILE).
    #[arg(long, env = "SANDBOX_OPEN_FILES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=65536))]
    pub sandbox_open_files: u64,
    /// Size of the private /tmp (the working directory), MiB.
    #[arg(long, env = "SANDBOX_TMPFS_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16384))]
    pub sandbox_tmpfs_mb: u64,
    /// Bytes of stdout and of stderr kept per step (the cut is marked).
    #[arg(long, env = "SANDBOX_OUTPUT_CAP_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(256..=67_108_864))]
    pub sandbox_output_cap_bytes: u64,
    /// Directory for nsjail's per-step log files (default: /dev/shm, else the system temp dir).
    #[arg(long, env = "SANDBOX_LOG_DIR")]
    pub sandbox_log_dir: Option<PathBuf>,
    /// cgroups limiting each whole jail: `auto` (v2, else v1 memory+pids,
    /// checked by a probe jail at start), `v1`, `v2`, or `off` (rlimits only;
    /// degraded, and reported as such).
    #[arg(long, env = "SANDBOX_CGROUPS", value_enum, default_value = "auto")]
    pub sandbox_cgroups: CgroupChoice,
    /// Where the cgroup file systems are mounted.
    #[arg(long, env = "SANDBOX_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub sandbox_cgroup_root: PathBuf,
    /// Without cgroups: processes per jail (RLIMIT_NPROC), each with
    /// SANDBOX_MEMORY_MB / this much address space.
    #[arg(long, env = "SANDBOX_FALLBACK_PROCS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub sandbox_fallback_procs: u64,
    /// Files and directories the jail's /tmp may hold (tmpfs nr_inodes).
    #[arg(long, env = "SANDBOX_TMPFS_INODES", default_value_t = 8192, value_parser = clap::value_parser!(u64).range(16..=10_000_000))]
    pub sandbox_tmpfs_inodes: u64,
    /// Run jails under the seccomp policy (docs/sandbox.md).
    #[arg(long, env = "SANDBOX_SECCOMP", default_value_t = true, action = clap::ArgAction::Set)]
    pub sandbox_seccomp: bool,
    /// A directory of extra Python packages (e.g. one filled by
    /// `scripts/setup.sh sandbox-data`), bound read-only on the jail's sys.path.
    #[arg(long, env = "SANDBOX_PACKAGES_DIR")]
    pub sandbox_packages_dir: Option<PathBuf>,
}

impl SandboxArgs {
    pub fn to_config(&self) -> SandboxConfig {
        SandboxConfig {
            nsjail_path: self.nsjail_path.clone(),
            python_path: self.sandbox_python.clone(),
            step_timeout: Duration::from_secs(self.sandbox_step_timeout_secs),
            memory_mb: self.sandbox_memory_mb,
            cpu_secs: self.sandbox_cpu_secs,
            max_procs: self.sandbox_max_procs,
            file_size_mb: self.sandbox_file_size_mb,
            open_files: self.sandbox_open_files,
            tmpfs_mb: self.sandbox_tmpfs_mb,
            output_cap: usize::try_from(self.sandbox_output_cap_bytes).unwrap_or(usize::MAX),
            log_dir: self
                .sandbox_log_dir
                .clone()
                .unwrap_or_else(crate::executor::default_log_dir),
            cgroups: self.sandbox_cgroups,
            cgroup_root: self.sandbox_cgroup_root.clone(),
            fallback_procs: self.sandbox_fallback_procs,
            tmpfs_inodes: self.sandbox_tmpfs_inodes,
            seccomp: self.sandbox_seccomp,
            packages_dir: self.sandbox_packages_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateful_plans_have_their_own_cache_key() {
        let task: adp_core::TaskSpec = serde_json::from_value(serde_json::json!({
            "task_id": "t", "task_type": "code", "description": "Sum a list",
        }))
        .expect("task");
        let key = |mode: SessionMode| {
            adp_core::cache::TemplateCache::new(
                None,
                std::time::Duration::from_secs(60),
                adp_core::metrics::Metrics::new(),
                "code",
            )
            .with_variant(mode.cache_variant())
            .key_for(&task)
        };
        assert_ne!(key(SessionMode::Stateful), key(SessionMode::Oneshot));
        assert_eq!(
            key(SessionMode::Oneshot).as_deref(),
            Some(adp_core::cache::cache_key(adp_core::TaskType::Code, "Sum a list").as_str()),
            "oneshot plans keep the plain key"
        );
    }

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from(["sandbox-runtime"]).expect("defaults");
        assert_eq!(c.metrics_port, 8001);
        assert_eq!(c.cache_mode, CacheMode::Plan);
        assert_eq!(c.sandbox_session, SessionMode::Stateful);
        let s = c.sandbox.to_config();
        assert_eq!(s.memory_mb, 512);
        assert_eq!(s.output_cap, 65536);
        assert_eq!(s.cgroups, CgroupChoice::Auto);
        assert_eq!(s.tmpfs_inodes, 8192);
        assert!(s.seccomp);
        assert_eq!(s, SandboxConfig::default());
        assert!(c.concurrency() >= 1);
        assert_eq!(c.tasks_in_flight(), c.concurrency() + 1);
        let c = Config::try_parse_from([
            "x",
            "--sandbox-concurrency",
            "3",
            "--llm-base-url",
            "http://127.0.0.1:9",
        ])
        .expect("llm");
        assert_eq!(c.tasks_in_flight(), 9);
        let c =
            Config::try_parse_from(["x", "--sandbox-concurrency", "3", "--sandbox-prefetch", "0"])
                .expect("no prefetch");
        assert_eq!(c.tasks_in_flight(), 3);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::try_parse_from(["x", "--sandbox-concurrency", "0"]).is_err());
        assert!(Config::try_parse_from(["x", "--cache-mode", "sometimes"]).is_err());
        assert!(Config::try_parse_from(["x", "--sandbox-session", "forever"]).is_err());
        assert!(Config::try_parse_from(["x", "--sandbox-memory-mb", "1"]).is_err());
    }
}

//! Runs one piece of Python in a one-shot nsjail, asynchronously.
//!
//! Each run gets a fresh jail: new user/pid/mount/net/ipc/uts namespaces, uid
//! and gid 65534 inside *and* outside, no network (nsjail's own empty net
//! namespace, only `lo`), a read-only bind of `/usr` (+ the `/bin`, `/lib`,
//! `/lib64` symlinks Debian's python needs), `/dev/null`, `/dev/zero` and
//! `/dev/urandom`, a private tmpfs at `/tmp` as the working directory, no
//! `/proc`, hostname `sandbox`, rlimits (address space, CPU seconds,
//! processes, file size, open files), a wall time limit and a clean
//! environment (only the `--env` values below; nsjail itself is started with
//! an empty environment too).
//!
//! The code goes in on stdin (`python3 -I -S -B -u -`), so nothing is
//! written to the host's disk. stdout and stderr are read concurrently, each
//! kept up to a cap and drained past it (the cut is marked). nsjail logs to a
//! private temp file (`--log`), parsed for the verdict and never shown to the
//! agent. nsjail's `--time_limit` kills the jail at the wall limit; a backstop
//! timer a little later kills nsjail itself (its child dies with it:
//! `PR_SET_PDEATHSIG`), as does dropping the future (`kill_on_drop`).
//! Every nsjail joins the runtime's [`JailGroup`], whose guardian kills
//! them all when the runtime dies (even by `kill -9`), instead of leaving
//! them to run out their wall limit.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adp_core::{ErrorType, InfraError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::classify::{classify, JailLog, RunFacts, RunLimits, Verdict};
use crate::jail_group::JailGroup;
use crate::limits::{CgroupChoice, JailSetup, LimitMode, JAIL_PACKAGES_DIR, SECCOMP_POLICY};

/// Name prefix of nsjail's per-run log files in `log_dir`.
pub const LOG_PREFIX: &str = "nsjail-";

/// Extra time after the wall limit before the runtime kills nsjail itself
/// (nsjail checks its own limit about once a second).
pub const BACKSTOP_MARGIN: Duration = Duration::from_secs(2);

/// Environment of the jailed process: nothing else reaches it.
/// (`-I` makes Python ignore `PYTHON*` variables anyway; `LANG` gives UTF-8 stdio.)
/// (`OPENBLAS_NUM_THREADS=1`: numpy's BLAS would otherwise start a thread
/// per CPU, each reserving address space, in every jail.)
pub const JAIL_ENV: [&str; 5] = [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "HOME=/tmp",
    "TMPDIR=/tmp",
    "LANG=C.UTF-8",
    "OPENBLAS_NUM_THREADS=1",
];

/// Settings of the sandbox (see `config::SandboxArgs` for the variables).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    pub nsjail_path: PathBuf,
    /// The interpreter inside the jail (must live under `/usr`).
    pub python_path: PathBuf,
    /// Wall time of one step (the task's remaining time may cut it shorter).
    pub step_timeout: Duration,
    /// RLIMIT_AS in MiB.
    pub memory_mb: u64,
    /// RLIMIT_CPU in seconds.
    pub cpu_secs: u64,
    /// RLIMIT_NPROC (processes + threads of uid 65534 in the jail's user namespace).
    pub max_procs: u64,
    /// RLIMIT_FSIZE in MiB.
    pub file_size_mb: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// Size of the `/tmp` tmpfs in MiB.
    pub tmpfs_mb: u64,
    /// Bytes of stdout and of stderr kept per step.
    pub output_cap: usize,
    /// Where nsjail's per-run log files go (removed after each run).
    pub log_dir: PathBuf,
    /// Which cgroups limit the whole jail (`SANDBOX_CGROUPS`).
    pub cgroups: CgroupChoice,
    /// Where the cgroup file systems are mounted.
    pub cgroup_root: PathBuf,
    /// Without cgroups: processes per jail; each gets `memory_mb / fallback_procs` of address space.
    pub fallback_procs: u64,
    /// Files and directories the `/tmp` tmpfs may hold.
    pub tmpfs_inodes: u64,
    /// Run the jail under [`SECCOMP_POLICY`].
    pub seccomp: bool,
    /// Extra packages, bound read-only on the jail's `sys.path`.
    pub packages_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            nsjail_path: PathBuf::from("/usr/local/bin/nsjail"),
            python_path: PathBuf::from("/usr/bin/python3"),
            step_timeout: Duration::from_secs(30),
            memory_mb: 512,
            cpu_secs: 30,
            max_procs: 64,
            file_size_mb: 16,
            open_files: 64,
            tmpfs_mb: 64,
            output_cap: 64 * 1024,
            log_dir: default_log_dir(),
            cgroups: CgroupChoice::Auto,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            fallback_procs: 4,
            tmpfs_inodes: 8192,
            seccomp: true,
            packages_dir: None,
        }
    }
}

/// The nsjail arguments of a jail (without `--log`), up to and including the
/// interpreter's path: namespaces, the files of `setup`, a `/tmp` tmpfs,
/// limits (cgroups or the rlimit fallback), seccomp and the environment.
/// `mem_parent` is the memory cgroup (v1) the jail's own group goes under.
pub(crate) fn jail_args_for(
    c: &SandboxConfig,
    setup: &JailSetup,
    wall_secs: u64,
    cpu_secs: u64,
    mem_parent: Option<&str>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(96);
    let mut push = |a: &str| args.push(OsString::from(a));
    for a in [
        "--mode",
        "o",
        "--user",
        "65534:65534",
        "--group",
        "65534:65534",
        "--hostname",
        "sandbox",
    ] {
        push(a);
    }
    for (src, dst) in &setup.files.binds {
        push("--bindmount_ro");
        if src == dst {
            push(&src.to_string_lossy());
        } else {
            push(&format!("{}:{}", src.display(), dst.display()));
        }
    }
    for (target, link) in &setup.files.symlinks {
        push("--symlink");
        push(&format!("{target}:{link}"));
    }
    for a in [
        "--symlink",
        "usr/bin:/bin",
        "--symlink",
        "usr/lib:/lib",
        "--symlink",
        "usr/lib64:/lib64",
        "--bindmount",
        "/dev/null",
        "--bindmount_ro",
        "/dev/zero",
        "--bindmount_ro",
        "/dev/urandom",
        "--mount",
    ] {
        push(a);
    }
    push(&format!(
        "none:/tmp:tmpfs:size={},nr_inodes={}",
        c.tmpfs_mb.max(1) * 1024 * 1024,
        c.tmpfs_inodes.max(16)
    ));
    for a in ["--cwd", "/tmp", "--disable_proc"] {
        push(a);
    }
    let memory_bytes = c.memory_mb.max(16) * 1024 * 1024;
    let (address_space_mb, procs) = match &setup.limits {
        LimitMode::Rlimits { .. } => {
            let procs = c.fallback_procs.clamp(1, c.max_procs.max(1));
            ((c.memory_mb / procs).max(16), procs)
        }
        LimitMode::CgroupV1 { memsw, .. } => {
            push("--cgroup_mem_max");
            push(&memory_bytes.to_string());
            if *memsw {
                push("--cgroup_mem_memsw_max");
                push(&memory_bytes.to_string());
            }
            if let Some(parent) = mem_parent {
                push("--cgroup_mem_parent");
                push(parent);
            }
            push("--cgroup_pids_max");
            push(&c.max_procs.max(1).to_string());
            (c.memory_mb.max(16), c.max_procs.max(1))
        }
        LimitMode::CgroupV2 => {
            push("--use_cgroupv2");
            push("--cgroupv2_mount");
            push(&c.cgroup_root.to_string_lossy());
            push("--cgroup_mem_max");
            push(&memory_bytes.to_string());
            push("--cgroup_pids_max");
            push(&c.max_procs.max(1).to_string());
            (c.memory_mb.max(16), c.max_procs.max(1))
        }
    };
    for (flag, value) in [
        ("--time_limit", wall_secs.max(1)),
        ("--rlimit_as", address_space_mb),
        ("--rlimit_cpu", cpu_secs.max(1)),
        ("--rlimit_nproc", procs),
        ("--rlimit_fsize", c.file_size_mb),
        ("--rlimit_nofile", c.open_files.max(8)),
        ("--rlimit_core", 0),
    ] {
        push(flag);
        push(&value.to_string());
    }
    if c.seccomp {
        push("--seccomp_string");
        push(SECCOMP_POLICY);
    }
    for e in JAIL_ENV {
        push("--env");
        push(e);
    }
    push("--");
    args.push(c.python_path.clone().into_os_string());
    args
}

/// `/dev/shm` when it is there (tmpfs: no disk work for the per-step log
/// files), else the system temp dir.
pub fn default_log_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let writable = std::fs::metadata(&shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// One captured stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// What was kept (at most the cap), as UTF-8 (invalid bytes replaced).
    pub text: String,
    /// Bytes the code wrote in all.
    pub total_bytes: u64,
}

impl Captured {
    pub fn truncated(&self) -> bool {
        self.total_bytes > self.text.len() as u64
    }

    /// The text, with a marker line when it was cut.
    pub fn marked(&self, stream: &str) -> String {
        if !self.truncated() {
            return self.text.clone();
        }
        let mut s = self.text.clone();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&format!(
            "[... {stream} truncated: {} of {} bytes shown ...]\n",
            self.text.len(),
            self.total_bytes
        ));
        s
    }
}

/// The result of one run of code.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub stdout: Captured,
    pub stderr: Captured,
    pub verdict: Verdict,
    /// The wall limit this run had.
    pub wall_limit: Duration,
    pub duration: Duration,
    /// Lines the sandbox puts before the output (`[sandbox: ...]`): about
    /// the session (a fresh one after a lost one, or this step ending it).
    pub notes: Vec<String>,
}

impl Execution {
    pub fn success(&self) -> bool {
        self.verdict.success()
    }

    pub fn error_type(&self) -> Option<ErrorType> {
        self.verdict.error_type
    }

    /// What the agent sees: the sandbox's notes about the session, stdout,
    /// then stderr under a `[stderr]` line, each marked if cut, then a note
    /// if a limit ended the run.
    pub fn observation(&self) -> String {
        let mut obs = String::new();
        for note in &self.notes {
            obs.push_str(&format!("[sandbox: {note}]\n"));
        }
        obs.push_str(&self.stdout.marked("stdout"));
        if !self.stderr.text.is_empty() || self.stderr.truncated() {
            if !obs.is_empty() && !obs.ends_with('\n') {
                obs.push('\n');
            }
            obs.push_str("[stderr]\n");
            obs.push_str(&self.stderr.marked("stderr"));
        }
        if self.verdict.error_type == Some(ErrorType::Timeout) {
            if !obs.is_empty() && !obs.ends_with('\n') {
                obs.push('\n');
            }
            if let Some(m) = &self.verdict.message {
                obs.push_str(&format!("[sandbox: {m}]\n"));
            }
        }
        obs
    }
}

/// Runs code in nsjail. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sandbox {
    config: Arc<SandboxConfig>,
    setup: Arc<JailSetup>,
    group: Arc<JailGroup>,
    /// The session driver's arguments after `-c` ([`crate::session::driver_program`]),
    /// computed once.
    driver: Arc<std::sync::OnceLock<Vec<String>>>,
}

impl Sandbox {
    /// A sandbox for `config`: detects the cgroups (a probe jail) and the
    /// files the interpreter needs ([`JailSetup::detect`]).
    pub fn new(config: SandboxConfig) -> Self {
        let setup = JailSetup::detect(&config);
        let sandbox = Sandbox::with_setup(config, setup);
        // At start, not at the first session (it runs the interpreter once).
        sandbox.driver_program();
        sandbox
    }

    /// A sandbox with a setup decided elsewhere.
    pub fn with_setup(config: SandboxConfig, setup: JailSetup) -> Self {
        Sandbox {
            config: Arc::new(config),
            setup: Arc::new(setup),
            group: Arc::new(JailGroup::default()),
            driver: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The session driver's arguments after `python3 ... -c`.
    fn driver_program(&self) -> &[String] {
        self.driver
            .get_or_init(|| crate::session::driver_program(&self.config.python_path))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The limits and files every jail gets.
    pub fn setup(&self) -> &JailSetup {
        &self.setup
    }

    /// The nsjail arguments for one run (the code comes on stdin), without
    /// `--log`. `wall_secs` is nsjail's `--time_limit`.
    pub fn jail_args(&self, wall_secs: u64) -> Vec<OsString> {
        let mut args = self.common_args(wall_secs, self.config.cpu_secs, None);
        // With a packages directory, `site` puts it on sys.path (Debian's
        // site adds /usr/lib/python3/dist-packages, where it is bound).
        let flags: &[&str] = if self.config.packages_dir.is_some() {
            &["-I", "-B", "-u", "-"]
        } else {
            &["-I", "-S", "-B", "-u", "-"]
        };
        for a in flags {
            args.push(OsString::from(a));
        }
        args
    }

    /// The nsjail arguments of a session jail running the driver
    /// (`crate::session`), without `--log`. The jail lives at most
    /// `lifetime_secs`; each cell gets `cpu_secs` more CPU seconds than the
    /// interpreter has used (the driver lowers its soft limit), within a
    /// hard limit of `cpu_secs × cells`.
    pub fn session_args(
        &self,
        lifetime_secs: u64,
        cells: u64,
        mem_parent: Option<&str>,
    ) -> Vec<OsString> {
        let c = &self.config;
        let cpu_hard = c.cpu_secs.max(1).saturating_mul(cells.max(1));
        let mut args = self.common_args(lifetime_secs, cpu_hard, mem_parent);
        for a in ["-I", "-S", "-B", "-u", "-c"] {
            args.push(OsString::from(a));
        }
        for a in self.driver_program() {
            args.push(OsString::from(a));
        }
        args.push(OsString::from(c.output_cap.to_string()));
        args.push(OsString::from(c.cpu_secs.max(1).to_string()));
        let packages = if c.packages_dir.is_some() {
            JAIL_PACKAGES_DIR
        } else {
            ""
        };
        args.push(OsString::from(packages));
        args
    }

    /// Namespaces, mounts, limits and environment, up to and including the
    /// interpreter's path.
    fn common_args(
        &self,
        wall_secs: u64,
        cpu_secs: u64,
        mem_parent: Option<&str>,
    ) -> Vec<OsString> {
        jail_args_for(&self.config, &self.setup, wall_secs, cpu_secs, mem_parent)
    }

    /// Starts nsjail with `args` (after `--log <file>`), stdio piped, in the
    /// runtime's jail group. Returns the child and its log file.
    pub(crate) fn spawn(
        &self,
        args: Vec<OsString>,
    ) -> Result<(tokio::process::Child, tempfile::NamedTempFile), InfraError> {
        let c = &self.config;
        let log_file = tempfile::Builder::new()
            .prefix(LOG_PREFIX)
            .suffix(".log")
            .tempfile_in(&c.log_dir)
            .map_err(|e| {
                InfraError::new(
                    "sandbox",
                    format!("cannot create a log file in {}: {e}", c.log_dir.display()),
                )
            })?;
        let mut cmd = Command::new(&c.nsjail_path);
        cmd.arg("--log")
            .arg(log_file.path())
            .args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(pgid) = self.group.pgid_or_warn() {
            cmd.process_group(pgid as i32);
        }
        let child = cmd.spawn().map_err(|e| {
            InfraError::new(
                "sandbox",
                format!("cannot start nsjail at {}: {e}", c.nsjail_path.display()),
            )
        })?;
        Ok((child, log_file))
    }

    /// Runs `code` with a wall limit of `wall` (rounded up to whole seconds
    /// for nsjail). `Err` only when the sandbox itself failed.
    pub async fn run(&self, code: &str, wall: Duration) -> Result<Execution, InfraError> {
        let c = &self.config;
        let wall_secs = wall.as_secs_f64().ceil().max(1.0) as u64;
        let started = Instant::now();
        let (mut child, log_file) = self.spawn(self.jail_args(wall_secs))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let code_bytes = code.as_bytes().to_vec();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // The code may exit before reading everything: EPIPE is fine.
                let _ = stdin.write_all(&code_bytes).await;
                let _ = stdin.shutdown().await;
            }
        };
        let cap = c.output_cap;
        let backstop = Duration::from_secs(wall_secs) + BACKSTOP_MARGIN;
        let wait = async {
            tokio::select! {
                status = child.wait() => (status, false),
                _ = tokio::time::sleep(backstop) => {
                    let _ = child.start_kill();
                    (child.wait().await, true)
                }
            }
        };
        let ((), out, err, (status, backstop_fired)) = tokio::join!(
            feed,
            read_capped(stdout, cap),
            read_capped(stderr, cap),
            wait
        );
        let duration = started.elapsed();
        let status =
            status.map_err(|e| InfraError::new("sandbox", format!("waiting for nsjail: {e}")))?;
        // A few hundred bytes, normally on tmpfs: read in place rather than
        // hopping to the blocking pool.
        let log_text = std::fs::read_to_string(log_file.path()).unwrap_or_default();
        let log = JailLog::parse(&log_text);
        let stdout = out.map_err(|e| InfraError::new("sandbox", format!("reading stdout: {e}")))?;
        let stderr = err.map_err(|e| InfraError::new("sandbox", format!("reading stderr: {e}")))?;
        let verdict = classify(RunFacts {
            log: &log,
            nsjail_code: status.code(),
            backstop_fired,
            stderr: &stderr.text,
            limits: self.run_limits(wall),
        })?;
        Ok(Execution {
            stdout,
            stderr,
            verdict,
            wall_limit: wall,
            duration,
            notes: Vec::new(),
        })
    }

    /// The limits of a step with wall limit `wall` (for verdict messages).
    pub(crate) fn run_limits(&self, wall: Duration) -> RunLimits {
        RunLimits {
            wall_secs: wall.as_secs_f64(),
            cpu_secs: self.config.cpu_secs,
            memory_mb: match self.setup.limits {
                LimitMode::Rlimits { .. } => {
                    (self.config.memory_mb / self.config.fallback_procs.max(1)).max(16)
                }
                _ => self.config.memory_mb,
            },
            jail_memory: !self.setup.limits.degraded(),
        }
    }

    /// Removes nsjail log files left in `log_dir` by a runtime that was
    /// killed mid-run (a live one deletes each as its run ends). Only files
    /// older than any run can last (twice the step limit, at least 10
    /// minutes) go, so the logs of other live runtimes sharing the directory
    /// stay. Returns how many were removed.
    pub fn remove_abandoned_logs(&self) -> usize {
        let c = &self.config;
        let age = (c.step_timeout * 2).max(Duration::from_secs(600));
        adp_core::writer::remove_old_files(&c.log_dir, LOG_PREFIX, age)
    }

    /// Health probe: nsjail runs `print('ok')` within 10 s.
    pub async fn probe(&self) -> Result<(), String> {
        match self.run("print('ok')", Duration::from_secs(10)).await {
            Ok(e) if e.success() && e.stdout.text.trim() == "ok" => Ok(()),
            Ok(e) => Err(format!(
                "sandbox probe failed: {}",
                e.verdict
                    .message
                    .unwrap_or_else(|| format!("unexpected output {:?}", e.stdout.text))
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Reads a pipe to its end, keeping at most `cap` bytes.
pub(crate) async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
) -> std::io::Result<Captured> {
    let Some(mut pipe) = pipe else {
        return Ok(Captured::default());
    };
    let mut kept: Vec<u8> = Vec::with_capacity(cap.min(8192));
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if kept.len() < cap {
            let take = n.min(cap - kept.len());
            kept.extend_from_slice(&buf[..take]);
        }
    }
    Ok(Captured {
        text: utf8_cut(kept),
        total_bytes: total,
    })
}

/// Bytes → text; a multi-byte character cut at the end is dropped, other
/// invalid bytes become U+FFFD.
pub(crate) fn utf8_cut(mut bytes: Vec<u8>) -> String {
    if let Err(e) = std::str::from_utf8(&bytes) {
        if e.error_len().is_none() {
            bytes.truncate(e.valid_up_to());
        }
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_logs_older_than_any_run_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Sandbox::with_setup(
            SandboxConfig {
                log_dir: dir.path().to_owned(),
                ..SandboxConfig::default()
            },
            JailSetup::plain(),
        );
        let old = dir.path().join(format!("{LOG_PREFIX}old.log"));
        let live = dir.path().join(format!("{LOG_PREFIX}live.log"));
        test_support::aged_file(&old, Duration::from_secs(3600));
        test_support::aged_file(&live, Duration::ZERO);
        assert_eq!(sandbox.remove_abandoned_logs(), 1);
        assert!(!old.exists());
        assert!(live.exists(), "a live run's log stays");
    }

    #[test]
    fn utf8_cut_drops_a_split_character() {
        let mut b = "héllo".as_bytes().to_vec();
        b.truncate(2); // 'h' + first byte of 'é'
        assert_eq!(utf8_cut(b), "h");
        assert_eq!(utf8_cut(vec![0x61, 0xff, 0x62]), "a\u{fffd}b");
    }

    #[test]
    fn truncation_is_marked() {
        let c = Captured {
            text: "abc".into(),
            total_bytes: 10,
        };
        assert_eq!(
            c.marked("stdout"),
            "abc\n[... stdout truncated: 3 of 10 bytes shown ...]\n"
        );
        let whole = Captured {
            text: "abc".into(),
            total_bytes: 3,
        };
        assert_eq!(whole.marked("stdout"), "abc");
    }

    #[test]
    fn jail_args_keep_the_essentials() {
        let s = Sandbox::with_setup(SandboxConfig::default(), JailSetup::plain());
        let args: Vec<String> = s
            .jail_args(7)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for must in [
            "--user 65534:65534",
            "--group 65534:65534",
            "--hostname sandbox",
            "--disable_proc",
            "--time_limit 7",
            "--rlimit_as 128",
            "--rlimit_nproc 4",
            "--bindmount_ro /usr",
            "nr_inodes=8192",
            "--seccomp_string ERRNO(1)",
            "-- /usr/bin/python3 -I -S -B -u -",
        ] {
            assert!(joined.contains(must), "{must} missing in {joined}");
        }
        assert!(!joined.contains("disable_clone_newnet"));
        assert!(!joined.contains("keep_env"));
    }
}

//! What a jail is allowed, decided once at start: limits for the whole jail
//! (cgroups v1 or v2 when they can be used, else rlimits sized to the jail's
//! budget — a degraded mode that is logged, shown in `/health` and counted in
//! a metric), the seccomp policy, and the minimal set of files the
//! interpreter needs (docs/sandbox.md, "Limits" and "What the jail sees").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::ValueEnum;

use crate::executor::SandboxConfig;

/// The seccomp policy (nsjail's kafel language) every jail runs under:
/// io_uring, new namespaces (`unshare`, `setns`, `clone` with
/// `CLONE_NEWUSER`), mounts, tracing and other processes' memory, BPF, perf
/// events, the kernel keyring, kernel modules and kexec, and a few other
/// administrative calls fail with `EPERM`. `clone3` fails with `ENOSYS` (its
/// flags sit in memory a filter cannot read), so the C library falls back to
/// `clone`, whose flags are checked.
pub const SECCOMP_POLICY: &str = "\
ERRNO(1) { io_uring_setup, io_uring_enter, io_uring_register, \
mount, umount, pivot_root, chroot, fsopen, fsmount, fsconfig, fspick, move_mount, open_tree, \
unshare, setns, clone { (clone_flags & 0x10000000) != 0 }, \
ptrace, process_vm_readv, process_vm_writev, bpf, perf_event_open, userfaultfd, \
add_key, keyctl, request_key, kexec_load, kexec_file_load, init_module, finit_module, \
delete_module, open_by_handle_at, name_to_handle_at, swapon, swapoff, reboot, acct, \
quotactl, syslog } \
ERRNO(38) { clone3 } \
DEFAULT ALLOW";

/// Where the packages directory is seen inside the jail (on `sys.path`).
pub const JAIL_PACKAGES_DIR: &str = "/usr/lib/python3/dist-packages";

/// The top-level names a packages directory (`SANDBOX_PACKAGES_DIR`) lets
/// code import, sorted: its package directories (with an `__init__.py`) and
/// `.py` modules, without private names (`_...`) and metadata
/// (`*.dist-info`, `bin`, `__pycache__`). Empty when it cannot be read.
pub fn importable_packages(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = BTreeSet::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let module = if path.is_dir() {
            path.join("__init__.py").is_file().then_some(name)
        } else {
            name.strip_suffix(".py")
        };
        if let Some(m) = module {
            if !m.starts_with('_') && !m.contains('.') && !m.contains('-') {
                names.insert(m.to_owned());
            }
        }
    }
    names.into_iter().collect()
}

/// `SANDBOX_CGROUPS`: which cgroup version to use for the jail's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupChoice {
    /// v2 when the unified hierarchy is mounted, else v1 with `memory` and
    /// `pids`; rlimits when neither works (checked with a probe jail).
    Auto,
    V1,
    V2,
    /// No cgroups: rlimits only (degraded).
    Off,
}

/// How the jail's memory and process count are limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitMode {
    /// cgroup v1 `memory` and `pids` controllers (nsjail creates one group
    /// per jail under `NSJAIL` in each hierarchy).
    CgroupV1 { memory_root: PathBuf, memsw: bool },
    /// cgroup v2 (`--use_cgroupv2`).
    CgroupV2,
    /// No cgroup could be used: rlimits sized so that processes × address
    /// space stays within the jail's memory budget. `reason` says why.
    Rlimits { reason: String },
}

impl LimitMode {
    /// `cgroup_v1`, `cgroup_v2` or `rlimits` (the metric label, `/health`).
    pub fn name(&self) -> &'static str {
        match self {
            LimitMode::CgroupV1 { .. } => "cgroup_v1",
            LimitMode::CgroupV2 => "cgroup_v2",
            LimitMode::Rlimits { .. } => "rlimits",
        }
    }

    pub fn degraded(&self) -> bool {
        matches!(self, LimitMode::Rlimits { .. })
    }
}

/// Files and directories bound read-only into the jail, plus symlinks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JailFiles {
    /// (host path, path inside the jail).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// (target, link path inside the jail).
    pub symlinks: Vec<(String, String)>,
    /// Why the minimal set could not be computed (then `/usr` is bound whole).
    pub fallback: Option<String>,
}

/// Everything decided at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSetup {
    pub limits: LimitMode,
    pub files: JailFiles,
}

impl JailSetup {
    /// Detects the limits and computes the files for `config`.
    pub fn detect(config: &SandboxConfig) -> JailSetup {
        let files = jail_files(&config.python_path, config.packages_dir.as_deref());
        let mut setup = JailSetup {
            limits: LimitMode::Rlimits {
                reason: "not checked yet".to_owned(),
            },
            files,
        };
        setup.limits = detect_limits(config, &setup);
        setup
    }

    /// The setup used before detection or in unit tests: no cgroups, `/usr` whole.
    pub fn plain() -> JailSetup {
        JailSetup {
            limits: LimitMode::Rlimits {
                reason: "cgroups not detected".to_owned(),
            },
            files: usr_whole("not computed"),
        }
    }
}

fn usr_whole(why: &str) -> JailFiles {
    JailFiles {
        binds: vec![(PathBuf::from("/usr"), PathBuf::from("/usr"))],
        symlinks: Vec::new(),
        fallback: Some(why.to_owned()),
    }
}

/// The interpreter, its standard library, the packages directory and the
/// shared libraries all of them load (from `ldd`), each bound read-only at
/// its own path; `/usr` whole when that cannot be computed.
pub fn jail_files(python: &Path, packages: Option<&Path>) -> JailFiles {
    match minimal_files(python, packages) {
        Ok(files) => files,
        Err(why) => {
            let mut files = usr_whole(&why);
            if let Some(p) = packages {
                files
                    .binds
                    .push((p.to_owned(), PathBuf::from(JAIL_PACKAGES_DIR)));
            }
            files
        }
    }
}

fn minimal_files(python: &Path, packages: Option<&Path>) -> Result<JailFiles, String> {
    let real = std::fs::canonicalize(python)
        .map_err(|e| format!("cannot resolve {}: {e}", python.display()))?;
    let out = Command::new(&real)
        .args([
            "-I",
            "-S",
            "-c",
            "import os; print(os.path.dirname(os.__file__))",
        ])
        .env_clear()
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", real.display()))?;
    let stdlib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !stdlib.is_dir() {
        return Err(format!(
            "{} did not name its standard library",
            real.display()
        ));
    }
    let mut objects = vec![real.clone()];
    objects.extend(shared_objects(&stdlib.join("lib-dynload")));
    if let Some(p) = packages {
        objects.extend(shared_objects(p));
    }
    let mut libs: BTreeSet<PathBuf> = BTreeSet::new();
    for chunk in objects.chunks(64) {
        let out = Command::new("ldd")
            .args(chunk)
            .env_clear()
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ldd: {e}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let path = Path::new(path);
            if packages.is_some_and(|p| canonical_dir(path).starts_with(p)) {
                continue; // inside the packages directory: bound with it
            }
            libs.insert(canonical_dir(path));
        }
    }
    let mut binds = vec![(real.clone(), real.clone()), (stdlib.clone(), stdlib)];
    for lib in libs {
        binds.push((lib.clone(), lib));
    }
    if let Some(p) = packages {
        binds.push((p.to_owned(), PathBuf::from(JAIL_PACKAGES_DIR)));
    }
    let mut symlinks = Vec::new();
    if python != real {
        symlinks.push((
            real.to_string_lossy().into_owned(),
            python.to_string_lossy().into_owned(),
        ));
    }
    Ok(JailFiles {
        binds,
        symlinks,
        fallback: None,
    })
}

/// `dir/name` with `dir` canonical (`/lib/x86_64-linux-gnu/libz.so.1` →
/// `/usr/lib/x86_64-linux-gnu/libz.so.1`), the name kept as the loader asks for it.
fn canonical_dir(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_owned())
            .join(name),
        _ => path.to_owned(),
    }
}

/// Every `*.so` / `*.so.*` file under `dir`.
fn shared_objects(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".so") || name.contains(".so.") {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// The parent group nsjail's per-jail cgroups go under (in each v1 hierarchy).
pub const CGROUP_PARENT: &str = "NSJAIL";

fn detect_limits(config: &SandboxConfig, setup: &JailSetup) -> LimitMode {
    let root = &config.cgroup_root;
    let v2_here = root.join("cgroup.controllers").exists();
    let v1_here = root.join("memory/memory.limit_in_bytes").exists() && root.join("pids").is_dir();
    let candidates: Vec<LimitMode> = match config.cgroups {
        CgroupChoice::Off => {
            return LimitMode::Rlimits {
                reason: "SANDBOX_CGROUPS=off".to_owned(),
            }
        }
        CgroupChoice::V1 => vec![v1_mode(root)],
        CgroupChoice::V2 => vec![LimitMode::CgroupV2],
        CgroupChoice::Auto => {
            let mut c = Vec::new();
            if v2_here {
                c.push(LimitMode::CgroupV2);
            }
            if v1_here {
                c.push(v1_mode(root));
            }
            c
        }
    };
    if candidates.is_empty() {
        return LimitMode::Rlimits {
            reason: format!(
                "no cgroup v1 memory+pids hierarchy nor cgroup v2 under {}",
                root.display()
            ),
        };
    }
    let mut reasons = Vec::new();
    for mode in candidates {
        if let LimitMode::CgroupV1 { .. } = mode {
            if let Err(e) = make_v1_parents(root) {
                reasons.push(format!("cgroup v1: {e}"));
                continue;
            }
        }
        let trial = JailSetup {
            limits: mode.clone(),
            files: setup.files.clone(),
        };
        match probe(config, &trial) {
            Ok(()) => return mode,
            Err(e) => reasons.push(format!("{}: {e}", mode.name())),
        }
    }
    LimitMode::Rlimits {
        reason: reasons.join("; "),
    }
}

fn v1_mode(root: &Path) -> LimitMode {
    LimitMode::CgroupV1 {
        memory_root: root.join("memory"),
        memsw: root.join("memory/memory.memsw.limit_in_bytes").exists(),
    }
}

fn make_v1_parents(root: &Path) -> Result<(), String> {
    for controller in ["memory", "pids"] {
        let dir = root.join(controller).join(CGROUP_PARENT);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {} ({e}); read-only cgroupfs?", dir.display()))?;
    }
    Ok(())
}

/// Runs `print('ok')` in a jail with `setup`'s limits.
fn probe(config: &SandboxConfig, setup: &JailSetup) -> Result<(), String> {
    let log = tempfile::Builder::new()
        .prefix(crate::executor::LOG_PREFIX)
        .suffix(".log")
        .tempfile_in(&config.log_dir)
        .map_err(|e| format!("log file: {e}"))?;
    let args = crate::executor::jail_args_for(config, setup, 10, config.cpu_secs, None);
    let out = Command::new(&config.nsjail_path)
        .arg("--log")
        .arg(log.path())
        .args(args)
        .args(["-c", "print('ok')"])
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nsjail: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).trim() == "ok" {
        return Ok(());
    }
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[E]") || l.starts_with("[F]") || l.starts_with("[W]"))
        .collect();
    Err(if problems.is_empty() {
        format!("probe jail failed ({})", out.status)
    } else {
        problems.join(" | ")
    })
}

/// The cgroup v1 memory group nsjail made for one session's jail
/// (`NSJAIL/NSJAIL.<pid of the jailed interpreter>`, removed by nsjail when
/// the jail ends): its `oom_kill` count says whether the memory limit killed
/// a process of the session. Found from the nsjail supervisor's child, so
/// the runtime creates and removes no group of its own per session (that
/// cost a mkdir and an rmdir, which waits for an RCU grace period, per task).
#[derive(Debug)]
pub struct SessionCgroup {
    memory_root: PathBuf,
    nsjail_pid: u32,
    /// nsjail's group, once the jailed process is known.
    dir: std::sync::OnceLock<PathBuf>,
}

/// Prefix of the session groups earlier versions created
/// (`NSJAIL/adp-<runtime pid>-<n>`); leftovers are removed at start.
pub const SESSION_CGROUP_PREFIX: &str = "adp-";

impl SessionCgroup {
    /// The group of the jail supervised by nsjail process `nsjail_pid`.
    pub fn of_jail(memory_root: &Path, nsjail_pid: u32) -> SessionCgroup {
        SessionCgroup {
            memory_root: memory_root.to_owned(),
            nsjail_pid,
            dir: std::sync::OnceLock::new(),
        }
    }

    fn dir(&self) -> Option<&PathBuf> {
        if let Some(d) = self.dir.get() {
            return Some(d);
        }
        // nsjail clones the jailed process from its main thread.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.nsjail_pid))
                .ok()?;
        let child: u32 = children.split_whitespace().next()?.parse().ok()?;
        let dir = self
            .memory_root
            .join(CGROUP_PARENT)
            .join(format!("NSJAIL.{child}"));
        if !dir.is_dir() {
            return None;
        }
        Some(self.dir.get_or_init(|| dir))
    }

    /// Processes of the session the memory limit has killed so far (0 while
    /// the jail's group is not there yet: a new group has killed nothing).
    pub fn oom_kills(&self) -> u64 {
        self.dir().map_or(0, |d| oom_kill_count(d))
    }
}

fn oom_kill_count(group: &Path) -> u64 {
    std::fs::read_to_string(group.join("memory.oom_control"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Removes a session group and what nsjail left inside it (its own group
/// stays when nsjail itself was killed). Only empty groups can go.
fn remove_group(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes session groups left by runtimes that are gone (killed before
/// they could clean up). Returns how many went.
pub fn remove_abandoned_groups(memory_root: &Path) -> usize {
    let parent = memory_root.join(CGROUP_PARENT);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SESSION_CGROUP_PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = owner.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            remove_group(&e.path());
            if !e.path().exists() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importable_packages_are_the_packages_and_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for pkg in ["pandas", "numpy", "_private", "numpy.libs"] {
            std::fs::create_dir(d.join(pkg)).expect("dir");
            std::fs::write(d.join(pkg).join("__init__.py"), "").expect("init");
        }
        for dir in ["bin", "__pycache__", "pandas-2.2.3.dist-info"] {
            std::fs::create_dir(d.join(dir)).expect("dir");
        }
        for file in ["six.py", "notes.txt", "_cffi.py"] {
            std::fs::write(d.join(file), "").expect("file");
        }
        assert_eq!(importable_packages(d), ["numpy", "pandas", "six"]);
        assert!(importable_packages(&d.join("missing")).is_empty());
    }

    #[test]
    fn the_minimal_files_hold_the_interpreter_and_its_libraries_only() {
        let files = jail_files(Path::new("/usr/bin/python3"), None);
        assert_eq!(files.fallback, None, "{files:?}");
        let inside: Vec<String> = files
            .binds
            .iter()
            .map(|(_, d)| d.to_string_lossy().into_owned())
            .collect();
        assert!(inside.iter().any(|p| p.starts_with("/usr/bin/python3")));
        assert!(inside.iter().any(|p| p.contains("libc.so")), "{inside:?}");
        assert!(!inside.iter().any(|p| p == "/usr" || p == "/usr/bin"));
        assert!(files.symlinks.iter().any(|(_, l)| l == "/usr/bin/python3"));
    }

    #[test]
    fn the_seccomp_policy_names_the_required_calls() {
        for call in [
            "io_uring_setup",
            "unshare",
            "0x10000000",
            "mount",
            "ptrace",
            "bpf",
            "perf_event_open",
            "add_key",
            "keyctl",
            "kexec_load",
            "init_module",
        ] {
            assert!(SECCOMP_POLICY.contains(call), "{call}");
        }
    }
}

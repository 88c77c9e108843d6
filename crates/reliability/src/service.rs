//! One platform process (`dispatcher`, `sandbox-runtime`) as a child: a clean
//! environment (PATH, HOME and the scenario's variables), JSON logs into one
//! file per start, signals, restarts. Killed (SIGKILL) when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::ChildGuard;

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

/// A restartable child process.
pub struct Service {
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    starts: u32,
    child: Option<ChildGuard>,
    /// Exit codes of earlier runs (None: killed by a signal).
    pub exits: Vec<Option<i32>>,
}

impl Service {
    pub fn new(name: &str, bin: PathBuf, log_dir: &Path, env: Vec<(String, String)>) -> Self {
        Service {
            name: name.to_owned(),
            bin,
            env,
            log_dir: log_dir.to_path_buf(),
            starts: 0,
            child: None,
            exits: Vec::new(),
        }
    }

    /// Sets (or replaces) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the process (a new log file per start).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("{}.{}.log", self.name, self.starts));
        let file = File::create(&log).expect("create log file");
        let err = file.try_clone().expect("clone log file");
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(ChildGuard(child));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// Times this service was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The consumer name the Worker of this process uses (`<host>-<pid>`).
    pub fn consumer(&self) -> Option<String> {
        self.pid().map(|pid| format!("{}-{pid}", hostname()))
    }

    /// True while the process runs; records the exit when it has ended.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.0.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exits.push(status.code());
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Sends a signal (no wait).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            c.signal(sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
            self.exits.push(None);
        }
    }

    /// SIGTERM, then waits up to `within` for the exit; returns the exit code
    /// (None: killed by a signal, or SIGKILLed after `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.signal(SIGTERM);
        self.wait_exit(within)
    }

    /// Waits up to `within` for the process to end by itself; SIGKILLs it
    /// after that. Returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let code = c.wait_exit(within);
        if code.is_none() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
        self.exits.push(code);
        code
    }

    /// Resident set size in KiB (`VmRSS`), while running.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid().and_then(rss_kib)
    }

    /// Every log file of this service, oldest start first.
    pub fn log_files(&self) -> Vec<PathBuf> {
        (1..=self.starts)
            .map(|n| self.log_dir.join(format!("{}.{n}.log", self.name)))
            .collect()
    }

    /// Every JSON log event of every start (non-JSON lines skipped).
    pub fn events(&self) -> Vec<Value> {
        self.log_files()
            .iter()
            .flat_map(|p| read_events(p))
            .collect()
    }

    /// The current start has logged an event: it is past its set-up,
    /// signal handlers included (they are in place before the first event
    /// of `run`), so a SIGTERM now stops it cleanly.
    pub fn started_up(&self) -> bool {
        self.child.is_some()
            && self
                .log_files()
                .pop()
                .is_some_and(|p| !read_events(&p).is_empty())
    }

    /// The last `n` lines of the current log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(path) = self.log_files().pop() else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// JSON log events of one file.
pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `message` of a log event.
pub fn message(event: &Value) -> &str {
    event.get("message").and_then(Value::as_str).unwrap_or("")
}

/// A string field of a log event.
pub fn field<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event.get(name).and_then(Value::as_str)
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Peak resident set size (`VmHWM`) of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The one-letter state of a process (`R`, `S`, `T` stopped, `Z`...).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// This host's name as the platform's consumer names use it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned())
}

/// Processes whose command name is `comm` and whose parent is `ppid`
/// (`None`: any parent).
pub fn processes_named(comm: &str, ppid: Option<u32>) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            if &stat[open + 1..close] != comm {
                return false;
            }
            let parent: Option<u32> = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok());
            ppid.is_none() || parent == ppid
        })
        .collect()
}

/// Polls `cond` every 50 ms until true or `within` passed; true if it held.
pub fn poll(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

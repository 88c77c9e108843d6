//! A stateful session: one jail for a task's whole life, running a small
//! Python driver (`driver.py`, shipped in this crate) that executes each
//! cell in one persistent namespace. Variables, imports and the files in
//! `/tmp` carry over from one step to the next.
//!
//! Protocol (docs/sandbox.md, "Sessions"): the runtime writes
//! `b"<n>\n" + code` on the driver's stdin; the driver answers on its
//! stdout with one header line `R <status> <interrupted> <out_kept>
//! <out_total> <err_kept> <err_total>` followed by the kept bytes of the
//! cell's stdout and stderr. Before any cell runs, the driver moves the
//! protocol to private descriptors and points the cell's descriptors 0, 1
//! and 2 at `/dev/null` and two memfds, so nothing a cell prints can be
//! taken for a frame (a cell that deliberately writes garbage on the
//! protocol descriptor only ends its own session).
//!
//! The step's wall limit sends SIGINT to the interpreter (the driver turns
//! it into `KeyboardInterrupt` inside the cell): when the cell stops within
//! [`INTERRUPT_GRACE`] the session goes on; otherwise the jail is killed and
//! the step ends the session. A session whose interpreter died (memory
//! limit, `os._exit`, a signal) is gone too; the agent starts a fresh one
//! for the next step and says so in that step's observation.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use adp_core::{ErrorType, InfraError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::classify::{classify, classify_cell, jail_memory_verdict, JailLog, RunFacts, Verdict};
use crate::executor::{read_capped, utf8_cut, Captured, Execution, Sandbox};
use crate::limits::{LimitMode, SessionCgroup};

/// The driver's source.
pub const DRIVER: &str = include_str!("driver.py");

/// Run with `python3 -c` before the driver's compiled code (hex of its
/// `marshal` form, the next argument, taken off `sys.argv`).
const DRIVER_LOADER: &str =
    "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))";

/// Compiles the driver with `python` (run on the host: the jail binds the
/// same interpreter) and prints its code object in `marshal`'s form, as hex.
const DRIVER_COMPILER: &str = "import marshal,sys;sys.stdout.write(marshal.dumps(compile(sys.stdin.read(),'<session driver>','exec')).hex())";

/// What follows `python3 -I -S -B -u -c` in a session jail: the loader and
/// the driver compiled once by the jail's interpreter, so no session
/// compiles its source again (about 1 ms of CPU, a tenth of the
/// interpreter's start, measured 2026-12-04); the source itself when the
/// interpreter cannot be run here (a warning says so).
pub fn driver_program(python: &Path) -> Vec<String> {
    match compile_driver(python) {
        Ok(hex) => vec![DRIVER_LOADER.to_owned(), hex],
        Err(e) => {
            tracing::warn!(
                python = %python.display(),
                "could not precompile the session driver ({e}); sessions compile its source at start"
            );
            vec![DRIVER.to_owned()]
        }
    }
}

fn compile_driver(python: &Path) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python)
        .args(["-I", "-S", "-B", "-c", DRIVER_COMPILER])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    // A few KiB: fits the pipe, so writing before reading cannot block.
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(DRIVER.as_bytes())
            .map_err(|e| format!("writing the source: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for it: {e}"))?;
    let hex = String::from_utf8(out.stdout).unwrap_or_default();
    let valid = !hex.is_empty()
        && hex.len().is_multiple_of(2)
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !out.status.success() || !valid {
        return Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(hex)
}

/// How long a cell has to stop after the interrupt before its jail is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// How long a closing session's interpreter has to exit after its stdin closes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes of the driver's own stderr kept (start-up failures).
const DRIVER_STDERR_CAP: usize = 4096;

/// One answer of the driver.
#[derive(Debug)]
struct Frame {
    status: i32,
    interrupted: bool,
    stdout: Captured,
    stderr: Captured,
}

/// The result of one cell.
#[derive(Debug, Clone)]
pub struct CellRun {
    pub execution: Execution,
    /// The session is still usable (its state kept) for the next cell.
    pub alive: bool,
}

/// A running session jail. Dropping it kills the jail (`kill_on_drop`);
/// [`Session::close`] ends it gracefully.
pub struct Session {
    sandbox: Sandbox,
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Result<Frame, String>>,
    reader: JoinHandle<()>,
    driver_stderr: Option<JoinHandle<std::io::Result<Captured>>>,
    log_file: tempfile::NamedTempFile,
    /// nsjail's memory group of the session's jail (cgroup v1): counts OOM kills.
    cgroup: Option<SessionCgroup>,
    cells: u64,
    alive: bool,
    /// When nsjail's time limit ends the jail.
    expires: Instant,
}

impl Sandbox {
    /// Starts a session jail living at most `lifetime` (the task's remaining
    /// time) for at most `cells` cells (bounds the session's CPU time).
    pub fn start_session(&self, lifetime: Duration, cells: u64) -> Result<Session, InfraError> {
        let lifetime_secs = lifetime.as_secs_f64().ceil().max(1.0) as u64 + 2;
        let expires = Instant::now() + Duration::from_secs(lifetime_secs);
        let args: Vec<OsString> = self.session_args(lifetime_secs, cells, None);
        let (mut child, log_file) = self.spawn(args)?;
        let cgroup = match (&self.setup().limits, child.id()) {
            (LimitMode::CgroupV1 { memory_root, .. }, Some(pid)) => {
                Some(SessionCgroup::of_jail(memory_root, pid))
            }
            _ => None,
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let cap = self.config().output_cap;
        let (tx, frames) = mpsc::channel(1);
        let reader = tokio::spawn(read_frames(stdout, cap, tx));
        let driver_stderr = Some(tokio::spawn(read_capped(stderr, DRIVER_STDERR_CAP)));
        Ok(Session {
            sandbox: self.clone(),
            child,
            stdin,
            frames,
            reader,
            driver_stderr,
            log_file,
            cgroup,
            cells: 0,
            alive: true,
            expires,
        })
    }
}

impl Session {
    /// Whether the session can run another cell.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Cells run so far.
    pub fn cells(&self) -> u64 {
        self.cells
    }

    /// How long the jail may still live (its time limit is the task's time
    /// left when it started, plus a margin).
    pub fn time_left(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }

    /// Runs one cell with a wall limit of `wall`. `Err` only when the
    /// sandbox itself failed (the jail could not start). After a result with
    /// `alive == false` the session is finished: drop or close it.
    pub async fn run_cell(&mut self, code: &str, wall: Duration) -> Result<CellRun, InfraError> {
        if !self.alive {
            return Err(InfraError::new("sandbox", "the session has ended"));
        }
        let started = Instant::now();
        self.cells += 1;
        let mut request = format!("{}\n", code.len()).into_bytes();
        request.extend_from_slice(code.as_bytes());
        let sent = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&request).await.is_ok(),
            None => false,
        };
        let limits = self.sandbox.run_limits(wall);
        let oom_before = self.cgroup.as_ref().map_or(0, SessionCgroup::oom_kills);
        if sent {
            match tokio::time::timeout(wall, self.frames.recv()).await {
                Ok(Some(Ok(frame))) => {
                    let mut verdict =
                        classify_cell(frame.status, frame.interrupted, &frame.stderr.text, limits);
                    let killed = self
                        .cgroup
                        .as_ref()
                        .map_or(0, SessionCgroup::oom_kills)
                        .saturating_sub(oom_before);
                    if killed > 0 {
                        verdict = jail_memory_verdict(
                            limits,
                            &format!("the kernel killed {killed} of the cell's processes"),
                        );
                    }
                    return Ok(self.cell_run(frame, verdict, wall, started, true));
                }
                Ok(Some(Err(garbage))) => {
                    self.kill().await;
                    let verdict = Verdict::err(
                        ErrorType::RuntimeError,
                        format!("the session's driver stopped answering in its protocol ({garbage}); the cell may have written to its descriptors"),
                    );
                    return Ok(self.ended(verdict, wall, started));
                }
                Ok(None) => {} // the interpreter is gone: judged below
                Err(_) => return Ok(self.interrupt(wall, started).await),
            }
        }
        // The interpreter died during the cell (or before it): nsjail's log
        // and exit say how, as for a one-shot run.
        let status = match tokio::time::timeout(CLOSE_GRACE, self.child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                self.kill().await;
                None
            }
        };
        self.alive = false;
        let log =
            JailLog::parse(&std::fs::read_to_string(self.log_file.path()).unwrap_or_default());
        let driver_stderr = match self.driver_stderr.take() {
            Some(h) => h.await.ok().and_then(Result::ok).unwrap_or_default(),
            None => Captured::default(),
        };
        // The driver points descriptor 2 at a memfd before any cell runs:
        // whatever reached nsjail's stderr came from a failed start.
        if !driver_stderr.text.trim().is_empty() {
            return Err(InfraError::new(
                "sandbox",
                format!(
                    "the session driver failed to start: {}",
                    driver_stderr.text.trim()
                ),
            ));
        }
        let verdict = classify(RunFacts {
            log: &log,
            nsjail_code: status.and_then(|s| s.code()),
            backstop_fired: false,
            stderr: &driver_stderr.text,
            limits,
        })?;
        let verdict = match verdict.error_type {
            Some(_) => verdict,
            None => Verdict::err(
                ErrorType::RuntimeError,
                "the cell ended the session's interpreter (it exited with status 0)",
            ),
        };
        Ok(self.ended(verdict, wall, started))
    }

    /// The wall limit passed: SIGINT to the interpreter, then the jail if
    /// the cell does not stop within [`INTERRUPT_GRACE`].
    async fn interrupt(&mut self, wall: Duration, started: Instant) -> CellRun {
        let limits = self.sandbox.run_limits(wall);
        if let Some(pid) = self.child.id().and_then(driver_pid) {
            signal(pid, "INT").await;
            if let Ok(Some(Ok(frame))) =
                tokio::time::timeout(INTERRUPT_GRACE, self.frames.recv()).await
            {
                let verdict = classify_cell(frame.status, true, &frame.stderr.text, limits);
                return self.cell_run(frame, verdict, wall, started, true);
            }
        }
        self.kill().await;
        let verdict = Verdict::err(
            ErrorType::Timeout,
            format!(
                "wall time limit of {} s reached; the cell did not stop on the interrupt, so its session was ended",
                limits.wall_secs.round() as u64
            ),
        );
        self.ended(verdict, wall, started)
    }

    fn cell_run(
        &mut self,
        frame: Frame,
        verdict: Verdict,
        wall: Duration,
        started: Instant,
        alive: bool,
    ) -> CellRun {
        CellRun {
            execution: Execution {
                stdout: frame.stdout,
                stderr: frame.stderr,
                verdict,
                wall_limit: wall,
                duration: started.elapsed(),
                notes: Vec::new(),
            },
            alive,
        }
    }

    /// The result of a cell that ended the session (its output is lost).
    fn ended(&mut self, verdict: Verdict, wall: Duration, started: Instant) -> CellRun {
        self.alive = false;
        CellRun {
            execution: Execution {
                stdout: Captured::default(),
                stderr: Captured::default(),
                verdict,
                wall_limit: wall,
                duration: started.elapsed(),
                notes: vec![SESSION_ENDED.to_owned()],
            },
            alive: false,
        }
    }

    /// Kills the jail and reaps nsjail.
    async fn kill(&mut self) {
        self.alive = false;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Ends the session: closes the driver's stdin (it exits, nsjail tears
    /// the jail down and removes its cgroups), kills the jail if that takes
    /// longer than a moment.
    pub async fn close(mut self) {
        self.alive = false;
        drop(self.stdin.take());
        if tokio::time::timeout(CLOSE_GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
        self.reader.abort();
    }
}

/// The note on the step whose cell ended its session.
pub const SESSION_ENDED: &str =
    "this step ended the session: the next step starts a fresh interpreter with an empty /tmp";

/// The note on the first step of a session that replaced a lost one.
pub fn state_lost_note(step: usize) -> String {
    format!("a new session started: the previous one ended at step {step}, so variables, imports and files in /tmp from earlier steps are gone")
}

/// Reads the driver's frames until EOF or a malformed frame.
async fn read_frames(
    stdout: Option<ChildStdout>,
    cap: usize,
    tx: mpsc::Sender<Result<Frame, String>>,
) {
    let Some(stdout) = stdout else { return };
    let mut reader = BufReader::new(stdout);
    loop {
        let frame = match read_frame(&mut reader, cap).await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let bad = frame.is_err();
        if tx.send(frame).await.is_err() || bad {
            return;
        }
    }
}

/// One frame; `None` at EOF.
async fn read_frame(
    reader: &mut BufReader<ChildStdout>,
    cap: usize,
) -> Result<Option<Frame>, String> {
    let mut header = Vec::with_capacity(64);
    let n = (&mut *reader)
        .take(128)
        .read_until(b'\n', &mut header)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&header);
    let fields: Vec<&str> = text.trim_end().split(' ').collect();
    let parse = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("bad header {:?}", text.trim_end()))
    };
    if fields.len() != 7 || fields[0] != "R" || !header.ends_with(b"\n") {
        return Err(format!("bad header {:?}", text.trim_end()));
    }
    let (status, interrupted) = (parse(1)?, parse(2)?);
    let (out_kept, out_total, err_kept, err_total) = (parse(3)?, parse(4)?, parse(5)?, parse(6)?);
    if out_kept > cap as u64 || err_kept > cap as u64 {
        return Err("a frame larger than the output cap".to_owned());
    }
    let mut out = vec![0u8; out_kept as usize];
    let mut err = vec![0u8; err_kept as usize];
    reader
        .read_exact(&mut out)
        .await
        .map_err(|e| format!("reading stdout: {e}"))?;
    reader
        .read_exact(&mut err)
        .await
        .map_err(|e| format!("reading stderr: {e}"))?;
    Ok(Some(Frame {
        status: i32::try_from(status).unwrap_or(1),
        interrupted: interrupted != 0,
        stdout: Captured {
            text: utf8_cut(out),
            total_bytes: out_total.max(out_kept),
        },
        stderr: Captured {
            text: utf8_cut(err),
            total_bytes: err_total.max(err_kept),
        },
    }))
}

/// The host pid of nsjail's child (the jail's interpreter).
fn driver_pid(nsjail: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{nsjail}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .next()
}

/// Sends `SIG<name>` to `pid` (through `/bin/sh`'s `kill`: the runtime
/// has no unsafe code for `kill(2)`; this only happens at a step's wall limit).
async fn signal(pid: u32, name: &str) {
    let shell = Path::new("/bin/sh");
    let _ = tokio::process::Command::new(shell)
        .args(["-c", &format!("kill -s {name} {pid}")])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_precompiled_driver_answers_a_cell_like_its_source() {
        let python = Path::new("/usr/bin/python3");
        let program = driver_program(python);
        assert_eq!(program.len(), 2, "not precompiled: {program:?}");
        assert_eq!(program[0], DRIVER_LOADER);
        for args in [program, vec![DRIVER.to_owned()]] {
            let mut child = std::process::Command::new(python)
                .args(["-I", "-S", "-B", "-u", "-c"])
                .args(&args)
                .args(["65536", "30", ""])
                .env_clear()
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 runs");
            let cell = "x = 6 * 7\nprint(x)\n";
            let request = format!("{}\n{cell}", cell.len());
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), request.as_bytes())
                .expect("request written");
            let out = child.wait_with_output().expect("driver exits at EOF");
            assert!(out.status.success(), "{:?}", out.status);
            assert_eq!(String::from_utf8_lossy(&out.stdout), "R 0 0 3 3 0 0\n42\n");
        }
    }

    #[test]
    fn without_an_interpreter_the_source_is_passed() {
        let program = driver_program(Path::new("/nonexistent/python3"));
        assert_eq!(program, vec![DRIVER.to_owned()]);
    }
}

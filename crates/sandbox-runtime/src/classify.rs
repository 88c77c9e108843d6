//! How a finished jail is judged: nsjail's own log (never shown to the
//! agent) says whether the code ran at all, how it ended and whether the wall
//! time limit killed it; the exit and Python's last stderr line say the rest.
//!
//! | what happened | detected by | result |
//! |---|---|---|
//! | nsjail missing / not executable | spawn fails | [`InfraError`] |
//! | nsjail could not start the code (mount, execve, clone...) | no `exited`/`terminated` line in the log, `[E]`/`[F]` lines | [`InfraError`] |
//! | wall time limit | log `run time >= time limit`, or the runtime's own backstop timer killed nsjail | `timeout` |
//! | CPU time limit | child `terminated with signal: SIGKILL` (RLIMIT_CPU hard limit) or `SIGXCPU`, without the wall-time line | `timeout` |
//! | exit 0 | log `exited with status: 0` | success |
//! | `SyntaxError` / `IndentationError` / `TabError` at compile time | exit 1, last stderr line names it, no `Traceback` header (the module never started) | `compile_error` |
//! | memory limit (RLIMIT_AS) | exit 1 and last line `MemoryError`, or `[Errno 12] Cannot allocate memory` | `runtime_error`, message says memory |
//! | no network in the jail | exit 1, last line `ConnectionRefusedError`, `Network is unreachable`, `gaierror`... | `network_error` |
//! | other exception / non-zero exit | exit ≠ 0, last traceback line | `runtime_error` |
//! | killed by another signal (SIGSEGV, SIGABRT...) | log `terminated with signal` | `runtime_error` |

use adp_core::{ErrorType, InfraError};

/// How the jailed process ended, as nsjail logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildExit {
    /// `exited with status: N`.
    Status(i32),
    /// `terminated with signal: NAME (N)`.
    Signal { number: i32, name: String },
}

/// What nsjail's log says about one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailLog {
    /// The `Executing '...'` line: the child was set up and exec'd.
    pub launched: bool,
    /// `run time >= time limit ... Killing it`.
    pub wall_limit_hit: bool,
    /// How the child ended; `None` when it never ran.
    pub exit: Option<ChildExit>,
    /// Warning/error/fatal lines (`[W]`, `[E]`, `[F]`), prefix stripped.
    pub problems: Vec<String>,
}

impl JailLog {
    /// Parses the text nsjail wrote with `--log`.
    pub fn parse(text: &str) -> Self {
        let mut log = JailLog::default();
        for line in text.lines() {
            let level = line.get(..3).unwrap_or("");
            let message = strip_prefix(line);
            if matches!(level, "[W]" | "[E]" | "[F]") {
                log.problems.push(message.to_owned());
                continue;
            }
            if message.starts_with("Executing '") {
                log.launched = true;
            } else if message.contains("run time >= time limit") {
                log.wall_limit_hit = true;
            } else if let Some(rest) = after(message, "exited with status: ") {
                if let Some(code) = leading_int(rest) {
                    log.exit = Some(ChildExit::Status(code));
                }
            } else if let Some(rest) = after(message, "terminated with signal: ") {
                // "SIGKILL (9), (PIDs left: 0)"
                let name = rest.split_whitespace().next().unwrap_or("").to_owned();
                let number = rest
                    .split_once('(')
                    .and_then(|(_, n)| leading_int(n))
                    .unwrap_or(0);
                log.exit = Some(ChildExit::Signal { number, name });
            }
        }
        log
    }
}

/// `[I][2026-11-25T17:19:52+0000][123] func():42 message` → `message`
/// (the `[pid] func():line` part only appears on some lines).
fn strip_prefix(line: &str) -> &str {
    let mut rest = line;
    for _ in 0..3 {
        match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((_, r)) => rest = r,
            None => break,
        }
    }
    let rest = rest.trim_start();
    // "func():42 message"
    match rest.split_once("():") {
        Some((func, tail)) if !func.contains(' ') => tail
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start(),
        _ => rest,
    }
}

fn after<'a>(s: &'a str, pat: &str) -> Option<&'a str> {
    s.find(pat).map(|i| &s[i + pat.len()..])
}

fn leading_int(s: &str) -> Option<i32> {
    let s = s.trim_start();
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(s.len(), |(i, _)| i);
    s[..end].parse().ok()
}

/// The limits a run was given (for messages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunLimits {
    pub wall_secs: f64,
    pub cpu_secs: u64,
    /// Address space of one process (RLIMIT_AS), MiB.
    pub memory_mb: u64,
    /// A cgroup limits the whole jail's memory (to `memory_mb`): a SIGKILL
    /// that no time limit explains is the kernel's OOM killer.
    pub jail_memory: bool,
}

/// Everything the judgement looks at.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts<'a> {
    pub log: &'a JailLog,
    /// nsjail's own exit code (`None`: killed by a signal).
    pub nsjail_code: Option<i32>,
    /// The runtime's backstop timer killed nsjail.
    pub backstop_fired: bool,
    /// The jailed code's stderr (possibly cut).
    pub stderr: &'a str,
    pub limits: RunLimits,
}

/// The judgement of one run: no error type means the step succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub error_type: Option<ErrorType>,
    pub message: Option<String>,
}

impl Verdict {
    pub(crate) fn ok() -> Self {
        Verdict {
            error_type: None,
            message: None,
        }
    }
    pub(crate) fn err(error_type: ErrorType, message: impl Into<String>) -> Self {
        Verdict {
            error_type: Some(error_type),
            message: Some(message.into()),
        }
    }
    pub fn success(&self) -> bool {
        self.error_type.is_none()
    }
}

/// Judges a finished run; `Err` when the sandbox itself failed.
pub fn classify(f: RunFacts<'_>) -> Result<Verdict, InfraError> {
    let limits = f.limits;
    if f.log.wall_limit_hit || f.backstop_fired {
        return Ok(Verdict::err(
            ErrorType::Timeout,
            format!(
                "wall time limit of {} s reached; the sandbox was killed",
                fmt_secs(limits.wall_secs)
            ),
        ));
    }
    let Some(exit) = &f.log.exit else {
        let detail = if f.log.problems.is_empty() {
            "no log lines".to_owned()
        } else {
            f.log.problems.join("; ")
        };
        return Err(InfraError::new(
            "sandbox",
            format!(
                "nsjail exited with {} without running the code: {detail}",
                f.nsjail_code
                    .map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"))
            ),
        ));
    };
    match exit {
        ChildExit::Status(0) => Ok(Verdict::ok()),
        ChildExit::Status(code) => Ok(classify_exception(*code, f.stderr, limits)),
        ChildExit::Signal { name, .. } if name == "SIGKILL" && limits.jail_memory => Ok(
            jail_memory_verdict(limits, "the kernel killed the interpreter (SIGKILL)"),
        ),
        ChildExit::Signal { name, number } => Ok(match name.as_str() {
            "SIGKILL" | "SIGXCPU" => Verdict::err(
                ErrorType::Timeout,
                format!(
                    "CPU time limit of {} s reached ({name} from RLIMIT_CPU)",
                    limits.cpu_secs
                ),
            ),
            _ => Verdict::err(
                ErrorType::RuntimeError,
                format!("the process was killed by signal {name} ({number})"),
            ),
        }),
    }
}

/// The jail's memory cgroup limit was reached; `what` says what the kernel did.
pub fn jail_memory_verdict(limits: RunLimits, what: &str) -> Verdict {
    Verdict::err(
        ErrorType::RuntimeError,
        format!(
            "memory limit exceeded: the jail's processes together may use {} MiB (cgroup); {what}",
            limits.memory_mb
        ),
    )
}

/// Judges a cell that a session's driver ran to its end: `status` is its
/// exit status (0, 1 for an exception, `sys.exit`'s code), `interrupted` that
/// the runtime's interrupt at the step's wall limit stopped it.
pub fn classify_cell(status: i32, interrupted: bool, stderr: &str, limits: RunLimits) -> Verdict {
    if interrupted {
        return Verdict::err(
            ErrorType::Timeout,
            format!(
                "wall time limit of {} s reached; the cell was interrupted (KeyboardInterrupt) and the session goes on",
                fmt_secs(limits.wall_secs)
            ),
        );
    }
    if status == 0 {
        return Verdict::ok();
    }
    classify_exception(status, stderr, limits)
}

/// Exceptions that mean "there is no network here".
const NETWORK_EXCEPTIONS: [&str; 6] = [
    "ConnectionRefusedError",
    "ConnectionResetError",
    "ConnectionAbortedError",
    "socket.gaierror",
    "urllib.error.URLError",
    "http.client.RemoteDisconnected",
];

fn classify_exception(code: i32, stderr: &str, limits: RunLimits) -> Verdict {
    let last = last_exception_line(stderr);
    let had_traceback = stderr.contains("Traceback (most recent call last):");
    let Some(last) = last else {
        return Verdict::err(
            ErrorType::RuntimeError,
            format!("the process exited with status {code}"),
        );
    };
    let name = exception_name(last);
    let compile_phase = matches!(name, "SyntaxError" | "IndentationError" | "TabError");
    if compile_phase && !had_traceback {
        return Verdict::err(ErrorType::CompileError, compile_message(stderr, last));
    }
    if name == "MemoryError" || last.contains("[Errno 12] Cannot allocate memory") {
        return Verdict::err(
            ErrorType::RuntimeError,
            format!(
                "memory limit exceeded: the sandbox allows {} MiB of address space ({last})",
                limits.memory_mb
            ),
        );
    }
    let unreachable = name == "OSError"
        && (last.contains("[Errno 101]") || last.contains("Network is unreachable"));
    if NETWORK_EXCEPTIONS.contains(&name) || unreachable {
        return Verdict::err(
            ErrorType::NetworkError,
            format!("the sandbox has no network access: {last}"),
        );
    }
    Verdict::err(ErrorType::RuntimeError, last.to_owned())
}

/// The last line of stderr that looks like `Name: message` or `Name`
/// (Python's final traceback line).
fn last_exception_line(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .rev()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('['))
        .find(|l| {
            let name = exception_name(l);
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && name
                    .rsplit('.')
                    .next()
                    .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_uppercase()))
        })
}

fn exception_name(line: &str) -> &str {
    line.split_once(':').map_or(line, |(n, _)| n).trim()
}

/// `SyntaxError: invalid syntax (line 3)`, taking the line number from the
/// `File "<stdin>", line 3` line above it.
fn compile_message(stderr: &str, last: &str) -> String {
    let line_no = stderr
        .lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("File \""))
        .find_map(|l| l.rsplit_once(", line ").map(|(_, n)| n.trim()));
    match line_no {
        Some(n) => format!("{last} (line {n})"),
        None => last.to_owned(),
    }
}

fn fmt_secs(s: f64) -> String {
    if (s - s.round()).abs() < 1e-9 {
        format!("{}", s.round() as i64)
    } else {
        format!("{s:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RunLimits = RunLimits {
        wall_secs: 5.0,
        cpu_secs: 10,
        memory_mb: 512,
        jail_memory: false,
    };

    const OK_LOG: &str = "\
[I][2026-11-25T17:19:52+0000] Mode: STANDALONE_ONCE
[I][2026-11-25T17:19:52+0000] Executing '/usr/bin/python3' for '[STANDALONE MODE]'
[I][2026-11-25T17:19:52+0000] pid=19118 ([STANDALONE MODE]) exited with status: 0, (PIDs left: 0)
";

    fn facts<'a>(log: &'a JailLog, stderr: &'a str) -> RunFacts<'a> {
        RunFacts {
            log,
            nsjail_code: Some(0),
            backstop_fired: false,
            stderr,
            limits: LIMITS,
        }
    }

    #[test]
    fn parses_a_clean_exit() {
        let log = JailLog::parse(OK_LOG);
        assert!(log.launched);
        assert_eq!(log.exit, Some(ChildExit::Status(0)));
        assert!(!log.wall_limit_hit);
        assert_eq!(classify(facts(&log, "")), Ok(Verdict::ok()));
    }

    #[test]
    fn wall_time_kill_is_a_timeout() {
        let log = JailLog::parse(
            "[I][t] Executing '/usr/bin/python3' for '[STANDALONE MODE]'\n\
             [I][t] pid=19258 run time >= time limit (4 >= 4) ([STANDALONE MODE]). Killing it\n\
             [I][t] pid=19258 ([STANDALONE MODE]) terminated with signal: SIGKILL (9), (PIDs left: 0)\n",
        );
        assert!(log.wall_limit_hit);
        assert_eq!(
            log.exit,
            Some(ChildExit::Signal {
                number: 9,
                name: "SIGKILL".into()
            })
        );
        let v = classify(facts(&log, "")).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::Timeout));
        assert!(v.message.expect("msg").contains("wall time limit of 5 s"));
    }

    #[test]
    fn sigkill_without_wall_line_is_the_cpu_limit() {
        let log = JailLog::parse(
            "[I][t] Executing 'x' for 'y'\n[I][t] pid=1 ([STANDALONE MODE]) terminated with signal: SIGKILL (9), (PIDs left: 0)\n",
        );
        let v = classify(facts(&log, "")).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::Timeout));
        assert!(v.message.expect("msg").contains("CPU time limit of 10 s"));
    }

    #[test]
    fn sigkill_with_a_jail_memory_cgroup_is_the_memory_limit() {
        let log = JailLog::parse(
            "[I][t] Executing 'x' for 'y'\n[I][t] pid=1 ([STANDALONE MODE]) terminated with signal: SIGKILL (9), (PIDs left: 0)\n",
        );
        let v = classify(RunFacts {
            limits: RunLimits {
                jail_memory: true,
                ..LIMITS
            },
            ..facts(&log, "")
        })
        .expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::RuntimeError));
        assert!(v.message.expect("msg").contains("memory limit exceeded"));
    }

    #[test]
    fn start_failure_is_infrastructure() {
        let log = JailLog::parse(
            "[E][2026-11-25T17:21:01+0000][1] newProc():232 execve('/usr/bin/nopython') failed: No such file or directory\n\
             [F][2026-11-25T17:21:01+0000][1] runChild():506 Launching child process failed\n",
        );
        assert_eq!(log.exit, None);
        let e = classify(RunFacts {
            nsjail_code: Some(255),
            ..facts(&log, "")
        })
        .expect_err("infra");
        assert_eq!(e.component, "sandbox");
        assert!(
            e.message.contains("execve('/usr/bin/nopython') failed"),
            "{}",
            e.message
        );
        assert!(e.message.contains("code 255"), "{}", e.message);
    }

    fn exit1() -> JailLog {
        JailLog::parse(
            "[I][t] Executing 'x' for 'y'\n[I][t] pid=1 ([STANDALONE MODE]) exited with status: 1, (PIDs left: 0)\n",
        )
    }

    #[test]
    fn syntax_error_without_traceback_is_a_compile_error() {
        let log = exit1();
        let stderr =
            "  File \"<stdin>\", line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::CompileError));
        assert_eq!(
            v.message.as_deref(),
            Some("SyntaxError: invalid syntax (line 1)")
        );
        let stderr =
            "  File \"<stdin>\", line 2\n    print(1)\nIndentationError: unexpected indent\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::CompileError));
    }

    #[test]
    fn syntax_error_raised_at_run_time_is_a_runtime_error() {
        let log = exit1();
        let stderr = "Traceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\n  File \"<string>\", line 1\n    1 +\n       ^\nSyntaxError: invalid syntax\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::RuntimeError));
    }

    #[test]
    fn memory_error_says_memory() {
        let log = exit1();
        let stderr = "Traceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\nMemoryError\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::RuntimeError));
        let m = v.message.expect("msg");
        assert!(m.contains("memory limit") && m.contains("512 MiB"), "{m}");
    }

    #[test]
    fn refused_connection_is_a_network_error() {
        let log = exit1();
        let stderr = "Traceback (most recent call last):\n  File \"/usr/lib/python3.11/socket.py\", line 836, in create_connection\n    sock.connect(sa)\nConnectionRefusedError: [Errno 111] Connection refused\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::NetworkError));
        let stderr =
            "Traceback (most recent call last):\nOSError: [Errno 101] Network is unreachable\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::NetworkError));
    }

    #[test]
    fn other_exceptions_are_runtime_errors_with_the_last_line() {
        let log = exit1();
        let stderr = "Traceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\nZeroDivisionError: division by zero\n";
        let v = classify(facts(&log, stderr)).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::RuntimeError));
        assert_eq!(
            v.message.as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        let v = classify(facts(&log, "")).expect("verdict");
        assert_eq!(
            v.message.as_deref(),
            Some("the process exited with status 1")
        );
    }

    #[test]
    fn other_signals_are_runtime_errors() {
        let log = JailLog::parse(
            "[I][t] pid=1 ([STANDALONE MODE]) terminated with signal: SIGSEGV (11), (PIDs left: 0)\n",
        );
        let v = classify(facts(&log, "")).expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::RuntimeError));
        assert!(v.message.expect("msg").contains("SIGSEGV (11)"));
    }

    #[test]
    fn backstop_kill_is_a_timeout_even_without_log() {
        let log = JailLog::default();
        let v = classify(RunFacts {
            backstop_fired: true,
            nsjail_code: None,
            ..facts(&log, "")
        })
        .expect("verdict");
        assert_eq!(v.error_type, Some(ErrorType::Timeout));
    }
}

//! The `tests` check of a code task (`constraints.tests`): Python test code
//! run after the agent's last step, against the state the agent built.
//!
//! * **In the task's session** ([`run_tests_in_session`]): when the task ran
//!   in a stateful session that is still alive at the end, the tests run as
//!   one more cell of that session, in the agent's own namespace and `/tmp`
//!   (the real state: what the agent computed, not a re-computation).
//! * **Replayed** ([`run_tests`]): in oneshot mode (each step was its own
//!   jail, no interpreter is left), or when the session was lost (a cell
//!   ended it, or too little of its lifetime is left), one more one-shot jail
//!   rebuilds the state: the harness replays the code cells the agent ran, in
//!   order, in one namespace (their output discarded; a cell that raises is
//!   noted and the replay goes on; cells that hit the time limit are left
//!   out: they would again).
//!
//! Either way the harness sets `final_answer` to the trajectory's
//! `final_result`, runs the test source in that namespace, then calls every
//! `test_*` function it defined. Passed means: the source ran and no test
//! function raised. A failing or broken test — or tests that end the
//! session or run out of time — is a score of 0 with its traceback; only a
//! jail that cannot start is an infrastructure error.
//!
//! The result comes back as one line on stdout, tagged with a random
//! nonce; everything else the tests printed is the check's log. The tests
//! share the agent's namespace by design, so code written to fool them can:
//! this is a training label, not a security boundary (the jail is that).

use std::time::Duration;

use adp_core::reward::Outcome;
use adp_core::{ErrorType, InfraError, Trajectory};
use serde::Deserialize;
use serde_json::Value;

use crate::executor::{Execution, Sandbox};
use crate::session::Session;

/// Longest the test jail may run, whatever the number of cells.
pub const MAX_TESTS_WALL: Duration = Duration::from_secs(120);

/// Most characters of the log kept per run.
const MAX_LOG: usize = 16 * 1024;

/// Tag of the result line (followed by the run's nonce and the JSON).
const RESULT_TAG: &str = "__ADP_TESTS_RESULT__";

const HARNESS: &str = r#"
import contextlib as _adp_cl, io as _adp_io, json as _adp_json, os as _adp_os, traceback as _adp_tb

def _adp_run(cells, tests, answer, tag, g=None):
    if g is None:
        g = {"__name__": "__main__", "__builtins__": __builtins__}
    replay = []
    for i, cell in enumerate(cells):
        sink = _adp_io.StringIO()
        try:
            with _adp_cl.redirect_stdout(sink), _adp_cl.redirect_stderr(sink):
                exec(compile(cell, "<cell %d>" % i, "exec"), g)
        except BaseException as e:
            replay.append("cell %d raised %s: %s" % (i, type(e).__name__, e))
    g["final_answer"] = answer
    result = {"replay_errors": replay, "passed": [], "failed": []}
    try:
        exec(compile(tests, "<tests>", "exec"), g)
    except BaseException:
        result["failed"].append({"name": "<tests>", "traceback": _adp_tb.format_exc()})
    else:
        for name, fn in list(g.items()):
            code = getattr(fn, "__code__", None)
            if not (name.startswith("test") and code is not None
                    and code.co_filename == "<tests>" and code.co_argcount == 0):
                continue
            try:
                fn()
                result["passed"].append(name)
            except BaseException:
                result["failed"].append({"name": name, "traceback": _adp_tb.format_exc()})
    _adp_os.write(1, ("\n" + tag + " " + _adp_json.dumps(result) + "\n").encode())

"#;

/// What the harness reports.
#[derive(Debug, Deserialize)]
struct Report {
    replay_errors: Vec<String>,
    passed: Vec<String>,
    failed: Vec<Failure>,
}

#[derive(Debug, Deserialize)]
struct Failure {
    name: String,
    traceback: String,
}

/// The code cells the agent ran, in order, without those that timed out.
pub fn cells(t: &Trajectory) -> Vec<String> {
    t.steps
        .iter()
        .filter(|s| s.error_type != Some(ErrorType::Timeout))
        .filter_map(|s| s.action_params.get("code").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// The program run in the jail: the harness, then the call with the cells,
/// the tests and the answer as Python literals (a JSON string or array of
/// strings is one).
pub fn program(cells: &[String], tests: &str, answer: &str, tag: &str) -> String {
    format!(
        "{HARNESS}_adp_run({}, {}, {}, {})\n",
        lit(cells),
        lit(tests),
        lit(answer),
        lit(tag)
    )
}

/// The cell run in the task's own session: the harness, then the call with
/// no cells to replay and the session's namespace (`globals()` of a cell).
pub fn session_program(tests: &str, answer: &str, tag: &str) -> String {
    format!(
        "{HARNESS}_adp_run([], {}, {}, {}, globals())\n",
        lit(tests),
        lit(answer),
        lit(tag)
    )
}

/// `v` as JSON, which for strings and lists of strings is a Python literal.
fn lit<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "None".to_owned())
}

/// The wall limit of the test jail: a step's limit per cell plus one for
/// the tests, at most [`MAX_TESTS_WALL`].
pub fn wall(step: Duration, cells: usize) -> Duration {
    (step * (cells as u32 + 1)).min(MAX_TESTS_WALL).max(step)
}

/// Runs `tests` against the state `t`'s cells build. `Err` only when the
/// jail could not run.
pub async fn run_tests(
    sandbox: &Sandbox,
    t: &Trajectory,
    tests: &str,
) -> Result<Outcome, InfraError> {
    let cells = cells(t);
    // A nonce: stray output cannot pass for the result (it is no secret
    // from the agent's code, which runs in the same process).
    let tag = format!("{RESULT_TAG}{}", uuid::Uuid::new_v4().simple());
    let code = program(&cells, tests, &t.final_result, &tag);
    let wall = wall(sandbox.config().step_timeout, cells.len());
    let exec = sandbox.run(&code, wall).await?;
    Ok(judge(
        &exec,
        &tag,
        &format!("{} cell(s) replayed", cells.len()),
    ))
}

/// Runs `tests` as one more cell of the task's live `session`, with a
/// step's wall limit. `Err` only when the session cannot take a cell.
pub async fn run_tests_in_session(
    session: &mut Session,
    sandbox: &Sandbox,
    t: &Trajectory,
    tests: &str,
) -> Result<Outcome, InfraError> {
    let tag = format!("{RESULT_TAG}{}", uuid::Uuid::new_v4().simple());
    let code = session_program(tests, &t.final_result, &tag);
    let run = session
        .run_cell(&code, sandbox.config().step_timeout)
        .await?;
    Ok(judge(&run.execution, &tag, IN_SESSION))
}

/// How the detail names a run in the task's session.
pub const IN_SESSION: &str = "run in the task's session";

/// Reads the harness's report from a finished run; `how` says where the
/// state came from (the session, or the cells replayed).
fn judge(exec: &Execution, tag: &str, how: &str) -> Outcome {
    let stdout = &exec.stdout.text;
    let report = stdout
        .rfind(tag)
        .map(|i| &stdout[i + tag.len()..])
        .and_then(|rest| rest.lines().next())
        .and_then(|json| serde_json::from_str::<Report>(json.trim()).ok());
    let printed = match stdout.rfind(tag) {
        Some(i) => stdout[..i].trim_end(),
        None => stdout.trim_end(),
    };
    let mut log = String::new();
    if !printed.is_empty() {
        log.push_str(printed);
        log.push('\n');
    }
    if !exec.stderr.text.is_empty() {
        log.push_str("[stderr]\n");
        log.push_str(&exec.stderr.text);
    }
    let Some(report) = report else {
        let why = exec
            .verdict
            .message
            .clone()
            .unwrap_or_else(|| "the test harness did not report".to_owned());
        let lines: Vec<&str> = exec.stderr.text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        return Outcome {
            score: 0.0,
            detail: format!("the tests did not finish ({how}): {why}\n{tail}")
                .trim_end()
                .to_owned(),
            log: Some(cut(&log)),
        };
    };
    for f in &report.failed {
        log.push_str(&format!("FAILED {}\n{}", f.name, f.traceback));
    }
    for e in &report.replay_errors {
        log.push_str(&format!("[replay] {e}\n"));
    }
    let replayed = format!(
        "{how}{}",
        match report.replay_errors.len() {
            0 => String::new(),
            n => format!(", {n} raised"),
        }
    );
    let outcome = match report.failed.first() {
        None => Outcome::pass(format!(
            "tests passed ({} test function(s); {replayed})",
            report.passed.len()
        )),
        Some(first) => Outcome::fail(format!(
            "{} of {} test(s) failed ({replayed}); {}:\n{}",
            report.failed.len(),
            report.failed.len() + report.passed.len(),
            first.name,
            first.traceback.trim_end()
        )),
    };
    Outcome {
        log: (!log.is_empty()).then(|| cut(&log)),
        ..outcome
    }
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_LOG) {
        Some((i, _)) => format!("{}\n[... log cut at {MAX_LOG} characters ...]\n", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_embeds_its_inputs_as_python_literals() {
        let cells = vec!["x = 'a\"b'\n".to_owned(), "y = \"\\u00e9\"".to_owned()];
        let p = program(&cells, "assert x", "l'été\n", "TAG1");
        assert!(p.ends_with(
            "_adp_run([\"x = 'a\\\"b'\\n\",\"y = \\\"\\\\u00e9\\\"\"], \"assert x\", \"l'été\\n\", \"TAG1\")\n"
        ), "{p}");
    }

    #[test]
    fn the_wall_grows_with_the_cells_up_to_a_cap() {
        let s = Duration::from_secs(10);
        assert_eq!(wall(s, 0), s);
        assert_eq!(wall(s, 2), Duration::from_secs(30));
        assert_eq!(wall(s, 50), MAX_TESTS_WALL);
        assert_eq!(wall(Duration::from_secs(300), 1), Duration::from_secs(300));
    }
}

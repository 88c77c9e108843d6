//! Checks and rewards of code tasks, through Redis, the real nsjail and a
//! scripted OpenAI-compatible model on 127.0.0.1: a `tests` block reads a
//! variable the agent defined in an earlier step; a failing test is a score
//! of 0 with its traceback, not an infrastructure failure.

mod common;

use adp_core::TaskType;
use common::{task, Harness};
use serde_json::json;
use test_support::fake_llm::{FakeLlm, Reply};

#[tokio::test(flavor = "multi_thread")]
async fn tests_see_the_state_of_earlier_steps_and_the_final_answer() {
    // Step 1 defines `x`; step 2 does something else; then the answer.
    let llm = FakeLlm::start_fn(|req| match req.messages().len() {
        2 => Reply::text("```python\nx = 6 * 7\nprint('x is set')\n```"),
        4 => Reply::text("```python\nprint('checking')\n```"),
        _ => Reply::text("42"),
    })
    .await;
    let h = Harness::start(&[
        "--llm-base-url",
        &llm.url(),
        "--llm-model",
        "test-model",
        // The script answers in text (code blocks), not with tool calls.
        "--llm-tool-mode",
        "text",
        "--cache-mode",
        "off",
    ])
    .await;
    let passing = task(
        "tests_pass",
        TaskType::Code,
        "Compute six times seven into x",
        json!({
            "expected_answer": "42",
            "tests": "assert final_answer == '42'\ndef test_x():\n    print('x =', x)\n    assert x == 6 * 7\n",
        }),
    );
    let failing = task(
        "tests_fail",
        TaskType::Code,
        "Compute six times seven into x, then some",
        json!({
            "expected_answer": {"value": "42", "match": "exact"},
            "tests": "def test_x():\n    assert x == 41, 'x is %r' % x\n",
        }),
    );
    h.enqueue(&passing);
    h.enqueue(&failing);

    let t = h.trajectory("tests_pass").await;
    assert!(t.success, "{t:#?}");
    assert_eq!(t.reward, Some(1.0));
    let names: Vec<&str> = t.reward_breakdown.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["answer", "tests"]);
    assert!(
        t.reward_breakdown[1].detail.contains("1 test function"),
        "{:?}",
        t.reward_breakdown[1]
    );
    // The tests' output is the check's log.
    assert_eq!(t.metadata["checks_log"][0]["name"], "tests");
    assert!(
        t.metadata["checks_log"][0]["log"]
            .as_str()
            .is_some_and(|l| l.contains("x = 42")),
        "{:#?}",
        t.metadata
    );

    let t = h.trajectory("tests_fail").await;
    assert!(!t.success);
    assert_eq!(
        t.error_type, None,
        "a failing test is not an error of the run"
    );
    assert_eq!(t.reward, Some(0.5), "{:#?}", t.reward_breakdown);
    let tests = &t.reward_breakdown[1];
    assert_eq!(tests.score, 0.0);
    assert!(
        tests.detail.contains("Traceback") && tests.detail.contains("x is 42"),
        "{tests:?}"
    );
    assert!(t
        .error_message
        .as_deref()
        .is_some_and(|m| m.starts_with("check tests failed")));
    h.stop().await;
}

/// A model that, in text mode, runs `code` for the task whose description
/// contains a key of `scripts`, then answers with what its first step
/// printed after `token ` (so the answer is something only the step's own
/// run knew).
fn session_model(
    scripts: &'static [(&'static str, &'static [&'static str])],
) -> impl Fn(&test_support::fake_llm::RecordedRequest) -> Reply + Send + Sync {
    move |req| {
        let msgs = req.messages();
        let user = msgs[1]["content"].as_str().unwrap_or_default().to_owned();
        let (_, cells) = scripts
            .iter()
            .find(|(key, _)| user.contains(key))
            .expect("a scripted task");
        let step = (msgs.len() - 2) / 2;
        match cells.get(step) {
            Some(code) => Reply::text(format!("```python\n{code}\n```")),
            None => {
                let first = msgs[3]["content"].as_str().unwrap_or_default();
                let token = first
                    .split("token ")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .unwrap_or("none");
                Reply::text(token.to_owned())
            }
        }
    }
}

/// Step 0 defines `x` and a random `token` (no replay can make the same
/// one); the model answers with the token it saw printed.
const DEFINE: &str = "import os\nx = 6 * 7\ntoken = os.urandom(8).hex()\nprint('token', token)";
/// Tests that read both variables: `x` is rebuilt by a replay, `token` is
/// right only in the agent's own interpreter.
const TESTS: &str = "def test_x():\n    assert x == 42, x\n\ndef test_token():\n    assert token == final_answer, (token, final_answer)\n";

#[tokio::test(flavor = "multi_thread")]
async fn stateful_tests_run_in_the_tasks_session_and_replay_when_it_is_lost() {
    static SCRIPTS: [(&str, &[&str]); 2] = [
        ("session alive", &[DEFINE, "print('x is', x)"]),
        (
            "session lost",
            &[
                DEFINE,
                // Ignores the interrupt: the jail is killed, the session lost.
                "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)",
            ],
        ),
    ];
    let llm = FakeLlm::start_fn(session_model(&SCRIPTS)).await;
    let h = Harness::start(&[
        "--llm-base-url",
        &llm.url(),
        "--llm-model",
        "test-model",
        "--llm-tool-mode",
        "text",
        "--cache-mode",
        "off",
        "--sandbox-session",
        "stateful",
        "--sandbox-step-timeout-secs",
        "3",
    ])
    .await;
    let checks = json!({"tests": TESTS});
    h.enqueue(&task(
        "alive",
        TaskType::Code,
        "session alive",
        checks.clone(),
    ));
    h.enqueue(&task("lost", TaskType::Code, "session lost", checks));

    // The tests ran as one more cell of the agent's own interpreter: they
    // see the very token the agent drew.
    let t = h.trajectory("alive").await;
    assert!(t.success, "{t:#?}");
    assert_eq!(t.steps.len(), 2);
    assert_eq!(t.metadata["session"]["sessions"], 1);
    let tests = &t.reward_breakdown[0];
    assert_eq!(
        (tests.name.as_str(), tests.score),
        ("tests", 1.0),
        "{tests:?}"
    );
    assert!(
        tests
            .detail
            .contains("2 test function(s); run in the task's session"),
        "{tests:?}"
    );

    // Step 1 ended the session: the tests fall back to a replay of the
    // cells that did not time out (step 0), which rebuilds `x` but draws
    // another token. A failing test is a score of 0, not an infra failure.
    let t = h.trajectory("lost").await;
    assert_eq!(t.steps[1].error_type, Some(adp_core::ErrorType::Timeout));
    assert!(!t.success);
    let tests = t
        .reward_breakdown
        .iter()
        .find(|i| i.name == "tests")
        .expect("tests check");
    assert_eq!(tests.score, 0.0);
    assert!(
        tests
            .detail
            .contains("1 of 2 test(s) failed (1 cell(s) replayed); test_token"),
        "{tests:?}"
    );
    assert!(tests.detail.contains("Traceback"), "{tests:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oneshot_tests_replay_the_cells() {
    static SCRIPTS: [(&str, &[&str]); 1] = [("oneshot", &[DEFINE, "print('checking')"])];
    let llm = FakeLlm::start_fn(session_model(&SCRIPTS)).await;
    let h = Harness::start(&[
        "--llm-base-url",
        &llm.url(),
        "--llm-model",
        "test-model",
        "--llm-tool-mode",
        "text",
        "--cache-mode",
        "off",
        "--sandbox-session",
        "oneshot",
    ])
    .await;
    h.enqueue(&task(
        "oneshot",
        TaskType::Code,
        "oneshot",
        json!({"tests": "def test_x():\n    assert x == 42, x\n"}),
    ));
    // No interpreter outlives a oneshot step: the replay rebuilds `x` from
    // the agent's earlier step.
    let t = h.trajectory("oneshot").await;
    assert!(t.success, "{t:#?}");
    assert_eq!(t.metadata["session"]["mode"], "oneshot");
    let tests = &t.reward_breakdown[0];
    assert_eq!(tests.score, 1.0, "{tests:?}");
    assert!(
        tests
            .detail
            .contains("1 test function(s); 2 cell(s) replayed"),
        "{tests:?}"
    );
    h.stop().await;
}

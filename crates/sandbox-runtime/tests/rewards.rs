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

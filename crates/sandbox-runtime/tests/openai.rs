//! The `openai` policy against a scripted OpenAI-compatible server on
//! 127.0.0.1 (real HTTP), through Redis and the real sandbox; and the plan
//! cache (a hit re-executes the code and costs no LLM call).

mod common;

use adp_core::{ErrorType, TaskType};
use common::{observation, task, Harness};
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Reply};
use test_support::free_port;

/// The runtime with the openai policy on `url`, and `extra` arguments.
async fn start_with_llm(url: &str, extra: &[&str]) -> Harness {
    let mut args = vec![
        "--llm-base-url",
        url,
        "--llm-model",
        "test-model",
        "--llm-api-key",
        "k-test",
        "--llm-retry-backoff-ms",
        "10",
    ];
    args.extend_from_slice(extra);
    Harness::start(&args).await
}

/// A model that answers the task with `code`, then with "done" once it has
/// seen the result.
async fn code_then_done(code: &'static str) -> FakeLlm {
    FakeLlm::start_fn(move |req| {
        if req.messages().len() > 2 {
            Reply::text("done")
        } else {
            Reply::text(code)
        }
    })
    .await
}

fn roles(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_step_loop_records_the_conversation() {
    let llm = FakeLlm::start(vec![
        Reply::text("First I compute the product.\n```python\nprint(6 * 7)\n```"),
        Reply::text(
            "Now check it.\n```python\nx = 42\nprint(x == 6 * 7, 1 / 0 if False else 'ok')\n```",
        ),
        Reply::text("The answer is 42."),
    ])
    .await;
    let h = start_with_llm(&llm.url(), &[]).await;
    let t = h
        .run(&task(
            "llm_multi",
            TaskType::Reasoning,
            "What is six times seven?",
            json!({"expected_output": "True"}),
        ))
        .await;
    assert!(t.success, "{t:?}");
    assert_eq!(t.final_result, "The answer is 42.");
    assert_eq!(t.steps.len(), 2);
    assert_eq!(observation(&t, 0), "42\n");
    assert_eq!(observation(&t, 1), "True ok\n");
    assert_eq!(
        t.steps[1].action_params["code"],
        "x = 42\nprint(x == 6 * 7, 1 / 0 if False else 'ok')\n"
    );
    assert_eq!(t.metadata["policy"], "openai");
    assert_eq!(t.metadata["cache_hit"], false);
    assert_eq!(t.metadata["llm_calls"], 3);
    let messages = &t.metadata["messages"];
    assert_eq!(
        roles(messages),
        [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    assert!(messages[1]["content"]
        .as_str()
        .unwrap_or("")
        .contains("What is six times seven?"));
    assert!(messages[3]["content"]
        .as_str()
        .unwrap_or("")
        .contains("42\n"));
    assert_eq!(messages[6]["content"], "The answer is 42.");

    // What the server saw: the growing conversation, the model, the key.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].messages().len(), 2);
    assert_eq!(reqs[2].messages().len(), 6);
    assert_eq!(reqs[2].body["model"], "test-model");
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer k-test"));
    assert_eq!(
        reqs[2].messages(),
        messages.as_array().expect("array")[..6].to_vec()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_steps_go_back_to_the_model() {
    let llm = FakeLlm::start(vec![
        Reply::text("```python\nprint(1 / 0)\n```"),
        Reply::text("```python\nprint(1 / 1)\n```"),
        Reply::text("It is 1.0"),
    ])
    .await;
    let h = start_with_llm(&llm.url(), &[]).await;
    let t = h
        .run(&task("llm_fix", TaskType::Code, "divide", json!({})))
        .await;
    assert!(t.success, "{t:?}");
    assert_eq!(t.steps[0].error_type, Some(ErrorType::RuntimeError));
    let fed_back = llm.requests()[1].messages()[3]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(fed_back.contains("failed with runtime_error"), "{fed_back}");
    assert!(fed_back.contains("ZeroDivisionError"), "{fed_back}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_rate_limits_are_retried() {
    let llm = FakeLlm::start(vec![
        Reply::Status(500),
        Reply::RetryAfter(429, 0),
        Reply::Status(503),
        Reply::text("```python\nprint('pi', 355 / 113)\n```"),
        Reply::text("About 3.14159."),
    ])
    .await;
    let h = start_with_llm(&llm.url(), &[]).await;
    let t = h
        .run(&task(
            "llm_retry",
            TaskType::Code,
            "approximate pi",
            json!({}),
        ))
        .await;
    assert!(t.success, "{t:?}");
    assert_eq!(t.final_result, "About 3.14159.");
    assert_eq!(llm.request_count(), 5);
    assert_eq!(
        t.metadata["attempt"], 1,
        "retried inside the client, not redelivered"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_endpoint_ends_in_system_error_after_max_deliveries() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let h = start_with_llm(
        &url,
        &[
            "--llm-retries",
            "1",
            "--max-deliveries",
            "3",
            "--retry-backoff-ms",
            "20",
        ],
    )
    .await;
    let t = h
        .run(&task("llm_down", TaskType::Code, "anything", json!({})))
        .await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::SystemError));
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("llm failure") && msg.contains("unreachable"),
        "{msg}"
    );
    let errors = t.metadata["infra_errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|e| e["component"] == "llm"));
    assert!(
        t.steps.is_empty(),
        "never silently swapped for another policy"
    );
    // The trajectory is written first, then the entry is moved to tasks:dead.
    common::wait_dead_letters(&h.redis, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hit_re_executes_without_llm_calls() {
    let llm = FakeLlm::start(vec![
        Reply::text("```python\nimport time\nprint(sum(range(10)))\n```"),
        Reply::text("The sum is 45."),
    ])
    .await;
    let h = start_with_llm(&llm.url(), &[]).await;
    let description = "Add the numbers below ten";
    let first = h
        .run(&task("cache_1", TaskType::Code, description, json!({})))
        .await;
    assert!(first.success, "{first:?}");
    assert_eq!(first.metadata["cache_hit"], false);
    assert_eq!(llm.request_count(), 2);

    // Same description, different case and spacing: the same cache key.
    let second = h
        .run(&task(
            "cache_2",
            TaskType::Code,
            "  add the numbers below TEN ",
            json!({}),
        ))
        .await;
    assert!(second.success, "{second:?}");
    assert_eq!(second.metadata["cache_hit"], true);
    assert_eq!(llm.request_count(), 2, "a hit costs no LLM call");
    assert_eq!(second.steps.len(), 1);
    assert_eq!(observation(&second, 0), "45\n");
    assert!(
        second.steps[0].timestamp > first.steps[0].timestamp,
        "executed again"
    );
    assert_eq!(second.final_result, "The sum is 45.");
    assert_eq!(second.metadata["policy"], "openai");
    assert_eq!(
        roles(&second.metadata["messages"]),
        ["system", "user", "assistant", "user", "assistant"]
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("cache_hits_total{cache_type=\"code\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cache_misses_total{cache_type=\"code\"} 1"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_runs_are_not_cached_and_cache_off_disables_it() {
    let llm = code_then_done("```python\nraise SystemExit(3)\n```").await;
    let h = start_with_llm(&llm.url(), &[]).await;
    let a = h
        .run(&task("fail_1", TaskType::Code, "exit three", json!({})))
        .await;
    assert!(!a.success);
    let b = h
        .run(&task("fail_2", TaskType::Code, "exit three", json!({})))
        .await;
    assert_eq!(b.metadata["cache_hit"], false, "failed runs are not cached");
    assert_eq!(llm.request_count(), 4);
    h.stop().await;

    let llm = code_then_done("```python\nprint('ok')\n```").await;
    let h = start_with_llm(&llm.url(), &["--cache-mode", "off"]).await;
    for id in ["off_1", "off_2"] {
        let t = h.run(&task(id, TaskType::Code, "say ok", json!({}))).await;
        assert!(t.success, "{t:?}");
        assert_eq!(t.metadata["cache_hit"], false);
    }
    assert_eq!(llm.request_count(), 4);
    h.stop().await;
}

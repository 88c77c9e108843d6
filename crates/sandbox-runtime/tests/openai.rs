//! The `openai` policy against a scripted OpenAI-compatible server on
//! 127.0.0.1 (real HTTP), through Redis and the real sandbox: native tool
//! calls (default) and text mode, every call recorded as sent (compared with
//! the bytes the server logged), odd replies; and the plan cache (a hit
//! re-executes the code and costs no LLM call).

mod common;

use adp_core::llm_record;
use adp_core::{ErrorType, TaskType, Trajectory};
use common::{observation, task, Harness};
use serde_json::{json, Value};
use test_support::fake_llm::{Completion, FakeLlm, Reply};
use test_support::free_port;

/// The runtime with the openai policy in text mode on `url`, and `extra` arguments.
async fn start_text_mode(url: &str, extra: &[&str]) -> Harness {
    let mut args = vec!["--llm-tool-mode", "text"];
    args.extend_from_slice(extra);
    start_with_llm(url, &args).await
}

/// Asserts that `t`'s `metadata.llm_calls` rebuild every request `llm`
/// received, byte for byte, and returns the records.
fn assert_calls_as_sent(t: &Trajectory, llm: &FakeLlm) -> Vec<llm_record::LlmCall> {
    let calls = llm_record::from_metadata(&t.metadata).expect("valid llm_calls");
    let reqs = llm.requests();
    assert_eq!(calls.len(), reqs.len(), "one record per request");
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&llm_record::request_body(&calls, i)),
            String::from_utf8_lossy(&r.raw),
            "call {i} as sent"
        );
        assert_eq!(Value::Object(llm_record::request_value(&calls, i)), r.body);
    }
    calls
}

/// The runtime with the openai policy (native tool calls) on `url`, and `extra` arguments.
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
            Reply::tool_call("python", json!({ "code": code }))
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
    let h = start_text_mode(&llm.url(), &[]).await;
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
    assert_eq!(t.metadata["model"], "test-model");
    let calls = assert_calls_as_sent(&t, &llm);
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| !c.request.contains_key("tools")));
    assert_eq!(
        calls.iter().map(|c| c.step_id).collect::<Vec<_>>(),
        [Some(0), Some(1), None]
    );
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
        Reply::tool_call("python", json!({"code": "print(1 / 0)"})),
        Reply::tool_call("python", json!({"code": "print(1 / 1)"})),
        Reply::text("It is 1.0"),
    ])
    .await;
    let h = start_with_llm(&llm.url(), &[]).await;
    let t = h
        .run(&task("llm_fix", TaskType::Code, "divide", json!({})))
        .await;
    assert!(t.success, "{t:?}");
    assert_eq!(t.steps[0].error_type, Some(ErrorType::RuntimeError));
    let fed_back = &llm.requests()[1].messages()[3];
    assert_eq!(fed_back["role"], "tool");
    assert_eq!(fed_back["tool_call_id"], "call_1_0");
    let text = fed_back["content"].as_str().unwrap_or("");
    assert!(text.contains("failed with runtime_error"), "{text}");
    assert!(text.contains("ZeroDivisionError"), "{text}");
    assert_eq!(
        t.final_result, "It is 1.0",
        "a reply without a tool call is the answer"
    );
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
    let h = start_text_mode(&llm.url(), &[]).await;
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
            "--infra-retry-window-secs",
            "0",
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
        Reply::tool_call(
            "python",
            json!({"code": "import time\nprint(sum(range(10)))"}),
        ),
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
    let llm = code_then_done("raise SystemExit(3)").await;
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

    let llm = code_then_done("print('ok')").await;
    let h = start_with_llm(&llm.url(), &["--cache-mode", "off"]).await;
    for id in ["off_1", "off_2"] {
        let t = h.run(&task(id, TaskType::Code, "say ok", json!({}))).await;
        assert!(t.success, "{t:?}");
        assert_eq!(t.metadata["cache_hit"], false);
    }
    assert_eq!(llm.request_count(), 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn native_tool_calls_with_logprobs_are_recorded_as_sent() {
    let llm = FakeLlm::start(vec![
        Completion::text("Let me compute.")
            .reasoning("6*7, then check")
            .call("python", r#"{"code": "print(6 * 7)"}"#)
            .into(),
        // Two tool calls in one reply: the first runs, the second is refused.
        Completion::default()
            .call("python", r#"{"code": "print('second')"}"#)
            .call("python", r#"{"code": "print('never')"}"#)
            .into(),
        Reply::tool_call("final_answer", json!({"answer": "42"})),
    ])
    .await;
    let h = start_with_llm(
        &llm.url(),
        &[
            "--llm-logprobs",
            "true",
            "--llm-top-p",
            "0.9",
            "--llm-seed",
            "5",
        ],
    )
    .await;
    let t = h
        .run(&task(
            "native_multi",
            TaskType::Code,
            "What is six times seven?",
            json!({"sampling": {"temperature": 0, "max_tokens": 256}}),
        ))
        .await;
    assert!(t.success, "{t:#?}");
    assert_eq!(t.final_result, "42");
    assert_eq!(t.steps.len(), 2);
    assert_eq!(observation(&t, 0), "42\n");
    assert_eq!(observation(&t, 1), "second\n");
    assert_eq!(t.metadata["model"], "test-model");

    let calls = assert_calls_as_sent(&t, &llm);
    assert_eq!(
        calls.iter().map(|c| c.step_id).collect::<Vec<_>>(),
        [Some(0), Some(1), None]
    );
    // Sampling: the runtime's settings with the task's override.
    let req = &calls[0].request;
    assert_eq!(req["temperature"], 0.0);
    assert_eq!(req["max_tokens"], 256);
    assert_eq!(req["top_p"], 0.9);
    assert_eq!(req["seed"], 5);
    assert_eq!(req["logprobs"], true);
    assert_eq!(req["return_token_ids"], true);
    let tool_names: Vec<&str> = req["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
        .collect();
    assert_eq!(tool_names, ["python", "final_answer"]);
    // The response as answered, tokens included.
    let r0 = calls[0].response.as_ref().expect("response");
    assert_eq!(r0.reasoning_content.as_deref(), Some("6*7, then check"));
    assert_eq!(r0.content.as_deref(), Some("Let me compute."));
    assert_eq!(r0.finish_reason.as_deref(), Some("tool_calls"));
    let ids = r0.completion_token_ids.as_ref().expect("completion ids");
    assert_eq!(r0.logprobs.as_ref().expect("logprobs").len(), ids.len());
    assert!(r0.prompt_token_ids.as_ref().is_some_and(|p| !p.is_empty()));
    assert!(r0.usage.is_some());
    // Prefixes are shared: call 1 adds the reply and the tool result.
    assert_eq!(calls[1].messages_prefix, 2);
    let added = &calls[1].messages_added;
    assert_eq!(added[0]["role"], "assistant");
    assert_eq!(added[0]["tool_calls"][0]["id"], "call_1_0");
    assert_eq!(added[1]["role"], "tool");
    assert_eq!(added[1]["tool_call_id"], "call_1_0");
    assert!(added[1]["content"].as_str().unwrap_or("").contains("42"));
    // The refused second call is answered, in order.
    let sent = llm.requests()[2].messages();
    let n = sent.len();
    assert_eq!(sent[n - 2]["tool_call_id"], "call_2_0");
    assert!(sent[n - 2]["content"]
        .as_str()
        .unwrap_or("")
        .contains("second"));
    assert_eq!(sent[n - 1]["tool_call_id"], "call_2_1");
    assert!(sent[n - 1]["content"]
        .as_str()
        .unwrap_or("")
        .contains("Not run"));
    // metadata.messages: the last request plus the final reply.
    let messages = t.metadata["messages"].as_array().expect("messages");
    assert_eq!(messages[..n].to_vec(), sent);
    assert_eq!(
        messages[n]["tool_calls"][0]["function"]["name"],
        "final_answer"
    );
    // In the file, token ids and logprobs are one line each (not one
    // number a line), and the file reads back to the same records.
    let file = common::trajectory_path(h.out.path(), "native_multi");
    let text = std::fs::read_to_string(&file).expect("trajectory file");
    for key in ["completion_token_ids", "logprobs", "prompt_token_ids"] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("\"{key}\": [")))
            .collect();
        assert_eq!(lines.len(), 3, "{key}: one line per call");
        assert!(
            lines.iter().all(|l| l.trim_end_matches(',').ends_with(']')),
            "{lines:?}"
        );
    }
    let back: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(back["metadata"]["llm_calls"], t.metadata["llm_calls"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_native_replies_end_in_recorded_outcomes() {
    let llm = FakeLlm::start_fn(|req| {
        let task = req.messages()[1]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let n = req.messages().len();
        if task.contains("malformed once") {
            match n {
                2 => Completion::default()
                    .call("python", r#"{"code": "print(1)"#)
                    .into(),
                4 => Reply::tool_call("python", json!({"code": "print('fixed')"})),
                _ => Reply::text("fixed it"),
            }
        } else if task.contains("malformed twice") {
            Completion::default()
                .call("shell", r#"{"cmd": "ls"}"#)
                .into()
        } else {
            Completion::default()
                .call("python", r#"{"code": "print('cut"#)
                .finish("length")
                .into()
        }
    })
    .await;
    let h = start_with_llm(&llm.url(), &[]).await;

    let t = h
        .run(&task(
            "odd_once",
            TaskType::Code,
            "malformed once",
            json!({}),
        ))
        .await;
    assert!(t.success, "{t:#?}");
    assert_eq!(t.final_result, "fixed it");
    assert_eq!(t.steps.len(), 1);
    let calls = assert_calls_as_sent(&t, &llm);
    assert_eq!(
        calls.iter().map(|c| c.step_id).collect::<Vec<_>>(),
        [None, Some(0), None]
    );
    let told = &calls[1].messages_added[1];
    assert_eq!(told["role"], "tool");
    assert!(
        told["content"]
            .as_str()
            .unwrap_or("")
            .contains("Invalid tool call"),
        "{told}"
    );
    let seen = llm.request_count();

    let t = h
        .run(&task(
            "odd_twice",
            TaskType::Code,
            "malformed twice",
            json!({}),
        ))
        .await;
    assert!(!t.success);
    assert!(t.steps.is_empty());
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("invalid twice") && msg.contains("unknown tool"),
        "{msg}"
    );
    assert_eq!(llm.request_count() - seen, 2);
    let calls = llm_record::from_metadata(&t.metadata).expect("records");
    assert_eq!(calls.len(), 2);
    let seen = llm.request_count();

    let t = h
        .run(&task("odd_length", TaskType::Code, "cut reply", json!({})))
        .await;
    assert!(!t.success);
    assert!(t.steps.is_empty(), "nothing of a cut reply runs");
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(msg.contains("finish_reason \"length\""), "{msg}");
    assert_eq!(llm.request_count() - seen, 1);
    let calls = llm_record::from_metadata(&t.metadata).expect("records");
    assert_eq!(
        calls[0]
            .response
            .as_ref()
            .and_then(|r| r.finish_reason.as_deref()),
        Some("length")
    );
    h.stop().await;
}

/// The size of a trajectory with `LLM_LOGPROBS=true`: 10 code steps and a
/// final answer, every reply 500 tokens (~2,000 characters of text), prompt
/// token ids returned for every call (the fake server counts one prompt token
/// per 4 bytes of the messages). Prints the figure quoted in the README:
/// `cargo test -p sandbox-runtime --test openai -- --ignored --nocapture trajectory_size`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; prints the trajectory size"]
async fn trajectory_size_with_logprobs() {
    let text = "Let me think about this step carefully. ".repeat(50);
    let llm = FakeLlm::start_fn(move |req| {
        let step = req.messages().len().saturating_sub(2) / 2;
        let c = Completion::text(text.clone()).tokens(500);
        if step < 10 {
            c.call(
                "python",
                &json!({"code": format!("print({step} * {step})")}).to_string(),
            )
            .into()
        } else {
            c.call("final_answer", r#"{"answer": "done"}"#).into()
        }
    })
    .await;
    let h = start_with_llm(&llm.url(), &["--llm-logprobs", "true"]).await;
    let mut t = task("size_10", TaskType::Code, "Square ten numbers", json!({}));
    t.max_steps = 11; // ten code steps, then the final answer
    let traj = h.run(&t).await;
    assert_eq!(traj.steps.len(), 10, "{traj:#?}");
    assert!(traj.success, "{traj:#?}");
    let calls = assert_calls_as_sent(&traj, &llm);
    assert_eq!(calls.len(), 11);
    let file = common::trajectory_path(h.out.path(), "size_10");
    let size = std::fs::metadata(&file).expect("trajectory file").len();
    let part = |key: &str| {
        adp_core::pretty::to_vec(&traj.metadata[key])
            .map(|s| s.len())
            .unwrap_or(0)
    };
    let prompt_ids: usize = calls
        .iter()
        .filter_map(|c| c.response.as_ref()?.prompt_token_ids.as_ref().map(Vec::len))
        .sum();
    // The same trajectory without the token arrays (what LLM_LOGPROBS=false keeps).
    let mut lean = serde_json::to_value(&traj).expect("json");
    for c in lean["metadata"]["llm_calls"]
        .as_array_mut()
        .expect("calls")
        .iter_mut()
    {
        if let Some(r) = c["response"].as_object_mut() {
            for k in ["completion_token_ids", "logprobs", "prompt_token_ids"] {
                r.remove(k);
            }
        }
    }
    let lean = adp_core::pretty::to_vec(&lean)
        .map(|v| v.len())
        .unwrap_or(0);
    println!(
        "trajectory size, 10 steps + final answer, 500-token replies, LLM_LOGPROBS=true: \
         {size} bytes ({:.0} KiB; without the token arrays {lean} bytes = {:.0} KiB); \
         metadata.llm_calls {} bytes, metadata.messages {} bytes (laid out alone as in the file); \
         {prompt_ids} prompt token ids in all, {} completion token ids and logprobs",
        size as f64 / 1024.0,
        lean as f64 / 1024.0,
        part("llm_calls"),
        part("messages"),
        11 * 500
    );
    h.stop().await;
}

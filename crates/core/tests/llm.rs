//! The OpenAI-compatible client against the scripted fake server (real HTTP on 127.0.0.1).

use std::time::{Duration, Instant};

use adp_core::llm::{ChatMessage, LlmClient, LlmConfig, LlmError, Sampling};
use adp_core::llm_record::{self, CallLog};
use adp_core::InfraError;
use serde_json::json;
use test_support::fake_llm::{Completion, FakeLlm, Reply, FAKE_MODEL};

fn config(url: &str) -> LlmConfig {
    let mut c = LlmConfig::new(url);
    c.retry_backoff = Duration::from_millis(10);
    c.timeout = Duration::from_secs(5);
    c
}

fn msgs() -> Vec<ChatMessage> {
    vec![ChatMessage::system("sys"), ChatMessage::user("hello")]
}

#[tokio::test]
async fn chat_sends_openai_request_and_reads_content() {
    let llm = FakeLlm::start(vec![Reply::text("hi there")]).await;
    let mut c = config(&format!("{}/v1/", llm.url()));
    c.model = "m1".into();
    c.api_key = Some("k-123".into());
    c.sampling.temperature = Some(0.5);
    c.sampling.max_tokens = Some(77);
    let client = LlmClient::new(c).expect("client");
    assert_eq!(client.chat(&msgs()).await.expect("chat"), "hi there");
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 1);
    let body = &reqs[0].body;
    assert_eq!(body["model"], "m1");
    assert_eq!(body["max_tokens"], 77);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["messages"],
        serde_json::json!([{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}])
    );
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer k-123"));
}

#[tokio::test]
async fn model_is_discovered_and_no_auth_without_key() {
    let llm = FakeLlm::start(vec![Reply::text("a"), Reply::text("b")]).await;
    let client = LlmClient::new(config(&llm.url())).expect("client");
    assert_eq!(client.chat(&msgs()).await.expect("chat"), "a");
    assert_eq!(client.chat(&msgs()).await.expect("chat"), "b");
    let reqs = llm.requests();
    assert_eq!(reqs[0].body["model"], FAKE_MODEL);
    assert_eq!(reqs[0].authorization, None);
}

#[tokio::test]
async fn server_errors_and_429_are_retried() {
    let llm = FakeLlm::start(vec![
        Reply::Status(500),
        Reply::Status(503),
        Reply::RetryAfter(429, 1),
        Reply::text("finally"),
    ])
    .await;
    let client = LlmClient::new(config(&llm.url())).expect("client");
    let started = Instant::now();
    assert_eq!(client.chat(&msgs()).await.expect("chat"), "finally");
    assert_eq!(llm.request_count(), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
}

#[tokio::test]
async fn retries_run_out_with_the_last_status() {
    let llm = FakeLlm::start(vec![Reply::Status(502); 5]).await;
    let mut c = config(&llm.url());
    c.retries = 2;
    let client = LlmClient::new(c).expect("client");
    let err = client.chat(&msgs()).await.expect_err("fails");
    assert!(
        matches!(
            err,
            LlmError::Status {
                status: 502,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(llm.request_count(), 3);
    let infra: InfraError = err.into();
    assert_eq!(infra.component, "llm");
    assert!(infra.message.contains("502"), "{}", infra.message);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let llm = FakeLlm::start(vec![Reply::Status(401), Reply::text("never")]).await;
    let client = LlmClient::new(config(&llm.url())).expect("client");
    let err = client.chat(&msgs()).await.expect_err("fails");
    assert!(
        matches!(
            err,
            LlmError::Status {
                status: 401,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(llm.request_count(), 1);
}

#[tokio::test]
async fn unreachable_endpoint_is_retried_then_reported() {
    let port = test_support::free_port();
    let mut c = config(&format!("http://127.0.0.1:{port}"));
    c.model = "m".into();
    c.retries = 2;
    let client = LlmClient::new(c).expect("client");
    let err = client.chat(&msgs()).await.expect_err("fails");
    assert!(
        matches!(err, LlmError::Unreachable { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test]
async fn slow_endpoint_times_out() {
    let llm = FakeLlm::start(vec![
        Reply::Delayed(Duration::from_secs(3), Box::new(Reply::text("late"))),
        Reply::text("on time"),
    ])
    .await;
    let mut c = config(&llm.url());
    c.model = "m".into();
    c.timeout = Duration::from_millis(400);
    c.retries = 1;
    let client = LlmClient::new(c).expect("client");
    assert_eq!(
        client.chat(&msgs()).await.expect("second attempt"),
        "on time"
    );
    assert_eq!(llm.request_count(), 2);
}

#[tokio::test]
async fn malformed_reply_is_a_bad_reply() {
    let llm = FakeLlm::start(vec![
        Reply::Raw(200, "not json".into()),
        Reply::Raw(200, r#"{"choices": []}"#.into()),
    ])
    .await;
    let mut c = config(&llm.url());
    c.model = "m".into();
    let client = LlmClient::new(c).expect("client");
    for _ in 0..2 {
        let err = client.chat(&msgs()).await.expect_err("fails");
        assert!(matches!(err, LlmError::BadReply { .. }), "{err}");
    }
}

/// What the server logged for call `i` equals what the record rebuilds, byte for byte.
fn assert_recorded_as_sent(llm: &FakeLlm, log: &CallLog) {
    let reqs = llm.requests();
    let calls = log.calls();
    assert_eq!(reqs.len(), calls.len());
    // Through the trajectory file format and back.
    let text = serde_json::to_string_pretty(&log.to_value()).expect("serialize");
    let mut meta = serde_json::Map::new();
    meta.insert(
        "llm_calls".into(),
        serde_json::from_str(&text).expect("parse"),
    );
    let back = llm_record::from_metadata(&meta).expect("records");
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&llm_record::request_body(&back, i)),
            String::from_utf8_lossy(&r.raw),
            "call {i}"
        );
        assert_eq!(
            serde_json::Value::Object(llm_record::request_value(&back, i)),
            r.body
        );
    }
}

#[tokio::test]
async fn complete_sends_tools_sampling_and_logprob_fields_and_records_the_call() {
    let llm = FakeLlm::start(vec![
        Completion::default()
            .reasoning("6*7 is easy")
            .call("python", r#"{"code": "print(6*7)"}"#)
            .into(),
        Reply::text("42"),
    ])
    .await;
    let mut c = config(&llm.url());
    c.model = "m1".into();
    c.logprobs = true;
    c.sampling = Sampling {
        temperature: Some(0.7),
        top_p: Some(0.95),
        max_tokens: Some(300),
        seed: Some(11),
    };
    let client = LlmClient::new(c).expect("client");
    let tools = json!([{"type": "function", "function": {"name": "python", "parameters": {"type": "object"}}}]);
    let mut log = CallLog::new();
    let mut messages = vec![
        json!({"role": "system", "content": "sys ü"}),
        json!({"role": "user", "content": "6*7?"}),
    ];
    let over = Sampling {
        temperature: Some(0.0),
        ..Default::default()
    };
    let sampling = client.config().sampling.overridden_by(over);
    let r = client
        .complete(&mut log, &messages, Some(&tools), sampling)
        .await
        .expect("call 0");
    assert_eq!(r.content, None);
    assert_eq!(r.reasoning_content.as_deref(), Some("6*7 is easy"));
    assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(r.tool_calls[0]["function"]["name"], "python");
    assert_eq!(r.model.as_deref(), Some("m1"));
    let n = r.completion_token_ids.as_ref().expect("token ids").len();
    assert!(n > 0);
    assert_eq!(r.logprobs.as_ref().expect("logprobs").len(), n);
    assert!(r.prompt_token_ids.as_ref().is_some_and(|p| !p.is_empty()));
    assert_eq!(r.usage.as_ref().expect("usage")["completion_tokens"], n);

    messages.push(json!({"role": "assistant", "content": null, "tool_calls": r.tool_calls}));
    messages
        .push(json!({"role": "tool", "tool_call_id": r.tool_calls[0]["id"], "content": "42\n"}));
    let r = client
        .complete(&mut log, &messages, Some(&tools), sampling)
        .await
        .expect("call 1");
    assert_eq!(r.content.as_deref(), Some("42"));
    assert!(r.tool_calls.is_empty());

    let body = &llm.requests()[0].body;
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "model",
            "messages",
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "tools",
            "tool_choice",
            "logprobs",
            "return_token_ids",
            "return_tokens_as_token_ids"
        ]
    );
    assert_eq!(body["temperature"], 0.0, "the task's override");
    assert_eq!(body["top_p"], 0.95);
    assert_eq!(body["seed"], 11);
    assert_eq!(log.calls()[1].messages_prefix, 2);
    assert_eq!(log.calls()[1].messages_added.len(), 2);
    assert!(log.calls()[0].latency >= 0.0 && log.calls()[0].started_at > 1.0e9);
    assert_recorded_as_sent(&llm, &log);
}

#[tokio::test]
async fn a_failed_call_is_recorded_with_its_error() {
    let llm = FakeLlm::start(vec![Reply::Status(400)]).await;
    let mut c = config(&llm.url());
    c.model = "m".into();
    let client = LlmClient::new(c).expect("client");
    let mut log = CallLog::new();
    let msgs = vec![json!({"role": "user", "content": "hi"})];
    let err = client
        .complete(&mut log, &msgs, None, client.config().sampling)
        .await
        .expect_err("400");
    assert!(matches!(err, LlmError::Status { status: 400, .. }), "{err}");
    let call = &log.calls()[0];
    assert!(call.response.is_none());
    assert!(call.error.as_deref().unwrap_or("").contains("400"));
    assert_recorded_as_sent(&llm, &log);
}

#[test]
fn sampling_constraints_are_checked() {
    let c = |v: serde_json::Value| {
        let mut m = serde_json::Map::new();
        m.insert("sampling".into(), v);
        Sampling::from_constraints(&m)
    };
    assert_eq!(
        c(json!({"temperature": 1, "top_p": 0.5, "max_tokens": 9, "seed": 3})),
        Ok(Sampling {
            temperature: Some(1.0),
            top_p: Some(0.5),
            max_tokens: Some(9),
            seed: Some(3)
        })
    );
    assert_eq!(c(json!(null)), Ok(Sampling::default()));
    for bad in [
        json!({"temperature": 3}),
        json!({"top_p": 0}),
        json!({"max_tokens": 0}),
        json!({"seed": -1}),
        json!({"temp": 1}),
        json!("hot"),
    ] {
        assert!(c(bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn tasks_with_bad_sampling_are_rejected() {
    use adp_core::validate::{validate_value, RejectReason};
    let task = |sampling: serde_json::Value| json!({"task_type": "code", "description": "d", "constraints": {"sampling": sampling}});
    let ok = validate_value(task(json!({"temperature": 0.7, "seed": 1}))).expect("valid");
    assert_eq!(
        Sampling::from_constraints(&ok.constraints)
            .expect("sampling")
            .seed,
        Some(1)
    );
    let e = validate_value(task(json!({"top_p": 2}))).expect_err("top_p 2");
    assert!(
        matches!(&e, RejectReason::InvalidConstraint { key: "sampling", why } if why.contains("top_p")),
        "{e}"
    );
    assert_eq!(e.code(), "invalid_constraint");
}

//! The OpenAI-compatible client against the scripted fake server (real HTTP on 127.0.0.1).

use std::time::{Duration, Instant};

use adp_core::llm::{ChatMessage, LlmClient, LlmConfig, LlmError};
use adp_core::InfraError;
use test_support::fake_llm::{FakeLlm, Reply, FAKE_MODEL};

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
    c.temperature = 0.5;
    c.max_tokens = 77;
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

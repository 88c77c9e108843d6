//! The `openai` policy with native tool calls on a real Chromium against the
//! demo site served on 127.0.0.1, the model a scripted OpenAI-compatible
//! server (real HTTP): every call recorded as sent (compared with the bytes
//! the server logged), older observations shortened only in later prompts,
//! and the outcomes of odd replies.

mod common;

use adp_core::llm::LlmClient;
use adp_core::llm_record::{self, LlmCall};
use adp_core::Trajectory;
use common::{llm_client, run, start_local, summary, Harness, Site};
use serde_json::{json, Value};
use test_support::fake_llm::{Completion, FakeLlm, Reply};

async fn start() -> (Harness, Site) {
    start_local(2).await
}

/// A native-mode client of `llm` asking for logprobs, without retries.
fn client(llm: &FakeLlm) -> LlmClient {
    llm_client(llm, |c| {
        c.logprobs = true;
        c.model = "web-model".into();
    })
}

/// `t`'s records, after checking they rebuild every request `llm` logged,
/// byte for byte.
fn calls_as_sent(t: &Trajectory, llm: &FakeLlm) -> Vec<LlmCall> {
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

fn content(m: &Value) -> &str {
    m["content"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_native_run_is_recorded_as_sent_with_shortened_observations() {
    let (h, site) = start().await;
    let llm = FakeLlm::start(vec![
        // Index 3 on the demo home page is the search box (links first).
        Completion::text("I will search.")
            .reasoning("The home page has a search box.")
            .call("fill_and_submit", r#"{"element": 3, "text": "kettle"}"#)
            .into(),
        Reply::tool_call("extract", json!({})),
        // Two calls: the click is performed, the scroll is not.
        Completion::default()
            .call("click", r##"{"selector": "#results a"}"##)
            .call("scroll", r#"{"direction": "down"}"#)
            .into(),
        // Malformed arguments: told, nothing done.
        Completion::default()
            .call("scroll", r#"{"direction": "down""#)
            .into(),
        Reply::tool_call("scroll", json!({"direction": "down"})),
        Reply::tool_call("finish", json!({"answer": "The kettle costs 29.00 EUR"})),
    ])
    .await;
    let handler = h.handler(h.settings(), Some(client(&llm)));
    let t = run(
        &handler,
        json!({
            "task_id": "native_long",
            "description": "Find the price of the tea kettle",
            "max_steps": 8,
            "constraints": {
                "start_url": format!("{site}/index.html"),
                "expected_text": "29.00 EUR",
                "sampling": {"temperature": 0.0, "seed": 3}
            }
        }),
    )
    .await;
    let actions: Vec<String> = summary(&t).into_iter().map(|s| s.0).collect();
    assert_eq!(
        actions,
        [
            "goto",
            "fill_and_submit",
            "extract",
            "click",
            "scroll",
            "finish"
        ],
        "{:#?}",
        t.steps
    );
    assert!(t.success, "{t:#?}");
    assert_eq!(t.final_result, "The kettle costs 29.00 EUR");
    assert_eq!(t.metadata["model"], "web-model");

    let calls = calls_as_sent(&t, &llm);
    assert_eq!(calls.len(), 6);
    assert_eq!(
        calls.iter().map(|c| c.step_id).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3), None, Some(4), Some(5)]
    );
    let req = &calls[0].request;
    assert_eq!(req["temperature"], 0.0);
    assert_eq!(req["seed"], 3);
    assert_eq!(req["logprobs"], true);
    assert_eq!(req["tools"].as_array().map(Vec::len), Some(11));
    let r0 = calls[0].response.as_ref().expect("response");
    assert_eq!(
        r0.reasoning_content.as_deref(),
        Some("The home page has a search box.")
    );
    assert!(r0
        .completion_token_ids
        .as_ref()
        .is_some_and(|i| !i.is_empty()));
    assert!(r0.prompt_token_ids.as_ref().is_some_and(|i| !i.is_empty()));

    // Call 0 sent the first page in full, element list included.
    let all = llm_record::all_request_messages(&calls);
    let first_page = content(&all[0][1]);
    assert!(
        first_page.contains("[3] input type=search name=q"),
        "{first_page}"
    );
    // Call 1 sends it shortened: its record does not share that message.
    assert_eq!(calls[1].messages_prefix, 1);
    let shortened = content(&calls[1].messages_added[0]);
    assert!(
        shortened.contains("older page view shortened"),
        "{shortened}"
    );
    assert!(shortened.len() < first_page.len());
    assert!(!shortened.contains("[3] input type=search"));
    // The newest page is a tool message, in full, answering its call.
    let last = &calls[1].messages_added[calls[1].messages_added.len() - 1];
    assert_eq!(last["role"], "tool");
    assert_eq!(last["tool_call_id"], "call_1_0");
    assert!(content(last).contains("Action fill_and_submit succeeded"));
    // Every later request keeps exactly one full page: the newest.
    for msgs in &all[1..] {
        let full = msgs
            .iter()
            .filter(|m| content(m).contains("Title: ") && !content(m).contains("shortened"))
            .count();
        assert_eq!(full, 1, "{msgs:#?}");
    }
    // The refused second call and the malformed one were answered.
    let sent3 = &all[3];
    let n = sent3.len();
    assert_eq!(sent3[n - 1]["tool_call_id"], "call_3_1");
    assert!(content(&sent3[n - 1]).starts_with("Not run"));
    let told = &all[4][all[4].len() - 1];
    assert_eq!(told["tool_call_id"], "call_4_0");
    assert!(content(told).contains("Invalid tool call"), "{told}");
    // Runtime-only parameters never reach the model's tool arguments.
    for c in &calls {
        for tc in &c.response.as_ref().expect("response").tool_calls {
            let args = tc["function"]["arguments"].as_str().unwrap_or("");
            assert!(
                !args.contains("auto") && !args.contains("screenshot"),
                "{args}"
            );
        }
    }
    // metadata.messages: the last request plus the final reply.
    let messages = t.metadata["messages"].as_array().expect("messages");
    assert_eq!(messages[..all[5].len()].to_vec(), all[5]);
    assert_eq!(
        messages[all[5].len()]["tool_calls"][0]["function"]["name"],
        "finish"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_native_replies_end_in_recorded_outcomes() {
    let (h, site) = start().await;
    let llm = FakeLlm::start_fn(|req| {
        let task = content(&req.messages()[1]).to_owned();
        if task.contains("answer in text") {
            Reply::text("Demo Catalogue")
        } else if task.contains("cut reply") {
            Completion::default()
                .call("click", r#"{"element": "#)
                .finish("length")
                .into()
        } else {
            Completion::default()
                .call("fly", r#"{"to": "moon"}"#)
                .into()
        }
    })
    .await;
    let handler = h.handler(h.settings(), Some(client(&llm)));
    let start_url = format!("{site}/index.html");

    // No tool call: the text is the answer.
    let t = run(
        &handler,
        json!({"task_id": "odd_text", "description": "answer in text",
               "constraints": {"start_url": start_url}}),
    )
    .await;
    assert!(t.success, "{t:#?}");
    assert_eq!(t.final_result, "Demo Catalogue");
    assert_eq!(t.steps.len(), 1, "only the start page");
    let calls = calls_as_sent(&t, &llm);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].step_id, None);
    let seen = llm.request_count();

    // Cut at max_tokens: a failure saying so, nothing done.
    let t = run(
        &handler,
        json!({"task_id": "odd_cut", "description": "cut reply",
               "constraints": {"start_url": start_url}}),
    )
    .await;
    assert!(!t.success);
    assert_eq!(t.steps.len(), 1);
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(msg.contains("finish_reason \"length\""), "{msg}");
    assert_eq!(llm.request_count() - seen, 1);
    let seen = llm.request_count();

    // An unknown tool twice: a failure saying so.
    let t = run(
        &handler,
        json!({"task_id": "odd_unknown", "description": "fly away",
               "constraints": {"start_url": start_url}}),
    )
    .await;
    assert!(!t.success);
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("invalid twice") && msg.contains("unknown tool \"fly\""),
        "{msg}"
    );
    assert_eq!(llm.request_count() - seen, 2);
    let calls = llm_record::from_metadata(&t.metadata).expect("records");
    assert_eq!(calls.len(), 2);
    h.stop().await;
}

//! The agent on a real Chromium against pages served on 127.0.0.1:
//! scripted actions across the demo site, the heuristic and openai policies,
//! context isolation, and the failure kinds of steps.

mod common;

use std::time::Duration;

use adp_core::llm::{LlmClient, ToolMode};
use adp_core::llm_record;
use adp_core::Trajectory;
use common::{failed_goto, llm_client, run, start_local, summary, Harness, Site};
use serde_json::json;
use test_support::fake_llm::{FakeLlm, Reply};
use web_runtime::actions::Action;
use web_runtime::exec;

/// A browser with the test policy and four pages, and the test site.
async fn start() -> (Harness, Site) {
    start_local(4).await
}

/// A text-mode client of `llm` that does not retry (each reply is used once).
fn client(llm: &FakeLlm) -> LlmClient {
    llm_client(llm, |c| c.tool_mode = ToolMode::Text)
}

/// Asserts the action types of the steps, in order.
fn assert_actions(t: &Trajectory, expected: &[&str]) {
    let actions: Vec<String> = summary(t).into_iter().map(|s| s.0).collect();
    assert_eq!(actions, expected, "{:#?}", t.steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_actions_across_the_demo_site() {
    let (h, site) = start().await;
    let handler = h.handler(h.settings(), None);

    let t = run(
        &handler,
        json!({
            "task_id": "scripted_demo",
            "description": "Search the demo catalogue for rust, open a result, order it in green, go back",
            "constraints": {
                "start_url": format!("{site}/index.html"),
                "expected_text": "Thank you, Ada",
                "actions": [
                    {"type": "goto", "url": format!("{site}/index.html")},
                    {"type": "fill_and_submit", "selector": "input[name=q]", "text": "rust book"},
                    {"type": "click", "selector": "#results a"},
                    {"type": "click", "selector": "#order"},
                    {"type": "fill", "selector": "#name", "text": "Ada"},
                    {"type": "select", "selector": "#colour", "value": "Green"},
                    {"type": "click", "selector": "#send"},
                    {"type": "back"},
                    {"type": "extract"},
                    {"type": "goto", "url": format!("{site}/thanks.html?name=Ada&colour=green&size=m")}
                ]
            }
        }),
    )
    .await;

    assert_eq!(
        summary(&t)
            .iter()
            .map(|s| (s.0.as_str(), s.1))
            .collect::<Vec<_>>(),
        vec![
            ("goto", true),
            ("fill_and_submit", true),
            ("click", true),
            ("click", true),
            ("fill", true),
            ("select", true),
            ("click", true),
            ("back", true),
            ("extract", true),
            ("goto", true),
        ],
        "{:#?}",
        t.steps
    );
    // Real page texts, step by step (7: back returns to the form).
    let expected = [
        (0, "Title: Demo Catalogue"),
        (0, "input type=search name=q"),
        (1, "Results for \"rust book\""),
        (1, "The Rust Programming Language"),
        (1, "/results.html?q=rust+book"),
        (2, "Title: The Rust Programming Language - Demo Catalogue"),
        (2, "Category: books. Price: 39.95 EUR."),
        (3, "Title: Order form"),
        (4, "name=name"),
        (4, "value=\"Ada\""),
        (5, "selected=\"Green\""),
        (
            6,
            "Thank you, Ada. Order received: colour Green, size Medium.",
        ),
        (7, "Title: Order form"),
    ];
    for (step, needle) in expected {
        let obs = &t.steps[step].observation;
        assert!(obs.contains(needle), "step {step}, {needle:?}: {obs}");
    }
    assert!(t.success, "{t:#?}");
    assert_eq!(t.runtime_id, "web-runtime");
    assert_eq!(t.metadata["policy"], "scripted");
    assert!(
        t.final_result.contains("Thank you, Ada"),
        "{}",
        t.final_result
    );
    for s in &t.steps {
        assert_eq!(s.action_type, adp_core::ActionType::BrowserAction);
        assert!(s.duration > 0.0 && s.timestamp > 0.0);
    }

    // Element indices of the last observation work as targets too.
    let t = run(
        &handler,
        json!({
            "task_id": "scripted_by_index",
            "constraints": {
                "start_url": format!("{site}/list.html"),
                "actions": [{"type": "click", "element": 9}, {"type": "finish", "answer": "done"}]
            }
        }),
    )
    .await;
    assert!(t.success, "{t:#?}");
    // The start_url step is added by the runtime and marked as such.
    assert_eq!(t.steps[0].action_params["auto"], true);
    let list = &t.steps[0].observation;
    let line = list
        .lines()
        .find(|l| l.starts_with("[9] "))
        .expect("element 9 listed");
    let title = line.split('"').nth(1).expect("link text");
    assert!(
        t.steps[1]
            .observation
            .contains(&format!("Title: {title} - Demo Catalogue")),
        "{line} / {}",
        t.steps[1].observation
    );
    assert_eq!(t.final_result, "done");

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_finds_the_search_box_on_an_unseen_page() {
    let (h, site) = start().await;
    let handler = h.handler(h.settings(), None);
    let t = run(
        &handler,
        json!({
            "task_id": "heuristic_unseen",
            "description": "Search for \"cordless drill\" and open the first result",
            "constraints": {"start_url": format!("{site}/unseen"), "expected_text": "Hardware item number 1"}
        }),
    )
    .await;
    assert_eq!(t.metadata["policy"], "heuristic");
    assert_actions(
        &t,
        &["goto", "fill_and_submit", "click", "extract", "finish"],
    );
    // It chose the product finder, not the newsletter e-mail field.
    let fill = &t.steps[1];
    let idx = fill.action_params["element"]
        .as_u64()
        .expect("element index") as usize;
    let line = t.steps[0]
        .observation
        .lines()
        .find(|l| l.starts_with(&format!("[{idx}] ")))
        .expect("listed");
    assert!(line.contains("name=term"), "{line}");
    assert!(
        t.steps[1]
            .observation
            .contains("Products matching cordless drill"),
        "{}",
        t.steps[1].observation
    );
    assert!(
        t.steps[2].observation.contains("URL: ")
            && t.steps[2].observation.contains("/unseen-item?n=1")
    );
    assert!(t.success, "{t:#?}");

    // A page without a search box: the heuristic says so, invents nothing.
    let t = run(
        &handler,
        json!({
            "task_id": "heuristic_no_box",
            "description": "Search for teapots",
            "constraints": {"start_url": format!("{site}/list.html")}
        }),
    )
    .await;
    assert!(!t.success);
    assert_eq!(t.steps.len(), 1, "only the start page: {:#?}", t.steps);
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(msg.contains("no search box"), "{msg}");

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_policy_multi_step_with_element_indices_and_one_bad_reply() {
    let (h, site) = start().await;
    let llm = FakeLlm::start(vec![
        // Index 3 on the demo home page is the search box (links first).
        Reply::text("Let me search.\n```json\n{\"type\": \"fill_and_submit\", \"element\": 3, \"text\": \"kettle\"}\n```"),
        Reply::text("I will click the result now!"),
        Reply::text("{\"type\": \"click\", \"selector\": \"#results a\"}"),
        Reply::text("```json\n{\"type\": \"finish\", \"answer\": \"The kettle costs 29.00 EUR\"}\n```"),
    ])
    .await;
    let handler = h.handler(h.settings(), Some(client(&llm)));
    let t = run(
        &handler,
        json!({
            "task_id": "openai_demo",
            "description": "Find the price of the tea kettle",
            "constraints": {"start_url": format!("{site}/index.html"), "expected_text": "29.00 EUR"}
        }),
    )
    .await;
    assert_eq!(t.metadata["policy"], "openai");
    assert_actions(&t, &["goto", "fill_and_submit", "click", "finish"]);
    assert!(t.steps[1].observation.contains("Stainless Tea Kettle"));
    assert!(t.success, "{t:#?}");
    assert_eq!(t.final_result, "The kettle costs 29.00 EUR");
    assert_eq!(llm.request_count(), 4);
    let reqs = llm.requests();
    // The model saw the numbered elements, and was told its bad reply once.
    let first = reqs[0].messages();
    let prompt = first[1]["content"].as_str().unwrap_or("");
    assert!(prompt.contains("[3] input type=search name=q"), "{prompt}");
    let third = reqs[2].messages();
    let told = third[third.len() - 1]["content"].as_str().unwrap_or("");
    assert!(told.contains("not a valid action"), "{told}");
    // The conversation is recorded.
    let messages = t.metadata["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 9, "{messages:#?}");
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(t.metadata["model"], "fake-model");
    // Every call is recorded as sent: no tools in text mode, and each
    // request rebuilds to the bytes the server received.
    let calls = llm_record::from_metadata(&t.metadata).expect("llm_calls");
    assert_eq!(calls.len(), 4);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(llm_record::request_body(&calls, i), r.raw, "call {i}");
        assert!(!calls[i].request.contains_key("tools"));
    }
    assert_eq!(
        calls.iter().map(|c| c.step_id).collect::<Vec<_>>(),
        [Some(1), None, Some(2), Some(3)]
    );

    // Two bad replies in a row: the task fails with a clear message.
    let llm2 = FakeLlm::start(vec![Reply::text("no idea"), Reply::text("still {not json")]).await;
    let handler = h.handler(h.settings(), Some(client(&llm2)));
    let t = run(
        &handler,
        json!({
            "task_id": "openai_bad",
            "description": "Do something",
            "constraints": {"start_url": format!("{site}/index.html")}
        }),
    )
    .await;
    assert!(!t.success);
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(msg.contains("not a valid action twice"), "{msg}");
    assert_eq!(llm2.request_count(), 2);

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_has_its_own_browser_context() {
    let (h, site) = start().await;
    let handler = h.handler(h.settings(), None);
    let a = run(
        &handler,
        json!({
            "task_id": "ctx_a",
            "constraints": {"actions": [
                {"type": "goto", "url": format!("{site}/cookie/set")},
                {"type": "goto", "url": format!("{site}/storage/set")},
                {"type": "goto", "url": format!("{site}/cookie/show")}
            ]}
        }),
    )
    .await;
    assert!(a.success, "{a:#?}");
    let seen = &a.steps[2].observation;
    assert!(
        seen.contains("server saw cookie: session=task-a-secret"),
        "{seen}"
    );
    assert!(seen.contains("storage: task-a-value"), "{seen}");

    let b = run(
        &handler,
        json!({
            "task_id": "ctx_b",
            "constraints": {"actions": [{"type": "goto", "url": format!("{site}/cookie/show")}]}
        }),
    )
    .await;
    let seen = &b.steps[0].observation;
    assert!(seen.contains("server saw cookie: none"), "{seen}");
    assert!(
        seen.contains("page sees cookie: none; storage: none"),
        "{seen}"
    );
    // Contexts are closed after their task: no page is left open.
    assert_eq!(h.web_metrics.pages_open.get(), 0);

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_failures_are_typed_never_crashes() {
    let (h, site) = start().await;
    let mut settings = h.settings();
    settings.action_timeout = Duration::from_secs(2);
    let handler = h.handler(settings, None);

    // A page that never finishes loading.
    let t = run(
        &handler,
        json!({"task_id": "slow", "constraints": {"actions": [{"type": "goto", "url": format!("{site}/slow")}]}}),
    )
    .await;
    assert_eq!(
        summary(&t),
        vec![("goto".into(), false, Some("timeout".into()))],
        "{t:#?}"
    );
    assert_eq!(t.error_type, Some(adp_core::ErrorType::Timeout));
    assert!(!t.success);

    // An unknown selector.
    let t = run(
        &handler,
        json!({"task_id": "nosel", "constraints": {"start_url": format!("{site}/index.html"), "actions": [
            {"type": "click", "selector": "#does-not-exist"}, {"type": "extract"}
        ]}}),
    )
    .await;
    assert_eq!(
        summary(&t)[1],
        ("click".into(), false, Some("browser_error".into()))
    );
    assert_eq!(t.steps.len(), 2, "the script stops at the failed step");
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("no element matches selector \"#does-not-exist\""),
        "{msg}"
    );
    assert!(
        t.steps[1].observation.contains("Title: Demo Catalogue"),
        "the page is still observed"
    );

    // Element index out of range, a select without that option, refused schemes.
    let t = run(
        &handler,
        json!({"task_id": "badidx", "constraints": {"start_url": format!("{site}/order.html"), "actions": [
            {"type": "select", "selector": "#colour", "value": "purple"}
        ]}}),
    )
    .await;
    assert_eq!(
        summary(&t).get(1).and_then(|s| s.2.as_deref()),
        Some("browser_error"),
        "{t:#?}"
    );
    assert!(t
        .error_message
        .clone()
        .unwrap_or_default()
        .contains("no option \"purple\""));
    for (id, url) in [
        ("file", "file:///etc/passwd"),
        ("chrome", "chrome://version"),
        ("js", "javascript:alert(1)"),
    ] {
        let msg = failed_goto(&handler, &format!("scheme_{id}"), url).await;
        assert!(
            msg.contains("refused") && msg.contains("not allowed"),
            "{msg}"
        );
    }
    // A connection refused is a network error too.
    let closed = test_support::free_port();
    let t = run(
        &handler,
        json!({"task_id": "refused", "constraints": {"actions": [{"type": "goto", "url": format!("http://127.0.0.1:{closed}/")}]}}),
    )
    .await;
    assert_eq!(summary(&t)[0].2.as_deref(), Some("network_error"), "{t:#?}");

    // After a failed navigation (an error page), the same page goes on.
    let session = h.browser.open_session().await.expect("session");
    let budget = Duration::from_secs(15);
    let failed_nav = Action::Goto {
        url: format!("http://127.0.0.1:{closed}/"),
    };
    let p = exec::perform(&session, &failed_nav, budget)
        .await
        .expect("alive");
    assert_eq!(
        p.error.map(|e| e.0),
        Some(adp_core::ErrorType::NetworkError)
    );
    let ok_nav = Action::Goto {
        url: format!("{site}/list.html"),
    };
    let p = exec::perform(&session, &ok_nav, budget)
        .await
        .expect("alive");
    assert_eq!(p.error, None, "goto from an error page");
    // Back to the failed entry tries that URL again, and says so.
    let back = exec::perform(&session, &Action::Back, budget)
        .await
        .expect("alive");
    let (kind, msg) = back.error.expect("the old URL still fails");
    assert_eq!(kind, adp_core::ErrorType::NetworkError);
    assert!(msg.contains("could not connect"), "{msg}");
    session.close().await;

    // The browser is fine after all that.
    let t = run(
        &handler,
        json!({"task_id": "after", "constraints": {"actions": [{"type": "goto", "url": format!("{site}/index.html")}]}}),
    )
    .await;
    assert!(t.success);

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reach_pages_running_side_by_side() {
    let (h, site) = start().await;
    let handler = h.handler(h.settings(), None);
    // Three tasks at once (background pages): key events are delivered to
    // each, and Enter in a field without a form is pressed for real.
    let runs = (0..3).map(|i| {
        let handler = handler.clone();
        let site = site.url.clone();
        async move {
            run(
                &handler,
                json!({"task_id": format!("keys_{i}"), "constraints": {"actions": [
                    {"type": "goto", "url": format!("{site}/keys")},
                    {"type": "fill", "selector": "#box", "text": format!("hello {i}")},
                    {"type": "press", "key": "Tab"},
                    {"type": "fill_and_submit", "selector": "#box", "text": format!("value {i}")},
                ], "expected_text": format!("submitted by Enter: value {i}")}}),
            )
            .await
        }
    });
    for t in futures::future::join_all(runs).await {
        assert!(t.success, "{t:#?}");
        assert!(
            t.steps[2].observation.contains("last key: Tab"),
            "{}",
            t.steps[2].observation
        );
    }
    let t = run(
        &handler,
        json!({"task_id": "bad_key", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/keys")},
            {"type": "press", "key": "NoSuchKey"},
        ]}}),
    )
    .await;
    assert_eq!(
        summary(&t).get(1).and_then(|s| s.2.as_deref()),
        Some("browser_error"),
        "{t:#?}"
    );
    h.stop().await;
}

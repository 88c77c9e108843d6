//! Checks of web tasks on a real Chromium against pages served on
//! 127.0.0.1: URL, page text, an element present and the answer, judged on
//! the final page and recorded (`metadata.final_state`) for `adp rescore`.

mod common;

use common::{run, start_local};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_on_the_final_url_text_and_elements() {
    let (h, site) = start_local(2).await;
    let handler = h.handler(h.settings(), None);
    let actions = json!([
        {"type": "goto", "url": format!("{site}/link-to?url=%2Funseen-item%3Fn%3D1")},
        {"type": "click", "selector": "#go"},
        {"type": "finish", "answer": "Item number 1 is in stock"},
    ]);
    let item = format!("{site}/unseen-item?n=1");

    let t = run(
        &handler,
        json!({"task_id": "checks_pass", "constraints": {"actions": actions, "verify": [
            {"type": "url", "equals": item},
            {"type": "url", "regex": r"/unseen-item\?n=1$"},
            {"type": "text", "contains": "Hardware item number 1"},
            {"type": "selector", "selector": "h1"},
            {"type": "answer", "value": "in stock", "match": "contains", "ignore_case": true},
        ]}}),
    )
    .await;
    assert!(t.success, "{:#?}", t.reward_breakdown);
    assert_eq!(t.reward, Some(1.0));
    assert_eq!(t.metadata["final_state"]["url"], item.as_str());
    assert_eq!(t.metadata["final_state"]["title"], "Item 1");
    assert!(t.metadata["final_state"]["text"]
        .as_str()
        .is_some_and(|s| s.contains("In stock.")));

    let t = run(
        &handler,
        json!({"task_id": "checks_fail", "constraints": {"actions": actions, "verify": [
            {"type": "url", "equals": format!("{site}/unseen")},
            {"type": "selector", "selector": "#order-confirmation"},
            {"type": "text", "contains": "In stock", "weight": 2},
        ]}}),
    )
    .await;
    assert!(!t.success);
    assert_eq!(
        t.error_type, None,
        "failed checks are not an error of the run"
    );
    assert_eq!(t.reward, Some(0.5));
    let scores: Vec<f64> = t.reward_breakdown.iter().map(|i| i.score).collect();
    assert_eq!(scores, [0.0, 0.0, 1.0]);
    assert!(
        t.reward_breakdown[0].detail.contains("/unseen-item?n=1"),
        "{:?}",
        t.reward_breakdown[0]
    );
    assert!(t
        .error_message
        .as_deref()
        .is_some_and(|m| m.starts_with("check verify.0.url failed")));
    h.stop().await;
}

//! Accessibility-tree observations (`WEB_OBSERVATION=both`, the default) on
//! a real Chromium against pages served on 127.0.0.1: element ids stay the
//! same from step to step and actions accept them, in the page, in an
//! iframe and in an open shadow root; scrolling brings elements into the
//! observation that the first one did not list. The model is the scripted
//! OpenAI-compatible server, which picks ids out of the observations it is
//! sent, as a model would. And `WEB_SCREENSHOTS=model`: the step's
//! screenshot reaches that server as an image part, and the record, which
//! references the stored PNG, rebuilds the bytes sent.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use adp_core::llm::LlmClient;
use adp_core::llm_record;
use adp_core::Trajectory;
use base64::Engine as _;
use common::{llm_client, run, start_local, summary, Harness, Site};
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, RecordedRequest, Reply};

async fn start() -> (Harness, Site) {
    start_local(2).await
}

fn client(llm: &FakeLlm) -> LlmClient {
    llm_client(llm, |_| {})
}

/// The id (`e123`) of the first accessibility-tree line holding `needle`.
fn id_of(observation: &str, needle: &str) -> Option<String> {
    observation
        .lines()
        .filter(|l| l.contains(needle))
        .find_map(|l| {
            let start = l.find("[e")? + 1;
            let end = start + l[start..].find(']')?;
            Some(l[start..end].to_owned())
        })
}

/// The newest page view sent to the model (the last message's content).
fn last_page(req: &RecordedRequest) -> String {
    req.messages()
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Answers the n-th request with `script(n, page)`: a tool call, or a
/// `finish` saying what was missing.
async fn model(
    script: impl Fn(usize, &str) -> Option<(&'static str, Value)> + Send + Sync + 'static,
) -> FakeLlm {
    let n = Arc::new(AtomicUsize::new(0));
    FakeLlm::start_fn(move |req| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        let page = last_page(req);
        match script(k, &page) {
            Some((name, args)) => Reply::tool_call(name, args),
            None => Reply::tool_call(
                "finish",
                json!({"answer": format!("missing at call {k}: {page}")}),
            ),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_stable_across_steps_and_actions_accept_them() {
    let (h, site) = start().await;
    let llm = model(|k, page| match k {
        0 => Some((
            "fill",
            json!({"element": id_of(page, "textbox \"Your name\"")?, "text": "Ada"}),
        )),
        1 => Some(("extract", json!({}))),
        2 => Some((
            "select",
            json!({"element": id_of(page, "combobox \"Colour\"")?, "value": "Green"}),
        )),
        3 => Some((
            "click",
            json!({"element": id_of(page, "button \"Send order\"")?}),
        )),
        _ => Some(("finish", json!({"answer": "sent"}))),
    })
    .await;
    let handler = h.handler(h.settings(), Some(client(&llm)));
    let t = run(
        &handler,
        json!({
            "task_id": "ax_stable",
            "description": "Order in green for Ada",
            "max_steps": 6,
            "constraints": {"start_url": format!("{site}/order.html"), "expected_text": "Thank you, Ada"}
        }),
    )
    .await;
    let actions: Vec<(String, bool)> = summary(&t).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        actions,
        [
            ("goto".into(), true),
            ("fill".into(), true),
            ("extract".into(), true),
            ("select".into(), true),
            ("click".into(), true),
            ("finish".into(), true)
        ],
        "{:#?}",
        t.steps
    );
    assert!(t.success, "{t:#?}");
    assert_eq!(t.metadata["observation_mode"], "both");
    // The same element has the same id in every observation of the page.
    let name_ids: Vec<Option<String>> = t.steps[..4]
        .iter()
        .map(|s| id_of(&s.observation, "textbox \"Your name\""))
        .collect();
    assert!(name_ids[0].is_some(), "{}", t.steps[0].observation);
    assert!(name_ids.iter().all(|i| *i == name_ids[0]), "{name_ids:?}");
    assert_eq!(
        t.steps[1].action_params["element"].as_str(),
        name_ids[0].as_deref()
    );
    // The filled value and the chosen option show in later observations.
    assert!(
        t.steps[2]
            .observation
            .contains("textbox \"Your name\" value=\"Ada\""),
        "{}",
        t.steps[2].observation
    );
    assert!(
        t.steps[0].observation.contains("Accessibility tree"),
        "{}",
        t.steps[0].observation
    );
    // Boxes in page coordinates, in the viewport.
    let line = t.steps[0]
        .observation
        .lines()
        .find(|l| l.contains("button \"Send order\"") && l.contains("[e"))
        .expect("button line")
        .to_owned();
    assert!(line.contains(" @(") && !line.contains("(below)"), "{line}");
    // The raw tree is stored per step, next to the trajectory.
    let files = t.metadata["axtree_files"].as_array().expect("axtree_files");
    assert_eq!(files.len(), t.steps.len());
    let path = h
        .out
        .path()
        .join("trajectories")
        .join(files[0]["path"].as_str().expect("path"));
    let raw: Value = serde_json::from_slice(&std::fs::read(&path).expect("raw tree file"))
        .expect("raw tree json");
    assert!(
        raw["frames"][0]["nodes"]
            .as_array()
            .is_some_and(|n| !n.is_empty()),
        "{raw}"
    );
    // Ids name one page: a plan with ids is not cached.
    assert_eq!(t.metadata["cache_hit"], false);
    h.stop().await;
}

/// Runs task `task_id` on `path` of the site: the model clicks, by id, the
/// element whose tree line holds `first`, then the one holding `second`,
/// then finishes. Asserts those four actions (with the start page's goto)
/// succeeded; returns the trajectory and the harness to stop.
async fn two_clicks_by_id(
    task_id: &str,
    description: &str,
    path: &str,
    first: &'static str,
    second: &'static str,
) -> (Harness, Trajectory) {
    let (h, site) = start().await;
    let llm = model(move |k, page| match k {
        0 => Some(("click", json!({"element": id_of(page, first)?}))),
        1 => Some(("click", json!({"element": id_of(page, second)?}))),
        _ => Some(("finish", json!({"answer": "done"}))),
    })
    .await;
    let handler = h.handler(h.settings(), Some(client(&llm)));
    let t = run(
        &handler,
        json!({
            "task_id": task_id,
            "description": description,
            "max_steps": 4,
            "constraints": {"start_url": format!("{site}{path}")}
        }),
    )
    .await;
    let actions: Vec<(String, bool)> = summary(&t).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        actions,
        [
            ("goto".into(), true),
            ("click".into(), true),
            ("click".into(), true),
            ("finish".into(), true)
        ],
        "{:#?}",
        t.steps
    );
    (h, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_in_an_iframe_and_a_shadow_root_are_clicked_by_id() {
    let (h, t) = two_clicks_by_id(
        "ax_frames",
        "Press both buttons",
        "/frames",
        "button \"Inner button\"",
        "button \"Shadow button\"",
    )
    .await;
    let first = &t.steps[0].observation;
    assert!(
        first.contains("inner idle") && first.contains("shadow idle"),
        "{first}"
    );
    // The clicks happened in the iframe's document and in the shadow root.
    assert!(
        t.steps[1].observation.contains("inner clicked"),
        "{}",
        t.steps[1].observation
    );
    let last = &t.steps[2].observation;
    assert!(
        last.contains("inner clicked") && last.contains("shadow clicked"),
        "{last}"
    );
    // The iframe's button sits below the iframe's top in page coordinates.
    let y = |needle: &str| -> f64 {
        let l = first
            .lines()
            .find(|l| l.contains(needle) && l.contains("@("))
            .expect(needle);
        let at = l.find("@(").expect("box") + 2;
        let coords = &l[at..];
        coords
            .split([',', ' '])
            .nth(1)
            .expect("y")
            .parse()
            .expect("number")
    };
    assert!(y("button \"Inner button\"") > y("Iframe"), "{first}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svg_elements_are_clicked_by_id() {
    // SVG elements have no click() method: the action dispatches the click
    // event itself (an SVG link then navigates as a click on it would).
    let (h, t) = two_clicks_by_id(
        "ax_svg",
        "Paint, then follow the drawn link",
        "/svg",
        "button \"Paint\"",
        "link \"Drawn link\"",
    )
    .await;
    assert!(
        t.steps[1].observation.contains("painted")
            && !t.steps[1].observation.contains("not painted"),
        "{}",
        t.steps[1].observation
    );
    assert!(
        t.steps[2].observation.contains("Hardware item number 7"),
        "{}",
        t.steps[2].observation
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_reveals_elements_the_first_observation_did_not_list() {
    let (h, site) = start().await;
    let mut settings = h.settings();
    settings.max_ax_nodes = 40;
    let handler = h.handler(settings, None);
    let t = run(
        &handler,
        json!({
            "task_id": "ax_scroll",
            "constraints": {
                "start_url": format!("{site}/long"),
                "actions": [
                    {"type": "scroll", "direction": "down"},
                    {"type": "scroll", "direction": "down"},
                    {"type": "scroll", "direction": "down"},
                    {"type": "scroll", "direction": "down"}
                ]
            }
        }),
    )
    .await;
    assert!(summary(&t).iter().all(|s| s.1), "{:#?}", t.steps);
    let first = &t.steps[0].observation;
    let last = &t.steps[4].observation;
    assert!(first.contains("link \"Item 0\""), "{first}");
    assert!(first.contains("(below)"), "{first}");
    assert!(first.contains("below the viewport not listed"), "{first}");
    // Links in view after scrolling that the first observation did not list
    // at all (the list is 300 links of 30 px; 40 nodes are rendered).
    let revealed: Vec<&str> = last
        .lines()
        .filter(|l| l.contains("[e") && l.contains("link \"Item "))
        .filter(|l| !l.contains("(below)") && !l.contains("(above)"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|name| !first.contains(&format!("link \"{name}\"")))
        .collect();
    assert!(revealed.len() >= 5, "{revealed:?}\n{last}");
    assert!(
        last.contains("(above)") || last.contains("nodes above"),
        "{last}"
    );
    h.stop().await;
}

/// The image parts of a request's messages: (message index, URL).
fn images(req: &RecordedRequest) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, m) in req.messages().iter().enumerate() {
        for part in m["content"].as_array().into_iter().flatten() {
            if part["type"] == "image_url" {
                out.push((
                    i,
                    part["image_url"]["url"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_screenshots_reach_the_model_as_image_parts_and_are_stored_once() {
    let (h, site) = start().await;
    let llm = FakeLlm::start(vec![
        Reply::tool_call("extract", json!({})),
        Reply::tool_call("finish", json!({"answer": "seen"})),
    ])
    .await;
    let mut settings = h.settings();
    settings.screenshots_to_model = true;
    let handler = h.handler(settings, Some(client(&llm)));
    let t = run(
        &handler,
        json!({
            "task_id": "ax_shot",
            "description": "Look at the order form",
            "max_steps": 3,
            "constraints": {"start_url": format!("{site}/order.html")}
        }),
    )
    .await;
    assert!(t.success, "{t:#?}");
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2);
    // Each request carries exactly one screenshot, the newest page's, as an
    // OpenAI image part holding a PNG data URL.
    let mut last_at = 0;
    for (k, req) in reqs.iter().enumerate() {
        let imgs = images(req);
        assert_eq!(imgs.len(), 1, "request {k}: {imgs:?}");
        let (at, url) = &imgs[0];
        assert!(*at > last_at, "request {k}: the image is a newer message");
        last_at = *at;
        let b64 = url
            .strip_prefix("data:image/png;base64,")
            .expect("png data URL");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "request {k}: not a PNG"
        );
        let stored = std::fs::read(
            h.out
                .path()
                .join(format!("trajectories/ax_shot.files/step_{k}.png")),
        )
        .expect("stored screenshot");
        assert_eq!(png, stored, "request {k}: the step's stored screenshot");
    }
    // The trajectory references the files; it holds no base64 copy.
    let text = serde_json::to_string(&t).expect("json");
    assert!(!text.contains("base64,"), "screenshot stored twice");
    assert!(text.contains("adp-file:ax_shot.files/step_0.png"), "{text}");
    // ... and the records rebuild the requests byte for byte once inlined.
    let mut calls = llm_record::from_metadata(&t.metadata).expect("valid llm_calls");
    let inlined = llm_record::inline_files(&mut calls, &h.out.path().join("trajectories"))
        .expect("files found");
    assert_eq!(inlined, 2);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            llm_record::request_body(&calls, i),
            r.raw,
            "call {i} rebuilt as sent"
        );
    }
    h.stop().await;
}

//! `adp export`: every format validated structurally, the filters, corrupt
//! files skipped and reported, stdout output; conversations from recorded
//! model calls (`source: llm`) and from the steps (`source: synthetic`).

mod common;

use std::collections::HashSet;
use std::path::Path;

use adp_core::tools::{code_tools, web_tools, WEB_TOOL_NAMES};
use adp_core::ErrorType;
use common::*;
use serde_json::{json, Value};

/// 3 code successes (1, 2, 3 steps), 1 code failure, 1 web success, 1 web
/// failure, 1 trajectory without its task, 2 corrupt files, 1 archive, 1 temp
/// file, 1 infrastructure failure, 1 code and 1 web trajectory with recorded
/// model calls.
fn fixtures(f: &Fixture) {
    f.write_traj(&infra_traj("infra"));
    write_traj_value(&f.traj_dir(), &llm_code_traj("llm_c"));
    write_traj_value(&f.traj_dir(), &llm_web_traj("llm_w"));
    for (i, steps) in [1, 2, 3].into_iter().enumerate() {
        f.write_traj(&code_traj(&format!("c{i}"), true, None, steps));
    }
    f.write_traj(&code_traj("cfail", false, Some(ErrorType::RuntimeError), 2));
    f.write_traj(&web_traj("w_bad", false));
    let mut w = web_traj("w_ok", true);
    // Runtime-only fields of the start-page navigation.
    w.steps[0]
        .action_params
        .insert("auto".into(), serde_json::json!(true));
    w.steps[0]
        .action_params
        .insert("screenshot".into(), serde_json::json!("/abs/shots/0.png"));
    f.write_traj(&w);
    let mut no_task = code_traj("notask", true, None, 1);
    no_task.task = None;
    f.write_traj(&no_task);
    let d = f.traj_dir();
    std::fs::write(
        d.join("broken.json"),
        "{\"task_id\": \"broken\", \"steps\": [",
    )
    .expect("write");
    std::fs::write(d.join("other.json"), "{\"hello\": 1}").expect("write");
    std::fs::write(d.join("c0.attempt-1.json"), "{}").expect("write");
    std::fs::write(d.join(".tmp-123"), "{").expect("write");
}

fn export(f: &Fixture, out: &Path, extra: &[&str]) -> (Vec<Value>, Value) {
    let mut args = vec!["export", "--out", out.to_str().expect("path"), "--json"];
    args.extend_from_slice(extra);
    let summary = stdout_json(&f.adp_ok(&args));
    let body = std::fs::read_to_string(out).expect("dataset");
    (jsonl(&body), summary)
}

fn ids(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .map(|l| l["task_id"].as_str().expect("task_id").to_owned())
        .collect()
}

fn set(v: &[&str]) -> HashSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn trajectory_format_and_corrupt_files() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("data.jsonl");
    let (lines, summary) = export(&f, &out, &[]);
    assert_eq!(
        ids(&lines),
        set(&["c0", "c1", "c2", "cfail", "w_ok", "w_bad", "notask", "llm_c", "llm_w"])
    );
    // Each line is the file, every field kept.
    for l in &lines {
        let id = l["task_id"].as_str().expect("id");
        assert_eq!(l, &f.read_traj(id));
    }
    assert_eq!(summary["written"], 9);
    assert_eq!(summary["files_seen"], 12, "archive and temp file not read");
    assert_eq!(summary["filtered"]["infra_failure"], 1);
    assert_eq!(summary["skipped"]["total"], 2);
    assert_eq!(summary["skipped"]["by_reason"]["invalid_json"], 1);
    assert_eq!(summary["skipped"]["by_reason"]["not_a_trajectory"], 1);
    let files: HashSet<String> = summary["skipped"]["examples"]
        .as_array()
        .expect("examples")
        .iter()
        .map(|e| e["file"].as_str().expect("file").to_owned())
        .collect();
    assert_eq!(files, set(&["broken.json", "other.json"]));

    // The text summary reports them too.
    let text = stdout(&f.adp_ok(&["export", "--out", out.to_str().expect("path")]));
    assert!(text.contains("Exported 9 trajectories"), "{text}");
    assert!(text.contains("infrastructure failures 1"), "{text}");
    assert!(
        text.contains("Skipped 2 unusable trajectory files"),
        "{text}"
    );
    assert!(text.contains("broken.json: invalid JSON"), "{text}");

    // --include-attempts also reads archives (this one is corrupt: `{}`).
    let (_, summary) = export(&f, &out, &["--include-attempts"]);
    assert_eq!(summary["skipped"]["total"], 3);
}

#[test]
fn filters() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("f.jsonl");

    let (lines, s) = export(&f, &out, &["--success-only"]);
    assert_eq!(
        ids(&lines),
        set(&["c0", "c1", "c2", "w_ok", "notask", "llm_c", "llm_w"])
    );
    assert!(lines.iter().all(|l| l["success"] == true));
    assert_eq!(s["filtered"]["not_successful"], 2);

    let (lines, s) = export(&f, &out, &["--task-type", "web"]);
    assert_eq!(ids(&lines), set(&["w_ok", "w_bad", "llm_w"]));
    assert_eq!(s["filtered"]["task_type"], 6);

    let (lines, _) = export(&f, &out, &["--min-steps", "2"]);
    assert_eq!(
        ids(&lines),
        set(&["c1", "c2", "cfail", "w_ok", "w_bad", "llm_w"])
    );

    let (lines, s) = export(
        &f,
        &out,
        &["--success-only", "--task-type", "code", "--min-steps", "2"],
    );
    assert_eq!(ids(&lines), set(&["c1", "c2"]));
    assert_eq!(s["filtered"]["total"], 8);

    let (lines, s) = export(&f, &out, &["--source", "llm"]);
    assert_eq!(ids(&lines), set(&["llm_c", "llm_w"]));
    assert_eq!(s["filtered"]["source"], 7);
    let (lines, _) = export(&f, &out, &["--source", "synthetic", "--format", "messages"]);
    assert_eq!(
        ids(&lines),
        set(&["c0", "c1", "c2", "cfail", "w_ok", "w_bad"])
    );
    assert!(lines.iter().all(|l| l["source"] == "synthetic"));

    let o = f.adp(&["export", "--out", "x.jsonl", "--task-type", "video"]);
    assert_code(&o, 2);
    let o = f.adp(&["export", "--out", "x.jsonl", "--source", "human"]);
    assert_code(&o, 2);
}

#[test]
fn infrastructure_failures_only_when_asked_for() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("i.jsonl");
    for format in ["trajectory", "messages", "sharegpt", "rl"] {
        let (lines, s) = export(&f, &out, &["--format", format]);
        assert!(!ids(&lines).contains("infra"), "{format}");
        assert_eq!(s["filtered"]["infra_failure"], 1, "{format}");
    }
    let (lines, s) = export(
        &f,
        &out,
        &["--format", "messages", "--include-infra-failures"],
    );
    assert_eq!(s["filtered"]["infra_failure"], 0);
    let infra = lines
        .iter()
        .find(|l| l["task_id"] == "infra")
        .expect("infra row");
    assert_eq!(infra["error_type"], "system_error");
    assert_eq!(infra["success"], false);
    // No invented answer: the conversation ends where the trajectory did.
    let m = infra["messages"].as_array().expect("messages");
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(!infra.to_string().contains("Connection refused"));
}

fn tool_names(tools: &Value) -> HashSet<String> {
    tools
        .as_array()
        .expect("tools array")
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "function");
            assert_eq!(t["function"]["parameters"]["type"], "object");
            assert!(t["function"]["description"].is_string());
            t["function"]["name"].as_str().expect("name").to_owned()
        })
        .collect()
}

const LABELS: [&str; 8] = [
    "task_id",
    "task_type",
    "policy",
    "model",
    "success",
    "reward",
    "error_type",
    "source",
];

fn row<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["task_id"] == id)
        .unwrap_or_else(|| panic!("no row {id}"))
}

#[test]
fn synthetic_messages_are_rendered_from_the_steps() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("m.jsonl");
    let (lines, summary) = export(&f, &out, &["--format", "messages"]);
    assert_eq!(
        lines.len(),
        8,
        "the trajectory without its task cannot be a conversation"
    );
    assert_eq!(summary["unconvertible"]["missing_task"], 1);

    for l in &lines {
        for label in LABELS {
            assert!(l.get(label).is_some(), "{label} in {l}");
        }
        let names = tool_names(&l["tools"]);
        let msgs = l["messages"].as_array().expect("messages");
        let roles: Vec<&str> = msgs
            .iter()
            .map(|m| m["role"].as_str().expect("role"))
            .collect();
        assert_eq!(&roles[..2], ["system", "user"]);
        for m in msgs.iter().filter(|m| m["role"] == "assistant") {
            for call in m["tool_calls"].as_array().into_iter().flatten() {
                let name = call["function"]["name"].as_str().expect("name");
                assert!(names.contains(name), "{name} defined in tools");
                let args = call["function"]["arguments"].as_object().expect("object");
                assert!(!args.contains_key("auto") && !args.contains_key("screenshot"));
            }
        }
        if l["source"] == "llm" {
            continue;
        }
        // system, user, (assistant with tool_calls, tool)*, [assistant]
        for pair in roles[2..].chunks(2) {
            if pair.len() == 2 {
                assert_eq!(pair, ["assistant", "tool"], "{roles:?}");
            }
        }
        for i in (2..msgs.len()).step_by(2) {
            let Some(call) = msgs[i]["tool_calls"].get(0) else {
                assert_eq!(i, msgs.len() - 1, "a plain answer ends the conversation");
                continue;
            };
            assert_eq!(call["type"], "function");
            if let Some(result) = msgs.get(i + 1) {
                assert_eq!(result["tool_call_id"], call["id"]);
                assert_eq!(result["name"], call["function"]["name"]);
                assert!(result["content"].is_string());
            }
        }
        let id = l["task_id"].as_str().expect("id");
        assert!(msgs[1]["content"]
            .as_str()
            .expect("user")
            .starts_with(&format!("Task {id}")));
    }

    let c2 = row(&lines, "c2");
    assert_eq!(c2["source"], "synthetic");
    assert_eq!(c2["policy"], "heuristic");
    assert!(c2["model"].is_null() && c2["reward"].is_null() && c2["error_type"].is_null());
    // Exactly the tools (names and schemas) the openai policies offer a model.
    assert_eq!(c2["tools"], Value::Array(code_tools()));
    assert_eq!(tool_names(&c2["tools"]), set(&["python", "final_answer"]));
    let m = c2["messages"].as_array().expect("messages");
    assert_eq!(m.len(), 9);
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "python");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"]["code"],
        "print(0)"
    );
    assert_eq!(m[3]["content"], "0\n");
    assert_eq!(m[8]["tool_calls"][0]["function"]["name"], "final_answer");
    assert_eq!(
        m[8]["tool_calls"][0]["function"]["arguments"],
        json!({"answer": "2\n"}),
        "final answer = final_result"
    );

    let web = row(&lines, "w_ok");
    assert_eq!(web["tools"], Value::Array(web_tools()));
    let names = tool_names(&web["tools"]);
    for action in WEB_TOOL_NAMES {
        assert!(names.contains(action), "{action}");
    }
    let m = web["messages"].as_array().expect("messages");
    assert!(m[1]["content"]
        .as_str()
        .expect("user")
        .contains("Start page: http://127.0.0.1:9/start"));
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "goto");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        json!({"url": "http://127.0.0.1:9/start"}),
        "runtime-only fields (auto, screenshot) are not arguments"
    );
    assert_eq!(
        m[4]["tool_calls"][0]["function"]["arguments"],
        json!({"element": 0})
    );
    assert_eq!(m[5]["content"], "Title: Next\nThe answer is 42");
    // The task ends with finish: the answer is not repeated after it.
    assert_eq!(m.len(), 7);
    assert_eq!(m[6]["tool_calls"][0]["function"]["name"], "finish");
    assert_eq!(
        m[6]["tool_calls"][0]["function"]["arguments"],
        json!({"answer": "42"})
    );

    // Failed step: the error is part of the observation; a failed task with
    // no result ends with the last observation (no invented answer).
    let bad = row(&lines, "cfail");
    assert_eq!(bad["error_type"], "runtime_error");
    let m = bad["messages"].as_array().expect("messages");
    assert_eq!(m.len(), 6);
    assert!(m[5]["content"]
        .as_str()
        .expect("obs")
        .contains("[runtime_error] boom"));

    // --tool-arguments string: JSON-encoded arguments (OpenAI API style).
    let (lines, _) = export(
        &f,
        &out,
        &[
            "--format",
            "messages",
            "--tool-arguments",
            "string",
            "--task-type",
            "web",
            "--source",
            "synthetic",
        ],
    );
    let args = &lines[0]["messages"][2]["tool_calls"][0]["function"]["arguments"];
    let parsed: Value =
        serde_json::from_str(args.as_str().expect("a string")).expect("JSON inside");
    assert_eq!(parsed["url"], "http://127.0.0.1:9/start");
}

/// The full message list of the last answered call of a trajectory file,
/// taken apart by hand (independent of the exporter's reader).
fn last_request(traj: &Value) -> (Vec<Value>, Value, Value) {
    let calls = traj["metadata"]["llm_calls"].as_array().expect("calls");
    let mut messages: Vec<Value> = Vec::new();
    for c in calls {
        messages.truncate(c["messages_prefix"].as_u64().expect("prefix") as usize);
        messages.extend(
            c["messages_added"]
                .as_array()
                .expect("added")
                .iter()
                .cloned(),
        );
    }
    let last = calls.last().expect("a call");
    (
        messages,
        last["request"]["tools"].clone(),
        last["response"].clone(),
    )
}

#[test]
fn recorded_calls_give_the_model_conversation() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("r.jsonl");
    let (lines, _) = export(
        &f,
        &out,
        &[
            "--format",
            "messages",
            "--source",
            "llm",
            "--tools-as-json-string",
        ],
    );
    assert_eq!(ids(&lines), set(&["llm_c", "llm_w"]));

    let c = row(&lines, "llm_c");
    assert_eq!(c["source"], "llm");
    assert_eq!(c["policy"], "openai");
    assert_eq!(c["model"], "fake-model");
    assert_eq!(c["reward"], 1.0);
    let (mut expected, tools, response) = last_request(&f.read_traj("llm_c"));
    expected.push(json!({"role": "assistant", "content": response["content"]}));
    assert_eq!(c["messages"], Value::Array(expected));
    assert_eq!(
        c["messages"][0]["content"],
        "You solve tasks with Python (recorded prompt)."
    );
    let tools_back: Value =
        serde_json::from_str(c["tools"].as_str().expect("string")).expect("json");
    assert_eq!(tools_back, tools);

    // Web: the conversation ends with the finish call; the runtime's own
    // navigation (auto, screenshot) is not something the model said.
    let w = row(&lines, "llm_w");
    assert!(w["reward"].is_null());
    assert_eq!(
        w["model"], "fake-model",
        "from the responses when metadata has none"
    );
    let (mut expected, _, response) = last_request(&f.read_traj("llm_w"));
    expected
        .push(json!({"role": "assistant", "content": null, "tool_calls": response["tool_calls"]}));
    assert_eq!(w["messages"], Value::Array(expected));
    let text = w["messages"].to_string();
    assert!(
        !text.contains("screenshot") && !text.contains("\\\"auto\\\""),
        "{text}"
    );
    assert_eq!(
        text.matches("\\\"answer\\\":\\\"42\\\"").count(),
        1,
        "{text}"
    );

    // Default rendering: arguments as objects, tools as a list.
    let (lines, _) = export(&f, &out, &["--format", "messages", "--source", "llm"]);
    let c = row(&lines, "llm_c");
    assert_eq!(
        c["messages"][2]["tool_calls"][0]["function"]["arguments"],
        json!({"code": "print(6 * 7)"})
    );
    assert_eq!(tool_names(&c["tools"]), set(&["python"]));
}

#[test]
fn sharegpt_format() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("s.jsonl");
    let (lines, _) = export(&f, &out, &["--format", "sharegpt", "--success-only"]);
    assert_eq!(
        ids(&lines),
        set(&["c0", "c1", "c2", "w_ok", "llm_c", "llm_w"])
    );
    for l in &lines {
        for label in LABELS {
            assert!(l.get(label).is_some(), "{label} in {l}");
        }
        let conv = l["conversations"].as_array().expect("conversations");
        let from: Vec<&str> = conv
            .iter()
            .map(|m| m["from"].as_str().expect("from"))
            .collect();
        assert_eq!(&from[..2], ["system", "human"]);
        assert!(matches!(
            *from.last().expect("last"),
            "gpt" | "function_call"
        ));
        for pair in from[2..].chunks(2) {
            if pair.len() == 2 {
                assert_eq!(pair, ["function_call", "observation"], "{from:?}");
            }
        }
        assert!(conv.iter().all(|m| m["value"].is_string()));
        let tools: Value =
            serde_json::from_str(l["tools"].as_str().expect("tools string")).expect("tools JSON");
        let names = tool_names(&tools);
        for m in conv.iter().filter(|m| m["from"] == "function_call") {
            let call: Value =
                serde_json::from_str(m["value"].as_str().expect("value")).expect("call JSON");
            assert!(names.contains(call["name"].as_str().expect("name")));
            assert!(call["arguments"].is_object());
        }
    }
    let w = row(&lines, "w_ok");
    let last: Value =
        serde_json::from_str(w["conversations"][6]["value"].as_str().expect("s")).expect("call");
    assert_eq!(
        last,
        json!({"name": "finish", "arguments": {"answer": "42"}})
    );
    let c = row(&lines, "llm_c");
    assert_eq!(c["source"], "llm");
    assert_eq!(
        c["conversations"][0]["value"],
        "You solve tasks with Python (recorded prompt)."
    );
    assert_eq!(
        c["conversations"][3],
        json!({"from": "observation", "value": "42\n"})
    );
    assert_eq!(
        c["conversations"][4],
        json!({"from": "gpt", "value": "The answer is 42."})
    );
}

#[test]
fn rl_format_holds_the_tokens_of_every_call() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("rl.jsonl");
    let (lines, s) = export(&f, &out, &["--format", "rl"]);
    assert_eq!(ids(&lines), set(&["llm_c", "llm_w"]));
    assert_eq!(
        s["unconvertible"]["no_token_ids"], 7,
        "synthetic rows have no tokens"
    );
    let c = row(&lines, "llm_c");
    for label in LABELS {
        assert!(c.get(label).is_some(), "{label}");
    }
    assert_eq!(c["calls"], json!([0, 1]));
    assert_eq!(c["prompt_ids"], json!([[1, 2, 3], [1, 2, 3]]));
    assert_eq!(c["completion_ids"], json!([[11, 12, 13], [21, 22]]));
    assert_eq!(c["completion_mask"], json!([[1, 1, 1], [1, 1]]));
    assert_eq!(
        c["completion_logprobs"],
        json!([[-0.11, -0.12, -0.13], [-0.21, -0.22]])
    );
    assert_eq!(c["finish_reasons"], json!(["tool_calls", "stop"]));
    assert_eq!(c["reward"], 1.0);
    assert_eq!(c["reward_from"], "reward");
    let w = row(&lines, "llm_w");
    assert_eq!(w["reward"], 1.0, "no reward recorded: success counts 1");
    assert_eq!(w["reward_from"], "success");
}

#[test]
fn export_to_stdout_keeps_the_summary_on_stderr() {
    let f = Fixture::new();
    fixtures(&f);
    let o = f.adp_ok(&[
        "export",
        "--out",
        "-",
        "--format",
        "messages",
        "--success-only",
    ]);
    assert_eq!(stdout_jsonl(&o).len(), 6);
    assert!(stderr(&o).contains("Exported 6 trajectories"));
}

#[test]
fn export_of_an_empty_or_missing_directory() {
    let f = Fixture::new();
    let out = f.output_dir().join("e.jsonl");
    let (lines, s) = export(&f, &out, &[]);
    assert!(lines.is_empty());
    assert_eq!(s["written"], 0);
    let o = adp_with_env(
        &["export", "--out", out.to_str().expect("path")],
        &f.redis.url(),
        &f.output_dir().join("nope"),
    );
    assert_code(&o, 0);

    // An output dir that is a file: bad configuration.
    let file = f.output_dir().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    let o = adp_with_env(
        &["export", "--out", out.to_str().expect("path")],
        &f.redis.url(),
        &file,
    );
    assert_code(&o, 64);
}

/// A web trajectory whose first request sent a screenshot, stored once as
/// `<dir>/<id>.files/step_0.png` and recorded as an `adp-file:` reference.
fn screenshot_traj(f: &Fixture, id: &str, png: Option<&[u8]>) {
    let mut t = llm_web_traj(id);
    t["metadata"]["llm_calls"][0]["messages_added"][1]["content"] = json!([
        {"type": "text", "text": format!("Task {id}")},
        {"type": "image_url", "image_url": {"url": format!("adp-file:{id}.files/step_0.png")}}
    ]);
    write_traj_value(&f.traj_dir(), &t);
    if let Some(png) = png {
        std::fs::create_dir_all(f.traj_dir().join(format!("{id}.files"))).expect("mkdir");
        std::fs::write(
            f.traj_dir().join(format!("{id}.files")).join("step_0.png"),
            png,
        )
        .expect("png");
    }
}

#[test]
fn images_sent_to_the_model_are_inlined_or_kept_as_references() {
    let f = Fixture::new();
    let png = b"\x89PNG\r\n\x1a\nnot really an image, but bytes to carry";
    screenshot_traj(&f, "shot", Some(png));
    screenshot_traj(&f, "shot_gone", None);
    let out = f.output_dir().join("i.jsonl");
    let image = |row: &Value| row["messages"][1]["content"][1]["image_url"]["url"].clone();

    // Default: the data URL the model was sent; a row whose file is gone is
    // left out and counted.
    let (lines, summary) = export(&f, &out, &["--format", "messages"]);
    assert_eq!(ids(&lines), set(&["shot"]));
    assert_eq!(
        image(row(&lines, "shot")),
        adp_core::llm_record::png_data_url(png)
    );
    assert_eq!(summary["unconvertible"]["missing_image"], 1, "{summary}");

    // References kept: every row, the paths as recorded.
    let (lines, summary) = export(&f, &out, &["--format", "messages", "--images", "reference"]);
    assert_eq!(ids(&lines), set(&["shot", "shot_gone"]));
    assert_eq!(image(row(&lines, "shot")), "adp-file:shot.files/step_0.png");
    assert_eq!(
        image(row(&lines, "shot_gone")),
        "adp-file:shot_gone.files/step_0.png"
    );
    assert!(
        summary["unconvertible"].get("missing_image").is_none(),
        "{summary}"
    );

    // sharegpt keeps the text parts; the trajectory format the file as is.
    let (lines, _) = export(&f, &out, &["--format", "sharegpt"]);
    assert_eq!(ids(&lines), set(&["shot", "shot_gone"]));
    assert_eq!(
        row(&lines, "shot")["conversations"][1]["value"],
        "Task shot"
    );
    let (lines, _) = export(&f, &out, &[]);
    assert_eq!(ids(&lines), set(&["shot", "shot_gone"]));
}

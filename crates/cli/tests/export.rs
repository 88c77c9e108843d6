//! `adp export`: every format validated structurally, the filters, corrupt
//! files skipped and reported, stdout output.

mod common;

use std::collections::HashSet;
use std::path::Path;

use adp_cli::export::tools::{browser_tool_name, BROWSER_ACTIONS};
use adp_core::ErrorType;
use common::*;
use serde_json::Value;

/// 3 code successes (1, 2, 3 steps), 1 code failure, 1 web success, 1 web
/// failure, 1 trajectory without its task, 2 corrupt files, 1 archive, 1 temp file.
fn fixtures(f: &Fixture) {
    for (i, steps) in [1, 2, 3].into_iter().enumerate() {
        f.write_traj(&code_traj(&format!("c{i}"), true, None, steps));
    }
    f.write_traj(&code_traj("cfail", false, Some(ErrorType::RuntimeError), 2));
    f.write_traj(&web_traj("w_ok", true));
    f.write_traj(&web_traj("w_bad", false));
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
    assert_eq!(lines.len(), 7);
    assert_eq!(
        ids(&lines),
        set(&["c0", "c1", "c2", "cfail", "w_ok", "w_bad", "notask"])
    );
    // Each line is the file, every field kept.
    for l in &lines {
        let id = l["task_id"].as_str().expect("id");
        assert_eq!(l, &f.read_traj(id));
    }
    assert_eq!(summary["written"], 7);
    assert_eq!(summary["files_seen"], 9, "archive and temp file not read");
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
    assert!(text.contains("Exported 7 trajectories"), "{text}");
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
    assert_eq!(ids(&lines), set(&["c0", "c1", "c2", "w_ok", "notask"]));
    assert!(lines.iter().all(|l| l["success"] == true));
    assert_eq!(s["filtered"]["not_successful"], 2);

    let (lines, s) = export(&f, &out, &["--task-type", "web"]);
    assert_eq!(ids(&lines), set(&["w_ok", "w_bad"]));
    assert_eq!(s["filtered"]["task_type"], 5);

    let (lines, _) = export(&f, &out, &["--min-steps", "2"]);
    assert_eq!(ids(&lines), set(&["c1", "c2", "cfail", "w_ok", "w_bad"]));

    let (lines, s) = export(
        &f,
        &out,
        &["--success-only", "--task-type", "code", "--min-steps", "2"],
    );
    assert_eq!(ids(&lines), set(&["c1", "c2"]));
    assert_eq!(s["filtered"]["total"], 5);

    let o = f.adp(&["export", "--out", "x.jsonl", "--task-type", "video"]);
    assert_code(&o, 2);
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

#[test]
fn messages_format_alternates_roles_as_documented() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("m.jsonl");
    let (lines, summary) = export(&f, &out, &["--format", "messages"]);
    assert_eq!(
        lines.len(),
        6,
        "the trajectory without its task cannot be a conversation"
    );
    assert_eq!(summary["unconvertible"]["missing_task"], 1);

    for l in &lines {
        let names = tool_names(&l["tools"]);
        let msgs = l["messages"].as_array().expect("messages");
        let roles: Vec<&str> = msgs
            .iter()
            .map(|m| m["role"].as_str().expect("role"))
            .collect();
        // system, user, (assistant with tool_calls, tool)*, assistant
        assert_eq!(roles[0], "system");
        assert_eq!(roles[1], "user");
        assert_eq!(*roles.last().expect("last"), "assistant");
        assert_eq!(roles.len() % 2, 1);
        for pair in roles[2..roles.len() - 1].chunks(2) {
            assert_eq!(pair, ["assistant", "tool"], "{roles:?}");
        }
        for i in (2..msgs.len() - 1).step_by(2) {
            let call = &msgs[i]["tool_calls"][0];
            assert_eq!(call["type"], "function");
            let name = call["function"]["name"].as_str().expect("name");
            assert!(names.contains(name), "{name} defined in tools");
            assert!(call["function"]["arguments"].is_object());
            assert_eq!(msgs[i + 1]["tool_call_id"], call["id"]);
            assert_eq!(msgs[i + 1]["name"], name);
            assert!(msgs[i + 1]["content"].is_string());
        }
        assert!(msgs.last().expect("final")["tool_calls"].is_null());
        let id = l["task_id"].as_str().expect("id");
        let traj = f.read_traj(id);
        assert!(msgs[1]["content"]
            .as_str()
            .expect("user")
            .starts_with(&format!("Task {id}")));
        assert_eq!(
            (msgs.len() - 3) / 2,
            traj["steps"].as_array().expect("steps").len()
        );
    }

    let c2 = lines.iter().find(|l| l["task_id"] == "c2").expect("c2");
    assert_eq!(tool_names(&c2["tools"]), set(&["python_executor"]));
    let m = c2["messages"].as_array().expect("messages");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"]["code"],
        "print(0)"
    );
    assert_eq!(m[3]["content"], "0\n");
    assert_eq!(m[8]["content"], "2\n", "final answer = final_result");

    let web = lines.iter().find(|l| l["task_id"] == "w_ok").expect("w_ok");
    let names = tool_names(&web["tools"]);
    for action in BROWSER_ACTIONS {
        let tool = browser_tool_name(action);
        assert!(names.contains(&tool), "{tool}");
    }
    let m = web["messages"].as_array().expect("messages");
    assert!(m[1]["content"]
        .as_str()
        .expect("user")
        .contains("Start page: http://127.0.0.1:9/start"));
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "browser_goto");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        serde_json::json!({"url": "http://127.0.0.1:9/start"})
    );
    assert_eq!(
        m[4]["tool_calls"][0]["function"]["arguments"],
        serde_json::json!({"element": 0})
    );
    assert_eq!(m[5]["content"], "Title: Next\nThe answer is 42");
    assert_eq!(m[8]["content"], "42");

    // Failed step: the error is part of the observation; failed task: the answer says so.
    let bad = lines
        .iter()
        .find(|l| l["task_id"] == "cfail")
        .expect("cfail");
    let m = bad["messages"].as_array().expect("messages");
    assert!(m[5]["content"]
        .as_str()
        .expect("obs")
        .contains("[runtime_error] boom"));
    assert!(m[6]["content"]
        .as_str()
        .expect("answer")
        .contains("runtime_error"));

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
        ],
    );
    let args = &lines[0]["messages"][2]["tool_calls"][0]["function"]["arguments"];
    let parsed: Value =
        serde_json::from_str(args.as_str().expect("a string")).expect("JSON inside");
    assert_eq!(parsed["url"], "http://127.0.0.1:9/start");
}

#[test]
fn sharegpt_format() {
    let f = Fixture::new();
    fixtures(&f);
    let out = f.output_dir().join("s.jsonl");
    let (lines, _) = export(&f, &out, &["--format", "sharegpt", "--success-only"]);
    assert_eq!(ids(&lines), set(&["c0", "c1", "c2", "w_ok"]));
    for l in &lines {
        let conv = l["conversations"].as_array().expect("conversations");
        let from: Vec<&str> = conv
            .iter()
            .map(|m| m["from"].as_str().expect("from"))
            .collect();
        assert_eq!(&from[..2], ["system", "human"]);
        assert_eq!(*from.last().expect("last"), "gpt");
        for pair in from[2..from.len() - 1].chunks(2) {
            assert_eq!(pair, ["function_call", "observation"], "{from:?}");
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
    let w = lines.iter().find(|l| l["task_id"] == "w_ok").expect("w_ok");
    assert_eq!(w["conversations"][8]["value"], "42");
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
    assert_eq!(stdout_jsonl(&o).len(), 4);
    assert!(stderr(&o).contains("Exported 4 trajectories"));
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

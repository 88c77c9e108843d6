//! Exports of a mixed code + web set (synthetic and recorded model calls)
//! loaded by Hugging Face `datasets` (pinned in `scripts/setup.sh dev`), the
//! way a trainer loads them: `load_dataset("json", data_files=...)`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Loads each JSONL file with `datasets` and prints the rows as it sees them.
const LOAD: &str = r#"
import json, sys
import datasets
out = {"version": datasets.__version__}
for name, path in zip(sys.argv[1::2], sys.argv[2::2]):
    ds = datasets.load_dataset("json", data_files=path, split="train")
    out[name] = ds.to_list()
print(json.dumps(out))
"#;

fn load_with_datasets(files: &[(&str, &Path)]) -> Value {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(LOAD);
    for (name, path) in files {
        cmd.arg(name).arg(path);
    }
    let o = cmd
        .env("HF_DATASETS_CACHE", cache.path())
        .env("HF_HOME", cache.path())
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .expect("run python3");
    assert!(
        o.status.success(),
        "python3 with datasets failed (scripts/setup.sh dev installs it):\n{}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("JSON from python")
}

fn mixed_set(f: &Fixture) {
    f.write_traj(&code_traj("code_synth", true, None, 2));
    f.write_traj(&web_traj("web_synth", true));
    f.write_traj(&infra_traj("infra"));
    write_traj_value(&f.traj_dir(), &llm_code_traj("code_llm"));
    write_traj_value(&f.traj_dir(), &llm_web_traj("web_llm"));
}

fn export(f: &Fixture, name: &str, args: &[&str]) -> (std::path::PathBuf, Vec<Value>) {
    let out = f.output_dir().join(name);
    let mut all = vec!["export", "--out", out.to_str().expect("path")];
    all.extend_from_slice(args);
    f.adp_ok(&all);
    let rows = jsonl(&std::fs::read_to_string(&out).expect("dataset"));
    (out, rows)
}

fn by_id<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["task_id"] == id)
        .unwrap_or_else(|| panic!("no row {id}"))
}

#[test]
fn datasets_loads_messages_sharegpt_and_rl_exports() {
    let f = Fixture::new();
    mixed_set(&f);
    let (messages, m_rows) = export(
        &f,
        "m.jsonl",
        &["--format", "messages", "--tools-as-json-string"],
    );
    let (sharegpt, s_rows) = export(&f, "s.jsonl", &["--format", "sharegpt"]);
    let (rl, r_rows) = export(&f, "rl.jsonl", &["--format", "rl"]);
    assert_eq!(m_rows.len(), 4, "infrastructure failure left out");
    assert_eq!(s_rows.len(), 4);
    assert_eq!(r_rows.len(), 2, "only recorded calls have tokens");

    let loaded = load_with_datasets(&[
        ("messages", &messages),
        ("sharegpt", &sharegpt),
        ("rl", &rl),
    ]);
    assert!(loaded["version"]
        .as_str()
        .expect("version")
        .starts_with("3."));

    let lm = loaded["messages"].as_array().expect("messages rows");
    assert_eq!(lm.len(), 4);
    assert!(lm.iter().all(|r| r["task_id"] != "infra"));
    let mut calls_seen = 0;
    for row in lm {
        let id = row["task_id"].as_str().expect("id");
        let written = by_id(&m_rows, id);
        for label in [
            "task_type",
            "policy",
            "model",
            "success",
            "reward",
            "error_type",
            "source",
        ] {
            assert_eq!(row[label], written[label], "{label} of {id}");
        }
        // Tools come back as the same JSON string, nothing merged in.
        assert_eq!(row["tools"], written["tools"], "{id}");
        let (got, want) = (
            row["messages"].as_array().expect("messages"),
            written["messages"].as_array().expect("messages"),
        );
        assert_eq!(got.len(), want.len(), "{id}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["role"], w["role"]);
            assert_eq!(g["content"], w["content"]);
            let (Some(gc), Some(wc)) = (g["tool_calls"].as_array(), w["tool_calls"].as_array())
            else {
                assert!(w["tool_calls"].is_null(), "{id}: {w}");
                continue;
            };
            assert_eq!(gc.len(), wc.len());
            for (gc, wc) in gc.iter().zip(wc) {
                calls_seen += 1;
                let args = gc["function"]["arguments"]
                    .as_str()
                    .expect("arguments string");
                assert_eq!(args, wc["function"]["arguments"], "{id}");
                let parsed: Value = serde_json::from_str(args).expect("arguments JSON");
                let parsed = parsed.as_object().expect("object");
                assert!(
                    parsed.values().all(|v| !v.is_null()),
                    "{id}: padded null argument in {args}"
                );
            }
        }
    }
    assert!(calls_seen >= 6, "{calls_seen} tool calls checked");

    let ls = loaded["sharegpt"].as_array().expect("sharegpt rows");
    assert_eq!(ls.len(), 4);
    for row in ls {
        let written = by_id(&s_rows, row["task_id"].as_str().expect("id"));
        assert_eq!(row["conversations"], written["conversations"]);
        assert_eq!(row["tools"], written["tools"]);
    }

    let lr = loaded["rl"].as_array().expect("rl rows");
    assert_eq!(lr.len(), 2);
    for row in lr {
        let written = by_id(&r_rows, row["task_id"].as_str().expect("id"));
        for field in [
            "prompt_ids",
            "completion_ids",
            "completion_mask",
            "reward",
            "calls",
        ] {
            assert_eq!(row[field], written[field], "{field}");
        }
        let lp = row["completion_logprobs"].as_array().expect("logprobs");
        let want = written["completion_logprobs"].as_array().expect("logprobs");
        for (a, b) in lp.iter().zip(want) {
            let (a, b) = (a.as_array().expect("list"), b.as_array().expect("list"));
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (x.as_f64().expect("f"), y.as_f64().expect("f"));
                assert!((x - y).abs() < 1e-6, "{x} vs {y}");
            }
        }
    }
    assert_eq!(
        by_id(lr, "code_llm")["completion_ids"],
        json!([[11, 12, 13], [21, 22]])
    );
}

/// A web row whose model was sent a screenshot has list contents next to
/// string contents: with `--content-as-parts` `datasets` loads it (with
/// other rows), and the image comes back as the data URL sent.
#[test]
fn datasets_loads_rows_with_images_as_parts() {
    let f = Fixture::new();
    mixed_set(&f);
    let mut t = llm_web_traj("web_shot");
    let png = b"\x89PNG\r\n\x1a\nbytes";
    t["metadata"]["llm_calls"][0]["messages_added"][1]["content"] = json!([
        {"type": "text", "text": "Task web_shot"},
        {"type": "image_url", "image_url": {"url": "adp-file:web_shot.files/step_0.png"}}
    ]);
    write_traj_value(&f.traj_dir(), &t);
    std::fs::create_dir_all(f.traj_dir().join("web_shot.files")).expect("mkdir");
    std::fs::write(f.traj_dir().join("web_shot.files/step_0.png"), png).expect("png");
    let (messages, rows) = export(
        &f,
        "m.jsonl",
        &[
            "--format",
            "messages",
            "--tools-as-json-string",
            "--content-as-parts",
        ],
    );
    assert_eq!(rows.len(), 5);
    let loaded = load_with_datasets(&[("messages", &messages)]);
    let rows = loaded["messages"].as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    let shot = by_id(rows, "web_shot");
    let user = &shot["messages"][1]["content"];
    assert_eq!(user[0]["type"], "text");
    assert_eq!(user[0]["text"], "Task web_shot");
    assert_eq!(user[1]["type"], "image_url");
    assert_eq!(
        user[1]["image_url"]["url"],
        adp_core::llm_record::png_data_url(png)
    );
    let code = by_id(rows, "code_llm");
    assert_eq!(code["messages"][0]["content"][0]["type"], "text");
    assert!(code["messages"][0]["content"][0]["text"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
}

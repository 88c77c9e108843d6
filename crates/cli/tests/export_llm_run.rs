//! End to end: the real `sandbox-runtime` binary runs a code task with the
//! `openai` policy (native tool calls, `LLM_LOGPROBS=true`) against
//! test-support's scripted OpenAI-compatible server, then `adp export`: the
//! `messages` row is the server's last logged request plus the final reply,
//! and the `rl` row holds the tokens of both calls.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use adp_core::TaskType;
use common::*;
use serde_json::{json, Value};
use test_support::fake_llm::{Completion, FakeLlm, Reply};
use test_support::{free_port, wait_until, ChildGuard};

/// `target/<profile>` of this test executable, with the `sandbox-runtime`
/// binary built (cargo hands a test only its own package's binaries; a
/// no-op after `scripts/test.sh`'s `cargo build --workspace --bins`). As in
/// crates/reliability/src/bins.rs.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(test_support::workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "sandbox-runtime",
            "--bin",
            "sandbox-runtime",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of sandbox-runtime failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The sandbox runtime with the openai policy on `llm_url`.
fn start_runtime(f: &Fixture, llm_url: &str) -> ChildGuard {
    let child = Command::new(bin_dir().join("sandbox-runtime"))
        .args(["--redis-url", &f.redis.url()])
        .args(["--output-dir", f.output_dir().to_str().expect("path")])
        .args(["--metrics-host", "127.0.0.1"])
        .args(["--metrics-port", &free_port().to_string()])
        .args(["--read-block-ms", "200"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("LLM_BASE_URL", llm_url)
        .env("LLM_MODEL", "test-model")
        .env("LLM_TOOL_MODE", "native")
        .env("LLM_LOGPROBS", "true")
        .env("LLM_SEED", "7")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sandbox-runtime");
    ChildGuard(child)
}

fn export(f: &Fixture, format: &str, extra: &[&str]) -> Value {
    let mut args = vec!["export", "--out", "-", "--format", format];
    args.extend_from_slice(extra);
    let rows = stdout_jsonl(&f.adp_ok(&args));
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().expect("a row")
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_row_of_an_llm_run_is_the_last_request_plus_the_reply() {
    // Runs code first; answers once it has seen the tool result.
    let llm = FakeLlm::start_fn(|req| {
        if req.messages().iter().any(|m| m["role"] == "tool") {
            Completion::text("The answer is 42.").into()
        } else {
            Reply::Completion(
                Completion::text("Let me compute it.")
                    .reasoning("six times seven")
                    .call("python", &json!({"code": "print(6 * 7)"}).to_string()),
            )
        }
    })
    .await;
    let f = Fixture::new();
    let _runtime = start_runtime(&f, &llm.url());
    let mut task = task("llm_e2e", TaskType::Code);
    task.description = "What is six times seven?".into();
    xadd_task(&mut f.conn(), &task);
    let path = f.traj_dir().join("llm_e2e.json");
    wait_until(Duration::from_secs(120), || path.exists())
        .unwrap_or_else(|e| panic!("no trajectory: {e}"));
    let traj = f.read_traj("llm_e2e");
    assert_eq!(traj["success"], true, "{traj:#}");

    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let last = &requests[1].body;
    let reply = json!({"role": "assistant", "content": "The answer is 42."});

    // As sent: arguments as the JSON strings the server received.
    let row = export(&f, "messages", &["--tools-as-json-string"]);
    let mut expected = last["messages"].as_array().expect("messages").clone();
    expected.push(reply.clone());
    assert_eq!(row["messages"], Value::Array(expected.clone()));
    let tools: Value = serde_json::from_str(row["tools"].as_str().expect("string")).expect("json");
    assert_eq!(tools, last["tools"]);
    assert_eq!(row["source"], "llm");
    assert_eq!(row["policy"], "openai");
    assert_eq!(row["model"], "test-model");
    assert_eq!(row["success"], true);
    assert_eq!(row["task_type"], "code");
    assert!(row["error_type"].is_null());
    let text = row["messages"].to_string();
    assert!(
        text.contains("Let me compute it."),
        "the model's own words are kept"
    );

    // Default: the same messages with arguments as objects.
    let row = export(&f, "messages", &[]);
    for m in &mut expected {
        for call in m
            .get_mut("tool_calls")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let args = call["function"]["arguments"]
                .as_str()
                .expect("string")
                .to_owned();
            call["function"]["arguments"] = serde_json::from_str(&args).expect("args json");
        }
    }
    assert_eq!(row["messages"], Value::Array(expected));
    assert_eq!(row["tools"], last["tools"]);

    let row = export(&f, "sharegpt", &[]);
    let conv = row["conversations"].as_array().expect("conversations");
    assert_eq!(
        conv[0]["value"], last["messages"][0]["content"],
        "the real system prompt"
    );
    assert_eq!(conv.last().expect("last")["value"], "The answer is 42.");

    let row = export(&f, "rl", &[]);
    assert_eq!(row["calls"], json!([0, 1]));
    let ids = row["completion_ids"].as_array().expect("ids");
    let lps = row["completion_logprobs"].as_array().expect("logprobs");
    let prompts = row["prompt_ids"].as_array().expect("prompts");
    assert_eq!(ids.len(), 2);
    for i in 0..2 {
        let n = ids[i].as_array().expect("list").len();
        assert!(n > 0);
        assert_eq!(lps[i].as_array().expect("list").len(), n);
        assert_eq!(row["completion_mask"][i], json!(vec![1; n]));
    }
    assert!(
        prompts[1].as_array().expect("ids").len() > prompts[0].as_array().expect("ids").len(),
        "the second prompt holds the first exchange"
    );
    assert!(row["reward_from"].is_string());
    if std::env::var_os("EXPORT_PRINT_ROWS").is_some() {
        for format in ["trajectory", "messages", "sharegpt", "rl"] {
            let extra: &[&str] = if format == "messages" {
                &["--tools-as-json-string"]
            } else {
                &[]
            };
            println!("{format}: {}", export(&f, format, extra));
        }
    }
}

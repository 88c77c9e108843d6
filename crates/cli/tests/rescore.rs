//! `adp rescore`: after a task's expected answer (or URL check) is edited in
//! the task file, the recorded trajectories are scored again without running
//! an agent; the live checks keep their result, the old score goes to
//! `reward_history`, other fields are kept, a second run changes nothing.

mod common;

use adp_core::reward::{self, Checks, FinalState, Live};
use adp_core::{ErrorType, TaskSpec, Trajectory};
use common::*;
use serde_json::{json, Value};

/// A trajectory of `task` scored as a runtime scores it (the selector, a
/// live check, found).
fn scored(task: &TaskSpec, answer: &str, final_state: Value) -> Trajectory {
    let mut t = Trajectory::new(task, "test-runtime");
    t.final_result = answer.to_owned();
    t.meta(reward::FINAL_STATE_KEY, final_state);
    let checks = Checks::from_task(task).expect("checks");
    let mut live = Live::default().completed(true, None);
    live.selectors(&checks, &[Some(true)]);
    reward::evaluate(&checks, &FinalState::from_trajectory(&t), &live).apply(&mut t);
    t
}

fn spec(line: &Value) -> TaskSpec {
    adp_core::validate::validate_value(line.clone()).expect("valid task")
}

#[test]
fn rescore_after_editing_the_expected_answer() {
    let f = Fixture::new();
    let answer_v1 = json!({"task_id": "sum", "task_type": "reasoning", "description": "100 + 42",
        "constraints": {"expected_answer": {"value": "42", "match": "contains"}}});
    let web_v1 = json!({"task_id": "shop", "task_type": "web", "description": "order",
        "constraints": {"start_url": "http://127.0.0.1:9/", "verify": [
            {"type": "url", "regex": "/done$"}, {"type": "selector", "selector": "#ok"}]}});
    let t = scored(&spec(&answer_v1), "The sum is 142.", json!({}));
    assert!(!t.success, "\"42\" is not in \"142\"");
    let path = f.write_traj(&t);
    // A field this version does not know is kept.
    let mut raw: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    raw["run_id"] = json!("r1");
    std::fs::write(&path, serde_json::to_vec_pretty(&raw).expect("json")).expect("write");
    let t = scored(
        &spec(&web_v1),
        "",
        json!({"url": "http://127.0.0.1:9/done", "text": "ok"}),
    );
    assert!(t.success);
    f.write_traj(&t);
    let broken = code_traj("infra", false, Some(ErrorType::SystemError), 0);
    f.write_traj(&broken);

    let mut answer_v2 = answer_v1.clone();
    answer_v2["constraints"]["expected_answer"]["value"] = json!("142");
    let mut web_v2 = web_v1.clone();
    web_v2["constraints"]["verify"][0]["regex"] = json!("/elsewhere$");
    let tasks = f.output_dir().join("tasks.jsonl");
    let infra = json!({"task_id": "infra", "task_type": "code", "description": "d"});
    let missing = json!({"task_id": "never_ran", "task_type": "code", "description": "d"});
    let lines = [&answer_v2, &web_v2, &infra, &missing]
        .map(Value::to_string)
        .join("\n");
    std::fs::write(&tasks, format!("{lines}\n")).expect("tasks");
    let tasks = tasks.to_str().expect("utf-8 path");

    let before = std::fs::read(f.traj_dir().join("sum.json")).expect("read");
    let dry = stdout_json(&f.adp_ok(&["rescore", "--dry-run", "--json", tasks]));
    assert_eq!(dry["changed"].as_array().map(Vec::len), Some(2), "{dry:#}");
    assert_eq!(
        std::fs::read(f.traj_dir().join("sum.json")).expect("read"),
        before
    );

    let out = stdout(&f.adp_ok(&["rescore", tasks]));
    assert!(
        out.contains("changed sum: reward 0.00 -> 1.00, success false -> true"),
        "{out}"
    );
    assert!(
        out.contains("Rescored 2 trajectories: 2 changed (1 now succeed, 1 now fail)"),
        "{out}"
    );
    assert!(
        out.contains("1 task(s) without a trajectory") && out.contains("1 infrastructure failure"),
        "{out}"
    );

    let sum = f.read_traj("sum");
    assert_eq!(sum["success"], true);
    assert_eq!(sum["reward"], 1.0);
    assert_eq!(
        sum["error_message"],
        Value::Null,
        "the failed check's message is gone"
    );
    assert_eq!(sum["run_id"], "r1");
    assert_eq!(
        sum["task"]["constraints"]["expected_answer"]["value"],
        "142"
    );
    assert_eq!(sum["reward_history"][0]["reward"], 0.0);
    assert_eq!(sum["reward_history"][0]["success"], false);
    let shop = f.read_traj("shop");
    assert_eq!(shop["success"], false);
    assert_eq!(
        shop["reward"], 0.5,
        "the selector check keeps its live result"
    );
    assert_eq!(shop["reward_breakdown"][1]["score"], 1.0);
    assert_eq!(shop["reward_history"][0]["reward"], 1.0);

    // Nothing left to change; a bad line is reported and exits 1.
    let again = stdout_json(&f.adp_ok(&["rescore", "--json", tasks]));
    assert_eq!(again["changed"], json!([]));
    assert_eq!(again["unchanged"], 2);
    std::fs::write(
        f.output_dir().join("bad.jsonl"),
        r#"{"task_id": "sum", "task_type": "reasoning", "description": "d", "constraints": {"expected_answer": {"value": "1", "match": "fuzzy"}}}"#,
    )
    .expect("write");
    let bad = f.adp(&[
        "rescore",
        f.output_dir().join("bad.jsonl").to_str().expect("path"),
    ]);
    assert_code(&bad, 1);
    assert!(
        stdout(&bad).contains("line 1: constraint `expected_answer` is invalid"),
        "{}",
        stdout(&bad)
    );

    // Without a task file: every trajectory with the task it recorded.
    let all = stdout_json(&f.adp_ok(&["rescore", "--json"]));
    assert_eq!(all["rescored"], 2);
    assert_eq!(all["changed"], json!([]));
    assert_eq!(all["infra_failures"], 1);
}

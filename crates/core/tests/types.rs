//! Serde of the contract's types against the JSON examples of CONTRACT §1 and §3.

use adp_core::types::*;
use serde_json::{json, Value};

const CONTRACT_TASK: &str = r#"{"task_id": "demo_fib", "task_type": "code", "description": "Compute fibonacci(10)", "expected_tools": ["python_executor"], "constraints": {}, "max_steps": 5}"#;

const CONTRACT_TRAJECTORY: &str = r#"{
  "task_id": "demo_fib",
  "runtime_id": "sandbox-runtime",
  "success": true,
  "steps": [
    {"step_id": 0, "action_type": "code_execution", "action_params": {"code": "..."},
     "observation": "55\n", "success": true, "error_type": null, "error_message": null,
     "timestamp": 1764000000.12, "duration": 0.041}
  ],
  "final_result": "55\n",
  "error_type": null,
  "error_message": null,
  "total_duration": 0.35,
  "metadata": {"policy": "heuristic", "cache_hit": false, "attempt": 1},
  "created_at": 1764000000.0
}"#;

#[test]
fn contract_task_example_parses_with_defaults() {
    let t: TaskSpec = serde_json::from_str(CONTRACT_TASK).expect("parse");
    assert_eq!(t.task_id, "demo_fib");
    assert_eq!(t.task_type, TaskType::Code);
    assert_eq!(t.max_steps, 5);
    assert_eq!(t.timeout, 300);
    assert_eq!(t.priority, 1);
    let back: Value = serde_json::to_value(&t).expect("serialize");
    assert_eq!(back["task_type"], "code");
    assert_eq!(back["timeout"], 300);
    let again: TaskSpec = serde_json::from_value(back).expect("reparse");
    assert_eq!(again, t);
}

#[test]
fn contract_trajectory_example_round_trips_exactly() {
    let original: Value = serde_json::from_str(CONTRACT_TRAJECTORY).expect("json");
    let t: Trajectory = serde_json::from_value(original.clone()).expect("parse");
    assert!(t.success);
    assert_eq!(t.steps[0].action_type, ActionType::CodeExecution);
    assert_eq!(t.steps[0].error_type, None);
    assert_eq!(t.task, None);
    let mut back = serde_json::to_value(&t).expect("serialize");
    // CONTRACT §8 adds `run_id`; a file without it belongs to the default run.
    assert_eq!(back["run_id"], "default");
    back.as_object_mut().expect("object").remove("run_id");
    assert_eq!(back, original, "every field keeps its name, type and value");
}

#[test]
fn enums_use_contract_spellings() {
    for (e, s) in [
        (ErrorType::Timeout, "timeout"),
        (ErrorType::NetworkError, "network_error"),
        (ErrorType::CompileError, "compile_error"),
        (ErrorType::RuntimeError, "runtime_error"),
        (ErrorType::BrowserError, "browser_error"),
        (ErrorType::SystemError, "system_error"),
    ] {
        assert_eq!(serde_json::to_value(e).expect("ser"), json!(s));
        assert_eq!(e.as_str(), s);
        assert_eq!(ErrorType::parse(s), Some(e));
    }
    for (a, s) in [
        (ActionType::CodeExecution, "code_execution"),
        (ActionType::BrowserAction, "browser_action"),
        (ActionType::ToolCall, "tool_call"),
    ] {
        assert_eq!(serde_json::to_value(a).expect("ser"), json!(s));
    }
    for (t, s, stream) in [
        (TaskType::Code, "code", "tasks:code"),
        (TaskType::Web, "web", "tasks:web"),
        (TaskType::Reasoning, "reasoning", "tasks:reasoning"),
    ] {
        assert_eq!(serde_json::to_value(t).expect("ser"), json!(s));
        assert_eq!(t.stream(), stream);
    }
}

#[test]
fn trajectory_with_task_extension_round_trips() {
    let task: TaskSpec = serde_json::from_str(CONTRACT_TASK).expect("parse");
    let mut t = Trajectory::new(&task, "sandbox-runtime");
    t.meta("policy", "scripted");
    t.error_type = Some(ErrorType::Timeout);
    let text = serde_json::to_string(&t).expect("ser");
    let back: Trajectory = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, t);
    let v: Value = serde_json::from_str(&text).expect("json");
    for field in test_support::TRAJECTORY_FIELDS {
        assert!(v.get(field).is_some(), "field {field} always present");
    }
}

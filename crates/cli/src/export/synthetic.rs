//! The canonical conversation of a trajectory no model produced (scripted
//! code, a heuristic, a replayed cached plan, or a file written before model
//! calls were recorded), built from its steps and marked `"source":
//! "synthetic"`:
//!
//! 1. `system`: what the agent is and which tools it has;
//! 2. `user`: the task description (plus the start URL of a web task);
//! 3. for each step: an `assistant` turn calling one tool (the step's action,
//!    with only the arguments the tool's schema declares: runtime-only
//!    fields such as `auto` or a screenshot path never appear) and a `tool`
//!    turn with the step's observation;
//! 4. the end: a code task with a `final_result` ends with a `final_answer`
//!    call holding it (a plain `assistant` message when the result is not an
//!    answer: the run failed, or it is the reason the policy gave up); a web task that ends with `finish` ends with that
//!    call (the answer is its argument, not repeated after it); a web task
//!    with a result but no `finish` step ends with an `assistant` message
//!    holding it.
//!
//! The tools and their schemas are exactly the ones the `openai` policies
//! offer a model in native tool mode ([`adp_core::tools`]): `python` and
//! `final_answer` for code and reasoning tasks, `goto`, `click`, ...
//! `finish` for web tasks.

use adp_core::tools::{self, ANSWER_TOOL, PYTHON_TOOL, WEB_FINISH_TOOL};
use adp_core::TaskType;
use serde_json::{json, Map, Value};

use super::chat::{Dialog, Source};
use crate::view::{StepView, TrajView};

const CODE_SYSTEM: &str = "You are a careful coding agent. You solve the user's task by \
running Python code with the `python` tool, one call at a time. The tool result is the \
code's stdout and stderr. When you know the answer, call `final_answer` with it; that ends \
the task.";

const WEB_SYSTEM: &str = "You control a web browser to complete a task. Each tool is one \
browser action; call exactly one tool per reply. After each action you get the page: its \
title, URL, visible text, and a numbered list of interactive elements. Refer to an element \
by its number (\"element\") or by a CSS selector (\"selector\"). When the task is done, \
call \"finish\" with the answer (taken from the page).";

/// Fields the runtimes add to `action_params` that are not arguments of
/// any tool (the start-page navigation's marker, a saved screenshot's path).
const RUNTIME_ONLY: [&str; 2] = ["auto", "screenshot"];

/// One tool call and its result.
struct Turn {
    tool: String,
    arguments: Map<String, Value>,
    observation: String,
    finish: bool,
}

/// Builds the conversation; `None` when the trajectory does not hold its task
/// (no description to put in the user turn).
pub fn build(t: &TrajView) -> Option<Dialog> {
    let task = t.task.as_ref()?;
    let web = match t.task_type() {
        Some(TaskType::Web) => true,
        Some(_) => false,
        None => t.steps.iter().any(|s| s.action_type == "browser_action"),
    };
    let mut tool_defs = if web {
        tools::web_tools()
    } else {
        tools::code_tools()
    };
    let mut user = task.description.clone();
    if web {
        if let Some(url) = task.start_url().filter(|u| !u.trim().is_empty()) {
            user.push_str(&format!("\n\nStart page: {url}"));
        }
    }
    let mut messages = vec![
        json!({"role": "system", "content": if web { WEB_SYSTEM } else { CODE_SYSTEM }}),
        json!({"role": "user", "content": user}),
    ];
    let mut finished = false;
    for (i, s) in t.steps.iter().enumerate() {
        let turn = turn(s);
        if !tool_defs
            .iter()
            .any(|d| tools::tool_name(d) == Some(turn.tool.as_str()))
        {
            tool_defs.push(tools::generic_tool(&turn.tool));
        }
        let id = format!("call_{i}");
        messages.push(json!({
            "role": "assistant",
            "content": "",
            "tool_calls": [{
                "id": id,
                "type": "function",
                "function": {"name": turn.tool, "arguments": Value::Object(turn.arguments).to_string()}
            }]
        }));
        if turn.finish && s.success {
            finished = true;
            break;
        }
        messages.push(json!({
            "role": "tool",
            "tool_call_id": id,
            "name": turn.tool,
            "content": turn.observation,
        }));
    }
    if !finished && !t.final_result.is_empty() {
        // The result is an answer the agent gave unless the run failed or
        // the result is the reason it gave up.
        let answered =
            t.error_type.is_none() && t.error_message.as_deref() != Some(t.final_result.as_str());
        if web || !answered {
            messages.push(json!({"role": "assistant", "content": t.final_result}));
        } else {
            let args = json!({"answer": t.final_result}).to_string();
            messages.push(json!({
                "role": "assistant",
                "content": "",
                "tool_calls": [{
                    "id": format!("call_{}", t.steps.len()),
                    "type": "function",
                    "function": {"name": ANSWER_TOOL, "arguments": args}
                }]
            }));
        }
    }
    Some(Dialog {
        source: Source::Synthetic,
        messages,
        tools: tool_defs,
    })
}

fn turn(s: &StepView) -> Turn {
    let p = &s.action_params;
    let mut finish = false;
    let (tool, arguments) = match s.action_type.as_str() {
        "code_execution" => {
            let code = p.get("code").cloned().unwrap_or_else(|| json!(""));
            (
                PYTHON_TOOL.to_owned(),
                Map::from_iter([("code".to_owned(), code)]),
            )
        }
        "browser_action" => {
            let action = p.get("type").and_then(Value::as_str).unwrap_or("action");
            finish = action == WEB_FINISH_TOOL;
            let mut args = p.clone();
            args.remove("type");
            let args = match tools::web_tool(action) {
                Some(schema) => tools::declared_arguments(&schema, args),
                None => args,
            };
            (action.to_owned(), args)
        }
        "tool_call" => {
            let name = p
                .get("tool")
                .or_else(|| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_owned();
            let args = match p.get("args").or_else(|| p.get("arguments")) {
                Some(Value::Object(m)) => m.clone(),
                _ => {
                    let mut m = p.clone();
                    m.remove("tool");
                    m.remove("name");
                    m
                }
            };
            (name, args)
        }
        other => (
            if other.is_empty() { "tool" } else { other }.to_owned(),
            p.clone(),
        ),
    };
    let mut arguments = arguments;
    for key in RUNTIME_ONLY {
        arguments.remove(key);
    }
    let mut observation = s.observation.clone();
    if !s.success {
        if let Some(msg) = s.error_message.as_deref().filter(|m| !m.is_empty()) {
            if !observation.contains(msg) {
                if !observation.is_empty() && !observation.ends_with('\n') {
                    observation.push('\n');
                }
                let kind = s.error_type.as_deref().unwrap_or("error");
                observation.push_str(&format!("[{kind}] {msg}"));
            }
        }
    }
    Turn {
        tool,
        arguments,
        observation,
        finish,
    }
}

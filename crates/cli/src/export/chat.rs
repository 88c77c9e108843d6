//! A trajectory as a tool-calling conversation, built from its steps so it
//! works for every policy (scripted, heuristic, openai):
//!
//! 1. `system`: what the agent is and which tools it has;
//! 2. `user`: the task description (plus the start URL of a web task);
//! 3. for each step: an `assistant` turn calling one tool (the step's action)
//!    and a `tool` turn with the step's observation;
//! 4. a final `assistant` turn with the answer (`final_result`).
//!
//! [`to_messages`] renders it in the OpenAI chat format (with `tools`),
//! [`to_sharegpt`] in the ShareGPT format used by LLaMA-Factory and axolotl.

use adp_core::TaskType;
use serde_json::{json, Map, Value};

use super::tools;
use crate::view::{StepView, TrajView};

/// How tool-call arguments are written in the `messages` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArgumentsAs {
    /// A JSON object, as Hugging Face chat templates and TRL expect.
    Object,
    /// A JSON-encoded string, as the OpenAI API and its fine-tuning files use.
    String,
}

/// One tool call and its result.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub call_id: String,
    pub tool: String,
    pub arguments: Map<String, Value>,
    pub observation: String,
}

/// A trajectory as a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub system: String,
    pub user: String,
    pub tools: Vec<Value>,
    pub turns: Vec<Turn>,
    pub answer: String,
}

const CODE_SYSTEM: &str = "You are an agent that solves tasks by running Python code. \
Call the python_executor tool to run code; its output comes back to you. \
When you have the result, reply with the final answer.";

const WEB_SYSTEM: &str = "You are a web agent controlling a browser. Each browser_* tool \
performs one action and returns an observation: the page title, URL, visible text and a \
numbered list of interactive elements (use a number as `element`). \
When you are done, reply with the final answer.";

/// Builds the conversation; `None` when the trajectory does not hold its task
/// (no description to put in the user turn).
pub fn build(t: &TrajView) -> Option<Conversation> {
    let task = t.task.as_ref()?;
    let web = match t.task_type() {
        Some(TaskType::Web) => true,
        Some(_) => false,
        None => t.steps.iter().any(|s| s.action_type == "browser_action"),
    };
    let mut tool_defs = if web {
        tools::browser_tools()
    } else {
        vec![tools::python_executor()]
    };
    let mut user = task.description.clone();
    if web {
        if let Some(url) = task.start_url().filter(|u| !u.trim().is_empty()) {
            user.push_str(&format!("\n\nStart page: {url}"));
        }
    }
    let turns: Vec<Turn> = t
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| turn(i, s))
        .collect();
    for turn in &turns {
        if !tool_defs
            .iter()
            .any(|d| tools::tool_name(d) == Some(turn.tool.as_str()))
        {
            tool_defs.push(
                turn.tool
                    .strip_prefix("browser_")
                    .and_then(tools::browser_tool)
                    .unwrap_or_else(|| tools::generic_tool(&turn.tool)),
            );
        }
    }
    let answer = if !t.final_result.is_empty() {
        t.final_result.clone()
    } else if t.success {
        "Done.".to_owned()
    } else {
        format!(
            "The task failed ({}): {}",
            t.failure_label().unwrap_or("task_failed"),
            t.error_message.as_deref().unwrap_or("no result")
        )
    };
    Some(Conversation {
        system: if web { WEB_SYSTEM } else { CODE_SYSTEM }.to_owned(),
        user,
        tools: tool_defs,
        turns,
        answer,
    })
}

fn turn(i: usize, s: &StepView) -> Turn {
    let p = &s.action_params;
    let (tool, arguments) = match s.action_type.as_str() {
        "code_execution" => {
            let code = p.get("code").cloned().unwrap_or_else(|| json!(""));
            (
                tools::PYTHON_EXECUTOR.to_owned(),
                Map::from_iter([("code".to_owned(), code)]),
            )
        }
        "browser_action" => {
            let action = p.get("type").and_then(Value::as_str).unwrap_or("action");
            let mut args = p.clone();
            args.remove("type");
            (tools::browser_tool_name(action), args)
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
        call_id: format!("call_{i}"),
        tool,
        arguments,
        observation,
    }
}

/// The OpenAI chat format: `{"messages": [...], "tools": [...]}` with roles
/// `system`, `user`, then (`assistant` with `tool_calls`, `tool`) per step,
/// then a final `assistant`.
pub fn to_messages(c: &Conversation, args_as: ArgumentsAs) -> (Value, Value) {
    let mut messages = vec![
        json!({"role": "system", "content": c.system}),
        json!({"role": "user", "content": c.user}),
    ];
    for t in &c.turns {
        let arguments = match args_as {
            ArgumentsAs::Object => Value::Object(t.arguments.clone()),
            ArgumentsAs::String => Value::String(Value::Object(t.arguments.clone()).to_string()),
        };
        messages.push(json!({
            "role": "assistant",
            "content": "",
            "tool_calls": [{
                "id": t.call_id,
                "type": "function",
                "function": {"name": t.tool, "arguments": arguments}
            }]
        }));
        messages.push(json!({
            "role": "tool",
            "tool_call_id": t.call_id,
            "name": t.tool,
            "content": t.observation,
        }));
    }
    messages.push(json!({"role": "assistant", "content": c.answer}));
    (Value::Array(messages), Value::Array(c.tools.clone()))
}

/// The ShareGPT format: `conversations` with `from` = `system`, `human`,
/// then (`function_call`, `observation`) per step, then `gpt`; `tools` is the
/// JSON-encoded tool list (LLaMA-Factory's convention).
pub fn to_sharegpt(c: &Conversation) -> (Value, Value) {
    let mut conv = vec![
        json!({"from": "system", "value": c.system}),
        json!({"from": "human", "value": c.user}),
    ];
    for t in &c.turns {
        let call = json!({"name": t.tool, "arguments": Value::Object(t.arguments.clone())});
        conv.push(json!({"from": "function_call", "value": call.to_string()}));
        conv.push(json!({"from": "observation", "value": t.observation}));
    }
    conv.push(json!({"from": "gpt", "value": c.answer}));
    (
        Value::Array(conv),
        Value::String(Value::Array(c.tools.clone()).to_string()),
    )
}

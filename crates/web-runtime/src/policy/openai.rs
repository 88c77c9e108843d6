//! The `openai` policy: an OpenAI-compatible chat model (the shared
//! [`adp_core::llm::LlmClient`]) picks each action. Every call is recorded as
//! sent and as answered (`metadata.llm_calls`, docs/formats.md).
//!
//! Two ways to exchange actions (`LLM_TOOL_MODE`):
//!
//! * `native` (default): each action of CONTRACT §5 is a tool ([`tools`]:
//!   only the action's own parameters). The reply's first tool call is the
//!   action; its result and the new page go back as a `tool` message with the
//!   call's id. A reply with no tool call ends the task, its text being the
//!   answer. Several tool calls: the first is performed, each other one is
//!   answered "not run". Malformed arguments or an unknown tool: a `tool`
//!   message says what is wrong and the model is asked again; a second
//!   invalid reply in a row fails the task. `finish_reason: "length"` (cut at
//!   `max_tokens`): the task fails saying so; nothing of the reply is done.
//! * `text`: the reply's JSON action is taken bare or from a ```json fence;
//!   results go back as user messages. A reply with no valid action is told
//!   back to the model once; a second one in a row fails the task.
//!
//! To keep prompts bounded, an observation is sent in full once; in the
//! requests after a newer one, the older message is sent shortened. That
//! happens only in what is sent next: each call's record holds exactly the
//! messages it sent (the first call that sends the shortened form has a
//! `messages_prefix` that stops before it).

use adp_core::llm::{LlmClient, Sampling, ToolMode};
use adp_core::llm_record::{CallLog, LlmResponse};
use adp_core::{InfraError, TaskSpec, Trajectory};
use serde_json::{json, Map, Value};

use super::{Decision, Turn};
use crate::actions::{parse_reply, Action, GRAMMAR, MAX_WAIT_MS};

/// Characters of page text kept when an observation is shortened.
const OLD_OBSERVATION_CHARS: usize = 300;

/// What the tool message of an extra tool call says.
const NOT_RUN: &str =
    "Not run: only the first tool call of a reply is performed. Call one tool at a time.";

pub struct OpenAi {
    client: LlmClient,
    mode: ToolMode,
    sampling: Sampling,
    tools: Option<Value>,
    /// The conversation as it will be sent next.
    messages: Vec<Value>,
    /// Index of the message holding the latest full observation.
    full_observation: Option<usize>,
    invalid_replies: u32,
    model: Option<String>,
    log: CallLog,
    /// Tool calls of the last reply still owed a `tool` message (native):
    /// the one performed (`None`) and the extras (`Some(reason)`).
    pending: Vec<(String, Option<String>)>,
    /// Steps recorded before the policy's first action (the start URL).
    steps_before: u32,
}

impl OpenAi {
    pub fn new(client: LlmClient) -> Self {
        let mode = client.config().tool_mode;
        let sampling = client.config().sampling;
        OpenAi {
            client,
            mode,
            sampling,
            tools: (mode == ToolMode::Native).then(tools),
            messages: Vec::new(),
            full_observation: None,
            invalid_replies: 0,
            model: None,
            log: CallLog::new(),
            pending: Vec::new(),
            steps_before: 0,
        }
    }

    fn system_prompt(&self, max_steps: u32) -> String {
        match self.mode {
            ToolMode::Text => format!(
                "You control a web browser to complete a task. After each action you get the page: \
its title, URL, visible text, and a numbered list of interactive elements. Refer to an element \
by its number (\"element\") or by a CSS selector (\"selector\").\n\
Reply with exactly ONE action as a JSON object, optionally in a ```json fence, nothing else. \
The actions are:\n{GRAMMAR}\n\
Use only information shown on the pages. When the task is done, reply with \"finish\" and put the \
answer (taken from the page) in \"answer\". You have at most {max_steps} actions."
            ),
            ToolMode::Native => format!(
                "You control a web browser to complete a task. Each tool is one browser action; \
call exactly one tool per reply. After each action you get the page: its title, URL, visible \
text, and a numbered list of interactive elements. Refer to an element by its number \
(\"element\") or by a CSS selector (\"selector\").\n\
Use only information shown on the pages. When the task is done, call \"finish\" with the answer \
(taken from the page). You have at most {max_steps} actions."
            ),
        }
    }

    pub async fn next(&mut self, turn: &Turn<'_>) -> Result<Decision, InfraError> {
        let page = turn.observation.render();
        if self.messages.is_empty() {
            self.start(turn, &page);
        } else {
            let result = match turn.last {
                Some((action, performed)) => match &performed.error {
                    None => format!("Action {} succeeded: {}.", action.kind(), performed.note),
                    Some((kind, msg)) => {
                        format!("Action {} FAILED ({kind}): {msg}.", action.kind())
                    }
                },
                None => "No action yet.".to_owned(),
            };
            self.shorten_previous();
            let content = format!(
                "{result}\n\nCurrent page (step {} of at most {}):\n{page}",
                turn.step, turn.task.max_steps
            );
            match self.mode {
                ToolMode::Text => {
                    self.messages
                        .push(json!({"role": "user", "content": content}));
                    self.full_observation = Some(self.messages.len() - 1);
                }
                ToolMode::Native if !self.pending.is_empty() => {
                    let at = self.messages.len();
                    self.answer_pending(Some(content));
                    self.full_observation = Some(at);
                }
                // Nothing to answer (cannot happen after an action): plain text.
                ToolMode::Native => {
                    self.messages
                        .push(json!({"role": "user", "content": content}));
                    self.full_observation = Some(self.messages.len() - 1);
                }
            }
        }
        loop {
            let reply = self
                .client
                .complete(
                    &mut self.log,
                    &self.messages,
                    self.tools.as_ref(),
                    self.sampling,
                )
                .await?;
            let call = self.log.len() - 1;
            if self.model.is_none() {
                self.model = self
                    .log
                    .calls()
                    .last()
                    .and_then(|c| c.request.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            let decision = match self.mode {
                ToolMode::Text => self.text_decision(&reply),
                ToolMode::Native => self.native_decision(&reply),
            };
            match decision {
                Some(Decision::Act(action)) => {
                    self.invalid_replies = 0;
                    // The step this action becomes: the runtime's start-URL
                    // step, then one per action.
                    self.log.set_step_id(call, self.steps_before + turn.step);
                    return Ok(Decision::Act(action));
                }
                Some(d) => return Ok(d),
                None => continue,
            }
        }
    }

    /// The first messages: system prompt, then the task and the page.
    fn start(&mut self, turn: &Turn<'_>, page: &str) {
        let over = Sampling::from_constraints(&turn.task.constraints).unwrap_or_else(|why| {
            tracing::warn!(task_id = %turn.task.task_id, error = %why, "Invalid constraints.sampling ignored.");
            Sampling::default()
        });
        self.sampling = self.sampling.overridden_by(over);
        // Before the first action, the only step is the runtime's start-URL
        // navigation, whose outcome is handed in as `last`.
        self.steps_before = u32::from(turn.last.is_some());
        let system = self.system_prompt(turn.task.max_steps);
        self.messages
            .push(json!({"role": "system", "content": system}));
        self.messages
            .push(json!({"role": "user", "content": task_message(turn.task, page)}));
        self.full_observation = Some(self.messages.len() - 1);
    }

    /// Text mode: the JSON action in the reply, or `None` after telling the
    /// model its reply was not one.
    fn text_decision(&mut self, reply: &LlmResponse) -> Option<Decision> {
        let text = reply.content.clone().unwrap_or_default();
        self.messages
            .push(json!({"role": "assistant", "content": text}));
        match parse_reply(&text) {
            Ok(action) => Some(Decision::Act(action)),
            Err(why) => {
                self.invalid_replies += 1;
                if self.invalid_replies >= 2 {
                    return Some(Decision::GiveUp(format!(
                        "the model's reply was not a valid action twice in a row (last: {why})"
                    )));
                }
                self.messages
                    .push(json!({"role": "user", "content": format!(
                        "Your reply was not a valid action: {why}. Reply with exactly one JSON \
                    action object, for example {{\"type\": \"click\", \"element\": 0}}."
                    )}));
                None
            }
        }
    }

    /// Native mode: the first tool call as an action; `None` after answering
    /// an invalid one (the model is asked again).
    fn native_decision(&mut self, reply: &LlmResponse) -> Option<Decision> {
        let mut assistant = json!({"role": "assistant", "content": reply.content});
        let mut calls = reply.tool_calls.clone();
        for (k, c) in calls.iter_mut().enumerate() {
            if c.get("id").and_then(Value::as_str).is_none() {
                c["id"] = json!(format!("call_{}_{k}", self.log.len() - 1));
            }
        }
        if !calls.is_empty() {
            assistant["tool_calls"] = json!(calls);
        }
        self.messages.push(assistant);
        if reply.finish_reason.as_deref() == Some("length") {
            return Some(Decision::GiveUp(
                "the model's reply was cut at max_tokens (finish_reason \"length\"); nothing of it was done"
                    .to_owned(),
            ));
        }
        let Some(first) = calls.first() else {
            let text = reply.content.clone().unwrap_or_default();
            return Some(Decision::Answer(text.trim().to_owned()));
        };
        let ids: Vec<String> = calls
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        match action_of_tool_call(first) {
            Ok(action) => {
                self.pending = ids
                    .into_iter()
                    .enumerate()
                    .map(|(k, id)| (id, (k > 0).then(|| NOT_RUN.to_owned())))
                    .collect();
                if matches!(action, Action::Finish { .. }) {
                    // The conversation ends with this reply.
                    self.pending.clear();
                }
                Some(Decision::Act(action))
            }
            Err(why) => {
                self.invalid_replies += 1;
                if self.invalid_replies >= 2 {
                    return Some(Decision::GiveUp(format!(
                        "the model's tool call was invalid twice in a row (last: {why})"
                    )));
                }
                self.pending = ids
                    .into_iter()
                    .enumerate()
                    .map(|(k, id)| {
                        let msg = if k == 0 {
                            format!("Invalid tool call: {why}. Nothing was done.")
                        } else {
                            NOT_RUN.to_owned()
                        };
                        (id, Some(msg))
                    })
                    .collect();
                self.answer_pending(None);
                None
            }
        }
    }

    /// Answers every pending tool call: the performed one with `result`, the
    /// others with their reason.
    fn answer_pending(&mut self, result: Option<String>) {
        for (id, reason) in std::mem::take(&mut self.pending) {
            let content = reason.or_else(|| result.clone()).unwrap_or_default();
            self.messages
                .push(json!({"role": "tool", "tool_call_id": id, "content": content}));
        }
    }

    /// In what is sent from now on, the last full observation is replaced by
    /// a short version (what was sent before is already recorded as sent).
    fn shorten_previous(&mut self) {
        let Some(i) = self.full_observation.take() else {
            return;
        };
        let Some(Value::String(content)) =
            self.messages.get_mut(i).and_then(|m| m.get_mut("content"))
        else {
            return;
        };
        let Some(at) = content.find("Title: ") else {
            return;
        };
        let head = &content[..at];
        let body = &content[at..];
        let short: String = body.chars().take(OLD_OBSERVATION_CHARS).collect();
        if short.len() < body.len() {
            *content = format!("{head}{short}\n[… older page view shortened]");
        }
    }

    /// `metadata.messages` (the last request's messages plus the final
    /// reply), `metadata.model` and `metadata.llm_calls`.
    pub fn record(&self, trajectory: &mut Trajectory) {
        trajectory.meta("messages", Value::Array(self.messages.clone()));
        if let Some(model) = &self.model {
            trajectory.meta("model", model.clone());
        }
        let mut log = self.log.clone();
        log.clear_step_ids_from(trajectory.steps.len() as u32);
        trajectory.meta("llm_calls", log.to_value());
    }
}

/// The first user message: the task and the page.
fn task_message(task: &TaskSpec, page: &str) -> String {
    format!("Task: {}\n\nCurrent page:\n{page}", task.description.trim())
}

/// The action of one entry of `tool_calls`: the function name is the action
/// type, the arguments its parameters.
fn action_of_tool_call(call: &Value) -> Result<Action, String> {
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !TOOL_NAMES.contains(&name) {
        return Err(format!(
            "unknown tool {name:?} (the tools are {})",
            TOOL_NAMES.join(", ")
        ));
    }
    let args: Map<String, Value> = match call.pointer("/function/arguments") {
        Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(format!(
                    "the arguments of {name:?} must be a JSON object, got {other}"
                ))
            }
            Err(e) => {
                return Err(format!(
                    "the arguments of {name:?} are not valid JSON ({e})"
                ))
            }
        },
        // Some servers send the arguments as an object.
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(other) => {
            return Err(format!(
                "the arguments of {name:?} must be a JSON object, got {other}"
            ))
        }
    };
    let mut action = Map::with_capacity(args.len() + 1);
    action.insert("type".into(), json!(name));
    for (k, v) in args {
        if k != "type" {
            action.insert(k, v);
        }
    }
    Action::from_value(&Value::Object(action))
}

/// The tool names, one per action type (CONTRACT §5).
pub const TOOL_NAMES: [&str; 11] = [
    "goto",
    "click",
    "fill",
    "fill_and_submit",
    "press",
    "select",
    "scroll",
    "back",
    "wait",
    "extract",
    "finish",
];

/// The `tools` of a native request: one function per action, with only the
/// action's own parameters (nothing the runtime adds, such as `auto` or a
/// screenshot path).
pub fn tools() -> Value {
    let element = json!({"type": "integer", "minimum": 0,
        "description": "Number of an interactive element in the last page view (give this or selector)."});
    let selector = json!({"type": "string",
        "description": "CSS selector of the element (give this or element)."});
    let tool = |name: &str, description: &str, properties: Value, required: &[&str]| {
        json!({"type": "function", "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}
        }})
    };
    json!([
        tool(
            "goto",
            "Open a URL.",
            json!({"url": {"type": "string", "description": "Absolute http(s) URL."}}),
            &["url"]
        ),
        tool(
            "click",
            "Click an element.",
            json!({"element": element, "selector": selector}),
            &[]
        ),
        tool(
            "fill",
            "Type text into an input.",
            json!({"element": element, "selector": selector, "text": {"type": "string"}}),
            &["text"]
        ),
        tool(
            "fill_and_submit",
            "Type text into an input, then submit its form (or press Enter).",
            json!({"element": element, "selector": selector, "text": {"type": "string"}}),
            &["text"]
        ),
        tool(
            "press",
            "Press a key (e.g. Enter, Tab, Escape).",
            json!({"key": {"type": "string"}}),
            &["key"]
        ),
        tool(
            "select",
            "Choose an option of a select element.",
            json!({"element": element, "selector": selector,
                   "value": {"type": "string", "description": "Option value or label."}}),
            &["value"]
        ),
        tool(
            "scroll",
            "Scroll the page.",
            json!({"direction": {"type": "string", "enum": ["up", "down"]}}),
            &["direction"]
        ),
        tool("back", "Go back to the previous page.", json!({}), &[]),
        tool(
            "wait",
            "Wait for the page to change.",
            json!({"ms": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS}}),
            &["ms"]
        ),
        tool("extract", "Read the current page again.", json!({}), &[]),
        tool(
            "finish",
            "The task is done: give the answer (taken from the page). Ends the task.",
            json!({"answer": {"type": "string"}}),
            &["answer"]
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::Target;

    fn call(name: &str, args: &str) -> Value {
        json!({"id": "c", "type": "function", "function": {"name": name, "arguments": args}})
    }

    #[test]
    fn one_tool_per_action_without_runtime_parameters() {
        let t = tools();
        let list = t.as_array().expect("list");
        let names: Vec<&str> = list
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .collect();
        assert_eq!(names, TOOL_NAMES);
        for tool in list {
            let props = tool
                .pointer("/function/parameters/properties")
                .and_then(Value::as_object)
                .expect("properties");
            for key in props.keys() {
                assert!(
                    [
                        "url",
                        "element",
                        "selector",
                        "text",
                        "key",
                        "value",
                        "direction",
                        "ms",
                        "answer"
                    ]
                    .contains(&key.as_str()),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn tool_calls_become_actions_or_clear_errors() {
        assert_eq!(
            action_of_tool_call(&call("click", r#"{"element": 3}"#)),
            Ok(Action::Click {
                target: Target::Element(3)
            })
        );
        assert_eq!(action_of_tool_call(&call("back", "")), Ok(Action::Back));
        assert_eq!(
            action_of_tool_call(&call(
                "finish",
                r#"{"answer": "29.00 EUR", "type": "goto"}"#
            )),
            Ok(Action::Finish {
                answer: "29.00 EUR".into()
            })
        );
        for (name, args, expect) in [
            ("click", r#"{"element": 3"#, "not valid JSON"),
            ("click", r#"[3]"#, "must be a JSON object"),
            ("click", r#"{}"#, "needs \"selector\" or \"element\""),
            ("fly", r#"{}"#, "unknown tool \"fly\""),
        ] {
            let e = action_of_tool_call(&call(name, args)).expect_err(args);
            assert!(e.contains(expect), "{e}");
        }
    }
}

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

use std::collections::HashMap;

use adp_core::llm::{LlmClient, Sampling, ToolMode};
use adp_core::llm_record::{self, CallLog, LlmResponse};
use adp_core::tools::{ToolReply, ToolTurns, WEB_TOOL_NAMES};
use adp_core::{InfraError, TaskSpec, Trajectory};
use serde_json::{json, Map, Value};

use super::{Decision, Turn};
use crate::actions::{parse_reply, Action, GRAMMAR};
use crate::observe::ObservationMode;

/// Characters of page text kept when an observation is shortened.
const OLD_OBSERVATION_CHARS: usize = 300;

pub struct OpenAi {
    client: LlmClient,
    mode: ToolMode,
    /// What the observations show (which element references to explain).
    observation: ObservationMode,
    sampling: Sampling,
    tools: Option<Value>,
    /// The conversation as it will be sent next.
    messages: Vec<Value>,
    /// Index of the message holding the latest full observation.
    full_observation: Option<usize>,
    invalid_replies: u32,
    log: CallLog,
    /// Tool calls owed a `tool` message, invalid replies in a row (native).
    turns: ToolTurns,
    /// Steps recorded before the policy's first action (the start URL).
    steps_before: u32,
    /// The message holding the latest screenshot (`WEB_SCREENSHOTS=model`).
    screenshot_message: Option<usize>,
    /// Data URL sent → the file it came from (relative to `trajectories/`):
    /// the records reference the file instead of repeating its base64.
    sent_files: HashMap<String, String>,
}

impl OpenAi {
    pub fn new(client: LlmClient, observation: ObservationMode) -> Self {
        let mode = client.config().tool_mode;
        let sampling = client.config().sampling;
        OpenAi {
            client,
            mode,
            observation,
            sampling,
            tools: (mode == ToolMode::Native).then(|| tools(observation)),
            messages: Vec::new(),
            full_observation: None,
            invalid_replies: 0,
            log: CallLog::new(),
            turns: ToolTurns::new(),
            steps_before: 0,
            screenshot_message: None,
            sent_files: HashMap::new(),
        }
    }

    fn system_prompt(&self, max_steps: u32) -> String {
        let page = page_description(self.observation);
        match self.mode {
            ToolMode::Text => format!(
                "You control a web browser to complete a task. After each action you get the page: \
{page}\n\
Reply with exactly ONE action as a JSON object, optionally in a ```json fence, nothing else. \
The actions are:\n{GRAMMAR}\n\
Use only information shown on the pages. When the task is done, reply with \"finish\" and put the \
answer (taken from the page) in \"answer\". You have at most {max_steps} actions."
            ),
            ToolMode::Native => format!(
                "You control a web browser to complete a task. Each tool is one browser action; \
call exactly one tool per reply. After each action you get the page: {page}\n\
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
                ToolMode::Native if self.turns.has_pending() => {
                    let at = self.messages.len();
                    self.turns.answer(&mut self.messages, content);
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
        self.attach_screenshot(turn);
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

    /// With a screenshot in the observation (`WEB_SCREENSHOTS=model`): a user
    /// message with the image as an OpenAI `image_url` part (a PNG data
    /// URL), after the page view (and after the tool message, in native
    /// mode: tool messages carry text only). The previous screenshot is
    /// left out of what is sent from now on, as older page views are
    /// shortened.
    fn attach_screenshot(&mut self, turn: &Turn<'_>) {
        let Some(shot) = &turn.observation.screenshot else {
            return;
        };
        if let Some(i) = self.screenshot_message.take() {
            if let Some(m) = self.messages.get_mut(i) {
                m["content"] = json!("[screenshot of an earlier page left out]");
            }
        }
        let url = llm_record::png_data_url(&shot.png);
        // Two identical screenshots have one data URL: the first file stands
        // for both (same bytes).
        self.sent_files
            .entry(url.clone())
            .or_insert_with(|| shot.path.clone());
        self.messages.push(json!({"role": "user", "content": [
            {"type": "text", "text": format!("Screenshot of the current page's viewport (step {}):", turn.step)},
            {"type": "image_url", "image_url": {"url": url}}
        ]}));
        self.screenshot_message = Some(self.messages.len() - 1);
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
        let call = self.log.len() - 1;
        let why = match self.turns.read(&mut self.messages, reply, call) {
            ToolReply::Cut => {
                return Some(Decision::GiveUp(
                    "the model's reply was cut at max_tokens (finish_reason \"length\"); nothing of it was done"
                        .to_owned(),
                ))
            }
            ToolReply::Answer(text) => return Some(Decision::Answer(text)),
            ToolReply::Invalid(why) => why,
            ToolReply::Call { name, arguments } => match action_of_tool_call(&name, arguments) {
                Ok(action) => {
                    self.turns.accept();
                    if matches!(action, Action::Finish { .. }) {
                        // The conversation ends with this reply.
                        self.turns.clear();
                    }
                    return Some(Decision::Act(action));
                }
                Err(why) => why,
            },
        };
        self.turns
            .reject(&mut self.messages, &why)
            .map(Decision::GiveUp)
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
    ///
    /// A screenshot sent as a data URL is recorded as a reference to its
    /// file (`adp-file:<task_id>/step_<n>.png`, stored once with the
    /// trajectory); [`llm_record::inline_files`] restores the bytes sent.
    pub fn record(&self, trajectory: &mut Trajectory) {
        let mut messages = Value::Array(self.messages.clone());
        llm_record::reference_files(&mut messages, &self.sent_files);
        trajectory.meta("messages", messages);
        if let Some(model) = self.log.requested_model() {
            trajectory.meta("model", model.to_owned());
        }
        let mut log = self.log.clone();
        log.clear_step_ids_from(trajectory.steps.len() as u32);
        let mut calls = log.to_value();
        llm_record::reference_files(&mut calls, &self.sent_files);
        trajectory.meta("llm_calls", calls);
    }
}

/// What the system prompt says a page view holds and how to name elements.
fn page_description(mode: ObservationMode) -> &'static str {
    match mode {
        ObservationMode::Text => {
            "its title, URL, visible text, and a numbered list of interactive elements. Refer to an \
element by its number (\"element\": 3) or by a CSS selector (\"selector\")."
        }
        ObservationMode::Axtree => {
            "its title, URL and its accessibility tree, one node a line: role, name, value, \
states, box @(x,y wxh) in page pixels, and (below)/(above) for nodes outside the viewport \
(scroll to reach them). Refer to an element by its id (\"element\": \"e412\"; an id stays \
the same while the page stays) or by a CSS selector (\"selector\")."
        }
        ObservationMode::Both => {
            "its title, URL, visible text, a numbered list of interactive elements, and its \
accessibility tree, one node a line: role, name, value, states, box @(x,y wxh) in page pixels, \
and (below)/(above) for nodes outside the viewport (scroll to reach them). Refer to an element \
by its accessibility-tree id (\"element\": \"e412\"; an id stays the same while the page \
stays), by its number in the list (\"element\": 3) or by a CSS selector (\"selector\")."
        }
    }
}

/// The first user message: the task and the page.
fn task_message(task: &TaskSpec, page: &str) -> String {
    format!("Task: {}\n\nCurrent page:\n{page}", task.description.trim())
}

/// The action of a tool call: the tool name is the action type, the
/// arguments its parameters.
fn action_of_tool_call(name: &str, args: Map<String, Value>) -> Result<Action, String> {
    if !WEB_TOOL_NAMES.contains(&name) {
        return Err(format!(
            "unknown tool {name:?} (the tools are {})",
            WEB_TOOL_NAMES.join(", ")
        ));
    }
    let mut action = Map::with_capacity(args.len() + 1);
    action.insert("type".into(), json!(name));
    for (k, v) in args {
        if k != "type" {
            action.insert(k, v);
        }
    }
    Action::from_value(&Value::Object(action))
}

/// The `tools` of a native request: one function per action, with only the
/// action's own parameters ([`adp_core::tools::web_tools`]); `element`
/// described for what the observations show (list numbers, tree ids, both).
pub fn tools(observation: ObservationMode) -> Value {
    let element = match observation {
        ObservationMode::Text => return Value::Array(adp_core::tools::web_tools()),
        ObservationMode::Axtree => json!({"type": "string", "pattern": "^e[0-9]+$",
            "description": "Id of an element in the accessibility tree of the last page view, e.g. \"e412\" (give this or selector)."}),
        ObservationMode::Both => json!({"type": ["string", "integer"],
            "description": "Id of an element in the accessibility tree of the last page view (\"e412\"), or the number of an interactive element in its list (3) (give this or selector)."}),
    };
    let mut tools = adp_core::tools::web_tools();
    for t in &mut tools {
        if let Some(e) = t.pointer_mut("/function/parameters/properties/element") {
            *e = element.clone();
        }
    }
    Value::Array(tools)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::Target;

    fn call(name: &str, args: &str) -> Value {
        json!({"id": "c", "type": "function", "function": {"name": name, "arguments": args}})
    }

    fn action_of(call: &Value) -> Result<Action, String> {
        let (name, args) = adp_core::tools::read_tool_call(call)?;
        action_of_tool_call(&name, args)
    }

    #[test]
    fn tool_calls_become_actions_or_clear_errors() {
        assert_eq!(
            action_of(&call("click", r#"{"element": 3}"#)),
            Ok(Action::Click {
                target: Target::Element(3)
            })
        );
        assert_eq!(action_of(&call("back", "")), Ok(Action::Back));
        assert_eq!(
            action_of(&call(
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
            let e = action_of(&call(name, args)).expect_err(args);
            assert!(e.contains(expect), "{e}");
        }
    }
}

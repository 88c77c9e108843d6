//! A trajectory as a conversation ([`Dialog`]: OpenAI chat messages and the
//! `tools` offered), and its renderings:
//!
//! * [`to_messages`]: the OpenAI chat format (`messages` + `tools`);
//! * [`to_sharegpt`]: the ShareGPT format of LLaMA-Factory and axolotl.
//!
//! A dialog comes from the recorded model calls ([`super::recorded`],
//! `"source": "llm"`) or, when no model was asked, from the steps
//! ([`super::synthetic`], `"source": "synthetic"`). In both, messages are in
//! the form the chat-completions API takes: tool-call `arguments` are JSON
//! strings.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Where a conversation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The recorded model calls: what the model was sent and answered.
    Llm,
    /// Rendered from the steps: no model call was recorded (scripted,
    /// heuristic, a replayed plan, or a file from before calls were recorded).
    Synthetic,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Llm => "llm",
            Source::Synthetic => "synthetic",
        }
    }
}

/// A conversation in the chat-completions form.
#[derive(Debug, Clone, PartialEq)]
pub struct Dialog {
    pub source: Source,
    pub messages: Vec<Value>,
    pub tools: Vec<Value>,
}

/// How tool-call arguments are written in the `messages` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArgumentsAs {
    /// A JSON object, as Hugging Face chat templates and TRL expect
    /// (arguments that are not a JSON object stay the string the model wrote).
    Object,
    /// A JSON-encoded string, as the OpenAI API and its fine-tuning files use.
    String,
}

/// How `tools` and tool-call arguments are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendering {
    pub arguments: ArgumentsAs,
    /// `tools` as one JSON string (Hugging Face `datasets` 3.x otherwise
    /// merges every tool schema into one struct and pads with nulls).
    pub tools_as_string: bool,
    /// Every string `content` as a list of one text part
    /// (`[{"type": "text", "text": ...}]`), so that rows where some messages
    /// carry image parts keep one type per column (Hugging Face `datasets`
    /// refuses a column that is a string in one row and a list in another).
    pub content_as_parts: bool,
}

impl Default for Rendering {
    fn default() -> Self {
        Rendering {
            arguments: ArgumentsAs::Object,
            tools_as_string: false,
            content_as_parts: false,
        }
    }
}

/// `arguments` of a tool call as an object when it holds one.
fn arguments_object(arguments: &Value) -> Option<Map<String, Value>> {
    match arguments {
        Value::Object(m) => Some(m.clone()),
        Value::String(s) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// `arguments` as a JSON string (unchanged when it already is one).
fn arguments_string(arguments: &Value) -> Value {
    match arguments {
        Value::String(_) => arguments.clone(),
        other => Value::String(other.to_string()),
    }
}

/// A message with its tool calls' arguments written as `r.arguments`, and
/// its text content as one part if `r.content_as_parts`.
fn render_message(m: &Value, r: Rendering) -> Value {
    let mut m = m.clone();
    if r.content_as_parts {
        if let Some(content) = m.get_mut("content") {
            if let Value::String(text) = content {
                *content = json!([{"type": "text", "text": std::mem::take(text)}]);
            }
        }
    }
    let args_as = r.arguments;
    if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for call in calls {
            if let Some(args) = call
                .get_mut("function")
                .and_then(|f| f.get_mut("arguments"))
            {
                *args = match args_as {
                    ArgumentsAs::Object => {
                        arguments_object(args).map_or_else(|| args.clone(), Value::Object)
                    }
                    ArgumentsAs::String => arguments_string(args),
                };
            }
        }
    }
    m
}

fn tools_value(tools: &[Value], as_string: bool) -> Value {
    let v = Value::Array(tools.to_vec());
    if as_string {
        Value::String(v.to_string())
    } else {
        v
    }
}

/// The OpenAI chat format: `(messages, tools)`.
pub fn to_messages(d: &Dialog, r: Rendering) -> (Value, Value) {
    let messages = d.messages.iter().map(|m| render_message(m, r)).collect();
    (
        Value::Array(messages),
        tools_value(&d.tools, r.tools_as_string),
    )
}

/// Text of a message's `content` (a string, or the text parts of a list).
fn text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The ShareGPT format: `(conversations, tools)`. `from` is `system`,
/// `human`, `function_call` (an assistant turn calling tools: `{"name",
/// "arguments"}`, a list for several calls), `observation` (tool results;
/// consecutive ones joined) or `gpt` (an assistant turn without tool calls).
/// `tools` is the JSON-encoded tool list (LLaMA-Factory's convention).
pub fn to_sharegpt(d: &Dialog) -> (Value, Value) {
    let mut conv: Vec<Value> = Vec::new();
    for m in &d.messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let calls = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        let (from, value) = match (role, calls) {
            ("system" | "developer", _) => ("system", text(m.get("content"))),
            ("user", _) => ("human", text(m.get("content"))),
            ("tool", _) => ("observation", text(m.get("content"))),
            ("assistant", Some(calls)) => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        let f = &c["function"];
                        let args = arguments_object(&f["arguments"])
                            .map_or_else(|| f["arguments"].clone(), Value::Object);
                        json!({"name": f["name"], "arguments": args})
                    })
                    .collect();
                let value = match calls.as_slice() {
                    [one] => one.to_string(),
                    _ => Value::Array(calls).to_string(),
                };
                ("function_call", value)
            }
            _ => ("gpt", text(m.get("content"))),
        };
        if from == "observation" {
            if let Some(last) = conv.last_mut().filter(|l| l["from"] == "observation") {
                let joined = format!("{}\n{value}", last["value"].as_str().unwrap_or(""));
                last["value"] = Value::String(joined);
                continue;
            }
        }
        conv.push(json!({"from": from, "value": value}));
    }
    (Value::Array(conv), tools_value(&d.tools, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog() -> Dialog {
        Dialog {
            source: Source::Llm,
            messages: vec![
                json!({"role": "system", "content": "s"}),
                json!({"role": "user", "content": "u"}),
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                    {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}),
                json!({"role": "tool", "tool_call_id": "a", "content": "one"}),
                json!({"role": "tool", "tool_call_id": "b", "content": "two"}),
                json!({"role": "assistant", "content": "done"}),
            ],
            tools: vec![json!({"type": "function", "function": {"name": "f"}})],
        }
    }

    #[test]
    fn messages_arguments_as_objects_or_strings() {
        let (m, tools) = to_messages(&dialog(), Rendering::default());
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(
            m[2]["tool_calls"][1]["function"]["arguments"], "not json",
            "malformed arguments stay as the model wrote them"
        );
        assert!(tools.is_array());
        let r = Rendering {
            arguments: ArgumentsAs::String,
            tools_as_string: true,
            content_as_parts: false,
        };
        let (m, tools) = to_messages(&dialog(), r);
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(m, Value::Array(dialog().messages));
        assert!(tools.is_string());
    }

    #[test]
    fn content_as_parts() {
        let r = Rendering {
            content_as_parts: true,
            ..Rendering::default()
        };
        let (m, _) = to_messages(&dialog(), r);
        assert_eq!(m[0]["content"], json!([{"type": "text", "text": "s"}]));
        assert_eq!(m[4]["content"], json!([{"type": "text", "text": "two"}]));
        assert!(m[2]["content"].is_null(), "no content stays null");
        let parts = json!([{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": "u"}}]);
        let with_image = Dialog {
            messages: vec![json!({"role": "user", "content": parts})],
            ..dialog()
        };
        let (m, _) = to_messages(&with_image, r);
        assert_eq!(m[0]["content"], parts, "parts stay as they are");
    }

    #[test]
    fn sharegpt_roles() {
        let (c, tools) = to_sharegpt(&dialog());
        let from: Vec<&str> = c
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["from"].as_str().expect("from"))
            .collect();
        assert_eq!(
            from,
            ["system", "human", "function_call", "observation", "gpt"]
        );
        let calls: Value = serde_json::from_str(c[2]["value"].as_str().expect("s")).expect("json");
        assert_eq!(calls[0], json!({"name": "f", "arguments": {"x": 1}}));
        assert_eq!(c[3]["value"], "one\ntwo");
        assert!(tools.is_string());
    }
}

//! The tools a model is offered, in one place: their names and JSON Schemas
//! (OpenAI `tools` format, `{"type": "function", "function": {name,
//! description, parameters}}`), and the bookkeeping of a native tool-calling
//! conversation ([`ToolTurns`]).
//!
//! Used by the sandbox runtime's and the web runtime's `openai` policies
//! (what is sent) and by `adp export` (what a trajectory without model calls
//! is rendered with), so a synthetic export row names exactly the tools, with
//! exactly the schemas, that a model would have been offered.
//!
//! * Code and reasoning tasks: [`code_tools`] — `python {code}` and
//!   `final_answer {answer}`. The schemas say nothing about whether state
//!   persists between calls; the system prompt says that (it depends on
//!   `SANDBOX_SESSION`).
//! * Web tasks: [`web_tools`] — one tool per browser action of CONTRACT §5,
//!   named like the action (`goto`, `click`, ... `finish`), with only the
//!   action's own parameters (nothing the runtime adds, such as `auto` or a
//!   screenshot path).

use serde_json::{json, Map, Value};

use crate::llm_record::LlmResponse;

/// The code runtime's tool that runs a cell.
pub const PYTHON_TOOL: &str = "python";
/// The code runtime's tool that gives the final answer (ends the task).
pub const ANSWER_TOOL: &str = "final_answer";

/// The web tools, one per browser action of CONTRACT §5, in the order offered.
pub const WEB_TOOL_NAMES: [&str; 11] = [
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

/// The web tool that ends the task with an answer.
pub const WEB_FINISH_TOOL: &str = "finish";

/// The longest `wait` a web action may ask for (longer ones are cut to it).
pub const MAX_WAIT_MS: u64 = 30_000;

fn function(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({"type": "function", "function": {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required}
    }})
}

/// The `tools` of a code or reasoning task: `python {code}` and
/// `final_answer {answer}`.
pub fn code_tools() -> Vec<Value> {
    vec![
        function(
            PYTHON_TOOL,
            "Run Python 3 code in the sandbox (no network, limited time and memory) and return \
             its stdout and stderr.",
            json!({"code": {"type": "string", "description": "The Python source to run."}}),
            &["code"],
        ),
        function(
            ANSWER_TOOL,
            "Give the final answer to the task. Ends the task.",
            json!({"answer": {"type": "string", "description": "The final answer."}}),
            &["answer"],
        ),
    ]
}

/// The tool of one web action (`None` for a name that is not one).
pub fn web_tool(name: &str) -> Option<Value> {
    let element = || {
        json!({"type": "integer", "minimum": 0,
        "description": "Number of an interactive element in the last page view (give this or selector)."})
    };
    let selector = || {
        json!({"type": "string",
        "description": "CSS selector of the element (give this or element)."})
    };
    let tool = match name {
        "goto" => function(
            name,
            "Open a URL.",
            json!({"url": {"type": "string", "description": "Absolute http(s) URL."}}),
            &["url"],
        ),
        "click" => function(
            name,
            "Click an element.",
            json!({"element": element(), "selector": selector()}),
            &[],
        ),
        "fill" => function(
            name,
            "Type text into an input.",
            json!({"element": element(), "selector": selector(), "text": {"type": "string"}}),
            &["text"],
        ),
        "fill_and_submit" => function(
            name,
            "Type text into an input, then submit its form (or press Enter).",
            json!({"element": element(), "selector": selector(), "text": {"type": "string"}}),
            &["text"],
        ),
        "press" => function(
            name,
            "Press a key (e.g. Enter, Tab, Escape).",
            json!({"key": {"type": "string"}}),
            &["key"],
        ),
        "select" => function(
            name,
            "Choose an option of a select element.",
            json!({"element": element(), "selector": selector(),
                   "value": {"type": "string", "description": "Option value or label."}}),
            &["value"],
        ),
        "scroll" => function(
            name,
            "Scroll the page.",
            json!({"direction": {"type": "string", "enum": ["up", "down"]}}),
            &["direction"],
        ),
        "back" => function(name, "Go back to the previous page.", json!({}), &[]),
        "wait" => function(
            name,
            "Wait for the page to change.",
            json!({"ms": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS}}),
            &["ms"],
        ),
        "extract" => function(name, "Read the current page again.", json!({}), &[]),
        "finish" => function(
            name,
            "The task is done: give the answer (taken from the page). Ends the task.",
            json!({"answer": {"type": "string"}}),
            &["answer"],
        ),
        _ => return None,
    };
    Some(tool)
}

/// The `tools` of a web task, in [`WEB_TOOL_NAMES`] order.
pub fn web_tools() -> Vec<Value> {
    WEB_TOOL_NAMES.iter().filter_map(|n| web_tool(n)).collect()
}

/// A permissive definition for a tool no runtime offers (a `tool_call` step
/// of some other runtime, rendered by `adp export`).
pub fn generic_tool(name: &str) -> Value {
    json!({"type": "function", "function": {
        "name": name,
        "description": format!("The `{name}` tool."),
        "parameters": {"type": "object", "properties": {}}
    }})
}

/// The name of a tool definition.
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.pointer("/function/name")?.as_str()
}

/// `args` without the keys the tool definition `tool` does not declare.
pub fn declared_arguments(tool: &Value, mut args: Map<String, Value>) -> Map<String, Value> {
    if let Some(props) = tool
        .pointer("/function/parameters/properties")
        .and_then(Value::as_object)
    {
        args.retain(|k, _| props.contains_key(k));
    }
    args
}

/// The name and arguments of one entry of a reply's `tool_calls`. The
/// arguments are a JSON-encoded object (empty or missing: no arguments);
/// some servers send the object itself, which is accepted too. Anything else
/// is a message for the model.
pub fn read_tool_call(call: &Value) -> Result<(String, Map<String, Value>), String> {
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let args = match call.pointer("/function/arguments") {
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
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(other) => {
            return Err(format!(
                "the arguments of {name:?} must be a JSON object, got {other}"
            ))
        }
    };
    Ok((name, args))
}

/// What the `tool` message of an extra tool call (not the first of its
/// reply) says.
pub const NOT_RUN: &str =
    "Not run: only the first tool call of a reply is run. Call one tool at a time.";

/// A native reply, read.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolReply {
    /// `finish_reason: "length"`: the reply was cut at `max_tokens`; nothing
    /// of it may be acted on.
    Cut,
    /// No tool call: the text (trimmed) is the model's answer.
    Answer(String),
    /// The first tool call: its name and arguments (not yet checked against
    /// the tool's schema; the runtime does that and calls
    /// [`ToolTurns::accept`] or [`ToolTurns::reject`]).
    Call {
        name: String,
        arguments: Map<String, Value>,
    },
    /// The first tool call's arguments are unreadable; pass the text to
    /// [`ToolTurns::reject`].
    Invalid(String),
}

/// The tool-call bookkeeping of one native conversation, shared by both
/// `openai` policies:
///
/// * [`ToolTurns::read`] appends the reply as an `assistant` message (a tool
///   call the server sent without an `id` gets `call_<call>_<k>`, so that its
///   `tool` message can refer to it) and reads it;
/// * [`ToolTurns::accept`]: the first call is run; every other call of the
///   reply is owed the `tool` message [`NOT_RUN`];
/// * [`ToolTurns::answer`]: the `tool` messages owed, the run call's with
///   the observation;
/// * [`ToolTurns::reject`]: the first call was invalid; its `tool` message
///   says why and the model is asked again, unless the previous reply was
///   invalid too: then the conversation ends (the reason is returned).
#[derive(Debug, Default)]
pub struct ToolTurns {
    /// Ids of the last reply's tool calls.
    ids: Vec<String>,
    /// Tool calls still owed a `tool` message: the one being run (`None`)
    /// and the extras (`Some(reason)`).
    pending: Vec<(String, Option<String>)>,
    invalid_replies: u32,
}

impl ToolTurns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `reply` (the answer to call number `call` of the task) to
    /// `messages` as an `assistant` message and reads it.
    pub fn read(
        &mut self,
        messages: &mut Vec<Value>,
        reply: &LlmResponse,
        call: usize,
    ) -> ToolReply {
        let mut assistant = json!({"role": "assistant", "content": reply.content});
        let mut calls = reply.tool_calls.clone();
        for (k, c) in calls.iter_mut().enumerate() {
            if c.get("id").and_then(Value::as_str).is_none() {
                c["id"] = json!(format!("call_{call}_{k}"));
            }
        }
        self.ids = calls
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !calls.is_empty() {
            assistant["tool_calls"] = json!(calls);
        }
        messages.push(assistant);
        if reply.finish_reason.as_deref() == Some("length") {
            return ToolReply::Cut;
        }
        let Some(first) = calls.first() else {
            let text = reply.content.clone().unwrap_or_default();
            return ToolReply::Answer(text.trim().to_owned());
        };
        match read_tool_call(first) {
            Ok((name, arguments)) => ToolReply::Call { name, arguments },
            Err(why) => ToolReply::Invalid(why),
        }
    }

    /// The last reply's first tool call is being run: the other calls of
    /// that reply are owed [`NOT_RUN`].
    pub fn accept(&mut self) {
        self.invalid_replies = 0;
        self.pending = self
            .ids
            .iter()
            .enumerate()
            .map(|(k, id)| (id.clone(), (k > 0).then(|| NOT_RUN.to_owned())))
            .collect();
    }

    /// The last reply's first tool call was invalid (`why`). `None`: its
    /// `tool` messages are appended to `messages` and the model may be asked
    /// again; `Some(reason)`: the second invalid reply in a row, the
    /// conversation ends (nothing more is appended).
    pub fn reject(&mut self, messages: &mut Vec<Value>, why: &str) -> Option<String> {
        self.invalid_replies += 1;
        if self.invalid_replies >= 2 {
            self.pending.clear();
            return Some(format!(
                "the model's tool call was invalid twice in a row (last: {why})"
            ));
        }
        self.pending = self
            .ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let msg = if k == 0 {
                    format!("Invalid tool call: {why}. Nothing was run.")
                } else {
                    NOT_RUN.to_owned()
                };
                (id.clone(), Some(msg))
            })
            .collect();
        self.answer(messages, String::new());
        None
    }

    /// Whether tool calls are owed a `tool` message.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forgets the owed `tool` messages (the conversation ends with the
    /// reply, e.g. a final-answer call).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Appends every owed `tool` message: the run call's with `result`, the
    /// others with their reason.
    pub fn answer(&mut self, messages: &mut Vec<Value>, result: String) {
        for (id, reason) in std::mem::take(&mut self.pending) {
            let content = reason.unwrap_or_else(|| result.clone());
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> Value {
        json!({"id": "c", "type": "function", "function": {"name": name, "arguments": args}})
    }

    #[test]
    fn web_tools_declare_only_action_parameters() {
        let tools = web_tools();
        let names: Vec<&str> = tools.iter().filter_map(tool_name).collect();
        assert_eq!(names, WEB_TOOL_NAMES);
        let allowed = [
            "url",
            "element",
            "selector",
            "text",
            "key",
            "value",
            "direction",
            "ms",
            "answer",
        ];
        for tool in &tools {
            let props = tool
                .pointer("/function/parameters/properties")
                .and_then(Value::as_object)
                .expect("properties");
            for key in props.keys() {
                assert!(allowed.contains(&key.as_str()), "{key}");
            }
        }
        let code = code_tools();
        let names: Vec<&str> = code.iter().filter_map(tool_name).collect();
        assert_eq!(names, [PYTHON_TOOL, ANSWER_TOOL]);
    }

    #[test]
    fn declared_arguments_drop_runtime_fields() {
        let goto = web_tool("goto").expect("goto");
        let args = json!({"url": "http://x/", "auto": true, "screenshot": "/a.png"});
        let Value::Object(args) = args else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(declared_arguments(&goto, args)),
            json!({"url": "http://x/"})
        );
    }

    #[test]
    fn tool_call_arguments_are_read_or_explained() {
        assert_eq!(
            read_tool_call(&call("python", r#"{"code": "print(1)"}"#)),
            Ok((
                "python".to_owned(),
                Map::from_iter([("code".to_owned(), json!("print(1)"))])
            ))
        );
        assert_eq!(
            read_tool_call(&call("back", "")),
            Ok(("back".to_owned(), Map::new()))
        );
        let obj = json!({"function": {"name": "f", "arguments": {"a": 1}}});
        assert_eq!(read_tool_call(&obj).expect("object").1["a"], 1);
        for (args, expect) in [
            (r#"{"code": 1"#, "not valid JSON"),
            ("[3]", "must be a JSON object"),
        ] {
            let e = read_tool_call(&call("python", args)).expect_err(args);
            assert!(e.contains(expect), "{e}");
        }
    }

    fn reply(calls: Vec<Value>, finish: &str) -> LlmResponse {
        LlmResponse {
            content: Some(" thinking ".into()),
            tool_calls: calls,
            finish_reason: Some(finish.into()),
            ..LlmResponse::default()
        }
    }

    #[test]
    fn turns_owe_one_tool_message_per_call() {
        let mut t = ToolTurns::new();
        let mut msgs = Vec::new();
        let two = vec![
            call("python", r#"{"code": "1"}"#),
            json!({"type": "function", "function": {"name": "python", "arguments": "{}"}}),
        ];
        let r = t.read(&mut msgs, &reply(two, "tool_calls"), 3);
        assert!(matches!(r, ToolReply::Call { ref name, .. } if name == PYTHON_TOOL));
        assert_eq!(
            msgs[0]["tool_calls"][1]["id"], "call_3_1",
            "missing id made up"
        );
        t.accept();
        assert!(t.has_pending());
        t.answer(&mut msgs, "out".into());
        assert_eq!(
            msgs[1],
            json!({"role": "tool", "tool_call_id": "c", "content": "out"})
        );
        assert_eq!(msgs[2]["tool_call_id"], "call_3_1");
        assert_eq!(msgs[2]["content"], NOT_RUN);
        assert!(!t.has_pending());

        // Invalid once: explained; invalid twice in a row: the end.
        let bad = vec![call("python", "{")];
        let r = t.read(&mut msgs, &reply(bad.clone(), "tool_calls"), 4);
        let ToolReply::Invalid(why) = r else {
            panic!("{r:?}")
        };
        assert_eq!(t.reject(&mut msgs, &why), None);
        assert!(msgs.last().expect("tool")["content"]
            .as_str()
            .expect("text")
            .starts_with("Invalid tool call"));
        let n = msgs.len();
        t.read(&mut msgs, &reply(bad, "tool_calls"), 5);
        let end = t.reject(&mut msgs, "again").expect("ends");
        assert!(end.contains("invalid twice"), "{end}");
        assert_eq!(msgs.len(), n + 1, "only the reply was appended");

        assert_eq!(
            t.read(&mut msgs, &reply(vec![], "stop"), 6),
            ToolReply::Answer("thinking".into())
        );
        assert_eq!(
            t.read(&mut msgs, &reply(vec![call("python", "{")], "length"), 7),
            ToolReply::Cut
        );
    }
}

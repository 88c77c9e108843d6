//! JSON-schema definitions of the tools the runtimes offer, in the OpenAI
//! `tools` format (`{"type": "function", "function": {name, description,
//! parameters}}`): `python_executor` for code/reasoning tasks, one
//! `browser_<action>` tool per browser action of CONTRACT §5 for web tasks.

use serde_json::{json, Value};

/// Name of the code runtime's tool.
pub const PYTHON_EXECUTOR: &str = "python_executor";

/// The browser actions of CONTRACT §5, in order.
pub const BROWSER_ACTIONS: [&str; 11] = [
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

/// Tool name of a browser action.
pub fn browser_tool_name(action: &str) -> String {
    format!("browser_{action}")
}

fn function(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
            }
        }
    })
}

/// The code runtime's tool.
pub fn python_executor() -> Value {
    function(
        PYTHON_EXECUTOR,
        "Run Python 3 code in an isolated sandbox (no network, limited time and memory) and \
         return what it printed (stdout, then stderr).",
        json!({"code": {"type": "string", "description": "Python source code to run."}}),
        &["code"],
    )
}

fn target() -> (Value, Value) {
    (
        json!({"type": "string", "description": "CSS selector of the element."}),
        json!({"type": "integer", "description": "Index of an interactive element in the last observation (alternative to selector)."}),
    )
}

/// The tool of one browser action (`None` for an unknown action).
pub fn browser_tool(action: &str) -> Option<Value> {
    let (selector, element) = target();
    let name = browser_tool_name(action);
    let v = match action {
        "goto" => function(
            &name,
            "Open a URL in the browser.",
            json!({"url": {"type": "string", "description": "Absolute URL to open."}}),
            &["url"],
        ),
        "click" => function(
            &name,
            "Click an element (give selector or element).",
            json!({"selector": selector, "element": element}),
            &[],
        ),
        "fill" => function(
            &name,
            "Type text into an input (give selector or element).",
            json!({"selector": selector, "element": element,
                   "text": {"type": "string", "description": "Text to type."}}),
            &["text"],
        ),
        "fill_and_submit" => function(
            &name,
            "Type text into an input and submit its form (give selector or element).",
            json!({"selector": selector, "element": element,
                   "text": {"type": "string", "description": "Text to type."}}),
            &["text"],
        ),
        "press" => function(
            &name,
            "Press a key, e.g. Enter or Tab.",
            json!({"key": {"type": "string", "description": "Key name."}}),
            &["key"],
        ),
        "select" => function(
            &name,
            "Choose an option of a select element (give selector or element).",
            json!({"selector": selector, "element": element,
                   "value": {"type": "string", "description": "Option value to choose."}}),
            &["value"],
        ),
        "scroll" => function(
            &name,
            "Scroll the page.",
            json!({"direction": {"type": "string", "enum": ["up", "down"]}}),
            &["direction"],
        ),
        "back" => function(&name, "Go back to the previous page.", json!({}), &[]),
        "wait" => function(
            &name,
            "Wait a number of milliseconds.",
            json!({"ms": {"type": "integer", "description": "Milliseconds to wait."}}),
            &["ms"],
        ),
        "extract" => function(
            &name,
            "Read the current page again (title, URL, text, interactive elements).",
            json!({}),
            &[],
        ),
        "finish" => function(
            &name,
            "End the task with an answer.",
            json!({"answer": {"type": "string", "description": "The answer to the task."}}),
            &["answer"],
        ),
        _ => return None,
    };
    Some(v)
}

/// Every browser tool.
pub fn browser_tools() -> Vec<Value> {
    BROWSER_ACTIONS
        .iter()
        .filter_map(|a| browser_tool(a))
        .collect()
}

/// A permissive definition for a tool the CLI has no schema for (a
/// `tool_call` step of some future runtime).
pub fn generic_tool(name: &str) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": name,
            "description": format!("The `{name}` tool."),
            "parameters": {"type": "object", "properties": {}}
        }
    })
}

/// Name of a tool definition.
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

//! The action grammar of CONTRACT §5, parsed from JSON with messages a
//! model (or a person writing `constraints.actions`) can act on.

use serde_json::{json, Map, Value};

/// What an action acts on: a CSS selector, the index of an element in the
/// last observation's numbered list, or an element's stable id from the
/// accessibility tree (`"e412"`: its backend DOM node id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Selector(String),
    Element(usize),
    Node(u64),
}

impl Target {
    fn to_json(&self, obj: &mut Map<String, Value>) {
        match self {
            Target::Selector(s) => obj.insert("selector".into(), json!(s)),
            Target::Element(i) => obj.insert("element".into(), json!(i)),
            Target::Node(id) => obj.insert("element".into(), json!(format!("e{id}"))),
        };
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Selector(s) => format!("selector {s:?}"),
            Target::Element(i) => format!("element [{i}]"),
            Target::Node(id) => format!("element e{id}"),
        }
    }
}

/// Scroll direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// One browser action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Goto { url: String },
    Click { target: Target },
    Fill { target: Target, text: String },
    FillAndSubmit { target: Target, text: String },
    Press { key: String },
    Select { target: Target, value: String },
    Scroll { direction: Direction },
    Back,
    Wait { ms: u64 },
    Extract,
    Finish { answer: String },
}

/// Longest `wait` an action may ask for.
pub use adp_core::tools::MAX_WAIT_MS;

/// The grammar, as told to a model.
pub const GRAMMAR: &str = r#"{"type": "goto", "url": "https://..."}
{"type": "click", "element": 3}              (or "element": "e412", an accessibility-tree id, or "selector": "css selector")
{"type": "fill", "element": 2, "text": "..."}
{"type": "fill_and_submit", "element": 2, "text": "..."}   (fill, then submit its form / press Enter)
{"type": "press", "key": "Enter"}
{"type": "select", "element": 5, "value": "option value or label"}
{"type": "scroll", "direction": "down"}      (or "up")
{"type": "back"}
{"type": "wait", "ms": 500}
{"type": "extract"}                          (re-read the page)
{"type": "finish", "answer": "..."}          (done; the answer is the task's result)"#;

impl Action {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Goto { .. } => "goto",
            Action::Click { .. } => "click",
            Action::Fill { .. } => "fill",
            Action::FillAndSubmit { .. } => "fill_and_submit",
            Action::Press { .. } => "press",
            Action::Select { .. } => "select",
            Action::Scroll { .. } => "scroll",
            Action::Back => "back",
            Action::Wait { .. } => "wait",
            Action::Extract => "extract",
            Action::Finish { .. } => "finish",
        }
    }

    /// The element id of the accessibility tree it targets, if any (such an
    /// action only means something on the page it was chosen on).
    pub fn node(&self) -> Option<u64> {
        match self {
            Action::Click { target }
            | Action::Fill { target, .. }
            | Action::FillAndSubmit { target, .. }
            | Action::Select { target, .. } => match target {
                Target::Node(id) => Some(*id),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the action may start a navigation (worth waiting for).
    pub fn may_navigate(&self) -> bool {
        matches!(
            self,
            Action::Goto { .. }
                | Action::Click { .. }
                | Action::FillAndSubmit { .. }
                | Action::Press { .. }
                | Action::Back
                | Action::Select { .. }
        )
    }

    /// Parses one action object. Accepts `element` as a number or a numeric
    /// string (models write both).
    pub fn from_value(v: &Value) -> Result<Action, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("an action must be a JSON object, got {v}"))?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or("an action needs a string \"type\"")?;
        let text = |key: &str| -> Result<String, String> {
            match obj.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(other) => Err(format!("{kind}: \"{key}\" must be a string, got {other}")),
                None => Err(format!("{kind}: needs \"{key}\"")),
            }
        };
        let target = || -> Result<Target, String> {
            let selector = obj
                .get("selector")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty());
            let element = match obj.get("element") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(Target::Element(
                    n.as_u64()
                        .ok_or_else(|| format!("{kind}: \"element\" must be an index ≥ 0"))?
                        as usize,
                )),
                Some(Value::String(s)) => {
                    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
                    let node = t.strip_prefix('e').or_else(|| t.strip_prefix('E'));
                    Some(match node {
                        Some(id) => Target::Node(id.parse::<u64>().map_err(|_| {
                            format!("{kind}: \"element\" must be an index or an id like \"e412\", got {s:?}")
                        })?),
                        None => Target::Element(t.parse::<usize>().map_err(|_| {
                            format!("{kind}: \"element\" must be an index or an id like \"e412\", got {s:?}")
                        })?),
                    })
                }
                Some(other) => {
                    return Err(format!(
                        "{kind}: \"element\" must be an index or an id like \"e412\", got {other}"
                    ))
                }
            };
            match (selector, element) {
                (Some(s), None) => Ok(Target::Selector(s.to_owned())),
                (None, Some(t)) => Ok(t),
                (Some(_), Some(_)) => Err(format!(
                    "{kind}: give \"selector\" or \"element\", not both"
                )),
                (None, None) => Err(format!("{kind}: needs \"selector\" or \"element\"")),
            }
        };
        Ok(match kind {
            "goto" | "navigate" => Action::Goto {
                url: text("url")?.trim().to_owned(),
            },
            "click" => Action::Click { target: target()? },
            "fill" | "type" => Action::Fill {
                target: target()?,
                text: text("text")?,
            },
            "fill_and_submit" => Action::FillAndSubmit {
                target: target()?,
                text: text("text")?,
            },
            "press" => {
                let key = text("key")?;
                if key.trim().is_empty() {
                    return Err("press: \"key\" is empty".to_owned());
                }
                Action::Press { key }
            }
            "select" => Action::Select {
                target: target()?,
                value: text("value")?,
            },
            "scroll" => {
                let d = obj.get("direction").and_then(Value::as_str).unwrap_or("down");
                let direction = match d {
                    "down" => Direction::Down,
                    "up" => Direction::Up,
                    other => {
                        return Err(format!(
                            "scroll: \"direction\" must be \"up\" or \"down\", got {other:?}"
                        ))
                    }
                };
                Action::Scroll { direction }
            }
            "back" => Action::Back,
            "wait" => {
                let ms = match obj.get("ms") {
                    Some(v) => v
                        .as_u64()
                        .ok_or_else(|| format!("wait: \"ms\" must be a whole number, got {v}"))?,
                    None => 1000,
                };
                Action::Wait {
                    ms: ms.min(MAX_WAIT_MS),
                }
            }
            "extract" => Action::Extract,
            "finish" => Action::Finish {
                answer: match obj.get("answer") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                },
            },
            other => {
                return Err(format!(
                    "unknown action type {other:?} (expected goto, click, fill, fill_and_submit, press, select, scroll, back, wait, extract or finish)"
                ))
            }
        })
    }

    /// The action as a JSON object (the step's `action_params`).
    pub fn to_value(&self) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("type".into(), json!(self.kind()));
        match self {
            Action::Goto { url } => {
                o.insert("url".into(), json!(url));
            }
            Action::Click { target } => target.to_json(&mut o),
            Action::Fill { target, text } | Action::FillAndSubmit { target, text } => {
                target.to_json(&mut o);
                o.insert("text".into(), json!(text));
            }
            Action::Press { key } => {
                o.insert("key".into(), json!(key));
            }
            Action::Select { target, value } => {
                target.to_json(&mut o);
                o.insert("value".into(), json!(value));
            }
            Action::Scroll { direction } => {
                let d = match direction {
                    Direction::Up => "up",
                    Direction::Down => "down",
                };
                o.insert("direction".into(), json!(d));
            }
            Action::Back | Action::Extract => {}
            Action::Wait { ms } => {
                o.insert("ms".into(), json!(ms));
            }
            Action::Finish { answer } => {
                o.insert("answer".into(), json!(answer));
            }
        }
        o
    }
}

/// Finds the action in a model's reply: the first ```json (or bare ```)
/// fence that parses, else the first balanced `{...}` object in the text.
pub fn parse_reply(reply: &str) -> Result<Action, String> {
    let mut candidates: Vec<&str> = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
        let lang = after[..body_start].trim();
        let body = &after[body_start..];
        let Some(end) = body.find("```") else { break };
        if lang.is_empty() || lang.eq_ignore_ascii_case("json") {
            candidates.push(body[..end].trim());
        }
        rest = &body[end + 3..];
    }
    if let Some(obj) = first_json_object(reply) {
        candidates.push(obj);
    }
    if candidates.is_empty() {
        return Err("no JSON action object found in the reply".to_owned());
    }
    let mut last_err = String::new();
    for c in candidates {
        match serde_json::from_str::<Value>(c) {
            Ok(v) => match Action::from_value(&v) {
                Ok(a) => return Ok(a),
                Err(e) => last_err = e,
            },
            Err(e) => last_err = format!("invalid JSON ({e})"),
        }
    }
    Err(last_err)
}

/// The first balanced `{ ... }` in `s` (string-aware).
fn first_json_object(s: &str) -> Option<&str> {
    let start = s.find('{')?;
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s[start..].char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[start..start + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action() {
        let cases = [
            json!({"type": "goto", "url": "http://x/"}),
            json!({"type": "click", "element": 3}),
            json!({"type": "click", "selector": "#go"}),
            json!({"type": "click", "element": "e412"}),
            json!({"type": "fill", "selector": "input[name=q]", "text": "rust"}),
            json!({"type": "fill_and_submit", "element": 1, "text": "rust"}),
            json!({"type": "press", "key": "Enter"}),
            json!({"type": "select", "element": 4, "value": "green"}),
            json!({"type": "scroll", "direction": "up"}),
            json!({"type": "back"}),
            json!({"type": "wait", "ms": 250}),
            json!({"type": "extract"}),
            json!({"type": "finish", "answer": "42"}),
        ];
        for c in cases {
            let a = Action::from_value(&c).expect("valid action");
            assert_eq!(Value::Object(a.to_value()), c, "round trip of {c}");
        }
    }

    #[test]
    fn clear_errors() {
        let e = Action::from_value(&json!({"type": "click"})).expect_err("no target");
        assert!(e.contains("needs \"selector\" or \"element\""), "{e}");
        let e = Action::from_value(&json!({"type": "fly"})).expect_err("unknown");
        assert!(e.contains("unknown action type \"fly\""), "{e}");
        let e = Action::from_value(&json!({"type": "goto"})).expect_err("no url");
        assert!(e.contains("goto: needs \"url\""), "{e}");
        let e = Action::from_value(&json!([1])).expect_err("not object");
        assert!(e.contains("must be a JSON object"), "{e}");
        let a =
            Action::from_value(&json!({"type": "click", "element": "[7]"})).expect("string index");
        assert_eq!(
            a,
            Action::Click {
                target: Target::Element(7)
            }
        );
        let a = Action::from_value(&json!({"type": "fill", "element": "[e17]", "text": "x"}))
            .expect("node id");
        assert_eq!(
            a,
            Action::Fill {
                target: Target::Node(17),
                text: "x".into()
            }
        );
        let e =
            Action::from_value(&json!({"type": "click", "element": "e1x"})).expect_err("bad id");
        assert!(e.contains("an id like \"e412\""), "{e}");
        let a = Action::from_value(&json!({"type": "wait", "ms": 999999})).expect("capped");
        assert_eq!(a, Action::Wait { ms: MAX_WAIT_MS });
    }

    #[test]
    fn replies_bare_or_fenced() {
        let a = parse_reply("I will search.\n```json\n{\"type\": \"fill_and_submit\", \"element\": 2, \"text\": \"rust\"}\n```")
            .expect("fenced");
        assert_eq!(a.kind(), "fill_and_submit");
        let a = parse_reply("{\"type\": \"click\", \"element\": 0}").expect("bare");
        assert_eq!(
            a,
            Action::Click {
                target: Target::Element(0)
            }
        );
        let a = parse_reply("Done: {\"type\": \"finish\", \"answer\": \"a {b} c\"} thanks")
            .expect("embedded");
        assert_eq!(
            a,
            Action::Finish {
                answer: "a {b} c".into()
            }
        );
        assert!(parse_reply("I think we are done here.").is_err());
        let e = parse_reply("```json\n{\"type\": \"click\"\n```").expect_err("broken");
        assert!(!e.is_empty());
    }
}

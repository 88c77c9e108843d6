//! The recorded model calls of a trajectory (`metadata.llm_calls`, read with
//! [`adp_core::llm_record`]; layout in docs/formats.md, "Model calls"), with
//! what the exporter asks of them: the last answered call, its full message
//! list as sent, its tools, its reply as an assistant message.

use adp_core::llm_record::{self, LlmCall, LlmResponse};
use serde_json::{Map, Value};

/// The record is there but cannot be read (not call records, a prefix
/// longer than the call before, ...).
pub const BAD_RECORD: &str = "bad_llm_calls";

/// The recorded calls of one trajectory.
#[derive(Debug, Clone)]
pub struct Calls {
    calls: Vec<LlmCall>,
}

impl Calls {
    /// The calls of `metadata`: `Ok(None)` when there is no record (no model
    /// was asked, or the file predates the record: `llm_calls` was a count),
    /// `Err(BAD_RECORD)` when the list cannot be read.
    pub fn of(metadata: &Map<String, Value>) -> Result<Option<Self>, &'static str> {
        match metadata.get("llm_calls") {
            Some(Value::Array(list)) if !list.is_empty() => {
                let calls = llm_record::from_metadata(metadata).map_err(|_| BAD_RECORD)?;
                Ok(Some(Calls { calls }))
            }
            _ => Ok(None),
        }
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The response of call `i` (`None` when the call failed).
    pub fn response(&self, i: usize) -> Option<&LlmResponse> {
        self.calls.get(i)?.response.as_ref()
    }

    /// The last call that has a response.
    pub fn last_answered(&self) -> Option<usize> {
        (0..self.calls.len())
            .rev()
            .find(|&i| self.response(i).is_some())
    }

    /// The messages call `i` sent.
    pub fn messages(&self, i: usize) -> Vec<Value> {
        llm_record::request_messages(&self.calls, i)
    }

    /// The `tools` call `i` offered (empty in text mode).
    pub fn tools(&self, i: usize) -> Vec<Value> {
        self.calls
            .get(i)
            .and_then(|c| c.request.get("tools"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Puts the files that `adp-file:` references stand for (screenshots
    /// sent to the model) back into the calls as the data URLs that were
    /// sent; `dir` holds the trajectory file the paths are relative to.
    /// `Err` names a reference whose file cannot be read.
    pub fn inline_files(&mut self, dir: &std::path::Path) -> Result<usize, String> {
        llm_record::inline_files(&mut self.calls, dir)
    }

    /// The model of the last answered call (as the server named it, else as
    /// requested).
    pub fn model(&self) -> Option<&str> {
        let i = self
            .last_answered()
            .unwrap_or(self.calls.len().checked_sub(1)?);
        let c = &self.calls[i];
        c.response
            .as_ref()
            .and_then(|r| r.model.as_deref())
            .or_else(|| c.request.get("model").and_then(Value::as_str))
            .filter(|m| !m.is_empty())
    }
}

/// The assistant message of a response, as the next request would carry
/// it: `content`, `tool_calls` when there are any, and `reasoning_content`
/// when the server returned one.
pub fn reply_message(r: &LlmResponse) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), "assistant".into());
    m.insert(
        "content".into(),
        r.content.clone().map_or(Value::Null, Value::String),
    );
    if !r.tool_calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(r.tool_calls.clone()));
    }
    if let Some(reasoning) = r.reasoning_content.as_ref().filter(|s| !s.is_empty()) {
        m.insert("reasoning_content".into(), Value::String(reasoning.clone()));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(calls: Value) -> Map<String, Value> {
        json!({ "llm_calls": calls })
            .as_object()
            .cloned()
            .expect("object")
    }

    fn call(n: usize, prefix: usize, added: Value, response: Value) -> Value {
        json!({"call": n, "step_id": null, "started_at": 1.0, "latency": 0.1,
               "request": {"model": "m", "tools": [{"type": "function"}]},
               "messages_prefix": prefix, "messages_added": added,
               "response": response, "error": if response.is_null() { json!("HTTP 500") } else { Value::Null }})
    }

    #[test]
    fn last_answered_call_and_its_messages() {
        let m = meta(json!([
            call(
                0,
                0,
                json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]),
                json!({"content": "a1", "model": "m-resp", "tool_calls": [], "finish_reason": "stop"})
            ),
            call(
                1,
                2,
                json!([{"role": "assistant", "content": "a1"}, {"role": "user", "content": "o1"}]),
                Value::Null
            ),
        ]));
        let c = Calls::of(&m).expect("readable").expect("calls");
        assert_eq!(c.last_answered(), Some(0));
        assert_eq!(c.messages(0).len(), 2);
        assert_eq!(c.messages(1).len(), 4);
        assert_eq!(c.tools(0).len(), 1);
        assert_eq!(c.model(), Some("m-resp"));
    }

    #[test]
    fn no_record_or_a_bad_one() {
        assert!(Calls::of(&meta(json!(3))).expect("old count").is_none());
        assert!(Calls::of(&meta(json!([]))).expect("empty").is_none());
        assert!(Calls::of(&Map::new()).expect("absent").is_none());
        assert_eq!(Calls::of(&meta(json!([{"x": 1}]))).err(), Some(BAD_RECORD));
        let long_prefix = meta(json!([
            call(0, 0, json!([{"role": "user", "content": "u"}]), Value::Null),
            call(1, 5, json!([]), Value::Null),
        ]));
        assert_eq!(Calls::of(&long_prefix).err(), Some(BAD_RECORD));
    }

    #[test]
    fn reply_message_keeps_tool_calls_and_reasoning() {
        let r = LlmResponse {
            reasoning_content: Some("think".into()),
            tool_calls: vec![json!({"id": "c1", "type": "function",
                                    "function": {"name": "python", "arguments": "{}"}})],
            ..Default::default()
        };
        let m = reply_message(&r);
        assert_eq!(m["role"], "assistant");
        assert!(m["content"].is_null());
        assert_eq!(m["tool_calls"][0]["id"], "c1");
        assert_eq!(m["reasoning_content"], "think");
        let plain = reply_message(&LlmResponse {
            content: Some("hi".into()),
            ..Default::default()
        });
        assert_eq!(plain, json!({"role": "assistant", "content": "hi"}));
    }
}

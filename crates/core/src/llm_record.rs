//! `metadata.llm_calls`: every model call of a task, as sent and as answered
//! (docs/formats.md, "Model calls"). What the `openai` policies write and what
//! `adp export` reads.
//!
//! * [`LlmCall`] / [`LlmResponse`]: one record (serde).
//! * [`CallLog`]: collects the records of one task; computes the shared
//!   message prefix so a long conversation is not stored once per call.
//! * [`request_messages`] / [`request_body`]: call `i`'s full message list,
//!   and the exact bytes that were POSTed for it.
//!
//! The client ([`crate::llm::LlmClient`]) sends `serde_json::to_vec` of a
//! [`Value`] object whose first key is `model` and second key `messages`
//! (then the sampling fields, `tools`, ...). A record keeps that object
//! *without* `messages`; [`request_body`] puts the rebuilt list back as the
//! second key, so the bytes are the bytes sent (serde_json's `preserve_order`
//! and `float_roundtrip` features keep key order and numbers exact through
//! the trajectory file).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The key of the message list in a request body.
pub const MESSAGES_KEY: &str = "messages";

/// One chat-completions call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    /// Index in `metadata.llm_calls`.
    pub call: usize,
    /// The step this reply drove; `None` when it drove none (a final
    /// answer, a rejected tool call, a failed call).
    pub step_id: Option<u32>,
    /// Unix seconds when the request was sent (first attempt).
    pub started_at: f64,
    /// Seconds until the answer (retries included).
    pub latency: f64,
    /// The JSON body POSTed, without its `messages` key.
    pub request: Map<String, Value>,
    /// The first `messages_prefix` messages equal the first ones of the
    /// previous call's full list (0 for call 0).
    pub messages_prefix: usize,
    /// The rest of this call's messages.
    pub messages_added: Vec<Value>,
    /// What the server answered; `None` when the call failed.
    pub response: Option<LlmResponse>,
    /// Why the call failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// The parts of a chat completion a trainer needs (`choices[0]` and the
/// top-level fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// The completion's `id`.
    pub id: Option<String>,
    /// The model the server says answered.
    pub model: Option<String>,
    /// `choices[0].message.content` (`None` when the server sent null).
    pub content: Option<String>,
    /// Reasoning text (`message.reasoning_content`, or `message.reasoning`),
    /// when the server returns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// `choices[0].message.tool_calls` as returned (`[]` when none).
    #[serde(default)]
    pub tool_calls: Vec<Value>,
    /// `choices[0].finish_reason` (`stop`, `tool_calls`, `length`, ...).
    pub finish_reason: Option<String>,
    /// The server's `usage` object as returned.
    #[serde(default)]
    pub usage: Option<Value>,
    /// Token ids of the completion (`LLM_LOGPROBS=true` and a server that
    /// returns them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_token_ids: Option<Vec<u64>>,
    /// Log-probability of each completion token, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f64>>,
    /// Token ids of the prompt as the server rendered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u64>>,
}

/// The records of one task's calls, in order.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    calls: Vec<LlmCall>,
    /// The previous call's full message list.
    last_messages: Vec<Value>,
}

/// What one call produced, for [`CallLog::push`].
pub struct CallOutcome<'a> {
    /// The full body sent, `messages` included.
    pub body: &'a Map<String, Value>,
    pub started_at: f64,
    pub latency: f64,
    pub result: Result<LlmResponse, String>,
}

impl CallLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a call; returns its index. `step_id` starts as `None`
    /// ([`CallLog::set_step_id`] sets it once the step exists).
    pub fn push(&mut self, outcome: CallOutcome<'_>) -> usize {
        let messages: Vec<Value> = match outcome.body.get(MESSAGES_KEY) {
            Some(Value::Array(m)) => m.clone(),
            _ => Vec::new(),
        };
        let prefix = self
            .last_messages
            .iter()
            .zip(&messages)
            .take_while(|(a, b)| a == b)
            .count();
        let mut request = outcome.body.clone();
        request.shift_remove(MESSAGES_KEY);
        let (response, error) = match outcome.result {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        let call = self.calls.len();
        self.calls.push(LlmCall {
            call,
            step_id: None,
            started_at: outcome.started_at,
            latency: outcome.latency,
            request,
            messages_prefix: prefix,
            messages_added: messages[prefix..].to_vec(),
            response,
            error,
        });
        self.last_messages = messages;
        call
    }

    /// Sets the step that call `call` drove.
    pub fn set_step_id(&mut self, call: usize, step_id: u32) {
        if let Some(c) = self.calls.get_mut(call) {
            c.step_id = Some(step_id);
        }
    }

    /// Clears every `step_id` ≥ `steps` (steps a reply chose that never ran,
    /// e.g. the task's timeout came first).
    pub fn clear_step_ids_from(&mut self, steps: u32) {
        for c in &mut self.calls {
            if c.step_id.is_some_and(|s| s >= steps) {
                c.step_id = None;
            }
        }
    }

    pub fn calls(&self) -> &[LlmCall] {
        &self.calls
    }

    /// The model the first call asked for (its request's `model`; what
    /// `metadata.model` records).
    pub fn requested_model(&self) -> Option<&str> {
        self.calls.first()?.request.get("model")?.as_str()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// The records as the JSON array stored in `metadata.llm_calls`, with
    /// each call's `prompt_token_ids` stored after the prefix it shares with
    /// the previous call's ([`PROMPT_IDS_PREFIX_KEY`]; [`from_metadata`]
    /// gives the full lists back).
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(&self.calls).unwrap_or_else(|_| Value::Array(Vec::new()));
        if let Value::Array(records) = &mut v {
            let mut previous: Option<&[u64]> = None;
            for (c, record) in self.calls.iter().zip(records.iter_mut()) {
                let Some(ids) = c
                    .response
                    .as_ref()
                    .and_then(|r| r.prompt_token_ids.as_deref())
                else {
                    continue;
                };
                let shared =
                    previous.map_or(0, |p| p.iter().zip(ids).take_while(|(a, b)| a == b).count());
                if shared > 0 {
                    if let Some(Value::Object(r)) = record.get_mut("response") {
                        r.insert(PROMPT_IDS_PREFIX_KEY.to_owned(), Value::from(shared));
                        r.insert("prompt_token_ids".to_owned(), Value::from(&ids[shared..]));
                    }
                }
                previous = Some(ids);
            }
        }
        v
    }
}

/// In a stored response: the first N of its `prompt_token_ids` equal the
/// first N of the full prompt token ids of the latest earlier call that has
/// them, and `prompt_token_ids` holds the rest. A multi-turn prompt repeats
/// the previous prompt, so this keeps a long conversation's token ids from
/// being stored once per call (absent: the list is complete).
pub const PROMPT_IDS_PREFIX_KEY: &str = "prompt_token_ids_prefix";

/// Puts the shared prefixes of `prompt_token_ids` back (the stored form of
/// [`CallLog::to_value`]; a list without [`PROMPT_IDS_PREFIX_KEY`] is taken
/// as complete).
fn expand_prompt_ids(records: &mut Value) -> Result<(), RecordError> {
    let Value::Array(records) = records else {
        return Ok(());
    };
    let mut previous: Vec<Value> = Vec::new();
    for (i, record) in records.iter_mut().enumerate() {
        let Some(Value::Object(r)) = record.get_mut("response") else {
            continue;
        };
        let shared = match r.shift_remove(PROMPT_IDS_PREFIX_KEY) {
            None => 0,
            Some(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= previous.len())
                .ok_or_else(|| {
                    RecordError::Shape(format!(
                        "call {i}: {PROMPT_IDS_PREFIX_KEY} {n} is not a length of at most the {} prompt token ids before it",
                        previous.len()
                    ))
                })?,
        };
        let Some(Value::Array(ids)) = r.get_mut("prompt_token_ids") else {
            if shared > 0 {
                return Err(RecordError::Shape(format!(
                    "call {i}: {PROMPT_IDS_PREFIX_KEY} without prompt_token_ids"
                )));
            }
            continue;
        };
        if shared > 0 {
            ids.splice(0..0, previous[..shared].iter().cloned());
        }
        previous.clone_from(ids);
    }
    Ok(())
}

/// Why a list of records does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("metadata.llm_calls is not a list of call records: {0}")]
    Shape(String),
    #[error("call {call}: `call` is {found}, expected its index {call}")]
    Index { call: usize, found: usize },
    #[error("call {call}: messages_prefix {prefix} is longer than the previous call's {previous} messages")]
    Prefix {
        call: usize,
        prefix: usize,
        previous: usize,
    },
}

/// Parses `metadata.llm_calls` and checks that every request can be rebuilt.
/// `Ok(vec![])` when the trajectory has no such field (no model call).
pub fn from_metadata(metadata: &Map<String, Value>) -> Result<Vec<LlmCall>, RecordError> {
    let Some(v) = metadata.get("llm_calls") else {
        return Ok(Vec::new());
    };
    let mut v = v.clone();
    expand_prompt_ids(&mut v)?;
    let calls: Vec<LlmCall> =
        serde_json::from_value(v).map_err(|e| RecordError::Shape(e.to_string()))?;
    check(&calls)?;
    Ok(calls)
}

/// Checks the indices and that each `messages_prefix` fits the previous call.
pub fn check(calls: &[LlmCall]) -> Result<(), RecordError> {
    let mut previous = 0usize;
    for (i, c) in calls.iter().enumerate() {
        if c.call != i {
            return Err(RecordError::Index {
                call: i,
                found: c.call,
            });
        }
        if c.messages_prefix > previous || (i == 0 && c.messages_prefix != 0) {
            return Err(RecordError::Prefix {
                call: i,
                prefix: c.messages_prefix,
                previous,
            });
        }
        previous = c.messages_prefix + c.messages_added.len();
    }
    Ok(())
}

/// The full message list of every call, in order (one pass; use this rather
/// than [`request_messages`] per call when you need them all).
pub fn all_request_messages(calls: &[LlmCall]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::with_capacity(calls.len());
    let mut current: Vec<Value> = Vec::new();
    for c in calls {
        current.truncate(c.messages_prefix);
        current.extend(c.messages_added.iter().cloned());
        out.push(current.clone());
    }
    out
}

/// Call `i`'s full message list, as sent. Empty when `i` is out of range. A
/// `messages_prefix` longer than the previous list (a damaged record; see
/// [`check`]) keeps what there is.
pub fn request_messages(calls: &[LlmCall], i: usize) -> Vec<Value> {
    if i >= calls.len() {
        return Vec::new();
    }
    let mut current: Vec<Value> = Vec::new();
    for c in &calls[..=i] {
        current.truncate(c.messages_prefix);
        current.extend(c.messages_added.iter().cloned());
    }
    current
}

/// Call `i`'s full request body as a JSON object: the recorded `request`
/// with `messages` back as its second key (after `model`).
pub fn request_value(calls: &[LlmCall], i: usize) -> Map<String, Value> {
    let Some(c) = calls.get(i) else {
        return Map::new();
    };
    let messages = Value::Array(request_messages(calls, i));
    let mut body = Map::with_capacity(c.request.len() + 1);
    let mut placed = false;
    for (k, v) in &c.request {
        body.insert(k.clone(), v.clone());
        if !placed {
            body.insert(MESSAGES_KEY.to_owned(), messages.clone());
            placed = true;
        }
    }
    if !placed {
        body.insert(MESSAGES_KEY.to_owned(), messages);
    }
    body
}

/// Call `i`'s request body byte for byte, as POSTed (`serde_json::to_vec` of
/// [`request_value`]). Empty when `i` is out of range.
pub fn request_body(calls: &[LlmCall], i: usize) -> Vec<u8> {
    if i >= calls.len() {
        return Vec::new();
    }
    serde_json::to_vec(&Value::Object(request_value(calls, i))).unwrap_or_default()
}

/// A message part's URL that stands for a file stored with the trajectory:
/// `adp-file:<path relative to the trajectories directory>`. A runtime that
/// sent a file inline (a screenshot as `data:image/png;base64,...`) records
/// this instead, so the file is stored once, not again as base64 in every
/// record; [`inline_files`] turns it back into what was sent.
pub const FILE_URL_PREFIX: &str = "adp-file:";

/// The data URL a PNG is sent as (`data:image/png;base64,<standard base64>`).
pub fn png_data_url(png: &[u8]) -> String {
    use base64::Engine as _;
    let mut s = String::from("data:image/png;base64,");
    base64::engine::general_purpose::STANDARD.encode_string(png, &mut s);
    s
}

/// The `adp-file:` reference of the file at `path` (relative to the
/// trajectories directory).
pub fn file_url(path: &str) -> String {
    format!("{FILE_URL_PREFIX}{path}")
}

/// Replaces, in `value`, every `image_url.url` equal to a key of `files`
/// (a data URL that was sent) by its file reference. Returns how many.
pub fn reference_files(
    value: &mut Value,
    files: &std::collections::HashMap<String, String>,
) -> usize {
    let mut n = 0;
    match value {
        Value::Object(m) => {
            if let Some(Value::String(url)) = m.get_mut("image_url").and_then(|i| i.get_mut("url"))
            {
                if let Some(path) = files.get(url.as_str()) {
                    *url = file_url(path);
                    n += 1;
                }
            }
            for v in m.values_mut() {
                n += reference_files(v, files);
            }
        }
        Value::Array(a) => {
            for v in a {
                n += reference_files(v, files);
            }
        }
        _ => {}
    }
    n
}

/// Puts the files that `adp-file:` references stand for back into the
/// records, as the data URLs that were sent (`dir`: the trajectories
/// directory the paths are relative to), so [`request_body`] gives the bytes
/// sent again. Only `.png` files are referenced today. Returns how many
/// references were replaced; `Err` names a reference whose file is missing,
/// unreadable, or not a plain relative path.
pub fn inline_files(calls: &mut [LlmCall], dir: &std::path::Path) -> Result<usize, String> {
    fn walk(v: &mut Value, dir: &std::path::Path) -> Result<usize, String> {
        let mut n = 0;
        match v {
            Value::Object(m) => {
                if let Some(Value::String(url)) =
                    m.get_mut("image_url").and_then(|i| i.get_mut("url"))
                {
                    if let Some(path) = url.strip_prefix(FILE_URL_PREFIX) {
                        let rel = std::path::Path::new(path);
                        let plain = rel
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)));
                        if !plain || !path.ends_with(".png") {
                            return Err(format!("{url}: not a relative .png path"));
                        }
                        let bytes =
                            std::fs::read(dir.join(rel)).map_err(|e| format!("{url}: {e}"))?;
                        *url = png_data_url(&bytes);
                        n += 1;
                    }
                }
                for v in m.values_mut() {
                    n += walk(v, dir)?;
                }
            }
            Value::Array(a) => {
                for v in a {
                    n += walk(v, dir)?;
                }
            }
            _ => {}
        }
        Ok(n)
    }
    let mut n = 0;
    for c in calls {
        for m in &mut c.messages_added {
            n += walk(m, dir)?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_references_round_trip_to_the_bytes_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("t1")).expect("dir");
        let png = b"\x89PNG\r\n\x1a\nnot really";
        std::fs::write(dir.path().join("t1/step_0.png"), png).expect("write");
        let data = png_data_url(png);
        let sent = json!([{"role": "user", "content": [
            {"type": "text", "text": "page"},
            {"type": "image_url", "image_url": {"url": data}}]}]);
        let mut log = CallLog::new();
        let mut b = body(sent.clone());
        log.push(CallOutcome {
            body: &b,
            started_at: 1.0,
            latency: 0.1,
            result: Err("x".into()),
        });
        let sent_bytes = serde_json::to_vec(&Value::Object(b.clone())).expect("bytes");
        let mut recorded = log.to_value();
        let files = std::collections::HashMap::from([(data.clone(), "t1/step_0.png".to_owned())]);
        assert_eq!(reference_files(&mut recorded, &files), 1);
        assert!(!recorded.to_string().contains("base64"), "{recorded}");
        let mut calls: Vec<LlmCall> = serde_json::from_value(recorded).expect("calls");
        assert_eq!(inline_files(&mut calls, dir.path()), Ok(1));
        assert_eq!(request_body(&calls, 0), sent_bytes);
        // A reference that leaves the directory is refused.
        b.insert("messages".into(), json!([{"content": [{"type": "image_url", "image_url": {"url": "adp-file:../x.png"}}]}]));
        let mut bad = CallLog::new();
        bad.push(CallOutcome {
            body: &b,
            started_at: 1.0,
            latency: 0.1,
            result: Err("x".into()),
        });
        let mut calls: Vec<LlmCall> = serde_json::from_value(bad.to_value()).expect("calls");
        assert!(inline_files(&mut calls, dir.path()).is_err());
    }

    fn body(messages: Value) -> Map<String, Value> {
        let v = json!({
            "model": "m",
            "messages": messages,
            "temperature": 0.2,
            "top_p": 0.95,
            "max_tokens": 512,
            "seed": 7,
            "tools": [{"type": "function", "function": {"name": "python", "parameters": {"type": "object"}}}],
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn log_of(bodies: &[Map<String, Value>]) -> CallLog {
        let mut log = CallLog::new();
        for (i, b) in bodies.iter().enumerate() {
            log.push(CallOutcome {
                body: b,
                started_at: 1_764_000_000.25 + i as f64,
                latency: 0.125,
                result: Ok(LlmResponse {
                    content: Some(format!("reply {i}")),
                    ..Default::default()
                }),
            });
        }
        log
    }

    fn conversation() -> Vec<Map<String, Value>> {
        let sys = json!({"role": "system", "content": "sys é \u{1F600} \"q\""});
        let user = json!({"role": "user", "content": "task\nline"});
        let a0 = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "python", "arguments": "{\"code\": \"print(1)\"}"}}]});
        let t0 = json!({"role": "tool", "tool_call_id": "c0", "content": "1\n".repeat(50)});
        let t0_short = json!({"role": "tool", "tool_call_id": "c0", "content": "1\n[… shortened]"});
        let a1 = json!({"role": "assistant", "content": "again"});
        let u1 = json!({"role": "user", "content": "obs 2"});
        vec![
            body(json!([sys, user])),
            body(json!([sys, user, a0, t0])),
            // An older message shortened in what is sent next.
            body(json!([sys, user, a0, t0_short, a1, u1])),
        ]
    }

    #[test]
    fn prefixes_are_shared_and_requests_rebuilt_byte_for_byte() {
        let bodies = conversation();
        let log = log_of(&bodies);
        let calls = log.calls();
        assert_eq!(
            calls
                .iter()
                .map(|c| (c.messages_prefix, c.messages_added.len()))
                .collect::<Vec<_>>(),
            [(0, 2), (2, 2), (3, 3)]
        );
        assert!(!calls[0].request.contains_key("messages"));
        // Through a trajectory file and back: the same bytes.
        let text = serde_json::to_string_pretty(&log.to_value()).expect("serialize");
        let parsed: Value = serde_json::from_str(&text).expect("parse");
        let mut meta = Map::new();
        meta.insert("llm_calls".into(), parsed);
        let back = from_metadata(&meta).expect("valid records");
        assert_eq!(back, calls);
        let all = all_request_messages(&back);
        for (i, b) in bodies.iter().enumerate() {
            let sent = serde_json::to_vec(&Value::Object(b.clone())).expect("bytes");
            assert_eq!(
                String::from_utf8_lossy(&request_body(&back, i)),
                String::from_utf8_lossy(&sent),
                "call {i}"
            );
            assert_eq!(request_body(&back, i), sent);
            assert_eq!(Value::Array(request_messages(&back, i)), b["messages"]);
            assert_eq!(Value::Array(all[i].clone()), b["messages"]);
        }
        assert!(request_body(&back, 3).is_empty());
        assert!(request_messages(&back, 9).is_empty());
    }

    #[test]
    fn failed_calls_and_step_ids_are_recorded() {
        let bodies = conversation();
        let mut log = CallLog::new();
        let i = log.push(CallOutcome {
            body: &bodies[0],
            started_at: 1.5,
            latency: 2.0,
            result: Err("LLM endpoint unreachable".into()),
        });
        let j = log.push(CallOutcome {
            body: &bodies[1],
            started_at: 4.0,
            latency: 0.5,
            result: Ok(LlmResponse::default()),
        });
        log.set_step_id(j, 3);
        let v = log.to_value();
        assert_eq!(v[i]["error"], "LLM endpoint unreachable");
        assert_eq!(v[i]["response"], Value::Null);
        assert_eq!(v[i]["step_id"], Value::Null);
        assert_eq!(v[j]["step_id"], 3);
        assert_eq!(v[j]["error"], Value::Null);
        assert_eq!(v[j]["response"]["tool_calls"], json!([]));
        // Token fields are left out when not returned.
        assert!(v[j]["response"].get("logprobs").is_none());
        assert!(v[j]["response"].get("reasoning_content").is_none());
    }

    #[test]
    fn prompt_token_ids_are_stored_after_the_prefix_they_share() {
        let bodies = conversation();
        let prompts: [Option<Vec<u64>>; 4] = [
            Some(vec![1, 2, 3, 4]),
            None, // a failed call: the next one shares with call 0
            Some(vec![1, 2, 3, 4, 5, 6]),
            Some(vec![9, 2, 3]), // nothing shared
        ];
        let mut log = CallLog::new();
        for (i, ids) in prompts.iter().enumerate() {
            log.push(CallOutcome {
                body: &bodies[i.min(2)],
                started_at: 1.0,
                latency: 0.1,
                result: match ids {
                    Some(ids) => Ok(LlmResponse {
                        prompt_token_ids: Some(ids.clone()),
                        ..Default::default()
                    }),
                    None => Err("HTTP 500".into()),
                },
            });
        }
        let v = log.to_value();
        assert_eq!(v[0]["response"]["prompt_token_ids"], json!([1, 2, 3, 4]));
        assert!(v[0]["response"].get(PROMPT_IDS_PREFIX_KEY).is_none());
        assert_eq!(v[2]["response"][PROMPT_IDS_PREFIX_KEY], 4);
        assert_eq!(v[2]["response"]["prompt_token_ids"], json!([5, 6]));
        assert!(v[3]["response"].get(PROMPT_IDS_PREFIX_KEY).is_none());
        assert_eq!(v[3]["response"]["prompt_token_ids"], json!([9, 2, 3]));

        let mut meta = Map::new();
        meta.insert("llm_calls".into(), v.clone());
        let back = from_metadata(&meta).expect("valid");
        assert_eq!(back, log.calls(), "the full lists come back");

        // Files written before the prefix was shared hold full lists.
        let full = serde_json::to_value(log.calls()).expect("json");
        meta.insert("llm_calls".into(), full);
        assert_eq!(from_metadata(&meta).expect("valid"), log.calls());

        // A prefix longer than the list before it is a damaged record.
        let mut bad = v;
        bad[2]["response"][PROMPT_IDS_PREFIX_KEY] = json!(5);
        meta.insert("llm_calls".into(), bad);
        assert!(matches!(from_metadata(&meta), Err(RecordError::Shape(_))));
    }

    #[test]
    fn damaged_records_are_reported() {
        let mut calls = log_of(&conversation()).calls().to_vec();
        calls[2].messages_prefix = 10;
        assert!(matches!(
            check(&calls),
            Err(RecordError::Prefix { call: 2, .. })
        ));
        calls[2].messages_prefix = 3;
        calls[1].call = 5;
        assert!(matches!(
            check(&calls),
            Err(RecordError::Index { call: 1, found: 5 })
        ));
        let mut meta = Map::new();
        meta.insert("llm_calls".into(), json!({"not": "a list"}));
        assert!(matches!(from_metadata(&meta), Err(RecordError::Shape(_))));
        assert_eq!(from_metadata(&Map::new()), Ok(Vec::new()));
    }
}

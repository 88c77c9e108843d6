//! A scripted OpenAI-compatible chat server for tests (the LLM is the one
//! part of the platform tests fake; the HTTP exchange is real).
//!
//! ```no_run
//! # async fn demo() {
//! use test_support::fake_llm::{FakeLlm, Reply};
//! let llm = FakeLlm::start(vec![
//!     Reply::Status(500),                       // first request: HTTP 500
//!     Reply::text("```python\nprint(6*7)\n```"), // second: a code block
//!     Reply::text("The answer is 42."),          // third: final answer
//! ])
//! .await;
//! // LLM_BASE_URL=llm.url()  (no /v1; the client appends it)
//! assert_eq!(llm.request_count(), 0);
//! # }
//! ```
//!
//! Serves on `127.0.0.1:<free port>`:
//! * `POST /v1/chat/completions`: answers with the next scripted [`Reply`]
//!   (or what the responder function returns); once the script is used up,
//!   HTTP 500 `"fake LLM: no scripted reply left"` so an unexpected call fails loudly.
//! * `GET /v1/models`: `{"data": [{"id": "fake-model"}]}` (not counted).
//!
//! Every chat request is recorded ([`FakeLlm::requests`]) with its raw bytes,
//! its JSON body and `Authorization` header. The server stops when the
//! `FakeLlm` is dropped.
//!
//! Replies speak what vLLM's OpenAI-compatible server does: `tool_calls`
//! ([`Reply::tool_call`], [`Completion`]), reasoning text
//! (`message.reasoning_content`), `usage`, and, when the request asks for
//! them, `choices[0].logprobs.content` (`"logprobs": true`; tokens spelled
//! `token_id:<id>` with `"return_tokens_as_token_ids": true`),
//! `choices[0].token_ids` and a top-level `prompt_token_ids`
//! (`"return_token_ids": true`). Fake tokens: the prompt has one token per 4
//! bytes of its `messages` JSON; a completion has one per 4 bytes of its text
//! and arguments unless [`Completion::tokens`] says how many.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The model id `GET /v1/models` lists.
pub const FAKE_MODEL: &str = "fake-model";

/// One scripted answer to a chat request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// HTTP 200 with a chat completion whose `choices[0].message.content` is this text.
    Text(String),
    /// HTTP 200 with this completion (tool calls, reasoning, finish reason).
    Completion(Completion),
    /// This HTTP status with a small JSON error body.
    Status(u16),
    /// This HTTP status with a `Retry-After: <secs>` header.
    RetryAfter(u16, u64),
    /// This HTTP status and this raw body (e.g. malformed JSON).
    Raw(u16, String),
    /// Waits, then answers with the inner reply (for client timeouts).
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// `Reply::Text(s.into())`.
    pub fn text(s: impl Into<String>) -> Self {
        Reply::Text(s.into())
    }

    /// A reply with one tool call of `name` whose arguments are `args` as
    /// JSON text; no content.
    pub fn tool_call(name: &str, args: Value) -> Self {
        Reply::Completion(Completion::default().call(name, &args.to_string()))
    }
}

/// A scripted chat completion.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// `message.content` (`None`: JSON null).
    pub content: Option<String>,
    /// `message.reasoning_content`.
    pub reasoning: Option<String>,
    /// `(function name, raw arguments text)` of each tool call, in order;
    /// ids are `call_<request n>_<k>`.
    pub tool_calls: Vec<(String, String)>,
    /// `finish_reason`; default `tool_calls` with tool calls, else `stop`.
    pub finish_reason: Option<String>,
    /// Completion tokens to report (ids, logprobs, usage).
    pub tokens: Option<usize>,
}

impl Completion {
    /// A completion whose content is `text`.
    pub fn text(text: impl Into<String>) -> Self {
        Completion {
            content: Some(text.into()),
            ..Default::default()
        }
    }
    /// Adds a tool call with these raw arguments (may be malformed JSON).
    pub fn call(mut self, name: &str, raw_arguments: &str) -> Self {
        self.tool_calls
            .push((name.to_owned(), raw_arguments.to_owned()));
        self
    }
    pub fn reasoning(mut self, text: impl Into<String>) -> Self {
        self.reasoning = Some(text.into());
        self
    }
    pub fn finish(mut self, reason: &str) -> Self {
        self.finish_reason = Some(reason.to_owned());
        self
    }
    pub fn tokens(mut self, n: usize) -> Self {
        self.tokens = Some(n);
        self
    }
}

impl From<Completion> for Reply {
    fn from(c: Completion) -> Self {
        Reply::Completion(c)
    }
}

/// One chat request as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body's bytes, as received.
    pub raw: Vec<u8>,
    /// The JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
}

impl RecordedRequest {
    /// `body.messages` (empty when absent).
    pub fn messages(&self) -> Vec<Value> {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

/// A boxed response future (lets [`respond`] recurse through `Reply::Delayed`).
type BoxedResponse<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'a>>;

type Responder = Box<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    responder: Responder,
}

/// A running fake endpoint; stops on drop.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeLlm {
    /// Serves `replies` in order, one per chat request. Must be called inside
    /// a tokio runtime.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let queue = Mutex::new(VecDeque::from(replies));
        Self::start_fn(move |_| {
            queue
                .lock()
                .map(|mut q| q.pop_front())
                .ok()
                .flatten()
                .unwrap_or_else(|| Reply::Raw(500, "fake LLM: no scripted reply left".to_owned()))
        })
        .await
    }

    /// Answers every chat request with `responder(request)` (for replies that
    /// depend on the conversation, or an endless supply).
    pub async fn start_fn(
        responder: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: Box::new(responder),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeLlm {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// Base URL to give as `LLM_BASE_URL`: `http://127.0.0.1:<port>` (no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Chat requests received so far.
    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    /// Every chat request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]}))
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = RecordedRequest {
        authorization: headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        raw: body.to_vec(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let reply = (shared.responder)(&request);
    let asked = Asked::of(&request.body);
    let n = {
        let mut requests = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.push(request);
        requests.len()
    };
    respond(reply, &asked, n).await
}

/// What a request asked for that shapes the reply.
struct Asked {
    model: String,
    logprobs: bool,
    token_ids: bool,
    tokens_as_ids: bool,
    /// Fake prompt token ids (one per 4 bytes of the messages JSON).
    prompt_ids: Vec<u64>,
}

impl Asked {
    fn of(body: &Value) -> Self {
        let flag = |k: &str| body.get(k).and_then(Value::as_bool).unwrap_or(false);
        let messages = body
            .get("messages")
            .map(|m| m.to_string())
            .unwrap_or_default();
        let prompt_ids = messages
            .as_bytes()
            .chunks(4)
            .map(|c| c.iter().map(|b| u64::from(*b)).sum::<u64>())
            .collect();
        Asked {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(FAKE_MODEL)
                .to_owned(),
            logprobs: flag("logprobs"),
            token_ids: flag("return_token_ids"),
            tokens_as_ids: flag("return_tokens_as_token_ids"),
            prompt_ids,
        }
    }
}

/// The JSON of a chat completion for `c`, the `n`-th request.
fn completion_json(c: Completion, asked: &Asked, n: usize) -> Value {
    let tool_calls: Vec<Value> = c
        .tool_calls
        .iter()
        .enumerate()
        .map(|(k, (name, args))| {
            json!({"id": format!("call_{n}_{k}"), "type": "function",
                   "function": {"name": name, "arguments": args}})
        })
        .collect();
    let text_len = c.content.as_deref().map_or(0, str::len)
        + c.reasoning.as_deref().map_or(0, str::len)
        + c.tool_calls
            .iter()
            .map(|(a, b)| a.len() + b.len())
            .sum::<usize>();
    let count = c.tokens.unwrap_or(text_len.div_ceil(4).max(1));
    let ids: Vec<u64> = (0..count as u64)
        .map(|k| 1000 + (k * 7919) % 50_000)
        .collect();
    let mut message = serde_json::Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), json!(c.content));
    if let Some(r) = &c.reasoning {
        message.insert("reasoning_content".into(), json!(r));
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), json!(tool_calls));
    }
    let finish = c.finish_reason.unwrap_or_else(|| {
        if tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
        .to_owned()
    });
    let mut choice = json!({"index": 0, "message": message, "finish_reason": finish});
    if asked.logprobs {
        let content: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let token = if asked.tokens_as_ids {
                    format!("token_id:{id}")
                } else {
                    format!("t{k}")
                };
                json!({"token": token, "logprob": -((k % 8) as f64) * 0.125 - 0.0625,
                       "bytes": [], "top_logprobs": []})
            })
            .collect();
        choice["logprobs"] = json!({"content": content});
    }
    if asked.token_ids {
        choice["token_ids"] = json!(ids);
    }
    let mut out = json!({
        "id": format!("chatcmpl-fake-{n}"),
        "object": "chat.completion",
        "created": 0,
        "model": asked.model,
        "choices": [choice],
        "usage": {"prompt_tokens": asked.prompt_ids.len(), "completion_tokens": count,
                  "total_tokens": asked.prompt_ids.len() + count}
    });
    if asked.token_ids {
        out["prompt_token_ids"] = json!(asked.prompt_ids);
    }
    out
}

fn respond<'a>(reply: Reply, asked: &'a Asked, n: usize) -> BoxedResponse<'a> {
    Box::pin(async move { respond_now(reply, asked, n).await })
}

async fn respond_now(reply: Reply, asked: &Asked, n: usize) -> Response {
    let status =
        |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply {
        Reply::Text(text) => Json(completion_json(Completion::text(text), asked, n)).into_response(),
        Reply::Completion(c) => Json(completion_json(c, asked, n)).into_response(),
        Reply::Status(code) => (
            status(code),
            Json(json!({"error": {"message": format!("fake LLM scripted HTTP {code}"), "code": code}})),
        )
            .into_response(),
        Reply::RetryAfter(code, secs) => (
            status(code),
            [(axum::http::header::RETRY_AFTER, secs.to_string())],
            Json(json!({"error": {"message": "slow down", "code": code}})),
        )
            .into_response(),
        Reply::Raw(code, body) => (status(code), body).into_response(),
        Reply::Delayed(d, inner) => {
            tokio::time::sleep(d).await;
            respond(*inner, asked, n).await
        }
    }
}

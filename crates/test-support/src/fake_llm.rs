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
//! Every chat request is recorded ([`FakeLlm::requests`]) with its JSON body
//! and `Authorization` header. The server stops when the `FakeLlm` is dropped.

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
}

/// One chat request as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
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
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let reply = (shared.responder)(&request);
    let model = request
        .body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(FAKE_MODEL)
        .to_owned();
    let n = {
        let mut requests = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.push(request);
        requests.len()
    };
    respond(reply, &model, n).await
}

fn respond(reply: Reply, model: &str, n: usize) -> BoxedResponse<'_> {
    Box::pin(async move { respond_now(reply, model, n).await })
}

async fn respond_now(reply: Reply, model: &str, n: usize) -> Response {
    let status =
        |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply {
        Reply::Text(text) => Json(json!({
            "id": format!("chatcmpl-fake-{n}"),
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        }))
        .into_response(),
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
            respond(*inner, model, n).await
        }
    }
}

//! The shared OpenAI-compatible chat client (CONTRACT §4): what the `openai`
//! policies of both runtimes talk to (vLLM, OpenAI, llama.cpp server, ...).
//!
//! * [`LlmArgs`]: the `LLM_*` settings, to `#[command(flatten)]` into a
//!   binary's clap config. `LLM_BASE_URL` falls back to `VLLM_URL`.
//! * [`LlmClient::chat`]: `POST {base}/v1/chat/completions` with `model`,
//!   `messages`, `temperature`, `max_tokens` (+ `Authorization: Bearer` when a
//!   key is set), retried with exponential backoff on 408/429/5xx, connect
//!   errors and timeouts (a small `Retry-After` is honoured); returns
//!   `choices[0].message.content`.
//! * [`LlmError`]: every failure; all of them are infrastructure failures
//!   (`From<LlmError> for InfraError`, component `llm`): the task is retried by
//!   the worker and never silently handed to another policy.
//!
//! ```no_run
//! # async fn demo() -> Result<(), adp_core::llm::LlmError> {
//! use adp_core::llm::{ChatMessage, LlmClient, LlmConfig};
//! let client = LlmClient::new(LlmConfig::new("http://127.0.0.1:8000"))?;
//! let reply = client
//!     .chat(&[ChatMessage::system("Be brief."), ChatMessage::user("2+2?")])
//!     .await?;
//! # let _ = reply; Ok(()) }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::error::InfraError;

/// Environment variable read when `LLM_BASE_URL` is not set (CONTRACT §4).
pub const VLLM_URL_ENV: &str = "VLLM_URL";

/// Longest `Retry-After` the client waits for; a longer one falls back to its
/// own backoff (a worker slot should not sleep for minutes).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Bytes of an error body kept in an [`LlmError`].
const ERROR_BODY_CAP: usize = 512;

/// `LLM_*` settings shared by the runtimes' binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmArgs {
    /// OpenAI-compatible endpoint, with or without the trailing `/v1`
    /// (e.g. `http://vllm:8000`). Falls back to `VLLM_URL`. Unset: no LLM
    /// (runtimes use their offline policy).
    #[arg(long = "llm-base-url", env = "LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Model name sent in each request. Empty: the first model listed by
    /// `GET {base}/v1/models` (what a single-model vLLM serves).
    #[arg(long = "llm-model", env = "LLM_MODEL", default_value = "")]
    pub llm_model: String,
    /// Bearer token; unset or empty sends no Authorization header.
    #[arg(long = "llm-api-key", env = "LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Sampling temperature.
    #[arg(
        long = "llm-temperature",
        env = "LLM_TEMPERATURE",
        default_value_t = 0.2
    )]
    pub llm_temperature: f32,
    /// Upper bound of tokens in one reply.
    #[arg(
        long = "llm-max-tokens",
        env = "LLM_MAX_TOKENS",
        default_value_t = 1024
    )]
    pub llm_max_tokens: u32,
    /// Timeout of one HTTP request, in seconds.
    #[arg(long = "llm-timeout-secs", env = "LLM_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub llm_timeout_secs: u64,
    /// Retries of one chat call after the first attempt (429, 5xx, connect errors, timeouts).
    #[arg(long = "llm-retries", env = "LLM_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=20))]
    pub llm_retries: u32,
    /// First backoff between retries in milliseconds; doubles per retry (max 8 s).
    #[arg(
        long = "llm-retry-backoff-ms",
        env = "LLM_RETRY_BACKOFF_MS",
        default_value_t = 500
    )]
    pub llm_retry_backoff_ms: u64,
}

impl LlmArgs {
    /// The endpoint: `LLM_BASE_URL`, else `VLLM_URL`; `None` when neither is
    /// set (or both are empty).
    pub fn base_url(&self) -> Option<String> {
        self.llm_base_url
            .clone()
            .or_else(|| std::env::var(VLLM_URL_ENV).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The client configuration, or `None` when no endpoint is configured.
    pub fn config(&self) -> Option<LlmConfig> {
        let base_url = self.base_url()?;
        Some(LlmConfig {
            base_url,
            model: self.llm_model.trim().to_owned(),
            api_key: self
                .llm_api_key
                .clone()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty()),
            temperature: self.llm_temperature,
            max_tokens: self.llm_max_tokens,
            timeout: Duration::from_secs(self.llm_timeout_secs),
            retries: self.llm_retries,
            retry_backoff: Duration::from_millis(self.llm_retry_backoff_ms),
        })
    }
}

/// Settings of an [`LlmClient`] (build one with [`LlmConfig::new`] in tests,
/// or [`LlmArgs::config`] in a binary).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// Endpoint, with or without the trailing `/v1`.
    pub base_url: String,
    /// Model name; empty → discovered from `GET /v1/models`.
    pub model: String,
    pub api_key: Option<String>,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff; doubles per retry, at most 8 s.
    pub retry_backoff: Duration,
}

impl LlmConfig {
    /// Defaults (model discovered, temperature 0.2, 1024 tokens, 60 s, 3
    /// retries from 500 ms) for `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            model: String::new(),
            api_key: None,
            temperature: 0.2,
            max_tokens: 1024,
            timeout: Duration::from_secs(60),
            retries: 3,
            retry_backoff: Duration::from_millis(500),
        }
    }

    /// `{base}/v1`, whether or not `base` already ends in `/v1`.
    pub fn api_root(&self) -> String {
        let base = self.base_url.trim().trim_end_matches('/');
        if base.ends_with("/v1") {
            base.to_owned()
        } else {
            format!("{base}/v1")
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.min(10);
        (self.retry_backoff * factor).min(MAX_BACKOFF)
    }
}

/// One chat message in the OpenAI format (`{"role": ..., "content": ...}`);
/// a list of these is what `metadata.messages` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Why a chat call failed. Every variant is an infrastructure failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Connection refused, DNS failure, reset... after every retry.
    #[error("LLM endpoint {url} unreachable after {attempts} attempt(s): {message}")]
    Unreachable {
        url: String,
        attempts: u32,
        message: String,
    },
    /// No answer within the request timeout, after every retry.
    #[error("LLM endpoint {url} did not answer within {timeout_secs} s, {attempts} attempt(s)")]
    Timeout {
        url: String,
        attempts: u32,
        timeout_secs: u64,
    },
    /// A non-success HTTP status (a retryable one after every retry).
    #[error("LLM endpoint {url} answered HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        url: String,
        status: u16,
        attempts: u32,
        body: String,
    },
    /// A 200 whose body is not a chat completion with a text in
    /// `choices[0].message.content`.
    #[error("LLM reply from {url} not understood: {message}")]
    BadReply { url: String, message: String },
    /// The configuration cannot work (bad URL, no model to discover).
    #[error("LLM configuration: {0}")]
    Config(String),
}

impl From<LlmError> for InfraError {
    fn from(e: LlmError) -> Self {
        InfraError::new("llm", e.to_string())
    }
}

/// What went wrong in one attempt, and whether another attempt may help.
enum Attempt {
    Retry {
        error: LlmError,
        retry_after: Option<Duration>,
    },
    Fatal(LlmError),
}

/// An OpenAI-compatible chat-completions client. Cheap to clone (shares the
/// connection pool and the discovered model).
#[derive(Debug, Clone)]
pub struct LlmClient {
    config: LlmConfig,
    http: reqwest::Client,
    model: std::sync::Arc<OnceCell<String>>,
}

impl LlmClient {
    /// A client for `config`; fails only on an unusable configuration.
    pub fn new(config: LlmConfig) -> Result<Self, LlmError> {
        let root = config.api_root();
        if !(root.starts_with("http://") || root.starts_with("https://")) {
            return Err(LlmError::Config(format!(
                "LLM_BASE_URL must start with http:// or https://, got {:?}",
                config.base_url
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("HTTP client: {e}")))?;
        let model = std::sync::Arc::new(OnceCell::new());
        if !config.model.is_empty() {
            let _ = model.set(config.model.clone());
        }
        Ok(LlmClient {
            config,
            http,
            model,
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The model name: configured, or discovered once from `GET /v1/models`.
    pub async fn model(&self) -> Result<String, LlmError> {
        self.model
            .get_or_try_init(|| async {
                let url = format!("{}/models", self.config.api_root());
                let body = self.send_with_retries(&url, None).await?;
                body.get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        LlmError::Config(format!(
                            "LLM_MODEL is not set and {url} lists no model; set LLM_MODEL"
                        ))
                    })
            })
            .await
            .cloned()
    }

    /// Sends `messages` and returns the assistant's text
    /// (`choices[0].message.content`).
    pub async fn chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let model = self.model().await?;
        let url = format!("{}/chat/completions", self.config.api_root());
        let request = json!({
            "model": model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        });
        let body = self.send_with_retries(&url, Some(&request)).await?;
        let choice = body
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        match choice.and_then(|c| c.pointer("/message/content")) {
            Some(Value::String(s)) => Ok(s.clone()),
            // Some servers send `null` content with a finish_reason such as "length".
            Some(Value::Null) => Ok(String::new()),
            _ => Err(LlmError::BadReply {
                url,
                message: format!(
                    "no choices[0].message.content in {}",
                    cut(&body.to_string(), ERROR_BODY_CAP)
                ),
            }),
        }
    }

    /// GET (`request = None`) or POST a JSON body, with retries; the parsed
    /// JSON of the first successful answer.
    async fn send_with_retries(
        &self,
        url: &str,
        request: Option<&Value>,
    ) -> Result<Value, LlmError> {
        let attempts = self.config.retries + 1;
        let mut attempt = 1;
        loop {
            match self.send_once(url, request, attempt).await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry { error, retry_after }) => {
                    if attempt >= attempts {
                        return Err(error);
                    }
                    let delay = match retry_after {
                        Some(d) if d <= MAX_RETRY_AFTER => d,
                        _ => self.config.backoff(attempt - 1),
                    };
                    tracing::warn!(url = %url, attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "LLM request failed; retrying.");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn send_once(
        &self,
        url: &str,
        request: Option<&Value>,
        attempt: u32,
    ) -> Result<Value, Attempt> {
        let mut builder = match request {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        };
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(url, attempt, &e)),
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response.text().await.unwrap_or_default();
            let error = LlmError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                attempts: attempt,
                body: cut(body.trim(), ERROR_BODY_CAP),
            };
            let retryable =
                status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error();
            return Err(if retryable {
                Attempt::Retry { error, retry_after }
            } else {
                Attempt::Fatal(error)
            });
        }
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.transport_error(url, attempt, &e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Fatal(LlmError::BadReply {
                url: url.to_owned(),
                message: format!(
                    "not JSON ({e}): {}",
                    cut(&String::from_utf8_lossy(&bytes), ERROR_BODY_CAP)
                ),
            })
        })
    }

    fn transport_error(&self, url: &str, attempt: u32, e: &reqwest::Error) -> Attempt {
        let error = if e.is_timeout() {
            LlmError::Timeout {
                url: url.to_owned(),
                attempts: attempt,
                timeout_secs: self.config.timeout.as_secs(),
            }
        } else {
            LlmError::Unreachable {
                url: url.to_owned(),
                attempts: attempt,
                message: error_chain(e),
            }
        };
        Attempt::Retry {
            error,
            retry_after: None,
        }
    }
}

/// `e` and its sources, `: `-joined (reqwest's top-level message alone is vague).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// At most `max` bytes of `s`, cut on a char boundary, `…` appended when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_root_accepts_base_with_or_without_v1() {
        for (base, root) in [
            ("http://h:8000", "http://h:8000/v1"),
            ("http://h:8000/", "http://h:8000/v1"),
            ("http://h:8000/v1", "http://h:8000/v1"),
            ("http://h:8000/v1/", "http://h:8000/v1"),
            (
                "https://api.example/openai",
                "https://api.example/openai/v1",
            ),
        ] {
            assert_eq!(LlmConfig::new(base).api_root(), root, "{base}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut c = LlmConfig::new("http://h");
        c.retry_backoff = Duration::from_millis(100);
        assert_eq!(c.backoff(0), Duration::from_millis(100));
        assert_eq!(c.backoff(1), Duration::from_millis(200));
        assert_eq!(c.backoff(3), Duration::from_millis(800));
        assert_eq!(c.backoff(20), MAX_BACKOFF);
    }

    #[test]
    fn bad_scheme_is_a_config_error() {
        let e = LlmClient::new(LlmConfig::new("vllm:8000")).expect_err("no scheme");
        assert!(matches!(e, LlmError::Config(_)), "{e}");
        let infra: InfraError = e.into();
        assert_eq!(infra.component, "llm");
    }

    #[test]
    fn messages_serialize_in_openai_format() {
        let m = ChatMessage::user("hi");
        assert_eq!(
            serde_json::to_value(&m).expect("serializable"),
            json!({"role": "user", "content": "hi"})
        );
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h…");
        assert_eq!(cut("abc", 3), "abc");
    }
}

//! The shared OpenAI-compatible chat client (CONTRACT §4): what the `openai`
//! policies of both runtimes talk to (vLLM, OpenAI, llama.cpp server, ...).
//!
//! * [`LlmArgs`]: the `LLM_*` settings, to `#[command(flatten)]` into a
//!   binary's clap config. `LLM_BASE_URL` falls back to `VLLM_URL`.
//! * [`LlmClient::complete`]: `POST {base}/v1/chat/completions` with `model`,
//!   `messages`, the [`Sampling`] fields, `tools` in native [`ToolMode`], and
//!   the vLLM token fields with `LLM_LOGPROBS=true` (+ `Authorization: Bearer`
//!   when a key is set); retried with exponential backoff on 408/429/5xx,
//!   connect errors and timeouts (a small `Retry-After` is honoured). Every
//!   call is recorded in a [`CallLog`] (`metadata.llm_calls`, see
//!   [`crate::llm_record`]); the body is sent as `serde_json::to_vec` of one
//!   JSON object (`model`, `messages`, then the rest) so the record rebuilds
//!   it byte for byte. [`LlmClient::chat`] is the text-only shortcut.
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

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

use crate::error::InfraError;
use crate::llm_record::{CallLog, CallOutcome, LlmResponse, MESSAGES_KEY};
use crate::types::unix_now;

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
    /// `native`: the request carries `tools` and the reply's `tool_calls`
    /// drive each step; `text`: actions are parsed from the reply's text
    /// (for endpoints without tool support).
    #[arg(long = "llm-tool-mode", env = "LLM_TOOL_MODE", value_enum, default_value_t = ToolMode::Native)]
    pub llm_tool_mode: ToolMode,
    /// Sampling temperature (0–2).
    #[arg(long = "llm-temperature", env = "LLM_TEMPERATURE", default_value_t = 0.2,
          value_parser = parse_temperature)]
    pub llm_temperature: f64,
    /// Nucleus sampling (0 < top_p ≤ 1); unset or empty: not sent (the
    /// server's default).
    #[arg(long = "llm-top-p", env = "LLM_TOP_P", value_parser = parse_top_p)]
    pub llm_top_p: Option<Unset<f64>>,
    /// Upper bound of tokens in one reply.
    #[arg(long = "llm-max-tokens", env = "LLM_MAX_TOKENS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_max_tokens: u32,
    /// Sampling seed sent with each request; unset or empty: not sent.
    #[arg(long = "llm-seed", env = "LLM_SEED", value_parser = parse_seed)]
    pub llm_seed: Option<Unset<u64>>,
    /// Ask for logprobs and token ids the way vLLM's OpenAI-compatible server
    /// offers them (`logprobs`, `return_token_ids`,
    /// `return_tokens_as_token_ids`) and record them in `metadata.llm_calls`.
    #[arg(long = "llm-logprobs", env = "LLM_LOGPROBS", default_value_t = false,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub llm_logprobs: bool,
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

fn parse_temperature(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    check_temperature(v)
}

/// An optional setting whose empty value (e.g. `LLM_SEED=` from a compose
/// file) means "not set".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unset<T>(pub Option<T>);

fn parse_top_p(s: &str) -> Result<Unset<f64>, String> {
    if s.trim().is_empty() {
        return Ok(Unset(None));
    }
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    check_top_p(v).map(|v| Unset(Some(v)))
}

fn parse_seed(s: &str) -> Result<Unset<u64>, String> {
    if s.trim().is_empty() {
        return Ok(Unset(None));
    }
    s.trim()
        .parse()
        .map(|v| Unset(Some(v)))
        .map_err(|_| format!("{s:?} is not a whole number ≥ 0"))
}

fn check_temperature(v: f64) -> Result<f64, String> {
    if (0.0..=2.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("temperature must be within 0..=2, got {v}"))
    }
}

fn check_top_p(v: f64) -> Result<f64, String> {
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("top_p must be > 0 and ≤ 1, got {v}"))
    }
}

/// How the `openai` policies exchange actions with the model (`LLM_TOOL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// `tools` in the request, `tool_calls` in the reply, results as `tool` messages.
    #[default]
    Native,
    /// Actions parsed from the reply's text, results as `user` messages.
    Text,
}

/// Sampling fields of a request. `None` fields are not sent.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The task constraint that overrides the runtime's sampling settings.
pub const SAMPLING_CONSTRAINT: &str = "sampling";

impl Sampling {
    /// `constraints.sampling` of a task (`temperature`, `top_p`,
    /// `max_tokens`, `seed`; each optional). `Ok(default)` when absent or
    /// null; a clear message for a wrong shape, type or range, or an unknown key.
    pub fn from_constraints(constraints: &Map<String, Value>) -> Result<Sampling, String> {
        let obj = match constraints.get(SAMPLING_CONSTRAINT) {
            None | Some(Value::Null) => return Ok(Sampling::default()),
            Some(Value::Object(o)) => o,
            Some(_) => return Err("must be an object".to_owned()),
        };
        let mut out = Sampling::default();
        for (key, v) in obj {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "temperature" => {
                    let t = v.as_f64().ok_or("temperature must be a number")?;
                    out.temperature = Some(check_temperature(t)?);
                }
                "top_p" => {
                    let p = v.as_f64().ok_or("top_p must be a number")?;
                    out.top_p = Some(check_top_p(p)?);
                }
                "max_tokens" => {
                    let m = v
                        .as_u64()
                        .filter(|m| (1..=u64::from(u32::MAX)).contains(m))
                        .ok_or("max_tokens must be a whole number ≥ 1")?;
                    out.max_tokens = Some(m as u32);
                }
                "seed" => {
                    out.seed = Some(v.as_u64().ok_or("seed must be a whole number ≥ 0")?);
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?} (expected temperature, top_p, max_tokens, seed)"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// `self` with every field `over` sets replaced.
    pub fn overridden_by(self, over: Sampling) -> Sampling {
        Sampling {
            temperature: over.temperature.or(self.temperature),
            top_p: over.top_p.or(self.top_p),
            max_tokens: over.max_tokens.or(self.max_tokens),
            seed: over.seed.or(self.seed),
        }
    }
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
            tool_mode: self.llm_tool_mode,
            sampling: Sampling {
                temperature: Some(self.llm_temperature),
                top_p: self.llm_top_p.and_then(|v| v.0),
                max_tokens: Some(self.llm_max_tokens),
                seed: self.llm_seed.and_then(|v| v.0),
            },
            logprobs: self.llm_logprobs,
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
    /// Native tool calls or text parsing (read by the policies).
    pub tool_mode: ToolMode,
    /// Sampling sent with every request (a task's `constraints.sampling`
    /// overrides it field by field).
    pub sampling: Sampling,
    /// Ask for logprobs and token ids (vLLM fields).
    pub logprobs: bool,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff; doubles per retry, at most 8 s.
    pub retry_backoff: Duration,
}

impl LlmConfig {
    /// Defaults (model discovered, native tools, temperature 0.2, 1024
    /// tokens, no top_p/seed/logprobs, 60 s, 3 retries from 500 ms) for `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            model: String::new(),
            api_key: None,
            tool_mode: ToolMode::Native,
            sampling: Sampling {
                temperature: Some(0.2),
                top_p: None,
                max_tokens: Some(1024),
                seed: None,
            },
            logprobs: false,
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
    /// A 200 whose body is not a chat completion (no `choices[0].message`
    /// object, or content that is neither text nor null).
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

    /// The model name if known: configured, or already discovered.
    pub fn known_model(&self) -> Option<String> {
        self.model.get().cloned()
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

    /// Sends `messages` (text only: no tools, the configured sampling, no
    /// record) and returns the assistant's text (`choices[0].message.content`,
    /// `""` when null).
    pub async fn chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let mut log = CallLog::new();
        let reply = self
            .complete(&mut log, &messages, None, self.config.sampling)
            .await?;
        Ok(reply.content.unwrap_or_default())
    }

    /// The request body: `model`, `messages`, the set `sampling` fields,
    /// `tools` + `tool_choice: "auto"` when given, and the vLLM logprob /
    /// token-id fields when `logprobs` is on. Key order is part of the record
    /// format (docs/formats.md): `model` first, `messages` second.
    pub fn request_body(
        &self,
        model: &str,
        messages: &[Value],
        tools: Option<&Value>,
        sampling: Sampling,
    ) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert(MESSAGES_KEY.into(), Value::Array(messages.to_vec()));
        if let Some(t) = sampling.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(p) = sampling.top_p {
            body.insert("top_p".into(), json!(p));
        }
        if let Some(m) = sampling.max_tokens {
            body.insert("max_tokens".into(), json!(m));
        }
        if let Some(s) = sampling.seed {
            body.insert("seed".into(), json!(s));
        }
        if let Some(tools) = tools {
            body.insert("tools".into(), tools.clone());
            body.insert("tool_choice".into(), json!("auto"));
        }
        if self.config.logprobs {
            // vLLM: per-token logprobs (OpenAI field), token ids of the
            // completion (`choices[0].token_ids`) and prompt
            // (`prompt_token_ids`), and, for servers older than
            // `return_token_ids`, logprob tokens spelled `token_id:<id>`.
            body.insert("logprobs".into(), json!(true));
            body.insert("return_token_ids".into(), json!(true));
            body.insert("return_tokens_as_token_ids".into(), json!(true));
        }
        body
    }

    /// One chat call: sends `messages` (+ `tools` when given) with
    /// `sampling`, records it in `log` (whatever the outcome) and returns the
    /// parsed reply. The call's index in `log` is `log.len() - 1` afterwards.
    pub async fn complete(
        &self,
        log: &mut CallLog,
        messages: &[Value],
        tools: Option<&Value>,
        sampling: Sampling,
    ) -> Result<LlmResponse, LlmError> {
        let model = self.model().await?;
        let url = format!("{}/chat/completions", self.config.api_root());
        let body = self.request_body(&model, messages, tools, sampling);
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| LlmError::Config(format!("request not serialisable: {e}")))?;
        let started_at = unix_now();
        let clock = Instant::now();
        let result = self
            .send_with_retries(&url, Some(&bytes))
            .await
            .and_then(|reply| parse_completion(&url, &reply));
        log.push(CallOutcome {
            body: &body,
            started_at,
            latency: clock.elapsed().as_secs_f64(),
            result: result.as_ref().map_err(ToString::to_string).cloned(),
        });
        result
    }

    /// GET (`request = None`) or POST these JSON bytes, with retries; the
    /// parsed JSON of the first successful answer.
    async fn send_with_retries(
        &self,
        url: &str,
        request: Option<&[u8]>,
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
        request: Option<&[u8]>,
        attempt: u32,
    ) -> Result<Value, Attempt> {
        let mut builder = match request {
            Some(body) => self
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec()),
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

/// The parts of a chat completion that are recorded; `BadReply` when there
/// is no `choices[0].message` object.
fn parse_completion(url: &str, body: &Value) -> Result<LlmResponse, LlmError> {
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let Some(message) = choice
        .and_then(|c| c.get("message"))
        .and_then(Value::as_object)
    else {
        return Err(LlmError::BadReply {
            url: url.to_owned(),
            message: format!(
                "no choices[0].message in {}",
                cut(&body.to_string(), ERROR_BODY_CAP)
            ),
        });
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let content = match message.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(LlmError::BadReply {
                url: url.to_owned(),
                message: format!(
                    "choices[0].message.content is neither text nor null: {}",
                    cut(&other.to_string(), ERROR_BODY_CAP)
                ),
            })
        }
    };
    let ids = |v: Option<&Value>| -> Option<Vec<u64>> {
        v.and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect())
    };
    let choice = choice.unwrap_or(&Value::Null);
    let token_logprobs = choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array);
    let logprobs = token_logprobs.and_then(|c| {
        c.iter()
            .map(|t| t.get("logprob").and_then(Value::as_f64))
            .collect::<Option<Vec<f64>>>()
    });
    // `choices[0].token_ids` (vLLM `return_token_ids`), else the logprob
    // tokens when every one is spelled `token_id:<id>`
    // (`return_tokens_as_token_ids`).
    let completion_token_ids = ids(choice.get("token_ids")).or_else(|| {
        token_logprobs.and_then(|c| {
            c.iter()
                .map(|t| {
                    t.get("token")
                        .and_then(Value::as_str)
                        .and_then(|s| s.strip_prefix("token_id:"))
                        .and_then(|id| id.parse::<u64>().ok())
                })
                .collect()
        })
    });
    Ok(LlmResponse {
        id: text(body.get("id")),
        model: text(body.get("model")),
        content,
        reasoning_content: text(message.get("reasoning_content"))
            .or_else(|| text(message.get("reasoning"))),
        tool_calls: message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        finish_reason: text(choice.get("finish_reason")),
        usage: body.get("usage").filter(|u| !u.is_null()).cloned(),
        completion_token_ids,
        logprobs,
        prompt_token_ids: ids(body.get("prompt_token_ids"))
            .or_else(|| ids(choice.get("prompt_token_ids"))),
    })
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        llm: LlmArgs,
    }

    fn parse(args: &[&str]) -> Result<LlmArgs, clap::Error> {
        use clap::Parser;
        let mut argv = vec!["x", "--llm-base-url", "http://h"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.llm)
    }

    #[test]
    fn sampling_settings_parse_and_bad_values_are_refused() {
        let a = parse(&[]).expect("defaults");
        let c = a.config().expect("config");
        assert_eq!(c.tool_mode, ToolMode::Native);
        assert_eq!(
            c.sampling,
            Sampling {
                temperature: Some(0.2),
                top_p: None,
                max_tokens: Some(1024),
                seed: None
            }
        );
        assert!(!c.logprobs);
        let a = parse(&[
            "--llm-tool-mode",
            "text",
            "--llm-temperature",
            "0",
            "--llm-top-p",
            "0.9",
            "--llm-max-tokens",
            "64",
            "--llm-seed",
            "42",
            "--llm-logprobs",
            "true",
        ])
        .expect("all set");
        let c = a.config().expect("config");
        assert_eq!(c.tool_mode, ToolMode::Text);
        assert_eq!(
            c.sampling,
            Sampling {
                temperature: Some(0.0),
                top_p: Some(0.9),
                max_tokens: Some(64),
                seed: Some(42)
            }
        );
        assert!(c.logprobs);
        // Empty means unset (what a compose file passes for an unset variable).
        let c = parse(&["--llm-top-p", "", "--llm-seed", " "])
            .expect("empty values")
            .config()
            .expect("config");
        assert_eq!((c.sampling.top_p, c.sampling.seed), (None, None));
        for bad in [
            &["--llm-temperature", "2.5"][..],
            &["--llm-temperature", "warm"],
            &["--llm-top-p", "0"],
            &["--llm-top-p", "1.5"],
            &["--llm-max-tokens", "0"],
            &["--llm-seed", "-1"],
            &["--llm-tool-mode", "json"],
            &["--llm-logprobs", "maybe"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h…");
        assert_eq!(cut("abc", 3), "abc");
    }
}

//! Errors of `adp-core`, and the line between the two kinds of task failure.
//!
//! A **task failure** (the agent's code raised, the page had no such element)
//! is data: the runtime returns a [`crate::Trajectory`] with `success: false`.
//! An **infrastructure failure** ([`InfraError`]: sandbox could not start,
//! browser crashed, LLM endpoint down, disk full) is not the agent's fault: the
//! worker leaves the entry un-acked and retries it, and only after
//! `MAX_DELIVERIES` attempts writes a `system_error` trajectory.

/// Errors of the shared library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsafe task_id {0:?} refused before touching the file system")]
    UnsafeTaskId(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Redis refused a write because it reached `maxmemory` (policy
    /// `noeviction`): an infrastructure state that lasts until memory is freed.
    pub fn is_redis_oom(&self) -> bool {
        matches!(self, Error::Redis(e) if is_oom(e))
    }
}

/// Whether Redis answered `OOM command not allowed when used memory > 'maxmemory'`.
/// (Also inside a pipeline's error, which carries no code of its own.)
pub fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
        || e.to_string()
            .contains("command not allowed when used memory")
}

/// An infrastructure failure: retry the task later, do not record it as the
/// agent's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{component} failure: {message}")]
pub struct InfraError {
    /// What failed: `sandbox`, `browser`, `llm`, `disk`, `redis`, ...
    pub component: &'static str,
    pub message: String,
}

impl InfraError {
    pub fn new(component: &'static str, message: impl Into<String>) -> Self {
        InfraError {
            component,
            message: message.into(),
        }
    }
}

//! # adp-core
//!
//! The shared library of the Agent Data Platform; the only code the binaries
//! (`dispatcher`, `sandbox-runtime`, `web-runtime`, `adp`) share.
//!
//! # Layout
//! * [`types`]: `TaskSpec`, `Trajectory` and friends (CONTRACT §1, §3).
//! * [`validate`]: one line of `tasks.jsonl` → `TaskSpec` or a typed rejection.
//! * [`names`]: every Redis stream, group and key name.
//! * [`queue`]: consumer groups, the [`queue::Worker`] that runs a
//!   [`queue::TaskHandler`], heartbeats, re-claim, retries, dead letters.
//! * [`runs`]: runs and rollouts on disk (the trajectory path rule).
//! * [`writer`]: atomic trajectory files, laid out by [`pretty`] (pretty JSON,
//!   arrays of numbers on one line).
//! * [`cache`]: the template (plan) cache.
//! * [`metrics`]: the Prometheus registry and the `/metrics` + `/health` server.
//! * [`health`]: runtime registration in the `runtime_health` hash.
//! * [`reward`]: task checks (`expected_answer`, `tests`, `verify`, ...) → reward, breakdown, success.
//! * [`llm`]: the OpenAI-compatible chat client the `openai` policies use.
//! * [`llm_record`]: `metadata.llm_calls`, every model call as sent and as
//!   answered, and the rebuilding of each request byte for byte.
//! * [`tools`]: the tools a model is offered (names, JSON Schemas) and the
//!   tool-call bookkeeping of a native conversation; what `adp export` renders with.
//! * [`config`]: shared settings, tracing, shutdown signal, Redis connections.
//! * [`error`]: `Error`, and [`error::InfraError`] — the failure that is not the agent's.

pub mod cache;
pub mod config;
pub mod error;
pub mod health;
pub mod lines;
pub mod llm;
pub mod llm_record;
pub mod metrics;
pub mod names;
pub mod pretty;
pub mod queue;
pub mod reward;
pub mod runs;
pub mod tools;
pub mod types;
pub mod validate;
pub mod writer;

pub use error::{Error, InfraError, Result};
pub use types::{ActionType, ErrorType, ExecutionStep, RewardItem, TaskSpec, TaskType, Trajectory};

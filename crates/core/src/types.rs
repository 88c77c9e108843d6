//! The data that crosses process boundaries: tasks in (CONTRACT §1) and
//! trajectories out (CONTRACT §3), with serde exactly as the contract spells it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names;

/// Kind of a task; decides the stream (and so the runtime) it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    Code,
    Web,
    Reasoning,
}

impl TaskType {
    pub const ALL: [TaskType; 3] = [TaskType::Code, TaskType::Web, TaskType::Reasoning];

    /// The stream tasks of this type are routed to.
    pub fn stream(self) -> &'static str {
        match self {
            TaskType::Code => names::STREAM_CODE,
            TaskType::Web => names::STREAM_WEB,
            TaskType::Reasoning => names::STREAM_REASONING,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Code => "code",
            TaskType::Web => "web",
            TaskType::Reasoning => "reasoning",
        }
    }

    /// The runtime that consumes this task type (the `runtime` metric label).
    pub fn runtime(self) -> &'static str {
        match self {
            TaskType::Code | TaskType::Reasoning => "sandbox-runtime",
            TaskType::Web => "web-runtime",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "code" => Some(TaskType::Code),
            "web" => Some(TaskType::Web),
            "reasoning" => Some(TaskType::Reasoning),
            _ => None,
        }
    }
}

impl std::fmt::Display for TaskType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated task, all fields filled in (CONTRACT §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub task_type: TaskType,
    pub description: String,
    #[serde(default)]
    pub expected_tools: Vec<String>,
    #[serde(default)]
    pub constraints: Map<String, Value>,
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Extension (CONTRACT §8): how many independent samples of this task a
    /// run takes (overrides the dispatcher's `ROLLOUTS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollouts: Option<u32>,
    /// Set by the dispatcher: the run this task was dispatched for (absent:
    /// the default run). Ignored in a task file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Set by the dispatcher: which of the task's rollouts this entry is
    /// (0-based; absent when the task has one rollout). Ignored in a task file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u32>,
}

pub const DEFAULT_MAX_STEPS: u32 = 10;
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_PRIORITY: i64 = 1;

fn default_max_steps() -> u32 {
    DEFAULT_MAX_STEPS
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}
fn default_priority() -> i64 {
    DEFAULT_PRIORITY
}
fn default_run_id() -> String {
    crate::runs::DEFAULT_RUN.to_owned()
}

impl TaskSpec {
    /// The run this task belongs to ([`crate::runs::DEFAULT_RUN`] when unset).
    pub fn run(&self) -> &str {
        self.run_id.as_deref().unwrap_or(crate::runs::DEFAULT_RUN)
    }
    fn constraint_str(&self, key: &str) -> Option<&str> {
        self.constraints.get(key).and_then(Value::as_str)
    }
    /// `constraints.code` when it is one string: Python run as the first
    /// step instead of asking the policy.
    pub fn code(&self) -> Option<&str> {
        self.constraint_str("code")
    }
    /// `constraints.code` as cells, one step each: a string is one cell, a
    /// list of strings is its cells in order (validation refuses anything else).
    pub fn code_cells(&self) -> Option<Vec<String>> {
        match self.constraints.get("code")? {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(list) => Some(
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => None,
        }
    }
    /// `constraints.expected_output`: the final stdout must contain it.
    pub fn expected_output(&self) -> Option<&str> {
        self.constraint_str("expected_output")
    }
    /// `constraints.start_url`: first page of a web task.
    pub fn start_url(&self) -> Option<&str> {
        self.constraint_str("start_url")
    }
    /// `constraints.actions`: scripted browser actions.
    pub fn actions(&self) -> Option<&Vec<Value>> {
        self.constraints.get("actions").and_then(Value::as_array)
    }
    /// `constraints.expected_text`: the final page text must contain it.
    pub fn expected_text(&self) -> Option<&str> {
        self.constraint_str("expected_text")
    }
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    CodeExecution,
    BrowserAction,
    ToolCall,
}

/// Why a step or a task failed (CONTRACT §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    Timeout,
    NetworkError,
    CompileError,
    RuntimeError,
    BrowserError,
    SystemError,
}

impl ErrorType {
    pub const ALL: [ErrorType; 6] = [
        ErrorType::Timeout,
        ErrorType::NetworkError,
        ErrorType::CompileError,
        ErrorType::RuntimeError,
        ErrorType::BrowserError,
        ErrorType::SystemError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Timeout => "timeout",
            ErrorType::NetworkError => "network_error",
            ErrorType::CompileError => "compile_error",
            ErrorType::RuntimeError => "runtime_error",
            ErrorType::BrowserError => "browser_error",
            ErrorType::SystemError => "system_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionStep {
    pub step_id: u32,
    pub action_type: ActionType,
    pub action_params: Map<String, Value>,
    pub observation: String,
    pub success: bool,
    pub error_type: Option<ErrorType>,
    pub error_message: Option<String>,
    pub timestamp: f64,
    pub duration: f64,
}

/// The record of one task, written as `<task_id>.json` (CONTRACT §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub task_id: String,
    /// Extension (CONTRACT §8): the run the task was dispatched for.
    #[serde(default = "default_run_id")]
    pub run_id: String,
    pub runtime_id: String,
    pub success: bool,
    pub steps: Vec<ExecutionStep>,
    pub final_result: String,
    pub error_type: Option<ErrorType>,
    pub error_message: Option<String>,
    pub total_duration: f64,
    pub metadata: Map<String, Value>,
    pub created_at: f64,
    /// Extension: the task this trajectory answers (used by replay and export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    /// Extension (CONTRACT §8): the weighted mean of the checks' scores,
    /// 0..1 (`None`: not scored, e.g. an infrastructure failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    /// Extension (CONTRACT §8): one entry per check (`reward` module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reward_breakdown: Vec<RewardItem>,
}

/// One check's part of a trajectory's reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardItem {
    pub name: String,
    pub weight: f64,
    /// 0..1; 1 means the check passed.
    pub score: f64,
    pub detail: String,
}

impl Trajectory {
    /// An empty trajectory for `task`, to be filled by a runtime.
    /// Carries the task's run and rollout (`run_id`, `metadata.rollout`).
    pub fn new(task: &TaskSpec, runtime_id: &str) -> Self {
        let mut metadata = Map::new();
        if let Some(r) = task.rollout {
            metadata.insert("rollout".to_owned(), r.into());
        }
        Trajectory {
            task_id: task.task_id.clone(),
            run_id: task.run().to_owned(),
            runtime_id: runtime_id.to_owned(),
            success: false,
            steps: Vec::new(),
            final_result: String::new(),
            error_type: None,
            error_message: None,
            total_duration: 0.0,
            metadata,
            created_at: unix_now(),
            task: Some(task.clone()),
            reward: None,
            reward_breakdown: Vec::new(),
        }
    }

    /// `metadata.rollout`: which rollout of its task this is (None: the
    /// task has one).
    pub fn rollout(&self) -> Option<u32> {
        self.metadata
            .get("rollout")
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
    }

    /// Sets a metadata field.
    pub fn meta(&mut self, key: &str, value: impl Into<Value>) {
        self.metadata.insert(key.to_owned(), value.into());
    }
}

/// Unix time in seconds, as a float.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

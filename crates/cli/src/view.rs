//! A lenient reading of a trajectory file (CONTRACT §3).
//!
//! The CLI reads files written by any version of the runtimes, so it does not
//! use the strict [`adp_core::Trajectory`]: error types it does not know are
//! kept as strings (the contract allows new ones), a `null` where a string is
//! expected reads as empty, and an unreadable `task` extension is ignored.
//! A file without `task_id`, `success` or `steps` is not a trajectory.

use adp_core::{TaskSpec, TaskType};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Label used for a failed trajectory without an `error_type` (same as the
/// workers' `tasks_failed_total{error_type}`).
pub const NO_ERROR_TYPE: &str = "task_failed";

/// The fields of a trajectory the CLI uses.
#[derive(Debug, Clone, Deserialize)]
pub struct TrajView {
    pub task_id: String,
    #[serde(default, deserialize_with = "or_default")]
    pub runtime_id: String,
    pub success: bool,
    pub steps: Vec<StepView>,
    #[serde(default, deserialize_with = "or_default")]
    pub final_result: String,
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default, deserialize_with = "or_default")]
    pub total_duration: f64,
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: Map<String, Value>,
    #[serde(default, deserialize_with = "or_default")]
    pub created_at: f64,
    #[serde(default, deserialize_with = "lenient_task")]
    pub task: Option<TaskSpec>,
}

/// One step.
#[derive(Debug, Clone, Deserialize)]
pub struct StepView {
    #[serde(default, deserialize_with = "or_default")]
    pub step_id: u64,
    #[serde(default, deserialize_with = "or_default")]
    pub action_type: String,
    #[serde(default, deserialize_with = "or_default")]
    pub action_params: Map<String, Value>,
    #[serde(default, deserialize_with = "or_default")]
    pub observation: String,
    #[serde(default, deserialize_with = "or_default")]
    pub success: bool,
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default, deserialize_with = "or_default")]
    pub duration: f64,
}

fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn lenient_task<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TaskSpec>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

impl TrajView {
    /// The task type: from the `task` extension, else `metadata.task_type`,
    /// else `web` for web-runtime; `None` when it cannot be told.
    pub fn task_type(&self) -> Option<TaskType> {
        if let Some(t) = &self.task {
            return Some(t.task_type);
        }
        if let Some(t) = self
            .metadata
            .get("task_type")
            .and_then(Value::as_str)
            .and_then(TaskType::parse)
        {
            return Some(t);
        }
        (self.runtime() == "web-runtime").then_some(TaskType::Web)
    }

    /// `task_type` as a label (`unknown` when it cannot be told).
    pub fn task_type_label(&self) -> &'static str {
        self.task_type().map_or("unknown", TaskType::as_str)
    }

    /// The runtime name (`runtime_id` without an `@instance` suffix).
    pub fn runtime(&self) -> &str {
        let r = self.runtime_id.split('@').next().unwrap_or("");
        if r.is_empty() {
            "unknown"
        } else {
            r
        }
    }

    /// The failure label: `None` for a success, else the error type or
    /// [`NO_ERROR_TYPE`].
    pub fn failure_label(&self) -> Option<&str> {
        if self.success {
            None
        } else {
            Some(
                self.error_type
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(NO_ERROR_TYPE),
            )
        }
    }

    pub fn dead_lettered(&self) -> bool {
        self.metadata.get("dead_lettered").and_then(Value::as_bool) == Some(true)
    }

    pub fn cache_hit(&self) -> Option<bool> {
        self.metadata.get("cache_hit").and_then(Value::as_bool)
    }

    pub fn policy(&self) -> Option<&str> {
        self.metadata.get("policy").and_then(Value::as_str)
    }

    pub fn attempt(&self) -> Option<u64> {
        self.metadata.get("attempt").and_then(Value::as_u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unknown_error_types_and_nulls() {
        let v: TrajView = serde_json::from_str(
            r#"{"task_id":"a","success":false,"steps":[{"action_type":"code_execution","observation":null}],
                "error_type":"quota_exceeded","final_result":null,"metadata":null,"task":{"bad":1},
                "runtime_id":"web-runtime@h-1"}"#,
        )
        .expect("lenient");
        assert_eq!(v.failure_label(), Some("quota_exceeded"));
        assert_eq!(v.final_result, "");
        assert!(v.task.is_none());
        assert_eq!(v.runtime(), "web-runtime");
        assert_eq!(v.task_type(), Some(TaskType::Web));
    }

    #[test]
    fn requires_the_core_fields() {
        assert!(serde_json::from_str::<TrajView>(r#"{"task_id":"a","success":true}"#).is_err());
        assert!(serde_json::from_str::<TrajView>(r#"{"success":true,"steps":[]}"#).is_err());
    }
}

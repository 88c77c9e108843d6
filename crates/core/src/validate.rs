//! Validation of one line of `tasks.jsonl` into a [`TaskSpec`] (CONTRACT §1).
//!
//! Every rule has its own [`RejectReason`] variant; [`RejectReason::code`] is
//! the `reason` label of `tasks_rejected_total` and of `rejected.jsonl`.
//! Shared by the dispatcher and `adp validate`.

use serde_json::{Map, Value};

use crate::types::{TaskSpec, TaskType, DEFAULT_MAX_STEPS, DEFAULT_PRIORITY, DEFAULT_TIMEOUT_SECS};

/// Longest line the dispatcher reads whole; longer lines are rejected unread.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
pub const MAX_TASK_ID_LEN: usize = 128;
pub const MAX_STEPS_RANGE: (i64, i64) = (1, 100);
pub const TIMEOUT_RANGE: (i64, i64) = (1, 3600);
pub const ROLLOUTS_RANGE: (i64, i64) = (1, crate::runs::MAX_ROLLOUTS as i64);

/// Why a line was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("line is {len} bytes, longer than the limit of {max} bytes")]
    LineTooLong { len: usize, max: usize },
    #[error("line is not valid UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("a task must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("unsafe task_id {0:?}: use 1-128 characters of [A-Za-z0-9._-], not \".\" or \"..\"")]
    UnsafeTaskId(String),
    #[error("field `{field}` is {value}, outside {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: String,
        min: i64,
        max: i64,
    },
    #[error("unknown task_type {0:?} (expected \"code\", \"web\" or \"reasoning\")")]
    UnknownTaskType(String),
    #[error("description is empty")]
    EmptyDescription,
    #[error("constraint `{key}` is invalid: {why}")]
    InvalidConstraint { key: &'static str, why: String },
    #[error("web task needs constraints.start_url or actions beginning with goto")]
    MissingStartUrl,
}

impl RejectReason {
    /// Stable, low-cardinality code: the metric label and the record's `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::LineTooLong { .. } => "line_too_long",
            RejectReason::InvalidUtf8(_) => "invalid_utf8",
            RejectReason::InvalidJson(_) => "invalid_json",
            RejectReason::NotAnObject(_) => "not_an_object",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::UnsafeTaskId(_) => "unsafe_task_id",
            RejectReason::OutOfRange { .. } => "out_of_range",
            RejectReason::UnknownTaskType(_) => "unknown_task_type",
            RejectReason::EmptyDescription => "empty_description",
            RejectReason::InvalidConstraint { .. } => "invalid_constraint",
            RejectReason::MissingStartUrl => "missing_start_url",
        }
    }

    /// Every reason code, for pre-registering metric labels.
    pub const CODES: [&'static str; 12] = [
        "line_too_long",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "wrong_type",
        "unsafe_task_id",
        "out_of_range",
        "unknown_task_type",
        "empty_description",
        "invalid_constraint",
        "missing_start_url",
    ];
}

/// Whether `id` is safe to use as a file name (CONTRACT §1).
pub fn is_safe_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TASK_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses and validates one line (without its newline). Missing optional
/// fields get their defaults; a missing or empty `task_id` gets a fresh UUID v4.
pub fn parse_task_line(line: &[u8]) -> Result<TaskSpec, RejectReason> {
    parse_task_line_with(line, || uuid::Uuid::new_v4().to_string())
}

/// [`parse_task_line`], with `missing_id` giving the id of a task without
/// one (the dispatcher's deterministic ids).
pub fn parse_task_line_with(
    line: &[u8],
    missing_id: impl FnOnce() -> String,
) -> Result<TaskSpec, RejectReason> {
    if line.len() > MAX_LINE_BYTES {
        return Err(RejectReason::LineTooLong {
            len: line.len(),
            max: MAX_LINE_BYTES,
        });
    }
    let text = std::str::from_utf8(line).map_err(|e| RejectReason::InvalidUtf8(e.valid_up_to()))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| RejectReason::InvalidJson(e.to_string()))?;
    validate_value_with(value, missing_id)
}

/// Validates an already parsed JSON value.
pub fn validate_value(value: Value) -> Result<TaskSpec, RejectReason> {
    validate_value_with(value, || uuid::Uuid::new_v4().to_string())
}

/// [`validate_value`] with the id of a task without one from `missing_id`.
pub fn validate_value_with(
    value: Value,
    missing_id: impl FnOnce() -> String,
) -> Result<TaskSpec, RejectReason> {
    let mut obj = match value {
        Value::Object(o) => o,
        other => return Err(RejectReason::NotAnObject(json_kind(&other))),
    };

    let task_id = match take(&mut obj, "task_id") {
        None => missing_id(),
        Some(Value::String(s)) if s.is_empty() => missing_id(),
        Some(Value::String(s)) => {
            if !is_safe_task_id(&s) {
                return Err(RejectReason::UnsafeTaskId(truncate_chars(&s, 200)));
            }
            s
        }
        Some(other) => return Err(wrong("task_id", "a string", &other)),
    };

    let task_type = match take(&mut obj, "task_type") {
        None => return Err(RejectReason::MissingField("task_type")),
        Some(Value::String(s)) => TaskType::parse(&s)
            .ok_or_else(|| RejectReason::UnknownTaskType(truncate_chars(&s, 64)))?,
        Some(other) => return Err(wrong("task_type", "a string", &other)),
    };

    let description = match take(&mut obj, "description") {
        None => return Err(RejectReason::MissingField("description")),
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                return Err(RejectReason::EmptyDescription);
            }
            s
        }
        Some(other) => return Err(wrong("description", "a string", &other)),
    };

    let expected_tools = match take(&mut obj, "expected_tools") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(wrong("expected_tools", "an array of strings", &other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong("expected_tools", "an array of strings", &other)),
    };

    let constraints = match take(&mut obj, "constraints") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(wrong("constraints", "an object", &other)),
    };

    let max_steps = int_field(
        &mut obj,
        "max_steps",
        DEFAULT_MAX_STEPS as i64,
        Some(MAX_STEPS_RANGE),
    )?;
    let timeout = int_field(
        &mut obj,
        "timeout",
        DEFAULT_TIMEOUT_SECS as i64,
        Some(TIMEOUT_RANGE),
    )?;
    let priority = int_field(&mut obj, "priority", DEFAULT_PRIORITY, None)?;
    let rollouts = match obj.get("rollouts") {
        None | Some(Value::Null) => None,
        Some(_) => u32::try_from(int_field(&mut obj, "rollouts", 1, Some(ROLLOUTS_RANGE))?).ok(),
    };

    let spec = TaskSpec {
        task_id,
        task_type,
        description,
        expected_tools,
        constraints,
        max_steps: u32::try_from(max_steps).unwrap_or(DEFAULT_MAX_STEPS),
        timeout: u64::try_from(timeout).unwrap_or(DEFAULT_TIMEOUT_SECS),
        priority,
        rollouts,
        run_id: None,
        rollout: None,
    };
    check_constraints(&spec)?;
    Ok(spec)
}

/// Removes a field, treating JSON `null` as absent.
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    match obj.remove(key) {
        None | Some(Value::Null) => None,
        some => some,
    }
}

fn wrong(field: &'static str, expected: &'static str, got: &Value) -> RejectReason {
    RejectReason::WrongType {
        field,
        expected,
        got: json_kind(got),
    }
}

fn int_field(
    obj: &mut Map<String, Value>,
    field: &'static str,
    default: i64,
    range: Option<(i64, i64)>,
) -> Result<i64, RejectReason> {
    let Some(v) = take(obj, field) else {
        return Ok(default);
    };
    let Value::Number(n) = &v else {
        return Err(wrong(field, "an integer", &v));
    };
    if n.is_f64() {
        return Err(wrong(field, "an integer", &v));
    }
    let (min, max) = range.unwrap_or((i64::MIN, i64::MAX));
    match n.as_i64() {
        Some(i) if (min..=max).contains(&i) => Ok(i),
        _ => Err(RejectReason::OutOfRange {
            field,
            value: n.to_string(),
            min,
            max,
        }),
    }
}

fn check_constraints(spec: &TaskSpec) -> Result<(), RejectReason> {
    let c = &spec.constraints;
    if let Some(Value::Array(cells)) = c.get("code") {
        if cells.is_empty() || !cells.iter().all(Value::is_string) {
            return Err(RejectReason::InvalidConstraint {
                key: "code",
                why: "a list of cells must hold at least one string and only strings".to_owned(),
            });
        }
    }
    for key in ["code", "expected_output", "start_url", "expected_text"] {
        if let Some(v) = c.get(key) {
            let cells = key == "code" && v.is_array();
            if !v.is_string() && !v.is_null() && !cells {
                let key: &'static str = match key {
                    "code" => "code",
                    "expected_output" => "expected_output",
                    "start_url" => "start_url",
                    _ => "expected_text",
                };
                return Err(RejectReason::InvalidConstraint {
                    key,
                    why: format!("must be a string, got {}", json_kind(v)),
                });
            }
        }
    }
    if let Some(actions) = c.get("actions") {
        let Value::Array(list) = actions else {
            return Err(RejectReason::InvalidConstraint {
                key: "actions",
                why: format!(
                    "must be an array of action objects, got {}",
                    json_kind(actions)
                ),
            });
        };
        for (i, a) in list.iter().enumerate() {
            let ok = a
                .as_object()
                .and_then(|o| o.get("type"))
                .is_some_and(Value::is_string);
            if !ok {
                return Err(RejectReason::InvalidConstraint {
                    key: "actions",
                    why: format!("action {i} must be an object with a string `type`"),
                });
            }
        }
    }
    crate::reward::Checks::from_task(spec).map_err(|e| RejectReason::InvalidConstraint {
        key: e.key,
        why: e.why,
    })?;
    if let Err(why) = crate::llm::Sampling::from_constraints(c) {
        return Err(RejectReason::InvalidConstraint {
            key: "sampling",
            why,
        });
    }
    if spec.task_type == TaskType::Web {
        let first_is_goto = spec
            .actions()
            .and_then(|a| a.first())
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str)
            == Some("goto");
        let has_start = spec.start_url().is_some_and(|u| !u.trim().is_empty());
        if !has_start && !first_is_goto {
            return Err(RejectReason::MissingStartUrl);
        }
    }
    Ok(())
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

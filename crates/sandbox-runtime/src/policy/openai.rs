//! `openai`: an OpenAI-compatible model drives a code → observation loop
//! (CONTRACT §4). A failing endpoint is an infrastructure failure (the task is
//! retried, never handed to another policy). Every call is recorded as sent
//! and as answered (`metadata.llm_calls`, docs/formats.md).
//!
//! Two ways to exchange actions (`LLM_TOOL_MODE`):
//!
//! * `native` (default): the request carries the [`tools`] `python {code}` and
//!   `final_answer {answer}`; the reply's first tool call is the step, its
//!   observation goes back as a `tool` message with the call's id. A reply
//!   with no tool call ends the task, its text being the answer. Outcomes of
//!   odd replies (each recorded in the calls, never a crash):
//!   - more than one tool call: the first runs; each other one is answered
//!     with a `tool` message saying it was not run;
//!   - malformed arguments, an unknown tool, or no `code`: a `tool` message
//!     says what is wrong and the model is asked again; a second invalid reply
//!     in a row ends the task (failure, the reason in `error_message`);
//!   - `finish_reason: "length"` (the reply was cut at `max_tokens`): the task
//!     ends as a failure saying so; nothing of the cut reply runs.
//! * `text`: the first fenced Python block of a reply is run; its observation
//!   goes back as the next user message; a reply without a code block is the
//!   final answer (endpoints without tool support).

use adp_core::llm::{LlmClient, Sampling, ToolMode};
use adp_core::llm_record::CallLog;
use adp_core::tools::{ToolReply, ToolTurns};
use adp_core::{InfraError, TaskSpec};
use serde_json::{json, Map, Value};

use super::{extract_code, Decision, Plan};
use crate::executor::Execution;

/// `metadata.policy` of this policy.
pub const NAME: &str = "openai";

/// Name of the tool that gives the final answer (native mode).
pub use adp_core::tools::ANSWER_TOOL;
/// Name of the tool that runs code (native mode).
pub use adp_core::tools::PYTHON_TOOL;

/// Limits the system prompt tells the model about.
#[derive(Debug, Clone)]
pub struct PromptLimits {
    pub step_timeout_secs: u64,
    pub memory_mb: u64,
    /// Steps share one interpreter (SANDBOX_SESSION=stateful).
    pub stateful: bool,
    /// Extra packages on the jail's `sys.path` (`SANDBOX_PACKAGES_DIR`):
    /// `None` without a directory, else the names that can be imported
    /// ([`crate::limits::importable_packages`]; empty when none were found).
    pub packages: Option<Vec<String>>,
}

/// The system prompt of `text` mode: the tool, the sandbox's rules and the
/// reply format.
pub fn system_prompt(limits: &PromptLimits) -> String {
    format!(
        "You are a careful coding agent. You solve the user's task by running Python code.\n\
         \n\
         To run code, reply with one fenced code block:\n\
         ```python\n\
         print(2 + 2)\n\
         ```\n\
         Only the first code block of a reply runs. It runs in {python}, with no network, a private \
         /tmp as working directory, at most {step} s of wall time and {mem} MiB of memory. \
         {state} \
         You then see the block's stdout and stderr (long output is cut).\n\
         \n\
         Print every value you need to see. When you know the answer, reply with the final \
         answer and no code block at all; that reply ends the task.",
        step = limits.step_timeout_secs,
        mem = limits.memory_mb,
        state = state_rule(limits.stateful, "code block"),
        python = python_rule(limits.packages.as_deref()),
    )
}

/// What the system prompt says the interpreter can import.
fn python_rule(packages: Option<&[String]>) -> String {
    match packages {
        None => "Python 3.11 (standard library only, no third-party packages)".to_owned(),
        Some([]) => "Python 3.11 (its standard library plus the extra packages installed in the \
                     sandbox; nothing else can be installed)"
            .to_owned(),
        Some(names) => format!(
            "Python 3.11 (its standard library plus these packages, importable as they are: {}; \
             nothing else can be installed)",
            names.join(", ")
        ),
    }
}

/// What the system prompt says about state between steps.
fn state_rule(stateful: bool, unit: &str) -> String {
    if stateful {
        format!(
            "All {unit}s run one after another in the same Python interpreter: variables, imports \
             and files in /tmp persist from one {unit} to the next, so build on what earlier \
             {unit}s defined instead of recomputing it (if the sandbox has to restart, the result \
             says that this state was lost)."
        )
    } else {
        format!(
            "Each {unit} runs as a fresh Python process: nothing carries over between {unit}s, no \
             variables, no imports, no files."
        )
    }
}

/// The system prompt of `native` mode (the tools carry their own schemas).
pub fn native_system_prompt(limits: &PromptLimits) -> String {
    format!(
        "You are a careful coding agent. You solve the user's task by running Python code \
         with the `{PYTHON_TOOL}` tool, one call at a time.\n\
         \n\
         Code runs in {python}, with no \
         network, a private /tmp as working directory, at most {step} s of wall time per call \
         and {mem} MiB of memory. {state} The tool result is the code's stdout and stderr \
         (long output is cut).\n\
         \n\
         Print every value you need to see. When you know the answer, call `{ANSWER_TOOL}` with \
         it; that ends the task.",
        step = limits.step_timeout_secs,
        mem = limits.memory_mb,
        state = state_rule(limits.stateful, "call"),
        python = python_rule(limits.packages.as_deref()),
    )
}

/// The `tools` of a native request: `python {code}` and `final_answer
/// {answer}` ([`adp_core::tools::code_tools`]).
pub fn tools() -> Value {
    Value::Array(adp_core::tools::code_tools())
}

/// The first user message: the task and its budget.
pub fn task_prompt(task: &TaskSpec) -> String {
    format!(
        "Task: {}\n\nYou may run code at most {} times; the whole task must finish within {} s.",
        task.description.trim(),
        task.max_steps,
        task.timeout
    )
}

/// The message that reports step `step_id`'s result to the model.
pub fn observation_message(step_id: usize, exec: &Execution) -> String {
    let status = match (&exec.verdict.error_type, &exec.verdict.message) {
        (None, _) => "ran without error".to_owned(),
        (Some(t), Some(m)) => format!("failed with {t}: {m}"),
        (Some(t), None) => format!("failed with {t}"),
    };
    let obs = exec.observation();
    let body = if obs.trim().is_empty() {
        "(no output)".to_owned()
    } else {
        obs
    };
    format!("Observation of step {step_id} ({status}):\n{body}")
}

/// One task's conversation with the model.
pub struct OpenAiSession {
    client: LlmClient,
    mode: ToolMode,
    sampling: Sampling,
    tools: Option<Value>,
    /// The conversation as it will be sent next.
    messages: Vec<Value>,
    log: CallLog,
    /// Tool calls owed a `tool` message, invalid replies in a row (native).
    turns: ToolTurns,
    code: Vec<String>,
    replies: Vec<String>,
}

impl OpenAiSession {
    /// A session for `task`. The task's `constraints.sampling` overrides the
    /// client's sampling settings (validated by the dispatcher; an invalid
    /// one here is ignored with a warning).
    pub fn new(client: LlmClient, limits: PromptLimits, task: &TaskSpec) -> Self {
        let mode = client.config().tool_mode;
        let over = Sampling::from_constraints(&task.constraints).unwrap_or_else(|why| {
            tracing::warn!(task_id = %task.task_id, error = %why, "Invalid constraints.sampling ignored.");
            Sampling::default()
        });
        let sampling = client.config().sampling.overridden_by(over);
        let system = match mode {
            ToolMode::Native => native_system_prompt(&limits),
            ToolMode::Text => system_prompt(&limits),
        };
        OpenAiSession {
            client,
            mode,
            sampling,
            tools: (mode == ToolMode::Native).then(tools),
            messages: vec![
                json!({"role": "system", "content": system}),
                json!({"role": "user", "content": task_prompt(task)}),
            ],
            log: CallLog::new(),
            turns: ToolTurns::new(),
            code: Vec::new(),
            replies: Vec::new(),
        }
    }

    pub(crate) async fn next(&mut self, last: Option<&Execution>) -> Result<Decision, InfraError> {
        if let Some(last) = last {
            let step_id = self.code.len().saturating_sub(1);
            let text = observation_message(step_id, last);
            match self.mode {
                ToolMode::Text => self.messages.push(json!({"role": "user", "content": text})),
                ToolMode::Native => self.turns.answer(&mut self.messages, text),
            }
        }
        loop {
            let reply = self
                .client
                .complete(
                    &mut self.log,
                    &self.messages,
                    self.tools.as_ref(),
                    self.sampling,
                )
                .await?;
            let call = self.log.len() - 1;
            let content = reply.content.clone().unwrap_or_default();
            let decision = match self.mode {
                ToolMode::Text => {
                    self.messages
                        .push(json!({"role": "assistant", "content": content}));
                    self.replies.push(content.clone());
                    Some(match extract_code(&content) {
                        Some(code) => Decision::Run(code),
                        None => Decision::Finish(Some(content.trim().to_owned())),
                    })
                }
                ToolMode::Native => self.native_decision(&reply),
            };
            match decision {
                Some(Decision::Run(code)) => {
                    self.log.set_step_id(call, self.code.len() as u32);
                    self.code.push(code.clone());
                    return Ok(Decision::Run(code));
                }
                Some(d) => return Ok(d),
                None => continue,
            }
        }
    }

    /// The decision of a native reply; `None`: the reply was invalid and the
    /// model is asked again (the tool messages saying why are appended).
    fn native_decision(&mut self, reply: &adp_core::llm_record::LlmResponse) -> Option<Decision> {
        let call = self.log.len() - 1;
        let text = reply.content.clone().unwrap_or_default();
        let why = match self.turns.read(&mut self.messages, reply, call) {
            ToolReply::Cut => {
                self.replies.push(text);
                return Some(Decision::GiveUp(
                    "the model's reply was cut at max_tokens (finish_reason \"length\"); nothing of it was run"
                        .to_owned(),
                ));
            }
            ToolReply::Answer(answer) => {
                self.replies.push(text);
                return Some(Decision::Finish(Some(answer)));
            }
            ToolReply::Invalid(why) => why,
            ToolReply::Call { name, arguments } => match understand(&name, &arguments) {
                Ok(ToolCall::Python(code)) => {
                    self.turns.accept();
                    self.replies.push(text);
                    return Some(Decision::Run(code));
                }
                Ok(ToolCall::Answer(answer)) => {
                    // The conversation ends with this reply.
                    self.turns.clear();
                    self.replies.push(answer.clone());
                    return Some(Decision::Finish(Some(answer.trim().to_owned())));
                }
                Err(why) => why,
            },
        };
        self.turns
            .reject(&mut self.messages, &why)
            .map(Decision::GiveUp)
    }

    /// The conversation in OpenAI format (`metadata.messages`): the last
    /// request's messages plus the final reply.
    pub fn messages(&self) -> Value {
        Value::Array(self.messages.clone())
    }

    /// The call records; a step id beyond `steps` (a step that never ran,
    /// the task timed out first) is cleared.
    pub fn llm_calls(&self, steps: usize) -> Value {
        let mut log = self.log.clone();
        log.clear_step_ids_from(steps as u32);
        log.to_value()
    }

    pub fn model(&self) -> Option<&str> {
        self.log.requested_model()
    }

    pub fn plan(&self) -> Plan {
        Plan {
            policy: NAME.to_owned(),
            code: self.code.clone(),
            replies: self.replies.clone(),
        }
    }
}

/// A native tool call, understood.
enum ToolCall {
    Python(String),
    Answer(String),
}

/// A tool call's name and arguments as `python {code}` or `final_answer {answer}`.
fn understand(name: &str, args: &Map<String, Value>) -> Result<ToolCall, String> {
    let field = |key: &str| -> Result<String, String> {
        match args.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) if key == "answer" => Ok(n.to_string()),
            Some(other) => Err(format!("{name}: \"{key}\" must be a string, got {other}")),
            None => Err(format!("{name}: missing \"{key}\"")),
        }
    };
    match name {
        PYTHON_TOOL => {
            let code = field("code")?;
            if code.trim().is_empty() {
                return Err(format!("{name}: \"code\" is empty"));
            }
            Ok(ToolCall::Python(code))
        }
        ANSWER_TOOL => Ok(ToolCall::Answer(field("answer")?)),
        other => Err(format!(
            "unknown tool {other:?} (the tools are {PYTHON_TOOL} and {ANSWER_TOOL})"
        )),
    }
}

/// Reads one entry of `tool_calls` as [`understand`] does.
#[cfg(test)]
fn parse_tool_call(call: &Value) -> Result<ToolCall, String> {
    let (name, args) = adp_core::tools::read_tool_call(call)?;
    understand(&name, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> Value {
        json!({"id": "c", "type": "function", "function": {"name": name, "arguments": args}})
    }

    #[test]
    fn tool_calls_are_read_or_explained() {
        assert!(matches!(
            parse_tool_call(&call("python", r#"{"code": "print(1)"}"#)),
            Ok(ToolCall::Python(c)) if c == "print(1)"
        ));
        assert!(matches!(
            parse_tool_call(&call("final_answer", r#"{"answer": 42}"#)),
            Ok(ToolCall::Answer(a)) if a == "42"
        ));
        for (name, args, expect) in [
            ("python", r#"{"code": "print(1)""#, "not valid JSON"),
            ("python", r#"{"src": "x"}"#, "missing \"code\""),
            ("python", r#"{"code": "  "}"#, "empty"),
            ("python", r#"{"code": 3}"#, "must be a string"),
            ("shell", r#"{}"#, "unknown tool \"shell\""),
        ] {
            let e = match parse_tool_call(&call(name, args)) {
                Err(e) => e,
                Ok(_) => panic!("{name} {args} accepted"),
            };
            assert!(e.contains(expect), "{e}");
        }
    }

    #[test]
    fn system_prompts_say_whether_state_persists() {
        for stateful in [true, false] {
            let limits = PromptLimits {
                step_timeout_secs: 30,
                memory_mb: 512,
                stateful,
                packages: None,
            };
            for prompt in [native_system_prompt(&limits), system_prompt(&limits)] {
                assert_eq!(prompt.contains("persist"), stateful, "{prompt}");
                assert_eq!(
                    prompt.contains("nothing carries over"),
                    !stateful,
                    "{prompt}"
                );
                assert!(prompt.contains("files in /tmp") == stateful, "{prompt}");
            }
        }
    }

    #[test]
    fn system_prompts_name_the_extra_packages() {
        let mut limits = PromptLimits {
            step_timeout_secs: 30,
            memory_mb: 512,
            stateful: true,
            packages: None,
        };
        for prompt in [native_system_prompt(&limits), system_prompt(&limits)] {
            assert!(prompt.contains("standard library only"), "{prompt}");
        }
        limits.packages = Some(vec!["numpy".into(), "pandas".into()]);
        for prompt in [native_system_prompt(&limits), system_prompt(&limits)] {
            assert!(!prompt.contains("standard library only"), "{prompt}");
            assert!(
                prompt.contains("importable as they are: numpy, pandas;"),
                "{prompt}"
            );
        }
        limits.packages = Some(Vec::new());
        for prompt in [native_system_prompt(&limits), system_prompt(&limits)] {
            assert!(!prompt.contains("standard library only"), "{prompt}");
            assert!(
                prompt.contains("extra packages installed in the sandbox"),
                "{prompt}"
            );
        }
    }

    #[test]
    fn tools_name_only_schema_parameters() {
        let t = tools();
        let names: Vec<&str> = t
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .collect();
        assert_eq!(names, [PYTHON_TOOL, ANSWER_TOOL]);
    }
}

//! `openai`: an OpenAI-compatible model drives a code → observation loop
//! (CONTRACT §4). The first fenced Python block of a reply is run; its
//! observation goes back as the next user message; a reply without a code
//! block is the final answer. The conversation is kept in OpenAI format for
//! `metadata.messages`. A failing endpoint is an infrastructure failure (the
//! task is retried, never handed to another policy).

use adp_core::llm::{ChatMessage, LlmClient};
use adp_core::{InfraError, TaskSpec};

use super::{extract_code, Decision, Plan};
use crate::executor::Execution;

/// `metadata.policy` of this policy.
pub const NAME: &str = "openai";

/// Limits the system prompt tells the model about.
#[derive(Debug, Clone, Copy)]
pub struct PromptLimits {
    pub step_timeout_secs: u64,
    pub memory_mb: u64,
}

/// The system prompt: the tool, the sandbox's rules and the reply format.
pub fn system_prompt(limits: PromptLimits) -> String {
    format!(
        "You are a careful coding agent. You solve the user's task by running Python code.\n\
         \n\
         Tool: python_executor. To run code, reply with one fenced code block:\n\
         ```python\n\
         print(2 + 2)\n\
         ```\n\
         Only the first code block of a reply runs. It runs as a fresh Python 3.11 process \
         (standard library only, no third-party packages), with no network, a private empty \
         /tmp as working directory, at most {step} s of wall time and {mem} MiB of memory. \
         Nothing carries over between code blocks: no variables, no files. \
         You then see the block's stdout and stderr (long output is cut).\n\
         \n\
         Print every value you need to see. When you know the answer, reply with the final \
         answer and no code block at all; that reply ends the task.",
        step = limits.step_timeout_secs,
        mem = limits.memory_mb,
    )
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

/// The user message that reports step `step_id`'s result to the model.
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
    messages: Vec<ChatMessage>,
    code: Vec<String>,
    replies: Vec<String>,
    calls: u32,
}

impl OpenAiSession {
    pub fn new(client: LlmClient, system: String, task: String) -> Self {
        OpenAiSession {
            client,
            messages: vec![ChatMessage::system(system), ChatMessage::user(task)],
            code: Vec::new(),
            replies: Vec::new(),
            calls: 0,
        }
    }

    pub(crate) async fn next(&mut self, last: Option<&Execution>) -> Result<Decision, InfraError> {
        if let Some(last) = last {
            let step_id = self.code.len().saturating_sub(1);
            self.messages
                .push(ChatMessage::user(observation_message(step_id, last)));
        }
        self.calls += 1;
        let reply = self.client.chat(&self.messages).await?;
        self.messages.push(ChatMessage::assistant(reply.clone()));
        self.replies.push(reply.clone());
        Ok(match extract_code(&reply) {
            Some(code) => {
                self.code.push(code.clone());
                Decision::Run(code)
            }
            None => Decision::Finish(Some(reply.trim().to_owned())),
        })
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    pub fn llm_calls(&self) -> u32 {
        self.calls
    }

    pub fn plan(&self) -> Plan {
        Plan {
            policy: NAME.to_owned(),
            code: self.code.clone(),
            replies: self.replies.clone(),
        }
    }
}

//! Policies: what decides the next code to run (CONTRACT §4).
//!
//! * [`scripted`]: `constraints.code` is step 0 (replay, tests, benchmarks).
//! * [`openai`]: an OpenAI-compatible model in a code → observation loop.
//! * [`heuristic`]: built-in offline templates for common demo intents
//!   (English and Chinese); says so honestly when it has no plan.
//! * [`Replay`]: a cached [`Plan`] executed again (plan-mode cache).
//!
//! Each is driven the same way by the agent loop: ask [`Policy::next`] with
//! the last step's result, run the code it returns, repeat until it returns
//! [`Decision::Finish`] / [`Decision::GiveUp`], `max_steps` or the timeout.

pub mod heuristic;
pub mod openai;
pub mod scripted;

use serde::{Deserialize, Serialize};

use adp_core::llm::ChatMessage;
use adp_core::InfraError;

use crate::executor::Execution;

/// What the policy wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run this Python code as the next step.
    Run(String),
    /// Done. `Some(answer)`: the final answer (the model's last reply);
    /// `None`: the last step's stdout is the result.
    Finish(Option<String>),
    /// No plan for this task (e.g. the heuristic policy did not understand
    /// it); the task fails with this explanation as its result.
    GiveUp(String),
}

/// The cacheable part of a run: the code a policy produced, never a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The policy that produced it (`openai`, `heuristic`).
    pub policy: String,
    /// Code of each step, in order.
    pub code: Vec<String>,
    /// The model's replies in order (openai only: lets a replay rebuild the
    /// conversation around fresh observations).
    #[serde(default)]
    pub replies: Vec<String>,
}

/// A policy bound to one task.
pub enum Policy {
    Scripted(scripted::Scripted),
    OpenAi(Box<openai::OpenAiSession>),
    Heuristic(heuristic::Heuristic),
    Replay(Replay),
}

impl Policy {
    /// `metadata.policy`.
    pub fn name(&self) -> &str {
        match self {
            Policy::Scripted(_) => scripted::NAME,
            Policy::OpenAi(_) => openai::NAME,
            Policy::Heuristic(_) => heuristic::NAME,
            Policy::Replay(r) => &r.plan.policy,
        }
    }

    /// The next decision, given the previous step's result (`None` before
    /// the first step). `Err` only for infrastructure failures (LLM down).
    pub async fn next(&mut self, last: Option<&Execution>) -> Result<Decision, InfraError> {
        match self {
            Policy::Scripted(p) => Ok(p.next()),
            Policy::OpenAi(p) => p.next(last).await,
            Policy::Heuristic(p) => Ok(p.next(last)),
            Policy::Replay(p) => Ok(p.next(last)),
        }
    }

    /// The plan to cache after a successful run (`None`: nothing worth caching).
    pub fn plan(&self) -> Option<Plan> {
        match self {
            Policy::Scripted(_) | Policy::Replay(_) => None,
            Policy::OpenAi(p) => Some(p.plan()),
            Policy::Heuristic(p) => p.plan(),
        }
    }

    /// The conversation so far in OpenAI format (`metadata.messages`).
    pub fn messages(&self) -> Option<serde_json::Value> {
        match self {
            Policy::OpenAi(p) => Some(p.messages()),
            Policy::Replay(p) => p.messages.as_ref().map(|m| serde_json::json!(m)),
            Policy::Scripted(_) | Policy::Heuristic(_) => None,
        }
    }

    /// What the policy records besides the conversation: `metadata.llm_calls`
    /// (every model call, `steps` steps having run) and `metadata.model`.
    pub fn record(&self, steps: usize, trajectory: &mut adp_core::Trajectory) {
        if let Policy::OpenAi(p) = self {
            trajectory.meta("llm_calls", p.llm_calls(steps));
            if let Some(model) = p.model() {
                trajectory.meta("model", model);
            }
        }
    }
}

/// Re-executes a cached plan; for an `openai` plan it rebuilds the
/// conversation with the fresh observations (no LLM call).
pub struct Replay {
    plan: Plan,
    next_step: usize,
    messages: Option<Vec<ChatMessage>>,
}

impl Replay {
    pub fn new(plan: Plan, system_prompt: &str, task_prompt: &str) -> Self {
        let messages = (plan.policy == openai::NAME && !plan.replies.is_empty()).then(|| {
            vec![
                ChatMessage::system(system_prompt),
                ChatMessage::user(task_prompt),
            ]
        });
        Replay {
            plan,
            next_step: 0,
            messages,
        }
    }

    fn next(&mut self, last: Option<&Execution>) -> Decision {
        let i = self.next_step;
        if let (Some(messages), Some(last)) = (self.messages.as_mut(), last) {
            messages.push(ChatMessage::user(openai::observation_message(
                i.saturating_sub(1),
                last,
            )));
        }
        if let Some(messages) = self.messages.as_mut() {
            if let Some(reply) = self.plan.replies.get(i) {
                messages.push(ChatMessage::assistant(reply.clone()));
            }
        }
        self.next_step += 1;
        match self.plan.code.get(i) {
            Some(code) => Decision::Run(code.clone()),
            None => Decision::Finish(self.plan.replies.get(i).map(|r| r.trim().to_owned())),
        }
    }
}

/// The code of the first fenced block whose language is Python (or not
/// given): ```` ```python ````, ```` ```py ````, ```` ```python3 ```` or
/// ```` ``` ````. An unclosed block runs to the end of the text (a reply cut
/// by `max_tokens`).
pub fn extract_code(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (info, body) = match after.find('\n') {
            Some(nl) => (&after[..nl], &after[nl + 1..]),
            None => (after, ""),
        };
        let lang = info.trim().to_ascii_lowercase();
        let (code, tail) = match body.find("```") {
            Some(end) => (&body[..end], &body[end + 3..]),
            None => (body, ""),
        };
        if matches!(lang.as_str(), "" | "python" | "py" | "python3") {
            let code = code.trim_end();
            if !code.trim().is_empty() {
                return Some(format!("{code}\n"));
            }
        }
        rest = tail;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_first_python_block() {
        let t = "Let me compute.\n```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```";
        assert_eq!(extract_code(t).as_deref(), Some("print(1)\n"));
        assert_eq!(
            extract_code("```\nx = 2\nprint(x)\n```").as_deref(),
            Some("x = 2\nprint(x)\n")
        );
        assert_eq!(
            extract_code("```bash\nls\n```\n```py\nprint(3)\n```").as_deref(),
            Some("print(3)\n")
        );
        assert_eq!(
            extract_code("```python\nprint('cut')").as_deref(),
            Some("print('cut')\n")
        );
    }

    #[test]
    fn no_block_means_no_code() {
        assert_eq!(extract_code("The answer is 42."), None);
        assert_eq!(extract_code("```python\n```"), None);
        assert_eq!(extract_code("use `print` here"), None);
    }

    #[test]
    fn replay_runs_the_plan_then_finishes_with_the_last_reply() {
        let plan = Plan {
            policy: "openai".into(),
            code: vec!["print(1)\n".into()],
            replies: vec!["```python\nprint(1)\n```".into(), "It is 1.".into()],
        };
        let mut r = Replay::new(plan, "sys", "task");
        assert_eq!(r.next(None), Decision::Run("print(1)\n".into()));
        let exec = crate::executor::Execution {
            stdout: crate::executor::Captured {
                text: "1\n".into(),
                total_bytes: 2,
            },
            stderr: Default::default(),
            verdict: crate::classify::Verdict {
                error_type: None,
                message: None,
            },
            wall_limit: std::time::Duration::from_secs(1),
            duration: std::time::Duration::from_millis(20),
            notes: Vec::new(),
        };
        assert_eq!(
            r.next(Some(&exec)),
            Decision::Finish(Some("It is 1.".into()))
        );
        let m = r.messages.expect("messages");
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
        assert!(m[3].content.contains("1\n"));
    }
}

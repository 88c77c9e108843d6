//! Where the next action comes from (metadata.policy):
//!
//! * [`scripted`]: `constraints.actions` (or a cached plan) in order;
//! * [`openai`]: an OpenAI-compatible model, shown the task and each
//!   observation, answering with one JSON action;
//! * [`heuristic`]: offline rules for "search X", "open X", else read the page.
//!
//! A policy only decides; the agent performs the action and observes. A
//! policy never makes up an observation.

pub mod heuristic;
pub mod openai;
pub mod scripted;

use adp_core::{InfraError, TaskSpec, Trajectory};

use crate::actions::Action;
use crate::exec::Performed;
use crate::observe::Observation;

/// What the policy sees before choosing.
pub struct Turn<'a> {
    pub task: &'a TaskSpec,
    /// The page now.
    pub observation: &'a Observation,
    /// The previous action and its outcome (None before the first action).
    pub last: Option<(&'a Action, &'a Performed)>,
    /// Actions performed so far.
    pub step: u32,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Perform this action next.
    Act(Action),
    /// Nothing left to do (a script ran out): the task ends here.
    Done,
    /// The model answered without an action (native tool mode: a reply with
    /// no tool call): the task ends with this text as its answer.
    Answer(String),
    /// The policy cannot go on; the task fails with this message.
    GiveUp(String),
}

/// One of the three policies.
pub enum Policy {
    Scripted(scripted::Scripted),
    OpenAi(Box<openai::OpenAi>),
    Heuristic(heuristic::Heuristic),
}

impl Policy {
    /// The `metadata.policy` name.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Scripted(_) => "scripted",
            Policy::OpenAi(_) => "openai",
            Policy::Heuristic(_) => "heuristic",
        }
    }

    pub async fn next(&mut self, turn: Turn<'_>) -> Result<Decision, InfraError> {
        match self {
            Policy::Scripted(p) => Ok(p.next(&turn)),
            Policy::OpenAi(p) => p.next(&turn).await,
            Policy::Heuristic(p) => Ok(p.next(&turn)),
        }
    }

    /// Adds what the policy has to record (`openai`: the conversation, the
    /// model, every call in `metadata.llm_calls`).
    pub fn record(&self, trajectory: &mut Trajectory) {
        if let Policy::OpenAi(p) = self {
            p.record(trajectory);
        }
    }
}

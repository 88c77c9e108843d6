//! The `openai` policy: an OpenAI-compatible chat model (the shared
//! [`adp_core::llm::LlmClient`]) picks each action. The prompt is the task,
//! the current observation and the action grammar; the reply's JSON action
//! is taken bare or from a ```json fence. A reply with no valid action is
//! told back to the model once; a second one in a row fails the task with a
//! clear message. The conversation goes into `metadata.messages`.
//!
//! To keep prompts bounded, an observation is sent in full once; when a newer
//! one follows, the older message is shortened in place (so
//! `metadata.messages` is exactly what the model saw last).

use adp_core::llm::{ChatMessage, LlmClient};
use adp_core::{InfraError, Trajectory};

use super::{Decision, Turn};
use crate::actions::{parse_reply, GRAMMAR};
use crate::observe::Observation;

/// Characters of page text kept when an observation is shortened.
const OLD_OBSERVATION_CHARS: usize = 300;

pub struct OpenAi {
    client: LlmClient,
    messages: Vec<ChatMessage>,
    /// Index of the message holding the latest full observation.
    full_observation: Option<usize>,
    invalid_replies: u32,
    model: Option<String>,
}

impl OpenAi {
    pub fn new(client: LlmClient) -> Self {
        OpenAi {
            client,
            messages: Vec::new(),
            full_observation: None,
            invalid_replies: 0,
            model: None,
        }
    }

    fn system_prompt(max_steps: u32) -> String {
        format!(
            "You control a web browser to complete a task. After each action you get the page: \
its title, URL, visible text, and a numbered list of interactive elements. Refer to an element \
by its number (\"element\") or by a CSS selector (\"selector\").\n\
Reply with exactly ONE action as a JSON object, optionally in a ```json fence, nothing else. \
The actions are:\n{GRAMMAR}\n\
Use only information shown on the pages. When the task is done, reply with \"finish\" and put the \
answer (taken from the page) in \"answer\". You have at most {max_steps} actions."
        )
    }

    pub async fn next(&mut self, turn: &Turn<'_>) -> Result<Decision, InfraError> {
        let page = turn.observation.render();
        if self.messages.is_empty() {
            self.messages.push(ChatMessage::system(Self::system_prompt(
                turn.task.max_steps,
            )));
            self.push_observation(format!(
                "Task: {}\n\nCurrent page:\n{page}",
                turn.task.description.trim()
            ));
        } else {
            let result = match turn.last {
                Some((action, performed)) => match &performed.error {
                    None => format!("Action {} succeeded: {}.", action.kind(), performed.note),
                    Some((kind, msg)) => {
                        format!("Action {} FAILED ({kind}): {msg}.", action.kind())
                    }
                },
                None => "No action yet.".to_owned(),
            };
            self.shorten_previous(turn.observation);
            self.push_observation(format!(
                "{result}\n\nCurrent page (step {} of at most {}):\n{page}",
                turn.step, turn.task.max_steps
            ));
        }
        loop {
            let reply = self.client.chat(&self.messages).await?;
            if self.model.is_none() {
                self.model = self.client.model().await.ok();
            }
            self.messages.push(ChatMessage::assistant(reply.clone()));
            match parse_reply(&reply) {
                Ok(action) => {
                    self.invalid_replies = 0;
                    return Ok(Decision::Act(action));
                }
                Err(why) => {
                    self.invalid_replies += 1;
                    if self.invalid_replies >= 2 {
                        return Ok(Decision::GiveUp(format!(
                            "the model's reply was not a valid action twice in a row (last: {why})"
                        )));
                    }
                    self.messages.push(ChatMessage::user(format!(
                        "Your reply was not a valid action: {why}. Reply with exactly one JSON \
action object, for example {{\"type\": \"click\", \"element\": 0}}."
                    )));
                }
            }
        }
    }

    fn push_observation(&mut self, content: String) {
        self.messages.push(ChatMessage::user(content));
        self.full_observation = Some(self.messages.len() - 1);
    }

    /// Replaces the last full observation with a short version.
    fn shorten_previous(&mut self, _now: &Observation) {
        let Some(i) = self.full_observation.take() else {
            return;
        };
        let Some(msg) = self.messages.get_mut(i) else {
            return;
        };
        let Some(at) = msg.content.find("Title: ") else {
            return;
        };
        let head = &msg.content[..at];
        let body = &msg.content[at..];
        let short: String = body.chars().take(OLD_OBSERVATION_CHARS).collect();
        if short.len() < body.len() {
            msg.content = format!("{head}{short}\n[… older page view shortened]");
        }
    }

    pub fn record(&self, trajectory: &mut Trajectory) {
        let messages = serde_json::to_value(&self.messages).unwrap_or_default();
        trajectory.meta("messages", messages);
        if let Some(model) = &self.model {
            trajectory.meta("model", model.clone());
        }
    }
}

//! The conversation of a trajectory a model produced, from its recorded
//! calls (`"source": "llm"`): exactly the messages of the last answered call,
//! as they were sent (the real system prompt, observations as shortened in
//! that prompt), followed by that call's reply; `tools` are the tools that
//! call offered (none in `LLM_TOOL_MODE=text`).

use super::calls::{reply_message, Calls};
use super::chat::{Dialog, Source};

/// Why a recorded trajectory has no conversation: no call was answered.
pub const NO_MODEL_REPLY: &str = "no_model_reply";

pub fn build(calls: &Calls) -> Result<Dialog, &'static str> {
    let last = calls.last_answered().ok_or(NO_MODEL_REPLY)?;
    let response = calls.response(last).ok_or(NO_MODEL_REPLY)?;
    let mut messages = calls.messages(last);
    messages.push(reply_message(response));
    Ok(Dialog {
        source: Source::Llm,
        messages,
        tools: calls.tools(last),
    })
}

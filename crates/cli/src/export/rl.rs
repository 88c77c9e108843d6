//! The `rl` format: per trajectory, the tokens of every answered model call
//! and the reward, in the shape GRPO-style trainers consume (the fields of
//! `verifiers`' `ProcessedOutputs` and of TRL's `GRPOTrainer` batches:
//! `prompt_ids`, `completion_ids`, `completion_mask`, `completion_logprobs`,
//! a reward), one list entry per call:
//!
//! * `prompt_ids[i]`: the prompt token ids of call i as the server returned
//!   them (`null` when it did not);
//! * `completion_ids[i]`, `completion_logprobs[i]`: the sampled tokens and
//!   their log-probabilities under the sampling policy;
//! * `completion_mask[i]`: 1 per token to train on; all 0 for a reply cut by
//!   the token limit (`finish_reason: "length"`), as TRL's
//!   `mask_truncated_completions` does;
//! * `finish_reasons[i]`, `calls[i]`: the call's finish reason and its index
//!   in `metadata.llm_calls`;
//! * `reward`: the trajectory's `reward`, else 1.0 for a success and 0.0
//!   otherwise (`reward_from` says which).
//!
//! A trajectory whose calls hold no token ids (no `LLM_LOGPROBS=true`, or no
//! model call at all) cannot be put in this format.

use serde_json::{json, Map, Value};

use super::calls::Calls;

/// Why a trajectory has no `rl` row.
pub const NO_TOKEN_IDS: &str = "no_token_ids";
/// Token ids and log-probabilities of a call differ in length.
pub const TOKEN_MISMATCH: &str = "token_logprob_mismatch";

/// The token fields of the row (`Err(reason)` when there are none).
pub fn fields(
    calls: &Calls,
    reward: Option<f64>,
    success: bool,
) -> Result<Map<String, Value>, &'static str> {
    let mut prompt_ids = Vec::new();
    let mut completion_ids = Vec::new();
    let mut masks = Vec::new();
    let mut logprobs = Vec::new();
    let mut finish = Vec::new();
    let mut numbers = Vec::new();
    for i in 0..calls.len() {
        let Some(r) = calls.response(i) else { continue };
        let (Some(ids), Some(lp)) = (&r.completion_token_ids, &r.logprobs) else {
            return Err(NO_TOKEN_IDS);
        };
        if ids.len() != lp.len() {
            return Err(TOKEN_MISMATCH);
        }
        let keep = u8::from(r.finish_reason.as_deref() != Some("length"));
        masks.push(json!(vec![keep; ids.len()]));
        prompt_ids.push(json!(r.prompt_token_ids));
        completion_ids.push(json!(ids));
        logprobs.push(json!(lp));
        finish.push(json!(r.finish_reason));
        numbers.push(json!(i));
    }
    if completion_ids.is_empty() {
        return Err(NO_TOKEN_IDS);
    }
    let (reward, from) = match reward {
        Some(r) => (r, "reward"),
        None => (if success { 1.0 } else { 0.0 }, "success"),
    };
    let mut m = Map::new();
    m.insert("calls".into(), Value::Array(numbers));
    m.insert("prompt_ids".into(), Value::Array(prompt_ids));
    m.insert("completion_ids".into(), Value::Array(completion_ids));
    m.insert("completion_mask".into(), Value::Array(masks));
    m.insert("completion_logprobs".into(), Value::Array(logprobs));
    m.insert("finish_reasons".into(), Value::Array(finish));
    m.insert("reward".into(), json!(reward));
    m.insert("reward_from".into(), json!(from));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(responses: Vec<Value>) -> Calls {
        let list: Vec<Value> = responses
            .into_iter()
            .enumerate()
            .map(|(n, r)| {
                json!({"call": n, "step_id": null, "started_at": 1.0, "latency": 0.1,
                       "request": {"model": "m"}, "messages_prefix": 0, "messages_added": [],
                       "response": r, "error": null})
            })
            .collect();
        let meta = json!({ "llm_calls": list });
        let meta = meta.as_object().expect("object");
        Calls::of(meta).expect("readable").expect("calls")
    }

    #[test]
    fn one_entry_per_answered_call() {
        let c = calls(vec![
            json!({"completion_token_ids": [5, 6], "logprobs": [-0.1, -0.2],
                   "prompt_token_ids": [1, 2, 3], "finish_reason": "tool_calls"}),
            Value::Null,
            json!({"completion_token_ids": [7], "logprobs": [-0.5], "finish_reason": "length"}),
        ]);
        let f = fields(&c, Some(0.5), false).expect("row");
        assert_eq!(f["calls"], json!([0, 2]));
        assert_eq!(f["prompt_ids"], json!([[1, 2, 3], null]));
        assert_eq!(f["completion_ids"], json!([[5, 6], [7]]));
        assert_eq!(f["completion_mask"], json!([[1, 1], [0]]));
        assert_eq!(f["completion_logprobs"], json!([[-0.1, -0.2], [-0.5]]));
        assert_eq!(f["reward"], 0.5);
        assert_eq!(fields(&c, None, true).expect("row")["reward"], 1.0);
    }

    #[test]
    fn calls_without_tokens_have_no_row() {
        let c = calls(vec![json!({"content": "hi"})]);
        assert_eq!(fields(&c, None, true), Err(NO_TOKEN_IDS));
        let c = calls(vec![
            json!({"completion_token_ids": [1, 2], "logprobs": [-1.0]}),
        ]);
        assert_eq!(fields(&c, None, true), Err(TOKEN_MISMATCH));
    }
}

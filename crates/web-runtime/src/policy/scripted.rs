//! The `scripted` policy: a fixed list of actions (from
//! `constraints.actions`, or a plan replayed from the cache), in order.

use serde_json::Value;

use super::{Decision, Turn};
use crate::actions::Action;

/// Runs a list of actions in order; stops at the end of the list or at the
/// first failed step (later actions assume earlier ones worked).
pub struct Scripted {
    actions: Vec<Result<Action, String>>,
    next: usize,
}

impl Scripted {
    /// From raw JSON actions; an invalid one fails the task when reached.
    pub fn from_values(values: &[Value]) -> Self {
        Scripted {
            actions: values
                .iter()
                .enumerate()
                .map(|(i, v)| Action::from_value(v).map_err(|e| format!("action {i}: {e}")))
                .collect(),
            next: 0,
        }
    }

    pub fn from_actions(actions: Vec<Action>) -> Self {
        Scripted {
            actions: actions.into_iter().map(Ok).collect(),
            next: 0,
        }
    }

    /// Whether the script starts with a `goto` (then no `start_url` step is added).
    pub fn starts_with_goto(&self) -> bool {
        matches!(self.actions.first(), Some(Ok(Action::Goto { .. })))
    }

    pub fn next(&mut self, turn: &Turn<'_>) -> Decision {
        if let Some((_, performed)) = turn.last {
            if performed.error.is_some() {
                return Decision::Done;
            }
        }
        let Some(a) = self.actions.get(self.next) else {
            return Decision::Done;
        };
        self.next += 1;
        match a {
            Ok(a) => Decision::Act(a.clone()),
            Err(e) => Decision::GiveUp(format!("invalid scripted action: {e}")),
        }
    }
}

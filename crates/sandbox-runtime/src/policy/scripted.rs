//! `scripted`: the task's `constraints.code` runs as given — one string is
//! one step, a list of strings is one step per cell, in order (in a stateful
//! session the cells share variables, imports and `/tmp`). Then the task
//! ends with the last step's stdout as the result. No cache, no LLM.

use std::collections::VecDeque;

/// `metadata.policy` of this policy.
pub const NAME: &str = "scripted";

/// Runs the given cells once each.
pub struct Scripted {
    cells: VecDeque<String>,
}

impl Scripted {
    pub fn new(cells: Vec<String>) -> Self {
        Scripted {
            cells: cells.into(),
        }
    }

    pub(crate) fn next(&mut self) -> super::Decision {
        match self.cells.pop_front() {
            Some(code) => super::Decision::Run(code),
            None => super::Decision::Finish(None),
        }
    }
}

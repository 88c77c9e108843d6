//! `scripted`: the task's `constraints.code` is step 0; then the task ends
//! with that step's stdout as the result. No cache, no LLM.

/// `metadata.policy` of this policy.
pub const NAME: &str = "scripted";

/// Runs the given code once.
pub struct Scripted {
    code: Option<String>,
}

impl Scripted {
    pub fn new(code: impl Into<String>) -> Self {
        Scripted {
            code: Some(code.into()),
        }
    }

    pub(crate) fn next(&mut self) -> super::Decision {
        match self.code.take() {
            Some(code) => super::Decision::Run(code),
            None => super::Decision::Finish(None),
        }
    }
}

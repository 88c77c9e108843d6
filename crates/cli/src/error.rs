//! Errors of `adp` and the exit codes they map to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the command did what was asked |
//! | 1 | failure: Redis unreachable, a file unreadable, bad lines found, a requeue refused |
//! | 2 | usage: unknown flag, missing argument (printed by clap) |
//! | 64 | bad configuration: unparsable `REDIS_URL`, `OUTPUT_DIR` not a directory |

use std::process::ExitCode;

/// Exit code of a usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a failed command.
pub const EXIT_FAILURE: u8 = 1;

/// What went wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A configuration value is unusable; nothing was done (exit 64).
    #[error("bad configuration: {0}")]
    Config(String),
    /// The command could not do its work (exit 1).
    #[error("{0}")]
    Failure(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Core(#[from] adp_core::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl CliError {
    pub fn failure(msg: impl Into<String>) -> Self {
        CliError::Failure(msg.into())
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::from(adp_core::config::EXIT_BAD_CONFIG as u8),
            _ => ExitCode::from(EXIT_FAILURE),
        }
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// How a command that ran to its end turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked was done (exit 0).
    Done,
    /// The command ran but found problems it reported (bad lines, refused
    /// requeues) (exit 1).
    Problems,
}

impl Outcome {
    /// `Done` when no problem was reported, `Problems` otherwise.
    pub fn from_problems(problems: u64) -> Self {
        if problems == 0 {
            Outcome::Done
        } else {
            Outcome::Problems
        }
    }

    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Done => ExitCode::SUCCESS,
            Outcome::Problems => ExitCode::from(EXIT_FAILURE),
        }
    }
}

//! Helpers of the deployment checks in `tests/`: they check the Dockerfile,
//! the compose files, the Prometheus and Grafana configuration and the ops
//! scripts without a Docker engine.
//!
//! # Layout
//! * [`tools`]: finding external tools (docker-compose, hadolint, promtool)
//!   with a clear message when one is missing.
//! * [`binaries`]: building and locating the platform binaries, reading their
//!   `--help`, running them, and a tiny HTTP client for `/metrics` + `/health`.
//! * [`compose`]: loading compose files (YAML merge keys applied) and reading
//!   `${VAR:-default}` values.
//! * [`promql`]: metric names used by a PromQL expression.

pub mod binaries;
pub mod compose;
pub mod promql;
pub mod tools;

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    test_support::workspace_root()
}

/// Reads a file of the repository (path relative to the root).
pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

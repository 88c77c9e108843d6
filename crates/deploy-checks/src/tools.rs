//! External tools the checks run, found on `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of `name` on `PATH`; panics with what to run when it is missing.
pub fn require(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed (or not on PATH). Install the test tools with \
             `scripts/setup.sh dev` (docker-compose, hadolint, promtool, jq, ...)."
        )
    })
}

/// The path of `name` on `PATH`, if any.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `cmd` to completion; panics (with its output) unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

//! The ops and bench scripts: shellcheck-clean, `--help` everywhere, and the smoke,
//! short load and integration tests really pass against the native stack
//! (MODE=local, scripts/run-local.sh), without touching the user's files.

use std::process::Command;
use std::sync::Mutex;

use deploy_checks::root;
use deploy_checks::tools::require;

const SCRIPTS: [&str; 14] = [
    "scripts/ops-common.sh",
    "scripts/bench-common.sh",
    "scripts/bench_sandbox.sh",
    "scripts/bench_web.sh",
    "scripts/bench_dispatch.sh",
    "scripts/bench_export.sh",
    "scripts/bench_session_memory.sh",
    "scripts/image_rootfs_check.sh",
    "scripts/build.sh",
    "scripts/deploy.sh",
    "scripts/smoke_test.sh",
    "scripts/load_test.sh",
    "scripts/integration_test.sh",
    "scripts/compose_check.sh",
];

/// One stack at a time: they share the machine's 2 cores.
static STACK: Mutex<()> = Mutex::new(());

#[test]
fn scripts_are_shellcheck_clean_and_answer_help() {
    let shellcheck = require("shellcheck");
    let out = Command::new(shellcheck)
        .current_dir(root())
        .arg("-x")
        .args(SCRIPTS)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Everything but the two sourced files answers --help and refuses an
    // unknown option; only the ops scripts (not bench_*, not the real-engine
    // compose check) know MODE.
    for s in SCRIPTS.iter().filter(|s| !s.ends_with("common.sh")) {
        let text = std::fs::read_to_string(root().join(s)).expect("read script");
        assert!(
            text.contains("set -euo pipefail"),
            "{s} lacks set -euo pipefail"
        );
        let help = Command::new("bash")
            .current_dir(root())
            .args([s, "--help"])
            .output()
            .expect("run");
        assert!(help.status.success(), "{s} --help exited {}", help.status);
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains(*s),
            "{s} --help does not show its usage line:\n{help}"
        );
        assert!(
            s.contains("/bench_") || s.ends_with("compose_check.sh") || help.contains("MODE"),
            "{s} --help does not explain MODE:\n{help}"
        );
        let bad = Command::new("bash")
            .current_dir(root())
            .args([s, "--no-such-option"])
            .output()
            .expect("run");
        assert!(!bad.status.success(), "{s} accepted an unknown option");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("unknown"),
            "{s}: unclear message for an unknown option"
        );
    }
}

/// Runs a script in local mode (bounded by `timeout`), with its output shown
/// on failure; the user's tasks.jsonl must be untouched.
fn run_local(args: &[&str], limit_secs: u64) {
    let _one = STACK.lock().unwrap_or_else(|e| e.into_inner());
    let tasks = root().join("tasks.jsonl");
    let before = std::fs::read(&tasks).ok();
    let out = Command::new("timeout")
        .current_dir(root())
        .env("MODE", "local")
        // Reuse the debug binaries scripts/test.sh built (run-local.sh builds
        // the same selection), instead of a second, release build.
        .env("ADP_PROFILE", "debug")
        .args(["--kill-after=60", &limit_secs.to_string(), "bash"])
        .args(args)
        .output()
        .expect("run script");
    let log = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{log}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PASSED"),
        "{args:?} did not report PASSED:\n{log}"
    );
    assert_eq!(
        before,
        std::fs::read(&tasks).ok(),
        "{args:?} changed the user's tasks.jsonl"
    );
}

#[test]
fn smoke_test_passes_in_local_mode() {
    require("redis-server");
    require("jq");
    run_local(&["scripts/smoke_test.sh", "--timeout", "120"], 1500);
}

#[test]
fn short_load_test_passes_in_local_mode() {
    require("redis-server");
    require("jq");
    run_local(&["scripts/load_test.sh", "200", "2"], 1500);
}

#[test]
fn integration_test_passes_in_local_mode() {
    require("redis-server");
    require("jq");
    run_local(&["scripts/integration_test.sh", "--timeout", "180"], 1500);
}

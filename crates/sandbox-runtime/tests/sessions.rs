//! Stateful sessions (SANDBOX_SESSION=stateful, the default), through the
//! whole runtime: Redis stream → worker → one real nsjail per task →
//! trajectory file.

mod common;

use adp_core::{ErrorType, TaskSpec, TaskType};
use common::{assert_message_contains, observation, task, Harness};
use serde_json::json;

/// A scripted task whose `constraints.code` is a list of cells.
fn cells_task(id: &str, cells: &[&str]) -> TaskSpec {
    task(
        id,
        TaskType::Code,
        &format!("cells {id}"),
        json!({ "code": cells }),
    )
}

const FAST: &[&str] = &["--sandbox-step-timeout-secs", "2"];

#[tokio::test(flavor = "multi_thread")]
async fn state_carries_across_steps() {
    let h = Harness::start(&[]).await;
    let t = h
        .run(&cells_task(
            "state",
            &[
                "import fractions\nx = 41\nopen('/tmp/state.txt', 'w').write('kept')\nprint('step 0')\n",
                "print('step 1', x)\n",
                "print(x + 1, fractions.Fraction(1, 3), open('state.txt').read())\n",
            ],
        ))
        .await;
    assert!(t.success, "{t:?}");
    assert_eq!(t.steps.len(), 3);
    assert_eq!(observation(&t, 1), "step 1 41\n");
    assert_eq!(observation(&t, 2), "42 1/3 kept\n");
    assert_eq!(
        t.metadata["session"],
        json!({"mode": "stateful", "sessions": 1})
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_step_task_without_tests_runs_in_a_one_shot_jail() {
    let h = Harness::start(&[]).await;
    let mut one = cells_task("one", &["x = 6 * 7\nprint(x)\n"]);
    one.max_steps = 1;
    // The same with a `tests` cell, which runs in the agent's session.
    let mut tested = task(
        "tested",
        TaskType::Code,
        "cells tested",
        json!({"code": ["x = 6 * 7\nprint(x)\n"], "tests": "assert x == 42\n"}),
    );
    tested.max_steps = 1;
    h.enqueue(&one);
    h.enqueue(&tested);
    let t = h.trajectory("one").await;
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "42\n");
    assert_eq!(
        t.metadata["session"],
        json!({"mode": "stateful", "sessions": 1, "one_step_oneshot": true})
    );
    let t = h.trajectory("tested").await;
    assert!(t.success, "{t:?}");
    assert_eq!(
        t.metadata["session"],
        json!({"mode": "stateful", "sessions": 1}),
        "the tests need the step's state: a session"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oneshot_mode_keeps_no_state() {
    let h = Harness::start(&["--sandbox-session", "oneshot"]).await;
    let t = h
        .run(&cells_task("fresh", &["x = 41\n", "print(x)\n"]))
        .await;
    assert!(!t.success);
    assert_message_contains(t.error_message.as_deref(), "NameError");
    assert_eq!(
        t.metadata["session"],
        json!({"mode": "oneshot", "sessions": 2})
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_is_interrupted_and_the_session_survives() {
    let h = Harness::start(FAST).await;
    let t = h
        .run(&cells_task(
            "interrupt",
            &[
                "x = 7\n",
                "print('looping')\nwhile True:\n    pass\n",
                "print('x is', x)\n",
            ],
        ))
        .await;
    let loop_step = &t.steps[1];
    assert_eq!(loop_step.error_type, Some(ErrorType::Timeout), "{t:?}");
    assert_message_contains(loop_step.error_message.as_deref(), "interrupted");
    assert!(
        loop_step.observation.starts_with("looping\n"),
        "{}",
        loop_step.observation
    );
    assert!(loop_step.observation.contains("KeyboardInterrupt"));
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 2), "x is 7\n");
    assert_eq!(t.metadata["session"]["sessions"], 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_ignoring_the_interrupt_loses_the_session_and_the_next_step_says_so() {
    let h = Harness::start(FAST).await;
    let stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)\n";
    let t = h
        .run(&cells_task(
            "stubborn",
            &["x = 7\n", stubborn, "print('alive', 'x' in globals())\n"],
        ))
        .await;
    let step = &t.steps[1];
    assert_eq!(step.error_type, Some(ErrorType::Timeout), "{t:?}");
    assert_message_contains(step.error_message.as_deref(), "session was ended");
    assert!(step.duration < 8.0, "{}", step.duration);
    let next = observation(&t, 2);
    assert!(next.contains("a new session started"), "{next}");
    assert!(next.contains("gone"), "{next}");
    assert!(next.ends_with("alive False\n"), "{next}");
    assert!(t.success, "{t:?}");
    assert_eq!(t.metadata["session"]["sessions"], 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_keep_their_types_and_the_session() {
    let h = Harness::start(&[]).await;
    let t = h
        .run(&cells_task(
            "errors",
            &[
                "y = 1\n1 / 0\n",
                "def broken(:\n",
                "import sys\nprint('exiting')\nsys.exit(3)\n",
                "print('y =', y)\n",
            ],
        ))
        .await;
    assert_eq!(t.steps[0].error_type, Some(ErrorType::RuntimeError));
    assert_message_contains(t.steps[0].error_message.as_deref(), "ZeroDivisionError");
    assert!(
        observation(&t, 0).contains("File \"<cell 0>\", line 2"),
        "{}",
        observation(&t, 0)
    );
    assert_eq!(t.steps[1].error_type, Some(ErrorType::CompileError));
    assert_eq!(t.steps[2].error_type, Some(ErrorType::RuntimeError));
    assert_message_contains(t.steps[2].error_message.as_deref(), "status 3");
    assert_eq!(observation(&t, 3), "y = 1\n");
    assert!(t.success, "{t:?}");
    h.stop().await;
}

/// A directory with one module, readable by the jail's user.
fn packages_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("adp_probe_pkg.py"),
        "def answer():\n    return 42\n",
    )
    .expect("module");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Writable by anyone on the host: only the read-only bind stops the jail.
    std::fs::set_permissions(
        dir.path().join("adp_probe_pkg.py"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("chmod");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_packages_dir_is_importable_in_both_modes() {
    let dir = packages_dir();
    let path = dir.path().to_string_lossy().into_owned();
    for mode in ["stateful", "oneshot"] {
        let h = Harness::start(&["--sandbox-packages-dir", &path, "--sandbox-session", mode]).await;
        let code = "import adp_probe_pkg, os\nprint(adp_probe_pkg.answer(), adp_probe_pkg.__file__)\nopen(adp_probe_pkg.__file__, 'a')\n";
        let t = h.run(&cells_task(&format!("pkg_{mode}"), &[code])).await;
        assert!(
            observation(&t, 0).starts_with("42 /usr/lib/python3/dist-packages/adp_probe_pkg.py\n"),
            "{mode}: {t:?}"
        );
        // Read-only.
        assert_message_contains(t.error_message.as_deref(), "Read-only file system");
        h.stop().await;
    }
}

/// `import pandas` with the directory `scripts/setup.sh sandbox-data` fills
/// (run that first; ≈ 160 MB, so not part of the default suite).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs scripts/setup.sh sandbox-data"]
async fn pandas_from_the_sandbox_data_packages() {
    let dir = std::env::var("SANDBOX_PACKAGES_DIR")
        .unwrap_or_else(|_| "/opt/adp/sandbox-packages".to_owned());
    let h = Harness::start(&["--sandbox-packages-dir", &dir]).await;
    let t = h
        .run(&cells_task(
            "pandas",
            &[
                "import pandas as pd, numpy as np\ndf = pd.DataFrame({'x': np.arange(5)})\n",
                "print(int(df['x'].sum()), pd.__version__, np.__version__)\n",
            ],
        ))
        .await;
    assert!(t.success, "{t:?}");
    assert!(observation(&t, 1).starts_with("10 2.2.3 1.26.4"), "{t:?}");
    h.stop().await;
}

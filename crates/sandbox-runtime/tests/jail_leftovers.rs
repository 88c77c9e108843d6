//! Nothing of a session outlives its task; concurrent tasks share nothing (through the whole runtime).
//! Its own test binary: it looks at every uid-65534 process under this test
//! process, so no other test may run jails at the same time.

mod common;

use std::time::Duration;

use adp_core::TaskType;
use common::{observation, task, Harness};
use serde_json::json;
use test_support::{jailed_descendants, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_a_session_outlives_its_task_and_tasks_share_nothing() {
    let h = Harness::start(&[]).await;
    let cells = |me: &str, other: &str| {
        vec![
            format!("secret = '{me}'\nopen('/tmp/{me}.txt', 'w').write('{me}')\nimport subprocess, sys, time\nchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(1)\nprint('set')\n"),
            format!("import os\nprint(secret, sorted(os.listdir('/tmp')), 'other' , os.path.exists('/tmp/{other}.txt'))\n"),
        ]
    };
    let a = task(
        "share_a",
        TaskType::Code,
        "a",
        json!({ "code": cells("a", "b") }),
    );
    let b = task(
        "share_b",
        TaskType::Code,
        "b",
        json!({ "code": cells("b", "a") }),
    );
    h.enqueue(&a);
    h.enqueue(&b);
    let ta = h.trajectory("share_a").await;
    let tb = h.trajectory("share_b").await;
    assert!(ta.success && tb.success, "{ta:?} {tb:?}");
    assert_eq!(observation(&ta, 1), "a ['a.txt'] other False\n");
    assert_eq!(observation(&tb, 1), "b ['b.txt'] other False\n");
    // The sleeping children and interpreters are gone once the tasks end.
    wait_until(Duration::from_secs(20), || jailed_descendants().is_empty())
        .unwrap_or_else(|_| panic!("jailed processes left: {:?}", jailed_descendants()));
    h.stop().await;
}

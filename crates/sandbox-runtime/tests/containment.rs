//! Containment, each case through the whole runtime (Redis stream → worker →
//! real nsjail → trajectory file) and asserted on the trajectory.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;

use adp_core::ErrorType;
use common::{assert_message_contains, code_task, observation, Harness};

/// A short step limit so the limit cases finish fast.
const FAST: &[&str] = &["--sandbox-step-timeout-secs", "2"];

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_times_out_within_the_limit() {
    let h = Harness::start(FAST).await;
    let t = h.run(&code_task("loop", "while True:\n    pass\n")).await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::Timeout), "{t:?}");
    let step = &t.steps[0];
    assert_eq!(step.error_type, Some(ErrorType::Timeout));
    assert_message_contains(step.error_message.as_deref(), "wall time limit of 2 s");
    assert!(
        step.duration >= 1.9 && step.duration < 4.5,
        "duration {}",
        step.duration
    );
    assert!(step
        .observation
        .contains("[sandbox: wall time limit of 2 s reached"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_bomb_is_contained_and_the_runtime_stays_healthy() {
    let h = Harness::start(FAST).await;
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let t = h.run(&code_task("bomb", bomb)).await;
    assert!(!t.success);
    assert!(
        t.steps[0].duration < 5.0,
        "bomb ran {} s",
        t.steps[0].duration
    );
    assert!(t.error_type.is_some(), "{t:?}");
    // The host still forks, the runtime still answers and runs the next task.
    let (code, body) = h.health().await;
    assert_eq!(code, 200, "{body}");
    let t = h
        .run(&code_task(
            "after_bomb",
            "import os\nprint('alive', os.getpid())\n",
        ))
        .await;
    assert!(t.success, "{t:?}");
    assert!(observation(&t, 0).starts_with("alive"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allocating_2_gib_is_a_memory_failure() {
    let h = Harness::start(&[]).await;
    let t = h
        .run(&code_task(
            "alloc",
            "block = bytearray(2 * 1024 ** 3)\nprint(len(block))\n",
        ))
        .await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::RuntimeError), "{t:?}");
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("memory limit") && msg.contains("512 MiB"),
        "{msg}"
    );
    assert!(observation(&t, 0).contains("MemoryError"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_network_even_to_a_local_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let h = Harness::start(&[]).await;
    let code = format!(
        "import socket\nsocket.create_connection((\"127.0.0.1\", {port}), timeout=3)\nprint(\"connected\")\n"
    );
    let t = h.run(&code_task("net", &code)).await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::NetworkError), "{t:?}");
    assert!(!observation(&t, 0).contains("connected\n"));
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection from the jail: {other:?}"),
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_outside_tmp_fails() {
    let h = Harness::start(&[]).await;
    let code = "\
open('/tmp/ok.txt', 'w').write('fine')
print('tmp ok', open('/tmp/ok.txt').read())
for path in ['/evil.txt', '/usr/evil.txt', '/usr/lib/evil.txt', '/bin/evil']:
    try:
        open(path, 'w').write('x')
        print('WROTE', path)
    except OSError as e:
        print('denied', path, e.errno)
";
    let t = h.run(&code_task("write", code)).await;
    assert!(t.success, "{t:?}");
    let obs = observation(&t, 0);
    assert!(obs.contains("tmp ok fine"), "{obs}");
    assert_eq!(obs.matches("denied").count(), 4, "{obs}");
    assert!(!obs.contains("WROTE"), "{obs}");
    for p in [
        "/evil.txt",
        "/usr/evil.txt",
        "/usr/lib/evil.txt",
        "/usr/bin/evil",
    ] {
        assert!(
            !std::path::Path::new(p).exists(),
            "{p} appeared on the host"
        );
    }
    // And a plain failing write is the step's error.
    let t = h
        .run(&code_task("write2", "open('/usr/evil.txt', 'w')\n"))
        .await;
    assert_eq!(t.error_type, Some(ErrorType::RuntimeError));
    assert_message_contains(t.error_message.as_deref(), "Read-only file system");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etc_shadow_is_unreadable() {
    let h = Harness::start(&[]).await;
    let t = h
        .run(&code_task("shadow", "print(open('/etc/shadow').read())\n"))
        .await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::RuntimeError));
    let obs = observation(&t, 0);
    assert!(!obs.contains("root:"), "{obs}");
    assert_message_contains(t.error_message.as_deref(), "/etc/shadow");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_mib_of_output_is_capped_and_marked() {
    let h = Harness::start(&[]).await;
    let t = h
        .run(&code_task("flood", "print('x' * (10 * 1024 * 1024))\n"))
        .await;
    assert!(t.success, "{:?}", t.error_message);
    let obs = observation(&t, 0);
    assert!(
        obs.len() < 64 * 1024 + 200,
        "observation is {} bytes",
        obs.len()
    );
    assert!(
        obs.contains("[... stdout truncated: 65536 of 10485761 bytes shown ...]"),
        "{}",
        &obs[obs.len().saturating_sub(200)..]
    );
    assert!(t.final_result.len() < 64 * 1024 + 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn syntax_error_is_a_compile_error() {
    let h = Harness::start(&[]).await;
    let t = h
        .run(&code_task("syntax", "def broken(:\n    return 1\n"))
        .await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::CompileError), "{t:?}");
    assert_eq!(t.steps[0].error_type, Some(ErrorType::CompileError));
    assert!(t
        .error_message
        .as_deref()
        .unwrap_or("")
        .starts_with("SyntaxError"));
    let t = h.run(&code_task("indent", "if True:\nprint(1)\n")).await;
    assert_eq!(t.error_type, Some(ErrorType::CompileError), "{t:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_of_one_task_are_not_visible_to_the_next() {
    let h = Harness::start(&[]).await;
    let first = "import os\nopen('/tmp/secret.txt', 'w').write('task one')\nprint(sorted(os.listdir('/tmp')))\n";
    let t = h.run(&code_task("files1", first)).await;
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "['secret.txt']\n");
    let second =
        "import os\nprint(sorted(os.listdir('/tmp')))\nprint(os.path.exists('/tmp/secret.txt'))\n";
    let t = h.run(&code_task("files2", second)).await;
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "[]\nFalse\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jail_identity_is_unprivileged_and_isolated() {
    let h = Harness::start(&[]).await;
    let code = "import os, socket\nprint(os.getuid(), os.getgid(), socket.gethostname(), os.getcwd(), os.path.exists('/proc/self'))\n";
    let t = h.run(&code_task("whoami", code)).await;
    assert!(t.success, "{t:?}");
    assert_eq!(observation(&t, 0), "65534 65534 sandbox /tmp False\n");
    h.stop().await;
}

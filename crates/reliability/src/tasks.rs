//! Task lines for the scenarios (CONTRACT §1).

use std::io::Write;
use std::path::Path;

use serde_json::json;

/// A scripted code task: `code` runs as step 0 (metadata.policy `scripted`).
pub fn code_line(id: &str, code: &str, expected_output: Option<&str>, timeout: u64) -> String {
    let mut constraints = json!({ "code": code });
    if let Some(e) = expected_output {
        constraints["expected_output"] = json!(e);
    }
    json!({
        "task_id": id,
        "task_type": "code",
        "description": format!("reliability task {id}"),
        "expected_tools": ["python_executor"],
        "constraints": constraints,
        "max_steps": 1,
        "timeout": timeout,
    })
    .to_string()
}

/// Task `<prefix><i>`: prints `sum(range(i))` (checked by `expected_output`,
/// so a trajectory holding another task's output would fail). With
/// `sleep_ms` > 0 the code sleeps first (tasks that are in flight long
/// enough to be caught by a signal).
pub fn sum_task(prefix: &str, i: usize, sleep_ms: u64) -> (String, String) {
    let id = format!("{prefix}{i}");
    let expected = (i as u128 * (i as u128).saturating_sub(1) / 2).to_string();
    let code = if sleep_ms > 0 {
        format!(
            "import time\ntime.sleep({:.3})\nprint(sum(range({i})))",
            sleep_ms as f64 / 1000.0
        )
    } else {
        format!("print(sum(range({i})))")
    };
    let line = code_line(&id, &code, Some(&expected), 60);
    (id, line)
}

/// Lines that the dispatcher must reject, one of each common kind, tagged
/// with `tag` so they are distinct lines.
pub fn bad_lines(tag: &str) -> Vec<String> {
    vec![
        format!("{{\"task_id\": \"{tag}-broken\", "),
        format!("{{\"task_id\": \"../{tag}\", \"task_type\": \"code\", \"description\": \"x\"}}"),
        format!("{{\"task_id\": \"{tag}-nt\", \"task_type\": \"video\", \"description\": \"x\"}}"),
        format!("{{\"task_id\": \"{tag}-ms\", \"task_type\": \"code\", \"description\": \"x\", \"max_steps\": 0}}"),
        format!("[\"{tag}\"]"),
    ]
}

/// Appends lines to a file (creating it), flushed.
pub fn append_lines(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open task file");
    let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).expect("write task file");
    f.sync_all().expect("sync task file");
}

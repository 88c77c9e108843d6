//! `adp validate`: every rule of CONTRACT §1 reported with its line number,
//! exit 1 on any bad line, 0 on a clean file.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn every_rule_is_reported_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.jsonl");
    let mut lines: Vec<Vec<u8>> =
        vec![
        br#"{"task_id": "ok1", "task_type": "code", "description": "Compute fibonacci(10)"}"#.to_vec(), // 1
        b"".to_vec(),                                                                                   // 2 blank
        b"{not json".to_vec(),                                                                          // 3
        b"[1, 2]".to_vec(),                                                                             // 4
        br#"{"task_id": "x", "description": "d"}"#.to_vec(),                                            // 5
        br#"{"task_id": "x", "task_type": "code"}"#.to_vec(),                                           // 6
        br#"{"task_id": 7, "task_type": "code", "description": "d"}"#.to_vec(),                         // 7
        br#"{"task_id": "../etc/passwd", "task_type": "code", "description": "d"}"#.to_vec(),           // 8
        br#"{"task_id": "big", "task_type": "code", "description": "d", "max_steps": 101}"#.to_vec(),   // 9
        br#"{"task_id": "t0", "task_type": "code", "description": "d", "timeout": 0}"#.to_vec(),        // 10
        br#"{"task_id": "v", "task_type": "video", "description": "d"}"#.to_vec(),                      // 11
        br#"{"task_id": "e", "task_type": "code", "description": "   "}"#.to_vec(),                     // 12
        br#"{"task_id": "c", "task_type": "code", "description": "d", "constraints": {"code": 5}}"#.to_vec(), // 13
        br#"{"task_id": "w", "task_type": "web", "description": "d"}"#.to_vec(),                        // 14
        br#"{"task_id": "ok1", "task_type": "code", "description": "again"}"#.to_vec(),                 // 15
        b"{\"task_id\": \"u\", \"task_type\": \"code\", \"description\": \"\xff\"}".to_vec(),           // 16
    ];
    let mut long = br#"{"task_id": "long", "task_type": "code", "description": ""#.to_vec();
    long.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 10));
    long.extend_from_slice(b"\"}");
    lines.push(long); // 17
    lines.push(br#"{"task_type": "web", "description": "scripted", "constraints": {"actions": [{"type": "goto", "url": "http://127.0.0.1/"}]}}"#.to_vec()); // 18 ok, no id
    lines.push(br#"{"task_id": "s", "task_type": "web", "description": "d", "constraints": {"actions": "click"}}"#.to_vec()); // 19
    lines.push(
        br#"{"task_id": "p", "task_type": "code", "description": "d", "priority": 1.5}"#.to_vec(),
    ); // 20
    let mut body = Vec::new();
    for l in &lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    std::fs::write(&path, &body).expect("write");

    let o = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(["validate", "--json", path.to_str().expect("path")])
        .output()
        .expect("run");
    assert_code(&o, 1);
    let r = stdout_json(&o);
    let got: Vec<(u64, String)> = r["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|x| {
            (
                x["line"].as_u64().expect("line"),
                x["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, &str)> = vec![
        (3, "invalid_json"),
        (4, "not_an_object"),
        (5, "missing_field"),
        (6, "missing_field"),
        (7, "wrong_type"),
        (8, "unsafe_task_id"),
        (9, "out_of_range"),
        (10, "out_of_range"),
        (11, "unknown_task_type"),
        (12, "empty_description"),
        (13, "invalid_constraint"),
        (14, "missing_start_url"),
        (15, "duplicate"),
        (16, "invalid_utf8"),
        (17, "line_too_long"),
        (19, "invalid_constraint"),
        (20, "wrong_type"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(l, r)| (*l, (*r).to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(r["lines"], 20);
    assert_eq!(r["blank"], 1);
    assert_eq!(r["valid"], 2);
    assert_eq!(r["rejected_count"], 17);
    assert_eq!(r["by_reason"]["missing_field"], 2);
    let messages: Vec<&str> = r["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|x| x["message"].as_str().expect("message"))
        .collect();
    assert!(messages[2].contains("task_type"), "{}", messages[2]);
    assert!(messages[3].contains("description"));
    assert!(messages[12].contains("already appears on line 1"));
    assert!(messages[14].contains("longer than the limit"));

    // Text output: file:line: reason: message, then a summary.
    let o = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(["validate", path.to_str().expect("path")])
        .output()
        .expect("run");
    assert_code(&o, 1);
    let text = stdout(&o);
    assert!(
        text.contains(&format!("{}:3: invalid_json: ", path.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}:15: duplicate: ", path.display())),
        "{text}"
    );
    assert!(
        text.contains("20 lines, 2 valid tasks, 17 rejected"),
        "{text}"
    );
}

#[test]
fn a_clean_file_exits_zero_and_stdin_works() {
    let body = "{\"task_id\": \"a\", \"task_type\": \"code\", \"description\": \"x\"}\n\n\
                {\"task_type\": \"reasoning\", \"description\": \"y\"}\r\n\
                {\"task_id\": \"w\", \"task_type\": \"web\", \"description\": \"z\", \"constraints\": {\"start_url\": \"http://127.0.0.1/\"}}";
    let mut child = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("4 lines, 3 valid tasks, 0 rejected, 1 blank"),
        "{}",
        stdout(&o)
    );

    let o = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(["validate", "/nonexistent/tasks.jsonl"])
        .output()
        .expect("run");
    assert_code(&o, 1);
    assert!(stderr(&o).contains("cannot open"));
}

//! Reliability scenario 6 (bad input flood): a 100k-line file with 10 %
//! malformed lines of every kind — invalid JSON, 10 MiB lines, invalid UTF-8,
//! wrong types, unsafe ids, duplicate ids. The dispatcher (the real binary)
//! keeps its memory bounded, rejects exactly the bad lines with their reasons
//! and dispatches the rest.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adp_core::names;
use redis::Commands;
use test_support::{ChildGuard, RedisServer};

const LINES: usize = 100_000;

/// Peak resident set size of a process, from /proc (kB).
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[test]
fn flood_of_bad_lines_is_rejected_exactly_with_bounded_memory() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("flood.jsonl");
    let out = dir.path().join("out");

    // Every 10th line is bad, cycling through the kinds; a task id reused
    // with other content is bad too (a conflicting duplicate).
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut good = 0usize;
    let mut bytes = 0u64;
    {
        let mut w = BufWriter::new(std::fs::File::create(&file).expect("create"));
        let big = vec![b'A'; 10 * 1024 * 1024];
        let mut big_lines = 0;
        for i in 0..LINES {
            let line: Vec<u8> = if i % 10 != 9 {
                good += 1;
                format!(r#"{{"task_id":"ok_{i}","task_type":"{}","description":"Compute fibonacci({})"}}"#, ["code", "reasoning"][i % 2], i % 30)
                    .into_bytes()
            } else {
                let kind = (i / 10) % 8;
                let (reason, line): (&str, Vec<u8>) = match kind {
                    0 => ("invalid_json", br#"{"task_id": "x", "task_type": "code", "#.to_vec()),
                    1 if big_lines < 6 => {
                        big_lines += 1;
                        let mut l = br#"{"task_id":"big","task_type":"code","description":""#.to_vec();
                        l.extend_from_slice(&big);
                        l.extend_from_slice(br#""}"#);
                        ("line_too_long", l)
                    }
                    1 => ("not_an_object", b"[1, 2, 3]".to_vec()),
                    2 => {
                        let mut l = br#"{"task_id":"u","task_type":"code","description":""#.to_vec();
                        l.extend_from_slice(b"\xc3\x28\xff");
                        l.extend_from_slice(br#""}"#);
                        ("invalid_utf8", l)
                    }
                    3 => ("wrong_type", br#"{"task_id":"w","task_type":"code","description":"d","max_steps":"ten"}"#.to_vec()),
                    4 => ("unsafe_task_id", format!(r#"{{"task_id":"../../etc/passwd{i}","task_type":"code","description":"d"}}"#).into_bytes()),
                    5 => ("out_of_range", br#"{"task_id":"r","task_type":"code","description":"d","timeout":99999}"#.to_vec()),
                    6 => ("missing_field", br#"{"task_id":"m","task_type":"code"}"#.to_vec()),
                    // A reused id with other content: rejected and recorded.
                    _ => {
                        (
                            "conflicting_duplicate",
                            format!(r#"{{"task_id":"ok_{}","task_type":"code","description":"again"}}"#, i - 9).into_bytes(),
                        )
                    }
                };
                *expected.entry(reason).or_default() += 1;
                line
            };
            bytes += line.len() as u64 + 1;
            w.write_all(&line).expect("write");
            w.write_all(b"\n").expect("write");
        }
        w.flush().expect("flush");
    }
    assert!(
        bytes > 60 * 1024 * 1024,
        "the file is large ({bytes} bytes)"
    );

    let child = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env("REDIS_URL", redis.url())
        .env("TASK_FILE", &file)
        .env("OUTPUT_DIR", &out)
        .env("FOLLOW", "false")
        .env("METRICS_PORT", "0")
        .env("RUST_LOG", "error")
        // No runtime consumes here; lift backpressure for this test.
        .env("MAX_BACKLOG", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dispatcher");
    let pid = child.id();
    let mut guard = ChildGuard(child);
    let mut peak_kb = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            assert!(status.success(), "dispatcher exit {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dispatcher did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = String::new();
    std::io::Read::read_to_string(guard.0.stdout.as_mut().expect("stdout"), &mut stdout)
        .expect("read");

    eprintln!("dispatcher peak RSS {peak_kb} kB for a {bytes}-byte file");
    // Memory stays bounded although the file holds six 10 MiB lines.
    assert!(peak_kb < 96 * 1024, "peak RSS {peak_kb} kB");

    // Exactly the good lines dispatched.
    let mut c = redis.client();
    let code: usize = c.xlen(names::STREAM_CODE).expect("xlen");
    let reasoning: usize = c.xlen(names::STREAM_REASONING).expect("xlen");
    assert_eq!(code + reasoning, good);

    // Exactly the bad lines rejected, with their reasons.
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let text = std::fs::read_to_string(out.join("rejected.jsonl")).expect("rejected.jsonl");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("record");
        let line = v["line"].as_u64().expect("line") as usize;
        assert_eq!(line % 10, 0, "only every 10th line is bad (line {line})");
        *got.entry(v["reason"].as_str().expect("reason").to_owned())
            .or_default() += 1;
    }
    let want: BTreeMap<String, usize> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    assert_eq!(got, want);
    assert!(
        stdout.contains(&format!(
            "dispatched {good}, duplicates 0, rejected {}",
            want.values().sum::<usize>()
        )),
        "{stdout}"
    );
}

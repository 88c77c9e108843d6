//! `adp status` against a known scenario built directly in a real Redis
//! (XADD / XREADGROUP / XACK / dead letters) and real trajectory files.

mod common;

use adp_core::types::unix_now;
use adp_core::{ErrorType, TaskType};
use common::*;
use serde_json::Value;

/// Scenario:
/// * tasks:code: 10 entries; 7 delivered to consumer `c1`; 4 acked, 2 dead-lettered
///   (acked + copied to tasks:dead, as the worker does), 1 still pending; 3 waiting.
/// * tasks:web: 4 entries, group created, none delivered.
/// * tasks:reasoning: no stream at all.
/// * trajectories: code 3 succeeded + 1 runtime_error + 2 system_error (dead letters),
///   all created now; one reasoning success created an hour ago; one corrupt file.
/// * rejected.jsonl with 2 lines; two runtimes, one stale.
fn scenario(f: &Fixture) -> String {
    let mut c = f.conn();
    create_group(&mut c, "tasks:code");
    create_group(&mut c, "tasks:web");
    let code: Vec<_> = (0..10)
        .map(|i| task(&format!("code{i}"), TaskType::Code))
        .collect();
    let ids: Vec<String> = code.iter().map(|t| xadd_task(&mut c, t)).collect();
    for i in 0..4 {
        xadd_task(&mut c, &task(&format!("web{i}"), TaskType::Web));
    }
    read_group(&mut c, "tasks:code", "c1", 7);
    for id in &ids[0..6] {
        ack(&mut c, "tasks:code", id);
    }
    for i in 4..6 {
        xadd_dead(
            &mut c,
            &code[i],
            &ids[i],
            "3 attempts failed on infrastructure",
        );
    }
    // ids[6] stays pending with c1; ids[7..10] were never delivered.

    // Finished over the last 30 s: 6 in 30 s = 12 per minute.
    let now = unix_now();
    let mut finished = Vec::new();
    for i in 0..3 {
        finished.push(code_traj(&format!("code{i}"), true, None, 2));
    }
    finished.push(code_traj("code3", false, Some(ErrorType::RuntimeError), 1));
    for i in 4..6 {
        let mut t = code_traj(&format!("code{i}"), false, Some(ErrorType::SystemError), 0);
        t.meta("dead_lettered", true);
        finished.push(t);
    }
    for (i, mut t) in finished.into_iter().enumerate() {
        t.created_at = now - 30.0 + 5.0 * i as f64;
        f.write_traj(&t);
    }
    let mut old = code_traj("r0", true, None, 1);
    old.task.as_mut().expect("task").task_type = TaskType::Reasoning;
    old.created_at = unix_now() - 3600.0;
    f.write_traj(&old);
    std::fs::write(f.traj_dir().join("broken.json"), "{\"task_id\": ").expect("write");
    std::fs::write(f.traj_dir().join(".tmp-partial"), "{").expect("write");
    std::fs::write(
        f.output_dir().join("rejected.jsonl"),
        "{\"line\":1,\"reason\":\"invalid_json\",\"raw\":\"x\"}\n{\"line\":2,\"reason\":\"missing_field\",\"raw\":\"{}\"}\n",
    )
    .expect("write");

    let _: () = redis::pipe()
        .hset("runtime_health", "sandbox-runtime@h-1", "healthy")
        .hset(
            "runtime_heartbeat",
            "sandbox-runtime@h-1",
            format!("{:.3}", now - 1.0),
        )
        .hset("runtime_health", "web-runtime@h-2", "unhealthy")
        .hset(
            "runtime_heartbeat",
            "web-runtime@h-2",
            format!("{:.3}", now - 120.0),
        )
        .query(&mut c)
        .expect("HSET");
    ids[6].clone()
}

fn stream<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|x| x["stream"] == name)
        .expect("stream present")
}

#[test]
fn status_numbers_match_the_scenario_exactly() {
    let f = Fixture::new();
    let pending_id = scenario(&f);
    let s = stdout_json(&f.adp_ok(&["status", "--json"]));

    let code = stream(&s, "tasks:code");
    assert_eq!(code["task_type"], "code");
    assert_numbers(
        code,
        &[
            ("dispatched", 10),
            ("waiting", 3),
            ("pending", 1),
            ("backlog", 4),
            ("acked", 6),
            ("consumers", 1),
            ("dead_lettered", 2),
            ("trajectories", 6),
            ("succeeded", 3),
            ("failed", 3),
        ],
    );
    assert_eq!(
        code["failed_by_error_type"],
        serde_json::json!({"runtime_error": 1, "system_error": 2})
    );
    assert_eq!(code["finished_last_min"], 6);
    // 6 over the 30 s since the oldest of them (give or take the test's run time).
    let rate = code["throughput_per_min"].as_f64().expect("rate");
    assert!((11.0..=12.0).contains(&rate), "{rate}");
    let eta = code["eta_seconds"].as_f64().expect("eta");
    assert!(
        (4.0 / (rate / 60.0) - eta).abs() < 0.1,
        "backlog 4 at {rate}/min: {eta}"
    );
    assert!(code["oldest_unacked_age_s"].as_f64().expect("age") >= 0.0);

    let web = stream(&s, "tasks:web");
    assert_eq!(
        (
            web["dispatched"].as_u64(),
            web["waiting"].as_u64(),
            web["pending"].as_u64(),
            web["acked"].as_u64()
        ),
        (Some(4), Some(4), Some(0), Some(0))
    );
    assert_eq!(
        web["eta_seconds"],
        Value::Null,
        "backlog but no throughput: unknown ETA"
    );

    let reasoning = stream(&s, "tasks:reasoning");
    assert_eq!(reasoning["dispatched"], 0);
    assert_eq!(reasoning["trajectories"], 1);
    assert_eq!(
        reasoning["finished_last_min"], 0,
        "an hour-old file is not recent"
    );
    assert_eq!(reasoning["throughput_per_min"], 0.0);
    assert_eq!(reasoning["eta_seconds"], 0.0);

    let t = &s["totals"];
    assert_numbers(
        t,
        &[
            ("dispatched", 14),
            ("waiting", 7),
            ("pending", 1),
            ("acked", 6),
            ("dead_lettered", 2),
            ("succeeded", 4),
            ("failed", 3),
        ],
    );
    assert_eq!(
        t["eta_seconds"],
        Value::Null,
        "the slowest stream (web: backlog, no throughput) decides the total ETA"
    );
    assert_eq!(s["dead_letters"], 2);
    assert_eq!(s["rejected_lines"], 2);
    assert_eq!(s["trajectory_files"]["read"], 7);
    assert_eq!(s["trajectory_files"]["unreadable"], 1);

    let runtimes = s["runtimes"].as_array().expect("runtimes");
    assert_eq!(runtimes.len(), 2);
    assert_eq!(runtimes[0]["id"], "sandbox-runtime@h-1");
    assert_eq!(runtimes[0]["runtime"], "sandbox-runtime");
    assert_eq!(runtimes[0]["status"], "healthy");
    assert_eq!(runtimes[0]["stale"], false);
    assert_eq!(runtimes[1]["status"], "unhealthy");
    assert_eq!(runtimes[1]["stale"], true);

    let consumers = s["consumers"].as_array().expect("consumers");
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0]["name"], "c1");
    assert_eq!(consumers[0]["stream"], "tasks:code");
    assert_eq!(consumers[0]["pending"], 1);
    assert_eq!(consumers[0]["holding"][0]["entry_id"], pending_id.as_str());
    assert_eq!(consumers[0]["holding"][0]["task_id"], "code6");
    assert_eq!(consumers[0]["holding"][0]["deliveries"], 1);

    // The text table shows the same numbers.
    let text = stdout(&f.adp_ok(&["status"]));
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("tasks:code"))
        .expect("code row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..8],
        ["tasks:code", "10", "3", "1", "6", "3", "3", "2"]
    );
    let rate: f64 = row[8].parse().expect("rate");
    assert!((11.0..=12.0).contains(&rate), "{rate}");
    assert!(row[9].ends_with('s'), "ETA {}", row[9]);
    assert!(text.contains("runtime_error 1, system_error 2"), "{text}");
    assert!(
        text.contains("web-runtime@h-2") && text.contains("unhealthy (stale)"),
        "{text}"
    );
    assert!(
        text.contains("code6 (1x"),
        "holding column names the task: {text}"
    );
}

#[test]
fn json_schema_is_stable() {
    let f = Fixture::new();
    scenario(&f);
    let s = stdout_json(&f.adp_ok(&["status", "--json"]));
    assert_eq!(s["schema_version"], 1);
    assert_eq!(
        keys(&s),
        sorted(&[
            "schema_version",
            "generated_at",
            "redis_url",
            "output_dir",
            "streams",
            "totals",
            "dead_letters",
            "rejected_lines",
            "runtimes",
            "consumers",
            "trajectory_files",
        ])
    );
    // A stream has every key of the totals, and six of its own.
    let totals_keys = [
        "dispatched",
        "waiting",
        "pending",
        "backlog",
        "acked",
        "dead_lettered",
        "trajectories",
        "succeeded",
        "failed",
        "failed_by_error_type",
        "finished_last_min",
        "throughput_per_min",
        "eta_seconds",
    ];
    let stream_only = [
        "stream",
        "task_type",
        "consumers",
        "active_consumers",
        "unserved_seconds",
        "oldest_unacked_age_s",
    ];
    let stream_keys = sorted(&[&stream_only[..], &totals_keys[..]].concat());
    let streams = s["streams"].as_array().expect("streams");
    assert_eq!(
        streams
            .iter()
            .map(|x| x["stream"].as_str().expect("name"))
            .collect::<Vec<_>>(),
        ["tasks:code", "tasks:web", "tasks:reasoning"]
    );
    for x in streams {
        assert_eq!(keys(x), stream_keys);
    }
    assert_eq!(keys(&s["totals"]), sorted(&totals_keys));
    assert_eq!(
        keys(&s["runtimes"][0]),
        sorted(&["id", "runtime", "status", "last_heartbeat_age_s", "stale"])
    );
    assert_eq!(
        keys(&s["consumers"][0]),
        sorted(&["stream", "name", "pending", "idle_ms", "holding"])
    );
    assert_eq!(
        keys(&s["consumers"][0]["holding"][0]),
        sorted(&["entry_id", "task_id", "idle_ms", "deliveries"])
    );
    assert_eq!(
        keys(&s["trajectory_files"]),
        sorted(&["read", "unreadable", "unattributed"])
    );
}

#[test]
fn watch_prints_one_snapshot_per_interval_and_stops() {
    let f = Fixture::new();
    scenario(&f);
    let watch = ["status", "--watch", "--interval", "0.1", "--iterations"];
    let lines = stdout_jsonl(&f.adp_ok(&[&watch[..], &["3", "--json"]].concat()));
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|s| s["totals"]["dispatched"] == 14));

    // Without a TTY the text watch appends snapshots instead of redrawing.
    let text = stdout(&f.adp_ok(&[&watch[..], &["2"]].concat()));
    assert_eq!(text.matches("adp status ").count(), 2, "two frames: {text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("tasks:code "))
            .count(),
        2,
        "{text}"
    );
}

#[test]
fn empty_redis_and_missing_output_dir_are_fine() {
    let f = Fixture::new();
    let missing = f.output_dir().join("does-not-exist");
    let o = adp_with_env(&["status", "--json"], &f.redis.url(), &missing);
    assert_code(&o, 0);
    let s = stdout_json(&o);
    assert_eq!(s["totals"]["dispatched"], 0);
    assert_eq!(s["totals"]["eta_seconds"], 0.0);
    assert_eq!(s["consumers"], serde_json::json!([]));
}

/// A stream with entries and no consumer that has read for a while is named,
/// with how long (CONTRACT §8 / issue 14: a type with no consumer is
/// reported); a served stream is not.
#[test]
fn a_stream_nobody_reads_is_reported_as_unserved() {
    let f = Fixture::new();
    let mut c = f.conn();
    create_group(&mut c, "tasks:code");
    create_group(&mut c, "tasks:web");
    // Web entries added ten minutes ago (explicit entry ids), never read.
    let ten_min_ago = ((unix_now() - 600.0) * 1000.0) as u64;
    for i in 0..3u64 {
        let t = task(&format!("web{i}"), TaskType::Web);
        let _: String = redis::cmd("XADD")
            .arg("tasks:web")
            .arg(format!("{}-0", ten_min_ago + i))
            .arg("task")
            .arg(serde_json::to_string(&t).expect("json"))
            .arg("submitted_at")
            .arg("0")
            .arg("priority")
            .arg(1)
            .query(&mut c)
            .expect("XADD");
    }
    // Code: one entry, read just now by a live consumer.
    xadd_task(&mut c, &task("code0", TaskType::Code));
    read_group(&mut c, "tasks:code", "c1", 1);

    let s = stdout_json(&f.adp_ok(&["status", "--json"]));
    let web = stream(&s, "tasks:web");
    assert_eq!(web["active_consumers"], 0);
    let unserved = web["unserved_seconds"].as_f64().expect("seconds");
    assert!((590.0..900.0).contains(&unserved), "{unserved}");
    let code = stream(&s, "tasks:code");
    assert_eq!(code["active_consumers"], 1);
    assert_eq!(code["unserved_seconds"], 0.0, "served");
    let reasoning = stream(&s, "tasks:reasoning");
    assert_eq!(reasoning["unserved_seconds"], 0.0, "nothing waiting");

    let text = stdout(&f.adp_ok(&["status"]));
    let line = text
        .lines()
        .find(|l| l.starts_with("Unserved: tasks:web"))
        .unwrap_or_else(|| panic!("web named: {text}"));
    assert!(
        line.contains("3 unfinished entries") && line.contains("web-runtime"),
        "{line}"
    );
    assert!(
        line.contains("for 10m") || line.contains("for 11m"),
        "{line}"
    );
    assert!(!text.contains("Unserved: tasks:code"), "{text}");

    // A consumer joins and reads: served again.
    read_group(&mut c, "tasks:web", "w1", 3);
    let s = stdout_json(&f.adp_ok(&["status", "--json"]));
    let web = stream(&s, "tasks:web");
    assert_eq!(web["active_consumers"], 1);
    assert_eq!(web["unserved_seconds"], 0.0);
}

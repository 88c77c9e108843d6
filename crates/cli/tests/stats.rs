//! `adp stats` on a fixture set with known numbers.

mod common;

use adp_core::ErrorType;
use common::*;
use serde_json::Value;

fn close(v: &Value, want: f64) {
    let got = v.as_f64().unwrap_or(f64::NAN);
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
}

#[test]
fn stats_numbers_on_a_fixture_set() {
    let f = Fixture::new();
    let mut c0 = code_traj("c0", true, None, 1); // 1 step, 0.1 s
    c0.meta("cache_hit", true);
    f.write_traj(&c0);
    let mut c1 = code_traj("c1", true, None, 2); // 2 steps, 0.2 s
    c1.meta("attempt", 2);
    f.write_traj(&c1);
    f.write_traj(&code_traj("c2", true, None, 3)); // 3 steps, 0.3 s
    f.write_traj(&code_traj("cfail", false, Some(ErrorType::RuntimeError), 2));
    f.write_traj(&web_traj("w_ok", true)); // 3 steps, 1.5 s
    f.write_traj(&web_traj("w_bad", false)); // browser_error
    let mut d1 = code_traj("d1", false, Some(ErrorType::SystemError), 0);
    d1.meta("dead_lettered", true);
    f.write_traj(&d1);
    std::fs::write(f.traj_dir().join("junk.json"), "not json").expect("write");

    let o = f.adp(&["stats", "--json"]);
    assert_code(&o, 0);
    let s = stdout_json(&o);
    assert_eq!(s["trajectories"], 7);
    assert_eq!(s["overall"]["total"], 7);
    assert_eq!(s["overall"]["succeeded"], 4);
    close(&s["overall"]["success_rate"], 4.0 / 7.0);
    assert_eq!(s["by_task_type"]["code"]["total"], 5);
    assert_eq!(s["by_task_type"]["code"]["succeeded"], 3);
    close(&s["by_task_type"]["code"]["success_rate"], 0.6);
    assert_eq!(s["by_task_type"]["web"]["total"], 2);
    close(&s["by_task_type"]["web"]["success_rate"], 0.5);
    assert_eq!(s["by_runtime"]["sandbox-runtime"]["total"], 5);
    assert_eq!(s["by_runtime"]["web-runtime"]["failed"], 1);
    assert_eq!(
        s["error_types"],
        serde_json::json!({"browser_error": 1, "runtime_error": 1, "system_error": 1})
    );
    // steps sorted: 0 1 2 2 3 3 3 (nearest rank)
    let st = &s["steps"];
    assert_eq!(st["count"], 7);
    close(&st["min"], 0.0);
    close(&st["mean"], 2.0);
    close(&st["p50"], 2.0);
    close(&st["p90"], 3.0);
    close(&st["p99"], 3.0);
    close(&st["max"], 3.0);
    // durations sorted: 0 0.1 0.2 0.2 0.3 1.5 1.5
    let d = &s["duration_seconds"];
    close(&d["p50"], 0.2);
    close(&d["p90"], 1.5);
    close(&d["max"], 1.5);
    assert_eq!(s["cache"]["hits"], 1);
    assert_eq!(s["cache"]["misses"], 4);
    close(&s["cache"]["hit_rate"], 0.2);
    assert_eq!(
        s["policies"],
        serde_json::json!({"heuristic": 5, "scripted": 2})
    );
    assert_eq!(s["retried"], 1);
    assert_eq!(s["dead_lettered"], 1);
    assert_eq!(s["skipped"]["total"], 1);
    assert_eq!(s["skipped"]["by_reason"]["invalid_json"], 1);

    let o = f.adp(&["stats"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    let row = |first: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("row {first}: {text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("code "), ["code", "5", "3", "2", "60.0%"]);
    assert_eq!(row("web "), ["web", "2", "1", "1", "50.0%"]);
    assert_eq!(row("steps "), ["steps", "0", "2", "2", "3", "3", "3"]);
    assert!(
        text.contains("cache: 1 hits, 4 misses, hit rate 20.0%"),
        "{text}"
    );
    assert!(stderr(&o).contains("junk.json"), "corrupt file reported");
}

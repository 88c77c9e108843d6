//! Exit codes and help texts of `adp`.

mod common;

use std::process::Command;

use common::*;

fn adp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(args)
        .output()
        .expect("run adp")
}

#[test]
fn help_of_every_subcommand_has_examples() {
    for args in [
        &["--help"][..],
        &["status", "--help"],
        &["dead", "--help"],
        &["dead", "list", "--help"],
        &["dead", "show", "--help"],
        &["dead", "requeue", "--help"],
        &["dead", "drop", "--help"],
        &["replay", "--help"],
        &["export", "--help"],
        &["stats", "--help"],
        &["validate", "--help"],
    ] {
        let o = adp(args);
        assert_code(&o, 0);
        assert!(stdout(&o).contains("Examples:"), "{args:?}: {}", stdout(&o));
    }
    assert!(stdout(&adp(&["--help"])).contains("64 bad configuration"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["status", "--bogus"],
        &["status", "--interval", "0"],
        &["export"],
        &["export", "--out", "x", "--format", "csv"],
        &["replay"],
        &["replay", "--error-type", "timeout"],
        &["dead", "requeue", "--all", "1-0"],
        &["validate"],
    ] {
        assert_code(&adp(args), 2);
    }
}

#[test]
fn bad_config_exits_64_and_unreachable_redis_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = adp_with_env(&["status"], "not a url", dir.path());
    assert_code(&o, 64);
    assert!(stderr(&o).contains("REDIS_URL"), "{}", stderr(&o));

    let port = test_support::free_port();
    let o = adp_with_env(
        &["dead", "list"],
        &format!("redis://127.0.0.1:{port}"),
        dir.path(),
    );
    assert_code(&o, 1);
    assert!(stderr(&o).contains("cannot reach Redis"), "{}", stderr(&o));

    let file = dir.path().join("f");
    std::fs::write(&file, "x").expect("write");
    let o = adp_with_env(&["stats"], "redis://127.0.0.1:1", &file);
    assert_code(&o, 64);
}

#[test]
fn runs_lists_and_prunes_a_run() {
    let redis = test_support::RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("output");
    let mut c = redis.client();
    // What a dispatcher leaves for run exp-1: counters, the id record, a checkpoint.
    let _: () = redis::cmd("SADD")
        .arg(adp_core::names::RUNS)
        .arg("exp-1")
        .query(&mut c)
        .expect("sadd");
    let _: () = redis::cmd("HSET")
        .arg(adp_core::names::run_key("exp-1"))
        .arg(&["tasks", "2", "entries", "6", "updated_at", "1764000000.5"])
        .query(&mut c)
        .expect("hset");
    let _: () = redis::cmd("HSET")
        .arg(adp_core::names::run_ids_key("exp-1", 7))
        .arg(&["1", "2"])
        .query(&mut c)
        .expect("hset");
    let _: () = redis::cmd("SET")
        .arg(adp_core::names::checkpoint_key("exp-1", "abc"))
        .arg("{}")
        .query(&mut c)
        .expect("set");
    let _: () = redis::cmd("SET")
        .arg(adp_core::names::checkpoint_key("default", "abc"))
        .arg("{}")
        .query(&mut c)
        .expect("set");
    let traj = out.join("runs/exp-1/trajectories");
    std::fs::create_dir_all(&traj).expect("mkdir");
    for name in ["t@0.json", "t@1.json", ".tmp-x"] {
        std::fs::write(traj.join(name), "{}").expect("write");
    }
    let adp = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_adp"))
            .env("REDIS_URL", redis.url())
            .env("OUTPUT_DIR", &out)
            .args(args)
            .output()
            .expect("adp")
    };
    let listed = adp(&["runs", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let row: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("one run");
    assert_eq!(row["run_id"], "exp-1");
    assert_eq!(
        (
            row["tasks"].as_u64(),
            row["entries"].as_u64(),
            row["trajectories"].as_u64()
        ),
        (Some(2), Some(6), Some(2))
    );
    let dry = adp(&["runs", "prune", "exp-1"]);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("Would drop 3"),
        "{dry:?}"
    );
    let pruned = adp(&["runs", "prune", "exp-1", "--yes"]);
    assert!(pruned.status.success(), "{pruned:?}");
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("dispatcher:*")
        .query(&mut c)
        .expect("keys");
    assert_eq!(
        left,
        vec![adp_core::names::checkpoint_key("default", "abc")],
        "only the other run's key stays"
    );
    assert!(traj.join("t@0.json").exists(), "files stay");
    let bad = adp(&["--run", "../x", "stats"]);
    assert_eq!(bad.status.code(), Some(64));
}

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

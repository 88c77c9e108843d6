//! The deployment files pass their own tools: docker-compose (schema and
//! interpolation), hadolint (Dockerfile), promtool (config, rules, rule unit
//! tests). No Docker engine involved.

use std::process::Command;

use deploy_checks::tools::{require, run_ok};
use deploy_checks::{read, root};

#[test]
fn docker_compose_accepts_both_files() {
    let dc = require("docker-compose");
    for file in ["docker-compose.yml", "docker-compose.minimal.yml"] {
        // With the shipped example settings, and for the full file also with
        // the llm profile (vLLM).
        run_ok(Command::new(&dc).current_dir(root()).args([
            "--env-file",
            ".env.example",
            "-f",
            file,
            "config",
            "--quiet",
        ]));
    }
    run_ok(Command::new(&dc).current_dir(root()).args([
        "--env-file",
        ".env.example",
        "-f",
        "docker-compose.yml",
        "--profile",
        "llm",
        "config",
        "--quiet",
    ]));
    // The minimal stack needs no .env at all.
    let empty = tempfile::NamedTempFile::new().expect("temp env file");
    run_ok(Command::new(&dc).current_dir(root()).args([
        "--env-file",
        empty.path().to_str().expect("utf-8 path"),
        "-f",
        "docker-compose.minimal.yml",
        "config",
        "--quiet",
    ]));
}

#[test]
fn full_stack_refuses_to_start_without_a_grafana_password() {
    let dc = require("docker-compose");
    let empty = tempfile::NamedTempFile::new().expect("temp env file");
    let out = Command::new(&dc)
        .current_dir(root())
        .env_remove("GRAFANA_ADMIN_PASSWORD")
        .args([
            "--env-file",
            empty.path().to_str().expect("utf-8 path"),
            "-f",
            "docker-compose.yml",
            "config",
            "--quiet",
        ])
        .output()
        .expect("run docker-compose");
    assert!(
        !out.status.success(),
        "docker-compose.yml must require GRAFANA_ADMIN_PASSWORD (no hard-coded default)"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRAFANA_ADMIN_PASSWORD"));
}

#[test]
fn hadolint_passes_the_dockerfile() {
    let hadolint = require("hadolint");
    run_ok(Command::new(hadolint).current_dir(root()).args([
        "--failure-threshold",
        "info",
        "docker/Dockerfile",
    ]));
}

#[test]
fn promtool_accepts_config_and_rules() {
    let promtool = require("promtool");
    run_ok(Command::new(&promtool).current_dir(root()).args([
        "check",
        "config",
        "config/prometheus.yml",
    ]));
    run_ok(Command::new(&promtool).current_dir(root()).args([
        "check",
        "rules",
        "config/alerts.yml",
    ]));
}

#[test]
fn alert_rules_fire_on_their_conditions() {
    // config/alerts_test.yml feeds series to the rules and states which
    // alerts must (and must not) fire.
    let promtool = require("promtool");
    run_ok(
        Command::new(promtool)
            .current_dir(root().join("config"))
            .args(["test", "rules", "alerts_test.yml"]),
    );
}

#[test]
fn dockerignore_keeps_build_outputs_out_of_the_context() {
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for must in ["target/", "output/", ".git/", ".env"] {
        assert!(lines.contains(&must), ".dockerignore must exclude {must}");
    }
}

//! `adp replay`: tasks go back on their stream from their trajectories (or
//! the task file); the old file is kept as `<task_id>.attempt-N.json`.

mod common;

use adp_core::{ErrorType, TaskType};
use common::*;

#[test]
fn replay_by_id_keeps_numbered_attempts() {
    let f = Fixture::new();
    let mut c = f.conn();
    let first = code_traj("again", false, Some(ErrorType::Timeout), 2);
    f.write_traj(&first);

    let o = f.adp(&["replay", "again"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("old trajectory kept as again.attempt-1.json"),
        "{}",
        stdout(&o)
    );
    assert!(!f.traj_dir().join("again.json").exists());
    let archived =
        std::fs::read_to_string(f.traj_dir().join("again.attempt-1.json")).expect("archive");
    assert_eq!(
        serde_json::from_str::<adp_core::Trajectory>(&archived).expect("trajectory"),
        first,
        "archive is the old file, unchanged"
    );
    let queued = stream_tasks(&mut c, "tasks:code");
    assert_eq!(queued.len(), 1);
    assert_eq!(
        Some(&queued[0].1),
        first.task.as_ref(),
        "the stored task, all fields"
    );

    // A second run, then a second replay: attempt-2, attempt-1 untouched.
    f.write_traj(&code_traj("again", true, None, 1));
    let o = f.adp(&["replay", "again"]);
    assert_code(&o, 0);
    assert!(f.traj_dir().join("again.attempt-2.json").exists());
    assert_eq!(
        std::fs::read_to_string(f.traj_dir().join("again.attempt-1.json")).expect("archive"),
        archived
    );
    assert_eq!(stream_tasks(&mut c, "tasks:code").len(), 2);
    let n: i64 = redis::cmd("HGET")
        .arg("adp:counters")
        .arg("replayed:tasks:code")
        .query(&mut c)
        .expect("HGET");
    assert_eq!(n, 2);

    // Archives are not exported or counted as current trajectories.
    let o = f.adp(&["stats", "--json"]);
    let s = stdout_json(&o);
    assert_eq!(s["trajectories"], 0);
    let o = f.adp(&["stats", "--json", "--include-attempts"]);
    let s = stdout_json(&o);
    assert_eq!(s["trajectories"], 2);
}

#[test]
fn replay_failed_filters_by_error_type() {
    let f = Fixture::new();
    let mut c = f.conn();
    f.write_traj(&code_traj("ok1", true, None, 1));
    f.write_traj(&code_traj("to1", false, Some(ErrorType::Timeout), 1));
    f.write_traj(&code_traj("to2", false, Some(ErrorType::Timeout), 1));
    f.write_traj(&code_traj("rt1", false, Some(ErrorType::RuntimeError), 1));
    f.write_traj(&web_traj("web1", false));

    let o = f.adp(&["replay", "--failed", "--error-type", "timeout", "--dry-run"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("2 would be replayed"), "{}", stdout(&o));
    assert!(
        stream_ids(&mut c, "tasks:code").is_empty(),
        "dry run queues nothing"
    );
    assert!(f.traj_dir().join("to1.json").exists());

    let o = f.adp(&["replay", "--failed", "--error-type", "timeout"]);
    assert_code(&o, 0);
    let ids: Vec<String> = stream_tasks(&mut c, "tasks:code")
        .into_iter()
        .map(|(_, t)| t.task_id)
        .collect();
    assert_eq!(ids, ["to1", "to2"]);
    assert!(f.traj_dir().join("to1.attempt-1.json").exists());
    assert!(
        f.traj_dir().join("rt1.json").exists(),
        "other error types untouched"
    );

    // --failed alone takes every remaining failure, each onto its own stream.
    let o = f.adp(&["replay", "--failed"]);
    assert_code(&o, 0);
    assert_eq!(stream_tasks(&mut c, "tasks:code").len(), 3);
    let web = stream_tasks(&mut c, "tasks:web");
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].1.task_id, "web1");
    assert_eq!(web[0].1.task_type, TaskType::Web);
    assert!(
        f.traj_dir().join("ok1.json").exists(),
        "successes untouched"
    );
}

#[test]
fn replay_from_the_task_file_and_unknown_ids() {
    let f = Fixture::new();
    let mut c = f.conn();
    let file = f.output_dir().join("tasks.jsonl");
    std::fs::write(
        &file,
        "{\"task_id\":\"lost\",\"task_type\":\"reasoning\",\"description\":\"Think\",\"max_steps\":3}\nnot json\n",
    )
    .expect("write");

    let o = f.adp(&["replay", "lost", "nowhere"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("lost: no task found"), "{}", stderr(&o));

    let o = f.adp(&[
        "replay",
        "--task-file",
        file.to_str().expect("path"),
        "lost",
        "nowhere",
    ]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("nowhere: no task found"));
    let queued = stream_tasks(&mut c, "tasks:reasoning");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.task_id, "lost");
    assert_eq!(queued[0].1.max_steps, 3);
    assert_eq!(
        queued[0].1.timeout, 300,
        "defaults filled in by the shared validation"
    );

    let o = f.adp(&["replay", "../etc"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("unsafe task_id"));
}

/// Rollout `k` of task `t` in run `r1`, as the runtime writes it:
/// `runs/r1/trajectories/t@k.json`, its task carrying the run and rollout.
fn write_rollout(f: &Fixture, k: u32, error: Option<ErrorType>) -> std::path::PathBuf {
    let mut tr = code_traj("t", error.is_none(), error, 1);
    if let Some(task) = tr.task.as_mut() {
        task.run_id = Some("r1".into());
        task.rollout = Some(k);
    }
    let dir = f.output_dir().join("runs/r1/trajectories");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join(format!("t@{k}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&tr).expect("json")).expect("write");
    path
}

#[test]
fn replay_of_rollouts_keeps_each_rollout_apart() {
    let f = Fixture::new();
    let mut c = f.conn();
    let dir = f.output_dir().join("runs/r1/trajectories");
    write_rollout(&f, 0, None);
    write_rollout(&f, 1, Some(ErrorType::Timeout));
    write_rollout(&f, 2, Some(ErrorType::RuntimeError));

    // Every failed rollout, each from its own file.
    let o = f.adp(&["--run", "r1", "replay", "--failed"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("2 replayed"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("old trajectory kept as t@1.attempt-1.json"),
        "{}",
        stdout(&o)
    );
    assert!(dir.join("t@0.json").exists(), "a success is not replayed");
    for k in [1, 2] {
        assert!(!dir.join(format!("t@{k}.json")).exists());
        assert!(dir.join(format!("t@{k}.attempt-1.json")).exists());
    }
    let queued: Vec<(Option<String>, Option<u32>)> = stream_tasks(&mut c, "tasks:code")
        .into_iter()
        .map(|(_, t)| (t.run_id, t.rollout))
        .collect();
    assert_eq!(
        queued,
        [(Some("r1".into()), Some(1)), (Some("r1".into()), Some(2))],
        "the runtime writes t@1.json and t@2.json of run r1 again"
    );

    // One rollout by name.
    let o = f.adp(&["--run", "r1", "replay", "t@0"]);
    assert_code(&o, 0);
    assert!(dir.join("t@0.attempt-1.json").exists());
    assert!(!dir.join("t@0.json").exists());
    let last = stream_tasks(&mut c, "tasks:code").pop().expect("entry").1;
    assert_eq!(last.rollout, Some(0));
}

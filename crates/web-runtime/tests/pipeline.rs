//! The whole runtime in-process against a real redis-server: the Worker on
//! `tasks:web`, page concurrency from the runtime's own gauges, Chromium
//! killed mid-task (relaunch + retry as an infrastructure failure), and the
//! plan cache replayed for real.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adp_core::Trajectory;
use common::{dispatch, process_exists, wait_for, Site};
use serde_json::json;
use test_support::{eventually, RedisServer};
use tokio_util::sync::CancellationToken;
use web_runtime::config::Config;
use web_runtime::Running;

fn config(redis: &RedisServer, out: &Path, extra: &[&str]) -> Config {
    let mut args = vec![
        "web-runtime".to_owned(),
        format!("--redis-url={}", redis.url()),
        format!("--output-dir={}", out.display()),
        "--metrics-host=127.0.0.1".to_owned(),
        "--metrics-port=0".to_owned(),
        "--retry-backoff-ms=200".to_owned(),
        "--read-block-ms=200".to_owned(),
        "--health-interval-secs=1".to_owned(),
        "--browser-ping-secs=1".to_owned(),
        format!("--chrome-path={}", common::chrome_path().display()),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    <Config as clap::Parser>::try_parse_from(args).expect("valid config")
}

/// A private redis-server, an output directory and the runtime running in
/// this process on them.
struct Pipeline {
    redis: RedisServer,
    out: tempfile::TempDir,
    running: Running,
    shutdown: CancellationToken,
}

impl Pipeline {
    /// Starts the runtime with the test settings and `extra` arguments.
    async fn start(extra: &[&str]) -> Self {
        let redis = RedisServer::start();
        let out = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let running = web_runtime::start(config(&redis, out.path(), extra), shutdown.clone())
            .await
            .expect("runtime starts")
            .expect("not cancelled");
        Pipeline {
            redis,
            out,
            running,
            shutdown,
        }
    }

    /// Waits until the trajectories of all `ids` are written.
    async fn wait_for(&self, ids: &[String], within: Duration) -> Vec<Trajectory> {
        wait_for(self.out.path(), ids, within).await
    }

    /// SIGTERM-like stop: cancels the runtime and waits for a clean exit.
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_never_more_than_four_pages() {
    let site = Site::local().await;
    let p = Pipeline::start(&["--max-concurrent=4"]).await;

    // Sample the runtime's own gauges while the tasks run.
    let pages = p.running.web_metrics.pages_open.clone();
    let active = p
        .running
        .metrics
        .active_tasks
        .with_label_values(&["web-runtime"]);
    let (max_pages, max_active) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let sampling = CancellationToken::new();
    let sampler = {
        let (mp, ma, stop) = (max_pages.clone(), max_active.clone(), sampling.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                mp.fetch_max(pages.get(), Ordering::SeqCst);
                ma.fetch_max(active.get(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let ids: Vec<String> = (0..8).map(|i| format!("conc_{i}")).collect();
    for id in &ids {
        dispatch(
            &p.redis,
            json!({"task_id": id, "constraints": {"actions": [
                {"type": "goto", "url": format!("{site}/index.html")},
                {"type": "wait", "ms": 600},
                {"type": "fill_and_submit", "selector": "input[name=q]", "text": "garden"},
            ], "expected_text": "Garden Hose"}}),
        );
    }
    let done = p.wait_for(&ids, Duration::from_secs(60)).await;
    sampling.cancel();
    let _ = sampler.await;
    assert!(done.iter().all(|t| t.success), "{done:#?}");

    let peak = p.running.web_metrics.pages_peak.get();
    assert!(peak <= 4, "peak pages {peak}");
    assert!(max_pages.load(Ordering::SeqCst) <= 4);
    assert!(max_active.load(Ordering::SeqCst) <= 4);
    // And the four slots were used (the tasks overlap for 600 ms each).
    assert_eq!(peak, 4, "pages never reached 4 at once");
    assert_eq!(p.running.web_metrics.pages_open.get(), 0);
    // Counted right after each file is written.
    let m = p.running.metrics.clone();
    eventually(Duration::from_secs(5), || async {
        m.render()
            .contains("tasks_completed_total{runtime=\"web-runtime\",status=\"success\"} 8")
    })
    .await
    .expect("8 successes counted");
    assert!(p.running.metrics.render().contains("web_pages_peak 4"));

    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_killed_mid_task_is_relaunched_and_the_task_retried() {
    let site = Site::local().await;
    let p = Pipeline::start(&["--max-concurrent=1"]).await;
    let first = p.running.browser.current().expect("browser");
    let pid = first.pid().expect("pid");

    dispatch(
        &p.redis,
        json!({"task_id": "interrupted", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/list.html")},
            {"type": "wait", "ms": 1500},
            {"type": "click", "selector": "a[href='item.html?id=7']"},
        ], "expected_text": "Cast Iron Pan"}}),
    );
    // Kill it while the task holds its page (in the 1.5 s wait).
    let pages = p.running.web_metrics.pages_open.clone();
    eventually(Duration::from_secs(20), || async { pages.get() == 1 })
        .await
        .expect("task started");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");

    dispatch(
        &p.redis,
        json!({"task_id": "after_crash", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/index.html")}
        ], "expected_text": "Demo Catalogue"}}),
    );
    let ids = ["interrupted".to_owned(), "after_crash".to_owned()];
    let done = p.wait_for(&ids, Duration::from_secs(60)).await;
    let (interrupted, after) = (&done[0], &done[1]);
    assert!(interrupted.success, "{interrupted:#?}");
    assert_eq!(
        interrupted.metadata["attempt"], 2,
        "{:?}",
        interrupted.metadata
    );
    let infra = interrupted.metadata["infra_errors"]
        .as_array()
        .expect("infra errors recorded");
    assert_eq!(infra.len(), 1, "{infra:?}");
    assert_eq!(infra[0]["component"], "browser");
    assert!(interrupted.metadata["browser_generation"].as_u64() >= Some(2));
    assert!(after.success, "{after:#?}");
    assert!(after.metadata["browser_generation"].as_u64() >= Some(2));
    assert!(p.running.web_metrics.browser_restarts.get() >= 1);
    let metrics = p.running.metrics.render();
    assert!(
        metrics.contains("infra_failures_total{component=\"browser\",runtime=\"web-runtime\"} 1"),
        "{metrics}"
    );
    // The killed Chromium was reaped: no zombie left.
    assert!(!process_exists(pid), "pid {pid} still present");
    let second = p.running.browser.current().expect("relaunched");
    assert_ne!(second.pid(), Some(pid));
    assert!(
        !first.profile_dir().exists(),
        "the crashed instance's profile is removed"
    );

    p.stop().await;
    let new_pid = second.pid().expect("pid");
    assert!(!process_exists(new_pid), "Chromium reaped at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_cache_replays_the_actions_for_real() {
    let site = Site::local().await;
    let p = Pipeline::start(&["--max-concurrent=2"]).await;

    let description = "Search for \"pan\" and open the first result";
    dispatch(
        &p.redis,
        json!({"task_id": "plan_1", "description": description,
               "constraints": {"start_url": format!("{site}/index.html"), "expected_text": "Cast Iron Pan"}}),
    );
    let first = p
        .wait_for(&["plan_1".to_owned()], Duration::from_secs(30))
        .await;
    assert!(first[0].success, "{:#?}", first[0]);
    assert_eq!(first[0].metadata["cache_hit"], false);

    dispatch(
        &p.redis,
        json!({"task_id": "plan_2", "description": description,
               "constraints": {"start_url": format!("{site}/index.html"), "expected_text": "Cast Iron Pan"}}),
    );
    let second = p
        .wait_for(&["plan_2".to_owned()], Duration::from_secs(30))
        .await;
    let (a, b) = (&first[0], &second[0]);
    assert!(b.success, "{b:#?}");
    assert_eq!(b.metadata["cache_hit"], true);
    // The same actions, performed again: real observations, never a cached result.
    let params = |t: &Trajectory| {
        t.steps
            .iter()
            .map(|s| s.action_params.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(params(a), params(b));
    for s in &b.steps {
        assert!(!s.observation.contains("[Cached result]"));
        assert!(s.observation.starts_with("Title: "), "{}", s.observation);
    }
    assert!(b.steps[2]
        .observation
        .contains("Title: Cast Iron Pan - Demo Catalogue"));
    let metrics = p.running.metrics.render();
    assert!(
        metrics.contains("cache_hits_total{cache_type=\"web\"} 1"),
        "{metrics}"
    );

    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_chromium_is_detected_and_replaced() {
    let site = Site::local().await;
    let p = Pipeline::start(&["--max-concurrent=1"]).await;
    let pid = p
        .running
        .browser
        .current()
        .and_then(|i| i.pid())
        .expect("pid");

    dispatch(
        &p.redis,
        json!({"task_id": "hung", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/list.html")},
            {"type": "wait", "ms": 800},
            {"type": "extract"},
        ], "expected_text": "Watering Can"}}),
    );
    let pages = p.running.web_metrics.pages_open.clone();
    eventually(Duration::from_secs(20), || async { pages.get() == 1 })
        .await
        .expect("task started");
    // Freeze the browser process: it stops answering CDP but does not exit.
    std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("kill -STOP");
    let done = p
        .wait_for(&["hung".to_owned()], Duration::from_secs(90))
        .await;
    let t = &done[0];
    assert!(t.success, "{t:#?}");
    assert_eq!(t.metadata["attempt"], 2, "{:?}", t.metadata);
    assert_eq!(t.metadata["infra_errors"][0]["component"], "browser");
    assert!(p.running.web_metrics.browser_restarts.get() >= 1);
    // The frozen process was killed and reaped.
    assert!(!process_exists(pid), "pid {pid} still present");

    p.stop().await;
}

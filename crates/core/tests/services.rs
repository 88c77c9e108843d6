//! Metrics endpoint, health endpoint, trajectory writer and template cache
//! against real servers and files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adp_core::cache::{cache_key, TemplateCache};
use adp_core::metrics::{serve, CheckResult, HealthFn, Metrics};
use adp_core::types::{TaskSpec, TaskType, Trajectory};
use adp_core::writer::TrajectoryWriter;
use test_support::RedisServer;
use tokio_util::sync::CancellationToken;

/// Every metric name of CONTRACT §7.
const CONTRACT_METRICS: [&str; 11] = [
    "tasks_submitted_total",
    "tasks_rejected_total",
    "tasks_completed_total",
    "tasks_failed_total",
    "task_duration_seconds",
    "active_tasks",
    "queue_size",
    "pending_lag_seconds",
    "cache_hits_total",
    "cache_misses_total",
    "runtime_health",
];

fn redis_health(conn: redis::aio::ConnectionManager) -> HealthFn {
    Arc::new(move || {
        let c = conn.clone();
        Box::pin(async move {
            let mut m = BTreeMap::new();
            m.insert(
                "redis".to_owned(),
                CheckResult::from_result(adp_core::health::check_redis(&c).await),
            );
            m
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_contract_name_and_health_follows_redis() {
    let mut redis = RedisServer::start();
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let metrics = Metrics::new();
    metrics.init_runtime("sandbox-runtime", &[TaskType::Code, TaskType::Reasoning]);
    metrics.init_rejections();
    metrics.init_cache("code");
    metrics.queue_size.with_label_values(&["tasks:code"]).set(3);
    let stop = CancellationToken::new();
    let addr = serve(
        "127.0.0.1:0".parse().expect("addr"),
        "test",
        metrics.clone(),
        redis_health(conn),
        stop.clone(),
    )
    .await
    .expect("serve");
    let client = reqwest::Client::new();
    let body = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    for name in CONTRACT_METRICS {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} missing from /metrics"
        );
    }
    assert!(body.contains(r#"queue_size{queue_name="tasks:code"} 3"#));

    let ok = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(ok.status(), 200);
    let json: serde_json::Value = ok.json().await.expect("json");
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["checks"]["redis"]["ok"], true);

    redis.stop();
    let down = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(down.status(), 503);
    let json: serde_json::Value = down.json().await.expect("json");
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["checks"]["redis"]["ok"], false);
    assert!(json["checks"]["redis"]["error"]
        .as_str()
        .unwrap_or("")
        .contains("redis"));

    redis.start_again();
    test_support::eventually(Duration::from_secs(15), || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{addr}/health"))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        }
    })
    .await
    .expect("healthy again after Redis returns");
    stop.cancel();
}

#[tokio::test]
async fn redis_and_reports_redis_and_the_other_check() {
    let redis = RedisServer::start();
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let health = adp_core::health::redis_and(conn, "browser", || async {
        Err("no live browser".to_owned())
    });
    let checks = health().await;
    assert_eq!(
        checks.keys().map(String::as_str).collect::<Vec<_>>(),
        ["browser", "redis"]
    );
    assert!(checks["redis"].ok, "{:?}", checks["redis"]);
    assert!(!checks["browser"].ok);
    assert_eq!(checks["browser"].error.as_deref(), Some("no live browser"));
}

fn task(id: &str) -> TaskSpec {
    serde_json::from_value(serde_json::json!({"task_id": id, "task_type": "code", "description": "Compute fibonacci(10)"}))
        .expect("task")
}

#[tokio::test]
async fn writer_is_atomic_and_refuses_unsafe_ids() {
    let out = tempfile::tempdir().expect("tmp");
    let nested = out.path().join("deep/er");
    let w = TrajectoryWriter::new(&nested);
    let mut t = Trajectory::new(&task("ok_1"), "sandbox-runtime");
    t.final_result = "55\n".into();
    let path = w.write(&t).await.expect("write");
    assert_eq!(path, nested.join("trajectories/ok_1.json"));
    let back: Trajectory =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
    assert_eq!(back, t);
    // Overwrite keeps one whole file and no temp files behind.
    t.final_result = "56\n".into();
    w.write(&t).await.expect("rewrite");
    let names: Vec<String> = std::fs::read_dir(w.dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["ok_1.json".to_owned()]);

    let mut evil = t.clone();
    evil.task_id = "../../etc/passwd".into();
    assert!(matches!(
        w.write(&evil).await,
        Err(adp_core::Error::UnsafeTaskId(_))
    ));
    assert!(!out.path().join("etc").exists() && !nested.join("etc").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_rollouts_get_their_own_files() {
    let out = tempfile::tempdir().expect("tmp");
    let w = TrajectoryWriter::new(out.path());
    let mut spec = task("same");
    let plain = w
        .write(&Trajectory::new(&spec, "sandbox-runtime"))
        .await
        .expect("default run");
    assert_eq!(plain, out.path().join("trajectories/same.json"));
    spec.run_id = Some("exp-1".into());
    let named = w
        .write(&Trajectory::new(&spec, "sandbox-runtime"))
        .await
        .expect("named run");
    assert_eq!(named, out.path().join("runs/exp-1/trajectories/same.json"));
    for r in 0..3 {
        spec.rollout = Some(r);
        let t = Trajectory::new(&spec, "sandbox-runtime");
        assert_eq!((t.run_id.as_str(), t.rollout()), ("exp-1", Some(r)));
        let path = w.write(&t).await.expect("rollout");
        assert_eq!(
            path,
            out.path()
                .join(format!("runs/exp-1/trajectories/same@{r}.json"))
        );
        let back: Trajectory =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back.run_id, "exp-1");
        assert_eq!(back.metadata["rollout"], r);
    }
    // The default run's file is untouched by the named run's.
    let first: Trajectory =
        serde_json::from_str(&std::fs::read_to_string(&plain).expect("read")).expect("parse");
    assert_eq!(first.run_id, "default");
    assert!(!first.metadata.contains_key("rollout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_writes_every_file_and_fails_only_the_bad_one() {
    let out = tempfile::tempdir().expect("tmp");
    let w = TrajectoryWriter::new(out.path()).with_gather(Duration::from_millis(200));
    std::fs::create_dir_all(w.dir().join("blocked.json")).expect("a directory in the way");
    let ids: Vec<String> = (0..40)
        .map(|i| format!("g_{i}"))
        .chain(["blocked".to_owned()])
        .collect();
    let started = std::time::Instant::now();
    let writes = ids.iter().map(|id| {
        let w = w.clone();
        let mut t = Trajectory::new(&task(id), "sandbox-runtime");
        t.final_result = format!("{id}\n");
        async move { (t.task_id.clone(), w.write(&t).await) }
    });
    let results = futures::future::join_all(writes).await;
    // All gathered into few groups: far less than 41 windows of 200 ms
    // (8.2 s). The bound leaves room for a loaded machine (41 fsynced files
    // took 1.06 s at load 20 with a 50 ms window).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    for (id, result) in results {
        if id == "blocked" {
            assert!(result.is_err(), "renaming onto a directory must fail");
            continue;
        }
        let path = result.expect("write");
        let back: Trajectory =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back.final_result, format!("{id}\n"));
    }
    let temps = std::fs::read_dir(w.dir())
        .expect("dir")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                adp_core::writer::is_temp_file_name(&e.file_name().to_string_lossy())
            })
        })
        .count();
    assert_eq!(temps, 0, "no temp files left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_counts_hits_and_misses_and_treats_redis_failure_as_a_miss() {
    assert_eq!(
        cache_key(TaskType::Code, "  Compute Fibonacci(10) "),
        // md5("code:compute fibonacci(10)"), computed independently with Python's hashlib.
        "template_cache:109b783a3a03cfbfae0dc0ece4a01485"
    );
    let mut redis = RedisServer::start();
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let metrics = Metrics::new();
    let cache = TemplateCache::new(Some(conn), Duration::from_secs(60), metrics.clone(), "code");
    assert_eq!(cache.get::<String>(&described("x")).await, None);
    cache.put(&described("x"), &"print(1)".to_owned()).await;
    assert_eq!(
        cache.get::<String>(&described(" X ")).await.as_deref(),
        Some("print(1)")
    );
    assert_eq!(
        metrics.cache_hits_total.with_label_values(&["code"]).get(),
        1
    );
    assert_eq!(
        metrics
            .cache_misses_total
            .with_label_values(&["code"])
            .get(),
        1
    );
    let mut c = redis.client();
    let ttl: i64 = redis::cmd("TTL")
        .arg(cache_key(TaskType::Code, "x"))
        .query(&mut c)
        .expect("ttl");
    assert!((1..=60).contains(&ttl));

    redis.stop();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        cache.get::<String>(&described("x")),
    )
    .await
    .expect("a down cache answers promptly");
    assert_eq!(r, None, "Redis down = miss, never an error");
    cache.put(&described("y"), &"print(2)".to_owned()).await; // logged, not failing
    assert_eq!(
        metrics
            .cache_misses_total
            .with_label_values(&["code"])
            .get(),
        2
    );
}

fn described(description: &str) -> TaskSpec {
    let mut t = task("c");
    t.description = description.to_owned();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_answer_only_for_their_model_settings_and_never_for_rollouts() {
    let redis = RedisServer::start();
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let cache = |policy: &str| {
        TemplateCache::new(
            Some(conn.clone()),
            Duration::from_secs(60),
            Metrics::new(),
            "code",
        )
        .with_policy(policy)
    };
    let mut cfg = adp_core::llm::LlmConfig::new("http://127.0.0.1:9");
    cfg.model = "model-a".into();
    let a = cache(&adp_core::cache::llm_policy(&cfg, "model-a"));
    let b = cache(&adp_core::cache::llm_policy(&cfg, "model-b"));
    cfg.sampling.temperature = Some(0.9);
    let b_hot = cache(&adp_core::cache::llm_policy(&cfg, "model-b"));
    cfg.sampling.temperature = Some(0.2);
    cfg.tool_mode = adp_core::llm::ToolMode::Text;
    let a_text = cache(&adp_core::cache::llm_policy(&cfg, "model-a"));
    let offline = cache("");

    let t = described("same task");
    a.put(&t, &"plan of a".to_owned()).await;
    assert_eq!(a.get::<String>(&t).await.as_deref(), Some("plan of a"));
    assert_eq!(b.get::<String>(&t).await, None, "another model");
    assert_eq!(
        b_hot.get::<String>(&t).await,
        None,
        "other sampling settings"
    );
    assert_eq!(offline.get::<String>(&t).await, None, "the offline policy");
    assert_eq!(a_text.get::<String>(&t).await, None, "another tool mode");

    let mut sampled = t.clone();
    sampled
        .constraints
        .insert("sampling".into(), serde_json::json!({"temperature": 1.0}));
    assert_eq!(
        a.get::<String>(&sampled).await,
        None,
        "the task's own sampling"
    );

    let mut rollout = t.clone();
    rollout.rollout = Some(1);
    assert_eq!(
        a.get::<String>(&rollout).await,
        None,
        "rollouts bypass the cache"
    );
    a.put(&rollout, &"rollout plan".to_owned()).await;
    assert_eq!(
        a.get::<String>(&t).await.as_deref(),
        Some("plan of a"),
        "nor store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_model_uses_the_cache_only_once_known_and_under_its_name() {
    let redis = RedisServer::start();
    let conn = adp_core::config::connect(&redis.url())
        .await
        .expect("connect");
    let llm = test_support::fake_llm::FakeLlm::start(Vec::new()).await;
    // No LLM_MODEL: the model is discovered from GET /v1/models.
    let client =
        adp_core::llm::LlmClient::new(adp_core::llm::LlmConfig::new(llm.url())).expect("client");
    let cache = TemplateCache::new(
        Some(conn.clone()),
        Duration::from_secs(60),
        Metrics::new(),
        "code",
    )
    .with_llm(Some(&client));
    let t = described("same task");
    assert_eq!(cache.key_for(&t), None, "model not known yet: no key");
    cache.put(&t, &"plan".to_owned()).await;
    assert_eq!(cache.get::<String>(&t).await, None);

    let model = client.model().await.expect("discovered");
    let mut named = adp_core::llm::LlmConfig::new(llm.url());
    named.model = model.clone();
    let expected = TemplateCache::new(None, Duration::from_secs(60), Metrics::new(), "code")
        .with_policy(adp_core::cache::llm_policy(&named, &model))
        .key_for(&t);
    assert!(expected.is_some());
    assert_eq!(
        cache.key_for(&t),
        expected,
        "the discovered model is in the key"
    );
    let mut other = named.clone();
    other.model = "another-model".into();
    assert_ne!(
        expected,
        TemplateCache::new(None, Duration::from_secs(60), Metrics::new(), "code")
            .with_policy(adp_core::cache::llm_policy(&other, "another-model"))
            .key_for(&t)
    );
    cache.put(&t, &"plan".to_owned()).await;
    assert_eq!(cache.get::<String>(&t).await.as_deref(), Some("plan"));
}

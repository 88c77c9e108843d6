//! # sandbox-runtime
//!
//! The code agent runtime: consumes `tasks:code` and `tasks:reasoning`
//! (group `workers`), runs each task's steps of Python in a one-shot nsjail
//! and writes one trajectory per task (CONTRACT §3, §4).
//!
//! # Layout
//! * [`config`]: the clap settings (`SANDBOX_*`, `NSJAIL_PATH`, `LLM_*`, ...).
//! * [`executor`]: one nsjail run: namespaces, binds, rlimits, capped output.
//! * [`classify`]: nsjail's log + exit + stderr → CONTRACT error types.
//! * [`session`]: stateful sessions (one jail and interpreter per task).
//! * [`limits`]: cgroups or the rlimit fallback, seccomp, the jail's files.
//! * [`jail_group`]: the process group whose guardian kills the jails when
//!   the runtime dies.
//! * [`policy`]: scripted, openai, heuristic, cached-plan replay.
//! * [`agent`]: the loop of one task, the run's outcome and its checks; the `TaskHandler`.
//! * [`grader`]: the `tests` check: the agent's cells replayed, then the tests, in a jail.
//! * [`health`]: `/health` checks (Redis, nsjail probe).
//!
//! [`run`] wires them to adp-core's `Worker`, metrics server and health loop.

pub mod agent;
pub mod classify;
pub mod config;
pub mod executor;
pub mod grader;
pub mod health;
pub mod jail_group;
pub mod limits;
pub mod policy;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use adp_core::cache::TemplateCache;
use adp_core::config::{connect_retrying, consumer_name, redact_url, COMMAND_TIMEOUT};
use adp_core::health::{runtime_id, spawn_health_loop};
use adp_core::llm::LlmClient;
use adp_core::metrics::{self, Metrics};
use adp_core::names::{STREAM_CODE, STREAM_REASONING};
use adp_core::queue::{Queue, Worker, WorkerConfig};
use adp_core::writer::TrajectoryWriter;
use adp_core::TaskType;
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::agent::CodeAgent;
use crate::config::{CacheMode, Config};
use crate::executor::Sandbox;
use crate::health::{health_fn, SandboxProbe, PROBE_TTL};

/// The runtime's name: `runtime_id` of trajectories and the `runtime` metric label.
pub const RUNTIME: &str = "sandbox-runtime";

/// Runs the runtime until `shutdown` fires and running tasks are finished
/// (or the grace period is over). Errors only for start-up failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(config.sandbox.to_config());
    let llm = config
        .llm
        .config()
        .map(LlmClient::new)
        .transpose()
        .context("LLM settings")?;
    let metrics = Metrics::new();
    metrics.init_runtime(RUNTIME, &[TaskType::Code, TaskType::Reasoning]);

    let redis_url = &config.common.redis_url;
    let Some(conn) = connect_retrying(redis_url, Some(COMMAND_TIMEOUT), &shutdown).await else {
        return Ok(());
    };
    let cache_conn = (config.cache_mode == CacheMode::Plan).then(|| conn.clone());
    let cache = TemplateCache::new(
        cache_conn,
        config.runtime.cache_ttl(),
        metrics.clone(),
        "code",
    )
    .with_llm(llm.as_ref())
    .with_variant(config.sandbox_session.cache_variant());
    let policy = match &llm {
        Some(c) => format!("openai ({})", c.config().api_root()),
        None => "heuristic (offline; set LLM_BASE_URL for a model)".to_owned(),
    };
    let concurrency = config.concurrency();
    let in_flight = config.tasks_in_flight();
    tracing::info!(
        redis_url = %redact_url(redis_url),
        concurrency,
        in_flight,
        policy = %policy,
        cache = ?config.cache_mode,
        session = config.sandbox_session.as_str(),
        nsjail = %sandbox.config().nsjail_path.display(),
        "Starting sandbox-runtime."
    );
    let setup = sandbox.setup();
    match &setup.limits {
        limits::LimitMode::Rlimits { reason } => tracing::warn!(
            reason = %reason,
            memory_mb = sandbox.config().memory_mb,
            procs = sandbox.config().fallback_procs,
            "DEGRADED sandbox limits: no cgroup can be used, so each jail gets rlimits only ({} processes x {} MiB of address space).",
            sandbox.config().fallback_procs,
            sandbox.config().memory_mb / sandbox.config().fallback_procs.max(1)
        ),
        mode => tracing::info!(
            mode = mode.name(),
            memory_mb = sandbox.config().memory_mb,
            max_procs = sandbox.config().max_procs,
            "Each jail's memory and processes are limited by cgroups."
        ),
    }
    if let Some(why) = &setup.files.fallback {
        tracing::warn!(reason = %why, "Cannot compute the interpreter's files; jails see the whole /usr.");
    }
    if let limits::LimitMode::CgroupV1 { memory_root, .. } = &setup.limits {
        let removed = limits::remove_abandoned_groups(memory_root);
        if removed > 0 {
            tracing::info!(removed, "Removed session cgroups left by a killed runtime.");
        }
    }
    let limits_gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "sandbox_limits_degraded",
            "1 when jails run without cgroups (rlimits only), by limit mode.",
        ),
        &["mode"],
    )
    .context("sandbox_limits_degraded metric")?;
    limits_gauge
        .with_label_values(&[setup.limits.name()])
        .set(i64::from(setup.limits.degraded()));
    let _ = metrics.registry.register(Box::new(limits_gauge));
    let removed = sandbox.remove_abandoned_logs();
    if removed > 0 {
        tracing::info!(removed, dir = %sandbox.config().log_dir.display(), "Removed nsjail log files left by a killed runtime.");
    }
    if let Err(e) = sandbox.probe().await {
        tracing::warn!(error = %e, "nsjail probe failed at start-up; tasks will be retried until it works.");
    }

    let probe = Arc::new(SandboxProbe::new(sandbox.clone(), PROBE_TTL));
    let health = health_fn(conn.clone(), probe, &setup.limits);
    let addr = SocketAddr::new(config.common.metrics_host, config.metrics_port);
    let bound = metrics::serve(
        addr,
        RUNTIME,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the metrics server to {addr}"))?;
    tracing::info!(addr = %bound, "Serving /metrics and /health.");

    let worker_config = WorkerConfig::from_args(
        RUNTIME,
        vec![STREAM_CODE, STREAM_REASONING],
        in_flight,
        &config.common,
        &config.worker,
    );
    let health_loop = spawn_health_loop(
        conn.clone(),
        RUNTIME,
        runtime_id(RUNTIME, &consumer_name()),
        metrics.clone(),
        health,
        config.runtime.health_interval(),
        shutdown.clone(),
    );
    let agent = CodeAgent::new(sandbox, llm, cache, concurrency, config.sandbox_session);
    let worker = Worker::new(
        worker_config,
        agent,
        Queue::new(conn),
        TrajectoryWriter::new(&config.common.output_dir),
        metrics,
    );
    worker.run(shutdown).await.context("worker")?;
    let _ = health_loop.await;
    tracing::info!("sandbox-runtime stopped.");
    Ok(())
}

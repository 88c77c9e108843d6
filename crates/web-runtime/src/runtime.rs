//! `run(config, shutdown)`: the whole runtime — Redis, egress proxy,
//! Chromium, watchdog, `/metrics` + `/health`, health reports, and the
//! [`Worker`] on `tasks:web` — until `shutdown`; then Chromium is closed and
//! reaped. [`start`] does the same but hands back a [`Running`] so tests can
//! look inside (metrics, the browser's pid).

use std::net::SocketAddr;

use adp_core::cache::TemplateCache;
use adp_core::config::{connect_retrying, consumer_name, COMMAND_TIMEOUT};
use adp_core::health::{redis_and, runtime_id, spawn_health_loop};
use adp_core::llm::LlmClient;
use adp_core::metrics::{self, Metrics};
use adp_core::names::STREAM_WEB;
use adp_core::queue::{Queue, Worker, WorkerConfig};
use adp_core::writer::TrajectoryWriter;
use adp_core::TaskType;
use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{WebHandler, RUNTIME};
use crate::browser::BrowserManager;
use crate::config::{CacheMode, Config};
use crate::egress;
use crate::metrics::WebMetrics;

/// A started runtime.
pub struct Running {
    pub metrics: Metrics,
    pub web_metrics: WebMetrics,
    pub browser: BrowserManager,
    /// Where `/metrics` and `/health` are served.
    pub metrics_addr: SocketAddr,
    worker: JoinHandle<adp_core::Result<()>>,
    background: Vec<JoinHandle<()>>,
    stop_aux: CancellationToken,
}

impl Running {
    /// Waits for the worker to stop (after `shutdown`), then closes Chromium
    /// and the helpers.
    pub async fn wait(self) -> anyhow::Result<()> {
        let worker = self.worker.await;
        // Health reports, watchdog, metrics server and proxy stop first (the
        // runtime leaves `runtime_health`), then Chromium is closed.
        self.stop_aux.cancel();
        for h in self.background {
            let _ = h.await;
        }
        self.browser.shutdown().await;
        tracing::info!("web-runtime stopped.");
        match worker {
            Ok(r) => r.context("worker"),
            Err(e) => Err(anyhow::anyhow!("worker task failed: {e}")),
        }
    }
}

/// Runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match start(config, shutdown).await? {
        Some(running) => running.wait().await,
        None => Ok(()),
    }
}

/// Starts everything; `None` when `shutdown` fired while waiting for Redis.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Option<Running>> {
    let metrics = Metrics::new();
    metrics.init_runtime(RUNTIME, &[TaskType::Web]);
    let web_metrics = WebMetrics::register(&metrics);

    let Some(conn) =
        connect_retrying(&config.common.redis_url, Some(COMMAND_TIMEOUT), &shutdown).await
    else {
        return Ok(None);
    };

    // Helpers that must outlive the worker's drain (the proxy carries the
    // last tasks' traffic) stop on their own token, after the worker.
    let stop_aux = CancellationToken::new();
    let policy = config.policy();
    let mut settings = config.browser_settings();
    if config.web_egress_proxy {
        let proxy = egress::start(policy.clone(), web_metrics.clone(), stop_aux.clone())
            .await
            .context("egress proxy")?;
        settings.proxy = Some(proxy);
    }
    let browser = BrowserManager::launch(settings, policy.clone(), web_metrics.clone())
        .await
        .context("launching Chromium (run scripts/setup.sh web, or set CHROME_PATH)")?;
    tracing::info!(
        chrome = %config.chrome_path.display(),
        max_concurrent = config.max_concurrent,
        block_private = config.web_block_private,
        block_extra = ?config.web_block_extra.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        egress_proxy = config.web_egress_proxy,
        allow_hosts = ?config.web_allow_hosts.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "Browser ready."
    );
    let watchdog = browser.spawn_watchdog(stop_aux.clone());

    let health = {
        let browser = browser.clone();
        redis_and(conn.clone(), "browser", move || {
            let browser = browser.clone();
            async move { browser.check().await }
        })
    };
    let addr = SocketAddr::new(config.common.metrics_host, config.metrics_port);
    let metrics_addr = match metrics::serve(
        addr,
        RUNTIME,
        metrics.clone(),
        health.clone(),
        stop_aux.clone(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            browser.shutdown().await;
            return Err(anyhow::anyhow!("cannot serve metrics on {addr}: {e}"));
        }
    };
    tracing::info!(addr = %metrics_addr, "Serving /metrics and /health.");
    // Pages may not reach the runtime's own endpoints (whatever
    // WEB_BLOCK_PRIVATE says).
    policy.own_ports.add(metrics_addr.port(), "metrics");

    let consumer = consumer_name();
    let health_loop = spawn_health_loop(
        conn.clone(),
        RUNTIME,
        runtime_id(RUNTIME, &consumer),
        metrics.clone(),
        health,
        config.runtime.health_interval(),
        stop_aux.clone(),
    );

    let llm = match config.llm.config() {
        Some(c) => {
            let model = c.model.clone();
            let client = LlmClient::new(c).context("LLM settings")?;
            tracing::info!(base_url = %client.config().base_url, model = %model, "Policy: openai.");
            Some(client)
        }
        None => {
            tracing::info!("No LLM_BASE_URL: policy heuristic (offline).");
            None
        }
    };
    let cache_conn = (config.cache_mode == CacheMode::Plan).then(|| conn.clone());
    let cache = TemplateCache::new(
        cache_conn,
        config.runtime.cache_ttl(),
        metrics.clone(),
        "web",
    )
    .with_llm(llm.as_ref());
    let handler = WebHandler::new(browser.clone(), config.agent_settings(), llm, cache);
    let mut worker_config = WorkerConfig::from_args(
        RUNTIME,
        vec![STREAM_WEB],
        usize::from(config.max_concurrent),
        &config.common,
        &config.worker,
    );
    worker_config.consumer = consumer;
    let worker = Worker::new(
        worker_config,
        handler,
        Queue::new(conn.clone()),
        TrajectoryWriter::new(&config.common.output_dir),
        metrics.clone(),
    );
    let worker = tokio::spawn(worker.run(shutdown));
    Ok(Some(Running {
        metrics,
        web_metrics,
        browser,
        metrics_addr,
        worker,
        background: vec![watchdog, health_loop],
        stop_aux,
    }))
}

//! Prometheus metrics of CONTRACT §7 and the `/metrics` + `/health` server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::types::{ErrorType, TaskType};
use crate::validate::RejectReason;

/// Every metric of CONTRACT §7, plus a few platform extensions.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub tasks_submitted_total: IntCounterVec,
    pub tasks_rejected_total: IntCounterVec,
    pub tasks_completed_total: IntCounterVec,
    pub tasks_failed_total: IntCounterVec,
    pub task_duration_seconds: HistogramVec,
    pub active_tasks: IntGaugeVec,
    pub queue_size: IntGaugeVec,
    pub pending_lag_seconds: GaugeVec,
    pub cache_hits_total: IntCounterVec,
    pub cache_misses_total: IntCounterVec,
    pub runtime_health: IntGaugeVec,
    /// Extension: attempts that ended in an infrastructure failure (retried).
    pub infra_failures_total: IntCounterVec,
    /// Extension: entries moved to `tasks:dead`.
    pub dead_lettered_total: IntCounterVec,
    /// Extension: entries taken over from another consumer (XAUTOCLAIM).
    pub tasks_reclaimed_total: IntCounterVec,
    /// Extension: pending entries found deleted from their stream (an
    /// operator's XTRIM/XDEL): by a heartbeat or re-claim.
    pub entries_gone_total: IntCounterVec,
    /// Extension: 1 while the runtime takes no new entries because a
    /// dependency fails (the entries it holds retry with backoff).
    pub reads_paused: IntGaugeVec,
    /// Extension: dead letters put back on their stream by `adp dead requeue`
    /// (read from Redis by the dispatcher).
    pub dead_requeued_total: IntGaugeVec,
    /// Extension: consumers of a stream's group that read within the last
    /// minute (set by the dispatcher).
    pub queue_active_consumers: IntGaugeVec,
    /// Extension: seconds a stream has had entries waiting and no active
    /// consumer (0 while served; set by the dispatcher).
    pub queue_unserved_seconds: prometheus::GaugeVec,
}

impl Metrics {
    /// A fresh registry with every metric registered, plus process metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let tasks_submitted_total = counter(
            "tasks_submitted_total",
            "Tasks dispatched to a stream.",
            &["task_type", "runtime"],
        );
        let tasks_rejected_total = counter(
            "tasks_rejected_total",
            "Lines of the task file rejected (or skipped as duplicates), by reason.",
            &["reason"],
        );
        let tasks_completed_total = counter(
            "tasks_completed_total",
            "Tasks finished with a trajectory written, by status.",
            &["runtime", "status"],
        );
        let tasks_failed_total = counter(
            "tasks_failed_total",
            "Tasks whose trajectory records a failure, by error type.",
            &["runtime", "error_type"],
        );
        let task_duration_seconds = HistogramVec::new(
            HistogramOpts::new("task_duration_seconds", "Wall time of a task.").buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                600.0,
            ]),
            &["runtime"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(task_duration_seconds.clone()))
            .expect("unique metric");
        let active_tasks = gauge("active_tasks", "Tasks being worked on now.", &["runtime"]);
        let queue_size = gauge(
            "queue_size",
            "Entries not yet acknowledged (undelivered + pending) per stream; length of tasks:dead.",
            &["queue_name"],
        );
        let pending_lag_seconds = GaugeVec::new(
            Opts::new(
                "pending_lag_seconds",
                "Age of the oldest entry not yet acknowledged in the runtime's streams.",
            ),
            &["runtime"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(pending_lag_seconds.clone()))
            .expect("unique metric");
        let cache_hits_total = counter("cache_hits_total", "Template cache hits.", &["cache_type"]);
        let cache_misses_total = counter(
            "cache_misses_total",
            "Template cache misses.",
            &["cache_type"],
        );
        let runtime_health = gauge(
            "runtime_health",
            "1 when the runtime reaches Redis and its executor, else 0.",
            &["runtime"],
        );
        let infra_failures_total = counter(
            "infra_failures_total",
            "Task attempts that ended in an infrastructure failure, by component.",
            &["runtime", "component"],
        );
        let dead_lettered_total = counter(
            "dead_lettered_total",
            "Entries moved to tasks:dead after MAX_DELIVERIES attempts.",
            &["runtime"],
        );
        let tasks_reclaimed_total = counter(
            "tasks_reclaimed_total",
            "Entries re-claimed from a consumer that stopped answering.",
            &["runtime"],
        );
        let entries_gone_total = counter(
            "entries_gone_total",
            "Pending entries found deleted from their stream (XTRIM/XDEL) by a heartbeat or re-claim.",
            &["runtime"],
        );
        let reads_paused = gauge(
            "reads_paused",
            "1 while the runtime takes no new entries because a dependency fails.",
            &["runtime"],
        );
        let dead_requeued_total = gauge(
            "dead_requeued_total",
            "Dead letters requeued by `adp dead requeue` (as recorded in Redis).",
            &["queue_name"],
        );

        let queue_active_consumers = gauge(
            "queue_active_consumers",
            "Consumers of the stream's group that read from it within the last minute.",
            &["queue_name"],
        );
        let queue_unserved_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "queue_unserved_seconds",
                "Seconds the stream has had entries waiting and no active consumer (0 while served).",
            ),
            &["queue_name"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_unserved_seconds.clone()))
            .expect("register");

        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }

        Metrics {
            registry,
            tasks_submitted_total,
            tasks_rejected_total,
            tasks_completed_total,
            tasks_failed_total,
            task_duration_seconds,
            active_tasks,
            queue_size,
            pending_lag_seconds,
            cache_hits_total,
            cache_misses_total,
            runtime_health,
            infra_failures_total,
            dead_lettered_total,
            tasks_reclaimed_total,
            entries_gone_total,
            reads_paused,
            dead_requeued_total,
            queue_active_consumers,
            queue_unserved_seconds,
        }
    }

    /// Touches the label sets of a runtime so every series shows from the start.
    pub fn init_runtime(&self, runtime: &str, task_types: &[TaskType]) {
        for status in ["success", "failure"] {
            self.tasks_completed_total
                .with_label_values(&[runtime, status]);
        }
        for e in ErrorType::ALL {
            self.tasks_failed_total
                .with_label_values(&[runtime, e.as_str()]);
        }
        for t in task_types {
            self.tasks_submitted_total
                .with_label_values(&[t.as_str(), t.runtime()]);
        }
        self.task_duration_seconds.with_label_values(&[runtime]);
        self.active_tasks.with_label_values(&[runtime]);
        self.pending_lag_seconds.with_label_values(&[runtime]);
        self.runtime_health.with_label_values(&[runtime]);
        self.dead_lettered_total.with_label_values(&[runtime]);
        self.tasks_reclaimed_total.with_label_values(&[runtime]);
        self.entries_gone_total.with_label_values(&[runtime]);
        self.reads_paused.with_label_values(&[runtime]);
        // The components a runtime's attempts can fail on (InfraError::new).
        let executor = if runtime == TaskType::Web.runtime() {
            "browser"
        } else {
            "sandbox"
        };
        for component in [executor, "llm", "disk"] {
            self.infra_failures_total
                .with_label_values(&[runtime, component]);
        }
    }

    /// Touches every rejection reason label, and the per-stream series the
    /// dispatcher exports (`queue_size`, `dead_requeued_total`), so the
    /// dashboard and alerts see them before the first event.
    pub fn init_rejections(&self) {
        for r in RejectReason::CODES
            .iter()
            .chain(["duplicate", "conflicting_duplicate"].iter())
        {
            self.tasks_rejected_total.with_label_values(&[r]);
        }
        for t in TaskType::ALL {
            self.queue_size.with_label_values(&[t.stream()]);
            self.queue_active_consumers.with_label_values(&[t.stream()]);
            self.queue_unserved_seconds.with_label_values(&[t.stream()]);
            self.dead_requeued_total.with_label_values(&[t.stream()]);
        }
        self.queue_size
            .with_label_values(&[crate::names::STREAM_DEAD]);
    }

    /// Touches the cache label of one cache type.
    pub fn init_cache(&self, cache_type: &str) {
        self.cache_hits_total.with_label_values(&[cache_type]);
        self.cache_misses_total.with_label_values(&[cache_type]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "Could not encode metrics.");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Result of one health check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a passing check found worth saying (e.g. a degraded mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl CheckResult {
    pub fn ok() -> Self {
        CheckResult {
            ok: true,
            error: None,
            detail: None,
        }
    }
    /// A passing check with something to say.
    pub fn ok_with(detail: impl Into<String>) -> Self {
        CheckResult {
            ok: true,
            error: None,
            detail: Some(detail.into()),
        }
    }
    pub fn failed(error: impl Into<String>) -> Self {
        CheckResult {
            ok: false,
            error: Some(error.into()),
            detail: None,
        }
    }
    pub fn from_result<E: std::fmt::Display>(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => Self::ok(),
            Err(e) => Self::failed(e.to_string()),
        }
    }
}

/// Body of `GET /health`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub service: String,
    pub checks: BTreeMap<String, CheckResult>,
}

impl HealthReport {
    pub fn new(service: &str, checks: BTreeMap<String, CheckResult>) -> Self {
        let healthy = checks.values().all(|c| c.ok);
        HealthReport {
            status: if healthy { "healthy" } else { "unhealthy" },
            service: service.to_owned(),
            checks,
        }
    }
    pub fn healthy(&self) -> bool {
        self.status == "healthy"
    }
}

/// A health check: named results, run on every `GET /health`.
pub type HealthFn =
    Arc<dyn Fn() -> BoxFuture<'static, BTreeMap<String, CheckResult>> + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    health: HealthFn,
    service: String,
}

/// Serves `/metrics` and `/health` on `addr` until `shutdown` fires.
/// Returns once the listener is bound, with the bound address; the server runs
/// in a spawned task.
pub async fn serve(
    addr: SocketAddr,
    service: &str,
    metrics: Metrics,
    health: HealthFn,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = ServerState {
        metrics,
        health,
        service: service.to_owned(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .with_state(state);
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "Metrics server stopped with an error.");
        }
    });
    Ok(local)
}

async fn metrics_handler(State(state): State<ServerState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn health_handler(State(state): State<ServerState>) -> Response {
    let report = HealthReport::new(&state.service, (state.health)().await);
    let code = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

//! Periodic health of a runtime: runs its checks, sets the `runtime_health`
//! gauge and the `runtime_health` hash in Redis (field = runtime id, value
//! `healthy` / `unhealthy`; CONTRACT §2), and removes its field on shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CheckResult, HealthFn, HealthReport, Metrics};
use crate::names;
use crate::types::unix_now;

/// Hash next to `runtime_health`: field = runtime id, value = Unix time of the
/// last report, so readers can tell a stale entry.
pub const RUNTIME_HEARTBEAT: &str = "runtime_heartbeat";

/// The id a runtime registers under: `<runtime>@<consumer>`.
pub fn runtime_id(runtime: &str, consumer: &str) -> String {
    format!("{runtime}@{consumer}")
}

/// Runs `health` every `every` until `shutdown`; then deletes the runtime's
/// fields. Returns the join handle of the loop.
pub fn spawn_health_loop(
    conn: ConnectionManager,
    runtime: &'static str,
    runtime_id: String,
    metrics: Metrics,
    health: HealthFn,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let gauge = metrics.runtime_health.with_label_values(&[runtime]);
        loop {
            let report = HealthReport::new(runtime, health().await);
            gauge.set(i64::from(report.healthy()));
            let mut c = conn.clone();
            let status = if report.healthy() {
                "healthy"
            } else {
                "unhealthy"
            };
            let r: redis::RedisResult<()> = redis::pipe()
                .hset(names::RUNTIME_HEALTH, &runtime_id, status)
                .ignore()
                .hset(RUNTIME_HEARTBEAT, &runtime_id, format!("{:.3}", unix_now()))
                .ignore()
                .query_async(&mut c)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "Could not publish runtime health.");
            }
            if !report.healthy() {
                tracing::warn!(checks = ?report.checks, "Runtime unhealthy.");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let mut c = conn.clone();
        let _: redis::RedisResult<()> = c.hdel(names::RUNTIME_HEALTH, &runtime_id).await;
        let _: redis::RedisResult<()> = c.hdel(RUNTIME_HEARTBEAT, &runtime_id).await;
    })
}

/// The health function of a runtime: Redis answers PING (check `redis`)
/// and `check` passes (check `name`); both run at once.
pub fn redis_and<F, Fut>(conn: ConnectionManager, name: &'static str, check: F) -> HealthFn
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || {
        let conn = conn.clone();
        let other = check();
        Box::pin(async move {
            let (redis, other) = tokio::join!(check_redis(&conn), other);
            BTreeMap::from([
                ("redis".to_owned(), CheckResult::from_result(redis)),
                (name.to_owned(), CheckResult::from_result(other)),
            ])
        })
    })
}

/// A check that Redis answers and accepts writes: a Redis out of
/// memory (`maxmemory` reached with `noeviction`) answers PING but refuses
/// every write that grows memory, so nothing new can be queued or recorded.
pub async fn check_redis(conn: &ConnectionManager) -> Result<(), String> {
    let mut c = conn.clone();
    // One command: it answers only when Redis is up, and is refused when it
    // is out of memory. XX: the key is never created.
    let mut probe = redis::cmd("SET");
    probe.arg(names::HEALTH_WRITE_PROBE).arg(1).arg("XX");
    let probe = probe.query_async::<Option<String>>(&mut c);
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if crate::error::is_oom(&e) => Err(format!(
            "redis: out of memory: it refuses writes (maxmemory reached); raise maxmemory or free memory ({e})"
        )),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err("redis: no answer within 2 s".to_owned()),
    }
}

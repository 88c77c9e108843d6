//! `/health` and the `runtime_health` report: healthy = Redis answers PING
//! and nsjail runs a trivial program. The nsjail probe (≈ 20 ms) is cached
//! for a few seconds so frequent scrapes do not spawn a jail each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adp_core::health::redis_and;
use adp_core::metrics::{CheckResult, HealthFn};
use redis::aio::ConnectionManager;

use crate::executor::Sandbox;
use crate::limits::LimitMode;

/// How long one nsjail probe result is reused.
pub const PROBE_TTL: Duration = Duration::from_secs(5);

/// The cached nsjail probe.
pub struct SandboxProbe {
    sandbox: Sandbox,
    ttl: Duration,
    // A tokio mutex on purpose: concurrent checks wait for the one probe in
    // flight instead of each starting a jail.
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl SandboxProbe {
    pub fn new(sandbox: Sandbox, ttl: Duration) -> Self {
        SandboxProbe {
            sandbox,
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < self.ttl {
                return result.clone();
            }
        }
        let result = self.sandbox.probe().await;
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// The health function: checks `redis` and `nsjail`, and reports how the
/// jails' limits are enforced as `jail_limits` (never failing: a degraded
/// mode is said in its `detail`, starting with `degraded:`).
pub fn health_fn(
    conn: ConnectionManager,
    probe: Arc<SandboxProbe>,
    limits: &LimitMode,
) -> HealthFn {
    let checks = redis_and(conn, "nsjail", move || {
        let probe = probe.clone();
        async move { probe.check().await }
    });
    let detail = match limits {
        LimitMode::Rlimits { reason } => {
            format!("degraded: rlimits only, no cgroup limits the whole jail ({reason})")
        }
        mode => format!("{}: memory and processes limited per jail", mode.name()),
    };
    Arc::new(move || {
        let checks = checks();
        let detail = detail.clone();
        Box::pin(async move {
            let mut map = checks.await;
            map.insert("jail_limits".to_owned(), CheckResult::ok_with(detail));
            map
        })
    })
}

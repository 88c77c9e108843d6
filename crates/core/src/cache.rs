//! Template cache in plan mode (CONTRACT §2): keeps the *plan* a policy
//! produced (code, browser actions), never a result. A hit saves the LLM
//! calls; the runtime still executes the plan for real.
//!
//! A Redis failure here is logged and counted as a miss; it never fails a task.

use std::time::Duration;

use md5::{Digest, Md5};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::names::TEMPLATE_CACHE_PREFIX;
use crate::types::TaskType;

/// `template_cache:{md5 hex of "<task_type>:<description lowercased and trimmed>"}`.
pub fn cache_key(task_type: TaskType, description: &str) -> String {
    let normalized = format!(
        "{}:{}",
        task_type.as_str(),
        description.trim().to_lowercase()
    );
    let digest = Md5::digest(normalized.as_bytes());
    format!("{TEMPLATE_CACHE_PREFIX}{}", hex::encode(digest))
}

/// The plan cache of one runtime.
#[derive(Clone)]
pub struct TemplateCache {
    conn: Option<ConnectionManager>,
    ttl: Duration,
    metrics: Metrics,
    cache_type: &'static str,
}

impl TemplateCache {
    /// `conn = None` disables the cache (`CACHE_MODE=off`): every lookup misses
    /// without counting.
    pub fn new(
        conn: Option<ConnectionManager>,
        ttl: Duration,
        metrics: Metrics,
        cache_type: &'static str,
    ) -> Self {
        metrics.init_cache(cache_type);
        TemplateCache {
            conn,
            ttl,
            metrics,
            cache_type,
        }
    }

    pub fn enabled(&self) -> bool {
        self.conn.is_some()
    }

    /// Looks up the plan for a task; `None` on a miss, a disabled cache, a
    /// Redis error or an undecodable entry.
    pub async fn get<T: DeserializeOwned>(
        &self,
        task_type: TaskType,
        description: &str,
    ) -> Option<T> {
        let mut conn = self.conn.clone()?;
        let key = cache_key(task_type, description);
        let found: Option<T> = match conn.get::<_, Option<String>>(&key).await {
            Ok(Some(raw)) => match serde_json::from_str(&raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "Undecodable cache entry; treating as a miss.");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "Cache lookup failed; treating as a miss.");
                None
            }
        };
        let counter = if found.is_some() {
            &self.metrics.cache_hits_total
        } else {
            &self.metrics.cache_misses_total
        };
        counter.with_label_values(&[self.cache_type]).inc();
        found
    }

    /// Stores a plan with the TTL. Errors are logged, never returned.
    pub async fn put<T: Serialize>(&self, task_type: TaskType, description: &str, plan: &T) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        let key = cache_key(task_type, description);
        let raw = match serde_json::to_string(plan) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "Could not encode plan for the cache.");
                return;
            }
        };
        let ttl = self.ttl.as_secs().max(1);
        if let Err(e) = conn.set_ex::<_, _, ()>(&key, raw, ttl).await {
            tracing::warn!(key = %key, error = %e, "Cache store failed; continuing without it.");
        }
    }
}

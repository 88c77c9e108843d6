//! Template cache in plan mode (CONTRACT §2): keeps the *plan* a policy
//! produced (code, browser actions), never a result. A hit saves the LLM
//! calls; the runtime still executes the plan for real.
//!
//! A plan answers only for the policy that made it: the key also holds the
//! runtime's policy (model endpoint, model, tool mode, sampling settings; see
//! [`TemplateCache::with_llm`]), the task's `constraints.sampling` and the
//! runtime's execution variant ([`TemplateCache::with_variant`]: a stateful
//! sandbox session, whose plans may rely on state an earlier step left). When
//! the model is discovered from the endpoint (no `LLM_MODEL`), the cache is
//! used only once the model is known, so a new model served behind the same
//! endpoint never gets the old model's plans. A
//! rollout of a task sampled several times never uses the cache (each
//! rollout is an independent sample), nor stores into it.
//!
//! A Redis failure here is logged and counted as a miss; it never fails a task.

use std::time::Duration;

use md5::{Digest, Md5};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::llm::{LlmClient, LlmConfig};
use crate::metrics::Metrics;
use crate::names::TEMPLATE_CACHE_PREFIX;
use crate::types::{TaskSpec, TaskType};

/// `template_cache:{md5 hex of "<task_type>:<description lowercased and trimmed>"}`:
/// the key of the offline policy (no model, no sampling settings).
pub fn cache_key(task_type: TaskType, description: &str) -> String {
    policy_cache_key(task_type, description, "")
}

/// The key of a plan made by `policy` (empty: the offline policy, whose key
/// is [`cache_key`]): md5 of `"<task_type>:<description>"`, then a newline
/// and `policy` when there is one.
pub fn policy_cache_key(task_type: TaskType, description: &str, policy: &str) -> String {
    let mut normalized = format!(
        "{}:{}",
        task_type.as_str(),
        description.trim().to_lowercase()
    );
    if !policy.is_empty() {
        normalized.push('\n');
        normalized.push_str(policy);
    }
    let digest = Md5::digest(normalized.as_bytes());
    format!("{TEMPLATE_CACHE_PREFIX}{}", hex::encode(digest))
}

/// The part of the cache key naming a model policy: endpoint, `model`, tool
/// mode and sampling settings. Plans of another model or other settings never match.
pub fn llm_policy(cfg: &LlmConfig, model: &str) -> String {
    format!(
        "openai|{}|{}|tools={:?}|sampling={}",
        cfg.api_root(),
        model,
        cfg.tool_mode,
        serde_json::to_string(&cfg.sampling).unwrap_or_default()
    )
}

/// The plan cache of one runtime.
#[derive(Clone)]
pub struct TemplateCache {
    conn: Option<ConnectionManager>,
    /// The runtime's policy, part of every key ([`llm_policy`]; empty: offline).
    policy: String,
    /// The model client whose policy makes the plans ([`Self::with_llm`]).
    llm: Option<LlmClient>,
    /// How the runtime executes plans, when that changes what a plan may
    /// rely on ([`Self::with_variant`]; empty: nothing to add).
    variant: String,
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
            policy: String::new(),
            llm: None,
            variant: String::new(),
            ttl,
            metrics,
            cache_type,
        }
    }

    /// Plans are made (and looked up) for `policy` (empty for the offline
    /// policy; a model policy: [`Self::with_llm`]).
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = policy.into();
        self.llm = None;
        self
    }

    /// Plans are made (and looked up) for the model policy of `llm` (none:
    /// the offline policy): [`llm_policy`] of its settings and its model —
    /// configured, or once discovered; until then the cache is not used.
    pub fn with_llm(mut self, llm: Option<&LlmClient>) -> Self {
        self.policy = String::new();
        self.llm = llm.cloned();
        self
    }

    /// Plans are made (and looked up) for runs executed as `variant` (say
    /// `session=stateful`: the steps share one interpreter, so a plan may use
    /// a variable an earlier step defined, which a run with a fresh
    /// interpreter per step must never replay). Empty: the plain key.
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = variant.into();
        self
    }

    /// The policy part of the key; `None` while the model is not known yet.
    fn policy(&self) -> Option<String> {
        match &self.llm {
            None => Some(self.policy.clone()),
            Some(llm) => llm
                .known_model()
                .map(|model| llm_policy(llm.config(), &model)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.conn.is_some()
    }

    /// The key of `task`'s plan under this cache's policy, or `None` when
    /// the task must not use the cache (a rollout of a sampled task, or a
    /// model policy whose model is not discovered yet).
    pub fn key_for(&self, task: &TaskSpec) -> Option<String> {
        if task.rollout.is_some() {
            return None;
        }
        let mut policy = self.policy()?;
        if let Some(sampling) = task.constraints.get("sampling") {
            if !policy.is_empty() {
                policy.push_str("|sampling=");
                policy.push_str(&sampling.to_string());
            }
        }
        if !self.variant.is_empty() {
            if !policy.is_empty() {
                policy.push('|');
            }
            policy.push_str(&self.variant);
        }
        Some(policy_cache_key(task.task_type, &task.description, &policy))
    }

    /// Looks up the plan for a task; `None` on a miss, a disabled cache, a
    /// rollout, a Redis error or an undecodable entry.
    pub async fn get<T: DeserializeOwned>(&self, task: &TaskSpec) -> Option<T> {
        let mut conn = self.conn.clone()?;
        let key = self.key_for(task)?;
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

    /// Stores a plan with the TTL (not for a rollout). Errors are logged,
    /// never returned.
    pub async fn put<T: Serialize>(&self, task: &TaskSpec, plan: &T) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        let Some(key) = self.key_for(task) else {
            return;
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task(description: &str) -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "task_id": "t1",
            "task_type": "code",
            "description": description,
        }))
        .expect("task")
    }

    fn cache() -> TemplateCache {
        TemplateCache::new(None, Duration::from_secs(60), Metrics::new(), "code")
    }

    #[test]
    fn the_variant_is_part_of_the_key() {
        let t = task("Sum the numbers");
        let plain = cache().key_for(&t).expect("key");
        assert_eq!(plain, cache_key(TaskType::Code, "Sum the numbers"));
        let stateful = cache().with_variant("session=stateful").key_for(&t);
        assert!(stateful.is_some());
        assert_ne!(stateful.as_deref(), Some(plain.as_str()));
        assert_eq!(
            stateful,
            cache().with_variant("session=stateful").key_for(&t),
            "stable"
        );
        let llm = cache().with_policy("openai|m");
        assert_ne!(
            llm.clone().with_variant("session=stateful").key_for(&t),
            llm.key_for(&t),
            "a model policy's key holds the variant too"
        );
    }
}

//! Queue statistics (`queue_size`, `pending_lag_seconds`,
//! `dead_requeued_total`) refreshed every few seconds, and backpressure.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use adp_core::metrics::Metrics;
use adp_core::names;
use adp_core::queue::{Queue, ACTIVE_WITHIN};
use adp_core::types::TaskType;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

/// Refreshes the queue gauges until `stop`.
pub async fn stats_loop(queue: Queue, metrics: Metrics, every: Duration, stop: CancellationToken) {
    let mut warned: HashSet<&'static str> = HashSet::new();
    loop {
        if let Err(e) = refresh(&queue, &metrics).await {
            tracing::debug!(error = %e, "Could not refresh queue statistics.");
        }
        if let Err(e) = refresh_consumers(&queue, &metrics, &mut warned).await {
            tracing::debug!(error = %e, "Could not refresh consumer statistics.");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One refresh of the queue gauges.
pub async fn refresh(queue: &Queue, metrics: &Metrics) -> adp_core::Result<()> {
    let mut lag_by_runtime: HashMap<&str, f64> = HashMap::new();
    for t in TaskType::ALL {
        let stream = t.stream();
        let backlog = queue.backlog(stream).await?;
        metrics
            .queue_size
            .with_label_values(&[stream])
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        let age = queue.oldest_unacked_age(stream).await?;
        let slot = lag_by_runtime.entry(t.runtime()).or_insert(0.0);
        *slot = slot.max(age);
    }
    for (runtime, age) in lag_by_runtime {
        metrics
            .pending_lag_seconds
            .with_label_values(&[runtime])
            .set(age);
    }
    let mut conn = queue.conn();
    let dead: u64 = conn.xlen(names::STREAM_DEAD).await?;
    metrics
        .queue_size
        .with_label_values(&[names::STREAM_DEAD])
        .set(i64::try_from(dead).unwrap_or(i64::MAX));
    let counters: HashMap<String, i64> = conn.hgetall(names::COUNTERS).await?;
    for (field, value) in counters {
        if let Some(stream) = field.strip_prefix("dead_requeued:") {
            metrics
                .dead_requeued_total
                .with_label_values(&[stream])
                .set(value);
        }
    }
    Ok(())
}

/// `queue_active_consumers` and `queue_unserved_seconds` (from Redis:
/// [`Queue::service`]); logs once when a stream has had unacknowledged
/// entries and no active consumer for [`ACTIVE_WITHIN`], and again once it
/// is served.
async fn refresh_consumers(
    queue: &Queue,
    metrics: &Metrics,
    warned: &mut HashSet<&'static str>,
) -> adp_core::Result<()> {
    for t in TaskType::ALL {
        let stream = t.stream();
        let s = queue.service(stream).await?;
        metrics
            .queue_active_consumers
            .with_label_values(&[stream])
            .set(i64::try_from(s.active).unwrap_or(i64::MAX));
        metrics
            .queue_unserved_seconds
            .with_label_values(&[stream])
            .set(s.unserved_secs);
        if s.unserved_secs >= ACTIVE_WITHIN.as_secs_f64() {
            if warned.insert(stream) {
                tracing::warn!(queue = stream, runtime = t.runtime(), backlog = s.backlog, consumers = s.consumers, unserved_secs = s.unserved_secs.round(), "Entries are waiting and no consumer has read this stream for a minute or more: is the runtime of this task type running? Other task types are not held up.");
            }
        } else if s.unserved_secs == 0.0 && warned.remove(stream) {
            tracing::info!(queue = stream, "The stream is served again.");
        }
    }
    Ok(())
}

/// Per task type: how many more entries its stream may take before its
/// backlog reaches MAX_BACKLOG. A full stream pauses only its own type.
pub struct Backpressure {
    max: u64,
    /// Last measured backlog per type, plus what we added since.
    known: HashMap<TaskType, (u64, Instant)>,
    paused: HashSet<TaskType>,
}

impl Backpressure {
    pub fn new(max: u64) -> Self {
        Backpressure {
            max,
            known: HashMap::new(),
            paused: HashSet::new(),
        }
    }

    /// Counts `n` entries added to a type's stream since the last measurement.
    pub fn added(&mut self, t: TaskType, n: u64) {
        if let Some((b, _)) = self.known.get_mut(&t) {
            *b += n;
        }
    }

    /// Whether [`Self::room`] would answer from the last measurement
    /// (younger than 500 ms and not full) without asking Redis.
    pub fn is_fresh(&self, t: TaskType) -> bool {
        self.known
            .get(&t)
            .is_some_and(|(n, at)| *n < self.max && at.elapsed() < Duration::from_millis(500))
    }

    /// Entries the type's stream may still take (0: paused). Measured again
    /// when the last measurement is older than 500 ms or says full; a
    /// Redis error reads as full.
    pub async fn room(&mut self, queue: &Queue, t: TaskType) -> u64 {
        if !self.is_fresh(t) {
            match queue.backlog(t.stream()).await {
                Ok(n) => {
                    self.known.insert(t, (n, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = t.stream(), "Cannot read the backlog; retrying.");
                    self.known.remove(&t);
                    return 0;
                }
            }
        }
        let backlog = self.known.get(&t).map_or(0, |(n, _)| *n);
        let room = self.max.saturating_sub(backlog);
        if room == 0 && self.paused.insert(t) {
            tracing::info!(
                queue = t.stream(),
                backlog,
                max_backlog = self.max,
                "Backlog over MAX_BACKLOG; this task type is paused (its lines are held in order), the others go on."
            );
        } else if room > 0 && self.paused.remove(&t) {
            tracing::info!(
                queue = t.stream(),
                "Backlog below MAX_BACKLOG again; this task type resumed."
            );
        }
        room
    }

    /// Whether a type is paused as far as the last measurement knows.
    pub fn is_paused(&self, t: TaskType) -> bool {
        self.paused.contains(&t)
    }
}

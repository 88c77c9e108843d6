//! Queue statistics (`queue_size`, `pending_lag_seconds`,
//! `dead_requeued_total`) refreshed every few seconds, and backpressure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use adp_core::metrics::Metrics;
use adp_core::names;
use adp_core::queue::Queue;
use adp_core::types::TaskType;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

/// Refreshes the queue gauges until `stop`.
pub async fn stats_loop(queue: Queue, metrics: Metrics, every: Duration, stop: CancellationToken) {
    loop {
        if let Err(e) = refresh(&queue, &metrics).await {
            tracing::debug!(error = %e, "Could not refresh queue statistics.");
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

/// Pauses dispatching while a target stream's backlog is over the limit.
pub struct Backpressure {
    max: u64,
    /// Last measured backlog per stream, plus what we added since.
    known: HashMap<TaskType, (u64, Instant)>,
    paused: bool,
}

impl Backpressure {
    pub fn new(max: u64) -> Self {
        Backpressure {
            max,
            known: HashMap::new(),
            paused: false,
        }
    }

    /// Counts a task added to a stream since the last measurement.
    pub fn added(&mut self, t: TaskType) {
        if let Some((n, _)) = self.known.get_mut(&t) {
            *n += 1;
        }
    }

    /// Waits until every stream in `streams` is under the limit. Returns
    /// false if `shutdown` fired while waiting.
    pub async fn wait(
        &mut self,
        queue: &Queue,
        streams: &[TaskType],
        shutdown: &CancellationToken,
    ) -> bool {
        loop {
            let mut over = None;
            for &t in streams {
                let fresh = self.known.get(&t).is_some_and(|(n, at)| {
                    *n < self.max && at.elapsed() < Duration::from_millis(500)
                });
                if !fresh {
                    match queue.backlog(t.stream()).await {
                        Ok(n) => {
                            self.known.insert(t, (n, Instant::now()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot read the backlog; retrying.");
                            self.known.remove(&t);
                            over = Some((t, u64::MAX));
                            break;
                        }
                    }
                }
                let n = self.known.get(&t).map_or(0, |(n, _)| *n);
                if n >= self.max {
                    over = Some((t, n));
                    break;
                }
            }
            let Some((t, n)) = over else {
                if self.paused {
                    tracing::info!("Backlog below MAX_BACKLOG again; dispatching resumed.");
                    self.paused = false;
                }
                return true;
            };
            if !self.paused && n != u64::MAX {
                tracing::info!(
                    queue = t.stream(),
                    backlog = n,
                    max_backlog = self.max,
                    "Backlog over MAX_BACKLOG; dispatching paused."
                );
                self.paused = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}

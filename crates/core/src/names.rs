//! Every Redis name the platform uses, in one place (CONTRACT §2).
//!
//! Nobody else writes a stream, group or key name as a string literal.

/// Stream of `code` tasks, consumed by sandbox-runtime.
pub const STREAM_CODE: &str = "tasks:code";
/// Stream of `web` tasks, consumed by web-runtime.
pub const STREAM_WEB: &str = "tasks:web";
/// Stream of `reasoning` tasks, consumed by sandbox-runtime.
pub const STREAM_REASONING: &str = "tasks:reasoning";
/// Dead letters: entries that failed delivery `MAX_DELIVERIES` times.
pub const STREAM_DEAD: &str = "tasks:dead";
/// The task streams (not the dead-letter stream).
pub const TASK_STREAMS: [&str; 3] = [STREAM_CODE, STREAM_WEB, STREAM_REASONING];
/// The one consumer group on every stream.
pub const GROUP: &str = "workers";

/// Set of every `task_id` dispatched before runs existed: read (never
/// written) as part of the default run's record, until `adp runs prune default`.
pub const DISPATCHED_IDS: &str = "dispatcher:dispatched_ids";
/// Prefix of the dispatcher's per-file checkpoint: `<prefix><md5 of path>` for
/// the default run, `<prefix><run_id>:<md5 of path>` for a named run.
pub const DISPATCHER_CHECKPOINT_PREFIX: &str = "dispatcher:checkpoint:";
/// Set of every run id the dispatcher has dispatched for.
pub const RUNS: &str = "dispatcher:runs";
/// Prefix of a run's counters hash (`<prefix><run_id>`): `tasks`, `entries`,
/// `conflicts`, `created_at`, `updated_at`.
pub const RUN_PREFIX: &str = "dispatcher:run:";
/// Prefix of a run's id record buckets (`<prefix><run_id>:<bucket hex>`).
pub const RUN_IDS_PREFIX: &str = "dispatcher:ids:";
/// Buckets of a run's id record (hashes of 64-bit id hash -> content hash).
pub const RUN_ID_BUCKETS: u32 = 1 << 16;

/// A run's counters hash.
pub fn run_key(run_id: &str) -> String {
    format!("{RUN_PREFIX}{run_id}")
}

/// One bucket of a run's id record.
pub fn run_ids_key(run_id: &str, bucket: u32) -> String {
    format!("{RUN_IDS_PREFIX}{run_id}:{bucket:04x}")
}

/// The checkpoint of a task file (`path_md5`: md5 hex of its canonical path) in a run.
pub fn checkpoint_key(run_id: &str, path_md5: &str) -> String {
    if run_id == crate::runs::DEFAULT_RUN {
        format!("{DISPATCHER_CHECKPOINT_PREFIX}{path_md5}")
    } else {
        format!("{DISPATCHER_CHECKPOINT_PREFIX}{run_id}:{path_md5}")
    }
}
/// Hash: field = runtime id, value `healthy` / `unhealthy`.
pub const RUNTIME_HEALTH: &str = "runtime_health";
/// Key the health check writes with `SET ... XX`: never created (XX sets
/// only an existing key), but refused like any write while Redis is out of
/// memory — so `/health` sees that state without storing anything.
pub const HEALTH_WRITE_PROBE: &str = "adp:health:write_probe";
/// Prefix of template cache entries (CONTRACT §2).
pub const TEMPLATE_CACHE_PREFIX: &str = "template_cache:";
/// Prefix of the per-entry list of infrastructure errors (`<prefix><stream>:<entry id>`).
pub const INFRA_ERRORS_PREFIX: &str = "infra_errors:";
/// Hash of counters kept by the platform (requeued dead letters, ...), field = counter name.
pub const COUNTERS: &str = "adp:counters";

/// Fields of a stream entry.
pub const FIELD_TASK: &str = "task";
pub const FIELD_SUBMITTED_AT: &str = "submitted_at";
pub const FIELD_PRIORITY: &str = "priority";
/// Fields added to an entry of `tasks:dead`.
pub const FIELD_SOURCE_STREAM: &str = "source_stream";
pub const FIELD_SOURCE_ID: &str = "source_id";
pub const FIELD_DELIVERIES: &str = "deliveries";
pub const FIELD_REASON: &str = "reason";
pub const FIELD_DEAD_AT: &str = "dead_at";

/// Key of the list of infrastructure errors recorded for one stream entry.
pub fn infra_errors_key(stream: &str, entry_id: &str) -> String {
    format!("{INFRA_ERRORS_PREFIX}{stream}:{entry_id}")
}

/// Field of an entry put back on its stream by `adp dead requeue`: the id of
/// the `tasks:dead` entry it came from.
pub const FIELD_REQUEUED_FROM: &str = "requeued_from";

/// Field of [`COUNTERS`]: dead letters `adp dead requeue` put back on `stream`
/// (exported by the dispatcher as `dead_requeued_total{queue_name}`).
pub fn dead_requeued_counter(stream: &str) -> String {
    format!("dead_requeued:{stream}")
}

/// Field of [`COUNTERS`]: tasks `adp replay` re-enqueued on `stream`.
pub fn replayed_counter(stream: &str) -> String {
    format!("replayed:{stream}")
}

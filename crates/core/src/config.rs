//! Configuration pieces every binary shares, tracing set-up, the shutdown
//! signal and Redis connections that survive a Redis restart.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// Exit code for a bad configuration value (EX_USAGE / EX_CONFIG family).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Redis server holding the streams.
    #[arg(long, env = "REDIS_URL", default_value = "redis://localhost:6379")]
    pub redis_url: String,
    /// Directory for trajectories/ and rejected.jsonl.
    #[arg(long, env = "OUTPUT_DIR", default_value = "output")]
    pub output_dir: PathBuf,
    /// Address the metrics/health server binds to.
    #[arg(long, env = "METRICS_HOST", default_value = "0.0.0.0")]
    pub metrics_host: std::net::IpAddr,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Settings of a runtime's queue consumer.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Deliveries of one entry before it is dead-lettered to tasks:dead.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_deliveries: u32,
    /// Seconds an entry may sit un-heartbeated with a consumer before another
    /// consumer re-claims it (a live worker heartbeats its entries).
    #[arg(long, env = "CLAIM_IDLE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub claim_idle_secs: u64,
    /// First retry delay after an infrastructure failure, in milliseconds;
    /// doubles per attempt up to 60 s, each delay jittered (50-100 %).
    #[arg(long, env = "RETRY_BACKOFF_MS", default_value_t = 1000)]
    pub retry_backoff_ms: u64,
    /// Seconds an entry whose attempts fail on infrastructure (LLM endpoint,
    /// nsjail, browser, disk) keeps being retried before it may be
    /// dead-lettered: it needs MAX_DELIVERIES attempts *and* this long since
    /// its first failure, so a shorter outage dead-letters nothing.
    #[arg(long, env = "INFRA_RETRY_WINDOW_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub infra_retry_window_secs: u64,
    /// Seconds running tasks get to finish after SIGTERM before they are
    /// abandoned un-acked (another replica re-claims them).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Longest time one XREADGROUP waits for new entries, in milliseconds.
    #[arg(long, env = "READ_BLOCK_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=60000))]
    pub read_block_ms: u64,
    /// Milliseconds a finished trajectory waits for others to be made
    /// durable together with it (group commit: one directory fsync and the
    /// shared file-system blocks written once per group); 0 commits what is
    /// waiting at once.
    #[arg(long, env = "WRITE_GATHER_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub write_gather_ms: u64,
}

/// Settings both agent runtimes share: the template cache's entry lifetime
/// and the health report interval.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Lifetime of a cache entry in seconds.
    #[arg(long, env = "CACHE_TTL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub cache_ttl: u64,
    /// Seconds between two health reports to the `runtime_health` hash.
    #[arg(long, env = "HEALTH_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub health_interval_secs: u64,
}

impl RuntimeArgs {
    /// Lifetime of a template cache entry.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl)
    }

    /// Time between two health reports.
    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.health_interval_secs)
    }
}

/// Parses `T` from the command line and environment. `--help`/`--version`
/// print and exit 0; a bad value prints a one-line error and exits 64.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_BAD_CONFIG,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Installs the global tracing subscriber (`RUST_LOG`, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A token cancelled on the first SIGTERM or SIGINT. The handlers are in
/// place when this returns (not only once the runtime first polls a task:
/// on a current-thread runtime that is after the caller's next await, and a
/// SIGTERM before it killed the process instead of stopping it cleanly).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let signals = Signals::listen();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("Shutdown signal received; finishing in-flight work.");
        t.cancel();
    });
    token
}

/// The stop signals, listened for from creation on.
#[cfg(unix)]
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, signal = name, "Cannot listen for this signal; it stops the process without finishing in-flight work.");
                None
            }
        };
        Signals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn recv(mut self) {
        async fn next(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(self.term.as_mut()) => {}
            _ = next(self.int.as_mut()) => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn listen() -> Self {
        Signals
    }

    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Response timeout of ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A reconnecting connection for ordinary (non-blocking) commands. Commands
/// fail while Redis is down and work again once it is back.
pub async fn connect(redis_url: &str) -> Result<ConnectionManager> {
    connect_with(redis_url, Some(COMMAND_TIMEOUT)).await
}

/// A reconnecting connection for one blocking reader (`XREADGROUP ... BLOCK`):
/// no response timeout shorter than the block, and not shared with anybody.
pub async fn connect_blocking(redis_url: &str, block: Duration) -> Result<ConnectionManager> {
    connect_with(redis_url, Some(block + COMMAND_TIMEOUT)).await
}

async fn connect_with(
    redis_url: &str,
    response_timeout: Option<Duration>,
) -> Result<ConnectionManager> {
    let client = redis::Client::open(redis_url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(response_timeout)
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// Connects, retrying with backoff until it works or `shutdown` fires
/// (returns `None` then). Used at start-up so a service started before Redis
/// waits for it instead of exiting.
pub async fn connect_retrying(
    redis_url: &str,
    response_timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> Option<ConnectionManager> {
    let mut delay = Duration::from_millis(200);
    loop {
        match connect_with(redis_url, response_timeout).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(redis_url = %redact_url(redis_url), error = %e, retry_in_ms = delay.as_millis() as u64, "Redis not reachable yet; retrying.");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// `redis://:secret@host` → `redis://***@host`, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// This process's consumer name: `<host>-<pid>` (CONTRACT §2).
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

//! `web-runtime`: see the library part for what it does.

use adp_core::config::{init_tracing, parse_or_exit, shutdown_token};
use web_runtime::config::Config;

/// chromiumoxide logs every CDP event its (older) protocol revision cannot
/// parse at WARN ("WS Invalid message"); harmless (PITFALLS.md) and noisy.
const QUIET_CDP: &str = "chromiumoxide::handler=error,chromiumoxide::conn=error";

fn main() {
    // Before any thread exists: keep the operator's RUST_LOG, add the quiet
    // CDP directives unless it already says something about chromiumoxide.
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if f.contains("chromiumoxide") => f,
        Ok(f) if !f.trim().is_empty() => format!("{f},{QUIET_CDP}"),
        _ => format!("info,{QUIET_CDP}"),
    };
    std::env::set_var("RUST_LOG", filter);
    let config: Config = parse_or_exit();
    // One thread, as the sandbox runtime: the work here is waiting on CDP,
    // Redis and the egress proxy's sockets while Chromium uses the CPUs;
    // worker threads only added futex wake-ups (about half of this
    // process's CPU time in a profile of scripts/bench_web.sh).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("web-runtime: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        init_tracing(config.common.log_format);
        let shutdown = shutdown_token();
        if let Err(e) = web_runtime::run(config, shutdown).await {
            tracing::error!(error = format!("{e:#}"), "web-runtime failed.");
            std::process::exit(1);
        }
    });
}

//! `web-runtime`: see the library part for what it does.

use adp_core::config::{init_tracing, parse_or_exit, shutdown_token};
use web_runtime::config::Config;

#[tokio::main]
async fn main() {
    let config: Config = parse_or_exit();
    init_tracing(config.common.log_format);
    let shutdown = shutdown_token();
    if let Err(e) = web_runtime::run(config, shutdown).await {
        tracing::error!(error = format!("{e:#}"), "web-runtime failed.");
        std::process::exit(1);
    }
}

//! `dispatcher`: task file → Redis Streams. See `dispatcher --help`.

use adp_core::config;
use dispatcher::Config;

#[tokio::main]
async fn main() {
    let cfg: Config = config::parse_or_exit();
    config::init_tracing(cfg.common.log_format);
    let follow = cfg.follow;
    let shutdown = config::shutdown_token();
    match dispatcher::run(cfg, shutdown).await {
        Ok(summary) => {
            if !follow {
                println!("{summary}");
            }
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Dispatcher failed.");
            eprintln!("dispatcher: {e:#}");
            std::process::exit(1);
        }
    }
}

//! `sandbox-runtime`: see the library part for what it does.

use adp_core::config::{init_tracing, parse_or_exit, shutdown_token};
use sandbox_runtime::config::Config;
use sandbox_runtime::executor::Sandbox;

// One thread: the runtime only waits (on jails, Redis, the disk through the
// blocking pool), and the jails need every CPU. A multi-threaded scheduler
// cost ~4 % of throughput in wake-ups between its workers (README, "Performance").
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config: Config = parse_or_exit();
    if config.print_jail_command {
        let sandbox = Sandbox::new(config.sandbox.to_config());
        let secs = config.sandbox.sandbox_step_timeout_secs;
        println!("{}", sandbox.config().nsjail_path.display());
        for arg in sandbox.jail_args(secs) {
            println!("{}", arg.to_string_lossy());
        }
        return;
    }
    init_tracing(config.common.log_format);
    let shutdown = shutdown_token();
    if let Err(e) = sandbox_runtime::run(config, shutdown).await {
        tracing::error!(error = format!("{e:#}"), "sandbox-runtime failed to start.");
        std::process::exit(1);
    }
}

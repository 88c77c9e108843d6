//! `adp`: parse the command line (usage errors exit 2, as clap does), set up
//! logging to stderr (`RUST_LOG`, default `warn`), run the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = adp_cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("adp: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(adp_cli::run(cli))
}

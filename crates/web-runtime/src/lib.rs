//! # web-runtime
//!
//! The browser agent of the Agent Data Platform: consumes `tasks:web`, drives
//! one headless Chromium over CDP (chromiumoxide), writes one trajectory per
//! task (CONTRACT §3, §5).
//!
//! # Layout
//! * [`config`]: the clap settings of the binary.
//! * [`browser`]: the Chromium instance, contexts/pages per task, crash and
//!   hang recovery, shutdown.
//! * [`guard`]: where the browser may go (URL and IP rules).
//! * [`intercept`]: CDP `Fetch` interception applying [`guard`] to every request.
//! * [`egress`]: the SOCKS5 egress proxy applying [`guard`] to every connection.
//! * [`resolver`]: the bounded DNS lookups of those checks (a share per page).
//! * [`page`]: a page's navigation/network state and settle waits.
//! * [`actions`]: the action grammar; [`exec`]: performing an action.
//! * [`observe`]: observations (title, URL, text, numbered elements);
//!   [`axtree`]: the accessibility-tree view with stable element ids.
//! * [`js`]: the JavaScript run in pages (observe, act, navigate).
//! * [`metrics`]: the runtime's metrics beyond CONTRACT §7.
//! * [`policy`]: scripted, openai and heuristic policies.
//! * [`agent`]: one task from start to trajectory ([`agent::WebHandler`]).
//! * [`runtime`]: `run(config, shutdown)`: worker, metrics, health.

pub mod actions;
pub mod agent;
pub mod axtree;
pub mod browser;
pub mod config;
pub mod egress;
pub mod exec;
pub mod guard;
pub mod intercept;
pub mod js;
pub mod marks;
pub mod metrics;
pub mod observe;
pub mod page;
pub mod policy;
pub mod resolver;
pub mod runtime;

pub use runtime::{run, start, Running};

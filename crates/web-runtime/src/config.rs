//! Settings of the `web-runtime` binary: every one a flag and an environment
//! variable with a default; a bad value exits 64 before any work.

use std::path::PathBuf;
use std::time::Duration;

use adp_core::config::{CommonArgs, RuntimeArgs, WorkerArgs};
use adp_core::llm::LlmArgs;
use clap::{ArgAction, Parser, ValueEnum};

use crate::agent::AgentSettings;
use crate::browser::{BrowserSettings, SandboxMode, DEFAULT_CHROME_PATH};
use crate::guard::{parse_allow_list, parse_cidr_list, AllowHost, Cidr, Policy};
use crate::observe::ObservationMode;

/// Template cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Cache the action list a policy produced; replay it for real on a hit.
    Plan,
    /// No cache.
    Off,
}

/// `WEB_SCREENSHOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScreenshotMode {
    #[value(alias = "false")]
    Off,
    #[value(alias = "true")]
    On,
    /// Saved, and attached to the model's request.
    Model,
}

/// A comma-separated list of CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

fn cidr_list(s: &str) -> Result<CidrList, String> {
    parse_cidr_list(s).map(CidrList)
}

/// A comma-separated `WEB_ALLOW_HOSTS` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowHost>);

fn allow_list(s: &str) -> Result<AllowList, String> {
    parse_allow_list(s).map(AllowList)
}

/// `CHROME_USER`: `root` (keep the runtime's user), a user name from
/// `/etc/passwd`, or `UID[:GID]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChromeUser(pub Option<(u32, u32)>);

fn chrome_user(s: &str) -> Result<ChromeUser, String> {
    let s = s.trim();
    if s == "root" || s == "0" || s == "0:0" {
        return Ok(ChromeUser(None));
    }
    let numeric = |v: &str| v.parse::<u32>().ok();
    if let Some(uid) = numeric(s) {
        return Ok(ChromeUser(Some((uid, uid))));
    }
    if let Some((u, g)) = s.split_once(':') {
        if let (Some(u), Some(g)) = (numeric(u), numeric(g)) {
            return Ok(ChromeUser(Some((u, g))));
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == s)
        .and_then(|f| Some((numeric(f[2])?, numeric(f[3])?)))
        .map(|ids| ChromeUser(Some(ids)))
        .ok_or_else(|| format!("{s:?} is not root, a user in /etc/passwd, or UID[:GID]"))
}

/// Browser agent runtime: consumes `tasks:web`, drives headless Chromium
/// over CDP, writes one trajectory per task.
#[derive(Debug, Clone, Parser)]
#[command(name = "web-runtime", version, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
    /// Tasks (= browser pages) at once.
    #[arg(long, env = "MAX_CONCURRENT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_concurrent: u16,
    /// Port of `/metrics` and `/health` (0: any free port, logged).
    #[arg(long, env = "METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,
    /// Chromium binary: the headless shell (default) or full chromium
    /// (`/usr/lib/chromium/chromium`, not the `/usr/bin` shell wrapper).
    #[arg(long, env = "CHROME_PATH", default_value = DEFAULT_CHROME_PATH)]
    pub chrome_path: PathBuf,
    /// Refuse loopback and private address ranges too (169.254.0.0/16 and
    /// fd00:ec2::254 are refused always).
    #[arg(long, env = "WEB_BLOCK_PRIVATE", default_value_t = false, action = ArgAction::Set)]
    pub web_block_private: bool,
    /// More CIDR blocks to refuse always, comma-separated (e.g. `10.20.0.0/16`).
    #[arg(long, env = "WEB_BLOCK_EXTRA", default_value = "", value_parser = cidr_list)]
    pub web_block_extra: CidrList,
    /// Hosts let through `WEB_BLOCK_PRIVATE`, comma-separated `HOST[:PORT]`
    /// (e.g. the demo site `127.0.0.1:8765`). Never the metadata addresses
    /// or the runtime's own ports.
    #[arg(long, env = "WEB_ALLOW_HOSTS", default_value = "", value_parser = allow_list)]
    pub web_allow_hosts: AllowList,
    /// When the runtime runs as root, Chromium runs as this user instead
    /// (`root` keeps root, which also turns Chromium's sandbox off).
    #[arg(long, env = "CHROME_USER", default_value = "nobody", value_parser = chrome_user)]
    pub chrome_user: ChromeUser,
    /// Chromium's own sandbox: `auto` (on unless Chromium runs as root;
    /// off with a warning where the host has no user namespaces), `on`, `off`.
    #[arg(long, env = "CHROME_SANDBOX", value_enum, default_value = "auto")]
    pub chrome_sandbox: SandboxMode,
    /// Memory ceiling of the whole browser in MiB (a cgroup, where the host
    /// allows one; 0: none).
    #[arg(long, env = "WEB_BROWSER_MEMORY_MB", default_value_t = 4096)]
    pub web_browser_memory_mb: u64,
    /// JavaScript heap limit of each page's renderer, in MiB.
    #[arg(long, env = "WEB_RENDERER_HEAP_MB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=16384))]
    pub web_renderer_heap_mb: u32,
    /// Route all browser traffic through the runtime's egress proxy, which
    /// applies the same rules to the address it actually connects to
    /// (closes DNS rebinding and WebSockets). Disable only to debug.
    #[arg(long, env = "WEB_EGRESS_PROXY", default_value_t = true, action = ArgAction::Set)]
    pub web_egress_proxy: bool,
    /// Do not load images (saves memory).
    #[arg(long, env = "WEB_BLOCK_IMAGES", default_value_t = true, action = ArgAction::Set)]
    pub web_block_images: bool,
    /// Accept invalid HTTPS certificates (self-signed, expired, wrong
    /// name). Off: such a page fails its step with `network_error`.
    #[arg(long, env = "WEB_IGNORE_HTTPS_ERRORS", default_value_t = false, action = ArgAction::Set)]
    pub web_ignore_https_errors: bool,
    /// Screenshots: `off`, `on` (a PNG per step under
    /// `$OUTPUT_DIR/trajectories/<task_id>/`) or `model` (also attached to
    /// the `openai` policy's next request as an image part). `false`/`true`
    /// mean `off`/`on`.
    #[arg(long, env = "WEB_SCREENSHOTS", value_enum, default_value = "off")]
    pub web_screenshots: ScreenshotMode,
    /// Set-of-marks (with `WEB_SCREENSHOTS=model` and an `axtree`/`both`
    /// observation): the screenshot the model is sent gets a coloured frame
    /// and an `e<id>` label on each element of the tree view that is in the
    /// viewport. The stored PNG is the marked one (what the model saw).
    #[arg(long, env = "WEB_SCREENSHOT_MARKS", default_value_t = false, action = ArgAction::Set)]
    pub web_screenshot_marks: bool,
    /// Budget of one action (navigation and settling included), in milliseconds.
    #[arg(long, env = "WEB_ACTION_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub web_action_timeout_ms: u64,
    /// Visible text kept in an observation, in characters.
    #[arg(long, env = "WEB_MAX_TEXT_CHARS", default_value_t = 4000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub web_max_text_chars: u64,
    /// Bytes of one rendered observation at most (the whole of it; each
    /// field is cut before).
    #[arg(long, env = "WEB_MAX_OBSERVATION_BYTES", default_value_t = 32_768, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub web_max_observation_bytes: u64,
    /// What an observation shows: `text` (title, URL, visible text, numbered
    /// elements), `axtree` (title, URL, accessibility tree with stable
    /// element ids) or `both`.
    #[arg(long, env = "WEB_OBSERVATION", value_enum, default_value = "both")]
    pub web_observation: ObservationMode,
    /// Accessibility-tree nodes rendered in an observation at most (those in
    /// the viewport first, then the nearest below).
    #[arg(long, env = "WEB_MAX_AX_NODES", default_value_t = 400, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pub web_max_ax_nodes: u64,
    /// Bytes of the raw accessibility tree stored per step at most
    /// (`trajectories/<task_id>/step_<n>.axtree.json`; 0: not stored).
    #[arg(long, env = "WEB_MAX_AXTREE_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(0..=268_435_456))]
    pub web_max_axtree_bytes: u64,
    /// Interactive elements listed in an observation.
    #[arg(long, env = "WEB_MAX_ELEMENTS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub web_max_elements: u64,
    /// Longest wait for Chromium to start, in seconds.
    #[arg(long, env = "BROWSER_LAUNCH_TIMEOUT_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub browser_launch_timeout_secs: u64,
    /// Longest wait for one CDP command, in seconds.
    #[arg(long, env = "BROWSER_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub browser_request_timeout_secs: u64,
    /// Seconds between watchdog pings of the browser (two unanswered pings:
    /// the browser is relaunched).
    #[arg(long, env = "BROWSER_PING_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub browser_ping_secs: u64,
    /// More Chromium flags, space-separated, without the leading `--`.
    #[arg(
        long,
        env = "CHROME_EXTRA_ARGS",
        default_value = "",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub chrome_extra_args: Vec<String>,
    /// Template cache: `plan` (keep the action list, replay it) or `off`.
    #[arg(long, env = "CACHE_MODE", value_enum, default_value = "plan")]
    pub cache_mode: CacheMode,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl Config {
    /// The destination rules.
    pub fn policy(&self) -> Policy {
        Policy::new(self.web_block_private, self.web_block_extra.0.clone())
            .with_allow(self.web_allow_hosts.0.clone())
    }

    /// The browser manager's settings (the egress proxy address is filled in
    /// once the proxy listens).
    pub fn browser_settings(&self) -> BrowserSettings {
        let mut s = BrowserSettings::new(&self.chrome_path);
        s.launch_timeout = Duration::from_secs(self.browser_launch_timeout_secs);
        s.request_timeout = Duration::from_secs(self.browser_request_timeout_secs);
        s.block_images = self.web_block_images;
        s.ignore_https_errors = self.web_ignore_https_errors;
        s.max_pages = usize::from(self.max_concurrent);
        s.ping_every = Duration::from_secs(self.browser_ping_secs);
        s.run_as = self.chrome_user.0;
        s.sandbox = self.chrome_sandbox;
        s.memory_mb = self.web_browser_memory_mb;
        s.renderer_heap_mb = self.web_renderer_heap_mb;
        s.ping_timeout = Duration::from_secs(self.browser_ping_secs.clamp(2, 10));
        s.extra_args = self
            .chrome_extra_args
            .iter()
            .map(|a| a.trim().trim_start_matches("--").to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        s
    }

    pub fn agent_settings(&self) -> AgentSettings {
        AgentSettings {
            action_timeout: Duration::from_millis(self.web_action_timeout_ms),
            max_text: self.web_max_text_chars as usize,
            max_elements: self.web_max_elements as usize,
            max_bytes: self.web_max_observation_bytes as usize,
            observation: self.web_observation,
            max_ax_nodes: self.web_max_ax_nodes as usize,
            max_raw_axtree_bytes: self.web_max_axtree_bytes as usize,
            screenshots: self.web_screenshots != ScreenshotMode::Off,
            screenshots_to_model: self.web_screenshots == ScreenshotMode::Model,
            screenshot_marks: self.web_screenshot_marks
                && self.web_screenshots == ScreenshotMode::Model,
            output_dir: self.common.output_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::try_parse_from(["web-runtime"]).expect("defaults");
        assert_eq!(c.max_concurrent, 4);
        assert_eq!(c.metrics_port, 8002);
        assert!(!c.web_block_private);
        assert!(c.web_egress_proxy);
        assert_eq!(c.web_screenshots, ScreenshotMode::Off);
        for (v, want) in [
            ("true", ScreenshotMode::On),
            ("false", ScreenshotMode::Off),
            ("model", ScreenshotMode::Model),
        ] {
            let c = Config::try_parse_from(["web-runtime", "--web-screenshots", v]).expect(v);
            assert_eq!(c.web_screenshots, want);
        }
        assert_eq!(c.web_observation, ObservationMode::Both);
        assert!(Config::try_parse_from(["web-runtime", "--web-observation", "pixels"]).is_err());
        assert_eq!(c.chrome_path, PathBuf::from(DEFAULT_CHROME_PATH));
        let c = Config::try_parse_from([
            "web-runtime",
            "--web-block-extra",
            "127.0.0.2/32,10.0.0.0/8",
            "--chrome-extra-args=--foo bar=1",
        ])
        .expect("extra");
        assert_eq!(c.web_block_extra.0.len(), 2);
        assert_eq!(c.browser_settings().extra_args, vec!["foo", "bar=1"]);
        assert!(Config::try_parse_from(["web-runtime", "--web-block-extra", "nope"]).is_err());
        assert!(Config::try_parse_from(["web-runtime", "--max-concurrent", "0"]).is_err());
        assert_eq!(c.chrome_user, ChromeUser(Some((65534, 65534))));
        let c = Config::try_parse_from([
            "web-runtime",
            "--chrome-user",
            "root",
            "--web-allow-hosts",
            "127.0.0.1:8765,demo.test",
        ])
        .expect("user and allow list");
        assert_eq!(c.chrome_user, ChromeUser(None));
        assert_eq!(c.policy().allow.len(), 2);
        assert!(c.policy().allowed("127.0.0.1", 8765));
        assert!(
            Config::try_parse_from(["web-runtime", "--chrome-user", "no-such-user-x"]).is_err()
        );
        assert!(Config::try_parse_from(["web-runtime", "--web-allow-hosts", "a:b:c/d"]).is_err());
    }
}

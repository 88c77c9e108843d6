//! The browser manager: one Chromium per runtime, a fresh browser context and
//! page per task, crash/hang detection and relaunch, clean shutdown.
//!
//! * [`BrowserManager::launch`] starts Chromium (headless shell by default)
//!   with flags that work as root in a container on a closed network, and
//!   spawns for it: the CDP handler pump (its end marks the instance dead),
//!   the request interceptor ([`crate::intercept`]) and nothing else.
//! * [`BrowserManager::open_session`] gives a task its own browser context and
//!   page ([`Session`]); closing the session disposes the context, so no
//!   cookie, storage or cache outlives the task.
//! * An instance that crashed (handler stream ended, process gone) or stopped
//!   answering (watchdog ping timed out) is marked dead: the task that was
//!   using it sees [`BrowserError::Dead`] and hands the task back as an
//!   infrastructure failure; the next `open_session` (or the watchdog)
//!   relaunches.
//! * [`BrowserManager::shutdown`] closes Chromium and waits for the process
//!   (no zombie).

//!
//! # Layout
//! * this module: settings, errors and the [`BrowserManager`];
//! * `instance`: one running Chromium ([`Instance`]), its launcher and liveness;
//! * `session`: one task's context and page ([`Session`]).

mod instance;
mod session;
mod targets;

pub use instance::{process_alive, Instance};
pub use session::Session;
pub use targets::Targets;

use instance::{cdp_error, Launch};
use session::dispose_context;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams,
};
use chromiumoxide::error::CdpError;
use futures::StreamExt;
use tokio::sync::{RwLock, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::guard::Policy;
use crate::intercept::{self, Refusals};
use crate::metrics::WebMetrics;
use crate::page::PageEvents;

/// Debian's headless shell: the same engine as `chromium`, ≈5× faster per
/// fresh context here (PITFALLS.md).
pub const DEFAULT_CHROME_PATH: &str = "/usr/lib/chromium/chromium-headless-shell";

/// How a browser operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// Chromium crashed, exited or stopped answering: not the task's fault.
    #[error("browser instance is gone: {0}")]
    Dead(String),
    /// Chromium could not be started.
    #[error("could not launch Chromium: {0}")]
    Launch(String),
    /// A CDP command did not answer in time (the browser is alive).
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    /// A CDP command failed (the browser is alive).
    #[error("{0}")]
    Cdp(String),
    /// The DNS resolver did not answer a check in time (not the task's
    /// fault: it did not flood it).
    #[error("DNS resolver: {0}")]
    Dns(String),
}

/// Settings of the browser manager.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// Chromium binary (`CHROME_PATH`): the headless shell or full chromium.
    pub chrome_path: PathBuf,
    /// Longest wait for Chromium to print its DevTools address.
    pub launch_timeout: Duration,
    /// Longest wait for one CDP command.
    pub request_timeout: Duration,
    /// Refuse image requests (saves memory and bandwidth).
    pub block_images: bool,
    /// Accept invalid HTTPS certificates (chromiumoxide's default; off here,
    /// as in a browser).
    pub ignore_https_errors: bool,
    /// Pages open at once, at most (the runtime's `MAX_CONCURRENT`).
    pub max_pages: usize,
    /// A watchdog ping that takes longer marks the browser hung.
    pub ping_timeout: Duration,
    /// How often the watchdog pings.
    pub ping_every: Duration,
    /// `socks5://127.0.0.1:port` of the egress proxy all traffic goes through.
    pub proxy: Option<String>,
    /// More Chromium flags (without the leading `--`).
    pub extra_args: Vec<String>,
    /// Kill Chromium when the runtime dies, even by SIGKILL (parent-death
    /// signal, via `setpriv`).
    pub die_with_runtime: bool,
    /// When the runtime runs as root: run Chromium as this uid:gid instead
    /// (`CHROME_USER`, default nobody); `None` keeps root.
    pub run_as: Option<(u32, u32)>,
    /// Chromium's own sandbox (`CHROME_SANDBOX`).
    pub sandbox: SandboxMode,
    /// V8 heap limit of each renderer, in MiB (`--max-old-space-size`).
    pub renderer_heap_mb: u32,
    /// Memory ceiling of the whole browser (all its processes), in MiB, set
    /// through a cgroup when the host allows it (`WEB_BROWSER_MEMORY_MB`).
    pub memory_mb: u64,
}

/// Whether Chromium runs with its own sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// On when Chromium does not run as root; if it fails to start that
    /// way (no user namespaces, e.g. some containers), off, with a warning.
    Auto,
    On,
    Off,
}

impl BrowserSettings {
    pub fn new(chrome_path: impl Into<PathBuf>) -> Self {
        BrowserSettings {
            chrome_path: chrome_path.into(),
            launch_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
            block_images: true,
            ignore_https_errors: false,
            max_pages: 4,
            ping_timeout: Duration::from_secs(5),
            ping_every: Duration::from_secs(5),
            proxy: None,
            extra_args: Vec::new(),
            die_with_runtime: true,
            run_as: Some((65534, 65534)),
            sandbox: SandboxMode::Auto,
            renderer_heap_mb: 512,
            memory_mb: 4096,
        }
    }

    /// The Chromium command-line flags, without the leading `--` (the crate
    /// adds it). chromiumoxide's own defaults are switched off
    /// (`disable_default_args`): they include `--disable-popup-blocking` and
    /// `--enable-automation`; every flag Chromium gets is listed here, plus
    /// what the crate always adds (`remote-debugging-port=0`,
    /// `user-data-dir`, `disable-extensions`, `headless`, `hide-scrollbars`,
    /// `mute-audio`, and `no-sandbox` when the sandbox is off).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            // Containers: no GPU, /dev/shm is small, no D-Bus or keyring.
            "disable-gpu",
            "disable-software-rasterizer",
            "disable-dev-shm-usage",
            "password-store=basic",
            "use-mock-keychain",
            // Closed network: nothing phones home, updates itself or
            // fetches models in the background.
            "disable-background-networking",
            "disable-component-update",
            "disable-component-extensions-with-background-pages",
            "disable-sync",
            "disable-default-apps",
            "disable-domain-reliability",
            "disable-client-side-phishing-detection",
            "disable-field-trial-config",
            "disable-breakpad",
            "disable-crash-reporter",
            "no-service-autorun",
            "no-pings",
            "no-first-run",
            "no-default-browser-check",
            "metrics-recording-only",
            "safebrowsing-disable-auto-update",
            // One list: Chromium reads only the last --disable-features.
            "disable-features=OptimizationHints,OptimizationGuideModelDownloading,\
OptimizationHintsFetching,OptimizationTargetPrediction,OptimizationGuideOnDeviceModel,\
Translate,TranslateUI,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,\
CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,\
PrivacySandboxSettings4,HttpsUpgrades,BackForwardCache",
            "disable-quic",
            "force-webrtc-ip-handling-policy=disable_non_proxied_udp",
            "webrtc-ip-handling-policy=disable_non_proxied_udp",
            "disable-notifications",
            // Popups stay blocked (the crate's defaults unblock them); the
            // ones a page still opens are closed by the runtime.
            "block-new-web-contents",
            // Tasks run in background pages: keep them at full speed.
            "disable-background-timer-throttling",
            "disable-backgrounding-occluded-windows",
            "disable-renderer-backgrounding",
            "disable-hang-monitor",
            "disable-prompt-on-repost",
            "force-color-profile=srgb",
            "lang=en-US",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(format!(
            "js-flags=--max-old-space-size={}",
            self.renderer_heap_mb
        ));
        if self.block_images {
            args.push("blink-settings=imagesEnabled=false".to_owned());
        }
        if let Some(proxy) = &self.proxy {
            args.push(format!("proxy-server={proxy}"));
            // Loopback too: without this Chromium connects to 127.0.0.0/8
            // directly, past the proxy.
            args.push("proxy-bypass-list=<-loopback>".to_owned());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

struct Shared {
    settings: BrowserSettings,
    policy: Arc<Policy>,
    refusals: Refusals,
    metrics: WebMetrics,
    targets: Targets,
    current: Mutex<Option<Arc<Instance>>>,
    relaunch: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    pages: Arc<Semaphore>,
    stopping: CancellationToken,
}

/// Whether the runtime runs as root (effective uid 0, from `/proc`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Owns the runtime's Chromium. Cheap to clone.
#[derive(Clone)]
pub struct BrowserManager {
    shared: Arc<Shared>,
}

impl BrowserManager {
    /// Launches the first Chromium.
    pub async fn launch(
        settings: BrowserSettings,
        policy: Policy,
        metrics: WebMetrics,
    ) -> Result<Self, BrowserError> {
        let max_pages = settings.max_pages.max(1);
        let manager = BrowserManager {
            shared: Arc::new(Shared {
                settings,
                policy: Arc::new(policy),
                refusals: Refusals::default(),
                targets: Targets::default(),
                metrics,
                current: Mutex::new(None),
                relaunch: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                pages: Arc::new(Semaphore::new(max_pages)),
                stopping: CancellationToken::new(),
            }),
        };
        manager.instance().await?;
        Ok(manager)
    }

    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    pub fn refusals(&self) -> &Refusals {
        &self.shared.refusals
    }

    pub fn settings(&self) -> &BrowserSettings {
        &self.shared.settings
    }

    /// The live instance, if any (no relaunch).
    pub fn current(&self) -> Option<Arc<Instance>> {
        self.shared
            .current
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .filter(|i| !i.is_dead())
    }

    /// The live instance; relaunches Chromium if the current one is dead.
    pub async fn instance(&self) -> Result<Arc<Instance>, BrowserError> {
        if let Some(i) = self.current() {
            return Ok(i);
        }
        if self.shared.stopping.is_cancelled() {
            return Err(BrowserError::Dead("runtime is shutting down".to_owned()));
        }
        let _one = self.shared.relaunch.lock().await;
        if let Some(i) = self.current() {
            return Ok(i);
        }
        let old = self.shared.current.lock().ok().and_then(|mut g| g.take());
        if let Some(old) = old {
            old.close().await;
            if let Some(port) = old.devtools_port() {
                self.shared.policy.own_ports.remove(port);
            }
        }
        let instance = self.start_instance().await?;
        if let Ok(mut g) = self.shared.current.lock() {
            *g = Some(instance.clone());
        }
        Ok(instance)
    }

    async fn start_instance(&self) -> Result<Arc<Instance>, BrowserError> {
        let s = &self.shared.settings;
        let root = is_root();
        let run_as = if root { s.run_as } else { None };
        let unprivileged = !root || run_as.is_some();
        let sandbox = match s.sandbox {
            SandboxMode::On => true,
            SandboxMode::Off => false,
            SandboxMode::Auto => unprivileged,
        };
        match self.launch_once(run_as, sandbox).await {
            Err(BrowserError::Launch(e)) if sandbox && s.sandbox == SandboxMode::Auto => {
                tracing::warn!(error = %e, "Chromium did not start with its sandbox (no user namespaces here?); starting it without (CHROME_SANDBOX=off silences this).");
                self.launch_once(run_as, false).await
            }
            other => other,
        }
    }

    async fn launch_once(
        &self,
        run_as: Option<(u32, u32)>,
        sandbox: bool,
    ) -> Result<Arc<Instance>, BrowserError> {
        let s = &self.shared.settings;
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let profile = tempfile::Builder::new()
            .prefix("adp-chromium-")
            .tempdir()
            .map_err(|e| BrowserError::Launch(format!("cannot create a user-data-dir: {e}")))?;
        let user_data = profile.path().join("profile");
        if let Some((uid, gid)) = run_as {
            std::fs::create_dir_all(&user_data)
                .and_then(|()| std::os::unix::fs::chown(profile.path(), Some(uid), Some(gid)))
                .and_then(|()| std::os::unix::fs::chown(&user_data, Some(uid), Some(gid)))
                .map_err(|e| {
                    BrowserError::Launch(format!("cannot give the user-data-dir to {uid}: {e}"))
                })?;
        }
        let cgroup = if s.memory_mb > 0 && is_root() {
            let name = format!("adp-web-{}-{generation}", std::process::id());
            match instance::MemoryCgroup::create(&name, s.memory_mb) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "No memory ceiling for Chromium (cgroup not available); only the per-renderer heap limit applies.");
                    None
                }
            }
        } else {
            None
        };
        let launch = Launch {
            die_with_runtime: s.die_with_runtime,
            run_as,
            cgroup: cgroup.as_ref().map(|c| c.path.clone()),
        };
        let executable = launch
            .executable(profile.path(), &s.chrome_path)
            .map_err(|e| BrowserError::Launch(format!("cannot write the launcher: {e}")))?;
        let mut config = BrowserConfig::builder()
            .chrome_executable(&executable)
            .disable_default_args()
            .user_data_dir(&user_data)
            .env("HOME", profile.path().display().to_string())
            .launch_timeout(s.launch_timeout)
            .request_timeout(s.request_timeout)
            .args(s.args());
        if !sandbox {
            config = config.no_sandbox();
        }
        if !s.ignore_https_errors {
            // chromiumoxide otherwise tells every page to ignore them.
            config = config.respect_https_errors();
        }
        let config = config.build().map_err(BrowserError::Launch)?;
        let started = Instant::now();
        let (browser, mut handler) = Browser::launch(config)
            .await
            .map_err(|e| BrowserError::Launch(format!("{} ({e})", s.chrome_path.display())))?;
        let mut browser = browser;
        let pid = browser.get_mut_child().and_then(|c| c.inner.id());
        let devtools_port = url::Url::parse(browser.websocket_address())
            .ok()
            .and_then(|u| u.port());
        match devtools_port {
            Some(port) => self.shared.policy.own_ports.add(port, "DevTools"),
            None => {
                tracing::warn!(address = %browser.websocket_address(), "Cannot tell Chromium's DevTools port; pages are not kept from it.")
            }
        }
        let instance = Instance {
            generation,
            browser: RwLock::new(browser),
            pid,
            dead: CancellationToken::new(),
            why_dead: Mutex::new(None),
            request_timeout: s.request_timeout,
            profile,
            devtools_port,
            cgroup,
            sandboxed: sandbox,
        };
        let dead = instance.dead.clone();

        // The CDP handler pump: its end (WebSocket closed, panic) is the
        // browser's death as far as we are concerned.
        let pump = tokio::spawn(async move {
            let mut errors = 0u32;
            while let Some(r) = handler.next().await {
                match r {
                    Ok(()) => errors = 0,
                    Err(CdpError::Ws(e)) => return format!("CDP WebSocket failed: {e}"),
                    Err(CdpError::Io(e)) => return format!("CDP connection I/O error: {e}"),
                    Err(e) => {
                        errors += 1;
                        tracing::debug!(error = %e, "CDP handler error.");
                        if errors > 100 {
                            return format!("CDP handler keeps failing: {e}");
                        }
                    }
                }
            }
            "CDP connection closed".to_owned()
        });
        let instance = Arc::new(instance);
        {
            let weak = Arc::downgrade(&instance);
            tokio::spawn(async move {
                let why = match pump.await {
                    Ok(why) => why,
                    Err(e) => format!("CDP handler task ended abnormally: {e}"),
                };
                if let Some(i) = weak.upgrade() {
                    i.mark_dead(why);
                } else {
                    dead.cancel();
                }
            });
        }
        if let Err(e) = intercept::start(
            instance.clone(),
            self.shared.policy.clone(),
            self.shared.refusals.clone(),
            self.shared.metrics.clone(),
            s.block_images,
        )
        .await
        {
            instance.close().await;
            return Err(BrowserError::Launch(format!(
                "cannot enable request interception: {e}"
            )));
        }
        if let Err(e) = targets::watch(
            instance.clone(),
            self.shared.targets.clone(),
            self.shared.metrics.clone(),
        )
        .await
        {
            instance.close().await;
            return Err(BrowserError::Launch(format!(
                "cannot watch the browser's targets: {e}"
            )));
        }
        if generation > 1 {
            self.shared.metrics.browser_restarts.inc();
        }
        tracing::info!(generation, pid = ?pid, sandbox, user = ?run_as.map(|(u, _)| u), devtools_port = ?devtools_port, path = %s.chrome_path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "Chromium launched.");
        Ok(instance)
    }

    /// A fresh browser context with one page, for one task. Waits for a page
    /// slot (at most `max_pages` at once).
    pub async fn open_session(&self) -> Result<Session, BrowserError> {
        let permit = self
            .shared
            .pages
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BrowserError::Dead("runtime is shutting down".to_owned()))?;
        let t0 = Instant::now();
        let instance = self.instance().await?;
        let context = instance
            .execute(
                "create browser context",
                CreateBrowserContextParams::default(),
            )
            .await?
            .browser_context_id;
        self.shared.targets.register_context(context.inner());
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(context.clone())
            .build()
            .map_err(BrowserError::Cdp)?;
        let page = match instance.new_page(params).await {
            Ok(p) => p,
            Err(e) => {
                self.shared.targets.unregister(context.inner(), "");
                dispose_context(&instance, context).await;
                return Err(e);
            }
        };
        self.shared
            .targets
            .register_page(context.inner(), page.target_id().inner());
        let t_page = t0.elapsed();
        let frame_id = page.target_id().inner().clone();
        let events = match PageEvents::start(&page, &frame_id).await {
            Ok(e) => e,
            Err(e) => {
                self.shared.targets.unregister(context.inner(), &frame_id);
                dispose_context(&instance, context).await;
                return Err(instance.classify(cdp_error("subscribe to page events", e)));
            }
        };
        self.shared.refusals.register(&frame_id);
        self.shared.metrics.page_opened();
        tracing::debug!(
            context_and_page_ms = t_page.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "Browser session opened."
        );
        Ok(Session {
            instance,
            context_id: context.inner().clone(),
            context: Some(context),
            page,
            frame_id,
            events,
            node_frames: Default::default(),
            manager: self.clone(),
            _permit: permit,
        })
    }

    /// Health: the browser answers a CDP call.
    pub async fn check(&self) -> Result<(), String> {
        match self.current() {
            Some(i) => i.ping(self.shared.settings.ping_timeout).await,
            None => Err("no live browser (relaunch pending)".to_owned()),
        }
    }

    /// Watches the browser until `shutdown`: a process that exited or a ping
    /// that is not answered marks the instance dead and relaunches Chromium,
    /// so the runtime recovers even while idle.
    pub fn spawn_watchdog(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move {
            let every = manager.shared.settings.ping_every;
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let current = manager.shared.current.lock().ok().and_then(|g| g.clone());
                let Some(instance) = current else { continue };
                if !instance.is_dead() {
                    if !process_alive(instance.pid()) {
                        instance.mark_dead("Chromium process exited");
                    } else if let Err(e) = instance.ping(manager.shared.settings.ping_timeout).await
                    {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "Browser ping failed.");
                        if failures >= 2 {
                            instance.mark_dead(format!("browser stopped answering: {e}"));
                        }
                    } else {
                        failures = 0;
                    }
                }
                if instance.is_dead() && !shutdown.is_cancelled() {
                    failures = 0;
                    if let Err(e) = manager.instance().await {
                        tracing::warn!(error = %e, "Browser relaunch failed; will retry.");
                    }
                }
            }
        })
    }

    /// Closes Chromium and reaps it. No new sessions afterwards.
    pub async fn shutdown(&self) {
        self.shared.stopping.cancel();
        self.shared.pages.close();
        let _one = self.shared.relaunch.lock().await;
        let current = self.shared.current.lock().ok().and_then(|mut g| g.take());
        if let Some(i) = current {
            i.close().await;
        }
    }
}

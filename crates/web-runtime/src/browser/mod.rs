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

pub use instance::{process_alive, Instance};
pub use session::Session;

use instance::{cdp_error, launcher};
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
        }
    }

    /// The Chromium command-line flags, without the leading `--` (the crate
    /// adds it).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            // Containers: no GPU, /dev/shm is small, no D-Bus or keyring.
            "disable-gpu",
            "disable-software-rasterizer",
            "disable-dev-shm-usage",
            // Closed network: nothing phones home or updates itself.
            "disable-background-networking",
            "disable-component-update",
            "disable-sync",
            "disable-default-apps",
            "disable-domain-reliability",
            "disable-client-side-phishing-detection",
            "disable-breakpad",
            "disable-crash-reporter",
            "no-pings",
            "no-first-run",
            "no-default-browser-check",
            "metrics-recording-only",
            "safebrowsing-disable-auto-update",
            "disable-quic",
            "force-webrtc-ip-handling-policy=disable_non_proxied_udp",
            "webrtc-ip-handling-policy=disable_non_proxied_udp",
            "disable-notifications",
            "mute-audio",
            "hide-scrollbars",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
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
    current: Mutex<Option<Arc<Instance>>>,
    relaunch: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    pages: Arc<Semaphore>,
    stopping: CancellationToken,
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
        }
        let instance = self.start_instance().await?;
        if let Ok(mut g) = self.shared.current.lock() {
            *g = Some(instance.clone());
        }
        Ok(instance)
    }

    async fn start_instance(&self) -> Result<Arc<Instance>, BrowserError> {
        let s = &self.shared.settings;
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let profile = tempfile::Builder::new()
            .prefix("adp-chromium-")
            .tempdir()
            .map_err(|e| BrowserError::Launch(format!("cannot create a user-data-dir: {e}")))?;
        let user_data = profile.path().join("profile");
        let executable = if s.die_with_runtime {
            launcher(profile.path(), &s.chrome_path)
                .map_err(|e| BrowserError::Launch(format!("cannot write the launcher: {e}")))?
        } else {
            s.chrome_path.clone()
        };
        let mut config = BrowserConfig::builder()
            .chrome_executable(&executable)
            .no_sandbox()
            .user_data_dir(&user_data)
            .launch_timeout(s.launch_timeout)
            .request_timeout(s.request_timeout)
            .args(s.args());
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
        let instance = Instance {
            generation,
            browser: RwLock::new(browser),
            pid,
            dead: CancellationToken::new(),
            why_dead: Mutex::new(None),
            request_timeout: s.request_timeout,
            profile,
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
        if generation > 1 {
            self.shared.metrics.browser_restarts.inc();
        }
        tracing::info!(generation, pid = ?pid, path = %s.chrome_path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "Chromium launched.");
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
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(context.clone())
            .build()
            .map_err(BrowserError::Cdp)?;
        let page = match instance.new_page(params).await {
            Ok(p) => p,
            Err(e) => {
                dispose_context(&instance, context).await;
                return Err(e);
            }
        };
        let t_page = t0.elapsed();
        let frame_id = page.target_id().inner().clone();
        let events = match PageEvents::start(&page, &frame_id).await {
            Ok(e) => e,
            Err(e) => {
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
            context: Some(context),
            page,
            frame_id,
            events,
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

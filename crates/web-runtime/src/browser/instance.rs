//! One running Chromium: browser-level CDP calls bounded by the request
//! timeout, liveness (dead token, `/proc` state), closing and reaping; and
//! the launcher script that ties Chromium's life to the runtime's.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::cdp::IntoEventKind;
use chromiumoxide::error::CdpError;
use chromiumoxide::listeners::EventStream;
use chromiumoxide::types::Command;
use chromiumoxide::Page;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use super::BrowserError;

/// One running Chromium.
pub struct Instance {
    pub generation: u64,
    pub(super) browser: RwLock<Browser>,
    pub(super) pid: Option<u32>,
    pub(super) dead: CancellationToken,
    pub(super) why_dead: Mutex<Option<String>>,
    pub(super) request_timeout: Duration,
    /// The fresh user-data-dir; removed once the instance is gone.
    pub(super) profile: tempfile::TempDir,
    /// The DevTools port (refused to pages while the instance lives).
    pub(super) devtools_port: Option<u16>,
    /// The memory ceiling's cgroup, if the host allowed one.
    pub(super) cgroup: Option<MemoryCgroup>,
    /// Whether Chromium runs with its own sandbox.
    pub sandboxed: bool,
}

impl Instance {
    /// The Chromium process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The port of Chromium's DevTools server.
    pub fn devtools_port(&self) -> Option<u16> {
        self.devtools_port
    }

    /// The memory ceiling's cgroup directory, when there is one.
    pub fn cgroup(&self) -> Option<&std::path::Path> {
        self.cgroup.as_ref().map(|c| c.path.as_path())
    }

    /// The launch's temporary directory (user-data-dir and launcher);
    /// removed when Chromium is closed.
    pub fn profile_dir(&self) -> &std::path::Path {
        self.profile.path()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_cancelled()
    }

    /// Fires when the instance is found dead.
    pub fn dead_token(&self) -> &CancellationToken {
        &self.dead
    }

    /// Why it died (`None` while alive).
    pub fn death(&self) -> Option<String> {
        self.why_dead.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn mark_dead(&self, why: impl Into<String>) {
        self.set_dead(why.into(), true);
    }

    fn set_dead(&self, why: String, unexpected: bool) {
        if let Ok(mut g) = self.why_dead.lock() {
            if g.is_none() {
                if unexpected {
                    tracing::warn!(generation = self.generation, pid = ?self.pid, reason = %why, "Browser marked dead.");
                }
                *g = Some(why);
            }
        }
        self.dead.cancel();
    }

    /// The error to report when an operation failed: `Dead` when the
    /// instance died meanwhile (an infrastructure failure), else `other`.
    pub fn classify(&self, other: BrowserError) -> BrowserError {
        match self.death() {
            Some(why) => BrowserError::Dead(why),
            None if !process_alive(self.pid) => {
                self.mark_dead("Chromium process exited");
                BrowserError::Dead("Chromium process exited".to_owned())
            }
            None => other,
        }
    }

    /// Runs a browser-level CDP command with the request timeout.
    pub async fn execute<T: Command>(
        &self,
        what: &'static str,
        cmd: T,
    ) -> Result<T::Response, BrowserError> {
        if let Some(why) = self.death() {
            return Err(BrowserError::Dead(why));
        }
        let browser = self.browser.read().await;
        let r = tokio::select! {
            r = tokio::time::timeout(self.request_timeout, browser.execute(cmd)) => r,
            _ = self.dead.cancelled() => return Err(BrowserError::Dead(self.death().unwrap_or_default())),
        };
        drop(browser);
        match r {
            Ok(Ok(resp)) => Ok(resp.result),
            Ok(Err(e)) => Err(self.classify(cdp_error(what, e))),
            Err(_) => Err(self.classify(BrowserError::Timeout(what, self.request_timeout))),
        }
    }

    /// Subscribes to a browser-level event.
    pub(crate) async fn event_listener<T: IntoEventKind>(
        &self,
    ) -> Result<EventStream<T>, BrowserError> {
        let browser = self.browser.read().await;
        browser
            .event_listener::<T>()
            .await
            .map_err(|e| self.classify(cdp_error("subscribe to browser events", e)))
    }

    pub(super) async fn new_page(&self, params: CreateTargetParams) -> Result<Page, BrowserError> {
        let browser = self.browser.read().await;
        let r = tokio::select! {
            r = tokio::time::timeout(self.request_timeout, browser.new_page(params)) => r,
            _ = self.dead.cancelled() => return Err(BrowserError::Dead(self.death().unwrap_or_default())),
        };
        drop(browser);
        match r {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(e)) => Err(self.classify(cdp_error("create page", e))),
            Err(_) => {
                Err(self.classify(BrowserError::Timeout("create page", self.request_timeout)))
            }
        }
    }

    /// `Browser.getVersion` answered within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        if let Some(why) = self.death() {
            return Err(format!("browser dead: {why}"));
        }
        let browser = self.browser.read().await;
        match tokio::time::timeout(timeout, browser.version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("CDP Browser.getVersion failed: {e}")),
            Err(_) => Err(format!(
                "CDP Browser.getVersion not answered within {timeout:?}"
            )),
        }
    }

    /// Closes Chromium and reaps the process (kills it if it does not close).
    pub(super) async fn close(&self) {
        self.set_dead("closed by the runtime".to_owned(), false);
        // Users holding the read lock leave within the request timeout.
        let mut browser = match tokio::time::timeout(
            self.request_timeout + Duration::from_secs(1),
            self.browser.write(),
        )
        .await
        {
            Ok(b) => b,
            Err(_) => {
                tracing::warn!(pid = ?self.pid, "Browser still in use after the request timeout; it is killed when dropped.");
                return;
            }
        };
        let started = Instant::now();
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(3), browser.close()).await,
            Ok(Ok(_))
        );
        let waited = closed
            && matches!(
                tokio::time::timeout(Duration::from_secs(5), browser.wait()).await,
                Ok(Ok(_))
            );
        if !waited {
            // Crashed, hung or refusing to close: kill and reap.
            let _ = tokio::time::timeout(Duration::from_secs(5), browser.kill()).await;
        }
        // The profile goes now, not when the last holder of this instance
        // lets go (which may be never, if the process is exiting).
        let _ = std::fs::remove_dir_all(self.profile.path());
        tracing::info!(generation = self.generation, pid = ?self.pid, graceful = waited, elapsed_ms = started.elapsed().as_millis() as u64, "Chromium stopped.");
    }
}

pub(super) fn cdp_error(what: &'static str, e: CdpError) -> BrowserError {
    match e {
        CdpError::Timeout => BrowserError::Timeout(what, Duration::ZERO),
        CdpError::Ws(_)
        | CdpError::Io(_)
        | CdpError::ChannelSendError(_)
        | CdpError::NoResponse => BrowserError::Dead(format!("{what}: CDP connection lost ({e})")),
        other => BrowserError::Cdp(format!("{what}: {other}")),
    }
}

/// `setpriv` of util-linux, which can set the parent-death signal and
/// drop to another user.
const SETPRIV: &str = "/usr/bin/setpriv";

/// How Chromium is started: through a small launcher script when anything
/// has to happen before it runs.
#[derive(Debug, Clone, Default)]
pub(super) struct Launch {
    /// SIGKILL Chromium when the runtime dies (`setpriv --pdeathsig KILL`).
    pub die_with_runtime: bool,
    /// Run as this uid:gid (the runtime is root).
    pub run_as: Option<(u32, u32)>,
    /// Join this cgroup (its `cgroup.procs`) first: a memory ceiling for
    /// every process Chromium starts.
    pub cgroup: Option<PathBuf>,
}

impl Launch {
    /// Writes `<dir>/chromium.sh` when needed and returns what to execute.
    /// Without `setpriv`, Chromium is started directly (as the runtime's
    /// user, without a parent-death signal).
    pub(super) fn executable(
        &self,
        dir: &std::path::Path,
        chrome: &std::path::Path,
    ) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let setpriv = std::path::Path::new(SETPRIV).exists();
        if (!setpriv || (!self.die_with_runtime && self.run_as.is_none())) && self.cgroup.is_none()
        {
            return Ok(chrome.to_path_buf());
        }
        let quote =
            |p: &std::path::Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let mut script = String::from("#!/bin/sh\n");
        if let Some(cg) = &self.cgroup {
            script.push_str(&format!(
                "echo $$ > {} 2>/dev/null || true\n",
                quote(&cg.join("cgroup.procs"))
            ));
        }
        script.push_str("exec ");
        if setpriv && (self.die_with_runtime || self.run_as.is_some()) {
            script.push_str(SETPRIV);
            if let Some((uid, gid)) = self.run_as {
                script.push_str(&format!(" --reuid {uid} --regid {gid} --clear-groups"));
            }
            if self.die_with_runtime {
                script.push_str(" --pdeathsig KILL");
            }
            script.push_str(" -- ");
        }
        script.push_str(&quote(chrome));
        script.push_str(" \"$@\"\n");
        let path = dir.join("chromium.sh");
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }
}

/// A cgroup (v1 `memory` controller, or v2 with `memory` enabled) limiting
/// one Chromium's memory, removed on drop. `None` where the host does not
/// let us create one (not root, read-only or absent cgroup fs).
#[derive(Debug)]
pub(super) struct MemoryCgroup {
    pub path: PathBuf,
}

impl MemoryCgroup {
    pub(super) fn create(name: &str, limit_mb: u64) -> Result<Self, String> {
        let bytes = (limit_mb * 1024 * 1024).to_string();
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        let (path, file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(name), "memory.limit_in_bytes")
        } else {
            let root = std::path::Path::new("/sys/fs/cgroup");
            let controllers =
                std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err("no cgroup memory controller available".to_owned());
            }
            (root.join(name), "memory.max")
        };
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cg = MemoryCgroup { path };
        std::fs::write(cg.path.join(file), &bytes)
            .map_err(|e| format!("{}: {e}", cg.path.join(file).display()))?;
        Ok(cg)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once Chromium and its helpers are gone; a leftover (helpers
        // still exiting) is harmless and small.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Whether a process exists and is not a zombie (Linux `/proc`).
pub fn process_alive(pid: Option<u32>) -> bool {
    let Some(pid) = pid else { return true };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; `Z` zombie, `X` dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

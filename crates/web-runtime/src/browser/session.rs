//! One task's browser context and page: closed after the task, or in the
//! background if the task was dropped.

use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::Page;
use tokio::sync::OwnedSemaphorePermit;

use super::{BrowserManager, Instance};
use crate::intercept::Refusals;
use crate::page::PageEvents;

pub(super) async fn dispose_context(instance: &Instance, context: BrowserContextId) {
    use chromiumoxide::cdp::browser_protocol::target::DisposeBrowserContextParams;
    if instance.is_dead() {
        return;
    }
    if let Err(e) = instance
        .execute(
            "dispose browser context",
            DisposeBrowserContextParams::new(context),
        )
        .await
    {
        tracing::debug!(error = %e, "Could not dispose a browser context.");
    }
}

/// One task's browser context and page.
pub struct Session {
    pub instance: Arc<Instance>,
    pub(super) context: Option<BrowserContextId>,
    /// The context's id (kept after it is disposed).
    pub(super) context_id: String,
    pub page: Page,
    /// The page's main frame id (= its target id).
    pub frame_id: String,
    pub events: PageEvents,
    /// The frame of each element id of the last accessibility tree read
    /// (actions resolve an id in its frame).
    pub(crate) node_frames: std::sync::Mutex<std::collections::HashMap<u64, String>>,
    pub(super) manager: BrowserManager,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Session {
    pub fn refusals(&self) -> &Refusals {
        &self.manager.shared.refusals
    }

    /// The task's browser context id.
    pub fn context_id(&self) -> &str {
        &self.context_id
    }

    /// Pages opened in this task's context that the runtime closed (popups).
    pub fn popups_closed(&self) -> u64 {
        self.manager.shared.targets.closed_in(&self.context_id)
    }

    /// Whether this task's page renderer crashed.
    pub fn crashed(&self) -> bool {
        self.manager.shared.targets.crashed(&self.frame_id)
    }

    /// Remembers the frames of the ids of the last accessibility tree (the
    /// ids of earlier reads stay known: an element keeps its id).
    pub fn remember_nodes(&self, frames: std::collections::HashMap<u64, String>) {
        if let Ok(mut m) = self.node_frames.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            m.extend(frames);
        }
    }

    /// The frame of the element id `id`, if a tree read saw it.
    pub fn node_frame(&self, id: u64) -> Option<String> {
        self.node_frames.lock().ok()?.get(&id).cloned()
    }

    pub fn request_timeout(&self) -> Duration {
        self.manager.shared.settings.request_timeout
    }

    /// Disposes the browser context (and with it the page, cookies, storage).
    pub async fn close(mut self) {
        if let Some(context) = self.context.take() {
            dispose_context(&self.instance, context).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.events.stop();
        self.manager.shared.refusals.unregister(&self.frame_id);
        self.manager
            .shared
            .targets
            .unregister(&self.context_id, &self.frame_id);
        self.manager.shared.metrics.page_closed();
        // Dropped without close() (the task was cancelled): dispose in the background.
        if let Some(context) = self.context.take() {
            let instance = self.instance.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { dispose_context(&instance, context).await });
            }
        }
    }
}

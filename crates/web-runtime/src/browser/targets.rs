//! Which browser targets the runtime opened: each task's context gets
//! exactly one page, the one the runtime creates. Any other page that
//! appears in a task's context (a popup, `window.open`, a `target=_blank`
//! the page forced) is closed at once and counted, so a page cannot fill
//! Chromium's memory with windows. Renderer crashes of the runtime's pages
//! are noted here too (`Target.targetCrashed`), so the step that meets one
//! fails instead of reading nothing as a success.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chromiumoxide::cdp::browser_protocol::target::{
    CloseTargetParams, EventTargetCrashed, EventTargetCreated, TargetId,
};
use futures::StreamExt;

use super::{BrowserError, Instance};
use crate::metrics::WebMetrics;

#[derive(Debug, Default)]
struct State {
    /// Browser context id → the runtime's page in it (once it showed up).
    ours: HashMap<String, Option<String>>,
    /// Browser context id → pages closed in it that the runtime did not open.
    closed: HashMap<String, u64>,
    /// Pages whose renderer crashed.
    crashed: HashSet<String>,
}

/// Shared record of the runtime's contexts and pages. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    state: Arc<Mutex<State>>,
}

/// What to do with a new target.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ours,
    Foreign,
    NotTracked,
}

impl Targets {
    /// A task's context is about to get its page.
    pub(super) fn register_context(&self, context: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.ours.insert(context.to_owned(), None);
            s.closed.insert(context.to_owned(), 0);
        }
    }

    /// The page the runtime created in `context` (also learnt from the
    /// event, whichever comes first).
    pub(super) fn register_page(&self, context: &str, page: &str) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(slot) = s.ours.get_mut(context) {
                slot.get_or_insert_with(|| page.to_owned());
            }
        }
    }

    pub(super) fn unregister(&self, context: &str, page: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.ours.remove(context);
            s.closed.remove(context);
            s.crashed.remove(page);
        }
    }

    /// Pages closed so far in `context` that the runtime did not open.
    pub fn closed_in(&self, context: &str) -> u64 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.closed.get(context).copied())
            .unwrap_or(0)
    }

    /// Whether the renderer of `page` crashed.
    pub fn crashed(&self, page: &str) -> bool {
        self.state
            .lock()
            .map(|s| s.crashed.contains(page))
            .unwrap_or(false)
    }

    fn judge(&self, context: &str, page: &str) -> Verdict {
        let Ok(mut s) = self.state.lock() else {
            return Verdict::NotTracked;
        };
        let verdict = match s.ours.get_mut(context) {
            None => return Verdict::NotTracked,
            // The first page of a task's context is the one the runtime
            // asked for: a page cannot open anything before it exists.
            Some(slot @ None) => {
                *slot = Some(page.to_owned());
                Verdict::Ours
            }
            Some(Some(p)) if p == page => Verdict::Ours,
            Some(Some(_)) => Verdict::Foreign,
        };
        if verdict == Verdict::Foreign {
            *s.closed.entry(context.to_owned()).or_default() += 1;
        }
        verdict
    }

    fn note_crash(&self, page: &str) {
        if let Ok(mut s) = self.state.lock() {
            if s.ours.values().any(|p| p.as_deref() == Some(page)) {
                s.crashed.insert(page.to_owned());
            }
        }
    }
}

/// Watches target creation and crashes of `instance` until it dies.
pub(super) async fn watch(
    instance: Arc<Instance>,
    targets: Targets,
    metrics: WebMetrics,
) -> Result<(), BrowserError> {
    let mut created = instance.event_listener::<EventTargetCreated>().await?;
    let mut crashed = instance.event_listener::<EventTargetCrashed>().await?;
    let dead = instance.dead_token().clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = dead.cancelled() => return,
                e = created.next() => {
                    let Some(e) = e else { return };
                    let info = &e.target_info;
                    if info.r#type != "page" {
                        continue;
                    }
                    let Some(context) = info.browser_context_id.as_ref() else { continue };
                    if targets.judge(context.inner(), info.target_id.inner()) != Verdict::Foreign {
                        continue;
                    }
                    metrics.targets_closed.inc();
                    tracing::info!(url = %info.url, opener = ?info.opener_id, "Closing a page the runtime did not open (popup).");
                    let instance = instance.clone();
                    let id: TargetId = info.target_id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = instance.execute("close popup", CloseTargetParams::new(id)).await {
                            tracing::debug!(error = %e, "Could not close a popup.");
                        }
                    });
                }
                e = crashed.next() => {
                    let Some(e) = e else { return };
                    tracing::warn!(target = %e.target_id.inner(), status = %e.status, code = e.error_code, "A renderer crashed.");
                    targets.note_crash(e.target_id.inner());
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_page_of_a_context_is_ours_later_ones_are_not() {
        let t = Targets::default();
        assert_eq!(t.judge("c1", "p1"), Verdict::NotTracked);
        t.register_context("c1");
        assert_eq!(t.judge("c1", "p1"), Verdict::Ours);
        t.register_page("c1", "p1");
        assert_eq!(t.judge("c1", "p1"), Verdict::Ours);
        assert_eq!(t.judge("c1", "p2"), Verdict::Foreign);
        assert_eq!(t.judge("c1", "p3"), Verdict::Foreign);
        assert_eq!(t.closed_in("c1"), 2);
        t.note_crash("p1");
        t.note_crash("elsewhere");
        assert!(t.crashed("p1"));
        assert!(!t.crashed("elsewhere"));
        t.unregister("c1", "p1");
        assert_eq!(t.closed_in("c1"), 0);
        assert!(!t.crashed("p1"));
    }
}

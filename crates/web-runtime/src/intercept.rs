//! Request interception (CDP `Fetch` domain, enabled on the *browser*
//! target): every request of every context pauses here — top-level
//! navigations, redirects (each hop pauses again), iframes, `fetch()`/XHR,
//! images, scripts, workers — and continues only if the destination
//! [`Policy`] allows its URL after DNS resolution. A refused request fails
//! with `BlockedByClient` and is recorded per page ([`Refusals`]) so the step
//! that caused it can say why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chromiumoxide::cdp::browser_protocol::fetch::{
    ContinueRequestParams, EnableParams, EventRequestPaused, FailRequestParams, RequestPattern,
    RequestStage,
};
use chromiumoxide::cdp::browser_protocol::network::{ErrorReason, ResourceType};
use futures::StreamExt;

use crate::browser::{BrowserError, Instance};
use crate::guard::Policy;
use crate::metrics::WebMetrics;

/// Refusals kept per page, at most (older ones are dropped).
const MAX_REFUSALS_PER_PAGE: usize = 200;

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub url: String,
    pub reason: String,
    /// `Document` for a navigation, else the resource type (`XHR`, `Image`, ...).
    pub resource_type: String,
    /// The host name did not resolve in time: `true` when the page flooded
    /// the resolver itself, `false` when the resolver is slow or down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_timeout: Option<bool>,
}

impl Refusal {
    pub fn is_navigation(&self) -> bool {
        self.resource_type == "Document"
    }
}

/// The refusals of one page: how many so far, and the latest ones.
type PageRefusals = (usize, Vec<Refusal>);

/// Refused requests by page (main frame id). Only pages of running tasks
/// are tracked.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    inner: Arc<Mutex<HashMap<String, PageRefusals>>>,
}

impl Refusals {
    pub(crate) fn register(&self, frame: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(frame.to_owned(), (0, Vec::new()));
        }
    }

    pub(crate) fn unregister(&self, frame: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(frame);
        }
    }

    /// Whose share of DNS lookups a request of `frame` uses: its page's
    /// when `frame` is a task's main frame, else one share for all other
    /// frames and workers.
    fn page_key<'a>(&self, frame: &'a str) -> &'a str {
        let known = self
            .inner
            .lock()
            .map(|m| m.contains_key(frame))
            .unwrap_or(false);
        if known {
            frame
        } else {
            "other-frames"
        }
    }

    fn record(&self, frame: &str, refusal: Refusal) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some((total, list)) = m.get_mut(frame) {
                *total += 1;
                list.push(refusal);
                if list.len() > MAX_REFUSALS_PER_PAGE {
                    list.remove(0);
                }
            }
        }
    }

    /// How many refusals the page has had so far (a mark for [`Self::since`]).
    pub fn mark(&self, frame: &str) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.get(frame).map(|(total, _)| *total))
            .unwrap_or(0)
    }

    /// Refusals of the page after `mark`.
    pub fn since(&self, frame: &str, mark: usize) -> Vec<Refusal> {
        let Ok(m) = self.inner.lock() else {
            return Vec::new();
        };
        let Some((total, list)) = m.get(frame) else {
            return Vec::new();
        };
        let new = total.saturating_sub(mark).min(list.len());
        list[list.len() - new..].to_vec()
    }
}

/// Subscribes to paused requests and enables `Fetch` for every URL on the
/// browser target; the decisions run in a task that lives as long as the
/// instance.
pub(crate) async fn start(
    instance: Arc<Instance>,
    policy: Arc<Policy>,
    refusals: Refusals,
    metrics: WebMetrics,
    block_images: bool,
) -> Result<(), BrowserError> {
    let mut paused = instance.event_listener::<EventRequestPaused>().await?;
    let enable = EnableParams::builder()
        .pattern(
            RequestPattern::builder()
                .url_pattern("*")
                .request_stage(RequestStage::Request)
                .build(),
        )
        .build();
    instance.execute("enable Fetch", enable).await?;
    let dead = instance.dead_token().clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = dead.cancelled() => return,
                e = paused.next() => e,
            };
            let Some(event) = event else { return };
            tokio::spawn(decide(
                instance.clone(),
                policy.clone(),
                refusals.clone(),
                metrics.clone(),
                block_images,
                event,
            ));
        }
    });
    Ok(())
}

async fn decide(
    instance: Arc<Instance>,
    policy: Arc<Policy>,
    refusals: Refusals,
    metrics: WebMetrics,
    block_images: bool,
    event: Arc<EventRequestPaused>,
) {
    let url = &event.request.url;
    let id = event.request_id.clone();
    let verdict = if block_images && event.resource_type == ResourceType::Image {
        Err(None)
    } else {
        let page = refusals.page_key(event.frame_id.inner());
        policy
            .check_url_with(url, &policy.resolver, page)
            .await
            .map_err(Some)
    };
    let result = match verdict {
        Ok(()) => instance
            .execute("continue request", ContinueRequestParams::new(id))
            .await
            .map(|_| ()),
        Err(refused) => {
            if let Some(refused) = refused {
                let resource_type = event.resource_type.as_ref().to_owned();
                let kind = if event.resource_type == ResourceType::Document {
                    "navigation"
                } else {
                    "subresource"
                };
                metrics.requests_blocked.with_label_values(&[kind]).inc();
                tracing::info!(url = %url, reason = %refused.reason, resource_type = %resource_type, "Request refused by the destination policy.");
                refusals.record(
                    event.frame_id.inner(),
                    Refusal {
                        url: url.clone(),
                        reason: refused.reason,
                        resource_type,
                        dns_timeout: refused.dns_timeout,
                    },
                );
            }
            instance
                .execute(
                    "fail request",
                    FailRequestParams::new(id, ErrorReason::BlockedByClient),
                )
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = result {
        // The request (or its page) may be gone already; nothing to do.
        tracing::debug!(url = %url, error = %e, "Could not answer a paused request.");
    }
}

//! What a task's page is doing, from its CDP events: navigations of the main
//! frame and requests in flight. [`PageEvents::settle`] waits, after an
//! action, until a navigation it caused has loaded and the network is quiet —
//! event-driven and bounded, never a fixed sleep.
//!
//! Also [`evaluate`]: run JavaScript in the page's main world and get JSON
//! back, telling "the page navigated away meanwhile" apart from real errors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::network::{
    EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, ResourceType,
};
use chromiumoxide::cdp::browser_protocol::page::CreateIsolatedWorldParams;
use chromiumoxide::cdp::browser_protocol::page::{
    DialogType, EventFrameNavigated, EventFrameRequestedNavigation, EventFrameStartedLoading,
    EventFrameStoppedLoading, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
};
use chromiumoxide::cdp::js_protocol::runtime::{EvaluateParams, ExecutionContextId};
use chromiumoxide::error::CdpError;
use chromiumoxide::Page;
use futures::stream::{BoxStream, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a requested navigation may take to start loading before the
/// settle wait stops expecting it (e.g. it was cancelled, or was a download).
const NAV_START_GRACE: Duration = Duration::from_millis(1500);
/// Longest wait for the network to go quiet once no navigation is pending
/// (long-polling pages never go quiet).
const QUIET_CAP: Duration = Duration::from_millis(1500);

/// Main-frame navigation counters and requests in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NavState {
    /// `Page.frameRequestedNavigation` of the main frame.
    pub requested: u64,
    /// `Page.frameStartedLoading` of the main frame.
    pub started: u64,
    /// `Page.frameStoppedLoading` of the main frame.
    pub stopped: u64,
    /// `Page.frameNavigated` of the main frame (a new document committed).
    pub committed: u64,
    /// Requests of this page not yet finished or failed.
    pub inflight: usize,
    /// Main-frame document requests that failed (refused, DNS, connection...).
    pub doc_failed: u64,
    /// The last of those: URL and Chromium's error text.
    pub last_doc_failure: Option<(String, String)>,
    /// JavaScript dialogs (alert, confirm, beforeunload) dismissed so far.
    pub dialogs: u64,
    /// The page's event streams ended (page closed or browser gone).
    pub ended: bool,
}

impl NavState {
    fn loading(&self) -> bool {
        self.started > self.stopped
    }
}

/// How a settle wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing was loading and the network was quiet.
    Quiet,
    /// A navigation happened and finished loading.
    Navigated,
    /// Still loading when the budget ran out.
    TimedOut,
    /// The page or the browser went away.
    Ended,
}

enum Ev {
    Requested(Arc<EventFrameRequestedNavigation>),
    Started(Arc<EventFrameStartedLoading>),
    Stopped(Arc<EventFrameStoppedLoading>),
    Navigated(Arc<EventFrameNavigated>),
    Sent(Arc<EventRequestWillBeSent>),
    Finished(Arc<EventLoadingFinished>),
    Failed(Arc<EventLoadingFailed>),
    Dialog(Arc<EventJavascriptDialogOpening>),
}

/// Live view of a page's navigation state.
pub struct PageEvents {
    rx: watch::Receiver<NavState>,
    task: tokio::task::JoinHandle<()>,
}

impl PageEvents {
    /// Subscribes to the page's events; call before the first action.
    pub async fn start(page: &Page, main_frame: &str) -> Result<Self, CdpError> {
        // Subscribed all at once: each subscription is a message to the CDP
        // handler task, and in sequence they wait for it one after another.
        let (requested, started, stopped, navigated, sent, finished, failed, dialog) = futures::try_join!(
            page.event_listener::<EventFrameRequestedNavigation>(),
            page.event_listener::<EventFrameStartedLoading>(),
            page.event_listener::<EventFrameStoppedLoading>(),
            page.event_listener::<EventFrameNavigated>(),
            page.event_listener::<EventRequestWillBeSent>(),
            page.event_listener::<EventLoadingFinished>(),
            page.event_listener::<EventLoadingFailed>(),
            page.event_listener::<EventJavascriptDialogOpening>(),
        )?;
        let streams: Vec<BoxStream<'static, Ev>> = vec![
            requested.map(Ev::Requested).boxed(),
            started.map(Ev::Started).boxed(),
            stopped.map(Ev::Stopped).boxed(),
            navigated.map(Ev::Navigated).boxed(),
            sent.map(Ev::Sent).boxed(),
            finished.map(Ev::Finished).boxed(),
            failed.map(Ev::Failed).boxed(),
            dialog.map(Ev::Dialog).boxed(),
        ];
        let dialog_page = page.clone();
        let (tx, rx) = watch::channel(NavState::default());
        let main = main_frame.to_owned();
        let task = tokio::spawn(async move {
            let mut all = futures::stream::select_all(streams);
            // Each event type comes on its own channel, so events of one
            // request can be seen out of order (its end before its start):
            // the bookkeeping below does not depend on the order.
            // request id → loader id, of requests in flight
            let mut inflight: HashMap<String, String> = HashMap::new();
            // requests that finished or failed (a later "sent" is stale)
            let mut ended: HashSet<String> = HashSet::new();
            // request id → URL, of main-frame documents in flight
            let mut docs: HashMap<String, String> = HashMap::new();
            // failures seen before their request: id → error (None: aborted)
            let mut early_failures: HashMap<String, Option<String>> = HashMap::new();
            while let Some(ev) = all.next().await {
                if let Ev::Dialog(d) = &ev {
                    // A dialog blocks the page until answered: dismiss it
                    // (accepting alerts and "leave page?" prompts).
                    let accept = matches!(d.r#type, DialogType::Alert | DialogType::Beforeunload);
                    tracing::debug!(kind = ?d.r#type, message = %d.message, "Dismissing a JavaScript dialog.");
                    let page = dialog_page.clone();
                    tokio::spawn(async move {
                        let _ = page
                            .execute(HandleJavaScriptDialogParams::new(accept))
                            .await;
                    });
                }
                tx.send_modify(|s| {
                    let doc_failure = |s: &mut NavState, url: String, error: Option<String>| {
                        // A superseded or cancelled navigation is not a failure.
                        if let Some(error) = error {
                            s.doc_failed += 1;
                            s.last_doc_failure = Some((url, error));
                        }
                    };
                    match ev {
                        Ev::Requested(e) if e.frame_id.inner() == &main => s.requested += 1,
                        Ev::Started(e) if e.frame_id.inner() == &main => s.started += 1,
                        Ev::Stopped(e) if e.frame_id.inner() == &main => s.stopped += 1,
                        Ev::Navigated(e) if e.frame.parent_id.is_none() => {
                            s.committed += 1;
                            // Requests of the old document are gone with it.
                            let loader = e.frame.loader_id.inner().clone();
                            inflight.retain(|_, l| *l == loader);
                        }
                        Ev::Sent(e) => {
                            let id = e.request_id.inner();
                            let main_doc = e.r#type == Some(ResourceType::Document)
                                && e.frame_id.as_ref().is_some_and(|f| f.inner() == &main);
                            if ended.contains(id) {
                                if let (true, Some(error)) = (main_doc, early_failures.remove(id)) {
                                    doc_failure(s, e.request.url.clone(), error);
                                }
                            } else {
                                let long_lived = matches!(
                                    e.r#type,
                                    Some(ResourceType::EventSource | ResourceType::WebSocket)
                                );
                                if !long_lived && !e.request.url.starts_with("data:") {
                                    inflight.insert(id.clone(), e.loader_id.inner().clone());
                                }
                                if main_doc {
                                    docs.insert(id.clone(), e.request.url.clone());
                                }
                            }
                        }
                        Ev::Finished(e) => {
                            let id = e.request_id.inner();
                            inflight.remove(id);
                            docs.remove(id);
                            ended.insert(id.clone());
                        }
                        Ev::Failed(e) => {
                            let id = e.request_id.inner();
                            inflight.remove(id);
                            ended.insert(id.clone());
                            let aborted =
                                e.canceled == Some(true) || e.error_text == "net::ERR_ABORTED";
                            let error = (!aborted).then(|| e.error_text.clone());
                            match docs.remove(id) {
                                Some(url) => doc_failure(s, url, error),
                                None if e.r#type == ResourceType::Document => {
                                    early_failures.insert(id.clone(), error);
                                }
                                None => {}
                            }
                        }
                        Ev::Dialog(_) => s.dialogs += 1,
                        _ => {}
                    }
                    s.inflight = inflight.len();
                });
            }
            tx.send_modify(|s| s.ended = true);
        });
        Ok(PageEvents { rx, task })
    }

    /// The state now (take one before an action, pass it to [`Self::settle`]).
    pub fn snapshot(&self) -> NavState {
        self.rx.borrow().clone()
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    /// Waits until a navigation started since `before` has finished loading
    /// and the network is quiet, at most `budget`. With `expect_navigation`
    /// (the action reported that it started one) it first waits for that
    /// navigation to show up in the events, which may arrive a moment after
    /// the action's own answer.
    pub async fn settle(
        &self,
        before: &NavState,
        budget: Duration,
        expect_navigation: bool,
        dead: &CancellationToken,
    ) -> Settled {
        let t0 = Instant::now();
        let deadline = t0 + budget;
        let mut rx = self.rx.clone();
        let mut quiet_since: Option<Instant> = None;
        loop {
            let s = rx.borrow_and_update().clone();
            if s.ended {
                return Settled::Ended;
            }
            let now = Instant::now();
            let navigated = s.started > before.started
                || s.committed > before.committed
                || s.doc_failed > before.doc_failed;
            let awaiting_start = (expect_navigation || s.requested > before.requested)
                && !navigated
                && now < t0 + NAV_START_GRACE;
            let mut wake = deadline;
            if s.loading() || awaiting_start {
                quiet_since = None;
                if awaiting_start {
                    wake = wake.min(t0 + NAV_START_GRACE);
                }
            } else {
                let since = *quiet_since.get_or_insert(now);
                let done = if navigated {
                    Settled::Navigated
                } else {
                    Settled::Quiet
                };
                if s.inflight == 0 || now >= since + QUIET_CAP {
                    if s.inflight > 0 {
                        tracing::debug!(inflight = s.inflight, state = ?s, "Network not quiet; going on.");
                    }
                    return done;
                }
                wake = wake.min(since + QUIET_CAP);
            }
            if now >= deadline {
                return if s.loading() || awaiting_start {
                    Settled::TimedOut
                } else if navigated {
                    Settled::Navigated
                } else {
                    Settled::Quiet
                };
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Settled::Ended },
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = dead.cancelled() => return Settled::Ended,
            }
        }
    }
}

impl Drop for PageEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why an evaluation gave no value.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The document was replaced while the script ran (a navigation).
    #[error("the page navigated while the script ran")]
    Navigated,
    /// The script threw.
    #[error("script error: {0}")]
    Exception(String),
    #[error("{0}")]
    Cdp(CdpError),
}

/// Evaluates `expression` in the page's main frame, in an isolated world
/// (the DOM is shared, the JavaScript globals are not: a page that replaces
/// `String.prototype.slice`, `window.URL` or `JSON` does not change what
/// the runtime's scripts do), awaiting a returned promise; the result comes
/// back as JSON.
pub async fn evaluate(page: &Page, expression: String) -> Result<Value, EvalError> {
    let mut stale = None;
    for _ in 0..3 {
        let context = isolated_context(page, stale).await?;
        let params = EvaluateParams::builder()
            .expression(expression.clone())
            .context_id(context)
            .await_promise(true)
            .return_by_value(true)
            .build()
            .map_err(|e| EvalError::Cdp(CdpError::msg(e)))?;
        match page.execute(params).await {
            Ok(resp) => {
                let r = resp.result;
                if let Some(ex) = r.exception_details {
                    let detail = ex
                        .exception
                        .as_ref()
                        .and_then(|o| o.description.clone())
                        .unwrap_or(ex.text);
                    return Err(EvalError::Exception(detail));
                }
                return Ok(r.result.value.unwrap_or(Value::Null));
            }
            // The world we were told about is already gone (a new document
            // replaced it a moment ago): take the new one.
            Err(CdpError::Chrome(e)) if is_context_unknown(&e.message) => stale = Some(context),
            Err(CdpError::ChromeMessage(m)) if is_context_unknown(&m) => stale = Some(context),
            Err(CdpError::Chrome(e)) if is_context_gone(&e.message) => {
                return Err(EvalError::Navigated)
            }
            Err(CdpError::ChromeMessage(m)) if is_context_gone(&m) => {
                return Err(EvalError::Navigated)
            }
            Err(e) => return Err(EvalError::Cdp(e)),
        }
    }
    Err(EvalError::Navigated)
}

/// The main frame's isolated ("utility") world, which chromiumoxide creates
/// in every document; waits a moment for a new one when `stale` is the
/// last one seen, and creates one if none comes.
async fn isolated_context(
    page: &Page,
    stale: Option<ExecutionContextId>,
) -> Result<ExecutionContextId, EvalError> {
    for _ in 0..25 {
        match page.secondary_execution_context().await {
            Ok(Some(id)) if Some(id) != stale => return Ok(id),
            Ok(_) => {}
            Err(e) => return Err(EvalError::Cdp(e)),
        }
        if stale.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frame = page
        .mainframe()
        .await
        .map_err(EvalError::Cdp)?
        .ok_or(EvalError::Navigated)?;
    let params = CreateIsolatedWorldParams::builder()
        .frame_id(frame)
        .world_name(ISOLATED_WORLD)
        .build()
        .map_err(|e| EvalError::Cdp(CdpError::msg(e)))?;
    match page.execute(params).await {
        Ok(r) => Ok(r.result.execution_context_id),
        Err(CdpError::Chrome(e)) if is_context_gone(&e.message) => Err(EvalError::Navigated),
        Err(e) => Err(EvalError::Cdp(e)),
    }
}

/// Name of the isolated world the runtime creates when chromiumoxide's is
/// not there yet.
const ISOLATED_WORLD: &str = "__adp_isolated_world__";

fn is_context_unknown(message: &str) -> bool {
    message.contains("Cannot find context with specified id")
}

fn is_context_gone(message: &str) -> bool {
    message.contains("Execution context was destroyed")
        || message.contains("Inspected target navigated or closed")
        || message.contains("Cannot find default execution context")
}

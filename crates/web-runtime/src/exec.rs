//! Performs one [`Action`] on a task's page, waits for the page to settle,
//! and reports what happened. Page-side failures (no such element, refused
//! or failed navigation, timeout) come back as [`Performed::error`] — a failed
//! step; only a dead browser is an `Err` (an infrastructure failure).

use std::time::{Duration, Instant};

use adp_core::reward::{self, FinalState};
use adp_core::ErrorType;
use chromiumoxide::cdp::browser_protocol::input::{DispatchKeyEventParams, DispatchKeyEventType};
use chromiumoxide::cdp::browser_protocol::page::{
    GetNavigationHistoryParams, NavigateParams, NavigateToHistoryEntryParams,
};
use chromiumoxide::error::CdpError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actions::{Action, Target};
use crate::axtree::raw;
use crate::browser::{BrowserError, Session};
use crate::guard;
use crate::js;
use crate::observe::Observation;
use crate::page::{evaluate, EvalError, NavState, Settled};

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub struct Performed {
    /// A short account of what was done ("clicked link \"Books\"").
    pub note: String,
    /// Why the step failed, if it did.
    pub error: Option<(ErrorType, String)>,
}

impl Performed {
    fn ok(note: impl Into<String>) -> Self {
        Performed {
            note: note.into(),
            error: None,
        }
    }

    fn failed(kind: ErrorType, message: impl Into<String>) -> Self {
        Performed {
            note: String::new(),
            error: Some((kind, message.into())),
        }
    }
}

/// Performs `action` within `budget` (navigation and settling included).
pub async fn perform(
    session: &Session,
    action: &Action,
    budget: Duration,
) -> Result<Performed, BrowserError> {
    let started = Instant::now();
    let before = session.events.snapshot();
    let mark = session.refusals().mark(&session.frame_id);
    let dead = session.instance.dead_token().clone();

    let acted = tokio::select! {
        r = tokio::time::timeout(budget, act(session, action, budget, &before, mark)) => r,
        _ = dead.cancelled() => return Err(dead_error(session)),
    };
    let note = match acted {
        Err(_) => {
            return Ok(Performed::failed(
                ErrorType::Timeout,
                format!("{} did not complete within {budget:?}", action.kind()),
            ))
        }
        Ok(Err(e @ (BrowserError::Dead(_) | BrowserError::Launch(_) | BrowserError::Dns(_)))) => {
            return Err(e)
        }
        Ok(Err(e @ BrowserError::Timeout(..))) => {
            return Ok(Performed::failed(
                ErrorType::Timeout,
                format!("{}: {e}", action.kind()),
            ))
        }
        Ok(Err(e)) => return Ok(Performed::failed(ErrorType::BrowserError, e.to_string())),
        Ok(Ok(Err(failed))) => return Ok(failed),
        Ok(Ok(Ok(done))) => done,
    };
    let (note, expect_navigation) = note;

    if !action.may_navigate() {
        return Ok(Performed::ok(note));
    }
    let left = budget.saturating_sub(started.elapsed());
    let settled = session
        .events
        .settle(&before, left, expect_navigation, &dead)
        .await;
    if settled == Settled::Ended {
        return Err(session
            .instance
            .classify(BrowserError::Cdp("the page was closed".to_owned())));
    }
    let after = session.events.snapshot();
    if let Some(failure) = navigation_failure(session, &before, &after, mark)? {
        return Ok(failure);
    }
    if settled == Settled::TimedOut {
        return Ok(Performed::failed(
            ErrorType::Timeout,
            format!(
                "{}: the page did not finish loading within {budget:?}",
                action.kind()
            ),
        ));
    }
    Ok(Performed::ok(note))
}

fn dead_error(session: &Session) -> BrowserError {
    BrowserError::Dead(
        session
            .instance
            .death()
            .unwrap_or_else(|| "browser died".to_owned()),
    )
}

/// A navigation of the main frame since `before` that was refused or failed.
fn navigation_failure(
    session: &Session,
    before: &NavState,
    after: &NavState,
    mark: usize,
) -> Result<Option<Performed>, BrowserError> {
    let refused: Vec<_> = session
        .refusals()
        .since(&session.frame_id, mark)
        .into_iter()
        .filter(|r| r.is_navigation())
        .collect();
    if let Some(r) = refused.last() {
        if r.dns_timeout == Some(false) {
            // The resolver did not answer although this page did not flood
            // it: not the task's failure (retried as an infrastructure one).
            return Err(BrowserError::Dns(format!(
                "navigation to {} not checked: {}",
                r.url, r.reason
            )));
        }
        return Ok(Some(Performed::failed(
            ErrorType::NetworkError,
            format!("navigation to {} refused: {}", r.url, r.reason),
        )));
    }
    if after.doc_failed > before.doc_failed {
        let (url, error) = after
            .last_doc_failure
            .clone()
            .unwrap_or_else(|| ("the page".to_owned(), "unknown error".to_owned()));
        return Ok(Some(Performed::failed(
            ErrorType::NetworkError,
            format!("navigation to {url} failed: {}", explain_net_error(&error)),
        )));
    }
    Ok(None)
}

/// Chromium's error name, with a word on the ones that read oddly.
fn explain_net_error(error: &str) -> String {
    let why = match error {
        // Everything goes through the egress proxy, so a refused or
        // unreachable server shows up as a SOCKS failure.
        "net::ERR_SOCKS_CONNECTION_FAILED" | "net::ERR_PROXY_CONNECTION_FAILED" => {
            "could not connect to the server (refused or unreachable)"
        }
        "net::ERR_SOCKS_CONNECTION_HOST_UNREACHABLE" => {
            "the host name does not resolve or is unreachable"
        }
        "net::ERR_NAME_NOT_RESOLVED" => "the host name does not resolve",
        "net::ERR_CONNECTION_REFUSED" => "the server refused the connection",
        e if e.starts_with("net::ERR_CERT_") => {
            "the server's HTTPS certificate is not valid; WEB_IGNORE_HTTPS_ERRORS=true accepts it"
        }
        _ => return error.to_owned(),
    };
    format!("{error} ({why})")
}

/// What an action did (and whether it started a navigation to wait for),
/// or the failed step.
type ActResult = Result<Result<(String, bool), Performed>, BrowserError>;

/// The action itself, before settling.
async fn act(
    session: &Session,
    action: &Action,
    budget: Duration,
    before: &NavState,
    mark: usize,
) -> ActResult {
    match action {
        Action::Goto { url } => {
            if let Err(why) = guard::check_navigation_scheme(url) {
                return Ok(Err(Performed::failed(
                    ErrorType::NetworkError,
                    format!("navigation to {url} refused: {why}"),
                )));
            }
            // CDP navigation (no page script involved: a page cannot
            // redirect it by replacing `location` or `URL`). A new one
            // replaces a navigation that never finished.
            match navigate(&session.page, &session.frame_id, url).await {
                Ok(Navigation::Started { cross_document }) => {
                    Ok(Ok((format!("navigated to {url}"), cross_document)))
                }
                Ok(Navigation::Failed(error)) => {
                    let after = session.events.snapshot();
                    Ok(Err(navigation_failure(session, before, &after, mark)?
                        .unwrap_or_else(|| {
                            Performed::failed(
                                ErrorType::NetworkError,
                                format!(
                                    "navigation to {url} failed: {}",
                                    explain_net_error(&error)
                                ),
                            )
                        })))
                }
                Err(e) => match cdp_failure(session, "goto", e) {
                    BrowserError::Dead(why) => Err(BrowserError::Dead(why)),
                    other => Ok(Err(Performed::failed(
                        ErrorType::BrowserError,
                        other.to_string(),
                    ))),
                },
            }
        }
        Action::Click { target } => dom_action(session, json!({"type": "click"}), target).await,
        Action::Fill { target, text } => {
            dom_action(session, json!({"type": "fill", "text": text}), target).await
        }
        Action::FillAndSubmit { target, text } => {
            let r = dom_action(
                session,
                json!({"type": "fill_and_submit", "text": text}),
                target,
            )
            .await?;
            match r {
                Ok((note, _)) if note.ends_with("|press_enter") => {
                    let note = note.trim_end_matches("|press_enter").to_owned();
                    Ok(press_key(session, "Enter")
                        .await?
                        .map(|(k, nav)| (format!("{note}, then {k}"), nav)))
                }
                other => Ok(other),
            }
        }
        Action::Select { target, value } => {
            dom_action(session, json!({"type": "select", "value": value}), target).await
        }
        Action::Scroll { direction } => {
            let d = match direction {
                crate::actions::Direction::Up => "up",
                crate::actions::Direction::Down => "down",
            };
            let expr = js::call(js::ACT, json!({"type": "scroll", "direction": d}));
            Ok(page_call(session, expr, "scroll")
                .await?
                .map(|_| (format!("scrolled {d}"), false)))
        }
        Action::Press { key } => press_key(session, key).await,
        Action::Back => go_back(session).await,
        Action::Wait { ms } => {
            let d = Duration::from_millis(*ms).min(budget);
            tokio::time::sleep(d).await;
            Ok(Ok((format!("waited {} ms", d.as_millis()), false)))
        }
        Action::Extract => Ok(Ok(("read the page".to_owned(), false))),
        Action::Finish { .. } => Ok(Ok(("finished".to_owned(), false))),
    }
}

/// How a CDP navigation began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Navigation {
    /// Under way; `cross_document` false for a jump within the document.
    Started { cross_document: bool },
    /// Chromium's error (`net::ERR_...`) before any document committed.
    Failed(String),
}

/// `Page.navigate` of the main frame `frame` to the absolute `url`. A
/// navigation that was replaced or turned into a download is `Started`
/// without a new document.
pub async fn navigate(
    page: &chromiumoxide::Page,
    frame: &str,
    url: &str,
) -> Result<Navigation, CdpError> {
    let params = NavigateParams::builder()
        .url(url)
        .frame_id(frame.to_owned())
        .build()
        .map_err(CdpError::msg)?;
    let r = page.execute(params).await?.result;
    Ok(match r.error_text.filter(|e| !e.is_empty()) {
        Some(e) if e == "net::ERR_ABORTED" => Navigation::Started {
            cross_document: false,
        },
        Some(e) => Navigation::Failed(e),
        None => Navigation::Started {
            cross_document: r.loader_id.is_some(),
        },
    })
}

/// Runs the in-page action script for a targeted action.
async fn dom_action(session: &Session, mut args: Value, target: &Target) -> ActResult {
    let kind = args["type"].as_str().unwrap_or("action").to_owned();
    let v = match target {
        Target::Node(id) => {
            args["node"] = json!(id);
            node_call(session, *id, args, &kind).await?
        }
        Target::Selector(s) => {
            args["selector"] = json!(s);
            page_call(session, js::call(js::ACT, args), &kind).await?
        }
        Target::Element(i) => {
            args["element"] = json!(i);
            page_call(session, js::call(js::ACT, args), &kind).await?
        }
    };
    let v = match v {
        Ok(v) => v,
        Err(failed) => return Ok(Err(failed)),
    };
    // Navigated while the script ran: the action happened.
    let Some(obj) = v.as_object() else {
        return Ok(Ok((
            format!("{kind} on {} (the page navigated)", target.describe()),
            true,
        )));
    };
    if obj.get("ok").and_then(Value::as_bool) == Some(true) {
        let note = obj
            .get("note")
            .and_then(Value::as_str)
            .unwrap_or(&kind)
            .to_owned();
        let navigating = obj.get("navigating").and_then(Value::as_bool) == Some(true);
        if obj.get("press_enter").and_then(Value::as_bool) == Some(true) {
            return Ok(Ok((format!("{note}|press_enter"), navigating)));
        }
        Ok(Ok((note, navigating)))
    } else {
        let error = obj
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the action failed in the page");
        Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            format!("{kind}: {error}"),
        )))
    }
}

/// Runs [`js::ACT`] on the element with the accessibility-tree id `id`:
/// `DOM.resolveNode` in a fresh isolated world of the node's frame (the
/// page's own JavaScript cannot change what the action script does), then
/// `Runtime.callFunctionOn`. An id the page no longer has (or never had) is a
/// failed step.
async fn node_call(
    session: &Session,
    id: u64,
    args: Value,
    what: &str,
) -> Result<Result<Value, Performed>, BrowserError> {
    let frame = session.node_frame(id);
    let not_found = || {
        Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            format!(
                "{what}: no element e{id} on this page (ids come from the accessibility tree of the last observation; a new page has new ids)"
            ),
        )))
    };
    let Some(frame) = frame else {
        return not_found();
    };
    let world = raw(
        &session.page,
        "Page.createIsolatedWorld",
        json!({"frameId": frame, "worldName": NODE_WORLD}),
    )
    .await;
    let context = match world {
        Ok(v) => v.get("executionContextId").and_then(Value::as_i64),
        Err(e) => return node_error(session, what, e, not_found),
    };
    let resolved = raw(
        &session.page,
        "DOM.resolveNode",
        json!({"backendNodeId": id, "executionContextId": context}),
    )
    .await;
    let object = match resolved {
        Ok(v) => v
            .pointer("/object/objectId")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Err(e) => return node_error(session, what, e, not_found),
    };
    let Some(object) = object else {
        return not_found();
    };
    let called = raw(
        &session.page,
        "Runtime.callFunctionOn",
        json!({"functionDeclaration": js::act_on_node(), "objectId": object,
               "arguments": [{"value": args}], "awaitPromise": true, "returnByValue": true}),
    )
    .await;
    match called {
        Ok(r) => {
            if let Some(ex) = r.get("exceptionDetails") {
                let mut m = ex
                    .pointer("/exception/description")
                    .or_else(|| ex.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or("exception")
                    .to_owned();
                crate::observe::cut(&mut m, 300);
                return Ok(Err(Performed::failed(
                    ErrorType::BrowserError,
                    format!("{what}: {m}"),
                )));
            }
            Ok(Ok(r
                .pointer("/result/value")
                .cloned()
                .unwrap_or(Value::Null)))
        }
        Err(e) => node_error(session, what, e, || Ok(Ok(Value::Null))),
    }
}

/// Name of the isolated worlds actions on element ids run in.
const NODE_WORLD: &str = "__adp_node_action__";

/// A CDP error of [`node_call`]: the browser is dead, or the page navigated
/// (`on_gone`), or the node is not there.
fn node_error(
    session: &Session,
    what: &str,
    e: CdpError,
    on_gone: impl FnOnce() -> Result<Result<Value, Performed>, BrowserError>,
) -> Result<Result<Value, Performed>, BrowserError> {
    let m = e.to_string();
    if m.contains("No node with given id")
        || m.contains("No node found")
        || m.contains("Node with given id")
        || m.contains("No frame")
        || m.contains("Cannot find context")
        || m.contains("destroyed")
        || m.contains("navigated")
    {
        return on_gone();
    }
    match cdp_failure(session, what, e) {
        BrowserError::Dead(why) => Err(BrowserError::Dead(why)),
        other => Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            other.to_string(),
        ))),
    }
}

/// Evaluates `expr`; a navigation during the call counts as success
/// (`Value::Null`), a script error as a failed step.
async fn page_call(
    session: &Session,
    expr: String,
    what: &str,
) -> Result<Result<Value, Performed>, BrowserError> {
    match evaluate(&session.page, expr).await {
        Ok(v) => Ok(Ok(v)),
        Err(EvalError::Navigated) => Ok(Ok(Value::Null)),
        Err(EvalError::Exception(m)) => Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            format!("{what}: {m}"),
        ))),
        Err(EvalError::Cdp(e)) => Err(cdp_failure(session, what, e)),
    }
}

/// A CDP error: `Dead` if the browser died, else a step failure is encoded
/// as `BrowserError::Cdp` for the caller to turn into a failed step.
fn cdp_failure(session: &Session, what: &str, e: CdpError) -> BrowserError {
    let other = match e {
        CdpError::Timeout => BrowserError::Timeout("CDP command", session.request_timeout()),
        CdpError::Ws(_)
        | CdpError::Io(_)
        | CdpError::ChannelSendError(_)
        | CdpError::NoResponse => BrowserError::Dead(format!("{what}: CDP connection lost ({e})")),
        other => BrowserError::Cdp(format!("{what}: {other}")),
    };
    session.instance.classify(other)
}

async fn press_key(session: &Session, key: &str) -> ActResult {
    let Some(def) = chromiumoxide::keys::get_key_definition(key) else {
        return Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            format!("press: unknown key {key:?} (use names like Enter, Tab, Escape, ArrowDown, or one character)"),
        )));
    };
    // Note whether the key starts a navigation (Enter in a form, ...).
    if let Err(failed) = page_call(session, js::WATCH_NAVIGATION.to_owned(), "press").await? {
        return Ok(Err(failed));
    }
    let mut cmd = DispatchKeyEventParams::builder()
        .key(def.key)
        .code(def.code)
        .windows_virtual_key_code(def.key_code)
        .native_virtual_key_code(def.key_code);
    let down = if let Some(text) = def.text {
        cmd = cmd.text(text);
        DispatchKeyEventType::KeyDown
    } else if def.key.len() == 1 {
        cmd = cmd.text(def.key);
        DispatchKeyEventType::KeyDown
    } else {
        DispatchKeyEventType::RawKeyDown
    };
    for kind in [down, DispatchKeyEventType::KeyUp] {
        let params = cmd
            .clone()
            .r#type(kind)
            .build()
            .map_err(BrowserError::Cdp)?;
        if let Err(e) = session.page.execute(params).await {
            return match cdp_failure(session, "press", e) {
                BrowserError::Dead(why) => Err(BrowserError::Dead(why)),
                other => Ok(Err(Performed::failed(
                    ErrorType::BrowserError,
                    other.to_string(),
                ))),
            };
        }
    }
    let navigating = match page_call(session, js::NAVIGATING.to_owned(), "press").await? {
        // Null: the page was replaced meanwhile.
        Ok(v) => v.as_bool().unwrap_or(true),
        Err(_) => true,
    };
    Ok(Ok((format!("pressed {}", def.key), navigating)))
}

async fn go_back(session: &Session) -> ActResult {
    let history = match session
        .page
        .execute(GetNavigationHistoryParams::default())
        .await
    {
        Ok(h) => h.result,
        Err(e) => {
            return match cdp_failure(session, "back", e) {
                BrowserError::Dead(why) => Err(BrowserError::Dead(why)),
                other => Ok(Err(Performed::failed(
                    ErrorType::BrowserError,
                    other.to_string(),
                ))),
            }
        }
    };
    let idx = usize::try_from(history.current_index).unwrap_or(0);
    let Some(prev) = idx.checked_sub(1).and_then(|i| history.entries.get(i)) else {
        return Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            "back: there is no previous page in this tab's history",
        )));
    };
    if prev.url == "about:blank" {
        return Ok(Err(Performed::failed(
            ErrorType::BrowserError,
            "back: there is no previous page in this tab's history",
        )));
    }
    let url = prev.url.clone();
    if let Err(e) = session
        .page
        .execute(NavigateToHistoryEntryParams::new(prev.id))
        .await
    {
        return match cdp_failure(session, "back", e) {
            BrowserError::Dead(why) => Err(BrowserError::Dead(why)),
            other => Ok(Err(Performed::failed(
                ErrorType::BrowserError,
                other.to_string(),
            ))),
        };
    }
    Ok(Ok((format!("went back to {url}"), true)))
}

/// What the task's checks read on the final page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinalPage {
    /// URL, title and visible text (cut at [`reward::MAX_RECORDED_TEXT`]).
    pub state: FinalState,
    /// Per selector: whether an element matches (`None`: invalid selector).
    pub found: Vec<Option<bool>>,
    /// Whether the page could be read (else `state` is the last observation's).
    pub read: bool,
}

#[derive(Deserialize)]
struct FinalRead {
    url: String,
    title: String,
    text: String,
    text_len: usize,
    found: Vec<Option<bool>>,
}

/// Reads the final page for the checks. With no selector to test and the
/// whole text in the last observation, the observation is enough (no page
/// call). A page that cannot be read gives the last observation's state
/// and `read: false`; only a dead browser is an `Err`.
pub async fn read_final_page(
    session: &Session,
    last: &Observation,
    selectors: &[&str],
) -> Result<FinalPage, BrowserError> {
    let from_obs = || FinalPage {
        state: FinalState {
            url: Some(last.url.clone()),
            title: Some(last.title.clone()),
            text: Some(last.text.clone()),
            text_truncated: last.text_len > last.text.chars().count(),
            ..FinalState::default()
        },
        found: Vec::new(),
        read: false,
    };
    if selectors.is_empty() && last.text_len <= last.text.chars().count() {
        return Ok(FinalPage {
            read: true,
            ..from_obs()
        });
    }
    let expr = js::call(
        js::FINAL_STATE,
        format!("{}, {}", json!(selectors), reward::MAX_RECORDED_TEXT),
    );
    let value = match evaluate(&session.page, expr).await {
        Ok(v) => v,
        Err(EvalError::Cdp(e)) => {
            return match cdp_failure(session, "read the final page", e) {
                BrowserError::Dead(why) => Err(BrowserError::Dead(why)),
                _ => Ok(from_obs()),
            }
        }
        Err(_) => return Ok(from_obs()),
    };
    let Ok(r) = serde_json::from_value::<FinalRead>(value) else {
        return Ok(from_obs());
    };
    Ok(FinalPage {
        state: FinalState {
            text_truncated: r.text_len > r.text.chars().count(),
            url: Some(r.url),
            title: Some(r.title),
            text: Some(r.text),
            ..FinalState::default()
        },
        found: r.found,
        read: true,
    })
}

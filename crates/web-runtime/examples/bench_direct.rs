//! The baseline of `scripts/bench_web.sh`: the same 3-step tasks the
//! pipeline runs, driven directly over CDP with chromiumoxide — no Redis, no
//! worker, no observations, no trajectory files, no request interception.
//!
//! Each task: a fresh browser context and page; `goto index.html`; fill the
//! search box and submit the form; click the first result; dispose the
//! context. Navigations are awaited on the load event (subscribed before
//! the action).
//!
//!     bench_direct <base-url> <tasks> <concurrency> [chrome-path]
//!
//! Prints `direct_tasks_per_sec=<rate> ok=<n> failed=<n> seconds=<s>`.
//!
//! `BENCH_DIRECT_INTERCEPT=1` adds a pass-through `Fetch` interception on the
//! browser target (every request paused and continued, nothing checked), to
//! measure what the interception alone costs.
//!
//! `BENCH_DIRECT_SCRIPTS=1` does all the browser-side work of the pipeline:
//! Chromium launched and sessions opened by the runtime's own
//! [`BrowserManager`] (its flags, its user `nobody` with Chromium's sandbox
//! when run as root, its memory cgroup, its `Fetch` interception checking
//! every request, a fresh context per task with its page-event streams),
//! and the steps performed with the runtime's page scripts — the CDP `goto`
//! (`Page.navigate`), the action script for fill-and-submit and click, and
//! an observation after each step. Only the egress proxy is left out (as on
//! the other rows). The observation is the runtime's for
//! `BENCH_OBSERVATION` (`text`, `axtree`, `both`; default `both`, the
//! runtime's default).
//!
//! The last line also gives the CPU seconds of this process
//! (`client_cpu_secs=`, Chromium not included).
//!
//! `BENCH_OBSERVE_COST=<n>` measures instead what one observation costs per
//! step in each mode: on each demo page (one page, nothing else running),
//! `n` reads of the page as the runtime does them after a step (script and
//! accessibility tree, rendered and capped, the raw tree serialised as
//! stored), timed one after another. Prints one `observe_cost` line a mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::page::EventLoadEventFired;
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams, DisposeBrowserContextParams,
};
use chromiumoxide::Page;
use futures::StreamExt;
use tokio::sync::Semaphore;
use web_runtime::agent::AgentSettings;
use web_runtime::browser::{BrowserManager, BrowserSettings, DEFAULT_CHROME_PATH};
use web_runtime::js;
use web_runtime::observe::{Observation, ObservationMode};
use web_runtime::page::{evaluate, EvalError};

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

async fn act_and_wait_load(page: &Page, js: &str) -> Result<(), String> {
    let mut loads = page
        .event_listener::<EventLoadEventFired>()
        .await
        .map_err(|e| e.to_string())?;
    match evaluate(page, js.to_owned()).await {
        // The runtime's scripts await a moment; the navigation may replace
        // the document first.
        Ok(_) | Err(EvalError::Navigated) => {}
        Err(e) => return Err(format!("{js}: {e}")),
    }
    tokio::time::timeout(STEP_TIMEOUT, loads.next())
        .await
        .map_err(|_| format!("no load event after {js}"))?;
    Ok(())
}

/// The observation mode of `BENCH_OBSERVATION` (default `both`).
fn mode() -> ObservationMode {
    match std::env::var("BENCH_OBSERVATION").as_deref() {
        Ok("text") => ObservationMode::Text,
        Ok("axtree") => ObservationMode::Axtree,
        _ => ObservationMode::Both,
    }
}

/// The runtime's observation of the page, with its default bounds, rendered
/// and capped as a step records it; the raw tree serialised as stored.
/// Returns (rendered bytes, raw tree bytes).
async fn observe_as(page: &Page, mode: ObservationMode) -> Result<(usize, usize), String> {
    let bounds = AgentSettings::default();
    let frame = page.target_id().inner().clone();
    let (o, ax) = Observation::read_with(
        page,
        &frame,
        mode,
        bounds.max_text,
        bounds.max_elements,
        bounds.max_ax_nodes,
    )
    .await
    .map_err(|e| format!("observation: {e}"))?;
    let rendered = o.render_capped(bounds.max_bytes).len();
    let raw = ax.map_or(0, |a| {
        web_runtime::axtree::raw_record(&a.raw, bounds.max_raw_axtree_bytes)
            .0
            .len()
    });
    Ok((rendered, raw))
}

async fn observe(page: &Page) -> Result<(), String> {
    observe_as(page, mode()).await.map(|_| ())
}

/// `BENCH_OBSERVE_COST=<n>`: `n` observations of each demo page per mode.
async fn observe_cost(browser: &Browser, base: &str, n: usize) -> Result<(), String> {
    let pages = [
        "index.html",
        "results.html?q=rust",
        "item.html?id=1",
        "list.html",
        "order.html",
    ];
    let page = browser
        .new_page("about:blank")
        .await
        .map_err(|e| e.to_string())?;
    for mode in [
        ObservationMode::Text,
        ObservationMode::Axtree,
        ObservationMode::Both,
    ] {
        let mut ms = Vec::new();
        let (mut rendered, mut raw) = (0usize, 0usize);
        for path in pages {
            page.goto(format!("{base}/{path}"))
                .await
                .map_err(|e| e.to_string())?;
            observe_as(&page, mode).await?; // warm-up
            for _ in 0..n {
                let t = Instant::now();
                let (r, w) = observe_as(&page, mode).await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                rendered += r;
                raw += w;
            }
        }
        ms.sort_by(f64::total_cmp);
        let q = |f: f64| ms[((ms.len() - 1) as f64 * f) as usize];
        let k = ms.len().max(1);
        println!(
            "observe_cost mode={} n={} median_ms={:.2} p90_ms={:.2} mean_rendered_bytes={} mean_raw_tree_bytes={}",
            mode.as_str(),
            ms.len(),
            q(0.5),
            q(0.9),
            rendered / k,
            raw / k
        );
    }
    Ok(())
}

/// One task in a session of the runtime's [`BrowserManager`], steps by the
/// runtime's page scripts (`BENCH_DIRECT_SCRIPTS=1`).
async fn one_session_task(manager: &BrowserManager, base: &str, i: usize) -> Result<(), String> {
    let session = manager.open_session().await.map_err(|e| e.to_string())?;
    let page = &session.page;
    let result = async {
        let start = format!("{base}/index.html");
        let term = ["rust", "garden", "kettle", "pan"][i % 4];
        // The runtime's goto: a CDP navigation, awaited on the load event.
        let mut loads = page
            .event_listener::<EventLoadEventFired>()
            .await
            .map_err(|e| e.to_string())?;
        web_runtime::exec::navigate(page, &session.frame_id, &start)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(STEP_TIMEOUT, loads.next())
            .await
            .map_err(|_| "no load event after goto".to_owned())?;
        observe(page).await?;
        let fill = serde_json::json!({"type": "fill_and_submit", "selector": "input[name=q]", "text": term});
        act_and_wait_load(page, &js::call(js::ACT, fill)).await?;
        observe(page).await?;
        let click = serde_json::json!({"type": "click", "selector": "#results a"});
        act_and_wait_load(page, &js::call(js::ACT, click)).await?;
        observe(page).await?;
        final_title_ok(page).await
    }
    .await;
    session.close().await;
    result
}

/// The task ended on an item page.
async fn final_title_ok(page: &Page) -> Result<(), String> {
    let title: String = page
        .evaluate_expression("document.title")
        .await
        .map_err(|e| e.to_string())?
        .into_value()
        .map_err(|e| e.to_string())?;
    if title.ends_with("- Demo Catalogue") && !title.starts_with("Search results") {
        Ok(())
    } else {
        Err(format!("unexpected final page {title:?}"))
    }
}

async fn one_task(browser: &Browser, base: &str, i: usize, scripts: bool) -> Result<(), String> {
    let ctx = browser
        .create_browser_context(CreateBrowserContextParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        let page = browser
            .new_page(
                CreateTargetParams::builder()
                    .url("about:blank")
                    .browser_context_id(ctx.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| e.to_string())?;
        let start = format!("{base}/index.html");
        let term = ["rust", "garden", "kettle", "pan"][i % 4];
        if scripts {
            // The runtime's goto: a CDP navigation, awaited on the load event.
            let mut loads = page
                .event_listener::<EventLoadEventFired>()
                .await
                .map_err(|e| e.to_string())?;
            let frame = page.target_id().inner().clone();
            web_runtime::exec::navigate(&page, &frame, &start)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(STEP_TIMEOUT, loads.next())
                .await
                .map_err(|_| "no load event after goto".to_owned())?;
            observe(&page).await?;
            let fill = serde_json::json!({"type": "fill_and_submit", "selector": "input[name=q]", "text": term});
            act_and_wait_load(&page, &js::call(js::ACT, fill)).await?;
            observe(&page).await?;
            let click = serde_json::json!({"type": "click", "selector": "#results a"});
            act_and_wait_load(&page, &js::call(js::ACT, click)).await?;
            observe(&page).await?;
        } else {
            page.goto(start).await.map_err(|e| e.to_string())?;
            act_and_wait_load(
                &page,
                &format!(
                    "(() => {{ const q = document.querySelector('input[name=q]'); q.value = '{term}'; \
                     q.dispatchEvent(new Event('input', {{bubbles: true}})); q.form.requestSubmit(); }})()"
                ),
            )
            .await?;
            act_and_wait_load(&page, "document.querySelector('#results a').click()").await?;
        }
        final_title_ok(&page).await
    }
    .await;
    let _ = browser.execute(DisposeBrowserContextParams::new(ctx)).await;
    result
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .ok_or("usage: bench_direct <base-url> <tasks> <concurrency> [chrome]")?
        .clone();
    let n: usize = args.get(2).map_or(Ok(200), |s| s.parse())?;
    let p: usize = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let chrome = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| DEFAULT_CHROME_PATH.to_owned());

    // The runtime's own Chromium flags (without its egress proxy).
    let mut settings = BrowserSettings::new(&chrome);
    settings.proxy = None;
    let scripts = std::env::var("BENCH_DIRECT_SCRIPTS").is_ok_and(|v| v == "1");
    if scripts && std::env::var("BENCH_OBSERVE_COST").map_or(true, |v| v.is_empty() || v == "0") {
        settings.max_pages = p;
        return run_with_manager(settings, &base, n, p).await;
    }
    let profile = tempfile::tempdir()?;
    let config = BrowserConfig::builder()
        .chrome_executable(&chrome)
        .no_sandbox()
        .user_data_dir(profile.path())
        .request_timeout(Duration::from_secs(30))
        .respect_https_errors()
        .args(settings.args())
        .build()?;
    let (browser, mut handler) = Browser::launch(config).await?;
    let pump = tokio::spawn(async move { while handler.next().await.is_some() {} });

    if let Some(n) = std::env::var("BENCH_OBSERVE_COST")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        let r = observe_cost(&browser, &base, n).await;
        let mut browser = browser;
        let _ = browser.close().await;
        let _ = browser.wait().await;
        pump.abort();
        return r.map_err(Into::into);
    }
    let browser = Arc::new(browser);
    if std::env::var("BENCH_DIRECT_INTERCEPT").is_ok_and(|v| v == "1") {
        use chromiumoxide::cdp::browser_protocol::fetch::{
            ContinueRequestParams, EnableParams, EventRequestPaused, RequestPattern,
        };
        let mut paused = browser.event_listener::<EventRequestPaused>().await?;
        browser
            .execute(
                EnableParams::builder()
                    .pattern(RequestPattern::builder().url_pattern("*").build())
                    .build(),
            )
            .await?;
        let b = browser.clone();
        tokio::spawn(async move {
            while let Some(ev) = paused.next().await {
                let b = b.clone();
                tokio::spawn(async move {
                    let _ = b
                        .execute(ContinueRequestParams::new(ev.request_id.clone()))
                        .await;
                });
            }
        });
        eprintln!("pass-through Fetch interception on");
    }
    let slots = Arc::new(Semaphore::new(p));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let (b, base) = (browser.clone(), base.clone());
        tasks.spawn(async move {
            let r = one_task(&b, &base, i, scripts).await;
            drop(permit);
            r
        });
    }
    let (ok, failed) = tally(tasks).await;
    report(n, ok, failed, started);
    if let Ok(mut browser) = Arc::try_unwrap(browser) {
        let _ = browser.close().await;
        let _ = browser.wait().await;
    }
    pump.abort();
    Ok(())
}

/// Waits for every task: (succeeded, failed), each failure printed.
async fn tally<E: std::fmt::Display + 'static>(
    mut tasks: tokio::task::JoinSet<Result<(), E>>,
) -> (usize, usize) {
    let (mut ok, mut failed) = (0usize, 0usize);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("task failed: {e}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("task panicked: {e}");
            }
        }
    }
    (ok, failed)
}

/// `BENCH_DIRECT_SCRIPTS=1`: the tasks in sessions of the runtime's own
/// browser manager.
async fn run_with_manager(
    settings: BrowserSettings,
    base: &str,
    n: usize,
    p: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = adp_core::metrics::Metrics::new();
    let manager = BrowserManager::launch(
        settings,
        web_runtime::guard::Policy::default(),
        web_runtime::metrics::WebMetrics::register(&metrics),
    )
    .await?;
    eprintln!(
        "runtime's browser manager; steps by the runtime's page scripts, with an observation ({}) after each",
        mode().as_str()
    );
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(p));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let (m, base) = (manager.clone(), base.to_owned());
        tasks.spawn(async move {
            let r = one_session_task(&m, &base, i).await;
            drop(permit);
            r
        });
    }
    let (ok, failed) = tally(tasks).await;
    report(n, ok, failed, started);
    manager.shutdown().await;
    Ok(())
}

/// The result line, with this process's CPU time (Chromium not included).
fn report(n: usize, ok: usize, failed: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>() as f64 / 100.0)
        })
        .unwrap_or(0.0);
    println!(
        "direct_tasks_per_sec={:.3} ok={ok} failed={failed} seconds={secs:.3} client_cpu_secs={cpu:.2}",
        n as f64 / secs
    );
}

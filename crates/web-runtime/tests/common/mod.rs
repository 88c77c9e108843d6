//! Shared helpers of the web-runtime integration tests: a site on
//! 127.0.0.1 (the demo site plus test routes), a connection recorder, and a
//! harness holding a real Chromium.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adp_core::cache::TemplateCache;
use adp_core::llm::{LlmClient, LlmConfig};
use adp_core::metrics::Metrics;
use adp_core::queue::TaskContext;
use adp_core::{TaskSpec, Trajectory};
use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use test_support::fake_llm::FakeLlm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use web_runtime::agent::{AgentSettings, WebHandler};
use web_runtime::browser::{BrowserManager, BrowserSettings};
use web_runtime::guard::Policy;
use web_runtime::metrics::WebMetrics;

pub mod netns;

pub fn demo_dir() -> PathBuf {
    test_support::workspace_root().join("demo-site")
}

/// Chromium for tests: `CHROME_PATH` or the headless shell.
pub fn chrome_path() -> PathBuf {
    std::env::var_os("CHROME_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(web_runtime::browser::DEFAULT_CHROME_PATH))
}

type Q = Query<std::collections::HashMap<String, String>>;

fn q(query: &Q, key: &str) -> String {
    query.0.get(key).cloned().unwrap_or_default()
}

fn js_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The demo site from `demo-site/` plus routes for the tests.
pub fn site_router() -> Router {
    Router::new()
        .route("/slow", get(slow))
        .route("/redirect", get(|query: Q| async move {
            (StatusCode::FOUND, [(header::LOCATION, q(&query, "to"))], "moved")
        }))
        .route("/cookie/set", get(|| async {
            (
                [(header::SET_COOKIE, "session=task-a-secret; Path=/")],
                Html("<title>Cookie set</title><p>cookie set</p>"),
            )
        }))
        .route("/cookie/show", get(|headers: HeaderMap| async move {
            let cookie = headers
                .get(header::COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            Html(format!(
                "<title>Cookie</title><p>server saw cookie: {cookie}</p>\
                 <p id=js></p><script>document.getElementById('js').textContent = \
                 'page sees cookie: ' + (document.cookie || 'none') + '; storage: ' + \
                 (localStorage.getItem('k') || 'none');</script>"
            ))
        }))
        .route("/storage/set", get(|| async {
            Html("<title>Storage</title><script>localStorage.setItem('k', 'task-a-value');</script><p>stored</p>")
        }))
        .route("/fetch-to", get(|query: Q| async move {
            let url = js_string(&q(&query, "url"));
            Html(format!(
                "<title>Fetcher</title><p id=out>fetching</p><script>\
                 fetch({url}).then(r => r.text()).then(t => document.getElementById('out').textContent = 'fetched: ' + t)\
                 .catch(e => document.getElementById('out').textContent = 'fetch failed: ' + e);</script>"
            ))
        }))
        .route("/ws-to", get(|query: Q| async move {
            let url = js_string(&q(&query, "url"));
            Html(format!(
                "<title>Socket</title><p id=out>connecting</p><script>\
                 try {{ const ws = new WebSocket({url}); \
                 ws.onopen = () => document.getElementById('out').textContent = 'socket open'; \
                 ws.onerror = () => document.getElementById('out').textContent = 'socket error'; }} \
                 catch (e) {{ document.getElementById('out').textContent = 'socket threw'; }}</script>"
            ))
        }))
        .route("/keys", get(|| async {
            Html(
                "<title>Keys</title><p id=log>no key yet</p><input id=box name=box placeholder=\"Type and press Enter\">\
                 <script>document.getElementById('box').addEventListener('keydown', (e) => {\
                 if (e.key === 'Enter') location.href = '/keys-done?v=' + encodeURIComponent(e.target.value);\
                 else document.getElementById('log').textContent = 'last key: ' + e.key; });</script>",
            )
        }))
        .route("/keys-done", get(|query: Q| async move {
            let v = q(&query, "v").replace(['<', '>', '&'], "");
            Html(format!("<title>Done</title><p>submitted by Enter: {v}</p>"))
        }))
        .route("/link-to", get(|query: Q| async move {
            let url = q(&query, "url").replace('"', "");
            Html(format!("<title>Link</title><p><a id=go href=\"{url}\">go there</a></p>"))
        }))
        .route("/flood", get(|query: Q| async move {
            let n = q(&query, "n").parse::<usize>().unwrap_or(100).min(5000);
            Html(format!(
                "<title>Flood</title><p>flooding the resolver</p><script>\
                 let k = 0; const burst = (m) => {{ for (let i = 0; i < m; i++, k++)\
                   fetch('http://f' + k + '.flood.test/', {{mode: 'no-cors'}}).catch(() => {{}}); }};\
                 burst({n}); setInterval(() => burst(20), 500);\
                 </script>"
            ))
        }))
        .route("/img-to", get(|query: Q| async move {
            let url = q(&query, "url").replace('"', "");
            Html(format!("<title>Image</title><p>image below</p><img src=\"{url}\" width=10 height=10>"))
        }))
        .route("/unseen", get(|| async {
            Html(
                "<!doctype html><title>Hardware Store</title>\
                 <h1>Hardware Store</h1>\
                 <form action=\"/unseen-results\"><label>Newsletter <input name=email type=email></label></form>\
                 <nav><a href=\"/unseen\">Home</a> <a href=\"/unseen?p=about\">About us</a></nav>\
                 <div class=finder><input name=term placeholder=\"Find products\" form=f2>\
                 <form id=f2 action=\"/unseen-results\"><button>Go</button></form></div>",
            )
        }))
        .route("/unseen-results", get(|query: Q| async move {
            let term = q(&query, "term").replace(['<', '>', '&'], "");
            Html(format!(
                "<title>Results</title><h1>Products matching {term}</h1>\
                 <ul><li><a href=\"/unseen-item?n=1\">{term} deluxe</a></li>\
                 <li><a href=\"/unseen-item?n=2\">{term} basic</a></li></ul>"
            ))
        }))
        .route("/unseen-item", get(|query: Q| async move {
            let n = q(&query, "n").replace(['<', '>', '&'], "");
            Html(format!("<title>Item {n}</title><h1>Hardware item number {n}</h1><p>In stock.</p>"))
        }))
        .route("/frames", get(|| async {
            Html(
                "<!doctype html><title>Frames</title><h1>Frames and shadows</h1>\
                 <p id=out>nothing clicked</p>\
                 <iframe src=\"/frame-inner\" width=400 height=150></iframe>\
                 <div id=host></div><script>\
                 const root = document.getElementById('host').attachShadow({mode: 'open'});\
                 root.innerHTML = '<p id=sout>shadow idle</p><button id=sb>Shadow button</button>';\
                 root.getElementById('sb').addEventListener('click', () => {\
                   root.getElementById('sout').textContent = 'shadow clicked'; });\
                 </script>",
            )
        }))
        .route("/frame-inner", get(|| async {
            Html(
                "<!doctype html><title>Inner</title><p id=iout>inner idle</p>\
                 <button onclick=\"document.getElementById('iout').textContent = 'inner clicked'\">Inner button</button>",
            )
        }))
        .route("/svg", get(|| async {
            Html(
                "<!doctype html><title>Drawing</title><h1>SVG controls</h1>\
                 <p id=out>not painted</p>\
                 <svg width=300 height=120>\
                 <rect role=button aria-label=\"Paint\" tabindex=0 x=10 y=10 width=80 height=40 fill=grey \
                   onclick=\"document.getElementById('out').textContent = 'painted'\"></rect>\
                 <a href=\"/unseen-item?n=7\"><text x=120 y=40>Drawn link</text></a>\
                 </svg>",
            )
        }))
        .route("/long", get(|| async {
            let items: String = (0..300)
                .map(|i| format!("<div style=\"height:30px\"><a href=\"/unseen-item?n={i}\">Item {i}</a></div>"))
                .collect();
            Html(format!("<!doctype html><title>Long</title><h1>Long list</h1>{items}"))
        }))
        .fallback(static_file)
}

/// Headers, then a body that never ends: the page never finishes loading.
async fn slow() -> Response {
    let head = futures::stream::once(async {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(
            b"<html><head><title>Slow</title></head><body><p>still loading",
        ))
    });
    let body = head.chain(futures::stream::pending());
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from_stream(body))
        .expect("response")
}

use futures::StreamExt as _;

async fn static_file(req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if path.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let file = demo_dir().join(path);
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let ctype = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, ctype)], bytes).into_response()
        }
        Err(_) => (
            StatusCode::NOT_FOUND,
            Html("<title>Not found</title><p>no such page</p>"),
        )
            .into_response(),
    }
}

/// The test site, served until dropped; displays as its base URL.
pub struct Site {
    pub url: String,
    stop: CancellationToken,
}

impl Site {
    /// Serves the site on `addr`.
    pub async fn serve(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind site");
        let local = listener.local_addr().expect("site addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, site_router())
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        let host = match local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        Site {
            url: format!("http://{host}:{}", local.port()),
            stop,
        }
    }

    /// Serves the site on a free port of 127.0.0.1.
    pub async fn local() -> Self {
        Self::serve(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts every TCP connection made to it (answers HTTP 200 "secret").
pub struct Recorder {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    if let Ok(mut g) = r.lock() {
                        g.push(head);
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\nsecret")
                        .await;
                });
            }
        });
        Ok(Recorder {
            addr,
            connections,
            requests,
        })
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The tests' address policy: private addresses allowed (the site is on
/// 127.0.0.1), `127.0.0.2/32` refused as the stand-in for a forbidden host.
pub fn test_policy() -> Policy {
    Policy::new(
        false,
        web_runtime::guard::parse_cidr_list("127.0.0.2/32").expect("cidr"),
    )
}

/// A browser with [`test_policy`] and `max_pages` pages, and the test site.
pub async fn start_local(max_pages: usize) -> (Harness, Site) {
    (
        Harness::start(test_policy(), max_pages).await,
        Site::local().await,
    )
}

/// A client of the scripted server `llm` that does not retry (each
/// scripted reply is used once); `change` adjusts the rest.
pub fn llm_client(llm: &FakeLlm, change: impl FnOnce(&mut LlmConfig)) -> LlmClient {
    let mut config = LlmConfig::new(llm.url());
    config.retries = 0;
    change(&mut config);
    LlmClient::new(config).expect("client")
}

/// A real Chromium (through the egress proxy) and a place for outputs.
pub struct Harness {
    pub browser: BrowserManager,
    /// Every destination Chromium asked the egress proxy for.
    pub destinations: web_runtime::egress::Destinations,
    pub web_metrics: WebMetrics,
    pub metrics: Metrics,
    pub out: tempfile::TempDir,
    stop: CancellationToken,
}

impl Harness {
    pub async fn start(policy: Policy, max_pages: usize) -> Self {
        Self::start_with(policy, max_pages, |_| {}).await
    }

    /// Like [`Harness::start`], with a chance to change the browser settings.
    pub async fn start_with(
        policy: Policy,
        max_pages: usize,
        change: impl FnOnce(&mut BrowserSettings),
    ) -> Self {
        let metrics = Metrics::new();
        let web_metrics = WebMetrics::register(&metrics);
        let stop = CancellationToken::new();
        let destinations = web_runtime::egress::Destinations::default();
        let proxy = web_runtime::egress::start_logged(
            policy.clone(),
            web_metrics.clone(),
            stop.clone(),
            destinations.clone(),
        )
        .await
        .expect("egress proxy");
        let mut settings = BrowserSettings::new(chrome_path());
        settings.max_pages = max_pages;
        settings.proxy = Some(proxy);
        settings.request_timeout = Duration::from_secs(20);
        change(&mut settings);
        let browser = BrowserManager::launch(settings, policy, web_metrics.clone())
            .await
            .expect("Chromium launches (scripts/setup.sh web)");
        Harness {
            browser,
            destinations,
            web_metrics,
            metrics,
            out: tempfile::tempdir().expect("tempdir"),
            stop,
        }
    }

    pub fn settings(&self) -> AgentSettings {
        AgentSettings {
            action_timeout: Duration::from_secs(10),
            output_dir: self.out.path().to_owned(),
            ..AgentSettings::default()
        }
    }

    pub fn handler(&self, settings: AgentSettings, llm: Option<LlmClient>) -> WebHandler {
        let cache = TemplateCache::new(None, Duration::from_secs(60), self.metrics.clone(), "web");
        WebHandler::new(self.browser.clone(), settings, llm, cache)
    }

    pub async fn stop(self) {
        self.browser.shutdown().await;
        self.stop.cancel();
    }
}

pub fn task(v: Value) -> TaskSpec {
    let mut v = v;
    let obj = v.as_object_mut().expect("task object");
    obj.entry("task_type").or_insert_with(|| "web".into());
    obj.entry("description")
        .or_insert_with(|| "a test task".into());
    serde_json::from_value(v).expect("valid task")
}

pub fn ctx() -> TaskContext {
    TaskContext {
        attempt: 1,
        max_deliveries: 3,
        stream: "tasks:web".into(),
        entry_id: "0-1".into(),
        cancel: CancellationToken::new(),
    }
}

pub async fn run(handler: &WebHandler, t: Value) -> Trajectory {
    handler
        .run(task(t), ctx())
        .await
        .expect("no infrastructure failure")
}

/// Runs a task of one `goto` to `url`, asserts that step failed as a
/// network error (refused or unreachable) and returns the error message.
pub async fn failed_goto(handler: &WebHandler, task_id: &str, url: &str) -> String {
    let t = run(
        handler,
        serde_json::json!({"task_id": task_id, "constraints": {"actions": [{"type": "goto", "url": url}]}}),
    )
    .await;
    assert_eq!(
        summary(&t),
        vec![("goto".into(), false, Some("network_error".into()))],
        "{t:#?}"
    );
    t.error_message.unwrap_or_default()
}

/// Steps as (action type, success, error_type) for compact asserts.
pub fn summary(t: &Trajectory) -> Vec<(String, bool, Option<String>)> {
    t.steps
        .iter()
        .map(|s| {
            (
                s.action_params["type"].as_str().unwrap_or("?").to_owned(),
                s.success,
                s.error_type.map(|e| e.as_str().to_owned()),
            )
        })
        .collect()
}

/// Adds `t` (completed by [`task`]) to `tasks:web` as the dispatcher would.
pub fn dispatch(redis: &test_support::RedisServer, t: Value) {
    let spec = task(t);
    let mut c = redis.client();
    let _: String = redis::cmd("XADD")
        .arg(adp_core::names::STREAM_WEB)
        .arg("*")
        .arg("task")
        .arg(serde_json::to_string(&spec).expect("json"))
        .arg("submitted_at")
        .arg(format!("{:.3}", adp_core::types::unix_now()))
        .arg("priority")
        .arg(spec.priority)
        .query(&mut c)
        .expect("XADD");
}

/// The trajectory of `id` under `out`, once it is written.
pub fn trajectory(out: &Path, id: &str) -> Option<Trajectory> {
    let raw = std::fs::read_to_string(out.join("trajectories").join(format!("{id}.json"))).ok()?;
    serde_json::from_str(&raw).ok()
}

/// Waits until the trajectories of all `ids` are written; returns them in order.
pub async fn wait_for(out: &Path, ids: &[String], within: Duration) -> Vec<Trajectory> {
    test_support::eventually(within, || async {
        ids.iter().all(|id| trajectory(out, id).is_some())
    })
    .await
    .unwrap_or_else(|e| panic!("trajectories {ids:?}: {e}"));
    ids.iter().filter_map(|id| trajectory(out, id)).collect()
}

/// Whether a process `pid` exists (a zombie counts: it is not reaped yet).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Resident memory (kB) of `pid` and all its descendants (from `/proc`).
pub fn tree_rss_kb(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        stack.extend(children(p));
    }
    total
}

/// The pids whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = task.path().join("children");
        if let Ok(s) = std::fs::read_to_string(path) {
            out.extend(s.split_whitespace().filter_map(|v| v.parse::<u32>().ok()));
        }
    }
    out
}

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        all.push(p);
        stack.extend(children(p));
    }
    all
}

/// The real user id of a process, from `/proc`.
pub fn process_uid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

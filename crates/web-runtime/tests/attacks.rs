//! Hostile pages, on 127.0.0.1, with the default settings
//! (`WEB_BLOCK_PRIVATE=false`): each test is an attack that worked before
//! (issue 15) — reaching the runtime's own ports, blowing up the
//! observation, bending the runtime's scripts, opening windows — and what
//! the runtime does about it now.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Query;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use chromiumoxide::cdp::browser_protocol::target::{CreateTargetParams, GetTargetsParams};
use common::{process_tree, process_uid, run, tree_rss_kb, Harness, Site};
use serde_json::json;
use tokio::net::TcpListener;
use web_runtime::guard::Policy;

type Q = Query<std::collections::HashMap<String, String>>;

/// The hostile pages, on a free port of 127.0.0.1; returns the base URL.
async fn hostile_site() -> String {
    let app = Router::new()
        .route(
            "/scan",
            get(|q: Q| async move {
                let ports = q.0.get("ports").cloned().unwrap_or_default();
                let ws = q.0.get("ws").cloned().unwrap_or_default();
                Html(format!(
                    "<title>Scanner</title><p id=out>scanning</p><p id=ws>ws pending</p><script>\
                     const ports = [{ports}];\
                     Promise.all(ports.map(p => fetch('http://127.0.0.1:' + p + '/json/list', {{mode: 'no-cors'}})\
                       .then(() => 'open ' + p, () => 'closed ' + p)))\
                       .then(r => document.getElementById('out').textContent = 'scan done: ' + r.join(', '));\
                     try {{ const s = new WebSocket('ws://127.0.0.1:{ws}/devtools/browser');\
                       s.onopen = () => document.getElementById('ws').textContent = 'ws OPEN';\
                       s.onerror = () => document.getElementById('ws').textContent = 'ws refused'; }}\
                     catch (e) {{ document.getElementById('ws').textContent = 'ws refused'; }}\
                     </script>"
                ))
            }),
        )
        .route(
            "/huge-title",
            get(|| async {
                Html("<title>t</title><p>a page with a huge title</p>\
                      <script>document.title = 'T'.repeat(30 * 1024 * 1024);</script>")
            }),
        )
        .route(
            "/huge-hrefs",
            get(|| async {
                Html("<title>Links</title><p>many long links</p><div id=l></div><script>\
                      const big = 'a'.repeat(1024 * 1024);\
                      for (let i = 0; i < 20; i++) { const a = document.createElement('a');\
                        a.href = '/x?' + i + big; a.textContent = 'link ' + i; a.title = big;\
                        a.name = big; a.id = 'l' + i + big;\
                        document.getElementById('l').appendChild(a); }</script>")
            }),
        )
        .route(
            "/bent",
            get(|| async {
                Html("<title>Bent</title><p>the real text of the bent page</p><a href=/target>target</a><script>\
                      const big = 'X'.repeat(5 * 1024 * 1024);\
                      String.prototype.slice = function () { return big; };\
                      String.prototype.substring = function () { return big; };\
                      String.prototype.trim = function () { return big; };\
                      String.prototype.replace = function () { return big; };\
                      Array.prototype.slice = function () { return [big, big, big]; };\
                      JSON.stringify = function () { return big; };\
                      window.URL = function () { return { href: '/evil', hash: '' }; };\
                      location.assign = function () {};\
                      </script>")
            }),
        )
        .route(
            "/target",
            get(|| async { Html("<title>Target</title><p>the page goto asked for</p>") }),
        )
        .route(
            "/evil",
            get(|| async { Html("<title>Evil</title><p>redirected by the page</p>") }),
        )
        .route(
            "/popups",
            get(|| async {
                Html("<title>Popups</title><p>opening windows</p><a id=go target=_blank href=/target>new window</a>\
                      <script>let opened = 0; for (let i = 0; i < 40; i++) {\
                        const w = window.open('/huge-hrefs?' + i, '_blank'); if (w) opened++; }\
                      document.querySelector('p').textContent = 'windows opened: ' + opened;</script>")
            }),
        );
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_ports_are_refused_to_pages_with_default_settings() {
    let h = Harness::start(Policy::new(false, Vec::new()), 2).await;
    let handler = h.handler(h.settings(), None);
    let site = hostile_site().await;
    let site_port = site.rsplit(':').next().expect("port").to_owned();
    let devtools = h
        .browser
        .current()
        .and_then(|i| i.devtools_port())
        .expect("the DevTools port is known");
    let own = h.browser.policy().own_ports.list();
    assert!(own.contains(&devtools), "{own:?}");
    assert_eq!(own.len(), 2, "DevTools and the egress proxy: {own:?}");
    let ports: Vec<String> = own
        .iter()
        .map(ToString::to_string)
        .chain([site_port.clone()])
        .collect();
    let t = run(
        &handler,
        json!({"task_id": "scan", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/scan?ports={}&ws={devtools}", ports.join(","))},
            {"type": "wait", "ms": 500},
            {"type": "extract"}
        ]}}),
    )
    .await;
    let last = &t.steps[2].observation;
    for p in &own {
        assert!(last.contains(&format!("closed {p}")), "port {p}: {last}");
    }
    // Control: the page's own server answers the same scan.
    assert!(last.contains(&format!("open {site_port}")), "{last}");
    assert!(last.contains("ws refused"), "{last}");
    let blocked = t.metadata["blocked_requests"].to_string();
    assert!(blocked.contains("own DevTools port"), "{blocked}");
    assert!(blocked.contains("/json/list"), "{blocked}");
    // The WebSocket (which request interception does not see) was refused
    // by the egress proxy.
    assert!(h.web_metrics.egress_refused.get() >= 1);

    // A direct navigation to the DevTools list.
    let msg = common::failed_goto(
        &handler,
        "json_list",
        &format!("http://localhost:{devtools}/json/list"),
    )
    .await;
    assert!(msg.contains("own DevTools port"), "{msg}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_cannot_blow_up_or_bend_observations() {
    let h = Harness::start(Policy::new(false, Vec::new()), 2).await;
    let settings = h.settings();
    let max_bytes = settings.max_bytes;
    let handler = h.handler(settings, None);
    let site = hostile_site().await;

    for (id, path) in [("title", "/huge-title"), ("hrefs", "/huge-hrefs")] {
        let t = run(
            &handler,
            json!({"task_id": id, "constraints": {"actions": [
                {"type": "goto", "url": format!("{site}{path}")},
                {"type": "extract"}
            ]}}),
        )
        .await;
        assert!(t.success, "{id}: {t:#?}");
        let size = serde_json::to_string(&t).expect("json").len();
        assert!(size < 4 * max_bytes, "{id}: trajectory of {size} bytes");
        for s in &t.steps {
            assert!(
                s.observation.len() <= max_bytes,
                "{id}: {}",
                s.observation.len()
            );
        }
    }

    // A page that replaces String/Array/JSON/URL functions and
    // location.assign: the runtime's scripts run in their own world, and
    // goto is a CDP navigation.
    let t = run(
        &handler,
        json!({"task_id": "bent", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/bent")},
            {"type": "goto", "url": format!("{site}/target")}
        ]}}),
    )
    .await;
    assert!(t.success, "{t:#?}");
    let first = &t.steps[0].observation;
    assert!(first.contains("the real text of the bent page"), "{first}");
    assert!(
        !first.contains("XXXX"),
        "{}",
        &first[..first.len().min(500)]
    );
    assert!(first.len() < 2000, "{}", first.len());
    let second = &t.steps[1].observation;
    assert!(second.contains("Title: Target"), "{second}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popups_are_blocked_or_closed_and_memory_stays_bounded() {
    let h = Harness::start(Policy::new(false, Vec::new()), 2).await;
    let handler = h.handler(h.settings(), None);
    let site = hostile_site().await;
    let pid = h.browser.current().and_then(|i| i.pid()).expect("pid");
    let t = run(
        &handler,
        json!({"task_id": "popups", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/popups")},
            {"type": "click", "selector": "#go"},
            {"type": "extract"}
        ]}}),
    )
    .await;
    assert!(
        t.steps[0].observation.contains("windows opened: 0"),
        "{t:#?}"
    );
    let instance = h.browser.current().expect("browser");
    let pages = instance
        .execute("targets", GetTargetsParams::default())
        .await
        .expect("targets")
        .target_infos
        .into_iter()
        .filter(|t| t.r#type == "page")
        .count();
    assert!(pages <= 1, "{pages} pages left open");
    let rss_mb = tree_rss_kb(pid) / 1024;
    assert!(rss_mb < 2048, "Chromium uses {rss_mb} MB");

    // A page that got through anyway (created in the task's context, as a
    // popup would be) is closed and counted.
    let session = h.browser.open_session().await.expect("session");
    for _ in 0..3 {
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(
                chromiumoxide::cdp::browser_protocol::browser::BrowserContextId::new(
                    session.context_id(),
                ),
            )
            .build()
            .expect("params");
        instance.execute("popup", params).await.expect("create");
    }
    test_support::eventually(Duration::from_secs(20), || async {
        session.popups_closed() == 3
    })
    .await
    .expect("three foreign pages closed");
    assert!(h.web_metrics.targets_closed.get() >= 3);
    session.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_runs_unprivileged_and_asks_for_nothing_in_the_background() {
    let h = Harness::start(Policy::new(false, Vec::new()), 2).await;
    let handler = h.handler(h.settings(), None);
    let site = Site::local().await;
    let instance = h.browser.current().expect("browser");
    let pid = instance.pid().expect("pid");
    if web_runtime::browser::is_root() {
        // Under root (run-local.sh, containers) Chromium runs as nobody,
        // with its own sandbox where the host has user namespaces.
        let tree = process_tree(pid);
        let chromium: Vec<u32> = tree
            .iter()
            .copied()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.contains("chrom"))
            })
            .collect();
        assert!(chromium.len() >= 2, "{tree:?}");
        for p in chromium {
            assert_ne!(process_uid(p), Some(0), "Chromium process {p} runs as root");
        }
    }
    assert!(instance.sandboxed, "Chromium's sandbox is off here");
    for i in 0..2 {
        let t = run(
            &handler,
            json!({"task_id": format!("quiet{i}"), "constraints": {"actions": [
                {"type": "goto", "url": format!("{site}/index.html")},
                {"type": "wait", "ms": 1500}
            ]}}),
        )
        .await;
        assert!(t.success, "{t:#?}");
    }
    let port = site.url.rsplit(':').next().expect("port");
    let asked = h.destinations.list();
    assert!(!asked.is_empty());
    for d in &asked {
        assert_eq!(
            d,
            &format!("127.0.0.1:{port}"),
            "background request: {asked:?}"
        );
    }
    h.stop().await;
}

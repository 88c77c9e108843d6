//! The Grafana dashboard loads as a provisioned dashboard, and every metric
//! the dashboard and the alert rules read is exported by a running binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use deploy_checks::binaries::{self, exposed_metric_names, http_get, service_binaries};
use deploy_checks::{compose, promql, read};
use serde_json::Value as Json;
use test_support::{free_port, wait_until, RedisServer};

const DASHBOARD: &str = "config/grafana/dashboards/agent-pipeline.json";

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON")
}

/// Every `expr` of the dashboard's panels (rows included, nested panels too).
fn dashboard_exprs(d: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Json> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p.get("panels").and_then(Json::as_array) {
            stack.extend(nested.iter());
        }
        for t in p
            .get("targets")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(e) = t.get("expr").and_then(Json::as_str) {
                out.push((p["title"].as_str().unwrap_or("?").to_owned(), e.to_owned()));
            }
        }
    }
    out
}

/// Every `expr` of the alert rules.
fn alert_exprs() -> Vec<(String, String)> {
    let doc: serde_norway::Value =
        serde_norway::from_str(&read("config/alerts.yml")).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = compose::scalar(&rule["alert"]);
            out.push((name, compose::scalar(&rule["expr"])));
        }
    }
    out
}

#[test]
fn dashboard_is_a_provisionable_current_grafana_dashboard() {
    let d = dashboard();
    assert!(
        d.get("dashboard").is_none(),
        "a provisioned dashboard file is the dashboard model itself, not wrapped in a `dashboard` key"
    );
    assert_eq!(d["uid"], "adp-pipeline");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["id"].is_null(), "id must be null so Grafana assigns one");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion of a current Grafana (>= 36)"
    );

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        let ty = p["type"].as_str().expect("panel type");
        assert!(
            ["timeseries", "stat", "row", "gauge", "bargauge", "table", "state-timeline", "text"]
                .contains(&ty),
            "panel {:?} uses type {ty:?}, which current Grafana does not ship (old `graph`/`singlestat` are gone)",
            p["title"]
        );
        assert!(
            ids.insert(p["id"].as_u64().expect("numeric panel id")),
            "duplicate panel id"
        );
        let grid = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(grid[k].is_u64(), "panel {:?} gridPos.{k}", p["title"]);
        }
        assert!(grid["x"].as_u64().unwrap_or(0) + grid["w"].as_u64().unwrap_or(0) <= 24);
        if ty == "row" {
            continue;
        }
        titles.push(p["title"].as_str().expect("title").to_owned());
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {:?} must use the dashboard's datasource variable",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {:?} has no query", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            assert!(t["refId"].is_string());
        }
    }

    // The panels the deployment issue asks for.
    for want in [
        "Throughput by runtime and status",
        "Queue sizes",
        "Pending lag",
        "Error rate by type",
        "Cache hit rate",
        "Task duration percentiles",
        "Active tasks",
        "Runtime health",
        "Dead-letter count",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "dashboard lacks the panel {want:?}"
        );
    }

    // The datasource variable defaults to the provisioned datasource.
    let ds_prov: serde_norway::Value = serde_norway::from_str(&read(
        "config/grafana/provisioning/datasources/prometheus.yml",
    ))
    .expect("datasource provisioning is YAML");
    let uid = compose::scalar(&ds_prov["datasources"][0]["uid"]);
    assert_eq!(
        compose::scalar(&ds_prov["datasources"][0]["url"]),
        "http://prometheus:9090"
    );
    let var = d["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == "datasource"))
        .expect("templating variable `datasource`");
    assert_eq!(var["type"], "datasource");
    assert_eq!(var["query"], "prometheus");
    assert_eq!(var["current"]["value"], uid.as_str());

    // The file provider reads the directory compose mounts the dashboards into.
    let prov: serde_norway::Value = serde_norway::from_str(&read(
        "config/grafana/provisioning/dashboards/agent-platform.yml",
    ))
    .expect("dashboard provisioning is YAML");
    let path = compose::scalar(&prov["providers"][0]["options"]["path"]);
    assert_eq!(compose::scalar(&prov["providers"][0]["type"]), "file");
    let full = compose::load("docker-compose.yml");
    let grafana = &compose::services(&full)["grafana"];
    let mounts = compose::strings(grafana, "volumes");
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./config/grafana/dashboards:")
                && m.contains(&format!(":{path}"))),
        "grafana must mount config/grafana/dashboards at {path}; mounts: {mounts:?}"
    );
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("./config/grafana/provisioning:/etc/grafana/provisioning")));
}

/// A page for the web runtime's task, served on 127.0.0.1 until dropped.
struct Page {
    port: u16,
}

impl Page {
    fn serve() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buf);
                let body = "<html><head><title>Checks</title></head><body><p>deploy checks page</p></body></html>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Page { port }
    }
}

#[test]
fn every_dashboard_and_alert_metric_is_exported_by_a_running_binary() {
    let bins = service_binaries();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("output");
    let task_file = dir.path().join("tasks.jsonl");
    let page = Page::serve();
    // A small mixed workload so counters, histograms and failure series appear.
    let tasks = [
        r#"{"task_id":"chk_code","task_type":"code","description":"print 42","constraints":{"code":"print(6*7)","expected_output":"42"},"max_steps":2,"timeout":60}"#.to_owned(),
        r#"{"task_id":"chk_fail","task_type":"code","description":"raise","constraints":{"code":"raise SystemExit(3)"},"max_steps":1,"timeout":60}"#.to_owned(),
        r#"{"task_id":"chk_reason","task_type":"reasoning","description":"What is 2+3?","constraints":{"code":"print(2+3)","expected_output":"5"},"max_steps":2,"timeout":60}"#.to_owned(),
        format!(
            r#"{{"task_id":"chk_web","task_type":"web","description":"read the page","constraints":{{"start_url":"http://127.0.0.1:{}/","actions":[{{"type":"extract"}},{{"type":"finish","answer":"done"}}]}},"max_steps":3,"timeout":60}}"#,
            page.port
        ),
        "this line is not JSON".to_owned(),
    ];
    std::fs::write(&task_file, tasks.join("\n") + "\n").expect("write tasks");

    let full = compose::load("docker-compose.yml");
    let services = compose::services(&full);
    let mut running = Vec::new();
    for bin in bins {
        let port = free_port();
        let svc = &services[bin.name];
        let env = binaries::local_env(svc, &redis.url(), &out_dir, &task_file, port);
        let r = binaries::spawn(bin, &env, port, dir.path());
        r.wait_http("/metrics", Duration::from_secs(30));
        running.push(r);
    }

    // Let the runtimes finish their tasks (bounded), so per-task series exist.
    let runtimes: Vec<_> = running.iter().filter(|r| r.name != "dispatcher").collect();
    let done = wait_until(Duration::from_secs(90), || {
        runtimes.iter().all(|r| {
            http_get(r.port, "/metrics")
                .map(|(_, body)| completed(&body) >= 1.0)
                .unwrap_or(false)
        })
    });
    if let Err(e) = done {
        let logs: Vec<String> = runtimes
            .iter()
            .map(|r| format!("--- {}\n{}", r.name, r.log_tail()))
            .collect();
        panic!("runtimes did not complete a task: {e}\n{}", logs.join("\n"));
    }

    let mut exported: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for r in &running {
        let (status, body) = http_get(r.port, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{} /metrics", r.name);
        for name in exposed_metric_names(&body) {
            exported.entry(name).or_default().push(r.name);
        }
    }

    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (where_, expr) in dashboard_exprs(&dashboard())
        .into_iter()
        .map(|(t, e)| (format!("dashboard panel {t:?}"), e))
        .chain(
            alert_exprs()
                .into_iter()
                .map(|(a, e)| (format!("alert {a}"), e)),
        )
    {
        let names = promql::metric_names(&expr);
        assert!(!names.is_empty(), "{where_}: no metric in {expr:?}");
        for n in names {
            used.entry(n).or_default().push(where_.clone());
        }
    }

    let running_names: Vec<&str> = running.iter().map(|r| r.name).collect();
    let missing: Vec<String> = used
        .iter()
        .filter(|(n, _)| !promql::SYNTHETIC.contains(&n.as_str()) && !exported.contains_key(*n))
        .map(|(n, users)| format!("  {n} (used by {})", users.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics read by the dashboard/alerts but exported by none of the running binaries {running_names:?}:\n{}",
        missing.join("\n")
    );
}

/// Sum of `tasks_completed_total` samples in a scrape.
fn completed(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("tasks_completed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

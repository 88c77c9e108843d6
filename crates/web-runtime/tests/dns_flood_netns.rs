//! A page that floods the resolver with lookups of slow names must not fail
//! another task's navigation, and a DNS timeout says whose fault it is.
//! Runs inside a private network namespace (`unshare --net --mount`) whose
//! `/etc/resolv.conf` points at a DNS server on 127.0.0.1 that never
//! answers: every name not in `/etc/hosts` takes 8 s to fail. Nothing can
//! leave the machine (PITFALLS.md, "Network in tests").

mod common;

use std::time::Duration;

use common::netns::{assert_private_netns, run_in_private_netns};
use common::{run, summary, Harness, Site};
use serde_json::json;
use web_runtime::guard::Policy;

const INNER: &str = "inside_private_netns_with_a_silent_resolver";

#[test]
fn dns_flood_tests_run_in_a_private_network_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n198.51.100.7 shop.test\n").expect("hosts");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:8 attempts:1\n",
    )
    .expect("resolv.conf");
    run_in_private_netns(
        INNER,
        &["ip addr add 198.51.100.7/32 dev lo"],
        &[(&hosts, "/etc/hosts"), (&resolv, "/etc/resolv.conf")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the namespace set up by dns_flood_tests_run_in_a_private_network_namespace"]
async fn inside_private_netns_with_a_silent_resolver() {
    assert_private_netns();
    // The DNS server that never answers (queries are read and dropped, so
    // the resolver waits its full timeout instead of failing at once).
    let dns = tokio::net::UdpSocket::bind("127.0.0.1:53")
        .await
        .expect("bind 127.0.0.1:53 inside the namespace");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while dns.recv_from(&mut buf).await.is_ok() {}
    });
    let site = Site::serve("198.51.100.7:0".parse().expect("addr")).await;
    let port = site.url.rsplit(':').next().expect("port").to_owned();
    let shop = format!("http://shop.test:{port}");

    let h = Harness::start(Policy::new(false, Vec::new()), 4).await;
    let resolver = h.browser.policy().resolver.clone();
    // Generous budgets: the machine running the tests may be busy.
    let mut settings = h.settings();
    settings.action_timeout = Duration::from_secs(40);
    let handler = h.handler(settings, None);

    // The flooding task: 1,000 fetches of slow names at once, 40 more a
    // second after that, then a goto of its own.
    let flooder = {
        let handler = handler.clone();
        let shop = shop.clone();
        tokio::spawn(async move {
            run(
                &handler,
                json!({"task_id": "flood", "constraints": {"actions": [
                    {"type": "goto", "url": format!("{shop}/flood?n=1000")},
                    {"type": "goto", "url": "http://late.flood.test/"}
                ]}}),
            )
            .await
        })
    };
    test_support::eventually(Duration::from_secs(30), || async {
        resolver.pending() > 100
    })
    .await
    .expect("the flood is under way");

    // Meanwhile another task searches the shop, which resolves through
    // /etc/hosts: it must not wait behind the flood.
    let t = run(
        &handler,
        json!({"task_id": "victim", "constraints": {"actions": [
            {"type": "goto", "url": format!("{shop}/index.html")},
            {"type": "fill_and_submit", "selector": "input[name=q]", "text": "kettle"},
            {"type": "click", "selector": "#results a"}
        ], "expected_text": "Stainless Tea Kettle"}}),
    )
    .await;
    assert!(t.success, "the concurrent task failed: {t:#?}");

    // The flooder's own navigation waited behind its own lookups: its fault.
    let t = flooder.await.expect("flood task");
    assert_eq!(
        summary(&t),
        vec![
            ("goto".into(), true, None),
            ("goto".into(), false, Some("network_error".into()))
        ],
        "{t:#?}"
    );
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(msg.contains("DNS lookups pending"), "{msg}");

    // A single lookup that times out: the resolver is down, not the task's
    // fault — an infrastructure failure (retried), not a failed trajectory.
    let e = handler
        .run(
            common::task(json!({"task_id": "lonely", "constraints": {"actions": [
                {"type": "goto", "url": "http://lonely.flood.test/"}
            ]}})),
            common::ctx(),
        )
        .await
        .expect_err("an infrastructure failure");
    assert_eq!(e.component, "dns", "{e:?}");
    assert!(e.message.contains("resolver is slow or down"), "{e:?}");
    h.stop().await;
}

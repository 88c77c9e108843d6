//! SSRF tests against the real cloud-metadata addresses, inside a private
//! network namespace: the test re-executes itself under
//! `unshare --net --mount`, where only `lo` exists and carries
//! 169.254.169.254, fd00:ec2::254 and a "public-looking" 198.51.100.7, with
//! listeners that record every connection. Nothing here can send a packet
//! to the host network (PITFALLS.md, "Network in tests").

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::netns::{assert_private_netns, run_in_private_netns};
use common::{failed_goto, run, Harness, Recorder, Site};
use serde_json::json;
use web_runtime::guard::Policy;

const INNER: &str = "inside_private_netns";

#[test]
fn ssrf_tests_run_in_a_private_network_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n169.254.169.254 metadata.test\n198.51.100.7 shop.test\n",
    )
    .expect("hosts file");
    // Inside: the addresses on lo, our hosts file; then the inner test, alone.
    run_in_private_netns(
        INNER,
        &[
            "ip addr add 169.254.169.254/32 dev lo",
            "ip addr add 198.51.100.7/32 dev lo",
            "ip -6 addr add fd00:ec2::254/128 dev lo 2>/dev/null || echo \"no IPv6 in the namespace\" >&2",
        ],
        &[(&hosts, "/etc/hosts")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the private network namespace set up by ssrf_tests_run_in_a_private_network_namespace"]
async fn inside_private_netns() {
    assert_private_netns();
    let metadata = Recorder::start("169.254.169.254:80".parse().expect("addr"))
        .await
        .expect("listen on the metadata address inside the namespace");
    let metadata_v6 = Recorder::start("[fd00:ec2::254]:80".parse::<SocketAddr>().expect("addr"))
        .await
        .ok();
    let private = Recorder::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen on loopback");
    let site = Site::serve("198.51.100.7:0".parse().expect("addr")).await;
    let port = site.url.rsplit(':').next().expect("port").to_owned();
    let shop = format!("http://shop.test:{port}");

    let h = Harness::start(Policy::new(true, Vec::new()), 4).await;
    let mut settings = h.settings();
    settings.action_timeout = Duration::from_secs(5);
    let handler = h.handler(settings, None);

    // Control: the public-looking site works.
    let t = run(
        &handler,
        json!({"task_id": "control", "constraints": {"actions": [{"type": "goto", "url": format!("{shop}/index.html")}]}}),
    )
    .await;
    assert!(t.success, "{t:#?}");
    assert!(t.steps[0].observation.contains("Title: Demo Catalogue"));

    // Direct navigations to the metadata service, by address and by name.
    let cases = [
        (
            "v4",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.0.0/16",
        ),
        (
            "name",
            "http://metadata.test/latest/meta-data/".to_owned(),
            "metadata.test resolves to 169.254.169.254",
        ),
        (
            "v6",
            "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
            "fd00:ec2::254",
        ),
        (
            "mapped",
            "http://[::ffff:169.254.169.254]/".to_owned(),
            "169.254.0.0/16",
        ),
        ("decimal", "http://2852039166/".to_owned(), "169.254.0.0/16"),
        // The metadata address behind a NAT64 translator or a 6to4 relay.
        (
            "nat64",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/".to_owned(),
            "(= 169.254.169.254)",
        ),
        (
            "nat64_local",
            "http://[64:ff9b:1::a9fe:a9fe]/".to_owned(),
            "(= 169.254.169.254)",
        ),
        (
            "6to4",
            "http://[2002:a9fe:a9fe::1]/".to_owned(),
            "(= 169.254.169.254)",
        ),
        (
            "redirect",
            format!("{shop}/redirect?to=http://169.254.169.254/latest/meta-data/"),
            "169.254.0.0/16",
        ),
    ];
    for (id, url, why) in cases {
        let msg = failed_goto(&handler, &format!("meta_{id}"), &url).await;
        assert!(msg.contains("refused") && msg.contains(why), "{id}: {msg}");
    }

    // A public page whose script reaches for the metadata address and a
    // private (loopback) address: fetch() and WebSocket.
    for (id, path) in [
        (
            "fetch_meta",
            "/fetch-to?url=http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("ws_meta", "/ws-to?url=ws://169.254.169.254/".to_owned()),
        (
            "fetch_private",
            format!("/fetch-to?url={}", private.url("/internal")),
        ),
        ("ws_private", format!("/ws-to?url=ws://{}/", private.addr)),
    ] {
        let t = run(
            &handler,
            json!({"task_id": id, "constraints": {"actions": [
                {"type": "goto", "url": format!("{shop}{path}")},
                {"type": "wait", "ms": 300},
                {"type": "extract"}
            ]}}),
        )
        .await;
        assert!(t.steps[0].success, "{id}: the page itself loads: {t:#?}");
        let last = &t.steps[2].observation;
        assert!(
            last.contains("failed") || last.contains("error"),
            "{id}: {last}"
        );
    }

    // A private address navigated to directly, with WEB_BLOCK_PRIVATE=true.
    let t = run(
        &handler,
        json!({"task_id": "private_nav", "constraints": {"actions": [{"type": "goto", "url": private.url("/")}]}}),
    )
    .await;
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(msg.contains("WEB_BLOCK_PRIVATE"), "{msg}");

    assert_eq!(
        metadata.count(),
        0,
        "metadata listener saw {:?}",
        metadata.requests
    );
    if let Some(v6) = &metadata_v6 {
        assert_eq!(
            v6.count(),
            0,
            "IPv6 metadata listener saw {:?}",
            v6.requests
        );
    }
    assert_eq!(
        private.count(),
        0,
        "private listener saw {:?}",
        private.requests
    );
    // The listeners do record connections (checked from the test itself).
    tokio::net::TcpStream::connect(metadata.addr)
        .await
        .expect("connect");
    test_support::eventually(Duration::from_secs(2), || async { metadata.count() == 1 })
        .await
        .expect("the metadata listener records connections");

    h.stop().await;
}

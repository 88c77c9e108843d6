//! The destination rules on the host network, with a loopback address put
//! on the block list (`WEB_BLOCK_EXTRA=127.0.0.2/32`) as the stand-in for a
//! private address: every packet stays on loopback. A test listener on
//! 127.0.0.2 proves that no refused request reaches it — not a navigation,
//! a redirect, a fetch(), an image or a WebSocket. (The real metadata
//! address is tested in a private network namespace: `ssrf_netns.rs`.)

mod common;

use std::time::Duration;

use common::{failed_goto, run, summary, Harness, Recorder, Site};
use serde_json::json;
use web_runtime::guard::{parse_cidr_list, Policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_destinations_are_never_reached() {
    // Images on, so that the image request is judged by the rules too.
    let h = Harness::start_with(
        Policy::new(false, parse_cidr_list("127.0.0.2/32").expect("cidr")),
        4,
        |s| s.block_images = false,
    )
    .await;
    let site = Site::local().await;
    let blocked = Recorder::start("127.0.0.2:0".parse().expect("addr"))
        .await
        .expect("listen on 127.0.0.2");
    let mut settings = h.settings();
    settings.action_timeout = Duration::from_secs(5);
    let handler = h.handler(settings, None);
    let target = blocked.url("/private");

    // A direct navigation.
    let msg = failed_goto(&handler, "nav", &target).await;
    assert!(
        msg.contains("refused") && msg.contains("127.0.0.2") && msg.contains("WEB_BLOCK_EXTRA"),
        "{msg}"
    );

    // A redirect from an allowed page.
    let msg = failed_goto(&handler, "redir", &format!("{site}/redirect?to={target}")).await;
    assert!(
        msg.contains(&format!("navigation to {target} refused")),
        "{msg}"
    );

    // A link click to it.
    let t = run(
        &handler,
        json!({"task_id": "click", "constraints": {"actions": [
            {"type": "goto", "url": format!("{site}/link-to?url={target}")},
            {"type": "click", "selector": "#go"},
        ]}}),
    )
    .await;
    assert_eq!(
        summary(&t)[1],
        ("click".into(), false, Some("network_error".into())),
        "{t:#?}"
    );
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("refused") && msg.contains("127.0.0.2"),
        "{msg}"
    );

    // Sub-resources: fetch(), an image, a WebSocket. The page loads; the
    // requests fail; the listener sees nothing.
    let ws = format!("ws://{}/socket", blocked.addr);
    for (id, path, expect) in [
        ("fetch", format!("/fetch-to?url={target}"), "fetch failed"),
        ("ws", format!("/ws-to?url={ws}"), "socket error"),
        ("img", format!("/img-to?url={target}"), "image below"),
    ] {
        let t = run(
            &handler,
            json!({"task_id": format!("sub_{id}"), "constraints": {"actions": [
                {"type": "goto", "url": format!("{site}{path}")},
                {"type": "wait", "ms": 300},
                {"type": "extract"}
            ]}}),
        )
        .await;
        let last = &t.steps[2].observation;
        assert!(last.contains(expect), "{id}: {last}");
        if id != "ws" {
            // Fetch interception recorded why (the WebSocket is stopped by
            // the egress proxy, which Fetch does not see).
            let blocked_list = t
                .metadata
                .get("blocked_requests")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            assert!(
                blocked_list
                    .iter()
                    .any(|b| b["url"].as_str().unwrap_or("").contains("127.0.0.2")),
                "{id}: {:?}",
                t.metadata
            );
        }
    }
    assert!(
        h.web_metrics.egress_refused.get() >= 1,
        "the WebSocket was refused by the egress proxy"
    );

    assert_eq!(
        blocked.count(),
        0,
        "no connection may reach the blocked address: {:?}",
        blocked.requests
    );
    assert!(
        h.web_metrics
            .requests_blocked
            .with_label_values(&["navigation"])
            .get()
            >= 2
    );
    h.stop().await;
}

/// `openssl s_server -www` on 127.0.0.1 with a fresh self-signed
/// certificate; killed when dropped.
struct SelfSignedServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl SelfSignedServer {
    fn start() -> Self {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=adp-test.invalid",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (scripts/setup.sh dev)");
        assert!(made.success(), "openssl req failed");
        let port = test_support::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        test_support::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .expect("openssl s_server listens");
        SelfSignedServer {
            child,
            url: format!("https://127.0.0.1:{port}/"),
            _dir: dir,
        }
    }
}

impl Drop for SelfSignedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_https_certificates_fail_unless_accepted() {
    let server = SelfSignedServer::start();

    // Default: the certificate is checked, as in a browser.
    let h = Harness::start(Policy::new(false, Vec::new()), 2).await;
    let handler = h.handler(h.settings(), None);
    let msg = failed_goto(&handler, "tls-checked", &server.url).await;
    assert!(
        msg.contains("net::ERR_CERT_") && msg.contains("certificate is not valid"),
        "{msg}"
    );
    h.stop().await;

    // WEB_IGNORE_HTTPS_ERRORS=true: the page loads.
    let h = Harness::start_with(Policy::new(false, Vec::new()), 2, |s| {
        s.ignore_https_errors = true
    })
    .await;
    let handler = h.handler(h.settings(), None);
    let t = run(
        &handler,
        json!({"task_id": "tls-accepted", "constraints": {"actions": [{"type": "goto", "url": server.url}]}}),
    )
    .await;
    assert_eq!(summary(&t), vec![("goto".into(), true, None)], "{t:#?}");
    assert!(
        t.steps[0].observation.contains("URL: https://127.0.0.1:"),
        "{}",
        t.steps[0].observation
    );
    h.stop().await;
}

//! Tests that need a private network namespace: the outer test re-executes
//! its own binary under `unshare --net --mount`, where only `lo` exists,
//! runs a setup script there (addresses on `lo`, files bind-mounted over
//! `/etc/...`), then runs one `#[ignore]`d inner test alone; the inner test
//! first checks where it is ([`assert_private_netns`]). Nothing in the
//! namespace can send a packet to the host network (PITFALLS.md, "Network
//! in tests").

use std::path::Path;
use std::process::Command;

/// Runs the ignored test `inner` of this test binary inside a private
/// network namespace: `lo` up, then each of `setup` (shell commands, e.g.
/// `ip addr add 169.254.169.254/32 dev lo`), then each `(file, target)` of
/// `mounts` bind-mounted over `target` (e.g. a hosts file over
/// `/etc/hosts`). Panics when anything fails, inside or out.
pub fn run_in_private_netns(inner: &str, setup: &[&str], mounts: &[(&Path, &str)]) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut script = String::from("set -e\nip link set lo up\n");
    for line in setup {
        script.push_str(line);
        script.push('\n');
    }
    let mut cmd = Command::new("unshare");
    for (i, (file, target)) in mounts.iter().enumerate() {
        // Paths go through the environment, never into the script's text.
        script.push_str(&format!(
            "mount --bind \"$ADP_NETNS_FILE_{i}\" '{target}'\n"
        ));
        cmd.env(format!("ADP_NETNS_FILE_{i}"), file);
    }
    script.push_str("exec \"$@\"");
    let status = cmd
        .args(["--net", "--mount", "sh", "-c", &script, "sh"])
        .arg(&exe)
        .args([
            "--exact",
            inner,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .status()
        .expect("unshare (util-linux) runs; tests need root");
    assert!(
        status.success(),
        "{inner} inside the private network namespace failed: {status}"
    );
}

/// Panics unless this process is in a network namespace whose only
/// interface is `lo` (so nothing after this can reach a real network).
pub fn assert_private_netns() {
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("/proc/self/net/dev");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        ifaces,
        vec!["lo"],
        "refusing to run outside a private network namespace (run the outer test, which sets it up)"
    );
}

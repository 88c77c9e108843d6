//! The platform binaries: which exist in the workspace, building them,
//! reading their `--help`, and talking HTTP to their metrics port.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The service binaries and their metrics/health port (CONTRACT §6).
pub const SERVICES: [(&str, u16); 3] = [
    ("dispatcher", 8000),
    ("sandbox-runtime", 8001),
    ("web-runtime", 8002),
];

/// The default metrics port of a service binary.
pub fn default_port(name: &str) -> Option<u16> {
    SERVICES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// A built binary.
#[derive(Debug, Clone)]
pub struct Binary {
    pub name: &'static str,
    pub path: PathBuf,
}

/// Whether some workspace crate declares a binary called `name`.
pub fn declared_in_workspace(name: &str) -> bool {
    let Ok(dirs) = std::fs::read_dir(crate::root().join("crates")) else {
        return false;
    };
    let needle = format!("name = \"{name}\"");
    dirs.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("Cargo.toml"))
            .map(|toml| toml.contains(&needle) && d.path().join("src").exists())
            .unwrap_or(false)
    })
}

/// Directory of the debug binaries (next to this test executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("target dir of the test executable")
}

/// Builds (debug) every service binary declared in the workspace, once per
/// test process, and returns them. A binary whose crate does not exist yet
/// is skipped; one that fails to build fails the test.
/// `ADP_CHECKS_ONLY=dispatcher,sandbox-runtime` limits the set (while
/// developing one runtime).
pub fn service_binaries() -> &'static [Binary] {
    static BUILT: OnceLock<Vec<Binary>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let only: Option<Vec<String>> = std::env::var("ADP_CHECKS_ONLY")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|n| n.trim().to_owned()).collect());
        let mut out = Vec::new();
        for (name, _) in SERVICES {
            if !declared_in_workspace(name) {
                continue;
            }
            if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
                continue;
            }
            build(name);
            out.push(Binary {
                name,
                path: bin_dir().join(name),
            });
        }
        assert!(
            !out.is_empty(),
            "no service binary (dispatcher, sandbox-runtime, web-runtime) in the workspace"
        );
        out
    })
}

/// Builds the binaries (debug, the profile of this test) with the same
/// package selection as `scripts/test.sh`, so that build is reused.
pub fn build(name: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(crate::root())
        .args(["build", "--quiet", "--workspace", "--bins"])
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build --bin {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `binary --help` output.
pub fn help(bin: &Binary) -> String {
    let out = Command::new(&bin.path)
        .arg("--help")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap_or_else(|e| panic!("run {} --help: {e}", bin.path.display()));
    assert!(
        out.status.success(),
        "{} --help exited with {}",
        bin.name,
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Environment variables a `--help` text documents (`[env: NAME=...]`).
pub fn help_env_vars(help: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = help;
    while let Some(i) = rest.find("[env: ") {
        rest = &rest[i + 6..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            vars.insert(name);
        }
    }
    vars
}

/// The `[default: X]` of the option documented with `[env: NAME=...]`.
pub fn help_default_of(help: &str, env: &str) -> Option<String> {
    // clap prints one option per paragraph (blank line between options).
    let marker = format!("[env: {env}=");
    let para = help.split("\n\n").find(|p| p.contains(&marker))?;
    let d = para.find("[default: ")?;
    let v = &para[d + 10..];
    Some(v[..v.find(']')?].to_owned())
}

/// A blocking `GET path` on 127.0.0.1:port; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_owned(),
        None => String::new(),
    };
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(nl) = rest.find("\r\n") {
        let Ok(len) = usize::from_str_radix(rest[..nl].trim(), 16) else {
            break;
        };
        if len == 0 {
            break;
        }
        let start = nl + 2;
        let end = (start + len).min(rest.len());
        out.push_str(&rest[start..end]);
        rest = rest.get(end + 2..).unwrap_or("");
    }
    out
}

/// Sample names in a Prometheus text exposition (`task_duration_seconds_bucket`,
/// `queue_size`, ...).
pub fn exposed_metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            let name = &l[..end];
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// A running service binary, killed on drop; its output goes to `log`.
pub struct Running {
    pub name: &'static str,
    pub port: u16,
    pub log: PathBuf,
    pub child: test_support::ChildGuard,
}

impl Running {
    /// The process's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until `GET path` answers at all (any status).
    pub fn wait_http(&self, path: &str, within: Duration) -> (u16, String) {
        let mut last = None;
        let ok = test_support::wait_until(within, || match http_get(self.port, path) {
            Ok(r) if r.0 != 0 => {
                last = Some(r);
                true
            }
            _ => false,
        });
        match (ok, last) {
            (Ok(()), Some(r)) => r,
            _ => panic!(
                "{} did not answer GET {path} on 127.0.0.1:{} within {within:?}; its log:\n{}",
                self.name,
                self.port,
                self.log_tail()
            ),
        }
    }
}

/// Starts `bin` with exactly `envs` (plus PATH and HOME), logging to a file
/// in `log_dir`.
pub fn spawn(
    bin: &Binary,
    envs: &[(String, String)],
    port: u16,
    log_dir: &std::path::Path,
) -> Running {
    let log = log_dir.join(format!("{}.log", bin.name));
    let file = std::fs::File::create(&log).expect("create log file");
    let err = file.try_clone().expect("clone log file");
    let mut cmd = Command::new(&bin.path);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.path.display()));
    Running {
        name: bin.name,
        port,
        log,
        child: test_support::ChildGuard(child),
    }
}

/// Files the Dockerfile copies from the repository into the images:
/// (path in the image, path in the repository).
pub const IMAGE_FILES: [(&str, &str); 2] = [
    ("/usr/local/bin/nsjail-docker", "docker/nsjail-docker.sh"),
    (
        "/usr/local/bin/sandbox-entrypoint",
        "docker/sandbox-entrypoint.sh",
    ),
];

/// The environment a compose service gives its binary, made runnable here:
/// Redis, output dir, task file and metrics port point at the test's own,
/// the metrics server binds to loopback; every other value is the compose
/// file's default.
pub fn local_env(
    service: &serde_norway::Value,
    redis_url: &str,
    output_dir: &std::path::Path,
    task_file: &std::path::Path,
    port: u16,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = crate::compose::environment(service)
        .into_iter()
        .map(|(k, v)| (k, crate::compose::interpolate(&v)))
        .collect();
    let overrides = [
        ("REDIS_URL", redis_url.to_owned()),
        ("OUTPUT_DIR", output_dir.display().to_string()),
        ("TASK_FILE", task_file.display().to_string()),
        ("METRICS_PORT", port.to_string()),
        ("METRICS_HOST", "127.0.0.1".to_owned()),
    ];
    // Files the image installs, found in the repository here.
    for (_, v) in env.iter_mut() {
        if let Some((_, repo_file)) = IMAGE_FILES.iter().find(|(image_path, _)| v == image_path) {
            *v = crate::root().join(repo_file).display().to_string();
        }
    }
    for (k, v) in overrides {
        let present = env.iter().any(|(name, _)| name == k);
        if present || k == "METRICS_HOST" {
            env.retain(|(name, _)| name != k);
            env.push((k.to_owned(), v));
        }
    }
    env
}

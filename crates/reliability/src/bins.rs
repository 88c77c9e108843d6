//! The binaries under test. Cargo gives a test only the binaries of its own
//! package (`CARGO_BIN_EXE_*`), so the suite runs `cargo build --workspace
//! --bins` once per test process (the same selection as `scripts/test.sh`,
//! so that build is reused rather than redone with other feature sets), in
//! the profile of the test executable itself (debug under `cargo test`),
//! and takes them from that profile's directory. With `ADP_BIN_DIR` set
//! (scripts/soak.sh builds release binaries first) nothing is built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The service binaries the scenarios run.
pub const BINARIES: [&str; 2] = ["dispatcher", "sandbox-runtime"];

/// Directory holding the built binaries (built on first use).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ADP_BIN_DIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            for name in BINARIES {
                assert!(
                    dir.join(name).is_file(),
                    "ADP_BIN_DIR={} has no {name}",
                    dir.display()
                );
            }
            return dir;
        }
        let dir = profile_dir();
        build(&dir);
        dir
    })
}

/// The path of one binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// `target/<profile>` of the running executable (`target/debug/deps/x` for a
/// test, `target/release/soak` for the soak driver).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir
}

fn build(profile_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(test_support::workspace_root()).args([
        "build",
        "--quiet",
        "--workspace",
        "--bins",
    ]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build of {BINARIES:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

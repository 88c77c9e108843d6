//! Scenario results: printed, and saved as `target/reliability/<name>.json`
//! (docs/reliability.md quotes them).

use std::path::PathBuf;

use serde_json::Value;

/// Where results go: `<target dir>/reliability/`.
pub fn results_dir() -> PathBuf {
    let bins = crate::bins::bin_dir();
    bins.parent().unwrap_or(bins).join("reliability")
}

/// Prints `result` and writes it to `results_dir()/<scenario>.json`.
pub fn save(scenario: &str, result: &Value) {
    let text = serde_json::to_string_pretty(result).unwrap_or_default();
    eprintln!("[reliability] {scenario} result:\n{text}");
    let dir = results_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{scenario}.json")), text + "\n");
    }
}

//! `adp stats`: what the trajectory files say — success rate by task type
//! and runtime, error-type histogram, step-count and duration percentiles,
//! cache hit rate, policies, retries.
//!
//! Reads every current trajectory file once (streaming); keeps one number
//! per file for the percentiles. Percentiles are nearest-rank.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::error::{CliError, Outcome, Result};
use crate::files::{self, Skips};
use crate::fmt::{self, Align, Table};
use crate::progress;
use crate::Env;

/// Aggregate statistics over the trajectory files.
#[derive(Debug, clap::Args)]
#[command(
    about = "Success rates, error types, step and duration percentiles, cache hit rate",
    long_about = "Success rates, error types, step and duration percentiles, cache hit rate.\n\n\
Computed from the trajectory files in $OUTPUT_DIR/trajectories (current files only; \
archived attempts <task_id>.attempt-N.json are left out unless --include-attempts). \
Percentiles are nearest-rank. Unreadable files are skipped and reported.",
    after_help = "Examples:\n  \
adp stats\n  \
adp stats --json | jq .by_task_type\n  \
OUTPUT_DIR=/data/run1 adp stats"
)]
pub struct StatsArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Count archived attempts (`<task_id>.attempt-N.json`) too.
    #[arg(long)]
    pub include_attempts: bool,
}

/// Successes out of a total.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rate {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `succeeded / total`, `null` when total is 0.
    pub success_rate: Option<f64>,
}

impl Rate {
    fn add(&mut self, success: bool) {
        self.total += 1;
        if success {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
    }
    fn finish(&mut self) {
        self.success_rate = ratio(self.succeeded, self.total);
    }
}

/// Distribution summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: Option<f64>,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted in place).
    pub fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n == 0 {
            return Percentiles::default();
        }
        let rank = |p: f64| -> f64 {
            let k = ((p / 100.0) * n as f64).ceil() as usize;
            values[k.clamp(1, n) - 1]
        };
        Percentiles {
            count: n as u64,
            min: Some(values[0]),
            mean: Some(values.iter().sum::<f64>() / n as f64),
            p50: Some(rank(50.0)),
            p90: Some(rank(90.0)),
            p99: Some(rank(99.0)),
            max: Some(values[n - 1]),
        }
    }
}

/// Cache lookups recorded in `metadata.cache_hit`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)`, `null` without any lookup.
    pub hit_rate: Option<f64>,
}

/// Everything `adp stats` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub trajectories: u64,
    pub overall: Rate,
    pub by_task_type: BTreeMap<String, Rate>,
    pub by_runtime: BTreeMap<String, Rate>,
    /// Failed trajectories by `error_type` (`task_failed` when it is null).
    pub error_types: BTreeMap<String, u64>,
    pub steps: Percentiles,
    pub duration_seconds: Percentiles,
    pub cache: CacheStats,
    pub policies: BTreeMap<String, u64>,
    /// Trajectories that needed more than one delivery (`metadata.attempt > 1`).
    pub retried: u64,
    /// Trajectories written for dead-lettered tasks (`metadata.dead_lettered`).
    pub dead_lettered: u64,
    pub skipped: Skips,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Reads the trajectory directory into [`Stats`].
pub fn collect(env: &Env, include_attempts: bool, show_progress: bool) -> Result<Stats> {
    let dir = env.trajectories_dir();
    let bar = if show_progress {
        let n = files::count(&dir, include_attempts).unwrap_or(0);
        Some(progress::bar(n, "files"))
    } else {
        None
    };
    let mut s = Stats::default();
    let mut steps: Vec<f64> = Vec::new();
    let mut durations: Vec<f64> = Vec::new();
    let walk = files::walk(&dir, include_attempts)
        .map_err(|e| CliError::failure(format!("cannot list {}: {e}", dir.display())))?;
    for file in walk {
        let file =
            file.map_err(|e| CliError::failure(format!("cannot list {}: {e}", dir.display())))?;
        if let Some(b) = &bar {
            b.inc(1);
        }
        let t = match files::load_view(&file.path) {
            Ok(t) => t,
            Err(why) => {
                s.skipped.add(&file, &why);
                continue;
            }
        };
        s.trajectories += 1;
        s.overall.add(t.success);
        s.by_task_type
            .entry(t.task_type_label().to_owned())
            .or_default()
            .add(t.success);
        s.by_runtime
            .entry(t.runtime().to_owned())
            .or_default()
            .add(t.success);
        if let Some(label) = t.failure_label() {
            *s.error_types.entry(label.to_owned()).or_default() += 1;
        }
        steps.push(t.steps.len() as f64);
        durations.push(t.total_duration);
        match t.cache_hit() {
            Some(true) => s.cache.hits += 1,
            Some(false) => s.cache.misses += 1,
            None => {}
        }
        *s.policies
            .entry(t.policy().unwrap_or("unknown").to_owned())
            .or_default() += 1;
        if t.attempt().is_some_and(|a| a > 1) {
            s.retried += 1;
        }
        if t.dead_lettered() {
            s.dead_lettered += 1;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    s.overall.finish();
    s.by_task_type.values_mut().for_each(Rate::finish);
    s.by_runtime.values_mut().for_each(Rate::finish);
    s.steps = Percentiles::of(&mut steps);
    s.duration_seconds = Percentiles::of(&mut durations);
    s.cache.hit_rate = ratio(s.cache.hits, s.cache.hits + s.cache.misses);
    Ok(s)
}

pub fn run(env: &Env, args: StatsArgs) -> Result<Outcome> {
    env.check_output_dir()?;
    let stats = collect(env, args.include_attempts, progress::stderr_is_terminal())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
    } else {
        out.write_all(render(env, &stats).as_bytes())?;
        eprint!("{}", stats.skipped.report());
    }
    Ok(Outcome::Done)
}

fn rate_table(first: &str, rates: &BTreeMap<String, Rate>, overall: &Rate) -> String {
    let mut t = Table::keyed(first, &["TOTAL", "SUCCEEDED", "FAILED", "SUCCESS"]);
    for (k, r) in rates
        .iter()
        .chain(std::iter::once((&"all".to_owned(), overall)))
    {
        t.row(vec![
            k.clone(),
            r.total.to_string(),
            r.succeeded.to_string(),
            r.failed.to_string(),
            fmt::percent(r.succeeded, r.total),
        ]);
    }
    t.render()
}

fn num(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".to_owned(),
        Some(x) if unit == "s" => format!("{x:.2}s"),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

/// The text report.
pub fn render(env: &Env, s: &Stats) -> String {
    let mut out = format!(
        "{} trajectories in {}\n\n",
        s.trajectories,
        env.trajectories_dir().display()
    );
    out.push_str(&rate_table("TASK TYPE", &s.by_task_type, &s.overall));
    out.push('\n');
    out.push_str(&rate_table("RUNTIME", &s.by_runtime, &s.overall));
    out.push('\n');
    if !s.error_types.is_empty() {
        let failed: u64 = s.error_types.values().sum();
        let widest = s.error_types.values().copied().max().unwrap_or(1).max(1);
        let mut t = Table::new(&[
            ("ERROR TYPE", Align::Left),
            ("COUNT", Align::Right),
            ("SHARE", Align::Right),
            ("", Align::Left),
        ]);
        let mut sorted: Vec<(&String, &u64)> = s.error_types.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, n) in sorted {
            let bar_len = ((*n as f64 / widest as f64) * 30.0).round() as usize;
            t.row(vec![
                k.clone(),
                n.to_string(),
                fmt::percent(*n, failed),
                "#".repeat(bar_len.max(1)),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    let mut t = Table::keyed("", &["MIN", "MEAN", "P50", "P90", "P99", "MAX"]);
    for (name, p, unit) in [
        ("steps", &s.steps, ""),
        ("duration", &s.duration_seconds, "s"),
    ] {
        t.row(vec![
            name.to_owned(),
            num(p.min, unit),
            num(p.mean, unit),
            num(p.p50, unit),
            num(p.p90, unit),
            num(p.p99, unit),
            num(p.max, unit),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(&format!(
        "cache: {} hits, {} misses, hit rate {}\n",
        s.cache.hits,
        s.cache.misses,
        fmt::percent(s.cache.hits, s.cache.hits + s.cache.misses)
    ));
    let policies = fmt::tally(&s.policies);
    out.push_str(&format!(
        "policies: {}\n",
        if policies.is_empty() {
            "-".into()
        } else {
            policies
        }
    ));
    out.push_str(&format!(
        "retried (attempt > 1): {}, dead-lettered: {}\n",
        s.retried, s.dead_lettered
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<f64> = (1..=10).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.p50, Some(5.0));
        assert_eq!(p.p90, Some(9.0));
        assert_eq!(p.p99, Some(10.0));
        assert_eq!(p.mean, Some(5.5));
        assert_eq!(Percentiles::of(&mut []).p50, None);
    }
}

//! Task checks and the reward they give (CONTRACT §8).
//!
//! A task's checks come from its constraints:
//!
//! | key | task types | check(s) |
//! |---|---|---|
//! | `expected_answer` | all | `answer`: the final answer against a value |
//! | `tests` | code, reasoning | `tests`: Python test code run in a jail (live) |
//! | `verify` | all (`url`, `text`, `selector`: web only) | one check per entry |
//! | `expected_output` | code, reasoning | `expected_output`: the final stdout contains it |
//! | `expected_text` | web | `expected_text`: the final page text contains it |
//!
//! A task with none of `expected_answer`, `tests`, `verify` also gets the
//! check `completed` (the run ended without error: the rule of success
//! before checks existed), so that "success = every check passed" keeps
//! today's meaning for old tasks.
//!
//! [`Checks::from_task`] parses and validates them (the dispatcher rejects a
//! task whose checks do not parse). [`evaluate`] scores them, purely, from
//! the run's [`FinalState`] and the results of the checks only a runtime can
//! compute ([`Live`]: `completed`, `tests`, `selector`). `reward` is the
//! weighted mean of the scores; `success` is true when every check of
//! positive weight passed (score 1). [`rescore`] evaluates a trajectory
//! again from what it recorded, keeping the live checks' earlier results.

use std::collections::HashMap;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::{RewardItem, TaskSpec, TaskType, Trajectory};

/// Name of the implicit check of tasks without new-style checks.
pub const COMPLETED: &str = "completed";
/// Metadata key of the recorded [`FinalState`].
pub const FINAL_STATE_KEY: &str = "final_state";
/// Metadata key of the checks' log (a list of [`CheckLog`]).
pub const CHECKS_LOG_KEY: &str = "checks_log";
/// Most characters of a detail string.
const MAX_DETAIL: usize = 2000;
/// Most characters of the answer or text quoted in a detail.
const MAX_QUOTE: usize = 160;

/// How an answer is compared with the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    /// Equal after trimming surrounding whitespace.
    Exact,
    /// Equal after lowercasing, collapsing whitespace and stripping
    /// surrounding punctuation, quotes and markdown emphasis.
    Normalized,
    /// The regular expression matches somewhere in the answer.
    Regex,
    /// The answer's number (the whole answer, else its last number) is
    /// within `tolerance` of the value.
    Numeric,
    /// The value occurs in the answer at word boundaries (whitespace
    /// collapsed), unless `word_boundary: false`.
    Contains,
}

impl Match {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "exact" => Some(Match::Exact),
            "normalized" => Some(Match::Normalized),
            "regex" => Some(Match::Regex),
            "numeric" => Some(Match::Numeric),
            "contains" => Some(Match::Contains),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Normalized => "normalized",
            Match::Regex => "regex",
            Match::Numeric => "numeric",
            Match::Contains => "contains",
        }
    }
}

/// An answer check: `expected_answer`, or a `verify` entry of type `answer`.
#[derive(Debug, Clone)]
pub struct AnswerSpec {
    /// Accepted values (any one passes).
    pub values: Vec<String>,
    pub mode: Match,
    /// `numeric`: the largest accepted difference.
    pub tolerance: f64,
    /// `contains`: only at word boundaries.
    pub word_boundary: bool,
    /// `exact`, `contains`, `regex`: compare case-insensitively.
    pub ignore_case: bool,
    regexes: Vec<Regex>,
    numbers: Vec<f64>,
}

/// What one check looks at.
#[derive(Debug, Clone)]
pub enum CheckKind {
    /// The run ended without error (live: the runtime knows).
    Completed,
    /// The final answer (`final_result`).
    Answer(AnswerSpec),
    /// Python tests in a jail (live: the sandbox runtime runs them).
    Tests(String),
    /// The final stdout (trimmed) contains the string.
    ExpectedOutput(String),
    /// The final page text contains the string (whitespace collapsed).
    ExpectedText(String),
    /// The final URL equals the string (both parsed and normalised as URLs).
    UrlEquals(String),
    /// The final URL matches the regular expression.
    UrlRegex(Regex),
    /// The final page text contains the string (whitespace collapsed).
    TextContains(String),
    /// The final page text matches the regular expression.
    TextRegex(Regex),
    /// An element matching the CSS selector is on the final page (live).
    Selector(String),
}

impl CheckKind {
    /// Whether only the runtime can evaluate it (it needs the jail, the page
    /// or the run itself); [`rescore`] keeps such a check's earlier result.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            CheckKind::Completed | CheckKind::Tests(_) | CheckKind::Selector(_)
        )
    }
}

/// One check of a task.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub weight: f64,
    pub kind: CheckKind,
}

/// The checks of a task, in a fixed order (answer, tests, verify entries,
/// expected_output, expected_text; `completed` first when it applies).
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub items: Vec<Check>,
}

/// A check that does not parse: the constraint key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint `{key}` is invalid: {why}")]
pub struct CheckError {
    pub key: &'static str,
    pub why: String,
}

fn bad(key: &'static str, why: impl Into<String>) -> CheckError {
    CheckError {
        key,
        why: why.into(),
    }
}

impl Checks {
    /// The checks of `task`; `Err` names the constraint that is wrong.
    pub fn from_task(task: &TaskSpec) -> Result<Checks, CheckError> {
        let c = &task.constraints;
        let web = task.task_type == TaskType::Web;
        let mut items = Vec::new();
        let mut new_style = false;
        if let Some(v) = present(c, "expected_answer") {
            new_style = true;
            let (spec, weight) = parse_answer(v, "expected_answer", "")?;
            items.push(Check {
                name: "answer".into(),
                weight,
                kind: CheckKind::Answer(spec),
            });
        }
        if let Some(v) = present(c, "tests") {
            new_style = true;
            let Value::String(src) = v else {
                return Err(bad("tests", "must be a string of Python source"));
            };
            if web {
                return Err(bad(
                    "tests",
                    "Python tests apply to code and reasoning tasks, not web tasks (use verify)",
                ));
            }
            if src.trim().is_empty() {
                return Err(bad("tests", "is empty"));
            }
            items.push(Check {
                name: "tests".into(),
                weight: 1.0,
                kind: CheckKind::Tests(src.clone()),
            });
        }
        if let Some(v) = present(c, "verify") {
            new_style = true;
            let Value::Array(list) = v else {
                return Err(bad("verify", "must be an array of check objects"));
            };
            if list.is_empty() {
                return Err(bad("verify", "is an empty array"));
            }
            for (i, entry) in list.iter().enumerate() {
                items.push(parse_verify(i, entry, web)?);
            }
        }
        if let Some(s) = task.expected_output() {
            items.push(Check {
                name: "expected_output".into(),
                weight: 1.0,
                kind: CheckKind::ExpectedOutput(s.to_owned()),
            });
        }
        if let Some(s) = task.expected_text() {
            items.push(Check {
                name: "expected_text".into(),
                weight: 1.0,
                kind: CheckKind::ExpectedText(s.to_owned()),
            });
        }
        if !new_style {
            items.insert(
                0,
                Check {
                    name: COMPLETED.into(),
                    weight: 1.0,
                    kind: CheckKind::Completed,
                },
            );
        }
        let mut seen = std::collections::HashSet::new();
        for item in &items {
            if !seen.insert(item.name.as_str()) {
                return Err(bad(
                    "verify",
                    format!("two checks are named {:?}", item.name),
                ));
            }
        }
        if items.iter().all(|i| i.weight == 0.0) {
            return Err(bad(
                "verify",
                "every check has weight 0: at least one must count",
            ));
        }
        Ok(Checks { items })
    }

    /// The Python tests, if the task has them.
    pub fn tests(&self) -> Option<&str> {
        self.items.iter().find_map(|c| match &c.kind {
            CheckKind::Tests(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The CSS selectors of `selector` checks, in order.
    pub fn selectors(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter_map(|c| match &c.kind {
                CheckKind::Selector(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether any check reads the final page text.
    pub fn reads_page_text(&self) -> bool {
        self.items.iter().any(|c| {
            matches!(
                c.kind,
                CheckKind::ExpectedText(_) | CheckKind::TextContains(_) | CheckKind::TextRegex(_)
            )
        })
    }
}

/// A constraint that is there and not `null`.
fn present<'a>(c: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    c.get(key).filter(|v| !v.is_null())
}

fn weight_of(obj: &Map<String, Value>, key: &'static str, at: &str) -> Result<f64, CheckError> {
    match obj.get("weight") {
        None | Some(Value::Null) => Ok(1.0),
        Some(w) => match w.as_f64() {
            Some(w) if w.is_finite() && w >= 0.0 => Ok(w),
            _ => Err(bad(key, format!("{at}`weight` must be a number ≥ 0"))),
        },
    }
}

fn compile(pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("bad regular expression {pattern:?}: {e}"))
}

fn bool_field(
    obj: &Map<String, Value>,
    field: &str,
    default: bool,
    key: &'static str,
    at: &str,
) -> Result<bool, CheckError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(key, format!("{at}`{field}` must be true or false"))),
    }
}

/// `"42"`, `42`, or `{"value", "match", "tolerance", "word_boundary",
/// "ignore_case", "weight"}`; `value` may be a list of accepted values.
/// `at` prefixes error messages ("verify[2]: ").
fn parse_answer(v: &Value, key: &'static str, at: &str) -> Result<(AnswerSpec, f64), CheckError> {
    let empty = Map::new();
    let (value, obj) = match v {
        Value::Object(o) => (
            o.get("value")
                .filter(|v| !v.is_null())
                .ok_or_else(|| bad(key, format!("{at}needs a `value`")))?,
            o,
        ),
        other => (other, &empty),
    };
    let raw: Vec<&Value> = match value {
        Value::Array(list) if !list.is_empty() => list.iter().collect(),
        Value::Array(_) => return Err(bad(key, format!("{at}`value` is an empty list"))),
        one => vec![one],
    };
    let mut values = Vec::new();
    for v in &raw {
        match v {
            Value::String(s) => values.push(s.clone()),
            Value::Number(n) => values.push(n.to_string()),
            _ => {
                return Err(bad(
                    key,
                    format!("{at}`value` must be a string, a number or a list of them"),
                ))
            }
        }
    }
    let all_numbers = raw.iter().all(|v| v.is_number());
    let mode = match obj.get("match") {
        None | Some(Value::Null) if all_numbers => Match::Numeric,
        None | Some(Value::Null) => Match::Normalized,
        Some(Value::String(s)) => Match::parse(s).ok_or_else(|| {
            bad(
                key,
                format!("{at}unknown match {s:?} (exact, normalized, regex, numeric or contains)"),
            )
        })?,
        Some(_) => return Err(bad(key, format!("{at}`match` must be a string"))),
    };
    let tolerance = match obj.get("tolerance") {
        None | Some(Value::Null) => 0.0,
        Some(t) => match t.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => t,
            _ => return Err(bad(key, format!("{at}`tolerance` must be a number ≥ 0"))),
        },
    };
    if obj.get("tolerance").is_some_and(|t| !t.is_null()) && mode != Match::Numeric {
        return Err(bad(
            key,
            format!("{at}`tolerance` only applies to match \"numeric\""),
        ));
    }
    let word_boundary = bool_field(obj, "word_boundary", true, key, at)?;
    let ignore_case = bool_field(obj, "ignore_case", false, key, at)?;
    let mut regexes = Vec::new();
    let mut numbers = Vec::new();
    match mode {
        Match::Regex => {
            for v in &values {
                regexes.push(compile(v, ignore_case).map_err(|e| bad(key, format!("{at}{e}")))?);
            }
        }
        Match::Numeric => {
            for v in &values {
                numbers.push(parse_number(v.trim()).ok_or_else(|| {
                    bad(
                        key,
                        format!("{at}value {v:?} is not a number (match \"numeric\")"),
                    )
                })?);
            }
        }
        _ => {}
    }
    let weight = weight_of(obj, key, at)?;
    Ok((
        AnswerSpec {
            values,
            mode,
            tolerance,
            word_boundary,
            ignore_case,
            regexes,
            numbers,
        },
        weight,
    ))
}

/// One `verify` entry: `{"type": "url"|"text"|"selector"|"answer", ...,
/// "name"?, "weight"?}`.
fn parse_verify(i: usize, entry: &Value, web: bool) -> Result<Check, CheckError> {
    const KEY: &str = "verify";
    let at = format!("entry {i}: ");
    let Value::Object(obj) = entry else {
        return Err(bad(KEY, format!("{at}must be an object with a `type`")));
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(bad(
            KEY,
            format!("{at}needs a string `type` (url, text, selector or answer)"),
        ));
    };
    let string = |field: &str| -> Result<Option<String>, CheckError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(bad(
                KEY,
                format!("{at}`{field}` must be a non-empty string"),
            )),
        }
    };
    if kind != "answer" && !web {
        return Err(bad(
            KEY,
            format!("{at}a {kind:?} check needs a web task (only \"answer\" checks apply to other tasks)"),
        ));
    }
    let ignore_case = bool_field(obj, "ignore_case", false, KEY, &at)?;
    // Exactly one of the fields `a` and `b`: (whether it was `a`, its value).
    let one_of = |a: &str, b: &str| -> Result<(bool, String), CheckError> {
        match (string(a)?, string(b)?) {
            (Some(v), None) => Ok((true, v)),
            (None, Some(v)) => Ok((false, v)),
            _ => Err(bad(
                KEY,
                format!("{at}a {kind:?} check needs exactly one of `{a}` and `{b}`"),
            )),
        }
    };
    let regex = |re: &str| compile(re, ignore_case).map_err(|e| bad(KEY, format!("{at}{e}")));
    let (weight, check_kind) = match kind {
        "url" => {
            let kind = match one_of("equals", "regex")? {
                (true, url) => CheckKind::UrlEquals(url),
                (false, re) => CheckKind::UrlRegex(regex(&re)?),
            };
            (weight_of(obj, KEY, &at)?, kind)
        }
        "text" => {
            let kind = match one_of("contains", "regex")? {
                (true, text) => CheckKind::TextContains(text),
                (false, re) => CheckKind::TextRegex(regex(&re)?),
            };
            (weight_of(obj, KEY, &at)?, kind)
        }
        "selector" => {
            let sel = string("selector")?
                .ok_or_else(|| bad(KEY, format!("{at}a \"selector\" check needs `selector`")))?;
            (weight_of(obj, KEY, &at)?, CheckKind::Selector(sel))
        }
        "answer" => {
            let (spec, weight) = parse_answer(entry, KEY, &at)?;
            (weight, CheckKind::Answer(spec))
        }
        other => {
            return Err(bad(
                KEY,
                format!("{at}unknown type {other:?} (url, text, selector or answer)"),
            ))
        }
    };
    let name = string("name")?.unwrap_or_else(|| format!("verify.{i}.{kind}"));
    Ok(Check {
        name,
        weight,
        kind: check_kind,
    })
}

/// What a run left behind that checks look at; recorded in
/// `metadata.final_state` (the answer is `final_result`) so that the checks
/// that need no live state can be evaluated again later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// The final answer: the trajectory's `final_result`. Not recorded
    /// twice (`final_result` holds it).
    #[serde(skip)]
    pub answer: String,
    /// Code tasks: stdout of the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Web tasks: the final page's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Web tasks: the final page's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Web tasks: the final page's visible text (cut at [`MAX_RECORDED_TEXT`]
    /// characters when recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The text was cut when recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
}

/// Most characters of page text or stdout kept in `metadata.final_state`.
pub const MAX_RECORDED_TEXT: usize = 256 * 1024;

impl FinalState {
    /// The state as recorded: long texts cut.
    pub fn recorded(&self) -> FinalState {
        let mut r = self.clone();
        if let Some(t) = &mut r.text {
            if let Some((cut, _)) = t.char_indices().nth(MAX_RECORDED_TEXT) {
                t.truncate(cut);
                r.text_truncated = true;
            }
        }
        if let Some(s) = &mut r.stdout {
            if let Some((cut, _)) = s.char_indices().nth(MAX_RECORDED_TEXT) {
                s.truncate(cut);
            }
        }
        r
    }

    /// The state recorded in `t` (its answer is `final_result`).
    pub fn from_trajectory(t: &Trajectory) -> FinalState {
        let mut s: FinalState = t
            .metadata
            .get(FINAL_STATE_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        s.answer = t.final_result.clone();
        s
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub score: f64,
    pub detail: String,
    /// Long output (test stdout/stderr) for the checks' log.
    pub log: Option<String>,
}

impl Outcome {
    pub fn pass(detail: impl Into<String>) -> Self {
        Outcome {
            score: 1.0,
            detail: detail.into(),
            log: None,
        }
    }
    pub fn fail(detail: impl Into<String>) -> Self {
        Outcome {
            score: 0.0,
            detail: detail.into(),
            log: None,
        }
    }
    fn of(ok: bool, pass: String, fail: String) -> Self {
        if ok {
            Outcome::pass(pass)
        } else {
            Outcome::fail(fail)
        }
    }
}

/// Results only the runtime can compute, by check name.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub results: HashMap<String, Outcome>,
}

impl Live {
    /// `completed`: whether the run ended without error, and why not.
    pub fn completed(mut self, ok: bool, why_not: Option<&str>) -> Self {
        let outcome = if ok {
            Outcome::pass("the run ended without error")
        } else {
            Outcome::fail(why_not.unwrap_or("the run did not end cleanly").to_owned())
        };
        self.results.insert(COMPLETED.into(), outcome);
        self
    }

    pub fn set(&mut self, name: &str, outcome: Outcome) {
        self.results.insert(name.to_owned(), outcome);
    }

    /// The selector checks' results from `present` (one per
    /// [`Checks::selectors`], in order; `None`: the selector is invalid).
    pub fn selectors(&mut self, checks: &Checks, present: &[Option<bool>]) {
        let sel = checks
            .items
            .iter()
            .filter(|c| matches!(c.kind, CheckKind::Selector(_)));
        for (i, check) in sel.enumerate() {
            let CheckKind::Selector(s) = &check.kind else {
                continue;
            };
            let outcome = match present.get(i).copied().flatten() {
                Some(true) => Outcome::pass(format!("an element matches {s:?}")),
                Some(false) => Outcome::fail(format!("no element matches {s:?} on the final page")),
                None => Outcome::fail(format!("{s:?} is not a valid CSS selector")),
            };
            self.set(&check.name, outcome);
        }
    }
}

/// One check's log entry (`metadata.checks_log`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckLog {
    pub name: String,
    pub log: String,
}

/// Scores, reward, success and log of a set of checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub reward: f64,
    pub breakdown: Vec<RewardItem>,
    pub success: bool,
    pub log: Vec<CheckLog>,
}

impl Evaluation {
    /// The result for a task whose checks do not parse (one that reached a
    /// runtime without the dispatcher's validation): reward 0, one entry
    /// `checks` that says why.
    pub fn invalid(e: &CheckError) -> Evaluation {
        Evaluation {
            reward: 0.0,
            breakdown: vec![RewardItem {
                name: "checks".into(),
                weight: 1.0,
                score: 0.0,
                detail: e.to_string(),
            }],
            success: false,
            log: Vec::new(),
        }
    }

    /// The first counting check that failed.
    pub fn first_failure(&self) -> Option<&RewardItem> {
        self.breakdown
            .iter()
            .find(|i| i.weight > 0.0 && i.score < 1.0)
    }

    /// Writes `reward`, `reward_breakdown`, `success` and the log into `t`;
    /// when a check failed and `t` says nothing yet, its `error_message`
    /// names the check.
    pub fn apply(self, t: &mut Trajectory) {
        if !self.success && t.error_message.is_none() {
            if let Some(f) = self.first_failure() {
                t.error_message = Some(format!("check {} failed: {}", f.name, cut(&f.detail, 500)));
            }
        }
        t.success = self.success;
        t.reward = Some(self.reward);
        t.reward_breakdown = self.breakdown;
        if self.log.is_empty() {
            t.metadata.remove(CHECKS_LOG_KEY);
        } else {
            t.meta(
                CHECKS_LOG_KEY,
                serde_json::to_value(&self.log).unwrap_or_default(),
            );
        }
    }
}

/// Evaluates `checks` on `state`; live checks take their result from `live`
/// (missing: score 0, "not evaluated").
pub fn evaluate(checks: &Checks, state: &FinalState, live: &Live) -> Evaluation {
    let mut breakdown = Vec::with_capacity(checks.items.len());
    let mut log = Vec::new();
    for check in &checks.items {
        let outcome = if check.kind.is_live() {
            live.results
                .get(&check.name)
                .cloned()
                .unwrap_or_else(|| Outcome::fail("not evaluated"))
        } else {
            score(&check.kind, state)
        };
        if let Some(l) = &outcome.log {
            log.push(CheckLog {
                name: check.name.clone(),
                log: l.clone(),
            });
        }
        breakdown.push(RewardItem {
            name: check.name.clone(),
            weight: check.weight,
            score: outcome.score.clamp(0.0, 1.0),
            detail: cut(&outcome.detail, MAX_DETAIL),
        });
    }
    let total: f64 = breakdown.iter().map(|i| i.weight).sum();
    let reward = if total > 0.0 {
        breakdown.iter().map(|i| i.weight * i.score).sum::<f64>() / total
    } else {
        0.0
    };
    let success = breakdown.iter().all(|i| i.weight == 0.0 || i.score >= 1.0);
    Evaluation {
        reward,
        breakdown,
        success,
        log,
    }
}

/// Evaluates the checks of `task` on the state `t` recorded, keeping the
/// earlier result of every live check (from `t.reward_breakdown`; for a
/// trajectory written before checks existed, `completed` is read from its
/// steps). Does not change `t`.
pub fn rescore(checks: &Checks, t: &Trajectory) -> Evaluation {
    let state = FinalState::from_trajectory(t);
    let mut live = Live::default();
    let earlier: HashMap<&str, &RewardItem> = t
        .reward_breakdown
        .iter()
        .map(|i| (i.name.as_str(), i))
        .collect();
    for check in checks.items.iter().filter(|c| c.kind.is_live()) {
        let outcome = match earlier.get(check.name.as_str()) {
            Some(i) => Outcome {
                score: i.score,
                detail: i.detail.clone(),
                log: None,
            },
            None if matches!(check.kind, CheckKind::Completed) => {
                let ok = t.error_type.is_none() && t.steps.last().is_some_and(|s| s.success);
                Outcome::of(
                    ok,
                    "the run ended without error (read from the steps)".into(),
                    "the run did not end cleanly (read from the steps)".into(),
                )
            }
            None => Outcome::fail("needs a live run (not recorded by the run): not evaluated"),
        };
        live.set(&check.name, outcome);
    }
    let mut eval = evaluate(checks, &state, &live);
    // Keep the earlier log of live checks (test output).
    if let Some(old) = t.metadata.get(CHECKS_LOG_KEY) {
        if let Ok(old) = serde_json::from_value::<Vec<CheckLog>>(old.clone()) {
            let live_names: Vec<&str> = checks
                .items
                .iter()
                .filter(|c| c.kind.is_live())
                .map(|c| c.name.as_str())
                .collect();
            eval.log.extend(
                old.into_iter()
                    .filter(|l| live_names.contains(&l.name.as_str())),
            );
        }
    }
    eval
}

/// Scores a check that needs no live state.
fn score(kind: &CheckKind, s: &FinalState) -> Outcome {
    match kind {
        CheckKind::Answer(spec) => check_answer(spec, &s.answer),
        CheckKind::ExpectedOutput(want) => {
            // No code ran (or none was recorded): the answer stands for the output.
            let out = s.stdout.as_deref().unwrap_or(&s.answer);
            let want = want.trim();
            Outcome::of(
                out.trim().contains(want),
                format!("the final output contains {want:?}"),
                format!("expected output {want:?} not found in the final output"),
            )
        }
        CheckKind::ExpectedText(want) | CheckKind::TextContains(want) => with_text(s, |text| {
            Outcome::of(
                text_contains(text, want),
                format!("the final page text contains {want:?}"),
                format!("the final page does not contain the expected text {want:?}"),
            )
        }),
        CheckKind::TextRegex(re) => with_text(s, |text| {
            Outcome::of(
                re.is_match(text),
                format!("the final page text matches /{re}/"),
                format!("the final page text does not match /{re}/"),
            )
        }),
        CheckKind::UrlEquals(want) => match &s.url {
            Some(url) => Outcome::of(
                same_url(url, want),
                format!("the final URL is {url}"),
                format!("the final URL is {url}, not {want}"),
            ),
            None => Outcome::fail("no final URL recorded"),
        },
        CheckKind::UrlRegex(re) => match &s.url {
            Some(url) => Outcome::of(
                re.is_match(url),
                format!("the final URL {url} matches /{re}/"),
                format!("the final URL {url} does not match /{re}/"),
            ),
            None => Outcome::fail("no final URL recorded"),
        },
        CheckKind::Completed | CheckKind::Tests(_) | CheckKind::Selector(_) => {
            Outcome::fail("needs a live run: not evaluated")
        }
    }
}

fn with_text(s: &FinalState, f: impl FnOnce(&str) -> Outcome) -> Outcome {
    let Some(text) = &s.text else {
        return Outcome::fail("no final page text recorded");
    };
    let mut out = f(text);
    if out.score < 1.0 && s.text_truncated {
        out.detail.push_str(&format!(
            " (the recorded text was cut at {MAX_RECORDED_TEXT} characters)"
        ));
    }
    out
}

/// Whether `text` contains `needle`, also with runs of whitespace collapsed
/// (the rule of `expected_text`).
pub fn text_contains(text: &str, needle: &str) -> bool {
    text.contains(needle) || collapse(text).contains(&collapse(needle))
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn same_url(got: &str, want: &str) -> bool {
    let norm = |s: &str| {
        url::Url::parse(s.trim())
            .map(|u| u.to_string())
            .unwrap_or_else(|_| s.trim().to_owned())
    };
    got.trim() == want.trim() || norm(got) == norm(want)
}

/// Checks `answer` against the spec.
pub fn check_answer(spec: &AnswerSpec, answer: &str) -> Outcome {
    let how = spec.mode.as_str();
    let quoted = quote(answer);
    let expected = if spec.values.len() == 1 {
        format!("{:?}", spec.values[0])
    } else {
        format!("one of {:?}", spec.values)
    };
    let pass = |what: String| Outcome::pass(format!("{how}: {what}"));
    let fail = || {
        Outcome::fail(format!(
            "{how}: expected {expected}, the answer is {quoted}"
        ))
    };
    match spec.mode {
        Match::Exact => {
            let a = answer.trim();
            let hit = spec.values.iter().find(|v| {
                if spec.ignore_case {
                    v.trim().to_lowercase() == a.to_lowercase()
                } else {
                    v.trim() == a
                }
            });
            hit.map_or_else(fail, |v| pass(format!("the answer is {v:?}")))
        }
        Match::Normalized => {
            let a = normalize(answer);
            let hit = spec.values.iter().find(|v| normalize(v) == a);
            hit.map_or_else(fail, |v| pass(format!("the answer matches {v:?}")))
        }
        Match::Regex => {
            let hit = spec.regexes.iter().find(|re| re.is_match(answer));
            hit.map_or_else(fail, |re| pass(format!("the answer matches /{re}/")))
        }
        Match::Contains => {
            let hit = spec
                .values
                .iter()
                .find(|v| contains(answer, v, spec.word_boundary, spec.ignore_case));
            hit.map_or_else(fail, |v| pass(format!("the answer contains {v:?}")))
        }
        Match::Numeric => {
            let Some(got) = answer_number(answer) else {
                return Outcome::fail(format!("numeric: no number in the answer {quoted}"));
            };
            let hit = spec.numbers.iter().find(|want| {
                let slack = spec.tolerance + 1e-9 * want.abs().max(1.0);
                (got - **want).abs() <= slack
            });
            match hit {
                Some(want) => pass(format!("{got} is within {} of {want}", spec.tolerance)),
                None => Outcome::fail(format!(
                    "numeric: the answer's number {got} is not within {} of {expected}",
                    spec.tolerance
                )),
            }
        }
    }
}

/// Lowercase, whitespace collapsed, surrounding punctuation, quotes and
/// markdown emphasis stripped.
pub fn normalize(s: &str) -> String {
    let lower = collapse(&s.to_lowercase());
    lower
        .trim_matches(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '`' | '*' | '_'
                )
        })
        .to_owned()
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `needle` occurs in `hay` (whitespace collapsed in both); with
/// `word_boundary`, an occurrence counts only when the characters around it
/// do not continue a word at an edge that is itself a word character (and
/// a number is not continued by a decimal part or digit group:
/// "42" is not in "142", "42.5" or "4,200").
pub fn contains(hay: &str, needle: &str, word_boundary: bool, ignore_case: bool) -> bool {
    let (mut hay, mut needle) = (collapse(hay), collapse(needle));
    if ignore_case {
        hay = hay.to_lowercase();
        needle = needle.to_lowercase();
    }
    if needle.is_empty() {
        return true;
    }
    if !word_boundary {
        return hay.contains(&needle);
    }
    let first = needle.chars().next().unwrap_or(' ');
    let last = needle.chars().next_back().unwrap_or(' ');
    hay.match_indices(&needle).any(|(i, m)| {
        let before = &hay[..i];
        let after = &hay[i + m.len()..];
        let mut b = before.chars().rev();
        let mut a = after.chars();
        let (b1, b2) = (b.next(), b.next());
        let (a1, a2) = (a.next(), a.next());
        let left_ok = !is_word(first)
            || match b1 {
                None => true,
                Some(c) if is_word(c) => false,
                Some('.' | ',') if first.is_ascii_digit() => {
                    !b2.is_some_and(|c| c.is_ascii_digit())
                }
                Some(_) => true,
            };
        let right_ok = !is_word(last)
            || match a1 {
                None => true,
                Some(c) if is_word(c) => false,
                Some('.' | ',') if last.is_ascii_digit() => !a2.is_some_and(|c| c.is_ascii_digit()),
                Some(_) => true,
            };
        left_ok && right_ok
    })
}

fn number_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
            .expect("the number pattern compiles")
    })
}

fn parse_number(s: &str) -> Option<f64> {
    let cleaned = s.replace([',', '_'], "");
    cleaned.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// The answer as a number: the whole (trimmed, markdown stripped) answer
/// when it is one, else its last number.
pub fn answer_number(answer: &str) -> Option<f64> {
    let trimmed = normalize(answer);
    if let Some(n) = parse_number(&trimmed) {
        return Some(n);
    }
    number_regex()
        .find_iter(answer)
        .last()
        .and_then(|m| parse_number(m.as_str()))
}

fn quote(s: &str) -> String {
    format!("{:?}", cut(s.trim(), MAX_QUOTE))
}

/// `s` cut to `max` characters, marked with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(task_type: &str, constraints: Value) -> TaskSpec {
        serde_json::from_value(json!({
            "task_id": "t", "task_type": task_type, "description": "d",
            "constraints": constraints,
        }))
        .expect("task")
    }

    fn checks(task_type: &str, constraints: Value) -> Checks {
        Checks::from_task(&task(task_type, constraints)).expect("checks parse")
    }

    fn answer(expected: Value, given: &str) -> Outcome {
        let c = checks("reasoning", json!({ "expected_answer": expected }));
        let CheckKind::Answer(spec) = &c.items[0].kind else {
            panic!("not an answer check")
        };
        check_answer(spec, given)
    }

    fn passes(expected: Value, given: &str) -> bool {
        answer(expected, given).score == 1.0
    }

    #[test]
    fn exact() {
        let e = json!({"value": "Paris", "match": "exact"});
        assert!(passes(e.clone(), " Paris\n"));
        assert!(!passes(e.clone(), "paris"));
        assert!(!passes(e, "Paris, France"));
        assert!(passes(
            json!({"value": "Paris", "match": "exact", "ignore_case": true}),
            "PARIS"
        ));
    }

    #[test]
    fn normalized_is_the_default_for_strings() {
        assert!(passes(json!("Paris"), "**paris.**"));
        assert!(passes(json!("New  York"), " new york!"));
        assert!(!passes(json!("Paris"), "The capital is Paris"));
    }

    #[test]
    fn regex() {
        let e = json!({"value": r"^\d{4}-\d{2}-\d{2}$", "match": "regex"});
        assert!(passes(e.clone(), "2026-12-04"));
        assert!(!passes(e, "on 2026-12-04"));
    }

    #[test]
    fn numeric_with_tolerance_and_last_number() {
        let e = json!({"value": 1.23456, "match": "numeric", "tolerance": 0.001});
        assert!(passes(e.clone(), "1.2349"));
        assert!(passes(e.clone(), "x = 2, so the answer is 1.235."));
        assert!(!passes(e.clone(), "1.24"));
        assert!(!passes(e, "no idea"));
        // A number value means numeric by default; thousands separators.
        assert!(passes(json!(1234567), "**1,234,567**"));
        assert!(passes(json!("55"), "55\n"));
        assert!(!passes(json!({"value": 42, "match": "numeric"}), "42.5"));
    }

    #[test]
    fn contains_is_word_bounded_so_42_is_not_in_142() {
        let e = json!({"value": "42", "match": "contains"});
        assert!(passes(e.clone(), "The answer is 42."));
        assert!(passes(e.clone(), "(42)"));
        assert!(!passes(e.clone(), "142"));
        assert!(!passes(e.clone(), "4200 or 421"));
        assert!(!passes(e.clone(), "42.5"));
        assert!(!passes(e, "x_42"));
        assert!(passes(
            json!({"value": "42", "match": "contains", "word_boundary": false}),
            "142"
        ));
        assert!(passes(
            json!({"value": "new york", "match": "contains", "ignore_case": true}),
            "in New\nYork city"
        ));
        // A needle ending in punctuation still matches before a word.
        assert!(passes(
            json!({"value": "C++", "match": "contains"}),
            "C++ok"
        ));
    }

    #[test]
    fn any_of_several_values() {
        let e = json!({"value": ["colour", "color"], "match": "contains"});
        assert!(passes(e.clone(), "the color red"));
        assert!(!passes(e, "the colours"));
    }

    #[test]
    fn answer_failure_says_what_was_expected() {
        let o = answer(json!({"value": "42", "match": "exact"}), "142");
        assert_eq!(o.score, 0.0);
        assert!(
            o.detail.contains("\"42\"") && o.detail.contains("\"142\""),
            "{}",
            o.detail
        );
    }

    fn state(url: &str, text: &str) -> FinalState {
        FinalState {
            url: Some(url.into()),
            text: Some(text.into()),
            ..FinalState::default()
        }
    }

    #[test]
    fn web_checks_on_the_final_state() {
        let c = checks(
            "web",
            json!({"start_url": "http://x/", "verify": [
                {"type": "url", "equals": "http://127.0.0.1:8000"},
                {"type": "url", "regex": r"/$"},
                {"type": "text", "contains": "Thank you,  Ada"},
                {"type": "text", "regex": r"order #\d+", "weight": 2},
                {"type": "selector", "selector": "#ok", "name": "confirmation"},
            ]}),
        );
        let names: Vec<&str> = c.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "verify.0.url",
                "verify.1.url",
                "verify.2.text",
                "verify.3.text",
                "confirmation"
            ]
        );
        let mut live = Live::default();
        live.selectors(&c, &[Some(true)]);
        let good = evaluate(
            &c,
            &state("http://127.0.0.1:8000/", "Thank you, Ada\norder #7"),
            &live,
        );
        assert!(good.success, "{good:#?}");
        assert_eq!(good.reward, 1.0);

        let mut live = Live::default();
        live.selectors(&c, &[Some(false)]);
        let bad = evaluate(
            &c,
            &state("http://127.0.0.1:8000/cart", "Thank you, Bob"),
            &live,
        );
        assert!(!bad.success);
        let scores: Vec<f64> = bad.breakdown.iter().map(|i| i.score).collect();
        assert_eq!(scores, [0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(
            bad.breakdown[0].detail.contains("/cart"),
            "{:?}",
            bad.breakdown[0]
        );

        let mut live = Live::default();
        live.selectors(&c, &[None]);
        let half = evaluate(
            &c,
            &state("http://127.0.0.1:8000/", "Thank you, Ada"),
            &live,
        );
        // url 1 + url 1 + text 1 of weights 1+1+1+2+1 = 6.
        assert!((half.reward - 0.5).abs() < 1e-9, "{half:#?}");
        assert!(half.breakdown[4]
            .detail
            .contains("not a valid CSS selector"));
    }

    #[test]
    fn legacy_checks_and_completed() {
        let c = checks("code", json!({"expected_output": "55"}));
        let names: Vec<&str> = c.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["completed", "expected_output"]);
        let s = FinalState {
            stdout: Some("55\n".into()),
            ..FinalState::default()
        };
        let ok = evaluate(&c, &s, &Live::default().completed(true, None));
        assert!(ok.success && ok.reward == 1.0);
        let crashed = evaluate(
            &c,
            &s,
            &Live::default().completed(false, Some("runtime_error")),
        );
        assert!(!crashed.success);
        assert_eq!(crashed.reward, 0.5);
        // No checks at all: completed alone, today's rule.
        let none = checks("code", json!({}));
        assert_eq!(none.items.len(), 1);
        assert!(
            !evaluate(&none, &s, &Live::default()).success,
            "not evaluated = failed"
        );
        // New-style checks replace `completed`.
        let new = checks(
            "code",
            json!({"expected_answer": "55", "tests": "assert True"}),
        );
        let names: Vec<&str> = new.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["answer", "tests"]);
        assert_eq!(new.tests(), Some("assert True"));
    }

    #[test]
    fn weight_zero_checks_are_recorded_but_do_not_count() {
        let c = checks(
            "reasoning",
            json!({"verify": [
                {"type": "answer", "value": "7"},
                {"type": "answer", "value": "seven", "weight": 0, "name": "spelled"},
            ]}),
        );
        let e = evaluate(
            &c,
            &FinalState {
                answer: "7".into(),
                ..FinalState::default()
            },
            &Live::default(),
        );
        assert!(e.success);
        assert_eq!(e.reward, 1.0);
        assert_eq!(e.breakdown[1].score, 0.0);
    }

    #[test]
    fn bad_check_specs_are_rejected_with_a_reason() {
        let cases = [
            (
                "code",
                json!({"expected_answer": {"match": "exact"}}),
                "needs a `value`",
            ),
            (
                "code",
                json!({"expected_answer": {"value": "x", "match": "fuzzy"}}),
                "unknown match",
            ),
            (
                "code",
                json!({"expected_answer": {"value": "(", "match": "regex"}}),
                "bad regular expression",
            ),
            (
                "code",
                json!({"expected_answer": {"value": "abc", "match": "numeric"}}),
                "not a number",
            ),
            (
                "code",
                json!({"expected_answer": {"value": "1", "tolerance": 1}}),
                "only applies",
            ),
            (
                "code",
                json!({"expected_answer": {"value": 1, "tolerance": -1}}),
                "tolerance",
            ),
            ("code", json!({"expected_answer": true}), "must be a string"),
            ("code", json!({"tests": 5}), "Python source"),
            (
                "web",
                json!({"start_url": "http://x/", "tests": "assert 1"}),
                "not web tasks",
            ),
            ("code", json!({"verify": {"type": "url"}}), "array"),
            (
                "code",
                json!({"verify": [{"type": "url", "equals": "http://x/"}]}),
                "needs a web task",
            ),
            (
                "web",
                json!({"start_url": "http://x/", "verify": [{"type": "url"}]}),
                "exactly one of",
            ),
            (
                "web",
                json!({"start_url": "http://x/", "verify": [{"type": "smell"}]}),
                "unknown type",
            ),
            (
                "web",
                json!({"start_url": "http://x/", "verify": [{"type": "selector"}]}),
                "needs `selector`",
            ),
            (
                "web",
                json!({"start_url": "http://x/", "verify": [{"type": "text", "contains": "a", "weight": "high"}]}),
                "weight",
            ),
            (
                "reasoning",
                json!({"verify": [{"type": "answer", "value": "a", "name": "x"}, {"type": "answer", "value": "b", "name": "x"}]}),
                "two checks",
            ),
            (
                "reasoning",
                json!({"expected_answer": {"value": "a", "weight": 0}}),
                "weight 0",
            ),
        ];
        for (tt, c, why) in cases {
            let err = Checks::from_task(&task(tt, c.clone())).expect_err(&c.to_string());
            assert!(err.to_string().contains(why), "{c}: {err}");
        }
    }

    #[test]
    fn rescore_keeps_live_results_and_reads_the_recorded_state() {
        let t0 = task(
            "web",
            json!({"start_url": "http://x/", "verify": [
                {"type": "url", "regex": "/done$"},
                {"type": "selector", "selector": "#ok"},
            ]}),
        );
        let c = Checks::from_task(&t0).expect("checks");
        let mut t = Trajectory::new(&t0, "web-runtime");
        t.meta(
            FINAL_STATE_KEY,
            json!({"url": "http://x/done", "text": "all done"}),
        );
        let mut live = Live::default();
        live.selectors(&c, &[Some(true)]);
        evaluate(&c, &FinalState::from_trajectory(&t), &live).apply(&mut t);
        assert!(t.success);
        // The task now wants another URL: the URL check fails, the selector keeps its pass.
        let edited = task(
            "web",
            json!({"start_url": "http://x/", "verify": [
                {"type": "url", "regex": "/elsewhere$"},
                {"type": "selector", "selector": "#ok"},
            ]}),
        );
        let e = rescore(&Checks::from_task(&edited).expect("checks"), &t);
        assert!(!e.success);
        assert_eq!(e.reward, 0.5);
        assert_eq!(e.breakdown[1].detail, "an element matches \"#ok\"");
    }
}

//! Metric names used by a PromQL expression: what the dashboard and the
//! alert rules read.

use std::collections::BTreeSet;

/// PromQL keywords followed by a list of label names.
const GROUPING_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The other words that are PromQL syntax, not metric names.
const OTHER_KEYWORDS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "inf"];

fn is_keyword(word: &str) -> bool {
    GROUPING_KEYWORDS.contains(&word) || OTHER_KEYWORDS.contains(&word)
}

/// Metrics Prometheus makes up itself (not exported by any binary).
pub const SYNTHETIC: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Metric names in `expr`: identifiers that are not functions, keywords,
/// label names, strings, durations or grouping labels.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let cleaned = strip(expr);
    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A number like 1e3 or a duration suffix never starts a word
            // here (digits are skipped below), so only functions remain.
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let is_call = j < chars.len() && chars[j] == '(';
            let lower = word.to_ascii_lowercase();
            if !is_call && !is_keyword(&lower) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Skip a number (with exponent / duration letters attached).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Blanks out strings, label matchers `{...}`, ranges `[...]`, Grafana
/// variables, and the label lists of `by (...)`, `without (...)`, `on (...)`,
/// `ignoring (...)`, `group_left (...)`, `group_right (...)`.
fn strip(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = in_str {
            if c == '\\' {
                chars.next();
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_str = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            '$' => {
                // Grafana variable: $name or ${name}
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' || n == '{' || n == '}' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(' ');
            }
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => out.push(c),
        }
    }
    // Drop grouping label lists.
    let mut result = out;
    for kw in GROUPING_KEYWORDS {
        result = drop_group_lists(&result, kw);
    }
    result
}

fn drop_group_lists(s: &str, kw: &str) -> String {
    let mut out = String::new();
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == '_');
        let kw_chars: Vec<char> = kw.chars().collect();
        if at_word_start && bytes[i..].starts_with(&kw_chars) {
            let mut j = i + kw_chars.len();
            let word_ends =
                j >= bytes.len() || !(bytes[j].is_ascii_alphanumeric() || bytes[j] == '_');
            if word_ends {
                while j < bytes.len() && bytes[j].is_whitespace() {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == '(' {
                    // Skip to the matching ')'.
                    let mut depth = 0;
                    while j < bytes.len() {
                        if bytes[j] == '(' {
                            depth += 1;
                        } else if bytes[j] == ')' {
                            depth -= 1;
                            if depth == 0 {
                                j += 1;
                                break;
                            }
                        }
                        j += 1;
                    }
                    out.push(' ');
                    i = j;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &str) -> Vec<String> {
        metric_names(e).into_iter().collect()
    }

    #[test]
    fn finds_metrics_not_functions_labels_or_keywords() {
        assert_eq!(
            names("sum by (runtime, status) (rate(tasks_completed_total{status=\"failure\"}[$__rate_interval]))"),
            ["tasks_completed_total"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le, runtime) (rate(task_duration_seconds_bucket[5m])))"),
            ["task_duration_seconds_bucket"]
        );
        assert_eq!(
            names("absent(up{job=\"dispatcher\"} == 1) or absent(up{job=\"web-runtime\"} == 1)"),
            ["up"]
        );
        assert_eq!(
            names("a / on (x) group_left (y) b > bool 1e3 and c offset 5m"),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(
                "deriv(max by (queue_name) (queue_size{queue_name!=\"tasks:dead\"})[15m:1m]) > 0"
            ),
            ["queue_size"]
        );
    }
}

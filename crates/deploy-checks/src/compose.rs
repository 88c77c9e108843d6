//! Compose files as YAML values, with merge keys (`<<: *anchor`) applied.

use serde_norway::{Mapping, Value};

/// A compose file (path relative to the repository root).
pub fn load(rel: &str) -> Value {
    let text = crate::read(rel);
    let mut v: Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
    v
}

/// The `services` mapping.
pub fn services(doc: &Value) -> &Mapping {
    doc.get("services")
        .and_then(Value::as_mapping)
        .expect("compose file has services")
}

/// A service's `environment` as (name, raw value) pairs; both the map and
/// the `NAME=value` list forms.
pub fn environment(service: &Value) -> Vec<(String, String)> {
    match service.get("environment") {
        Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Some(Value::Sequence(seq)) => seq
            .iter()
            .map(|item| {
                let s = scalar(item);
                match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (s, String::new()),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The value of one environment variable of a service, interpolated.
pub fn env_value(service: &Value, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| interpolate(&v))
}

/// A scalar as a string (numbers and booleans too).
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Replaces `${VAR:-default}`, `${VAR-default}` by the default and `${VAR}`,
/// `${VAR:?msg}` by "" — the value with no `.env` and no environment.
pub fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &after[..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else if inner.contains('?') {
            // `${VAR:?message}`: required, no default.
        } else if let Some((_, default)) = inner.split_once('-') {
            out.push_str(default);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Strings of a sequence field (`cap_add`, `security_opt`, `expose`, ...).
pub fn strings(service: &Value, field: &str) -> Vec<String> {
    service
        .get(field)
        .and_then(Value::as_sequence)
        .map(|seq| seq.iter().map(|v| interpolate(&scalar(v))).collect())
        .unwrap_or_default()
}

/// The healthcheck's command words (`CMD` / `CMD-SHELL` dropped).
pub fn healthcheck_words(service: &Value) -> Vec<String> {
    let test = service.get("healthcheck").and_then(|h| h.get("test"));
    match test {
        Some(Value::Sequence(seq)) => seq
            .iter()
            .map(scalar)
            .filter(|w| w != "CMD" && w != "CMD-SHELL")
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Parses a compose duration (`45s`, `1m30s`, `2m`) into seconds.
pub fn duration_secs(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += match c {
            'h' => n * 3600,
            'm' => n * 60,
            's' => n,
            _ => return None,
        };
    }
    if !num.is_empty() {
        total += num.parse::<u64>().ok()?;
    }
    Some(total)
}

//! Every validation rule of CONTRACT §1, including path-traversal ids, plus a
//! property test that no input panics the parser.

use adp_core::types::TaskType;
use adp_core::validate::{is_safe_task_id, parse_task_line, RejectReason, MAX_LINE_BYTES};
use proptest::prelude::*;

fn reason(line: &str) -> &'static str {
    parse_task_line(line.as_bytes())
        .expect_err("should be rejected")
        .code()
}

#[test]
fn minimal_task_gets_defaults_and_a_uuid() {
    let t = parse_task_line(br#"{"task_type": "code", "description": "hi"}"#).expect("valid");
    assert_eq!(t.max_steps, 10);
    assert_eq!(t.timeout, 300);
    assert_eq!(t.priority, 1);
    assert!(t.expected_tools.is_empty() && t.constraints.is_empty());
    let id = uuid::Uuid::parse_str(&t.task_id).expect("uuid");
    assert_eq!(id.get_version_num(), 4);
    let empty = parse_task_line(br#"{"task_id": "", "task_type": "web", "description": "d", "constraints": {"start_url": "http://127.0.0.1/"}}"#)
        .expect("valid");
    assert!(uuid::Uuid::parse_str(&empty.task_id).is_ok());
    assert_eq!(empty.task_type, TaskType::Web);
}

#[test]
fn unknown_constraint_keys_are_kept() {
    let t = parse_task_line(br#"{"task_id":"a","task_type":"code","description":"d","constraints":{"custom":[1,2]},"priority":-5}"#)
        .expect("valid");
    assert_eq!(t.constraints["custom"], serde_json::json!([1, 2]));
    assert_eq!(t.priority, -5);
}

/// Per reason of CONTRACT §1, the lines rejected with it.
const REJECTED: &[(&str, &[&str])] = &[
    ("invalid_json", &["{not json"]),
    ("not_an_object", &["[1,2]"]),
    (
        "missing_field",
        &[r#"{"description":"d"}"#, r#"{"task_type":"code"}"#],
    ),
    (
        "empty_description",
        &[r#"{"task_type":"code","description":"   "}"#],
    ),
    (
        "unknown_task_type",
        &[r#"{"task_type":"video","description":"d"}"#],
    ),
    (
        "wrong_type",
        &[
            r#"{"task_type":5,"description":"d"}"#,
            r#"{"task_type":"code","description":["d"]}"#,
            r#"{"task_id":7,"task_type":"code","description":"d"}"#,
            r#"{"task_type":"code","description":"d","max_steps":"5"}"#,
            r#"{"task_type":"code","description":"d","max_steps":2.5}"#,
            r#"{"task_type":"code","description":"d","timeout":1e99}"#,
            r#"{"task_type":"code","description":"d","max_steps":99999999999999999999}"#,
            r#"{"task_type":"code","description":"d","expected_tools":"python"}"#,
            r#"{"task_type":"code","description":"d","expected_tools":[1]}"#,
            r#"{"task_type":"code","description":"d","constraints":[]}"#,
        ],
    ),
    (
        "out_of_range",
        &[
            r#"{"task_type":"code","description":"d","max_steps":0}"#,
            r#"{"task_type":"code","description":"d","max_steps":101}"#,
            r#"{"task_type":"code","description":"d","timeout":0}"#,
            r#"{"task_type":"code","description":"d","timeout":3601}"#,
        ],
    ),
    (
        "invalid_constraint",
        &[
            r#"{"task_type":"code","description":"d","constraints":{"code":5}}"#,
            r#"{"task_type":"code","description":"d","constraints":{"code":[]}}"#,
            r#"{"task_type":"code","description":"d","constraints":{"code":["x = 1", 2]}}"#,
            r#"{"task_type":"web","description":"d","constraints":{"actions":{}}}"#,
            r#"{"task_type":"web","description":"d","constraints":{"actions":[{"selector":"a"}]}}"#,
        ],
    ),
    (
        "missing_start_url",
        &[
            r#"{"task_type":"web","description":"d"}"#,
            r#"{"task_type":"web","description":"d","constraints":{"actions":[{"type":"click","selector":"a"}]}}"#,
        ],
    ),
];

#[test]
fn each_rule_has_its_reason() {
    for (code, lines) in REJECTED {
        for line in *lines {
            assert_eq!(reason(line), *code, "{line}");
        }
    }
    // Bounds are inclusive.
    parse_task_line(br#"{"task_type":"code","description":"d","max_steps":100,"timeout":3600}"#)
        .expect("upper bounds");
    parse_task_line(br#"{"task_type":"code","description":"d","max_steps":1,"timeout":1}"#)
        .expect("lower bounds");
    parse_task_line(br#"{"task_type":"web","description":"d","constraints":{"actions":[{"type":"goto","url":"http://127.0.0.1/"}]}}"#)
        .expect("goto first is enough");
}

#[test]
fn invalid_utf8_and_long_lines_are_rejected() {
    let bad = b"{\"task_type\":\"code\",\"description\":\"\xff\xfe\"}";
    assert_eq!(
        parse_task_line(bad).expect_err("utf8").code(),
        "invalid_utf8"
    );
    let long = vec![b' '; MAX_LINE_BYTES + 1];
    assert!(matches!(
        parse_task_line(&long),
        Err(RejectReason::LineTooLong { .. })
    ));
}

#[test]
fn unsafe_task_ids_never_pass() {
    for id in [
        "../../etc/passwd",
        "..",
        ".",
        "a/b",
        "/abs",
        "a\\b",
        "with space",
        "nul\u{0}byte",
        "ünïcode",
        "new\nline",
        &"x".repeat(129),
    ] {
        let line =
            serde_json::json!({"task_id": id, "task_type": "code", "description": "d"}).to_string();
        assert_eq!(reason(&line), "unsafe_task_id", "{id:?}");
        assert!(!is_safe_task_id(id));
    }
    for id in ["a", "A-b_c.d", "...", "x".repeat(128).as_str(), "demo_fib"] {
        assert!(is_safe_task_id(id), "{id:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic the parser, and whatever passes has a safe id.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(t) = parse_task_line(&bytes) {
            prop_assert!(is_safe_task_id(&t.task_id));
        }
    }

    /// Structured near-valid tasks with arbitrary field values never panic,
    /// and an accepted task always satisfies every rule.
    #[test]
    fn structured_tasks_uphold_rules(
        id in proptest::option::of("[ -~]{0,140}"),
        ty in prop_oneof![Just("code".to_owned()), Just("web".to_owned()), Just("reasoning".to_owned()), "[a-z]{0,8}"],
        desc in "[ -~\u{4e00}-\u{4e10}]{0,20}",
        steps in proptest::option::of(-5i64..200),
        timeout in proptest::option::of(-5i64..4000),
    ) {
        let mut v = serde_json::json!({"task_type": ty, "description": desc, "constraints": {"start_url": "http://127.0.0.1/"}});
        if let Some(id) = &id { v["task_id"] = serde_json::json!(id); }
        if let Some(s) = steps { v["max_steps"] = serde_json::json!(s); }
        if let Some(t) = timeout { v["timeout"] = serde_json::json!(t); }
        if let Ok(t) = parse_task_line(v.to_string().as_bytes()) {
            prop_assert!(is_safe_task_id(&t.task_id));
            prop_assert!((1..=100).contains(&t.max_steps));
            prop_assert!((1..=3600).contains(&t.timeout));
            prop_assert!(!t.description.trim().is_empty());
        }
    }
}

#[test]
fn bad_checks_are_rejected_at_dispatch_with_the_reason() {
    let err = parse_task_line(
        br#"{"task_id":"c","task_type":"reasoning","description":"d","constraints":{"expected_answer":{"value":"4","match":"fuzzy"}}}"#,
    )
    .expect_err("an unknown match mode is rejected");
    assert_eq!(err.code(), "invalid_constraint");
    assert!(
        err.to_string()
            .starts_with("constraint `expected_answer` is invalid: unknown match \"fuzzy\""),
        "{err}"
    );
    let err = parse_task_line(
        br#"{"task_id":"w","task_type":"web","description":"d","constraints":{"start_url":"http://127.0.0.1/","verify":[{"type":"url","regex":"("}]}}"#,
    )
    .expect_err("a bad regex is rejected");
    assert!(
        err.to_string().contains("verify") && err.to_string().contains("bad regular expression"),
        "{err}"
    );
    let ok = parse_task_line(
        br#"{"task_id":"ok","task_type":"code","description":"d","constraints":{"expected_answer":"42","tests":"assert x == 42"}}"#,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn code_may_be_a_list_of_cells() {
    let t = parse_task_line(
        br#"{"task_type":"code","description":"d","constraints":{"code":["x = 41","print(x + 1)"]}}"#,
    )
    .expect("cells are valid");
    assert_eq!(
        t.code_cells(),
        Some(vec!["x = 41".to_owned(), "print(x + 1)".to_owned()])
    );
    assert_eq!(t.code(), None);
    let t = parse_task_line(
        br#"{"task_type":"code","description":"d","constraints":{"code":"print(1)"}}"#,
    )
    .expect("one string is valid");
    assert_eq!(t.code_cells(), Some(vec!["print(1)".to_owned()]));
}

#[test]
fn rollouts_is_checked_and_dispatcher_fields_are_ignored() {
    let t = parse_task_line(
        br#"{"task_id":"r","task_type":"code","description":"d","rollouts":3,"run_id":"x","rollout":7}"#,
    )
    .expect("valid");
    assert_eq!(t.rollouts, Some(3));
    assert_eq!(
        (t.run_id, t.rollout),
        (None, None),
        "set by the dispatcher only"
    );
    for bad in [
        r#""rollouts":0"#,
        r#""rollouts":1001"#,
        r#""rollouts":1.5"#,
        r#""rollouts":"2""#,
    ] {
        let line = format!(r#"{{"task_type":"code","description":"d",{bad}}}"#);
        assert!(
            matches!(reason(&line), "out_of_range" | "wrong_type"),
            "{line}"
        );
    }
}

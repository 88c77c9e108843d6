//! End to end through Redis with the offline (heuristic) policy: demo tasks
//! on both streams → trajectories with the contract's fields; metrics,
//! `/health`, `runtime_health`; a missing nsjail is an infrastructure failure
//! that ends in `system_error` after MAX_DELIVERIES.

mod common;

use std::time::Duration;

use adp_core::cache::TemplateCache;
use adp_core::metrics::Metrics;
use adp_core::{ActionType, ErrorType, TaskType};
use common::{assert_message_contains, code_task, task, Harness};
use sandbox_runtime::agent::CodeAgent;
use sandbox_runtime::config::SessionMode;
use sandbox_runtime::executor::{Sandbox, SandboxConfig};
use sandbox_runtime::policy::heuristic::plan_for;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn demo_tasks_through_redis() {
    let mut h = Harness::start(&[]).await;
    let tasks = [
        task(
            "demo_fib",
            TaskType::Code,
            "写一个Python函数计算斐波那契数列第10项",
            json!({}),
        ),
        task(
            "demo_prime",
            TaskType::Code,
            "找出100以内的所有质数",
            json!({}),
        ),
        task("demo_factorial", TaskType::Code, "计算5的阶乘", json!({})),
        task(
            "fib_7",
            TaskType::Code,
            "Compute fibonacci(7)",
            json!({"expected_output": "13"}),
        ),
        task(
            "sum_1_to_100",
            TaskType::Code,
            "Sum the integers from 1 to 100",
            json!({"expected_output": "5050"}),
        ),
        task(
            "reverse_string",
            TaskType::Code,
            "Reverse the string 'hello world'",
            json!({"expected_output": "dlrow olleh"}),
        ),
        task(
            "scripted_squares",
            TaskType::Code,
            "Print the squares of 1..5 (scripted)",
            json!({"code": "print([i * i for i in range(1, 6)])", "expected_output": "[1, 4, 9, 16, 25]"}),
        ),
        task(
            "reasoning_sort",
            TaskType::Reasoning,
            "Sort the numbers [5, 3, 9, 1] in ascending order",
            json!({"expected_output": "[1, 3, 5, 9]"}),
        ),
        task(
            "wrong_expectation",
            TaskType::Code,
            "Compute fibonacci(7)",
            json!({"expected_output": "14"}),
        ),
        task(
            "haiku",
            TaskType::Code,
            "Write a haiku about autumn",
            json!({}),
        ),
    ];
    for t in &tasks {
        h.enqueue(t);
    }
    let expect = [
        ("demo_fib", "55\n", "heuristic"),
        ("demo_prime", "[2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97]\n", "heuristic"),
        ("demo_factorial", "120\n", "heuristic"),
        ("fib_7", "13\n", "heuristic"),
        ("sum_1_to_100", "5050\n", "heuristic"),
        ("reverse_string", "dlrow olleh\n", "heuristic"),
        ("scripted_squares", "[1, 4, 9, 16, 25]\n", "scripted"),
        ("reasoning_sort", "[1, 3, 5, 9]\n", "heuristic"),
    ];
    for (id, result, policy) in expect {
        let t = h.trajectory(id).await;
        assert!(t.success, "{id}: {t:?}");
        assert_eq!(t.task_id, id);
        assert_eq!(t.runtime_id, "sandbox-runtime");
        assert_eq!(t.final_result, result, "{id}");
        assert_eq!(t.error_type, None);
        assert_eq!(t.error_message, None);
        // In a stateful session (the default) a heuristic plan defines in
        // step 0 and prints the result from that state in step 1.
        let description = &tasks
            .iter()
            .find(|t| t.task_id == id)
            .expect("task")
            .description;
        let steps = match policy {
            "heuristic" => plan_for(description).expect("plan").cells(true).len(),
            _ => 1,
        };
        assert!(policy != "heuristic" || id != "fib_7" || steps == 2);
        assert_eq!(t.steps.len(), steps, "{id}: {:?}", t.steps);
        let s = t.steps.last().expect("step");
        assert_eq!(s.step_id as usize, steps - 1);
        assert_eq!(s.action_type, ActionType::CodeExecution);
        assert!(s.action_params["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty()));
        assert_eq!(s.observation, result);
        assert!(s.success && s.duration > 0.0 && s.timestamp > 1.7e9);
        assert!(t.total_duration >= s.duration && t.created_at > 1.7e9);
        assert_eq!(t.metadata["policy"], policy, "{id}");
        assert_eq!(t.metadata["cache_hit"], false, "{id}");
        assert_eq!(t.metadata["attempt"], 1, "{id}");
    }
    // The raw file has every contract field, nulls included.
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(common::trajectory_path(h.out.path(), "fib_7")).expect("file"),
    )
    .expect("json");
    for field in test_support::TRAJECTORY_FIELDS {
        assert!(raw.get(field).is_some(), "{field} missing");
    }
    assert!(raw["error_type"].is_null() && raw["steps"][0]["error_type"].is_null());

    let t = h.trajectory("wrong_expectation").await;
    assert!(!t.success);
    assert_eq!(t.final_result, "13\n");
    assert_message_contains(t.error_message.as_deref(), "\"14\"");

    let t = h.trajectory("haiku").await;
    assert!(!t.success);
    assert!(t.steps.is_empty());
    assert!(
        t.final_result.starts_with("No offline plan exists"),
        "{}",
        t.final_result
    );
    assert_eq!(t.metadata["policy"], "heuristic");

    // A task is counted just after its trajectory is written and acked.
    let lines = [
        "tasks_completed_total{runtime=\"sandbox-runtime\",status=\"success\"} 8",
        "tasks_completed_total{runtime=\"sandbox-runtime\",status=\"failure\"} 2",
        "active_tasks{runtime=\"sandbox-runtime\"} 0",
        "runtime_health{runtime=\"sandbox-runtime\"} 1",
    ];
    let counted = test_support::eventually(Duration::from_secs(10), || async {
        let metrics = h.metrics().await;
        lines.iter().all(|l| metrics.contains(l))
    })
    .await;
    if counted.is_err() {
        let metrics = h.metrics().await;
        for line in lines {
            assert!(metrics.contains(line), "missing {line}\n{metrics}");
        }
    }
    let (code, body) = h.health().await;
    assert_eq!(code, 200);
    assert_eq!(body["checks"]["redis"]["ok"], true);
    assert_eq!(body["checks"]["nsjail"]["ok"], true);
    let mut c = h.redis.client();
    let health: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("runtime_health")
        .query(&mut c)
        .expect("HGETALL");
    assert!(
        health
            .iter()
            .any(|(k, v)| k.starts_with("sandbox-runtime@") && v == "healthy"),
        "{health:?}"
    );
    assert_eq!(common::pending_count(&h.redis, "tasks:code"), 0);
    assert_eq!(common::pending_count(&h.redis, "tasks:reasoning"), 0);
    h.shutdown().await;
    // Stopping removes the registration.
    let health: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("runtime_health")
        .query(&mut c)
        .expect("HGETALL");
    assert!(health.is_empty(), "{health:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_nsjail_is_retried_then_a_system_error() {
    let h = Harness::start_unhealthy(&[
        "--nsjail-path",
        "/nonexistent/nsjail",
        "--max-deliveries",
        "2",
        "--infra-retry-window-secs",
        "0",
        "--retry-backoff-ms",
        "50",
    ])
    .await;
    let t = h.run(&code_task("no_jail", "print(1)")).await;
    assert!(!t.success);
    assert_eq!(t.error_type, Some(ErrorType::SystemError));
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("cannot start nsjail at /nonexistent/nsjail"),
        "{msg}"
    );
    assert_eq!(t.metadata["infra_errors"].as_array().map(Vec::len), Some(2));
    // The trajectory is written first, then the entry is moved to tasks:dead.
    common::wait_dead_letters(&h.redis, 1);
    let (code, body) = h.health().await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["checks"]["nsjail"]["ok"], false);
    h.stop().await;
}

/// The heuristic's plans, run in the real sandbox: the numbers come from the
/// description, the answers are computed by the code.
#[tokio::test(flavor = "multi_thread")]
async fn heuristic_intents_compute_the_right_answers() {
    let agent = CodeAgent::new(
        Sandbox::new(SandboxConfig::default()),
        None,
        TemplateCache::new(None, Duration::from_secs(60), Metrics::new(), "code"),
        2,
        SessionMode::Stateful,
    );
    let cases = [
        ("Compute fibonacci(7)", "13"),
        ("Calculate fibonacci(10)", "55"),
        ("计算斐波那契数列第二十项", "6765"),
        (
            "List the first 8 Fibonacci numbers",
            "[1, 1, 2, 3, 5, 8, 13, 21]",
        ),
        ("Calculate factorial(4)", "24"),
        ("计算10的阶乘", "3628800"),
        ("Is 97 a prime number?", "True"),
        ("判断91是不是质数", "False"),
        ("What is the 10th prime?", "29"),
        ("前5个质数", "[2, 3, 5, 7, 11]"),
        ("prime factors of 360", "[2, 2, 2, 3, 3, 5]"),
        ("how many primes are there below 1000", "168"),
        ("gcd of 48 and 18", "6"),
        ("求12和18的最小公倍数", "36"),
        ("计算1到100的和", "5050"),
        ("sum of squares from 1 to 10", "385"),
        ("sum of the even numbers from 1 to 100", "2550"),
        ("sum of the digits of 12345", "15"),
        ("将 5, 3, 9, 1 从大到小排序", "[9, 5, 3, 1]"),
        ("反转字符串“你好世界”", "界世好你"),
        ("Is 'A man, a plan, a canal: Panama' a palindrome?", "True"),
        ("What is 2 to the power of 10?", "1024"),
        ("square root of 144", "12"),
        ("Is 2024 a leap year?", "True"),
        ("1900年是闰年吗", "False"),
        ("average of 3, 4, 5", "4"),
        ("convert 255 to binary", "11111111"),
        ("convert 100 celsius to fahrenheit", "212"),
        ("Compute 12 * (3 + 4)", "84"),
        ("计算 3+5×2", "13"),
        ("print hello world", "Hello, World!"),
        ("count the vowels in 'programming'", "3"),
    ];
    for (i, (description, expected)) in cases.iter().enumerate() {
        let t = task(&format!("h{i}"), TaskType::Code, description, json!({}));
        let traj = agent.run_task(&t).await.expect("no infra failure");
        assert!(traj.success, "{description}: {traj:?}");
        assert!(
            traj.final_result.trim().contains(expected),
            "{description}: got {:?}, want {expected:?}",
            traj.final_result
        );
        assert_eq!(traj.metadata["policy"], "heuristic");
        assert!(traj.metadata["intent"].is_string());
    }
    // Oneshot: nothing carries over, so each plan is one step; stateful: a
    // plan may define in step 0 and use that state in step 1.
    let oneshot = CodeAgent::new(
        Sandbox::new(SandboxConfig::default()),
        None,
        TemplateCache::new(None, Duration::from_secs(60), Metrics::new(), "code"),
        2,
        SessionMode::Oneshot,
    );
    let t = task(
        "fib_modes",
        TaskType::Code,
        "Compute fibonacci(7)",
        json!({}),
    );
    let one = oneshot.run_task(&t).await.expect("oneshot");
    let two = agent.run_task(&t).await.expect("stateful");
    assert!(one.success && two.success, "{one:?} {two:?}");
    assert_eq!((one.steps.len(), two.steps.len()), (1, 2));
    assert_eq!(one.final_result, "13\n");
    assert_eq!(two.final_result, "13\n");
    assert!(two.steps[0].action_params["code"]
        .as_str()
        .is_some_and(|c| c.contains("def fibonacci") && !c.contains("print(")));
    assert_eq!(two.steps[1].action_params["code"], "print(fibonacci(7))\n");
    assert_eq!(two.metadata["session"]["sessions"], 1, "one interpreter");
}

#[tokio::test(flavor = "multi_thread")]
async fn task_timeout_bounds_the_whole_task() {
    let h = Harness::start(&[]).await;
    let mut t = code_task("short_budget", "import time\ntime.sleep(30)\n");
    t.timeout = 2;
    let traj = h.run(&t).await;
    assert_eq!(traj.error_type, Some(ErrorType::Timeout), "{traj:?}");
    assert!(traj.total_duration < 5.0, "{}", traj.total_duration);
    h.stop().await;
}

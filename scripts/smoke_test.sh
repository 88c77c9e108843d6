#!/usr/bin/env bash
# Smoke test: starts a private stack, feeds it a handful of tasks, and checks
# health, trajectories, the rejection log and the metrics.
#
#   scripts/smoke_test.sh [--timeout SECS]
#
# MODE=docker  the minimal compose stack in its own project on free host
#              ports, built from this checkout, removed afterwards
# MODE=local   the native processes of scripts/run-local.sh
# Default: docker when a Docker engine answers, else local.
#
# Your tasks.jsonl and ./output are never touched: the test writes its own
# task file and output directory in a temp dir (KEEP_DIR=DIR keeps them in
# DIR). Exit 0 when every check passed.
set -euo pipefail
OPS_NAME=smoke
# shellcheck source=scripts/ops-common.sh
source "$(dirname "$0")/ops-common.sh"

TIMEOUT=120
ops_args "$@"

ops_begin ""
trap ops_cleanup EXIT
ops_stack_up minimal

# Unique ids per run, so a reused Redis never skips them as duplicates.
RUN=$(date +%s)$$
cat >"$OPS_WORK/smoke.jsonl" <<EOF
{"task_id": "smoke_fib_$RUN", "task_type": "code", "description": "Compute fibonacci(10)", "expected_tools": ["python_executor"], "constraints": {"code": "a, b = 0, 1\nfor _ in range(10):\n    a, b = b, a + b\nprint(a)", "expected_output": "55"}, "max_steps": 3, "timeout": 60}
{"task_id": "smoke_fact_$RUN", "task_type": "code", "description": "Compute factorial(5)", "constraints": {"code": "import math\nprint(math.factorial(5))", "expected_output": "120"}, "max_steps": 3, "timeout": 60}
{"task_id": "smoke_reason_$RUN", "task_type": "reasoning", "description": "How many primes are below 30?", "constraints": {"code": "print(sum(1 for n in range(2, 30) if all(n % d for d in range(2, n))))", "expected_output": "10"}, "max_steps": 3, "timeout": 60}
{"task_id": "smoke_bad_$RUN", "task_type": "painting", "description": "not a task type"}
EOF
printf 'smoke_fib_%s\nsmoke_fact_%s\nsmoke_reason_%s\n' "$RUN" "$RUN" "$RUN" >"$OPS_WORK/smoke.ids"

ops_log "submitting 3 tasks and 1 invalid line"
ops_submit "$OPS_WORK/smoke.jsonl"
ops_wait_trajectories "$OPS_WORK/smoke.ids" "$TIMEOUT" || ops_die "tasks did not finish"

while read -r id; do
  f="$OPS_WORK/output/trajectories/$id.json"
  ops_check_trajectory "$f"
  [[ $(jq -r .success "$f") == true ]] || ops_die "$id failed: $(jq -c '{error_type, error_message, final_result}' "$f")"
  [[ $(jq -r .runtime_id "$f") == sandbox-runtime* ]] || ops_die "$id ran on $(jq -r .runtime_id "$f")"
  ops_log "ok  $id: $(jq -r '.final_result | gsub("\n"; " ")' "$f")"
done <"$OPS_WORK/smoke.ids"
[[ $(jq -r .final_result "$OPS_WORK/output/trajectories/smoke_fib_$RUN.json") == 55* ]] || ops_die "fibonacci(10) != 55"

# The invalid line is rejected, logged with its line number and reason.
deadline=$((SECONDS + 30))
until [[ -s "$OPS_WORK/output/rejected.jsonl" ]] && grep -q "painting" "$OPS_WORK/output/rejected.jsonl"; do
  (( SECONDS < deadline )) || ops_die "the invalid line was not recorded in rejected.jsonl"
  sleep 0.5
done
jq -e 'select(.raw | contains("painting")) | (.line|type=="number") and (.reason|type=="string")' \
  "$OPS_WORK/output/rejected.jsonl" >/dev/null || ops_die "rejected.jsonl entry lacks line/reason"
ops_log "ok  invalid line rejected: $(jq -r 'select(.raw | contains("painting")) | .reason' "$OPS_WORK/output/rejected.jsonl")"

# Metrics agree with what happened.
submitted=$(ops_metric dispatcher tasks_submitted_total)
rejected=$(ops_metric dispatcher tasks_rejected_total)
completed=$(ops_metric sandbox-runtime tasks_completed_total 'status="success"')
ops_log "metrics: submitted=$submitted rejected=$rejected sandbox completed(success)=$completed"
(( ${submitted%.*} >= 3 )) || ops_die "tasks_submitted_total=$submitted, expected >= 3"
(( ${rejected%.*} >= 1 )) || ops_die "tasks_rejected_total=$rejected, expected >= 1"
(( ${completed%.*} >= 3 )) || ops_die "tasks_completed_total{status=success}=$completed, expected >= 3"
for svc in $(ops_services); do
  ops_get "$svc" /health | jq -e '.status == "healthy"' >/dev/null || ops_die "$svc /health is not healthy"
done

ops_log "PASSED: 3 tasks completed, 1 line rejected, metrics and health ok ($MODE mode)"

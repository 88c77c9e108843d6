#!/usr/bin/env bash
# Integration test of a whole private stack: routing of every task type,
# success and failure trajectories, rejections and duplicates, follow mode,
# metrics, the Redis health registry, and (docker, full stack) Prometheus
# scraping every replica after a scale-up and Grafana serving the dashboard.
#
#   scripts/integration_test.sh [--minimal] [--timeout SECS]
#
#   --minimal   dispatcher + sandbox-runtime only (no web task, no monitoring)
#
# MODE=docker|local as in scripts/smoke_test.sh. In docker mode the web task
# needs a page the web-runtime container may open: set WEB_URL (and
# WEB_EXPECT, text on that page) or it is skipped; WEB_BLOCK_PRIVATE=true in
# the compose file refuses private addresses. In local mode the script serves
# its own page on 127.0.0.1.
# Your tasks.jsonl and ./output are never touched.
set -euo pipefail
OPS_NAME=integration
# shellcheck source=scripts/ops-common.sh
source "$(dirname "$0")/ops-common.sh"

FLAVOUR=full; TIMEOUT=180; ARGS=()
for a in "$@"; do
  if [[ "$a" == --minimal ]]; then FLAVOUR=minimal; else ARGS+=("$a"); fi
done
ops_args "${ARGS[@]}"

ops_begin ", stack: $FLAVOUR"
PAGE_PID=""
trap '[[ -n "$PAGE_PID" ]] && kill "$PAGE_PID" 2>/dev/null; ops_cleanup' EXIT

# Local mode: run-local.sh starts the web runtime with WEB_BLOCK_PRIVATE=true;
# the page on 127.0.0.1 is let through by WEB_ALLOW_HOSTS.
WEB_EXPECT=${WEB_EXPECT:-integration page 7}
if [[ "$FLAVOUR" == full && "$MODE" == local ]]; then
  page_port=$(free_port)
  mkdir -p "$OPS_WORK/site"
  cat >"$OPS_WORK/site/index.html" <<'EOF'
<html><head><title>Integration</title></head>
<body><h1>integration page 7</h1><a href="second.html">next</a></body></html>
EOF
  python3 -m http.server "$page_port" --bind 127.0.0.1 --directory "$OPS_WORK/site" >/dev/null 2>&1 &
  PAGE_PID=$!
  WEB_URL="http://127.0.0.1:$page_port/"
  export WEB_ALLOW_HOSTS="127.0.0.1:$page_port"
fi
ops_stack_up "$FLAVOUR"

RUN=$(date +%s)$$
CODE_OK="it_code_ok_$RUN"; CODE_FAIL="it_code_fail_$RUN"; REASON="it_reason_$RUN"
WEB="it_web_$RUN"; LATE="it_late_$RUN"
code_ok_line=$(printf '{"task_id": "%s", "task_type": "code", "description": "sum of squares", "constraints": {"code": "print(sum(i*i for i in range(10)))", "expected_output": "285"}, "max_steps": 2, "timeout": 60}' "$CODE_OK")
{
  printf '%s\n' "$code_ok_line"
  printf '{"task_id": "%s", "task_type": "code", "description": "divide by zero", "constraints": {"code": "print(1/0)"}, "max_steps": 1, "timeout": 60}\n' "$CODE_FAIL"
  printf '{"task_id": "%s", "task_type": "reasoning", "description": "2 to the 10th", "constraints": {"code": "print(2**10)", "expected_output": "1024"}, "max_steps": 2, "timeout": 60}\n' "$REASON"
  # The same line again (a duplicate: counted, nothing written) and the same
  # id with other content (a conflicting duplicate: a rejection record).
  printf '%s\n' "$code_ok_line"
  printf '{"task_id": "%s", "task_type": "code", "description": "duplicate id", "constraints": {"code": "print(0)"}}\n' "$CODE_OK"
  printf '{"task_id": "broken json\n'
  printf '{"task_id": "it_bad_steps_%s", "task_type": "code", "description": "x", "max_steps": 1000}\n' "$RUN"
} >"$OPS_WORK/batch1.jsonl"
printf '%s\n%s\n%s\n' "$CODE_OK" "$CODE_FAIL" "$REASON" >"$OPS_WORK/batch1.ids"
WEB_ON=0
if [[ "${OPS_HAS_WEB:-0}" == 1 && -n "${WEB_URL:-}" ]]; then
  WEB_ON=1
  printf '{"task_id": "%s", "task_type": "web", "description": "read the heading", "constraints": {"start_url": "%s", "expected_text": "%s", "actions": [{"type": "extract"}, {"type": "finish", "answer": "read"}]}, "max_steps": 3, "timeout": 90}\n' \
    "$WEB" "$WEB_URL" "$WEB_EXPECT" >>"$OPS_WORK/batch1.jsonl"
  echo "$WEB" >>"$OPS_WORK/batch1.ids"
elif [[ "${OPS_HAS_WEB:-0}" == 1 ]]; then
  ops_log "no WEB_URL: the web task is skipped (web-runtime health is still checked)"
fi

ops_log "batch 1: $(wc -l <"$OPS_WORK/batch1.ids") tasks, 1 duplicate, 1 conflicting duplicate, 2 invalid lines"
ops_submit "$OPS_WORK/batch1.jsonl"
ops_wait_trajectories "$OPS_WORK/batch1.ids" "$TIMEOUT" || ops_die "batch 1 did not finish"

T="$OPS_WORK/output/trajectories"
expect() { # id success runtime
  local f="$T/$1.json"
  ops_check_trajectory "$f"
  [[ $(jq -r .success "$f") == "$2" ]] || ops_die "$1: success=$(jq -r .success "$f"), expected $2: $(jq -c '{error_type,error_message,final_result}' "$f")"
  [[ $(jq -r .runtime_id "$f") == "$3"* ]] || ops_die "$1 ran on $(jq -r .runtime_id "$f"), expected $3"
  ops_log "ok  $1: success=$2 on $3"
}
expect "$CODE_OK" true sandbox-runtime
expect "$CODE_FAIL" false sandbox-runtime
expect "$REASON" true sandbox-runtime
[[ $WEB_ON -eq 1 ]] && expect "$WEB" true web-runtime
[[ $(jq -r .error_type "$T/$CODE_FAIL.json") != null ]] || ops_die "$CODE_FAIL has no error_type"
ops_log "ok  failure classified as $(jq -r .error_type "$T/$CODE_FAIL.json")"
[[ $(jq -r .final_result "$T/$CODE_OK.json") == 285* ]] || ops_die "$CODE_OK result is not 285"
# The duplicate did not overwrite the first trajectory.
jq -e '.steps[0].action_params.code | contains("sum(i*i")' "$T/$CODE_OK.json" >/dev/null \
  || ops_die "the duplicate task_id replaced $CODE_OK's trajectory"

# Rejections: three lines in rejected.jsonl (the two invalid lines and the
# conflicting duplicate); the identical duplicate only in the metric.
deadline=$((SECONDS + 30))
until [[ $(wc -l <"$OPS_WORK/output/rejected.jsonl" 2>/dev/null || echo 0) -ge 3 ]]; do
  (( SECONDS < deadline )) || ops_die "rejected.jsonl does not hold the 2 invalid lines and the conflicting duplicate"
  sleep 0.5
done
reasons=$(jq -r .reason "$OPS_WORK/output/rejected.jsonl" | sort | tr '\n' ' ')
[[ "$reasons" == "conflicting_duplicate invalid_json out_of_range " ]] || ops_die "rejected lines: $reasons"
ops_log "ok  rejected lines: $reasons"
for reason in duplicate conflicting_duplicate; do
  n=$(ops_metric dispatcher tasks_rejected_total "reason=\"$reason\"")
  (( ${n%.*} >= 1 )) || ops_die "tasks_rejected_total{reason=\"$reason\"} = $n"
  ops_log "ok  $reason counted (tasks_rejected_total{reason=\"$reason\"} = $n)"
done

# Follow mode: a line appended later is picked up.
printf '{"task_id": "%s", "task_type": "code", "description": "late", "constraints": {"code": "print(\\"late\\")", "expected_output": "late"}, "max_steps": 1, "timeout": 60}\n' "$LATE" >>"$OPS_WORK/tasks.jsonl"
echo "$LATE" >"$OPS_WORK/late.ids"
ops_wait_trajectories "$OPS_WORK/late.ids" 60 || ops_die "an appended line was not dispatched (follow mode)"
expect "$LATE" true sandbox-runtime

# Metrics and queue gauges settle: nothing left unacknowledged.
deadline=$((SECONDS + 30))
until [[ $(ops_metric dispatcher queue_size 'queue_name="tasks:(code|reasoning|web)"') == 0 ]]; do
  (( SECONDS < deadline )) || ops_die "queue_size did not drop to 0: $(ops_get dispatcher /metrics | grep '^queue_size')"
  sleep 1
done
ops_log "ok  queues drained (queue_size 0)"
submitted=$(ops_metric dispatcher tasks_submitted_total)
want=$(( $(wc -l <"$OPS_WORK/batch1.ids") + 1 ))
[[ ${submitted%.*} -eq $want ]] || ops_die "tasks_submitted_total=$submitted, expected $want"
ops_log "ok  tasks_submitted_total = $submitted"
for svc in $(ops_services); do
  ops_get "$svc" /health | jq -e '.status == "healthy"' >/dev/null || ops_die "$svc unhealthy"
  # Capture first: `curl | grep -q` fails under pipefail when grep exits early.
  metrics=$(ops_get "$svc" /metrics) || ops_die "$svc /metrics unreachable"
  grep -q '^process_' <<<"$metrics" || ops_die "$svc /metrics lacks process metrics"
done
ops_log "ok  /health and /metrics of: $(ops_services | tr '\n' ' ')"

# Runtimes register in the runtime_health hash.
if [[ "$MODE" == local ]]; then
  health=$(redis-cli -u "$REDIS_URL" HGETALL runtime_health)
else
  health=$(ops_compose exec -T redis redis-cli HGETALL runtime_health)
fi
grep -q healthy <<<"$health" || ops_die "runtime_health hash is empty: $health"
ops_log "ok  runtime_health: $(tr '\n' ' ' <<<"$health")"

# Docker, full stack: Prometheus scrapes every replica; Grafana has the dashboard.
if [[ "$MODE" == docker && "$FLAVOUR" == full ]]; then
  ops_log "scaling sandbox-runtime to 3 replicas"
  ops_compose up -d --no-recreate --scale sandbox-runtime=3 >&2
  deadline=$((SECONDS + 120))
  until [[ $(curl -fsS "http://127.0.0.1:$PROMETHEUS_HOST_PORT/api/v1/targets" \
      | jq '[.data.activeTargets[] | select(.labels.job=="sandbox-runtime" and .health=="up")] | length') -ge 3 ]]; do
    (( SECONDS < deadline )) || ops_die "Prometheus does not see 3 sandbox-runtime targets up"
    sleep 3
  done
  ops_log "ok  Prometheus scrapes 3 sandbox-runtime replicas"
  curl -fsS -u "admin:$GRAFANA_ADMIN_PASSWORD" "http://127.0.0.1:$GRAFANA_HOST_PORT/api/dashboards/uid/adp-pipeline" \
    | jq -e '.dashboard.panels | length > 5' >/dev/null || ops_die "Grafana does not serve the provisioned dashboard"
  ops_log "ok  Grafana serves the provisioned dashboard"
  curl -fsS "http://127.0.0.1:$PROMETHEUS_HOST_PORT/api/v1/rules" | jq -e '[.data.groups[].rules[]] | length >= 8' >/dev/null \
    || ops_die "Prometheus did not load the alert rules"
  ops_log "ok  Prometheus loaded the alert rules"
fi

ops_log "PASSED ($MODE mode, $FLAVOUR stack)"

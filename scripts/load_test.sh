#!/usr/bin/env bash
# Load test: submits N_TASKS scripted tasks (code and reasoning, plus web when
# the stack has a web runtime) to a private stack, waits up to MINUTES for all
# trajectories, and prints throughput and latency figures.
#
#   scripts/load_test.sh [N_TASKS] [MINUTES] [--full] [--paced]
#
#   N_TASKS   tasks to submit (default 50)
#   MINUTES   time limit for all of them to finish (default 5)
#   --full    use the full stack (docker: docker-compose.yml with web-runtime,
#             Prometheus, Grafana; local: also load the web runtime)
#   --paced   spread the submissions evenly over half of MINUTES instead of
#             submitting them all at once
#
# MODE=docker|local as in scripts/smoke_test.sh (default: docker when a Docker
# engine answers). Tasks are written to a file of their own; your tasks.jsonl
# and ./output are never touched. Exit 0 when every task has a trajectory in
# time and at least 95% of them succeeded (MIN_SUCCESS_PCT to change).
set -euo pipefail
OPS_NAME=load
# shellcheck source=scripts/ops-common.sh
source "$(dirname "$0")/ops-common.sh"

N=50; MINUTES=5; FLAVOUR=minimal; PACED=0; POS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --full) FLAVOUR=full ;;
    --paced) PACED=1 ;;
    -h|--help) ops_usage; exit 0 ;;
    -*) ops_die "unknown option '$1' (see --help)" ;;
    *) POS+=("$1") ;;
  esac
  shift
done
[[ ${#POS[@]} -ge 1 ]] && N=${POS[0]}
[[ ${#POS[@]} -ge 2 ]] && MINUTES=${POS[1]}
[[ "$N" =~ ^[1-9][0-9]*$ ]] || ops_die "N_TASKS must be a positive integer, not '$N'"
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] || ops_die "MINUTES must be a number, not '$MINUTES'"
MIN_SUCCESS_PCT=${MIN_SUCCESS_PCT:-95}

ops_begin ", $N tasks, limit $MINUTES min, stack $FLAVOUR"
trap ops_cleanup EXIT
ops_stack_up "$FLAVOUR"

# A local page for web tasks (local mode): served by this script on loopback.
WEB_URL=""
if [[ "${OPS_HAS_WEB:-0}" == 1 && "$MODE" == local ]]; then
  page_port=$(free_port)
  mkdir -p "$OPS_WORK/site"
  printf '<html><head><title>Load</title></head><body><h1>Load test page</h1><p id="v">42</p></body></html>\n' >"$OPS_WORK/site/index.html"
  python3 -m http.server "$page_port" --bind 127.0.0.1 --directory "$OPS_WORK/site" >/dev/null 2>&1 &
  PAGE_PID=$!
  trap 'kill "$PAGE_PID" 2>/dev/null || true; ops_cleanup' EXIT
  WEB_URL="http://127.0.0.1:$page_port/"
fi

RUN=$(date +%s)$$
python3 - "$N" "$RUN" "$WEB_URL" >"$OPS_WORK/load.jsonl" <<'PY'
import json, sys
n, run, web = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(n):
    tid = f"load_{run}_{i:06d}"
    if web and i % 10 == 9:
        t = {"task_id": tid, "task_type": "web", "description": f"read value {i}",
             "constraints": {"start_url": web, "expected_text": "42",
                             "actions": [{"type": "extract"}, {"type": "finish", "answer": "42"}]},
             "max_steps": 3, "timeout": 60}
    elif i % 4 == 3:
        t = {"task_id": tid, "task_type": "reasoning", "description": f"sum of 1..{i}",
             "constraints": {"code": f"print(sum(range({i} + 1)))", "expected_output": str(i * (i + 1) // 2)},
             "max_steps": 2, "timeout": 60}
    else:
        t = {"task_id": tid, "task_type": "code", "description": f"square of {i}",
             "constraints": {"code": f"print({i} * {i})", "expected_output": str(i * i)},
             "max_steps": 2, "timeout": 60}
    print(json.dumps(t))
PY
jq -r .task_id "$OPS_WORK/load.jsonl" >"$OPS_WORK/load.ids"

START=$(python3 -c 'import time; print(time.time())')
if [[ $PACED -eq 1 ]]; then
  delay=$(python3 -c "print(max(0.0, $MINUTES * 30.0 / $N))")
  ops_log "submitting $N tasks, one every ${delay}s"
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$OPS_WORK/tasks.jsonl"
    sleep "$delay"
  done <"$OPS_WORK/load.jsonl"
else
  ops_log "submitting $N tasks at once"
  ops_submit "$OPS_WORK/load.jsonl"
fi
LIMIT=$(python3 -c "print(int($MINUTES * 60))")
if ! ops_wait_trajectories "$OPS_WORK/load.ids" "$LIMIT"; then
  ops_die "not every task finished within $MINUTES min"
fi
END=$(python3 -c 'import time; print(time.time())')

# Figures from the trajectories themselves.
python3 - "$OPS_WORK/output/trajectories" "$OPS_WORK/load.ids" "$START" "$END" "$MIN_SUCCESS_PCT" <<'PY'
import json, os, sys, collections, statistics
d, ids_file, start, end, min_pct = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
ids = [l.strip() for l in open(ids_file) if l.strip()]
by_rt = collections.Counter(); ok = 0; errors = collections.Counter(); durs = []; e2e = []
for i in ids:
    t = json.load(open(os.path.join(d, i + ".json")))
    by_rt[t["runtime_id"].split(":")[0]] += 1
    ok += t["success"]
    if not t["success"]:
        errors[t.get("error_type") or "task_failed"] += 1
    durs.append(t["total_duration"])
    e2e.append(t["created_at"] - start)
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
wall = end - start
print(f"tasks        {len(ids)} ({', '.join(f'{k}: {v}' for k, v in sorted(by_rt.items()))})")
print(f"succeeded    {ok} ({100 * ok / len(ids):.1f}%)" + (f", failures {dict(errors)}" if errors else ""))
print(f"wall time    {wall:.1f} s  -> throughput {len(ids) / wall:.1f} tasks/s")
print(f"task time    p50 {pct(durs, 50) * 1000:.0f} ms, p90 {pct(durs, 90) * 1000:.0f} ms, p99 {pct(durs, 99) * 1000:.0f} ms")
print(f"done after   p50 {pct(e2e, 50):.1f} s, p90 {pct(e2e, 90):.1f} s, max {max(e2e):.1f} s (from submission start)")
if 100 * ok / len(ids) < min_pct:
    print(f"FAILED: success rate below {min_pct}%", file=sys.stderr); sys.exit(1)
PY

for svc in $(ops_services); do
  ops_get "$svc" /health | jq -e '.status == "healthy"' >/dev/null || ops_die "$svc unhealthy after the load"
done
ops_log "PASSED: $N tasks within $MINUTES min ($MODE mode)"

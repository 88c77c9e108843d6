#!/usr/bin/env bash
# Dispatch throughput: N tasks (default 200000) from a file into a private
# local redis-server (AOF everysec, as in production), FOLLOW=false.
# Prints tasks/s over three runs, each on an empty Redis. No runtime consumes,
# so MAX_BACKLOG is lifted for the measurement.
#
#   scripts/bench_dispatch.sh [N_TASKS]
set -euo pipefail
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
cd "$ROOT"
bench_args "$@"
N=${1:-200000}
bench_build_bin dispatcher
bench_workdir dispatch "${TMPDIR:-/tmp}"
REDIS_PID=""
BENCH_PID_VARS=(REDIS_PID)
trap bench_cleanup EXIT

python3 - "$N" "$WORK/tasks.jsonl" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
types = ["code", "code", "reasoning", "web"]
with open(path, "w") as f:
    for i in range(n):
        t = types[i % 4]
        task = {"task_id": f"bench_{i}", "task_type": t, "description": f"Compute fibonacci({i % 30})",
                "expected_tools": ["python_executor"], "constraints": {}, "max_steps": 5}
        if t == "web":
            task["constraints"] = {"start_url": "http://127.0.0.1:8765/"}
        f.write(json.dumps(task) + "\n")
PY
echo "tasks: $N ($(du -h "$WORK/tasks.jsonl" | cut -f1)), machine: $(nproc) cores"
for run in 1 2 3; do
  rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
  bench_start_redis "$WORK/redis" "$WORK/redis.log"
  start=$(date +%s.%N)
  summary=$(REDIS_URL="$REDIS_URL" TASK_FILE="$WORK/tasks.jsonl" OUTPUT_DIR="$WORK/out" FOLLOW=false MAX_BACKLOG=1000000000 METRICS_PORT=0 RUST_LOG=warn "$TARGET_DIR/release/dispatcher")
  end=$(date +%s.%N)
  python3 -c "import sys; n=$N; t=$end-$start; print(f'run $run: {t:.2f} s, {n/t:,.0f} tasks/s   ({sys.argv[1]})')" "$summary"
  stop_pid "$REDIS_PID"; REDIS_PID=""
done

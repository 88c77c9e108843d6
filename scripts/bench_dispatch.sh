#!/usr/bin/env bash
# Dispatch throughput: N tasks (default 200000) from a file into a private
# local redis-server (AOF everysec, as in production), FOLLOW=false.
# Prints tasks/s over three runs, each on an empty Redis, and Redis'
# used_memory after each (the N entries are still in the stream: no runtime
# consumes, so MAX_BACKLOG is lifted for the measurement). The tasks go to the
# named run BENCH_RUN_ID (default `bench`; `default` for the default run), so
# every task id also goes into the run's id record.
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
RUN=${BENCH_RUN_ID:-bench}
echo "tasks: $N ($(du -h "$WORK/tasks.jsonl" | cut -f1)), run: $RUN, machine: $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in 1 2 3; do
  rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
  bench_start_redis "$WORK/redis" "$WORK/redis.log"
  start=$(date +%s.%N)
  summary=$(REDIS_URL="$REDIS_URL" TASK_FILE="$WORK/tasks.jsonl" OUTPUT_DIR="$WORK/out" FOLLOW=false MAX_BACKLOG=1000000000 METRICS_PORT=0 RUN_ID="$RUN" RUST_LOG=warn "$TARGET_DIR/release/dispatcher")
  end=$(date +%s.%N)
  mem=$(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | sed -n 's/^used_memory://p')
  python3 -c "import sys; n=$N; t=$end-$start; m=int(sys.argv[2]); print(f'run $run: {t:.2f} s, {n/t:,.0f} tasks/s, used_memory {m/2**20:.1f} MiB = {m/n:.0f} B per dispatched task   ({sys.argv[1]})')" "$summary" "$mem"
  stop_pid "$REDIS_PID"; REDIS_PID=""
done

#!/usr/bin/env bash
# Dispatch throughput: N tasks (default 200000) from a file into a private
# local redis-server (AOF everysec, as in production), FOLLOW=false.
# Prints tasks/s over three runs, each on an empty Redis. No runtime consumes,
# so MAX_BACKLOG is lifted for the measurement.
#
#   scripts/bench_dispatch.sh [N_TASKS]
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
N=${1:-200000}
command -v cargo >/dev/null || source "$HOME/.cargo/env"
cargo build --release --locked --bin dispatcher 2>&1 | grep -Ev '^\s+Compiling' >&2 || true
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
WORK=$(mktemp -d)
REDIS_PID=""
trap '[[ -n "$REDIS_PID" ]] && kill $REDIS_PID 2>/dev/null; rm -rf "$WORK"' EXIT

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
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes --appendfsync everysec --save "" --logfile "$WORK/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 1 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  start=$(date +%s.%N)
  summary=$(REDIS_URL="redis://127.0.0.1:$PORT" TASK_FILE="$WORK/tasks.jsonl" OUTPUT_DIR="$WORK/out" FOLLOW=false MAX_BACKLOG=1000000000 METRICS_PORT=0 RUST_LOG=warn "$TARGET_DIR/release/dispatcher")
  end=$(date +%s.%N)
  python3 -c "import sys; n=$N; t=$end-$start; print(f'run $run: {t:.2f} s, {n/t:,.0f} tasks/s   ({sys.argv[1]})')" "$summary"
  kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""
done

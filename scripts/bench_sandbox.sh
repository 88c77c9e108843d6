#!/usr/bin/env bash
# Throughput of the code pipeline against the raw sandbox.
#
#   scripts/bench_sandbox.sh            # 1,000 tasks, parallelism = number of CPUs
#   BENCH_TASKS=200 BENCH_CONCURRENCY=4 scripts/bench_sandbox.sh
#   BENCH_ROUNDS=5 ...                   # raw/pipeline rounds (default 3)
#   BENCH_PREFETCH=N ...                 # SANDBOX_PREFETCH of the runtime (default: its own)
#   BENCH_KEEP=1 ...                     # keep the work dir (trajectories, logs)
#   BENCH_WORK_BASE=/dev/shm ...         # where the work dir (and trajectories) go (default /tmp)
#
# Each round, on a private redis-server (127.0.0.1, free port):
#   raw       the same nsjail + python commands the runtime runs (same
#             arguments, code on stdin, a --log file per run), launched
#             directly by P threads (crates/sandbox-runtime/examples/bench_raw.rs);
#   pipeline  dispatcher (FOLLOW=false) -> Redis stream tasks:code ->
#             sandbox-runtime (SANDBOX_CONCURRENCY=P) -> trajectory files,
#             timed from the dispatcher's start to the newest trajectory file
#             (a fresh runtime and an emptied Redis each round).
# Rounds alternate raw and pipeline so background load hits both alike; the
# rates are medians over rounds, the ratio is the median over pipeline rounds
# of (pipeline / mean of the raw rounds before and after it), which follows
# the machine's drifting speed better than a ratio of medians. Prints tasks/s
# both ways, the ratio (target >= 90%), the runtime's RSS and per-step /
# per-task durations.
# Task i is a scripted code task running print(sum(range(i))).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${BENCH_TASKS:-1000}
P=${BENCH_CONCURRENCY:-$(nproc)}
ROUNDS=${BENCH_ROUNDS:-3}
TIMEOUT=${BENCH_TIMEOUT_SECS:-900}

log() { printf '[bench] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

log "building release binaries"
(cd "$ROOT" && cargo build --release -q -p sandbox-runtime --bin sandbox-runtime --example bench_raw \
  && cargo build --release -q -p dispatcher --bin dispatcher)
BIN="$ROOT/target/release"

WORK=$(mktemp -d "${BENCH_WORK_BASE:-/tmp}/bench-sandbox.XXXXXX")
REDIS_PID=""
RT_PID=""
stop_pid() {
  if [[ -n "$1" ]]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
cleanup() {
  set +e
  stop_pid "$RT_PID"
  stop_pid "$REDIS_PID"
  # (sync: on ext4 without a journal, inodes freed a moment ago are skipped
  # by a slow scan at the next file creations, for 60 s once written back and
  # 5 minutes while dirty; that would slow a bench run right after this one.)
  if [[ -n "${BENCH_KEEP:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; sync; fi
}
trap cleanup EXIT

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --save "" \
  --appendonly yes --appendfsync everysec >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

TASKS="$WORK/tasks.jsonl"
python3 - "$N" >"$TASKS" <<'EOF'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"task_id": f"bench_{i}", "task_type": "code",
                      "description": f"bench task {i}",
                      "constraints": {"code": f"print(sum(range({i})))",
                                      "expected_output": str(sum(range(i)))},
                      "max_steps": 1, "timeout": 60}))
EOF

# Prints the raw rate (tasks/s).
raw_run() {
  "$BIN/examples/bench_raw" "$N" "$P" | sed -n 's/^raw_tasks_per_sec=\([0-9.]*\).*/\1/p'
}

# CPU seconds (user + system) a process has used so far.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# One pipeline round into dir $1; writes "<start> <end> <rss peak kB> <rss after kB>
# <runtime cpu s> <redis cpu s>" to $1/result. (Not run in a subshell, so the
# EXIT trap sees RT_PID.)
pipeline_run() {
  local out=$1 mport dport start end deadline done_count peak now rt_cpu redis_cpu0 redis_cpu
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  redis_cpu0=$(cpu_secs "$REDIS_PID")
  mkdir -p "$out/trajectories"
  mport=$(free_port)
  # (env execs the runtime: $! is the runtime's pid)
  env REDIS_URL="$REDIS_URL" OUTPUT_DIR="$out" SANDBOX_CONCURRENCY="$P" METRICS_HOST=127.0.0.1 \
    ${BENCH_PREFETCH:+SANDBOX_PREFETCH="$BENCH_PREFETCH"} \
    METRICS_PORT="$mport" RUST_LOG=warn "$BIN/sandbox-runtime" 2>"$out/runtime.log" &
  RT_PID=$!
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$mport/health" >/dev/null 2>&1 && break
    sleep 0.05
  done
  curl -fs "http://127.0.0.1:$mport/health" >/dev/null \
    || { log "runtime not healthy"; cat "$out/runtime.log" >&2; exit 1; }
  dport=$(free_port)
  start=$(date +%s.%N)
  REDIS_URL="$REDIS_URL" TASK_FILE="$TASKS" OUTPUT_DIR="$out" FOLLOW=false METRICS_HOST=127.0.0.1 \
    METRICS_PORT="$dport" RUST_LOG=warn "$BIN/dispatcher" >"$out/dispatcher.log" 2>&1 &
  local dpid=$!
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    # A cheap poll: the end time is the newest file's mtime, not the poll's.
    done_count=$(find "$out/trajectories" -maxdepth 1 -name '*.json' | wc -l)
    [[ "$done_count" -ge "$N" ]] && break
    if [[ $(date +%s) -gt $deadline ]]; then log "timed out with $done_count/$N trajectories"; exit 1; fi
    sleep 1
  done
  end=$(find "$out/trajectories" -maxdepth 1 -name '*.json' -printf '%T@\n' | sort -n | tail -1)
  peak=$(awk '/^VmHWM/{print $2}' "/proc/$RT_PID/status")
  now=$(awk '/^VmRSS/{print $2}' "/proc/$RT_PID/status")
  rt_cpu=$(cpu_secs "$RT_PID")
  redis_cpu=$(python3 -c "print(round($(cpu_secs "$REDIS_PID") - $redis_cpu0, 3))")
  wait "$dpid" || log "dispatcher exited non-zero"
  stop_pid "$RT_PID"
  RT_PID=""
  echo "$start $end $peak $now $rt_cpu $redis_cpu" >"$out/result"
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
RAWS=()
PIPES=()
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: raw, $N tasks, $P at a time"
  RAWS+=("$(raw_run)")
  log "round $r/$ROUNDS: pipeline (dispatcher -> Redis -> sandbox-runtime -> files)"
  pipeline_run "$WORK/round$r"
  PIPES+=("$(cat "$WORK/round$r/result")")
done
log "final raw run"
RAWS+=("$(raw_run)")
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$WORK" "$N" "$P" "${RAWS[*]}" "${PIPES[@]}" <<'EOF'
import json, os, statistics, sys
work, n, p, raws, *pipes = sys.argv[1:]
n, p = int(n), int(p)
raws = [float(x) for x in raws.split()]
rates, peaks, afters, steps, totals, ok, cpus = [], [], [], [], [], 0, []
for r, line in enumerate(pipes, 1):
    start, end, peak, now, rt_cpu, redis_cpu = line.split()
    cpus.append((float(rt_cpu) / n * 1000, float(redis_cpu) / n * 1000))
    rates.append(n / (float(end) - float(start)))
    peaks.append(int(peak) / 1024)
    afters.append(int(now) / 1024)
    d = os.path.join(work, f"round{r}", "trajectories")
    for name in os.listdir(d):
        if name.endswith(".json"):
            t = json.load(open(os.path.join(d, name)))
            ok += bool(t["success"])
            totals.append(t["total_duration"])
            steps.extend(s["duration"] for s in t["steps"])
raw, pipe = statistics.median(raws), statistics.median(rates)
# The machine's speed drifts over a run (other VMs, thermal): compare each
# pipeline round with the raw rounds just before and after it.
paired = [rate / ((raws[i] + raws[i + 1]) / 2) for i, rate in enumerate(rates)]
q = lambda xs, f: sorted(xs)[min(len(xs) - 1, int(f * len(xs)))] * 1000
fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
print(f"tasks={n} parallelism={p} cpus={os.cpu_count()} rounds={len(rates)}")
print(f"raw nsjail+python : {raw:7.1f} tasks/s  (median of {fmt(raws)})")
print(f"pipeline          : {pipe:7.1f} tasks/s  (median of {fmt(rates)}; {ok}/{n * len(rates)} tasks succeeded)")
print(f"ratio             : {100 * statistics.median(paired):6.1f} %  (target >= 90 %; median of each pipeline round over its neighbouring raw rounds: {fmt(100 * x for x in paired)})")
print(f"ratio of medians  : {100 * pipe / raw:6.1f} %")
print(f"runtime RSS       : peak {max(peaks):.1f} MiB, after a run {max(afters):.1f} MiB")
print(f"CPU per task      : runtime {statistics.median(c[0] for c in cpus):.2f} ms, redis {statistics.median(c[1] for c in cpus):.2f} ms")
print(f"step duration     : p50 {q(steps, .5):.1f} ms, p90 {q(steps, .9):.1f} ms, mean {statistics.mean(steps) * 1000:.1f} ms")
print(f"task duration     : p50 {q(totals, .5):.1f} ms, p90 {q(totals, .9):.1f} ms (from taking the task to its last step's end)")
EOF

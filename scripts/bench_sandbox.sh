#!/usr/bin/env bash
# Throughput of the code pipeline against the raw sandbox.
#
#   scripts/bench_sandbox.sh            # 1,000 tasks, parallelism = number of CPUs
#   BENCH_TASKS=200 BENCH_CONCURRENCY=4 scripts/bench_sandbox.sh
#   BENCH_ROUNDS=5 ...                   # raw/pipeline rounds (default 3)
#   BENCH_PREFETCH=N ...                 # SANDBOX_PREFETCH of the runtime (default: its own)
#   BENCH_KEEP=1 ...                     # keep the work dir (trajectories, logs)
#   BENCH_WORK_BASE=/dev/shm ...         # where the work dir (and trajectories) go (default /tmp)
#   BENCH_SESSION=oneshot ...            # SANDBOX_SESSION of the runtime (default stateful)
#   BENCH_STEPS=5 ...                    # code cells per task (default 1): the pipeline runs
#                                        # them as one task's steps, raw runs each cell one-shot
#   BENCH_MAX_STEPS=2 ...                # the tasks' max_steps (default BENCH_STEPS). A stateful
#                                        # task with max_steps 1 and no tests runs its step in a
#                                        # one-shot jail; 2 makes one-step tasks use a session
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
# both ways, the ratio (target >= 90 % for one step, >= 300 % for a stateful
# multi-step run), the runtime's RSS and per-step / per-task durations.
# Memory per idle session: scripts/bench_session_memory.sh.
# Task i is a scripted code task running print(sum(range(i))) (with
# BENCH_STEPS=S: S cells, cell k printing sum(range(i + k)); raw runs the
# same S cells as S one-shot jails per task, so both rates are tasks/s).
set -euo pipefail
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_args "$@"

N=${BENCH_TASKS:-1000}
P=${BENCH_CONCURRENCY:-$(nproc)}
ROUNDS=${BENCH_ROUNDS:-3}
TIMEOUT=${BENCH_TIMEOUT_SECS:-900}
STEPS=${BENCH_STEPS:-1}
SESSION=${BENCH_SESSION:-stateful}
export BENCH_STEPS=$STEPS BENCH_SESSION=$SESSION

bench_build sandbox-runtime sandbox-runtime bench_raw

bench_workdir sandbox "${BENCH_WORK_BASE:-/tmp}"
REDIS_PID=""
RT_PID=""
BENCH_PID_VARS=(RT_PID REDIS_PID)
trap bench_cleanup EXIT
bench_start_redis "$WORK" "$WORK/redis.log"

TASKS="$WORK/tasks.jsonl"
python3 - "$N" "$STEPS" "${BENCH_MAX_STEPS:-$STEPS}" >"$TASKS" <<'EOF'
import json, sys
steps = int(sys.argv[2])
max_steps = int(sys.argv[3])
for i in range(int(sys.argv[1])):
    cells = [f"print(sum(range({i + k})))" for k in range(steps)]
    print(json.dumps({"task_id": f"bench_{i}", "task_type": "code",
                      "description": f"bench task {i}",
                      "constraints": {"code": cells[0] if steps == 1 else cells,
                                      "expected_output": str(sum(range(i + steps - 1)))},
                      "max_steps": max_steps, "timeout": 120}))
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
  local out=$1 mport start end peak now rt_cpu redis_cpu0 redis_cpu
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  redis_cpu0=$(cpu_secs "$REDIS_PID")
  mkdir -p "$out/trajectories"
  mport=$(free_port)
  # (env execs the runtime: $! is the runtime's pid)
  env REDIS_URL="$REDIS_URL" OUTPUT_DIR="$out" SANDBOX_CONCURRENCY="$P" METRICS_HOST=127.0.0.1 \
    SANDBOX_SESSION="$SESSION" \
    ${BENCH_PREFETCH:+SANDBOX_PREFETCH="$BENCH_PREFETCH"} \
    METRICS_PORT="$mport" RUST_LOG=warn "$BIN/sandbox-runtime" 2>"$out/runtime.log" &
  RT_PID=$!
  bench_wait_health "$mport" 200 "$out/runtime.log"
  bench_start_dispatcher "$out"
  start=$DISPATCH_START
  bench_wait_files "$out/trajectories" "$N" "$TIMEOUT" 1
  end=$(bench_newest_mtime "$out/trajectories")
  peak=$(awk '/^VmHWM/{print $2}' "/proc/$RT_PID/status")
  now=$(awk '/^VmRSS/{print $2}' "/proc/$RT_PID/status")
  rt_cpu=$(cpu_secs "$RT_PID")
  redis_cpu=$(python3 -c "print(round($(cpu_secs "$REDIS_PID") - $redis_cpu0, 3))")
  wait "$DISPATCH_PID" || log "dispatcher exited non-zero"
  stop_pid "$RT_PID"
  RT_PID=""
  echo "$start $end $peak $now $rt_cpu $redis_cpu" >"$out/result"
}

bench_loadavg before
for r in $(seq "$ROUNDS"); do bench_round "$r" raw raw_run sandbox-runtime; done
log "final raw run"
BASES+=("$(raw_run)")
bench_loadavg after

bench_python - "$WORK" "$N" "$P" "${BASES[*]}" "${PIPES[@]}" <<'EOF'
import os, statistics, sys
from bench_stats import paired as pair, q, rate, trajectories
work, n, p, raws, *pipes = sys.argv[1:]
n, p = int(n), int(p)
raws = [float(x) for x in raws.split()]
rates, peaks, afters, cpus = [], [], [], []
for line in pipes:
    _, _, peak, now, rt_cpu, redis_cpu = line.split()
    cpus.append((float(rt_cpu) / n * 1000, float(redis_cpu) / n * 1000))
    rates.append(rate(n, line))
    peaks.append(int(peak) / 1024)
    afters.append(int(now) / 1024)
ok, steps, totals = trajectories(work, len(pipes))
raw, pipe = statistics.median(raws), statistics.median(rates)
# The machine's speed drifts over a run (other VMs, thermal): compare each
# pipeline round with the raw rounds just before and after it.
paired = pair(rates, raws)
fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
print(f"tasks={n} steps/task={os.environ.get('BENCH_STEPS', '1')} max_steps={os.environ.get('BENCH_MAX_STEPS') or os.environ.get('BENCH_STEPS', '1')} session={os.environ.get('BENCH_SESSION', 'stateful')} parallelism={p} cpus={os.cpu_count()} rounds={len(rates)}")
print(f"raw nsjail+python : {raw:7.1f} tasks/s  (median of {fmt(raws)})")
print(f"pipeline          : {pipe:7.1f} tasks/s  (median of {fmt(rates)}; {ok}/{n * len(rates)} tasks succeeded)")
# Targets: one-step tasks >= 90 % of raw (issue 13: the stateful default >= 93 %);
# multi-step tasks in a stateful session >= 3x the same cells run one-shot (issue 13).
target = "300 %" if int(os.environ.get("BENCH_STEPS", "1")) > 1 else "90 %"
print(f"ratio             : {100 * statistics.median(paired):6.1f} %  (target >= {target}; median of each pipeline round over its neighbouring raw rounds: {fmt(100 * x for x in paired)})")
print(f"ratio of medians  : {100 * pipe / raw:6.1f} %")
print(f"runtime RSS       : peak {max(peaks):.1f} MiB, after a run {max(afters):.1f} MiB")
print(f"CPU per task      : runtime {statistics.median(c[0] for c in cpus):.2f} ms, redis {statistics.median(c[1] for c in cpus):.2f} ms")
print(f"step duration     : p50 {q(steps, .5):.1f} ms, p90 {q(steps, .9):.1f} ms, mean {statistics.mean(steps) * 1000:.1f} ms")
print(f"task duration     : p50 {q(totals, .5):.1f} ms, p90 {q(totals, .9):.1f} ms (from taking the task to its last step's end)")
EOF

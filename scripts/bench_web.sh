#!/usr/bin/env bash
# Throughput of the web pipeline against the same page actions driven
# directly over CDP, and the memory of Chromium + runtime.
#
#   scripts/bench_web.sh                 # 200 tasks, 4 at a time
#   BENCH_TASKS=100 BENCH_CONCURRENCY=2 scripts/bench_web.sh
#   BENCH_ROUNDS=5 ...                   # direct/pipeline rounds (default 3)
#   BENCH_EGRESS=false ...               # pipeline without the egress proxy
#   BENCH_COMPARE_EGRESS=1 ...           # each round also runs the pipeline without it
#   BENCH_COMPARE_INTERCEPT=1 ...        # each round also runs direct CDP with a
#                                        # pass-through Fetch interception (the part
#                                        # of the gap the request check costs Chromium)
#   BENCH_COMPARE_SCRIPTS=1 ...          # each round also runs direct CDP with all the
#                                        # browser-side work of the pipeline: Chromium
#                                        # launched and sessions opened by the runtime's
#                                        # own browser manager (its user and sandbox,
#                                        # memory cgroup, Fetch interception) and the
#                                        # runtime's page scripts (its goto, action
#                                        # script, an observation per step)
#   BENCH_OBSERVATION=text|axtree|both   # the runtime's WEB_OBSERVATION, and the
#                                        # observation of the scripts row (default both)
#   BENCH_OBSERVE_COST=50 ...            # reads per demo page and mode in the closing
#                                        # observation-cost measurement (0: skip)
#   CHROME_PATH=/usr/lib/chromium/chromium ...   # full chromium instead of the headless shell
#   BENCH_KEEP=1 ...                     # keep the work dir (trajectories, logs)
#
# The demo site (demo-site/) is served by python's http.server (HTTP/1.1,
# keep-alive, TCP_NODELAY) on 127.0.0.1; a private redis-server runs on a
# free port. Each task is 3 steps:
# goto index.html, fill the search box and submit, click the first result.
# Each round:
#   direct    crates/web-runtime/examples/bench_direct.rs: one Chromium, the
#             same actions over CDP (chromiumoxide), P tasks at once, a fresh
#             context per task; no Redis, no observations, no interception,
#             Chromium as root without its sandbox (the bare-CDP baseline);
#   pipeline  dispatcher (FOLLOW=false) -> Redis stream tasks:web ->
#             web-runtime (MAX_CONCURRENT=P) -> trajectory files, timed from
#             the dispatcher's start to the newest trajectory file (a fresh
#             runtime and an emptied Redis each round).
# Rounds alternate so background load hits both alike, and a last direct
# round closes the series; rates are medians over rounds, the ratio is the
# median over pipeline rounds of (pipeline / mean of the direct rounds
# before and after it), as in bench_sandbox.sh: it follows this VM's
# drifting speed (±10 % within minutes) better than a ratio of medians.
# Each run's CPU time (client and its Chromium, from `times` around it) is
# printed per task, and the runtime's own CPU per pipeline round (all
# threads, and its main thread, which runs the async executor).
# Memory is measured in one more, untimed pipeline round: peak RSS and PSS of
# the runtime plus all its Chromium processes, sampled every 200 ms (reading
# smaps_rollup of a dozen Chromium processes costs ~5 % of a core, which
# would otherwise be charged to the timed pipeline rounds only).
set -euo pipefail
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_args "$@"

N=${BENCH_TASKS:-200}
P=${BENCH_CONCURRENCY:-4}
ROUNDS=${BENCH_ROUNDS:-3}
TIMEOUT=${BENCH_TIMEOUT_SECS:-900}
CHROME=${CHROME_PATH:-/usr/lib/chromium/chromium-headless-shell}
EGRESS=${BENCH_EGRESS:-true}
export BENCH_OBSERVATION=${BENCH_OBSERVATION:-both}
OBSERVE_COST=${BENCH_OBSERVE_COST:-50}
# (bench_direct reads it too: only the closing cost measurement may see it)
unset BENCH_OBSERVE_COST

[[ -x "$CHROME" ]] || { log "no Chromium at $CHROME (run scripts/setup.sh web)"; exit 1; }
bench_build web-runtime web-runtime bench_direct

bench_workdir web /tmp
# (read by bench_cleanup through BENCH_PID_VARS)
# shellcheck disable=SC2034
REDIS_PID="" SITE_PID="" RT_PID="" SAMPLER_PID=""
BENCH_PID_VARS=(SAMPLER_PID RT_PID SITE_PID REDIS_PID)
trap bench_cleanup EXIT
bench_start_redis "$WORK" "$WORK/redis.log"

SITE_PORT=$(free_port)
# HTTP/1.1 with keep-alive and TCP_NODELAY, like a production web server
# (python's default HTTP/1.0 opens a new connection per request; keep-alive
# without TCP_NODELAY stalls on delayed ACKs). BENCH_SITE_HTTP=HTTP/1.0 for
# the old behaviour.
python3 - "$SITE_PORT" "$ROOT/demo-site" "${BENCH_SITE_HTTP:-HTTP/1.1}" >"$WORK/site.log" 2>&1 <<'EOF' &
import functools, http.server, sys
port, root, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = version
    disable_nagle_algorithm = True
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=root))
server.serve_forever()
EOF
# shellcheck disable=SC2034
SITE_PID=$!
SITE="http://127.0.0.1:$SITE_PORT"
for _ in $(seq 100); do curl -fs "$SITE/index.html" >/dev/null 2>&1 && break; sleep 0.05; done

TASKS="$WORK/tasks.jsonl"
python3 - "$N" "$SITE" >"$TASKS" <<'EOF'
import json, sys
n, site = int(sys.argv[1]), sys.argv[2]
terms = ["rust", "garden", "kettle", "pan"]
for i in range(n):
    print(json.dumps({
        "task_id": f"webbench_{i}", "task_type": "web",
        "description": f"bench web task {i}",
        "constraints": {
            "actions": [
                {"type": "goto", "url": f"{site}/index.html"},
                {"type": "fill_and_submit", "selector": "input[name=q]", "text": terms[i % 4]},
                {"type": "click", "selector": "#results a"},
            ],
            "expected_text": "Category:",
        },
        "max_steps": 3, "timeout": 120}))
EOF

direct_run() {
  "$BIN/examples/bench_direct" "$SITE" "$N" "$P" "$CHROME" 2>"$WORK/direct.log" \
    | sed -n 's/^direct_tasks_per_sec=\([0-9.]*\).*/\1/p'
}
direct_intercept_run() { BENCH_DIRECT_INTERCEPT=1 direct_run; }
direct_scripts_run() { BENCH_DIRECT_INTERCEPT=1 BENCH_DIRECT_SCRIPTS=1 direct_run; }

# Samples the memory of process $1 and its descendants until file $3 exists;
# writes "<peak RSS sum kB> <peak PSS sum kB> <peak runtime RSS kB> <max processes>" to $2.
SAMPLER='
import os, sys, time
root, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def tree(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except Exception:
                pass
    res, i = [pid], 0
    while i < len(res):
        res += kids.get(res[i], []); i += 1
    return res
def mem(pid):
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"): rss = int(line.split()[1])
            elif line.startswith("Pss:"): pss = int(line.split()[1])
    except Exception:
        pass
    return rss, pss
peak = [0, 0, 0, 0]
while not os.path.exists(stop):
    pids = tree(root)
    m = [mem(p) for p in pids]
    peak = [max(peak[0], sum(r for r, _ in m)), max(peak[1], sum(s for _, s in m)),
            max(peak[2], m[0][0]), max(peak[3], len(pids))]
    time.sleep(0.2)
open(out, "w").write(" ".join(map(str, peak)))
'

# One pipeline round into dir $1 (egress proxy on/off: $2; memory sampled
# when $3 is "mem"); writes "<start> <end> <exit>" to $1/result, and with
# "mem" "<rss> <pss> <rt rss> <procs>" to $1/mem.
pipeline_run() {
  local out=$1 egress=${2:-$EGRESS} sample=${3:-} mport start end code
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  mkdir -p "$out/trajectories"
  mport=$(free_port)
  env REDIS_URL="$REDIS_URL" OUTPUT_DIR="$out" MAX_CONCURRENT="$P" METRICS_HOST=127.0.0.1 \
    METRICS_PORT="$mport" CHROME_PATH="$CHROME" WEB_EGRESS_PROXY="$egress" RUST_LOG=warn \
    WEB_OBSERVATION="$BENCH_OBSERVATION" \
    "$BIN/web-runtime" 2>"$out/runtime.log" &
  RT_PID=$!
  bench_wait_health "$mport" 300 "$out/runtime.log"
  if [[ "$sample" == mem ]]; then
    python3 -c "$SAMPLER" "$RT_PID" "$out/mem" "$out/mem.stop" &
    SAMPLER_PID=$!
  fi
  bench_start_dispatcher "$out"
  start=$DISPATCH_START
  bench_wait_files "$out/trajectories" "$N" "$TIMEOUT" 0.5
  end=$(bench_newest_mtime "$out/trajectories")
  if [[ -n "$SAMPLER_PID" ]]; then
    touch "$out/mem.stop"
    wait "$SAMPLER_PID" || true
    SAMPLER_PID=""
  fi
  wait "$DISPATCH_PID" || log "dispatcher exited non-zero"
  # The runtime's CPU time (all threads; its main thread, which runs the
  # async runtime), in clock ticks: how busy the runtime's thread was.
  echo "$(awk '{print $14 + $15}' "/proc/$RT_PID/stat") $(awk '{print $14 + $15}' "/proc/$RT_PID/task/$RT_PID/stat") $(getconf CLK_TCK)" >"$out/cpu"
  kill -TERM "$RT_PID"
  code=0
  wait "$RT_PID" || code=$?
  RT_PID=""
  echo "$start $end $code" >"$out/result"
}

# CPU seconds (user + system) of this shell's finished children so far: the
# difference around a run is what that run cost, Chromium included (every
# run's Chromium is reaped by its client, the runtime or bench_direct).
# Sets CPU_NOW (`times` in a pipeline or $(...) would report a subshell's).
children_cpu() {
  times >"$WORK/times"
  CPU_NOW=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$WORK/times")
}
# cpu_of VAR CMD...: runs CMD, appends its children's CPU seconds to array VAR.
cpu_of() {
  local -n cpu_list=$1
  local before after
  shift
  children_cpu
  before=$CPU_NOW
  "$@"
  children_cpu
  after=$CPU_NOW
  cpu_list+=("$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')")
}
DIRECT_CPU=() PIPE_CPU=() SCRIPT_CPU=()
direct_round() { BASES+=("$(direct_run)"); }
pipeline_round() { pipeline_run "$WORK/round$1"; PIPES+=("$(cat "$WORK/round$1/result")"); }
scripts_round() { SCRIPTED+=("$(direct_scripts_run)"); }

log "Chromium: $CHROME ($("$CHROME" --version 2>/dev/null || echo '?')); egress proxy: $EGRESS; observation: $BENCH_OBSERVATION"
bench_loadavg before
NOEGRESS=() INTERCEPTED=() SCRIPTED=()
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: direct CDP, $N tasks, $P at a time"
  cpu_of DIRECT_CPU direct_round
  log "round $r/$ROUNDS: pipeline (dispatcher -> Redis -> web-runtime -> files)"
  cpu_of PIPE_CPU pipeline_round "$r"
  if [[ -n "${BENCH_COMPARE_INTERCEPT:-}" ]]; then
    log "round $r/$ROUNDS: direct CDP with a pass-through Fetch interception"
    INTERCEPTED+=("$(direct_intercept_run)")
  fi
  if [[ -n "${BENCH_COMPARE_SCRIPTS:-}" ]]; then
    log "round $r/$ROUNDS: direct CDP with the runtime's browser manager and page scripts"
    cpu_of SCRIPT_CPU scripts_round
  fi
  if [[ -n "${BENCH_COMPARE_EGRESS:-}" ]]; then
    log "round $r/$ROUNDS: pipeline without the egress proxy"
    pipeline_run "$WORK/noegress$r" false
    NOEGRESS+=("$(cat "$WORK/noegress$r/result")")
  fi
done
log "final direct run"
cpu_of DIRECT_CPU direct_round
log "memory round: pipeline with the memory sampler (not timed)"
pipeline_run "$WORK/memory" "$EGRESS" mem
COST=""
if [[ "$OBSERVE_COST" -gt 0 ]]; then
  log "observation cost: $OBSERVE_COST reads per demo page and mode, one page"
  COST=$(BENCH_OBSERVE_COST="$OBSERVE_COST" "$BIN/examples/bench_direct" "$SITE" 0 1 "$CHROME" 2>>"$WORK/direct.log")
fi
bench_loadavg after

bench_python - "$WORK" "$N" "$P" "${BASES[*]}" "$(printf '%s\n' "${NOEGRESS[@]}")" "${INTERCEPTED[*]:-}" "${SCRIPTED[*]:-}" \
  "$(cat "$WORK/memory/mem")" "$(cat "$WORK/memory/result")" \
  "${DIRECT_CPU[*]}" "${PIPE_CPU[*]}" "${SCRIPT_CPU[*]:-}" "${PIPES[@]}" <<'EOF'
import os, statistics, sys
from bench_stats import paired as pair, q, rate, trajectories
work, n, p, directs, noegress, intercepted, scripted, mem, memrun, dcpu, pcpu, scpu, *pipes = sys.argv[1:]
n, p = int(n), int(p)
directs = [float(x) for x in directs.split() if x]
rates = [rate(n, line) for line in pipes]
codes = [int(line.split()[2]) for line in [memrun, *pipes]]
rss, pss, rt = (int(x) / 1024 for x in mem.split()[:3])
procs = int(mem.split()[3])
ok, steps, totals = trajectories(work, len(pipes))
direct, pipe = statistics.median(directs), statistics.median(rates)
paired = pair(rates, directs)
fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
pct = lambda xs: ", ".join(f"{100 * x:.1f}" for x in xs)
print(f"tasks={n} (3 steps each) concurrency={p} cpus={os.cpu_count()} rounds={len(rates)}")
print(f"direct CDP        : {direct:6.2f} tasks/s  (median of {fmt(directs)})")
print(f"pipeline          : {pipe:6.2f} tasks/s  (median of {fmt(rates)}; {ok}/{n * len(rates)} tasks succeeded)")
print(f"ratio             : {100 * statistics.median(paired):6.1f} %  (target >= 85 %; median of each pipeline round "
      f"over its neighbouring direct rounds: {pct(paired)})")
print(f"ratio of medians  : {100 * pipe / direct:6.1f} %")
if noegress.strip():
    ne = [rate(n, line) for line in noegress.splitlines()]
    print(f"pipeline, no egress proxy: {statistics.median(ne):6.2f} tasks/s  (median of {fmt(ne)}; "
          f"{100 * statistics.median(ne) / direct:.1f} % of direct)")
if intercepted.strip():
    ic = [float(x) for x in intercepted.split()]
    pic = pair(ic, directs)
    print(f"direct CDP + pass-through Fetch interception: {statistics.median(ic):6.2f} tasks/s  (median of {fmt(ic)}; "
          f"{100 * statistics.median(pic):.1f} % of direct, paired: {pct(pic)})")
if scripted.strip():
    sc = [float(x) for x in scripted.split()]
    psc = pair(sc, directs)
    # A round runs direct, pipeline, then this: pipeline round i sits between
    # scripted rounds i - 1 and i (the first one only after scripted round 0).
    after = pair(rates, [sc[0], *sc])
    print(f"direct CDP + the runtime's browser manager and page scripts: {statistics.median(sc):6.2f} tasks/s  "
          f"(median of {fmt(sc)}; {100 * statistics.median(psc):.1f} % of direct, paired: {pct(psc)}); "
          f"pipeline / this: {100 * statistics.median(after):.1f} %, paired: {pct(after)}")
print(f"peak memory       : RSS sum {rss:.0f} MiB, PSS sum {pss:.0f} MiB "
      f"(runtime + Chromium, {procs} processes at most; untimed round); runtime alone RSS {rt:.0f} MiB")
print(f"step duration     : p50 {q(steps, .5):.0f} ms, p90 {q(steps, .9):.0f} ms")
print(f"task duration     : p50 {q(totals, .5):.0f} ms, p90 {q(totals, .9):.0f} ms")
cpu = []
for r, line in enumerate(pipes, 1):
    try:
        total, main, tck = (int(x) for x in open(os.path.join(work, f"round{r}", "cpu")).read().split())
    except (OSError, ValueError):
        continue
    secs = float(line.split()[1]) - float(line.split()[0])
    cpu.append(f"{total / tck:.1f} s ({100 * total / tck / secs:.0f} % of the round; main thread {100 * main / tck / secs:.0f} %)")
if cpu:
    print(f"runtime CPU       : per pipeline round {'; '.join(cpu)}")
per_task = lambda xs: ", ".join(f"{1000 * float(x) / n:.0f}" for x in xs.split())
print(f"CPU per task (ms, client + its Chromium, per round): direct {per_task(dcpu)}; pipeline {per_task(pcpu)}"
      + (f"; direct + scripts {per_task(scpu)}" if scpu.strip() else ""))
print(f"runtime exit codes after SIGTERM: {codes}")
print(f"observation       : WEB_OBSERVATION={os.environ.get('BENCH_OBSERVATION', 'both')}")
EOF
if [[ -n "$COST" ]]; then printf '%s\n' "$COST"; fi

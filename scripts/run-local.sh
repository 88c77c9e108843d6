#!/usr/bin/env bash
# Runs the whole pipeline on this machine, without Docker.
#
#   scripts/run-local.sh [--keep-running] [--no-setup] [--timeout SECS]
#
# 1. installs what is missing (scripts/setup.sh base sandbox web),
# 2. builds the release binaries,
# 3. starts a private redis-server with AOF (unless REDIS_URL is set),
#    the demo site on 127.0.0.1:$DEMO_SITE_PORT (for the web demo tasks),
#    every runtime binary that exists, and the dispatcher on $TASK_FILE,
# 4. waits until every task of the file has a trajectory or a rejection,
#    printing progress, then prints a summary and stops what it started.
#
# --keep-running  keep everything up after the file is done (the dispatcher
#                 follows the file for appended lines) until Ctrl-C.
# --no-setup      skip the install step.
# --timeout SECS  give up waiting after SECS seconds (default 900).
#
# Environment: TASK_FILE (tasks.jsonl), OUTPUT_DIR (output), REDIS_URL (a
# private server when unset), DEMO_SITE_PORT (8765), DISPATCHER_PORT (8000),
# SANDBOX_PORT (8001), WEB_PORT (8002), ADP_PROFILE (release; `debug` reuses
# the test suite's build), and any setting of the binaries
# (SANDBOX_CONCURRENCY, MAX_CONCURRENT, LLM_BASE_URL, ...), passed through.
# The web runtime runs with WEB_BLOCK_PRIVATE=true and WEB_ALLOW_HOSTS naming
# the demo site (127.0.0.1:$DEMO_SITE_PORT, plus any WEB_ALLOW_HOSTS given);
# started as root, its Chromium runs as nobody with its own sandbox.
# While running, $OUTPUT_DIR/run-local.env holds REDIS_URL and the ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

KEEP=0; SETUP=1; TIMEOUT=900
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keep-running) KEEP=1 ;;
    --no-setup) SETUP=0 ;;
    --timeout) TIMEOUT="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-local.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

TASK_FILE=${TASK_FILE:-tasks.jsonl}
OUTPUT_DIR=${OUTPUT_DIR:-output}
DEMO_SITE_PORT=${DEMO_SITE_PORT:-8765}
DISPATCHER_PORT=${DISPATCHER_PORT:-8000}
SANDBOX_PORT=${SANDBOX_PORT:-8001}
WEB_PORT=${WEB_PORT:-8002}
[[ -f "$TASK_FILE" ]] || { echo "run-local.sh: task file '$TASK_FILE' not found" >&2; exit 1; }
TASK_FILE=$(realpath "$TASK_FILE")
mkdir -p "$OUTPUT_DIR/trajectories" "$OUTPUT_DIR/logs"
OUTPUT_DIR=$(realpath "$OUTPUT_DIR")
LOGS="$OUTPUT_DIR/logs"

log() { printf '[run-local] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

if [[ $SETUP -eq 1 ]]; then
  log "checking installs (scripts/setup.sh base sandbox web)"
  bash scripts/setup.sh base sandbox web
fi

BINS=(dispatcher)
[[ -d crates/sandbox-runtime ]] && BINS+=(sandbox-runtime)
[[ -d crates/web-runtime ]] && BINS+=(web-runtime)
[[ -d crates/cli ]] && BINS+=(adp)
ADP_PROFILE=${ADP_PROFILE:-release}
case "$ADP_PROFILE" in
  release) profile_args=(--release) ;;
  debug) profile_args=() ;;
  *) echo "run-local.sh: ADP_PROFILE must be release or debug, not '$ADP_PROFILE'" >&2; exit 2 ;;
esac
log "building $ADP_PROFILE binaries: ${BINS[*]}"
# The same package selection as scripts/test.sh, so a build done there is reused.
cargo build "${profile_args[@]}" --locked --workspace --bins 2>&1 | grep -Ev '^\s+(Compiling|Downloaded|Downloading)' >&2 || true
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
BIN="$TARGET_DIR/$ADP_PROFILE"
for b in "${BINS[@]}"; do [[ -x "$BIN/$b" ]] || { echo "run-local.sh: build did not produce $BIN/$b" >&2; exit 1; }; done

PIDS=()
REDIS_PID=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [[ ${#PIDS[@]} -gt 0 ]]; then
    log "stopping services"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
      for _ in $(seq 1 350); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
    done
  fi
  if [[ -n "$REDIS_PID" ]]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$OUTPUT_DIR/run-local.env"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ -z "${REDIS_URL:-}" ]]; then
  REDIS_PORT=$(free_port)
  mkdir -p "$OUTPUT_DIR/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$OUTPUT_DIR/redis" \
    --appendonly yes --appendfsync everysec --save "" --maxmemory-policy noeviction \
    --logfile "$LOGS/redis.log" &
  REDIS_PID=$!
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "run-local.sh: redis-server did not start (see $LOGS/redis.log)" >&2; exit 1; }
  log "private redis-server on $REDIS_URL (AOF in $OUTPUT_DIR/redis)"
else
  log "using REDIS_URL=$REDIS_URL"
fi
export REDIS_URL OUTPUT_DIR TASK_FILE

for p in "$DISPATCHER_PORT" "$SANDBOX_PORT" "$WEB_PORT"; do
  if port_busy "$p"; then echo "run-local.sh: port $p is in use; set DISPATCHER_PORT/SANDBOX_PORT/WEB_PORT" >&2; exit 1; fi
done

if [[ -d demo-site ]]; then
  if port_busy "$DEMO_SITE_PORT"; then
    log "demo site port $DEMO_SITE_PORT already serves something; using it as is"
  else
    python3 -m http.server "$DEMO_SITE_PORT" --bind 127.0.0.1 --directory "$ROOT/demo-site" >"$LOGS/demo-site.log" 2>&1 &
    PIDS+=($!)
    log "demo site on http://127.0.0.1:$DEMO_SITE_PORT/"
  fi
fi

# Pages may reach the demo site and nothing else private (loopback included:
# Redis, the metrics ports, the runtime's own DevTools and proxy ports).
export WEB_BLOCK_PRIVATE=${WEB_BLOCK_PRIVATE:-true}
export WEB_ALLOW_HOSTS="127.0.0.1:$DEMO_SITE_PORT${WEB_ALLOW_HOSTS:+,$WEB_ALLOW_HOSTS}"

start() { # name port cmd...
  local name=$1 port=$2; shift 2
  METRICS_PORT=$port "$@" >>"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
  log "$name started (pid $!, metrics http://127.0.0.1:$port/metrics, log $LOGS/$name.log)"
}
[[ -x "$BIN/sandbox-runtime" && -d crates/sandbox-runtime ]] && start sandbox-runtime "$SANDBOX_PORT" "$BIN/sandbox-runtime"
[[ -x "$BIN/web-runtime" && -d crates/web-runtime ]] && start web-runtime "$WEB_PORT" "$BIN/web-runtime"

cat >"$OUTPUT_DIR/run-local.env" <<ENV
REDIS_URL=$REDIS_URL
DISPATCHER_PORT=$DISPATCHER_PORT
SANDBOX_PORT=$SANDBOX_PORT
WEB_PORT=$WEB_PORT
DEMO_SITE_PORT=$DEMO_SITE_PORT
OUTPUT_DIR=$OUTPUT_DIR
ENV

# The dispatcher: once through the file (or following it with --keep-running).
rm -f "$OUTPUT_DIR/rejected.jsonl"
if [[ $KEEP -eq 1 ]]; then
  start dispatcher "$DISPATCHER_PORT" env FOLLOW=true "$BIN/dispatcher"
else
  log "dispatching $TASK_FILE"
  if ! METRICS_PORT=$DISPATCHER_PORT FOLLOW=false "$BIN/dispatcher" >"$OUTPUT_DIR/dispatch-summary.txt" 2>>"$LOGS/dispatcher.log"; then
    echo "run-local.sh: the dispatcher failed; see $LOGS/dispatcher.log" >&2; exit 1
  fi
  log "dispatcher: $(cat "$OUTPUT_DIR/dispatch-summary.txt")"
fi

# Progress: entries acknowledged (= trajectory on disk) vs entries in the streams.
stream_state() { # prints "total done"
  local total=0 open=0 s len info pending lag
  for s in tasks:code tasks:web tasks:reasoning; do
    len=$(redis-cli -u "$REDIS_URL" XLEN "$s" 2>/dev/null || echo 0)
    total=$((total + ${len:-0}))
    info=$(redis-cli -u "$REDIS_URL" XINFO GROUPS "$s" 2>/dev/null | tr '\n' ' ')
    pending=$(sed -n 's/.*pending \([0-9]*\).*/\1/p' <<<"$info"); pending=${pending:-0}
    lag=$(sed -n 's/.* lag \([0-9]*\).*/\1/p' <<<"$info"); lag=${lag:-0}
    open=$((open + pending + lag))
  done
  echo "$total $((total - open))"
}

START=$(date +%s)
LAST=""
while :; do
  read -r total done_ <<<"$(stream_state)"
  rejected=0
  [[ -f "$OUTPUT_DIR/rejected.jsonl" ]] && rejected=$(wc -l <"$OUTPUT_DIR/rejected.jsonl")
  line="completed $done_/$total tasks, $rejected lines rejected"
  [[ "$line" != "$LAST" ]] && log "$line" && LAST=$line
  if [[ $KEEP -eq 0 && "$done_" -ge "$total" ]]; then break; fi
  if [[ $KEEP -eq 0 && $(( $(date +%s) - START )) -ge $TIMEOUT ]]; then
    echo "run-local.sh: gave up after ${TIMEOUT}s with $done_/$total tasks completed; logs in $LOGS" >&2; exit 1
  fi
  sleep 1
done

python3 - "$TASK_FILE" "$OUTPUT_DIR" <<'PY'
import json, os, sys, collections
task_file, out = sys.argv[1], sys.argv[2]
ids = []
for line in open(task_file, encoding="utf-8", errors="replace"):
    try:
        t = json.loads(line)
        if isinstance(t, dict) and isinstance(t.get("task_id"), str) and t["task_id"]:
            ids.append(t["task_id"])
    except ValueError:
        pass
ok = failed = missing = 0
errors = collections.Counter()
rows = []
for tid in dict.fromkeys(ids):
    p = os.path.join(out, "trajectories", tid + ".json")
    if not os.path.exists(p):
        missing += 1
        continue
    t = json.load(open(p))
    if t["success"]:
        ok += 1
    else:
        failed += 1
        errors[t.get("error_type") or "task_failed"] += 1
    res = (t.get("final_result") or "").strip().replace("\n", " ")
    rows.append(f"  {'ok ' if t['success'] else 'FAIL'} {tid:<24} {t['metadata'].get('policy','?'):<10} steps={len(t['steps'])} {res[:60]}")
rej = 0
rp = os.path.join(out, "rejected.jsonl")
if os.path.exists(rp):
    rej = sum(1 for _ in open(rp))
print("\n".join(rows))
print(f"Summary: {ok} succeeded, {failed} failed {dict(errors) if errors else ''}, {rej} rejected, "
      f"{missing} without trajectory (ids generated for id-less lines are not listed). "
      f"Trajectories in {out}/trajectories/")
PY

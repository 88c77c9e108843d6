# Shared by scripts/bench_{sandbox,web,dispatch,export}.sh.
# Source it; it defines ROOT and functions only. (Not scripts/ops-common.sh:
# that one is about whole stacks and MODE, and traps INT/TERM.)
#
# The pipeline benchmarks (sandbox, web) use it this way:
#   bench_args "$@"; bench_build ...; bench_workdir NAME BASE
#   BENCH_PID_VARS=(RT_PID ... REDIS_PID); trap bench_cleanup EXIT
#   bench_start_redis "$WORK" "$WORK/redis.log"
#   per round: bench_wait_health, bench_start_dispatcher, bench_wait_files,
#   bench_newest_mtime.

# shellcheck shell=bash
# (The variables set here are read by the scripts that source this file.)
# shellcheck disable=SC2034

# The repository root (the scripts' parent).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[bench] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# bench_args "$@": -h/--help prints the script's header comment (its usage)
# and exits 0; any other option is refused. Positional arguments are the
# script's business.
bench_args() {
  local a
  for a in "$@"; do
    case "$a" in
      -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
      -*) printf '%s: unknown option %s (see --help)\n' "$(basename "$0")" "'$a'" >&2; exit 2 ;;
    esac
  done
}

# bench_build PACKAGE BIN EXAMPLE: release build of the runtime binary and its
# bench example, and of the dispatcher.
bench_build() {
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p "$1" --bin "$2" --example "$3" \
    && cargo build --release -q -p dispatcher --bin dispatcher)
  BIN="$ROOT/target/release"
}

# bench_workdir NAME BASE: WORK=BASE/bench-NAME.XXXXXX (removed by bench_cleanup
# unless BENCH_KEEP is set).
bench_workdir() { WORK=$(mktemp -d "$2/bench-$1.XXXXXX"); }

stop_pid() {
  if [[ -n "$1" ]]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}

# The EXIT trap: stops the processes whose pids are in the variables named by
# BENCH_PID_VARS (in that order; empty ones are skipped), then removes WORK.
# Never stops half-way (no errexit here: the work dir must go).
BENCH_PID_VARS=()
bench_cleanup() {
  set +e
  local v
  for v in "${BENCH_PID_VARS[@]}"; do stop_pid "${!v:-}"; done
  # (sync: on ext4 without a journal, inodes freed a moment ago are skipped
  # by a slow scan at the next file creations, for 60 s once written back and
  # 5 minutes while dirty; that would slow a bench run right after this one.)
  if [[ -n "${BENCH_KEEP:-}" ]]; then log "kept $WORK"; elif [[ -n "${WORK:-}" ]]; then rm -rf "$WORK"; sync; fi
}

# bench_start_redis DIR LOG: a private redis-server on 127.0.0.1 and a free
# port, AOF everysec (as in production), no RDB. Sets REDIS_PORT, REDIS_PID,
# REDIS_URL. (Not in a subshell, so the EXIT trap sees REDIS_PID.)
bench_start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$1" --save "" \
    --appendonly yes --appendfsync everysec >"$2" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
}

# bench_wait_health PORT TRIES LOG: polls http://127.0.0.1:PORT/health every
# 50 ms, TRIES times at most; exits (showing LOG) when it never answers.
bench_wait_health() {
  for _ in $(seq "$2"); do
    curl -fs "http://127.0.0.1:$1/health" >/dev/null 2>&1 && break
    sleep 0.05
  done
  curl -fs "http://127.0.0.1:$1/health" >/dev/null \
    || { log "runtime not healthy"; cat "$3" >&2; exit 1; }
}

# bench_start_dispatcher OUT: the dispatcher (FOLLOW=false) feeding $TASKS
# into $REDIS_URL. Sets DISPATCH_START (its start time, s) and DISPATCH_PID.
bench_start_dispatcher() {
  local dport
  dport=$(free_port)
  DISPATCH_START=$(date +%s.%N)
  REDIS_URL="$REDIS_URL" TASK_FILE="$TASKS" OUTPUT_DIR="$1" FOLLOW=false METRICS_HOST=127.0.0.1 \
    METRICS_PORT="$dport" RUST_LOG=warn "$BIN/dispatcher" >"$1/dispatcher.log" 2>&1 &
  DISPATCH_PID=$!
}

# bench_wait_files DIR N TIMEOUT_S POLL_S: waits until DIR holds N *.json
# files; exits after TIMEOUT_S. A cheap poll that starts no process (a glob
# and bash's clock; the sleep is the one fork), since it runs while the
# pipeline is timed and the baseline has no such poll; the end time of a run
# is the newest file's mtime (bench_newest_mtime), not the poll's.
bench_wait_files() {
  local deadline files
  deadline=$(( EPOCHSECONDS + $3 ))
  while :; do
    files=("$1"/*.json)
    [[ -e "${files[0]}" ]] || files=()
    [[ "${#files[@]}" -ge "$2" ]] && break
    if (( EPOCHSECONDS > deadline )); then log "timed out with ${#files[@]}/$2 trajectories"; exit 1; fi
    sleep "$4"
  done
}

# bench_round R LABEL BASELINE_FN RUNTIME: round R of ROUNDS: the baseline
# (BASELINE_FN prints its rate, appended to BASES), then pipeline_run (the
# script's) into $WORK/roundR, its result appended to PIPES.
BASES=()
PIPES=()
bench_round() {
  log "round $1/$ROUNDS: $2, $N tasks, $P at a time"
  BASES+=("$("$3")")
  log "round $1/$ROUNDS: pipeline (dispatcher -> Redis -> $4 -> files)"
  pipeline_run "$WORK/round$1"
  PIPES+=("$(cat "$WORK/round$1/result")")
}

# python3 with scripts/ on its path (for `import bench_stats`).
bench_python() { PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" python3 "$@"; }

# The mtime (s since the epoch) of the newest *.json file in DIR.
bench_newest_mtime() { find "$1" -maxdepth 1 -name '*.json' -printf '%T@\n' | sort -n | tail -1; }

bench_loadavg() { log "load average $1: $(cut -d' ' -f1-3 /proc/loadavg)"; }

# bench_build_bin BIN: release build (--locked) of a workspace binary, cargo
# from ~/.cargo/env when not on PATH, "Compiling" lines left out. Sets
# TARGET_DIR.
bench_build_bin() {
  # shellcheck source=/dev/null
  command -v cargo >/dev/null || source "$HOME/.cargo/env"
  (cd "$ROOT" && cargo build --release --locked --bin "$1" 2>&1) | grep -Ev '^\s+Compiling' >&2 || true
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
}

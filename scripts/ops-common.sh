# Shared by scripts/{build,deploy,smoke_test,load_test,integration_test}.sh.
# Source it; it defines functions only (and reads MODE).
#
# Two ways to run a stack:
#   MODE=docker  the compose stack (docker compose v2, or docker-compose v1)
#   MODE=local   the native processes of scripts/run-local.sh --keep-running
# Default: docker when a Docker engine answers, else local.
#
# Test stacks never touch the user's tasks.jsonl or ./output: they use their
# own task file and output directory (under a temp dir unless KEEP_DIR is set),
# their own free ports, and (docker) their own compose project.

# shellcheck shell=bash

OPS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# A signal ends the script through its EXIT trap (which stops the stack).
trap 'exit 130' INT
trap 'exit 143' TERM

ops_log() { printf '[%s] %s\n' "${OPS_NAME:-ops}" "$*" >&2; }
ops_die() { printf '[%s] ERROR: %s\n' "${OPS_NAME:-ops}" "$*" >&2; exit 1; }

ops_need() { # tool... : fail clearly when a tool is missing
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || ops_die "'$t' is not installed; run scripts/setup.sh dev (or base) first"
  done
}

# The calling script's header comment (its usage), for --help.
ops_usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

docker_engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# Resolves MODE (docker|local) and checks it is usable.
ops_resolve_mode() {
  if [[ -z "${MODE:-}" ]]; then
    if docker_engine_up; then MODE=docker; else MODE=local; fi
  fi
  case "$MODE" in
    docker) docker_engine_up || ops_die "MODE=docker but no Docker engine answers (docker info failed); use MODE=local" ;;
    local) ;;
    *) ops_die "MODE must be docker or local, not '$MODE'" ;;
  esac
  export MODE
}

# The compose command: `docker compose` (v2) when the plugin exists, else docker-compose.
compose_bin() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"; 
  elif command -v docker-compose >/dev/null 2>&1; then echo "docker-compose";
  else ops_die "neither 'docker compose' nor 'docker-compose' is installed"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A work dir for a test run: $KEEP_DIR if set (kept), else a temp dir removed on exit.
ops_workdir() {
  if [[ -n "${KEEP_DIR:-}" ]]; then
    mkdir -p "$KEEP_DIR"; OPS_WORK=$(realpath "$KEEP_DIR")
  else
    OPS_WORK=$(mktemp -d "${TMPDIR:-/tmp}/adp-${OPS_NAME:-ops}.XXXXXX")
    OPS_REMOVE_WORK=1
  fi
  mkdir -p "$OPS_WORK/output/trajectories"
  : >"$OPS_WORK/tasks.jsonl"
  export OPS_WORK
}

# ops_args "$@": the options every stack test takes: --timeout SECS (sets
# TIMEOUT) and -h/--help; any other is refused (a script takes its own
# options out before).
# shellcheck disable=SC2034 # TIMEOUT: read by the calling script
ops_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --timeout) [[ $# -ge 2 ]] || ops_die "--timeout needs SECS"; TIMEOUT=$2; shift ;;
      -h|--help) ops_usage; exit 0 ;;
      *) ops_die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
}

# ops_begin [DETAIL]: the start of every stack test: resolves MODE, checks
# the tools the checks use, logs "mode: $MODE<DETAIL>" and makes the work dir.
ops_begin() {
  ops_resolve_mode
  ops_need jq curl python3
  ops_log "mode: $MODE${1:-}"
  ops_workdir
}

# ---------------------------------------------------------------- stacks
# ops_stack_up [minimal|full]: starts a private stack reading $OPS_WORK/tasks.jsonl
# and writing $OPS_WORK/output. Sets DISPATCHER_PORT, SANDBOX_PORT, WEB_PORT
# (local) and OPS_HAS_WEB=0|1.
ops_stack_up() {
  local flavour=${1:-minimal}
  OPS_STACK_UP=1
  if [[ "$MODE" == local ]]; then
    local_stack_up "$flavour"
  else
    docker_stack_up "$flavour"
  fi
}

ops_stack_down() {
  [[ "${OPS_STACK_UP:-0}" == 1 ]] || return 0
  OPS_STACK_UP=0
  if [[ "$MODE" == local ]]; then local_stack_down; else docker_stack_down; fi
}

# Stops the stack and removes the work dir (unless kept). Use as the EXIT trap.
ops_cleanup() {
  local code=$?
  trap - EXIT
  ops_stack_down || true
  if [[ "${OPS_REMOVE_WORK:-0}" == 1 && $code -eq 0 ]]; then
    rm -rf "$OPS_WORK"
  elif [[ -n "${OPS_WORK:-}" ]]; then
    ops_log "work dir kept for inspection: $OPS_WORK"
  fi
  exit "$code"
}

local_stack_up() { # minimal|full: which services must be healthy (run-local starts all it has)
  ops_need redis-server redis-cli curl python3 jq
  DISPATCHER_PORT=$(free_port); SANDBOX_PORT=$(free_port); WEB_PORT=$(free_port)
  local demo_port; demo_port=$(free_port)
  export DISPATCHER_PORT SANDBOX_PORT WEB_PORT
  ops_log "starting the local stack (scripts/run-local.sh --keep-running; builds ${ADP_PROFILE:-release} binaries)"
  # run-local.sh owns the processes; it stops them all when it gets SIGTERM.
  TASK_FILE="$OPS_WORK/tasks.jsonl" OUTPUT_DIR="$OPS_WORK/output" REDIS_URL="" \
    DEMO_SITE_PORT=$demo_port \
    setsid bash "$OPS_ROOT/scripts/run-local.sh" --keep-running --no-setup \
    >"$OPS_WORK/run-local.log" 2>&1 &
  OPS_RUNLOCAL_PID=$!
  OPS_HAS_WEB=0
  [[ "$1" == full && -d "$OPS_ROOT/crates/web-runtime" ]] && OPS_HAS_WEB=1
  # Wait for run-local.env (written once every service is started), then health.
  local deadline=$((SECONDS + ${OPS_START_TIMEOUT:-900}))
  until [[ -f "$OPS_WORK/output/run-local.env" ]]; do
    kill -0 "$OPS_RUNLOCAL_PID" 2>/dev/null || { tail -n 30 "$OPS_WORK/run-local.log" >&2; ops_die "run-local.sh exited early (log above)"; }
    (( SECONDS < deadline )) || ops_die "local stack did not start in time; see $OPS_WORK/run-local.log"
    sleep 0.5
  done
  # shellcheck disable=SC1091
  REDIS_URL=$(sed -n 's/^REDIS_URL=//p' "$OPS_WORK/output/run-local.env")
  export REDIS_URL
  ops_wait_healthy
}

local_stack_down() {
  if [[ -n "${OPS_RUNLOCAL_PID:-}" ]] && kill -0 "$OPS_RUNLOCAL_PID" 2>/dev/null; then
    ops_log "stopping the local stack"
    kill -TERM "$OPS_RUNLOCAL_PID" 2>/dev/null || true
    local _
    for _ in $(seq 1 450); do kill -0 "$OPS_RUNLOCAL_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$OPS_RUNLOCAL_PID" 2>/dev/null; then
      ops_log "run-local.sh did not stop in 45 s; killing its process group"
      kill -KILL -- "-$OPS_RUNLOCAL_PID" 2>/dev/null || true
    fi
    wait "$OPS_RUNLOCAL_PID" 2>/dev/null || true
  fi
}

# docker: a separate compose project on free host ports.
docker_stack_up() {
  local flavour=$1 file
  case "$flavour" in
    minimal) file=docker-compose.minimal.yml; OPS_HAS_WEB=0 ;;
    full) file=docker-compose.yml; OPS_HAS_WEB=1 ;;
    *) ops_die "stack must be minimal or full, not '$flavour'" ;;
  esac
  ops_need curl jq
  OPS_COMPOSE=$(compose_bin)
  OPS_PROJECT="adp-${OPS_NAME:-ops}-$$"
  OPS_COMPOSE_FILE=$file
  DISPATCHER_PORT=$(free_port); SANDBOX_PORT=$(free_port)
  export ADP_TASKS_FILE="$OPS_WORK/tasks.jsonl" ADP_OUTPUT_DIR="$OPS_WORK/output"
  export ADP_UID=${ADP_UID:-$(id -u)} ADP_GID=${ADP_GID:-$(id -g)}
  REDIS_HOST_PORT=$(free_port); PROMETHEUS_HOST_PORT=$(free_port); GRAFANA_HOST_PORT=$(free_port)
  export REDIS_HOST_PORT DISPATCHER_HOST_PORT=$DISPATCHER_PORT
  export PROMETHEUS_HOST_PORT GRAFANA_HOST_PORT
  export GRAFANA_ADMIN_PASSWORD=${GRAFANA_ADMIN_PASSWORD:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')}
  ops_log "starting compose project $OPS_PROJECT ($file)"
  # shellcheck disable=SC2086
  (cd "$OPS_ROOT" && $OPS_COMPOSE -p "$OPS_PROJECT" -f "$file" up -d --build) >&2 \
    || ops_die "compose up failed"
  ops_wait_healthy
}

docker_stack_down() {
  ops_log "removing compose project $OPS_PROJECT"
  # shellcheck disable=SC2086
  (cd "$OPS_ROOT" && $OPS_COMPOSE -p "$OPS_PROJECT" -f "$OPS_COMPOSE_FILE" down -v --remove-orphans) >&2 || true
}

# Runs `cmd...` against the private compose project.
ops_compose() {
  # shellcheck disable=SC2086
  (cd "$OPS_ROOT" && $OPS_COMPOSE -p "$OPS_PROJECT" -f "$OPS_COMPOSE_FILE" "$@")
}

# GET a path of a service: ops_get SERVICE PATH (prints the body, fails on non-2xx).
ops_get() {
  local svc=$1 path=$2 port
  if [[ "$MODE" == local ]]; then
    case "$svc" in
      dispatcher) port=$DISPATCHER_PORT ;;
      sandbox-runtime) port=$SANDBOX_PORT ;;
      web-runtime) port=$WEB_PORT ;;
    esac
    curl -fsS --max-time 10 "http://127.0.0.1:$port$path"
  else
    case "$svc" in
      dispatcher) port=8000 ;; sandbox-runtime) port=8001 ;; web-runtime) port=8002 ;;
    esac
    ops_compose exec -T "$svc" curl -fsS --max-time 10 "http://127.0.0.1:$port$path"
  fi
}

ops_services() {
  echo dispatcher sandbox-runtime
  [[ "${OPS_HAS_WEB:-0}" == 1 ]] && echo web-runtime
  return 0
}

# Waits until every service's /health answers 200.
ops_wait_healthy() {
  local svc deadline
  for svc in $(ops_services); do
    deadline=$((SECONDS + ${OPS_HEALTH_TIMEOUT:-180}))
    until ops_get "$svc" /health >/dev/null 2>&1; do
      if (( SECONDS >= deadline )); then
        ops_get "$svc" /health >&2 || true
        ops_die "$svc is not healthy after ${OPS_HEALTH_TIMEOUT:-180}s"
      fi
      sleep 1
    done
    ops_log "$svc healthy"
  done
}

# Appends a task file to the stack's task file (the dispatcher follows it).
ops_submit() { cat "$1" >>"$OPS_WORK/tasks.jsonl"; }

# Waits until every id in the file $1 (one task_id a line) has a trajectory;
# $2 = timeout in seconds. Prints progress.
ops_wait_trajectories() {
  local ids=$1 timeout=$2 total done_ last="" start=$SECONDS
  total=$(wc -l <"$ids")
  while :; do
    done_=0
    while read -r id; do
      [[ -f "$OPS_WORK/output/trajectories/$id.json" ]] && done_=$((done_ + 1))
    done <"$ids"
    if [[ "$done_" != "$last" ]]; then ops_log "trajectories: $done_/$total"; last=$done_; fi
    (( done_ >= total )) && return 0
    if (( SECONDS - start >= timeout )); then
      ops_log "only $done_/$total trajectories after ${timeout}s; missing:"
      while read -r id; do
        [[ -f "$OPS_WORK/output/trajectories/$id.json" ]] || echo "  $id" >&2
      done <"$ids"
      return 1
    fi
    sleep 0.5
  done
}

# Checks one trajectory file against CONTRACT §3 (fields and types).
ops_check_trajectory() {
  jq -e '
    (.task_id|type=="string") and (.runtime_id|type=="string") and (.success|type=="boolean")
    and (.steps|type=="array") and (.final_result|type=="string")
    and (.error_type==null or (.error_type|type=="string"))
    and (.error_message==null or (.error_message|type=="string"))
    and (.total_duration|type=="number") and (.metadata|type=="object") and (.created_at|type=="number")
    and all(.steps[]; (.step_id|type=="number") and (.action_type|IN("code_execution","browser_action","tool_call"))
        and (.observation|type=="string") and (.success|type=="boolean") and (.duration|type=="number")
        and (.timestamp|type=="number") and (.action_params|type=="object"))
  ' "$1" >/dev/null || ops_die "trajectory $1 does not match the contract: $(head -c 400 "$1")"
}

# Sum of a metric's samples in a service's /metrics: ops_metric SERVICE NAME [LABEL_FILTER_REGEX]
ops_metric() {
  local svc=$1 name=$2 filter=${3:-}
  ops_get "$svc" /metrics | awk -v n="$name" -v f="$filter" '
    $0 !~ /^#/ { split($1, a, "{"); if (a[1] == n && (f == "" || $1 ~ f)) s += $NF }
    END { printf "%g\n", s + 0 }'
}

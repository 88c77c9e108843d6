#!/usr/bin/env bash
# Deploys the platform and waits until it is healthy.
#
#   scripts/deploy.sh [minimal|full] [--llm] [--scale N] [--no-build]
#   scripts/deploy.sh down [minimal|full]     stop (volumes are kept)
#
#   minimal   Redis, dispatcher, one sandbox runtime (docker-compose.minimal.yml)
#   full      also web-runtime, Prometheus, Grafana (docker-compose.yml);
#             --llm adds the vLLM service (profile llm, needs an NVIDIA GPU)
#             and points the runtimes at it unless LLM_BASE_URL is set
#   --scale N sandbox-runtime replicas (default: 1 minimal, 2 full)
#
# MODE=docker (default when a Docker engine answers): docker compose in this
# directory, reading ./tasks.jsonl and writing ./output. A missing .env is
# created from .env.example with a random Grafana password; a missing
# tasks.jsonl is created with three demo tasks. Existing files are never
# changed. The containers run as your uid (ADP_UID/ADP_GID) unless .env says
# otherwise, so the files in ./output are yours.
#
# MODE=local: runs scripts/run-local.sh --keep-running in the foreground
# (Ctrl-C stops it); `minimal`/`full` make no difference there.
set -euo pipefail
OPS_NAME=deploy
# shellcheck source=scripts/ops-common.sh
source "$(dirname "$0")/ops-common.sh"

ACTION=up; FLAVOUR=minimal; LLM=0; SCALE=""; BUILD=(--build)
while [[ $# -gt 0 ]]; do
  case "$1" in
    minimal|full) FLAVOUR=$1 ;;
    down) ACTION=down ;;
    --llm) LLM=1 ;;
    --scale) SCALE=$2; shift ;;
    --no-build) BUILD=() ;;
    -h|--help) ops_usage; exit 0 ;;
    *) ops_die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ -z "$SCALE" || "$SCALE" =~ ^[1-9][0-9]*$ ]] || ops_die "--scale needs a positive number"
[[ $LLM -eq 0 || "$FLAVOUR" == full ]] || ops_die "--llm needs the full stack: scripts/deploy.sh full --llm"

ops_resolve_mode
cd "$OPS_ROOT"

if [[ "$MODE" == local ]]; then
  [[ "$ACTION" == up ]] || ops_die "MODE=local: stop the stack with Ctrl-C in the terminal running it"
  [[ -f tasks.jsonl ]] || ops_die "tasks.jsonl not found (MODE=local reads TASK_FILE, default tasks.jsonl)"
  exec bash scripts/run-local.sh --keep-running
fi

COMPOSE=$(compose_bin)
FILE=docker-compose.minimal.yml
[[ "$FLAVOUR" == full ]] && FILE=docker-compose.yml
profiles=()
[[ $LLM -eq 1 ]] && profiles=(--profile llm)
dc() { $COMPOSE -f "$FILE" "${profiles[@]}" "$@"; }

if [[ "$ACTION" == down ]]; then
  ops_log "stopping the $FLAVOUR stack (data volumes are kept; add -v by hand to drop them)"
  dc down
  exit 0
fi

ops_need curl
if [[ ! -f .env ]]; then
  ops_log "creating .env from .env.example with a random GRAFANA_ADMIN_PASSWORD"
  pw=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))' 2>/dev/null || head -c 18 /dev/urandom | base64 | tr -d '/+=')
  sed -e "s/^GRAFANA_ADMIN_PASSWORD=.*/GRAFANA_ADMIN_PASSWORD=$pw/" \
      -e "s/^ADP_UID=.*/ADP_UID=$(id -u)/" -e "s/^ADP_GID=.*/ADP_GID=$(id -g)/" .env.example >.env
  chmod 600 .env
fi
# Files the containers mount must exist first (else Docker creates directories).
tasks_file=${ADP_TASKS_FILE:-$(sed -n 's/^ADP_TASKS_FILE=//p' .env | tail -n 1)}; tasks_file=${tasks_file:-./tasks.jsonl}
out_dir=${ADP_OUTPUT_DIR:-$(sed -n 's/^ADP_OUTPUT_DIR=//p' .env | tail -n 1)}; out_dir=${out_dir:-./output}
if [[ ! -e "$tasks_file" ]]; then
  ops_log "creating $tasks_file with three demo tasks"
  cat >"$tasks_file" <<'EOF'
{"task_id": "demo_fib", "task_type": "code", "description": "Compute fibonacci(10)", "expected_tools": ["python_executor"], "constraints": {}, "max_steps": 5}
{"task_id": "demo_prime", "task_type": "code", "description": "List the primes below 100", "expected_tools": ["python_executor"], "constraints": {}, "max_steps": 5}
{"task_id": "demo_sum", "task_type": "reasoning", "description": "What is the sum of 1..100?", "constraints": {"code": "print(sum(range(101)))", "expected_output": "5050"}, "max_steps": 3}
EOF
fi
[[ -f "$tasks_file" ]] || ops_die "$tasks_file exists but is not a file (a directory left by an earlier Docker run?)"
mkdir -p "$out_dir/trajectories"

if [[ $LLM -eq 1 ]]; then
  llm_url=${LLM_BASE_URL:-$(sed -n 's/^LLM_BASE_URL=//p' .env | tail -n 1)}
  if [[ -z "$llm_url" ]]; then
    export LLM_BASE_URL=http://vllm:8000
    ops_log "LLM_BASE_URL is empty in .env: using the vLLM service (http://vllm:8000)"
  fi
  # Start the model first: runtimes that take tasks before it serves would
  # spend their retries on connection errors.
  ops_log "starting vLLM (first start downloads the model; this can take minutes)"
  dc up -d "${BUILD[@]}" vllm
  deadline=$((SECONDS + 1800))
  until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q vllm)" 2>/dev/null)" == healthy ]]; do
    (( SECONDS < deadline )) || ops_die "vLLM not healthy after 30 min; see: $COMPOSE -f $FILE --profile llm logs vllm"
    sleep 5
  done
fi

scale_args=()
[[ -n "$SCALE" ]] && scale_args=(--scale "sandbox-runtime=$SCALE")
ops_log "starting the $FLAVOUR stack ($FILE)"
dc up -d "${BUILD[@]}" "${scale_args[@]}"

# Wait for every container's health check.
ops_log "waiting for health checks"
deadline=$((SECONDS + ${DEPLOY_TIMEOUT:-300}))
while :; do
  unhealthy=()
  for id in $(dc ps -q); do
    state=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
    case "${state##* }" in healthy|running) ;; *) unhealthy+=("$state") ;; esac
  done
  [[ ${#unhealthy[@]} -eq 0 ]] && break
  if (( SECONDS >= deadline )); then
    dc ps >&2
    ops_die "not healthy after ${DEPLOY_TIMEOUT:-300}s: ${unhealthy[*]} (see: $COMPOSE -f $FILE logs)"
  fi
  sleep 3
done
dc ps

# A setting from the environment, else .env, else the default.
setting() { local v; v=${!1:-$(sed -n "s/^$1=//p" .env | tail -n 1)}; echo "${v:-$2}"; }
DISPATCHER_HOST_PORT=$(setting DISPATCHER_HOST_PORT 8000)
MONITORING_BIND=$(setting MONITORING_BIND 127.0.0.1)
PROMETHEUS_HOST_PORT=$(setting PROMETHEUS_HOST_PORT 9090)
GRAFANA_HOST_PORT=$(setting GRAFANA_HOST_PORT 3000)
GRAFANA_ADMIN_USER=$(setting GRAFANA_ADMIN_USER admin)
cat >&2 <<EOF

Deployed ($FLAVOUR). Tasks: $tasks_file (append lines; the dispatcher follows it).
Trajectories: $out_dir/trajectories/<task_id>.json; rejected lines: $out_dir/rejected.jsonl
Dispatcher metrics: http://127.0.0.1:$DISPATCHER_HOST_PORT/metrics
EOF
if [[ "$FLAVOUR" == full ]]; then
  cat >&2 <<EOF
Prometheus: http://$MONITORING_BIND:$PROMETHEUS_HOST_PORT  (alerts: /alerts)
Grafana:    http://$MONITORING_BIND:$GRAFANA_HOST_PORT  user $GRAFANA_ADMIN_USER, password in .env
Scale:      $COMPOSE -f $FILE up -d --scale sandbox-runtime=4
EOF
else
  echo "Sandbox metrics: $COMPOSE -f $FILE exec sandbox-runtime curl -s http://127.0.0.1:8001/metrics" >&2
fi
echo "Stop:       scripts/deploy.sh down $FLAVOUR" >&2

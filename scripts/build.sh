#!/usr/bin/env bash
# Builds the platform.
#
#   scripts/build.sh [--no-cache] [SERVICE...]
#
# MODE=docker  builds the service images from docker/Dockerfile
#              (adp-dispatcher, adp-sandbox-runtime, adp-web-runtime; tag
#              ADP_VERSION, default latest) through docker compose. SERVICEs
#              limit the set. Needs BuildKit (default in current Docker).
# MODE=local   builds the release binaries (target/release/{dispatcher,
#              sandbox-runtime,web-runtime,adp}) with cargo.
# Default: docker when a Docker engine answers, else local.
#
# Before a Docker build it checks the files that can be checked without an
# engine when the tools are there: hadolint on the Dockerfile, compose config.
set -euo pipefail
OPS_NAME=build
# shellcheck source=scripts/ops-common.sh
source "$(dirname "$0")/ops-common.sh"

NO_CACHE=(); SERVICES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-cache) NO_CACHE=(--no-cache) ;;
    -h|--help) ops_usage; exit 0 ;;
    -*) ops_die "unknown option '$1' (see --help)" ;;
    *) SERVICES+=("$1") ;;
  esac
  shift
done
for s in "${SERVICES[@]}"; do
  case "$s" in dispatcher|sandbox-runtime|web-runtime) ;; *) ops_die "unknown service '$s' (dispatcher, sandbox-runtime, web-runtime)" ;; esac
done

ops_resolve_mode
cd "$OPS_ROOT"
mkdir -p output/trajectories

if [[ "$MODE" == local ]]; then
  if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
  fi
  ops_need cargo
  bins=()
  if [[ ${#SERVICES[@]} -eq 0 ]]; then SERVICES=(dispatcher sandbox-runtime web-runtime); bins=(--bin adp); fi
  for s in "${SERVICES[@]}"; do bins+=(--bin "$s"); done
  ops_log "cargo build --release --locked ${bins[*]}"
  cargo build --release --locked "${bins[@]}"
  ops_log "done: binaries in ${CARGO_TARGET_DIR:-target}/release/"
  exit 0
fi

COMPOSE=$(compose_bin)
if command -v hadolint >/dev/null 2>&1; then
  ops_log "hadolint docker/Dockerfile"
  hadolint docker/Dockerfile
fi
# An .env is not needed to build; give compose the example settings so the
# required GRAFANA_ADMIN_PASSWORD does not stop the build.
env_args=()
[[ -f .env ]] || env_args=(--env-file .env.example)
# shellcheck disable=SC2086
$COMPOSE "${env_args[@]}" -f docker-compose.yml config --quiet
ops_log "building images: ${SERVICES[*]:-dispatcher sandbox-runtime web-runtime}"
# shellcheck disable=SC2086
DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 $COMPOSE "${env_args[@]}" -f docker-compose.yml build "${NO_CACHE[@]}" "${SERVICES[@]}"
ops_log "done. Next: scripts/deploy.sh minimal (or full); see docs/deploy.md"

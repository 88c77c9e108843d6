#!/usr/bin/env bash
# Runs the platform under a real Docker engine with the project's own
# Dockerfile and compose files, and checks what users rely on.
#
#   scripts/compose_check.sh [--reduced] [--phase a|b|c]... [--cold]
#
#   (default)   every phase: build, a (minimal), b (full without Grafana),
#               c (sandbox containment under the real engine)
#   --reduced   build + phase a with 20 tasks (the CI-sized check)
#   --phase X   only these phases (after the build); repeatable; `build`
#               alone builds the images and stops
#   --cold      drop the build cache first (stand-in images, cargo cache)
#
# Engines: unless DOCKER_HOST names an engine to use, the script starts two
# dockerd 20.10 (Debian docker.io) of its own:
#   - a build engine in the host's network namespace with no bridge and no
#     iptables rules (`--bridge=none --iptables=false`); it only builds, with
#     `--network=host`, so apt, PyPI and crates.io downloads work. Its data
#     (stand-in images, BuildKit's cargo cache) stays in COMPOSE_CHECK_CACHE
#     so the next run is warm;
#   - a run engine inside a private network namespace (`unshare --net`): every
#     container runs there, so no container packet can leave this machine.
#     Images go from the build engine to it with `docker save | docker load`.
#   Both are stopped, and the run engine's data and namespace removed, at the
#   end whatever happens (trap).
# No image registry is needed: the base images the files name are built
# locally and tagged with those exact names (debian:<release>-slim from
# debootstrap; rust:<version>-slim-<release> from it plus this machine's Rust
# toolchain; the compose file's Redis and Prometheus images from Debian's
# redis-server and prometheus packages). Grafana has no Debian package: its
# service is checked statically only (crates/deploy-checks).
#
# Settings (environment): COMPOSE_CHECK_CACHE (default
# /var/cache/adp-compose-check), COMPOSE_CHECK_TMP (work dir parent, default
# $TMPDIR or /tmp), COMPOSE_CHECK_UID/GID (the user the stack writes ./output
# as; default the invoking user, SUDO_UID under sudo, and 1000 when run as
# root without sudo, so the ownership check means something).
# Needs root, and: scripts/setup.sh compose.
# Prints a ledger and the time of each phase; exit 0 only if everything held,
# 3 when no Docker engine can start on this machine, 1 for any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; }
REDUCED=0; COLD=0; PHASES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reduced) REDUCED=1 ;;
    --phase) PHASES+=("$2"); shift ;;
    --cold) COLD=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compose_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ ${#PHASES[@]} -eq 0 ]]; then
  if [[ $REDUCED == 1 ]]; then PHASES=(a); else PHASES=(a b c); fi
fi
for p in "${PHASES[@]}"; do [[ "$p" =~ ^(build|a|b|c)$ ]] || { echo "compose_check.sh: no phase '$p'" >&2; exit 2; }; done
[[ $(id -u) -eq 0 ]] || { echo "compose_check.sh: needs root (dockerd, unshare, nsenter)" >&2; exit 3; }

# Debian's 20.10 CLI: another `docker` (without plugins) may come first on PATH.
DOCKER=${COMPOSE_CHECK_DOCKER:-/usr/bin/docker}
for tool in "$DOCKER" dockerd docker-compose debootstrap unshare nsenter jq curl python3; do
  command -v "$tool" >/dev/null || { echo "compose_check.sh: $tool is missing: run scripts/setup.sh compose" >&2; exit 1; }
done
CACHE=${COMPOSE_CHECK_CACHE:-/var/cache/adp-compose-check}
WORK=$(mktemp -d "${COMPOSE_CHECK_TMP:-${TMPDIR:-/tmp}}/adp-compose-check.XXXXXX")
RUN_ID=$$
if [[ -n "${COMPOSE_CHECK_UID:-}" ]]; then CHECK_UID=$COMPOSE_CHECK_UID
elif [[ -n "${SUDO_UID:-}" ]]; then CHECK_UID=$SUDO_UID
else CHECK_UID=1000; fi
CHECK_GID=${COMPOSE_CHECK_GID:-${SUDO_GID:-$CHECK_UID}}

LEDGER=$WORK/ledger
TIMES=$WORK/times
: >"$LEDGER"; : >"$TIMES"; : >"$WORK/empty.env"
log() { printf '[compose-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ok() { printf 'PASS  %s\n' "$*" >>"$LEDGER"; log "PASS $*"; }
bad() { printf 'FAIL  %s\n' "$*" >>"$LEDGER"; log "FAIL $*"; }
note() { printf 'NOTE  %s\n' "$*" >>"$LEDGER"; log "NOTE $*"; }
# fail: record and abort the current phase (phases run in subshells).
fail() { bad "$*"; exit 1; }

# ------------------------------------------------------------------ engines
BUILD_PID=""; PRIV_PID=""; PRIV_NETNS=""
BUILD_HOST=""; PRIV_HOST=""
EXEC_B=/run/adp-cc-$RUN_ID-b; EXEC_P=/run/adp-cc-$RUN_ID-p

stop_dockerd() { # pid exec-root
  local pid=$1 i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { log "dockerd $pid did not stop in 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  return 0
}

# Processes left in the private network namespace (containerd shims and
# containers of a killed engine): all were started by this script.
kill_netns_leftovers() {
  [[ -n "$PRIV_NETNS" ]] || return 0
  local p
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/ns/net" 2>/dev/null)" == "$PRIV_NETNS" ]] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  return 0
}

unmount_under() { # dir
  local m
  findmnt -rn -o TARGET | grep -F "$1" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  log "cleaning up"
  if [[ -n "$PRIV_HOST" && -z "${REUSED_ENGINE:-}" ]]; then
    stop_dockerd "$PRIV_PID"
    kill_netns_leftovers
  elif [[ -n "${REUSED_ENGINE:-}" && -n "${PROJECT_PREFIX:-}" ]]; then
    for p in $(DOCKER_HOST=$PRIV_HOST "$DOCKER" ps -aq --filter "label=com.docker.compose.project" 2>/dev/null); do
      [[ "$(DOCKER_HOST=$PRIV_HOST "$DOCKER" inspect -f '{{index .Config.Labels "com.docker.compose.project"}}' "$p")" == "$PROJECT_PREFIX"* ]] \
        && DOCKER_HOST=$PRIV_HOST "$DOCKER" rm -f -v "$p" >/dev/null
    done
  fi
  stop_dockerd "$BUILD_PID"
  unmount_under "$WORK"; unmount_under "$EXEC_P"; unmount_under "$EXEC_B"
  [[ -d "$CACHE/data" ]] && unmount_under "$CACHE/data"
  rm -rf --one-file-system "$WORK" "$EXEC_P" "$EXEC_B"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_socket() { # DOCKER_HOST pid log
  local i
  for i in $(seq 1 600); do
    DOCKER_HOST=$1 "$DOCKER" version >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$3" >&2; return 1; }
    sleep 0.1
  done
  tail -n 30 "$3" >&2; return 1
}

# The machine cannot run a Docker engine at all (no cgroups, no overlay, a
# container without privileges...): exit 3, which callers such as .ci/run can
# tell apart from a check that failed (1).
no_engine() {
  bad "engine: $1 (its log is above); this machine cannot run the real-engine check"
  exit 3
}

start_engines() {
  if [[ -n "${DOCKER_HOST:-}" ]]; then
    REUSED_ENGINE=1; BUILD_HOST=$DOCKER_HOST; PRIV_HOST=$DOCKER_HOST
    note "engine: reusing DOCKER_HOST=$DOCKER_HOST for building and running (nothing started or removed but this run's projects)"
    return 0
  fi
  mkdir -p "$CACHE/data" "$EXEC_B" "$EXEC_P" "$WORK/engine"
  log "starting the build engine (host network namespace, no bridge, no iptables)"
  dockerd --host "unix://$EXEC_B/docker.sock" --data-root "$CACHE/data" --exec-root "$EXEC_B" \
    --pidfile "$EXEC_B/docker.pid" --bridge=none --iptables=false --ip-masq=false \
    >"$WORK/build-engine.log" 2>&1 &
  BUILD_PID=$!
  BUILD_HOST=unix://$EXEC_B/docker.sock
  wait_socket "$BUILD_HOST" "$BUILD_PID" "$WORK/build-engine.log" || no_engine "the build engine (dockerd) did not start"

  log "starting the run engine in a private network namespace"
  setsid unshare --net --fork bash -c 'ip link set lo up; exec dockerd "$@"' dockerd \
    --host "unix://$EXEC_P/docker.sock" --data-root "$WORK/engine" --exec-root "$EXEC_P" \
    --pidfile "$EXEC_P/docker.pid" >"$WORK/run-engine.log" 2>&1 &
  local launcher=$! i
  for i in $(seq 1 100); do [[ -s "$EXEC_P/docker.pid" ]] && break; sleep 0.1; done
  PRIV_PID=$(cat "$EXEC_P/docker.pid" 2>/dev/null || echo "$launcher")
  PRIV_HOST=unix://$EXEC_P/docker.sock
  wait_socket "$PRIV_HOST" "$PRIV_PID" "$WORK/run-engine.log" || no_engine "the run engine (dockerd in a private network namespace) did not start"
  PRIV_NETNS=$(readlink "/proc/$PRIV_PID/ns/net")
  [[ "$PRIV_NETNS" != "$(readlink /proc/self/ns/net)" ]] || { echo "run engine is not in a private network namespace" >&2; exit 1; }
  note "engines: build pid $BUILD_PID (host netns, --bridge=none), run pid $PRIV_PID ($PRIV_NETNS)"
}

bd() { DOCKER_HOST=$BUILD_HOST DOCKER_BUILDKIT=1 "$DOCKER" "$@"; }
rd() { DOCKER_HOST=$PRIV_HOST "$DOCKER" "$@"; }
# Runs a command in the run engine's network namespace (curl to published ports).
in_ns() { if [[ -n "$PRIV_PID" ]]; then nsenter --net="/proc/$PRIV_PID/ns/net" "$@"; else "$@"; fi; }

phase_time() { printf '%-34s %4ds\n' "$1" "$2" >>"$TIMES"; }

# ------------------------------------------------------------------ images
dockerfile_arg() { sed -n "s/^ARG $1=//p" docker/Dockerfile | head -n 1; }
DEBIAN_RELEASE=$(dockerfile_arg DEBIAN_RELEASE)
RUST_VERSION=$(dockerfile_arg RUST_VERSION)
BASE_IMAGE="debian:${DEBIAN_RELEASE}-slim"
RUST_IMAGE="rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}"

# Image names exactly as the compose files resolve them.
compose_image() { # file service
  GRAFANA_ADMIN_PASSWORD=x docker-compose --env-file "$WORK/empty.env" -f "$1" config 2>/dev/null \
    | python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["services"][sys.argv[1]]["image"])' "$2"
}

have_image() { bd image inspect "$1" >/dev/null 2>&1; }

build_base_image() {
  have_image "$BASE_IMAGE" && { log "$BASE_IMAGE: cached"; return 0; }
  local rootfs=$WORK/rootfs mirror
  mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  log "$BASE_IMAGE: debootstrap --variant=minbase $DEBIAN_RELEASE ($mirror)"
  debootstrap --variant=minbase "$DEBIAN_RELEASE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # This machine's own CAs (a TLS-inspecting egress proxy, for instance):
  # installing ca-certificates in an image then trusts them, as the machine's
  # own downloads (cargo, pip) do.
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  tar -C "$rootfs" -c . | bd import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$rootfs"
}

# The official rust image: rustup's toolchain under /usr/local, gcc and libc
# headers for linking. Here: this machine's toolchain (it must be the version
# the Dockerfile names).
build_rust_image() {
  have_image "$RUST_IMAGE" && { log "$RUST_IMAGE: cached"; return 0; }
  local sysroot version ctx=$WORK/rust-ctx
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  [[ "$version" == "$RUST_VERSION" || "$version" == "$RUST_VERSION".* ]] \
    || { echo "host rustc is $version, the Dockerfile wants $RUST_VERSION" >&2; return 1; }
  log "$RUST_IMAGE: $BASE_IMAGE + gcc + rustc/cargo $version from $sysroot"
  mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rustup/toolchains/$version
RUN mkdir -p /usr/local/cargo/bin && for b in cargo rustc rustdoc; do ln -s /usr/local/rustup/toolchains/$version/bin/\$b /usr/local/cargo/bin/\$b; done
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RUST_VERSION=$version
EOF
  # The context streams from tar: the toolchain (without its docs) is not copied to disk.
  tar -c -C "$ctx" Dockerfile -C "$sysroot" --transform 's,^bin,toolchain/bin,;s,^lib,toolchain/lib,' \
      bin/cargo bin/rustc bin/rustdoc lib \
    | bd build --network=host -q -t "$RUST_IMAGE" - >/dev/null
}

build_redis_image() { # name
  have_image "$1" && { log "$1: cached"; return 0; }
  log "$1: stand-in from Debian's redis-server"
  local ctx=$WORK/redis-ctx
  mkdir -p "$ctx"
  # Like the official image: protected mode off (the container network is
  # the boundary), data in /data, not root.
  cat >"$ctx/entrypoint.sh" <<'EOF'
#!/bin/sh
if [ "${1:-}" = redis-server ]; then shift; set -- redis-server "$@" --protected-mode no; fi
exec "$@"
EOF
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
COPY --chmod=0755 entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
USER redis
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
  bd build --network=host -q -t "$1" "$ctx" >/dev/null
}

build_prometheus_image() { # name
  have_image "$1" && { log "$1: cached"; return 0; }
  log "$1: stand-in from Debian's prometheus (and wget, as in the official image)"
  local ctx=$WORK/prom-ctx
  mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus wget >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
  bd build --network=host -q -t "$1" "$ctx" >/dev/null
}

PLATFORM_IMAGES=()
phase_build() {
  local t0=$SECONDS t
  if [[ $COLD == 1 && -z "${REUSED_ENGINE:-}" ]]; then
    log "--cold: dropping the build cache"
    bd system prune -a -f --volumes >/dev/null
    bd builder prune -a -f >/dev/null
  fi
  build_base_image || fail "build: $BASE_IMAGE stand-in (debootstrap)"
  build_rust_image || fail "build: $RUST_IMAGE stand-in"
  REDIS_IMG=$(compose_image docker-compose.yml redis)
  PROM_IMG=$(compose_image docker-compose.yml prometheus)
  [[ "$(compose_image docker-compose.minimal.yml redis)" == "$REDIS_IMG" ]] || fail "build: the two compose files name different Redis images"
  build_redis_image "$REDIS_IMG" || fail "build: $REDIS_IMG stand-in"
  build_prometheus_image "$PROM_IMG" || fail "build: $PROM_IMG stand-in"
  ok "stand-ins: $BASE_IMAGE, $RUST_IMAGE, $REDIS_IMG, $PROM_IMG ($((SECONDS - t0)) s)"
  phase_time "build: stand-in images" $((SECONDS - t0))

  t0=$SECONDS
  for t in dispatcher sandbox-runtime web-runtime; do
    local img t1=$SECONDS
    img=$(compose_image docker-compose.yml "$t")
    [[ "$(compose_image docker-compose.minimal.yml "$t" 2>/dev/null || echo "$img")" == "$img" ]] || fail "build: compose files name different images for $t"
    log "building $img (docker/Dockerfile, target $t)"
    bd build --network=host -f docker/Dockerfile --target "$t" -t "$img" . >"$WORK/build-$t.log" 2>&1 \
      || { tail -n 40 "$WORK/build-$t.log" >&2; fail "build: docker/Dockerfile target $t"; }
    PLATFORM_IMAGES+=("$img")
    ok "build: $img from docker/Dockerfile --target $t ($((SECONDS - t1)) s)"
  done
  phase_time "build: docker/Dockerfile targets" $((SECONDS - t0))

  if [[ -z "${REUSED_ENGINE:-}" ]]; then
    t0=$SECONDS
    log "docker save | docker load into the run engine"
    bd save "${PLATFORM_IMAGES[@]}" "$REDIS_IMG" "$PROM_IMG" | rd load -q >/dev/null || fail "build: save | load"
    phase_time "build: save | load" $((SECONDS - t0))
  fi
}

# ------------------------------------------------------------------ stacks
# Each stack is its own compose project reading its own task file and
# writing its own output dir (created as the checked user).
PROJECT_PREFIX="adpcheck$RUN_ID"
new_stack() { # name file
  STACK=$1; STACK_FILE=$2; PROJECT="${PROJECT_PREFIX}$1"
  SDIR=$WORK/$1
  mkdir -p "$SDIR/output"
  : >"$SDIR/tasks.jsonl"
  : >"$SDIR/env"
  chown -R "$CHECK_UID:$CHECK_GID" "$SDIR"
}
# COMPOSE_V2=1: `docker compose` (the CLI plugin) instead of docker-compose.
dc() {
  local cmd=(docker-compose)
  [[ "${COMPOSE_V2:-0}" == 1 ]] && cmd=("$DOCKER" compose)
  DOCKER_HOST=$PRIV_HOST ADP_TASKS_FILE=$SDIR/tasks.jsonl ADP_OUTPUT_DIR=$SDIR/output \
    ADP_UID=$CHECK_UID ADP_GID=$CHECK_GID GRAFANA_ADMIN_PASSWORD=compose-check \
    COMPOSE_DOCKER_CLI_BUILD=0 PATH="/usr/bin:$PATH" \
    "${cmd[@]}" --env-file "$SDIR/env" -p "$PROJECT" -f "$STACK_FILE" "$@"
}
containers() { rd ps -q --filter "label=com.docker.compose.project=$PROJECT"; }
# The running containers of one service of the project.
service_containers() { rd ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1"; }
# Trajectory files of the ids listed in a file.
traj_files() { sed "s|^|$SDIR/output/trajectories/|;s|\$|.json|" "$1"; }

# Waits until every container of the project is healthy (or running, for
# those without a health check); $1 = expected container count.
wait_healthy() {
  local want=$1 deadline=$((SECONDS + ${2:-240})) ids states bad_ n
  while :; do
    ids=$(containers); n=$(wc -w <<<"$ids")
    bad_=()
    for id in $ids; do
      states=$(rd inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
      [[ "${states##* }" == healthy ]] || bad_+=("$states")
    done
    [[ $n -eq $want && ${#bad_[@]} -eq 0 ]] && return 0
    if (( SECONDS >= deadline )); then
      log "containers: $n of $want; not healthy: ${bad_[*]:-}"
      for id in $ids; do rd logs --tail 15 "$id" >&2 2>&1 || true; done
      return 1
    fi
    sleep 2
  done
}

# Waits until every id listed in $1 has a trajectory in the stack's output.
wait_trajectories() { # ids-file timeout
  local deadline=$((SECONDS + $2)) total have last=-1
  total=$(wc -l <"$1")
  while :; do
    have=0
    while read -r id; do [[ -f "$SDIR/output/trajectories/$id.json" ]] && have=$((have + 1)); done <"$1"
    [[ $have != "$last" ]] && { log "$STACK: trajectories $have/$total"; last=$have; }
    [[ $have -eq $total ]] && return 0
    (( SECONDS >= deadline )) && return 1
    sleep 2
  done
}

# Every file the stack wrote into its output dir belongs to the checked user.
check_ownership() {
  local foreign
  foreign=$(find "$SDIR/output" \( ! -uid "$CHECK_UID" -o ! -gid "$CHECK_GID" \) -printf '%u:%g %p\n' | head -n 5)
  [[ -z "$foreign" ]] || fail "$STACK: files in ./output not owned by $CHECK_UID:$CHECK_GID: $foreign"
  ok "$STACK: every file in ./output belongs to $CHECK_UID:$CHECK_GID ($(find "$SDIR/output" -type f | wc -l) files)"
}

# Ledger of a stack: valid lines in = trajectories + rejected lines, no
# trajectory without its line, no task twice. $1 = file of valid ids,
# $2 = number of invalid lines submitted.
check_ledger() {
  local ids=$1 invalid=$2 valid traj rejected extra
  valid=$(sort -u "$ids" | wc -l)
  [[ $valid -eq $(wc -l <"$ids") ]] || fail "$STACK: the check submitted duplicate ids"
  traj=$(find "$SDIR/output/trajectories" -name '*.json' | wc -l)
  rejected=$(rejections)
  extra=$(comm -13 <(sort -u "$ids") <(find "$SDIR/output/trajectories" -name '*.json' -printf '%f\n' | sed 's/\.json$//' | sort))
  [[ -z "$extra" ]] || fail "$STACK: trajectories of tasks never submitted: $extra"
  local lines=$((valid + invalid))
  [[ $traj -eq $valid && $rejected -eq $invalid ]] \
    || fail "$STACK: ledger broken: lines in $lines, trajectories $traj (want $valid), rejections $rejected (want $invalid)"
  local dups
  dups=$(jq -r .task_id "$SDIR"/output/trajectories/*.json | sort | uniq -d | head -n 3)
  [[ -z "$dups" ]] || fail "$STACK: task ids twice: $dups"
  ok "$STACK: ledger: lines in $lines = trajectories $traj + rejections $rejected, no duplicates"
  printf '%-10s lines in %5d = trajectories %5d + rejections %3d\n' "$STACK" "$lines" "$traj" "$rejected" >>"$WORK/ledger-counts"
}

# Task lines. code_task ID CODE [EXPECTED]
code_task() {
  jq -cn --arg id "$1" --arg code "$2" --arg exp "${3:-}" --arg type "${TASK_TYPE:-code}" \
    '{task_id: $id, task_type: $type, description: ("check " + $id), constraints: ({code: $code} + (if $exp == "" then {} else {expected_output: $exp} end)), max_steps: 2, timeout: 120}'
}
web_task() { # ID URL EXPECTED
  jq -cn --arg id "$1" --arg url "$2" --arg exp "$3" \
    '{task_id: $id, task_type: "web", description: "read the heading", constraints: {start_url: $url, expected_text: $exp, actions: [{type: "extract"}, {type: "finish", answer: "read"}]}, max_steps: 3, timeout: 120}'
}
submit() { cat "$1" >>"$SDIR/tasks.jsonl"; }
traj() { echo "$SDIR/output/trajectories/$1.json"; }

down_stack() {
  local rc=0
  dc down -v --remove-orphans >"$SDIR/down.log" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] || { tail -n 20 "$SDIR/down.log" >&2; fail "$STACK: down exited $rc"; }
  [[ -z "$(rd ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]] || fail "$STACK: containers left after down"
  ok "$STACK: down exited 0, no container left"
}

# ------------------------------------------------------------------ phase a
phase_a() {
  new_stack "minimal${COMPOSE_V2:+v2}" docker-compose.minimal.yml
  local n_extra=20
  # The demo task file, as a user starts with it, without its web tasks (the
  # minimal stack has no web runtime: they would wait in their stream).
  jq -c 'select(.task_type != "web")' tasks.jsonl >"$SDIR/tasks.jsonl"
  chown "$CHECK_UID:$CHECK_GID" "$SDIR/tasks.jsonl"
  jq -r .task_id "$SDIR/tasks.jsonl" >"$SDIR/ids"
  dc up -d --no-build >"$SDIR/up.log" 2>&1 || { tail -n 30 "$SDIR/up.log" >&2; fail "minimal: up"; }
  wait_healthy 3 || fail "minimal: not every service healthy"
  ok "minimal: up, redis + dispatcher + sandbox-runtime healthy"
  wait_trajectories "$SDIR/ids" 300 || fail "minimal: the demo tasks.jsonl did not finish"
  ok "minimal: demo tasks.jsonl ($(wc -l <"$SDIR/ids") code and reasoning tasks; its $(jq -c 'select(.task_type == "web")' tasks.jsonl | wc -l) web tasks left out) -> trajectories"

  # Lines appended on the host are picked up (the dispatcher follows the file).
  local i
  : >"$SDIR/more.jsonl"; : >"$SDIR/more.ids"
  for i in $(seq 1 "$n_extra"); do
    code_task "appended_$i" "print($i * $i)" "$((i * i))" >>"$SDIR/more.jsonl"
    echo "appended_$i" >>"$SDIR/more.ids"
  done
  printf '{"task_id": "broken\n' >>"$SDIR/more.jsonl"
  submit "$SDIR/more.jsonl"
  wait_trajectories "$SDIR/more.ids" 300 || fail "minimal: appended lines were not picked up"
  local failed
  failed=$(traj_files "$SDIR/more.ids" | xargs jq -r 'select(.success != true) | .task_id' | head -n 3)
  [[ -z "$failed" ]] || fail "minimal: appended tasks failed: $failed ($(jq -c '{error_type,error_message}' "$(traj "${failed%%$'\n'*}")"))"
  ok "minimal: $n_extra lines appended to tasks.jsonl on the host -> $n_extra successful trajectories"
  cat "$SDIR/more.ids" >>"$SDIR/ids"
  wait_rejections 1 || fail "minimal: the broken line was not rejected"
  check_ledger "$SDIR/ids" 1
  check_ownership
  down_stack
}

rejections() { if [[ -f "$SDIR/output/rejected.jsonl" ]]; then wc -l <"$SDIR/output/rejected.jsonl"; else echo 0; fi; }
wait_rejections() { # count
  local deadline=$((SECONDS + 60))
  until [[ $(rejections) -ge $1 ]]; do
    (( SECONDS >= deadline )) && return 1
    sleep 1
  done
}

# ------------------------------------------------------------------ phase b
# Workers of the trajectories written by a container (its host name is its
# short id, the consumer name is <host>-<pid>).
took_work() { # container-id
  jq -r '.metadata.worker // empty' "$SDIR"/output/trajectories/*.json | grep -c "^${1:0:12}-" || true
}

prom() { # query -> JSON
  in_ns curl -fsS --max-time 10 --get --data-urlencode "query=$1" "http://127.0.0.1:9090/api/v1/query"
}

phase_b() {
  new_stack full docker-compose.yml
  local n_sandbox=3 n_web=2 i
  # Shorter than the default 60 s so the killed replica's tasks come back soon.
  export CLAIM_IDLE_SECS=20
  # The page server's host name is on the allow-list; everything else private
  # stays blocked (WEB_BLOCK_PRIVATE=true in the compose file).
  export WEB_ALLOW_HOSTS=page:8080
  compose_web_env=$(GRAFANA_ADMIN_PASSWORD=x docker-compose --env-file "$WORK/empty.env" -f docker-compose.yml config 2>/dev/null \
    | python3 -c 'import sys, yaml; print(" ".join(yaml.safe_load(sys.stdin)["services"]["web-runtime"]["environment"]))')
  [[ " $compose_web_env " == *" WEB_BLOCK_PRIVATE "* ]] || fail "full: web-runtime does not set WEB_BLOCK_PRIVATE"
  [[ " $compose_web_env " == *" WEB_ALLOW_HOSTS "* ]] \
    || bad "full: docker-compose.yml does not pass WEB_ALLOW_HOSTS to web-runtime: the allow-listed page cannot be reached"
  dc up -d --no-build --scale sandbox-runtime=$n_sandbox --scale web-runtime=$n_web \
    redis dispatcher sandbox-runtime web-runtime prometheus >"$SDIR/up.log" 2>&1 \
    || { tail -n 30 "$SDIR/up.log" >&2; fail "full: up"; }
  wait_healthy $((3 + n_sandbox + n_web)) 300 || fail "full: not every service healthy"
  ok "full: up with --scale sandbox-runtime=$n_sandbox --scale web-runtime=$n_web, all $((3 + n_sandbox + n_web)) containers healthy (Grafana left out)"

  # A page served inside the namespace, on the project's network.
  mkdir -p "$SDIR/site"
  printf '<html><head><title>check</title></head><body><h1>compose check page 42</h1></body></html>\n' >"$SDIR/site/index.html"
  rd run -d --name "${PROJECT}-page" --network "${PROJECT}_default" --network-alias page \
    --read-only -v "$SDIR/site:/site:ro" --entrypoint python3 "$(compose_image docker-compose.yml sandbox-runtime)" \
    -m http.server 8080 --directory /site >/dev/null || fail "full: page server"

  # Prometheus finds every replica through Docker's DNS, and loads the rules.
  local deadline=$((SECONDS + 120)) up_json counts want="dispatcher=1 sandbox-runtime=$n_sandbox web-runtime=$n_web"
  while :; do
    up_json=$(prom 'up == 1' || echo '{}')
    counts=$(jq -r '[.data.result[]?.metric.job | select(. != "prometheus")] | group_by(.) | map("\(.[0])=\(length)") | join(" ")' <<<"$up_json")
    [[ "$counts" == "$want" ]] && break
    (( SECONDS >= deadline )) && fail "full: Prometheus up == 1 by job: '$counts', want '$want'"
    sleep 3
  done
  ok "full: Prometheus scrapes every replica through DNS discovery (up == 1: $counts)"
  local rules want_rules
  rules=$(in_ns curl -fsS --max-time 10 http://127.0.0.1:9090/api/v1/rules \
    | jq -r '[.data.groups[].rules[] | select(.type == "alerting" and .health == "ok")] | length')
  want_rules=$(grep -c '^ *- alert:' config/alerts.yml)
  [[ "$rules" == "$want_rules" ]] || fail "full: Prometheus loaded $rules healthy alert rules, config/alerts.yml has $want_rules"
  ok "full: Prometheus loaded all $rules alert rules of config/alerts.yml"

  # 300 mixed tasks (code, reasoning, web) and 5 broken lines.
  : >"$SDIR/batch.jsonl"; : >"$SDIR/ids"
  for i in $(seq 1 200); do
    code_task "code_$i" "import time
time.sleep(0.5)
print($i + 1)" "$((i + 1))" >>"$SDIR/batch.jsonl"
    echo "code_$i" >>"$SDIR/ids"
  done
  for i in $(seq 1 45); do
    TASK_TYPE=reasoning code_task "reason_$i" "print($i * 3)" "$((i * 3))" >>"$SDIR/batch.jsonl"
    echo "reason_$i" >>"$SDIR/ids"
  done
  for i in $(seq 1 54); do
    web_task "web_$i" "http://page:8080/?t=$i" "compose check page 42" >>"$SDIR/batch.jsonl"
    echo "web_$i" >>"$SDIR/ids"
  done
  # Not on the allow-list: Redis's private address stays refused.
  web_task web_blocked "http://redis:6379/" "never" >>"$SDIR/batch.jsonl"
  echo web_blocked >>"$SDIR/ids"
  for i in 1 2 3 4 5; do echo "{not json $i" >>"$SDIR/batch.jsonl"; done
  python3 -c 'import random, sys; l = open(sys.argv[1]).readlines(); random.Random(7).shuffle(l); open(sys.argv[1], "w").writelines(l)' "$SDIR/batch.jsonl"
  submit "$SDIR/batch.jsonl"
  log "full: 300 tasks submitted"

  # Kill one sandbox replica mid-batch.
  local victim done_
  victim=$(service_containers sandbox-runtime | head -n 1)
  deadline=$((SECONDS + 300))
  while :; do
    done_=$({ find "$SDIR/output/trajectories" -name 'code_*.json' 2>/dev/null || true; } | wc -l)
    (( done_ >= 40 )) && break
    (( SECONDS >= deadline )) && fail "full: fewer than 40 code tasks done after 300 s"
    sleep 1
  done
  rd kill "$victim" >/dev/null || fail "full: docker kill $victim"
  ok "full: docker kill of sandbox replica ${victim:0:12} after $done_ code trajectories"

  wait_trajectories "$SDIR/ids" 600 || fail "full: the batch did not finish ($(find "$SDIR/output/trajectories" -name '*.json' | wc -l) of 300)"
  wait_rejections 5 || fail "full: the 5 broken lines were not all rejected"
  local failed web_failed
  failed=$(cd "$SDIR/output/trajectories" && jq -r 'select(.success != true and (.task_id | startswith("web_") | not)) | .task_id' ./*.json | head -n 3)
  [[ -z "$failed" ]] || fail "full: tasks failed: $failed: $(jq -c '{error_type,error_message}' "$(traj "${failed%%$'\n'*}")")"
  ok "full: 300 mixed tasks (200 code, 45 reasoning, 55 web) done; every code and reasoning task succeeded"
  web_failed=$(cd "$SDIR/output/trajectories" && jq -r 'select(.success != true and (.task_id | startswith("web_")) and .task_id != "web_blocked") | .task_id' ./*.json | wc -l)
  if [[ $web_failed -eq 0 ]]; then
    ok "full: 54 web tasks to http://page:8080/ (served in the namespace, allow-listed, WEB_BLOCK_PRIVATE=true) succeeded"
  else
    bad "full: $web_failed of 54 web tasks to http://page:8080/ failed: $(jq -r '.error_type + ": " + .error_message' "$(traj web_1)" | cut -c1-160)"
  fi
  [[ $(jq -r .success "$(traj web_blocked)") == false ]] || fail "full: a web task reached http://redis:6379/ (WEB_BLOCK_PRIVATE)"
  ok "full: web task to http://redis:6379/ refused: $(jq -r '.error_type + ": " + .error_message' "$(traj web_blocked)" | cut -c1-120)"
  local reclaimed
  reclaimed=$(jq -r 'select((.metadata.attempt // 1) > 1) | .task_id' "$SDIR"/output/trajectories/*.json | wc -l)
  note "full: trajectories delivered more than once (re-claimed after the kill): $reclaimed"
  check_ledger "$SDIR/ids" 5

  # Every replica took work.
  local c svc n report=""
  for c in $(containers); do
    svc=$(rd inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$c")
    [[ "$svc" == sandbox-runtime || "$svc" == web-runtime ]] || continue
    n=$(took_work "$c")
    report+=" $svc/${c:0:12}=$n"
    [[ $n -gt 0 ]] || fail "full: replica $svc ${c:0:12} wrote no trajectory:$report"
  done
  ok "full: every replica took work (trajectories by worker:$report)"

  # stop: running tasks get their grace period.
  : >"$SDIR/slow.jsonl"; : >"$SDIR/slow.ids"
  for i in 1 2 3 4; do
    code_task "slow_$i" "import time
time.sleep(8)
print('slow done $i')" "slow done $i" >>"$SDIR/slow.jsonl"
    echo "slow_$i" >>"$SDIR/slow.ids"
  done
  submit "$SDIR/slow.jsonl"
  deadline=$((SECONDS + 60))
  until [[ $(prom 'sum(active_tasks{runtime="sandbox-runtime"})' | jq -r '.data.result[0].value[1] // "0"') -ge 1 ]]; do
    (( SECONDS >= deadline )) && break
    sleep 1
  done
  sleep 2
  local t0=$SECONDS rc=0
  dc stop >"$SDIR/stop.log" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] || { tail -n 20 "$SDIR/stop.log" >&2; fail "full: docker-compose stop exited $rc"; }
  local codes nonzero
  # The killed replica is left out if Docker did not restart it (137).
  codes=$(for c in $(rd ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
    [[ "$(rd inspect -f '{{.Id}}' "$c")" == "$victim"* && "$(rd inspect -f '{{.RestartCount}}' "$c")" == 0 ]] && continue
    rd inspect -f '{{index .Config.Labels "com.docker.compose.service"}}={{.State.ExitCode}}' "$c"; done | sort)
  nonzero=$(grep -v '=0$' <<<"$codes" || true)
  [[ -z "$nonzero" ]] || fail "full: exit codes after stop: $(tr '\n' ' ' <<<"$codes")"
  codes=$(uniq -c <<<"$codes" | tr -s ' ' | tr '\n' ';')
  wait_trajectories "$SDIR/slow.ids" 1 || fail "full: tasks running at stop lost their grace period"
  local slow_ok
  slow_ok=$(traj_files "$SDIR/slow.ids" | xargs jq -r 'select(.success == true) | .task_id' | wc -l)
  ok "full: docker-compose stop exited 0 in $((SECONDS - t0)) s; exit codes:$codes 4 tasks running at stop finished ($slow_ok successful)"
  cat "$SDIR/slow.ids" >>"$SDIR/ids"
  check_ownership
  rd rm -f "${PROJECT}-page" >/dev/null
  down_stack
}

# ------------------------------------------------------------------ phase c
# The attack tasks of crates/sandbox-runtime/tests/containment.rs, run by the
# sandbox-runtime image under the real engine with the compose file's
# options. Each prints what it got; the expected outcome is checked here.
phase_c() {
  new_stack sandbox docker-compose.minimal.yml
  dc up -d --no-build >"$SDIR/up.log" 2>&1 || { tail -n 30 "$SDIR/up.log" >&2; fail "sandbox: up"; }
  wait_healthy 3 || fail "sandbox: not every service healthy"
  local sb redis_ip
  sb=$(service_containers sandbox-runtime)
  # The container itself: not privileged, only SYS_ADMIN added, seccomp on.
  local hc
  hc=$(rd inspect -f 'privileged={{.HostConfig.Privileged}} cap_add={{.HostConfig.CapAdd}} security_opt={{.HostConfig.SecurityOpt}}' "$sb")
  [[ "$hc" == "privileged=false cap_add=[SYS_ADMIN] security_opt=[apparmor:unconfined]" ]] || fail "sandbox: container options: $hc"
  [[ "$(rd exec "$sb" grep -c '^Seccomp:[[:space:]]*2' /proc/1/status)" == 1 ]] || fail "sandbox: the container runs without Docker's seccomp filter"
  ok "sandbox: container $hc, Docker's default seccomp filter on"
  redis_ip=$(rd inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(service_containers redis)")

  : >"$SDIR/attacks.jsonl"; : >"$SDIR/ids"
  add() { code_task "$1" "$2" >>"$SDIR/attacks.jsonl"; echo "$1" >>"$SDIR/ids"; }
  add identity "import os, socket
print(os.getuid(), os.getgid(), socket.gethostname(), os.getcwd(), os.path.exists('/proc/self'))"
  add network "import socket
socket.create_connection(('$redis_ip', 6379), timeout=3)
print('connected')"
  add write_outside "open('/tmp/ok.txt', 'w').write('fine')
for path in ['/evil.txt', '/usr/evil.txt', '/usr/lib/evil.txt', '/bin/evil', '/app/output/evil.txt']:
    try:
        open(path, 'w').write('x')
        print('WROTE', path)
    except OSError as e:
        print('denied', path, e.errno)"
  add shadow "print(open('/etc/shadow').read())"
  add setuid "import os
for f, a in [(os.setuid, 0), (os.setgid, 0), (os.chroot, '/tmp')]:
    try:
        f(a)
        print('ESCALATED', f.__name__)
    except OSError as e:
        print('denied', f.__name__, e.errno)"
  add memory "block = bytearray(2 * 1024 ** 3)
print(len(block))"
  add fork_bomb "import os
while True:
    try:
        os.fork()
    except OSError:
        pass"
  add endless "while True:
    pass"
  # The hardening of the jail itself (crates/sandbox-runtime/tests/attacks.rs):
  # refused system calls, only the interpreter visible, the tmpfs inode cap.
  # The syscall and inode programs are the files attacks.rs runs too.
  add syscalls "$(cat crates/sandbox-runtime/tests/programs/syscalls.py)"
  add visible "import json, sqlite3, ssl, decimal, shutil
print(sqlite3.connect(':memory:').execute('select 6 * 7').fetchone()[0], decimal.Decimal('0.1') + decimal.Decimal('0.2'), json.dumps([1]))
for tool in ['gcc', 'cc', 'curl', 'strace', 'gdb', 'apt-get', 'sh', 'nsjail', 'sandbox-runtime']:
    if shutil.which(tool, path='/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'):
        print('VISIBLE', tool)"
  add inodes "$(cat crates/sandbox-runtime/tests/programs/inode_flood.py)"
  submit "$SDIR/attacks.jsonl"
  wait_trajectories "$SDIR/ids" 400 || fail "sandbox: attack tasks did not finish"
  # The memory bomb runs on its own: next to the fork bomb and the endless
  # loop its children get so little CPU that they may not reach the limit
  # within the 30 s step limit.
  code_task membomb "import os, time
pids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        try:
            block = b'x' * (300 * 1024 * 1024)
            time.sleep(3)
            os._exit(0)
        except MemoryError:
            os._exit(3)
    pids.append(pid)
print('children', [os.waitpid(p, 0)[1] for p in pids])" >"$SDIR/membomb.jsonl"
  echo membomb >"$SDIR/membomb.ids"
  submit "$SDIR/membomb.jsonl"
  wait_trajectories "$SDIR/membomb.ids" 200 || fail "sandbox: the memory bomb task did not finish"
  cat "$SDIR/membomb.ids" >>"$SDIR/ids"
  obs() { jq -r '.steps[0].observation' "$(traj "$1")"; }
  field() { jq -r "$2" "$(traj "$1")"; }

  [[ "$(obs identity)" == "65534 65534 sandbox /tmp False" ]] || fail "sandbox: jail identity: $(obs identity)"
  ok "sandbox: jailed code runs as 65534:65534, host name sandbox, no /proc"
  [[ "$(field network .success)" == false && "$(obs network)" != *connected* ]] || fail "sandbox: the jail reached Redis at $redis_ip: $(obs network)"
  ok "sandbox: no network (connection to Redis $redis_ip refused: $(field network .error_type))"
  [[ "$(obs write_outside | grep -c '^denied')" == 5 && "$(obs write_outside)" != *WROTE* ]] || fail "sandbox: writes outside /tmp: $(obs write_outside)"
  [[ ! -e "$SDIR/output/evil.txt" ]] || fail "sandbox: the jail wrote into ./output"
  ok "sandbox: writes outside /tmp denied (/, /usr, /usr/lib, /bin, /app/output)"
  [[ "$(field shadow .success)" == false && "$(obs shadow)" != *root:* ]] || fail "sandbox: /etc/shadow readable: $(obs shadow | head -c 200)"
  ok "sandbox: /etc/shadow unreadable"
  [[ "$(obs setuid | grep -c '^denied')" == 3 ]] || fail "sandbox: privilege calls: $(obs setuid)"
  ok "sandbox: setuid(0), setgid(0), chroot denied"
  [[ "$(field memory .success)" == false && "$(obs memory)" == *MemoryError* ]] || fail "sandbox: 2 GiB allocation: $(field memory '.error_message')"
  ok "sandbox: 2 GiB allocation is a MemoryError ($(field memory .error_message | cut -c1-80))"
  [[ "$(field fork_bomb .success)" == false ]] || fail "sandbox: fork bomb succeeded?"
  ok "sandbox: fork bomb contained ($(field fork_bomb '.error_type'): $(field fork_bomb .error_message | cut -c1-80))"
  [[ "$(field endless .error_type)" == timeout ]] || fail "sandbox: endless loop: $(field endless .error_type)"
  ok "sandbox: endless loop stopped by the wall-time limit"
  local name
  for name in io_uring_setup unshare_newuser mount add_key ptrace bpf; do
    grep -q "^$name -1 EPERM$" <<<"$(obs syscalls)" || fail "sandbox: $name not refused: $(obs syscalls)"
  done
  ok "sandbox: seccomp refuses io_uring_setup, unshare(CLONE_NEWUSER), mount, add_key, ptrace, bpf (EPERM)"
  [[ "$(field visible .success)" == true && "$(obs visible)" == "42 0.3 [1]" ]] \
    || fail "sandbox: tools visible in the jail or stdlib broken: $(obs visible)"
  ok "sandbox: json, sqlite3, ssl, decimal work; gcc, curl, strace, gdb, apt-get, sh, nsjail not visible"
  local files errno_
  read -r files errno_ <<<"$(obs inodes)"
  [[ "$errno_" == 28 && "$files" -gt 1000 && "$files" -le 8192 ]] || fail "sandbox: 100k files in /tmp: $(obs inodes)"
  ok "sandbox: the /tmp inode cap stops a file flood at $files files (ENOSPC)"
  # How the runtime bounds each jail in this container (cgroups, or the
  # rlimit fallback it reports as degraded when the cgroup tree is read-only).
  local limits
  limits=$(rd exec "$sb" curl -fsS http://127.0.0.1:8001/health | jq -r '.checks.jail_limits.detail // "not reported"')
  [[ "$limits" != "not reported" ]] || fail "sandbox: /health does not report the jail limit mode"
  if [[ "$limits" == cgroup* ]]; then
    # 4 processes x 300 MiB: the whole jail is held to its memory limit (the
    # cgroup's OOM killer; fewer, smaller children than the native test so a
    # loaded machine still gets there within the 30 s step limit).
    [[ "$(field membomb .success)" == false && "$(field membomb .steps[0].error_message)" == *"memory limit exceeded"* ]] \
      || fail "sandbox: 4 x 300 MiB in one jail: $(field membomb '.steps[0] | {observation, error_type, error_message} | tojson')"
    ok "sandbox: per-jail limits through the container's own cgroups ($limits): 4 x 300 MiB ends in a memory error"
  else
    [[ "$(obs membomb)" == *768* || "$(field membomb .success)" == false ]] \
      || fail "sandbox: 4 x 300 MiB in one jail (rlimits): $(obs membomb)"
    note "sandbox: jail limits in this container are degraded: $limits"
  fi

  # The runtime is still healthy and runs the next task.
  code_task after_attacks "print('alive')" alive >"$SDIR/after.jsonl"
  echo after_attacks >"$SDIR/after.ids"
  submit "$SDIR/after.jsonl"
  wait_trajectories "$SDIR/after.ids" 120 || fail "sandbox: no task ran after the attacks"
  [[ "$(field after_attacks .success)" == true ]] || fail "sandbox: task after the attacks failed"
  wait_healthy 3 30 || fail "sandbox: unhealthy after the attacks"
  ok "sandbox: still healthy, next task succeeded"
  cat "$SDIR/after.ids" >>"$SDIR/ids"
  check_ledger "$SDIR/ids" 0
  down_stack
}

# ------------------------------------------------------------------ main
# Whatever a phase left running (it stopped at a failure): its containers,
# the page server and their networks, so the next phase starts clean.
remove_stacks() {
  local id
  for id in $(rd ps -aq --filter "name=$PROJECT_PREFIX" 2>/dev/null || true); do
    rd rm -f -v "$id" >/dev/null 2>&1 || true
  done
  rd network prune -f >/dev/null 2>&1 || true
  return 0
}

run_phase() { # name function
  local t0=$SECONDS rc=0
  log "=== $1"
  set +e
  ( set -e; "$2" )
  rc=$?
  set -e
  [[ $rc -eq 0 ]] || bad "$1: phase aborted (see the FAIL above)"
  remove_stacks
  phase_time "$1" $((SECONDS - t0))
  return 0
}

T_START=$SECONDS
log "work dir $WORK, cache $CACHE, checked user $CHECK_UID:$CHECK_GID, phases: ${PHASES[*]}"
start_engines
run_phase "build" phase_build
if ! grep -q '^FAIL' "$LEDGER"; then
  for p in "${PHASES[@]}"; do
    case "$p" in
      a) run_phase "a: minimal" phase_a
         if "$DOCKER" compose version >/dev/null 2>&1; then
           COMPOSE_V2=1 run_phase "a: minimal (docker compose)" phase_a
         else
           note "docker compose (the v2 CLI plugin) is not installed: phase a ran with docker-compose $(docker-compose version --short 2>/dev/null) only"
         fi ;;
      b) run_phase "b: full (no Grafana)" phase_b ;;
      c) run_phase "c: sandbox containment" phase_c ;;
    esac
  done
fi
phase_time "total" $((SECONDS - T_START))
note "Grafana: no Debian package and no registry here, so its service is checked statically only (cargo test -p deploy-checks)"

echo
echo "==== compose check ledger ===="
cat "$LEDGER"
[[ -s "$WORK/ledger-counts" ]] && { echo; cat "$WORK/ledger-counts"; }
echo
echo "==== time per phase ===="
cat "$TIMES"
if grep -q '^FAIL' "$LEDGER"; then
  echo "compose check: FAILED"
  exit 1
fi
echo "compose check: everything held"
